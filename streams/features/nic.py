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
        known = self._known(record["counter_names"], matrix)
        prev = self._last.get(entity)
        self._last[entity] = (int(ts[-1]), known[:, -1].copy())
        if prev is None:
            prev_ts, prev_vals = int(ts[0]), known[:, 0]
        else:
            prev_ts, prev_vals = prev
        # Row-major (one row per sample time, as the pane store adds them): no transposed copy.
        all_ts = np.concatenate(([prev_ts], ts)).astype(np.int64)
        all_vals = np.concatenate((prev_vals[None, :], known.T))
        delta = all_vals[1:] - all_vals[:-1]
        dt_s = ((all_ts[1:] - all_ts[:-1]) / 1e9)[:, None]
        valid = (delta >= 0) & (dt_s > 0)
        rates = np.divide(delta, dt_s, out=np.full(delta.shape, np.nan), where=valid)
        tx = RATE_COUNTERS.index("tx_bytes_phy")
        self.store.add_rows(
            self.panes(ts), entity, np.concatenate((rates, rates[:, tx : tx + 1]), axis=1)
        )
        return span(ts)

    def _known(self, names: list[str], matrix: np.ndarray) -> np.ndarray:
        """The rate counters' rows of the frame's counter matrix as floats, in RATE_COUNTERS
        order; NaN rows for those the frame lacks."""
        if len(matrix) == len(RATE_COUNTERS) and tuple(names) == RATE_COUNTERS:
            return matrix.astype(np.float64)  # the agents' usual list: every row, in order
        take, into = self._layout(names)
        known = np.full((len(RATE_COUNTERS), matrix.shape[1]), np.nan)
        known[into] = matrix[take]
        return known

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
