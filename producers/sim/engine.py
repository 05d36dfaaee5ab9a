"""A vLLM-V1-like engine: continuous batching with chunked prefill, KV blocks, preemption.

Each step the scheduler, as vLLM V1's does, (1) gives the running sequences their tokens:
one each to decode sequences and the rest of ``max_batched_tokens`` to prefill chunks in
admission order; (2) if the KV cache cannot hold those tokens, preempts the most recently
admitted sequences (they return to the head of the queue), and admits nothing that step;
(3) otherwise admits waiting requests into free batch slots while token budget is left and
the KV blocks of each one's first chunk fit (a prompt's blocks are allocated chunk by chunk
as they are scheduled, and the KV use the engine reports counts exactly those). With
``backfill`` off (static batching, the early-stop-skew cause) it admits only once the whole
batch has drained, each request while its whole prompt fits. The step's duration comes from
the deployment's :class:`Executor` (ranks, collectives, fabric). A request's first token
comes at the end of the step that finishes its prefill.

Preemption and the prefix cache: a preempted sequence's computed tokens stay cached in whole
blocks, free (the gauge does not count them) but kept while the free pool has room for them;
readmitted, it needs its cached blocks and the next chunk's to fit, and recomputes only what
the cache lost (its prompt and generated tokens). Without the cache, a prompt longer than the
free room was admitted on its first chunk, preempted at its second, and admitted again, in a
loop that held the queue at full KV use while admission never read as blocked.

Cause knobs: ``backfill``, ``kv_capacity_blocks`` (the KV budget; kv-cache-pressure),
``max_num_seqs`` (the control surface's set_max_batch). Lifecycle events use the codes of
EngineRequestFrame.kind. Limits: one scheduler per replica, FCFS, no priorities, no
speculative decoding, no prefix sharing between requests (the cache serves only a
preempted request's own tokens), the cache's eviction order approximated (the queue's order
keeps its cache first, where vLLM evicts the least recently freed blocks).
"""

from __future__ import annotations

from collections import deque

import numpy as np

from producers.sim.collectives import Executor
from producers.sim.scenario import DeploymentSpec

ARRIVED, SCHEDULED, PREFILL_START, FIRST_TOKEN, FINISHED, PREEMPTED, ABORTED = range(7)


class Engine:
    """One replica's scheduler and its request lifecycle log."""

    def __init__(self, spec: DeploymentSpec, executor: Executor) -> None:
        self.name = spec.name
        self.executor = executor
        self.backfill = spec.batching == "continuous"
        self.block_tokens = spec.kv_block_tokens
        self.kv_capacity_blocks = spec.kv_capacity_tokens // spec.kv_block_tokens
        self.max_num_seqs = spec.max_num_seqs
        self.max_batched_tokens = spec.max_batched_tokens
        cap = spec.max_num_seqs
        self._cap = cap
        self.slot_req = np.full(cap, -1, dtype=np.int64)
        self.slot_prompt = np.zeros(cap, dtype=np.int64)
        self.slot_target = np.zeros(cap, dtype=np.int64)
        self.slot_out = np.zeros(cap, dtype=np.int64)
        self.slot_prefill = np.zeros(cap, dtype=np.int64)  # tokens still to prefill
        self.slot_kv = np.zeros(cap, dtype=np.int64)  # tokens held in KV
        self.slot_order = np.zeros(cap, dtype=np.int64)
        self._admit_seq = 0
        self.waiting: deque[int] = deque()
        self._pending_ready = np.zeros(0, dtype=np.int64)
        self._pending_req = np.zeros(0, dtype=np.int64)
        # request table (local index -> fields)
        self.req_prompt: list[int] = []
        self.req_target: list[int] = []
        self.req_out_done: list[int] = []  # tokens generated before a preemption
        self.req_conn: list[int] = []
        self.req_arrival: list[int] = []
        self.req_ready: list[int] = []
        self.req_first_token: list[int] = []
        self.req_scheduled: list[int] = []
        # KV of preempted requests kept by the prefix cache: request -> tokens (whole blocks).
        # Those blocks are free (evictable, and the gauge does not count them) until the
        # request is admitted again, which then recomputes only the rest.
        self.cached_tokens: dict[int, int] = {}
        # logs
        self.events: list[tuple[int, int, int, int, int]] = []  # req, kind, t, prompt, out
        self.snap_t: list[int] = []
        self.snap: list[tuple[int, int, float, int, int, int, int]] = []
        self.preemptions_total = 0
        self.prompt_tokens_total = 0
        self.generation_tokens_total = 0
        self.t_ns = 0
        self.busy_since: int | None = None
        self.stalled = False
        self.kv_blocked = False  # last admission stopped for lack of KV blocks (true state)
        # the step in progress as it started (after admission): start, running, KV blocks used
        self.step_start_ns = -1
        self.step_start_running = 0
        self.step_start_used_blocks = 0

    # -- requests in ----------------------------------------------------------------------
    def submit(
        self,
        arrival_ns: np.ndarray,
        ready_ns: np.ndarray,
        prompt: np.ndarray,
        output: np.ndarray,
        conn: np.ndarray,
    ) -> None:
        """Requests that arrived at arrival_ns and are tokenized (ready) at ready_ns."""
        base = len(self.req_prompt)
        n = arrival_ns.size
        self.req_prompt += prompt.tolist()
        self.req_target += output.tolist()
        self.req_out_done += [0] * n
        self.req_conn += conn.tolist()
        self.req_arrival += arrival_ns.tolist()
        self.req_ready += ready_ns.tolist()
        self.req_first_token += [-1] * n
        self.req_scheduled += [-1] * n
        for i in range(n):
            self.events.append((base + i, ARRIVED, int(arrival_ns[i]), int(prompt[i]), 0))
        ids = np.arange(base, base + n)
        ready = np.concatenate([self._pending_ready, ready_ns])
        reqs = np.concatenate([self._pending_req, ids])
        order = np.argsort(ready, kind="stable")
        self._pending_ready, self._pending_req = ready[order], reqs[order]

    def _release_ready(self, t: int) -> None:
        k = int(np.searchsorted(self._pending_ready, t, "right"))
        if k:
            self.waiting.extend(self._pending_req[:k].tolist())
            self._pending_ready = self._pending_ready[k:]
            self._pending_req = self._pending_req[k:]

    # -- the loop ----------------------------------------------------------------------------
    def run_until(self, t_end: int) -> None:
        """Run steps that start before t_end."""
        while not self.stalled:
            self._release_ready(self.t_ns)
            active = self.slot_req >= 0
            if not active.any() and not self.waiting:
                if self._pending_ready.size and self._pending_ready[0] < t_end:
                    self.t_ns = max(self.t_ns, int(self._pending_ready[0]))
                    continue
                self.t_ns = max(self.t_ns, t_end)
                self.busy_since = None
                return
            if self.t_ns >= t_end:
                return
            self._step()

    def restart(self, at_ns: int, ready_ns: int) -> None:
        """The engine process restarts at at_ns and is ready at ready_ns: running sequences
        lose their KV and return to the head of the queue (recompute), a stall is over."""
        running = np.flatnonzero(self.slot_req >= 0)
        for slot in running[np.argsort(-self.slot_order[running])]:
            self._preempt(int(slot), at_ns)
        self.slot_kv[:] = 0
        self.slot_prefill[:] = 0
        self.cached_tokens.clear()  # a new process starts with an empty cache
        self.stalled = False
        self.busy_since = None
        self.t_ns = max(self.t_ns, ready_ns)
        self.step_start_ns, self.step_start_running, self.step_start_used_blocks = at_ns, 0, 0

    def state_at(self, t_ns: int) -> tuple[int, int, int]:
        """(running, KV blocks used, waiting) as they are at ``t_ns``, after ``run_until(t)``
        for a t past ``t_ns``: the step in progress at ``t_ns`` has not finished there (its
        sequences still hold their slots and the blocks of the tokens it computes, none freed
        yet) and only the requests ready by ``t_ns`` wait. After ``run_until`` the engine
        itself stands at the end of that step, which is later."""
        waiting = len(self.waiting)
        ready = self.req_ready
        # released in ready order (preempted requests go back to the head): the latest last
        for req in reversed(self.waiting):
            if ready[req] <= t_ns:
                break
            waiting -= 1
        # a stalled engine (a hung rank) releases nothing into its queue, but the requests
        # that reach it wait all the same (a running engine has released all ready by t_ns)
        waiting += int(np.searchsorted(self._pending_ready, t_ns, "right"))
        if self.step_start_ns <= t_ns < self.t_ns:
            return self.step_start_running, self.step_start_used_blocks, waiting
        return self.n_running(), self.kv_capacity_blocks - self._free_blocks(), waiting

    def n_running(self) -> int:
        """Sequences holding a batch slot."""
        return int(np.count_nonzero(self.slot_req >= 0))

    def _free_blocks(self) -> int:
        return self.kv_capacity_blocks - self._blocks(self.slot_kv[self.slot_req >= 0])

    def _blocks(self, tokens: np.ndarray) -> int:
        """KV blocks that sequences of ``tokens`` tokens each hold (whole blocks)."""
        return int((-(-tokens // self.block_tokens)).sum())

    def _admit_batch(self, t: int) -> None:
        """Static batching: once the batch has drained, admit the queue's head while its
        whole need fits in the free KV blocks (the batch is formed once; chunked prefill then
        spreads it over steps). Mid-batch nothing is admitted, whatever the room, and the
        queue is held by the batching, not by the cache."""
        self.kv_blocked = False
        if (self.slot_req >= 0).any():
            return
        limit = min(self.max_num_seqs, self._cap)
        free_blocks = self._free_blocks()
        while self.waiting and self.n_running() < limit:
            req = self.waiting[0]
            need = -(-self._need_tokens(req) // self.block_tokens)
            if need > free_blocks:
                self.kv_blocked = True
                break
            self._take(req, t)
            free_blocks -= need

    def _admit_chunks(self, t: int, new_tokens: np.ndarray) -> None:
        """Continuous batching as vLLM V1 schedules it: after the running sequences have
        their tokens, admit the queue's head while a batch slot and token budget are left and
        the KV blocks of its first chunk (the prompt, or as much as the budget left takes)
        fit beside the blocks the step already holds. Only that chunk's blocks are allocated;
        the rest come chunk by chunk in later steps (and a later chunk that does not fit
        preempts). ``new_tokens`` gets each admitted sequence's chunk."""
        self.kv_blocked = False
        limit = min(self.max_num_seqs, self._cap)
        active = self.slot_req >= 0
        used_blocks = self._blocks(self.slot_kv[active] + new_tokens[active])
        budget = self.max_batched_tokens - int(new_tokens[active].sum())
        self._evict_cached(self.kv_capacity_blocks - used_blocks)
        while self.waiting and self.n_running() < limit and budget > 0:
            req = self.waiting[0]
            cached = self.cached_tokens.get(req, 0)  # whole blocks
            chunk = min(self._need_tokens(req) - cached, budget)
            blocks = -(-(cached + chunk) // self.block_tokens)  # its cached ones and the chunk's
            if used_blocks + blocks > self.kv_capacity_blocks:
                self.kv_blocked = True
                break
            slot = self._take(req, t)
            new_tokens[slot] = chunk
            used_blocks += blocks
            budget -= chunk

    def _evict_cached(self, free_blocks: int) -> None:
        """The prefix cache keeps a preempted request's blocks only while the free pool has
        room for them: blocks the running sequences take evict them (waiting order first
        keeps its cache; an approximation of vLLM's LRU free queue)."""
        if not self.cached_tokens:  # the common case: no walk over the queue each step
            return
        for req in self.waiting:
            cached = self.cached_tokens.get(req)
            if cached is None:
                continue
            keep = min(cached // self.block_tokens, max(free_blocks, 0))
            free_blocks -= keep
            if keep:
                self.cached_tokens[req] = keep * self.block_tokens
            else:
                del self.cached_tokens[req]

    def _need_tokens(self, req: int) -> int:
        """Tokens a waiting request must prefill: its prompt, and after a preemption the
        tokens it had generated too (recompute)."""
        return self.req_prompt[req] + self.req_out_done[req]

    def _take(self, req: int, t: int) -> int:
        """Move the queue's head ``req`` into a free batch slot; returns the slot."""
        self.waiting.popleft()
        slot = int(np.flatnonzero(self.slot_req < 0)[0])
        self.slot_req[slot] = req
        self.slot_prompt[slot] = self.req_prompt[req]
        self.slot_target[slot] = self.req_target[req]
        self.slot_out[slot] = self.req_out_done[req]
        cached = self.cached_tokens.pop(req, 0) if self.backfill else 0
        self.slot_prefill[slot] = self._need_tokens(req) - cached
        self.slot_kv[slot] = cached
        self.slot_order[slot] = self._admit_seq
        self._admit_seq += 1
        if self.req_scheduled[req] < 0:
            self.req_scheduled[req] = t
        self.events.append((req, SCHEDULED, t, self.req_prompt[req], self.req_out_done[req]))
        self.events.append(
            (req, PREFILL_START, t + 150_000, self.req_prompt[req], self.req_out_done[req])
        )
        return slot

    def _preempt_until_fits(self, new_tokens: np.ndarray, t: int) -> bool:
        """Preempt latest-admitted sequences until the step's new tokens fit; returns whether
        any was preempted."""
        preempted = False
        while True:
            active = self.slot_req >= 0
            after = self.slot_kv + new_tokens
            blocks = self._blocks(after[active])
            if blocks <= self.kv_capacity_blocks or active.sum() <= 1:
                return preempted
            preempted = True
            victim = int(np.flatnonzero(active)[np.argmax(self.slot_order[active])])
            self._preempt(victim, t)
            new_tokens[victim] = 0

    def _preempt(self, slot: int, t: int) -> None:
        """Free the slot; its request keeps the tokens generated so far and returns to the
        head of the queue, to recompute, when it is admitted again, what the prefix cache
        has not kept of its KV."""
        req = int(self.slot_req[slot])
        done = self.req_out_done[req] = int(self.slot_out[slot])
        # whole blocks of the computed tokens stay in the prefix cache (at least one token is
        # left to recompute: the last sampled one has no KV yet)
        keep = min(int(self.slot_kv[slot]), self.req_prompt[req] + done - 1)
        if keep >= self.block_tokens:
            self.cached_tokens[req] = keep // self.block_tokens * self.block_tokens
        self.events.append((req, PREEMPTED, t, self.req_prompt[req], done))
        self.preemptions_total += 1
        self.slot_req[slot] = -1
        self.waiting.appendleft(req)

    def _step(self) -> None:
        t0 = self.t_ns
        if self.busy_since is None:
            self.busy_since = t0
        if not self.backfill:
            self._admit_batch(t0)
        active = self.slot_req >= 0
        decoding = active & (self.slot_prefill == 0)
        n_decode = int(np.count_nonzero(decoding))
        budget = max(0, self.max_batched_tokens - n_decode)
        prefilling = np.flatnonzero(active & (self.slot_prefill > 0))
        prefilling = prefilling[np.argsort(self.slot_order[prefilling])]
        want = self.slot_prefill[prefilling]
        before = np.cumsum(want) - want  # tokens wanted by earlier-admitted prefills
        take = np.minimum(np.maximum(budget - before, 0), want)
        new_tokens = decoding.astype(np.int64)
        new_tokens[prefilling] = take
        preempted = self._preempt_until_fits(new_tokens, t0)
        if self.backfill:
            if not preempted:
                self._admit_chunks(t0, new_tokens)
            else:  # vLLM V1 admits nothing in a step that had to preempt: the cache is full
                self.kv_blocked = bool(self.waiting)
        active = self.slot_req >= 0
        decoding = active & (self.slot_prefill == 0)
        # while it runs the step holds its sequences' slots and the KV blocks of the tokens it
        # computes (allocated when it is scheduled, as vLLM's V1 scheduler does)
        self.step_start_ns = t0
        self.step_start_running = int(np.count_nonzero(active))
        self.step_start_used_blocks = self._blocks(self.slot_kv[active] + new_tokens[active])
        n_decode = int(decoding.sum())
        prefill_tokens = int(new_tokens[active & ~decoding].sum())
        kv_tokens = int(self.slot_kv[active].sum())
        chunked = active & ~decoding & (new_tokens > 0)
        finishing = chunked & (self.slot_prefill == new_tokens)  # prompt done: samples a token
        end = self.executor.step(
            t0,
            n_decode,
            prefill_tokens,
            kv_tokens,
            n_prefill_seqs=int(chunked.sum()),
            n_sampled=n_decode + int(finishing.sum()),
        )
        if end is None:
            self.stalled = True
            self.kv_blocked = False  # what holds the queue now is the hang
            return
        self.slot_kv += new_tokens * active
        took = active & ~decoding & (new_tokens > 0)
        self.slot_prefill[took] -= new_tokens[took]
        self.prompt_tokens_total += prefill_tokens
        done_prefill = took & (self.slot_prefill == 0)
        produced = decoding | done_prefill
        self.slot_out[produced] += 1
        self.generation_tokens_total += int(produced.sum())
        for slot in np.flatnonzero(done_prefill):
            req = int(self.slot_req[slot])
            if self.req_first_token[req] < 0:
                self.req_first_token[req] = end
                self.events.append((req, FIRST_TOKEN, end, self.req_prompt[req], 1))
        finished = produced & (self.slot_out >= self.slot_target)
        for slot in np.flatnonzero(finished):
            req = int(self.slot_req[slot])
            self.events.append((req, FINISHED, end, self.req_prompt[req], int(self.slot_out[slot])))
            self.slot_req[slot] = -1
            self.slot_kv[slot] = 0
        self.t_ns = end
        running = self.n_running()
        used = self.kv_capacity_blocks - self._free_blocks()
        self.snap_t.append(end)
        self.snap.append(
            (
                running,
                len(self.waiting)
                + int(self._pending_ready.size and (self._pending_ready <= end).sum()),
                used / self.kv_capacity_blocks,
                self.preemptions_total,
                self.prompt_tokens_total,
                self.generation_tokens_total,
                end - t0,
            )
        )
