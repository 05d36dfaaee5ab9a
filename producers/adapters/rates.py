"""Cumulative counters -> per-second rates, with resets and 32/64-bit wraps.

Given successive samples ``(ts_ns, value)`` of one cumulative counter, the rate of interval
``i`` (between samples ``i-1`` and ``i``) is ``(value[i] - value[i-1]) / dt_s``. When the
value goes *down*:

* **wrap**: the drop is read as a wrap at ``2^bits`` (``bits`` = 32 or 64, smallest first)
  when the previous value fits ``bits`` and the increment through the wrap,
  ``value[i] + 2^bits - value[i-1]``, is at most ``max_wrap_fraction * 2^bits`` (default
  1/4): the counter was near the top and is now near the bottom. The rate uses that
  increment. ``width_bits`` fixes the width when it is known.
* **reset** (anything else, e.g. a driver reload or an engine restart): with
  ``on_reset="since_reset"`` (default) the rate is ``value[i] / dt_s``, the count since the
  reset spread over the whole interval, a lower bound of the true rate; with
  ``on_reset="drop"`` it is NaN. Either way the interval is flagged in ``resets``.

A non-increasing timestamp gives NaN for that interval (and is flagged in ``bad_time``).
Values are Python ints (exact up to 2^64); an int64 column holding a uint64 counter past
2^63 (see :func:`producers.adapters.nic_frame.as_int64`) is read back with
``signed_int64=True``.

Limits: any wrap heuristic can mistake a reset for a wrap when a counter restarts just
below where it would have wrapped to; the 1/4 bound keeps that to resets from the top
quarter of the range to the bottom quarter. A counter that wraps more than once between
samples is undercounted. Saturating counters (old 32-bit IB ``counters/*``) stay flat at
2^32-1 and read as rate 0.

>>> r = counter_rates([0, 1_000_000_000, 2_000_000_000], [2**32 - 10, 20, 5])
>>> r.rates_per_s, r.wraps, r.resets
([30.0, 5.0], [True, False], [False, True])
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

OnReset = Literal["since_reset", "drop"]
_WIDTHS = (32, 64)
_TWO_63 = 1 << 63
_TWO_64 = 1 << 64


@dataclass
class CounterRates:
    """Per-interval rates (len = samples - 1) and why any interval is special."""

    rates_per_s: list[float] = field(default_factory=list)
    wraps: list[bool] = field(default_factory=list)
    resets: list[bool] = field(default_factory=list)
    bad_time: list[bool] = field(default_factory=list)


def _increment(
    prev: int, cur: int, width_bits: int | None, max_wrap_fraction: float
) -> tuple[int | None, bool]:
    """(increment, wrapped); increment None means a reset."""
    if cur >= prev:
        return cur - prev, False
    widths = (width_bits,) if width_bits else _WIDTHS
    for bits in widths:
        top = 1 << bits
        if prev < top and cur < top:
            through_wrap = cur + top - prev
            if through_wrap <= max_wrap_fraction * top:
                return through_wrap, True
    return None, False


class RateTracker:
    """Streaming form of :func:`counter_rates` for one counter.

    ``update(ts_ns, value)`` returns the rate since the previous sample (None for the
    first sample) and sets ``last_wrapped`` / ``last_reset`` / ``last_bad_time``.
    """

    def __init__(
        self,
        width_bits: int | None = None,
        on_reset: OnReset = "since_reset",
        max_wrap_fraction: float = 0.25,
        signed_int64: bool = False,
    ) -> None:
        if width_bits not in (None, *_WIDTHS):
            raise ValueError(f"width_bits must be 32, 64 or None (auto), got {width_bits}")
        if on_reset not in ("since_reset", "drop"):
            raise ValueError(f"on_reset must be 'since_reset' or 'drop', got {on_reset!r}")
        if not 0 < max_wrap_fraction <= 0.5:
            raise ValueError(f"max_wrap_fraction must be in (0, 0.5], got {max_wrap_fraction}")
        self.width_bits = width_bits
        self.on_reset = on_reset
        self.max_wrap_fraction = max_wrap_fraction
        self.signed_int64 = signed_int64
        self._prev: tuple[int, int] | None = None
        self.last_wrapped = False
        self.last_reset = False
        self.last_bad_time = False

    def update(self, ts_ns: int, value: int) -> float | None:
        value = int(value)
        if self.signed_int64 and value < 0:
            value += _TWO_64
        if value < 0:
            raise ValueError(
                f"counter value {value} is negative; pass signed_int64=True "
                "for uint64 counters stored in int64"
            )
        prev, self._prev = self._prev, (ts_ns, value)
        self.last_wrapped = self.last_reset = self.last_bad_time = False
        if prev is None:
            return None
        dt_s = (ts_ns - prev[0]) / 1e9
        if dt_s <= 0:
            self.last_bad_time = True
            return math.nan
        increment, self.last_wrapped = _increment(
            prev[1], value, self.width_bits, self.max_wrap_fraction
        )
        if increment is None:
            self.last_reset = True
            return value / dt_s if self.on_reset == "since_reset" else math.nan
        return increment / dt_s


def counter_rates(
    ts_ns: Sequence[int],
    values: Sequence[int],
    width_bits: int | None = None,
    on_reset: OnReset = "since_reset",
    max_wrap_fraction: float = 0.25,
    signed_int64: bool = False,
) -> CounterRates:
    """Rates of one counter sampled at ``ts_ns`` (see the module docstring)."""
    if len(ts_ns) != len(values):
        raise ValueError(f"{len(ts_ns)} timestamps but {len(values)} values")
    tracker = RateTracker(width_bits, on_reset, max_wrap_fraction, signed_int64)
    out = CounterRates()
    for ts, value in zip(ts_ns, values, strict=True):
        rate = tracker.update(int(ts), int(value))
        if rate is None:
            continue
        out.rates_per_s.append(rate)
        out.wraps.append(tracker.last_wrapped)
        out.resets.append(tracker.last_reset)
        out.bad_time.append(tracker.last_bad_time)
    return out
