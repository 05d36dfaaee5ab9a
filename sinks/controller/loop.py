"""One closed-loop episode in event time, in one process: simulator -> detector -> Redis ->
scheduler client -> controller -> simulator.

Each frame period of the simulation (200 ms) is fed to the detector core (as the live workers
feed it); every ``control_period_s`` of event time (checked at period ends) the verdicts and
heartbeats produced since the last control step are written to Redis with the sink's writer
and the loop waits until the scheduler client's cache has them (:mod:`sinks.controller.feed`);
then the controller ticks and its actions reach the world before the next period is simulated.
Controller time is event time (the client's clock is the simulation's clock), so dwell and
rate limits are in event time and a run is deterministic: same scenario, seed and settings,
same decisions.

Modes: ``off`` (no detector, no Redis, no controller: the baseline), ``dry-run`` (everything
but the actuator) and ``on``.

Limits: the scheduler client judges verdict expiry with its clock against Redis's wall-clock
expiry; the loop's clock is event time, so the scenario's epoch must lie in the past (the
bundled ones do) or every verdict would read as expired; the controller applies the verdicts'
event-time TTL itself. Each episode uses its own key prefix and deletes its keys afterwards.
"""

from __future__ import annotations

import dataclasses
import time
import uuid
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

from models.detector import Detector, DetectorConfig
from producers.sim import SimFrame, Simulation
from producers.sim.scenario import Scenario
from sinks.client import SchedulerClient
from sinks.config import SinkConfig
from sinks.connection import connect
from sinks.controller.actions import ControlCall, SimActuator
from sinks.controller.audit import AuditLog
from sinks.controller.controller import Controller, ControllerConfig, TickResult
from sinks.controller.feed import VerdictFeed
from sinks.controller.inject import Outage, VerdictInjector, WrongAttribution
from sinks.controller.metrics import (
    EpisodeMetrics,
    GpuIdleMeter,
    RequestMeter,
    SloSpec,
    StepMeter,
    episode_metrics,
    requests_of,
    steps_of,
    time_series,
)
from sinks.controller.policy import Placement
from sinks.controller.stepper import PeriodStepper
from sinks.redis_writer import RedisWriter

S = 1_000_000_000


class Mode(StrEnum):
    OFF = "off"
    DRY_RUN = "dry-run"
    ON = "on"


@dataclass(frozen=True)
class LoopConfig:
    """How to run one episode. ``redis_url`` is needed unless ``mode`` is OFF."""

    mode: Mode = Mode.ON
    duration_s: float | None = None  # None: the scenario's duration
    control_period_s: float = 0.25
    redis_url: str = ""
    sink: SinkConfig = field(default_factory=SinkConfig)
    controller: ControllerConfig = field(default_factory=ControllerConfig)
    detector: DetectorConfig = field(default_factory=DetectorConfig)
    wrong: tuple[WrongAttribution, ...] = ()
    outages: tuple[Outage, ...] = ()
    slo: SloSpec = field(default_factory=SloSpec)
    audit_path: Path | None = None
    client_timeout_s: float = 10.0


@dataclass
class EpisodeRun:
    scenario: str
    seed: int
    mode: Mode
    duration_s: float
    start_ns: int
    metrics: EpisodeMetrics
    series: dict[str, list[float]]
    audit: list[dict[str, Any]]
    control_calls: list[ControlCall]
    ticks: list[TickResult]
    labels: list[dict[str, Any]]
    records_written: int  # verdicts and heartbeats written to Redis
    injected_written: int  # of which injected wrong attributions
    wall_s: float

    def actions(self) -> list[dict[str, Any]]:
        return [e for e in self.audit if e["decision"] == "apply"]

    def undos(self) -> list[dict[str, Any]]:
        return [e for e in self.audit if e["decision"] == "undo"]


@dataclass
class _Meters:
    gpu: GpuIdleMeter
    requests: RequestMeter
    steps: StepMeter

    def observe(self, frame: SimFrame) -> None:
        self.gpu.observe(frame)
        self.requests.observe(frame)
        self.steps.observe(frame)


def run_episode(scenario: Scenario, seed: int, config: LoopConfig) -> EpisodeRun:
    """Simulate ``scenario`` with the controller in ``config.mode``; see the module docstring."""
    started = time.perf_counter()
    sim = Simulation(scenario, seed=seed)
    duration_s = scenario.duration_s if config.duration_s is None else config.duration_s
    end_ns = sim.start_ns + round(duration_s * S)
    if config.mode is not Mode.OFF:
        _check_epoch(sim.start_ns, end_ns, scenario.name)
    meters = _Meters(GpuIdleMeter(sim.start_ns), RequestMeter(), StepMeter())
    stepper = PeriodStepper(sim, duration_s)
    audit = AuditLog(config.audit_path)
    ticks: list[TickResult] = []
    calls: list[ControlCall] = []
    written = injected = 0
    try:
        if config.mode is Mode.OFF:
            while (period := stepper.next_period()) is not None:
                for frame in period:
                    meters.observe(frame)
        else:
            written, injected, calls = _closed_loop(sim, stepper, meters, audit, ticks, config)
    finally:
        audit.close()
    req, steps, gpu = requests_of(sim, meters.requests), steps_of(sim, meters.steps), meters.gpu
    return EpisodeRun(
        scenario=scenario.name,
        seed=seed,
        mode=config.mode,
        duration_s=duration_s,
        start_ns=sim.start_ns,
        metrics=episode_metrics(req, steps, gpu, sim.start_ns, end_ns, config.slo),
        series=time_series(req, steps, gpu, sim.start_ns, end_ns, config.slo)
        | {"capacity_removed_ratio": _capacity_series(ticks, sim.start_ns, end_ns)},
        audit=audit.entries,
        control_calls=calls,
        ticks=ticks,
        labels=sim.labels,
        records_written=written,
        injected_written=injected,
        wall_s=time.perf_counter() - started,
    )


def _check_epoch(start_ns: int, end_ns: int, name: str) -> None:
    if end_ns > time.time_ns():
        raise ValueError(
            f"scenario {name}: its event time (epoch_ns={start_ns}) runs past the wall clock; "
            "the scheduler client would read every verdict as expired (Redis expires on the "
            "wall clock). Set the scenario's epoch_ns in the past"
        )


def _closed_loop(
    sim: Simulation,
    stepper: PeriodStepper,
    meters: _Meters,
    audit: AuditLog,
    ticks: list[TickResult],
    config: LoopConfig,
) -> tuple[int, int, list[ControlCall]]:
    if not config.redis_url:
        raise ValueError(f"closed-loop mode {config.mode} needs a Redis URL (REDIS_URL)")
    weights = {
        n: float(w) for n, w in zip(sim.world.router.names, sim.world.router.weights, strict=True)
    }
    # replicas the scenario holds at router weight 0 are warm spares (workload.router_weights)
    placement = Placement.from_topology(
        sim.topology, spares=[n for n, w in weights.items() if w == 0]
    )
    prefix = f"{config.sink.key_prefix}closedloop:{uuid.uuid4().hex[:12]}:"
    sink = dataclasses.replace(config.sink, key_prefix=prefix)
    redis_client = connect(config.redis_url, sink)
    actuator = SimActuator(
        sim.control,
        weights,
        {e.name: int(e.max_num_seqs) for e in sim.world.engines},
        restart_downtime_s=config.controller.safety.restart_downtime_ns / 1e9,
        spares=placement.spares,
    )
    controller_config = dataclasses.replace(config.controller, dry_run=config.mode is Mode.DRY_RUN)
    client = SchedulerClient(
        config.redis_url,
        sink,
        policy=controller_config.unknown_policy,
        entity_deployments=placement.deployment_of_node(),
        clock_ns=lambda: sim.now_ns,
    )
    try:
        client.start(wait_s=config.client_timeout_s)
        if not client.connected:
            raise RuntimeError(
                f"scheduler client could not sync with Redis at {config.redis_url} within "
                f"{config.client_timeout_s:g} s; is Redis running (skewscope infra up)?"
            )
        feed = VerdictFeed(RedisWriter(redis_client, sink), client, config.client_timeout_s)
        controller = Controller(client, actuator, placement, audit, controller_config)
        detector = Detector(config=config.detector)
        for record in sim.topology:
            detector.process("TopologyRecord", record)
        injector = VerdictInjector(config.wrong, sim.start_ns)
        period_ns = round(config.control_period_s * S)
        next_tick_ns = sim.start_ns + period_ns
        pending: list[dict[str, Any]] = []
        injected = 0
        while (period := stepper.next_period()) is not None:
            for frame in period:
                meters.observe(frame)
                outputs = detector.process(frame.schema, frame.record)
                pending += [o.record for o in outputs if o.schema == "Verdict"]
            now_ns = period[0].event_time_ns
            if now_ns < next_tick_ns:
                continue
            while next_tick_ns <= now_ns:
                next_tick_ns += period_ns
            t_s = (now_ns - sim.start_ns) / S
            wrong = injector.due(now_ns)
            injected += len(wrong)
            batch = [r for r in pending + wrong if not any(o.drops(r, t_s) for o in config.outages)]
            pending = []
            feed.publish(batch)
            ticks.append(controller.tick(now_ns))
        return feed.written, injected, actuator.calls
    finally:
        client.close()
        _delete_prefix(redis_client, prefix)
        redis_client.close()


def _delete_prefix(client: Any, prefix: str) -> None:
    keys = list(client.scan_iter(match=f"{prefix}*", count=500))
    for i in range(0, len(keys), 500):
        client.delete(*keys[i : i + 500])


def _capacity_series(ticks: list[TickResult], start_ns: int, end_ns: int) -> list[float]:
    """Largest capacity share removed in each 1 s bin (0 where the controller did not tick)."""
    bins = int(-(-(end_ns - start_ns) // S))
    out = [0.0] * bins
    for t in ticks:
        b = min(bins - 1, max(0, (t.at_ns - 1 - start_ns) // S))
        out[b] = max(out[b], t.capacity_removed_ratio)
    return out
