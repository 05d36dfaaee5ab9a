"""``skewscope demo``: the live pipeline on a bundled scenario, end to end, then a summary.

What a run does, in order (every step that can take seconds prints a progress line):

1. ``infra.services.up``: find or start Kafka and Redis. When that fails (no Java, no
   redis-server) the demo says why and runs the same detector in process instead
   (:mod:`skewscope.demo.fallback`); ``--in-process`` asks for that directly.
2. A private namespace (:mod:`skewscope.demo.isolation`): topics under ``<id>.``, the worker's
   group, the sink's group and Redis keys under ``skew:<id>:``; the scenario's topology is
   published and each deployment's capacity (its rank count) set in Redis, so avoid-lists
   can name entities.
3. Three child processes, each in its own session (:mod:`skewscope.demo.children`): the Faust
   worker with the health page (``/`` on ``--web-port``), the Redis sink, and, once the
   worker's consumer group is stable, the simulator producing in real time
   (:mod:`skewscope.demo.paced`: event time = wall time).
4. Once a second, the terminal view (:mod:`skewscope.demo.terminal`) is drawn from Redis
   through :class:`sinks.client.SchedulerClient`, i.e. from what a scheduler reads.
5. The run ends ``--duration`` seconds after the services were up, or when the scenario's
   script is over if that comes first (past it the scenario is plain traffic), or on
   Ctrl-C/SIGTERM:
   the producer ends (it publishes its labels), the worker and sink get a moment to drain,
   the summary is computed from the run's label and verdict topics and the Redis history,
   then every child is stopped (SIGTERM to its group, SIGKILL after a grace period), the
   absence of leftovers is checked, and the run's topics and keys are deleted (``--keep``
   keeps them).

Exit status: 0 when every injected fault was named by a verdict, 1 when some were not, 2 when
the pipeline failed (a child died, the worker never joined its group), 130 on Ctrl-C (143 on
SIGTERM).
"""

from __future__ import annotations

import contextlib
import dataclasses
import signal
import socket
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from types import FrameType
from typing import Any

from confluent_kafka import ConsumerGroupState

from infra import services
from infra.common import InfraError
from infra.kafka_admin import admin_client
from infra.topics import ensure_topics
from models.scoring import BOOKKEEPING
from producers.sim import Scenario, Simulation, load_scenario
from schemas.codec import AvroCodec
from sinks.client import SchedulerClient
from sinks.config import load_sink_config
from sinks.connection import connect
from sinks.redis_layout import RedisLayout, as_text
from sinks.redis_writer import RedisWriter
from skewscope.config import REPO_ROOT, load_settings
from skewscope.demo.children import Child, Children
from skewscope.demo.isolation import DemoRun, cleanup, new_run
from skewscope.demo.options import DEFAULT_WEB_PORT, DemoOptions
from skewscope.demo.paced import publish_topology
from skewscope.demo.script import (
    MIN_SIM_S,
    injecting,
    load_causes,
    schedule_line,
    sim_seconds,
)
from skewscope.demo.summary import DemoSummary, summarize
from skewscope.demo.terminal import DeploymentLine, Snapshot, TerminalView
from streams.replay.history import read_topic

TAIL_S = 6.0  # kept at the end of --duration for draining, the summary and stopping
GROUP_TIMEOUT_S = 90.0
DRAIN_TIMEOUT_S = 8.0


class DemoError(RuntimeError):
    """The live pipeline failed; the message says which part and quotes its log."""


class DemoInterrupted(BaseException):
    """Ctrl-C or SIGTERM during the run (a BaseException, like KeyboardInterrupt, so that no
    ``except Exception`` on the way swallows it)."""


def run_demo(options: DemoOptions, view: TerminalView | None = None) -> int:
    """Run the demo (see the module docstring); returns the exit status."""
    view = view or TerminalView()
    options = _absolute_paths(options)
    settings = load_settings(options.config)
    scenario = load_scenario(options.scenario)
    view.say(
        f"skewscope demo: scenario {scenario.name!r} for {options.duration_s:g} s - "
        f"{scenario.description}"
    )
    if options.in_process:
        from skewscope.demo.fallback import run_in_process

        return run_in_process(options, scenario, settings, view, "asked for --in-process")
    try:
        services.up(settings, view.say, topics=False)
    except InfraError as exc:
        from skewscope.demo.fallback import run_in_process

        view.say(f"no Kafka/Redis pipeline: {exc}")
        return run_in_process(options, scenario, settings, view, "no broker could be had")
    run = new_run(settings, load_sink_config(options.config))
    return LiveDemo(run, options, scenario, view).run()


class LiveDemo:
    """One live run: children, terminal loop, summary, stop, cleanup."""

    def __init__(
        self, run: DemoRun, options: DemoOptions, scenario: Scenario, view: TerminalView
    ) -> None:
        self.run_ = run
        self.options = options
        self.scenario = scenario
        self.view = view
        self.children = Children()
        self.deadline = time.monotonic() + options.duration_s
        self.start_ns = 0
        self.sim_duration_s = 0.0
        self.producer: Child | None = None
        self.client: SchedulerClient | None = None
        self.notes: list[str] = []

    # -- the whole run ----------------------------------------------------------------------
    def run(self) -> int:
        say = self.view.say
        summary: DemoSummary | None = None
        status = 0
        say(
            f"run {self.run_.run_id}: topics {self.run_.topic_prefix}*, Redis keys "
            f"{self.run_.sink_config.key_prefix}*, logs {self.run_.log_dir}"
        )
        with _signals_raise() as calm:
            try:
                self._start()
                self._watch()
                self._drain()
                summary = self._summary()
            except DemoInterrupted as exc:
                say(f"interrupted ({exc}): stopping the demo (the summary covers what ran)")
                status = 128 + signal.Signals[str(exc)].value
                with calm():
                    summary = self._summary_after_interrupt()
            except DemoError as exc:
                say(f"demo failed: {exc}")
                status = 2
            except Exception as exc:  # broker or Redis trouble mid-run: stop everything, say why
                say(f"demo failed: {type(exc).__name__}: {exc}")
                status = 2
            finally:
                with calm():
                    self._stop(summary)
        if status == 0 and summary is not None and not summary.all_named():
            status = 1
        return status

    # -- start ------------------------------------------------------------------------------
    def _start(self) -> None:
        run, say = self.run_, self.view.say
        made = ensure_topics(run.settings, log=lambda *_: None)
        say(f"topics: {len(made.created)} created under {run.topic_prefix}")
        for warning in made.warnings:
            say(f"  WARNING: {warning}")
        count = publish_topology(run.settings, self.options.scenario, self.options.seed)
        say(f"topology: {count} rank records on {run.settings.topics.topology}")
        self._set_capacity()
        port = self._web_port()
        env = run.env()
        python = sys.executable
        config = ["--config", str(self.options.config)] if self.options.config else []
        worker = self.children.start(
            "worker",
            [
                python,
                "-m",
                "skewscope.demo.worker",
                "--app-id",
                run.app_id,
                "--web-port",
                str(port),
                *config,
                *([] if self.options.page else ["--no-page"]),
            ],
            env,
            run.log_dir / "worker.log",
            REPO_ROOT,
        )
        say(f"worker: started (pid {worker.pid}), group {run.app_id}")
        sink = self.children.start(
            "redis-sink",
            [python, "-m", "skewscope.cli", *config, "sink", "redis"],
            env,
            run.log_dir / "sink.log",
            REPO_ROOT,
        )
        say(f"redis sink: started (pid {sink.pid}), group {run.sink_config.group_id}")
        self._wait_for_group()
        if self.options.page:
            say(f"health page: http://127.0.0.1:{port}/  (live; JSON at /health.json)")
            self.notes.append(f"health page: http://127.0.0.1:{port}/")
        self.notes.append(f"run {run.run_id}; Ctrl-C stops the demo and everything it started")
        self.client = SchedulerClient(run.settings.redis_url, run.sink_config).start()
        remaining = self.deadline - time.monotonic() - TAIL_S
        self.sim_duration_s = sim_seconds(remaining, self.scenario.duration_s)
        if remaining < MIN_SIM_S:
            say(
                f"WARNING: only {max(remaining, 0):.0f} s left of --duration after start-up; "
                f"simulating {MIN_SIM_S:g} s anyway (pass a longer --duration)"
            )
            self.deadline = time.monotonic() + MIN_SIM_S + TAIL_S
        elif remaining > self.scenario.duration_s:
            say(
                f"the scenario's script lasts {self.scenario.duration_s:g} s: the demo ends "
                f"after it, {remaining - self.scenario.duration_s:.0f} s before --duration"
            )
        self.start_ns = time.time_ns() + 200_000_000
        self.producer = self.children.start(
            "producer",
            [
                python,
                "-m",
                "skewscope.demo.paced",
                *config,
                "--scenario",
                self.options.scenario,
                "--seed",
                str(self.options.seed),
                "--duration",
                f"{self.sim_duration_s:.1f}",
                "--start-ns",
                str(self.start_ns),
                "--no-topology",
            ],
            env,
            run.log_dir / "producer.log",
            REPO_ROOT,
        )
        say(
            f"simulator: producing {self.sim_duration_s:.0f} s of {self.scenario.name!r} in "
            f"real time (pid {self.producer.pid})"
        )
        say(schedule_line(self.scenario))

    def _set_capacity(self) -> None:
        run = self.run_
        sim = Simulation(self.scenario, seed=self.options.seed)
        ranks: dict[str, int] = {}
        for rec in sim.topology:
            ranks[rec["deployment"]] = ranks.get(rec["deployment"], 0) + 1
        client = connect(run.settings.redis_url, run.sink_config)
        writer = RedisWriter(client, run.sink_config)
        for deployment, count in sorted(ranks.items()):
            writer.set_capacity(deployment, count)
        client.close()
        caps = ", ".join(
            f"{d} {n} ranks (avoid-list <= {int(n * run.sink_config.avoid_share_ratio)})"
            for d, n in sorted(ranks.items())
        )
        self.view.say(f"capacity: {caps}")

    def _web_port(self) -> int:
        wanted = self.options.web_port
        port = wanted or DEFAULT_WEB_PORT
        if _port_free(port):
            return port
        if wanted:
            raise DemoError(f"port {port} is in use; pass another --web-port")
        free = _free_port()
        self.view.say(f"port {port} is in use; the health page takes {free} instead")
        return free

    def _wait_for_group(self) -> None:
        run, say = self.run_, self.view.say
        admin = admin_client(run.settings, quiet=True)
        began = time.monotonic()
        next_note = began + 5.0
        say("worker: joining its consumer group ...")
        while True:
            self._check_children()
            if _group_stable(admin, run.app_id):
                say(f"worker: consuming (group stable after {time.monotonic() - began:.1f} s)")
                return
            now = time.monotonic()
            if now - began > GROUP_TIMEOUT_S:
                worker = self.children.started[0]
                raise DemoError(
                    f"the worker did not join group {run.app_id} within {GROUP_TIMEOUT_S:g} s; "
                    f"its log ({worker.log_path}) ends with:\n{worker.tail()}"
                )
            if now >= next_note:
                say(f"worker: still joining ({now - began:.0f} s)")
                next_note = now + 5.0
            time.sleep(0.25)

    # -- run --------------------------------------------------------------------------------
    def _watch(self) -> None:
        assert self.producer is not None
        while self.producer.running():
            self._check_children()
            self.view.show(self.snapshot())
            if time.monotonic() > self.deadline:
                self.view.say("the simulator is behind its deadline; stopping it")
                self.children.stop(self.producer, grace_s=10.0)
                break
            time.sleep(self.options.refresh_s)
        if self.producer.proc.returncode not in (0, None, -signal.SIGTERM):
            raise DemoError(
                f"the simulator exited with status {self.producer.proc.returncode}; its log "
                f"({self.producer.log_path}) ends with:\n{self.producer.tail()}"
            )

    def _check_children(self) -> None:
        for child in self.children.exited():
            if child is not self.producer:
                raise DemoError(
                    f"{child.name} exited with status {child.proc.returncode}; its log "
                    f"({child.log_path}) ends with:\n{child.tail()}"
                )

    def snapshot(self) -> Snapshot:
        """The view's data, read from the scheduler client's cache (i.e. from Redis)."""
        elapsed_s = max(0.0, (time.time_ns() - self.start_ns) / 1e9) if self.start_ns else 0.0
        verdicts: list[dict[str, Any]] = []
        deployments: list[DeploymentLine] = []
        client = self.client
        if client is not None:
            for entity in client.entities():
                v = client.verdict(entity)
                if v is not None and v["state"] == "firing" and v["condition"] != "heartbeat":
                    verdicts.append(v)
            verdicts.sort(
                key=lambda v: (-float(v["severity"]) * float(v["confidence"]), v["entity"])
            )
            for dep in client.deployments():
                if dep == "*":
                    continue
                report = client.deployment_health(dep)
                stale = report.staleness_ns
                deployments.append(
                    DeploymentLine(
                        dep,
                        report.health.value,
                        report.reason,
                        None if stale is None else stale / 1e9,
                        tuple(e for e, _ in client.avoid_list(dep)),
                    )
                )
        return Snapshot(
            title=f"skewscope demo - {self.scenario.name}",
            elapsed_s=elapsed_s,
            duration_s=self.sim_duration_s,
            verdicts=verdicts,
            deployments=deployments,
            injecting=injecting(self.scenario, elapsed_s),
            source="Redis via SchedulerClient",
            notes=tuple(self.notes),
        )

    # -- end --------------------------------------------------------------------------------
    def _drain(self) -> None:
        """Wait until Redis shows event time up to the simulator's end (bounded)."""
        self.view.say("simulator done; letting the worker and the sink drain ...")
        end_ns = self.start_ns + int(self.sim_duration_s * 1e9)
        deadline = time.monotonic() + DRAIN_TIMEOUT_S
        client = self.client
        while client is not None and time.monotonic() < deadline:
            states = [client.deployment_state(d) for d in client.deployments() if d != "*"]
            seen = [s.last_event_ns for s in states if s is not None and s.last_event_ns]
            if seen and min(seen) >= end_ns - 1_500_000_000:
                break
            time.sleep(0.2)
        self.view.show(self.snapshot())

    def _summary(self) -> DemoSummary:
        settings = self.run_.settings
        codec = AvroCodec(registry_url=settings.schema_registry_url)
        labels = [
            codec.decode(m.value).record for m in read_topic(settings, settings.topics.labels)
        ]
        verdicts = [
            codec.decode(m.value).record for m in read_topic(settings, settings.topics.verdicts)
        ]
        # an interrupted run covers the causes whose onset it reached
        ran_s = min(self.sim_duration_s, (time.time_ns() - self.start_ns) / 1e9)
        causes = load_causes(self.scenario, self.start_ns, ran_s)
        return summarize(labels, verdicts, self.start_ns, self._in_redis(), load_causes=causes)

    def _summary_after_interrupt(self) -> DemoSummary | None:
        if self.producer is None or not self.start_ns:
            return None
        self.children.stop(self.producer, grace_s=10.0)  # it publishes its labels on SIGTERM
        try:
            return self._summary()
        except Exception as exc:  # the run is being torn down; say so and go on stopping
            self.view.say(f"no summary: {exc}")
            return None

    def _in_redis(self) -> set[tuple[str, str]]:
        """(entity, condition) of every firing verdict the Redis history stream holds."""
        run = self.run_
        client = connect(run.settings.redis_url, run.sink_config)
        try:
            entries = client.xrange(RedisLayout(run.sink_config.key_prefix).history)
        finally:
            client.close()
        out = set()
        for _, fields in entries or []:
            f = {as_text(k): as_text(v) for k, v in (fields or {}).items()}
            if f.get("state") == "firing" and f.get("condition") not in BOOKKEEPING:
                out.add((f.get("entity", ""), f.get("condition", "")))
        return out

    def _stop(self, summary: DemoSummary | None) -> None:
        say = self.view.say
        if self.client is not None:
            self.client.close()
        self.view.close()
        if self.children.started:
            say(f"stopping {', '.join(c.name for c in reversed(self.children.started))} ...")
        stopped = self.children.stop_all(grace_s=10.0)
        left = self.children.leftovers()
        if summary is not None:
            say("")
            say(f"== summary of run {self.run_.run_id} (scenario {self.scenario.name}) ==")
            for line in summary.lines():
                say(line)
        say("")
        say("stopped: " + "; ".join(stopped) if stopped else "stopped: nothing was running")
        if left:
            say(f"WARNING: processes still running after the stop: {left}")
        else:
            say(f"no process left running (checked {len(self.children.started)} process groups)")
        if self.options.keep:
            say(
                f"kept topics {self.run_.topic_prefix}* and Redis keys "
                f"{self.run_.sink_config.key_prefix}* (--keep)"
            )
        else:
            for line in cleanup(self.run_):
                say(line)


def _absolute_paths(options: DemoOptions) -> DemoOptions:
    """Child processes run in the repository root: give them absolute file paths."""
    scenario = Path(options.scenario)
    if scenario.suffix == ".toml" and scenario.exists():
        options = dataclasses.replace(options, scenario=str(scenario.resolve()))
    if options.config is not None:
        options = dataclasses.replace(options, config=options.config.resolve())
    return options


def _group_stable(admin: Any, group: str) -> bool:
    try:
        desc = admin.describe_consumer_groups([group])[group].result(timeout=5)
    except Exception:  # not created yet, or the broker is busy: ask again
        return False
    assigned = sum(len(m.assignment.topic_partitions) for m in desc.members)
    return bool(desc.state == ConsumerGroupState.STABLE and assigned > 0)


def _port_free(port: int) -> bool:
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextlib.contextmanager
def _signals_raise() -> Iterator[Any]:
    """SIGINT/SIGTERM raise DemoInterrupted; inside ``calm()`` they are noted, not raised,
    so stopping the children is never cut short."""
    state = {"calm": False}

    def handler(signum: int, frame: FrameType | None) -> None:
        if state["calm"]:
            print("stopping, please wait ...", file=sys.stderr, flush=True)
            return
        raise DemoInterrupted(signal.Signals(signum).name)

    @contextlib.contextmanager
    def calm() -> Iterator[None]:
        before = state["calm"]
        state["calm"] = True
        try:
            yield
        finally:
            state["calm"] = before

    if threading.current_thread() is not threading.main_thread():
        yield calm
        return
    old = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield calm
    finally:
        for s, h in old.items():
            signal.signal(s, h)


__all__ = ["DemoError", "DemoInterrupted", "DemoOptions", "LiveDemo", "run_demo"]
