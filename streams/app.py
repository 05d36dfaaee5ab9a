"""The Faust app: reads like the topology. telemetry.* -> detector shards -> skew.verdicts.

Faust provides the runtime (consumer group, partitions, agents, web views). Windows, joins and
watermarks are skewscope's event-time operators inside :class:`~models.detector.Detector`;
Faust's own windows expire by wall clock and its joins are not implemented, so neither is used.
Agents are thin: decode, hand frames to the shard of their partition, publish what comes out.

State survives restarts (docs/streams.md, "Checkpointing and recovery"): every
``checkpoint_interval_windows`` closed windows a shard's checkpoint (state + the offsets of the
next input messages) goes to the ``checkpoints`` table, keyed by partition and backed by a
compacted changelog topic. After each rebalance the shards of the assigned partitions are
restored from the table and the telemetry consumer is sent back to the checkpointed offsets;
:class:`~streams.recovery.ShardRecovery` decides message by message what to apply.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import defaultdict
from collections.abc import Mapping
from typing import Any

import faust
from faust.types import TP
from prometheus_client import generate_latest

from infra.kafka_admin import admin_client, committed_offsets
from infra.topics import TopicSpec, ensure_topics
from models.detector import DetectorConfig, Output
from schemas.errors import CodecError
from sinks.metrics import METRICS, REGISTRY
from skewscope.config import Settings
from skewscope.kafka.dead_letters import send_dead_letter_of
from skewscope.kafka.producer import DeliveryError, EventProducer
from streams.health_page import register_health_page
from streams.recovery import QUIET_TICKS, Admit, ShardRecovery
from streams.shards import ShardPool
from streams.topology_feed import TopologyFeed

log = logging.getLogger(__name__)
STALL_CHECK_INTERVAL_S = 2.0  # how often quiet partitions behind their end are looked at


def build_app(
    settings: Settings,
    app_id: str = "skewscope-worker",
    web_port: int = 6066,
    detector_config: DetectorConfig | None = None,
    batch_size: int = 2000,
    batch_within_s: float = 0.1,
    checkpoint_interval_windows: int = 4,
    session_timeout_s: float = 10.0,
) -> tuple[faust.App, ShardPool]:
    """Build the worker app; returns it with the shard pool (for the web views and tests).

    ``checkpoint_interval_windows``: closed windows between two checkpoints of a shard (4:
    1 s of event time with the default 250 ms hop); at most this many windows' outputs are
    re-emitted after a crash. ``session_timeout_s``: how long the group waits for a worker
    that died without leaving before its partitions go to the others (or to its restart).
    """
    datadir = settings.var_dir / "faust" / app_id
    datadir.mkdir(parents=True, exist_ok=True)
    app = faust.App(
        app_id,
        broker=f"kafka://{settings.kafka_bootstrap}",
        value_serializer="raw",
        key_serializer="raw",
        store="memory://",
        topic_partitions=settings.telemetry_partitions,
        web_port=web_port,
        web_host="127.0.0.1",
        datadir=str(datadir),
        producer_compression_type="lz4",
        topic_allow_declare=False,
        broker_session_timeout=session_timeout_s,
    )
    topics = settings.topics
    pool = ShardPool(config=detector_config or DetectorConfig())
    telemetry = app.topic(*topics.telemetry(), key_type=bytes, value_type=bytes)
    verdicts = app.topic(topics.verdicts, key_type=bytes, value_type=bytes)
    features = app.topic(topics.features, key_type=bytes, value_type=bytes)
    recovery = ShardRecovery(pool, interval_windows=checkpoint_interval_windows)
    checkpoints = app.Table(
        "checkpoints",
        key_type=bytes,
        value_type=bytes,
        partitions=settings.telemetry_partitions,
    )
    # topic_allow_declare is off (telemetry topics are infra's), so the changelog is made here.
    ensure_topics(
        settings,
        log=lambda *_: None,
        specs=[
            TopicSpec(
                checkpoints.changelog_topic.get_topic_name(),
                settings.telemetry_partitions,
                {"cleanup.policy": "compact"},
            )
        ],
    )
    telemetry_topics = set(topics.telemetry())
    held: dict[str, Any] = {"partitions": set(), "generation": None}
    dlq = EventProducer(settings)
    admin = admin_client(settings)
    feed = TopologyFeed(settings, pool)
    loaded = feed.catch_up()
    log.info("topology: %d records loaded before detection starts", loaded)
    app.skewscope_pool = pool  # type: ignore[attr-defined]
    app.skewscope_recovery = recovery  # type: ignore[attr-defined]
    app.skewscope_stats = {"verdicts": 0, "dead_letters": 0, "frames": 0}  # type: ignore[attr-defined]

    # Sends the broker has not confirmed yet, of this batch and the ones before it.
    unconfirmed: list[Any] = []

    async def publish(outputs: list[Output], wait: bool = False) -> None:
        """Send outputs; with ``wait``, return only once the broker has them all and every
        earlier send too (a checkpoint must not cover a verdict whose send failed: the
        gather raises, no checkpoint is written, and a restart re-emits it)."""
        for out in outputs:
            value = pool.codec.encode(out.schema, out.record)
            target = verdicts if out.schema == "Verdict" else features
            unconfirmed.append(await target.send(key=out.key.encode(), value=value))
            if out.schema == "Verdict":
                app.skewscope_stats["verdicts"] += 1  # type: ignore[attr-defined]
                if out.record["condition"] != "heartbeat":
                    METRICS.verdicts.labels(out.record["condition"], out.record["state"]).inc()
        if wait and unconfirmed:
            pending = list(unconfirmed)
            unconfirmed.clear()
            await asyncio.gather(*pending)
        else:  # forget the confirmed ones; a failed one stays for the next wait to raise
            unconfirmed[:] = [
                f for f in unconfirmed if not f.done() or f.cancelled() or f.exception() is not None
            ]

    dead_letter_failures = {"reported": 0}

    async def flush_dead_letters() -> None:
        """Before a checkpoint covers a bad message, its dead letter is on the broker (or its
        failure logged): a crash right after the checkpoint cannot lose it silently."""
        try:
            await asyncio.get_running_loop().run_in_executor(None, dlq.flush, 10.0)
        except DeliveryError as err:
            if dlq.stats.failed > dead_letter_failures["reported"]:
                dead_letter_failures["reported"] = dlq.stats.failed
                log.error("dead letters could not be delivered: %s", err)

    async def note_start_positions(partition: int) -> None:
        """Where the shard starts on each telemetry topic it has read nothing of yet: the
        group's committed offset (none committed: the earliest, as auto_offset_reset is).
        Nothing of the topic has been processed here, so nothing was committed here: that
        is where its first message will come from. Put into the checkpoint, it makes a restore
        seek the topic back there, even when the group committed past its first messages
        before the next checkpoint covered them."""
        unread = [t for t in sorted(telemetry_topics) if recovery.expected(t, partition) is None]
        if not unread:
            return
        try:
            committed = await asyncio.get_running_loop().run_in_executor(
                None, committed_offsets, admin, app_id, [(t, partition) for t in unread]
            )
            for topic in unread:
                start = committed.get((topic, partition))
                if start is None:
                    tp = TP(topic, partition)
                    start = (await app.consumer.earliest_offsets(tp)).get(tp)
                if start is not None and start >= 0:
                    recovery.start_at(topic, partition, start)
        except Exception as exc:  # the broker away: asked again at the next checkpoint
            log.warning("partition %d: start offsets of unread topics unknown: %s", partition, exc)

    async def save_checkpoint(partition: int) -> None:
        # Written only after the outputs it covers are on the broker: a crash in between
        # re-emits them (identically) instead of losing them.
        await note_start_positions(partition)
        key, blob = str(partition).encode(), recovery.checkpoint(partition)
        checkpoints.data[key] = blob
        sent = await checkpoints.changelog_topic.send(
            key=key,
            value=blob,
            partition=partition,
            key_serializer="raw",
            value_serializer="raw",
        )
        await sent

    async def seek_back(topic: str, partition: int, offset: int) -> None:
        tp = TP(topic, partition)
        earliest = (await app.consumer.earliest_offsets(tp)).get(tp, 0)
        if earliest > offset:
            recovery.lost(topic, partition, earliest)
            offset = earliest
        log.info("%s[%d]: seeking back to offset %d (checkpointed position)", *tp, offset)
        # seek_wait runs the seek on the consumer's own thread and waits for the position.
        # Consumer.seek would call aiokafka's seek from this thread, while its fetcher state
        # and wake-up future belong to the consumer thread's event loop (not thread-safe).
        await app.consumer.seek_wait({tp: offset})

    @checkpoints.on_recover
    async def restore_shards() -> None:
        """After each rebalance: shards of newly assigned partitions from their checkpoints."""
        generation = app.consumer_generation_id
        assigned = {
            tp.partition for tp in app.assignor.assigned_actives() if tp.topic in telemetry_topics
        }
        continuous = held["generation"] is not None and generation == held["generation"] + 1
        for partition in set(pool.shards) - assigned:
            recovery.forget(partition)
        for partition in sorted(assigned):
            if continuous and partition in held["partitions"] and partition in pool.shards:
                continue  # held through the rebalance: memory is newer than the table
            blob = checkpoints.data.get(str(partition).encode())
            log.info("%s", recovery.restore(partition, blob))
        held.update(partitions=assigned, generation=generation)
        recovery.rebalanced()
        _seek_to_checkpoints_after_faust_seeks(app.consumer)

    def _seek_to_checkpoints_after_faust_seeks(consumer: Any) -> None:
        """Faust seeks every partition to its committed offset right after this callback and
        before the flow resumes; the checkpointed offsets must win, and seeking while messages
        flow races with Faust's read-offset filter (refetched messages get dropped). So
        Faust's seek is followed, once per rebalance, by ours, still before the flow resumes."""
        if getattr(consumer, "_skewscope_seek_wrapped", False):
            return
        faust_seek = consumer.perform_seek

        async def perform_seek() -> None:
            await faust_seek()
            for partition in sorted(held["partitions"]):
                for topic in sorted(telemetry_topics):
                    offset = recovery.expected(topic, partition)
                    if offset is not None:
                        await seek_back(topic, partition, offset)

        consumer.perform_seek = perform_seek
        consumer._skewscope_seek_wrapped = True

    # Faust drops a message whose offset is below the highest offset it has read on its
    # partition. After a seek back to a checkpoint, messages fetched before the seek still
    # arrive first and raise that mark, and the re-read messages behind them would be dropped.
    # ShardRecovery already decides per message (skip, apply, seek), so the filter is off for
    # the telemetry topics. The consumer is made now, before its fetcher binds the mapping.
    consumer: Any = app.consumer
    consumer._read_offset = _ReadOffsets(telemetry_topics, consumer._read_offset)
    # Its drain loop binds the callback when it starts, too.
    consumer.callback = _noting_handed(consumer.callback, recovery, telemetry_topics)

    @app.agent(telemetry)
    async def detect(stream: Any) -> None:
        async for events in stream.take_events(batch_size, within=batch_within_s):
            outputs: list[Output] = []
            for event in events:
                message = event.message
                topic, partition, offset = message.topic, message.partition, message.offset
                decision, seek_to = recovery.admit(topic, partition, offset)
                if decision is Admit.SEEK:
                    await seek_back(topic, partition, seek_to)
                if decision is not Admit.PROCESS:
                    continue
                late_before = pool.shard(partition).stats.late_frames
                try:
                    outputs += pool.process_bytes(partition, message.value)
                except CodecError as exc:
                    _dead_letter(dlq, settings, message, exc)
                    app.skewscope_stats["dead_letters"] += 1  # type: ignore[attr-defined]
                    METRICS.dead_letters.labels("worker").inc()
                if pool.shard(partition).stats.late_frames > late_before:
                    METRICS.late_events.labels(topic).inc()
                recovery.applied(topic, partition, offset)
                if recovery.due(partition):
                    await publish(outputs, wait=True)
                    outputs = []
                    await flush_dead_letters()
                    await save_checkpoint(partition)
            app.skewscope_stats["frames"] += len(events)  # type: ignore[attr-defined]
            await publish(outputs)

    @app.timer(interval=1.0)
    async def pipeline_metrics() -> None:
        """Watermark delay per deployment and consumer lag per partition, for Prometheus."""
        now_ns = time.time_ns()
        for det in pool.shards.values():
            if det.watermark_ns > 0:
                delay_s = (now_ns - det.watermark_ns) / 1e9
                for deployment in det.deployments_seen():
                    METRICS.watermark_delay.labels(deployment).set(delay_s)
        consumer = app.consumer
        for tp in consumer.assignment():
            highwater = consumer.highwater(tp)
            position = consumer._read_offset.get(tp)  # type: ignore[attr-defined]
            if highwater is not None and position is not None:
                lag = max(0, highwater - position - 1)
                METRICS.consumer_lag.labels(app_id, tp.topic, str(tp.partition)).set(lag)

    @app.timer(interval=STALL_CHECK_INTERVAL_S)
    async def seek_stalled_partitions() -> None:
        """A seek back that was lost with no later message to notice it: a partition behind
        its end that delivers nothing is sought back again (ShardRecovery.stalled)."""
        consumer: Any = app.consumer
        if app.rebalancing or not consumer.flow_active:
            return  # the rebalance's own seeks come first
        try:
            ends = {
                (tp.topic, tp.partition): consumer.highwater(tp)
                for tp in consumer.assignment()
                if tp.topic in telemetry_topics
            }
            for topic, partition, offset in recovery.stalled(ends):
                log.warning(
                    "%s[%d]: nothing delivered for %.0f s, offsets from %d unread; seeking back",
                    topic,
                    partition,
                    QUIET_TICKS * STALL_CHECK_INTERVAL_S,
                    offset,
                )
                METRICS.stalled_seeks.labels(topic).inc()
                await seek_back(topic, partition, offset)
        except Exception as exc:  # a partition revoked meanwhile: the rebalance re-seeks it
            log.warning("stalled-partition check failed: %s", exc)

    @app.page("/metrics")
    async def metrics(web: Any, request: Any) -> Any:
        # aiohttp refuses a charset inside content_type; the exposition format is plain text.
        return web.bytes(generate_latest(REGISTRY), content_type="text/plain")

    @app.task
    async def follow_topology() -> None:
        await asyncio.get_running_loop().run_in_executor(None, feed.run)

    @app.page("/status")
    async def status(web: Any, request: Any) -> Any:
        shards = {
            str(p): {
                "watermark_ns": d.watermark_ns,
                "windows_closed": d.stats.windows_closed,
                "frames": d.stats.frames,
                "samples": d.stats.samples,
                "late_frames": d.stats.late_frames,
                "firing": d.fusion.firing(),
            }
            for p, d in pool.shards.items()
        }
        progress = {
            "checkpoints": recovery.checkpoints,
            "seeks": recovery.seeks,
            "skipped": recovery.skipped,
            "gaps": recovery.gaps,
            "quiet_seeks": recovery.quiet_seeks,
        }
        return web.json(
            {
                "stats": app.skewscope_stats,  # type: ignore[attr-defined]
                "recovery": progress,
                "shards": shards,
                "now_ns": time.time_ns(),
            }
        )

    @app.on_before_shutdown.connect
    def _stop(sender: Any, /, *args: Any, signal: Any, **kwargs: Any) -> None:
        feed.stop()
        dlq.flush(10)

    # Before the worker starts, so the page wins the '/' route over Faust's own index.
    register_health_page(app, pool, settings)
    return app, pool


def _noting_handed(callback: Any, recovery: ShardRecovery, topics: set[str]) -> Any:
    """The consumer's callback (it puts each fetched message into the streams' queues, waiting
    while they are full), telling the shards' recovery first which telemetry message it hands
    over: one not yet admitted is on its way, so its partition is not stalled."""
    telemetry = frozenset(topics)

    async def on_message(message: Any) -> None:
        if message.topic in telemetry:
            recovery.handed(message.topic, message.partition, message.offset)
        await callback(message)

    return on_message


class _ReadOffsets(defaultdict[Any, int | None]):
    """Faust's per-partition read offsets, reading as 'none yet' for ``unfiltered`` topics, so
    its drain loop passes every message of those topics (it still records the offsets)."""

    def __init__(self, unfiltered: set[str], current: Mapping[Any, int | None]) -> None:
        super().__init__(lambda: None, current)
        self._unfiltered = frozenset(unfiltered)

    def __getitem__(self, tp: Any) -> int | None:
        if tp.topic in self._unfiltered:
            return None
        return super().__getitem__(tp)


def _dead_letter(dlq: EventProducer, settings: Settings, message: Any, exc: Exception) -> None:
    """A bad message to the dead-letter topic (cut to fit, or logged when it cannot go:
    skewscope.kafka.dead_letters); the worker goes on either way."""
    if not send_dead_letter_of(dlq, settings.topics.dead_letter, message, exc, "worker"):
        METRICS.dead_letters.labels("worker-unsent").inc()
