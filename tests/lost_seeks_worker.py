"""``skewscope worker`` whose seeks on one topic are lost for a while.

A stand-in for the race the worker must survive: another seek (Faust's to the committed
offsets, run partition by partition on the consumer thread) landing after the shard's own
seek back, on a topic where no later message comes to show it. Every seek on topics named
``…<suffix>`` is dropped from the first one on, for ``lose_for_s`` seconds; the consumer
keeps the position it had. Only tests run this.

    python -m tests.lost_seeks_worker SUFFIX SECONDS worker --app-id … (skewscope's arguments)
"""

from __future__ import annotations

import sys
import time
from collections.abc import Mapping
from typing import Any

from faust.transport.drivers import aiokafka as driver

from skewscope.cli import main


def lose_seeks(suffix: str, lose_for_s: float) -> None:
    original = driver.AIOKafkaConsumerThread._seek_wait
    first_loss: list[float] = []

    async def _seek_wait(self: Any, consumer: Any, partitions: Mapping[Any, int]) -> None:
        now = time.monotonic()
        kept = {}
        for tp, offset in partitions.items():
            if tp.topic.endswith(suffix):
                first_loss[:] = first_loss or [now]
                if now - first_loss[0] < lose_for_s:
                    print(f"lost seek: {tp.topic}[{tp.partition}] -> {offset}", flush=True)
                    continue
            kept[tp] = offset
        await original(self, consumer, kept)

    driver.AIOKafkaConsumerThread._seek_wait = _seek_wait  # type: ignore[method-assign]


if __name__ == "__main__":
    lose_seeks(sys.argv[1], float(sys.argv[2]))
    sys.exit(main(sys.argv[3:]))
