"""Shared pieces of the benchmarks: CPU time, core pinning, child processes, machine info.

Per-core throughput is samples / CPU seconds of the measuring process (user + system, all
its threads, librdkafka's included), read with ``resource.getrusage``. Children run under
``taskset -c CORE`` so one process owns one core; on a machine with one core (or without
``taskset``) they run unpinned and the result says so.
"""

from __future__ import annotations

import json
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
from collections.abc import Sequence
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent

# Row-count fields of the telemetry frames: a sample is one row of a packed column group
# (models.detector counts samples the same way).
ROW_COUNTS = ("n_rows", "n_samples", "n_events", "n_flow_rows", "n_dev_rows")


def samples_of(record: dict[str, Any]) -> int:
    """Samples in a decoded frame (0 for records without row counts, e.g. topology)."""
    return sum(int(record.get(name, 0)) for name in ROW_COUNTS)


def cpu_seconds() -> float:
    """User + system CPU seconds of this process so far (all threads)."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def proc_cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of another process, from /proc/<pid>/stat (Linux only)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    return (int(fields[11]) + int(fields[12])) / ticks


def taskset_prefix(core: int | None) -> list[str]:
    """``taskset -c CORE`` when the core exists and taskset is installed, else nothing."""
    if core is None or core >= (os.cpu_count() or 1) or shutil.which("taskset") is None:
        return []
    return ["taskset", "-c", str(core)]


def run_child(
    module: str, args: Sequence[str], core: int | None, timeout_s: float = 900.0
) -> dict[str, Any]:
    """Run ``python -m MODULE ARGS`` pinned to ``core``; its last stdout line is the JSON result.

    Raises RuntimeError with the child's output tail when it fails or prints no JSON.
    """
    cmd = [*taskset_prefix(core), sys.executable, "-m", module, *args]
    proc = subprocess.run(
        cmd, cwd=REPO, capture_output=True, text=True, timeout=timeout_s, check=False
    )
    # A child's terminal may prefix escape codes (Faust's spinner): take from the first brace.
    lines = [line[line.index("{") :] for line in proc.stdout.splitlines() if "{" in line]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(
            f"{' '.join(cmd)} exited with {proc.returncode}:\n"
            f"{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}"
        )
    result: dict[str, Any] = json.loads(lines[-1])
    result["pinned_core"] = core if taskset_prefix(core) else None
    return result


def summarize(values: Sequence[float]) -> dict[str, float]:
    """Median, min and max of repeated runs (the median is the reported figure)."""
    return {
        "median": float(statistics.median(values)),
        "min": float(min(values)),
        "max": float(max(values)),
        "runs": float(len(values)),
    }


def _version(package: str) -> str:
    try:
        return version(package)
    except PackageNotFoundError:
        return "absent"


def cpu_model() -> str:
    """CPU model name from /proc/cpuinfo ("unknown" elsewhere)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def machine_info() -> dict[str, Any]:
    """uname, core count, CPU model, load, and the versions that bound the figures."""
    import confluent_kafka

    return {
        "uname": " ".join(platform.uname()),
        "nproc": os.cpu_count(),
        "cpu_model": cpu_model(),
        "load_avg_1_5_15": list(os.getloadavg()),
        "python": sys.version.split()[0],
        "confluent_kafka": confluent_kafka.version()[0],
        "librdkafka": confluent_kafka.libversion()[0],
        "faust_streaming": _version("faust-streaming"),
        "aiokafka": _version("aiokafka"),
        "numpy": _version("numpy"),
        "fastavro": _version("fastavro"),
        "river": _version("river"),
        "redis_py": _version("redis"),
    }
