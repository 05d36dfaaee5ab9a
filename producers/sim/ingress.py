"""North-south traffic at each node's DPU port: request payloads, streamed responses,
microbursts, receive-queue build-up and discards.

Mechanics per 100 us bin: bytes arriving (requests land at their arrival time) enter the
port's receive queue, which drains at line rate (Lindley recursion ``Q = S - min(0, min S)``
over the cumulative excess ``S``); bytes above the receive buffer are discarded (counted in
1500-byte packets). Responses stream one SSE chunk per generated token. Background: health
checks and metrics scrapes (about 50 kB/s each way). Limits: TCP retransmits of discarded
packets are not modelled; the queue is reset to empty at each 100 ms chunk boundary.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

BIN_NS = 100_000
RX_BUFFER_BYTES = 256 * 1024
PACKET_BYTES = 1500
BACKGROUND_BYTES_PER_S = 50_000.0


@dataclass
class NorthSouth:
    """True per-node per-tick north-south quantities of one chunk ([n_nodes, ticks] unless
    noted) and per-flow rows of the front-end nodes."""

    rx_bytes: np.ndarray
    tx_bytes: np.ndarray
    rx_queue_peak_bytes: np.ndarray
    rx_discards: np.ndarray
    flow_node: np.ndarray  # [n_flows] node of each flow
    flow_ids: list[str]
    flow_rx: np.ndarray  # [n_flows, ticks]
    flow_tx: np.ndarray
    flow_burst: np.ndarray  # max bytes in any 100 us bin of the tick


def north_south(
    chunk_start: int,
    ticks: int,
    tick_ns: int,
    n_nodes: int,
    frontend: np.ndarray,  # [n_replicas] node of each replica's front end
    replica_names: list[str],
    connections: int,
    arrivals: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray],
    gen_tokens: np.ndarray,  # [n_replicas, ticks] tokens generated in each tick
    request_bytes_per_token: float,
    overhead_bytes: int,
    response_bytes_per_token: float,
    line_bytes_per_s: float,
    rng: np.random.Generator,
) -> NorthSouth:
    t_ns, replica, conn, prompt = arrivals
    n_rep = len(replica_names)
    bins_per_tick = tick_ns // BIN_NS
    n_bins = ticks * bins_per_tick
    req_bytes = overhead_bytes + prompt * request_bytes_per_token
    b = np.clip((t_ns - chunk_start) // BIN_NS, 0, n_bins - 1)
    flow = replica * connections + conn
    n_flows = n_rep * connections
    flow_bins = np.bincount(flow * n_bins + b, req_bytes, n_flows * n_bins).reshape(
        n_flows, ticks, bins_per_tick
    )
    flow_rx = flow_bins.sum(axis=2)
    flow_burst = flow_bins.max(axis=2)
    share = rng.dirichlet(np.ones(connections) * 4.0, n_rep)  # streams spread over conns
    flow_tx = (share[:, :, None] * gen_tokens[:, None, :] * response_bytes_per_token).reshape(
        n_flows, ticks
    )
    flow_node = np.repeat(frontend, connections)
    node_bins = np.zeros((n_nodes, n_bins))
    np.add.at(node_bins, (frontend[replica], b), req_bytes)
    bg = BACKGROUND_BYTES_PER_S * tick_ns / 1e9 / bins_per_tick
    node_bins += bg * rng.uniform(0.5, 1.5, node_bins.shape)
    drain = line_bytes_per_s * BIN_NS / 1e9
    excess = np.cumsum(node_bins - drain, axis=1)
    queue = excess - np.minimum(0.0, np.minimum.accumulate(excess, axis=1))
    over = np.maximum(0.0, queue - RX_BUFFER_BYTES)
    dropped_bytes = np.diff(np.concatenate([np.zeros((n_nodes, 1)), over], axis=1), axis=1)
    dropped_bytes = np.maximum(dropped_bytes, 0.0)
    queue = np.minimum(queue, RX_BUFFER_BYTES)
    rx = node_bins.reshape(n_nodes, ticks, bins_per_tick).sum(axis=2)
    tx = np.zeros((n_nodes, ticks))
    np.add.at(tx, flow_node, flow_tx)
    tx += BACKGROUND_BYTES_PER_S * tick_ns / 1e9
    return NorthSouth(
        rx_bytes=rx,
        tx_bytes=tx,
        rx_queue_peak_bytes=queue.reshape(n_nodes, ticks, bins_per_tick).max(axis=2),
        rx_discards=np.ceil(
            dropped_bytes.reshape(n_nodes, ticks, bins_per_tick).sum(axis=2) / PACKET_BYTES
        ),
        flow_node=flow_node,
        flow_ids=[f"conn-{name}-{k}" for name in replica_names for k in range(connections)],
        flow_rx=flow_rx,
        flow_tx=flow_tx,
        flow_burst=flow_burst,
    )
