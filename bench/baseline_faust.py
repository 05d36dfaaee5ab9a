"""Baseline: the same features and rules written the way a Faust user typically would.

One message at a time (``async for event in stream.events()``), each frame expanded into one
Python dict per sample row, state in Faust Tables (memory store, changelog topics: every
table write is a changelog record, as Faust does by default). Logic, per partition:

* GPU rows -> per GPU and 250 ms pane: SM clock ratio, throttled share, PCIe bytes/s (mean
  and max), link generation/width (min), replay rate (from the previous sample, a Table);
* NIC rows -> per port and pane: per-second rates of the 18 known counters from the previous
  sample of the port (a Table), a decrease (reset) gives no rate;
* collective rows -> a Table of open steps keyed by (deployment, communicator, step); when all
  ranks reported, per rank: last arrival (shortest duration), caused wait ratio ((median -
  own duration) / step period), steps; pipeline groups ('pp*') are skipped;
* a watermark per partition (max event time - 100 ms); when it passes a window end (1 s
  windows every 250 ms), the 4 panes of every entity are combined and the rules run with k of
  n persistence (a Table): tp-straggler (last arrival >= 0.75, caused wait >= 0.035, >= 8
  steps, 3 of 4), pcie-saturation (a node's max PCIe utilization >= 0.8 with outbound PCIe
  stalls >= 1000/s on its NIC, 3 of 4), retransmit-storm (out-of-sequence + sequence errors
  + ACK timeouts >= 50/s and >= 5x the peers' median, 3 of 4); firing verdicts go to a topic.

Thresholds are the runbook's (models/runbook.toml). It is a faithful per-message
implementation of a subset of the detector (three sources, three rules, no clock alignment,
no fusion, no anomaly model), so it does less work per sample than the detector does.

Measured: samples/s per CPU second of the worker process (all threads) over the first
``--messages`` messages of the GPU, NIC and collective topics, Faust's start-up excluded.

    taskset -c 1 .venv/bin/python -m bench.baseline_faust --prefix bench1234abcd. --messages 4000
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import sys
import time
from collections import defaultdict
from typing import Any

import faust

from bench.common import cpu_seconds
from bench.prefill import prefixed_settings
from schemas.codec import AvroCodec
from schemas.columns import unpack
from skewscope.config import Settings, load_settings

HOP_NS = 250_000_000
PANES_PER_WINDOW = 4
LATENESS_NS = 100_000_000
SLOWDOWN_MASK = 0x4 | 0x8 | 0x10 | 0x20 | 0x40 | 0x80
LANE_BYTES_PER_S = {1: 0.25e9, 2: 0.5e9, 3: 0.985e9, 4: 1.969e9, 5: 3.938e9, 6: 7.563e9}
NIC_COUNTERS = (
    "tx_bytes_phy", "rx_bytes_phy", "rx_discards_phy", "rx_symbol_err_phy",
    "rx_corrected_bits_phy", "np_ecn_marked_roce_packets", "np_cnp_sent", "rp_cnp_handled",
    "out_of_sequence", "packet_seq_err", "local_ack_timeout_err", "rx_prio3_pause",
    "tx_prio3_pause", "rx_prio3_pause_duration", "tx_prio3_pause_duration", "port_xmit_wait",
    "outbound_pci_stalled_rd", "outbound_pci_stalled_wr",
)  # fmt: skip
RETRANSMIT = ("out_of_sequence", "packet_seq_err", "local_ack_timeout_err")


def _rows(cols: dict[str, Any], names: list[str]) -> list[dict[str, Any]]:
    """One dict per sample row, the way per-record code sees its data."""
    lists = [cols[n].tolist() for n in names]
    return [dict(zip(names, values, strict=True)) for values in zip(*lists, strict=True)]


def _add(agg: dict[str, list[float]], name: str, value: float) -> None:
    cur = agg.get(name)
    if cur is None:
        agg[name] = [value, 1.0, value, value]
    else:
        cur[0] += value
        cur[1] += 1.0
        cur[2] = max(cur[2], value)
        cur[3] = min(cur[3], value)


def _mean(agg: dict[str, list[float]], name: str) -> float | None:
    cur = agg.get(name)
    return cur[0] / cur[1] if cur else None


def build(
    settings: Settings, app_id: str, limit: int, web_port: int, state: str = "table"
) -> faust.App:
    """The baseline Faust app; it prints its JSON result and exits after ``limit`` messages.

    ``state="table"``: Faust Tables (a changelog record per write, Faust's default and what
    makes state survive a restart); ``state="dict"``: plain dicts (no changelog, state lost
    on restart), to separate the per-row Python cost from the changelog cost.
    """
    app = faust.App(
        app_id,
        broker=f"kafka://{settings.kafka_bootstrap}",
        value_serializer="raw",
        key_serializer="raw",
        store="memory://",
        topic_partitions=settings.telemetry_partitions,
        consumer_auto_offset_reset="earliest",
        web_port=web_port,
        web_host="127.0.0.1",
        datadir=str(settings.var_dir / "faust" / app_id),
    )
    topics = settings.topics
    telemetry = app.topic(topics.gpu, topics.nic, topics.collectives, value_type=bytes)
    verdicts = app.topic(topics.verdicts, value_type=bytes)
    panes: Any  # "<entity>|<pane>" -> {feature: [sum, n, max, min]}
    last: Any  # entity -> previous counters and time
    steps: Any  # "<dep>|<group>|<step>" -> {rank: row}
    persist: Any  # "<rule>|<entity>" -> last n outcomes
    if state == "table":
        panes = app.Table("panes", default=dict)
        last = app.Table("last", default=dict)
        steps = app.Table("steps", default=dict)
        persist = app.Table("persist", default=list)
    else:
        panes, last = defaultdict(dict), defaultdict(dict)
        steps, persist = defaultdict(dict), defaultdict(list)
    codec = AvroCodec()
    # Local (not checkpointed) indexes a user keeps to find table keys without scanning.
    entities_by_pane: dict[tuple[int, int], set[str]] = defaultdict(set)
    watermark: dict[int, int] = {}
    closed: dict[int, int] = {}
    node_of_gpu_entity: dict[str, str] = {}
    progress = {"messages": 0, "samples": 0, "verdicts": 0, "windows": 0}
    began: dict[str, float] = {}

    def add_row(partition: int, entity: str, ts_ns: int, values: dict[str, float]) -> None:
        pane = ts_ns // HOP_NS
        key = f"{entity}|{pane}"
        agg = panes[key]
        for name, value in values.items():
            if value == value:  # NaN: absent
                _add(agg, name, value)
        panes[key] = agg
        entities_by_pane[(partition, pane)].add(entity)

    def gpu_rows(partition: int, rec: dict[str, Any]) -> None:
        cols = unpack("GpuSampleFrame", rec)
        names = list(cols)
        for row in _rows(cols, names):
            entity = f"{rec['node']}/gpu{row['gpu_index']}"
            node_of_gpu_entity[entity] = rec["node"]
            prev = last[entity]
            replay_rate = float("nan")
            if prev and row["ts_ns"] > prev["ts_ns"] and row["pcie_replay_total"] >= prev["replay"]:
                replay_rate = (
                    (row["pcie_replay_total"] - prev["replay"])
                    * 1e9
                    / (row["ts_ns"] - prev["ts_ns"])
                )
            last[entity] = {"ts_ns": row["ts_ns"], "replay": row["pcie_replay_total"]}
            pcie = row["pcie_tx_bytes_per_s"] + row["pcie_rx_bytes_per_s"]
            capacity = LANE_BYTES_PER_S.get(row["pcie_link_gen"], 0.0) * row["pcie_link_width"]
            add_row(
                partition,
                entity,
                row["ts_ns"],
                {
                    "sm_clock_ratio": row["sm_clock_mhz"] / row["sm_clock_max_mhz"]
                    if row["sm_clock_max_mhz"] > 0
                    else float("nan"),
                    "throttled_share": 1.0 if row["throttle_reasons"] & SLOWDOWN_MASK else 0.0,
                    "power_w": row["power_w"],
                    "pcie_bytes_per_s": pcie,
                    "pcie_util_ratio": pcie / (2 * capacity) if capacity else float("nan"),
                    "pcie_link_width": row["pcie_link_width"] or float("nan"),
                    "pcie_link_gen": row["pcie_link_gen"] or float("nan"),
                    "pcie_replays_per_s": replay_rate,
                    "xid": row["xid_last"],
                },
            )

    def nic_rows(partition: int, rec: dict[str, Any]) -> None:
        cols = unpack("NicCounterFrame", rec)
        n = rec["n_samples"]
        values = cols["counter_values"].tolist()
        entity = f"{rec['node']}/{rec['port']}"
        for i, ts in enumerate(cols["ts_ns"].tolist()):
            row = {name: values[k * n + i] for k, name in enumerate(rec["counter_names"])}
            prev = last[entity]
            rates: dict[str, float] = {}
            if prev and ts > prev["ts_ns"]:
                dt_s = (ts - prev["ts_ns"]) / 1e9
                for name in NIC_COUNTERS:
                    if name in row and name in prev and row[name] >= prev[name]:
                        rates[f"{name}_per_s"] = (row[name] - prev[name]) / dt_s
            last[entity] = {"ts_ns": ts, **row}
            if rates:
                add_row(partition, entity, ts, rates)

    def collective_rows(partition: int, rec: dict[str, Any]) -> None:
        if rec["group_id"].startswith("pp"):
            return
        cols = unpack("CollectiveFrame", rec)
        names = ["step", "rank", "collective_count", "first_start_ns", "duration_sum_ns"]
        for row in _rows(cols, names):
            if row["collective_count"] == 0:
                continue  # still in flight
            dep = rec["deployment"]
            key = f"{dep}|{rec['group_id']}|{row['step']}"
            entry = steps[key]
            entry[row["rank"]] = row
            if len(entry) < rec["group_size"]:
                steps[key] = entry
                continue
            del steps[key]
            durations = [r["duration_sum_ns"] for r in entry.values()]
            median = statistics.median(durations)
            shortest = min(entry.values(), key=lambda r: r["duration_sum_ns"])["rank"]
            for rank, r in entry.items():
                period_key = f"{dep}|{rec['group_id']}|{rank}|period"
                prev = last[period_key]
                period = 0.0
                if prev and r["step"] > prev["step"]:
                    period = (r["first_start_ns"] - prev["start"]) / (r["step"] - prev["step"])
                last[period_key] = {"step": r["step"], "start": r["first_start_ns"]}
                values = {"steps": 1.0, "last_arrival": 1.0 if rank == shortest else 0.0}
                if period > 0:
                    values["caused_wait_ratio"] = (median - r["duration_sum_ns"]) / period
                add_row(partition, f"{dep}/rank{rank}", r["first_start_ns"], values)

    def persistent(rule: str, entity: str, hit: bool, k: int = 3, n: int = 4) -> bool:
        key = f"{rule}|{entity}"
        history = (persist[key] + [hit])[-n:]
        persist[key] = history
        return sum(history) >= k

    def evaluate(partition: int, last_pane: int) -> list[dict[str, Any]]:
        window = range(last_pane - PANES_PER_WINDOW + 1, last_pane + 1)
        combined: dict[str, dict[str, list[float]]] = {}
        for pane in window:
            for entity in entities_by_pane.get((partition, pane), ()):
                acc = combined.setdefault(entity, {})
                for name, (s, c, hi, lo) in panes[f"{entity}|{pane}"].items():
                    cur = acc.get(name)
                    if cur is None:
                        acc[name] = [s, c, hi, lo]
                    else:
                        acc[name] = [cur[0] + s, cur[1] + c, max(cur[2], hi), min(cur[3], lo)]
        out = []
        ports = {e: a for e, a in combined.items() if "tx_bytes_phy_per_s" in a}
        retrans = {
            e: sum(_mean(a, f"{c}_per_s") or 0.0 for c in RETRANSMIT) for e, a in ports.items()
        }
        peers_median = statistics.median(retrans.values()) if retrans else 0.0
        stalls_by_node: dict[str, float] = defaultdict(float)
        for entity, agg in ports.items():
            stall = (_mean(agg, "outbound_pci_stalled_rd_per_s") or 0.0) + (
                _mean(agg, "outbound_pci_stalled_wr_per_s") or 0.0
            )
            node = entity.split("/", 1)[0]
            stalls_by_node[node] = max(stalls_by_node[node], stall)
            hit = retrans[entity] >= 50.0 and retrans[entity] >= 5.0 * max(peers_median, 1e-9)
            if persistent("retransmit-storm", entity, hit):
                out.append({"entity": entity, "condition": "retransmit-storm"})
        util_by_node: dict[str, float] = defaultdict(float)
        for entity, agg in combined.items():
            if "/gpu" in entity and "pcie_util_ratio" in agg:
                node = node_of_gpu_entity[entity]
                util_by_node[node] = max(util_by_node[node], agg["pcie_util_ratio"][2])
            elif "/rank" in entity:
                steps_seen = agg.get("steps", [0.0])[0]
                last_arrival = _mean(agg, "last_arrival") or 0.0
                caused = _mean(agg, "caused_wait_ratio") or 0.0
                hit = steps_seen >= 8 and last_arrival >= 0.75 and caused >= 0.035
                if persistent("tp-straggler", entity, hit):
                    out.append({"entity": entity, "condition": "tp-straggler"})
        for node, util in util_by_node.items():
            hit = util >= 0.8 and stalls_by_node.get(node, 0.0) >= 1000.0
            if persistent("pcie-saturation", node, hit):
                out.append({"entity": node, "condition": "pcie-saturation"})
        # Evict the pane no later window needs.
        old = last_pane - PANES_PER_WINDOW + 1
        for entity in entities_by_pane.pop((partition, old), ()):
            del panes[f"{entity}|{old}"]
        return out

    @app.agent(telemetry)
    async def detect(stream: Any) -> None:
        async for event in stream.events():
            if not began:
                began["cpu"], began["wall"] = cpu_seconds(), time.perf_counter()
            partition = event.message.partition
            decoded = codec.decode(event.message.value)
            rec = decoded.record
            if decoded.name == "GpuSampleFrame":
                gpu_rows(partition, rec)
                progress["samples"] += rec["n_samples"]
                ts_end = rec["frame_end_ns"]
            elif decoded.name == "NicCounterFrame":
                nic_rows(partition, rec)
                progress["samples"] += rec["n_samples"]
                ts_end = rec["frame_end_ns"]
            else:
                collective_rows(partition, rec)
                progress["samples"] += rec["n_rows"]
                ts_end = rec["frame_end_ns"]
            watermark[partition] = max(watermark.get(partition, 0), ts_end - LATENESS_NS)
            newest = watermark[partition] // HOP_NS - 1
            first = closed.setdefault(partition, newest)
            for last_pane in range(first + 1, newest + 1):
                for verdict in evaluate(partition, last_pane):
                    await verdicts.send(value=json.dumps(verdict).encode())
                    progress["verdicts"] += 1
                progress["windows"] += 1
                closed[partition] = last_pane
            progress["messages"] += 1
            if progress["messages"] >= limit:
                cpu_s = cpu_seconds() - began["cpu"]
                result = {
                    "benchmark": "baseline_faust",
                    "state": state,
                    **progress,
                    "cpu_s": cpu_s,
                    "wall_s": time.perf_counter() - began["wall"],
                    "samples_per_cpu_s": progress["samples"] / cpu_s,
                    "messages_per_cpu_s": progress["messages"] / cpu_s,
                    "table_keys": len(panes) + len(last) + len(steps) + len(persist),
                }
                # Faust redirects sys.stdout into logging: write to the real stdout.
                os.write(1, (json.dumps(result) + "\n").encode())
                os._exit(0)

    return app


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--prefix", required=True, help="topic prefix of a pre-fill")
    parser.add_argument("--partitions", type=int, default=4)
    parser.add_argument("--messages", type=int, default=4000, help="stop after this many")
    parser.add_argument("--web-port", type=int, default=0, help="0: a free port")
    parser.add_argument("--state", choices=["table", "dict"], default="table")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    settings = prefixed_settings(load_settings(), args.prefix, args.partitions)
    port = args.web_port or _free_port()
    app = build(settings, f"{args.prefix}baseline-{args.state}", args.messages, port, args.state)
    from faust.worker import Worker

    Worker(app, loglevel="warning", quiet=True).execute_from_commandline()
    return 1  # the agent exits the process when done; reaching here means it never finished


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


if __name__ == "__main__":
    sys.exit(main())
