"""Simulator against the real broker: every runbook condition's injected cause shows its
symptom in the telemetry read back from Kafka, and its label lands on the labels topic."""

from __future__ import annotations

import argparse
import dataclasses
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from confluent_kafka import OFFSET_BEGINNING, TopicPartition

from producers.sim import Simulation, load_scenario
from producers.sim.arrivals import read_trace, trace_path
from producers.sim.capture import read_capture
from producers.sim.cli import add_sim_commands
from producers.sim.publish import publish
from producers.sim.readback import Readback
from producers.sim.scenario import Scenario, ScenarioError
from producers.sim.suite import CONDITIONS
from schemas.codec import AvroCodec
from skewscope.config import Topics, load_settings
from skewscope.kafka.consumer import DecodingConsumer
from skewscope.kafka.producer import EventProducer

ONSET_S = 1.37
LOAD_FAMILY = {"request-length-skew", "kv-cache-pressure", "ingress-imbalance"}
CONFIG = {"pp-stage-imbalance", "pcie-degradation"}


@dataclasses.dataclass
class Run:
    sim: Simulation
    rb: Readback
    labels: list[dict[str, Any]]
    onset_ns: int
    end_ns: int

    def before(self, ts: np.ndarray) -> np.ndarray:
        return ts < self.onset_ns

    def after(self, ts: np.ndarray, settle_ms: int = 150) -> np.ndarray:
        return ts > self.onset_ns + settle_ms * 1_000_000

    def rate(self, node: str, port: str, counter: str, after: bool) -> float:
        lo, hi = (
            (self.onset_ns + 150_000_000, self.end_ns)
            if after
            else (self.sim.start_ns, self.onset_ns)
        )
        return self.rb.counter_rate(node, port, counter, lo, hi)


def _through_kafka(
    kafka_bootstrap: str,
    unique_topic: Callable[..., str],
    scenario: Scenario,
    seconds: float,
    seed: int = 1,
) -> Run:
    tele, labels = unique_topic("sim.tele"), unique_topic("sim.labels")
    topics = Topics(
        engine_requests=tele,
        engine_samples=tele,
        collectives=tele,
        gpu=tele,
        nic=tele,
        dpu=tele,
        topology=tele,
        labels=labels,
    )
    settings = dataclasses.replace(load_settings(), kafka_bootstrap=kafka_bootstrap, topics=topics)
    sim = Simulation(scenario, seed=seed, topics=topics)
    stats = publish(sim, seconds, producer=EventProducer(settings), topics=topics)
    consumer = DecodingConsumer(settings, [tele, labels], group_id=None, name="sim-test")
    consumer.assign(
        [TopicPartition(tele, 0, OFFSET_BEGINNING), TopicPartition(labels, 0, OFFSET_BEGINNING)]
    )
    rb, got_labels, frames = Readback(), [], 0
    want = stats.frames + stats.topology + stats.labels
    seen = 0
    while seen < want:
        batch = consumer.poll_batch(min(2000, want - seen), timeout_s=5.0)
        assert batch, f"only {seen} of {want} messages came back from Kafka"
        for event in batch:
            seen += 1
            if event.topic == labels:
                got_labels.append(event.record)
            elif event.name != "TopologyRecord":
                rb.add(event.name, event.record)
                frames += 1
    consumer.close()
    assert frames == stats.frames and consumer.dead_letters == 0
    onset = sim.start_ns + int(ONSET_S * 1e9)
    return Run(sim, rb, got_labels, onset, sim.start_ns + int(seconds * 1e9))


def _scenario(condition: str) -> Scenario:
    s = load_scenario(condition)
    faults = tuple(
        dataclasses.replace(f, onset_s=0.0 if condition in CONFIG else ONSET_S) for f in s.faults
    )
    return dataclasses.replace(s, faults=faults)


# -- symptoms, each read from the decoded telemetry --------------------------------------


def _tp_straggler(r: Run) -> None:
    tab = r.rb.collective_table("llama70b-a", "tp1")
    after = r.after(tab["first_start_ns"])
    means = [tab["duration_sum_ns"][after & (tab["rank"] == k)].mean() for k in range(4)]
    assert int(np.argmin(means)) == 1 and min(means) * 2 < np.median(means)


def _early_stop(r: Run) -> None:
    e = r.rb.engine_table("llama70b-a")
    starved = (e["num_waiting"] >= 2) & (e["num_running"] <= e["batch_capacity"] // 2)
    assert starved[r.after(e["ts_ns"], 500)].mean() > 0.3
    assert starved[r.before(e["ts_ns"])].mean() < 0.1


def _pp_stage(r: Run) -> None:
    def recv_ratio(dep: str) -> float:
        down = r.rb.collective_table(dep, "pp0-1")
        back = r.rb.collective_table(dep, "pp1-0")
        return float(
            down["duration_sum_ns"][down["rank"] >= 4].mean()
            / back["duration_sum_ns"][back["rank"] >= 4].mean()
        )

    assert recv_ratio("llama70b-a") > 1.3  # stage 1 idles in recv, waiting for stage 0
    assert recv_ratio("llama70b-b") < 1.2


def _moe(r: Run) -> None:
    e = r.rb.engine_table("mixtral-a")
    tokens = e["expert_tokens"][r.after(e["ts_ns"])].sum(axis=0)
    assert tokens[0] > 2.5 * np.median(tokens[1:])
    tab = r.rb.collective_table("mixtral-a", "ep")
    after = r.after(tab["first_start_ns"])
    means = [tab["duration_sum_ns"][after & (tab["rank"] == k)].mean() for k in range(8)]
    assert int(np.argmin(means)) == 0  # the hot expert's rank is last to the combine


def _length_skew(r: Run) -> None:
    a, b = r.rb.request_table("llama70b-a"), r.rb.request_table("llama70b-b")
    pa = a["prompt_tokens"][(a["kind"] == 0) & r.after(a["ts_ns"])]
    pb = b["prompt_tokens"][(b["kind"] == 0) & r.after(b["ts_ns"])]
    assert pa.mean() > 2.0 * pb.mean()


def _kv_pressure(r: Run) -> None:
    e = r.rb.engine_table("llama70b-a")
    after = r.after(e["ts_ns"], 1000)
    assert e["kv_cache_usage_ratio"][after].max() > 0.9
    assert e["preemptions_total"][-1] > e["preemptions_total"][r.before(e["ts_ns"])][-1]
    assert e["num_waiting"][after].mean() > 5 * max(
        e["num_waiting"][r.before(e["ts_ns"])].mean(), 0.5
    )


def _host_prep(r: Run) -> None:
    req = r.rb.request_table("llama70b-a")
    arrived = {
        i: t for i, t, k in zip(req["request_id"], req["ts_ns"], req["kind"], strict=True) if k == 0
    }
    gaps_before, gaps_after = [], []
    for i, t, k in zip(req["request_id"], req["ts_ns"], req["kind"], strict=True):
        if k == 2 and i in arrived:
            (gaps_after if arrived[i] > r.onset_ns else gaps_before).append(t - arrived[i])
    assert np.median(gaps_after) > 5 * np.median(gaps_before)
    gpu = r.rb.gpu_table("node00")
    assert not np.any(gpu["throttle_reasons"] & ~0x1)


def _rank_hang(r: Run) -> None:
    tab = r.rb.collective_table("llama70b-a", "tp0")
    assert not np.any(tab["first_start_ns"] > r.onset_ns + 200_000_000)
    gpu = r.rb.gpu_table("node01")
    late = r.after(gpu["ts_ns"], 300)
    assert gpu["gpu_util_ratio"][late & (gpu["gpu_index"] == 2)].max() < 0.05
    assert gpu["gpu_util_ratio"][late & (gpu["gpu_index"] != 2)].min() > 0.95
    e = r.rb.engine_table("llama70b-a")
    gen = e["generation_tokens_total"][r.after(e["ts_ns"], 300)]
    assert gen.max() == gen.min()


def _clock_desync(r: Run) -> None:
    # transfer end seen by sender (node00 clock) and receiver (node01 clock): their offset
    # jumps by the clock step, while durations stay what they were
    tab = r.rb.collective_table("llama70b-a", "pp0-1")
    end = tab["first_start_ns"] + tab["duration_sum_ns"]
    offsets = {}
    for step in np.unique(tab["step"]):
        sel = tab["step"] == step
        send, recv = end[sel & (tab["rank"] < 4)], end[sel & (tab["rank"] >= 4)]
        if send.size == 4 and recv.size == 4:
            offsets[int(step)] = (
                float(np.median(recv - send)),
                int(tab["first_start_ns"][sel].min()),
            )
    before = [o for o, t in offsets.values() if t < r.onset_ns - 100_000_000]
    after = [o for o, t in offsets.values() if t > r.onset_ns + 100_000_000]
    jump = np.median(after) - np.median(before)
    assert 150_000 < jump < 250_000  # the 200 us step


def _pcie_sat(r: Run) -> None:
    gpu = r.rb.gpu_table("node01")
    after = r.after(gpu["ts_ns"]) & (gpu["gpu_util_ratio"] > 0.5)
    assert np.median(gpu["pcie_tx_bytes_per_s"][after]) > 0.9 * 58e9
    assert r.rate("node01", "mlx5_0", "outbound_pci_stalled_rd", True) > 100 * r.rate(
        "node00", "mlx5_0", "outbound_pci_stalled_rd", True
    )
    e = r.rb.engine_table("llama70b-a")
    busy = e["step_duration_ns"] > 0
    assert np.median(e["step_duration_ns"][busy & r.after(e["ts_ns"])]) > 1.15 * np.median(
        e["step_duration_ns"][busy & r.before(e["ts_ns"])]
    )


def _pcie_deg(r: Run) -> None:
    gpu = r.rb.gpu_table("node01")
    mine = gpu["gpu_index"] == 2
    assert np.all(gpu["pcie_link_width"][mine] == 8)
    assert np.all(gpu["pcie_link_width"][~mine] == 16)
    replays = gpu["pcie_replay_total"][mine]
    assert replays[-1] - replays[0] > 20


def _microburst(r: Run) -> None:
    d = r.rb.dpu_table("node00")
    assert d["dev_rx_queue_depth_bytes"][r.after(d["dev_ts_ns"], 0)].max() > 100_000
    assert d["dev_rx_discards"][r.after(d["dev_ts_ns"], 0)].sum() > 0
    assert d["dev_rx_discards"][r.before(d["dev_ts_ns"])].sum() == 0


def _fabric(r: Run) -> None:
    east_west = [(node, port) for node, port in r.rb.nic if port != "p0"]
    assert east_west, "no east-west NIC port was read back"
    for node, port in east_west:
        assert r.rate(node, port, "np_ecn_marked_roce_packets", True) > 5 * max(
            r.rate(node, port, "np_ecn_marked_roce_packets", False), 1.0
        )


def _retransmit(r: Run) -> None:
    bad = r.rate("node01", "mlx5_2", "out_of_sequence", True)
    others = [
        r.rate(n, p, "out_of_sequence", True)
        for n, p in r.rb.nic
        if (n, p) != ("node01", "mlx5_2") and p != "p0"
    ]
    assert bad > 100 * max(max(others), 1.0)
    assert r.rate("node01", "mlx5_2", "rx_symbol_err_phy", True) > 100


def _pfc(r: Run) -> None:
    culprit_tx = r.rate("node01", "mlx5_2", "tx_prio3_pause", True)
    victim_rx = r.rate("node00", "mlx5_2", "rx_prio3_pause", True)
    assert culprit_tx > 1000 and victim_rx > 1000
    assert r.rate("node01", "mlx5_2", "rx_prio3_pause", True) < 0.01 * culprit_tx
    assert r.rate("node00", "mlx5_2", "tx_prio3_pause", True) < 0.01 * culprit_tx


def _credit(r: Run) -> None:
    waited = r.rate("node00", "mlx5_2", "port_xmit_wait", True)
    assert waited > 100 * r.rate("node00", "mlx5_2", "port_xmit_wait", False)
    assert r.rate("node01", "mlx5_2", "out_of_sequence", True) < 10  # no loss


def _ingress(r: Run) -> None:
    a, b = r.rb.request_table("llama70b-a"), r.rb.request_table("llama70b-b")
    na = np.sum((a["kind"] == 0) & r.after(a["ts_ns"]))
    nb = np.sum((b["kind"] == 0) & r.after(b["ts_ns"]))
    assert na > 4 * nb


SYMPTOMS: dict[str, Callable[[Run], None]] = {
    "tp-straggler": _tp_straggler,
    "early-stop-skew": _early_stop,
    "pp-stage-imbalance": _pp_stage,
    "moe-expert-imbalance": _moe,
    "request-length-skew": _length_skew,
    "kv-cache-pressure": _kv_pressure,
    "host-preprocessing-delay": _host_prep,
    "rank-hang": _rank_hang,
    "clock-desync": _clock_desync,
    "pcie-saturation": _pcie_sat,
    "pcie-degradation": _pcie_deg,
    "ingress-imbalance": _ingress,
    "ingress-microburst": _microburst,
    "fabric-congestion": _fabric,
    "retransmit-storm": _retransmit,
    "pfc-pause-storm": _pfc,
    "credit-starvation": _credit,
}
ENTITIES = {
    "tp-straggler": "llama70b-a/rank5",
    "early-stop-skew": "llama70b-a",
    "pp-stage-imbalance": "llama70b-a",
    "moe-expert-imbalance": "mixtral-a",
    "request-length-skew": "llama70b-a",
    "kv-cache-pressure": "llama70b-a",
    "host-preprocessing-delay": "node00",
    "rank-hang": "llama70b-a/rank6",
    "clock-desync": "node01",
    "pcie-saturation": "node01",
    "pcie-degradation": "node01/gpu2",
    "ingress-imbalance": "llama70b-a",
    "ingress-microburst": "llama70b-a",
    "fabric-congestion": "fabric:roce0",
    "retransmit-storm": "node01/mlx5_2->leaf0:p7",
    "pfc-pause-storm": "node01/mlx5_2",
    "credit-starvation": "node01/mlx5_2",
}


def test_every_condition_has_a_symptom_check() -> None:
    assert set(SYMPTOMS) == set(CONDITIONS) == set(ENTITIES)


@pytest.mark.parametrize("condition", sorted(CONDITIONS))
def test_injected_cause_shows_its_symptom_and_its_label_reaches_kafka(
    condition: str, kafka_bootstrap: str, unique_topic: Callable[..., str]
) -> None:
    seconds = 16.0 if condition in LOAD_FAMILY else 4.0
    run = _through_kafka(kafka_bootstrap, unique_topic, _scenario(condition), seconds)
    SYMPTOMS[condition](run)
    mine = [lab for lab in run.labels if lab["condition"] == condition]
    assert len(mine) == 1, run.labels
    assert mine[0]["entity"] == ENTITIES[condition]
    assert mine[0]["end_ns"] is not None
    if condition in LOAD_FAMILY:  # from the true state: harm starts after the cause
        assert mine[0]["onset_ns"] >= run.onset_ns - 1_000_000_000
    elif condition not in CONFIG:
        assert mine[0]["onset_ns"] == run.onset_ns


@pytest.mark.parametrize("trace", ["code", "conv"])
def test_azure_replay_reproduces_the_trace_arrivals_and_lengths(
    trace: str, kafka_bootstrap: str, unique_topic: Callable[..., str]
) -> None:
    scenario = load_scenario(f"azure-{trace}")
    run = _through_kafka(kafka_bootstrap, unique_topic, scenario, 6.0)
    ts, prompts = [], []
    for dep in run.rb.requests:
        req = run.rb.request_table(dep)
        arrived = req["kind"] == 0
        ts.append(req["ts_ns"][arrived])
        prompts.append(req["prompt_tokens"][arrived])
    t, p = np.concatenate(ts), np.concatenate(prompts)
    order = np.argsort(t, kind="stable")
    t, p = t[order], p[order]
    w = scenario.workload
    offsets, context, _ = read_trace(trace_path(w))
    rel = (offsets - w.trace_offset_s * 1e9) / w.time_compression
    keep = (rel >= 0) & (rel < 6e9)
    expected_gaps = np.diff(rel[keep])
    assert t.size == keep.sum()
    # replicas' host clocks differ by microseconds of offset and jitter; gaps are ms
    assert np.allclose(np.diff(t), expected_gaps, atol=20_000)
    assert np.array_equal(np.sort(p), np.sort(np.minimum(context[keep], w.max_prompt_tokens)))


def _cli(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="skewscope")
    parser.add_argument("--config")
    sub = parser.add_subparsers(dest="command", required=True)
    add_sim_commands(sub)
    args = parser.parse_args(argv)
    return int(args.func(args))


def test_produce_sim_out_writes_a_capture_whose_messages_decode(tmp_path: Path) -> None:
    out = tmp_path / "run.avro"
    assert (
        _cli(
            [
                "produce",
                "sim",
                "--scenario",
                "tp-straggler",
                "--duration",
                "5.0",
                "--seed",
                "4",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    codec = AvroCodec()
    records = list(read_capture(out))
    schemas = {r["schema"] for r in records}
    assert {"TopologyRecord", "CollectiveFrame", "NicCounterFrame", "FaultLabel"} <= schemas
    for r in records:
        assert codec.decode(r["value"]).name == r["schema"]


def test_produce_sim_frame_interval_sets_the_period_each_frame_covers(tmp_path: Path) -> None:
    ends = {}
    for period_ms in ("100", "200"):
        out = tmp_path / f"run{period_ms}.avro"
        argv = ["produce", "sim", "--scenario", "clean", "--duration", "1.0", "--out", str(out)]
        assert _cli([*argv, "--frame-interval-ms", period_ms]) == 0
        records = [r for r in read_capture(out) if r["schema"] == "GpuSampleFrame"]
        ends[period_ms] = sorted({r["event_time_ns"] for r in records})
    assert len(ends["100"]) == 10 and len(ends["200"]) == 5
    assert set(ends["200"]) <= set(ends["100"])
    with pytest.raises(ScenarioError, match="frame_interval_ms"):
        _cli(["produce", "sim", "--scenario", "clean", "--frame-interval-ms", "150"])


def test_produce_sim_to_kafka_delivers_topology_frames_and_labels(
    kafka_bootstrap: str, unique_topic: Callable[..., str], monkeypatch: pytest.MonkeyPatch
) -> None:
    topic = unique_topic("sim.cli")
    topics = Topics(
        engine_requests=topic,
        engine_samples=topic,
        collectives=topic,
        gpu=topic,
        nic=topic,
        dpu=topic,
        topology=topic,
        labels=topic,
    )
    settings = dataclasses.replace(load_settings(), kafka_bootstrap=kafka_bootstrap, topics=topics)
    monkeypatch.setattr("skewscope.config.load_settings", lambda *_a, **_k: settings)
    assert _cli(["produce", "sim", "--scenario", "clock-desync", "--duration", "5.0"]) == 0
    consumer = DecodingConsumer(settings, [topic], group_id=None, name="sim-cli-test")
    consumer.assign([TopicPartition(topic, 0, OFFSET_BEGINNING)])
    names: set[str] = set()
    while "FaultLabel" not in names:
        batch = consumer.poll_batch(500, timeout_s=1.0)
        assert batch, f"labels never arrived; saw {sorted(names)}"
        names |= {e.name for e in batch}
    consumer.close()
    assert {"TopologyRecord", "CollectiveFrame", "GpuSampleFrame", "DpuFrame"} <= names


def test_skewscope_cli_lists_scenarios() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "skewscope.cli", "scenarios"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert "tp-straggler" in done.stdout
