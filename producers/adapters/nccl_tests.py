"""nccl-tests result tables (``all_reduce_perf`` and friends) -> typed rows.

Reads the 2021 layout (``error`` = ``N/A``, no ``root`` column for reductions) and the newer
one (``redop root ... #wrong``), with or without a launcher prefix on every line (``0: ``
from ``srun -l``, ``[1,0]<stdout>:`` from Open MPI). A row is read from both ends: size,
count and type from the left; out-of-place and in-place time/algbw/busbw/error from the
right; what lies between (redop, root, or nothing for allgather/alltoall) is kept as text.
``# Avg bus bandwidth : x`` is read; other ``#`` lines are comments.

Skipped with a reason: anything else, e.g. ``NCCL INFO`` log lines printed inside the
table, or a row whose numbers do not parse.

Limits: these are benchmark sweeps (one line per message size, averaged over iterations and
ranks), not per-rank collective records, so they are not turned into CollectiveFrames; use
them as baselines (expected busbw per size) or for calibration.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field

from producers.adapters.common import SkippedLine, Skips

_PREFIX = re.compile(r"^(?:\d+:\s|\[\d+,\d+\]<std(?:out|err)>:)")
_AVG_BUSBW = re.compile(r"^#\s*Avg bus bandwidth\s*:\s*(\S+)")


@dataclass(frozen=True)
class NcclTestsRow:
    """One message size of a sweep: out-of-place (oop) and in-place (ip) results."""

    size_bytes: int
    count: int
    dtype: str
    middle: str
    oop_time_us: float
    oop_algbw_gbs: float
    oop_busbw_gbs: float
    oop_errors: float
    ip_time_us: float
    ip_algbw_gbs: float
    ip_busbw_gbs: float
    ip_errors: float
    line_no: int


@dataclass
class NcclTestsLog:
    """Rows in log order, the reported average bus bandwidth, and skipped lines."""

    rows: list[NcclTestsRow] = field(default_factory=list)
    avg_busbw_gbs: float | None = None
    skipped: list[SkippedLine] = field(default_factory=list)


def _num(token: str) -> float:
    return math.nan if token == "N/A" else float(token)


def parse_nccl_tests(text: str, strict: bool = False) -> NcclTestsLog:
    """Parse an nccl-tests log (see the module docstring)."""
    log = NcclTestsLog()
    skips = Skips("nccl-tests log", strict)
    for line_no, raw in enumerate(text.splitlines(), start=1):
        line = _PREFIX.sub("", raw, count=1).strip()
        if not line:
            continue
        if line.startswith("#"):
            avg = _AVG_BUSBW.match(line)
            if avg:
                try:
                    log.avg_busbw_gbs = float(avg.group(1))
                except ValueError:
                    skips.skip(line_no, "average bus bandwidth is not a number", line)
            continue
        tokens = line.split()
        if len(tokens) < 11 or not tokens[0].isdigit():
            skips.skip(line_no, "not a result row", line)
            continue
        try:
            oop_t, oop_a, oop_b, oop_e, ip_t, ip_a, ip_b, ip_e = (_num(t) for t in tokens[-8:])
            row = NcclTestsRow(
                size_bytes=int(tokens[0]),
                count=int(tokens[1]),
                dtype=tokens[2],
                middle=" ".join(tokens[3:-8]),
                oop_time_us=oop_t,
                oop_algbw_gbs=oop_a,
                oop_busbw_gbs=oop_b,
                oop_errors=oop_e,
                ip_time_us=ip_t,
                ip_algbw_gbs=ip_a,
                ip_busbw_gbs=ip_b,
                ip_errors=ip_e,
                line_no=line_no,
            )
        except ValueError as exc:
            skips.skip(line_no, f"result row does not parse: {exc}", line)
            continue
        log.rows.append(row)
    log.skipped = skips.lines
    return log
