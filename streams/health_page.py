"""A live health page on the worker's web server: the cluster coloured healthy/unhealthy/unknown.

``register_health_page(app, pool, settings)`` adds two Faust web views:

* ``/`` - one self-contained HTML page (inline CSS and JavaScript, no CDN) that draws every
  deployment (its ranks and their GPUs), every node (GPUs, east-west links, the fabric), the
  current verdicts with their evidence and the recent history, and re-draws from
  ``/health.json`` once a second with ``fetch()``, so it updates without a reload;
* ``/health.json`` - the same data as one JSON document (:func:`health_document`).

Health of an element, from what this worker's detector shards know:

* ``unhealthy``: a firing verdict names the element (a rank also turns unhealthy with its GPU,
  a link with its NIC port or its fabric);
* ``unknown``: no telemetry of its deployment yet, its newest telemetry is older than
  ``stale_after_ns`` (wall clock minus event time), or one of its node's sources is silent
  (the watermark's idle-source timeout): no data is not health;
* ``healthy``: fresh data and no firing verdict.

Each deployment also lists its router pool's other replicas in its shard and elsewhere: a
replica whose pool peers are all on other shards cannot be judged for the load family (no
peer to compare with), which the document states rather than letting it read as healthy.

Limits: the page shows the partitions this worker owns (a group of several workers shows one
page per worker); staleness compares this host's wall clock with event time, so a replay of
old history reads ``unknown``; history is what this process saw since it started (at most
``HISTORY_MAX`` changes, sampled once a second and on every request), not the verdict topic.
"""

from __future__ import annotations

import json
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from skewscope.config import Settings
from streams.shards import ShardPool

HISTORY_MAX = 50
HEALTHY, UNHEALTHY, UNKNOWN = "healthy", "unhealthy", "unknown"
_RANK = {HEALTHY: 0, UNKNOWN: 1, UNHEALTHY: 2}


@dataclass
class HealthHistory:
    """Fired/resolved transitions of the firing verdicts, newest first, bounded."""

    max_items: int = HISTORY_MAX
    _firing: dict[str, tuple[str, int]] = field(default_factory=dict)
    items: deque[dict[str, Any]] = field(default_factory=deque)

    def observe(self, firing: Mapping[str, Mapping[str, Any]], watermark_ns: int) -> None:
        """Compare ``firing`` (entity -> verdict) with the last call; record what changed."""
        now = {e: (str(v["condition"]), int(v.get("version", 0))) for e, v in firing.items()}
        for entity, (condition, _) in now.items():
            before = self._firing.get(entity)
            if before is None or before[0] != condition:
                record = firing[entity]
                self._add("fired", entity, condition, int(record["first_seen_ns"]), record)
        for entity, (condition, _) in self._firing.items():
            if entity not in now or now[entity][0] != condition:
                self._add("resolved", entity, condition, watermark_ns, None)
        self._firing = now

    def _add(
        self,
        change: str,
        entity: str,
        condition: str,
        at_ns: int,
        record: Mapping[str, Any] | None,
    ) -> None:
        item = {"change": change, "entity": entity, "condition": condition, "at_ns": at_ns}
        if record is not None:
            item["severity"] = float(record.get("severity", 0.0))
            item["directive"] = str(record.get("directive", ""))
        self.items.appendleft(item)
        while len(self.items) > self.max_items:
            self.items.pop()


def firing_verdicts(pool: ShardPool) -> dict[str, dict[str, Any]]:
    """Current firing verdicts of every shard, by entity."""
    out: dict[str, dict[str, Any]] = {}
    for detector in list(pool.shards.values()):
        out.update(detector.fusion.firing())
    return out


def health_document(
    pool: ShardPool,
    now_ns: int | None = None,
    history: HealthHistory | None = None,
    stale_after_ns: int | None = None,
) -> dict[str, Any]:
    """The page's data: deployments, nodes, fabrics, verdicts, history (JSON-ready).

    ``stale_after_ns`` defaults to the detector's ``freshness_bound_ns`` (the bound the Redis
    heartbeats state), so the page and the scheduler client call the same data stale.
    """
    now_ns = time.time_ns() if now_ns is None else now_ns
    stale_ns = pool.config.freshness_bound_ns if stale_after_ns is None else stale_after_ns
    latest: dict[str, int] = {}
    silent: dict[str, set[str]] = {}  # node -> silent sources
    silent_deps: dict[str, set[str]] = {}  # deployment -> nodes with a silent source
    watermark_ns = 0
    frames = windows = 0
    held_with: dict[str, frozenset[str]] = {}  # deployment -> the deployments of its shard
    for detector in list(pool.shards.values()):
        seen = frozenset(detector.deployments_seen())
        held_with.update(dict.fromkeys(seen, seen))
        tracker = detector.watermarks
        for stream in tracker.streams():
            dep = str(stream[0])  # type: ignore[index]
            latest[dep] = max(latest.get(dep, 0), tracker.latest_ns(stream) or 0)
        for dep, source, node in detector.silent_sources():
            silent.setdefault(node, set()).add(source)
            silent_deps.setdefault(dep, set()).add(node)
        watermark_ns = max(watermark_ns, int(detector.watermark_ns))
        frames += detector.stats.frames
        windows += detector.stats.windows_closed
    firing = firing_verdicts(pool)
    if history is not None:
        history.observe(firing, watermark_ns)
    named = _named(firing)

    topo = pool.topology
    pool_of = topo.pools()
    members: dict[str, list[str]] = {}  # router pool -> its deployments, sorted
    for dep, name in sorted(pool_of.items()):
        members.setdefault(name, []).append(dep)
    dep_health: dict[str, tuple[str, str]] = {}
    deployments = []
    for dep in sorted(set(topo.deployments()) | set(latest)):
        health, reason = _freshness(latest.get(dep), now_ns, stale_ns)
        if health == HEALTHY and silent_deps.get(dep):
            nodes = ", ".join(sorted(silent_deps[dep]))
            health, reason = UNKNOWN, f"a source is silent on {nodes}"
        own = [v for v in firing.values() if v.get("deployment") == dep]
        if health == HEALTHY and own:
            health = UNHEALTHY
            reason = "firing: " + ", ".join(sorted(f"{v['entity']} {v['condition']}" for v in own))
        dep_health[dep] = (health, reason)
        ranks = []
        for place in sorted(topo.ranks_of(dep), key=lambda p: p.rank):
            h, why = _element(named, [place.entity, place.gpu_entity], dep_health[dep])
            if h == HEALTHY and silent.get(place.node):
                h, why = UNKNOWN, "silent: " + ", ".join(sorted(silent[place.node]))
            ranks.append(
                {
                    "entity": place.entity,
                    "rank": place.rank,
                    "tp_rank": place.tp_rank,
                    "pp_stage": place.pp_stage,
                    "node": place.node,
                    "gpu": place.gpu_entity,
                    "health": h,
                    "reason": why,
                }
            )
        age = latest.get(dep)
        deployments.append(
            {
                "name": dep,
                "health": health,
                "reason": reason,
                "staleness_s": None if age is None else round((now_ns - age) / 1e9, 3),
                "pool": _pool_peers(dep, pool_of.get(dep, ""), members, held_with.get(dep)),
                "ranks": ranks,
            }
        )

    node_docs = [
        _node(name, topo, named, silent, dep_health, firing) for name in _all_nodes(topo, firing)
    ]
    fabrics = []
    for name in sorted({p.fabric_name for p in topo.ranks.values()}):
        entity = f"fabric:{name}"
        health, reason = _element(named, [entity], (HEALTHY, "no fabric-wide verdict"))
        fabrics.append({"entity": entity, "health": health, "reason": reason})
    verdicts = sorted(
        firing.values(),
        key=lambda v: (-float(v["severity"]) * float(v["confidence"]), v["entity"]),
    )
    return {
        "now_ns": now_ns,
        "watermark_ns": watermark_ns,
        "stale_after_s": stale_ns / 1e9,
        "deployments": deployments,
        "nodes": node_docs,
        "fabrics": fabrics,
        "verdicts": verdicts,
        "history": list(history.items) if history is not None else [],
        "stats": {"shards": len(pool.shards), "frames": frames, "windows_closed": windows},
    }


def _pool_peers(
    dep: str, name: str, members: Mapping[str, list[str]], shard: frozenset[str] | None
) -> dict[str, Any]:
    """The replicas the load family compares ``dep`` with: the others of its router pool
    ``name`` in its shard. A replica whose pool peers are all on other shards is not judged
    for load conditions (no peer, no room to compare): shown, not read as healthy."""
    others = [d for d in members.get(name, ()) if d != dep]
    here = [d for d in others if shard is not None and d in shard]
    elsewhere = [d for d in others if d not in here]
    if shard is None:
        judged = "not yet: no telemetry of this replica"
    elif here:
        judged = f"against {len(here)} peer(s) of its pool in its shard"
    elif elsewhere:
        judged = "no: its pool's other replicas are on other shards or silent"
    else:
        judged = "no: alone in its pool"
    return {"name": name, "peers_in_shard": here, "peers_elsewhere": elsewhere, "load": judged}


def _named(firing: Mapping[str, Mapping[str, Any]]) -> dict[str, str]:
    """entity -> condition of its firing verdict."""
    return {e: str(v["condition"]) for e, v in firing.items()}


def _freshness(latest_ns: int | None, now_ns: int, stale_ns: int) -> tuple[str, str]:
    if latest_ns is None:
        return UNKNOWN, "no telemetry yet"
    age_ns = now_ns - latest_ns
    if age_ns > stale_ns:
        return UNKNOWN, f"newest telemetry is {age_ns / 1e9:.1f} s old (bound {stale_ns / 1e9:g} s)"
    return HEALTHY, "fresh data, no firing verdict"


def _element(
    named: Mapping[str, str], entities: Iterable[str], parent: tuple[str, str]
) -> tuple[str, str]:
    """Unhealthy when a verdict names one of ``entities``; else unknown if the parent is."""
    for entity in entities:
        if entity in named:
            return UNHEALTHY, f"{named[entity]} on {entity}"
    if parent[0] == UNKNOWN:
        return UNKNOWN, parent[1]
    return HEALTHY, "no firing verdict"


def _all_nodes(topo: Any, firing: Mapping[str, Any]) -> list[str]:
    nodes = set(topo.nodes())
    for entity in firing:
        head = entity.split("/", 1)[0].split("#", 1)[0]
        if head.startswith("node") or head in nodes:
            nodes.add(head)
    return sorted(nodes)


def _node(
    node: str,
    topo: Any,
    named: Mapping[str, str],
    silent: Mapping[str, set[str]],
    dep_health: Mapping[str, tuple[str, str]],
    firing: Mapping[str, Mapping[str, Any]],
) -> dict[str, Any]:
    places = sorted(topo.ranks_on(node), key=lambda p: p.gpu_index)
    deps = sorted({p.deployment for p in places})
    parent = (HEALTHY, "fresh data")
    for dep in deps:
        if dep_health.get(dep, (UNKNOWN, ""))[0] == UNKNOWN:
            parent = (UNKNOWN, f"{dep}: {dep_health.get(dep, (UNKNOWN, 'no data'))[1]}")
    if silent.get(node):
        parent = (UNKNOWN, "silent sources: " + ", ".join(sorted(silent[node])))
    if not places:
        parent = (UNKNOWN, "not in the topology")
    health, reason = _element(named, [node], parent)
    gpus, links = [], []
    known = {node}
    for p in places:
        fabric = f"fabric:{p.fabric_name}"
        gpus.append(
            {
                "entity": p.gpu_entity,
                "rank": p.entity,
                **_as_dict(_element(named, [p.gpu_entity, p.entity], parent)),
            }
        )
        links.append(
            {
                "entity": p.path_entity,
                "port": p.port_entity,
                "switch_port": p.switch_port,
                "fabric": fabric,
                **_as_dict(_element(named, [p.path_entity, p.port_entity, fabric], parent)),
            }
        )
        known |= {p.gpu_entity, p.entity, p.path_entity, p.port_entity}
    other = [
        {"entity": e, "health": UNHEALTHY, "reason": f"{named[e]} on {e}"}
        for e in sorted(firing)
        if e not in known and (e.startswith(node + "/") or e.startswith(node + "#"))
    ]
    parts = gpus + links + other
    firing_parts = [x["reason"] for x in parts if x["health"] == UNHEALTHY]
    summary = reason
    if health != UNHEALTHY and firing_parts:
        summary = "firing: " + "; ".join(sorted(set(firing_parts)))
    return {
        "name": node,
        "deployments": deps,
        "health": health,
        "reason": reason,
        "summary": summary,
        "worst": max([health] + [x["health"] for x in parts], key=lambda h: _RANK[h]),
        "gpus": gpus,
        "links": links,
        "other": other,
    }


def _as_dict(pair: tuple[str, str]) -> dict[str, str]:
    return {"health": pair[0], "reason": pair[1]}


def page_html(initial: Mapping[str, Any] | None = None) -> str:
    """The self-contained page; ``initial`` (a health document) is drawn before the first poll."""
    data = json.dumps(initial or {}).replace("</", "<\\/")
    return _PAGE.replace("__INITIAL__", data)


def register_health_page(
    app: Any,
    pool: ShardPool,
    settings: Settings,
    clock_ns: Callable[[], int] = time.time_ns,
) -> HealthHistory:
    """Add ``/`` (HTML) and ``/health.json`` to a Faust app's web server; idempotent.

    Call before the worker starts (views registered first win the route ``/`` over Faust's
    own index). Returns the history the page shows (also sampled once a second by a timer).
    """
    existing = getattr(app, "skewscope_health_history", None)
    if existing is not None:
        return existing
    history = HealthHistory()
    app.skewscope_health_history = history
    del settings  # the pool carries the detector config; kept in the signature for wiring

    def document() -> dict[str, Any]:
        return health_document(pool, clock_ns(), history)

    @app.page("/")
    async def health_page(web: Any, request: Any) -> Any:
        return web.html(page_html(document()))

    @app.page("/health.json")
    async def health_json(web: Any, request: Any) -> Any:
        return web.json(document())

    @app.timer(1.0)
    async def sample_health_history() -> None:
        marks = [d.watermark_ns for d in list(pool.shards.values())]
        history.observe(firing_verdicts(pool), max(marks, default=0))

    return history


_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>skewscope health</title>
<style>
:root { --ok:#2a9d8f; --bad:#e63946; --unk:#8d99ae; --bg:#f7f7f9; --ink:#1d2433; }
* { box-sizing: border-box; }
body { font: 14px/1.4 system-ui, -apple-system, "Segoe UI", sans-serif; margin: 0;
       background: var(--bg); color: var(--ink); }
header { padding: 10px 18px; background: #1d2433; color: #fff; display: flex; gap: 18px;
         align-items: baseline; flex-wrap: wrap; }
header h1 { font-size: 17px; margin: 0; }
header .meta { opacity: .8; font-size: 13px; }
main { padding: 12px 18px; display: grid; gap: 14px; }
section h2 { font-size: 15px; margin: 4px 0 8px; }
.cards { display: flex; flex-wrap: wrap; gap: 10px; }
.card { background: #fff; border-radius: 8px; padding: 8px 10px; border-left: 6px solid var(--unk);
        box-shadow: 0 1px 2px rgba(0,0,0,.08); min-width: 230px; }
.card.healthy { border-left-color: var(--ok); } .card.unhealthy { border-left-color: var(--bad); }
.card h3 { font-size: 14px; margin: 0 0 4px; }
.reason { font-size: 12px; color: #555; margin-bottom: 6px; }
.cells { display: flex; flex-wrap: wrap; gap: 4px; }
.cell { font-size: 11px; padding: 3px 6px; border-radius: 4px; color: #fff;
        background: var(--unk); }
.cell.healthy { background: var(--ok); } .cell.unhealthy { background: var(--bad); }
.legend .cell { display: inline-block; }
table { border-collapse: collapse; background: #fff; width: 100%; font-size: 13px; }
th, td { text-align: left; padding: 4px 8px; border-bottom: 1px solid #e3e5ea;
         vertical-align: top; }
th { background: #eef0f4; }
.sev { font-variant-numeric: tabular-nums; }
.empty { color: #666; font-style: italic; }
.err { color: var(--bad); }
</style></head>
<body data-updates="0">
<header><h1>skewscope health</h1>
<span class="meta" id="meta">loading</span>
<span class="legend"><span class="cell healthy">healthy</span>
<span class="cell unhealthy">unhealthy</span>
<span class="cell unknown">unknown</span></span></header>
<main>
<section><h2>Deployments (ranks)</h2><div class="cards" id="deployments"></div></section>
<section><h2>Nodes (GPUs, east-west links)</h2><div class="cards" id="nodes"></div></section>
<section><h2>Current verdicts</h2><div id="verdicts"></div></section>
<section><h2>Recent history</h2><div id="history"></div></section>
</main>
<script id="initial" type="application/json">__INITIAL__</script>
<script>
"use strict";
function el(tag, attrs, text) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, v);
  if (text !== undefined) node.textContent = text;
  return node;
}
function cell(item, label) {
  return el("span", {"class": "cell " + item.health, "data-entity": item.entity,
                     "data-health": item.health, "title": item.reason}, label);
}
function secs(ns, now) { return ((now - ns) / 1e9).toFixed(1) + " s ago"; }
function card(kind, name, health, reason) {
  const c = el("div", {"class": "card " + health, ["data-" + kind]: name, "data-health": health});
  c.appendChild(el("h3", {}, name + " - " + health));
  c.appendChild(el("div", {"class": "reason"}, reason));
  return c;
}
function evidence(v) {
  return (v.evidence || []).slice(0, 3).map(e =>
    e.feature + "=" + Number(e.value).toPrecision(3) + " (" + e.comparator + " " +
    Number(e.threshold).toPrecision(3) + ", " + e.source + ")").join("; ");
}
function render(doc) {
  if (!doc || !doc.deployments) return;
  const now = doc.now_ns;
  document.getElementById("meta").textContent =
    "watermark " + (doc.watermark_ns ? secs(doc.watermark_ns, now) : "none yet") +
    " | " + doc.stats.frames + " frames, " + doc.stats.windows_closed + " windows, " +
    doc.verdicts.length + " firing";
  const deps = document.getElementById("deployments");
  deps.replaceChildren();
  for (const d of doc.deployments) {
    const c = card("deployment", d.name, d.health, d.reason +
      (d.staleness_s === null ? "" : " (data " + d.staleness_s.toFixed(1) + " s old)") +
      (d.pool && d.pool.load.startsWith("no") ? "; load not judged: " + d.pool.load : ""));
    const cells = el("div", {"class": "cells"});
    for (const r of d.ranks) cells.appendChild(cell(r, "rank" + r.rank + " " + r.gpu));
    c.appendChild(cells); deps.appendChild(c);
  }
  if (!doc.deployments.length) deps.appendChild(el("p", {"class": "empty"}, "no topology yet"));
  const nodes = document.getElementById("nodes");
  nodes.replaceChildren();
  for (const n of doc.nodes) {
    const c = card("node", n.name, n.worst, n.summary + " [" + n.deployments.join(", ") + "]");
    const cells = el("div", {"class": "cells"});
    cells.appendChild(cell({entity: n.name, health: n.health, reason: n.reason}, "node"));
    for (const g of n.gpus) cells.appendChild(cell(g, g.entity.split("/")[1]));
    for (const l of n.links) cells.appendChild(cell(l, l.entity.split("/")[1]));
    for (const o of n.other) cells.appendChild(cell(o, o.entity.slice(n.name.length + 1)));
    c.appendChild(cells); nodes.appendChild(c);
  }
  for (const f of doc.fabrics) {
    const c = card("fabric", f.entity, f.health, f.reason);
    nodes.appendChild(c);
  }
  const vt = document.getElementById("verdicts");
  vt.replaceChildren();
  if (!doc.verdicts.length) vt.appendChild(el("p", {"class": "empty"}, "no firing verdict"));
  else {
    const t = el("table", {});
    const head = el("tr", {});
    for (const h of ["entity", "condition", "severity", "confidence", "directive", "evidence",
                     "since"]) head.appendChild(el("th", {}, h));
    t.appendChild(head);
    for (const v of doc.verdicts) {
      const row = el("tr", {"class": "verdict", "data-entity": v.entity,
                            "data-condition": v.condition});
      row.appendChild(el("td", {}, v.entity));
      row.appendChild(el("td", {}, v.condition));
      row.appendChild(el("td", {"class": "sev"}, Number(v.severity).toFixed(2)));
      row.appendChild(el("td", {"class": "sev"}, Number(v.confidence).toFixed(2)));
      row.appendChild(el("td", {"title": v.directive_text || ""}, v.directive));
      row.appendChild(el("td", {}, evidence(v)));
      row.appendChild(el("td", {}, secs(v.first_seen_ns, now)));
      t.appendChild(row);
    }
    vt.appendChild(t);
  }
  const ht = document.getElementById("history");
  ht.replaceChildren();
  if (!doc.history.length) ht.appendChild(el("p", {"class": "empty"}, "no change yet"));
  else {
    const t = el("table", {});
    for (const h of doc.history) {
      const row = el("tr", {"class": "history " + h.change, "data-entity": h.entity});
      row.appendChild(el("td", {}, secs(h.at_ns, now)));
      row.appendChild(el("td", {}, h.change));
      row.appendChild(el("td", {}, h.entity));
      row.appendChild(el("td", {}, h.condition));
      row.appendChild(el("td", {}, h.directive || ""));
      t.appendChild(row);
    }
    ht.appendChild(t);
  }
  document.body.setAttribute("data-updates",
    String(Number(document.body.getAttribute("data-updates")) + 1));
}
async function poll() {
  try {
    const reply = await fetch("health.json", {cache: "no-store"});
    if (!reply.ok) throw new Error("HTTP " + reply.status);
    render(await reply.json());
  } catch (err) {
    document.getElementById("meta").textContent = "worker unreachable: " + err +
      " (the page retries every second)";
  }
}
render(JSON.parse(document.getElementById("initial").textContent));
setInterval(poll, 1000);
</script>
</body></html>
"""
