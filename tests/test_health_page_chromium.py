"""The live health page: its data from detector state, then in headless Chromium during a demo."""

from __future__ import annotations

import re
import shutil
import subprocess
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest

from producers.sim import Simulation, load_scenario
from skewscope.config import Settings
from streams.health_page import HealthHistory, health_document, page_html
from streams.replay.message import partition_for
from streams.shards import ShardPool
from tests.live import REPO
from tests.test_demo import demo_command, demo_env, free_port

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
FLAGS = ["--headless=new", "--no-sandbox", "--disable-gpu", "--hide-scrollbars"]
S = 1_000_000_000


def _mixed(seconds: int, partition: Callable[[str], int]) -> tuple[ShardPool, int]:
    """The mixed scenario's first ``seconds`` through a shard pool, each frame on the
    partition ``partition(key)`` names; its data ends 1 s before the returned wall time."""
    now_ns = time.time_ns()
    sim = Simulation(load_scenario("mixed"), seed=0, start_ns=now_ns - (seconds + 1) * S)
    pool = ShardPool()
    for record in sim.topology:
        pool.update_topology(record)
    for frame in sim.frames(float(seconds)):
        pool.process(partition(frame.key), frame.schema, frame.record)
    return pool, now_ns


@pytest.fixture(scope="module")
def straggling_pool() -> tuple[ShardPool, int]:
    """The mixed scenario's first 8 s through the detector: rank5 of llama70b-a is throttled
    from 5.3 s. Returns the pool and the wall time at which its data is fresh."""
    return _mixed(8, lambda key: partition_for(key.encode(), 4))


def _by_entity(items: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {item["entity"]: item for item in items}


def test_throttled_rank_and_its_gpu_are_unhealthy_and_their_peers_healthy(
    straggling_pool: tuple[ShardPool, int],
) -> None:
    pool, now_ns = straggling_pool
    history = HealthHistory()
    doc = health_document(pool, now_ns, history)
    deps = {d["name"]: d for d in doc["deployments"]}
    assert deps["llama70b-a"]["health"] == "unhealthy"
    assert deps["llama70b-b"]["health"] == "healthy"
    ranks = _by_entity(deps["llama70b-a"]["ranks"])
    assert ranks["llama70b-a/rank5"]["health"] == "unhealthy"
    assert {e for e, r in ranks.items() if r["health"] != "healthy"} == {"llama70b-a/rank5"}
    nodes = {n["name"]: n for n in doc["nodes"]}
    gpu = _by_entity(nodes[ranks["llama70b-a/rank5"]["node"]]["gpus"])[
        ranks["llama70b-a/rank5"]["gpu"]
    ]
    assert gpu["health"] == "unhealthy" and gpu["rank"] == "llama70b-a/rank5"
    assert [v["entity"] for v in doc["verdicts"]] == ["llama70b-a/rank5"]
    assert doc["verdicts"][0]["condition"] == "tp-straggler"
    assert [(h["change"], h["entity"]) for h in doc["history"]] == [("fired", "llama70b-a/rank5")]


def test_the_page_names_each_replicas_pool_peers_in_its_shard(
    straggling_pool: tuple[ShardPool, int],
) -> None:
    pool, now_ns = straggling_pool
    deps = {d["name"]: d for d in health_document(pool, now_ns)["deployments"]}
    assert deps["llama70b-a"]["pool"] == {
        "name": "frontend",
        "peers_in_shard": ["llama70b-b"],
        "peers_elsewhere": [],
        "load": "against 1 peer(s) of its pool in its shard",
    }


def _split_pool() -> tuple[ShardPool, int]:
    """The mixed scenario's two replicas on two partitions (3 s): each shard holds one."""
    return _mixed(3, lambda key: 0 if key == "llama70b-a" else 1)


def test_a_replica_whose_pool_peers_are_on_another_shard_is_shown_unjudged_for_load() -> None:
    """Neither replica has a peer in its shard to compare its load with, and the page says
    so instead of showing nothing."""
    pool, now_ns = _split_pool()
    deps = {d["name"]: d for d in health_document(pool, now_ns)["deployments"]}
    for name, peer in (("llama70b-a", "llama70b-b"), ("llama70b-b", "llama70b-a")):
        assert deps[name]["pool"]["peers_in_shard"] == []
        assert deps[name]["pool"]["peers_elsewhere"] == [peer]
        assert deps[name]["pool"]["load"].startswith("no: its pool's other replicas")


def test_old_data_reads_unknown_not_healthy(straggling_pool: tuple[ShardPool, int]) -> None:
    pool, now_ns = straggling_pool
    doc = health_document(pool, now_ns + 60 * S)
    assert {d["health"] for d in doc["deployments"]} == {"unknown"}
    assert "old" in doc["deployments"][0]["reason"]
    healthy = [r for d in doc["deployments"] for r in d["ranks"] if r["health"] == "healthy"]
    assert healthy == []  # rank5 stays unhealthy (its verdict fires); no one else is "healthy"


def test_a_pool_without_telemetry_shows_its_topology_as_unknown() -> None:
    pool = ShardPool()
    for record in Simulation(load_scenario("mixed")).topology:
        pool.update_topology(record)
    doc = health_document(pool)
    assert [d["reason"] for d in doc["deployments"]] == ["no telemetry yet"] * 2
    assert {n["worst"] for n in doc["nodes"]} == {"unknown"}


def test_page_is_self_contained_and_embeds_the_first_document(
    straggling_pool: tuple[ShardPool, int],
) -> None:
    pool, now_ns = straggling_pool
    html = page_html(health_document(pool, now_ns))
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", html)
    assert "@import" not in html and "url(" not in html
    assert 'fetch("health.json"' in html and "setInterval(poll, 1000)" in html
    assert "llama70b-a/rank5" in html.split('<script id="initial"', 1)[1]


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (apt-get install chromium)")
def test_the_page_draws_the_unjudged_load_of_a_split_pool(tmp_path: Any) -> None:
    pool, now_ns = _split_pool()
    page = tmp_path / "health.html"
    page.write_text(page_html(health_document(pool, now_ns)))
    dom = _dump_dom(page.as_uri())
    assert dom.count("load not judged: no: its pool's other replicas") == 2


def _dump_dom(url: str) -> str:
    assert CHROMIUM is not None
    done = subprocess.run(
        [CHROMIUM, *FLAGS, "--virtual-time-budget=2500", "--dump-dom", url],
        capture_output=True,
        text=True,
        timeout=60,
    )
    return done.stdout


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (apt-get install chromium)")
def test_injected_straggler_turns_red_on_the_live_page_during_a_demo(settings: Settings) -> None:
    port = free_port()
    # Start-up (topics, the worker's group join) takes ~10 s of --duration on a loaded 2-core
    # machine and 6 s are kept for the tail: 40 s leave ~24 s of simulation, so the throttled
    # rank (5.3-15.1 s) is red for ~9 s, several Chromium dumps of a few seconds each. With
    # 28 s a CI run got 12 s of simulation, and no dump caught the 4 s of red.
    proc = subprocess.Popen(
        demo_command("--duration", "40", "--web-port", str(port)),
        cwd=REPO,
        env=demo_env(settings),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    lines: list[str] = []
    page_up = threading.Event()

    def read() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.append(line)
            if line.startswith("health page: http://127.0.0.1:"):
                page_up.set()
        page_up.set()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    seen: dict[str, Any] = {}
    try:
        page_up.wait(120)
        assert proc.poll() is None, "".join(lines)[-3000:]
        while proc.poll() is None and not seen:
            dom = _dump_dom(f"http://127.0.0.1:{port}/")
            row = re.search(
                r'<tr class="verdict" data-entity="llama70b-a/rank5" '
                r'data-condition="tp-straggler">',
                dom,
            )
            cell = re.search(
                r'class="cell unhealthy" data-entity="llama70b-a/rank5" data-health="unhealthy"',
                dom,
            )
            updates = re.search(r'<body data-updates="(\d+)"', dom)
            if row and cell:
                seen = {"dom": dom, "updates": int(updates.group(1)) if updates else 0}
        proc.wait(120)
    finally:
        if proc.poll() is None:
            proc.terminate()
            proc.wait(60)
        reader.join(10)
    output = "".join(lines)
    assert seen, "the throttled rank never showed as unhealthy on the page:\n" + output[-3000:]
    assert seen["updates"] >= 2, "the page did not re-draw from /health.json (no fetch updates)"
    peers = re.findall(r'data-entity="llama70b-a/rank\d" data-health="(\w+)"', seen["dom"])
    assert peers.count("unhealthy") == 1 and len(peers) == 8
    assert proc.returncode == 0, output[-3000:]
    assert "no process left running" in output
