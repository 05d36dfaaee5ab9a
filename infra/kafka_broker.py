"""A real single-node Apache Kafka 4.x broker (KRaft, broker+controller) run from Maven jars.

State lives under ``settings.var_dir/kafka``: ``data/`` (log.dirs, formatted once),
``logs/server.log`` (Log4j 2) and ``logs/stdout.log``, ``server.properties`` (rewritten on
each start), ``kafka.pid`` and ``cluster.json``. The jars live in ``settings.kafka_cache_dir``
(see infra.kafka_jars). Limits: loopback addresses only, PLAINTEXT, one node, replication
factor 1, 1 GiB heap; Linux (``/proc``) for version and external-process discovery.
"""

from __future__ import annotations

import json
import re
import subprocess
import time
from dataclasses import asdict, dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from infra.common import InfraError, Say, say, tail_lines
from infra.java import require_java
from infra.kafka_admin import broker_answers
from infra.kafka_jars import ensure_kafka_libs
from infra.kafka_props import listen_addresses, new_cluster_id, render_server_properties
from infra.net import first_bootstrap, is_local_host, port_open
from infra.procs import (
    cmdline,
    cwd,
    file_lock,
    is_alive,
    listening_pid,
    read_pid,
    spawn_detached,
    terminate,
)
from skewscope.config import Settings

START_TIMEOUT_S = 60.0
STOP_GRACE_S = 30.0
HEAP = "-Xmx1g"
MAIN_CLASS = "kafka.Kafka"


@dataclass(frozen=True)
class BrokerPaths:
    """Files of the local broker under ``<var_dir>/kafka``."""

    root: Path
    data: Path
    logs: Path
    pid_file: Path
    properties: Path
    log4j: Path
    server_log: Path
    stdout_log: Path
    cluster_file: Path

    @classmethod
    def of(cls, settings: Settings) -> BrokerPaths:
        root = settings.kafka_dir
        logs = root / "logs"
        return cls(
            root=root,
            data=root / "data",
            logs=logs,
            pid_file=root / "kafka.pid",
            properties=root / "server.properties",
            log4j=root / "log4j2.properties",
            server_log=logs / "server.log",
            stdout_log=logs / "stdout.log",
            cluster_file=root / "cluster.json",
        )


@dataclass(frozen=True)
class KafkaStatus:
    """What answers on settings.kafka_bootstrap. source: "managed", "external" or "down"."""

    bootstrap: str
    source: str
    answering: bool
    managed: bool
    pid: int | None
    version: str | None
    data_dir: str | None
    log_file: str | None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class KafkaUp:
    """Outcome of ``up``: started is False when a broker already answered."""

    started: bool
    pid: int | None
    version: str | None
    elapsed_s: float


def managed_pid(settings: Settings) -> int | None:
    """Pid from our pid file when that process is alive and is a Kafka broker, else None."""
    pid = read_pid(BrokerPaths.of(settings).pid_file)
    if pid is None or not is_alive(pid):
        return None
    return pid if MAIN_CLASS in cmdline(pid) else None


def process_kafka_version(pid: int) -> str | None:
    """Kafka version of a running JVM, from the ``kafka_2.13-<version>.jar`` on its class path."""
    args = cmdline(pid)
    flags = {"-cp", "-classpath", "--class-path"}
    classpath = next((args[i + 1] for i, arg in enumerate(args[:-1]) if arg in flags), "")
    base = cwd(pid) or Path("/")
    for entry in filter(None, classpath.split(":")):
        path = Path(entry) if Path(entry).is_absolute() else base / entry
        jars = sorted(path.parent.glob("kafka_2.*-*.jar")) if path.name == "*" else [path]
        for jar in jars:
            match = re.fullmatch(r"kafka_2\.\d+-(\d[\w.]*?)\.jar", jar.name)
            if match:
                return match.group(1)
    return None


def status(settings: Settings) -> KafkaStatus:
    """Probe the bootstrap address; report our broker (pid file) or an external one.

    The version of an external broker is known only when it runs on this machine (found by
    its listening port); otherwise it is None.
    """
    paths = BrokerPaths.of(settings)
    answering = broker_answers(settings, timeout_s=2.0)
    pid = managed_pid(settings)
    managed = pid is not None
    if pid is None and answering:
        host, port = first_bootstrap(settings.kafka_bootstrap)
        pid = listening_pid(port) if is_local_host(host) else None
    source = "managed" if managed else ("external" if answering else "down")
    return KafkaStatus(
        bootstrap=settings.kafka_bootstrap,
        source=source,
        answering=answering,
        managed=managed,
        pid=pid,
        version=process_kafka_version(pid) if pid is not None else None,
        data_dir=str(paths.data) if managed else None,
        log_file=str(paths.server_log) if managed else None,
    )


def up(settings: Settings, log: Say = say, timeout_s: float = START_TIMEOUT_S) -> KafkaUp:
    """Start the local broker unless something already answers on settings.kafka_bootstrap.

    Idempotent and safe to call from concurrent processes (a file lock serialises starts).
    First run fetches the jars (infra.kafka_jars) and formats ``data/``. Raises InfraError
    when Java 17+ is missing, the port is taken by a non-Kafka program, or the broker does
    not answer within timeout_s (it is then stopped; the message quotes its log).
    """
    began = time.monotonic()
    if broker_answers(settings):
        return _already_up(settings, log, began)
    host, port, controller = listen_addresses(settings)
    paths = BrokerPaths.of(settings)
    with file_lock(paths.root / ".lock"):
        if broker_answers(settings):  # a concurrent ``up`` started it while we waited
            return _already_up(settings, log, began)
        pid = managed_pid(settings)
        if pid is not None:
            _check_same_listeners(settings, paths, pid)
            log(f"kafka pid {pid} is running but not answering yet; waiting for it ...")
            _wait_ready(settings, paths, pid, began, timeout_s, log)
            log(f"kafka ready after {time.monotonic() - began:.1f} s (pid {pid})")
            return KafkaUp(False, pid, process_kafka_version(pid), time.monotonic() - began)
        for taken in (port, controller):
            if port_open(host, taken):
                owner = listening_pid(taken)
                raise InfraError(
                    f"{host}:{taken} is taken by another program"
                    f"{f' (pid {owner})' if owner else ''} that is not an answering Kafka "
                    f"broker; stop it, or set KAFKA_BOOTSTRAP={host}:<free port> "
                    "(the controller uses that port + 1)"
                )
        java = require_java()
        libs = ensure_kafka_libs(settings, log)
        began = time.monotonic()
        log(
            f"starting Kafka {settings.kafka_version} (KRaft, single node) on {host}:{port}, "
            f"controller {host}:{controller} ..."
        )
        _prepare(settings, paths, java, libs, f"{host}:{controller}")
        pid = spawn_detached(
            _java_argv(java, paths, libs, MAIN_CLASS, str(paths.properties)), paths.stdout_log
        )
        paths.pid_file.write_text(f"{pid}\n")
        _wait_ready(settings, paths, pid, began, timeout_s, log)
    elapsed = time.monotonic() - began
    log(f"kafka ready in {elapsed:.1f} s (pid {pid}, log {paths.server_log})")
    return KafkaUp(True, pid, process_kafka_version(pid), elapsed)


def _already_up(settings: Settings, log: Say, began: float) -> KafkaUp:
    found = status(settings)
    who = f"managed, pid {found.pid}" if found.managed else "external, not started by skewscope"
    log(
        f"kafka {found.version or '(version unknown)'} already answering at "
        f"{settings.kafka_bootstrap} ({who}); nothing to do"
    )
    return KafkaUp(False, found.pid, found.version, time.monotonic() - began)


def down(settings: Settings, log: Say = say, grace_s: float = STOP_GRACE_S) -> bool:
    """Stop the broker we started (SIGTERM, then SIGKILL after grace_s). Returns True if stopped.

    A broker without our pid file is external and is left alone. Data in ``data/`` is kept.
    """
    paths = BrokerPaths.of(settings)
    with file_lock(paths.root / ".lock"):
        pid = managed_pid(settings)
        if pid is None:
            paths.pid_file.unlink(missing_ok=True)  # stale or absent
            if broker_answers(settings):
                log(
                    f"kafka at {settings.kafka_bootstrap} was not started by skewscope; "
                    "leaving it running"
                )
            else:
                log("kafka: not running")
            return False
        log(f"stopping kafka (pid {pid}) ...")
        began = time.monotonic()
        how = terminate(pid, grace_s)
        paths.pid_file.unlink(missing_ok=True)
    log(f"kafka {how} in {time.monotonic() - began:.1f} s")
    return True


def _java_argv(java: str, paths: BrokerPaths, libs: Path, *main: str) -> list[str]:
    return [
        java,
        HEAP,
        "-Djava.awt.headless=true",
        f"-Dkafka.logs.dir={paths.logs}",
        f"-Dlog4j2.configurationFile={paths.log4j}",
        "-cp",
        f"{libs}/*",
        *main,
    ]


def _prepare(
    settings: Settings, paths: BrokerPaths, java: str, libs: Path, controller: str
) -> None:
    """Write server.properties and the log4j2 config; format data/ when it is new."""
    paths.logs.mkdir(parents=True, exist_ok=True)
    paths.data.mkdir(parents=True, exist_ok=True)
    paths.properties.write_text(render_server_properties(settings, paths.data))
    paths.log4j.write_text(resources.files("infra").joinpath("kafka-log4j2.properties").read_text())
    if (paths.data / "meta.properties").exists():
        _check_formatted_for(paths, controller)
        return
    cluster_id = new_cluster_id()
    argv = _java_argv(
        java,
        paths,
        libs,
        "kafka.tools.StorageTool",
        "format",
        "-t",
        cluster_id,
        "-c",
        str(paths.properties),
        "--standalone",
    )
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=120)
    if proc.returncode != 0:
        raise InfraError(
            f"formatting the Kafka data folder {paths.data} failed ({proc.returncode}):\n"
            f"{(proc.stdout + proc.stderr).strip()[-3000:]}"
        )
    paths.cluster_file.write_text(json.dumps({"cluster_id": cluster_id, "controller": controller}))


def _check_same_listeners(settings: Settings, paths: BrokerPaths, pid: int) -> None:
    """Refuse to wait on our broker when it was started for another address."""
    try:
        running = paths.properties.read_text().splitlines()
    except OSError:
        return
    wanted = render_server_properties(settings, paths.data).splitlines()
    pick = [line for line in running if line.startswith("listeners=")]
    if pick and pick[0] not in wanted:
        raise InfraError(
            f"skewscope's Kafka (pid {pid}) runs with {pick[0]}, not for KAFKA_BOOTSTRAP="
            f"{settings.kafka_bootstrap}; stop it first with `skewscope infra down`, or use "
            "its address"
        )


def _check_formatted_for(paths: BrokerPaths, controller: str) -> None:
    try:
        recorded = json.loads(paths.cluster_file.read_text()).get("controller")
    except (OSError, ValueError):
        return  # formatted by hand or an older layout: trust it
    if recorded and recorded != controller:
        host, _, port = str(recorded).rpartition(":")
        raise InfraError(
            f"the Kafka data folder {paths.data} was formatted for controller {recorded}, not "
            f"{controller}; set KAFKA_BOOTSTRAP={host}:{int(port) - 1} again, or delete "
            f"{paths.data} and {paths.cluster_file} to start an empty cluster (its topics are "
            "lost)"
        )


def _wait_ready(
    settings: Settings, paths: BrokerPaths, pid: int, began: float, timeout_s: float, log: Say
) -> None:
    """Poll metadata until the broker answers; stop it and raise with its log on failure."""
    next_note = time.monotonic() + 5.0
    while True:
        if not is_alive(pid):
            paths.pid_file.unlink(missing_ok=True)
            raise InfraError(
                f"Kafka (pid {pid}) exited during start-up; see {paths.server_log} and "
                f"{paths.stdout_log}. Last lines:\n{_log_tails(paths)}"
            )
        if broker_answers(settings, timeout_s=1.0):
            return
        now = time.monotonic()
        if now - began > timeout_s:
            terminate(pid, grace_s=10.0)
            paths.pid_file.unlink(missing_ok=True)
            raise InfraError(
                f"Kafka (pid {pid}) did not answer on {settings.kafka_bootstrap} within "
                f"{timeout_s:.0f} s and was stopped; see {paths.server_log}. Last lines:\n"
                f"{_log_tails(paths)}"
            )
        if now >= next_note:
            log(f"  still waiting for kafka ({now - began:.0f} s) ...")
            next_note = now + 5.0
        time.sleep(0.25)


def _log_tails(paths: BrokerPaths) -> str:
    parts = [tail_lines(paths.stdout_log, 10), tail_lines(paths.server_log, 20)]
    return "\n".join(part for part in parts if part) or "(no log output)"
