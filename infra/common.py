"""Shared bits of the local-infrastructure helpers: the error type and the progress printer."""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path

Say = Callable[[str], None]
"""Where progress lines go. Every ``up``/``down`` takes one; the default prints to stdout."""


class InfraError(RuntimeError):
    """A local service could not be started, stopped or reached. The message says what to do."""


def say(message: str) -> None:
    """Print one progress line immediately (starting Kafka takes seconds; show it)."""
    print(message, file=sys.stdout, flush=True)


def quiet(_message: str) -> None:
    """A ``Say`` that discards progress lines (tests, ``status --json``)."""


def tail_lines(path: Path, count: int = 20) -> str:
    """Last count lines of a text file ("" when unreadable), to quote in error messages."""
    try:
        with path.open("rb") as handle:
            handle.seek(0, 2)
            size = handle.tell()
            handle.seek(max(0, size - 64 * 1024))
            text = handle.read().decode(errors="replace")
    except OSError:
        return ""
    return "\n".join(text.splitlines()[-count:])
