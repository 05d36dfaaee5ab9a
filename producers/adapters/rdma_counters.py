"""RDMA port counters -> NicCounterFrame, one frame per port per scrape.

Three inputs, one result (:class:`RdmaScrape`, ports keyed ``<device>/<port>``, e.g.
``mlx5_0/1``):

* :func:`parse_sysfs_listing`: ``/sys/class/infiniband/<dev>/ports/<n>/{counters,hw_counters}/
  <name>:<value>`` lines, as ``grep -H . /sys/class/infiniband/*/ports/*/*counters/*`` prints
  them (relative paths starting at ``<dev>/ports/`` work too). ``.../ports/<n>/link_layer``
  sets the port's fabric; other attribute files (``rate``, ``state``, ``fw_ver``) are ignored.
* :func:`parse_ttar`: the same tree stored in the ``ttar`` text archive format
  (``Path:`` / ``Lines: n`` / n lines, the last one ending in ``EOF`` when the file had no
  newline / ``Mode:``; ``Directory:`` entries are ignored).
* :func:`parse_rdma_statistic`: iproute2 ``rdma statistic [show]`` output:
  ``link <dev>/<port> name value name value ...``, continued on lines that start with
  whitespace; an echoed command line is ignored. It has no link layer: the fabric comes from
  the caller.

Counter names are kept as the kernel spells them; ``counters/*`` come first, then
``hw_counters/*``. Fabric: ``InfiniBand`` -> ``infiniband``, ``Ethernet`` -> ``roce``
(an RDMA device on Ethernet is RoCE). Skipped with a reason (``strict`` raises): a line or
entry that cannot be read, a non-integer counter (``N/A (no PMA)``), a duplicate counter.

Limits: IB ``port_xmit_data``/``port_rcv_data`` count 4-byte words, carried unscaled. The
sysfs ``counters/*`` of old kernels are 32-bit and saturate instead of wrapping.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from producers.adapters.common import AdapterOutput, FrameContext, SkippedLine, Skips
from producers.adapters.nic_frame import nic_frame

_SYSFS = re.compile(
    r"^(?:.*/)?(?P<dev>[^/\s]+)/ports/(?P<port>\d+)/"
    r"(?:(?P<group>counters|hw_counters)/(?P<name>[^/:\s]+)|(?P<attr>link_layer))$"
)
_LINK_LAYERS = {"infiniband": "infiniband", "ethernet": "roce"}
_LINK = re.compile(r"^link\s+(?P<port>\S+/\d+)(?P<rest>.*)$")


@dataclass
class RdmaPort:
    """One port's counters in read order, and its fabric ('' until a link_layer is read)."""

    port: str
    fabric: str = ""
    counters: dict[str, int] = field(default_factory=dict)
    groups: dict[str, str] = field(default_factory=dict)


@dataclass
class RdmaScrape:
    """Ports in first-seen order, and what was skipped."""

    ports: dict[str, RdmaPort] = field(default_factory=dict)
    skipped: list[SkippedLine] = field(default_factory=list)


class _Builder:
    def __init__(self, source: str, strict: bool) -> None:
        self.scrape = RdmaScrape()
        self.skips = Skips(source, strict)
        self.first: dict[tuple[str, str], int] = {}

    def port(self, port_id: str) -> RdmaPort:
        return self.scrape.ports.setdefault(port_id, RdmaPort(port_id))

    def counter(self, port_id: str, name: str, raw: str, line_no: int, group: str = "") -> None:
        raw = raw.strip()
        if not raw.isdigit() or int(raw) >= 1 << 64:
            self.skips.skip(line_no, f"{port_id} {name}: {raw!r} is not a 64-bit counter", raw)
            return
        key = (port_id, name)
        if key in self.first:
            self.skips.skip(
                line_no, f"duplicate counter {port_id} {name}; first at line {self.first[key]}"
            )
            return
        self.first[key] = line_no
        port = self.port(port_id)
        port.counters[name] = int(raw)
        if group:
            port.groups[name] = group

    def path_value(self, path: str, value: str, line_no: int) -> None:
        match = _SYSFS.match(path.strip())
        if match is None:
            return  # device attributes (fw_ver, rate, state...) are not counters
        port_id = f"{match.group('dev')}/{match.group('port')}"
        if match.group("attr"):
            layer = value.strip().lower()
            if layer not in _LINK_LAYERS:
                self.skips.skip(line_no, f"{port_id}: unknown link_layer {value.strip()!r}")
                return
            self.port(port_id).fabric = _LINK_LAYERS[layer]
            return
        self.counter(port_id, match.group("name"), value, line_no, match.group("group"))

    def done(self) -> RdmaScrape:
        for port in self.scrape.ports.values():
            ordered = sorted(port.counters, key=lambda n: port.groups.get(n) != "counters")
            port.counters = {n: port.counters[n] for n in ordered}
        self.scrape.skipped = self.skips.lines
        return self.scrape


def parse_sysfs_listing(text: str, strict: bool = False) -> RdmaScrape:
    """Ports from ``path:value`` lines of ``/sys/class/infiniband`` (see module docstring)."""
    builder = _Builder("sysfs listing", strict)
    for line_no, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        path, sep, value = line.partition(":")
        if not sep or "/" not in path:
            builder.skips.skip(line_no, "not a '<path>:<value>' line", line.strip())
            continue
        builder.path_value(path, value, line_no)
    return builder.done()


def parse_ttar(text: str, strict: bool = False) -> RdmaScrape:
    """Ports from a ttar archive of ``/sys/class/infiniband`` (see module docstring)."""
    builder = _Builder("ttar", strict)
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        line = lines[i]
        if not line.startswith("Path: "):
            i += 1
            continue
        path_line = i + 1
        header = lines[i + 1] if i + 1 < len(lines) else ""
        if not header.startswith("Lines: ") or not header[7:].strip().isdigit():
            builder.skips.skip(path_line, "ttar 'Path:' entry without a 'Lines: <n>' header")
            i += 1
            continue
        count = int(header[7:].strip())
        body = lines[i + 2 : i + 2 + count]
        if len(body) < count:
            builder.skips.skip(path_line, f"ttar entry cut off: {len(body)} of {count} lines")
            break
        value = "\n".join(body)
        value = value.removesuffix("EOF")
        builder.path_value(line[6:], value, path_line)
        i += 2 + count
    return builder.done()


def parse_rdma_statistic(text: str, strict: bool = False) -> RdmaScrape:
    """Ports from ``rdma statistic`` output (see module docstring)."""
    builder = _Builder("rdma statistic", strict)
    port_id = ""
    for line_no, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        link = _LINK.match(line)
        if link is not None:
            port_id, rest = link.group("port"), link.group("rest")
        elif line[0].isspace() and port_id:
            rest = line
        else:
            if "rdma" not in line.split():
                builder.skips.skip(
                    line_no, "neither a 'link <dev>/<port>' line nor its continuation", line.strip()
                )
            continue
        tokens = rest.split()
        if len(tokens) % 2:
            builder.skips.skip(line_no, f"{port_id}: odd number of name/value tokens", line.strip())
            tokens = tokens[:-1]
        builder.port(port_id)
        for name, raw in zip(tokens[::2], tokens[1::2], strict=True):
            builder.counter(port_id, name, raw, line_no)
    return builder.done()


def rdma_frames(
    scrape: RdmaScrape,
    ctx: FrameContext,
    ts_ns: int,
    default_fabric: str = "roce",
    plane: str = "east_west",
) -> AdapterOutput:
    """One NicCounterFrame per port with counters; the port's link layer wins over
    ``default_fabric``."""
    frames = [
        nic_frame(p.port, p.counters, ctx, ts_ns, fabric=p.fabric or default_fabric, plane=plane)
        for p in scrape.ports.values()
        if p.counters
    ]
    return AdapterOutput(frames, scrape.skipped)
