"""NVIDIA dcgm-exporter ``GET /metrics`` -> GpuSampleFrame, one row per GPU per scrape.

=====================  ==============================================================
frame column           DCGM field (dcgm-exporter metric name)
=====================  ==============================================================
sm_clock_mhz           ``DCGM_FI_DEV_SM_CLOCK``
sm_clock_max_mhz       ``DCGM_FI_DEV_MAX_SM_CLOCK``
throttle_reasons       ``DCGM_FI_DEV_CLOCKS_EVENT_REASONS`` (newer name) or
                       ``DCGM_FI_DEV_CLOCK_THROTTLE_REASONS`` (NVML bitmask)
power_w                ``DCGM_FI_DEV_POWER_USAGE``
gpu_util_ratio         ``DCGM_FI_DEV_GPU_UTIL`` / 100 (percent -> ratio), else
                       ``DCGM_FI_PROF_GR_ENGINE_ACTIVE`` (already a ratio)
pcie_tx_bytes_per_s    ``DCGM_FI_PROF_PCIE_TX_BYTES`` (DCGM reports it as a rate in
                       bytes/s although dcgm-exporter types it ``counter``)
pcie_rx_bytes_per_s    ``DCGM_FI_PROF_PCIE_RX_BYTES`` (same)
pcie_link_gen          ``DCGM_FI_DEV_PCIE_LINK_GEN``
pcie_link_width        ``DCGM_FI_DEV_PCIE_LINK_WIDTH``
pcie_replay_total      ``DCGM_FI_DEV_PCIE_REPLAY_COUNTER``
xid_last               ``DCGM_FI_DEV_XID_ERRORS`` (last XID; 0 = none)
=====================  ==============================================================

Missing fields: ``-1`` in int columns (so ``xid_last = -1`` means "not reported", unlike
0 = "no XID"), ``NaN`` in float columns.

GPU identity: a GPU is the triple (``UUID``, ``gpu``, ``Hostname``/``hostname``) of its
labels; ``gpu_uuids`` holds the ``UUID`` label. Masked exports print the same UUID for
every GPU (``GPU-********``): a UUID shared by several GPUs becomes ``<UUID>#gpu<i>``; a
sample with a ``gpu`` label but no UUID becomes ``<hostname>/gpu<i>``. A sample with
neither label (dummy values, aggregate exports) cannot be attributed and is recorded in
``skipped`` with its line number.

MIG: a sample with ``GPU_I_ID`` belongs to a GPU instance of the parent GPU named by its
``UUID``/``gpu`` labels, and is attributed to that parent. When the parent itself reports a
field (a sample without ``GPU_I_ID``) that value wins; otherwise the parent gets the
*maximum* over its instances. That is exact for device-wide fields that every instance
repeats (clocks, power, link, replays, XID) and, for per-instance activity
(``GR_ENGINE_ACTIVE``), is the busiest instance, not the whole GPU's utilisation.
The instance ids seen are kept in :attr:`GpuState.mig_instances`.

Timestamps in the exposition are ignored: every row carries the scrape time.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from producers.adapters.common import (
    MISSING_FLOAT,
    MISSING_INT,
    AdapterOutput,
    Frame,
    FrameContext,
    SkippedLine,
)
from producers.adapters.prometheus_text import Exposition, Sample, parse
from schemas.columns import pack

# metric -> (GpuState attribute, scale)
_FIELDS: dict[str, tuple[str, float]] = {
    "DCGM_FI_DEV_SM_CLOCK": ("sm_clock_mhz", 1.0),
    "DCGM_FI_DEV_MAX_SM_CLOCK": ("sm_clock_max_mhz", 1.0),
    "DCGM_FI_DEV_CLOCK_THROTTLE_REASONS": ("throttle_reasons", 1.0),
    "DCGM_FI_DEV_CLOCKS_EVENT_REASONS": ("throttle_reasons", 1.0),
    "DCGM_FI_DEV_POWER_USAGE": ("power_w", 1.0),
    "DCGM_FI_DEV_GPU_UTIL": ("gpu_util_ratio", 0.01),
    "DCGM_FI_PROF_GR_ENGINE_ACTIVE": ("gr_engine_active_ratio", 1.0),
    "DCGM_FI_PROF_PCIE_TX_BYTES": ("pcie_tx_bytes_per_s", 1.0),
    "DCGM_FI_PROF_PCIE_RX_BYTES": ("pcie_rx_bytes_per_s", 1.0),
    "DCGM_FI_DEV_PCIE_LINK_GEN": ("pcie_link_gen", 1.0),
    "DCGM_FI_DEV_PCIE_LINK_WIDTH": ("pcie_link_width", 1.0),
    "DCGM_FI_DEV_PCIE_REPLAY_COUNTER": ("pcie_replay_total", 1.0),
    "DCGM_FI_DEV_XID_ERRORS": ("xid_last", 1.0),
}
_INT_COLUMNS = ("throttle_reasons", "pcie_link_gen", "pcie_link_width", "pcie_replay_total")
_FLOAT_COLUMNS = ("sm_clock_mhz", "sm_clock_max_mhz", "power_w", "gpu_util_ratio")
_F64_COLUMNS = ("pcie_tx_bytes_per_s", "pcie_rx_bytes_per_s")


@dataclass
class GpuState:
    """One physical GPU's fields at one scrape; ``values`` maps attribute -> value."""

    uuid: str
    gpu: int
    hostname: str
    model: str = ""
    mig_instances: list[str] = field(default_factory=list)
    values: dict[str, float] = field(default_factory=dict)
    _from_device: dict[str, bool] = field(default_factory=dict, repr=False)

    def get(self, attr: str) -> float | None:
        """The value of ``attr`` (GR_ENGINE_ACTIVE stands in for a missing GPU_UTIL)."""
        if attr == "gpu_util_ratio" and attr not in self.values:
            return self.values.get("gr_engine_active_ratio")
        return self.values.get(attr)

    def offer(self, attr: str, value: float, device_level: bool) -> None:
        old_device = self._from_device.get(attr)
        if old_device is None or (device_level and not old_device):
            self.values[attr] = value
            self._from_device[attr] = device_level
        elif not device_level and not old_device:
            self.values[attr] = max(self.values[attr], value)


@dataclass
class DcgmScrape:
    """GPUs of one scrape in first-seen order, with skipped and unattributed lines."""

    gpus: list[GpuState] = field(default_factory=list)
    skipped: list[SkippedLine] = field(default_factory=list)
    exposition: Exposition = field(default_factory=Exposition)

    def by_uuid(self, uuid: str) -> GpuState:
        for gpu in self.gpus:
            if gpu.uuid == uuid:
                return gpu
        raise KeyError(f"no GPU {uuid!r} in this scrape; have {[g.uuid for g in self.gpus]}")


def _gpu_index(sample: Sample) -> int:
    raw = sample.labels.get("gpu", "")
    return int(raw) if raw.isdigit() else MISSING_INT


def from_exposition(expo: Exposition) -> DcgmScrape:
    """GPU states from parsed dcgm-exporter samples (see the module docstring)."""
    scrape = DcgmScrape(skipped=list(expo.skipped), exposition=expo)
    states: dict[tuple[str, int, str], GpuState] = {}
    for sample in expo.samples:
        if not sample.name.startswith("DCGM_FI_"):
            continue
        uuid, gpu = sample.labels.get("UUID", ""), _gpu_index(sample)
        if not uuid and gpu == MISSING_INT:
            if sample.name in _FIELDS:
                scrape.skipped.append(
                    SkippedLine(
                        sample.line_no,
                        "no UUID or gpu label: cannot attribute to a GPU",
                        sample.name,
                    )
                )
            continue
        host = sample.label("Hostname", "hostname")
        key = (uuid, gpu, host)
        state = states.get(key)
        if state is None:
            state = GpuState(uuid, gpu, host, model=sample.labels.get("modelName", ""))
            states[key] = state
            scrape.gpus.append(state)
        instance = sample.labels.get("GPU_I_ID", "")
        if instance and instance not in state.mig_instances:
            state.mig_instances.append(instance)
        if sample.name in _FIELDS and not math.isnan(sample.value):
            attr, scale = _FIELDS[sample.name]
            state.offer(attr, sample.value * scale, device_level=not instance)
    _name_gpus(scrape.gpus)
    return scrape


def _name_gpus(gpus: list[GpuState]) -> None:
    counts: dict[str, int] = {}
    for gpu in gpus:
        counts[gpu.uuid] = counts.get(gpu.uuid, 0) + 1
    for gpu in gpus:
        if not gpu.uuid:
            gpu.uuid = f"{gpu.hostname or 'node'}/gpu{gpu.gpu}"
        elif counts[gpu.uuid] > 1:
            gpu.uuid = f"{gpu.uuid}#gpu{gpu.gpu}"


def parse_dcgm(text: str, strict: bool = False) -> DcgmScrape:
    """Parse a dcgm-exporter /metrics body (tolerant unless ``strict``)."""
    return from_exposition(parse(text, strict=strict, source="dcgm-exporter /metrics"))


def _int(value: float | None) -> int:
    return MISSING_INT if value is None or not math.isfinite(value) else round(value)


def _float(value: float | None) -> float:
    return MISSING_FLOAT if value is None else value


def gpu_frame(scrape: DcgmScrape, ctx: FrameContext, ts_ns: int) -> Frame | None:
    """One GpuSampleFrame with a row per GPU that reports a mapped field; None if none do."""
    gpus = [g for g in scrape.gpus if any(a in g.values for a, _ in _FIELDS.values())]
    if not gpus:
        return None
    columns: dict[str, list[float] | list[int]] = {
        "ts_ns": [ts_ns] * len(gpus),
        "gpu_index": list(range(len(gpus))),
    }
    for attr in _FLOAT_COLUMNS + _F64_COLUMNS:
        columns[attr] = [_float(g.get(attr)) for g in gpus]
    for attr in _INT_COLUMNS:
        columns[attr] = [_int(g.get(attr)) for g in gpus]
    columns["xid_last"] = [_int(g.get("xid_last")) for g in gpus]
    record = pack(
        "GpuSampleFrame",
        columns,
        schema_version=1,
        source="gpu",
        deployment=ctx.deployment,
        node=ctx.node,
        clock_id=ctx.clock_id,
        frame_seq=ctx.next_seq(),
        gpu_uuids=[g.uuid for g in gpus],
        n_samples=len(gpus),
    )
    return Frame("GpuSampleFrame", "gpu", record)


def dcgm_frames(text: str, ctx: FrameContext, ts_ns: int) -> AdapterOutput:
    """The GpuSampleFrame of one scrape taken at ``ts_ns`` (no frame when no GPU fields)."""
    scrape = parse_dcgm(text)
    frame = gpu_frame(scrape, ctx, ts_ns)
    return AdapterOutput([frame] if frame is not None else [], scrape.skipped)
