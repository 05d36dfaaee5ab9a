"""``skewscope demo``: its parts without a broker, then the whole live run against the real one."""

from __future__ import annotations

import io
import os
import re
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pytest

from infra.common import InfraError
from infra.kafka_admin import admin_client
from producers.sim import load_scenario
from skewscope.config import Settings
from skewscope.demo import orchestrator
from skewscope.demo.children import Children
from skewscope.demo.options import DemoOptions
from skewscope.demo.paced import paced
from skewscope.demo.script import MIN_SIM_S, injecting, load_causes, sim_seconds
from skewscope.demo.summary import LoadCause, summarize
from skewscope.demo.terminal import DeploymentLine, Snapshot, TerminalView
from tests.live import REPO, env_for

S = 1_000_000_000
START = 1_790_000_000 * S


def _label(i: int, entity: str, condition: str, onset_s: float, end_s: float) -> dict[str, Any]:
    return {
        "label_id": f"l{i}",
        "deployment": entity.split("/")[0],
        "entity": entity,
        "condition": condition,
        "onset_ns": START + int(onset_s * S),
        "end_ns": START + int(end_s * S),
        "severity": 1.0,
        "cause": f"cause {i}",
    }


def _verdict(entity: str, condition: str, at_s: float, version: int, state: str = "firing"):
    return {
        "entity": entity,
        "deployment": entity.split("/")[0],
        "condition": condition,
        "state": state,
        "version": version,
        "severity": 0.5,
        "confidence": 1.0,
        "first_seen_ns": START + int(at_s * S),
        "last_seen_ns": START + int(at_s * S),
    }


# -- summary ------------------------------------------------------------------------
def test_summary_says_which_injected_fault_a_verdict_named_and_which_it_missed() -> None:
    labels = [
        _label(0, "dep/rank5", "tp-straggler", 5.0, 15.0),
        _label(1, "node02", "pcie-saturation", 30.0, 40.0),
        _label(2, "dep", "lookalike:load-burst", 12.0, 13.0),
    ]
    verdicts = [
        _verdict("dep/rank5", "tp-straggler", 6.5, 1),
        _verdict("dep/rank5", "tp-straggler", 16.0, 2, state="resolved"),
        _verdict("dep", "kv-cache-pressure", 20.0, 1),
        _verdict("dep", "kv-cache-pressure", 21.0, 2, state="resolved"),
        _verdict("dep", "kv-cache-pressure", 25.0, 3),
        _verdict("dep/heartbeat", "heartbeat", 20.0, 7, state="resolved"),
    ]
    summary = summarize(labels, verdicts, START, in_redis={("dep/rank5", "tp-straggler")})
    lines = summary.lines()
    assert lines[0] == (
        "fault detected   tp-straggler on dep/rank5 (onset +5.0 s): verdict after 1.50 s, in Redis"
    )
    assert (
        "fault missed     pcie-saturation on node02 (onset +30.0 s): no verdict named it" in lines
    )
    assert (
        "lookalike quiet  load-burst on dep (onset +12.0 s): no verdict, as it should be" in lines
    )
    assert "other            kv-cache-pressure on dep at +20.0 s (2 episodes)" in lines
    assert lines[-1].startswith("result: 1/2 injected faults named by a verdict")
    assert not summary.all_named()


def test_summary_keeps_the_last_record_of_a_label_and_flags_a_lookalike_false_alarm() -> None:
    opened = _label(0, "dep/rank1", "tp-straggler", 2.0, 0.0) | {"end_ns": None}
    closed = _label(0, "dep/rank1", "tp-straggler", 2.0, 9.0)
    lookalike = _label(1, "dep", "lookalike:load-burst", 3.0, 4.0)
    verdicts = [_verdict("dep/rank1", "tp-straggler", 3.0, 1), _verdict("dep", "kv-cache", 3.5, 1)]
    summary = summarize([opened, closed, lookalike], verdicts, START)
    assert len(summary.faults) == 1 and summary.faults[0].label["end_ns"] == closed["end_ns"]
    assert summary.faults[0].in_redis is None  # no Redis in this run: say nothing about it
    assert summary.all_named()
    assert any(line.startswith("lookalike raised load-burst on dep") for line in summary.lines())


def test_summary_lists_the_load_causes_the_truth_never_labelled() -> None:
    harmed = LoadCause("kv-budget", "kv-cache-pressure", "dep-a", START + 10 * S)
    unharmed = LoadCause("long-prompt-tenant", "request-length-skew", "dep-b", START + 40 * S)
    # harm on dep-b's queue came before this cause's onset: not its label
    before = LoadCause("long-prompt-tenant", "request-length-skew", "dep-c", START + 30 * S)
    labels = [
        _label(0, "dep-a", "kv-cache-pressure", 14.0, 20.0),
        _label(1, "dep-c", "request-length-skew", 5.0, 9.0),
    ]
    summary = summarize(labels, [], START, load_causes=[harmed, unharmed, before])
    assert summary.unharmed == [unharmed, before]
    assert (
        "load no harm     long-prompt-tenant on dep-b (onset +40.0 s): no verdict due"
        in summary.lines()
    )
    assert summary.lines()[-1].startswith("result: 0/2 injected faults")


def test_the_mixed_script_has_one_load_cause_once_its_onset_is_simulated() -> None:
    mixed = load_scenario("mixed")
    (cause,) = load_causes(mixed, START, 60.0)
    assert (cause.kind, cause.condition, cause.target) == (
        "long-prompt-tenant",
        "request-length-skew",
        "llama70b-b",
    )
    assert load_causes(mixed, START, (cause.onset_ns - START) / S) == []


# -- terminal -------------------------------------------------------------------------
def _snap(verdicts: list[dict[str, Any]], avoid: tuple[str, ...] = ()) -> Snapshot:
    health = "unhealthy" if verdicts else "healthy"
    return Snapshot(
        title="t",
        elapsed_s=3.0,
        duration_s=60.0,
        verdicts=verdicts,
        deployments=[DeploymentLine("dep", health, "", 0.5, avoid)],
        source="test",
    )


def test_line_view_prints_each_change_once_when_stdout_is_not_a_terminal() -> None:
    out = io.StringIO()
    view = TerminalView(out, status_every_s=1e9)
    straggler = _verdict("dep/rank5", "tp-straggler", 1.0, 1) | {
        "directive": "drain-node",
        "evidence": [
            {
                "feature": "nccl.lateness",
                "value": 0.12,
                "comparator": ">=",
                "threshold": 0.05,
                "source": "nccl",
            }
        ],
    }
    view.show(_snap([]))
    view.show(_snap([straggler], ("dep/rank5",)))
    view.show(_snap([straggler], ("dep/rank5",)))
    view.show(_snap([]))
    lines = out.getvalue().splitlines()
    assert "\x1b[" not in out.getvalue()
    firing = [ln for ln in lines if "FIRING" in ln]
    assert len(firing) == 1
    assert "dep/rank5 tp-straggler sev 0.50 -> drain-node" in firing[0]
    assert "nccl.lateness=0.12 (>= 0.05, nccl)" in firing[0]
    assert sum("resolved dep/rank5 tp-straggler" in ln for ln in lines) == 1
    reads = [ln for ln in lines if "scheduler reads" in ln]
    assert [("avoid [dep/rank5]" in ln) for ln in reads] == [False, True, False]
    assert ("dep/rank5", "tp-straggler") in view.shown


def test_terminal_view_redraws_the_table_with_ansi_on_a_tty() -> None:
    out = io.StringIO()
    view = TerminalView(out, tty=True, colour=True)
    view.show(_snap([_verdict("node02", "pcie-saturation", 1.0, 1) | {"directive": "reduce"}]))
    text = out.getvalue()
    assert text.startswith("\x1b[H\x1b[2J")
    assert "\x1b[31mnode02" in text  # severity 0.5: red
    assert "\x1b[31munhealthy" in text  # the deployment a scheduler reads as unhealthy
    assert "avoid-list []" in text and "what a scheduler reads" in text


# -- pacing, script, children -------------------------------------------------------------
class _FakeClock:
    """A wall clock that moves only when the pacer sleeps on the stop event."""

    def __init__(self, now_ns: int) -> None:
        self.now_ns = now_ns
        self.slept_s: list[float] = []

    def wait(self, seconds: float) -> bool:
        self.slept_s.append(seconds)
        self.now_ns += int(seconds * S)
        return False

    def is_set(self) -> bool:
        return False


def test_paced_frames_leave_when_the_wall_clock_reaches_their_event_time() -> None:
    from producers.sim import SimFrame

    clock = _FakeClock(START)
    frames = [SimFrame("t", "k", "X", {}, START + k * S // 10) for k in (1, 2, 2, 5)]
    sent = []
    for frame in paced(frames, clock, lambda: clock.now_ns):  # type: ignore[arg-type]
        sent.append((frame.event_time_ns, clock.now_ns))
    assert [t for t, _ in sent] == [f.event_time_ns for f in frames]
    assert all(wall >= t for t, wall in sent)
    assert clock.slept_s == pytest.approx([0.1, 0.1, 0.3])


def test_paced_stops_early_when_asked() -> None:
    from producers.sim import SimFrame

    stop = threading.Event()
    stop.set()
    frames = [SimFrame("t", "k", "X", {}, START)]
    assert list(paced(frames, stop, lambda: START + S)) == []


def test_script_names_the_faults_active_at_a_moment_of_the_mixed_scenario() -> None:
    mixed = load_scenario("mixed")
    assert injecting(mixed, 1.0) == []
    assert injecting(mixed, 6.0) == ["gpu-throttle on llama70b-a/rank5"]
    assert "optic-ber on llama70b-b/rank6" in injecting(mixed, 20.0)


def test_the_run_lasts_the_time_left_but_never_past_the_scenario_script() -> None:
    assert sim_seconds(45.0, 60.0) == 45.0
    assert sim_seconds(110.0, 60.0) == 60.0
    assert sim_seconds(1.0, 60.0) == MIN_SIM_S


def test_stop_ends_the_whole_process_group_even_when_sigterm_is_ignored(tmp_path: Path) -> None:
    children = Children()
    stubborn = (
        "import signal, subprocess, sys, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
        "subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)']); "
        "print('ready', flush=True); time.sleep(60)"
    )
    child = children.start(
        "stubborn", [sys.executable, "-c", stubborn], dict(os.environ), tmp_path / "c.log", tmp_path
    )
    while "ready" not in child.tail():
        assert child.running(), child.tail()
        threading.Event().wait(0.05)
    assert len(children.leftovers(wait_s=0)) == 2  # the child and its own child
    assert children.stop(child, grace_s=0.5).startswith("killed")
    assert children.leftovers() == []


# -- fallback ---------------------------------------------------------------------------
def test_demo_falls_back_to_the_in_process_detector_when_no_broker_can_be_had(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def no_java(*_: Any, **__: Any) -> None:
        raise InfraError("Kafka needs Java 17+; none found (install openjdk-17-jre-headless)")

    monkeypatch.setattr(orchestrator.services, "up", no_java)
    out = io.StringIO()
    status = orchestrator.run_demo(
        DemoOptions(duration_s=8.0, page=False), TerminalView(out, tty=False)
    )
    text = out.getvalue()
    assert "no Kafka/Redis pipeline: Kafka needs Java 17+" in text
    assert "running the detector in process" in text
    assert "fault detected   tp-straggler on llama70b-a/rank5" in text
    assert "FIRING   llama70b-a/rank5 tp-straggler" in text  # the table showed it live
    assert status == 0


# -- the live demo ------------------------------------------------------------------------
def demo_command(*args: str) -> list[str]:
    """``skewscope demo ...``, as the README runs it."""
    return [sys.executable, "-m", "skewscope.cli", "demo", *args]


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def demo_env(settings: Settings) -> dict[str, str]:
    env = env_for(settings)
    env.pop("SKEWSCOPE_TOPIC_PREFIX", None)
    env["NO_COLOR"] = "1"
    return env


def run_processes_of(run_id: str) -> list[int]:
    """Pids of live processes whose environment names the demo run (the demo's children)."""
    marker = f"SKEWSCOPE_DEMO_RUN={run_id}".encode()
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if marker in (entry / "environ").read_bytes().split(b"\0"):
                    found.append(int(entry.name))
            except OSError:
                continue
    return found


def test_demo_names_every_injected_fault_and_leaves_nothing_running(settings: Settings) -> None:
    done = subprocess.run(
        demo_command("--duration", "55", "--web-port", str(free_port()), "--no-page"),
        cwd=REPO,
        env=demo_env(settings),
        capture_output=True,
        text=True,
        timeout=180,
    )
    out = done.stdout
    assert done.returncode == 0, out[-4000:] + done.stderr[-2000:]
    run_id = re.search(r"^run (demo-\S+):", out, re.M).group(1)  # type: ignore[union-attr]
    simulated_s = float(re.search(r"simulator: producing (\d+) s", out).group(1))  # type: ignore[union-attr]
    summary = out[out.index("== summary of run") :]
    detected = re.findall(r"^fault detected\s+(\S+) on (\S+) \(onset \+([\d.]+) s\)", summary, re.M)
    missed = re.findall(r"^fault missed\s+(.*)$", summary, re.M)
    assert missed == []
    named = {(condition, entity) for condition, entity, _ in detected}
    # Every fault of the script whose onset the run reached was injected and named.
    assert ("tp-straggler", "llama70b-a/rank5") in named
    assert ("retransmit-storm", "node03/mlx5_2->leaf0:p15") in named
    if simulated_s >= 34:
        assert ("pcie-saturation", "node02") in named
    assert re.search(r"^lookalike quiet\s+load-burst on llama70b-a", summary, re.M)
    assert "in Redis" in summary and "NOT in Redis" not in summary
    # The live table showed each of them as it fired (lines mode: stdout is a pipe).
    for condition, entity in named:
        assert f"FIRING   {entity} {condition}" in out
    # Nothing it started is still running, by its own account, by pid and by environment.
    assert "no process left running (checked 3 process groups)" in out
    pids = [int(p) for p in re.findall(r"\(pid (\d+)\)", out)]
    assert len(set(pids)) == 3
    ps = subprocess.run(
        ["ps", "-o", "pid=", "-p", ",".join(map(str, set(pids)))], capture_output=True, text=True
    )
    assert ps.stdout.strip() == ""
    assert run_processes_of(run_id) == []
    # Its topics are gone: repeated demos never mix, and none piles up on the broker.
    topics = admin_client(settings, quiet=True).list_topics(timeout=10).topics
    assert not [t for t in topics if t.startswith(run_id)]
