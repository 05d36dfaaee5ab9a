"""Event-time watermarks with idle-source timeouts.

A *stream* is one producer of event time (for example ``(deployment, "gpu", "node3")``).
The watermark is the minimum, over live streams, of the latest event time each has shown,
minus the allowed lateness. A stream that has fallen ``idle_timeout_ns`` behind the most
advanced stream is declared *silent*: it stops holding the watermark back (so a hang cannot
freeze detection) and is reported once, so the detector can turn it into "source silent" and
make the entities it covers *unknown*. A silent stream that speaks again is live again.

A stream that reports in coarse steps (frames of 1 s) is up to one step behind the others
between its frames without being silent, so its timeout is at least ``SILENCE_STEPS`` times
its step: the median advance between its last ``STEP_MEMORY`` frame ends (a median, so one
long gap, a source coming back after an outage, does not stretch it). With steps below half
the idle timeout this changes nothing; with 1 s frames and a 1 s timeout it is what keeps
every source from flapping silent between frames (and its frames from arriving behind a
watermark that had stopped waiting for it).

A clock that runs far ahead (a DPU's real-time clock reset to a date years away, a unit
error) would drag the watermark with it and turn every other source's frames late until event
time caught up. So a frame more than ``ahead_limit_ns`` past the newest accepted event time is
taken only when another clock that is still sending has claimed within ``ahead_limit_ns`` of it
too (:meth:`claim`); the detector holds it until then. Every source resuming after a pause
confirms itself as the second clock's frames arrive; one runaway clock never does, and its
streams fall silent instead (unknown, not healthy).

All of this is event time: replaying the same events gives the same watermarks.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Hashable
from dataclasses import dataclass, field

SILENCE_STEPS = 2
STEP_MEMORY = 8
MIN_STEP_NS = 1_000_000


@dataclass(frozen=True)
class SilenceChange:
    """A stream went silent (``silent=True``) or came back."""

    stream: Hashable
    silent: bool
    last_event_ns: int
    at_watermark_ns: int


@dataclass
class WatermarkTracker:
    """Tracks per-stream event-time progress and the derived watermark."""

    allowed_lateness_ns: int = 200_000_000
    idle_timeout_ns: int = 2_000_000_000
    ahead_limit_ns: int = 0  # 0: every frame is taken, however far ahead
    _latest_ns: dict[Hashable, int] = field(default_factory=dict)
    _silent: set[Hashable] = field(default_factory=set)
    _watermark_ns: int = -(2**63)
    # each stream's last frame end and the advances between its latest frame ends (ns)
    _frame_end_ns: dict[Hashable, int] = field(default_factory=dict)
    _steps_ns: dict[Hashable, deque[int]] = field(default_factory=dict)
    # the newest event time observed (accepted) and how far each clock has claimed to be
    _newest_ns: int = -(2**63)
    _claims_ns: dict[Hashable, int] = field(default_factory=dict)

    def observe(self, stream: Hashable, event_ns: int) -> bool:
        """Record an event time; returns False when it is already behind the watermark (late)."""
        if event_ns > self._latest_ns.get(stream, -(2**63)):
            self._latest_ns[stream] = event_ns
            if event_ns > self._newest_ns:
                self._newest_ns = event_ns
        return event_ns >= self._watermark_ns

    def claim(self, clock: Hashable, event_ns: int) -> bool:
        """Record that a frame of ``clock`` reaches ``event_ns``; False when it is too far
        ahead to take yet (hold it and ask :meth:`accepts` again later)."""
        claimed = self._claims_ns.get(clock, -(2**63))
        if event_ns > claimed:
            self._claims_ns[clock] = event_ns
        taken = self.accepts(clock, event_ns)
        if taken and self.ahead_limit_ns > 0 and claimed > event_ns + self.ahead_limit_ns:
            # a frame of a clock that had run far ahead is taken in time: the clock is back,
            # and its old claim must not confirm another clock's jump to that date
            self._claims_ns[clock] = event_ns
        return taken

    def accepts(self, clock: Hashable, event_ns: int) -> bool:
        """Whether a frame of ``clock`` reaching ``event_ns`` may be taken: it is within
        ``ahead_limit_ns`` of the newest accepted time, or another clock that is still
        sending (its claim within the idle timeout of the newest accepted time, so a dead
        node's clock does not hold the others back) has claimed within ``ahead_limit_ns`` of
        it, or no other clock is sending (nothing could confirm it)."""
        limit = self.ahead_limit_ns
        newest = self._newest_ns
        if limit <= 0 or event_ns <= newest + limit or newest == -(2**63):
            return True
        sending_from = newest - self.idle_timeout_ns
        confirming = [t for c, t in self._claims_ns.items() if c != clock and t >= sending_from]
        return not confirming or max(confirming) >= event_ns - limit

    def observe_frame(self, stream: Hashable, first_ns: int, frame_end_ns: int) -> None:
        """Record how far a frame of ``stream`` reports (its first row at ``first_ns``), for
        the stream's step. Frames of one step (a node's NIC ports, clocks a few ns apart)
        advance it by less than ``MIN_STEP_NS``: not a step. A stream's first frame counts its
        own span."""
        last_end = self._frame_end_ns.get(stream)
        if last_end is not None and frame_end_ns <= last_end:
            return
        self._frame_end_ns[stream] = frame_end_ns
        step_ns = frame_end_ns - (first_ns if last_end is None else last_end)
        if step_ns >= MIN_STEP_NS:
            steps = self._steps_ns.get(stream)
            if steps is None:
                steps = self._steps_ns[stream] = deque(maxlen=STEP_MEMORY)
            steps.append(step_ns)

    def timeout_ns(self, stream: Hashable) -> int:
        """How far ``stream`` may fall behind the most advanced stream before it is silent."""
        steps = self._steps_ns.get(stream)
        if not steps:
            return self.idle_timeout_ns
        median_step = sorted(steps)[len(steps) // 2]
        return max(self.idle_timeout_ns, SILENCE_STEPS * median_step)

    def advance(self) -> tuple[int, list[SilenceChange]]:
        """Recompute the watermark; return it with the streams that went silent or came back.

        The watermark never moves backwards.
        """
        if not self._latest_ns:
            return self._watermark_ns, []
        frontier_ns = max(self._latest_ns.values())
        oldest_ns = min(self._latest_ns.values())
        if not self._silent and frontier_ns - oldest_ns <= self.idle_timeout_ns:
            # Every stream live before and after (the usual case): what the loop below
            # would find (no stream's timeout is below idle_timeout_ns), without a step per
            # stream.
            self._watermark_ns = max(self._watermark_ns, oldest_ns - self.allowed_lateness_ns)
            return self._watermark_ns, []
        changes: list[SilenceChange] = []
        live: list[int] = []
        for stream, latest_ns in self._latest_ns.items():
            is_silent = frontier_ns - latest_ns > self.timeout_ns(stream)
            if is_silent != (stream in self._silent):
                if is_silent:
                    self._silent.add(stream)
                else:
                    self._silent.discard(stream)
                changes.append(SilenceChange(stream, is_silent, latest_ns, self._watermark_ns))
            if not is_silent:
                live.append(latest_ns)
        candidate = min(live) - self.allowed_lateness_ns
        self._watermark_ns = max(self._watermark_ns, candidate)
        return self._watermark_ns, changes

    @property
    def watermark_ns(self) -> int:
        return self._watermark_ns

    @property
    def silent_streams(self) -> frozenset[Hashable]:
        return frozenset(self._silent)

    def streams(self) -> list[Hashable]:
        """Every stream seen and not forgotten, silent ones included."""
        return list(self._latest_ns)

    def stream_count(self) -> int:
        return len(self._latest_ns)

    def latest_ns(self, stream: Hashable) -> int | None:
        return self._latest_ns.get(stream)

    def newest_ns(self) -> int | None:
        """The newest event time of any stream (None before the first)."""
        return max(self._latest_ns.values(), default=None)

    def oldest_latest_ns(self) -> int | None:
        """The least of the streams' newest event times (None before the first)."""
        return min(self._latest_ns.values(), default=None)

    def forget(self, stream: Hashable) -> None:
        """Drop a stream (its entity left the topology)."""
        self._latest_ns.pop(stream, None)
        self._silent.discard(stream)
        self._steps_ns.pop(stream, None)
        self._frame_end_ns.pop(stream, None)

    def snapshot(self) -> dict[str, object]:
        """State for a checkpoint (streams as lists so it serializes)."""
        return {
            "watermark_ns": self._watermark_ns,
            "latest": [[list(_as_tuple(s)), t] for s, t in self._latest_ns.items()],
            "silent": [list(_as_tuple(s)) for s in self._silent],
            "frame_ends": [[list(_as_tuple(s)), t] for s, t in self._frame_end_ns.items()],
            "steps": [[list(_as_tuple(s)), list(d)] for s, d in self._steps_ns.items()],
            "newest_ns": self._newest_ns,
            "claims": [[c, t] for c, t in self._claims_ns.items()],
        }

    @classmethod
    def restore(
        cls,
        state: dict[str, object],
        allowed_lateness_ns: int,
        idle_timeout_ns: int,
        ahead_limit_ns: int = 0,
    ) -> WatermarkTracker:
        tracker = cls(allowed_lateness_ns, idle_timeout_ns, ahead_limit_ns)
        tracker._watermark_ns = int(state["watermark_ns"])  # type: ignore[call-overload]
        for stream, ts in state["latest"]:  # type: ignore[attr-defined]
            tracker._latest_ns[tuple(stream)] = int(ts)
        tracker._silent = {tuple(s) for s in state["silent"]}  # type: ignore[attr-defined]
        # (checkpoints written before the steps were kept have none: learnt again)
        for stream, ts in state.get("frame_ends", []):  # type: ignore[attr-defined]
            tracker._frame_end_ns[tuple(stream)] = int(ts)
        for stream, steps in state.get("steps", []):  # type: ignore[attr-defined]
            tracker._steps_ns[tuple(stream)] = deque((int(x) for x in steps), maxlen=STEP_MEMORY)
        tracker._newest_ns = int(state["newest_ns"])  # type: ignore[call-overload]
        for clock, ts in state["claims"]:  # type: ignore[attr-defined]
            tracker._claims_ns[clock] = int(ts)
        return tracker


def _as_tuple(stream: Hashable) -> tuple[object, ...]:
    return stream if isinstance(stream, tuple) else (stream,)
