"""Tiny hand-made telemetry for unit tests of the detector core (the simulator is the real
test bed; these frames only exercise the operators' arithmetic)."""

from __future__ import annotations

from typing import Any

import numpy as np

from schemas.columns import pack

T0_NS = 1_790_000_000_000_000_000


def topology(
    deployment: str = "dep0", nodes: int = 2, gpus_per_node: int = 4
) -> list[dict[str, Any]]:
    out = []
    for rank in range(nodes * gpus_per_node):
        node = f"node{rank // gpus_per_node}"
        out.append(
            {
                "deployment": deployment,
                "replica": deployment,
                "router_endpoint": "",
                "rank": rank,
                "tp_rank": rank,
                "pp_stage": 0,
                "ep_rank": -1,
                "node": node,
                "gpu_index": rank % gpus_per_node,
                "gpu_uuid": f"GPU-{rank:08d}",
                "nic_port": f"mlx5_{rank % gpus_per_node}",
                "switch_port": "",
                "dpu": "",
                "gpu_behind_dpu": False,
                "fabric": "roce",
                "pcie_link_gen_expected": 5,
                "pcie_link_width_expected": 16,
                "updated_at_ns": T0_NS,
                "removed": False,
            }
        )
    return out


def request_frame(
    deployment: str,
    node: str,
    rows: list[tuple[int, int, int]],
    request_ids: list[str],
    seq: int,
    frame_end_ns: int,
) -> dict[str, Any]:
    """An EngineRequestFrame of (request index, event kind, ts) rows sorted by time; 500-token
    prompts, one output token from the first token on (kind 3)."""
    rows = sorted(rows, key=lambda r: r[2])
    n = len(rows)
    return pack(
        "EngineRequestFrame",
        {
            "request_index": [r[0] for r in rows],
            "kind": [r[1] for r in rows],
            "ts_ns": [r[2] for r in rows],
            "prompt_tokens": [500] * n,
            "output_tokens": [1 if r[1] >= 3 else 0 for r in rows],
        },
        schema_version=1,
        source="engine",
        deployment=deployment,
        replica=deployment,
        node=node,
        clock_id=f"{node}/host",
        frame_seq=seq,
        frame_end_ns=frame_end_ns,
        n_events=n,
        request_ids=request_ids,
        connection_ids=[""] * len(request_ids),
    )


def collective_frames(
    compute_factor: dict[int, float],
    seconds: float,
    deployment: str = "dep0",
    nodes: int = 2,
    gpus_per_node: int = 4,
    compute_ns: int = 20_000_000,
    transfer_ns: int = 200_000,
    clock_offset_ns: dict[str, int] | None = None,
    seed: int = 0,
    hung_rank: int | None = None,
    hang_after_s: float = 1e9,
    long_step_every: int = 0,
    long_step_ns: int = 0,
) -> list[tuple[str, dict[str, Any]]]:
    """Blocking all-reduce per step: each rank starts when its compute ends; all end together.

    Frames of 100 ms per node, in event-time order. With ``long_step_every`` every such step
    computes ``long_step_ns`` instead (a prefill among decode steps: the step period varies).
    """
    rng = np.random.default_rng(seed)
    ranks = nodes * gpus_per_node
    factors = np.array([compute_factor.get(r, 1.0) for r in range(ranks)])
    offsets = clock_offset_ns or {}
    rows: dict[str, list[tuple[int, int, int, int]]] = {f"node{n}": [] for n in range(nodes)}
    inflight: dict[str, list[tuple[int, int, int, int]]] = {f"node{n}": [] for n in range(nodes)}
    t = T0_NS
    step = 0
    frames: list[tuple[str, dict[str, Any]]] = []
    next_flush = T0_NS + 100_000_000
    hang_at = T0_NS + int(hang_after_s * 1e9)
    while t < T0_NS + int(seconds * 1e9):
        base_ns = compute_ns
        if long_step_every and step % long_step_every == 0:
            base_ns = long_step_ns
        compute = base_ns * factors * (1 + rng.normal(0, 0.002, ranks))
        starts = t + compute.astype(np.int64)
        hung = hung_rank is not None and t >= hang_at
        end = int(starts.max()) + transfer_ns
        for r in range(ranks):
            node = f"node{r // gpus_per_node}"
            local = int(starts[r]) + offsets.get(node, 0)
            if hung:
                if r != hung_rank:
                    inflight[node].append((step, r, local, 0))
                continue
            rows[node].append((step, r, local, end - int(starts[r])))
        if hung:
            t += compute_ns
        else:
            t = end
        step += 1 if not hung else 0
        if t >= next_flush:
            for node in rows:
                block = rows[node]
                blocked = inflight[node][-gpus_per_node:] if hung else []
                blocked = [(s, r, st, max(t - st, 1)) for s, r, st, _ in blocked]
                table = block + [(s, r, st, d) for s, r, st, d in blocked]
                counts = [1] * len(block) + [0] * len(blocked)
                frames.append(
                    (
                        "CollectiveFrame",
                        _collective(deployment, node, table, counts, ranks, frames_seq=len(frames)),
                    )
                )
                rows[node] = []
                inflight[node] = []
            next_flush += 100_000_000
    return frames


def _collective(
    deployment: str,
    node: str,
    table: list[tuple[int, int, int, int]],
    counts: list[int],
    group_size: int,
    frames_seq: int,
) -> dict[str, Any]:
    arr = np.array(table, dtype=np.int64).reshape(-1, 4)
    n = len(arr)
    # every 5th step is sampled in detail (one collective per step: seq 0)
    detail = arr[(arr[:, 0] % 5 == 0) & (np.array(counts) == 1)] if n else arr
    return pack(
        "CollectiveFrame",
        {
            "step": arr[:, 0],
            "rank": arr[:, 1],
            "collective_count": counts,
            "first_start_ns": arr[:, 2],
            "duration_sum_ns": arr[:, 3],
            "duration_max_ns": arr[:, 3],
            "bytes_total": np.full(n, 1 << 20),
            "detail_step": detail[:, 0],
            "detail_seq": np.zeros(len(detail)),
            "detail_rank": detail[:, 1],
            "detail_start_ns": detail[:, 2],
            "detail_duration_ns": detail[:, 3],
        },
        source="nccl",
        deployment=deployment,
        node=node,
        clock_id=f"{node}/host",
        frame_seq=frames_seq,
        group_id="tp",
        group_size=group_size,
        op="allreduce",
        n_rows=n,
        n_detail=len(detail),
    )
