"""How busy a run kept its replicas: the clean runs' utilization in ``skewscope evaluate``.

Per engine sample (10 ms) of a replica, three shares of capacity:

* ``batch``: running sequences over the batch capacity (``max_num_seqs``);
* ``kv``: the KV cache usage ratio;
* ``prefill``: prompt tokens prefilled over the last second, over the replica's prefill
  capacity (``1e6 / prefill_us_per_token`` tokens per second: every step spent on prefill).

``busy`` is the mean over samples of the largest of the three: a replica whose prefill runs
flat out is at capacity even with half its batch slots free (the `azure-code` trace: long
prompts, short answers, so batch and KV stay low while prefill saturates). The first
``warmup_s`` of the run (queues filling from empty) are left out.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

PREFILL_SPAN_NS = 1_000_000_000


@dataclass
class _Series:
    ts_ns: list[np.ndarray] = field(default_factory=list)
    batch: list[np.ndarray] = field(default_factory=list)
    kv: list[np.ndarray] = field(default_factory=list)
    prompt_tokens_total: list[np.ndarray] = field(default_factory=list)


@dataclass
class Utilization:
    """Accumulates engine samples per replica; :meth:`summary` gives the run's means."""

    prefill_tokens_per_s: dict[str, float]  # deployment -> prefill capacity
    warmup_s: float = 10.0
    _series: dict[str, _Series] = field(default_factory=dict)

    def add(self, deployment: str, cols: dict[str, np.ndarray]) -> None:
        """Columns of one EngineSampleFrame (schemas.columns.unpack)."""
        s = self._series.setdefault(deployment, _Series())
        s.ts_ns.append(np.asarray(cols["ts_ns"], dtype=np.int64))
        cap = np.maximum(np.asarray(cols["batch_capacity"], dtype=float), 1.0)
        s.batch.append(np.asarray(cols["num_running"], dtype=float) / cap)
        s.kv.append(np.asarray(cols["kv_cache_usage_ratio"], dtype=float))
        s.prompt_tokens_total.append(np.asarray(cols["prompt_tokens_total"], dtype=np.int64))

    def summary(self) -> dict[str, float]:
        """Means over every replica's samples after the warm-up: busy, batch, kv, prefill."""
        parts: dict[str, list[np.ndarray]] = {"busy": [], "batch": [], "kv": [], "prefill": []}
        for deployment, s in self._series.items():
            if not s.ts_ns:
                continue
            ts = np.concatenate(s.ts_ns)
            order = np.argsort(ts, kind="stable")
            ts = ts[order]
            batch = np.concatenate(s.batch)[order]
            kv = np.concatenate(s.kv)[order]
            prefill = _prefill_share(
                ts,
                np.concatenate(s.prompt_tokens_total)[order],
                self.prefill_tokens_per_s.get(deployment, 0.0),
            )
            keep = ts >= ts[0] + round(self.warmup_s * 1e9)
            parts["batch"].append(batch[keep])
            parts["kv"].append(kv[keep])
            parts["prefill"].append(prefill[keep])
            parts["busy"].append(np.maximum(np.maximum(batch, kv), prefill)[keep])
        return {
            name: float(np.concatenate(arrays).mean()) if arrays and sum(map(len, arrays)) else 0.0
            for name, arrays in parts.items()
        }


def _prefill_share(ts_ns: np.ndarray, total: np.ndarray, capacity_per_s: float) -> np.ndarray:
    """Prompt tokens per second over the last PREFILL_SPAN_NS, over capacity (0 before the
    first full span, or without a capacity). A counter that falls (engine restart) counts 0."""
    out = np.zeros(ts_ns.size)
    if capacity_per_s <= 0 or ts_ns.size < 2:
        return out
    back = np.searchsorted(ts_ns, ts_ns - PREFILL_SPAN_NS, side="left")
    full = (back > 0) | (ts_ns - ts_ns[0] >= PREFILL_SPAN_NS)
    span_s = (ts_ns - ts_ns[back]) / 1e9
    tokens = np.maximum(total - total[back], 0)
    ok = full & (span_s > 0)
    out[ok] = tokens[ok] / span_s[ok] / capacity_per_s
    return out
