"""Adapters on real captures: every file in shared/data/formats parses to values read from it,
frames encode and decode, malformed text is skipped or refused with line and reason, and
counter rates survive resets and wraps."""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from producers.adapters.common import Frame, FrameContext, ParseError
from producers.adapters.dcgm import dcgm_frames, parse_dcgm
from producers.adapters.ethtool_mlx5 import ethtool_frames, parse_ethtool
from producers.adapters.nccl_inspector import inspector_frames, parse_inspector
from producers.adapters.nccl_tests import parse_nccl_tests
from producers.adapters.nccl_trace import collective_spans, parse_trace
from producers.adapters.prometheus_text import parse
from producers.adapters.rates import RateTracker, counter_rates
from producers.adapters.rdma_counters import (
    parse_rdma_statistic,
    parse_sysfs_listing,
    parse_ttar,
    rdma_frames,
)
from producers.adapters.tgi import tgi_frames
from producers.adapters.vllm import parse_vllm, vllm_frames
from schemas.codec import AvroCodec
from schemas.columns import unpack

FORMATS_DIR = Path(__file__).resolve().parents[2] / "shared" / "data" / "formats"
CAPTURES = sorted(
    p.relative_to(FORMATS_DIR).as_posix()
    for p in FORMATS_DIR.rglob("*")
    if p.is_file() and p.name != "README.md"
)
TS_NS = 1_700_000_000_123_456_789


def _ctx() -> FrameContext:
    return FrameContext("llama70b-a", "node07", replica="llama70b-a-r0", frame_seq=10)


def _roundtrip(frame: Frame) -> tuple[dict, dict[str, np.ndarray]]:
    """Encode and decode a frame as Kafka would carry it; return the record and columns."""
    codec = AvroCodec()
    decoded = codec.decode(codec.encode(frame.schema, frame.record))
    assert decoded.name == frame.schema
    return decoded.record, unpack(decoded.name, decoded.record)


def _text(rel: str) -> str:
    return (FORMATS_DIR / rel).read_text()


# -- vLLM -----------------------------------------------------------------------------------
def check_vllm_v0(text: str) -> None:
    scrape = parse_vllm(text)
    assert scrape.skipped == []
    snap = scrape.engines[""]
    assert (snap.num_running, snap.num_waiting, snap.kv_cache_usage_ratio) == (0, 0, 0.0)
    assert (snap.prompt_tokens_total, snap.generation_tokens_total) == (5, 7)
    assert snap.preemptions_total == 0
    assert snap.batch_capacity == -1 and snap.step_duration_ns == -1
    expo = scrape.exposition
    assert expo.value("process_max_fds") == 1048576.0
    assert expo.value("vllm:time_to_first_token_seconds_sum") == 0.31326723098754883
    # the last line has no newline and is still read
    assert expo.samples[-1].name == "vllm:avg_generation_throughput_toks_per_s"
    out = vllm_frames(text, _ctx(), TS_NS)
    record, cols = _roundtrip(out.frames[0])
    assert record["replica"] == "llama70b-a-r0" and record["frame_seq"] == 10
    assert cols["prompt_tokens_total"].tolist() == [5]
    # cache_config_info: num_gpu_blocks="7281" x block_size="16"
    assert snap.kv_capacity_tokens == 7281 * 16 and record["kv_capacity_tokens"] == 7281 * 16
    assert cols["generation_tokens_total"].tolist() == [7]
    assert cols["ts_ns"].tolist() == [TS_NS]
    assert cols["batch_capacity"].tolist() == [-1]


def check_vllm_318(text: str) -> None:
    scrape = parse_vllm(text)
    snap = scrape.engines[""]
    assert (snap.num_running, snap.num_waiting, snap.kv_cache_usage_ratio) == (0, 0, 0.0)
    assert snap.prompt_tokens_total == -1  # not in the fragment
    expo = scrape.exposition
    assert expo.value("process_cpu_seconds_total") == 439.71999999999997
    # the fragment ends with a HELP/TYPE pair whose sample was cut off
    assert expo.types["vllm:gpu_prefix_cache_queries_total"] == "counter"
    assert expo.find("vllm:gpu_prefix_cache_queries_total") == []
    assert scrape.skipped == []


def check_vllm_617a(text: str) -> None:
    scrape = parse_vllm(text)
    assert list(scrape.engines) == ["0"]
    assert scrape.engines["0"].kv_cache_usage_ratio == 9.75010481363281e-06
    assert scrape.exposition.value("vllm:prefix_cache_queries_total", engine="0") == 32.0
    record, cols = _roundtrip(vllm_frames(text, _ctx(), TS_NS).frames[0])
    assert record["replica"] == "llama70b-a-r0/engine0"
    assert cols["kv_cache_usage_ratio"][0] == np.float32(9.75010481363281e-06)
    assert cols["num_running"].tolist() == [-1]


def check_vllm_617b(text: str) -> None:
    expo = parse(text)
    name = "vllm:request_queue_time_seconds_bucket"
    assert len(expo.find(name)) == 14
    assert expo.value(name, engine="0", le="240.0", model_name="zai-org/GLM-4.5") == 4.0
    assert parse_vllm(text).engines == {}  # buckets only: no engine state, no frame


def check_vllm_617c(text: str) -> None:
    expo = parse(text)
    samples = expo.find("vllm:request_prefill_time_seconds_bucket")
    assert len(samples) == 13
    assert list(samples[-1].labels) == ["engine", "le", "model_name"]
    assert samples[-1].labels["le"] == "1920.0" and samples[-1].value == 4.0


def check_vllm_docs(text: str) -> None:
    expo = parse(text)
    assert expo.value("vllm:iteration_tokens_total_bucket", le="512.0") == 3.0
    assert expo.value("vllm:iteration_tokens_total_sum") == 0.0
    assert expo.family_type("vllm:iteration_tokens_total_bucket") == "histogram"


def check_vllm_22227(text: str) -> None:
    expo = parse(text)
    samples = expo.find("vllm:request_prefill_time_seconds_bucket")
    assert len(samples) == 13 and {s.labels["engine"] for s in samples} == {"1"}
    assert expo.value("vllm:request_prefill_time_seconds_bucket", le="0.5") == 1.0
    assert samples[0].labels["model_name"] == "/home/jovyan/qwen3-8b"


def check_tgi(text: str) -> None:
    expo = parse(text)
    assert expo.skipped == []
    assert expo.value("tgi_request_success") == 109.0
    assert expo.value("tgi_batch_inference_success", method="decode") == 1509.0
    assert len(expo.find("tgi_batch_next_size_bucket")) == 1025
    assert expo.value("tgi_batch_next_size_bucket", le="+Inf") == 16.0
    assert "tgi_batch_concat" in expo.types and "tgi_batch_concat" not in expo.helps
    _, cols = _roundtrip(tgi_frames(text, _ctx(), TS_NS).frames[0])
    assert cols["num_running"].tolist() == [0] and cols["num_waiting"].tolist() == [0]
    assert cols["prompt_tokens_total"].tolist() == [662]
    assert cols["generation_tokens_total"].tolist() == [3423]
    assert math.isnan(cols["kv_cache_usage_ratio"][0])


# -- DCGM -----------------------------------------------------------------------------------
def check_dcgm_datadog(text: str) -> None:
    scrape = parse_dcgm(text)
    t4 = scrape.by_uuid("GPU-20c56d28-0da5-6d26-a36a-e7af1ce2586e")
    assert t4.hostname == "424773df46e0" and t4.gpu == 0
    assert t4.values["sm_clock_mhz"] == 300.0 and t4.values["power_w"] == 8.969
    assert t4.values["xid_last"] == 0.0 and t4.values["gpu_util_ratio"] == 0.0
    other = scrape.by_uuid("GPU-9ef1b6d0-3643-5dd7-b823-c0ec20dcf2d5")
    assert other.values == {"throttle_reasons": 1.0}
    # the dummy-valued families have no labels and cannot be attributed
    unattributed = [(s.line_no, s.text) for s in scrape.skipped]
    assert unattributed == [
        (83, "DCGM_FI_PROF_PCIE_RX_BYTES"),
        (86, "DCGM_FI_PROF_PCIE_TX_BYTES"),
        (95, "DCGM_FI_PROF_GR_ENGINE_ACTIVE"),
    ]
    assert scrape.exposition.value("DCGM_FI_PROF_DRAM_ACTIVE", UUID="GPU-abc") == 0.000003
    record, cols = _roundtrip(dcgm_frames(text, _ctx(), TS_NS).frames[0])
    assert record["gpu_uuids"] == [
        "GPU-20c56d28-0da5-6d26-a36a-e7af1ce2586e",
        "GPU-9ef1b6d0-3643-5dd7-b823-c0ec20dcf2d5",
    ]
    assert cols["sm_clock_mhz"][0] == 300.0 and math.isnan(cols["sm_clock_mhz"][1])
    assert cols["throttle_reasons"].tolist() == [-1, 1]
    assert cols["xid_last"].tolist() == [0, -1]
    assert cols["power_w"][0] == np.float32(8.969)


def check_dcgm_250(text: str) -> None:
    scrape = parse_dcgm(text)
    assert sorted(g.gpu for g in scrape.gpus) == [0, 1, 2, 3]
    assert all(g.hostname == "r6i3n0" and g.values["pcie_replay_total"] == 0 for g in scrape.gpus)
    gpu2 = scrape.by_uuid("GPU-a9079f15-493e-6c1c-c78c-73ec2b840cba")
    assert scrape.exposition.value("DCGM_FI_DEV_POWER_MGMT_LIMIT", gpu="2") == 300.0
    assert gpu2.values == {"pcie_replay_total": 0.0}
    _, cols = _roundtrip(dcgm_frames(text, _ctx(), TS_NS).frames[0])
    assert cols["pcie_replay_total"].tolist() == [0, 0, 0, 0]


def check_dcgm_317(text: str) -> None:
    scrape = parse_dcgm(text)
    assert "DCGM_FI_DEV_FB_FREE" not in scrape.exposition.helps
    assert scrape.exposition.types["DCGM_FI_DEV_FB_FREE"] == "gauge"
    gpu0 = scrape.by_uuid("GPU-265c9814-6156-355b-e589-ff2064894f16")
    assert gpu0.mig_instances == ["3", "4", "5", "6"]
    assert scrape.by_uuid("GPU-2d20791a-b4a6-ba59-97f1-e95b99fe5b49").mig_instances == ["3", "4"]
    assert scrape.exposition.value("DCGM_FI_DEV_FB_FREE", GPU_I_ID="5") == 6012.0
    assert dcgm_frames(text, _ctx(), TS_NS).frames == []  # FB_FREE maps to no column


def check_dcgm_490(text: str) -> None:
    scrape = parse_dcgm(text)
    assert [g.gpu for g in scrape.gpus] == [0, 1, 2]
    assert all(g.values == {"gpu_util_ratio": 0.0} for g in scrape.gpus)
    assert scrape.exposition.samples[0].labels["pod"] == "dcgmproftester2"
    assert "pod" not in scrape.exposition.samples[1].labels


def check_dcgm_512_masked(text: str) -> None:
    scrape = parse_dcgm(text)
    assert [g.uuid for g in scrape.gpus] == [f"GPU-********#gpu{i}" for i in range(4)]
    assert scrape.gpus[0].mig_instances == ["1", "2"]
    assert scrape.exposition.value("DCGM_FI_DEV_MEMORY_TEMP", gpu="2") == 38.0


def check_dcgm_512_prof(text: str) -> None:
    scrape = parse_dcgm(text)
    assert len(scrape.gpus) == 1
    parent = scrape.gpus[0]
    assert parent.uuid == "GPU-58e8f5ea-13cc-013a-d88f-2bcf5ae8bc77"
    assert parent.mig_instances == ["7", "8", "9"]
    record, cols = _roundtrip(dcgm_frames(text, _ctx(), TS_NS).frames[0])
    assert record["gpu_uuids"] == [parent.uuid] and record["n_samples"] == 1
    assert cols["gpu_util_ratio"].tolist() == [0.0]


def check_dcgm_736(text: str) -> None:
    scrape = parse_dcgm(text)
    assert {g.hostname for g in scrape.gpus} == {"dcgm-exporter-wwwjh"}
    a30 = scrape.by_uuid("GPU-63bc0b91-2265-1b94-831c-15c41fe92675")
    assert a30.mig_instances == ["3"] and a30.model == "NVIDIA A30"
    assert scrape.exposition.value("DCGM_FI_DEV_FB_FREE", gpu="2") == 2207.0
    assert scrape.exposition.value("DCGM_FI_DEV_ENC_UTIL", gpu="1") == 9.0


# -- NIC ------------------------------------------------------------------------------------
def _ethtool_check(
    count: int, values: dict[str, int], absent: tuple[str, ...] = ()
) -> Callable[[str], None]:
    def check(text: str) -> None:
        parsed = parse_ethtool(text)
        assert parsed.skipped == []
        assert len(parsed.counters) == count
        for name, value in values.items():
            assert parsed.counters[name] == value, name
        for name in absent:
            assert name not in parsed.counters
        record, cols = _roundtrip(ethtool_frames(text, _ctx(), TS_NS, port="mlx5_0/1").frames[0])
        assert record["port"] == "mlx5_0/1" and record["n_counters"] == count
        index = record["counter_names"].index(next(iter(values)))
        assert cols["counter_values"][index] == next(iter(values.values()))

    return check


def check_rdma_procfs_listing(text: str) -> None:
    scrape = parse_sysfs_listing(text)
    port = scrape.ports["mlx5_0/1"]
    assert port.fabric == "infiniband" and len(port.counters) == 46
    assert port.counters["local_ack_timeout_err"] == 131
    assert port.counters["port_xmit_data"] == 2880761508848
    assert "np_cnp_sent" not in port.counters and "rp_cnp_handled" not in port.counters
    assert next(iter(port.counters)) == "VL15_dropped"  # counters/* before hw_counters/*


def check_rdma_gpud(text: str) -> None:
    scrape = parse_sysfs_listing(text)
    assert len(scrape.ports) == 9
    assert scrape.ports["mlx5_bond_0/1"].fabric == "roce"
    assert scrape.ports["mlx5_0/1"].fabric == "infiniband"
    assert scrape.ports["mlx5_0/1"].counters["port_xmit_wait"] == 2489603687
    assert scrape.ports["mlx5_1/1"].counters["link_downed"] == 255
    assert scrape.ports["mlx5_0/1"].counters["rx_dct_connect"] == 422237
    out = rdma_frames(scrape, _ctx(), TS_NS)
    assert len(out.frames) == 9
    record, _ = _roundtrip(out.frames[-1])
    assert (record["port"], record["fabric"]) == ("mlx5_bond_0/1", "roce")


def check_rdma_ttar(text: str) -> None:
    scrape = parse_ttar(text)
    assert list(scrape.ports) == ["hfi1_0/1", "mlx4_0/1", "mlx4_0/2", "mlx5_0/1"]
    assert scrape.ports["hfi1_0/1"].counters["port_rcv_data"] == 345091702026
    assert scrape.ports["mlx4_0/2"].fabric == "infiniband"  # 'Lines: 2' value
    assert scrape.ports["mlx5_0/1"].counters["local_ack_timeout_err"] == 131
    assert scrape.skipped == []


def check_rdma_statistic(text: str) -> None:
    scrape = parse_rdma_statistic(text)
    assert scrape.skipped == []
    counters = scrape.ports["mlx5_1/1"].counters
    assert len(counters) == 31
    assert counters["rp_cnp_handled"] == 144 and counters["rnr_nak_retry_err"] == 1543
    assert counters["req_transport_retries_exceeded"] == 19
    assert counters["rx_icrc_encapsulated"] == 0  # last token, before a trailing space
    record, cols = _roundtrip(rdma_frames(scrape, _ctx(), TS_NS, default_fabric="roce").frames[0])
    assert record["fabric"] == "roce"
    assert cols["counter_values"][record["counter_names"].index("rp_cnp_handled")] == 144


# -- NCCL -----------------------------------------------------------------------------------
def check_inspector(text: str) -> None:
    dump = parse_inspector(text)
    assert len(dump.records) == 1 and dump.skipped == []
    rec = dump.records[0]
    assert (rec.comm_id, rec.rank, rec.n_ranks) == ("0x7f8c496ae9f661", 2, 8)
    assert (rec.coll, rec.coll_sn, rec.msg_size_bytes) == ("AllReduce", 1407, 17179869184)
    record, cols = _roundtrip(inspector_frames(text, _ctx(), TS_NS).frames[0])
    assert (record["op"], record["group_id"], record["group_size"]) == (
        "allreduce",
        "0x7f8c496ae9f661",
        8,
    )
    assert cols["duration_sum_ns"].tolist() == [61_974_000]
    assert cols["bytes_total"].tolist() == [17179869184]
    assert cols["step"].tolist() == [-1] and cols["first_start_ns"].tolist() == [-1]
    assert cols["detail_seq"].tolist() == [1407]


def check_inspector_verbose(text: str) -> None:
    rec = parse_inspector(text).records[0]
    assert (rec.coll, rec.rank, rec.timing_source) == ("ReduceScatter", 4, "kernel_gpu")
    assert rec.start_ts_us == 1752867229235059
    _, cols = _roundtrip(inspector_frames(text, _ctx(), TS_NS).frames[0])
    assert cols["first_start_ns"].tolist() == [1752867229235059000]
    assert cols["duration_max_ns"].tolist() == [41_057_000]


def check_inspector_prometheus(text: str) -> None:
    expo = parse(text)
    assert len(expo.samples) == 4 and expo.types == {} and expo.helps == {}
    assert expo.value("nccl_bus_bandwidth_gbs", collective="AllReduce") == 678.263
    assert expo.value("nccl_p2p_exec_time_microseconds", p2p_operation="Send") == 1154.87


def check_profiler_trace(text: str) -> None:
    trace = parse_trace(text)
    # bare hex (line 3), bare enum (line 5) and a typographic quote (line 11) are repaired
    assert trace.repaired_lines == [3, 5, 11]
    assert [(s.line_no, s.text[:3]) for s in trace.skipped] == [(43, "...")]
    launch = trace.events[1]
    assert launch["args"]["Stream"] == "0x5020000567d0"
    coll = next(e for e in trace.events if e["cat"] == "COLL")
    assert coll["args"]["CommHash"] == 1493613951195738943
    assert coll["args"]["Count"] == 262144 and coll["args"]["Algorithm"] == "RING"
    assert trace.events[9]["name"] == "RecvWait"
    # the example is cut: begin id 0 and end id 17 never pair
    assert collective_spans(trace) == []


def _nccl_tests_check(
    rows: int, avg: float | None, last: tuple[int, float], skipped: list[int]
) -> Callable[[str], None]:
    def check(text: str) -> None:
        log = parse_nccl_tests(text)
        assert len(log.rows) == rows
        assert log.avg_busbw_gbs == avg
        assert (log.rows[-1].size_bytes, log.rows[-1].ip_busbw_gbs) == last
        assert [s.line_no for s in log.skipped] == skipped

    return check


CHECKS: dict[str, Callable[[str], None]] = {
    "vllm/vllm-v0-metrics-opt125m.datadog-fixture.txt": check_vllm_v0,
    "vllm/vllm-v1-issue-318-qwen2.5-coder-fragment.prom": check_vllm_318,
    "vllm/vllm-v1-0.10.0-issue-617-glm45-fragment-a.prom": check_vllm_617a,
    "vllm/vllm-v1-0.10.0-issue-617-glm45-fragment-b.prom": check_vllm_617b,
    "vllm/vllm-v1-0.10.0-issue-617-glm45-fragment-c.prom": check_vllm_617c,
    "vllm/vllm-v1-docs-usage-metrics.doc-example-fragment.prom": check_vllm_docs,
    "vllm/vllm-v1-dp-pr-22227-qwen3-8b-engine1-fragment.prom": check_vllm_22227,
    "tgi/tgi-metrics.datadog-fixture.txt": check_tgi,
    "dcgm-exporter/datadog-dcgm-fixture-metrics.txt": check_dcgm_datadog,
    "dcgm-exporter/issue-250-v100-fragment.prom": check_dcgm_250,
    "dcgm-exporter/issue-317-a30-mig-fragment.prom": check_dcgm_317,
    "dcgm-exporter/issue-490-h100-fragment.prom": check_dcgm_490,
    "dcgm-exporter/issue-512-h100-mig-masked-fragment.prom": check_dcgm_512_masked,
    "dcgm-exporter/issue-512-h100-mig-prof-fragment.prom": check_dcgm_512_prof,
    "dcgm-exporter/issue-736-ada-a30mig-lowercase-hostname-fragment.prom": check_dcgm_736,
    "ethtool-mlx5/byteps-issue-179-mlx5-ethtool-grep-prio-before.txt": _ethtool_check(
        32, {"rx_prio0_bytes": 88034564921216, "tx_prio3_packets": 0}
    ),
    "ethtool-mlx5/ethq-tests-mlx5_core-cx4-fw14.23-ubuntu18.04-kernel4.15.txt": _ethtool_check(
        751,
        {"rx_bytes": 2195783498134, "outbound_pci_stalled_wr": 0, "tx15_xmit_more": 5530},
        absent=("tx_pause_storm_warning_events",),
    ),
    "ethtool-mlx5/ethq-tests-mlx5_core-cx4-ubuntu16.04-initial.txt": _ethtool_check(
        309, {"rx_packets": 5487361, "tx15_0_nop": 7392}
    ),
    "ethtool-mlx5/netdev-ml-2024-06-19-mlx5-xdp-kernel5.15-filtered.txt": _ethtool_check(
        101, {"rx_discards_phy": 58591428329, "tx_global_pause_duration": 771103810}
    ),
    "ethtool-mlx5/netdev-ml-2024-06-19-mlx5-xdp-kernel6.5-filtered.txt": _ethtool_check(
        108, {"rx_discards_phy": 441063206498, "tx_global_pause_duration": 5961284324}
    ),
    "rdma-hw-counters/procfs-fixtures-mlx5_0-grep-listing.txt": check_rdma_procfs_listing,
    "rdma-hw-counters/gpud-testdata-sys-class-infiniband-h100-grep-listing.txt": check_rdma_gpud,
    "rdma-hw-counters/procfs-fixtures-sys-class-infiniband.ttar": check_rdma_ttar,
    "rdma-hw-counters/sonic-issue-21891-rdma-statistic-sender.txt": check_rdma_statistic,
    "nccl/nccl-inspector-record.doc-example.json": check_inspector,
    "nccl/nccl-inspector-record-verbose.doc-example.json": check_inspector_verbose,
    "nccl/nccl-inspector-prometheus.doc-example.prom": check_inspector_prometheus,
    "nccl/nccl-profiler-example-plugin-trace.doc-example.json.txt": check_profiler_trace,
    "nccl/nccl-tests-all_reduce_perf-2x-p4de-srun-prefixed.awsome.log": _nccl_tests_check(
        29, None, (2147483648, 78.33), []
    ),
    "nccl/nccl-tests-all_reduce_perf-2x-p5-srun-prefixed.awsome.log": _nccl_tests_check(
        32, None, (17179869184, 487.26), []
    ),
    "nccl/nccl-tests-all_reduce_perf-mpirun-prefixed-awsbatch.awsome.log": _nccl_tests_check(
        32, 156.742, (17179869184, 483.35), []
    ),
    "nccl/nccl-tests-nccl_allgather.superbench.log": _nccl_tests_check(
        34, 58.2651, (8589934592, 230.07), [16]
    ),
    "nccl/nccl-tests-nccl_allreduce.superbench.log": _nccl_tests_check(
        34, 68.4048, (8589934592, 235.03), [16]
    ),
    "nccl/nccl-tests-nccl_alltoall.superbench.log": _nccl_tests_check(
        34, 58.6481, (8589934592, 226.16), []
    ),
    "nccl/nccl-tests-nccl_broadcast.superbench.log": _nccl_tests_check(
        34, 64.8653, (8589934592, 234.70), [16]
    ),
    "nccl/nccl-tests-nccl_reduce.superbench.log": _nccl_tests_check(
        34, 65.018, (8589934592, 228.83), [16]
    ),
    "nccl/nccl-tests-nccl_reducescatter.superbench.log": _nccl_tests_check(
        34, 60.168, (8589934592, 231.25), [16]
    ),
}


def test_capture_folder_is_present() -> None:
    assert len(CAPTURES) >= len(CHECKS), f"captures missing under {FORMATS_DIR}"


@pytest.mark.parametrize("rel", CAPTURES)
def test_capture_parses_to_the_values_in_the_file(rel: str) -> None:
    check = CHECKS.get(rel)
    assert check is not None, f"{rel} is new: add its expected values to CHECKS"
    check(_text(rel))


# -- malformed input --------------------------------------------------------------------------
MALFORMED_PROM = (
    "# HELP up fine\n"
    "up 1\n"
    'cut{engine="0",model\n'  # cut off inside the labels
    "\x00\x01garbage line\n"
    'bad_value{a="b"} twelve\n'
    "up 2\n"  # duplicate series
    "under_score 1_000\n"
    'ok{a="x\\"y",b="1}2"} -Inf 1700000000000'
)


def test_malformed_prometheus_lines_are_skipped_with_line_and_reason() -> None:
    expo = parse(MALFORMED_PROM)
    reasons = {s.line_no: s.reason for s in expo.skipped}
    assert reasons == {
        3: "malformed or cut-off sample line",
        4: "malformed or cut-off sample line",
        5: "value 'twelve' is not a number",
        6: "duplicate series; first at line 2",
        7: "value '1_000' is not a number",
    }
    assert expo.value("up") == 1.0
    last = expo.samples[-1]
    assert last.labels == {"a": 'x"y', "b": "1}2"} and last.value == -math.inf
    assert last.timestamp_ms == 1700000000000


def test_strict_prometheus_parse_raises_parse_error_naming_the_line() -> None:
    with pytest.raises(ParseError) as err:
        parse(MALFORMED_PROM, strict=True)
    assert err.value.line_no == 3 and "cut-off" in err.value.reason
    assert "line 3" in str(err.value)


def test_vllm_duplicate_series_keeps_the_first_value() -> None:
    text = 'vllm:num_requests_running{engine="1"} 3\nvllm:num_requests_running{engine="1"} 9\n'
    scrape = parse_vllm(text)
    assert scrape.engines["1"].num_running == 3
    assert [s.line_no for s in scrape.skipped] == [2]


def test_kv_capacity_is_zero_when_cache_config_does_not_say() -> None:
    text = (
        'vllm:cache_config_info{block_size="16",num_gpu_blocks="None"} 1.0\n'
        'vllm:num_requests_waiting{model_name="m"} 4\n'
        'vllm:cache_config_info{engine="3",block_size="16",num_gpu_blocks="100"} 1.0\n'
    )
    scrape = parse_vllm(text)
    assert scrape.engines[""].kv_capacity_tokens == 0
    assert "3" not in scrape.engines  # config alone is no engine sample
    record, _ = _roundtrip(vllm_frames(text, _ctx(), TS_NS).frames[0])
    assert record["kv_capacity_tokens"] == 0
    shared = 'vllm:cache_config_info{block_size="16",num_gpu_blocks="100"} 1.0\n' + (
        'vllm:num_requests_waiting{engine="0"} 1\nvllm:num_requests_waiting{engine="1"} 2\n'
    )
    assert [e.kv_capacity_tokens for e in parse_vllm(shared).engines.values()] == [1600, 1600]


def test_configured_max_num_seqs_fills_the_batch_capacity_vllm_does_not_export() -> None:
    text = 'vllm:num_requests_running{model_name="m"} 3\n'
    ctx = FrameContext("llama70b-a", "node07", replica="llama70b-a-r0", batch_capacity=256)
    _, cols = _roundtrip(vllm_frames(text, ctx, TS_NS).frames[0])
    assert cols["batch_capacity"].tolist() == [256]
    _, cols = _roundtrip(vllm_frames(text, _ctx(), TS_NS).frames[0])
    assert cols["batch_capacity"].tolist() == [-1]


def test_two_engines_give_two_frames_named_per_engine() -> None:
    text = (
        'vllm:num_requests_waiting{engine="1",model_name="m"} 4\n'
        'vllm:num_requests_waiting{engine="0",model_name="m"} 7\n'
        'vllm:kv_cache_usage_perc{engine="0",model_name="m"} 0.5\n'
        'vllm:gpu_cache_usage_perc{engine="0",model_name="m"} 0.25\n'
    )
    out = vllm_frames(text, _ctx(), TS_NS)
    decoded = [_roundtrip(f) for f in out.frames]
    assert [r["replica"] for r, _ in decoded] == ["llama70b-a-r0/engine0", "llama70b-a-r0/engine1"]
    assert [c["num_waiting"].tolist() for _, c in decoded] == [[7], [4]]
    assert decoded[0][1]["kv_cache_usage_ratio"].tolist() == [0.5]  # V1 name wins
    assert [r["frame_seq"] for r, _ in decoded] == [10, 11]


def test_mig_instances_fold_into_the_parent_gpu_and_device_value_wins() -> None:
    base = 'UUID="GPU-1",gpu="0",Hostname="h"'
    text = (
        f'DCGM_FI_PROF_GR_ENGINE_ACTIVE{{{base},GPU_I_ID="1"}} 0.2\n'
        f'DCGM_FI_PROF_GR_ENGINE_ACTIVE{{{base},GPU_I_ID="2"}} 0.7\n'
        f'DCGM_FI_DEV_SM_CLOCK{{{base},GPU_I_ID="2"}} 1400\n'
        f"DCGM_FI_DEV_SM_CLOCK{{{base}}} 1980\n"
        f"DCGM_FI_DEV_GPU_UTIL{{{base}}} 55\n"
    )
    gpu = parse_dcgm(text).by_uuid("GPU-1")
    assert gpu.mig_instances == ["1", "2"]
    assert gpu.values["gr_engine_active_ratio"] == 0.7
    assert gpu.values["sm_clock_mhz"] == 1980.0
    assert gpu.get("gpu_util_ratio") == 0.55


def test_garbage_ethtool_lines_are_skipped_and_strict_raises() -> None:
    text = (
        "$ ethtool -S eth2\nNIC statistics:\n     rx_bytes: 10\n     rx_bytes: 11\n"
        "     tx_bytes: -3\n     weird line without colon\n     big: 18446744073709551616\n"
    )
    parsed = parse_ethtool(text)
    assert parsed.counters == {"rx_bytes": 10}
    assert [s.line_no for s in parsed.skipped] == [4, 5, 6, 7]
    assert "duplicate counter rx_bytes; first at line 3" in parsed.skipped[0].reason
    with pytest.raises(ParseError) as err:
        parse_ethtool(text, strict=True)
    assert err.value.line_no == 4


def test_unreadable_rdma_counters_are_skipped() -> None:
    listing = (
        "/sys/class/infiniband/mlx5_2/ports/1/hw_counters/np_cnp_sent:N/A (no PMA)\n"
        "/sys/class/infiniband/mlx5_2/ports/1/hw_counters/rp_cnp_handled:77\n"
        "no separator here\n"
        "/sys/class/infiniband/mlx5_2/ports/1/link_layer:Ethernet\n"
    )
    scrape = parse_sysfs_listing(listing)
    assert scrape.ports["mlx5_2/1"].counters == {"rp_cnp_handled": 77}
    assert scrape.ports["mlx5_2/1"].fabric == "roce"
    assert [s.line_no for s in scrape.skipped] == [1, 3]
    cut = "Path: x/mlx5_0/ports/1/hw_counters/out_of_sequence\nLines: 3\n1\n"
    assert "cut off" in parse_ttar(cut).skipped[0].reason
    stat = "link mlx5_1/1 out_of_sequence 5 np_cnp_sent\n"
    bad = parse_rdma_statistic(stat)
    assert bad.ports["mlx5_1/1"].counters == {"out_of_sequence": 5}
    assert "odd number" in bad.skipped[0].reason


def test_invalid_inspector_json_is_skipped_and_reading_resumes() -> None:
    good = _text("nccl/nccl-inspector-record.doc-example.json")
    text = '{"header": {"id": "0x1", "rank": 0\n' + good + "\n[1, 2]\n"
    dump = parse_inspector(text)
    assert len(dump.records) == 1 and dump.records[0].coll_sn == 1407
    assert [s.line_no for s in dump.skipped] == [1, 27]
    assert "not valid JSON" in dump.skipped[0].reason
    assert "not a JSON object" in dump.skipped[1].reason


def test_nan_gauge_in_dcgm_does_not_overwrite_and_empty_text_gives_no_frames() -> None:
    assert dcgm_frames("", _ctx(), TS_NS).frames == []
    assert vllm_frames("", _ctx(), TS_NS).frames == []
    text = 'DCGM_FI_DEV_POWER_USAGE{UUID="GPU-1",gpu="0"} NaN\n'
    assert parse_dcgm(text).gpus[0].values == {}


# -- rates ------------------------------------------------------------------------------------
def test_reset_gives_rate_since_reset_or_nothing() -> None:
    ts = [0, 2_000_000_000, 4_000_000_000]
    since = counter_rates(ts, [1000, 3000, 400])
    assert since.rates_per_s == [1000.0, 200.0] and since.resets == [False, True]
    dropped = counter_rates(ts, [1000, 3000, 400], on_reset="drop")
    assert dropped.rates_per_s[0] == 1000.0 and math.isnan(dropped.rates_per_s[1])


def test_wraps_at_32_and_64_bits_are_detected() -> None:
    ts = [0, 1_000_000_000, 2_000_000_000]
    r32 = counter_rates(ts, [2**32 - 100, 50, 250])
    assert r32.rates_per_s == [150.0, 200.0] and r32.wraps == [True, False]
    r64 = counter_rates(ts[:2], [2**64 - 1, 9])
    assert r64.rates_per_s == [10.0] and r64.wraps == [True]
    stored = counter_rates(ts[:2], [-1, 9], signed_int64=True)  # uint64 kept in int64
    assert stored.rates_per_s == [10.0]
    # a drop from the middle of the 32-bit range is a reset, not a wrap
    mid = counter_rates(ts[:2], [2**31, 10])
    assert mid.resets == [True] and mid.wraps == [False]


def test_non_increasing_time_gives_nan_not_a_crash() -> None:
    r = counter_rates([5, 5, 3], [1, 2, 3])
    assert all(math.isnan(x) for x in r.rates_per_s) and r.bad_time == [True, True]


_steps = st.lists(
    st.tuples(st.integers(1, 10_000_000_000), st.integers(0, 2**30 - 1)), min_size=1, max_size=30
)


@given(start=st.integers(0, 2**32 - 1), steps=_steps, bits=st.sampled_from([32, 64]))
def test_wrapping_counter_rates_equal_true_increments(
    start: int, steps: list[tuple[int, int]], bits: int
) -> None:
    # increments below 2^30 <= 2^bits / 4 must be recovered exactly through any wrap
    ts, values, value, t = [0], [start % 2**bits], start, 0
    for dt, inc in steps:
        t += dt
        value += inc
        ts.append(t)
        values.append(value % 2**bits)
    r = counter_rates(ts, values, width_bits=bits)
    expected = [inc / (dt / 1e9) for dt, inc in steps]
    assert r.rates_per_s == pytest.approx(expected, rel=1e-12)
    assert not any(r.resets)


@given(
    values=st.lists(st.integers(0, 2**64 - 1), min_size=2, max_size=30),
    on_reset=st.sampled_from(["since_reset", "drop"]),
)
def test_rates_are_never_negative(values: list[int], on_reset: str) -> None:
    ts = [i * 1_000_000_000 for i in range(len(values))]
    r = counter_rates(ts, values, on_reset=on_reset)  # type: ignore[arg-type]
    assert len(r.rates_per_s) == len(values) - 1
    assert all(x >= 0 or math.isnan(x) for x in r.rates_per_s)
    for wrapped, reset in zip(r.wraps, r.resets, strict=True):
        assert not (wrapped and reset)


@given(
    prev=st.integers(1, 3 * 2**30 - 1),
    cur_fraction=st.floats(0, 1, exclude_max=True),
)
def test_drop_from_lower_three_quarters_of_32_bits_is_a_reset(
    prev: int, cur_fraction: float
) -> None:
    cur = int(prev * cur_fraction)
    assume(cur < prev)
    tracker = RateTracker(width_bits=32)
    tracker.update(0, prev)
    rate = tracker.update(1_000_000_000, cur)
    assert tracker.last_reset and rate == float(cur)
