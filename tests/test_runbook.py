"""The runbook file and the online models' checkpoints: clear errors, identical restores."""

from __future__ import annotations

import pickle

import pytest

from models.anomaly import AnomalyScorer
from models.rules import Finding
from models.runbook import RUNBOOK_PATH, RunbookError, load_runbook, parse_runbook

DESIGN_CONDITIONS = {
    "tp-straggler", "early-stop-skew", "pp-stage-imbalance", "moe-expert-imbalance",
    "request-length-skew", "kv-cache-pressure", "host-preprocessing-delay", "rank-hang",
    "clock-desync", "pcie-saturation", "pcie-degradation", "ingress-imbalance",
    "ingress-microburst", "fabric-congestion", "retransmit-storm", "pfc-pause-storm",
    "credit-starvation",
}  # fmt: skip


def test_the_bundled_runbook_has_every_condition_of_the_design() -> None:
    runbook = load_runbook()
    assert {c.id for c in runbook.conditions} == DESIGN_CONDITIONS
    for cond in runbook.conditions:
        assert cond.root_cause and cond.directive and cond.directive_text and cond.evidence


def _without(text: str, line: str) -> str:
    assert line in text
    return text.replace(line, "", 1)


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda t: t.replace('family = "compute"', 'family = "gpu"', 1), "family 'gpu'"),
        (lambda t: t.replace("k = 3, n = 4", "k = 5, n = 4", 1), "1 <= k <= n"),
        (lambda t: _without(t, 'directive = "deprioritize-replica"\n'), "field 'directive'"),
        (lambda t: t.replace('op = ">="', 'op = "=>"', 1), "op '=>'"),
        (lambda t: t.replace('feature = "nccl.last_arrival"', 'feature = "last_arrival"', 1),
         "must be '<source>.<name>'"),
        (lambda t: t + '\n[[condition]]\nid = "tp-straggler"\n', "missing field"),
        (lambda t: "this is [not toml", "not valid TOML"),
        (lambda t: t.replace("local = true", 'local = "yes"', 1), "local must be true or false"),
        (lambda t: t.replace('if_absent = "pass" }', 'if_absent = "skip" }', 1),
         "if_absent 'skip' is not one of ['fail', 'pass']"),
        (lambda t: t.replace("k = 3, n = 4", "k = 3.5, n = 4", 1), "integers 1 <= k <= n"),
        (lambda t: t.replace("persistence_if_absent = { k = 8, n = 8 }",
                             "persistence_if_absent = { k = 8, n = 6 }", 1),
         "persistence_if_absent needs integers 1 <= k <= n"),
        (lambda t: t.replace("k = 3, n = 4 }",
                             "k = 3, n = 4 }\npersistence_if_absent = { k = 4, n = 4 }", 1),
         'persistence_if_absent needs an evidence guard with if_absent = "pass"'),
        (lambda t: t.replace("persistence_fast = { k = 3, n = 4,",
                             "persistence_fast = { k = 5, n = 6,", 1),
         "persistence_fast must need fewer windows than persistence (k=5 >= 5)"),
        (lambda t: t.replace("persistence_fast = { k = 3, n = 4,",
                             "persistence_fast = { k = 3, n = 2,", 1),
         "persistence_fast needs integers 1 <= k <= n"),
        (lambda t: t.replace("persistence_fast = { k = 3, n = 4, when = [",
                             "persistence_fast = { k = 3, n = 4, unless = [", 1),
         "persistence_fast when: needs a non-empty list"),
    ],
)  # fmt: skip
def test_a_malformed_runbook_fails_with_a_clear_error(mutate: object, message: str) -> None:
    text = mutate(RUNBOOK_PATH.read_text())  # type: ignore[operator]
    with pytest.raises(RunbookError) as err:
        parse_runbook(text, "runbook-under-test.toml")
    assert "runbook-under-test.toml" in str(err.value)
    assert message in str(err.value)


def test_a_restored_model_checkpoint_scores_identically() -> None:
    scorer = AnomalyScorer(warmup_windows=5)
    for i in range(200):
        x = {"a": 0.5 + 0.01 * (i % 7), "b": 0.1 * (i % 3), "c": 0.2}
        scorer.learn_one("nic_port:east_west", x, at_ns=i)
    probes = [{"a": 0.0, "b": 0.0, "c": 0.2}, {"a": 0.55, "b": 0.1, "c": 0.2}]
    before = [scorer.score_one("nic_port:east_west", p) for p in probes]
    restored = AnomalyScorer(warmup_windows=5)
    restored.restore(scorer.checkpoint())
    assert [restored.score_one("nic_port:east_west", p) for p in probes] == before
    assert before[0] is not None and before[1] is not None and before[0] > before[1]


def test_a_checkpoint_of_another_version_is_refused() -> None:
    blob = pickle.dumps({"version": 999, "models": {}})
    with pytest.raises(ValueError, match="version 999"):
        AnomalyScorer().restore(blob)


def _findings_per_window(
    view_of: tuple[str, str, str, str], source: str, features: dict[str, float], windows: int
) -> list[list[Finding]]:
    """The bundled runbook's findings over ``windows`` windows in which one entity (entity,
    kind, deployment, node) shows the same features from ``source``."""
    from models.rules import RuleEngine
    from streams.views import EntityView

    engine = RuleEngine(load_runbook())
    entity, kind, deployment, node = view_of
    out = []
    for _ in range(windows):
        view = EntityView(entity, kind, deployment, node=node)
        view.sources_present.add(source)
        view.features.update(features)
        out.append(engine.evaluate([view]))
    return out


@pytest.mark.parametrize(("infiniband", "fires"), [(1.0, True), (0.0, False)])
def test_credit_starvation_is_an_infiniband_condition(infiniband: float, fires: bool) -> None:
    """Senders waiting with no loss: credits withheld on InfiniBand; on RoCE (no link-level
    credits) the same waits are pauses, which credit-starvation must not claim."""
    per_window = _findings_per_window(
        ("node01/mlx5_2", "nic_port", "llama70b-a", "node01"),
        "nic",
        {
            "nic.port_xmit_wait_per_s_peers_median": 5e6,
            "nic.port_xmit_wait_per_s_peer_ratio": 0.01,
            "nic.retransmit_events_per_s": 0.0,
            "nic.infiniband": infiniband,
        },
        windows=4,
    )
    found = [f.condition.id for window in per_window for f in window]
    assert ("credit-starvation" in found) is fires


@pytest.mark.parametrize(("clock_delta", "muted"), [(-0.15, False), (0.0, True)])
def test_a_congested_fabric_mutes_waits_but_not_a_throttled_gpu(
    clock_delta: float, muted: bool
) -> None:
    """fabric-congestion explains (and suppresses) a rank's collective waits; a late rank whose
    own GPU clock is 15 % below its peers' is a local cause no fabric explains."""
    from models.fusion import Fusion
    from models.rules import RuleEngine
    from streams.views import EntityView

    engine = RuleEngine(load_runbook())
    fusion = Fusion()
    emitted = []
    found: set[str] = set()
    for w in range(4):
        rank = EntityView("llama70b-a/rank5", "rank", "llama70b-a", node="node01")
        rank.sources_present |= {"nccl", "gpu"}
        rank.features.update(
            {
                "nccl.steps": 30,
                "nccl.last_arrival": 1.0,
                "nccl.caused_wait_ratio": 0.13,
                "straggler.beyond_spread": 1.0,
                "gpu.sm_clock_ratio_peer_delta": clock_delta,
            }
        )
        fabric = EntityView("fabric:roce0", "fabric", "")
        fabric.sources_present.add("nic")
        fabric.features["fabric.congested_port_share"] = 0.8
        findings = engine.evaluate([rank, fabric])  # both persist from the third window on
        found |= {f.condition.id for f in findings}
        emitted += fusion.update(findings, (w + 1) * 250_000_000)
    assert found == {"fabric-congestion", "tp-straggler"}
    straggler = [r for r in emitted if r["condition"] == "tp-straggler" and r["state"] == "firing"]
    assert (not straggler) is muted
    if not muted:
        assert straggler[0]["root_cause"].startswith("throttled or degraded GPU")


@pytest.mark.parametrize(
    ("noise_windows", "stage_from_window", "muted"),
    [((), 0, False), ((), 12, True), ((3,), 16, True), ((0, 3, 6, 9), 12, True)],
)
def test_a_congested_fabric_mutes_a_stage_imbalance_it_does_not_predate(
    noise_windows: tuple[int, ...], stage_from_window: int, muted: bool
) -> None:
    """fabric-congestion (congested from window 12) lists pp-stage-imbalance among the
    symptoms it explains, but a stage imbalance whose evidence held before the fabric's began
    (a static partition, there from the start) is not its symptom. One whose evidence began
    with it or after is muted, also when single windows of it held before, alone or in a
    sparse chain (a healthy replica's stage waits cross the threshold now and then): the
    run dates from the 28 of 32 windows that first confirmed it."""
    from models.fusion import Fusion
    from models.rules import RuleEngine
    from streams.views import EntityView

    engine = RuleEngine(load_runbook())
    fusion = Fusion()
    emitted = []
    hop = 250_000_000
    for w in range(60):  # pp-stage-imbalance persists 28 of 32 windows
        replica = EntityView("llama70b-a", "replica", "llama70b-a")
        replica.sources_present.add("nccl")
        stage_skewed = w >= stage_from_window or w in noise_windows
        replica.features["pp.stage_wait_ratio"] = 1.6 if stage_skewed else 1.0
        fabric = EntityView("fabric:roce0", "fabric", "")
        fabric.sources_present.add("nic")
        fabric.features["fabric.congested_port_share"] = 0.8 if w >= 12 else 0.0
        findings = engine.evaluate([replica, fabric], (w + 1) * hop)
        emitted += fusion.update(findings, (w + 1) * hop)
    firing = {r["condition"] for r in emitted if r["state"] == "firing"}
    assert "fabric-congestion" in firing
    assert ("pp-stage-imbalance" not in firing) is muted


def test_a_firing_verdict_keeps_suppressing_through_its_hysteresis() -> None:
    """request-length-skew suppresses kv-cache-pressure on its replica; a window where only
    kv-cache-pressure's evidence holds must not flip the replica's verdict to it while the
    request-length-skew verdict has not resolved, and once it has, kv-cache-pressure fires."""
    from models.fusion import Fusion
    from models.rules import Finding
    from streams.views import EntityView

    conditions = {c.id: c for c in load_runbook().conditions}

    def finding(condition: str) -> Finding:
        view = EntityView("llama70b-a", "replica", "llama70b-a")
        return Finding(conditions[condition], view, 0.5, 1.0, "cause", "d", "text", (), (), "")

    fusion = Fusion(resolve_after_windows=4)
    hop = 250_000_000
    out = fusion.update([finding("request-length-skew")], hop)
    assert [(r["condition"], r["state"]) for r in out] == [("request-length-skew", "firing")]
    emitted = []
    for w in range(2, 5):  # three windows with only kv's evidence: hysteresis holds
        emitted += fusion.update([finding("kv-cache-pressure")], w * hop)
    assert emitted == []
    assert fusion.firing()["llama70b-a"]["condition"] == "request-length-skew"
    emitted = fusion.update([finding("kv-cache-pressure")], 5 * hop)  # 4th clear window
    assert [(r["condition"], r["state"]) for r in emitted] == [("request-length-skew", "resolved")]
    emitted = fusion.update([finding("kv-cache-pressure")], 6 * hop)
    assert [(r["condition"], r["state"]) for r in emitted] == [("kv-cache-pressure", "firing")]


def _slow_preprocessing_windows(
    step_ms: float | None,
    longest_step_ms: float | None = None,
    windows: int = 8,
    arrivals: float = 6.0,
) -> list[list[Finding]]:
    """Findings of ``windows`` windows of a replica whose unqueued requests wait 6x its
    peer's time per 1,000 prompt tokens before prefill; engine steps of ``step_ms`` on
    average (None: unreported), the longest ``longest_step_ms`` (default: the mean);
    ``arrivals`` requests arriving per window."""
    features = {
        "requests.arrivals": arrivals,
        "requests.arrival_to_prefill_s_per_ktok_min_peer_ratio": 6.0,
        "requests.arrival_to_prefill_s_min": 0.26,
        "engine.kv_blocked_share": 0.0,
        "engine.batch_fill_ratio": 0.3,
        "engine.num_waiting": 0.0,
    }
    if step_ms is not None:
        features["engine.step_duration_ns"] = step_ms * 1e6
        features["engine.step_duration_ns_max"] = (longest_step_ms or step_ms) * 1e6
    return _findings_per_window(
        ("llama70b-a", "replica", "llama70b-a", "node00"), "engine", features, windows
    )


@pytest.mark.parametrize(
    ("step_ms", "longest_step_ms", "arrivals", "first_window"),
    [(40.0, 120.0, 6.0, 3), (40.0, 620.0, 6.0, 5), (40.0, 120.0, 1.0, 5), (None, None, 6.0, 8)],
)
def test_pre_processing_confirms_sooner_the_more_is_known_of_engine_steps(
    step_ms: float | None, longest_step_ms: float | None, arrivals: float, first_window: int
) -> None:
    """host-preprocessing-delay fires after 3 windows where no engine step of them ran long
    (a request's wait cannot be the end of a step it arrived during) and requests kept
    arriving; after the usual 5 of 6 where one step of each window was long though the mean
    is short (the tail of a burst of long prompts), or where one request a window arrived
    (a drained replica's last requests: one unlucky request is no envelope); and where the
    engine does not report step durations (vLLM) the guard is skipped and the rule asks for
    8 of 8, the run that bursts of long prompts in clean traffic do not reach."""
    per_window = _slow_preprocessing_windows(step_ms, longest_step_ms, 8, arrivals)
    fired = [
        i + 1
        for i, window in enumerate(per_window)
        if any(f.condition.id == "host-preprocessing-delay" for f in window)
    ]
    assert fired and fired[0] == first_window
    first = next(
        f for f in per_window[first_window - 1] if f.condition.id == "host-preprocessing-delay"
    )
    shown = {e.feature for e, _ in first.evidence}
    # a verdict of the fast path shows what let it confirm sooner
    assert ("engine.step_duration_ns_max" in shown) is (first_window == 3)


@pytest.mark.parametrize(("step_ms", "fires"), [(40.0, True), (650.0, False), (None, True)])
def test_pre_processing_is_not_read_from_long_engine_steps(
    step_ms: float | None, fires: bool
) -> None:
    """A request that reaches the engine during a step waits for the step to end; with the
    0.3-0.7 s steps of a burst of very long prompts, the arrival-to-prefill envelope is that
    wait, not pre-processing, and host-preprocessing-delay is withheld. Where the engine does
    not report step durations (vLLM) the guard is skipped, and the verdict names no value."""
    per_window = _slow_preprocessing_windows(step_ms)
    found = [f.condition.id for window in per_window for f in window]
    assert ("host-preprocessing-delay" in found) is fires
    if fires:
        shown = {e.feature for e, _ in per_window[-1][0].evidence}
        assert ("engine.step_duration_ns" in shown) is (step_ms is not None)


@pytest.mark.parametrize(("kv_blocked", "fires"), [(0.0, True), (1.0, False), (None, True)])
def test_an_engine_whose_queue_head_does_not_fit_in_kv_is_not_early_stop_skew(
    kv_blocked: float | None, fires: bool
) -> None:
    """A KV budget cut leaves the cache far from full (a third used) while the longest
    prompt at the head of the queue does not fit in what is free: the engine admits nothing
    beside free batch slots, as one that stopped backfilling does, but for KV. Where the
    blocked share is not known the guard is skipped."""
    features = {
        "engine.underfilled_with_queue_share": 1.0,
        "engine.num_waiting": 6.0,
        "engine.kv_cache_usage_ratio_max": 0.35,
        "engine.preemptions_per_s": 0.0,
        "engine.admitted_prompts_per_step": 0.0,
    }
    if kv_blocked is not None:
        features["engine.kv_admission_blocked_share"] = kv_blocked
    per_window = _findings_per_window(
        ("llama70b-b", "replica", "llama70b-b", "node02"), "engine", features, windows=4
    )
    found = [f.condition.id for window in per_window for f in window]
    assert ("early-stop-skew" in found) is fires
