"""Checkpoint of a :class:`~models.detector.Detector`: its complete state as bytes, and back.

A checkpoint holds everything that decides the detector's future outputs: the watermark
tracker, every extractor's pane store and private state (the collective join's open steps and
periods, the request join's open requests, counter baselines of the rate extractors), the
clock aligner, the rules' persistence history, fusion (current verdicts, versions, mutes),
the per-rank last-arriver baselines,
the River models, the detector's own bookkeeping (last closed pane, silent streams, clock
steps, heartbeat clock, stats), and, per input topic-partition, the offset of the next
message to process. Restoring it and feeding the messages from those offsets on gives the
same outputs, byte for byte, as the uninterrupted detector would have given.

Not in a checkpoint: the configuration, the runbook and the topology. They come from the
worker's settings, the runbook file and the compacted topology topic; a checkpoint made with
another window geometry is refused (its panes would mean other times).

Format (``FORMAT_VERSION``)::

    b"SKCK" | u16 format version | u32 header length | header (JSON) | u32 CRC-32 of body | body

The header carries the offsets and a summary (watermark, windows closed) readable without
unpickling. The body is a pickle read back through an allow-list of classes (skewscope's own
state classes, numpy, River, a few builtins), so bytes from the changelog topic cannot run
arbitrary code. Limits: the body pickles the state classes as they are, so a change to their
fields needs ``FORMAT_VERSION`` bumped; an older checkpoint is then refused with a message
and the worker starts that partition from the committed offsets with empty state.
"""

from __future__ import annotations

import io
import json
import pickle
import struct
import zlib
from dataclasses import asdict, dataclass, field
from typing import Any

from models.detector import Detector, DetectorConfig, DetectorStats
from models.runbook import Runbook
from streams.topology import Topology
from streams.watermark import WatermarkTracker

MAGIC = b"SKCK"
# 2: request windows gained arrival_to_prefill_s_per_ktok_min (a version-1 checkpoint's
# panes lack that column: refused, the shard starts fresh from committed offsets)
# 3: the clock aligner gained a clock -> deployment map; the clock cadence joined the state
# (per-node clock steps are derived at each window, no longer stored)
# 5: the per-rank last-arriver baselines joined the state
# 6: engine panes gained queued_with_free_slots_share and kv_headroom_tokens_queued, request
# panes prompt_tokens_max
# 7: the last-arriver baseline keeps its durations in ns and the hop they are counted in
# 8: the request join keeps each first token's (arrival, first token) by pane, for the p99 TTFT
# 9: the detector's stats count the windows a watermark jump skipped (windows_skipped)
# 10: frames dated too far ahead are held (the detector's held frames, the tracker's clock
# claims and newest accepted time, two more stats)
# 11: the collective join keeps each rank's step periods by step start and each open step's
# latest end; the request join's admissions keep the KV tokens each needed; the watermark
# tracks feeds (a source's topics, ports and communicators) instead of sources
# 12: the clock aligner keeps a window of estimates per clock and when it found each step
# 13: the clock aligner keeps when each step could have begun (the estimate it was measured
# against)
# 14: the rules keep each evidence history's window ends and when its run began (a static
# condition whose evidence predates a suppressor's is not muted by it)
FORMAT_VERSION = 14
_PREFIX = struct.Struct("<4sHI")
_CRC = struct.Struct("<I")


class CheckpointError(ValueError):
    """A checkpoint that cannot be restored; the message says why and what to do."""


@dataclass(frozen=True)
class Checkpoint:
    """A restorable detector state with the input position it corresponds to.

    ``offsets`` maps ``(topic, partition)`` to the offset of the next message to process.
    """

    offsets: dict[tuple[str, int], int]
    watermark_ns: int
    windows_closed: int
    body: bytes = field(repr=False)

    def restore(
        self,
        config: DetectorConfig | None = None,
        runbook: Runbook | None = None,
        topology: Topology | None = None,
    ) -> Detector:
        """A new detector in the checkpointed state (raises CheckpointError when refused)."""
        return _restore_detector(self.body, config, runbook, topology)


def checkpoint_detector(det: Detector, offsets: dict[tuple[str, int], int]) -> bytes:
    """Serialize ``det`` with the input ``offsets`` it has consumed up to (exclusive)."""
    header = {
        "offsets": [[topic, part, off] for (topic, part), off in sorted(offsets.items())],
        "watermark_ns": det.watermark_ns,
        "windows_closed": det.stats.windows_closed,
        "window": [det.config.window.size_ns, det.config.window.hop_ns],
    }
    buffer = io.BytesIO()
    _SharedAwarePickler(buffer, _shared_objects(det)).dump(_detector_state(det))
    body = buffer.getvalue()
    head = json.dumps(header, separators=(",", ":")).encode()
    return b"".join(
        (
            _PREFIX.pack(MAGIC, FORMAT_VERSION, len(head)),
            head,
            _CRC.pack(zlib.crc32(body)),
            body,
        )
    )


def read_checkpoint(blob: bytes) -> Checkpoint:
    """Parse and integrity-check a checkpoint (the body is unpickled only by restore)."""
    if len(blob) < _PREFIX.size or blob[:4] != MAGIC:
        raise CheckpointError(
            f"not a skewscope checkpoint (starts {blob[:8]!r}, expected {MAGIC!r}); "
            "delete the record from the checkpoint table's changelog topic"
        )
    _, version, head_len = _PREFIX.unpack_from(blob)
    if version != FORMAT_VERSION:
        raise CheckpointError(
            f"checkpoint format version {version} is not this worker's {FORMAT_VERSION}; "
            "the partition restarts with empty state from its committed offsets"
        )
    head_end = _PREFIX.size + head_len
    header = json.loads(blob[_PREFIX.size : head_end])
    (crc,) = _CRC.unpack_from(blob, head_end)
    body = blob[head_end + _CRC.size :]
    if zlib.crc32(body) != crc:
        raise CheckpointError(
            f"checkpoint body is corrupt (CRC-32 {zlib.crc32(body):08x}, header says {crc:08x}); "
            "the partition restarts with empty state from its committed offsets"
        )
    return Checkpoint(
        offsets={(str(t), int(p)): int(o) for t, p, o in header["offsets"]},
        watermark_ns=int(header["watermark_ns"]),
        windows_closed=int(header["windows_closed"]),
        body=body,
    )


# -- state capture ------------------------------------------------------------------------


def _detector_state(det: Detector) -> dict[str, Any]:
    # Extractors are pickled whole, in one dump with the aligner: the collective extractor's
    # reference to the shared aligner stays one object after loading.
    return {
        "window": (det.config.window.size_ns, det.config.window.hop_ns),
        "watermarks": det.watermarks.snapshot(),
        "extractors": det.extractors,
        "aligner": det.aligner,
        "cadence": det.cadence,
        "rules_history": det.rules._history,
        "rules_ends_ns": det.rules._ends_ns,
        "rules_since_ns": det.rules._since_ns,
        "fusion": det.fusion,
        "last_arrivers": det.last_arrivers,
        "anomaly": det.anomaly.checkpoint() if det.anomaly is not None else None,
        # The scorer's own checkpoint holds its models, not the k-of-n persistence history.
        "anomaly_history": det.anomaly._history if det.anomaly is not None else None,
        "stats": asdict(det.stats),
        "last_closed_pane": det._last_closed_pane,
        "silent": sorted(det._silent),
        "late_events": det._late_events,
        "last_heartbeat_ns": det._last_heartbeat_ns,
        "ahead": det._ahead,
    }


def _restore_detector(
    body: bytes,
    config: DetectorConfig | None,
    runbook: Runbook | None,
    topology: Topology | None,
) -> Detector:
    det = Detector(runbook, config, topology)
    state = _safe_loads(body, _shared_objects(det))
    spec = det.config.window
    if tuple(state["window"]) != (spec.size_ns, spec.hop_ns):
        raise CheckpointError(
            f"checkpoint made with windows of {state['window'][0]} ns every "
            f"{state['window'][1]} ns, this worker uses {spec.size_ns} ns every {spec.hop_ns} "
            "ns; restore the old window settings or delete the checkpoint table's changelog"
        )
    extractors = state["extractors"]
    if set(extractors) != set(det.extractors):
        raise CheckpointError(
            f"checkpoint has extractors {sorted(extractors)}, this worker "
            f"{sorted(det.extractors)}; bump FORMAT_VERSION when the extractors change"
        )
    det.extractors = extractors
    det.collectives = extractors["CollectiveFrame"]
    det.requests = extractors["EngineRequestFrame"]
    det.aligner = state["aligner"]
    if det.collectives.aligner is not det.aligner:
        raise CheckpointError("checkpoint's collective join does not share the clock aligner")
    det.cadence = state["cadence"]
    det.watermarks = WatermarkTracker.restore(
        state["watermarks"],
        det.config.allowed_lateness_ns,
        det.config.idle_timeout_ns,
        det.config.ahead_hold_ns,
    )
    det.rules._history = state["rules_history"]
    det.rules._ends_ns = state["rules_ends_ns"]
    det.rules._since_ns = state["rules_since_ns"]
    det.fusion = state["fusion"]
    det.last_arrivers = state["last_arrivers"]
    if state["anomaly"] is not None and det.anomaly is not None:
        _safe_loads(state["anomaly"])  # vet the nested pickle before the scorer loads it
        det.anomaly.restore(state["anomaly"])
        det.anomaly._history = state["anomaly_history"]
    det.stats = DetectorStats(**state["stats"])
    det._last_closed_pane = state["last_closed_pane"]
    det._silent = {tuple(s) for s in state["silent"]}
    det._late_events = state["late_events"]
    det._last_heartbeat_ns = state["last_heartbeat_ns"]
    det._ahead = state["ahead"]
    return det


# -- pickling with shared objects and an allow-list ----------------------------------------


def _shared_objects(det: Detector) -> dict[str, object]:
    """Objects a detector shares with its pool or takes from configuration: referenced by
    name in a checkpoint and bound to the restoring detector's own on load."""
    return {"topology": det.topology, "runbook": det.runbook, "config": det.config}


class _SharedAwarePickler(pickle.Pickler):
    def __init__(self, file: io.BytesIO, shared: dict[str, object]) -> None:
        super().__init__(file, protocol=5)
        self._shared_ids = {id(obj): name for name, obj in shared.items()}

    def persistent_id(self, obj: Any) -> str | None:
        return self._shared_ids.get(id(obj))


_ALLOWED_PREFIXES = ("streams.", "models.", "river.", "numpy.")
_ALLOWED_MODULES = {"numpy", "collections", "copyreg", "random", "functools"}
_ALLOWED_BUILTINS = {
    "dict", "list", "set", "frozenset", "tuple", "int", "float", "complex", "bool", "str",
    "bytes", "bytearray", "slice", "range",
}  # fmt: skip


class _AllowListUnpickler(pickle.Unpickler):
    def __init__(self, file: io.BytesIO, shared: dict[str, object]) -> None:
        super().__init__(file)
        self._shared = shared

    def persistent_load(self, pid: Any) -> object:
        if pid not in self._shared:
            raise CheckpointError(f"checkpoint refers to unknown shared object {pid!r}")
        return self._shared[pid]

    def find_class(self, module: str, name: str) -> Any:
        allowed = (
            module in _ALLOWED_MODULES
            or module.startswith(_ALLOWED_PREFIXES)
            or (module == "builtins" and name in _ALLOWED_BUILTINS)
        )
        if not allowed:
            raise CheckpointError(
                f"checkpoint refers to {module}.{name}, which is not a detector state class; "
                "refusing to load it (was the changelog topic written by something else?)"
            )
        return super().find_class(module, name)


def _safe_loads(body: bytes, shared: dict[str, object] | None = None) -> Any:
    try:
        return _AllowListUnpickler(io.BytesIO(body), shared or {}).load()
    except CheckpointError:
        raise
    except Exception as exc:  # any unpickling failure means "cannot restore"
        raise CheckpointError(
            f"checkpoint body does not load ({type(exc).__name__}: {exc}); the state classes "
            "changed without a FORMAT_VERSION bump, or the record is damaged"
        ) from exc
