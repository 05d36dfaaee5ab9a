"""The scrape loop: poll a source every interval, turn its text into frames, produce them.

A *source* is an HTTP(S) URL (read with urllib), a local file, or a command whose standard
output is read (``ethtool -S eth2``, ``rdma statistic``). A *format* names the adapter that
turns the text into frames (:data:`FORMATS`). Each scrape:

1. fetches the text; a failure (connection refused, HTTP error status, timeout, command
   failing or timing out) is retried up to ``retries`` times, sleeping ``backoff_s``,
   ``2*backoff_s``, ... (capped at ``max_backoff_s``) in between;
2. stamps it with the wall clock (``ts_ns``, clock ``realtime``) when the fetch returned;
3. converts it; lines the adapter could not read are counted in ``skipped_lines``;
4. hands every frame to the sink (Kafka: topic from the frame's schema, key = deployment).

A scrape that fails after its retries, or whose conversion or sink raises, is logged and
counted in :class:`ScrapeStats` and the loop goes on: it never crashes on bad input or an
unreachable endpoint. Scrapes start on a fixed grid (``start + k * interval_s``); a scrape
that overruns its slot skips the missed slots instead of bursting to catch up.
"""

from __future__ import annotations

import logging
import shlex
import subprocess
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from http.client import HTTPException
from pathlib import Path
from typing import Protocol

from producers.adapters.common import AdapterOutput, Frame, FrameContext
from producers.adapters.dcgm import dcgm_frames
from producers.adapters.ethtool_mlx5 import ethtool_frames
from producers.adapters.nccl_inspector import inspector_frames
from producers.adapters.rdma_counters import (
    RdmaScrape,
    parse_rdma_statistic,
    parse_sysfs_listing,
    parse_ttar,
    rdma_frames,
)
from producers.adapters.step_timer import StepTimer
from producers.adapters.tgi import tgi_frames
from producers.adapters.vllm import vllm_frames
from skewscope.config import Topics
from skewscope.kafka.producer import EventProducer

log = logging.getLogger(__name__)

_FETCH_ERRORS = (OSError, HTTPException, subprocess.SubprocessError, UnicodeError, ValueError)


@dataclass(frozen=True)
class NicOptions:
    """What NIC text does not say: the port id (ethtool), fabric and plane."""

    port: str = ""
    fabric: str = "roce"
    plane: str = "east_west"


Converter = Callable[[str, FrameContext, int, NicOptions], AdapterOutput]


def _ethtool(text: str, ctx: FrameContext, ts_ns: int, nic: NicOptions) -> AdapterOutput:
    if not nic.port:
        raise ValueError("format ethtool needs the port id (--port, e.g. mlx5_0/1 or eth2)")
    return ethtool_frames(text, ctx, ts_ns, nic.port, fabric=nic.fabric, plane=nic.plane)


def _rdma(parser: Callable[[str], RdmaScrape]) -> Converter:
    def convert(text: str, ctx: FrameContext, ts_ns: int, nic: NicOptions) -> AdapterOutput:
        scrape = parser(text)
        return rdma_frames(scrape, ctx, ts_ns, default_fabric=nic.fabric, plane=nic.plane)

    return convert


def _timed(adapter: Callable[[str, FrameContext, int, StepTimer], AdapterOutput]) -> Converter:
    """An engine converter with its own StepTimer: step durations come from the difference
    between this converter's consecutive scrapes (:mod:`.step_timer`)."""
    timer = StepTimer()

    def convert(text: str, ctx: FrameContext, ts_ns: int, nic: NicOptions) -> AdapterOutput:
        return adapter(text, ctx, ts_ns, timer)

    return convert


def _stateless(convert: Converter) -> Callable[[], Converter]:
    return lambda: convert


# name -> a factory of converters (each Scraper gets its own: engine converters keep state)
FORMATS: dict[str, Callable[[], Converter]] = {
    "vllm": lambda: _timed(vllm_frames),
    "tgi": lambda: _timed(tgi_frames),
    "dcgm": _stateless(lambda text, ctx, ts, nic: dcgm_frames(text, ctx, ts)),
    "ethtool": _stateless(_ethtool),
    "rdma-sysfs": _stateless(_rdma(parse_sysfs_listing)),
    "rdma-ttar": _stateless(_rdma(parse_ttar)),
    "rdma-statistic": _stateless(_rdma(parse_rdma_statistic)),
    "nccl-inspector": _stateless(lambda text, ctx, ts, nic: inspector_frames(text, ctx, ts)),
}


def converter(name: str) -> Converter:
    """A new converter of format ``name`` (KeyError for an unknown one), with state of its own
    for the formats that difference consecutive scrapes (vllm, tgi)."""
    return FORMATS[name]()


# -- sources ----------------------------------------------------------------------------
def fetch_url(url: str, timeout_s: float) -> str:
    """GET ``url`` and return the body as text; HTTP >= 400 raises ``HTTPError``."""
    request = urllib.request.Request(url, headers={"Accept": "text/plain"})
    with urllib.request.urlopen(request, timeout=timeout_s) as response:
        body: bytes = response.read()
        charset = response.headers.get_content_charset() or "utf-8"
    return body.decode(charset, errors="replace")


def read_file(path: Path) -> str:
    """The file's text (undecodable bytes replaced)."""
    return path.read_text(errors="replace")


def run_command(command: str, timeout_s: float) -> str:
    """Standard output of ``command`` (split like a shell would, run without one)."""
    done = subprocess.run(
        shlex.split(command), capture_output=True, text=True, timeout=timeout_s, check=False
    )
    if done.returncode != 0:
        raise subprocess.SubprocessError(
            f"command {command!r} exited {done.returncode}: {done.stderr.strip()[:200]}"
        )
    return done.stdout


def make_fetch(
    url: str = "", file: str = "", command: str = "", timeout_s: float = 2.0
) -> Callable[[], str]:
    """A no-argument fetch function for exactly one of ``url``, ``file``, ``command``."""
    given = [name for name, value in (("url", url), ("file", file), ("command", command)) if value]
    if len(given) != 1:
        raise ValueError(f"give exactly one of url, file, command (got {given or 'none'})")
    if url:
        if not url.startswith(("http://", "https://")):
            raise ValueError(
                f"url {url!r} must start with http:// or https://; use file= for paths"
            )
        return partial(fetch_url, url, timeout_s)
    if file:
        return partial(read_file, Path(file))
    return partial(run_command, command, timeout_s)


# -- sinks --------------------------------------------------------------------------------
class FrameSink(Protocol):
    def __call__(self, frame: Frame) -> None: ...


class ProducerSink:
    """Produce frames with an ``EventProducer``: topic by schema, key = deployment."""

    def __init__(self, producer: EventProducer, topics: Topics) -> None:
        self.producer = producer
        self.topics = topics

    def __call__(self, frame: Frame) -> None:
        topic = getattr(self.topics, frame.topic_field)
        self.producer.send(topic, frame.record["deployment"], frame.schema, frame.record)


# -- the loop -----------------------------------------------------------------------------
@dataclass
class ScrapeStats:
    """Counts over the loop's life. A scrape is failed once its retries are spent."""

    scrapes_ok: int = 0
    scrapes_failed: int = 0
    fetch_attempts_failed: int = 0
    frames_sent: int = 0
    skipped_lines: int = 0
    last_error: str = ""
    backoffs_s: list[float] = field(default_factory=list)


class Scraper:
    """Runs scrapes of one source in one format (see the module docstring).

    ``clock_ns`` and ``wait`` are injectable for tests; ``wait(seconds)`` returns True when
    the loop should stop (by default it waits on ``stop``, a ``threading.Event``).
    """

    def __init__(
        self,
        fetch: Callable[[], str],
        convert: Converter,
        sink: FrameSink,
        ctx: FrameContext,
        nic: NicOptions | None = None,
        interval_s: float = 1.0,
        retries: int = 3,
        backoff_s: float = 0.5,
        max_backoff_s: float = 10.0,
        clock_ns: Callable[[], int] = time.time_ns,
        stop: threading.Event | None = None,
        wait: Callable[[float], bool] | None = None,
    ) -> None:
        if interval_s < 0 or retries < 0 or backoff_s < 0:
            raise ValueError(
                f"interval_s, retries and backoff_s must be >= 0 "
                f"(got {interval_s}, {retries}, {backoff_s})"
            )
        self.fetch = fetch
        self.convert = convert
        self.sink = sink
        self.ctx = ctx
        self.nic = nic or NicOptions()
        self.interval_s = interval_s
        self.retries = retries
        self.backoff_s = backoff_s
        self.max_backoff_s = max_backoff_s
        self.clock_ns = clock_ns
        self.stop = stop or threading.Event()
        self.wait = wait or self.stop.wait
        self.stats = ScrapeStats()

    def _fetch_with_retries(self) -> str | None:
        for attempt in range(self.retries + 1):
            try:
                return self.fetch()
            except _FETCH_ERRORS as exc:
                self.stats.fetch_attempts_failed += 1
                self.stats.last_error = f"{type(exc).__name__}: {exc}"
                if attempt == self.retries:
                    break
                delay = min(self.backoff_s * 2**attempt, self.max_backoff_s)
                log.info(
                    "fetch attempt %d failed (%s); retry in %.2f s",
                    attempt + 1,
                    self.stats.last_error,
                    delay,
                )
                self.stats.backoffs_s.append(delay)
                if self.wait(delay):
                    return None
        return None

    def scrape_once(self) -> bool:
        """One scrape with its retries; True when its frames went to the sink."""
        text = self._fetch_with_retries()
        if text is None:
            self.stats.scrapes_failed += 1
            log.warning(
                "scrape failed after %d attempts: %s", self.retries + 1, self.stats.last_error
            )
            return False
        ts_ns = self.clock_ns()
        try:
            output = self.convert(text, self.ctx, ts_ns, self.nic)
            for frame in output.frames:
                self.sink(frame)
                self.stats.frames_sent += 1
        except Exception as exc:  # a daemon loop: log, count, go on
            self.stats.scrapes_failed += 1
            self.stats.last_error = f"{type(exc).__name__}: {exc}"
            log.exception("scrape could not be converted or sent: %s", self.stats.last_error)
            return False
        self.stats.skipped_lines += len(output.skipped)
        if output.skipped:
            first = output.skipped[0]
            log.info(
                "%d lines skipped; first: line %d: %s",
                len(output.skipped),
                first.line_no,
                first.reason,
            )
        self.stats.scrapes_ok += 1
        return True

    def run(self, max_scrapes: int | None = None) -> ScrapeStats:
        """Scrape until ``stop`` is set or ``max_scrapes`` scrapes were made."""
        start = time.monotonic()
        done = 0
        while not self.stop.is_set() and (max_scrapes is None or done < max_scrapes):
            self.scrape_once()
            done += 1
            if max_scrapes is not None and done >= max_scrapes:
                break
            if self.interval_s > 0:
                elapsed = time.monotonic() - start
                next_slot = (int(elapsed / self.interval_s) + 1) * self.interval_s
                if self.wait(next_slot - elapsed):
                    break
        return self.stats
