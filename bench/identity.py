"""Detector output identity check: run a scenario through the core and dump every output.

Used to prove that a hot-path optimization changed nothing: run it before and after the
change and compare the two JSON files exactly (every verdict, heartbeat and silence record,
in order, floats included).

    .venv/bin/python -m bench.identity --scenario mixed --seconds 30 --out /tmp/before.json
    .venv/bin/python -m bench.identity --scenario mixed --seconds 30 --compare /tmp/before.json

Limits: in-process only (no Kafka); the records are compared after a JSON round trip, which
keeps floats exactly (``repr`` round-trips) but turns tuples into lists.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from models.detector import Detector, DetectorConfig
from producers.sim import Simulation, load_scenario


def detector_outputs(
    scenario: str, seconds: float, seed: int = 0, features: bool = True
) -> list[dict[str, Any]]:
    """Every output of one Detector fed the scenario's frames (topology first), then flush.

    ``features``: also emit every FeatureWindow, so every feature value is compared too.
    """
    sim = Simulation(load_scenario(scenario), seed=seed)
    det = Detector(config=DetectorConfig(emit_features=features))
    outputs = []
    for record in sim.topology:
        outputs += det.process("TopologyRecord", record)
    for frame in sim.frames(seconds):
        outputs += det.process(frame.schema, frame.record)
    outputs += det.flush()
    return [{"schema": o.schema, "key": o.key, "record": o.record} for o in outputs]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scenario", default="mixed")
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, help="write the outputs here")
    parser.add_argument("--compare", type=Path, help="compare with an earlier --out file")
    args = parser.parse_args(argv)
    outputs = json.loads(json.dumps(detector_outputs(args.scenario, args.seconds, args.seed)))
    verdicts = sum(
        1 for o in outputs if o["schema"] == "Verdict" and o["record"]["condition"] != "heartbeat"
    )
    print(f"{args.scenario} {args.seconds:g} s: {len(outputs)} outputs, {verdicts} verdicts")
    if args.out:
        args.out.write_text(json.dumps(outputs, indent=1) + "\n")
    if args.compare:
        before = json.loads(args.compare.read_text())
        if before == outputs:
            print(f"identical to {args.compare}")
            return 0
        for i, (a, b) in enumerate(zip(before, outputs, strict=False)):
            if a != b:
                print(f"first difference at output {i}:\n  before {a}\n  after  {b}")
                break
        else:
            print(f"lengths differ: before {len(before)}, after {len(outputs)}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
