"""The request join on the simulator's engine events: its time to first token is the engine's."""

from __future__ import annotations

from producers.sim import Simulation, load_scenario
from schemas.columns import unpack
from streams.features.requests import RequestExtractor
from streams.hopping import HoppingSpec

# Both events of a request are stamped by the same host clock, so its offset cancels; only
# its jitter (a few microseconds in the simulator) separates the two measurements.
CLOCK_JITTER_BOUND_NS = 100_000


def test_request_join_ttft_equals_the_engines() -> None:
    sim = Simulation(load_scenario("clean"), seed=3)
    join = RequestExtractor(HoppingSpec(), keep_joined=True)
    for frame in sim.frames(duration_s=12.0):
        if frame.schema == "EngineRequestFrame":
            join.ingest(frame.record, unpack(frame.schema, frame.record))
    engines = {engine.name: engine for engine in sim.world.engines}
    assert len(join.stats.joined) > 50
    for joined in join.stats.joined:
        name, index = joined.request_id.rsplit("-", 1)
        engine = engines[name]
        true_ttft_ns = engine.req_first_token[int(index)] - engine.req_arrival[int(index)]
        assert abs(joined.ttft_ns - true_ttft_ns) <= CLOCK_JITTER_BOUND_NS, joined
    assert join.stats.unmatched_events == 0


def test_peer_ratio_of_a_minimum_in_seconds_uses_the_seconds_floor() -> None:
    """``requests.arrival_to_prefill_s_min`` is in seconds: its peer ratio is against the
    peers' median (floored at 10 ms), not against the 1.0 floor of unitless features, which
    made a 12x slower pre-processing read as a ratio of 0.12."""
    from streams.views import EntityView, add_peer_ratios

    slow = EntityView("llama70b-a", "replica", "llama70b-a")
    peer = EntityView("llama70b-b", "replica", "llama70b-b")
    slow.features["requests.arrival_to_prefill_s_min"] = 0.12
    peer.features["requests.arrival_to_prefill_s_min"] = 0.01
    add_peer_ratios([slow, peer], ["requests.arrival_to_prefill_s_min"])
    assert slow.features["requests.arrival_to_prefill_s_min_peer_ratio"] == 12.0
    assert peer.features["requests.arrival_to_prefill_s_min_peer_ratio"] < 0.1
