"""NIC port counters -> per-second rates per port (``<node>/<port>``).

Counters arrive cumulative. A rate is the difference of consecutive samples over their time
difference; a counter that went down was reset (or wrapped) and that one interval yields no
rate rather than a huge negative or positive spike.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from schemas.nic_counters import NIC_COUNTERS
from streams.features.base import Extractor, span

RATE_COUNTERS = NIC_COUNTERS
MAX_LAYOUTS = 64  # distinct counter-name lists remembered (agents send one list each)


class NicExtractor(Extractor):
    SCHEMA = "NicCounterFrame"
    SOURCE = "nic"
    ENTITY_KIND = "nic_port"
    FEATURES = {
        **{f"{name}_per_s": "mean" for name in RATE_COUNTERS},
        "tx_bytes_phy_per_s_min": "min",
    }

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._last: dict[str, tuple[int, np.ndarray]] = {}
        self.port_plane: dict[str, str] = {}
        self.port_fabric: dict[str, str] = {}
        self._rows_of: dict[tuple[str, ...], tuple[np.ndarray, np.ndarray]] = {}

    def ingest(self, record: dict[str, Any], cols: dict[str, np.ndarray]) -> tuple[int, int]:
        ts = cols["ts_ns"]
        n = len(ts)
        if n == 0:
            return span(ts)
        entity = f"{record['node']}/{record['port']}"
        self.port_plane[entity] = record["plane"]
        self.port_fabric[entity] = record["fabric"]
        matrix = cols["counter_values"].reshape(record["n_counters"], n)
        take, into = self._layout(record["counter_names"])
        known = np.full((len(RATE_COUNTERS), n), np.nan)
        known[into] = matrix[take]
        prev = self._last.get(entity)
        self._last[entity] = (int(ts[-1]), known[:, -1].copy())
        if prev is None:
            prev_ts, prev_vals = int(ts[0]), known[:, 0]
        else:
            prev_ts, prev_vals = prev
        all_ts = np.concatenate(([prev_ts], ts)).astype(np.int64)
        all_vals = np.concatenate((prev_vals[:, None], known), axis=1)
        delta = np.diff(all_vals, axis=1)
        dt_s = np.diff(all_ts) / 1e9
        with np.errstate(divide="ignore", invalid="ignore"):
            rates = np.where((delta >= 0) & (dt_s > 0), delta / dt_s, np.nan)
        tx = rates[RATE_COUNTERS.index("tx_bytes_phy")]
        self.store.add_rows(self.panes(ts), entity, np.vstack([rates, tx]).T)
        return span(ts)

    def _layout(self, names: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """Rows of the frame's counter matrix that hold a rate counter, and which ones
        (cached per counter-name list: an agent sends the same list every frame)."""
        key = tuple(names)
        layout = self._rows_of.get(key)
        if layout is None:
            if len(self._rows_of) >= MAX_LAYOUTS:
                self._rows_of.clear()
            position = {name: i for i, name in enumerate(names)}
            pairs = [(position[c], k) for k, c in enumerate(RATE_COUNTERS) if c in position]
            layout = (
                np.array([i for i, _ in pairs], dtype=np.intp),
                np.array([k for _, k in pairs], dtype=np.intp),
            )
            self._rows_of[key] = layout
        return layout
