"""Which rank has *become* the last arriver: a per-rank baseline of the last-arrival share.

In a blocking collective the late rank has the shortest duration, and with real GPUs one rank
of every TP group is always a little slower than the others (the lasting per-GPU spread): it is
the last arriver in every step, for as long as the group runs. A straggler whose GPU shows
nothing (host jitter: a CPU delay before each kernel launch, clocks normal) makes a wait of the
same size as that spread at its reference severity (~3.5 % of the step against the spread
rank's 5 %), so the size of the wait cannot tell them apart. What can is the rank's history:
the spread rank was the last arriver before; a jittered rank was not.

:class:`LastArriverBaseline` keeps, per rank, an exponentially weighted mean of its window
``nccl.last_arrival`` share (event time: one update per closed window), and sets
``straggler.new_last_arriver`` = 1 on a rank view when the rank is now the last arriver
(share >= ``now_share``) but its baseline, after at least ``warmup_ns`` of event time, is at most
``baseline_share``. It does not learn while a rank with such a baseline leans late (share >=
``freeze_share``, a window or two of dips included), for at most ``max_freeze_ns``: a
straggler that lasts stays new instead of becoming the norm (as the online models are
protected from learning on anomalies), and after the cap (10 min) it is the norm. Ranks not
seen for ``idle_ns`` are forgotten.

Limits: a rank already jittered when the baseline starts (a worker restarting without its
checkpoint, a fault older than the deployment) is learned as the norm; a rank that becomes the
last arriver for a benign reason (its peer GPU was replaced by a faster one) reads as new for
up to the freeze cap (the rule still needs it to cost its peers >= 3 % of each step).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from streams.views import EntityView, beyond_spread


@dataclass
class _RankState:
    share: float
    windows: int
    last_window: int
    frozen_windows: int = 0


@dataclass
class LastArriverBaseline:
    """Durations are event time; :meth:`__post_init__` turns them into counts of windows of
    the detector's hop (``hop_ns``), so another hop keeps their meaning in seconds."""

    hop_ns: int = 250_000_000  # the detector's window hop: one update per closed window
    memory_ns: int = 5_000_000_000  # the baseline's time constant (alpha = hop / memory)
    warmup_ns: int = 2_000_000_000
    baseline_share: float = 0.6  # a near-tie (two ranks last about half the time each) is not
    now_share: float = 0.75  # the last arriver yet; its breaking to one side is the change
    freeze_share: float = 0.75
    max_freeze_ns: int = 600_000_000_000  # 10 min
    min_steps: float = 8.0
    idle_ns: int = 600_000_000_000  # forget ranks not seen for 10 min
    prune_every_ns: int = 60_000_000_000
    _ranks: dict[str, _RankState] = field(default_factory=dict)
    _window: int = 0

    def __post_init__(self) -> None:
        if self.hop_ns <= 0:
            raise ValueError(f"LastArriverBaseline: hop_ns must be positive, got {self.hop_ns}")
        self.alpha = min(1.0, self.hop_ns / self.memory_ns)
        self.warmup_windows = _windows(self.warmup_ns, self.hop_ns)
        self.max_freeze_windows = _windows(self.max_freeze_ns, self.hop_ns)
        self.idle_windows = _windows(self.idle_ns, self.hop_ns)
        self.prune_every_windows = max(1, _windows(self.prune_every_ns, self.hop_ns))

    def annotate(self, views: list[EntityView]) -> None:
        """Set ``straggler.new_last_arriver`` on rank views, then learn from this window."""
        self._window += 1
        for view in views:
            if view.kind != "rank":
                continue
            f = view.features
            share = f.get("nccl.last_arrival")
            if share is None or f.get("nccl.steps", 0.0) < self.min_steps:
                continue
            state = self._ranks.get(view.entity)
            new = (
                state is not None
                and state.windows >= self.warmup_windows
                and state.share <= self.baseline_share
                and share >= self.now_share
            )
            f["straggler.new_last_arriver"] = 1.0 if new else 0.0
            f["straggler.beyond_spread"] = beyond_spread(f)
            if state is None:
                self._ranks[view.entity] = _RankState(share, 1, self._window)
                continue
            state.last_window = self._window
            leaning_late = (
                state.windows >= self.warmup_windows
                and state.share <= self.baseline_share
                and share >= self.freeze_share
            )
            if leaning_late:
                state.frozen_windows += 1
                if state.frozen_windows <= self.max_freeze_windows:
                    continue  # a straggler now: do not learn it as the norm
            else:
                state.frozen_windows = 0
            state.share += self.alpha * (share - state.share)
            state.windows += 1
        if self._window % self.prune_every_windows == 0:
            stale = self._window - self.idle_windows
            self._ranks = {r: s for r, s in self._ranks.items() if s.last_window >= stale}


def _windows(duration_ns: int, hop_ns: int) -> int:
    """Windows of hop_ns that cover duration_ns (rounded up)."""
    return -(-duration_ns // hop_ns)
