"""The suite evaluation driver: one episode end to end, isolation, ablation, the table."""

from __future__ import annotations

import pytest

from models.evaluate import EPISODE_SLOT_NS, _Framed, run_episode
from models.report_table import markdown
from models.runbook import load_runbook
from models.scoring import score
from producers.sim import Simulation
from producers.sim.scenario import ScenarioError
from producers.sim.suite import make_suite


@pytest.fixture(scope="module")
def suite() -> list:
    return make_suite(episodes_per_condition=1, seed=0, duration_s=15.0)


def _episode(suite: list, condition: str):  # type: ignore[no-untyped-def]
    return next(e for e in suite if e.condition == condition and e.reference)


def test_reference_straggler_episode_is_detected_and_attributed(suite: list) -> None:
    result = run_episode((_episode(suite, "tp-straggler"), frozenset(), "", 3))
    assert all(x["entity"].startswith(result.episode_id + "|") for x in result.labels)
    assert all(x["onset_ns"] >= 3 * EPISODE_SLOT_NS for x in result.labels)
    scored = score(result.labels, result.verdicts, load_runbook())
    row = scored["conditions"]["tp-straggler"]
    assert row["recall"] == 1.0 and row["attribution"] == 1.0
    assert row["latency_p50_s"] is not None and row["latency_p50_s"] < 5
    busy = result.utilization
    assert 0.0 < busy["busy"] <= 1.0
    assert busy["busy"] >= max(busy["batch"], busy["kv"], busy["prefill"])


def test_without_nic_the_retransmit_storm_is_not_seen(suite: list) -> None:
    episode = _episode(suite, "retransmit-storm")
    seen = run_episode((episode, frozenset(), "", 0))
    blind = run_episode((episode, frozenset({"nic", "dpu"}), "", 0))
    firing = {v["condition"] for v in seen.verdicts if v["state"] == "firing"}
    blind_firing = {v["condition"] for v in blind.verdicts if v["state"] == "firing"}
    assert "retransmit-storm" in firing
    assert "retransmit-storm" not in blind_firing


def test_a_frame_period_for_the_suite_reaches_the_frames_and_keeps_the_fault(
    suite: list,
) -> None:
    episode = _episode(suite, "tp-straggler")
    framed = _Framed(1000)(episode)
    assert framed.scenario.cluster.frame_interval_ms == 1000
    assert episode.scenario.cluster.frame_interval_ms == 200  # the suite's own is untouched
    assert _Framed(None)(episode) is episode
    fine = sum(1 for _ in Simulation(episode.scenario, seed=0).frames(duration_s=2.0))
    coarse = sum(1 for _ in Simulation(framed.scenario, seed=0).frames(duration_s=2.0))
    assert coarse * 5 == fine  # one frame a second per feed instead of five
    result = run_episode((framed, frozenset(), "", 0))
    assert "tp-straggler" in {v["condition"] for v in result.verdicts if v["state"] == "firing"}
    with pytest.raises(ScenarioError, match="multiple of 100"):
        _Framed(150)(episode)


def test_markdown_table_states_targets() -> None:
    runbook = load_runbook()
    result = score([], [], runbook)
    result["clean"] = {
        "azure-conv": {
            "false_verdicts": 0,
            "node_hours": 0.133,
            "false_per_node_hour": 0.0,
            "by_condition": {},
            "utilization": 0.85,
            "time_compression": 1.5,
            "trace_offset_s": 1770.0,
        }
    }
    result["novel"] = {
        "recall": 0.8,
        "recall_ci95": [0.49, 0.94],
        "episodes": 10,
        "misread_as_runbook": 1,
        "false_per_node_hour": 0.0,
    }
    result["clean_segments"] = {
        "azure-code": {
            "segments": 8,
            "duration_s": 120.0,
            "time_compression": 1.5,
            "node_hours": 1.067,
            "false_verdicts": 1,
            "false_per_node_hour": 0.937,
            "by_condition": {"host-preprocessing-delay": 1},
            "load_labels": {"kv-cache-pressure": 5},
            "utilization_median": 0.3,
            "utilization_range": [0.02, 0.66],
        }
    }
    table = markdown(result)
    assert table.count("\n| ") == len(runbook.conditions)  # data rows after the header
    assert "targets met" in table and "0.80 of 10 episodes" in table
    assert "8 stretches of 120 s" in table and "(0.937 per node-hour)" in table
    assert "- clean `azure-conv` (1.5x from 1770 s): 0 false verdict episodes" in table
