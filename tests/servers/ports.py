"""TCP ports for the test servers, safe when pytest-xdist workers run side by side.

A port the kernel picked (bind to port 0) is in the ephemeral range, where every outgoing
connection of every process also takes its source port. So a port found free, released,
and bound again a moment later by smbd, or kept by a server that goes down and comes back
on it (smbd killed and restarted, the Key Vault server's outage), or held free on purpose
(a "connection refused" test) could meanwhile be taken by another worker's connection or
server. Under xdist each worker therefore takes its ports from a block of its own below
the ephemeral range, which the kernel never hands out by itself: nothing else in the run
can take them. Outside xdist (a serial run, the benchmarks) the kernel picks, as before.
"""

from __future__ import annotations

import os
import random
import socket

BASE = 20000                # blocks of BLOCK ports from here; the ephemeral range starts above
BLOCK = 400


def _ephemeral_low() -> int:
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
            return int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def worker_index() -> int | None:
    """0 for xdist worker gw0, 1 for gw1, ...; None outside xdist."""
    name = os.environ.get("PYTEST_XDIST_WORKER", "")
    return int(name[2:]) if name.startswith("gw") and name[2:].isdigit() else None


# A random start, so a server subprocess of a worker (it inherits PYTEST_XDIST_WORKER) does
# not walk the same ports in the same order as the worker itself.
_cursor = random.randrange(BLOCK)


def _bindable(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nobody listens on and nobody else in this run will take."""
    global _cursor
    index = worker_index()
    low = BASE + (index or 0) * BLOCK
    if index is not None and low + BLOCK <= _ephemeral_low():
        for _ in range(BLOCK):
            port = low + _cursor % BLOCK
            _cursor += 1
            if _bindable(port):
                return port
        raise RuntimeError(f"no free port in {low}-{low + BLOCK - 1} (xdist worker {index})")
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]
