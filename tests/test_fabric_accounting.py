"""Fabric byte accounting: a transfer's bytes flow over its span, tick by tick, across chunks."""

from __future__ import annotations

import numpy as np

from producers.sim import Simulation
from producers.sim.fabric import Fabric
from producers.sim.scenario import ClusterSpec, scenario_from_dict

TICK_NS = 10_000_000
TICKS = 10
CHUNK_NS = TICK_NS * TICKS


def _quiet_fabric(n: int = 4) -> Fabric:
    """A fabric without background traffic: every byte it reports was booked."""
    f = Fabric(np.zeros(n, dtype=np.int64), ClusterSpec(), np.random.default_rng(0), TICK_NS, TICKS)
    f.base_util[:] = 0.0
    return f


def _run_chunks(
    f: Fabric, chunks: int, book: list[tuple[int, float, float, float]]
) -> tuple[np.ndarray, np.ndarray]:
    """Book (src, bytes, start, end) flows src -> src + 1 before the first chunk ends, run
    chunks; return [port, tick] tx and rx bytes over all chunks."""
    tx, rx = [], []
    for c in range(chunks):
        f.begin_chunk(c * CHUNK_NS)
        if c == 0:
            for src, nbytes, start, end in book:
                f.account(np.array([src]), np.array([src + 1]), np.array([nbytes]), start, end)
        t = f.end_chunk()
        tx.append(t.tx_bytes)
        rx.append(t.rx_bytes)
    return np.concatenate(tx, axis=1), np.concatenate(rx, axis=1)


def test_bytes_booked_over_ticks_equal_the_bytes_transferred() -> None:
    f = _quiet_fabric()
    flows = [
        (0, 3e9, 1e6, 2e6),  # inside one tick
        (0, 5e8, 95e6, 105e6),  # across the chunk boundary
        (1, 7e9, 33e6, 412e6),  # several chunks
        (2, 2e8, 150e6, 170e6),  # booked now, starts in the next chunk
    ]
    tx, rx = _run_chunks(f, 6, flows)
    for port in range(3):
        sent = sum(b for s, b, _, _ in flows if s == port)
        assert np.isclose(tx[port].sum(), sent, rtol=1e-12)
        assert np.isclose(rx[port + 1].sum(), sent, rtol=1e-12)
    assert not f._flows  # nothing left over once every span has passed


def test_a_long_transfer_is_spread_over_the_ticks_it_spans() -> None:
    f = _quiet_fabric()
    nbytes, start, end = 6e9, 5e6, 255e6  # 250 ms: ticks 0..25 of three chunks
    tx, rx = _run_chunks(f, 3, [(0, nbytes, start, end)])
    share = nbytes * TICK_NS / (end - start)  # a fully covered tick's bytes
    sent = tx[0]
    assert (sent <= share * (1 + 1e-9)).all()
    assert np.allclose(sent[1:25], share)  # whole ticks, including those of later chunks
    assert np.isclose(sent[0], share / 2) and np.isclose(sent[25], share / 2)
    assert (sent[26:] == 0).all()
    assert np.isclose(sent.sum(), nbytes) and np.isclose(rx[1].sum(), nbytes)


def test_a_transfer_books_its_bytes_over_its_own_duration() -> None:
    f = _quiet_fabric()
    f.begin_chunk(0)
    nbytes = 2e9  # 40 ms at 400 Gb/s, longer under the port's load
    dur = float(f.transfer(np.array([2]), np.array([3]), np.array([nbytes]), np.array([3e6]))[0])
    t = f.end_chunk()
    first, last = 3e6 // TICK_NS, int((3e6 + dur) // TICK_NS)
    assert dur > 4 * TICK_NS and last < TICKS
    busy = np.flatnonzero(t.rx_bytes[3] > 0)
    assert busy[0] == first and busy[-1] == last
    assert (t.rx_bytes[3] <= nbytes * TICK_NS / dur * (1 + 1e-9)).all()
    assert np.isclose(t.rx_bytes[3].sum(), nbytes)


def test_clean_cross_node_tp_world_never_saturates_a_port() -> None:
    """TP8 over two 4-GPU nodes: a step's all-reduces run over the step, not in its first tick
    (booked there, a prefill chunk's traffic was many times a tick's capacity)."""
    scenario = scenario_from_dict(
        {
            "name": "xnode-tp",
            "duration_s": 5.0,
            "cluster": {"gpus_per_node": 4, "fabric": "roce"},
            "deployment": [{"name": "llama70b", "count": 2, "tp": 8, "pp": 1}],
            "workload": {"arrivals": "poisson", "rate_per_s": 9.0},
        }
    )
    sim = Simulation(scenario, seed=1)
    fab = sim.world.fabric
    cap_tick = fab.cap_bytes_per_s * TICK_NS / 1e9
    peak, total = 0.0, 0.0
    period: list = []
    for _ in sim.frames(duration_s=5.0):
        if sim.period_truths is not period:
            period = sim.period_truths
            for chunk in period:
                rx = chunk.fabric.rx_bytes
                peak = max(peak, float(rx.max()) / cap_tick)
                total += float(rx.sum())
    assert total > 0.1 * cap_tick * fab.n_ports * 500  # TP traffic did cross the fabric
    assert peak < 0.6
