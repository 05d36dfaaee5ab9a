"""The demo's child processes: each in its own session, stopped as a group, checked for leftovers.

Every child is started with ``start_new_session=True``, so it leads a process group (and a
session) whose id is its pid: a terminal's Ctrl-C does not reach it (the demo stops it in
order instead), and whatever it spawns stays in that group. :meth:`Children.stop_all` sends
SIGTERM to each group, waits up to ``grace_s``, then sends SIGKILL to what is left.
:meth:`Children.leftovers` lists every process still in one of those sessions (Linux
``/proc``; elsewhere only the children themselves are checked).

Output of each child goes to its own log file (quoted in errors, kept for inspection).
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path


@dataclass
class Child:
    """One started process: its name, Popen handle and log file."""

    name: str
    proc: subprocess.Popen[bytes]
    log_path: Path

    @property
    def pid(self) -> int:
        return self.proc.pid

    def running(self) -> bool:
        return self.proc.poll() is None

    def tail(self, lines: int = 15) -> str:
        """The last lines of its log ("" when unreadable)."""
        try:
            text = self.log_path.read_bytes()[-16_384:].decode(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])


class Children:
    """Start, watch and stop the demo's processes."""

    def __init__(self) -> None:
        self.started: list[Child] = []

    def start(
        self, name: str, argv: Sequence[str], env: Mapping[str, str], log_path: Path, cwd: Path
    ) -> Child:
        """Start ``argv`` in a new session with stdout and stderr appended to ``log_path``."""
        log_path.parent.mkdir(parents=True, exist_ok=True)
        with log_path.open("ab") as log:
            proc = subprocess.Popen(
                list(argv),
                cwd=cwd,
                env=dict(env),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        child = Child(name, proc, log_path)
        self.started.append(child)
        return child

    def exited(self) -> list[Child]:
        """Children that are no longer running."""
        return [c for c in self.started if not c.running()]

    def stop(self, child: Child, grace_s: float = 10.0) -> str:
        """SIGTERM the child's group, SIGKILL after ``grace_s``; returns what happened."""
        if not child.running():
            _kill_group(child.pid, signal.SIGKILL)  # anything it left behind in its group
            return f"had exited with status {child.proc.returncode}"
        _kill_group(child.pid, signal.SIGTERM)
        try:
            child.proc.wait(grace_s)
            outcome = "stopped"
        except subprocess.TimeoutExpired:
            _kill_group(child.pid, signal.SIGKILL)
            child.proc.wait(5)
            outcome = f"killed (SIGTERM ignored for {grace_s:g} s)"
        _kill_group(child.pid, signal.SIGKILL)
        return outcome

    def stop_all(self, grace_s: float = 10.0) -> list[str]:
        """Stop every child, newest first; one line per child."""
        return [f"{c.name} (pid {c.pid}): {self.stop(c, grace_s)}" for c in reversed(self.started)]

    def leftovers(self, wait_s: float = 2.0) -> list[int]:
        """Pids still alive in any child's session, after waiting up to ``wait_s`` for them."""
        sessions = {c.pid for c in self.started}
        deadline = time.monotonic() + wait_s
        while True:
            alive = sorted(pid for pid, sid in _sessions().items() if sid in sessions)
            if not _proc_readable():
                alive = sorted(c.pid for c in self.started if c.running())
            if not alive or time.monotonic() >= deadline:
                return alive
            time.sleep(0.1)


def _kill_group(pgid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


def _proc_readable() -> bool:
    return Path("/proc/self/stat").exists()


def _sessions() -> dict[int, int]:
    """pid -> session id of every live (not zombie) process, from /proc ({} elsewhere)."""
    out: dict[int, int] = {}
    if not _proc_readable():
        return out
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[-1].split()
        if len(fields) > 3 and fields[0] != "Z":
            out[int(entry.name)] = int(fields[3])
    return out
