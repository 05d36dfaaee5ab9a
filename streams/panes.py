"""Per-pane, per-entity aggregates of named features, filled a frame at a time with numpy.

Each (pane, entity) cell keeps, per feature, the sum, the count of finite values, the
maximum and the minimum. A window combines the cells of its panes; the feature's statistic
(mean, max, min, sum, rate) is chosen when the window is read. NaN values (a source that
does not report a field) are skipped, not counted as zero.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np

Stat = str  # "mean" | "max" | "min" | "sum"


@dataclass
class Cell:
    """Aggregates of every feature of one entity in one pane."""

    total: np.ndarray
    count: np.ndarray
    high: np.ndarray
    low: np.ndarray

    @classmethod
    def empty(cls, n_features: int) -> Cell:
        return cls(
            total=np.zeros(n_features),
            count=np.zeros(n_features),
            high=np.full(n_features, -np.inf),
            low=np.full(n_features, np.inf),
        )

    def merge(self, other: Cell) -> None:
        self.total += other.total
        self.count += other.count
        np.maximum(self.high, other.high, out=self.high)
        np.minimum(self.low, other.low, out=self.low)


@dataclass
class PaneStore:
    """Aggregates of one family of features (one source), by pane and entity."""

    feature_names: Sequence[str]
    cells: dict[int, dict[str, Cell]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self._index = {name: i for i, name in enumerate(self.feature_names)}

    def add_rows(
        self, panes: np.ndarray, entities: Sequence[str] | str, values: np.ndarray
    ) -> None:
        """Add rows: ``panes[i]`` and ``entities[i]`` locate row ``values[i, :]``.

        ``entities`` is one name per row, or one name for every row (the common case of a
        frame of one entity, which skips the sort by entity). ``values`` has one column per
        feature, in ``feature_names`` order; NaN means absent.
        """
        if len(panes) == 0:
            return
        keys = np.asarray(panes, dtype=np.int64)
        groups: list[tuple[int, str, slice | np.ndarray]]
        if isinstance(entities, str):
            groups = [(pane, entities, rows) for pane, rows in _pane_groups(keys)]
        else:
            # Group rows by (pane, entity); frames hold few groups, so a loop is cheap.
            ent = np.asarray(entities, dtype=object)
            order = np.lexsort((ent.astype(str), keys))
            keys_sorted, ent_sorted = keys[order], ent[order]
            boundaries = np.flatnonzero(
                (np.diff(keys_sorted) != 0) | (ent_sorted[1:] != ent_sorted[:-1])
            )
            starts = np.concatenate(([0], boundaries + 1))
            ends = np.concatenate((boundaries + 1, [len(order)]))
            groups = [
                (int(keys_sorted[start]), str(ent_sorted[start]), order[start:end])
                for start, end in zip(starts, ends, strict=True)
            ]
        # Row-major, so a column's sum adds rows in order whatever the caller's layout (the
        # summation order, and so the last bit, must not depend on it).
        values = np.ascontiguousarray(values)
        finite = np.isfinite(values)
        clean = np.where(finite, values, 0.0)
        high_src = np.where(finite, values, -np.inf)
        low_src = np.where(finite, values, np.inf)
        for pane, entity, rows in groups:
            cell = self._cell(pane, entity)
            cell.total += clean[rows].sum(axis=0)
            cell.count += finite[rows].sum(axis=0)
            np.maximum(cell.high, high_src[rows].max(axis=0), out=cell.high)
            np.minimum(cell.low, low_src[rows].min(axis=0), out=cell.low)

    def _cell(self, pane: int, entity: str) -> Cell:
        by_entity = self.cells.get(pane)
        if by_entity is None:
            by_entity = self.cells[pane] = {}
        cell = by_entity.get(entity)
        if cell is None:
            cell = by_entity[entity] = Cell.empty(len(self.feature_names))
        return cell

    def add_one(self, pane: int, entity: str, values: dict[str, float]) -> None:
        """Add one row given as a mapping (for low-rate joined outputs); NaN means absent."""
        cell = self._cell(pane, entity)
        for name, value in values.items():
            if not math.isfinite(value):
                continue
            i = self._index[name]
            cell.total[i] += value
            cell.count[i] += 1.0
            if value > cell.high[i]:
                cell.high[i] = value
            if value < cell.low[i]:
                cell.low[i] = value

    def window(self, panes: Iterable[int]) -> dict[str, Cell]:
        """Combined cells of the given panes, per entity."""
        out: dict[str, Cell] = {}
        for pane in panes:
            for entity, cell in self.cells.get(pane, {}).items():
                acc = out.get(entity)
                if acc is None:
                    acc = Cell.empty(len(self.feature_names))
                    out[entity] = acc
                acc.merge(cell)
        return out

    def evict_before(self, pane: int) -> None:
        """Forget panes older than ``pane`` (no open window needs them)."""
        for old in [p for p in self.cells if p < pane]:
            del self.cells[old]

    def values(self, cell: Cell, stats: dict[str, Stat]) -> dict[str, float]:
        """Feature values of a combined cell, each by its statistic; absent features omitted."""
        out: dict[str, float] = {}
        for name, stat in stats.items():
            i = self._index[name]
            if cell.count[i] == 0:
                continue
            if stat == "mean":
                out[name] = float(cell.total[i] / cell.count[i])
            elif stat == "max":
                out[name] = float(cell.high[i])
            elif stat == "min":
                out[name] = float(cell.low[i])
            elif stat == "sum":
                out[name] = float(cell.total[i])
            else:
                raise ValueError(f"unknown statistic {stat!r} for feature {name}")
        return out


def _pane_groups(keys: np.ndarray) -> list[tuple[int, slice | np.ndarray]]:
    """Rows per pane, in row order within a pane (one slice when all rows share a pane)."""
    if bool((keys == keys[0]).all()):
        return [(int(keys[0]), slice(None))]
    order = np.argsort(keys, kind="stable")
    ordered = keys[order]
    cuts = np.flatnonzero(np.diff(ordered)) + 1
    return [
        (int(ordered[rows[0]]), order[rows]) for rows in np.split(np.arange(len(ordered)), cuts)
    ]
