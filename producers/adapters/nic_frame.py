"""NicCounterFrame of one port's cumulative counters at one scrape.

Counters keep the names the driver spells (``rx_prio3_pause``, ``np_cnp_sent``,
``port_xmit_wait``...) and their raw cumulative values: resets and wraps are left to the
reader (:mod:`producers.adapters.rates`). Values must fit int64; a larger value (a 64-bit
counter past 2^63) is carried modulo 2^64 as the two's-complement int64, which
:func:`producers.adapters.rates.counter_rates` undoes with ``width_bits=64``.
"""

from __future__ import annotations

from collections.abc import Mapping

from producers.adapters.common import Frame, FrameContext
from schemas.columns import pack

FABRICS = ("roce", "infiniband", "ethernet")
PLANES = ("east_west", "north_south")
_TWO_63 = 1 << 63
_TWO_64 = 1 << 64


def as_int64(value: int) -> int:
    """``value`` (0 <= value < 2^64) as the int64 with the same 64 bits."""
    if not 0 <= value < _TWO_64:
        raise ValueError(f"counter value {value} is outside 0..2^64-1")
    return value - _TWO_64 if value >= _TWO_63 else value


def nic_frame(
    port: str,
    counters: Mapping[str, int],
    ctx: FrameContext,
    ts_ns: int,
    fabric: str = "roce",
    plane: str = "east_west",
) -> Frame:
    """One-sample NicCounterFrame of ``port`` with ``counters`` in their given order."""
    if fabric not in FABRICS:
        raise ValueError(f"fabric {fabric!r} is not one of {FABRICS}")
    if plane not in PLANES:
        raise ValueError(f"plane {plane!r} is not one of {PLANES}")
    names = list(counters)
    record = pack(
        "NicCounterFrame",
        {"ts_ns": [ts_ns], "counter_values": [as_int64(counters[n]) for n in names]},
        schema_version=1,
        source="nic",
        deployment=ctx.deployment,
        node=ctx.node,
        clock_id=ctx.clock_id,
        frame_seq=ctx.next_seq(),
        port=port,
        plane=plane,
        fabric=fabric,
        n_samples=1,
        n_counters=len(names),
        counter_names=names,
    )
    return Frame("NicCounterFrame", "nic", record)
