"""The scenario's fault script, read as a clock: what is being injected at a given moment.

This is the scenario file's schedule (what the simulator was told to do), shown beside the
verdicts so a viewer can compare; ground truth for scoring comes from the simulator's labels.
"""

from __future__ import annotations

from producers.sim import Scenario
from producers.sim.faults import KINDS
from skewscope.demo.summary import LoadCause

MIN_SIM_S = 5.0


def injecting(scenario: Scenario, elapsed_s: float) -> list[str]:
    """``"<kind> on <target>"`` for each fault active ``elapsed_s`` into the scenario."""
    out = []
    for f in scenario.faults:
        default = KINDS[f.kind].default_duration_s
        end = f.end_s or (f.onset_s + default if default else float("inf"))
        if f.onset_s <= elapsed_s < end:
            out.append(f"{f.kind} on {f.target}")
    return out


def schedule_line(scenario: Scenario) -> str:
    """One line: every fault of the script with its onset."""
    faults = [f"{f.kind} on {f.target} at {f.onset_s:g} s" for f in scenario.faults]
    return "faults scheduled: " + ("; ".join(faults) if faults else "none")


def load_causes(scenario: Scenario, start_ns: int, sim_s: float) -> list[LoadCause]:
    """The script's load-family causes with their onset inside the ``sim_s`` simulated.
    The truth labels their condition only when it measures harm (SLO breached while a peer
    had room), so the summary says which of them never did."""
    return [
        LoadCause(f.kind, KINDS[f.kind].condition, f.target, start_ns + round(f.onset_s * 1e9))
        for f in scenario.faults
        if KINDS[f.kind].load_family and f.onset_s < sim_s
    ]


def sim_seconds(budget_s: float, scenario_s: float) -> float:
    """Simulated seconds for a run: the time left, at most the scenario's own duration (past
    its script the scenario is plain traffic with nothing to show), at least ``MIN_SIM_S``."""
    return max(MIN_SIM_S, min(budget_s, scenario_s))
