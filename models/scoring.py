"""Score verdicts against fault labels: the numbers of ``skewscope evaluate`` and backtests.

Pure functions over plain dicts (FaultLabel and Verdict records), no I/O:

>>> from models.runbook import load_runbook
>>> label = {"label_id": "l1", "entity": "dep0/rank5", "condition": "tp-straggler",
...          "onset_ns": 0, "end_ns": 10_000_000_000, "severity": 0.2}
>>> fire = {"entity": "dep0/rank5", "condition": "tp-straggler", "state": "firing",
...         "version": 1, "first_seen_ns": 1_500_000_000, "last_seen_ns": 1_500_000_000}
>>> out = score([label], [fire], load_runbook())
>>> out["conditions"]["tp-straggler"]["recall"], out["conditions"]["tp-straggler"]["latency_p50_s"]
(1.0, 1.5)

Rules (``grace_ns`` defaults to 5 s):

* Verdicts are folded into *episodes*: one firing run of one entity and condition, from its
  first firing record (refreshes do not start a new one) until a resolution, or until the
  entity's verdict changes to another condition. The detection time is ``last_seen_ns`` of
  the first firing record (the end of the window that made it fire). Bookkeeping records
  (``heartbeat``, ``source-silent``) are ignored.
* A label (condition not ``lookalike:*``) is detected when an episode of its condition on its
  entity starts in ``[onset, (end or +inf) + grace]``; latency = detection - onset. An episode
  that started before the onset does not detect it.
* An episode is a true positive when it starts in ``[onset - grace, (end or +inf) + grace]``
  of a label of its condition on its entity; otherwise a false positive. Look-alike labels
  never make an episode true.
* Attribution of a label: its first episode (by start time) that starts in the detection
  window on *any* entity, not ``unattributed-anomaly`` and not explained by another label
  (a true positive of a different concurrent label is not a wrong blame for this one), must
  name its entity and condition. No such episode counts as a miss.

Limits: entities are compared as exact strings (the ids of docs/event-model.md), so a label on
``node07`` is not detected by a verdict on ``node07/gpu3``; the novel-fault helper is the only
place that accepts related entities. Intervals are Wilson 95% for proportions; the F1
interval is a percentile bootstrap with a fixed seed, so reruns give the same numbers.
"""

from __future__ import annotations

import bisect
import math
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np

from models.runbook import Runbook

GRACE_NS = 5_000_000_000
BOOKKEEPING = frozenset({"heartbeat", "source-silent"})
UNATTRIBUTED = "unattributed-anomaly"
LOOKALIKE_PREFIX = "lookalike:"
NO_VERDICT = "none"
_Z95 = 1.959963984540054
_BOOTSTRAP_ROUNDS = 2000
_BOOTSTRAP_SEED = 20240607


@dataclass(frozen=True)
class Episode:
    """One firing run of a verdict: entity + condition from first firing to resolution."""

    entity: str
    condition: str
    deployment: str
    start_ns: int
    end_ns: int | None
    records: int
    peak_severity: float

    def contains(self, t_ns: int) -> bool:
        return self.start_ns <= t_ns and (self.end_ns is None or t_ns <= self.end_ns)


@dataclass(frozen=True)
class LabelOutcome:
    """What became of one label: detection, latency, and the first verdict that answered it."""

    label: dict[str, Any]
    detected: bool
    latency_s: float | None
    first_verdict: Episode | None
    attributed: bool


# -- episodes -------------------------------------------------------------------------------
def episodes(verdicts: Iterable[dict[str, Any]]) -> list[Episode]:
    """Fold Verdict records into episodes, per entity in version order.

    A refresh (same entity, same condition, still firing) extends the open episode; a
    resolution ends it at its ``last_seen_ns``; a firing record of another condition ends it
    and opens the next. Episodes still firing at the end have ``end_ns=None``.
    """
    by_entity: dict[str, list[tuple[int, int, dict[str, Any]]]] = defaultdict(list)
    for i, v in enumerate(verdicts):
        if v["condition"] in BOOKKEEPING:
            continue
        by_entity[v["entity"]].append((int(v["version"]), i, v))
    out: list[Episode] = []
    for entity, items in by_entity.items():
        items.sort(key=lambda item: (item[0], item[1]))
        current: dict[str, Any] | None = None
        for _, _, v in items:
            at_ns = int(v["last_seen_ns"])
            if current is not None and (
                v["state"] != "firing" or v["condition"] != current["condition"]
            ):
                out.append(_episode(entity, current, at_ns))
                current = None
            if v["state"] != "firing":
                continue
            if current is None:
                current = {
                    "condition": v["condition"],
                    "deployment": v.get("deployment", ""),
                    "start_ns": at_ns,
                    "records": 0,
                    "peak": 0.0,
                }
            current["records"] += 1
            current["peak"] = max(current["peak"], float(v.get("severity", 0.0)))
        if current is not None:
            out.append(_episode(entity, current, None))
    out.sort(key=lambda e: (e.start_ns, e.entity, e.condition))
    return out


def _episode(entity: str, state: dict[str, Any], end_ns: int | None) -> Episode:
    return Episode(
        entity=entity,
        condition=state["condition"],
        deployment=state["deployment"],
        start_ns=state["start_ns"],
        end_ns=end_ns,
        records=state["records"],
        peak_severity=state["peak"],
    )


# -- matching -------------------------------------------------------------------------------
def is_lookalike(label: dict[str, Any]) -> bool:
    return str(label["condition"]).startswith(LOOKALIKE_PREFIX)


def _label_end(label: dict[str, Any]) -> float:
    end = label.get("end_ns")
    return math.inf if end is None else float(end)


def _in_detection_window(label: dict[str, Any], t_ns: int, grace_ns: float) -> bool:
    return int(label["onset_ns"]) <= t_ns <= _label_end(label) + grace_ns


def is_true_positive(ep: Episode, labels: Iterable[dict[str, Any]], grace_ns: float) -> bool:
    """True when the episode starts near a (non look-alike) label of its condition and entity."""
    return answers(ep.entity, ep.condition, ep.start_ns, labels, grace_ns)


def answers(
    entity: str, condition: str, start_ns: int, labels: Iterable[dict[str, Any]], grace_ns: float
) -> bool:
    """True when a verdict of ``entity`` and ``condition`` first seen at ``start_ns`` starts
    near a (non look-alike) label of its condition and entity."""
    return any(
        not is_lookalike(label)
        and label["condition"] == condition
        and label["entity"] == entity
        and label["onset_ns"] - grace_ns <= start_ns <= _label_end(label) + grace_ns
        for label in labels
    )


def explained_by(
    eps: list[Episode], labels: list[dict[str, Any]], grace_ns: float = GRACE_NS
) -> list[set[int]]:
    """For each episode, the indices of the labels it is a true positive of (empty: false)."""
    index: dict[tuple[str, str], list[int]] = defaultdict(list)
    for i, label in enumerate(labels):
        if not is_lookalike(label):
            index[(label["entity"], label["condition"])].append(i)
    out = []
    for e in eps:
        out.append(
            {
                i
                for i in index.get((e.entity, e.condition), ())
                if labels[i]["onset_ns"] - grace_ns
                <= e.start_ns
                <= _label_end(labels[i]) + grace_ns
            }
        )
    return out


def match_labels(
    labels: list[dict[str, Any]], eps: list[Episode], grace_ns: float = GRACE_NS
) -> list[LabelOutcome]:
    """Per label: detected?, latency, first answering episode (see the module rules)."""
    eps = sorted(eps, key=lambda e: (e.start_ns, e.entity, e.condition))
    starts = [e.start_ns for e in eps]
    explains = explained_by(eps, labels, grace_ns)
    outcomes = []
    for i, label in enumerate(labels):
        onset = int(label["onset_ns"])
        first_hit: Episode | None = None
        first: Episode | None = None
        for j in range(bisect.bisect_left(starts, onset), len(eps)):
            e = eps[j]
            if e.start_ns > _label_end(label) + grace_ns:
                break
            hit = i in explains[j]
            if hit and first_hit is None:
                first_hit = e
            answers = e.condition != UNATTRIBUTED and (hit or not explains[j])
            # Verdicts of one window tie; the right one among them gets the benefit of it.
            if answers and (first is None or (hit and e.start_ns == first.start_ns)):
                first = e if first is None or hit else first
            if first_hit is not None and first is not None and e.start_ns > first.start_ns:
                break
        outcomes.append(
            LabelOutcome(
                label=label,
                detected=first_hit is not None,
                latency_s=(first_hit.start_ns - onset) / 1e9 if first_hit is not None else None,
                first_verdict=first,
                attributed=first is not None
                and first.entity == label["entity"]
                and first.condition == label["condition"],
            )
        )
    return outcomes


# -- statistics -----------------------------------------------------------------------------
def wilson_ci95(successes: int, n: int) -> list[float] | None:
    """Wilson score 95% interval of a proportion; None when n == 0."""
    if n <= 0:
        return None
    p = successes / n
    z2 = _Z95 * _Z95
    centre = (p + z2 / (2 * n)) / (1 + z2 / n)
    half = _Z95 * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n)) / (1 + z2 / n)
    return [round(max(0.0, centre - half), 6), round(min(1.0, centre + half), 6)]


def f1_of(precision: float | None, recall: float | None) -> float | None:
    """Harmonic mean; 0 when either side is 0 or undefined while the other is defined."""
    if precision is None and recall is None:
        return None
    p, r = precision or 0.0, recall or 0.0
    return 0.0 if p + r == 0 else 2 * p * r / (p + r)


def f1_bootstrap_ci95(
    tp_episodes: int, n_episodes: int, detected: int, n_labels: int
) -> list[float] | None:
    """Percentile bootstrap of F1, resampling labels and episodes independently.

    Resampling n Bernoulli indicators with replacement is drawing Binomial(n, k/n), which is
    how it is done here (same distribution, no n-sized arrays). Fixed seed.
    """
    if n_labels == 0 and n_episodes == 0:
        return None
    rng = np.random.default_rng(_BOOTSTRAP_SEED)
    rounds = _BOOTSTRAP_ROUNDS
    if n_labels:
        recall = rng.binomial(n_labels, detected / n_labels, rounds) / n_labels
    else:
        recall = np.zeros(rounds)
    if n_episodes:
        precision = rng.binomial(n_episodes, tp_episodes / n_episodes, rounds) / n_episodes
    else:
        precision = np.zeros(rounds)
    total = precision + recall
    f1 = np.divide(2 * precision * recall, total, out=np.zeros(rounds), where=total > 0)
    lo, hi = np.percentile(f1, [2.5, 97.5])
    return [round(float(lo), 6), round(float(hi), 6)]


def _percentile_s(values: list[float], q: float) -> float | None:
    return round(float(np.percentile(values, q)), 6) if values else None


def recall_by_severity(outcomes: list[LabelOutcome], max_buckets: int = 4) -> dict[str, float]:
    """Recall per severity bucket: one bucket per distinct severity when there are at most
    ``max_buckets`` of them, else quantile buckets ``"lo..hi"`` (inclusive) of equal counts."""
    if not outcomes:
        return {}
    sev = np.array([float(o.label["severity"]) for o in outcomes])
    hit = np.array([o.detected for o in outcomes], dtype=float)
    distinct = np.unique(sev)
    out: dict[str, float] = {}
    if len(distinct) <= max_buckets:
        for value in distinct:
            out[f"{value:.4g}"] = round(float(hit[sev == value].mean()), 6)
        return out
    edges = np.quantile(sev, np.linspace(0, 1, max_buckets + 1))
    index = np.clip(np.searchsorted(edges, sev, side="right") - 1, 0, max_buckets - 1)
    for b in range(max_buckets):
        sel = index == b
        if sel.any():
            lo, hi = sev[sel].min(), sev[sel].max()
            out[f"{lo:.4g}..{hi:.4g}"] = round(float(hit[sel].mean()), 6)
    return out


# -- the evaluate JSON ----------------------------------------------------------------------
def score(
    labels: list[dict[str, Any]],
    verdicts: list[dict[str, Any]],
    runbook: Runbook,
    grace_ns: float = GRACE_NS,
) -> dict[str, Any]:
    """The evaluate JSON: per runbook condition, plus ``lookalikes`` and ``novel`` sections.

    ``conditions`` has every runbook condition (stable shape; nulls where a ratio has no
    denominator). Extra counts per condition (``labels``, ``detected``, ``true_episodes``)
    let a reader judge the intervals.
    """
    eps = episodes(verdicts)
    outcomes = match_labels(labels, eps, grace_ns)
    true_flags = {e: bool(x) for e, x in zip(eps, explained_by(eps, labels, grace_ns), strict=True)}
    conditions: dict[str, Any] = {}
    for cond in runbook.conditions:
        mine = [o for o in outcomes if o.label["condition"] == cond.id]
        cond_eps = [e for e in eps if e.condition == cond.id]
        true_eps = sum(true_flags[e] for e in cond_eps)
        detected = sum(o.detected for o in mine)
        precision = true_eps / len(cond_eps) if cond_eps else None
        recall = detected / len(mine) if mine else None
        latencies = [o.latency_s for o in mine if o.latency_s is not None]
        f1 = f1_of(precision, recall)
        conditions[cond.id] = {
            "precision": _round(precision),
            "recall": _round(recall),
            "f1": _round(f1),
            "f1_ci95": f1_bootstrap_ci95(true_eps, len(cond_eps), detected, len(mine)),
            "precision_ci95": wilson_ci95(true_eps, len(cond_eps)),
            "recall_ci95": wilson_ci95(detected, len(mine)),
            "attribution": _round(sum(o.attributed for o in mine) / len(mine)) if mine else None,
            "latency_p50_s": _percentile_s(latencies, 50),
            "latency_p95_s": _percentile_s(latencies, 95),
            "class": cond.latency_class,
            "episodes": len(cond_eps),
            "recall_by_severity": recall_by_severity(mine),
            "labels": len(mine),
            "detected": detected,
            "true_episodes": true_eps,
        }
    known = {c.id for c in runbook.conditions}
    return {
        "grace_s": grace_ns / 1e9,
        "conditions": conditions,
        "lookalikes": lookalike_summary(labels, eps, grace_ns),
        "novel": novel_summary(labels, eps, known, grace_ns),
    }


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 6)


def lookalike_summary(
    labels: list[dict[str, Any]], eps: list[Episode], grace_ns: float = GRACE_NS
) -> dict[str, Any]:
    """Look-alike labels and the verdict episodes (any condition) that started on their
    entity during them: each such episode is a false alarm the look-alike provoked."""
    looks = [x for x in labels if is_lookalike(x)]
    provoked = [
        e
        for e in eps
        for x in looks
        if _related(e.entity, x["entity"]) and _in_detection_window(x, e.start_ns, grace_ns)
    ]
    return {
        "labels": len(looks),
        "provoked_episodes": len(provoked),
        "labels_with_verdicts": sum(
            any(
                _related(e.entity, x["entity"]) and _in_detection_window(x, e.start_ns, grace_ns)
                for e in eps
            )
            for x in looks
        ),
    }


def novel_summary(
    labels: list[dict[str, Any]],
    eps: list[Episode],
    known_conditions: set[str],
    grace_ns: float = GRACE_NS,
) -> dict[str, Any]:
    """Labels of faults outside the runbook (condition neither a runbook id nor a look-alike):
    the share answered by an ``unattributed-anomaly`` on the label's entity or a related one
    (one id a ``/``-prefix of the other), and the share misread as a runbook condition."""
    novel = [x for x in labels if not is_lookalike(x) and x["condition"] not in known_conditions]
    flagged = misread = 0
    latencies = []
    for label in novel:
        near = [
            e
            for e in eps
            if _related(e.entity, label["entity"])
            and _in_detection_window(label, e.start_ns, grace_ns)
        ]
        anomalies = [e for e in near if e.condition == UNATTRIBUTED]
        if anomalies:
            flagged += 1
            latencies.append((min(e.start_ns for e in anomalies) - label["onset_ns"]) / 1e9)
        if any(e.condition != UNATTRIBUTED for e in near):
            misread += 1
    return {
        "labels": len(novel),
        "unattributed": flagged,
        "unattributed_ratio": _round(flagged / len(novel)) if novel else None,
        "unattributed_ci95": wilson_ci95(flagged, len(novel)),
        "misread_as_runbook": misread,
        "latency_p50_s": _percentile_s(latencies, 50),
    }


def clean_summary(
    verdicts: list[dict[str, Any]],
    node_hours: float,
    labels: list[dict[str, Any]] | None = None,
    grace_ns: float = GRACE_NS,
) -> dict[str, Any]:
    """False verdict episodes per node-hour (the clean-run budget).

    Every episode that is not a true positive of ``labels`` counts (on a clean run with no
    labels, every episode), ``unattributed-anomaly`` included and also listed per condition.
    """
    labels = labels or []
    eps = episodes(verdicts)
    explains = explained_by(eps, labels, grace_ns)
    false_eps = [e for e, x in zip(eps, explains, strict=True) if not x]
    by_condition: dict[str, int] = defaultdict(int)
    for e in false_eps:
        by_condition[e.condition] += 1
    return {
        "node_hours": round(node_hours, 6),
        "false_episodes": len(false_eps),
        "false_episodes_per_node_hour": round(len(false_eps) / node_hours, 6)
        if node_hours > 0
        else None,
        "by_condition": dict(sorted(by_condition.items())),
    }


def confusion(outcomes: list[LabelOutcome]) -> dict[str, dict[str, int]]:
    """Label condition x condition of its first answering verdict (``none`` when nothing
    answered; look-alike rows included, where anything but ``none`` is a false alarm)."""
    table: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    for o in outcomes:
        column = o.first_verdict.condition if o.first_verdict is not None else NO_VERDICT
        table[o.label["condition"]][column] += 1
    return {row: dict(cols) for row, cols in sorted(table.items())}


def _related(a: str, b: str) -> bool:
    return a == b or a.startswith(b + "/") or b.startswith(a + "/")
