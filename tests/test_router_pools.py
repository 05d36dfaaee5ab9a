"""The load family compares a replica only with the other replicas of its router pool."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from schemas.catalog import SCHEMA_DIR, Catalog, parse
from schemas.codec import AvroCodec
from streams.topology import Topology
from streams.views import EntityView, WindowInputs, build_views
from tests.synthetic import topology

BUSY = {"batch_fill_ratio": 0.9, "kv_cache_usage_ratio": 0.95, "num_waiting": 6.0}
IDLE = {"batch_fill_ratio": 0.1, "kv_cache_usage_ratio": 0.1, "num_waiting": 0.0}


def _topology(pools: dict[str, str]) -> Topology:
    topo = Topology()
    for dep, pool in pools.items():
        for rec in topology(dep, nodes=1, gpus_per_node=1):
            rec["node"] = f"{dep}-node0"
            rec["router_pool"] = pool
            topo.update(rec)
    return topo


def _replicas(
    pools: dict[str, str], engine: dict[str, dict[str, float]], requests: dict[str, Any]
) -> dict[str, EntityView]:
    inputs = WindowInputs(
        nccl={}, gpu={}, nic={}, dpu={}, engine=engine, requests=requests,
        clock_step_abs_ns={}, silent=set(), port_plane={}, port_fabric={}, window_s=1.0,
    )  # fmt: skip
    views = build_views(inputs, _topology(pools))
    return {v.entity: v for v in views if v.kind == "replica"}


def _requests(arrivals_long: float, prompt_mean: float) -> dict[str, float]:
    return {
        "arrivals": 1.0,
        "arrivals_recent": 1.0,
        "arrivals_long": arrivals_long,
        "prompt_tokens_mean_long": prompt_mean,
        "prompt_tokens_mean": prompt_mean,
    }


def test_another_pools_idle_replica_is_no_room_for_this_one() -> None:
    """a and b serve one model and are both full; c, another model's replica, idles. Its
    capacity cannot take a's requests: a has no peer with room. With no pools named, the
    three form one pool, as before pools existed."""
    engine = {"a": BUSY, "b": BUSY, "c": IDLE}
    requests = {d: _requests(10.0, 1000.0) for d in engine}
    pooled = _replicas({"a": "llama", "b": "llama", "c": "mistral"}, engine, requests)
    assert pooled["a"].features["peers.spare_capacity"] == 0.0
    assert pooled["a"].features["peers.min_batch_fill_ratio"] == 0.9
    assert "peers.spare_capacity" not in pooled["c"].features  # alone in its pool
    unnamed = _replicas({"a": "", "b": "", "c": ""}, engine, requests)
    assert unnamed["a"].features["peers.spare_capacity"] == 1.0
    assert unnamed["a"].features["peers.min_batch_fill_ratio"] == 0.1


def test_shares_and_prompt_lengths_are_the_pools() -> None:
    """c (another model, 4x the requests, 4k-token prompts) does not move a's and b's
    request shares or their pool's prompt length: a took 20 of its pool's 30 requests (1.33x
    the pool's mean) with prompts of 1,000 tokens against the pool's 1,000."""
    engine = {"a": BUSY, "b": IDLE, "c": IDLE}
    requests = {
        "a": _requests(20.0, 1000.0),
        "b": _requests(10.0, 1000.0),
        "c": _requests(120.0, 4000.0),
    }
    views = _replicas({"a": "llama", "b": "llama", "c": "mistral"}, engine, requests)
    a = views["a"].features
    assert np.isclose(a["requests.arrivals_share_ratio"], 20.0 / 15.0)
    assert np.isclose(a["requests.prompt_tokens_fleet_ratio"], 1.0)
    assert a["requests.prompt_tokens_mean_peers_median"] == 1000.0
    assert views["c"].features["requests.arrivals_share_ratio"] == 1.0
    mixed = _replicas({"a": "", "b": "", "c": ""}, engine, requests)["a"].features
    assert np.isclose(mixed["requests.arrivals_share_ratio"], 20.0 / 50.0)
    assert mixed["requests.prompt_tokens_fleet_ratio"] < 0.4


def test_a_deployments_pool_is_the_one_its_ranks_name() -> None:
    topo = _topology({"a": "llama", "b": ""})
    assert topo.pools().get("a", "") == "llama"
    assert topo.pools().get("b", "") == ""
    assert topo.pools().get("unknown", "") == ""
    # a rank record without the field (an older producer) leaves the named pool in place
    late = topology("a", nodes=1, gpus_per_node=2)[1]
    late["node"] = "a-node0"
    topo.update(late)
    assert topo.pools().get("a", "") == "llama"


def test_the_pools_follow_the_topologys_updates() -> None:
    topo = _topology({"a": "llama"})
    assert topo.pools() == {"a": "llama"}
    (b,) = topology("b", nodes=1, gpus_per_node=1)
    b["router_pool"] = "mistral"
    topo.update(b)
    assert topo.pools() == {"a": "llama", "b": "mistral"}
    # a rank of a naming another pool (a record in transit): the first name in sort order
    moved = topology("a", nodes=1, gpus_per_node=2)[1]
    moved["router_pool"] = "alpaca"
    topo.update(moved)
    assert topo.pools().get("a", "") == "alpaca"
    topo.update({**b, "removed": True})
    assert topo.pools() == {"a": "alpaca"}
    with pytest.raises(TypeError):  # the cached map is shared: read-only
        topo.pools()["a"] = "other"  # type: ignore[index]


def test_a_topology_record_written_before_pools_decodes_with_no_pool() -> None:
    v1 = parse((SCHEMA_DIR / "history" / "topology_record.v1.avsc").read_text())
    old = Catalog()
    old.add(v1)
    record = topology("a", nodes=1, gpus_per_node=1)[0]
    record["schema_version"] = 1
    record.pop("router_pool", None)
    decoded = AvroCodec().decode(AvroCodec(catalog=old).encode("TopologyRecord", record)).record
    assert decoded["router_pool"] == ""
    assert decoded["deployment"] == "a"
    assert Topology.from_records([decoded]).pools().get("a", "") == ""


def test_a_pool_replica_held_by_another_shard_does_not_dilute_the_shares() -> None:
    """c is in a's pool but its telemetry goes to another shard: no request window here. a's
    request share is over the replicas this detector reads (20 of 30 against a mean of 15),
    not 20 against a mean of 10 with c counted as idle."""
    engine = {"a": BUSY, "b": IDLE}
    requests = {"a": _requests(20.0, 1000.0), "b": _requests(10.0, 1000.0)}
    views = _replicas({"a": "llama", "b": "llama", "c": "llama"}, engine, requests)
    assert np.isclose(views["a"].features["requests.arrivals_share_ratio"], 20.0 / 15.0)
    assert "requests.arrivals_share_ratio" not in views["c"].features
