"""Request join by request id: lifecycle events -> per-request latencies -> replica features.

Events of one request arrive in separate frames (and, for DPU flows, from another source);
the join keeps each open request's milestones until it finishes. State is bounded: at most
``max_open_requests`` per deployment (the oldest are evicted and counted) and requests with no
event for ``request_timeout_ns`` of event time are expired and counted, never kept forever.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from streams.features.base import Extractor, span
from streams.hopping import HoppingSpec

ARRIVED, SCHEDULED, PREFILL_START, FIRST_TOKEN, FINISHED, PREEMPTED, ABORTED = range(7)


@dataclass
class OpenRequest:
    """Milestones of one request, ns in the engine's clock (-1: not yet seen)."""

    arrived_ns: int = -1
    scheduled_ns: int = -1
    prefill_start_ns: int = -1
    first_token_ns: int = -1
    prompt_tokens: int = 0
    preemptions: int = 0
    last_event_ns: int = 0
    requeued_ns: int = -1  # preempted back into the queue at (-1: not waiting again)
    requeued_tokens: int = 0  # tokens it generated before that preemption (recomputed)

    @property
    def queued_ns(self) -> int:
        """When it entered the queue it waits in now: its arrival until it is first scheduled,
        then its latest preemption until it is scheduled again; -1 when it is not waiting."""
        return self.arrived_ns if self.scheduled_ns < 0 else self.requeued_ns


@dataclass
class JoinedRequest:
    """A request whose first token was seen: the latencies the engine also reports."""

    request_id: str
    deployment: str
    ttft_ns: int
    queue_delay_ns: int
    arrival_to_prefill_ns: int
    prefill_ns: int


@dataclass
class RequestJoinStats:
    evicted: int = 0
    expired: int = 0
    unmatched_events: int = 0
    joined: list[JoinedRequest] = field(default_factory=list)


class RequestExtractor(Extractor):
    SCHEMA = "EngineRequestFrame"
    SOURCE = "engine"
    ENTITY_KIND = "replica"
    FEATURES = {
        "arrivals": "sum",
        "prompt_tokens_mean": "mean",
        "prompt_tokens_max": "max",
        "ttft_s": "mean",
        "ttft_s_max": "max",
        "queue_delay_s": "mean",
        "queue_delay_s_max": "max",
        "arrival_to_prefill_s": "mean",
        "arrival_to_prefill_s_min": "min",
        # the same gap per 1,000 prompt tokens: tokenization grows with the prompt, so a
        # replica that got long prompts is not mistaken for one with slow pre-processing
        "arrival_to_prefill_s_per_ktok_min": "min",
        "prefill_s": "mean",
        "decode_tokens_per_s": "mean",
        "request_preemptions": "sum",
    }

    def __init__(
        self,
        spec: HoppingSpec,
        max_open_requests: int = 50_000,
        request_timeout_ns: int = 300_000_000_000,
        keep_joined: bool = False,
    ) -> None:
        super().__init__(spec)
        self.max_open_requests = max_open_requests
        self.request_timeout_ns = request_timeout_ns
        self.keep_joined = keep_joined
        self.open: dict[str, OrderedDict[str, OpenRequest]] = {}
        self.stats = RequestJoinStats()
        self.frontend_node: dict[str, str] = {}
        # (arrival, first token) of each first token, by pane and deployment: the TTFT SLO is
        # a percentile, which the pane store's sums and extremes cannot give
        self.first_tokens_by_pane: dict[int, dict[str, list[tuple[int, int]]]] = {}
        # (entered the queue, scheduled, KV tokens it needed) of each admission, by pane of the
        # admission and deployment: how many requests waited, averaged over a window, and
        # what waited at a window's end though its admission has already been read
        self.admissions_by_pane: dict[int, dict[str, list[tuple[int, int, int]]]] = {}

    def __setstate__(self, state: dict[str, Any]) -> None:
        """Restore from a checkpoint; one written before the admissions were kept has none."""
        state.setdefault("admissions_by_pane", {})
        self.__dict__.update(state)

    def ingest(self, record: dict[str, Any], cols: dict[str, np.ndarray]) -> tuple[int, int]:
        ts_all = cols["ts_ns"]
        if len(ts_all) == 0:
            return span(ts_all)
        deployment = record["deployment"]
        self.frontend_node[deployment] = record["node"]
        ids = record["request_ids"]
        table = self.open.setdefault(deployment, OrderedDict())
        kinds = cols["kind"].tolist()
        ts_list = ts_all.tolist()
        index = cols["request_index"].tolist()
        prompts = cols["prompt_tokens"].tolist()
        outputs = cols["output_tokens"].tolist()
        for kind, ts, i, prompt, out in zip(kinds, ts_list, index, prompts, outputs, strict=True):
            if not 0 <= i < len(ids):
                self.stats.unmatched_events += 1
                continue
            self._event(deployment, table, ids[i], kind, ts, prompt, out)
        self._expire(table, int(ts_all.max()))
        return span(ts_all)

    def _event(
        self,
        deployment: str,
        table: OrderedDict[str, OpenRequest],
        request_id: str,
        kind: int,
        ts: int,
        prompt: int,
        out: int,
    ) -> None:
        pane = ts // self.spec.hop_ns
        req = table.get(request_id)
        if req is None:
            if kind != ARRIVED:
                self.stats.unmatched_events += 1
                return
            req = OpenRequest(arrived_ns=ts, prompt_tokens=prompt)
            table[request_id] = req
            if len(table) > self.max_open_requests:
                table.popitem(last=False)
                self.stats.evicted += 1
            self.store.add_one(
                pane,
                deployment,
                {"arrivals": 1.0, "prompt_tokens_mean": prompt, "prompt_tokens_max": prompt},
            )
        req.last_event_ns = ts
        table.move_to_end(request_id)
        if kind == SCHEDULED and req.queued_ns >= 0:
            admitted = self.admissions_by_pane.setdefault(pane, {})
            need = req.prompt_tokens + req.requeued_tokens
            admitted.setdefault(deployment, []).append((req.queued_ns, ts, need))
            req.requeued_ns = -1
        if kind == SCHEDULED and req.scheduled_ns < 0:
            req.scheduled_ns = ts
            self.store.add_one(
                pane,
                deployment,
                {
                    "queue_delay_s": (ts - req.arrived_ns) / 1e9,
                    "queue_delay_s_max": (ts - req.arrived_ns) / 1e9,
                },
            )
        elif kind == PREFILL_START and req.prefill_start_ns < 0:
            req.prefill_start_ns = ts
            gap_s = (ts - req.arrived_ns) / 1e9
            per_ktok_s = gap_s * 1000.0 / max(req.prompt_tokens, 1)
            self.store.add_one(
                pane,
                deployment,
                {
                    "arrival_to_prefill_s": gap_s,
                    "arrival_to_prefill_s_min": gap_s,
                    "arrival_to_prefill_s_per_ktok_min": per_ktok_s,
                },
            )
        elif kind == FIRST_TOKEN and req.first_token_ns < 0:
            req.first_token_ns = ts
            ttft_s = (ts - req.arrived_ns) / 1e9
            values = {"ttft_s": ttft_s, "ttft_s_max": ttft_s}
            by_deployment = self.first_tokens_by_pane.setdefault(pane, {})
            by_deployment.setdefault(deployment, []).append((req.arrived_ns, ts))
            if req.prefill_start_ns >= 0:
                values["prefill_s"] = (ts - req.prefill_start_ns) / 1e9
            self.store.add_one(pane, deployment, values)
            if self.keep_joined:
                self.stats.joined.append(
                    JoinedRequest(
                        request_id,
                        deployment,
                        ts - req.arrived_ns,
                        (req.scheduled_ns - req.arrived_ns) if req.scheduled_ns >= 0 else -1,
                        (req.prefill_start_ns - req.arrived_ns)
                        if req.prefill_start_ns >= 0
                        else -1,
                        (ts - req.prefill_start_ns) if req.prefill_start_ns >= 0 else -1,
                    )
                )
        elif kind == PREEMPTED:
            req.preemptions += 1
            req.requeued_ns = ts
            req.requeued_tokens = out
            self.store.add_one(pane, deployment, {"request_preemptions": 1.0})
        elif kind in (FINISHED, ABORTED):
            if kind == FINISHED and req.first_token_ns >= 0 and ts > req.first_token_ns and out > 1:
                rate = (out - 1) * 1e9 / (ts - req.first_token_ns)
                self.store.add_one(pane, deployment, {"decode_tokens_per_s": rate})
            del table[request_id]

    def _expire(self, table: OrderedDict[str, OpenRequest], now_ns: int) -> None:
        horizon = now_ns - self.request_timeout_ns
        while table:
            request_id, req = next(iter(table.items()))
            if req.last_event_ns >= horizon:
                break
            del table[request_id]
            self.stats.expired += 1

    def evict_before(self, pane: int) -> None:
        super().evict_before(pane)
        self.forget_first_tokens_before(pane)

    def forget_first_tokens_before(self, pane: int) -> None:
        """Drop the first tokens of panes before ``pane``; the pane store keeps 10 s for the
        share window, the p99 needs only two windows."""
        for old in [p for p in self.first_tokens_by_pane if p < pane]:
            del self.first_tokens_by_pane[old]
        for old in [p for p in self.admissions_by_pane if p < pane]:
            del self.admissions_by_pane[old]

    def waiting_need_tokens_max(self, deployment: str, end_ns: int) -> int:
        """The most KV tokens a request waiting at ``end_ns`` needs to be admitted: its prompt,
        or for one preempted back into the queue its prompt and the tokens it had generated
        (recomputed on readmission); 0 with none waiting. A request admitted after ``end_ns``
        whose admission was already read still counts: what waited at ``end_ns`` does not
        depend on how far the request events have been read beyond it."""
        need = 0
        for req in self.open.get(deployment, {}).values():
            if 0 <= req.queued_ns < end_ns:  # (requeued_tokens is 0 before a preemption)
                need = max(need, req.prompt_tokens + req.requeued_tokens)
        end_pane = (end_ns - 1) // self.spec.hop_ns
        for pane, by_deployment in self.admissions_by_pane.items():
            if pane < end_pane:
                continue
            for queued, scheduled, tokens in by_deployment.get(deployment, ()):
                if queued < end_ns <= scheduled:
                    need = max(need, tokens)
        return need

    def waiting_mean(self, deployment: str, panes: range) -> float:
        """Requests waiting to be scheduled (arrived, or preempted back into the queue, and
        not yet admitted), averaged over the window of ``panes``: the time-weighted mean that
        the engine's own gauge cannot give, as the gauge moves only at step boundaries and a
        queue that builds during a long prefill step and clears at the next admission never
        shows in it. Counted from the request's arrival, so time in pre-processing counts as
        waiting."""
        start_ns = panes.start * self.spec.hop_ns
        end_ns = panes.stop * self.spec.hop_ns
        waited_ns = 0
        for pane, by_deployment in self.admissions_by_pane.items():
            if pane < panes.start:
                continue
            for queued, scheduled, _tokens in by_deployment.get(deployment, ()):
                waited_ns += max(0, min(scheduled, end_ns) - max(queued, start_ns))
        for req in self.open.get(deployment, {}).values():
            queued = req.queued_ns
            if 0 <= queued < end_ns:
                waited_ns += end_ns - max(queued, start_ns)
        return waited_ns / (end_ns - start_ns)

    def ttft_p99_s(self, deployment: str, panes: range, slo_ns: int) -> float:
        """The TTFT SLO's statistic over the window of ``panes``, as an SLO monitor takes it
        (and the simulator's truth, producers/sim/labels.py): the 99th percentile of the
        TTFTs of the first tokens in the window and of the ages at its end of the requests
        that arrived before it ended, had no first token by then, and had waited longer than
        ``slo_ns``; 0.0 with no such values. Linear interpolation, numpy's default: with up
        to 100 values it lies between the largest two, so one slow request among many is not
        a breach. A request served after the window's end counts as waiting whether or not
        its first token was ingested yet, so the value does not depend on how far ahead of
        the watermark the engine's events are."""
        end_ns = panes.stop * self.spec.hop_ns
        values: list[float] = []
        late_before_ns = end_ns - slo_ns
        for pane, by_deployment in self.first_tokens_by_pane.items():
            pairs = by_deployment.get(deployment)
            if not pairs:
                continue
            if pane in panes:
                values += [(first - arrived) / 1e9 for arrived, first in pairs]
            elif pane >= panes.stop:
                values += [
                    (end_ns - arrived) / 1e9
                    for arrived, first in pairs
                    if arrived < late_before_ns and first >= end_ns
                ]
        values += [
            (end_ns - req.arrived_ns) / 1e9
            for req in self.open.get(deployment, {}).values()
            if req.first_token_ns < 0 and req.arrived_ns < late_before_ns
        ]
        if not values:
            return 0.0
        return float(np.percentile(values, 99))

    def open_requests(self) -> int:
        return sum(len(t) for t in self.open.values())
