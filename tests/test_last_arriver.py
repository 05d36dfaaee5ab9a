"""streams/last_arriver.py: which rank has become the last arriver (host-jitter stragglers)."""

from __future__ import annotations

from streams.last_arriver import LastArriverBaseline
from streams.views import EntityView

HOP_NS = 250_000_000


def _window(
    base: LastArriverBaseline, shares: dict[str, float], wait: float = 0.04
) -> dict[str, dict[str, float]]:
    views = []
    for rank, share in shares.items():
        view = EntityView(rank, "rank", "dep0")
        view.features.update(
            {"nccl.last_arrival": share, "nccl.steps": 30.0, "nccl.caused_wait_ratio": wait}
        )
        views.append(view)
    base.annotate(views)
    return {v.entity: v.features for v in views}


def test_the_lasting_spread_rank_is_never_new_and_a_rank_that_turns_late_is() -> None:
    base = LastArriverBaseline()
    for _ in range(20):  # rank3 is the slightly slower GPU: last in every step
        f = _window(base, {"dep0/rank3": 1.0, "dep0/rank5": 0.0})
        assert f["dep0/rank3"]["straggler.new_last_arriver"] == 0.0
        assert f["dep0/rank3"]["straggler.beyond_spread"] == 0.0
    f = _window(base, {"dep0/rank3": 0.0, "dep0/rank5": 1.0})  # rank5 jittered from here on
    assert f["dep0/rank5"]["straggler.new_last_arriver"] == 1.0
    assert f["dep0/rank5"]["straggler.beyond_spread"] == 1.0
    assert f["dep0/rank3"]["straggler.new_last_arriver"] == 0.0


def test_a_lasting_straggler_stays_new_through_dips_until_the_freeze_cap() -> None:
    base = LastArriverBaseline(max_freeze_ns=40 * HOP_NS)
    for _ in range(20):
        _window(base, {"dep0/rank5": 0.0})
    news = []
    for w in range(40):  # late, with a dip to 0.6 every fifth window: not learned
        share = 0.6 if w % 5 == 4 else 1.0
        f = _window(base, {"dep0/rank5": share})["dep0/rank5"]
        news.append(f["straggler.new_last_arriver"])
    assert news == [0.0 if w % 5 == 4 else 1.0 for w in range(40)]
    for _ in range(60):  # past the cap the rank's lateness becomes its norm
        last = _window(base, {"dep0/rank5": 1.0})["dep0/rank5"]
    assert last["straggler.new_last_arriver"] == 0.0


def test_no_verdict_before_warmup_and_thin_windows_are_ignored() -> None:
    base = LastArriverBaseline(warmup_ns=8 * HOP_NS)
    for _ in range(3):
        f = _window(base, {"dep0/rank5": 0.0})
    f = _window(base, {"dep0/rank5": 1.0})
    assert f["dep0/rank5"]["straggler.new_last_arriver"] == 0.0  # 4 windows: no baseline yet
    thin = EntityView("dep0/rank6", "rank", "dep0")
    thin.features.update({"nccl.last_arrival": 1.0, "nccl.steps": 3.0})
    base.annotate([thin])
    assert "straggler.new_last_arriver" not in thin.features


def test_window_counts_follow_the_hop() -> None:
    """The same durations in seconds at a 250 ms and a 1 s hop."""
    quarter = LastArriverBaseline()
    second = LastArriverBaseline(hop_ns=1_000_000_000)
    assert quarter.alpha == 0.05 and second.alpha == 0.2
    assert (quarter.warmup_windows, second.warmup_windows) == (8, 2)
    assert (quarter.max_freeze_windows, second.max_freeze_windows) == (2400, 600)
    assert (quarter.idle_windows, second.idle_windows) == (2400, 600)
    assert (quarter.prune_every_windows, second.prune_every_windows) == (240, 60)


def test_an_idle_rank_is_forgotten_after_the_idle_time() -> None:
    base = LastArriverBaseline(hop_ns=1_000_000_000, idle_ns=120_000_000_000)
    _window(base, {"dep0/rank1": 0.0, "dep0/rank2": 0.0})
    for _ in range(178):  # rank2 goes quiet (windows 2-179); pruning runs every 60 windows
        _window(base, {"dep0/rank1": 0.0})
    assert "dep0/rank2" in base._ranks  # at window 120 it was idle 119 windows: kept
    _window(base, {"dep0/rank1": 0.0})  # window 180: idle 179 windows > 120
    assert "dep0/rank2" not in base._ranks
