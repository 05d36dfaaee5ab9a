"""The closed loop (sinks/controller): a controller that reads verdicts from a real Redis
through the scheduler client and acts on the simulated cluster, in event time.

Redis tests use db 15 (tests/conftest.py); each episode writes under its own key prefix.
"""

from __future__ import annotations

import itertools
import tomllib
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

import pytest

from models.detector import DetectorConfig
from producers.sim import Simulation, load_scenario
from producers.sim.scenario import scenario_from_dict
from sinks.client import FailPolicy
from sinks.config import SinkConfig
from sinks.controller.actions import (
    ROUTER_TARGET,
    Action,
    ActionKind,
    ControlCall,
    SimActuator,
    capacity_units,
)
from sinks.controller.audit import read_audit
from sinks.controller.controller import ControllerConfig
from sinks.controller.experiment import applicable, judge, wrong_actions
from sinks.controller.inject import Outage, WrongAttribution
from sinks.controller.loop import EpisodeRun, LoopConfig, Mode, run_episode
from sinks.controller.policy import Placement, Policy
from sinks.controller.safety import S, Safety, SafetyConfig
from sinks.controller.stepper import PeriodStepper

FAST_SAFETY = SafetyConfig(
    max_capacity_removed_ratio=0.25,
    min_dwell_ns=4 * S,
    reapply_cooldown_ns=2 * S,
)
# Healthy entities named as culprits, flapping between firing and resolved.
WRONG = (
    WrongAttribution(
        "llama70b-b/rank2",
        "llama70b-b",
        "rank-hang",
        "restart-rank",
        start_s=1.0,
        flap_period_s=1.5,
    ),
    WrongAttribution(
        "llama70b-a/rank1",
        "llama70b-a",
        "tp-straggler",
        "deprioritize-replica",
        start_s=1.5,
        flap_period_s=1.0,
    ),
    WrongAttribution(
        "llama70b-b",
        "llama70b-b",
        "kv-cache-pressure",
        "admission-control",
        start_s=2.0,
        flap_period_s=1.2,
    ),
)
WRONG_RUN_S = 16.0
RESULTS = Path(__file__).resolve().parent.parent / "docs" / "results" / "closed-loop"


def _config(url: str, prefix: str, **kwargs: Any) -> LoopConfig:
    return LoopConfig(redis_url=url, sink=SinkConfig(key_prefix=prefix), **kwargs)


@pytest.fixture(scope="module")
def wrong_runs(redis_test_url: str, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A clean episode with wrong attributions injected: controller on, dry-run, and off."""
    out: dict[str, Any] = {
        "off": run_episode(
            load_scenario("clean"), 1, LoopConfig(mode=Mode.OFF, duration_s=WRONG_RUN_S)
        )
    }
    audit_dir = tmp_path_factory.mktemp("audit")
    for mode in (Mode.ON, Mode.DRY_RUN):
        path = audit_dir / f"{mode.value}.jsonl"
        config = _config(
            redis_test_url,
            "test:closedloop:",
            mode=mode,
            duration_s=WRONG_RUN_S,
            wrong=WRONG,
            controller=ControllerConfig(safety=FAST_SAFETY),
            audit_path=path,
        )
        out[mode.value] = run_episode(load_scenario("clean"), 1, config)
        out[f"{mode.value}_path"] = path
    return out


def _action_key(action: dict[str, Any]) -> tuple[str, str]:
    return action["kind"], action["target"]


def test_audit_log_accounts_for_every_action(wrong_runs: dict[str, Any]) -> None:
    run: EpisodeRun = wrong_runs["on"]
    on_disk = read_audit(wrong_runs["on_path"])
    assert on_disk == run.audit
    applied = [e for e in run.audit if e["decision"] in ("apply", "undo")]
    assert sum(e["decision"] == "undo" for e in applied) >= 1
    assert sum(e["decision"] == "apply" for e in applied) >= 2
    # every change made to the simulator is one audited decision, and the reverse
    calls = Counter(
        (c.at_ns, c.action.kind.value, c.action.target, c.undo) for c in run.control_calls
    )
    audited = Counter(
        (e["at_ns"], e["action"]["kind"], e["action"]["target"], e["decision"] == "undo")
        for e in applied
    )
    assert set(calls) == set(audited)
    assert all(v == 1 for v in audited.values())
    for e in run.audit:
        cause = e["verdict"]
        assert cause["entity"] and cause["condition"] and cause["version"] > 0
        assert not e["dry_run"]
    undone_keys = [_action_key(e["action"]) for e in run.audit if e["decision"] == "undo"]
    applied_keys = [_action_key(e["action"]) for e in run.audit if e["decision"] == "apply"]
    assert all(k in applied_keys for k in undone_keys)
    assert all("trigger" in e for e in run.audit if e["decision"] == "undo")


def test_dry_run_decides_and_audits_but_never_touches_the_cluster(
    wrong_runs: dict[str, Any],
) -> None:
    run: EpisodeRun = wrong_runs["dry-run"]
    assert run.control_calls == []
    assert run.metrics == wrong_runs["off"].metrics
    assert any(e["decision"] == "apply" for e in run.audit)
    assert all(e["dry_run"] for e in run.audit)
    assert read_audit(wrong_runs["dry-run_path"]) == run.audit


def test_wrong_attribution_is_undone_at_most_once_per_dwell(wrong_runs: dict[str, Any]) -> None:
    run: EpisodeRun = wrong_runs["on"]
    assert run.injected_written >= 20  # the injected verdicts flapped every 1-1.5 s
    history: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
    for e in run.audit:
        if e["decision"] in ("apply", "undo"):
            history[_action_key(e["action"])].append(e)
    assert history
    for key, events in history.items():
        undos = [e["at_ns"] for e in events if e["decision"] == "undo"]
        assert all(b - a >= FAST_SAFETY.min_dwell_ns for a, b in itertools.pairwise(undos)), key
        assert len(undos) <= WRONG_RUN_S * S // FAST_SAFETY.min_dwell_ns
        for apply, undo in itertools.pairwise(events):
            if apply["decision"] == "apply" and undo["decision"] == "undo":
                assert (
                    undo["at_ns"] - apply["at_ns"] >= apply["dwell_ns"] >= FAST_SAFETY.min_dwell_ns
                )
    assert wrong_actions(run.audit, run.labels) == len(run.actions())


def _removed_after_calls(calls: list[ControlCall], base_weight: float = 1.0) -> list[float]:
    """Capacity share removed after each call, from what was really done to the router."""
    weight: dict[str, float] = {}
    admitted: dict[str, float] = {}
    drained: dict[str, bool] = {}
    out = []
    for call in calls:
        if call.method == "set_router_weight":
            weight[call.args[0]] = float(call.args[1])
        elif call.method == "set_admission_ratio":
            admitted[call.args[0]] = float(call.args[1])
        elif call.method in ("drain_replica", "undrain_replica"):
            drained[call.args[0]] = call.method == "drain_replica"
        removed = {r: max(0.0, 1.0 - w / base_weight) for r, w in weight.items()}
        for r, ratio in admitted.items():
            removed[r] = min(1.0, removed.get(r, 0.0) + 1.0 - ratio)
        removed |= {r: 1.0 for r, d in drained.items() if d}
        out.append(sum(removed.values()) / 2)
    return out


def test_capacity_removed_never_exceeds_the_cap(wrong_runs: dict[str, Any]) -> None:
    run: EpisodeRun = wrong_runs["on"]
    cap = FAST_SAFETY.max_capacity_removed_ratio
    assert max(t.capacity_removed_ratio for t in run.ticks) <= cap + 1e-9
    assert max(e["capacity_removed_ratio"] for e in run.audit) <= cap + 1e-9
    assert max(_removed_after_calls(run.control_calls)) <= cap + 1e-9
    # the cap did bind: a drain was shrunk or an action refused for capacity
    assert any(
        "clamped by the capacity cap" in e["reason"] or e["reason"].startswith("capacity cap")
        for e in run.audit
    )


def test_wrong_restart_attribution_is_bounded_by_the_restart_rules(
    wrong_runs: dict[str, Any],
) -> None:
    """A flapping wrong rank-hang restarts the healthy replica once (the price of a wrong
    attribution), then the crash-loop backoff holds every further restart (refused and
    audited), and nothing else restarts."""
    run: EpisodeRun = wrong_runs["on"]
    restarts = [c for c in run.control_calls if c.method == "restart_replica"]
    assert [c.args[0] for c in restarts] == ["llama70b-b"]
    assert FAST_SAFETY.restart_backoff_ns > WRONG_RUN_S * S
    refused = [
        e
        for e in run.audit
        if e["decision"] == "refuse" and e["action"]["kind"] == ActionKind.RESTART.value
    ]
    assert any(e["reason"].startswith("restart backoff") for e in refused)
    assert all(e["reason"].startswith(("restart backoff", "rate limit")) for e in refused)
    assert all(e["verdict"]["condition"] == "rank-hang" for e in refused)


def test_restart_rules_backoff_and_one_at_a_time() -> None:
    safety = Safety(SafetyConfig(restart_backoff_ns=60 * S, restart_downtime_ns=20 * S), 3)
    a, b = Action(ActionKind.RESTART, "r-a"), Action(ActionKind.RESTART, "r-b")
    assert safety.refusal(a, [], 0) == ""
    safety.note_apply(0, a)
    assert safety.refusal(b, [], 10 * S).startswith("restart limit")  # a is still down
    assert safety.refusal(b, [], 21 * S) == ""
    assert safety.refusal(a, [], 59 * S).startswith("restart backoff")
    assert safety.refusal(a, [], 60 * S) == ""
    safety.note_apply(60 * S, a)
    assert safety.refusal(a, [], 179 * S).startswith("restart backoff")  # doubled: 120 s
    assert safety.refusal(a, [], 180 * S) == ""
    # a restart never adds to removals that already reach the cap elsewhere
    capped = [Action(ActionKind.DEPRIORITIZE, "r-c", 0.25)]
    assert safety.refusal(b, capped, 300 * S).startswith("capacity cap")


def test_backfill_directive_improves_over_controller_off(
    redis_test_url: str, redis_key_prefix: str
) -> None:
    runs = {
        mode: run_episode(
            load_scenario("early-stop-skew"),
            1,
            _config(redis_test_url, redis_key_prefix, mode=mode, duration_s=16.0),
        )
        for mode in (Mode.OFF, Mode.ON)
    }
    on, off = runs[Mode.ON], runs[Mode.OFF]
    assert applicable("early-stop-skew")
    assert off.actions() == []
    assert [e["action"]["kind"] for e in on.actions()] == ["enable-backfill"]
    assert judge(on.metrics.as_dict(), off.metrics.as_dict())["improved"]
    assert on.metrics.goodput_tokens_per_s > off.metrics.goodput_tokens_per_s
    assert wrong_actions(on.audit, on.labels) == 0


def _spare_world(fault: bool) -> Any:
    """The runbook tp-straggler world (two replicas at 10 req/s) plus a warm spare at router
    weight 0 (docs/results/closed-loop/tp-straggler-spare.toml); without its fault: clean."""
    doc = tomllib.loads((RESULTS / "tp-straggler-spare.toml").read_text())
    if not fault:
        doc.pop("fault")
    return scenario_from_dict(doc, source="tp-straggler-spare")


def test_failover_to_a_warm_spare_beats_controller_off(
    redis_test_url: str, redis_key_prefix: str
) -> None:
    runs = {
        mode: run_episode(
            _spare_world(fault=True),
            1,
            _config(redis_test_url, redis_key_prefix, mode=mode, duration_s=16.0),
        )
        for mode in (Mode.OFF, Mode.ON)
    }
    on, off = runs[Mode.ON], runs[Mode.OFF]
    assert [e["action"] for e in on.actions()] == [
        {"kind": "failover-to-spare", "target": "llama70b-a", "ratio": 1.0, "spare": "llama70b-c"}
    ]
    assert [(c.method, c.args) for c in on.control_calls] == [
        ("drain_replica", ("llama70b-a",)),
        ("set_router_weight", ("llama70b-c", 1.0)),
    ]
    # the spare replaces the drained replica: no capacity removed, nothing undone
    assert on.undos() == [] and max(t.capacity_removed_ratio for t in on.ticks) == 0.0
    assert judge(on.metrics.as_dict(), off.metrics.as_dict())["improved"]
    assert on.metrics.itl_p99_ms < off.metrics.itl_p99_ms
    assert wrong_actions(on.audit, on.labels) == 0
    # the same world without the fault: the idle spare draws no verdict and no action
    clean = run_episode(
        _spare_world(fault=False),
        1,
        _config(redis_test_url, redis_key_prefix, mode=Mode.ON, duration_s=10.0),
    )
    assert clean.actions() == [] and not any(e["decision"] == "advisory" for e in clean.audit)


def _straggler(directive: str, slowdown: float) -> dict[str, Any]:
    """A tp-straggler verdict on llama70b-a/rank5 whose evidence measures its slowdown."""
    return {
        "entity": "llama70b-a/rank5",
        "condition": "tp-straggler",
        "directive": directive,
        "deployment": "llama70b-a",
        "evidence": [{"feature": "nccl.caused_wait_ratio", "value": slowdown}],
    }


def test_failover_takes_a_free_spare_once_then_falls_back() -> None:
    placement = Placement.from_topology(
        Simulation(_spare_world(fault=False), seed=1).topology, spares=["llama70b-c"]
    )
    assert placement.serving_count == 2
    policy = Policy(placement)
    verdict = _straggler("drain-node", 0.06)
    # with a spare free any slowdown is worth a failover (no capacity is lost) ...
    assert policy.plan(verdict, spare_free=True).actions == (
        Action(ActionKind.FAILOVER, "llama70b-a"),
    )
    # ... without one, the capacity rules of a deprioritization apply again
    assert "under the 10% worth moving load" in policy.plan(verdict).advisory
    with pytest.raises(ValueError, match="not replicas"):
        Placement(["r-a"], {}, spares=("r-z",))
    control = Simulation(_spare_world(fault=False), seed=1).control
    weights = {"llama70b-a": 1.0, "llama70b-b": 1.0, "llama70b-c": 0.0}
    actuator = SimActuator(control, weights, {}, spares=placement.spares)
    failover = Action(ActionKind.FAILOVER, "llama70b-a", spare="llama70b-c")
    assert capacity_units(failover) == 0.0 and not failover.reversible
    actuator.apply(failover, 0)
    with pytest.raises(ValueError, match="not an idle spare"):
        actuator.apply(Action(ActionKind.FAILOVER, "llama70b-b", spare="llama70b-c"), 1)
    with pytest.raises(ValueError, match="sticky"):
        actuator.undo(failover, 2)
    # a router rebalance leaves idle spares out; a spare in service is rebalanced like the rest
    actuator2 = SimActuator(control, weights, {}, spares=placement.spares)
    actuator2.apply(Action(ActionKind.REBALANCE_ROUTER, ROUTER_TARGET), 3)
    assert {c.args for c in actuator2.calls} == {("llama70b-a", 1.0), ("llama70b-b", 1.0)}


def test_clean_run_is_not_made_worse(redis_test_url: str, redis_key_prefix: str) -> None:
    runs = {
        mode: run_episode(
            load_scenario("clean"),
            2,
            _config(redis_test_url, redis_key_prefix, mode=mode, duration_s=10.0),
        )
        for mode in (Mode.OFF, Mode.ON)
    }
    on, off = runs[Mode.ON], runs[Mode.OFF]
    assert on.records_written > 0  # heartbeats went through Redis
    assert on.actions() == []
    assert on.metrics == off.metrics
    assert not judge(on.metrics.as_dict(), off.metrics.as_dict())["worse"]


@pytest.mark.parametrize("policy", [FailPolicy.OPEN, FailPolicy.CLOSED])
def test_unknown_health_is_respected(
    redis_test_url: str, redis_key_prefix: str, policy: FailPolicy
) -> None:
    """llama70b-b's pipeline goes quiet at 2 s; its data is stale after a 2 s bound."""
    config = _config(
        redis_test_url,
        redis_key_prefix,
        duration_s=8.0,
        outages=(Outage("llama70b-b", 2.0, 1e9),),
        detector=DetectorConfig(freshness_bound_ns=2 * S),
        controller=ControllerConfig(unknown_policy=policy),
    )
    run = run_episode(load_scenario("clean"), 1, config)
    actions = run.actions()
    if policy is FailPolicy.OPEN:
        assert actions == []
        return
    assert [(_action_key(e["action"]), e["verdict"]["condition"]) for e in actions] == [
        (("deprioritize-replica", "llama70b-b"), "unknown")
    ]
    # after the outage began, once the last heartbeat (<= 1 s old then) is older than 2 s
    assert 2 * S < actions[0]["at_ns"] - run.start_ns <= 5 * S


def test_stepper_hands_back_whole_periods_and_keeps_labels_open() -> None:
    sim = Simulation(load_scenario("tp-straggler"), seed=1)
    stepper = PeriodStepper(sim, 5.0)
    ends = []
    while (period := stepper.next_period()) is not None:
        assert len({f.event_time_ns for f in period}) == 1
        ends.append(period[0].event_time_ns)
        if len(ends) > 1:  # (the first period's end is found by reading one frame ahead)
            assert sim.now_ns == ends[-1]  # the next period has not been simulated yet
    assert [b - a for a, b in zip([sim.start_ns, *ends], ends, strict=False)] == [200_000_000] * 25
    (label,) = sim.labels
    assert label["end_ns"] == sim.start_ns + 5 * S  # not cut at the first period


def test_policy_maps_directives_to_targets() -> None:
    placement = Placement.from_topology(Simulation(load_scenario("clean"), seed=1).topology)
    policy = Policy(placement)

    def plan(entity: str, condition: str, directive: str) -> Any:
        return policy.plan(
            {"entity": entity, "condition": condition, "directive": directive, "deployment": ""}
        )

    assert plan("llama70b-a/rank5", "tp-straggler", "drain-node").actions == (
        Action(ActionKind.DEPRIORITIZE, "llama70b-a", 0.75),
    )
    assert plan("node01/mlx5_2->leaf0:p7", "retransmit-storm", "inspect-link").actions == (
        Action(ActionKind.REPATH, "node01/mlx5_2"),
    )
    assert plan("node01", "pcie-saturation", "throttle-offload").actions == (
        Action(ActionKind.THROTTLE_OFFLOAD, "node01", 0.5),
    )
    assert plan("llama70b-a/rank6", "rank-hang", "restart-rank").actions == (
        Action(ActionKind.RESTART, "llama70b-a"),
    )
    kv = {
        "entity": "llama70b-b",
        "condition": "kv-cache-pressure",
        "directive": "admission-control",
        "deployment": "llama70b-b",
        "severity": 0.3,
        "confidence": 1.0,
    }
    assert policy.plan(kv).actions == (Action(ActionKind.ADMISSION, "llama70b-b", 0.6),)
    # a load-class verdict at the floor of its severity scale is advisory
    assert "floor of its severity scale" in policy.plan({**kv, "severity": 0.05}).advisory
    # a measured slowdown deprioritizes in proportion (weight kept 1 - slowdown, >= 0.5)
    straggler = _straggler("deprioritize-replica", 0.06)
    assert "under the 10% worth moving load for" in policy.plan(straggler).advisory
    for slowdown, kept in ((0.12, 0.88), (0.8, 0.5)):
        verdict = _straggler("deprioritize-replica", slowdown)
        assert policy.plan(verdict).actions == (
            Action(ActionKind.DEPRIORITIZE, "llama70b-a", kept),
        )
    assert plan("fabric:roce0", "fabric-congestion", "tune-congestion-control").advisory
    assert plan("node01/gpu2", "pcie-degradation", "drain-node").advisory  # config class


def test_safety_shrinks_a_drain_to_the_cap_and_rate_limits() -> None:
    safety = Safety(SafetyConfig(max_capacity_removed_ratio=0.25, max_actions_per_window=2), 2)
    drain = Action(ActionKind.DRAIN, "llama70b-a")
    clamped = safety.clamp(drain, [])
    assert clamped == Action(ActionKind.DEPRIORITIZE, "llama70b-a", 0.5)
    other = Action(ActionKind.DEPRIORITIZE, "llama70b-b", 0.75)
    assert clamped is not None
    assert safety.clamp(other, [clamped]) is None
    assert safety.refusal(other, [clamped], 0).startswith("capacity cap")
    safety.note_apply(0)
    safety.note_apply(1)
    backfill = Action(ActionKind.ENABLE_BACKFILL, "llama70b-b")
    assert safety.refusal(backfill, [], 2).startswith("rate limit")
    assert safety.refusal(backfill, [], 10 * S + 2) == ""


def test_wrong_attribution_spec_parses() -> None:
    w = WrongAttribution.parse("llama70b-b/rank2:rank-hang:restart-rank:1.5")
    assert (w.entity, w.deployment, w.condition, w.directive) == (
        "llama70b-b/rank2",
        "llama70b-b",
        "rank-hang",
        "restart-rank",
    )
    assert [w.firing_at(t) for t in (1.0, 2.1, 3.6, 5.1)] == [False, True, False, True]
    with pytest.raises(ValueError, match="ENTITY:CONDITION:DIRECTIVE"):
        WrongAttribution.parse("llama70b-b/rank2")


def test_closed_loop_command_writes_json_html_and_table(
    tmp_path: Path, redis_test_url: str, redis_key_prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    import argparse
    import json

    from sinks.controller.cli import add_closed_loop_commands

    monkeypatch.setenv("REDIS_URL", redis_test_url)
    monkeypatch.setenv("SKEWSCOPE_SINK_KEY_PREFIX", redis_key_prefix)
    parser = argparse.ArgumentParser()
    parser.add_argument("--config")
    add_closed_loop_commands(parser.add_subparsers(dest="command"))
    out = tmp_path / "cl"
    argv = ["closed-loop", "--scenario", "clean", "--duration", "7"]
    argv += ["--json", str(out / "r.json"), "--html", str(out / "r.html")]
    argv += ["--markdown", str(out / "r.md"), "--audit-dir", str(out / "audit")]
    args = parser.parse_args(argv)
    assert args.func(args) == 0
    result = json.loads((out / "r.json").read_text())
    (row,) = result["episodes"]
    assert set(row["modes"]) == {"off", "dry-run", "on"}
    assert result["conditions"]["clean"]["worse"] == 0
    html = (out / "r.html").read_text()
    assert html.count("<svg") == 1 and "mode-on" in html and "mode-off" in html
    assert (out / "r.md").read_text().startswith("| condition |")
    assert sorted(p.name for p in (out / "audit").iterdir()) == [
        "clean@1.dry-run.audit.jsonl",
        "clean@1.on.audit.jsonl",
    ]
