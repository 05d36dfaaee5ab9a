"""A shard builds its windows' views from the deployments it reads telemetry of, not from
the whole fleet's topology that every worker holds."""

from __future__ import annotations

from typing import Any

from models.detector import Detector, DetectorConfig
from producers.sim import Simulation, load_scenario
from tests.synthetic import topology


def _run(extra_deployments: int) -> tuple[list[dict[str, Any]], Detector]:
    """The tp-straggler scenario's first 6 s, with ``extra_deployments`` more 8-GPU
    deployments in the topology whose telemetry goes elsewhere (other shards)."""
    sim = Simulation(load_scenario("tp-straggler"), seed=3)
    det = Detector(config=DetectorConfig(emit_features=True, anomaly_model=False))
    for record in sim.topology:
        det.process("TopologyRecord", record)
    for d in range(extra_deployments):
        for record in topology(f"elsewhere{d}", nodes=2, gpus_per_node=4):
            record["node"] = f"far{d}-{record['node']}"
            det.process("TopologyRecord", record)
    out = []
    for frame in sim.frames(duration_s=6.0):
        out += det.process(frame.schema, frame.record)
    return [o.record for o in out], det


def test_the_fleets_other_deployments_change_nothing_and_are_not_viewed() -> None:
    alone, _ = _run(0)
    in_fleet, det = _run(40)
    assert any(r.get("condition") == "tp-straggler" for r in alone)
    assert in_fleet == alone
    assert len(det.topology.deployments()) == 42
    assert det._held_topology().deployments() == ["llama70b-a", "llama70b-b"]
