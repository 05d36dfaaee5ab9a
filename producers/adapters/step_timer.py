"""Engine step duration from two scrapes of a since-start duration histogram.

vLLM and TGI export no per-step timing, but they export duration histograms that count
since the server started: ``<name>_sum`` (seconds) and ``<name>_count``. Between two scrapes
of one engine, ``(sum - sum') / (count - count')`` is the mean of the durations observed in
between:

* TGI ``tgi_batch_forward_duration{method="decode"}``: one observation per decode forward
  pass, so the mean decode step of the interval;
* vLLM ``vllm:inter_token_latency_seconds`` (V1 >= 0.11; ``time_per_output_token_seconds``
  before): one observation per output token after a sequence's first, the time since its
  previous token: the steps it waited through, so the mean decode step as the running
  sequences see it (steps weighted by the sequences in them; a step that also carries prefill
  chunks is in it too).

``step_duration_ns`` is then what the simulator's engines report per 10 ms, averaged over the
scrape interval. It is ``-1`` (unknown) on an engine's first scrape, when the interval saw no
new observation (an idle engine ran no step), when either sample is absent, and when the
histogram went backwards (the server restarted: the new values are kept for the next scrape).
"""

from __future__ import annotations

import math
from collections.abc import Hashable
from dataclasses import dataclass, field

from producers.adapters.common import MISSING_INT


@dataclass
class StepTimer:
    """The last ``(sum_s, count)`` of each engine's histogram, and the mean in between."""

    _last: dict[Hashable, tuple[float, float]] = field(default_factory=dict)

    def step_ns(self, engine: Hashable, sum_s: float | None, count: float | None) -> int:
        """Mean duration (ns) observed since this engine's previous scrape, or -1."""
        if sum_s is None or count is None or not (math.isfinite(sum_s) and math.isfinite(count)):
            return MISSING_INT
        previous = self._last.get(engine)
        self._last[engine] = (sum_s, count)
        if previous is None:
            return MISSING_INT
        d_sum_s, d_count = sum_s - previous[0], count - previous[1]
        if d_count <= 0 or d_sum_s < 0:
            return MISSING_INT
        return round(d_sum_s / d_count * 1e9)
