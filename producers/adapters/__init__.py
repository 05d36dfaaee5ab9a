"""Adapters: real telemetry text -> skewscope frames.

One module per format, each tolerant by default (unreadable lines are skipped with a reason,
``strict=True`` raises :class:`~producers.adapters.common.ParseError`):

* :mod:`.prometheus_text`: the Prometheus exposition format, under
  :mod:`.vllm`, :mod:`.tgi` (EngineSampleFrame) and :mod:`.dcgm` (GpuSampleFrame);
* :mod:`.ethtool_mlx5`, :mod:`.rdma_counters` (NicCounterFrame, via :mod:`.nic_frame`);
* :mod:`.nccl_inspector` (CollectiveFrame), :mod:`.nccl_trace` and :mod:`.nccl_tests`
  (parsed, not framed);
* :mod:`.rates`: cumulative counters -> rates, resets and wraps;
* :mod:`.scrape` and :mod:`.cli`: the polling loop and ``skewscope produce scrape``.
"""

from producers.adapters.common import AdapterOutput, Frame, FrameContext, ParseError, SkippedLine

__all__ = ["AdapterOutput", "Frame", "FrameContext", "ParseError", "SkippedLine"]
