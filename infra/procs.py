"""Process helpers for services we run detached: pid files, liveness, stop, spawn, locks.

Linux only where it reads ``/proc`` (``cmdline``, ``listening_pid``); elsewhere those return
empty results and callers treat the service as external.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import signal
import time
from collections.abc import Iterator, Sequence
from pathlib import Path


def read_pid(pid_file: Path) -> int | None:
    """The pid in pid_file, or None when the file is missing or garbled."""
    try:
        return int(pid_file.read_text().strip())
    except (OSError, ValueError):
        return None


def is_alive(pid: int) -> bool:
    """True while pid runs. Reaps it first when it is our own exited child (no zombies)."""
    with contextlib.suppress(ChildProcessError, OSError):
        done, _ = os.waitpid(pid, os.WNOHANG)
        if done == pid:
            return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat.rsplit(")", 1)[-1].split()[0] != "Z"


def cmdline(pid: int) -> list[str]:
    """argv of pid from /proc, [] when unreadable."""
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return []
    return [part.decode(errors="replace") for part in raw.split(b"\0") if part]


def cwd(pid: int) -> Path | None:
    """Working directory of pid, None when unreadable."""
    try:
        return Path(os.readlink(f"/proc/{pid}/cwd"))
    except OSError:
        return None


def terminate(pid: int, grace_s: float = 30.0) -> str:
    """SIGTERM pid, wait up to grace_s for it to exit, then SIGKILL.

    Returns "stopped", "killed" (needed SIGKILL) or "gone" (was not running).
    """
    if not is_alive(pid):
        return "gone"
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return "gone"
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline:
        if not is_alive(pid):
            return "stopped"
        time.sleep(0.2)
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)
    for _ in range(50):
        if not is_alive(pid):
            break
        time.sleep(0.1)
    return "killed"


def listening_pid(port: int) -> int | None:
    """Pid of the local process listening on TCP port (via /proc/net), None if not found.

    Needs permission to read other processes' fds (same user or root).
    """
    inodes: set[str] = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            rows = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for row in rows:
            cols = row.split()
            if len(cols) > 9 and cols[3] == "0A" and int(cols[1].rsplit(":", 1)[1], 16) == port:
                inodes.add(f"socket:[{cols[9]}]")
    if not inodes:
        return None
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            for fd in (proc / "fd").iterdir():
                if os.readlink(fd) in inodes:
                    return int(proc.name)
        except OSError:
            continue
    return None


def spawn_detached(argv: Sequence[str], output: Path) -> int:
    """Start argv in its own session (survives our exit), stdout+stderr appended to output.

    argv[0] must be an absolute path; the child inherits our working directory, so pass
    absolute paths in its arguments. Uses posix_spawn, so no Popen object is left behind to
    warn about a still-running child.
    """
    output.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(output, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        actions = [
            (os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDONLY, 0),
            (os.POSIX_SPAWN_DUP2, fd, 1),
            (os.POSIX_SPAWN_DUP2, fd, 2),
        ]
        return os.posix_spawn(
            argv[0], list(argv), dict(os.environ), file_actions=actions, setsid=True
        )
    finally:
        os.close(fd)


@contextlib.contextmanager
def file_lock(path: Path) -> Iterator[None]:
    """Exclusive advisory lock: concurrent ``up`` calls (parallel test runs) start one service."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as handle:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)
