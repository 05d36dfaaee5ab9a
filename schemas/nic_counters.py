"""NIC counter names of the event model (docs/event-model.md), as mlx5 and RDMA hw_counters
spell them: what NicCounterFrame producers emit and the detector reads. Frames may carry more
counters; readers take the ones they know."""

from __future__ import annotations

NIC_COUNTERS = (
    "tx_bytes_phy",
    "rx_bytes_phy",
    "rx_discards_phy",
    "rx_symbol_err_phy",
    "rx_corrected_bits_phy",
    "np_ecn_marked_roce_packets",
    "np_cnp_sent",
    "rp_cnp_handled",
    "out_of_sequence",
    "packet_seq_err",
    "local_ack_timeout_err",
    "rx_prio3_pause",
    "tx_prio3_pause",
    "rx_prio3_pause_duration",
    "tx_prio3_pause_duration",
    "port_xmit_wait",
    "outbound_pci_stalled_rd",
    "outbound_pci_stalled_wr",
)
