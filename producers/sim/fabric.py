"""East-west fabric: ports with capacity; load, errors, pauses and credits -> time and counters.

One port per GPU (global index ``g``), cabled to a leaf switch. Cause knobs, arrays over
ports: ``base_util`` (background load from other tenants), ``fabric_load`` (fabric-wide
extra load, the fabric-congestion cause), ``pre_fec_ber`` (an optic's bit error rate),
``pause_duty`` (a slow receiver sending PFC pauses this fraction of the time),
``credit_withhold`` (InfiniBand receiver not returning credits this fraction of the time),
``repathed`` (control surface: flows moved off the port's path, its errors no longer hit).

Mechanics, per 100 ms chunk with 10 ms ticks:

* a transfer's bytes flow evenly over its own ``[start, end)`` (or a span the caller books
  with :meth:`Fabric.account`, e.g. a step's all-reduces over the step); each tick gets the
  share it overlaps, a flow that outlives the chunk carries its rest to the next chunk.
* utilisation u = background + collective traffic of the previous chunk; transfers get
  ``cap * (1 - u)`` and a queueing delay ``4 us * u / (1 - u)``; ECN marks a fraction
  ``f(u)`` of packets (RED-like ramp from u = 0.55), the receiver answers with CNPs.
* post-FEC packet loss = 1e-3 * (ber / 1e-5)^2 (+ a 1e-9 floor); each loss costs a
  go-back-N retransmit (30 us) and 5 % of them an ACK timeout (2 ms); the receiver counts
  out-of-sequence packets, the sender NAKs (packet_seq_err) and timeouts.
* a port with ``pause_duty`` d sends pauses d of the time: its tx pause counters rise; ports
  sending to it (traffic partners) receive pauses d of the time, other ports of its leaf d/2
  (the switch's buffers back up); paused senders' transfers stretch by 1/(1 - d).
* InfiniBand ``credit_withhold`` d: senders to the port wait for credits d of the time
  (``port_xmit_wait``), no loss, no marks.

Limits: one traffic class; no routing inside the fabric (a path is a port and its leaf port);
background traffic's destinations are not modelled (its marks and losses count on its port).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from producers.sim.scenario import ClusterSpec

MTU_BYTES = 4096
BASE_LATENCY_NS = 3_000.0
RETRANSMIT_NS = 30_000.0
ACK_TIMEOUT_NS = 2_000_000.0
TIMEOUT_SHARE = 0.05
LOSS_FLOOR = 1e-9
BASE_BER = 1e-9
BASE_PAUSE_DUTY = 2e-6
XMIT_WAIT_TICK_NS = 4.0  # port_xmit_wait counts 4 ns ticks (documented in docs/simulator.md)
PAUSE_FRAME_EVERY_US = 10.0
BASE_DISCARDS_PER_S = 0.5


def loss_from_ber(ber: np.ndarray) -> np.ndarray:
    """Post-FEC packet loss ratio caused by a pre-FEC bit error rate."""
    return np.minimum(0.2, 1e-3 * (ber / 1e-5) ** 2) + LOSS_FLOOR


def ecn_mark_ratio(util: np.ndarray) -> np.ndarray:
    """Fraction of packets ECN-marked at a queue running at util (RED-like ramp)."""
    return 1e-6 + 0.08 * np.clip((util - 0.55) / 0.4, 0.0, 1.0) ** 1.5


def _per_transfer(values: np.ndarray | float, shape: tuple[int, ...]) -> np.ndarray:
    """values as float64, one per transfer: arrays of that shape as they are, scalars (or
    other shapes) broadcast to it (read-only view)."""
    array = np.asarray(values, dtype=np.float64)
    return array if array.shape == shape else np.broadcast_to(array, shape)


@dataclass
class TickTraffic:
    """True per-port per-tick quantities of one chunk, arrays [n_ports, n_ticks]."""

    tx_bytes: np.ndarray
    rx_bytes: np.ndarray
    tx_packets: np.ndarray
    ecn_marked: np.ndarray
    cnp_sent: np.ndarray
    cnp_handled: np.ndarray
    out_of_sequence: np.ndarray
    packet_seq_err: np.ndarray
    ack_timeouts: np.ndarray
    rx_discards: np.ndarray
    symbol_errors: np.ndarray
    corrected_bits: np.ndarray
    tx_pause_frames: np.ndarray
    tx_pause_us: np.ndarray
    rx_pause_frames: np.ndarray
    rx_pause_us: np.ndarray
    xmit_wait_ticks: np.ndarray


class Fabric:
    """East-west ports, their causes, and the traffic accounting of the current chunk."""

    def __init__(
        self,
        port_leaf: np.ndarray,
        spec: ClusterSpec,
        rng: np.random.Generator,
        tick_ns: int,
        ticks: int,
    ) -> None:
        n = len(port_leaf)
        self.n_ports = n
        self.infiniband = spec.fabric == "infiniband"
        self.cap_bytes_per_s = spec.link_gbps * 1e9 / 8
        self.port_leaf = np.asarray(port_leaf)
        self.base_util = spec.fabric_background_util * rng.uniform(0.5, 1.5, n)
        self.fabric_load = np.zeros(n)
        self.pre_fec_ber = BASE_BER * rng.uniform(0.3, 3.0, n)
        self.pause_duty = np.full(n, BASE_PAUSE_DUTY)
        self.credit_withhold = np.zeros(n)
        # A port that stops transmitting for stall_ns out of every stall_period_ns (a NIC
        # firmware hiccup): outside the runbook, the novel fault of DESIGN.md section 7.
        self.stall_ns = np.zeros(n)
        self.stall_period_ns = np.full(n, 1e9)
        self.repathed = np.zeros(n, dtype=bool)
        self.tick_ns = tick_ns
        self.ticks = ticks
        self._rng = rng
        self._partner = np.zeros((n, n))  # bytes src->dst, previous chunk
        self._coll_util = np.zeros(n)
        self._events: list[tuple[np.ndarray, ...]] = []  # (src, dst, lost, timeouts, t_ns)
        self._flows: list[tuple[np.ndarray, ...]] = []  # (src, dst, bytes, start_ns, end_ns)
        self._chunk_start = 0
        self._prepare()

    # -- state of the chunk ------------------------------------------------------------
    def _prepare(self) -> None:
        n = self.n_ports
        self.util = np.clip(self.base_util + self.fabric_load + self._coll_util, 0.0, 0.97)
        ber = np.where(self.repathed, BASE_BER, self.pre_fec_ber)
        self.loss = loss_from_ber(ber)
        self.ber_effective = ber
        duty = np.where(self.repathed, BASE_PAUSE_DUTY, self.pause_duty)
        withhold = np.where(self.repathed, 0.0, self.credit_withhold)
        same_leaf = self.port_leaf[:, None] == self.port_leaf[None, :]
        sends_to = self._partner > 0
        coupling = np.where(sends_to, 1.0, np.where(same_leaf, 0.5, 0.0))
        np.fill_diagonal(coupling, 0.0)
        if self.infiniband:
            self.tx_pause_duty = np.full(n, BASE_PAUSE_DUTY)
            self.victim_pause_duty = np.full(n, BASE_PAUSE_DUTY)
            self.victim_wait_duty = (coupling * withhold[None, :]).max(axis=1)
        else:
            self.tx_pause_duty = duty
            self.victim_pause_duty = np.maximum(
                (coupling * duty[None, :]).max(axis=1), BASE_PAUSE_DUTY
            )
            self.victim_wait_duty = np.zeros(n)
        self.rx_slowdown = 1.0 / (1.0 - np.maximum(duty if not self.infiniband else withhold, 0.0))
        self.tx_slowdown = 1.0 / (1.0 - np.maximum(self.victim_pause_duty, self.victim_wait_duty))

    def begin_chunk(self, chunk_start_ns: int) -> None:
        """Freeze causes and last chunk's load into this chunk's port state."""
        self._chunk_start = chunk_start_ns
        self._prepare()

    # -- transfers -----------------------------------------------------------------------
    def transfer(
        self,
        src: np.ndarray,
        dst: np.ndarray,
        nbytes: np.ndarray,
        start_ns: np.ndarray,
        book: bool = True,
    ) -> np.ndarray:
        """Duration (ns) of transfers src -> dst of nbytes each starting at start_ns (arrays),
        under this chunk's state. Losses and timeouts are accounted at start_ns; the bytes
        over ``[start, start + duration)``, or, with ``book=False``, by the caller's
        :meth:`account` over the span the traffic really takes."""
        src, dst = np.asarray(src), np.asarray(dst)
        nbytes = np.asarray(nbytes, dtype=np.float64)
        start = _per_transfer(start_ns, src.shape)
        u = np.maximum(self.util[src], self.util[dst])
        bw = self.cap_bytes_per_s * (1.0 - u)
        stretch = np.maximum(self.rx_slowdown[dst], self.tx_slowdown[src])
        packets = np.ceil(nbytes / MTU_BYTES)
        loss = 1.0 - (1.0 - self.loss[src]) * (1.0 - self.loss[dst])
        lost = self._rng.poisson(packets * loss)
        # (a binomial of n = 0 is 0 and draws nothing: skipping it when nothing was lost
        # leaves the random stream exactly where the call would have)
        timeouts = (
            self._rng.binomial(lost, TIMEOUT_SHARE)
            if lost.any()
            else np.zeros(lost.shape, dtype=np.int64)
        )
        self._events.append((src, dst, lost, timeouts, start.astype(np.int64)))
        # no port stalled anywhere (the usual case): no wait, and no per-port look-ups
        stall_wait_ns = (
            self._stall_delay_ns(src, start) + self._stall_delay_ns(dst, start)
            if self.stall_ns.any()
            else 0.0
        )
        duration = (
            stall_wait_ns
            + BASE_LATENCY_NS
            + 4_000.0 * u / (1.0 - u)
            + nbytes / bw * 1e9 * stretch
            + lost * RETRANSMIT_NS
            + timeouts * ACK_TIMEOUT_NS
        )
        if book:
            self.account(src, dst, nbytes, start, start + duration)
        return duration

    def account(
        self,
        src: np.ndarray,
        dst: np.ndarray,
        nbytes: np.ndarray,
        start_ns: np.ndarray | float,
        end_ns: np.ndarray | float,
    ) -> None:
        """Book nbytes src -> dst flowing evenly over [start_ns, end_ns) (arrays, or scalars
        for all): accounting only, no time, no losses."""
        src = np.asarray(src)
        cols = (_per_transfer(x, src.shape) for x in (nbytes, start_ns, end_ns))
        self._flows.append((src, np.asarray(dst), *cols))

    def _stall_delay_ns(self, ports: np.ndarray, start_ns: np.ndarray) -> np.ndarray:
        """Time a transfer starting at start_ns waits for its port's stall to end."""
        stall = self.stall_ns[ports]
        if not stall.any():
            return np.zeros(np.shape(ports))
        phase = np.mod(np.asarray(start_ns, dtype=np.float64), self.stall_period_ns[ports])
        return np.where(phase < stall, stall - phase, 0.0)

    def _stalled_ticks(self) -> np.ndarray:
        """[port, tick] True while the port is stalled."""
        starts = self._chunk_start + self.tick_ns * np.arange(self.ticks, dtype=np.float64)
        phase = np.mod(starts[None, :], self.stall_period_ns[:, None])
        return phase < self.stall_ns[:, None]

    # -- per-tick truth ------------------------------------------------------------------
    def _spread_flows(self, chunk_end: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(src, dst, [flow, tick] bytes) of the flows booked so far, each
        tick getting the share of the flow's span it overlaps; flows that go on past the
        chunk keep their remaining bytes over [chunk_end, end) (bytes are conserved)."""
        if not self._flows:
            none = np.zeros(0, dtype=np.int64)
            return none, none, np.zeros((0, self.ticks))
        src, dst, nbytes, start, end = (np.concatenate(c) for c in zip(*self._flows, strict=True))
        start = np.maximum(start, self._chunk_start)  # (a flow is never booked in the past)
        end = np.maximum(end, start + 1.0)
        edges = self._chunk_start + self.tick_ns * np.arange(self.ticks + 1, dtype=np.float64)
        covered = np.clip(edges[None, :] - start[:, None], 0.0, (end - start)[:, None])
        spread = np.diff(covered, axis=1) * (nbytes / (end - start))[:, None]
        rest = end > chunk_end
        if rest.any():
            left = nbytes[rest] - spread[rest].sum(axis=1)
            later = np.maximum(start[rest], chunk_end)
            self._flows = [(src[rest], dst[rest], left, later, end[rest])]
        else:
            self._flows = []
        return src, dst, spread

    def end_chunk(self) -> TickTraffic:
        """True per-port per-tick quantities of the chunk that began at begin_chunk."""
        n, ticks, rng = self.n_ports, self.ticks, self._rng
        dt_s = self.tick_ns / 1e9
        chunk_end = self._chunk_start + ticks * self.tick_ns
        if self._events:
            cols = [np.concatenate(c) for c in zip(*self._events, strict=True)]
        else:
            cols = [np.zeros(0, dtype=np.int64)] * 5
        now = cols[4] < chunk_end
        self._events = [tuple(c[~now] for c in cols)] if (~now).any() else []
        e_src, e_dst, lost, timeouts, t_ns = (c[now] for c in cols)
        tick = np.clip((t_ns - self._chunk_start) // self.tick_ns, 0, ticks - 1)
        flat_tx = e_src * ticks + tick
        flat_rx = e_dst * ticks + tick
        size = n * ticks
        retrans_bytes = lost * MTU_BYTES * 4.0  # go-back-N resends a few packets per loss
        src, dst, spread = self._spread_flows(chunk_end)
        # (float: bincount of no events is an int array, which would truncate the flows)
        coll_tx = np.bincount(flat_tx, retrans_bytes, size).reshape(n, ticks).astype(np.float64)
        coll_rx = np.zeros((n, ticks))
        np.add.at(coll_tx, src, spread)
        np.add.at(coll_rx, dst, spread)
        coll_oos = np.bincount(flat_rx, lost, size).reshape(n, ticks)
        coll_seq = np.bincount(flat_tx, lost, size).reshape(n, ticks)
        coll_to = np.bincount(flat_tx, timeouts, size).reshape(n, ticks)
        partner = np.zeros((n, n))
        np.add.at(partner, (src, dst), spread.sum(axis=1))
        self._partner = partner
        cap_tick = self.cap_bytes_per_s * dt_s
        self._coll_util = np.clip(
            np.maximum(coll_tx.sum(1), coll_rx.sum(1)) / (cap_tick * ticks), 0.0, 0.9
        )

        bg_util = (self.base_util + self.fabric_load)[:, None]
        wobble = np.clip(rng.normal(1.0, 0.08, (n, ticks)), 0.5, 1.5)
        bg_bytes = bg_util * cap_tick * wobble
        bg_pkts = bg_bytes / MTU_BYTES
        loss = self.loss[:, None]
        bg_lost = rng.poisson(bg_pkts * loss)
        tx_bytes = coll_tx + bg_bytes + bg_lost * MTU_BYTES * 4.0
        rx_bytes = coll_rx + bg_bytes * rng.uniform(0.95, 1.05, (n, ticks))
        if self.stall_ns.any():
            moving = ~self._stalled_ticks()
            tx_bytes = tx_bytes * moving
            rx_bytes = rx_bytes * moving
        tx_pkts = tx_bytes / MTU_BYTES
        rx_pkts = rx_bytes / MTU_BYTES
        util_tick = np.clip(np.maximum(tx_bytes, rx_bytes) / cap_tick, 0.0, 0.99)
        # InfiniBand has no ECN marking of RoCE packets: only a background floor
        mark = np.full((n, ticks), 1e-7) if self.infiniband else ecn_mark_ratio(util_tick)
        ecn = rng.poisson(rx_pkts * mark)
        cnp_sent = rng.binomial(ecn, 0.4)
        cnp_handled = rng.poisson(tx_pkts * mark * 0.4)
        bits = rx_bytes * 8
        corrected = rng.poisson(bits * self.ber_effective[:, None])
        symbol = rng.poisson(bg_lost * 2.0 + coll_oos * 2.0 + 2e-3)
        discard_rate = BASE_DISCARDS_PER_S * dt_s + rx_pkts * 1e-4 * np.clip(util_tick - 0.95, 0, 1)
        discards = rng.poisson(discard_rate)
        tick_us = self.tick_ns / 1e3
        tx_pause_us = self.tx_pause_duty[:, None] * tick_us * wobble
        rx_pause_us = self.victim_pause_duty[:, None] * tick_us * wobble
        tx_pause = rng.poisson(tx_pause_us / PAUSE_FRAME_EVERY_US + 1e-3)
        rx_pause = rng.poisson(rx_pause_us / PAUSE_FRAME_EVERY_US + 1e-3)
        wait_frac = 1e-4 + 0.3 * np.clip(util_tick - 0.6, 0.0, 1.0) + self.victim_wait_duty[:, None]
        xmit_wait = rng.poisson(wait_frac * self.tick_ns / XMIT_WAIT_TICK_NS)
        return TickTraffic(
            tx_bytes=tx_bytes,
            rx_bytes=rx_bytes,
            tx_packets=tx_pkts,
            ecn_marked=ecn,
            cnp_sent=cnp_sent,
            cnp_handled=cnp_handled,
            out_of_sequence=coll_oos + bg_lost + rng.poisson(0.3 * dt_s, (n, ticks)),
            packet_seq_err=coll_seq + bg_lost + rng.poisson(0.3 * dt_s, (n, ticks)),
            ack_timeouts=coll_to
            + rng.binomial(bg_lost, TIMEOUT_SHARE)
            + rng.poisson(0.1 * dt_s, (n, ticks)),
            rx_discards=discards,
            symbol_errors=symbol,
            corrected_bits=corrected,
            tx_pause_frames=tx_pause,
            tx_pause_us=tx_pause_us,
            rx_pause_frames=rx_pause,
            rx_pause_us=rx_pause_us,
            xmit_wait_ticks=xmit_wait,
        )
