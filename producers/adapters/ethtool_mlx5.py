"""``ethtool -S <iface>`` of mlx5_core -> cumulative counters -> NicCounterFrame.

Reads the output with or without the ``NIC statistics:`` header, indented (ethtool prints
five spaces) or not, and grep excerpts of it (``ethtool -S eth0 | grep prio``). A
``$ ethtool -S ...`` or ``sudo ethtool ...`` command line echoed before the output is
ignored. Counter names are kept exactly as the driver prints them. One call reads one
interface; the port id comes from the caller (ethtool does not print it).

Skipped with a reason (``strict=True`` raises :class:`~.common.ParseError`): a line that is
not ``name: value``, a value that is not a non-negative integer, a duplicate counter name
(the first is kept).

Limits: counters of other drivers parse too (the format is the same) but are not checked
against mlx5 names; per-queue counters (``rx0_*``, ``ch3_*``, ``tx15_*``) are carried like
any other, so a frame of a many-channel NIC can hold over a thousand counters.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from producers.adapters.common import AdapterOutput, FrameContext, SkippedLine, Skips
from producers.adapters.nic_frame import nic_frame

_NAME = r"[A-Za-z0-9_.\-\[\]]+(?: [A-Za-z0-9_.\-\[\]]+)*"
_COUNTER = re.compile(rf"^\s*(?P<name>{_NAME}):\s*(?P<value>\S+)\s*$")
_COMMAND = re.compile(r"^\s*(?:[$#]\s*)?(?:sudo\s+)?ethtool\s")


@dataclass
class EthtoolCounters:
    """Counters of one interface in output order, and the lines skipped."""

    counters: dict[str, int] = field(default_factory=dict)
    skipped: list[SkippedLine] = field(default_factory=list)


def parse_ethtool(text: str, strict: bool = False) -> EthtoolCounters:
    """Parse ``ethtool -S`` output (see the module docstring for what is accepted)."""
    out = EthtoolCounters()
    skips = Skips("ethtool -S", strict)
    first_line: dict[str, int] = {}
    for line_no, line in enumerate(text.splitlines(), start=1):
        stripped = line.strip()
        if not stripped or stripped == "NIC statistics:" or _COMMAND.match(line):
            continue
        match = _COUNTER.match(line)
        if match is None:
            skips.skip(line_no, "not a 'name: value' counter line", stripped)
            continue
        name, raw = match.group("name"), match.group("value")
        if not raw.isdigit():
            skips.skip(line_no, f"value {raw!r} of {name} is not a non-negative integer", stripped)
            continue
        if int(raw) >= 1 << 64:
            skips.skip(line_no, f"value of {name} does not fit 64 bits", stripped)
            continue
        if name in first_line:
            skips.skip(line_no, f"duplicate counter {name}; first at line {first_line[name]}")
            continue
        first_line[name] = line_no
        out.counters[name] = int(raw)
    out.skipped = skips.lines
    return out


def ethtool_frames(
    text: str,
    ctx: FrameContext,
    ts_ns: int,
    port: str,
    fabric: str = "roce",
    plane: str = "east_west",
) -> AdapterOutput:
    """The NicCounterFrame of interface ``port`` (none when no counter was read)."""
    parsed = parse_ethtool(text)
    if not parsed.counters:
        return AdapterOutput([], parsed.skipped)
    frame = nic_frame(port, parsed.counters, ctx, ts_ns, fabric=fabric, plane=plane)
    return AdapterOutput([frame], parsed.skipped)
