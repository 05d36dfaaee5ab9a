"""Heartbeat verdicts: "telemetry of this deployment seen up to event time T".

Healthy deployments raise no verdicts, so freshness needs its own record. Pure (no Kafka, no
Redis): the detector core emits these, the sinks store them.
"""

from __future__ import annotations

from typing import Any

from sinks.redis_layout import HEARTBEAT_CONDITION, heartbeat_entity


def heartbeat_record(
    deployment: str, seen_until_ns: int, version: int, freshness_bound_ns: int
) -> dict[str, Any]:
    """A Verdict record that says "telemetry of ``deployment`` seen up to ``seen_until_ns``".

    ``version`` must grow per deployment (e.g. the watermark itself); ``freshness_bound_ns``
    is how old that event time may get before clients read the deployment as ``unknown``.
    """
    return {
        "schema_version": 1,
        "entity": heartbeat_entity(deployment),
        "entity_kind": "heartbeat",
        "deployment": deployment,
        "condition": HEARTBEAT_CONDITION,
        "state": "resolved",
        "severity": 0.0,
        "confidence": 1.0,
        "root_cause": "",
        "directive": "",
        "directive_text": "",
        "evidence": [],
        "model_score": None,
        "sources_missing": [],
        "impact": "",
        "first_seen_ns": seen_until_ns,
        "last_seen_ns": seen_until_ns,
        "ttl_ns": freshness_bound_ns,
        "version": version,
        "suppressed_by": None,
    }
