"""Scenario files: bundled set, TOML loading, errors that say what to fix."""

from __future__ import annotations

import dataclasses
import tomllib
from pathlib import Path

import pytest

from producers.sim.faults import KINDS
from producers.sim.scenario import (
    ScenarioError,
    bundled_scenarios,
    load_scenario,
    scenario_from_dict,
    scenario_to_toml,
)
from producers.sim.suite import CONDITIONS

RUNBOOK = set(CONDITIONS)


def test_every_runbook_condition_has_a_bundled_scenario_injecting_it() -> None:
    names = set(bundled_scenarios())
    assert names >= RUNBOOK
    assert {"clean", "azure-code", "azure-conv", "mixed"} <= names
    for condition in RUNBOOK:
        kinds = {KINDS[f.kind].condition for f in load_scenario(condition).faults}
        assert condition in kinds, condition


def test_clean_scenarios_inject_nothing() -> None:
    for name in ("clean", "azure-code", "azure-conv"):
        assert load_scenario(name).faults == ()


def test_count_expands_deployment_names() -> None:
    names = [d.name for d in load_scenario("clean").deployments]
    assert names == ["llama70b-a", "llama70b-b"]


def test_unknown_key_is_an_error_naming_the_key(tmp_path: Path) -> None:
    path = tmp_path / "bad.toml"
    path.write_text('[[deployment]]\nname = "d"\ntpp = 4\n')
    with pytest.raises(ScenarioError, match=r"unknown keys \['tpp'\]"):
        load_scenario(path)


def test_unknown_fault_kind_lists_the_known_kinds() -> None:
    doc = {"deployment": [{"name": "d"}], "fault": [{"kind": "gpu-melt", "target": "d/rank0"}]}
    with pytest.raises(ScenarioError, match=r"known kinds: .*gpu-throttle"):
        scenario_from_dict(doc)


def test_credit_starvation_is_refused_on_a_roce_fabric() -> None:
    doc = {
        "deployment": [{"name": "d"}],
        "fault": [{"kind": "credit-withhold", "target": "d/rank0"}],
    }
    with pytest.raises(ScenarioError, match="infiniband"):
        scenario_from_dict(doc)


@pytest.mark.parametrize("severity", [3.0, 1.0, -0.5])
def test_a_router_weight_fault_needs_a_share_between_0_and_1(severity: float) -> None:
    doc = {
        "deployment": [{"name": "d", "count": 2}],
        "fault": [{"kind": "router-weight", "target": "d-a", "severity": severity}],
    }
    with pytest.raises(ScenarioError, match=r"share of all requests.*0 < severity < 1"):
        scenario_from_dict(doc)


def test_the_suites_router_weight_episodes_send_the_target_its_share() -> None:
    """The kind's reference and range were once stated as a ratio to the fair share (3.0,
    2-5) while the injector reads a share: the weight came out negative, the router fell back
    to even shares, and the suite's ingress-imbalance episodes injected nothing."""
    from producers.sim import Simulation
    from producers.sim.suite import make_suite

    kind = KINDS["router-weight"]
    assert 0.0 < kind.low <= kind.reference <= kind.high < 1.0
    episodes = [
        e for e in make_suite(3, seed=0, duration_s=20) if e.condition == "ingress-imbalance"
    ]
    reference = [e for e in episodes if e.reference][:2]
    assert len(reference) == 2
    for ep in reference:
        (fault,) = [f for f in ep.faults if f.kind == "router-weight"]
        sim = Simulation(ep.scenario, seed=ep.seed)
        for _ in sim.frames(duration_s=fault.onset_s + 0.5):
            pass
        share = sim.world.router.share()[sim.world.replica_index(fault.target)]
        assert share == pytest.approx(kind.reference)


def test_unknown_scenario_name_lists_the_bundled_ones() -> None:
    with pytest.raises(ScenarioError, match=r"bundled: .*tp-straggler"):
        load_scenario("no-such-scenario")


def test_wrong_type_says_which_key_and_type() -> None:
    with pytest.raises(ScenarioError, match="tp must be int"):
        scenario_from_dict({"deployment": [{"name": "d", "tp": "four"}]})


def test_every_bundled_scenario_round_trips_through_toml() -> None:
    for name in bundled_scenarios():
        scenario = load_scenario(name)
        text = scenario_to_toml(scenario)
        again = scenario_from_dict(tomllib.loads(text), source=scenario.source)
        assert again == scenario, name


def test_replace_derives_variants_without_touching_the_original() -> None:
    base = load_scenario("clean")
    variant = dataclasses.replace(base, duration_s=5.0)
    assert base.duration_s == 30.0 and variant.duration_s == 5.0
