"""A backtest *configuration*: a runbook file plus optional detector settings.

Detector settings are a ``[detector]`` TOML table, either inside the runbook file (the
runbook parser ignores it) or in a separate file given with ``--detector`` (which wins)::

    [detector]
    window_size_ns = 1_000_000_000      # HoppingSpec.size_ns
    window_hop_ns = 250_000_000         # HoppingSpec.hop_ns
    allowed_lateness_ns = 100_000_000   # any DetectorConfig field by name
    anomaly_model = true

``--compare`` runs a second configuration over the same history.
"""

from __future__ import annotations

import dataclasses
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from models.detector import DetectorConfig
from models.runbook import RUNBOOK_PATH, Runbook, load_runbook
from streams.hopping import HoppingSpec

_WINDOW_KEYS = {"window_size_ns": "size_ns", "window_hop_ns": "hop_ns"}


@dataclass(frozen=True)
class Configuration:
    """What one backtest run uses: a name, a runbook and detector settings."""

    name: str
    runbook: Runbook
    runbook_path: str
    detector: DetectorConfig
    detector_sources: tuple[str, ...] = ()

    def describe(self) -> dict[str, Any]:
        d = self.detector
        return {
            "name": self.name,
            "runbook": self.runbook_path,
            "detector_settings_from": list(self.detector_sources),
            "detector": {
                "window_size_ns": d.window.size_ns,
                "window_hop_ns": d.window.hop_ns,
                **{f.name: getattr(d, f.name) for f in dataclasses.fields(d) if f.name != "window"},
            },
        }


def _detector_table(path: Path) -> dict[str, Any]:
    try:
        doc = tomllib.loads(path.read_text())
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ValueError(f"detector settings {path}: {exc}") from exc
    table = doc.get("detector", {})
    if not isinstance(table, dict):
        raise ValueError(f"detector settings {path}: [detector] must be a table")
    return table


def detector_config(table: dict[str, Any], origin: str, base: DetectorConfig) -> DetectorConfig:
    """``base`` with the fields of a ``[detector]`` table applied; unknown keys are errors."""
    fields = {f.name: f for f in dataclasses.fields(DetectorConfig) if f.name != "window"}
    unknown = sorted(set(table) - set(fields) - set(_WINDOW_KEYS))
    if unknown:
        raise ValueError(
            f"{origin}: unknown [detector] settings {unknown}; known: "
            f"{sorted([*fields, *_WINDOW_KEYS])}"
        )
    values: dict[str, Any] = {}
    for key, raw in table.items():
        if key in _WINDOW_KEYS:
            continue
        current = getattr(base, key)
        if isinstance(current, bool) != isinstance(raw, bool) or not isinstance(raw, type(current)):
            raise ValueError(
                f"{origin}: [detector] {key} should be {type(current).__name__}, got {raw!r}"
            )
        values[key] = raw
    if any(k in table for k in _WINDOW_KEYS):
        window = {_WINDOW_KEYS[k]: int(v) for k, v in table.items() if k in _WINDOW_KEYS}
        values["window"] = dataclasses.replace(base.window, **window)
        HoppingSpec(values["window"].size_ns, values["window"].hop_ns)  # validates
    return dataclasses.replace(base, **values)


def load_configuration(
    name: str,
    runbook_path: Path | None = None,
    detector_path: Path | None = None,
    emit_features: bool = False,
) -> Configuration:
    """Runbook from ``runbook_path`` (default: the built-in one) and detector settings from
    its ``[detector]`` table, then from ``detector_path``'s; ``emit_features`` turns on
    FeatureWindow output (for the report's timelines; verdicts do not change)."""
    path = Path(runbook_path) if runbook_path is not None else RUNBOOK_PATH
    runbook = load_runbook(path)
    config = DetectorConfig()
    sources = []
    for origin in (path, detector_path):
        if origin is None:
            continue
        table = _detector_table(Path(origin))
        if table:
            config = detector_config(table, str(origin), config)
            sources.append(str(origin))
    if emit_features:
        config = dataclasses.replace(config, emit_features=True)
    return Configuration(name, runbook, str(path), config, tuple(sources))
