"""One engine step on every rank: compute, TP all-reduce, PP send/recv, MoE all-to-all.

Blocking collectives end together: each rank starts when its own compute ends, all end at
``max(start) + transfer``. So a slow rank (clock factor < 1, host delay, offload stall) is the
last to start and has the *shortest* duration; its peers wait. A step of a stage with K
collectives of equal compute segments has, in closed form (vectorised over ranks):

* first collective: ``a_r = entry_r + c_r``, ``end = max(a) + T``, duration ``end - a_r``;
* each later one: duration ``max(c) - c_r + T`` (the previous collective aligned the ranks);
* stage time ``end_1 + (K - 1) * (max(c) + T)``.

Stages run in sequence: stage p+1's rank t starts when stage p's rank t has sent it the
activations (send/recv over NVLink inside a node, over the fabric between nodes); the last
stage returns sampled tokens to stage 0. MoE deployments (``model.n_experts > 0``, pp = 1,
experts spread over the TP ranks) add per layer a dispatch and a combine all-to-all whose
transfer is set by the most loaded receiver (incast), and per-rank expert compute
proportional to the tokens routed to its experts.

Group ids and communicator ranks (the CollectiveFrame ``rank`` column):
``tp<p>`` TP group of stage p, rank = tp_rank; ``pp<a>-<b>`` send/recv from stage a to b,
rank = tp_rank for senders (stage a) and tp + tp_rank for receivers (stage b); ``ep`` the
all-to-all group of a MoE deployment, rank = tp_rank.

Cause knobs here: ``stage_ratios`` (layer partition), ``expert_weights`` (expert popularity).
GPU, PCIe and fabric causes are read from their own state objects.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np

from producers.sim.fabric import Fabric
from producers.sim.gpu import GpuState
from producers.sim.pcie import PcieState, step_copy_bytes
from producers.sim.scenario import ClusterSpec, DeploymentSpec
from producers.sim.topology import DeploymentLayout

NVLINK_LATENCY_NS = 8_000.0
TOKEN_RETURN_BYTES_PER_SEQ = 64
SCHED_OVERHEAD_NS = 250_000.0


SUMMARY = ("rank", "node", "count", "first_start", "sum", "max", "bytes")
DETAIL = ("rank", "node", "start", "duration")


# A column of a block: one value per rank, or one float for every rank (float64 when taken).
Column = np.ndarray | float
Block = tuple[int, int, tuple[Column, ...]]


@dataclass
class RowLog:
    """Collective summary and detail rows of one group, kept as per-step blocks.

    A block is (step, end_ns, columns...) with per-rank arrays (the first column always
    one), or a float where every rank has the same value; absolute times are int64 ns.
    """

    summary: list[Block] = field(default_factory=list)
    detail: list[Block] = field(default_factory=list)

    @staticmethod
    def take(blocks: list[Block], names: tuple[str, ...], until_ns: int) -> dict[str, np.ndarray]:
        """Rows of blocks whose step ended before until_ns (removed from blocks): their
        ``step`` and the columns ``names``."""
        now = [b for b in blocks if b[1] < until_ns]
        blocks[:] = [b for b in blocks if b[1] >= until_ns]
        if not now:
            return {}
        # (the first column, the ranks, is always an array)
        sizes = [b[2][0].size for b in now]  # type: ignore[union-attr]
        out = {"step": np.repeat([b[0] for b in now], sizes)}
        for i, name in enumerate(names):
            out[name] = _rows([b[2][i] for b in now], sizes)
        return out


def _rows(parts: list[Column], sizes: list[int]) -> np.ndarray:
    """One column's values of consecutive blocks; a float part is that value for each of
    its block's rows (as float64, like an array part of per-rank floats)."""
    if not any([isinstance(p, np.ndarray) for p in parts]):
        return np.repeat(np.array(parts, dtype=np.float64), sizes)
    return np.concatenate(
        [
            p if isinstance(p, np.ndarray) else np.full(n, p, dtype=np.float64)
            for p, n in zip(parts, sizes, strict=True)
        ]
    )


@dataclass
class StepIntervals:
    """Every step not yet fully reported: its busy time, its work and its host copies.

    Parallel lists, one entry per step: ``start``/``end`` (GPU busy time, ns), the step's
    work (``prefill_tokens``, ``n_decode``: phase truth) and its host<->GPU copies per rank
    (``h2d_bytes`` at the start on every rank, ``d2h_bytes`` at the end on the last stage's
    ranks; see :func:`producers.sim.pcie.step_copy_bytes`). ``host_idle_ns`` holds, per step,
    how long each rank's GPU sat idle inside the step waiting for its host to launch the next
    kernel (host jitter; ranks in ``layout.rank_gpu.ravel()`` order), or None when none did.
    Emitters drop the steps they no longer need with :meth:`keep`.
    """

    start: list[int] = field(default_factory=list)
    end: list[int] = field(default_factory=list)
    prefill_tokens: list[int] = field(default_factory=list)
    n_decode: list[int] = field(default_factory=list)
    h2d_bytes: list[int] = field(default_factory=list)
    d2h_bytes: list[int] = field(default_factory=list)
    host_idle_ns: list[np.ndarray | None] = field(default_factory=list)

    def append(
        self,
        start: int,
        end: int,
        prefill_tokens: int,
        n_decode: int,
        h2d: int,
        d2h: int,
        host_idle_ns: np.ndarray | None = None,
    ) -> None:
        self.start.append(start)
        self.end.append(end)
        self.prefill_tokens.append(prefill_tokens)
        self.n_decode.append(n_decode)
        self.h2d_bytes.append(h2d)
        self.d2h_bytes.append(d2h)
        self.host_idle_ns.append(host_idle_ns)

    def arrays(self) -> dict[str, np.ndarray]:
        """The lists as int64 arrays, by field name."""
        return {
            name: np.array(getattr(self, name), dtype=np.int64)
            for name in ("start", "end", "prefill_tokens", "n_decode", "h2d_bytes", "d2h_bytes")
        }

    def host_idle_matrix(self, n_ranks: int) -> np.ndarray | None:
        """``host_idle_ns`` as a [steps, ranks] float array, or None when no rank waited."""
        if all(idle is None for idle in self.host_idle_ns):
            return None
        zeros = np.zeros(n_ranks)
        return np.stack([zeros if idle is None else idle for idle in self.host_idle_ns])

    def keep(self, mask: np.ndarray) -> None:
        """Keep only the steps where mask is true (all fields together)."""
        for name, values in self.arrays().items():
            setattr(self, name, values[mask].tolist())
        self.host_idle_ns = [idle for idle, k in zip(self.host_idle_ns, mask, strict=True) if k]


def _read_only(array: np.ndarray) -> np.ndarray:
    array.setflags(write=False)
    return array


@dataclass(frozen=True)
class _Route:
    """Send/recv from one stage to the next: which TP ranks cross the fabric."""

    group: str  # pp<a>-<b>
    same_node: np.ndarray  # [tp] bool: sender and receiver share a node (NVLink)
    remote: np.ndarray  # [tp] bool: the others (fabric)
    n_remote: int
    src_remote: np.ndarray  # GPUs (= ports) of the remote senders
    dst_remote: np.ndarray  # and of their receivers


class Executor:
    """Runs the steps of one deployment on its ranks and logs what NCCL would record."""

    def __init__(
        self,
        spec: DeploymentSpec,
        layout: DeploymentLayout,
        cluster: ClusterSpec,
        gpus: GpuState,
        pcie: PcieState,
        fabric: Fabric,
        rng: np.random.Generator,
    ) -> None:
        self.spec, self.layout, self.model = spec, layout, spec.model
        self.gpus, self.pcie, self.fabric = gpus, pcie, fabric
        self.rng = rng
        pp = spec.pp
        ratios = np.array(spec.stage_layer_ratios or [1.0] * pp, dtype=float)
        self.stage_ratios = ratios / ratios.sum()
        self.moe = spec.model.n_experts > 0
        self.expert_weights = np.ones(max(1, spec.model.n_experts))
        self.experts_per_rank = max(1, spec.model.n_experts // spec.tp)
        self.nvlink_bytes_per_s = cluster.nvlink_gbytes_per_s * 1e9
        self.jitter = cluster.step_jitter_ratio
        self.detail_every = max(1, cluster.collective_detail_every)
        self.step_seq = 0
        self.logs: dict[str, RowLog] = {}
        self.intervals = StepIntervals()
        self.expert_log: list[tuple[int, np.ndarray]] = []
        self.hang_start_ns: int | None = None
        self.hung_gpus = np.zeros(0, dtype=np.int64)
        self.last_step_ns = 0.0
        self.gpu_node = layout.rank_node  # [pp, tp]
        # Fixed by the layout (placement never changes during a run), so built once:
        # communicator ranks of senders and receivers, nodes a stage's TP group spans, and
        # the routes between stages. Shared by every step's log rows and transfers, so
        # read-only.
        self._ranks = _read_only(np.arange(spec.tp))
        self._recv_ranks = _read_only(spec.tp + np.arange(spec.tp))
        self._stage_nodes = [int(np.unique(layout.rank_node[p]).size) for p in range(pp)]
        self._routes: dict[tuple[int, int], _Route] = {}
        # fabric bytes of the current stage's collectives, booked once the stage's span is known
        self._unbooked: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []

    def end_hang(self) -> None:
        """The ranks' processes were restarted: no rank of this deployment hangs any more."""
        self.gpus.hung[self.layout.rank_gpu.ravel()] = False
        self.hang_start_ns = None
        self.hung_gpus = np.zeros(0, dtype=np.int64)

    # -- one step ----------------------------------------------------------------------
    def step(
        self,
        t0: int,
        n_decode: int,
        prefill_tokens: int,
        kv_tokens: int,
        n_prefill_seqs: int = 0,
        n_sampled: int | None = None,
    ) -> int | None:
        """Run one forward pass from t0; return its end time, or None if a rank hangs.

        ``n_prefill_seqs`` sequences get a prefill chunk; ``n_sampled`` sequences produce a
        token (default: the decodes; a prefill chunk that does not finish its prompt samples
        nothing). Both only size the step's host copies."""
        gpus_all = self.layout.rank_gpu
        hung = self.gpus.hung[gpus_all]
        if hung.any():
            if self.hang_start_ns is None:
                self.hang_start_ns = t0
                self.hung_gpus = gpus_all[hung]
            return None
        m, spec = self.model, self.spec
        tokens = n_decode + prefill_tokens
        n_sampled = n_decode if n_sampled is None else n_sampled
        nominal_ns = (
            m.step_base_us * 1e3
            + m.decode_us_per_seq * 1e3 * n_decode
            + m.prefill_us_per_token * 1e3 * prefill_tokens
            + m.attn_ns_per_kv_token * kv_tokens
        )
        scale = (
            self.gpus.compute_scale(gpus_all)
            * self.pcie.compute_stretch(gpus_all)
            * (1.0 + self.rng.normal(0.0, self.jitter, gpus_all.shape))
        )
        host_delay = self.gpus.host_delay_ns[gpus_all]
        act_bytes = float(max(tokens, 1) * m.hidden * 2)
        step = self.step_seq
        self.step_seq += 1
        self._now = t0  # times below are ns relative to t0 (float64 keeps ns precision)
        detail = step % self.detail_every == 0
        entry = np.full(spec.tp, SCHED_OVERHEAD_NS)
        stage_end = 0.0
        # kernel segments per stage, each launched after the host's delay: two per layer
        # dense, one dense segment per layer MoE
        segments = np.empty(spec.pp)
        for p in range(spec.pp):
            layers = max(1, round(m.layers * self.stage_ratios[p]))
            segments[p] = layers if self.moe else 2 * layers
            compute = nominal_ns * self.stage_ratios[p] * scale[p]
            if self.moe:
                stage_end = self._moe_stage(
                    p, step, entry, compute, layers, tokens, act_bytes, host_delay[p], detail
                )
            else:
                k = 2 * layers
                t_ar = self._allreduce_ns(p, act_bytes, k)
                seg = compute / k + host_delay[p]
                stage_end = self._aligned(
                    f"tp{p}", p, step, entry, [(seg, t_ar)], k, {f"tp{p}": act_bytes * k}, detail
                )
            self._book_stage_traffic(entry, stage_end)
            if spec.pp > 1:
                entry = self._send(
                    p,
                    (p + 1) % spec.pp,
                    step,
                    stage_end,
                    act_bytes,
                    detail,
                    tokens_back=(p == spec.pp - 1),
                    n_seqs=max(tokens, 1),
                )
        t_end = float(entry.max()) if spec.pp > 1 else stage_end
        end_ns = t0 + int(t_end)
        h2d, d2h = step_copy_bytes(tokens, n_decode + n_prefill_seqs, n_sampled)
        # each rank's GPU idles through its host's launch delays (None: no rank waited)
        host_idle = (host_delay * segments[:, None]).ravel() if host_delay.any() else None
        self.intervals.append(t0, end_ns, prefill_tokens, n_decode, h2d, d2h, host_idle)
        self.last_step_ns = end_ns - t0
        return end_ns

    # -- pieces --------------------------------------------------------------------------
    def _allreduce_ns(self, stage: int, nbytes: float, count: int) -> float:
        """Time of one of ``count`` all-reduces of nbytes; the fabric traffic of all of them
        waits in ``_unbooked`` for :meth:`_book_stage_traffic`."""
        n = self.spec.tp
        if n == 1:
            return 0.0
        ring = 2.0 * (n - 1) / n * nbytes
        n_nodes = self._stage_nodes[stage]
        t = NVLINK_LATENCY_NS + ring / self.nvlink_bytes_per_s * 1e9
        if n_nodes > 1:
            src = self.layout.rank_gpu[stage]
            dst = np.roll(src, -max(1, n // n_nodes))
            per = np.full(n, ring / n * count)
            t_all = self.fabric.transfer(src, dst, per, np.full(n, self._now), book=False)
            self._unbooked.append((src, dst, per))
            t += float(t_all.max()) / count
        return t

    def _aligned(
        self,
        group: str,
        stage: int,
        step: int,
        entry: np.ndarray,
        phases: list[tuple[np.ndarray, float]],
        repeats: int,
        bytes_by_group: dict[str, float | np.ndarray],
        detail: bool,
        record_groups: list[str] | None = None,
    ) -> float:
        """Run ``repeats`` rounds of phases (segment compute per rank, transfer); log rows."""
        t = entry
        groups = record_groups or [group] * len(phases)
        stats: dict[str, dict[str, np.ndarray]] = {}
        end = 0.0
        layer_ns = 0.0
        for i, ((seg, transfer), name) in enumerate(zip(phases, groups, strict=True)):
            if i:  # the previous collective aligned the ranks
                t = np.full(seg.size, end)
            arrive = t + seg
            end = float(arrive.max()) + transfer
            first = end - arrive
            seg_max = seg.max()
            steady = seg_max - seg + transfer
            s = stats.setdefault(name, {})
            if "first_start" not in s:
                s["first_start"] = arrive
                s["first_dur"] = first
                s["count"] = np.zeros(seg.size)
                s["sum"] = np.zeros(seg.size)
                s["max"] = np.zeros(seg.size)
            s["count"] = s["count"] + repeats
            s["sum"] = s["sum"] + first + (repeats - 1) * steady
            s["max"] = np.maximum(s["max"], np.maximum(first, steady if repeats > 1 else 0.0))
            layer_ns += float(seg_max) + transfer
        stage_end = end + (repeats - 1) * layer_ns
        for name, s in stats.items():
            self._log(name, stage, step, self._ranks, s, bytes_by_group[name], stage_end, detail)
        return stage_end

    def _log(
        self,
        group: str,
        stage: int,
        step: int,
        comm_ranks: np.ndarray,
        s: Mapping[str, Column],
        nbytes: float | np.ndarray,
        end_rel: float,
        detail: bool,
        node: np.ndarray | None = None,
    ) -> None:
        log = self.logs.get(group)
        if log is None:
            log = self.logs[group] = RowLog()
        nodes = self.gpu_node[stage] if node is None else node
        start = self._now + np.rint(s["first_start"]).astype(np.int64)
        end_ns = self._now + int(end_rel)
        # count and bytes may be one float for all ranks: RowLog.take repeats it per row
        log.summary.append(
            (step, end_ns, (comm_ranks, nodes, s["count"], start, s["sum"], s["max"], nbytes))
        )
        if detail:
            log.detail.append((step, end_ns, (comm_ranks, nodes, start, s["first_dur"])))

    def _send(
        self,
        a: int,
        b: int,
        step: int,
        send_at: float,
        act_bytes: float,
        detail: bool,
        tokens_back: bool,
        n_seqs: int,
    ) -> np.ndarray:
        """Stage a sends to stage b (activations, or sampled tokens back to stage 0).

        Returns the time each rank of stage b has its input (its entry time)."""
        tp = self.spec.tp
        route = self._route(a, b)
        nbytes = float(n_seqs * TOKEN_RETURN_BYTES_PER_SEQ) if tokens_back else act_bytes
        start = np.full(tp, send_at)
        if route.n_remote == tp:  # every rank sends across the fabric
            dur = self.fabric.transfer(
                route.src_remote,
                route.dst_remote,
                np.full(tp, nbytes),
                self._now + start.astype(np.int64),
            )
        else:
            dur = np.where(
                route.same_node,
                NVLINK_LATENCY_NS + nbytes / self.nvlink_bytes_per_s * 1e9,
                0.0,
            )
            if route.n_remote:
                dur[route.remote] = self.fabric.transfer(
                    route.src_remote,
                    route.dst_remote,
                    np.full(route.n_remote, nbytes),
                    self._now + start[route.remote].astype(np.int64),
                )
        arrive = start + dur
        arrive_max = float(arrive.max())
        # receivers posted their recv when they went idle: at step start (later stages) or
        # after sending their own output (stage 0 waiting for sampled tokens)
        posted = np.zeros(tp) if b != 0 else np.full(tp, send_at)
        if b == 0 and a != 0:
            posted = np.full(tp, float(self._stage0_sent))
        if a == 0:
            self._stage0_sent = arrive_max
        recv_dur = arrive - posted
        self._log(
            route.group,
            a,
            step,
            self._ranks,
            {"count": 1.0, "first_start": start, "sum": dur, "max": dur, "first_dur": dur},
            nbytes,
            arrive_max,
            detail,
            node=self.gpu_node[a],
        )
        self._log(
            route.group,
            b,
            step,
            self._recv_ranks,
            {
                "count": 1.0,
                "first_start": posted,
                "sum": recv_dur,
                "max": recv_dur,
                "first_dur": recv_dur,
            },
            nbytes,
            arrive_max,
            detail,
            node=self.gpu_node[b],
        )
        return arrive

    def _route(self, a: int, b: int) -> _Route:
        """The send/recv route from stage a to stage b (built on first use, then kept: it
        depends on the layout only)."""
        route = self._routes.get((a, b))
        if route is None:
            same_node = self.gpu_node[a] == self.gpu_node[b]
            remote = ~same_node
            route = _Route(
                group=f"pp{a}-{b}",
                same_node=same_node,
                remote=remote,
                n_remote=int(remote.sum()),
                src_remote=_read_only(self.layout.rank_gpu[a][remote]),
                dst_remote=_read_only(self.layout.rank_gpu[b][remote]),
            )
            self._routes[(a, b)] = route
        return route

    def _book_stage_traffic(self, entry: np.ndarray, stage_end: float) -> None:
        """Book the fabric bytes of the stage's collectives, timed as one transfer at the step
        start, evenly over the stage they are spread over: [entry, stage_end)."""
        if not self._unbooked:
            return
        start, end = self._now + float(entry.min()), self._now + stage_end
        for src, dst, nbytes in self._unbooked:
            self.fabric.account(src, dst, nbytes, start, end)
        self._unbooked.clear()

    _stage0_sent = 0.0
    _now = 0

    def _moe_stage(
        self,
        stage: int,
        step: int,
        entry: np.ndarray,
        compute: np.ndarray,
        layers: int,
        tokens: int,
        act_bytes: float,
        host_delay: np.ndarray,
        detail: bool,
    ) -> float:
        m, tp = self.model, self.spec.tp
        weights = self.expert_weights / self.expert_weights.sum()
        routed = self.rng.multinomial(max(tokens, 1) * m.top_k, weights)
        self.expert_log.append((self._now + int(entry.min()), routed))
        per_rank_tokens = routed.reshape(tp, self.experts_per_rank).sum(axis=1)
        scale = compute / max(compute.mean(), 1.0)
        expert_ns = m.expert_us_per_token * 1e3 * per_rank_tokens * scale
        t_ar = self._allreduce_ns(stage, act_bytes, layers)
        # all-to-all: each routed token's activation travels to its expert's rank and back
        recv_bytes = per_rank_tokens * m.hidden * 2.0
        t_a2a = self._alltoall_ns(stage, recv_bytes * 2 * layers) / (2 * layers)
        dense = compute / layers + host_delay
        gate = np.full(tp, 0.02 * float(compute.mean()) / layers)
        phases = [(dense, t_ar), (gate, t_a2a), (expert_ns / layers, t_a2a)]
        sent_bytes = float(max(tokens, 1) * m.top_k * m.hidden * 2) / tp
        a2a_bytes = (recv_bytes + sent_bytes) * 2 * layers
        return self._aligned(
            f"tp{stage}",
            stage,
            step,
            entry,
            phases,
            layers,
            {f"tp{stage}": act_bytes * layers, "ep": a2a_bytes},
            detail,
            record_groups=[f"tp{stage}", "ep", "ep"],
        )

    def _alltoall_ns(self, stage: int, recv_bytes_total: np.ndarray) -> float:
        """Time of all dispatch/combine transfers of a step: the busiest receiver decides."""
        gpus = self.layout.rank_gpu[stage]
        n_nodes = self._stage_nodes[stage]
        local = recv_bytes_total / n_nodes
        t_nvlink = float(local.max()) / self.nvlink_bytes_per_s * 1e9
        if n_nodes == 1:
            return NVLINK_LATENCY_NS + t_nvlink
        remote = recv_bytes_total * (n_nodes - 1) / n_nodes
        src = np.roll(gpus, self.spec.tp // n_nodes)  # a peer on another node sends
        t_remote = self.fabric.transfer(
            src, gpus, remote, np.full(gpus.size, self._now), book=False
        )
        self._unbooked.append((src, gpus, remote))
        return float(t_remote.max()) + t_nvlink
