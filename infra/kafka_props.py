"""server.properties of the local single-node KRaft broker, and KRaft cluster ids.

The broker listens on the host:port of ``settings.kafka_bootstrap`` (first entry) and runs its
controller on port + 1 of the same host (127.0.0.1:9092 → controller 127.0.0.1:9093). Single
node: every internal topic has replication factor 1. Topic auto-creation stays on (Faust
creates its own changelog/repartition topics).
"""

from __future__ import annotations

import base64
import uuid
from pathlib import Path

from infra.common import InfraError
from infra.net import first_bootstrap, is_local_host
from skewscope.config import Settings


def listen_addresses(settings: Settings) -> tuple[str, int, int]:
    """(host, broker port, controller port) for a broker we run ourselves; loopback only."""
    host, port = first_bootstrap(settings.kafka_bootstrap)
    if not is_local_host(host):
        raise InfraError(
            f"KAFKA_BOOTSTRAP={settings.kafka_bootstrap} is not a local address and does not "
            "answer; start that broker, or unset KAFKA_BOOTSTRAP to run the local one "
            "on 127.0.0.1:9092"
        )
    if port >= 65535:
        raise InfraError(f"broker port {port} leaves no room for the controller on port + 1")
    host = "127.0.0.1" if host in {"localhost", "0.0.0.0"} else host
    return host, port, port + 1


def render_server_properties(settings: Settings, data_dir: Path) -> str:
    """Contents of server.properties for a combined broker+controller node with id 1."""
    host, port, controller = listen_addresses(settings)
    props = {
        "process.roles": "broker,controller",
        "node.id": "1",
        "controller.quorum.bootstrap.servers": f"{host}:{controller}",
        "listeners": f"PLAINTEXT://{host}:{port},CONTROLLER://{host}:{controller}",
        "advertised.listeners": f"PLAINTEXT://{host}:{port}",
        "controller.listener.names": "CONTROLLER",
        "inter.broker.listener.name": "PLAINTEXT",
        "listener.security.protocol.map": "CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT",
        "log.dirs": str(data_dir),
        "num.partitions": str(settings.telemetry_partitions),
        "offsets.topic.replication.factor": "1",
        "transaction.state.log.replication.factor": "1",
        "transaction.state.log.min.isr": "1",
        "share.coordinator.state.topic.replication.factor": "1",
        "share.coordinator.state.topic.min.isr": "1",
        "group.initial.rebalance.delay.ms": "0",
    }
    lines = ["# Written by infra/kafka_props.py on every start; edits are overwritten."]
    lines += [f"{key}={value}" for key, value in props.items()]
    return "\n".join(lines) + "\n"


def new_cluster_id() -> str:
    """A random KRaft cluster id: 16 bytes, URL-safe base64 without padding (22 chars).

    Like Kafka's ``Uuid.randomUuid()`` it never starts with '-', which CLIs would take for an
    option.
    """
    while True:
        text = base64.urlsafe_b64encode(uuid.uuid4().bytes).rstrip(b"=").decode()
        if not text.startswith("-"):
            return text
