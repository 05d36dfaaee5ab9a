"""GPU device samples -> features per GPU (``<node>/gpu<i>``)."""

from __future__ import annotations

from typing import Any

import numpy as np

from streams.features.base import Extractor, span

# NVML clocks-event reasons that mean the GPU is slowed by something other than idling or
# an application clock setting: SW power cap 0x4, HW slowdown 0x8, sync boost 0x10,
# SW thermal 0x20, HW thermal 0x40, HW power brake 0x80.
SLOWDOWN_REASONS_MASK = 0x4 | 0x8 | 0x10 | 0x20 | 0x40 | 0x80


class GpuExtractor(Extractor):
    SCHEMA = "GpuSampleFrame"
    SOURCE = "gpu"
    ENTITY_KIND = "gpu"
    FEATURES = {
        "sm_clock_ratio": "mean",
        "throttled_share": "mean",
        "power_w": "mean",
        "gpu_util_ratio": "mean",
        "pcie_bytes_per_s": "mean",
        "pcie_bytes_per_s_max": "max",
        "pcie_link_width_min": "min",
        "pcie_link_gen_min": "min",
        "pcie_replays_per_s": "mean",
        "xid_max": "max",
    }

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._last_replay: dict[str, tuple[int, int]] = {}

    def ingest(self, record: dict[str, Any], cols: dict[str, np.ndarray]) -> tuple[int, int]:
        ts = cols["ts_ns"]
        if len(ts) == 0:
            return span(ts)
        node = record["node"]
        idx = cols["gpu_index"]
        entities = [f"{node}/gpu{i}" for i in idx.tolist()]
        clock_max = cols["sm_clock_max_mhz"].astype(np.float64)
        with np.errstate(divide="ignore", invalid="ignore"):
            clock_ratio = np.where(clock_max > 0, cols["sm_clock_mhz"] / clock_max, np.nan)
        throttled = ((cols["throttle_reasons"] & SLOWDOWN_REASONS_MASK) != 0).astype(np.float64)
        replay_rate = self._replay_rates(entities, ts, cols["pcie_replay_total"])
        values = np.column_stack(
            [
                clock_ratio,
                throttled,
                cols["power_w"],
                cols["gpu_util_ratio"],
                cols["pcie_tx_bytes_per_s"] + cols["pcie_rx_bytes_per_s"],
                cols["pcie_tx_bytes_per_s"] + cols["pcie_rx_bytes_per_s"],
                np.where(cols["pcie_link_width"] > 0, cols["pcie_link_width"], np.nan),
                np.where(cols["pcie_link_gen"] > 0, cols["pcie_link_gen"], np.nan),
                replay_rate,
                cols["xid_last"],
            ]
        ).astype(np.float64)
        self.store.add_rows(self.panes(ts), entities, values)
        return span(ts)

    def _replay_rates(self, entities: list[str], ts: np.ndarray, totals: np.ndarray) -> np.ndarray:
        """Per-row replay rate from the cumulative counter; a decrease is a reset (rate NaN)."""
        out = np.full(len(ts), np.nan)
        rows = zip(entities, ts.tolist(), totals.tolist(), strict=True)
        for i, (entity, t, v) in enumerate(rows):
            prev = self._last_replay.get(entity)
            self._last_replay[entity] = (t, v)
            if prev is None or t <= prev[0] or v < prev[1]:
                continue
            out[i] = (v - prev[1]) * 1e9 / (t - prev[0])
        return out
