"""Cumulative NIC port counters as ethtool/RDMA hw_counters report them.

Per-tick true increments become raw cumulative values: every counter starts at a non-zero
value accumulated since boot, fractional increments carry over (so slow counters such as
pause durations still tick), a port's counters can be reset (values restart near zero at a
stated time) and counters can wrap at 2**32 or 2**48 (``cluster.counter_wrap_bits``), as
legacy PMA counters do. Names follow docs/event-model.md.
"""

from __future__ import annotations

import numpy as np

from schemas.nic_counters import NIC_COUNTERS

COUNTERS = NIC_COUNTERS
INDEX = {name: i for i, name in enumerate(COUNTERS)}
# order of magnitude of each counter's value at simulation start (since boot)
_BOOT_SCALE = {
    "tx_bytes_phy": 1e14,
    "rx_bytes_phy": 1e14,
    "rx_corrected_bits_phy": 1e8,
    "port_xmit_wait": 1e10,
    "np_ecn_marked_roce_packets": 1e6,
    "np_cnp_sent": 4e5,
    "rp_cnp_handled": 4e5,
    "rx_prio3_pause_duration": 1e5,
    "tx_prio3_pause_duration": 1e5,
}


class CounterBank:
    """Cumulative counters of a set of ports: values[n_counters, n_ports]."""

    def __init__(self, n_ports: int, wrap_bits: int, rng: np.random.Generator) -> None:
        n = len(COUNTERS)
        scale = np.array([_BOOT_SCALE.get(c, 2e3) for c in COUNTERS])[:, None]
        self.whole = np.floor(rng.uniform(0.2, 1.0, (n, n_ports)) * scale).astype(np.int64) + 1
        self.frac = np.zeros((n, n_ports))
        self.reset_offset = np.zeros((n, n_ports), dtype=np.int64)
        self.modulus = 2**wrap_bits if wrap_bits < 64 else 0

    def advance(self, increments: np.ndarray, reset_tick: np.ndarray | None = None) -> np.ndarray:
        """Add increments[n_counters, n_ports, ticks]; return reported values, same shape.

        reset_tick[n_ports]: tick index at which the port's counters reset (-1: none)."""
        x = self.frac[:, :, None] + np.cumsum(increments, axis=2)
        ints = np.floor(x).astype(np.int64)
        values = self.whole[:, :, None] + ints
        if reset_tick is not None and (reset_tick >= 0).any():
            for port in np.flatnonzero(reset_tick >= 0):
                k = int(reset_tick[port])
                before = self.whole[:, port] if k == 0 else values[:, port, k - 1]
                self.reset_offset[:, port] = before
        offset = self.reset_offset[:, :, None]
        self.whole = values[:, :, -1]
        self.frac = x[:, :, -1] - ints[:, :, -1]
        reported = values - offset
        if reset_tick is not None:
            for port in np.flatnonzero(reset_tick > 0):
                k = int(reset_tick[port])
                # samples before the reset still show the old count
                reported[:, port, :k] += offset[:, port, :]
        if self.modulus:
            reported = np.mod(reported, self.modulus)
        return reported
