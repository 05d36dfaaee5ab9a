"""Emitters: the world's true state after a 100 ms chunk, as each source would report it.

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

from dataclasses import dataclass
from typing import Any

import numpy as np

from producers.sim.collectives import DETAIL, SUMMARY, Executor, RowLog
from producers.sim.engine import Engine
from producers.sim.fabric import TickTraffic
from producers.sim.ingress import NorthSouth
from producers.sim.nic_counters import COUNTERS, INDEX, CounterBank
from producers.sim.world import TICK_NS, TICKS_PER_CHUNK, World
from schemas.columns import pack
from skewscope.config import Topics


@dataclass(frozen=True)
class SimFrame:
    """One message: topic, key, schema name and a record valid for schemas/<schema>."""

    topic: str
    key: str
    schema: str
    record: dict[str, Any]
    event_time_ns: int = 0  # true end of the chunk the frame covers


@dataclass
class ChunkTruth:
    """True state of one chunk that emitters need beyond the world object itself."""

    chunk_start: int
    util: np.ndarray  # [n_gpus, ticks]
    clock_factor: np.ndarray  # [n_gpus, ticks]
    throttle_bits: np.ndarray  # [n_gpus, ticks]
    pcie_gen: np.ndarray  # [n_gpus]
    pcie_width: np.ndarray
    pcie: dict[str, np.ndarray]
    nic_stalls: tuple[np.ndarray, np.ndarray]
    fabric: TickTraffic
    ns: NorthSouth
    gen_tokens: np.ndarray  # [n_replicas, ticks]
    # Truth only (never emitted): share of each GPU's compute time in each tick spent on
    # prefill, from the nominal split of the steps running in it; NaN where no step runs.
    prefill_share: np.ndarray | None = None  # [n_gpus, ticks]


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
        self.resets_ew: list[tuple[int, int]] = []  # (port, at_ns)
        self.resets_ns: list[tuple[int, int]] = []
        for node, port, at_s in c.counter_resets:
            at = world.start_ns + int(float(at_s) * 1e9)
            n = lay.node_index(str(node))
            if port == "p0":
                self.resets_ns.append((n, at))
            else:
                self.resets_ew.append((lay.resolve_gpu(f"{node}/{port}"), at))

    def _seq(self, *key: str) -> int:
        value = self.seq.get(key, 0)
        self.seq[key] = value + 1
        return value

    def _keep(self, n: int) -> np.ndarray:
        if self.loss <= 0:
            return np.ones(n, dtype=bool)
        return self.rng.random(n) >= self.loss

    def emit(self, truth: ChunkTruth) -> list[SimFrame]:
        """All frames of one chunk, in topic order."""
        frames: list[SimFrame] = []
        t0 = truth.chunk_start
        tick_end = t0 + TICK_NS * np.arange(1, TICKS_PER_CHUNK + 1, dtype=np.int64)
        for r, engine in enumerate(self.world.engines):
            frames.append(self._requests(engine, t0 + TICK_NS * TICKS_PER_CHUNK))
            frames.append(self._engine_samples(r, engine, tick_end))
        for ex in self.world.executors:
            frames.extend(self._collectives(ex, t0 + TICK_NS * TICKS_PER_CHUNK))
        frames.extend(self._gpu(truth, tick_end))
        frames.extend(self._nic(truth, tick_end))
        frames.extend(self._dpu(truth, tick_end))
        end = int(tick_end[-1])
        clocks = self.world.clocks
        # frame_end_ns: how far each source reports, in its own clock (a live idle source)
        local_end = {
            cid: int(clocks.to_local(i, tick_end[-1:])[0]) for i, cid in enumerate(clocks.ids)
        }
        for f in frames:
            f.record["frame_end_ns"] = local_end[f.record["clock_id"]]
        return [SimFrame(f.topic, f.key, f.schema, f.record, end) for f in frames]

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
        return SimFrame(self.topics.engine_requests, engine.name, "EngineRequestFrame", record)

    def _engine_samples(self, r: int, engine: Engine, tick_end: np.ndarray) -> SimFrame:
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
        if ex.hang_start_ns is not None:
            elapsed = np.maximum(0, tick_end - ex.hang_start_ns)
            step_ns = np.where(tick_end > ex.hang_start_ns, elapsed, step_ns)
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
            "batch_capacity": np.full(tick_end.size, engine.max_num_seqs),
            "kv_cache_usage_ratio": col(2),
            "preemptions_total": col(3),
            "prompt_tokens_total": col(4),
            "generation_tokens_total": col(5),
            "step_duration_ns": step_ns,
            "tokenizer_queue_depth": tok_depth,
        }
        columns = {k: np.asarray(v)[keep_rows] for k, v in columns.items()}
        if n_experts:
            columns["expert_tokens"] = expert[keep_rows].ravel()
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
        )
        return SimFrame(self.topics.engine_samples, engine.name, "EngineSampleFrame", record)

    # -- nccl ------------------------------------------------------------------------------
    def _collectives(self, ex: Executor, until: int) -> list[SimFrame]:
        w = self.world
        dl = ex.layout
        out = []
        groups = [f"tp{p}" for p in range(dl.pp)]
        if dl.pp > 1:
            groups += [f"pp{p}-{(p + 1) % dl.pp}" for p in range(dl.pp)]
        if ex.moe:
            groups.append("ep")
        for group in groups:
            log = ex.logs.get(group)
            summary = RowLog.take(log.summary, SUMMARY, until) if log else {}
            detail = RowLog.take(log.detail, DETAIL, until) if log else {}
            if group.startswith("tp"):
                nodes = sorted(set(dl.rank_node[int(group[2:])].tolist()))
                size = dl.tp
            elif group == "ep":
                nodes = sorted(set(dl.rank_node[0].tolist()))
                size = dl.tp
            else:
                a, b = (int(x) for x in group[2:].split("-"))
                nodes = sorted(set(dl.rank_node[a].tolist()) | set(dl.rank_node[b].tolist()))
                size = 2 * dl.tp
            op = (
                "allreduce"
                if group.startswith("tp")
                else "alltoall"
                if group == "ep"
                else "sendrecv"
            )
            for node in nodes:
                s_sel = summary["node"] == node if summary else np.zeros(0, dtype=bool)
                d_sel = detail["node"] == node if detail else np.zeros(0, dtype=bool)
                clock = w.clocks.host(node)
                cols: dict[str, Any] = {}
                n_rows = int(s_sel.sum())
                n_detail = int(d_sel.sum())
                if n_rows:
                    cols.update(
                        step=summary["step"][s_sel],
                        rank=summary["rank"][s_sel],
                        collective_count=summary["count"][s_sel],
                        first_start_ns=w.clocks.to_local(
                            clock, np.rint(summary["first_start"][s_sel]).astype(np.int64)
                        ),
                        duration_sum_ns=np.rint(summary["sum"][s_sel]),
                        duration_max_ns=np.rint(summary["max"][s_sel]),
                        bytes_total=np.rint(summary["bytes"][s_sel]),
                    )
                if n_detail:
                    cols.update(
                        detail_step=detail["step"][d_sel],
                        detail_seq=np.zeros(n_detail),
                        detail_rank=detail["rank"][d_sel],
                        detail_start_ns=w.clocks.to_local(
                            clock, np.rint(detail["start"][d_sel]).astype(np.int64)
                        ),
                        detail_duration_ns=np.rint(detail["duration"][d_sel]),
                    )
                record = pack(
                    "CollectiveFrame",
                    cols,
                    schema_version=1,
                    source="nccl",
                    deployment=dl.name,
                    node=w.layout.node_names[node],
                    clock_id=w.clocks.ids[clock],
                    frame_seq=self._seq("nccl", dl.name, group, str(node)),
                    group_id=group,
                    group_size=size,
                    op=op,
                    n_rows=n_rows,
                    n_detail=n_detail,
                )
                out.append(SimFrame(self.topics.collectives, dl.name, "CollectiveFrame", record))
        return out

    # -- gpu -------------------------------------------------------------------------------
    def _gpu(self, truth: ChunkTruth, tick_end: np.ndarray) -> list[SimFrame]:
        w = self.world
        lay = w.layout
        gpus = w.gpus
        readings = gpus.readings(truth.util, truth.clock_factor, truth.throttle_bits)
        replay_cum = self.replay_total[:, None] + np.cumsum(truth.pcie["replays"], axis=1)
        self.replay_total = replay_cum[:, -1]
        out = []
        ticks = tick_end.size
        for node in range(lay.n_nodes):
            gsel = np.flatnonzero(lay.gpu_node == node)
            n = gsel.size
            keep = self._keep(n * ticks)
            clock = w.clocks.host(node)
            ts = np.tile(w.clocks.to_local(clock, tick_end), n)

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
                "pcie_link_gen": np.repeat(truth.pcie_gen[gsel], ticks),
                "pcie_link_width": np.repeat(truth.pcie_width[gsel], ticks),
                "pcie_replay_total": rows(replay_cum),
                "xid_last": rows(readings["xid_last"]),
            }
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
            out.append(SimFrame(self.topics.gpu, dep, "GpuSampleFrame", record))
        return out

    # -- nic -------------------------------------------------------------------------------
    def _reset_ticks(self, resets: list[tuple[int, int]], n: int, t0: int) -> np.ndarray:
        out = np.full(n, -1)
        for port, at in resets:
            if t0 <= at < t0 + TICK_NS * TICKS_PER_CHUNK:
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
            inc, self._reset_ticks(self.resets_ew, n_ports, truth.chunk_start)
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
            ns_inc, self._reset_ticks(self.resets_ns, n_nodes, truth.chunk_start)
        )
        out = []
        ew_fabric = lay.fabric
        for g in range(n_ports):
            node = int(lay.gpu_node[g])
            out.append(
                self._nic_frame(
                    node, lay.port_names[g], "east_west", ew_fabric, ew_values[:, g, :], tick_end
                )
            )
        if w.scenario.cluster.dpu:
            for node in range(n_nodes):
                out.append(
                    self._nic_frame(
                        node, "p0", "north_south", "ethernet", ns_values[:, node, :], tick_end
                    )
                )
        return out

    def _nic_frame(
        self,
        node: int,
        port: str,
        plane: str,
        fabric: str,
        values: np.ndarray,
        tick_end: np.ndarray,
    ) -> SimFrame:
        w = self.world
        keep = self._keep(tick_end.size)
        clock = w.clocks.host(node)
        dep = w.deployment_of_node(node)
        n = int(keep.sum())
        record = pack(
            "NicCounterFrame",
            {
                "ts_ns": w.clocks.to_local(clock, tick_end[keep]),
                "counter_values": values[:, keep].ravel(),
            },
            schema_version=1,
            source="nic",
            deployment=dep,
            node=w.layout.node_names[node],
            clock_id=w.clocks.ids[clock],
            frame_seq=self._seq("nic", str(node), port),
            port=port,
            plane=plane,
            fabric=fabric,
            n_samples=n,
            n_counters=len(COUNTERS),
            counter_names=list(COUNTERS),
        )
        return SimFrame(self.topics.nic, dep, "NicCounterFrame", record)

    # -- dpu -------------------------------------------------------------------------------
    def _dpu(self, truth: ChunkTruth, tick_end: np.ndarray) -> list[SimFrame]:
        w = self.world
        lay = w.layout
        if not w.scenario.cluster.dpu:
            return []
        ns = truth.ns
        ticks = tick_end.size
        out = []
        behind = np.array([int(lay.gpu_local[g]) in lay.gpus_behind_dpu for g in range(lay.n_gpus)])
        h2d = truth.pcie["pcie_rx_bytes_per_s"] * TICK_NS / 1e9
        d2h = truth.pcie["pcie_tx_bytes_per_s"] * TICK_NS / 1e9
        sw_util = truth.pcie["switch_util"]
        for node in range(lay.n_nodes):
            clock = w.clocks.dpu(node)
            ts = w.clocks.to_local(clock, tick_end)
            flows = np.flatnonzero(ns.flow_node == node)
            n_f = flows.size
            keep_f = (
                np.repeat(self._keep(ticks), n_f).reshape(ticks, n_f).T.ravel()
                if n_f
                else np.zeros(0, bool)
            )
            gsel = np.flatnonzero((lay.gpu_node == node) & behind)
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
            cols = {
                "flow_ts_ns": np.tile(ts, n_f)[keep_f],
                "flow_index": np.repeat(np.arange(n_f), ticks)[keep_f],
                "flow_rx_bytes": np.rint(ns.flow_rx[flows]).ravel()[keep_f],
                "flow_tx_bytes": np.rint(ns.flow_tx[flows]).ravel()[keep_f],
                "flow_max_burst_bytes": np.rint(ns.flow_burst[flows]).ravel()[keep_f],
                "dev_ts_ns": ts[keep_d],
                "dev_rx_queue_depth_bytes": np.rint(ns.rx_queue_peak_bytes[node])[keep_d],
                "dev_rx_discards": ns.rx_discards[node][keep_d],
                "dev_pcie_read_bytes": np.rint(ns.tx_bytes[node] + copy_rd)[keep_d],
                "dev_pcie_write_bytes": np.rint(ns.rx_bytes[node] + copy_wr)[keep_d],
                "dev_pcie_stall_ns": np.rint(stall)[keep_d],
                "dev_doorbells": self.rng.poisson(pkts / 8.0 + 50.0)[keep_d],
            }
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
            out.append(SimFrame(self.topics.dpu, dep, "DpuFrame", record))
        return out
