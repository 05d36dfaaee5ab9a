"""Deployment layout: which node, GPU, NIC port and switch port each rank sits on.

Placement is dense and deterministic: deployments take nodes in scenario order
(``node00``, ``node01``...); rank ``r = tp_rank + tp * pp_stage`` sits on GPU
``r % gpus_per_node`` of the deployment's ``r // gpus_per_node``-th node. Each GPU has its own
east-west NIC port (``mlx5_<gpu>``, HGX style) cabled to a leaf switch; each node has one
DPU whose uplink port ``p0`` carries north-south (client) traffic. Entity ids follow
docs/event-model.md.

Global indices: GPU ``g = node_index * gpus_per_node + gpu_index``; the east-west port of
GPU ``g`` has the same index ``g``. Arrays over GPUs or ports use these indices.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any

import numpy as np

from producers.sim.scenario import Scenario

_UUID_NS = uuid.UUID("6b1f3c2e-5d7a-4f0e-9a3b-2c1d0e9f8a7b")
# One router (producers/sim/frontend.py) balances requests across every replica of a
# scenario, so they form one router pool.
ROUTER_POOL = "frontend"


@dataclass(frozen=True)
class DeploymentLayout:
    """Where one deployment's ranks sit. Arrays are indexed [pp_stage, tp_rank]."""

    name: str
    index: int
    tp: int
    pp: int
    node_indices: tuple[int, ...]  # nodes of the deployment, in order
    rank_node: np.ndarray  # int [pp, tp] node index
    rank_gpu: np.ndarray  # int [pp, tp] global GPU index (= global east-west port index)
    frontend_node: int  # node of rank 0: engine front end, DPU north-south path

    def global_rank(self, stage: int, tp_rank: int) -> int:
        return tp_rank + self.tp * stage


class Layout:
    """The cluster: nodes, GPUs, ports, switch ports and every deployment's placement."""

    def __init__(self, scenario: Scenario) -> None:
        c = scenario.cluster
        self.gpus_per_node = c.gpus_per_node
        self.fabric = c.fabric
        self.fabric_name = c.fabric_name or ("roce0" if c.fabric == "roce" else "ib0")
        self.deployments: list[DeploymentLayout] = []
        node = 0
        node_owner: list[int] = []
        for d_index, dep in enumerate(scenario.deployments):
            n_nodes = max(1, -(-dep.world_size // c.gpus_per_node))
            ranks = np.arange(dep.world_size).reshape(dep.pp, dep.tp)
            rank_node = node + ranks // c.gpus_per_node
            rank_gpu = rank_node * c.gpus_per_node + ranks % c.gpus_per_node
            self.deployments.append(
                DeploymentLayout(
                    name=dep.name,
                    index=d_index,
                    tp=dep.tp,
                    pp=dep.pp,
                    node_indices=tuple(range(node, node + n_nodes)),
                    rank_node=rank_node,
                    rank_gpu=rank_gpu,
                    frontend_node=node,
                )
            )
            node_owner += [d_index] * n_nodes
            node += n_nodes
        self.n_nodes = node
        self.node_names = [f"node{i:02d}" for i in range(self.n_nodes)]
        self.node_deployment = np.array(node_owner, dtype=np.int64)
        self.n_gpus = self.n_nodes * c.gpus_per_node
        self.gpu_node = np.repeat(np.arange(self.n_nodes), c.gpus_per_node)
        self.gpu_local = np.tile(np.arange(c.gpus_per_node), self.n_nodes)
        self.gpu_used = np.zeros(self.n_gpus, dtype=bool)
        for dl in self.deployments:
            self.gpu_used[dl.rank_gpu.ravel()] = True
        self.gpu_uuids = [
            "GPU-" + str(uuid.uuid5(_UUID_NS, f"{scenario.name}/{self.node_names[n]}/{g}"))
            for n, g in zip(self.gpu_node, self.gpu_local, strict=True)
        ]
        self.port_names = [f"mlx5_{g}" for g in self.gpu_local]
        per_leaf = c.nodes_per_leaf
        self.port_leaf = self.gpu_node // per_leaf
        self.switch_ports = [
            f"leaf{n // per_leaf}:p{(n % per_leaf) * c.gpus_per_node + g + 1}"
            for n, g in zip(self.gpu_node, self.gpu_local, strict=True)
        ]
        self.dpu_names = [f"{n}/dpu" if c.dpu else "" for n in self.node_names]
        self.gpus_behind_dpu = set(c.gpus_behind_dpu) if c.dpu else set()
        self.pcie_gen_expected = c.pcie_gen
        self.pcie_width_expected = c.pcie_width
        self.moe_deployments = {d.name for d in scenario.deployments if d.model.n_experts}

    # -- entity ids (docs/event-model.md) ----------------------------------------------
    def gpu_entity(self, g: int) -> str:
        return f"{self.node_names[self.gpu_node[g]]}/gpu{self.gpu_local[g]}"

    def port_entity(self, g: int) -> str:
        return f"{self.node_names[self.gpu_node[g]]}/{self.port_names[g]}"

    def path_entity(self, g: int) -> str:
        return f"{self.port_entity(g)}->{self.switch_ports[g]}"

    def deployment(self, name: str) -> DeploymentLayout:
        for dl in self.deployments:
            if dl.name == name:
                return dl
        raise KeyError(f"no deployment {name!r}; have {[d.name for d in self.deployments]}")

    def node_index(self, name: str) -> int:
        try:
            return self.node_names.index(name)
        except ValueError:
            raise KeyError(f"no node {name!r}; have {self.node_names}") from None

    def resolve_rank(self, entity: str) -> tuple[DeploymentLayout, int, int]:
        """'<dep>/rank<r>' -> (deployment layout, pp_stage, tp_rank)."""
        dep_name, _, rank_text = entity.partition("/rank")
        dl = self.deployment(dep_name)
        rank = int(rank_text)
        if not 0 <= rank < dl.tp * dl.pp:
            raise KeyError(f"{entity}: rank out of range 0..{dl.tp * dl.pp - 1}")
        return dl, rank // dl.tp, rank % dl.tp

    def resolve_gpu(self, entity: str) -> int:
        """'<dep>/rank<r>' or '<node>/gpu<i>' or '<node>/mlx5_<i>' -> global GPU index."""
        if "/rank" in entity:
            dl, stage, tp_rank = self.resolve_rank(entity)
            return int(dl.rank_gpu[stage, tp_rank])
        node, _, local = entity.partition("/")
        digits = local.removeprefix("gpu").removeprefix("mlx5_").split("-")[0]
        index = int(digits)
        if not 0 <= index < self.gpus_per_node:
            raise KeyError(f"{entity}: GPU index out of range 0..{self.gpus_per_node - 1}")
        return self.node_index(node) * self.gpus_per_node + index

    # -- records -----------------------------------------------------------------------
    def topology_records(self, updated_at_ns: int) -> list[dict[str, Any]]:
        """One TopologyRecord dict per rank of every deployment."""
        out: list[dict[str, Any]] = []
        for dl in self.deployments:
            for stage in range(dl.pp):
                for tp_rank in range(dl.tp):
                    g = int(dl.rank_gpu[stage, tp_rank])
                    node = int(self.gpu_node[g])
                    out.append(
                        {
                            "schema_version": 1,
                            "deployment": dl.name,
                            "replica": dl.name,
                            "router_endpoint": f"{dl.name}-engine.svc:8000",
                            "rank": dl.global_rank(stage, tp_rank),
                            "tp_rank": tp_rank,
                            "pp_stage": stage,
                            "ep_rank": tp_rank if dl.name in self.moe_deployments else -1,
                            "node": self.node_names[node],
                            "gpu_index": int(self.gpu_local[g]),
                            "gpu_uuid": self.gpu_uuids[g],
                            "nic_port": self.port_names[g],
                            "switch_port": self.switch_ports[g],
                            "dpu": self.dpu_names[node],
                            "gpu_behind_dpu": int(self.gpu_local[g]) in self.gpus_behind_dpu,
                            "fabric": self.fabric,
                            "fabric_name": self.fabric_name,
                            "pcie_link_gen_expected": self.pcie_gen_expected,
                            "pcie_link_width_expected": self.pcie_width_expected,
                            "updated_at_ns": updated_at_ns,
                            "removed": False,
                            "router_pool": ROUTER_POOL,
                        }
                    )
        return out
