"""Ground truth: FaultLabel records.

Two kinds:

* injected causes (every condition outside the load family, and the look-alikes as
  ``lookalike:<kind>``): a label opens at the injection's onset and closes at its end (or the
  end of the run);
* load-family conditions (request-length-skew, kv-cache-pressure, ingress-imbalance) are
  states of load, labelled from the simulator's TRUE state, never from an injection: a
  replica is harmed in a 1 s window when its p99 TTFT (requests whose first token came in the
  window, plus requests still waiting longer than the SLO) exceeds ``workload.slo_ttft_ms``
  while a peer replica has spare capacity (in the router's rotation: not drained, at a
  weight above 0, not restarting; mean batch occupancy < 0.7, KV < 0.7, queue < 1;
  means over the window's 10 ms ticks of each engine's state at the tick's end, as
  ``Engine.state_at`` gives it: the step in progress still holds its slots, and only requests
  ready by then wait).
  The condition is read from the same true state (shares over the last 10 s), first match
  wins: request share > 1.3 x capacity share -> ingress-imbalance; prompt tokens per request
  > 1.25 x the fleet's -> request-length-skew; admission blocked by a full KV cache (the
  engine's own test: the queue's head did not fit beside free batch slots and token budget,
  or the step had to preempt; requests waiting) more than half of the window ->
  kv-cache-pressure. Harm without any of these is not labelled.
  A label opens after 2 harmed windows in a row (onset = the first one's start) and closes
  after 3 clean ones (end = the last harmed window's end).
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from producers.sim.world import World

WINDOW_NS = 1_000_000_000
SHARE_WINDOWS = 10  # request and token shares are taken over the last 10 windows
OPEN_AFTER = 2
CLOSE_AFTER = 3


def make_label(
    label_id: str,
    scenario: str,
    deployment: str,
    entity: str,
    condition: str,
    onset_ns: int,
    severity: float,
    unit: str,
    cause: str,
    end_ns: int | None = None,
) -> dict[str, Any]:
    return {
        "schema_version": 1,
        "label_id": label_id,
        "scenario": scenario,
        "deployment": deployment,
        "entity": entity,
        "condition": condition,
        "onset_ns": int(onset_ns),
        "end_ns": None if end_ns is None else int(end_ns),
        "severity": float(severity),
        "severity_unit": unit,
        "cause": cause,
    }


@dataclass
class _Track:
    harmed_run: int = 0
    clean_run: int = 0
    first_harm_ns: int = 0
    last_harm_end: int = 0
    worst: float = 0.0
    open_label: dict[str, Any] | None = None
    detail: str = ""


@dataclass
class LoadLabeller:
    """Evaluates the true state each 1 s window and keeps load-family labels."""

    world: World
    scenario_id: str
    labels: list[dict[str, Any]] = field(default_factory=list)
    _window_start: int = 0
    _samples: list[np.ndarray] = field(default_factory=list)  # [n_rep, 3] per tick
    _preempt_at: list[int] = field(default_factory=list)
    _tracks: dict[tuple[int, str], _Track] = field(default_factory=dict)
    _history: list[tuple[np.ndarray, np.ndarray]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._window_start = self.world.start_ns
        self._preempt_at = [0] * len(self.world.engines)

    def tick(self, state: np.ndarray) -> None:
        """True engine state at a tick end: [n_rep, 4] running ratio, KV ratio, waiting,
        admission blocked by KV (1/0)."""
        self._samples.append(state)

    def observe(self, now_ns: int) -> None:
        while self._window_start + WINDOW_NS <= now_ns:
            self._evaluate(self._window_start, self._window_start + WINDOW_NS)
            self._window_start += WINDOW_NS

    def _evaluate(self, a: int, b: int) -> None:
        w = self.world
        slo_ns = w.scenario.workload.slo_ttft_ms * 1e6
        n_rep = len(w.engines)
        samples = np.array(self._samples) if self._samples else np.zeros((1, n_rep, 4))
        self._samples = []
        mean = samples.mean(axis=0)
        kv_bound = samples[:, :, 3].mean(axis=0)
        # a replica out of the router's rotation (drained, weight 0, restarting) has no room
        # to offer
        in_rotation = (w.router.share() > 0) & (w.router.down_until_ns <= a)
        spare = (mean[:, 0] < 0.7) & (mean[:, 1] < 0.7) & (mean[:, 2] < 1.0) & in_rotation
        arrivals = np.zeros(n_rep)
        prompt = np.zeros(n_rep)
        p99 = np.zeros(n_rep)
        preempts = np.zeros(n_rep)
        for r, e in enumerate(w.engines):
            lo = bisect.bisect_left(e.req_arrival, b - 120 * WINDOW_NS)
            arr = np.array(e.req_arrival[lo:], dtype=np.int64)
            ft = np.array(e.req_first_token[lo:], dtype=np.int64)
            pr = np.array(e.req_prompt[lo:], dtype=np.int64)
            in_win = (arr >= a) & (arr < b)
            arrivals[r] = in_win.sum()
            prompt[r] = pr[in_win].sum()
            done = (ft >= a) & (ft < b)
            late = (arr < b) & ((ft < 0) | (ft >= b)) & (b - arr > slo_ns)
            ttft = np.concatenate([(ft - arr)[done], (b - arr)[late]])
            p99[r] = np.percentile(ttft, 99) if ttft.size >= 3 else 0.0
            preempts[r] = e.preemptions_total - self._preempt_at[r]
            self._preempt_at[r] = e.preemptions_total
        self._history.append((arrivals, prompt))
        self._history = self._history[-SHARE_WINDOWS:]
        arrivals = np.sum([h[0] for h in self._history], axis=0)
        prompt = np.sum([h[1] for h in self._history], axis=0)
        capacity = np.array([e.max_num_seqs for e in w.engines], dtype=float)
        cap_share = capacity / capacity.sum()
        req_share = arrivals / max(arrivals.sum(), 1.0)
        tok_share = prompt / max(prompt.sum(), 1.0)
        heavier = tok_share / np.maximum(req_share, 1e-9)  # prompt per request vs the fleet's
        harmed: dict[int, tuple[str, str]] = {}
        for r in range(n_rep):
            peers = [q for q in range(n_rep) if q != r]
            if p99[r] <= slo_ns or not any(spare[q] for q in peers):
                continue
            if req_share[r] > 1.3 * cap_share[r]:
                cond = "ingress-imbalance"
                why = f"request share {req_share[r]:.2f} vs capacity share {cap_share[r]:.2f}"
            elif heavier[r] > 1.25:
                cond = "request-length-skew"
                why = f"prompt tokens per request {heavier[r]:.2f}x the fleet's"
            elif kv_bound[r] > 0.5:
                cond = "kv-cache-pressure"
                why = (
                    f"admission blocked by a full KV cache {kv_bound[r]:.0%} of the time, "
                    f"{int(preempts[r])} preemptions"
                )
            else:
                continue
            harmed[r] = (
                cond,
                f"p99 TTFT {p99[r] / 1e9:.2f} s > SLO {slo_ns / 1e9:.2f} s "
                f"while a peer had spare capacity; {why}",
            )
        conditions = ("kv-cache-pressure", "ingress-imbalance", "request-length-skew")
        for r in range(n_rep):
            for cond in conditions:
                track = self._tracks.setdefault((r, cond), _Track())
                hit = harmed.get(r, ("", ""))[0] == cond
                self._advance(
                    track, r, cond, hit, a, b, p99[r] / slo_ns, harmed.get(r, ("", ""))[1]
                )

    def _advance(
        self, t: _Track, r: int, cond: str, hit: bool, a: int, b: int, ratio: float, detail: str
    ) -> None:
        if hit:
            if t.harmed_run == 0:
                t.first_harm_ns = a
                t.worst = 0.0
            t.harmed_run += 1
            t.clean_run = 0
            t.last_harm_end = b
            t.worst = max(t.worst, ratio)
            t.detail = detail or t.detail
            if t.open_label is None and t.harmed_run >= OPEN_AFTER:
                name = self.world.engines[r].name
                t.open_label = make_label(
                    f"{self.scenario_id}:load:{len(self.labels)}",
                    self.scenario_id,
                    name,
                    name,
                    cond,
                    t.first_harm_ns,
                    t.worst,
                    "ttft_p99_over_slo_ratio",
                    f"true state: {t.detail}",
                )
                self.labels.append(t.open_label)
            elif t.open_label is not None:
                t.open_label["severity"] = max(t.open_label["severity"], ratio)
            return
        t.clean_run += 1
        if t.open_label is None:
            t.harmed_run = 0
            return
        if t.clean_run >= CLOSE_AFTER:
            t.open_label["end_ns"] = t.last_harm_end
            t.open_label = None
            t.harmed_run = 0

    def close(self, now_ns: int) -> None:
        for t in self._tracks.values():
            if t.open_label is not None:
                t.open_label["end_ns"] = max(t.last_harm_end, min(now_ns, t.last_harm_end))
                t.open_label = None
