"""The demo without a broker: the same detector, in process, on the simulator in real time.

Used when Kafka or Redis cannot be had (no Java for the local broker, no redis-server) or
with ``--in-process``. The simulator's frames go straight to a :class:`streams.shards.ShardPool`
(one detector per partition, partitions chosen by the producer's murmur2 of the deployment
key, exactly as on Kafka), paced to the wall clock like the live demo. The terminal shows the
same table; the "scheduler reads" line is what Redis would hold, computed here: health from
data freshness and firing verdicts, the avoid-list as the top ``avoid_share_ratio`` share of a
deployment's ranks by severity x confidence. The health page is served by a small HTTP
server from the same :func:`streams.health_page.health_document`.

Limits: no Kafka, no Redis, no Faust: this shows the detection, not the transport; the
summary says "in Redis" for nothing.
"""

from __future__ import annotations

import threading
import time
from collections import defaultdict
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from producers.sim import Scenario, Simulation
from sinks.config import load_sink_config
from sinks.redis_writer import avoid_score, is_avoidable
from skewscope.config import Settings
from skewscope.demo.options import DEFAULT_WEB_PORT, DemoOptions
from skewscope.demo.paced import paced
from skewscope.demo.script import injecting, load_causes, sim_seconds
from skewscope.demo.summary import summarize
from skewscope.demo.terminal import DeploymentLine, Snapshot, TerminalView
from streams.health_page import HealthHistory, health_document, page_html
from streams.replay.message import partition_for
from streams.shards import ShardPool


def run_in_process(
    options: DemoOptions, scenario: Scenario, settings: Settings, view: TerminalView, why: str
) -> int:
    """Run the scenario through the detector in this process; returns the exit status
    (0: every injected fault named, 1: some were not, 130: interrupted)."""
    view.say(
        f"running the detector in process on the simulator ({why}): no Kafka, no Redis; "
        "the table below is what the detector decides"
    )
    started = time.monotonic()
    sim = Simulation(scenario, seed=options.seed, start_ns=time.time_ns() + 100_000_000)
    pool = ShardPool()
    for record in sim.topology:
        pool.update_topology(record)
    lock = threading.Lock()
    history = HealthHistory()
    server = _serve_page(options, pool, lock, history, view) if options.page else None
    share = load_sink_config(options.config).avoid_share_ratio
    ranks: dict[str, int] = defaultdict(int)
    for record in sim.topology:
        ranks[record["deployment"]] += 1
    partitions = max(1, settings.telemetry_partitions)
    duration_s = sim_seconds(options.duration_s - (time.monotonic() - started), scenario.duration_s)
    verdicts: list[dict[str, Any]] = []
    stop = threading.Event()
    status = 0
    last_draw = 0.0
    try:
        for frame in paced(sim.frames(duration_s), stop):
            partition = partition_for(frame.key.encode(), partitions)
            with lock:
                outputs = pool.process(partition, frame.schema, frame.record)
            verdicts += [o.record for o in outputs if o.schema == "Verdict"]
            if time.monotonic() - last_draw >= options.refresh_s:
                last_draw = time.monotonic()
                with lock:
                    snap = _snapshot(scenario, sim, pool, history, duration_s, ranks, share)
                view.show(snap)
        with lock:
            verdicts += [o.record for o in pool.flush() if o.schema == "Verdict"]
    except KeyboardInterrupt:
        view.say("interrupted: the summary covers what ran")
        status = 130
        for label in sim.labels:
            if label.get("end_ns") is None:
                label["end_ns"] = sim.now_ns
    finally:
        if server is not None:
            server.shutdown()
            server.server_close()
        view.close()
    causes = load_causes(scenario, sim.start_ns, (sim.now_ns - sim.start_ns) / 1e9)
    summary = summarize(sim.labels, verdicts, sim.start_ns, in_redis=None, load_causes=causes)
    view.say("")
    view.say(f"== summary (in process, scenario {scenario.name}) ==")
    for line in summary.lines():
        view.say(line)
    view.say("no process was started; nothing to stop")
    if status == 0 and not summary.all_named():
        status = 1
    return status


def _snapshot(
    scenario: Scenario,
    sim: Simulation,
    pool: ShardPool,
    history: HealthHistory,
    duration_s: float,
    ranks: dict[str, int],
    share: float,
) -> Snapshot:
    doc = health_document(pool, time.time_ns(), history)
    firing = list(doc["verdicts"])
    deployments = []
    for dep in doc["deployments"]:
        own = [v for v in firing if v.get("deployment") == dep["name"] and is_avoidable(v)]
        own.sort(key=lambda v: (-avoid_score(v), v["entity"]))
        cap = int(share * ranks.get(dep["name"], 0))
        deployments.append(
            DeploymentLine(
                dep["name"],
                dep["health"],
                dep["reason"],
                dep["staleness_s"],
                tuple(v["entity"] for v in own[:cap]),
            )
        )
    elapsed_s = max(0.0, (time.time_ns() - sim.start_ns) / 1e9)
    return Snapshot(
        title=f"skewscope demo - {scenario.name} (in process)",
        elapsed_s=elapsed_s,
        duration_s=duration_s,
        verdicts=firing,
        deployments=deployments,
        injecting=injecting(scenario, elapsed_s),
        source="detector in process (no Redis)",
        notes=("Ctrl-C stops the demo",),
    )


def _serve_page(
    options: DemoOptions,
    pool: ShardPool,
    lock: threading.Lock,
    history: HealthHistory,
    view: TerminalView,
) -> ThreadingHTTPServer | None:
    """The health page on ``--web-port`` from a thread; None (said why) when the port is taken."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            with lock:
                doc = health_document(pool, time.time_ns(), history)
            if self.path.split("?", 1)[0] == "/health.json":
                import json

                body, kind = json.dumps(doc).encode(), "application/json"
            elif self.path.split("?", 1)[0] == "/":
                body, kind = page_html(doc).encode(), "text/html; charset=utf-8"
            else:
                self.send_error(404, "only / and /health.json")
                return
            self.send_response(200)
            self.send_header("Content-Type", kind)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Cache-Control", "no-store")
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            return

    port = options.web_port or DEFAULT_WEB_PORT
    try:
        server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
    except OSError as exc:
        view.say(f"health page: port {port} unavailable ({exc}); pass --web-port, or --no-page")
        return None
    threading.Thread(target=server.serve_forever, name="health-page", daemon=True).start()
    view.say(f"health page: http://127.0.0.1:{port}/  (live; JSON at /health.json)")
    return server
