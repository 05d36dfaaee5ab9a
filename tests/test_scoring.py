"""Scoring rules (models/scoring.py) on hand-made labels and verdicts."""

from __future__ import annotations

from typing import Any

import pytest

from models.runbook import load_runbook
from models.scoring import (
    clean_summary,
    confusion,
    episodes,
    match_labels,
    score,
    wilson_ci95,
)

S = 1_000_000_000
RUNBOOK = load_runbook()


def label(
    entity: str,
    condition: str,
    onset_s: float,
    end_s: float | None,
    severity: float = 0.15,
    label_id: str = "",
) -> dict[str, Any]:
    return {
        "label_id": label_id or f"{entity}-{condition}-{onset_s}",
        "scenario": "test",
        "deployment": entity.split("/")[0],
        "entity": entity,
        "condition": condition,
        "onset_ns": int(onset_s * S),
        "end_ns": None if end_s is None else int(end_s * S),
        "severity": severity,
        "severity_unit": "slowdown_ratio",
        "cause": "test",
    }


class Verdicts:
    """Builds Verdict records with per-entity versions, as Fusion stamps them."""

    def __init__(self) -> None:
        self.records: list[dict[str, Any]] = []
        self.versions: dict[str, int] = {}

    def add(
        self, entity: str, condition: str, at_s: float, state: str = "firing", severity: float = 0.5
    ) -> Verdicts:
        version = self.versions.get(entity, 0) + 1
        self.versions[entity] = version
        self.records.append(
            {
                "entity": entity,
                "entity_kind": "rank",
                "deployment": entity.split("/")[0],
                "condition": condition,
                "state": state,
                "severity": severity,
                "confidence": 1.0,
                "evidence": [],
                "first_seen_ns": int(at_s * S),
                "last_seen_ns": int(at_s * S),
                "version": version,
            }
        )
        return self


def cond(result: dict[str, Any], condition: str = "tp-straggler") -> dict[str, Any]:
    return result["conditions"][condition]


def test_refresh_record_is_not_a_second_episode() -> None:
    v = Verdicts().add("d/rank5", "tp-straggler", 11).add("d/rank5", "tp-straggler", 16)
    eps = episodes(v.records)
    assert len(eps) == 1
    assert eps[0].records == 2 and eps[0].end_ns is None
    out = score([label("d/rank5", "tp-straggler", 10, 30)], v.records, RUNBOOK)
    assert cond(out)["episodes"] == 1 and cond(out)["precision"] == 1.0


def test_resolution_ends_an_episode_and_refiring_opens_another() -> None:
    v = (
        Verdicts()
        .add("d/rank5", "tp-straggler", 11)
        .add("d/rank5", "tp-straggler", 14, state="resolved")
        .add("d/rank5", "tp-straggler", 40)
    )
    eps = episodes(v.records)
    assert [(e.start_ns // S, None if e.end_ns is None else e.end_ns // S) for e in eps] == [
        (11, 14),
        (40, None),
    ]
    out = score([label("d/rank5", "tp-straggler", 10, 20)], v.records, RUNBOOK)
    # the second episode starts after end + grace (25 s): a false positive
    assert cond(out)["episodes"] == 2 and cond(out)["precision"] == 0.5


def test_condition_change_on_one_entity_ends_the_first_episode() -> None:
    v = Verdicts().add("d/rank5", "tp-straggler", 11).add("d/rank5", "rank-hang", 13)
    eps = episodes(v.records)
    assert [(e.condition, e.start_ns // S, e.end_ns) for e in eps] == [
        ("tp-straggler", 11, 13 * S),
        ("rank-hang", 13, None),
    ]


def test_latency_is_last_seen_of_first_firing_record_minus_onset() -> None:
    v = Verdicts().add("d/rank5", "tp-straggler", 11.25).add("d/rank5", "tp-straggler", 16.25)
    out = score([label("d/rank5", "tp-straggler", 10.0, 30)], v.records, RUNBOOK)
    assert cond(out)["recall"] == 1.0
    assert cond(out)["latency_p50_s"] == pytest.approx(1.25)


def test_detection_after_end_plus_grace_is_a_miss() -> None:
    v = Verdicts().add("d/rank5", "tp-straggler", 25.5)
    out = score([label("d/rank5", "tp-straggler", 10, 20)], v.records, RUNBOOK, grace_ns=5 * S)
    assert cond(out)["recall"] == 0.0 and cond(out)["latency_p50_s"] is None
    assert cond(out)["precision"] == 0.0
    inside = score(
        [label("d/rank5", "tp-straggler", 10, 20)],
        Verdicts().add("d/rank5", "tp-straggler", 24.9).records,
        RUNBOOK,
    )
    assert cond(inside)["recall"] == 1.0


def test_episode_that_began_before_onset_does_not_detect_it() -> None:
    v = Verdicts().add("d/rank5", "tp-straggler", 2).add("d/rank5", "tp-straggler", 12)
    out = score([label("d/rank5", "tp-straggler", 10, 20)], v.records, RUNBOOK)
    assert cond(out)["recall"] == 0.0
    assert cond(out)["precision"] == 0.0  # started 8 s before onset, beyond the grace


def test_lookalike_label_never_makes_a_verdict_true() -> None:
    v = Verdicts().add("d/rank5", "tp-straggler", 12)
    labels = [label("d/rank5", "lookalike:load-burst", 10, 20)]
    out = score(labels, v.records, RUNBOOK)
    assert cond(out)["precision"] == 0.0 and cond(out)["recall"] is None
    assert cond(out)["f1"] == 0.0
    assert out["lookalikes"] == {"labels": 1, "provoked_episodes": 1, "labels_with_verdicts": 1}


def test_verdict_on_the_wrong_entity_is_false_and_misattributed() -> None:
    v = Verdicts().add("d/rank2", "tp-straggler", 11)
    out = score([label("d/rank5", "tp-straggler", 10, 20)], v.records, RUNBOOK)
    c = cond(out)
    assert (c["recall"], c["precision"], c["attribution"]) == (0.0, 0.0, 0.0)


def test_attribution_is_decided_by_the_first_verdict_after_onset() -> None:
    # the victim rank2 is blamed first, the culprit rank5 a window later: detected, not
    # attributed
    v = Verdicts().add("d/rank2", "tp-straggler", 11).add("d/rank5", "tp-straggler", 11.25)
    out = score([label("d/rank5", "tp-straggler", 10, 20)], v.records, RUNBOOK)
    assert cond(out)["recall"] == 1.0 and cond(out)["attribution"] == 0.0
    right_first = Verdicts().add("d/rank5", "tp-straggler", 11).add("d/rank2", "tp-straggler", 12)
    out = score([label("d/rank5", "tp-straggler", 10, 20)], right_first.records, RUNBOOK)
    assert cond(out)["attribution"] == 1.0


def test_unattributed_anomaly_does_not_take_the_first_place() -> None:
    v = Verdicts().add("d/rank2", "unattributed-anomaly", 10.5).add("d/rank5", "tp-straggler", 11)
    out = score([label("d/rank5", "tp-straggler", 10, 20)], v.records, RUNBOOK)
    assert cond(out)["attribution"] == 1.0


def test_verdict_explained_by_a_concurrent_label_is_no_wrong_blame() -> None:
    labels = [label("d/rank5", "tp-straggler", 10, 20), label("node1", "pcie-saturation", 9, 20)]
    v = Verdicts().add("node1", "pcie-saturation", 10.5).add("d/rank5", "tp-straggler", 11)
    out = score(labels, v.records, RUNBOOK)
    assert cond(out)["attribution"] == 1.0
    assert cond(out, "pcie-saturation")["attribution"] == 1.0


def test_no_verdict_at_all_is_an_attribution_miss() -> None:
    out = score([label("d/rank5", "tp-straggler", 10, 20)], [], RUNBOOK)
    c = cond(out)
    assert (c["recall"], c["attribution"], c["precision"], c["f1"]) == (0.0, 0.0, None, 0.0)


def test_heartbeats_and_source_silent_records_are_bookkeeping() -> None:
    v = (
        Verdicts()
        .add("d/heartbeat", "heartbeat", 11, state="resolved")
        .add("node1#nccl", "source-silent", 12)
    )
    assert episodes(v.records) == []
    assert clean_summary(v.records, node_hours=1.0)["false_episodes"] == 0


def test_wilson_interval_matches_published_values() -> None:
    assert wilson_ci95(0, 10) == pytest.approx([0.0, 0.2775], abs=1e-4)
    assert wilson_ci95(5, 10) == pytest.approx([0.2366, 0.7634], abs=1e-4)
    assert wilson_ci95(30, 30) == pytest.approx([0.8865, 1.0], abs=1e-4)
    assert wilson_ci95(0, 0) is None


def test_f1_interval_is_reproducible_and_brackets_the_point_estimate() -> None:
    labels = [label(f"d/rank{i}", "tp-straggler", 10 + 100 * i, 20 + 100 * i) for i in range(20)]
    v = Verdicts()
    for i in range(15):
        v.add(f"d/rank{i}", "tp-straggler", 11 + 100 * i)
    for i in range(3):
        v.add(f"d/rank{i}", "tp-straggler", 30 + 100 * i, state="resolved")
        v.add(f"d/rank{i}", "tp-straggler", 60 + 100 * i)  # false: after end + grace
    first, second = score(labels, v.records, RUNBOOK), score(labels, v.records, RUNBOOK)
    c = cond(first)
    assert c["f1_ci95"] == cond(second)["f1_ci95"]
    lo, hi = c["f1_ci95"]
    assert lo < c["f1"] < hi
    assert c["precision"] == pytest.approx(15 / 18) and c["recall"] == pytest.approx(15 / 20)
    assert c["precision_ci95"] == wilson_ci95(15, 18)


def test_recall_by_severity_splits_weak_from_strong_faults() -> None:
    labels = [
        label(
            f"d/rank{i}",
            "tp-straggler",
            10 + 100 * i,
            20 + 100 * i,
            severity=0.05 if i < 4 else 0.3,
        )
        for i in range(8)
    ]
    v = Verdicts()
    for i in range(8):
        if i >= 4 or i == 0:
            v.add(f"d/rank{i}", "tp-straggler", 11 + 100 * i)
    assert cond(score(labels, v.records, RUNBOOK))["recall_by_severity"] == {
        "0.05": 0.25,
        "0.3": 1.0,
    }
    graded = [
        label(f"d/rank{i}", "tp-straggler", 10 + 100 * i, 20 + 100 * i, severity=0.01 * (i + 1))
        for i in range(8)
    ]
    buckets = cond(score(graded, [], RUNBOOK))["recall_by_severity"]
    assert len(buckets) == 4 and set(buckets.values()) == {0.0}


def test_clean_run_counts_false_episodes_per_node_hour() -> None:
    v = (
        Verdicts()
        .add("d/rank1", "tp-straggler", 5)
        .add("d/rank1", "tp-straggler", 9, state="resolved")
        .add("node2", "unattributed-anomaly", 30)
    )
    out = clean_summary(v.records, node_hours=4.0)
    assert out["false_episodes"] == 2 and out["false_episodes_per_node_hour"] == 0.5
    assert out["by_condition"] == {"tp-straggler": 1, "unattributed-anomaly": 1}


def test_novel_fault_is_answered_by_unattributed_anomaly_on_a_related_entity() -> None:
    labels = [
        label("node3/mlx5_1", "novel:nic-stall", 10, 20),
        label("node4/mlx5_0", "novel:nic-stall", 100, 120),
    ]
    v = (
        Verdicts()
        .add("node3/mlx5_1", "unattributed-anomaly", 12)
        .add("node4", "retransmit-storm", 101)
    )
    novel = score(labels, v.records, RUNBOOK)["novel"]
    assert (novel["labels"], novel["unattributed"], novel["misread_as_runbook"]) == (2, 1, 1)
    assert novel["latency_p50_s"] == 2.0


def test_confusion_rows_are_label_conditions_and_columns_first_verdicts() -> None:
    labels = [
        label("d/rank5", "tp-straggler", 10, 20),
        label("node1", "pcie-saturation", 50, 60),
        label("d", "lookalike:load-burst", 80, 85),
    ]
    v = Verdicts().add("d/rank5", "tp-straggler", 11).add("node1", "pcie-degradation", 52)
    table = confusion(match_labels(labels, episodes(v.records)))
    assert table == {
        "lookalike:load-burst": {"none": 1},
        "pcie-saturation": {"pcie-degradation": 1},
        "tp-straggler": {"tp-straggler": 1},
    }


def test_score_has_every_runbook_condition_in_the_evaluate_shape() -> None:
    out = score([], [], RUNBOOK)
    assert set(out["conditions"]) == {c.id for c in RUNBOOK.conditions}
    keys = {
        "precision",
        "recall",
        "f1",
        "f1_ci95",
        "precision_ci95",
        "recall_ci95",
        "attribution",
        "latency_p50_s",
        "latency_p95_s",
        "class",
        "episodes",
        "recall_by_severity",
    }
    for c in out["conditions"].values():
        assert keys <= set(c)
    assert cond(out, "pcie-degradation")["class"] == "config"
