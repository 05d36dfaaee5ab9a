"""Helpers of the sink tests (no tests here): verdict records, a private redis-server, polling.

The shared Redis (conftest's ``redis_url``) is used on db 14 with a fresh key prefix per test,
so a test elsewhere that flushes db 15 cannot touch these keys. Tests that stop Redis or set
ACL users run their own redis-server on a free port in a temp dir.
"""

from __future__ import annotations

import contextlib
import shutil
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import pytest
import redis

SINK_TEST_DB = 14
NS_PER_S = 1_000_000_000


def db14(redis_url: str) -> str:
    """``redis_url`` switched to the sink tests' database."""
    return urlunsplit(urlsplit(redis_url)._replace(path=f"/{SINK_TEST_DB}"))


def verdict(entity: str, version: int, deployment: str = "dep0", **fields: Any) -> dict[str, Any]:
    """A valid Verdict record (firing, ttl 60 s, event time now) with ``fields`` overriding."""
    now_ns = time.time_ns()
    record: dict[str, Any] = {
        "schema_version": 1,
        "entity": entity,
        "entity_kind": "rank",
        "deployment": deployment,
        "condition": "tp-straggler",
        "state": "firing",
        "severity": 0.5,
        "confidence": 0.9,
        "root_cause": "throttled GPU",
        "directive": "drain-node",
        "directive_text": "drain the node",
        "evidence": [
            {
                "feature": "lateness_ns",
                "value": 2e5,
                "threshold": 5e4,
                "comparator": ">",
                "source": "nccl",
            }
        ],
        "model_score": None,
        "sources_missing": [],
        "impact": "",
        "first_seen_ns": now_ns,
        "last_seen_ns": now_ns,
        "ttl_ns": 60 * NS_PER_S,
        "version": version,
        "suppressed_by": None,
    }
    record.update(fields)
    return record


def wait_until(predicate: Callable[[], bool], timeout_s: float = 10.0, what: str = "") -> None:
    """Poll ``predicate`` every 10 ms; fail the test with ``what`` after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout_s} s waiting for {what or predicate}")
        time.sleep(0.01)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class PrivateRedis:
    """A redis-server of the test's own, on a fixed port, that can be stopped and restarted."""

    def __init__(self, root: Path, extra_args: tuple[str, ...] = (), tls: bool = False) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            pytest.skip("redis-server is not installed (apt-get install redis-server)")
        self.binary = binary
        self.root = root
        self.port = free_port()
        self.extra_args = extra_args
        self.tls = tls
        self.ca_certs = str(root / "cert.pem")
        if tls:
            make_self_signed_cert(root)
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"{'rediss' if self.tls else 'redis'}://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        ports = ["--port", str(self.port)]
        tls_kwargs: dict[str, Any] = {}
        if self.tls:
            ports = [
                "--port", "0", "--tls-port", str(self.port), "--tls-auth-clients", "no",
                "--tls-cert-file", self.ca_certs, "--tls-key-file", str(self.root / "key.pem"),
                "--tls-ca-cert-file", self.ca_certs,
            ]  # fmt: skip
            tls_kwargs = {"ssl": True, "ssl_ca_certs": self.ca_certs}
        argv = [
            self.binary, *ports, "--bind", "127.0.0.1", "--dir", str(self.root),
            "--save", "", "--appendonly", "no", *self.extra_args,
        ]  # fmt: skip
        self.proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        admin = redis.Redis(
            host="127.0.0.1", port=self.port, socket_connect_timeout=0.2, **tls_kwargs
        )
        deadline = time.monotonic() + 10
        while True:
            try:
                admin.ping()
                break
            except redis.AuthenticationError:
                break  # answering, just protected
            except redis.ResponseError as exc:
                if "NOAUTH" in str(exc):
                    break
                raise
            except redis.ConnectionError:
                if time.monotonic() > deadline or self.proc.poll() is not None:
                    raise RuntimeError(f"redis-server on port {self.port} did not start") from None
                time.sleep(0.02)
        admin.close()

    def stop(self) -> None:
        """Kill the server (as an outage would) and wait until it is gone."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)
        self.proc = None


def make_self_signed_cert(root: Path) -> None:
    """cert.pem/key.pem for 127.0.0.1 under root (openssl); skips the test without openssl."""
    if shutil.which("openssl") is None:
        pytest.skip("openssl is not installed; needed for the TLS test")
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-keyout",
            str(root / "key.pem"),
            "-out",
            str(root / "cert.pem"),
            "-subj",
            "/CN=127.0.0.1",
            "-addext",
            "subjectAltName=IP:127.0.0.1,DNS:localhost",
        ],
        check=True,
        capture_output=True,
    )


@contextlib.contextmanager
def private_redis(
    root: Path, extra_args: tuple[str, ...] = (), tls: bool = False
) -> Iterator[PrivateRedis]:
    server = PrivateRedis(root, extra_args, tls)
    server.start()
    try:
        yield server
    finally:
        server.stop()
