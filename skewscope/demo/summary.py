"""The demo's closing summary: each injected fault, and whether a verdict named it.

Pure functions over FaultLabel and Verdict records (no I/O). Matching is the backtest's
(:mod:`models.scoring`): a fault counts as named when a firing verdict of its condition on
its exact entity started between its onset and its end plus the grace (5 s). A look-alike
label (``lookalike:<kind>``) is a harmless cause that must raise no verdict on its entity.
A load-family cause is labelled only when the truth measures its harm; one that never was is
listed as "load no harm" (a verdict on it would be among the "other" episodes).
Every verdict episode that answers no label is listed as "other" (grouped by condition and
entity: the first start, and how many episodes).

Output lines have a fixed shape so scripts and tests can read them::

    fault detected   tp-straggler on llama70b-a/rank5 (onset +5.3 s): verdict after 1.30 s, in Redis
    fault missed     pcie-saturation on node02 (onset +31.6 s): no verdict named it
    lookalike quiet  load-burst on llama70b-a (onset +12.1 s): no verdict, as it should be
    load no harm     long-prompt-tenant on llama70b-b (onset +43.4 s): no verdict due
    other            kv-cache-pressure on llama70b-a at +19.4 s for 1.2 s
    other            unattributed-anomaly on node00/p0 at +30.7 s (6 episodes)
    result: 3/3 injected faults named by a verdict, 0 look-alike false alarms, 7 other episodes
"""

from __future__ import annotations

from collections.abc import Collection, Iterable
from dataclasses import dataclass, field
from typing import Any

from models.scoring import (
    BOOKKEEPING,
    GRACE_NS,
    Episode,
    episodes,
    explained_by,
    is_lookalike,
    match_labels,
)


@dataclass(frozen=True)
class FaultLine:
    """One injected fault and what became of it."""

    label: dict[str, Any]
    detected: bool
    latency_s: float | None
    in_redis: bool | None


@dataclass(frozen=True)
class LoadCause:
    """A load-family cause of the script: its kind, the condition it can lead to, its
    target entity and its onset (ns)."""

    kind: str
    condition: str
    target: str
    onset_ns: int


@dataclass
class DemoSummary:
    """Injected faults, look-alikes and other verdicts of one run."""

    start_ns: int
    faults: list[FaultLine] = field(default_factory=list)
    lookalikes: list[tuple[dict[str, Any], bool]] = field(default_factory=list)
    other: list[Episode] = field(default_factory=list)
    unharmed: list[LoadCause] = field(default_factory=list)

    @property
    def detected(self) -> int:
        return sum(f.detected for f in self.faults)

    def all_named(self) -> bool:
        """True when every injected fault was named by a verdict."""
        return self.detected == len(self.faults)

    def lines(self) -> list[str]:
        out = []
        for f in self.faults:
            what = f"{f.label['condition']} on {f.label['entity']} ({self._at(f.label)})"
            if f.detected:
                where = {True: ", in Redis", False: ", NOT in Redis", None: ""}[f.in_redis]
                out.append(f"fault detected   {what}: verdict after {f.latency_s:.2f} s{where}")
            else:
                out.append(f"fault missed     {what}: no verdict named it")
            out.append(f"                 cause: {f.label.get('cause', '')}")
        for label, raised in self.lookalikes:
            kind = str(label["condition"]).split(":", 1)[1]
            what = f"{kind} on {label['entity']} ({self._at(label)})"
            if raised:
                out.append(f"lookalike raised {what}: a verdict fired on it (false alarm)")
            else:
                out.append(f"lookalike quiet  {what}: no verdict, as it should be")
        for cause in self.unharmed:
            onset = f"onset +{(cause.onset_ns - self.start_ns) / 1e9:.1f} s"
            out.append(f"load no harm     {cause.kind} on {cause.target} ({onset}): no verdict due")
        for (condition, entity), eps in self._other_groups().items():
            at = (eps[0].start_ns - self.start_ns) / 1e9
            if len(eps) == 1:
                ep = eps[0]
                span = "" if ep.end_ns is None else f" for {(ep.end_ns - ep.start_ns) / 1e9:.1f} s"
            else:
                span = f" ({len(eps)} episodes)"
            out.append(f"other            {condition} on {entity} at +{at:.1f} s{span}")
        false_alarms = sum(r for _, r in self.lookalikes)
        out.append(
            f"result: {self.detected}/{len(self.faults)} injected faults named by a verdict, "
            f"{false_alarms} look-alike false alarms, {len(self.other)} other episodes"
        )
        return out

    def _other_groups(self) -> dict[tuple[str, str], list[Episode]]:
        """Other episodes by (condition, entity), in order of their first start."""
        groups: dict[tuple[str, str], list[Episode]] = {}
        for ep in self.other:
            groups.setdefault((ep.condition, ep.entity), []).append(ep)
        return groups

    def _at(self, label: dict[str, Any]) -> str:
        return f"onset +{(int(label['onset_ns']) - self.start_ns) / 1e9:.1f} s"


def summarize(
    labels: Iterable[dict[str, Any]],
    verdicts: Iterable[dict[str, Any]],
    start_ns: int,
    in_redis: Collection[tuple[str, str]] | None = None,
    grace_ns: int = GRACE_NS,
    load_causes: Iterable[LoadCause] = (),
) -> DemoSummary:
    """Match ``labels`` (last record per ``label_id`` wins) against ``verdicts``.

    ``in_redis``: (entity, condition) pairs that reached Redis as firing verdicts, or None
    when Redis was not part of the run (in-process fallback). ``load_causes``: the script's
    load-family causes; those with no label of their condition on their target from their
    onset on are listed as unharmed.
    """
    latest: dict[str, dict[str, Any]] = {}
    for label in labels:
        latest[str(label["label_id"])] = label
    ordered = sorted(latest.values(), key=lambda lb: (int(lb["onset_ns"]), str(lb["label_id"])))
    faults = [lb for lb in ordered if not is_lookalike(lb)]
    eps = episodes(v for v in verdicts if v["condition"] not in BOOKKEEPING)
    summary = DemoSummary(start_ns)
    for outcome in match_labels(faults, eps, grace_ns):
        key = (str(outcome.label["entity"]), str(outcome.label["condition"]))
        summary.faults.append(
            FaultLine(
                outcome.label,
                outcome.detected,
                outcome.latency_s,
                None if in_redis is None or not outcome.detected else key in in_redis,
            )
        )
    for label in ordered:
        if is_lookalike(label):
            summary.lookalikes.append((label, _raised(label, eps, grace_ns)))
    summary.unharmed = [
        cause
        for cause in load_causes
        if not any(
            lb["condition"] == cause.condition
            and lb["entity"] == cause.target
            and (lb.get("end_ns") is None or int(lb["end_ns"]) >= cause.onset_ns)
            for lb in faults
        )
    ]
    explains = explained_by(eps, faults, grace_ns)
    summary.other = sorted(
        (ep for ep, hits in zip(eps, explains, strict=True) if not hits),
        key=lambda ep: (ep.start_ns, ep.entity),
    )
    return summary


def _raised(label: dict[str, Any], eps: list[Episode], grace_ns: int) -> bool:
    end = label.get("end_ns")
    last = float("inf") if end is None else int(end) + grace_ns
    return any(
        ep.entity == label["entity"] and int(label["onset_ns"]) <= ep.start_ns <= last for ep in eps
    )
