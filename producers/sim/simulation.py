"""Simulation: the public driver. Advances the world in 100 ms chunks and yields frames.

    sim = Simulation(load_scenario("tp-straggler"), seed=1)
    sim.topology                      # TopologyRecord dicts
    for frame in sim.frames(duration_s=30.0):
        frame.topic, frame.key, frame.schema, frame.record
    sim.labels                        # FaultLabel dicts, complete once frames() is exhausted

Frames come in event-time order, one frame period (``cluster.frame_interval_ms``, default
200 ms: two chunks) at a time: every source sends one frame per period, and every frame of a
period comes before any of the next; a ``frames()`` call that ends inside a period sends the
frames of its part. Faults start and end at their exact times for compute, engine and routing
causes (the chunk is split into 10 ms ticks and the engines run up to the fault time); fabric
causes take effect at the next 100 ms chunk. Same seed, same scenario -> same frames (random
streams are per mechanism, so a fault does not change the arrivals).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np

from producers.sim.control import Control
from producers.sim.faults import KINDS, Undo, apply, entity_of, severity_of
from producers.sim.ingress import north_south
from producers.sim.labels import LoadLabeller, make_label
from producers.sim.scenario import SIM_CHUNK_MS, FaultSpec, Scenario
from producers.sim.telemetry import ChunkTruth, SimFrame, Telemetry, join_truths
from producers.sim.world import CHUNK_NS, TICK_NS, TICKS_PER_CHUNK, World
from skewscope.config import Topics


class Simulation:
    """One run of a scenario."""

    def __init__(
        self,
        scenario: Scenario,
        seed: int = 0,
        start_ns: int | None = None,
        rate_scale: float = 1.0,
        topics: Topics | None = None,
        scenario_id: str | None = None,
    ) -> None:
        self.scenario = scenario
        self.seed = seed
        self.start_ns = scenario.epoch_ns if start_ns is None else int(start_ns)
        self.scenario_id = scenario_id or f"{scenario.name}@{seed}"
        self.world = World(scenario, seed, self.start_ns, rate_scale)
        self.telemetry = Telemetry(self.world, topics)
        self.control = Control(self.world)
        self._load = LoadLabeller(self.world, self.scenario_id)
        self._chunks_per_frame = scenario.cluster.frame_interval_ms // SIM_CHUNK_MS
        self._injected: list[dict[str, Any]] = []
        events: list[tuple[int, int, FaultSpec, str]] = []
        for i, f in enumerate(scenario.faults):
            onset = self.start_ns + round(f.onset_s * 1e9)
            events.append((onset, i, f, "on"))
            end_s = f.end_s or (
                f.onset_s + KINDS[f.kind].default_duration_s
                if KINDS[f.kind].default_duration_s
                else 0.0
            )
            if end_s:
                events.append((self.start_ns + round(end_s * 1e9), i, f, "off"))
        self._events = sorted(events, key=lambda e: (e[0], e[3] == "on", e[1]))
        self._undo: dict[int, Undo] = {}
        self._open: dict[int, dict[str, Any]] = {}
        self.now_ns = self.start_ns
        # the true state of each chunk of the period whose frames are being yielded (for
        # measurements; never emitted)
        self.period_truths: list[ChunkTruth] = []
        self._topology = self.world.layout.topology_records(self.start_ns)

    @property
    def topology(self) -> list[dict[str, Any]]:
        """TopologyRecord dicts, one per rank."""
        return self._topology

    @property
    def labels(self) -> list[dict[str, Any]]:
        """FaultLabel dicts: injected causes and look-alikes, then load-family true-state labels."""
        return self._injected + self._load.labels

    # -- faults -----------------------------------------------------------------------------
    def _fire(self, at_ns: int, index: int, f: FaultSpec, what: str) -> None:
        kind = KINDS[f.kind]
        if what == "on":
            self._undo[index] = apply(self.world, f)
            if not kind.load_family:
                dep, entity = entity_of(self.world, f)
                label = make_label(
                    f"{self.scenario_id}:fault:{index}",
                    self.scenario_id,
                    dep,
                    entity,
                    kind.condition,
                    at_ns,
                    severity_of(f),
                    kind.unit,
                    f"{f.kind}: {kind.summary} (severity {severity_of(f):g} {kind.unit})",
                )
                self._injected.append(label)
                self._open[index] = label
        else:
            undo = self._undo.pop(index, None)
            if undo is not None:
                undo()
            if index in self._open:
                self._open.pop(index)["end_ns"] = at_ns

    # -- the loop ----------------------------------------------------------------------------
    def frames(self, duration_s: float | None = None) -> Iterator[SimFrame]:
        """Frames of the next duration_s seconds (default: the scenario's duration)."""
        duration = self.scenario.duration_s if duration_s is None else duration_s
        end = self.now_ns + round(duration * 1e9)
        period: list[ChunkTruth] = []
        while self.now_ns < end:
            period.append(self._chunk())
            if len(period) == self._chunks_per_frame or self.now_ns >= end:
                self.period_truths = period
                yield from self.telemetry.emit(join_truths(period))
                period = []
        for label in self._open.values():
            label["end_ns"] = self.now_ns
        self._open.clear()
        self._load.close(self.now_ns)

    def _chunk(self) -> ChunkTruth:
        """Simulate the next chunk; return its true state."""
        w = self.world
        t0 = self.now_ns
        w.fabric.begin_chunk(t0)
        n_gpus = w.layout.n_gpus
        clock_factor = np.empty((n_gpus, TICKS_PER_CHUNK))
        throttle = np.empty((n_gpus, TICKS_PER_CHUNK), dtype=np.int64)
        gen_before = np.array([e.generation_tokens_total for e in w.engines], dtype=np.int64)
        gen = np.zeros((len(w.engines), TICKS_PER_CHUNK))
        for k in range(TICKS_PER_CHUNK):
            ta, tb = t0 + k * TICK_NS, t0 + (k + 1) * TICK_NS
            while self._events and self._events[0][0] < tb:
                at, index, f, what = self._events.pop(0)
                w.admit_arrivals(ta, max(ta, at))
                w.run_engines(max(ta, at))
                ta = max(ta, at)
                self._fire(at, index, f, what)
            w.admit_arrivals(ta, tb)
            w.run_engines(tb)
            clock_factor[:, k] = w.gpus.clock_factor
            throttle[:, k] = w.gpus.throttle_bits
            now_gen = np.array([e.generation_tokens_total for e in w.engines], dtype=np.int64)
            gen[:, k] = now_gen - gen_before
            gen_before = now_gen
            self._load.tick(self._engine_state())
        self.now_ns = t0 + CHUNK_NS
        truth = self._truth(t0, clock_factor, throttle, gen)
        self._load.observe(self.now_ns)
        return truth

    def _engine_state(self) -> np.ndarray:
        """Each engine's true state at this tick's end (``Engine.state_at``)."""
        rows = []
        for e in self.world.engines:
            running, used_blocks, waiting = e.state_at(self.world.now_ns)
            rows.append(
                (
                    running / e.max_num_seqs,
                    used_blocks / e.kv_capacity_blocks,
                    waiting,
                    float(e.kv_blocked and waiting > 0),
                )
            )
        return np.array(rows, dtype=np.float64).reshape(len(self.world.engines), 4)

    def _truth(
        self, t0: int, clock_factor: np.ndarray, throttle: np.ndarray, gen: np.ndarray
    ) -> ChunkTruth:
        w = self.world
        lay = w.layout
        util, prefill_share, h2d_copy, d2h_copy = self._steps(t0)
        dt_s = TICK_NS / 1e9
        pcie = w.pcie.tick_traffic(util, dt_s, h2d_copy, d2h_copy)
        fabric = w.fabric.end_chunk()
        stalls = w.pcie.nic_stalls(pcie["switch_util"], fabric.tx_packets, dt_s)
        wl = w.scenario.workload
        ns = north_south(
            t0,
            TICKS_PER_CHUNK,
            TICK_NS,
            lay.n_nodes,
            np.array([d.frontend_node for d in lay.deployments]),
            [d.name for d in lay.deployments],
            wl.connections_per_replica,
            w.take_ingress(),
            gen,
            wl.bytes_per_prompt_token,
            wl.request_overhead_bytes,
            wl.bytes_per_output_token,
            w.scenario.cluster.ns_link_gbps * 1e9 / 8,
            w.rng_telemetry,
        )
        hang_since = [-1 if ex.hang_start_ns is None else ex.hang_start_ns for ex in w.executors]
        capacity = [e.max_num_seqs for e in w.engines]

        def per_tick(values: Any) -> np.ndarray:  # (as at the end of the chunk)
            return np.repeat(np.asarray(values, dtype=np.int64)[:, None], TICKS_PER_CHUNK, axis=1)

        return ChunkTruth(
            chunk_start=t0,
            util=util,
            clock_factor=clock_factor,
            throttle_bits=throttle,
            pcie_gen=per_tick(w.pcie.gen),
            pcie_width=per_tick(w.pcie.width),
            xid=per_tick(w.gpus.xid),
            pcie=pcie,
            nic_stalls=stalls,
            fabric=fabric,
            ns=ns,
            gen_tokens=gen,
            batch_capacity=per_tick(capacity),
            hang_since_ns=per_tick(hang_since),
            prefill_share=prefill_share,
        )

    def _steps(self, t0: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Per GPU and tick, from each deployment's steps: busy fraction, prefill share of
        the compute (NaN when idle), and the bytes of the step copies host -> device (at
        step starts in the tick) and device -> host (at step ends, last stage only)."""
        w = self.world
        shape = (w.layout.n_gpus, TICKS_PER_CHUNK)
        edges = t0 + TICK_NS * np.arange(TICKS_PER_CHUNK + 1, dtype=np.int64)
        util = np.zeros(shape)
        prefill_share = np.full(shape, np.nan)
        h2d = np.zeros(shape)
        d2h = np.zeros(shape)
        for ex in w.executors:
            iv = ex.intervals.arrays()
            starts, ends = iv["start"], iv["end"]
            covered = np.clip(edges[:, None] - starts[None, :], 0, (ends - starts)[None, :])
            overlap = np.diff(covered, axis=0)  # [ticks, steps] ns of each step in each tick
            busy = overlap.sum(axis=1) / TICK_NS
            gpus = ex.layout.rank_gpu.ravel()
            util[gpus] = np.clip(busy, 0.0, 1.0)[None, :]
            idle_ns = ex.intervals.host_idle_matrix(gpus.size)
            if idle_ns is not None:
                # a rank waiting for its host to launch a kernel idles while its peers spin
                # in the collective (a running NCCL kernel counts as busy)
                with np.errstate(invalid="ignore", divide="ignore"):
                    idle_share = np.nan_to_num(idle_ns / (ends - starts)[:, None])
                idle = overlap @ idle_share / TICK_NS  # [ticks, ranks]
                util[gpus] = np.clip(busy[None, :] - idle.T, 0.0, 1.0)
            m = ex.model
            prefill_ns = m.prefill_us_per_token * 1e3 * iv["prefill_tokens"]
            work_ns = prefill_ns + m.decode_us_per_seq * 1e3 * iv["n_decode"]
            weight = overlap * (work_ns > 0)[None, :]
            with np.errstate(invalid="ignore", divide="ignore"):
                step_share = np.where(work_ns > 0, prefill_ns / work_ns, 0.0)
                share = (weight * step_share[None, :]).sum(axis=1) / weight.sum(axis=1)
            prefill_share[gpus] = share[None, :]
            # copies: H2D at a step's start on every rank, D2H at its end on the last stage
            for at, nbytes, ranks, out in (
                (starts, iv["h2d_bytes"], gpus, h2d),
                (ends, iv["d2h_bytes"], ex.layout.rank_gpu[-1], d2h),
            ):
                inside = (at >= edges[0]) & (at < edges[-1])
                per_tick = np.bincount(
                    (at[inside] - edges[0]) // TICK_NS,
                    weights=nbytes[inside].astype(float),
                    minlength=TICKS_PER_CHUNK,
                )
                out[ranks] += per_tick[None, :]
            if ex.hang_start_ns is not None:
                since = np.clip((edges[1:] - ex.hang_start_ns) / TICK_NS, 0.0, 1.0)
                spinning = np.maximum(util[gpus], since[None, :])
                util[gpus] = spinning
                util[ex.hung_gpus] = np.where(since > 0, 0.0, util[ex.hung_gpus])
        return util, prefill_share, h2d, d2h
