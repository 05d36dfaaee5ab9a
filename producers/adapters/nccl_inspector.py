"""NCCL Inspector profiler-plugin records (output format v4.0) -> CollectiveFrame.

Input: the Inspector's JSON output, one ``{"header", "metadata", "coll_perf"}`` record per
collective and rank, as JSON lines or pretty-printed and concatenated (the README's form).
A record that is not valid JSON or lacks a required key is skipped with its starting line
and the reason; reading resumes at the next line that starts with ``{``.

Mapping (one frame per communicator ``header.id`` and collective type, rows in input order):

=====================  =============================================================
CollectiveFrame        Inspector
=====================  =============================================================
group_id               ``header.id`` (communicator hash, e.g. ``0x7f8c496ae9f661``)
group_size             ``header.n_ranks``
op                     ``coll_perf.coll`` lowercased (``AllReduce`` -> ``allreduce``)
rank                   ``header.rank``
collective_count       1 (each record is one collective)
first_start_ns         ``coll_perf.event_trace_ts.coll_start_ts`` x 1000 (verbose records
                       only; the Inspector's CPU clock), else -1
duration_sum/max_ns    ``coll_perf.coll_exec_time_us`` x 1000
bytes_total            ``coll_perf.coll_msg_size_bytes``
detail_seq             ``coll_perf.coll_sn`` modulo 2^31 (same on every rank of the
                       communicator, so it joins ranks of one collective)
=====================  =============================================================

Missing from the Inspector, so sentinel ``-1``: ``step`` and ``detail_step`` (the Inspector
knows no engine step; join ranks on ``detail_seq`` instead). Bandwidths
(``coll_algobw_gbs``, ``coll_busbw_gbs``) and ``coll_timing_source`` have no column; they
stay on :class:`InspectorRecord`. Each record also becomes one sampled detail row.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from producers.adapters.common import (
    MISSING_INT,
    AdapterOutput,
    Frame,
    FrameContext,
    SkippedLine,
    Skips,
)
from schemas.columns import pack

_SEQ_MOD = 1 << 31


@dataclass(frozen=True)
class InspectorRecord:
    """One collective on one rank, as the Inspector reported it."""

    comm_id: str
    rank: int
    n_ranks: int
    nnodes: int
    hostname: str
    coll: str
    coll_sn: int
    msg_size_bytes: int
    exec_time_us: float
    algobw_gbs: float
    busbw_gbs: float
    timing_source: str
    start_ts_us: int | None
    dump_timestamp_us: int
    line_no: int


@dataclass
class InspectorDump:
    """Records in input order and what was skipped."""

    records: list[InspectorRecord] = field(default_factory=list)
    skipped: list[SkippedLine] = field(default_factory=list)


def _record(doc: Any, line_no: int) -> InspectorRecord:
    if not isinstance(doc, dict):
        raise KeyError("record is not a JSON object")
    header, meta, perf = doc.get("header"), doc.get("metadata", {}), doc.get("coll_perf")
    if not isinstance(header, dict) or not isinstance(perf, dict):
        raise KeyError("record has no 'header' or 'coll_perf' object")
    trace = perf.get("event_trace_ts")
    start = trace.get("coll_start_ts") if isinstance(trace, dict) else None
    try:
        return InspectorRecord(
            comm_id=str(header["id"]),
            rank=int(header["rank"]),
            n_ranks=int(header["n_ranks"]),
            nnodes=int(header.get("nnodes", MISSING_INT)),
            hostname=str(meta.get("hostname", "")) if isinstance(meta, dict) else "",
            coll=str(perf["coll"]),
            coll_sn=int(perf["coll_sn"]),
            msg_size_bytes=int(perf["coll_msg_size_bytes"]),
            exec_time_us=float(perf["coll_exec_time_us"]),
            algobw_gbs=float(perf.get("coll_algobw_gbs", "nan")),
            busbw_gbs=float(perf.get("coll_busbw_gbs", "nan")),
            timing_source=str(perf.get("coll_timing_source", "")),
            start_ts_us=int(start) if start is not None else None,
            dump_timestamp_us=int(meta.get("dump_timestamp_us", MISSING_INT)),
            line_no=line_no,
        )
    except KeyError as exc:
        raise KeyError(f"record lacks {exc.args[0]!r}") from None
    except (TypeError, ValueError) as exc:
        raise KeyError(f"record has a value of the wrong type: {exc}") from None


def parse_inspector(text: str, strict: bool = False) -> InspectorDump:
    """Parse Inspector JSON records (see the module docstring)."""
    dump = InspectorDump()
    skips = Skips("nccl inspector", strict)
    decoder = json.JSONDecoder()
    pos = 0
    while True:
        while pos < len(text) and text[pos].isspace():
            pos += 1
        if pos >= len(text):
            break
        line_no = text.count("\n", 0, pos) + 1
        try:
            doc, end = decoder.raw_decode(text, pos)
        except json.JSONDecodeError as exc:
            skips.skip(line_no, f"not valid JSON: {exc.msg} at line {exc.lineno}")
            nxt = text.find("\n{", pos + 1)
            pos = len(text) if nxt < 0 else nxt + 1
            continue
        try:
            dump.records.append(_record(doc, line_no))
        except KeyError as exc:
            skips.skip(line_no, str(exc.args[0]))
        pos = end
    dump.skipped = skips.lines
    return dump


def collective_frames(dump: InspectorDump, ctx: FrameContext) -> list[Frame]:
    """One CollectiveFrame per (communicator, collective type), in first-seen order."""
    groups: dict[tuple[str, str], list[InspectorRecord]] = {}
    for rec in dump.records:
        groups.setdefault((rec.comm_id, rec.coll), []).append(rec)
    frames = []
    for (comm_id, coll), recs in groups.items():
        n = len(recs)
        starts = [r.start_ts_us * 1000 if r.start_ts_us is not None else MISSING_INT for r in recs]
        durations = [round(r.exec_time_us * 1000) for r in recs]
        ranks = [r.rank for r in recs]
        columns = {
            "step": [MISSING_INT] * n,
            "rank": ranks,
            "collective_count": [1] * n,
            "first_start_ns": starts,
            "duration_sum_ns": durations,
            "duration_max_ns": durations,
            "bytes_total": [r.msg_size_bytes for r in recs],
            "detail_step": [MISSING_INT] * n,
            "detail_seq": [r.coll_sn % _SEQ_MOD for r in recs],
            "detail_rank": ranks,
            "detail_start_ns": starts,
            "detail_duration_ns": durations,
        }
        record = pack(
            "CollectiveFrame",
            columns,
            schema_version=1,
            source="nccl",
            deployment=ctx.deployment,
            node=ctx.node,
            clock_id=ctx.clock_id,
            frame_seq=ctx.next_seq(),
            group_id=comm_id,
            group_size=max(r.n_ranks for r in recs),
            op=coll.lower(),
            n_rows=n,
            n_detail=n,
        )
        frames.append(Frame("CollectiveFrame", "collectives", record))
    return frames


def inspector_frames(text: str, ctx: FrameContext, ts_ns: int) -> AdapterOutput:
    """CollectiveFrames of Inspector output (``ts_ns`` is unused: records carry their own
    timing)."""
    del ts_ns
    dump = parse_inspector(text)
    return AdapterOutput(collective_frames(dump, ctx), dump.skipped)
