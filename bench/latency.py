"""A TCP proxy that adds latency, for benchmarks of remote shares on one machine.

This kernel has no netem, yet a share reached over a WAN is bound by round trips, not by
loopback bandwidth: what decides throughput there is how many requests a client keeps in
flight. The proxy is a pure delay line: every byte is forwarded half the round-trip time
after it arrived, in each direction, without limiting bandwidth (a bounded queue per
direction stands in for the TCP window). It runs in a process of its own so that its
copying never competes with the client for one interpreter lock.

    with LatencyProxy("127.0.0.1", 445, rtt_ms=10) as proxy:
        proxy.port       # connect here instead of 445

    python -m sealfs.bench.latency --upstream HOST:PORT --rtt-ms 10   # prints {"port": N}
"""

from __future__ import annotations

import argparse
import collections
import json
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable

RECV = 256 * 1024
WINDOW = 64 * 1024 * 1024          # bytes queued per direction before reading stops


class _DelayLine:
    """One direction of one connection: read from src, write to dst `delay` seconds later."""

    def __init__(self, src: socket.socket, dst: socket.socket, delay: float, done: threading.Event,
                 finished: Callable[[], None]) -> None:
        self.src, self.dst, self.delay, self.done, self.finished = src, dst, delay, done, finished
        self.queue: collections.deque[tuple[float, bytes]] = collections.deque()
        self.queued = 0
        self.cond = threading.Condition()

    def start(self) -> None:
        threading.Thread(target=self._read, daemon=True).start()
        threading.Thread(target=self._write, daemon=True).start()

    def _read(self) -> None:
        while True:
            try:
                data = self.src.recv(RECV)
            except OSError:
                data = b""
            with self.cond:
                while self.queued > WINDOW and not self.done.is_set():
                    self.cond.wait(0.1)
                self.queue.append((time.monotonic() + self.delay, data))
                self.queued += len(data)
                self.cond.notify_all()
            if not data:                 # EOF (or an error): forwarded after the delay too
                return

    def _write(self) -> None:
        try:
            self._forward()
        finally:
            self.finished()

    def _forward(self) -> None:
        while True:
            with self.cond:
                while not self.queue:
                    self.cond.wait()
                due, data = self.queue.popleft()
                self.queued -= len(data)
                self.cond.notify_all()
            pause = due - time.monotonic()
            if pause > 0:
                time.sleep(pause)
            if not data:
                _shutdown_write(self.dst)
                return
            try:
                self.dst.sendall(data)
            except OSError:
                self.done.set()
                for s in (self.src, self.dst):
                    _shutdown_write(s)
                return


def _shutdown_write(sock: socket.socket) -> None:
    try:
        sock.shutdown(socket.SHUT_WR)
    except OSError:
        pass


def _relay(client: socket.socket, upstream: tuple[str, int], one_way: float) -> None:
    try:
        server = socket.create_connection(upstream, timeout=30)
    except OSError:
        client.close()
        return
    server.settimeout(None)
    for s in (client, server):
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    done = threading.Event()
    left = [2]
    lock = threading.Lock()

    def finished() -> None:
        """Both directions forwarded their end: the sockets can go."""
        with lock:
            left[0] -= 1
            if left[0]:
                return
        done.set()
        for s in (client, server):
            s.close()

    for src, dst in ((client, server), (server, client)):
        _DelayLine(src, dst, one_way, done, finished).start()


def serve(upstream: tuple[str, int], rtt_ms: float, listen: tuple[str, int] = ("127.0.0.1", 0),
          ready=None) -> None:
    """Accept forever; each connection gets its own upstream connection and delay lines."""
    lsock = socket.create_server(listen)
    if ready is not None:
        ready(lsock.getsockname()[1])
    while True:
        client, _ = lsock.accept()
        _relay(client, upstream, rtt_ms / 2000)


class LatencyProxy:
    """The proxy in a child process, stopped (by its pid) on exit."""

    def __init__(self, host: str, port: int, rtt_ms: float) -> None:
        self.upstream = (host, port)
        self.rtt_ms = rtt_ms
        self.port = 0
        self.proc: subprocess.Popen | None = None

    def __enter__(self) -> LatencyProxy:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "sealfs.bench.latency", "--upstream",
             f"{self.upstream[0]}:{self.upstream[1]}", "--rtt-ms", str(self.rtt_ms)],
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, text=True)
        line = self.proc.stdout.readline()
        if not line:
            self.__exit__()
            raise RuntimeError("the latency proxy did not start")
        self.port = json.loads(line)["port"]
        return self

    def __exit__(self, *exc) -> None:
        proc, self.proc = self.proc, None
        if proc is not None:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--upstream", required=True, help="HOST:PORT to forward to")
    p.add_argument("--rtt-ms", type=float, required=True, help="round-trip time to add (half each way)")
    p.add_argument("--port", type=int, default=0, help="port to listen on, 127.0.0.1 (default: any)")
    args = p.parse_args()
    host, _, port = args.upstream.rpartition(":")

    def ready(bound: int) -> None:
        print(json.dumps({"port": bound}), flush=True)

    serve((host, int(port)), args.rtt_ms, ("127.0.0.1", args.port), ready)


if __name__ == "__main__":
    main()
