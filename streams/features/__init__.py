"""Feature extractors, one per telemetry source: frame in, per-pane per-entity aggregates out."""
