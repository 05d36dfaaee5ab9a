"""Request front end: the router (weights, sticky pins, drains) and host pre-processing.

Router cause knobs: ``weights`` (router weights per replica; ingress-imbalance) and
``drained`` (a replica taken out of rotation; the planned-drain look-alike and the control
surface). Each request goes to a replica with probability proportional to its weight, unless a
sticky session pins it; it rides one of the replica's client connections (``conn-<rep>-<k>``),
the id the DPU sees its flow by.

Host pre-processing (tokenizer) per replica front-end node: ``workers`` CPU workers serve
requests FIFO, each taking ``(base + per_token * prompt) * slow_factor`` (lognormal 10 %
noise). ``slow_factor`` is the host-preprocessing-delay cause (CPU contention, NUMA
misplacement). The queue depth over time is kept for the host's telemetry.
"""

from __future__ import annotations

import numpy as np

from producers.sim.arrivals import Arrivals
from producers.sim.scenario import Scenario


class Router:
    """Weighted random routing with pins, drains and admission control, no health checks.

    ``admit_ratio[r]``: share of new requests for replica r that admission control lets in
    (the rest are rejected at the front end, HTTP 429); ``down_until_ns[r]``: the replica is
    restarting until then, and requests routed to it meanwhile are refused (its front end is
    down). Moving load elsewhere is the scheduler's decision (``drained``, ``weights``).
    """

    def __init__(self, scenario: Scenario, rng: np.random.Generator) -> None:
        names = [d.name for d in scenario.deployments]
        configured = dict(scenario.workload.router_weights)
        self.names = names
        self.weights = np.array([configured.get(n, 1.0) for n in names], dtype=float)
        self.drained = np.zeros(len(names), dtype=bool)
        self.admit_ratio = np.ones(len(names))
        self.down_until_ns = np.zeros(len(names), dtype=np.int64)
        self.connections = scenario.workload.connections_per_replica
        self._rng = rng

    def share(self) -> np.ndarray:
        """Intended share of new requests per replica (after drains)."""
        w = np.where(self.drained, 0.0, self.weights)
        total = w.sum()
        if total <= 0:
            return np.full(len(w), 1.0 / len(w))
        return w / total

    def route(self, arrivals: Arrivals) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(replica index, connection index, admitted) per arrival."""
        n = arrivals.t_ns.size
        replica = self._rng.choice(len(self.names), size=n, p=self.share())
        pinned = arrivals.pin >= 0
        replica[pinned] = arrivals.pin[pinned]
        conn = self._rng.integers(0, self.connections, n)
        admitted = self._rng.random(n) < self.admit_ratio[replica]
        admitted &= arrivals.t_ns >= self.down_until_ns[replica]
        return replica.astype(np.int64), conn.astype(np.int64), admitted


class Tokenizer:
    """FIFO multi-worker CPU pre-processing queue of one replica's front-end node."""

    def __init__(
        self, workers: int, base_us: float, per_token_us: float, rng: np.random.Generator
    ) -> None:
        self.free_at = np.zeros(max(1, workers))
        self.base_ns = base_us * 1e3
        self.per_token_ns = per_token_us * 1e3
        self.slow_factor = 1.0
        self._rng = rng
        self._arrived: list[np.ndarray] = []
        self._started: list[np.ndarray] = []

    def process(self, t_ns: np.ndarray, prompt: np.ndarray) -> np.ndarray:
        """Ready times (tokenized) of requests arriving at t_ns (sorted)."""
        n = t_ns.size
        ready = np.empty(n, dtype=np.int64)
        started = np.empty(n, dtype=np.int64)
        service = (self.base_ns + self.per_token_ns * prompt) * self.slow_factor
        service = service * self._rng.lognormal(0.0, 0.1, n)
        free = self.free_at
        for i in range(n):
            w = int(np.argmin(free))
            start = max(float(t_ns[i]), free[w])
            free[w] = start + service[i]
            started[i] = int(start)
            ready[i] = int(free[w])
        self._arrived.append(t_ns.astype(np.int64))
        self._started.append(started)
        return ready

    def queue_depth(self, at_ns: np.ndarray) -> np.ndarray:
        """Requests waiting for a worker at each time of at_ns; forgets the past."""
        if not self._arrived:
            return np.zeros(at_ns.size, dtype=np.int64)
        arrived = np.concatenate(self._arrived)
        started = np.concatenate(self._started)
        waiting = (arrived[None, :] <= at_ns[:, None]) & (started[None, :] > at_ns[:, None])
        keep = started > at_ns[-1]
        self._arrived, self._started = [arrived[keep]], [started[keep]]
        return waiting.sum(axis=1)
