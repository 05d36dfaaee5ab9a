"""Kafka 4.x and Redis in Docker via testcontainers, for machines with a Docker engine.

Used by tests/conftest.py when no KAFKA_BOOTSTRAP / REDIS_URL is given and Docker answers.
Kafka: ``apache/kafka`` (the Apache image; testcontainers' own KafkaContainer drives
Confluent images, i.e. Kafka 3.x), single KRaft node, advertised on a host port chosen up
front. Containers stop when the ExitStack closes. Needs the ``dev`` extra (testcontainers).
"""

from __future__ import annotations

import contextlib

from infra.net import free_port

KAFKA_IMAGE = "apache/kafka:4.1.0"
REDIS_IMAGE = "redis:7"


def docker_answers() -> bool:
    """True when a Docker engine answers a ping within ~2 s (False without the docker SDK)."""
    try:
        import docker

        engine = docker.from_env(timeout=2)
        try:
            return bool(engine.ping())
        finally:
            engine.close()
    except Exception:  # no SDK, no socket, no permission: all mean "no Docker"
        return False


def kafka_env(host: str, port: int) -> dict[str, str]:
    """Environment of the apache/kafka image for one broker+controller advertised at host:port."""
    return {
        "KAFKA_NODE_ID": "1",
        "KAFKA_PROCESS_ROLES": "broker,controller",
        "KAFKA_LISTENERS": "PLAINTEXT://:9092,CONTROLLER://:9093",
        "KAFKA_ADVERTISED_LISTENERS": f"PLAINTEXT://{host}:{port}",
        "KAFKA_CONTROLLER_LISTENER_NAMES": "CONTROLLER",
        "KAFKA_LISTENER_SECURITY_PROTOCOL_MAP": "CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT",
        "KAFKA_CONTROLLER_QUORUM_VOTERS": "1@localhost:9093",
        "KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR": "1",
        "KAFKA_TRANSACTION_STATE_LOG_REPLICATION_FACTOR": "1",
        "KAFKA_TRANSACTION_STATE_LOG_MIN_ISR": "1",
        "KAFKA_SHARE_COORDINATOR_STATE_TOPIC_REPLICATION_FACTOR": "1",
        "KAFKA_SHARE_COORDINATOR_STATE_TOPIC_MIN_ISR": "1",
        "KAFKA_GROUP_INITIAL_REBALANCE_DELAY_MS": "0",
    }


def start_kafka(stack: contextlib.ExitStack, image: str = KAFKA_IMAGE) -> str:
    """Start a Kafka container (stopped by stack); return its bootstrap address."""
    from testcontainers.core.container import DockerContainer
    from testcontainers.core.docker_client import DockerClient
    from testcontainers.core.wait_strategies import LogMessageWaitStrategy

    host = DockerClient().host()
    port = free_port()
    container = DockerContainer(image).with_bind_ports(9092, port)
    for key, value in kafka_env(host, port).items():
        container.with_env(key, value)
    container.waiting_for(LogMessageWaitStrategy("Kafka Server started").with_startup_timeout(120))
    container.start()
    stack.callback(container.stop)
    return f"{host}:{port}"


def start_redis(stack: contextlib.ExitStack, image: str = REDIS_IMAGE) -> str:
    """Start a Redis container (stopped by stack); return its ``redis://host:port/0`` URL."""
    from testcontainers.community.redis import RedisContainer

    container = RedisContainer(image)
    container.start()
    stack.callback(container.stop)
    return f"redis://{container.get_container_host_ip()}:{container.get_exposed_port(6379)}/0"
