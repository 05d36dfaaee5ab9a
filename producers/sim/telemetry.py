"""Emitters: the world's true state over a frame period, as each source would report it.

Every source sends one frame per period (``cluster.frame_interval_ms``, default 200 ms: two
100 ms simulator chunks, whose truths :func:`join_truths` puts end to end), covering it.

Sources and what they see (DESIGN.md section 1):

* ``engine`` — per replica: request lifecycle events (EngineRequestFrame) and 10 ms scheduler
  samples (EngineSampleFrame), stamped by the front-end node's host clock.
* ``nccl`` — per deployment, group and node: per-rank per-step summaries with sampled detail
  (CollectiveFrame); start times in the node's host clock, durations local.
* ``gpu`` — per node: 10 ms DCGM rows per GPU (GpuSampleFrame).
* ``nic`` — per port: 10 ms samples of cumulative counters (NicCounterFrame), east-west ports
  ``mlx5_<i>`` and the DPU's north-south uplink ``p0``.
* ``dpu`` — per node with a DPU: its flows (north-south connections of the replica whose
  front end it serves), its receive queue, discards, PCIe DMA (its own traffic, plus host
  copies of GPUs behind its PCIe switch when the topology says so) and doorbells. Not NVLink,
  not east-west RDMA of other NICs.

Options: ``cluster.sample_loss_ratio`` drops individual 10 ms samples (GPU rows, NIC
samples, engine samples, DPU rows; request events and collective records are logs and are not
dropped); counter resets and wraps come from :mod:`nic_counters`. Every frame carries a
per-producer ``frame_seq``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import numpy as np

from producers.sim.clocks import Clocks
from producers.sim.collectives import DETAIL, SUMMARY, Executor, RowLog
from producers.sim.engine import Engine
from producers.sim.fabric import TickTraffic
from producers.sim.ingress import NorthSouth
from producers.sim.nic_counters import COUNTERS, INDEX, CounterBank
from producers.sim.topology import DeploymentLayout
from producers.sim.world import TICK_NS, World
from schemas.columns import pack
from skewscope.config import Topics


@dataclass(frozen=True)
class SimFrame:
    """One message: topic, key, schema name and a record valid for schemas/<schema>."""

    topic: str
    key: str
    schema: str
    record: dict[str, Any]
    event_time_ns: int = 0  # true end of the period the frame covers


@dataclass
class ChunkTruth:
    """True state of one chunk (or of consecutive chunks joined) that emitters need beyond
    the world object itself. Every array has the ticks on its last axis."""

    chunk_start: int
    util: np.ndarray  # [n_gpus, ticks]
    clock_factor: np.ndarray  # [n_gpus, ticks]
    throttle_bits: np.ndarray  # [n_gpus, ticks]
    pcie_gen: np.ndarray  # [n_gpus, ticks] (as at the end of each chunk)
    pcie_width: np.ndarray
    xid: np.ndarray  # [n_gpus, ticks] last XID (as at the end of each chunk)
    pcie: dict[str, np.ndarray]
    nic_stalls: tuple[np.ndarray, np.ndarray]
    fabric: TickTraffic
    ns: NorthSouth
    gen_tokens: np.ndarray  # [n_replicas, ticks]
    batch_capacity: np.ndarray  # [n_replicas, ticks] max_num_seqs (end of each chunk)
    hang_since_ns: np.ndarray  # [n_replicas, ticks] start of a rank hang, -1: none (same)
    # Truth only (never emitted): share of each GPU's compute time in each tick spent on
    # prefill, from the nominal split of the steps running in it; NaN where no step runs.
    prefill_share: np.ndarray | None = None  # [n_gpus, ticks]

    @property
    def ticks(self) -> int:
        return int(self.util.shape[1])


def _join_ticks(parts: list[np.ndarray]) -> np.ndarray:
    return np.concatenate(parts, axis=-1)


def join_truths(parts: list[ChunkTruth]) -> ChunkTruth:
    """The truth of consecutive chunks as one: per-tick arrays end to end. The north-south
    flows are the same in every chunk (connections are fixed by the scenario)."""
    if len(parts) == 1:
        return parts[0]
    first = parts[0]
    ns0 = first.ns
    if any(p.ns.flow_ids != ns0.flow_ids for p in parts[1:]):
        raise ValueError("north-south flows changed between chunks of one frame period")

    def ns_ticks(name: str) -> np.ndarray:
        return _join_ticks([getattr(p.ns, name) for p in parts])

    ns = NorthSouth(
        rx_bytes=ns_ticks("rx_bytes"),
        tx_bytes=ns_ticks("tx_bytes"),
        rx_queue_peak_bytes=ns_ticks("rx_queue_peak_bytes"),
        rx_discards=ns_ticks("rx_discards"),
        flow_node=ns0.flow_node,
        flow_ids=ns0.flow_ids,
        flow_rx=ns_ticks("flow_rx"),
        flow_tx=ns_ticks("flow_tx"),
        flow_burst=ns_ticks("flow_burst"),
    )
    fabric = TickTraffic(
        **{
            f.name: _join_ticks([getattr(p.fabric, f.name) for p in parts])
            for f in dataclasses.fields(TickTraffic)
        }
    )
    shares = [p.prefill_share for p in parts]
    return ChunkTruth(
        chunk_start=first.chunk_start,
        util=_join_ticks([p.util for p in parts]),
        clock_factor=_join_ticks([p.clock_factor for p in parts]),
        throttle_bits=_join_ticks([p.throttle_bits for p in parts]),
        pcie_gen=_join_ticks([p.pcie_gen for p in parts]),
        pcie_width=_join_ticks([p.pcie_width for p in parts]),
        xid=_join_ticks([p.xid for p in parts]),
        pcie={k: _join_ticks([p.pcie[k] for p in parts]) for k in first.pcie},
        nic_stalls=(
            _join_ticks([p.nic_stalls[0] for p in parts]),
            _join_ticks([p.nic_stalls[1] for p in parts]),
        ),
        fabric=fabric,
        ns=ns,
        gen_tokens=_join_ticks([p.gen_tokens for p in parts]),
        batch_capacity=_join_ticks([p.batch_capacity for p in parts]),
        hang_since_ns=_join_ticks([p.hang_since_ns for p in parts]),
        prefill_share=None
        if any(x is None for x in shares)
        else _join_ticks([x for x in shares if x is not None]),
    )


@dataclass(frozen=True)
class _NicPort:
    """What a NIC port's frames say about where they come from (fixed by the layout)."""

    port: str
    plane: str
    fabric: str
    deployment: str
    node_name: str
    clock: int  # the node's host clock
    clock_id: str
    seq_key: tuple[str, str, str]


@dataclass(frozen=True)
class _CollectiveGroup:
    """A communicator of a deployment and the nodes that report its rows, one frame each
    (fixed by the layout)."""

    name: str  # tp<p>, pp<a>-<b> or ep
    op: str
    size: int
    nodes: tuple[int, ...]


def _collective_groups(dl: DeploymentLayout, moe: bool) -> list[_CollectiveGroup]:
    """The communicators of a deployment in frame order: TP groups by stage, then the
    send/recv pairs of consecutive stages, then the MoE all-to-all."""
    groups = []
    for p in range(dl.pp):
        nodes = sorted(set(dl.rank_node[p].tolist()))
        groups.append(_CollectiveGroup(f"tp{p}", "allreduce", dl.tp, tuple(nodes)))
    if dl.pp > 1:
        for a in range(dl.pp):
            b = (a + 1) % dl.pp
            nodes = sorted(set(dl.rank_node[a].tolist()) | set(dl.rank_node[b].tolist()))
            groups.append(_CollectiveGroup(f"pp{a}-{b}", "sendrecv", 2 * dl.tp, tuple(nodes)))
    if moe:
        nodes = sorted(set(dl.rank_node[0].tolist()))
        groups.append(_CollectiveGroup("ep", "alltoall", dl.tp, tuple(nodes)))
    return groups


def _rows_on_node(cols: dict[str, np.ndarray], node: int, only_node: bool) -> dict[str, np.ndarray]:
    """The rows of a group's columns that node logged; all of them, as they are, when the
    group spans that node only (every row was logged there)."""
    if not cols or only_node:
        return cols
    on_node = cols["node"] == node
    return {name: values[on_node] for name, values in cols.items()}


def _first_unreported_start(
    log: RowLog | None, node: int, only_node: bool, until: int
) -> int | None:
    """The earliest start (true ns) before ``until`` of a step the group's log still holds on
    ``node`` (a row is reported once its step has ended): a frame that claimed to report up
    to ``until`` would make that row late when it comes (docs/backtest.md)."""
    if log is None:
        return None
    earliest: int | None = None
    for block in log.summary:
        ranks_nodes, starts = block[2][1], block[2][3]
        assert isinstance(starts, np.ndarray)
        if not only_node:
            starts = starts[np.broadcast_to(np.asarray(ranks_nodes) == node, starts.shape)]
        starts = starts[starts < until]
        if starts.size:
            first = int(starts.min())
            earliest = first if earliest is None else min(earliest, first)
    return earliest


class Telemetry:
    """Frame builders with their per-producer sequence numbers and cumulative counters."""

    def __init__(self, world: World, topics: Topics | None = None) -> None:
        self.world = world
        self.topics = topics or Topics()
        c = world.scenario.cluster
        rng = world.rng_telemetry
        self.rng = rng
        self.loss = c.sample_loss_ratio
        lay = world.layout
        self.ew = CounterBank(lay.n_gpus, c.counter_wrap_bits, rng)
        self.ns = CounterBank(lay.n_nodes, c.counter_wrap_bits, rng)
        self.replay_total = rng.integers(0, 50, lay.n_gpus).astype(np.int64)
        self.seq: dict[tuple[str, ...], int] = {}
        # per period (reset by emit): a collective frame's reach stops at the start of a step
        # it has not reported yet: (clock, start in true ns) by id of the frame's record
        self._in_flight: dict[int, tuple[int, int]] = {}
        self._nic_ports = self._nic_port_table()
        self._collective_groups: dict[str, list[_CollectiveGroup]] = {}  # by deployment
        # Fixed by the layout, so built once: each node's GPUs (global indices, ascending),
        # those behind its DPU's PCIe switch, and each node's host and DPU clock.
        self._node_gpus = [np.flatnonzero(lay.gpu_node == node) for node in range(lay.n_nodes)]
        behind = np.array([int(lay.gpu_local[g]) in lay.gpus_behind_dpu for g in range(lay.n_gpus)])
        self._node_gpus_behind_dpu = [
            np.flatnonzero((lay.gpu_node == node) & behind) for node in range(lay.n_nodes)
        ]
        self._host_clocks = np.array([Clocks.host(node) for node in range(lay.n_nodes)])
        self._dpu_clocks = np.array([Clocks.dpu(node) for node in range(lay.n_nodes)])
        self.resets_ew: list[tuple[int, int]] = []  # (port, at_ns)
        self.resets_ns: list[tuple[int, int]] = []
        for node, port, at_s in c.counter_resets:
            at = world.start_ns + int(float(at_s) * 1e9)
            n = lay.node_index(str(node))
            if port == "p0":
                self.resets_ns.append((n, at))
            else:
                self.resets_ew.append((lay.resolve_gpu(f"{node}/{port}"), at))

    def _nic_port_table(self) -> list[_NicPort]:
        """Every NIC port that reports, in frame order: east-west ports by global index, then
        each node's DPU uplink ``p0`` (when the cluster has DPUs). Fixed by the layout."""
        w = self.world
        lay = w.layout
        clocks = w.clocks
        sites = [
            (int(lay.gpu_node[g]), lay.port_names[g], "east_west", lay.fabric)
            for g in range(lay.n_gpus)
        ]
        if w.scenario.cluster.dpu:
            sites += [(node, "p0", "north_south", "ethernet") for node in range(lay.n_nodes)]
        return [
            _NicPort(
                port=port,
                plane=plane,
                fabric=fabric,
                deployment=w.deployment_of_node(node),
                node_name=lay.node_names[node],
                clock=clocks.host(node),
                clock_id=clocks.ids[clocks.host(node)],
                seq_key=("nic", str(node), port),
            )
            for node, port, plane, fabric in sites
        ]

    def _seq(self, *key: str) -> int:
        value = self.seq.get(key, 0)
        self.seq[key] = value + 1
        return value

    def _keep(self, n: int) -> np.ndarray:
        if self.loss <= 0:
            return np.ones(n, dtype=bool)
        return self.rng.random(n) >= self.loss

    def emit(self, truth: ChunkTruth) -> list[SimFrame]:
        """All frames of the period ``truth`` covers, in topic order."""
        frames: list[SimFrame] = []
        t0 = truth.chunk_start
        tick_end = t0 + TICK_NS * np.arange(1, truth.ticks + 1, dtype=np.int64)
        until = int(tick_end[-1])
        for r, engine in enumerate(self.world.engines):
            frames.append(self._requests(engine, until))
            frames.append(self._engine_samples(r, engine, truth, tick_end))
        self._in_flight = {}
        for ex in self.world.executors:
            frames.extend(self._collectives(ex, until))
        frames.extend(self._gpu(truth, tick_end))
        frames.extend(self._nic(truth, tick_end))
        frames.extend(self._dpu(truth, tick_end))
        clocks = self.world.clocks
        # frame_end_ns: how far each source reports, in its own clock (a live idle source);
        # one clock pass over all clocks draws what one to_local per clock would
        every_clock = np.arange(len(clocks.ids))
        local_end = clocks.to_local_each(every_clock, np.repeat(tick_end[-1], every_clock.size))
        end_by_id = dict(zip(clocks.ids, local_end.tolist(), strict=True))
        for f in frames:
            end_ns = end_by_id[f.record["clock_id"]]
            in_flight = self._in_flight.get(id(f.record))
            if in_flight is not None:
                end_ns = min(end_ns, clocks.to_local_exact(*in_flight))
            f.record["frame_end_ns"] = end_ns
        return frames

    # -- engine ----------------------------------------------------------------------------
    def _requests(self, engine: Engine, until: int) -> SimFrame:
        w = self.world
        dl = w.layout.deployment(engine.name)
        node = dl.frontend_node
        events = engine.events
        now = [e for e in events if e[2] < until]
        engine.events = [e for e in events if e[2] >= until]
        now.sort(key=lambda e: e[2])
        arr = np.array(now, dtype=np.int64).reshape(-1, 5)
        uniq, index = np.unique(arr[:, 0], return_inverse=True)
        record = pack(
            "EngineRequestFrame",
            {
                "request_index": index,
                "kind": arr[:, 1],
                "ts_ns": w.clocks.to_local(w.clocks.host(node), arr[:, 2]),
                "prompt_tokens": arr[:, 3],
                "output_tokens": arr[:, 4],
            },
            schema_version=1,
            source="engine",
            deployment=engine.name,
            replica=engine.name,
            node=w.layout.node_names[node],
            clock_id=w.clocks.ids[w.clocks.host(node)],
            frame_seq=self._seq("req", engine.name),
            n_events=len(now),
            request_ids=[f"{engine.name}-{i:08d}" for i in uniq.tolist()],
            connection_ids=[f"conn-{engine.name}-{engine.req_conn[i]}" for i in uniq.tolist()],
        )
        return SimFrame(
            self.topics.engine_requests, engine.name, "EngineRequestFrame", record, until
        )

    def _engine_samples(
        self, r: int, engine: Engine, truth: ChunkTruth, tick_end: np.ndarray
    ) -> SimFrame:
        w = self.world
        dl = w.layout.deployments[r]
        node = dl.frontend_node
        spec = w.scenario.deployments[r]
        snap_t = np.array(engine.snap_t, dtype=np.int64)
        snaps = np.array(engine.snap, dtype=np.float64).reshape(-1, 7)
        idx = np.searchsorted(snap_t, tick_end, "right") - 1
        have = idx >= 0
        row = np.where(have, idx, 0)

        def col(i: int) -> np.ndarray:
            return np.where(have, snaps[row, i], 0.0) if snaps.size else np.zeros(tick_end.size)

        ex = engine.executor
        starts = np.array(ex.intervals.start, dtype=np.int64)
        ends = np.array(ex.intervals.end, dtype=np.int64)
        lo = tick_end - TICK_NS
        in_tick = (ends[None, :] > lo[:, None]) & (ends[None, :] <= tick_end[:, None])
        dur = (ends - starts).astype(float)
        count = in_tick.sum(axis=1)
        step_ns = np.where(
            count > 0, (in_tick * dur[None, :]).sum(axis=1) / np.maximum(count, 1), 0.0
        )
        hang_since = truth.hang_since_ns[r]
        hung = (hang_since >= 0) & (tick_end > hang_since)
        if hung.any():
            step_ns = np.where(hung, tick_end - hang_since, step_ns)
        # keep only what later chunks still need
        keep_from = max(0, int(idx.max()) if idx.size else 0)
        engine.snap_t = engine.snap_t[keep_from:]
        engine.snap = engine.snap[keep_from:]
        last = tick_end[-1] - TICK_NS
        ex.intervals.keep(ends > last)  # all step fields together
        tok_depth = w.tokenizers[r].queue_depth(tick_end)
        n_experts = spec.model.n_experts
        if n_experts:
            expert = np.zeros((tick_end.size, n_experts), dtype=np.int64)
            pending = []
            for t, counts in ex.expert_log:
                k = int(np.searchsorted(tick_end, t, "right"))
                if k < tick_end.size:
                    expert[k] += counts
                else:
                    pending.append((t, counts))
            ex.expert_log = pending
        keep_rows = self._keep(tick_end.size)
        columns = {
            "ts_ns": w.clocks.to_local(w.clocks.host(node), tick_end),
            "num_running": col(0),
            "num_waiting": col(1),
            "batch_capacity": truth.batch_capacity[r],
            "kv_cache_usage_ratio": col(2),
            "preemptions_total": col(3),
            "prompt_tokens_total": col(4),
            "generation_tokens_total": col(5),
            "step_duration_ns": step_ns,
            "tokenizer_queue_depth": tok_depth,
        }
        if self.loss > 0:  # (otherwise every sample is kept)
            columns = {k: np.asarray(v)[keep_rows] for k, v in columns.items()}
        if n_experts:
            columns["expert_tokens"] = (expert[keep_rows] if self.loss > 0 else expert).ravel()
        record = pack(
            "EngineSampleFrame",
            columns,
            schema_version=1,
            source="engine",
            deployment=engine.name,
            replica=engine.name,
            node=w.layout.node_names[node],
            clock_id=w.clocks.ids[w.clocks.host(node)],
            frame_seq=self._seq("eng", engine.name),
            n_samples=int(keep_rows.sum()),
            n_experts=n_experts,
            kv_capacity_tokens=engine.kv_capacity_blocks * engine.block_tokens,
        )
        return SimFrame(
            self.topics.engine_samples,
            engine.name,
            "EngineSampleFrame",
            record,
            int(tick_end[-1]),
        )

    # -- nccl ------------------------------------------------------------------------------
    def _collectives(self, ex: Executor, until: int) -> list[SimFrame]:
        w = self.world
        dl = ex.layout
        out = []
        groups = self._collective_groups.get(dl.name)
        if groups is None:
            groups = self._collective_groups[dl.name] = _collective_groups(dl, ex.moe)
        for group in groups:
            log = ex.logs.get(group.name)
            summary = RowLog.take(log.summary, SUMMARY, until) if log and log.summary else {}
            detail = RowLog.take(log.detail, DETAIL, until) if log and log.detail else {}
            only_node = len(group.nodes) == 1
            for node in group.nodes:
                s = _rows_on_node(summary, node, only_node)
                d = _rows_on_node(detail, node, only_node)
                clock = w.clocks.host(node)
                cols: dict[str, Any] = {}
                n_rows = s["step"].size if s else 0
                n_detail = d["step"].size if d else 0
                if n_rows:
                    cols.update(
                        step=s["step"],
                        rank=s["rank"],
                        collective_count=s["count"],
                        first_start_ns=w.clocks.to_local(
                            clock, np.rint(s["first_start"]).astype(np.int64)
                        ),
                        duration_sum_ns=np.rint(s["sum"]),
                        duration_max_ns=np.rint(s["max"]),
                        bytes_total=np.rint(s["bytes"]),
                    )
                if n_detail:
                    cols.update(
                        detail_step=d["step"],
                        detail_seq=np.zeros(n_detail),
                        detail_rank=d["rank"],
                        detail_start_ns=w.clocks.to_local(
                            clock, np.rint(d["start"]).astype(np.int64)
                        ),
                        detail_duration_ns=np.rint(d["duration"]),
                    )
                record = pack(
                    "CollectiveFrame",
                    cols,
                    schema_version=1,
                    source="nccl",
                    deployment=dl.name,
                    node=w.layout.node_names[node],
                    clock_id=w.clocks.ids[clock],
                    frame_seq=self._seq("nccl", dl.name, group.name, str(node)),
                    group_id=group.name,
                    group_size=group.size,
                    op=group.op,
                    n_rows=n_rows,
                    n_detail=n_detail,
                )
                started = _first_unreported_start(log, node, only_node, until)
                if started is not None:
                    self._in_flight[id(record)] = (clock, started)
                out.append(
                    SimFrame(self.topics.collectives, dl.name, "CollectiveFrame", record, until)
                )
        return out

    # -- gpu -------------------------------------------------------------------------------
    def _gpu(self, truth: ChunkTruth, tick_end: np.ndarray) -> list[SimFrame]:
        w = self.world
        lay = w.layout
        gpus = w.gpus
        readings = gpus.readings(truth.util, truth.clock_factor, truth.throttle_bits, truth.xid)
        replay_cum = self.replay_total[:, None] + np.cumsum(truth.pcie["replays"], axis=1)
        self.replay_total = replay_cum[:, -1]
        out = []
        end = int(tick_end[-1])
        ticks = tick_end.size
        node_ts = self._each_node_ts(self._host_clocks, tick_end)
        for node in range(lay.n_nodes):
            gsel = self._node_gpus[node]
            n = gsel.size
            keep = self._keep(n * ticks)
            clock = w.clocks.host(node)
            ts = np.tile(node_ts[node], n)

            def rows(a: np.ndarray, gsel: np.ndarray = gsel) -> np.ndarray:
                return np.asarray(a)[gsel].reshape(-1)

            cols = {
                "ts_ns": ts,
                "gpu_index": np.repeat(np.arange(n), ticks),
                "sm_clock_mhz": rows(readings["sm_clock_mhz"]),
                "sm_clock_max_mhz": np.full(n * ticks, gpus.max_clock_mhz),
                "throttle_reasons": rows(readings["throttle_reasons"]),
                "power_w": rows(readings["power_w"]),
                "gpu_util_ratio": rows(readings["gpu_util_ratio"]),
                "pcie_tx_bytes_per_s": rows(truth.pcie["pcie_tx_bytes_per_s"]),
                "pcie_rx_bytes_per_s": rows(truth.pcie["pcie_rx_bytes_per_s"]),
                "pcie_link_gen": rows(truth.pcie_gen),
                "pcie_link_width": rows(truth.pcie_width),
                "pcie_replay_total": rows(replay_cum),
                "xid_last": rows(readings["xid_last"]),
            }
            if self.loss > 0:  # (otherwise every sample is kept)
                cols = {k: v[keep] for k, v in cols.items()}
            dep = w.deployment_of_node(node)
            record = pack(
                "GpuSampleFrame",
                cols,
                schema_version=1,
                source="gpu",
                deployment=dep,
                node=lay.node_names[node],
                clock_id=w.clocks.ids[clock],
                frame_seq=self._seq("gpu", str(node)),
                gpu_uuids=[lay.gpu_uuids[g] for g in gsel],
                n_samples=int(keep.sum()),
            )
            out.append(SimFrame(self.topics.gpu, dep, "GpuSampleFrame", record, end))
        return out

    def _each_node_ts(self, node_clocks: np.ndarray, tick_end: np.ndarray) -> np.ndarray:
        """[node, tick] tick ends as each node's clock (node_clocks[node]) writes them: one
        clock pass with the draws of one to_local(clock, tick_end) per node in node order."""
        n_nodes, ticks = node_clocks.size, tick_end.size
        ts = self.world.clocks.to_local_each(
            np.repeat(node_clocks, ticks), np.tile(tick_end, n_nodes)
        )
        return ts.reshape(n_nodes, ticks)

    # -- nic -------------------------------------------------------------------------------
    def _reset_ticks(
        self, resets: list[tuple[int, int]], n: int, t0: int, ticks: int
    ) -> np.ndarray:
        out = np.full(n, -1)
        for port, at in resets:
            if t0 <= at < t0 + TICK_NS * ticks:
                out[port] = (at - t0) // TICK_NS
        return out

    def _nic(self, truth: ChunkTruth, tick_end: np.ndarray) -> list[SimFrame]:
        w = self.world
        lay = w.layout
        f = truth.fabric
        n_ports, ticks = f.tx_bytes.shape
        inc = np.zeros((len(COUNTERS), n_ports, ticks))
        for name, value in (
            ("tx_bytes_phy", f.tx_bytes),
            ("rx_bytes_phy", f.rx_bytes),
            ("rx_discards_phy", f.rx_discards),
            ("rx_symbol_err_phy", f.symbol_errors),
            ("rx_corrected_bits_phy", f.corrected_bits),
            ("np_ecn_marked_roce_packets", f.ecn_marked),
            ("np_cnp_sent", f.cnp_sent),
            ("rp_cnp_handled", f.cnp_handled),
            ("out_of_sequence", f.out_of_sequence),
            ("packet_seq_err", f.packet_seq_err),
            ("local_ack_timeout_err", f.ack_timeouts),
            ("rx_prio3_pause", f.rx_pause_frames),
            ("tx_prio3_pause", f.tx_pause_frames),
            ("rx_prio3_pause_duration", f.rx_pause_us),
            ("tx_prio3_pause_duration", f.tx_pause_us),
            ("port_xmit_wait", f.xmit_wait_ticks),
            ("outbound_pci_stalled_rd", truth.nic_stalls[0]),
            ("outbound_pci_stalled_wr", truth.nic_stalls[1]),
        ):
            inc[INDEX[name]] = value
        ew_values = self.ew.advance(
            inc, self._reset_ticks(self.resets_ew, n_ports, truth.chunk_start, ticks)
        )
        ns = truth.ns
        n_nodes = lay.n_nodes
        ns_inc = np.zeros((len(COUNTERS), n_nodes, ticks))
        dt_s = TICK_NS / 1e9
        ns_inc[INDEX["tx_bytes_phy"]] = ns.tx_bytes
        ns_inc[INDEX["rx_bytes_phy"]] = ns.rx_bytes
        ns_inc[INDEX["rx_discards_phy"]] = ns.rx_discards + self.rng.poisson(
            0.2 * dt_s, (n_nodes, ticks)
        )
        background = {  # rare events on a healthy north-south link, per second
            "rx_symbol_err_phy": 0.01,
            "rx_corrected_bits_phy": 300.0,
            "np_ecn_marked_roce_packets": 0.5,
            "np_cnp_sent": 0.2,
            "rp_cnp_handled": 0.2,
            "out_of_sequence": 0.1,
            "packet_seq_err": 0.1,
            "local_ack_timeout_err": 0.01,
            "rx_prio3_pause": 0.1,
            "tx_prio3_pause": 0.1,
            "rx_prio3_pause_duration": 0.5,
            "tx_prio3_pause_duration": 0.5,
            "port_xmit_wait": 2e4,
            "outbound_pci_stalled_rd": 1.0,
            "outbound_pci_stalled_wr": 1.5,
        }
        for name, rate in background.items():
            ns_inc[INDEX[name]] = self.rng.poisson(rate * dt_s, (n_nodes, ticks))
        ns_values = self.ns.advance(
            ns_inc, self._reset_ticks(self.resets_ns, n_nodes, truth.chunk_start, ticks)
        )
        ports = self._nic_ports
        # [port, counter, tick], east-west ports then north-south ones (one frame each)
        values = [np.ascontiguousarray(ew_values.transpose(1, 0, 2))]
        if w.scenario.cluster.dpu:
            values.append(np.ascontiguousarray(ns_values.transpose(1, 0, 2)))
        port_values = np.concatenate(values)
        keeps = [self._keep(ticks) for _ in ports]
        # every port's timestamps in one clock pass (same draws as one to_local per port)
        kept = np.concatenate(keeps)
        port_clock = np.array([p.clock for p in ports], dtype=np.int64)
        ts = w.clocks.to_local_each(
            np.repeat(port_clock, ticks)[kept], np.tile(tick_end, len(ports))[kept]
        )
        if self.loss > 0:
            n_kept = [int(k.sum()) for k in keeps]
            ts_by_port = np.split(ts, np.cumsum(n_kept)[:-1])
        else:  # every sample kept: one row of ticks per port
            n_kept = [ticks] * len(ports)
            ts_by_port = list(ts.reshape(len(ports), ticks))
        end = int(tick_end[-1])
        out = []
        for p, keep, n, port_ts, v in zip(
            ports, keeps, n_kept, ts_by_port, port_values, strict=True
        ):
            counters = v.ravel() if n == ticks else v[:, keep].ravel()
            out.append(self._nic_frame(p, n, port_ts, counters, end))
        return out

    def _nic_frame(
        self, p: _NicPort, n_samples: int, ts: np.ndarray, counters: np.ndarray, end: int
    ) -> SimFrame:
        record = pack(
            "NicCounterFrame",
            {"ts_ns": ts, "counter_values": counters},
            schema_version=1,
            source="nic",
            deployment=p.deployment,
            node=p.node_name,
            clock_id=p.clock_id,
            frame_seq=self._seq(*p.seq_key),
            port=p.port,
            plane=p.plane,
            fabric=p.fabric,
            n_samples=n_samples,
            n_counters=len(COUNTERS),
            counter_names=list(COUNTERS),
        )
        return SimFrame(self.topics.nic, p.deployment, "NicCounterFrame", record, end)

    # -- dpu -------------------------------------------------------------------------------
    def _dpu(self, truth: ChunkTruth, tick_end: np.ndarray) -> list[SimFrame]:
        w = self.world
        lay = w.layout
        if not w.scenario.cluster.dpu:
            return []
        ns = truth.ns
        ticks = tick_end.size
        out = []
        end = int(tick_end[-1])
        h2d = truth.pcie["pcie_rx_bytes_per_s"] * TICK_NS / 1e9
        d2h = truth.pcie["pcie_tx_bytes_per_s"] * TICK_NS / 1e9
        sw_util = truth.pcie["switch_util"]
        node_ts = self._each_node_ts(self._dpu_clocks, tick_end)
        for node in range(lay.n_nodes):
            clock = w.clocks.dpu(node)
            ts = node_ts[node]
            flows = np.flatnonzero(ns.flow_node == node)
            n_f = flows.size
            keep_f = (
                np.repeat(self._keep(ticks), n_f).reshape(ticks, n_f).T.ravel()
                if n_f
                else np.zeros(0, bool)
            )
            gsel = self._node_gpus_behind_dpu[node]
            copy_rd = d2h[gsel].sum(axis=0) if gsel.size else np.zeros(ticks)
            copy_wr = h2d[gsel].sum(axis=0) if gsel.size else np.zeros(ticks)
            stall_frac = (
                np.clip((sw_util[gsel].max(axis=0) - 0.7) / 0.3, 0, 1) * 0.2
                if gsel.size
                else np.zeros(ticks)
            )
            stall = TICK_NS * stall_frac + self.rng.exponential(800.0, ticks)
            pkts = (ns.rx_bytes[node] + ns.tx_bytes[node]) / 1500.0
            keep_d = self._keep(ticks)
            flow_cols = {
                "flow_ts_ns": np.tile(ts, n_f),
                "flow_index": np.repeat(np.arange(n_f), ticks),
                "flow_rx_bytes": np.rint(ns.flow_rx[flows]).ravel(),
                "flow_tx_bytes": np.rint(ns.flow_tx[flows]).ravel(),
                "flow_max_burst_bytes": np.rint(ns.flow_burst[flows]).ravel(),
            }
            dev_cols = {
                "dev_ts_ns": ts,
                "dev_rx_queue_depth_bytes": np.rint(ns.rx_queue_peak_bytes[node]),
                "dev_rx_discards": ns.rx_discards[node],
                "dev_pcie_read_bytes": np.rint(ns.tx_bytes[node] + copy_rd),
                "dev_pcie_write_bytes": np.rint(ns.rx_bytes[node] + copy_wr),
                "dev_pcie_stall_ns": np.rint(stall),
                "dev_doorbells": self.rng.poisson(pkts / 8.0 + 50.0),
            }
            if self.loss > 0:  # (otherwise every row is kept)
                flow_cols = {k: v[keep_f] for k, v in flow_cols.items()}
                dev_cols = {k: v[keep_d] for k, v in dev_cols.items()}
            cols = flow_cols | dev_cols
            dep = w.deployment_of_node(node)
            record = pack(
                "DpuFrame",
                cols,
                schema_version=1,
                source="dpu",
                deployment=dep,
                node=lay.node_names[node],
                clock_id=w.clocks.ids[clock],
                frame_seq=self._seq("dpu", str(node)),
                interval_ns=TICK_NS,
                flow_ids=[ns.flow_ids[i] for i in flows],
                n_flow_rows=int(keep_f.sum()),
                n_dev_rows=int(keep_d.sum()),
            )
            out.append(SimFrame(self.topics.dpu, dep, "DpuFrame", record, end))
        return out
