"""Cluster simulator: symptoms emerge from injected causes through mechanics.

Public API::

    from producers.sim import load_scenario, Simulation, SimFrame
    sim = Simulation(load_scenario("tp-straggler"), seed=1)
    for frame in sim.frames(duration_s=30.0): ...

See docs/simulator.md.
"""

from producers.sim.scenario import Scenario, ScenarioError, bundled_scenarios, load_scenario
from producers.sim.simulation import Simulation
from producers.sim.telemetry import SimFrame

__all__ = [
    "Scenario",
    "ScenarioError",
    "SimFrame",
    "Simulation",
    "bundled_scenarios",
    "load_scenario",
]
