"""Control surface for a closed-loop controller: the mitigations a scheduler could apply.

Each call changes the world from the next tick on (fabric changes from the next 100 ms
chunk). They act on the same causes faults do, so their effect reaches telemetry only
through the mechanics.
"""

from __future__ import annotations

import numpy as np

from producers.sim.world import World


class Control:
    """Mitigations: router weights, drains, admission, batch size, backfill, offload throttle,
    re-path, restarts."""

    def __init__(self, world: World) -> None:
        self._w = world

    def set_router_weight(self, replica: str, weight: float) -> None:
        if weight < 0:
            raise ValueError(f"router weight for {replica} must be >= 0, got {weight}")
        self._w.router.weights[self._w.replica_index(replica)] = weight

    def drain_replica(self, replica: str) -> None:
        self._w.router.drained[self._w.replica_index(replica)] = True

    def undrain_replica(self, replica: str) -> None:
        self._w.router.drained[self._w.replica_index(replica)] = False

    def set_max_batch(self, replica: str, n: int) -> None:
        engine = self._w.engine(replica)
        if not 1 <= n <= engine._cap:
            raise ValueError(
                f"max batch for {replica} must be in 1..{engine._cap} (the slots the engine "
                f"was configured with), got {n}"
            )
        engine.max_num_seqs = n

    def enable_backfill(self, replica: str) -> None:
        self._w.engine(replica).backfill = True

    def throttle_offload(self, node: str, ratio: float) -> None:
        if not 0.0 <= ratio <= 1.0:
            raise ValueError(f"offload throttle ratio must be in [0, 1], got {ratio}")
        n = self._w.layout.node_index(node)
        self._w.pcie.offload_throttle_ratio[np.flatnonzero(self._w.layout.gpu_node == n)] = ratio

    def repath(self, node_port: str) -> None:
        """Move flows off the path of '<node>/<port>' (its link errors and pauses stop hitting)."""
        self._w.fabric.repathed[self._w.layout.resolve_gpu(node_port)] = True

    def set_admission_ratio(self, replica: str, ratio: float) -> None:
        """Admission control at the front end: admit this share of the replica's new
        requests, reject the rest (HTTP 429); 1 admits all."""
        if not 0.0 <= ratio <= 1.0:
            raise ValueError(f"admission ratio for {replica} must be in [0, 1], got {ratio}")
        self._w.router.admit_ratio[self._w.replica_index(replica)] = ratio

    def restart_replica(self, replica: str, downtime_s: float) -> None:
        """Restart the replica's engine and workers; it serves again after ``downtime_s``
        (model reload), and a hung rank's process is gone."""
        if downtime_s < 0:
            raise ValueError(f"restart downtime for {replica} must be >= 0 s, got {downtime_s}")
        self._w.restart_replica(replica, self._w.now_ns, int(downtime_s * 1e9))
