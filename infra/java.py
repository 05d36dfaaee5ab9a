"""Locating a Java 17+ runtime for the local Kafka broker."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

from infra.common import InfraError

MIN_JAVA = 17
JAVA_HINT = (
    f"Java {MIN_JAVA}+ is required to run the local Kafka broker "
    "(apt-get install openjdk-17-jre-headless) or set KAFKA_BOOTSTRAP to an existing broker"
)


def find_java() -> str | None:
    """``$JAVA_HOME/bin/java`` when set and present, else ``java`` on PATH, else None."""
    home = os.environ.get("JAVA_HOME")
    if home and (Path(home) / "bin" / "java").is_file():
        return str(Path(home) / "bin" / "java")
    found = shutil.which("java")
    return str(Path(found).resolve()) if found else None


def java_major(java: str) -> int | None:
    """Major version of the runtime at ``java`` (8 for 1.8), None when it cannot be read."""
    try:
        proc = subprocess.run([java, "-version"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return None
    match = re.search(r'version "(\d+)(?:\.(\d+))?', proc.stderr + proc.stdout)
    if not match:
        return None
    major = int(match.group(1))
    return int(match.group(2) or 0) if major == 1 else major


def require_java() -> str:
    """Absolute path of a Java 17+ executable; InfraError saying what to install otherwise."""
    java = find_java()
    if java is None:
        raise InfraError(JAVA_HINT)
    major = java_major(java)
    if major is None or major < MIN_JAVA:
        found = "an unreadable version" if major is None else f"Java {major}"
        raise InfraError(f"{JAVA_HINT}; found {found} at {java}")
    return java
