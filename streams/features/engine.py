"""Engine scheduler samples -> features per deployment (replica)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np

from streams.features.base import Extractor, span

KV_FULL_RATIO = 0.9  # KV usage at which admission of a typical prompt can block


class EngineExtractor(Extractor):
    SCHEMA = "EngineSampleFrame"
    SOURCE = "engine"
    ENTITY_KIND = "replica"
    FEATURES = {
        "num_waiting": "mean",
        "num_running": "mean",
        "batch_fill_ratio": "mean",
        "kv_cache_usage_ratio": "mean",
        "kv_cache_usage_ratio_max": "max",
        "preemptions_per_s": "mean",
        "generation_tokens_per_s": "mean",
        "prompt_tokens_per_s": "mean",
        "step_duration_ns": "mean",
        # the longest step of the window: a request that arrives during a long step waits for
        # its end, which the mean of a window that also holds short steps hides
        "step_duration_ns_max": "max",
        "tokenizer_queue_depth": "mean",
        "expert_tokens_max_over_mean": "mean",
        "underfilled_with_queue_share": "mean",
        "kv_blocked_share": "mean",
        # requests wait while batch slots are free: admission is held back by something
        "queued_with_free_slots_share": "mean",
        # free KV tokens in those samples; only when the frame reports the KV capacity
        "kv_headroom_tokens_queued": "mean",
    }

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._last: dict[str, tuple[int, np.ndarray]] = {}
        # Tokens per expert summed per pane: skew judged on a window's totals, not per sample
        # (a few hundred tokens per 10 ms sample are skewed by chance alone).
        self._expert_sums: dict[int, dict[str, np.ndarray]] = {}

    def ingest(self, record: dict[str, Any], cols: dict[str, np.ndarray]) -> tuple[int, int]:
        ts = cols["ts_ns"]
        n = len(ts)
        if n == 0:
            return span(ts)
        entity = record["deployment"]
        running = cols["num_running"].astype(np.float64)
        waiting = cols["num_waiting"].astype(np.float64)
        capacity = cols["batch_capacity"].astype(np.float64)
        with np.errstate(divide="ignore", invalid="ignore"):
            fill = np.where(capacity > 0, running / capacity, np.nan)
        cumulative = np.vstack(
            [
                cols["preemptions_total"],
                cols["generation_tokens_total"],
                cols["prompt_tokens_total"],
            ]
        ).astype(np.float64)
        rates = self._rates(entity, ts, cumulative)
        n_experts = record.get("n_experts", 0)
        if n_experts:
            tokens = cols["expert_tokens"].reshape(n, n_experts).astype(np.float64)
            panes = self.panes(ts)
            for pane in np.unique(panes).tolist():
                cell = self._expert_sums.setdefault(pane, {})
                total = tokens[panes == pane].sum(axis=0)
                cell[entity] = cell[entity] + total if entity in cell else total
            mean = tokens.mean(axis=1)
            with np.errstate(divide="ignore", invalid="ignore"):
                skew = np.where(mean > 0, tokens.max(axis=1) / mean, np.nan)
        else:
            skew = np.full(n, np.nan)
        underfilled = ((fill < 0.75) & (waiting > 0)).astype(np.float64)
        kv = cols["kv_cache_usage_ratio"].astype(np.float64)
        queued_free = (fill < 1.0) & (waiting > 0)
        kv_blocked = (queued_free & (kv >= KV_FULL_RATIO)).astype(np.float64)
        capacity_tokens = record.get("kv_capacity_tokens", 0)
        headroom = np.full(n, np.nan)
        if capacity_tokens > 0:
            headroom[queued_free] = (1.0 - kv[queued_free]) * capacity_tokens
        step = np.where(cols["step_duration_ns"] > 0, cols["step_duration_ns"], np.nan)
        values = np.column_stack(
            [
                waiting,
                running,
                fill,
                cols["kv_cache_usage_ratio"],
                cols["kv_cache_usage_ratio"],
                rates[0],
                rates[1],
                rates[2],
                step,
                step,
                np.where(cols["tokenizer_queue_depth"] >= 0, cols["tokenizer_queue_depth"], np.nan),
                skew,
                np.where(np.isfinite(fill), underfilled, np.nan),
                np.where(np.isfinite(fill), kv_blocked, np.nan),
                np.where(np.isfinite(fill), queued_free.astype(np.float64), np.nan),
                headroom,
            ]
        ).astype(np.float64)
        self.store.add_rows(self.panes(ts), entity, values)
        return span(ts)

    def window(self, panes: Iterable[int]) -> dict[str, dict[str, float]]:
        out = super().window(panes)
        totals: dict[str, np.ndarray] = {}
        for pane in panes:
            for entity, sums in self._expert_sums.get(pane, {}).items():
                totals[entity] = totals[entity] + sums if entity in totals else sums.copy()
        for entity, sums in totals.items():
            mean = float(sums.mean())
            if mean > 0 and entity in out:
                out[entity]["expert_tokens_window_max_over_mean"] = float(sums.max()) / mean
        return out

    def evict_before(self, pane: int) -> None:
        super().evict_before(pane)
        for old in [p for p in self._expert_sums if p < pane]:
            del self._expert_sums[old]

    def _rates(self, entity: str, ts: np.ndarray, cumulative: np.ndarray) -> np.ndarray:
        prev = self._last.get(entity)
        self._last[entity] = (int(ts[-1]), cumulative[:, -1].copy())
        prev_ts, prev_vals = prev if prev is not None else (int(ts[0]), cumulative[:, 0])
        all_ts = np.concatenate(([prev_ts], ts)).astype(np.int64)
        delta = np.diff(np.concatenate((prev_vals[:, None], cumulative), axis=1), axis=1)
        dt_s = np.diff(all_ts) / 1e9
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.where((delta >= 0) & (dt_s > 0), delta / dt_s, np.nan)
