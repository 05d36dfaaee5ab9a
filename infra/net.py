"""Address parsing and reachability checks for local services (TCP only, no protocol)."""

from __future__ import annotations

import socket

_LOCAL_HOSTS = frozenset({"127.0.0.1", "localhost", "::1", "0.0.0.0", "ip6-localhost"})


def parse_hostport(address: str, default_port: int) -> tuple[str, int]:
    """Split ``host:port`` (``[v6]:port`` accepted). Raises ValueError on a bad port."""
    address = address.strip()
    if address.startswith("["):
        host, _, rest = address[1:].partition("]")
        port_text = rest.lstrip(":")
    elif address.count(":") == 1:
        host, port_text = address.split(":")
    else:
        host, port_text = address, ""
    if not port_text:
        return host, default_port
    try:
        port = int(port_text)
    except ValueError as exc:
        raise ValueError(f"bad port in address {address!r}") from exc
    if not 0 < port < 65536:
        raise ValueError(f"port out of range in address {address!r}")
    return host, port


def first_bootstrap(bootstrap: str) -> tuple[str, int]:
    """Host and port of the first server of a Kafka ``bootstrap.servers`` list."""
    first = bootstrap.split(",")[0].strip()
    if "://" in first:  # tolerate PLAINTEXT://host:port
        first = first.split("://", 1)[1]
    return parse_hostport(first, 9092)


def is_local_host(host: str) -> bool:
    """True for loopback names: only those may be served by a broker/Redis we start ourselves."""
    return host.lower() in _LOCAL_HOSTS or host.startswith("127.")


def port_open(host: str, port: int, timeout_s: float = 0.5) -> bool:
    """True when a TCP connect to host:port succeeds within timeout_s."""
    try:
        with socket.create_connection((host, port), timeout=timeout_s):
            return True
    except OSError:
        return False


def free_port(host: str = "127.0.0.1") -> int:
    """A port that was free a moment ago (racy by nature; for tests and throwaway services)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])
