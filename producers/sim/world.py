"""The simulated world: every mechanism's state, advanced in 10 ms ticks.

A :class:`World` owns the layout, clocks, GPUs, PCIe links, fabric, router, tokenizers,
executors and engines, and the arrival process. It knows nothing of telemetry: emitters read
its true state after each 100 ms chunk (``CHUNK_NS``), faults change its causes between
ticks.
"""

from __future__ import annotations

import numpy as np

from producers.sim.arrivals import ArrivalProcess
from producers.sim.clocks import Clocks
from producers.sim.collectives import Executor
from producers.sim.engine import Engine
from producers.sim.fabric import Fabric
from producers.sim.frontend import Router, Tokenizer
from producers.sim.gpu import GpuState
from producers.sim.pcie import PcieState
from producers.sim.scenario import SIM_CHUNK_MS, Scenario
from producers.sim.topology import Layout

TICK_NS = 10_000_000
CHUNK_NS = SIM_CHUNK_MS * 1_000_000
TICKS_PER_CHUNK = CHUNK_NS // TICK_NS


class World:
    """All mechanisms of one simulation, with independent random streams per mechanism."""

    def __init__(self, scenario: Scenario, seed: int, start_ns: int, rate_scale: float = 1.0):
        self.scenario = scenario
        self.start_ns = start_ns
        streams = np.random.SeedSequence(seed).spawn(12)
        rngs = [np.random.default_rng(s) for s in streams]
        self.rng_telemetry = rngs[0]
        self.rng_labels = rngs[1]
        c = scenario.cluster
        self.layout = Layout(scenario)
        lay = self.layout
        self.clocks = Clocks(lay.node_names, c, start_ns, rngs[2])
        self.gpus = GpuState(lay.n_gpus, c, rngs[3])
        self.pcie = PcieState(lay.n_gpus, c, rngs[4])
        self.fabric = Fabric(lay.port_leaf, c, rngs[5], TICK_NS, TICKS_PER_CHUNK)
        self.router = Router(scenario, rngs[6])
        self.arrivals = ArrivalProcess(scenario.workload, start_ns, rngs[7])
        self.arrivals.rate_scale = rate_scale
        w = scenario.workload
        self.tokenizers = [
            Tokenizer(w.tokenizer_workers, w.tokenize_base_us, w.tokenize_us_per_token, rngs[8])
            for _ in scenario.deployments
        ]
        self.executors = [
            Executor(spec, dl, c, self.gpus, self.pcie, self.fabric, rngs[9])
            for spec, dl in zip(scenario.deployments, lay.deployments, strict=True)
        ]
        self.engines = [
            Engine(spec, ex) for spec, ex in zip(scenario.deployments, self.executors, strict=True)
        ]
        for e in self.engines:
            e.t_ns = start_ns
        self.now_ns = start_ns
        # per-chunk log of what arrived where (north-south truth for the DPU and labels)
        self.ingress: list[tuple[np.ndarray, ...]] = []
        # requests admission control turned away: (arrival ns, replica) per admission round
        self.rejected: list[tuple[np.ndarray, np.ndarray]] = []

    # -- lookups used by faults and control ---------------------------------------------
    def replica_index(self, name: str) -> int:
        return self.layout.deployment(name).index

    def engine(self, name: str) -> Engine:
        return self.engines[self.replica_index(name)]

    def deployment_of_node(self, node: int) -> str:
        return self.layout.deployments[int(self.layout.node_deployment[node])].name

    def tokenizers_on_node(self, node: int) -> list[Tokenizer]:
        return [
            tok
            for tok, dl in zip(self.tokenizers, self.layout.deployments, strict=True)
            if dl.frontend_node == node
        ]

    # -- advancing ----------------------------------------------------------------------
    def admit_arrivals(self, t0: int, t1: int) -> None:
        """Draw arrivals of [t0, t1), route them, tokenize, hand them to the engines."""
        batch = self.arrivals.draw(t0, t1)
        if not batch.t_ns.size:
            return
        replica, conn, admitted = self.router.route(batch)
        # rejected requests still arrive at the front end (and get their 429 or 503 there)
        self.ingress.append((batch.t_ns, replica, conn, batch.prompt_tokens))
        if not admitted.all():
            self.rejected.append((batch.t_ns[~admitted], replica[~admitted]))
        for r in np.unique(replica[admitted]):
            sel = (replica == r) & admitted
            t = batch.t_ns[sel]
            ready = self.tokenizers[r].process(t, batch.prompt_tokens[sel])
            self.engines[r].submit(
                t, ready, batch.prompt_tokens[sel], batch.output_tokens[sel], conn[sel]
            )

    def restart_replica(self, name: str, at_ns: int, downtime_ns: int) -> None:
        """Restart a replica's engine and worker processes: a wedged rank's process is gone
        (its GPUs no longer hang), sequences in flight are recomputed after the restart, and
        requests that reach it before it is ready again (at_ns + downtime_ns) are refused."""
        r = self.replica_index(name)
        self.executors[r].end_hang()
        ready_ns = at_ns + downtime_ns
        self.router.down_until_ns[r] = ready_ns
        self.engines[r].restart(at_ns, ready_ns)

    def run_engines(self, until_ns: int) -> None:
        for engine in self.engines:
            engine.run_until(until_ns)
        self.now_ns = until_ns

    def take_ingress(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """(arrival ns, replica, connection, prompt tokens) of requests since the last call."""
        if not self.ingress:
            z = np.zeros(0, dtype=np.int64)
            return z, z, z, z
        cols = [np.concatenate(c) for c in zip(*self.ingress, strict=True)]
        self.ingress = []
        return cols[0], cols[1], cols[2], cols[3]
