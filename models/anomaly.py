"""Online anomaly models (River) per entity *class*, for deviations no runbook entry explains.

One Half-Space Trees model per entity class (NIC ports of the east-west fabric and
the north-south uplinks are separate classes: their traffic has different shapes), not per
entity, so a new entity is judged from its first window. Half-Space Trees expect inputs in
[0, 1]: each (non-negative) feature is squashed with v / (1 + v), a fixed map, so the model's
idea of "edge" does not move with the data it happened to see. Protection: a window is learned
only when no runbook condition fired on the entity and the model itself did not find it
anomalous, so a long fault does not become the new normal. Warm-up: no scores until a kind
has been learned ``warmup_windows`` times.

Limits (from River's own documentation of HST): anomalies packed together in windows are
found less well; that is why a score must persist (k of n windows) before it is reported, and
why the verdict is ``unattributed-anomaly``, advisory, never a runbook root cause.
"""

from __future__ import annotations

import pickle
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from river import anomaly

from models.rules import Finding
from models.runbook import Condition, Evidence
from streams.views import EntityView

CHECKPOINT_VERSION = 1

KIND_FEATURES: dict[str, tuple[str, ...]] = {
    # NIC ports only: their normal behaviour is steady, so a model learns it quickly. Rank and
    # replica features swing with real (Azure) load and gave false anomalies on clean traces.
    "nic_port": (
        "nic.tx_dip_ratio",
        "nic.retransmit_events_per_s_peer_ratio",
        "nic.tx_prio3_pause_per_s_peer_ratio",
    ),
}

# North-south uplinks carry client traffic whose shape follows real load (the Azure traces'
# bursts moved their learned normal and raised false anomalies); they are left to the runbook.
EXCLUDED_CLASSES = frozenset({"nic_port:north_south"})

UNATTRIBUTED = Condition(
    id="unattributed-anomaly",
    family="compute",
    entity="*",
    latency_class="acute",
    required_sources=(),
    optional_sources=(),
    root_cause="deviation from learned normal behaviour that no runbook entry explains",
    directive="investigate",
    directive_text="Advisory: investigate; no automatic mitigation",
    persistence_k=3,
    persistence_n=4,
    severity_feature="model.score",
    severity_low=0.78,
    severity_high=1.0,
    impact="",
    evidence=(),
)


def squash(x: dict[str, float]) -> dict[str, float]:
    """Map non-negative features into [0, 1) with v / (1 + v): fixed, so a learned range
    cannot shrink around quiet data and make ordinary noise look extreme."""
    return {k: max(0.0, v) / (1.0 + max(0.0, v)) for k, v in x.items()}


@dataclass
class _KindModel:
    model: Any
    learned: int = 0
    windows: int = 0  # distinct windows learned from: warm-up counts event time, not entities
    last_window_ns: int = 0


@dataclass
class AnomalyScorer:
    threshold: float = 0.78
    warmup_windows: int = 120
    persistence_k: int = 4
    persistence_n: int = 4
    seed: int = 7
    models: dict[str, _KindModel] = field(default_factory=dict)
    _history: dict[str, deque[bool]] = field(default_factory=dict)

    def _model(self, kind: str) -> _KindModel:
        if kind not in self.models:
            self.models[kind] = _KindModel(
                anomaly.HalfSpaceTrees(n_trees=15, height=6, window_size=100, seed=self.seed),
            )
        return self.models[kind]

    def _inputs(self, view: EntityView) -> dict[str, float] | None:
        if view.model_class in EXCLUDED_CLASSES:
            return None
        names = KIND_FEATURES.get(view.kind)
        if not names or any(n not in view.features for n in names):
            return None
        return {n: float(view.features[n]) for n in names}

    def score_one(self, kind: str, x: dict[str, float]) -> float | None:
        """Score without learning; None while warming up."""
        km = self._model(kind)
        if km.windows < self.warmup_windows:
            return None
        return float(km.model.score_one(squash(x)))

    def learn_one(self, kind: str, x: dict[str, float], at_ns: int = 0) -> None:
        km = self._model(kind)
        if at_ns != km.last_window_ns:
            km.windows += 1
            km.last_window_ns = at_ns
        km.model.learn_one(squash(x))
        km.learned += 1

    def score(self, views: list[EntityView], findings: list[Finding], at_ns: int) -> list[Finding]:
        explained = {f.view.entity for f in findings}
        out = []
        for view in views:
            x = self._inputs(view)
            if x is None:
                continue
            model_class = view.model_class or view.kind
            score = self.score_one(model_class, x)
            anomalous = score is not None and score >= self.threshold
            if score is not None:
                view.features["model.score"] = score
            if not anomalous and view.entity not in explained:
                self.learn_one(model_class, x, at_ns)
            history = self._history.setdefault(view.entity, deque(maxlen=self.persistence_n))
            history.append(anomalous and view.entity not in explained)
            if sum(history) >= self.persistence_k and history[-1]:
                assert score is not None
                out.append(
                    Finding(
                        condition=UNATTRIBUTED,
                        view=view,
                        severity=round(
                            min(1.0, max(0.05, (score - self.threshold) / (1 - self.threshold))), 4
                        ),
                        confidence=round(score, 4),
                        root_cause=UNATTRIBUTED.root_cause,
                        directive=UNATTRIBUTED.directive,
                        directive_text=UNATTRIBUTED.directive_text,
                        evidence=tuple(
                            (Evidence(name, ">=", 0.0, name.split(".")[0]), value)
                            for name, value in x.items()
                        ),
                        sources_missing=(),
                        impact="unexplained deviation",
                        since_ns=at_ns,  # it suppresses nothing: the window it fired in
                    )
                )
        return out

    # -- checkpoint -------------------------------------------------------------------
    def checkpoint(self) -> bytes:
        return pickle.dumps({"version": CHECKPOINT_VERSION, "models": self.models})

    def restore(self, blob: bytes) -> None:
        state = pickle.loads(blob)
        if not isinstance(state, dict) or state.get("version") != CHECKPOINT_VERSION:
            found = state.get("version") if isinstance(state, dict) else type(state).__name__
            raise ValueError(
                f"anomaly model checkpoint version {found} does not match "
                f"{CHECKPOINT_VERSION}; discard it and let the models warm up again"
            )
        self.models = state["models"]
