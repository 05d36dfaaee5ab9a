"""Randomized, labelled fault suites (DESIGN.md section 7).

``make_suite(episodes_per_condition=N, seed=S)`` returns, for every runbook condition:

* N episodes at the condition's reference severity (``Episode.reference``), plus N // 2
  episodes with severity drawn uniformly (log-uniformly where stated) from its range — the
  severity sweep for recall against severity;
* N // 3 look-alike episodes: the condition's harmless look-alike alone (must raise nothing).

A condition with more than one cause in ``ALTERNATE_KINDS`` cycles its fault episodes through
them (tp-straggler: a throttled GPU, then host jitter with the GPU's clocks normal).

Every fault episode has: onset uniform in [3, 12] s and at least 20 ms away from any multiple
of 250 ms (config-class conditions are present from the start, onset 0); a random target of
the right kind; in a third of them a second, overlapping fault of a different family at its
reference severity on a different entity. Every episode has per-GPU spread drawn in
[1 %, 4 %], 1 % sample loss, clock jitter, and one counter reset on a random port at a random
time. The base world of a condition is its bundled scenario without its faults; the
(clean) default world is ``clean``.

Episodes are definitions; running one is ``Simulation(ep.scenario, seed=ep.seed)``.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from producers.sim.faults import KINDS, FaultKind
from producers.sim.scenario import FaultSpec, Scenario, load_scenario, scenario_to_toml

# runbook condition -> (injector kind, look-alike kind)
CONDITIONS: dict[str, tuple[str, str]] = {
    "tp-straggler": ("gpu-throttle", "busier-node"),
    "early-stop-skew": ("static-batching", "long-prompts"),
    "pp-stage-imbalance": ("stage-partition", "busier-node"),
    "moe-expert-imbalance": ("hot-expert", "load-burst"),
    "request-length-skew": ("long-prompt-tenant", "long-prompts"),
    "kv-cache-pressure": ("kv-budget", "load-burst"),
    "host-preprocessing-delay": ("tokenizer-slow", "load-burst"),
    "rank-hang": ("rank-hang", "planned-drain"),
    "clock-desync": ("clock-step", "busier-node"),
    "pcie-saturation": ("kv-offload", "busier-node"),
    "pcie-degradation": ("link-downtrain", "busier-node"),
    "ingress-imbalance": ("router-weight", "planned-drain"),
    "ingress-microburst": ("bursty-clients", "load-burst"),
    "fabric-congestion": ("fabric-load", "load-burst"),
    "retransmit-storm": ("optic-ber", "busier-node"),
    "pfc-pause-storm": ("pfc-receiver", "load-burst"),
    "credit-starvation": ("credit-withhold", "load-burst"),
}
# conditions with more than one injected cause: their fault episodes cycle through the kinds
# (episode i uses kind i mod n, the primary kind first), at the same severities
ALTERNATE_KINDS: dict[str, tuple[str, ...]] = {"tp-straggler": ("host-jitter",)}
CONFIG_CLASS = {"pp-stage-imbalance", "pcie-degradation"}
WINDOW_STEP_S = 0.25


@dataclass(frozen=True)
class Episode:
    """One labelled run: what world, what was injected, and how it counts."""

    episode_id: str
    condition: str  # runbook id, or lookalike:<kind>
    scenario: Scenario
    seed: int
    duration_s: float
    faults: tuple[FaultSpec, ...]
    reference: bool
    severity: float
    lookalike: bool
    overlapping: tuple[str, ...] = ()

    def summary(self) -> dict[str, Any]:
        return {
            "episode_id": self.episode_id,
            "condition": self.condition,
            "seed": self.seed,
            "duration_s": self.duration_s,
            "reference": self.reference,
            "severity": self.severity,
            "lookalike": self.lookalike,
            "overlapping": list(self.overlapping),
            "faults": [
                {
                    "kind": f.kind,
                    "target": f.target,
                    "onset_s": f.onset_s,
                    "end_s": f.end_s,
                    "severity": f.severity,
                }
                for f in self.faults
            ],
        }


def off_boundary_onset(rng: np.random.Generator, low: float = 3.0, high: float = 12.0) -> float:
    """Onset in [low, high] s, at least 20 ms from any multiple of 250 ms."""
    while True:
        onset = round(float(rng.uniform(low, high)), 4)
        phase = onset % WINDOW_STEP_S
        if 0.02 <= phase <= WINDOW_STEP_S - 0.02:
            return onset


def draw_severity(kind: FaultKind, rng: np.random.Generator) -> float:
    if kind.low == kind.high:
        return kind.reference
    if kind.log_scale:
        return float(np.exp(rng.uniform(np.log(kind.low), np.log(kind.high))))
    value = float(rng.uniform(kind.low, kind.high))
    return float(round(value)) if kind.unit == "lanes_lost" else value


def random_target(kind: FaultKind, scenario: Scenario, rng: np.random.Generator) -> str:
    deps = [d for d in scenario.deployments if kind.needs != "moe" or d.model.n_experts]
    dep = deps[int(rng.integers(len(deps)))]
    if kind.target == "fabric":
        return ""
    if kind.target == "replica":
        return dep.name
    rank = int(rng.integers(dep.world_size))
    if kind.target in ("rank", "gpu", "port"):
        return f"{dep.name}/rank{rank}"
    # node: a node of the deployment (its front end for pre-processing)
    if kind.name == "tokenizer-slow":
        return dep.name
    from producers.sim.topology import Layout

    layout = Layout(scenario)
    return layout.node_names[int(layout.deployment(dep.name).rank_node.ravel()[rank])]


def _base(condition: str) -> Scenario:
    return dataclasses.replace(load_scenario(condition), faults=())


def _perturb(scenario: Scenario, rng: np.random.Generator, duration_s: float) -> Scenario:
    from producers.sim.topology import Layout

    layout = Layout(scenario)
    g = int(rng.integers(layout.n_gpus))
    reset = (
        layout.node_names[int(layout.gpu_node[g])],
        layout.port_names[g],
        round(float(rng.uniform(1.0, duration_s - 1.0)), 3),
    )
    cluster = dataclasses.replace(
        scenario.cluster,
        gpu_spread_ratio=round(float(rng.uniform(0.01, 0.04)), 4),
        sample_loss_ratio=0.01,
        counter_resets=(reset,),
    )
    return dataclasses.replace(scenario, cluster=cluster, duration_s=duration_s)


def _overlap(
    condition: str, scenario: Scenario, rng: np.random.Generator, taken: str
) -> FaultSpec | None:
    family = KINDS[CONDITIONS[condition][0]].family
    options = []
    for other, (kind_name, _) in CONDITIONS.items():
        kind = KINDS[kind_name]
        if kind.family == family or kind.load_family or other in CONFIG_CLASS:
            continue
        if kind.needs == "moe" and not any(d.model.n_experts for d in scenario.deployments):
            continue
        if kind.needs in ("roce", "infiniband") and scenario.cluster.fabric != kind.needs:
            continue
        if kind.name in ("rank-hang", "stage-partition"):
            continue  # a hang silences everything else of the replica
        options.append(kind)
    if not options:
        return None
    kind = options[int(rng.integers(len(options)))]
    for _ in range(10):
        target = random_target(kind, scenario, rng)
        if target != taken:
            break
    return FaultSpec(
        kind=kind.name, target=target, onset_s=off_boundary_onset(rng), severity=kind.reference
    )


def make_suite(
    episodes_per_condition: int = 30, seed: int = 0, duration_s: float = 30.0
) -> list[Episode]:
    """The randomized suite (see the module docstring)."""
    if episodes_per_condition < 1:
        raise ValueError("episodes_per_condition must be >= 1")
    out: list[Episode] = []
    n_ref = episodes_per_condition
    n_sweep = episodes_per_condition // 2
    n_look = episodes_per_condition // 3
    for c_index, (condition, (kind_name, look_name)) in enumerate(CONDITIONS.items()):
        base = _base(condition)
        kinds = [KINDS[k] for k in (kind_name, *ALTERNATE_KINDS.get(condition, ()))]
        for i in range(n_ref + n_sweep + n_look):
            rng = np.random.default_rng([seed, c_index, i])
            ep_seed = int(rng.integers(2**31))
            world = _perturb(base, rng, duration_s)
            lookalike = i >= n_ref + n_sweep
            use = KINDS[look_name] if lookalike else kinds[i % len(kinds)]
            reference = i < n_ref
            severity = use.reference if (reference or lookalike) else draw_severity(use, rng)
            onset = (
                0.0 if (condition in CONFIG_CLASS and not lookalike) else off_boundary_onset(rng)
            )
            target = random_target(use, world, rng)
            faults = [FaultSpec(kind=use.name, target=target, onset_s=onset, severity=severity)]
            overlapping: tuple[str, ...] = ()
            if not lookalike and i % 3 == 2:
                extra = _overlap(condition, world, rng, target)
                if extra is not None:
                    faults.append(extra)
                    overlapping = (KINDS[extra.kind].condition,)
            ep_id = (
                f"{condition}-{'look' if lookalike else 'ref' if reference else 'sweep'}-{i:03d}"
            )
            scenario = dataclasses.replace(world, name=ep_id, faults=tuple(faults))
            out.append(
                Episode(
                    episode_id=ep_id,
                    condition=use.condition,
                    scenario=scenario,
                    seed=ep_seed,
                    duration_s=duration_s,
                    faults=tuple(faults),
                    reference=reference and not lookalike,
                    severity=severity,
                    lookalike=lookalike,
                    overlapping=overlapping,
                )
            )
    return out


def write_suite(episodes: list[Episode], out_dir: Path, capture: bool = False) -> Path:
    """Write suite.json and one scenario TOML per episode (and captures); return suite.json."""
    out_dir.mkdir(parents=True, exist_ok=True)
    index = []
    for ep in episodes:
        toml_path = out_dir / f"{ep.episode_id}.toml"
        toml_path.write_text(scenario_to_toml(ep.scenario))
        entry = {**ep.summary(), "scenario_file": toml_path.name}
        if capture:
            from producers.sim.publish import publish
            from producers.sim.simulation import Simulation

            cap = out_dir / f"{ep.episode_id}.avro"
            publish(
                Simulation(ep.scenario, seed=ep.seed, scenario_id=ep.episode_id),
                ep.duration_s,
                capture=cap,
            )
            entry["capture_file"] = cap.name
        index.append(entry)
    path = out_dir / "suite.json"
    path.write_text(json.dumps(index, indent=1) + "\n")
    return path
