"""The topology registry: which rank runs on which node, GPU, NIC port and fabric.

Fed by TopologyRecord events (the compacted topology topic, or a file); replicas come and go
(``removed`` retires a rank). Entity ids follow docs/event-model.md.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any


@dataclass(frozen=True)
class RankPlace:
    deployment: str
    rank: int
    tp_rank: int
    pp_stage: int
    node: str
    gpu_index: int
    nic_port: str
    fabric: str
    fabric_name: str
    switch_port: str
    pcie_gen_expected: int
    pcie_width_expected: int
    gpu_behind_dpu: bool = False  # the node's DPU sees this GPU's host copies
    router_pool: str = ""  # the replicas one router balances across ("": not given)

    @property
    def entity(self) -> str:
        return f"{self.deployment}/rank{self.rank}"

    @property
    def gpu_entity(self) -> str:
        return f"{self.node}/gpu{self.gpu_index}"

    @property
    def port_entity(self) -> str:
        return f"{self.node}/{self.nic_port}"

    @property
    def path_entity(self) -> str:
        """The east-west path from this rank's NIC port to its leaf switch port."""
        return f"{self.port_entity}->{self.switch_port}" if self.switch_port else self.port_entity


@dataclass
class Topology:
    ranks: dict[str, RankPlace] = field(default_factory=dict)
    # (the ranks mapping, deployment -> router pool computed from it): see pools()
    _pools_cache: tuple[dict[str, RankPlace], Mapping[str, str]] | None = field(
        default=None, init=False, repr=False, compare=False
    )

    @classmethod
    def from_records(cls, records: Iterable[dict[str, Any]]) -> Topology:
        topo = cls()
        for record in records:
            topo.update(record)
        return topo

    def update(self, record: dict[str, Any]) -> None:
        place = RankPlace(
            deployment=record["deployment"],
            rank=int(record["rank"]),
            tp_rank=int(record["tp_rank"]),
            pp_stage=int(record["pp_stage"]),
            node=record["node"],
            gpu_index=int(record["gpu_index"]),
            nic_port=record["nic_port"],
            fabric=record["fabric"],
            fabric_name=record.get("fabric_name") or record["fabric"],
            switch_port=record.get("switch_port", ""),
            pcie_gen_expected=int(record.get("pcie_link_gen_expected", 5)),
            pcie_width_expected=int(record.get("pcie_link_width_expected", 16)),
            gpu_behind_dpu=bool(record.get("gpu_behind_dpu", False)),
            router_pool=str(record.get("router_pool") or ""),
        )
        # Copy on write: a detector iterating the old mapping in another thread stays safe.
        ranks = dict(self.ranks)
        if record.get("removed"):
            ranks.pop(place.entity, None)
        else:
            ranks[place.entity] = place
        self.ranks = ranks

    def deployments(self) -> list[str]:
        return sorted({p.deployment for p in self.ranks.values()})

    def pools(self) -> Mapping[str, str]:
        """The router pool of every deployment (read-only; one pass over the ranks, kept
        until the topology changes): the replicas one router balances across, which the
        load family and the replicas' peer ratios compare. Deployments whose records name no
        pool have "" (together one pool: every replica this detector holds, as before pools
        were named). Ranks of one deployment naming different pools (a record in transit):
        the first non-empty name in sort order."""
        ranks = self.ranks  # replaced, never changed in place, by update(): a snapshot
        cache = self._pools_cache  # one tuple: read and replaced atomically
        if cache is not None and cache[0] is ranks:
            return cache[1]
        out: dict[str, str] = {}
        for p in ranks.values():
            known = out.get(p.deployment)
            if known is None or (p.router_pool and (not known or p.router_pool < known)):
                out[p.deployment] = p.router_pool
        pools = MappingProxyType(out)
        self._pools_cache = (ranks, pools)
        return pools

    def nodes(self) -> list[str]:
        return sorted({p.node for p in self.ranks.values()})

    def ranks_of(self, deployment: str) -> list[RankPlace]:
        return [p for p in self.ranks.values() if p.deployment == deployment]

    def ranks_on(self, node: str) -> list[RankPlace]:
        return [p for p in self.ranks.values() if p.node == node]

    def by_gpu(self) -> dict[str, RankPlace]:
        return {p.gpu_entity: p for p in self.ranks.values()}

    def by_port(self) -> dict[str, list[RankPlace]]:
        out: dict[str, list[RankPlace]] = {}
        for p in self.ranks.values():
            out.setdefault(p.port_entity, []).append(p)
        return out

    def deployments_on(self, node: str) -> list[str]:
        return sorted({p.deployment for p in self.ranks_on(node)})

    def fabric_of(self, node: str) -> str:
        fabrics = {p.fabric for p in self.ranks_on(node)}
        return sorted(fabrics)[0] if fabrics else "unknown"
