"""Create skewscope's Kafka topics idempotently (confluent-kafka AdminClient).

Every topic gets ``settings.telemetry_partitions`` partitions: all are keyed by deployment and
the stream joins need them co-partitioned. Replication factor: the broker's
``default.replication.factor`` (1 on the local broker). Existing topics are never altered or
deleted; a wrong partition count or cleanup.policy is reported as a warning (fixing it means
recreating the topic, which loses its data — a human decision).
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, field

from confluent_kafka import KafkaError, KafkaException
from confluent_kafka.admin import AdminClient, ConfigResource, NewTopic, ResourceType

from infra.common import InfraError, Say, say
from infra.kafka_admin import admin_client
from skewscope.config import Settings

DLQ_RETENTION_MS = 7 * 24 * 3600 * 1000


@dataclass(frozen=True)
class TopicSpec:
    """Name, partition count and topic-level configs of one topic."""

    name: str
    partitions: int
    config: Mapping[str, str]


@dataclass
class TopicsSummary:
    """What ensure_topics did: topics created, found, and warnings about found ones."""

    created: list[str] = field(default_factory=list)
    existing: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    def lines(self) -> list[str]:
        out = [f"topics: {len(self.created)} created, {len(self.existing)} already present"]
        out += [f"  created {name}" for name in self.created]
        out += [f"  WARNING: {text}" for text in self.warnings]
        return out


def topic_specs(settings: Settings) -> list[TopicSpec]:
    """The topics of settings.topics with their policies (telemetry: delete + retention;
    topology, verdicts: compact; labels, features: delete; dead letters: delete, 7 days)."""
    topics, parts = settings.topics, settings.telemetry_partitions
    retention = str(settings.telemetry_retention_ms)
    telemetry = {"cleanup.policy": "delete", "retention.ms": retention}
    specs = [TopicSpec(name, parts, telemetry) for name in topics.telemetry()]
    specs += [
        TopicSpec(topics.topology, parts, {"cleanup.policy": "compact"}),
        TopicSpec(topics.verdicts, parts, {"cleanup.policy": "compact"}),
        TopicSpec(topics.labels, parts, {"cleanup.policy": "delete"}),
        TopicSpec(topics.features, parts, {"cleanup.policy": "delete", "retention.ms": retention}),
        TopicSpec(
            topics.dead_letter,
            parts,
            {"cleanup.policy": "delete", "retention.ms": str(DLQ_RETENTION_MS)},
        ),
    ]
    return specs


def ensure_topics(
    settings: Settings,
    log: Say = say,
    timeout_s: float = 30.0,
    specs: list[TopicSpec] | None = None,
) -> TopicsSummary:
    """Create the missing topics of specs (default: topic_specs(settings)); check the others.

    Raises InfraError when the broker cannot be reached or refuses a creation for a reason
    other than "already exists" (a concurrent creator is fine).
    """
    specs = topic_specs(settings) if specs is None else specs
    admin = admin_client(settings)
    try:
        meta = admin.list_topics(timeout=timeout_s)
    except KafkaException as exc:
        raise InfraError(
            f"cannot list topics on {settings.kafka_bootstrap}: {exc}; is the broker up? "
            "(`skewscope infra up`)"
        ) from exc
    summary = TopicsSummary()
    missing = [spec for spec in specs if spec.name not in meta.topics]
    present = [spec for spec in specs if spec.name in meta.topics]
    if missing:
        _create(admin, missing, timeout_s, summary)
    for spec in present:
        summary.existing.append(spec.name)
        found = _partition_count(admin, spec.name, len(meta.topics[spec.name].partitions))
        if found != spec.partitions:
            summary.warnings.append(
                f"topic {spec.name} has {found} partitions, expected {spec.partitions}; keyed "
                "topics must be co-partitioned (key = deployment). Recreate it, or set "
                f"SKEWSCOPE_TELEMETRY_PARTITIONS={found} if all topics have {found}"
            )
    summary.warnings += _policy_warnings(admin, present, timeout_s)
    for line in summary.lines():
        log(line)
    return summary


def _create(
    admin: AdminClient, specs: list[TopicSpec], timeout_s: float, summary: TopicsSummary
) -> None:
    new = [
        NewTopic(
            spec.name,
            num_partitions=spec.partitions,
            replication_factor=-1,
            config=dict(spec.config),
        )
        for spec in specs
    ]
    futures = admin.create_topics(new, operation_timeout=timeout_s, request_timeout=timeout_s)
    for name, future in futures.items():
        try:
            future.result()
            summary.created.append(name)
        except KafkaException as exc:
            error = exc.args[0]
            if isinstance(error, KafkaError) and error.code() == KafkaError.TOPIC_ALREADY_EXISTS:
                summary.existing.append(name)
            else:
                raise InfraError(f"creating topic {name} failed: {exc}") from exc
    _await_leaders(admin, {spec.name: spec.partitions for spec in specs}, timeout_s)


def _await_leaders(admin: AdminClient, partitions: dict[str, int], timeout_s: float) -> None:
    """Wait until the broker's metadata lists every new topic with all its partitions led.

    The controller acknowledges a creation before every broker's metadata has the topic, so
    a producer that starts at once may be told that the topic does not exist or that a
    partition has no leader yet. Waiting here keeps those first seconds out of every
    producer's path (an idempotent librdkafka producer that loses and regains a partition
    restarts its sequence numbers, which the broker can take for duplicates: a suspected
    cause of the one 2-message shortfall the bench smoke test saw, not confirmed)."""
    deadline = time.monotonic() + timeout_s
    waiting = dict(partitions)
    while waiting:
        topics = admin.list_topics(timeout=timeout_s).topics
        for name, count in list(waiting.items()):
            topic = topics.get(name)
            if (
                topic is not None
                and topic.error is None
                and len(topic.partitions) == count
                and all(p.leader >= 0 for p in topic.partitions.values())
            ):
                del waiting[name]
        if not waiting:
            return
        if time.monotonic() >= deadline:
            raise InfraError(
                f"topics created but without a leader for every partition after {timeout_s} s: "
                + ", ".join(sorted(waiting))
            )
        time.sleep(0.05)


def _partition_count(admin: AdminClient, name: str, seen: int, settle_s: float = 5.0) -> int:
    """Partition count of name; a topic created a moment ago may list no partitions yet."""
    deadline = time.monotonic() + settle_s
    while seen == 0 and time.monotonic() < deadline:
        time.sleep(0.1)
        topic = admin.list_topics(topic=name, timeout=settle_s).topics.get(name)
        seen = len(topic.partitions) if topic is not None and topic.error is None else 0
    return seen


def _policy_warnings(admin: AdminClient, specs: list[TopicSpec], timeout_s: float) -> list[str]:
    """Warn when an existing topic's cleanup.policy differs from its spec."""
    if not specs:
        return []
    resources = [ConfigResource(ResourceType.TOPIC, spec.name) for spec in specs]
    futures = admin.describe_configs(resources, request_timeout=timeout_s)
    warnings: list[str] = []
    for spec, resource in zip(specs, resources, strict=True):
        try:
            entries = futures[resource].result()
        except KafkaException as exc:
            warnings.append(f"could not read the configs of {spec.name}: {exc}")
            continue
        want = spec.config.get("cleanup.policy")
        entry = entries.get("cleanup.policy")
        have = entry.value if entry is not None else None
        if want and have != want:
            warnings.append(
                f"topic {spec.name} has cleanup.policy={have}, expected {want}; change it with "
                "incremental_alter_configs or recreate the topic"
            )
    return warnings
