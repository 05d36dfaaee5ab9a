"""Scenario: the cluster, its deployments, the workload and the injected faults, from TOML.

A scenario file is plain TOML (see ``docs/simulator.md`` for every key and its default)::

    name = "tp-straggler"
    duration_s = 30.0
    [cluster]
    gpus_per_node = 4
    [[deployment]]
    name = "llama70b"
    count = 2          # llama70b-a, llama70b-b
    tp = 4
    pp = 2
    [workload]
    arrivals = "poisson"
    rate_per_s = 6.0
    [[fault]]
    kind = "gpu-throttle"
    target = "llama70b-a/rank5"
    onset_s = 4.37
    severity = 0.15

Unknown keys are errors (a typo must not silently fall back to a default). Limits: every node
belongs to exactly one deployment (a deployment's GPU count is a multiple of
``gpus_per_node``, or the deployment fits in one node); one replica per deployment.
"""

from __future__ import annotations

import dataclasses
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

SCENARIO_DIR = Path(__file__).resolve().parent / "scenarios"
DEFAULT_EPOCH_NS = 1_790_000_000_000_000_000
# The simulator's step: causes fire inside it (at 10 ms ticks), its true state is computed
# per chunk; telemetry frames cover one or more chunks (cluster.frame_interval_ms).
SIM_CHUNK_MS = 100


class ScenarioError(ValueError):
    """A scenario file or name is invalid; the message says which key and what to do."""


@dataclass(frozen=True)
class ClusterSpec:
    """Hardware and fabric shared by all deployments."""

    gpus_per_node: int = 4
    fabric: str = "roce"  # roce | infiniband
    fabric_name: str = ""  # default: roce0 / ib0
    link_gbps: float = 400.0  # east-west port line rate
    ns_link_gbps: float = 25.0  # north-south (DPU) port line rate
    nodes_per_leaf: int = 4
    dpu: bool = True
    gpus_behind_dpu: tuple[int, ...] = ()
    nic_shares_pcie_switch: bool = True
    pcie_gen: int = 5
    pcie_width: int = 16
    nvlink_gbytes_per_s: float = 450.0
    gpu_max_clock_mhz: float = 1980.0
    gpu_spread_ratio: float = 0.02  # lasting per-GPU speed spread (std), not a fault
    step_jitter_ratio: float = 0.01  # per-step per-rank compute noise (std)
    fabric_background_util: float = 0.08  # mean background load of east-west ports
    sample_loss_ratio: float = 0.0
    clock_offset_ns: float = 1500.0  # std of residual PTP offset per clock
    clock_drift_ppb: float = 20.0  # std of residual drift per clock
    clock_jitter_ns: float = 150.0  # std of per-timestamp jitter
    path_asymmetry_ns: float = 400.0  # std of PTP path asymmetry (offset error = half)
    counter_resets: tuple[tuple[str, str, float], ...] = ()  # (node, port, at_s)
    counter_wrap_bits: int = 64  # 32: counters wrap at 2**32 (legacy PMA counters)
    collective_detail_every: int = 16  # sample one collective's detail every N steps
    # every source sends one frame per period, covering it (a multiple of SIM_CHUNK_MS)
    frame_interval_ms: int = 200


@dataclass(frozen=True)
class ModelSpec:
    """Cost model of one forward pass on a nominal GPU of the replica (whole replica)."""

    layers: int = 80
    hidden: int = 8192
    step_base_us: float = 14000.0  # weights read per decode step
    decode_us_per_seq: float = 45.0
    prefill_us_per_token: float = 70.0
    attn_ns_per_kv_token: float = 40.0
    n_experts: int = 0  # >0: MoE (expert parallel over the TP ranks)
    top_k: int = 2
    moe_layers: int = 0
    expert_us_per_token: float = 6.0  # expert FFN per routed token per MoE layer set
    kv_offload_bytes_per_token: float = 0.0  # baseline KV offload traffic per decoded token


@dataclass(frozen=True)
class DeploymentSpec:
    """One model replica group: parallelism, engine limits and its cost model."""

    name: str
    tp: int = 4
    pp: int = 2
    max_num_seqs: int = 64
    kv_capacity_tokens: int = 64_000
    kv_block_tokens: int = 16
    max_batched_tokens: int = 8192
    batching: str = "continuous"  # continuous | static
    stage_layer_ratios: tuple[float, ...] = ()  # empty: equal partition
    model: ModelSpec = field(default_factory=ModelSpec)

    @property
    def world_size(self) -> int:
        return self.tp * self.pp


@dataclass(frozen=True)
class WorkloadSpec:
    """Client traffic: arrival process, request lengths, routing and host pre-processing."""

    arrivals: str = "poisson"  # poisson | bursty | azure
    rate_per_s: float = 10.0  # total over all replicas (poisson, bursty mean)
    prompt_tokens_median: float = 700.0
    prompt_tokens_sigma: float = 0.9
    output_tokens_median: float = 120.0
    output_tokens_sigma: float = 0.8
    max_prompt_tokens: int = 16000
    max_output_tokens: int = 2000
    burst_on_s: float = 0.5  # bursty: on/off MMPP
    burst_off_s: float = 2.0
    burst_rate_multiplier: float = 4.0
    trace: str = "conv"  # azure: code | conv
    trace_dir: str = ""  # default <repo>/../shared/data/azure-llm-2023
    time_compression: float = 1.0  # azure: trace seconds per simulated second
    trace_offset_s: float = 0.0  # azure: start this far into the trace
    router_weights: tuple[tuple[str, float], ...] = ()  # replica -> weight (default 1)
    connections_per_replica: int = 8
    request_overhead_bytes: int = 1500
    bytes_per_prompt_token: float = 4.0
    bytes_per_output_token: float = 180.0  # streamed SSE chunk per token
    tokenizer_workers: int = 2
    tokenize_us_per_token: float = 8.0  # parsing, chat template, tokenization
    tokenize_base_us: float = 1500.0
    slo_ttft_ms: float = 2000.0


@dataclass(frozen=True)
class FaultSpec:
    """One injected cause (or harmless look-alike): kind, target entity, window, severity."""

    kind: str
    target: str = ""
    onset_s: float = 0.0
    end_s: float = 0.0  # 0: until the end of the run
    severity: float = 0.0  # 0: the kind's reference severity
    params: tuple[tuple[str, Any], ...] = ()

    def param(self, name: str, default: Any) -> Any:
        return dict(self.params).get(name, default)


@dataclass(frozen=True)
class Scenario:
    """A whole simulated world, immutable; ``dataclasses.replace`` derives variants."""

    name: str
    description: str = ""
    duration_s: float = 30.0
    epoch_ns: int = DEFAULT_EPOCH_NS
    cluster: ClusterSpec = field(default_factory=ClusterSpec)
    deployments: tuple[DeploymentSpec, ...] = ()
    workload: WorkloadSpec = field(default_factory=WorkloadSpec)
    faults: tuple[FaultSpec, ...] = ()
    source: str = ""  # file it came from

    def deployment(self, name: str) -> DeploymentSpec:
        for dep in self.deployments:
            if dep.name == name:
                return dep
        raise ScenarioError(
            f"scenario {self.name}: no deployment {name!r}; "
            f"have {[d.name for d in self.deployments]}"
        )


# --------------------------------------------------------------------------------------
# loading


def bundled_scenarios() -> list[str]:
    """Names of the scenarios shipped in producers/sim/scenarios/."""
    return sorted(p.stem for p in SCENARIO_DIR.glob("*.toml"))


def load_scenario(name_or_path: str | Path) -> Scenario:
    """Load a bundled scenario by name, or a TOML file by path."""
    text_path = Path(name_or_path)
    if text_path.suffix == ".toml" or text_path.exists():
        path = text_path
    else:
        path = SCENARIO_DIR / f"{name_or_path}.toml"
        if not path.exists():
            raise ScenarioError(
                f"no bundled scenario {str(name_or_path)!r} and no such file; "
                f"bundled: {', '.join(bundled_scenarios())} (`skewscope scenarios` lists them)"
            )
    try:
        doc = tomllib.loads(path.read_text())
    except OSError as exc:
        raise ScenarioError(f"scenario file {path}: {exc}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ScenarioError(f"scenario file {path}: not valid TOML: {exc}") from exc
    return scenario_from_dict(doc, source=str(path))


def scenario_from_dict(doc: dict[str, Any], source: str = "<dict>") -> Scenario:
    """Build and validate a Scenario from a parsed TOML document."""
    where = f"scenario {source}"
    doc = dict(doc)
    cluster = _build(ClusterSpec, doc.pop("cluster", {}), f"{where} [cluster]")
    workload = _build(WorkloadSpec, doc.pop("workload", {}), f"{where} [workload]")
    deployments: list[DeploymentSpec] = []
    for i, raw in enumerate(doc.pop("deployment", [])):
        deployments.extend(_deployments(raw, f"{where} [[deployment]] #{i + 1}"))
    faults = []
    for i, raw in enumerate(doc.pop("fault", [])):
        raw = dict(raw)
        params = tuple(sorted(raw.pop("params", {}).items()))
        faults.append(_build(FaultSpec, {**raw, "params": params}, f"{where} [[fault]] #{i + 1}"))
    if "name" not in doc:
        doc["name"] = Path(source).stem
    scenario = _build(
        Scenario,
        {
            **doc,
            "cluster": cluster,
            "workload": workload,
            "deployments": tuple(deployments),
            "faults": tuple(faults),
            "source": source,
        },
        where,
    )
    validate(scenario)
    return scenario


def _deployments(raw: dict[str, Any], where: str) -> list[DeploymentSpec]:
    raw = dict(raw)
    count = int(raw.pop("count", 1))
    model = _build(ModelSpec, raw.pop("model", {}), f"{where} [model]")
    if "name" not in raw:
        raise ScenarioError(f"{where}: missing key 'name' (the deployment id, e.g. 'llama70b')")
    base = _build(DeploymentSpec, {**raw, "model": model}, where)
    if count == 1:
        return [base]
    letters = "abcdefghijklmnopqrstuvwxyz"
    names = [f"{base.name}-{letters[i]}" if i < 26 else f"{base.name}-{i}" for i in range(count)]
    return [dataclasses.replace(base, name=n) for n in names]


def _build(cls: Any, raw: dict[str, Any], where: str) -> Any:
    known = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(raw) - set(known))
    if unknown:
        raise ScenarioError(f"{where}: unknown keys {unknown}; known keys: {sorted(known)}")
    values: dict[str, Any] = {}
    for key, value in raw.items():
        default = known[key].default
        default = None if default is dataclasses.MISSING else default
        if isinstance(value, dict) and key in {"router_weights"}:
            value = tuple(sorted((str(k), float(v)) for k, v in value.items()))
        elif isinstance(value, list):
            value = tuple(tuple(v) if isinstance(v, list) else v for v in value)
        elif isinstance(default, bool) and not isinstance(value, bool):
            raise ScenarioError(f"{where}: {key} must be true or false, got {value!r}")
        elif isinstance(default, float) and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        elif (
            default is not None
            and not isinstance(default, tuple)
            and type(default) in (int, float, str)
            and not isinstance(value, type(default))
        ):
            raise ScenarioError(f"{where}: {key} must be {type(default).__name__}, got {value!r}")
        values[key] = value
    try:
        return cls(**values)
    except TypeError as exc:
        raise ScenarioError(f"{where}: {exc}") from exc


def with_frame_interval(scenario: Scenario, frame_interval_ms: int) -> Scenario:
    """``scenario`` with its telemetry frames covering ``frame_interval_ms`` (validated)."""
    cluster = dataclasses.replace(scenario.cluster, frame_interval_ms=frame_interval_ms)
    framed = dataclasses.replace(scenario, cluster=cluster)
    validate(framed)
    return framed


def validate(scenario: Scenario) -> None:
    """Raise ScenarioError on values the simulator cannot run."""
    c, w = scenario.cluster, scenario.workload
    where = f"scenario {scenario.name}"
    if not scenario.deployments:
        raise ScenarioError(f"{where}: no [[deployment]] tables; add at least one")
    if c.fabric not in ("roce", "infiniband"):
        raise ScenarioError(
            f"{where}: cluster.fabric must be 'roce' or 'infiniband', got {c.fabric!r}"
        )
    if c.gpus_per_node < 1 or c.nodes_per_leaf < 1:
        raise ScenarioError(f"{where}: cluster.gpus_per_node and nodes_per_leaf must be >= 1")
    if c.pcie_gen not in (3, 4, 5, 6) or c.pcie_width not in (1, 2, 4, 8, 16):
        raise ScenarioError(f"{where}: cluster.pcie_gen in 3..6 and pcie_width in 1,2,4,8,16")
    if not 0.0 <= c.sample_loss_ratio < 0.5:
        raise ScenarioError(f"{where}: cluster.sample_loss_ratio must be in [0, 0.5)")
    if c.frame_interval_ms < SIM_CHUNK_MS or c.frame_interval_ms % SIM_CHUNK_MS:
        raise ScenarioError(
            f"{where}: cluster.frame_interval_ms must be a positive multiple of "
            f"{SIM_CHUNK_MS} (the simulator's chunk), got {c.frame_interval_ms}"
        )
    if c.counter_wrap_bits not in (32, 48, 64):
        raise ScenarioError(f"{where}: cluster.counter_wrap_bits must be 32, 48 or 64")
    if w.arrivals not in ("poisson", "bursty", "azure"):
        raise ScenarioError(f"{where}: workload.arrivals must be poisson, bursty or azure")
    if w.arrivals == "azure" and w.trace not in ("code", "conv"):
        raise ScenarioError(f"{where}: workload.trace must be 'code' or 'conv'")
    if w.time_compression <= 0 or w.rate_per_s < 0:
        raise ScenarioError(f"{where}: workload.time_compression > 0 and rate_per_s >= 0")
    if scenario.duration_s <= 0:
        raise ScenarioError(f"{where}: duration_s must be > 0")
    names = [d.name for d in scenario.deployments]
    if len(set(names)) != len(names):
        raise ScenarioError(f"{where}: deployment names repeat: {names}")
    for d in scenario.deployments:
        dw = f"{where} deployment {d.name}"
        if d.tp < 1 or d.pp < 1:
            raise ScenarioError(f"{dw}: tp and pp must be >= 1")
        if d.world_size > c.gpus_per_node and d.world_size % c.gpus_per_node:
            raise ScenarioError(
                f"{dw}: tp*pp={d.world_size} is neither <= gpus_per_node={c.gpus_per_node} "
                "nor a multiple of it; every node must belong to one deployment"
            )
        if d.batching not in ("continuous", "static"):
            raise ScenarioError(f"{dw}: batching must be 'continuous' or 'static'")
        if d.stage_layer_ratios and len(d.stage_layer_ratios) != d.pp:
            raise ScenarioError(f"{dw}: stage_layer_ratios needs pp={d.pp} values")
        if d.model.n_experts and d.model.n_experts % d.tp:
            raise ScenarioError(
                f"{dw}: model.n_experts must be a multiple of tp (experts per rank)"
            )
        if d.kv_capacity_tokens < d.kv_block_tokens or d.max_num_seqs < 1:
            raise ScenarioError(f"{dw}: kv_capacity_tokens and max_num_seqs too small")
    for weight_name, weight in w.router_weights:
        if weight_name not in names or weight < 0:
            raise ScenarioError(
                f"{where}: workload.router_weights names {weight_name!r} (weight {weight}); "
                f"replicas are {names} and weights must be >= 0"
            )
    from producers.sim.faults import check_fault_spec  # late: faults imports this module

    for f in scenario.faults:
        check_fault_spec(scenario, f)


# --------------------------------------------------------------------------------------
# writing


def scenario_to_toml(scenario: Scenario) -> str:
    """TOML text that load_scenario reads back into an equal Scenario (defaults omitted)."""
    lines: list[str] = []
    top = {
        "name": scenario.name,
        "description": scenario.description,
        "duration_s": scenario.duration_s,
        "epoch_ns": scenario.epoch_ns,
    }
    lines += [f"{k} = {_toml_value(v)}" for k, v in top.items()]
    lines += ["", "[cluster]", *_changed(scenario.cluster, ClusterSpec())]
    for dep in scenario.deployments:
        lines += [
            "",
            "[[deployment]]",
            f"name = {_toml_value(dep.name)}",
            *_changed(dep, DeploymentSpec(name=dep.name), skip={"name", "model"}),
        ]
        lines += ["", "[deployment.model]", *_changed(dep.model, ModelSpec())]
    lines += ["", "[workload]", *_changed(scenario.workload, WorkloadSpec())]
    for f in scenario.faults:
        lines += [
            "",
            "[[fault]]",
            *_changed(f, FaultSpec(kind=""), skip={"params"}),
            f"kind = {_toml_value(f.kind)}",
        ]
        if f.params:
            lines += ["[fault.params]", *[f"{k} = {_toml_value(v)}" for k, v in f.params]]
    return "\n".join(lines) + "\n"


def _changed(obj: Any, default: Any, skip: set[str] | None = None) -> list[str]:
    out = []
    for fld in dataclasses.fields(obj):
        if (skip and fld.name in skip) or fld.name == "kind":
            continue
        value = getattr(obj, fld.name)
        if value != getattr(default, fld.name):
            if fld.name == "router_weights":
                inner = ", ".join(f"{_toml_value(k)} = {_toml_value(v)}" for k, v in value)
                out.append(f"router_weights = {{ {inner} }}")
            else:
                out.append(f"{fld.name} = {_toml_value(value)}")
    return out


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, tuple | list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    raise ScenarioError(f"cannot write {value!r} ({type(value).__name__}) to TOML")
