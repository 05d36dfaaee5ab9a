"""What ``skewscope demo`` was asked to do (shared by the live run and the fallback)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

DEFAULT_WEB_PORT = 6066


@dataclass(frozen=True)
class DemoOptions:
    """Options of one demo run; ``duration_s`` counts from the moment the services are up."""

    duration_s: float = 120.0
    scenario: str = "mixed"
    seed: int = 0
    web_port: int | None = None  # None: DEFAULT_WEB_PORT, or a free port when it is taken
    page: bool = True
    in_process: bool = False
    keep: bool = False
    config: Path | None = None
    refresh_s: float = 1.0
