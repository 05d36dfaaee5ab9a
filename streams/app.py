"""The Faust app: reads like the topology. telemetry.* -> detector shards -> skew.verdicts.

Faust provides the runtime (consumer group, partitions, agents, web views). Windows, joins and
watermarks are skewscope's event-time operators inside :class:`~models.detector.Detector`;
Faust's own windows expire by wall clock and its joins are not implemented, so neither is used.
Agents are thin: decode, hand frames to the shard of their partition, publish what comes out.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import faust

from models.detector import DetectorConfig, Output
from schemas.errors import CodecError
from skewscope.config import Settings
from skewscope.kafka.producer import EventProducer
from streams.shards import ShardPool
from streams.topology_feed import TopologyFeed

log = logging.getLogger(__name__)


def build_app(
    settings: Settings,
    app_id: str = "skewscope-worker",
    web_port: int = 6066,
    detector_config: DetectorConfig | None = None,
    batch_size: int = 2000,
    batch_within_s: float = 0.1,
) -> tuple[faust.App, ShardPool]:
    """Build the worker app; returns it with the shard pool (for the web views and tests)."""
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
    )
    topics = settings.topics
    pool = ShardPool(config=detector_config or DetectorConfig())
    telemetry = app.topic(*topics.telemetry(), key_type=bytes, value_type=bytes)
    verdicts = app.topic(topics.verdicts, key_type=bytes, value_type=bytes)
    features = app.topic(topics.features, key_type=bytes, value_type=bytes)
    dlq = EventProducer(settings)
    feed = TopologyFeed(settings, pool)
    loaded = feed.catch_up()
    log.info("topology: %d records loaded before detection starts", loaded)
    app.skewscope_pool = pool  # type: ignore[attr-defined]
    app.skewscope_stats = {"verdicts": 0, "dead_letters": 0, "frames": 0}  # type: ignore[attr-defined]

    async def publish(outputs: list[Output]) -> None:
        for out in outputs:
            value = pool.codec.encode(out.schema, out.record)
            target = verdicts if out.schema == "Verdict" else features
            await target.send(key=out.key.encode(), value=value)
            if out.schema == "Verdict":
                app.skewscope_stats["verdicts"] += 1  # type: ignore[attr-defined]

    @app.agent(telemetry)
    async def detect(stream: Any) -> None:
        async for events in stream.take_events(batch_size, within=batch_within_s):
            outputs: list[Output] = []
            for event in events:
                message = event.message
                try:
                    outputs += pool.process_bytes(message.partition, message.value)
                except CodecError as exc:
                    _dead_letter(dlq, settings, message, exc)
                    app.skewscope_stats["dead_letters"] += 1  # type: ignore[attr-defined]
            app.skewscope_stats["frames"] += len(events)  # type: ignore[attr-defined]
            await publish(outputs)

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
        return web.json(
            {"stats": app.skewscope_stats, "shards": shards, "now_ns": time.time_ns()}  # type: ignore[attr-defined]
        )

    @app.on_before_shutdown.connect
    def _stop(sender: Any, /, *args: Any, signal: Any, **kwargs: Any) -> None:
        feed.stop()
        dlq.flush(10)

    return app, pool


def _dead_letter(dlq: EventProducer, settings: Settings, message: Any, exc: Exception) -> None:
    reason = (
        f"topic {message.topic}: message at offset {message.offset} "
        f"(partition {message.partition}): {exc}"
    )
    log.warning("%s; sent to %s", reason, settings.topics.dead_letter)
    dlq.send(
        settings.topics.dead_letter,
        message.key,
        "DeadLetter",
        {
            "topic": message.topic,
            "partition": message.partition,
            "offset": message.offset,
            "key": message.key,
            "value": message.value,
            "error_type": type(exc).__name__,
            "reason": str(exc),
            "consumer": "worker",
            "failed_at_ns": time.time_ns(),
        },
    )
