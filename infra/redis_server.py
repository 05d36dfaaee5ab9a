"""Redis for the verdict sink: use the one at settings.redis_url, or run a local redis-server.

The local server is ephemeral by design (``--save ""``, ``--appendonly no``): a cache of
verdicts and features, rebuilt from Kafka. State under ``settings.var_dir/redis``:
``redis.pid``, ``redis.log``. Limits: loopback URLs only for a server we start; no TLS
(``rediss://``); the URL's password, if any, becomes ``--requirepass``.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import redis

from infra.common import InfraError, Say, say, tail_lines
from infra.net import is_local_host
from infra.procs import cmdline, file_lock, is_alive, read_pid
from skewscope.config import Settings

START_TIMEOUT_S = 10.0
APT_HINT = "install it (apt-get install redis-server) or set REDIS_URL to an existing server"


@dataclass(frozen=True)
class RedisPaths:
    """Files of the local redis-server under ``<var_dir>/redis``."""

    root: Path
    pid_file: Path
    log_file: Path

    @classmethod
    def of(cls, settings: Settings) -> RedisPaths:
        root = settings.redis_dir
        return cls(root=root, pid_file=root / "redis.pid", log_file=root / "redis.log")


@dataclass(frozen=True)
class RedisStatus:
    """What answers on settings.redis_url. source: "managed", "external" or "down"."""

    url: str
    source: str
    answering: bool
    managed: bool
    pid: int | None
    version: str | None
    log_file: str | None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def client(url: str, timeout_s: float = 1.0) -> redis.Redis:
    """A redis-py client for url with short connect/read timeouts (probing, admin)."""
    return redis.Redis.from_url(url, socket_connect_timeout=timeout_s, socket_timeout=timeout_s)


def answers(url: str) -> bool:
    """True when the server at url replies to PING."""
    try:
        return bool(client(url).ping())
    except redis.RedisError:
        return False


def managed_pid(settings: Settings) -> int | None:
    """Pid from our pid file when it is alive and is a redis-server, else None."""
    pid = read_pid(RedisPaths.of(settings).pid_file)
    if pid is None or not is_alive(pid):
        return None
    return pid if "redis-server" in " ".join(cmdline(pid)) else None


def status(settings: Settings) -> RedisStatus:
    """Probe settings.redis_url; version and pid from ``INFO server``."""
    url = settings.redis_url
    ours = managed_pid(settings)
    version: str | None = None
    pid: int | None = None
    try:
        info = client(url).info("server")
        version, pid = str(info.get("redis_version")), int(info.get("process_id", 0)) or None
    except redis.RedisError:
        pass
    managed = ours is not None and (pid is None or pid == ours)
    source = "managed" if managed and version else ("external" if version else "down")
    return RedisStatus(
        url=url,
        source=source,
        answering=version is not None,
        managed=managed,
        pid=pid or ours,
        version=version,
        log_file=str(RedisPaths.of(settings).log_file) if managed else None,
    )


def up(settings: Settings, log: Say = say) -> RedisStatus:
    """Start redis-server for settings.redis_url unless that URL already answers PING.

    Installs redis-server with apt-get when missing and we run as root (says so first).
    Raises InfraError for a non-local URL that does not answer, or when it cannot start.
    """
    url = settings.redis_url
    if answers(url):
        found = status(settings)
        who = f"managed, pid {found.pid}" if found.managed else "external, not started by skewscope"
        log(f"redis {found.version} already answering at {url} ({who}); nothing to do")
        return found
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 6379
    if parts.scheme != "redis" or not is_local_host(host):
        raise InfraError(
            f"REDIS_URL={url} does not answer and is not a local redis:// address; start that "
            "server, or unset REDIS_URL to run a local one on redis://127.0.0.1:6379/0"
        )
    paths = RedisPaths.of(settings)
    with file_lock(paths.root / ".lock"):
        if answers(url):
            return status(settings)
        server = _redis_server_binary(log)
        began = time.monotonic()
        log(f"starting redis-server on {host}:{port} ...")
        argv = [
            server,
            "--bind",
            "127.0.0.1" if host == "localhost" else host,
            "--port",
            str(port),
            "--daemonize",
            "yes",
            "--dir",
            str(paths.root),
            "--pidfile",
            str(paths.pid_file),
            "--logfile",
            str(paths.log_file),
            "--save",
            "",
            "--appendonly",
            "no",
        ]
        if parts.password:
            argv += ["--requirepass", parts.password]
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=30)
        if proc.returncode != 0:
            raise InfraError(
                f"redis-server failed to start ({proc.returncode}): "
                f"{(proc.stdout + proc.stderr).strip()}; see {paths.log_file}"
            )
        while not answers(url):
            if time.monotonic() - began > START_TIMEOUT_S:
                raise InfraError(
                    f"redis-server did not answer on {url} within "
                    f"{START_TIMEOUT_S:.0f} s; see {paths.log_file}:\n"
                    f"{tail_lines(paths.log_file, 15)}"
                )
            time.sleep(0.05)
    found = status(settings)
    log(f"redis {found.version} ready in {time.monotonic() - began:.1f} s (pid {found.pid})")
    return found


def down(settings: Settings, log: Say = say) -> bool:
    """``SHUTDOWN NOSAVE`` the server we started (pid file); others are left alone."""
    paths = RedisPaths.of(settings)
    pid = managed_pid(settings)
    if pid is None:
        paths.pid_file.unlink(missing_ok=True)
        if answers(settings.redis_url):
            log(f"redis at {settings.redis_url} was not started by skewscope; leaving it running")
        else:
            log("redis: not running")
        return False
    log(f"stopping redis (pid {pid}) ...")
    try:
        client(settings.redis_url).shutdown(nosave=True)
    except redis.ConnectionError:
        pass  # the server closes the connection as it exits
    except redis.RedisError as exc:
        raise InfraError(f"redis refused SHUTDOWN ({exc}); stop pid {pid} by hand") from exc
    for _ in range(100):
        if not is_alive(pid):
            break
        time.sleep(0.05)
    paths.pid_file.unlink(missing_ok=True)
    log("redis stopped")
    return True


def _redis_server_binary(log: Say) -> str:
    found = shutil.which("redis-server")
    if found:
        return found
    if os.geteuid() != 0:
        raise InfraError(f"redis-server is not installed; {APT_HINT}")
    log("redis-server is missing; installing it with apt-get (running as root) ...")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for cmd in (["apt-get", "update", "-q"], ["apt-get", "install", "-y", "-q", "redis-server"]):
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
        if proc.returncode != 0:
            raise InfraError(f"`{' '.join(cmd)}` failed: {proc.stderr.strip()[-800:]}; {APT_HINT}")
    found = shutil.which("redis-server")
    if not found:
        raise InfraError(f"apt-get installed redis-server but it is not on PATH; {APT_HINT}")
    return found
