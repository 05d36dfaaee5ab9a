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
