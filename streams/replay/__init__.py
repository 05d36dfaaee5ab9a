"""Replay and backtest: topic history by time range, or capture files, through the same
detector core as the live worker, scored against fault labels, with an HTML report.

* :mod:`.history`: read telemetry topics between two broker timestamps (no consumer group,
  nothing committed, live consumers undisturbed);
* :mod:`.capture`: read and write Avro capture files (docs/backtest.md, "Capture files");
* :mod:`.backtest`: drive a :class:`~streams.shards.ShardPool` over either, collect verdicts,
  score them (:mod:`models.scoring`);
* :mod:`.report`: a self-contained HTML report with inline SVG plots;
* :mod:`.cli`: ``skewscope backtest``.
"""

from streams.replay.message import RawMessage

__all__ = ["RawMessage"]
