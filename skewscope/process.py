"""Stopping a child process the way every skewscope driver does: SIGTERM, then SIGKILL."""

from __future__ import annotations

import signal
import subprocess
from typing import Any


def stop_process(proc: subprocess.Popen[Any], grace_s: float = 20.0) -> int | None:
    """SIGTERM ``proc`` if it runs, SIGKILL it after ``grace_s``; returns its exit status."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(grace_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
    return proc.returncode
