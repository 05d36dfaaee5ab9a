"""DPU observations -> features per node (device rows) and per flow (ingress share)."""

from __future__ import annotations

from typing import Any

import numpy as np

from streams.features.base import Extractor, span


class DpuExtractor(Extractor):
    SCHEMA = "DpuFrame"
    SOURCE = "dpu"
    ENTITY_KIND = "node"
    FEATURES = {
        "dpu_rx_queue_depth_bytes_max": "max",
        "dpu_rx_discards_per_s": "mean",
        "dpu_pcie_bytes_per_s": "mean",
        "dpu_pcie_stall_ratio": "mean",
        "dpu_doorbells_per_s": "mean",
        "dpu_rx_bytes_per_s": "mean",
        "dpu_max_burst_bytes": "max",
    }

    def ingest(self, record: dict[str, Any], cols: dict[str, np.ndarray]) -> tuple[int, int]:
        node = record["node"]
        interval_s = max(record["interval_ns"], 1) / 1e9
        dev_ts = cols["dev_ts_ns"]
        n = len(dev_ts)
        if n:
            values = np.column_stack(
                [
                    cols["dev_rx_queue_depth_bytes"],
                    cols["dev_rx_discards"] / interval_s,
                    (cols["dev_pcie_read_bytes"] + cols["dev_pcie_write_bytes"]) / interval_s,
                    cols["dev_pcie_stall_ns"] / (interval_s * 1e9),
                    cols["dev_doorbells"] / interval_s,
                    np.full(n, np.nan),
                    np.full(n, np.nan),
                ]
            ).astype(np.float64)
            self.store.add_rows(self.panes(dev_ts), node, values)
        flow_ts = cols["flow_ts_ns"]
        m = len(flow_ts)
        if m:
            # Sum flows per sample time first: the node's ingress rate is over all flows.
            keys, inverse = np.unique(flow_ts, return_inverse=True)
            rx = np.bincount(inverse, weights=cols["flow_rx_bytes"].astype(np.float64))
            burst = np.zeros(len(keys))
            np.maximum.at(burst, inverse, cols["flow_max_burst_bytes"].astype(np.float64))
            k = len(keys)
            values = np.full((k, len(self.FEATURES)), np.nan)
            values[:, 5] = rx / interval_s
            values[:, 6] = burst
            self.store.add_rows(self.panes(keys), node, values)
        lo_hi = [span(dev_ts), span(flow_ts)]
        present = [s for s, size in zip(lo_hi, (n, m), strict=True) if size]
        if not present:
            return (0, 0)
        return min(s[0] for s in present), max(s[1] for s in present)
