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
        frame of one entity, which skips the grouping by entity). ``values`` has one column
        per feature, in ``feature_names`` order; NaN means absent.
        """
        if len(panes) == 0:
            return
        groups = _groups(np.asarray(panes, dtype=np.int64).tolist(), entities)
        # Row-major, so a column's sum adds rows in order whatever the caller's layout (the
        # summation order, and so the last bit, must not depend on it).
        values = np.ascontiguousarray(values)
        if len(groups) > 1:
            # One gather puts every group's rows next to each other (in row order), so each
            # group below is a slice.
            order = np.fromiter(
                (row for _, _, rows in groups for row in rows), np.intp, len(values)
            )
            values = values[order]
        finite = np.isfinite(values)
        if values.dtype.kind == "f" and np.count_nonzero(finite) == finite.size:
            self._add_finite(groups, values)
        else:
            self._add_masked(groups, values, finite)

    def _add_finite(self, groups: list[_Group], values: np.ndarray) -> None:
        """Add rows of floats without NaN or inf: reduced as they are."""
        start = 0
        for pane, entity, rows in groups:
            block = values[start : start + len(rows)]
            start += len(rows)
            cell = self._cell(pane, entity)
            cell.total += np.add.reduce(block, axis=0)
            cell.count += len(rows)
            np.maximum(cell.high, np.maximum.reduce(block, axis=0), out=cell.high)
            np.minimum(cell.low, np.minimum.reduce(block, axis=0), out=cell.low)

    def _add_masked(self, groups: list[_Group], values: np.ndarray, finite: np.ndarray) -> None:
        """Add rows, skipping NaN and inf values."""
        clean = np.where(finite, values, 0.0)
        high_src = np.where(finite, values, -np.inf)
        low_src = np.where(finite, values, np.inf)
        start = 0
        for pane, entity, rows in groups:
            block = slice(start, start + len(rows))
            start += len(rows)
            cell = self._cell(pane, entity)
            cell.total += np.add.reduce(clean[block], axis=0)
            cell.count += np.add.reduce(finite[block], axis=0)
            np.maximum(cell.high, np.maximum.reduce(high_src[block], axis=0), out=cell.high)
            np.minimum(cell.low, np.minimum.reduce(low_src[block], axis=0), out=cell.low)

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
        parts: dict[str, list[Cell]] = {}
        for pane in panes:
            for entity, cell in self.cells.get(pane, {}).items():
                parts.setdefault(entity, []).append(cell)
        return {entity: _combined(cells) for entity, cells in parts.items()}

    def evict_before(self, pane: int) -> None:
        """Forget panes older than ``pane`` (no open window needs them)."""
        for old in [p for p in self.cells if p < pane]:
            del self.cells[old]

    def values(self, cell: Cell, stats: dict[str, Stat]) -> dict[str, float]:
        """Feature values of a combined cell, each by its statistic; absent features omitted."""
        # Python floats: the same IEEE double arithmetic, without a numpy scalar per element.
        total, count = cell.total.tolist(), cell.count.tolist()
        high, low = cell.high.tolist(), cell.low.tolist()
        out: dict[str, float] = {}
        for name, stat in stats.items():
            i = self._index[name]
            if count[i] == 0:
                continue
            if stat == "mean":
                out[name] = total[i] / count[i]
            elif stat == "max":
                out[name] = high[i]
            elif stat == "min":
                out[name] = low[i]
            elif stat == "sum":
                out[name] = total[i]
            else:
                raise ValueError(f"unknown statistic {stat!r} for feature {name}")
        return out


def _combined(cells: list[Cell]) -> Cell:
    """The cells merged in order. Starting from a copy of the first is what merging it into an
    empty cell gives: a total is never -0.0 (it starts at +0.0), so adding it to +0.0 changes
    no bit, and the maximum with -inf (minimum with inf) is the value itself."""
    first = cells[0]
    acc = Cell(first.total.copy(), first.count.copy(), first.high.copy(), first.low.copy())
    for cell in cells[1:]:
        acc.merge(cell)
    return acc


_Group = tuple[int, str, Sequence[int]]


def _groups(panes: list[int], entities: Sequence[str] | str) -> list[_Group]:
    """Rows per (pane, entity), sorted by pane then entity, rows in row order within each."""
    if isinstance(entities, str) and panes.count(panes[0]) == len(panes):
        return [(panes[0], entities, range(len(panes)))]
    names = [entities] * len(panes) if isinstance(entities, str) else entities
    rows_of: dict[tuple[int, str], list[int]] = {}
    for row, key in enumerate(zip(panes, names, strict=True)):
        rows = rows_of.get(key)
        if rows is None:
            rows_of[key] = [row]
        else:
            rows.append(row)
    return [(pane, str(entity), rows) for (pane, entity), rows in sorted(rows_of.items())]
