"""Read emitted frames back into numpy tables (tests, demo, quick looks).

Everything here works from frame records only, decoding packed columns with
:func:`schemas.columns.unpack` — never from the simulator's internal state — so it sees what
a consumer of the topics would see (local clocks, cumulative counters, lost samples).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from schemas.columns import unpack


def _cat(parts: list[np.ndarray]) -> np.ndarray:
    return np.concatenate(parts) if parts else np.zeros(0)


@dataclass
class Readback:
    """Decoded frames grouped by source; add frames with :meth:`add`."""

    collectives: dict[tuple[str, str], dict[str, list[np.ndarray]]] = field(
        default_factory=lambda: defaultdict(lambda: defaultdict(list))
    )
    nic: dict[tuple[str, str], dict[str, list[np.ndarray]]] = field(
        default_factory=lambda: defaultdict(lambda: defaultdict(list))
    )
    gpu: dict[str, dict[str, list[np.ndarray]]] = field(
        default_factory=lambda: defaultdict(lambda: defaultdict(list))
    )
    engine: dict[str, dict[str, list[np.ndarray]]] = field(
        default_factory=lambda: defaultdict(lambda: defaultdict(list))
    )
    requests: dict[str, dict[str, list[Any]]] = field(
        default_factory=lambda: defaultdict(lambda: defaultdict(list))
    )
    dpu: dict[str, dict[str, list[np.ndarray]]] = field(
        default_factory=lambda: defaultdict(lambda: defaultdict(list))
    )
    counter_names: tuple[str, ...] = ()

    def add(self, schema: str, record: dict[str, Any]) -> None:
        cols = unpack(schema, record)
        if schema == "CollectiveFrame":
            table = self.collectives[(record["deployment"], record["group_id"])]
            for k in (
                "step",
                "rank",
                "first_start_ns",
                "duration_sum_ns",
                "duration_max_ns",
                "bytes_total",
                "collective_count",
            ):
                table[k].append(cols[k])
            table["node"].append(np.full(record["n_rows"], record["node"], dtype=object))
        elif schema == "NicCounterFrame":
            table = self.nic[(record["node"], record["port"])]
            n = record["n_samples"]
            self.counter_names = tuple(record["counter_names"])
            table["ts_ns"].append(cols["ts_ns"])
            table["values"].append(cols["counter_values"].reshape(record["n_counters"], n))
        elif schema == "GpuSampleFrame":
            table = self.gpu[record["node"]]
            for k, v in cols.items():
                table[k].append(v)
        elif schema == "EngineSampleFrame":
            table = self.engine[record["deployment"]]
            for k, v in cols.items():
                if k != "expert_tokens":
                    table[k].append(v)
            if record["n_experts"]:
                table["expert_tokens"].append(
                    cols["expert_tokens"].reshape(record["n_samples"], record["n_experts"])
                )
        elif schema == "EngineRequestFrame":
            table = self.requests[record["deployment"]]
            ids = np.array(record["request_ids"], dtype=object)
            table["request_id"].append(ids[cols["request_index"]] if ids.size else ids)
            for k in ("kind", "ts_ns", "prompt_tokens", "output_tokens"):
                table[k].append(cols[k])
        elif schema == "DpuFrame":
            table = self.dpu[record["node"]]
            for k, v in cols.items():
                if k.startswith("dev_"):
                    table[k].append(v)

    def extend(self, frames: Iterable[Any]) -> Readback:
        for frame in frames:
            self.add(frame.schema, frame.record)
        return self

    # -- tables -----------------------------------------------------------------------------
    def collective_table(self, deployment: str, group: str) -> dict[str, np.ndarray]:
        return {k: _cat(v) for k, v in self.collectives[(deployment, group)].items()}

    def counter(self, node: str, port: str, name: str) -> tuple[np.ndarray, np.ndarray]:
        """(ts_ns, cumulative values) of one counter of one port."""
        table = self.nic[(node, port)]
        i = self.counter_names.index(name)
        return _cat(table["ts_ns"]), np.concatenate([v[i] for v in table["values"]])

    def counter_rate(self, node: str, port: str, name: str, t_from: int, t_to: int) -> float:
        """Increase per second of a counter between two times (reset/wrap unaware)."""
        ts, v = self.counter(node, port, name)
        sel = (ts >= t_from) & (ts < t_to)
        if sel.sum() < 2:
            return 0.0
        return float(v[sel][-1] - v[sel][0]) / ((ts[sel][-1] - ts[sel][0]) / 1e9)

    def gpu_table(self, node: str) -> dict[str, np.ndarray]:
        return {k: _cat(v) for k, v in self.gpu[node].items()}

    def engine_table(self, deployment: str) -> dict[str, np.ndarray]:
        return {
            k: (np.concatenate(v) if v else np.zeros(0)) for k, v in self.engine[deployment].items()
        }

    def request_table(self, deployment: str) -> dict[str, np.ndarray]:
        return {
            k: (np.concatenate(v) if v else np.zeros(0))
            for k, v in self.requests[deployment].items()
        }

    def dpu_table(self, node: str) -> dict[str, np.ndarray]:
        return {k: _cat(v) for k, v in self.dpu[node].items()}
