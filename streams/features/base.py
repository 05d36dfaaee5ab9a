"""The protocol every feature extractor honours."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, ClassVar

import numpy as np

from streams.hopping import HoppingSpec
from streams.panes import PaneStore, Stat


class Extractor:
    """Turns frames of one schema into pane aggregates keyed by entity.

    Subclasses set ``SCHEMA``, ``SOURCE``, ``ENTITY_KIND`` and ``FEATURES`` (name -> statistic)
    and implement :meth:`ingest`. Window read-out and eviction are shared.
    """

    SCHEMA: ClassVar[str]
    SOURCE: ClassVar[str]
    ENTITY_KIND: ClassVar[str]
    FEATURES: ClassVar[dict[str, Stat]]

    def __init__(self, spec: HoppingSpec) -> None:
        self.spec = spec
        self.store = PaneStore(list(self.FEATURES))

    def ingest(self, record: dict[str, Any], cols: dict[str, np.ndarray]) -> tuple[int, int]:
        """Add a frame; return (min, max) event time of its rows (for the watermark)."""
        raise NotImplementedError

    def window(self, panes: Iterable[int]) -> dict[str, dict[str, float]]:
        """Per-entity feature values over the given panes."""
        cells = self.store.window(panes)
        return {entity: self.store.values(cell, self.FEATURES) for entity, cell in cells.items()}

    def evict_before(self, pane: int) -> None:
        self.store.evict_before(pane)

    def panes(self, ts_ns: np.ndarray) -> np.ndarray:
        return np.asarray(ts_ns, dtype=np.int64) // self.spec.hop_ns


def span(ts_ns: np.ndarray) -> tuple[int, int]:
    if len(ts_ns) == 0:
        return (0, 0)
    return int(ts_ns.min()), int(ts_ns.max())
