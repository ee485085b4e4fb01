"""tcpdump on loopback, and just enough pcap/TCP/SMB parsing to judge what went on the wire.

Used to prove that after session setup every SMB message is an SMB3 TRANSFORM
(encrypted) message, and that known plaintext never appears in the capture.
"""

from __future__ import annotations

import os
import shutil
import signal
import struct
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

TRANSFORM = b"\xfdSMB"
PLAIN = b"\xfeSMB"
COMPRESSED = b"\xfcSMB"
SMB2_NEGOTIATE = 0
SMB2_SESSION_SETUP = 1


class CaptureError(RuntimeError):
    """tcpdump failed, dropped packets, or the capture could not be reassembled."""


class PacketCapture:
    """``tcpdump -i lo -w FILE port N`` for the duration of a with-block."""

    def __init__(self, port: int, path: Path) -> None:
        self.port = port
        self.path = Path(path)
        self._proc: subprocess.Popen[bytes] | None = None
        self.stderr = ""

    def __enter__(self) -> PacketCapture:
        tcpdump = shutil.which("tcpdump") or "/usr/bin/tcpdump"
        if not os.path.exists(tcpdump):
            raise CaptureError("tcpdump not found: apt-get install tcpdump")
        self._errpath = self.path.with_suffix(".stderr")
        self._err = open(self._errpath, "wb")
        self._proc = subprocess.Popen(
            [tcpdump, "-i", "lo", "-n", "-s", "0", "-B", "32768", "-U", "--immediate-mode", "-w", str(self.path),
             "tcp", "port", str(self.port)],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=self._err)
        deadline = time.monotonic() + 10
        while b"listening on" not in self._errpath.read_bytes():
            if self._proc.poll() is not None or time.monotonic() > deadline:
                self._stop()
                raise CaptureError(f"tcpdump did not start: {self.stderr.strip()}")
            time.sleep(0.02)
        return self

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None,
                 tb: TracebackType | None) -> None:
        self._stop()
        if et is None and "dropped by kernel" in self.stderr:
            dropped = [ln for ln in self.stderr.splitlines() if "dropped by kernel" in ln][0]
            if not dropped.strip().startswith("0 "):
                raise CaptureError(f"tcpdump lost packets: {dropped.strip()}")

    def _stop(self) -> None:
        proc = self._proc
        if proc is not None:
            # tcpdump drops what it has not yet read from the kernel when it stops, so wait
            # until the file stops growing first.
            last, stable_since, deadline = -1, time.monotonic(), time.monotonic() + 15
            while time.monotonic() < deadline:
                size = self.path.stat().st_size if self.path.exists() else 0
                if size != last:
                    last, stable_since = size, time.monotonic()
                elif time.monotonic() - stable_since > 0.5:
                    break
                time.sleep(0.05)
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            self._proc = None
        self._err.close()
        self.stderr = self._errpath.read_text(errors="replace")


@dataclass
class SmbMessage:
    to_server: bool
    protocol: bytes        # PLAIN, TRANSFORM or COMPRESSED
    command: int | None    # for PLAIN messages
    size: int


def _packets(path: Path) -> list[tuple[bytes, bytes]]:
    """(flow key, TCP segment) pairs: IPv4 over Ethernet (tcpdump -i lo)."""
    data = path.read_bytes()
    if len(data) < 24:
        raise CaptureError("empty capture")
    magic = data[:4]
    endian = "<" if magic in (b"\xd4\xc3\xb2\xa1", b"\x4d\x3c\xb2\xa1") else ">"
    linktype = struct.unpack_from(endian + "I", data, 20)[0]
    if linktype != 1:
        raise CaptureError(f"unexpected link type {linktype}")
    out = []
    pos = 24
    while pos + 16 <= len(data):
        _s, _us, incl, _orig = struct.unpack_from(endian + "IIII", data, pos)
        frame = data[pos + 16: pos + 16 + incl]
        pos += 16 + incl
        if len(frame) < 14 or frame[12:14] != b"\x08\x00":
            continue
        ip = frame[14:]
        ihl = (ip[0] & 0x0F) * 4
        total = struct.unpack_from(">H", ip, 2)[0]
        if ip[9] != 6:
            continue
        tcp = ip[ihl:total]
        out.append((ip[12:20] + tcp[:4], tcp))
    return out


def tcp_streams(path: Path, server_port: int) -> dict[tuple[int, bool], bytes]:
    """Reassemble every connection, both directions, by sequence number.

    Returns {(client port, to_server): bytes}.
    """
    segments: dict[tuple[int, bool], dict[int, bytes]] = {}
    isn: dict[tuple[int, bool], int] = {}
    for _key, tcp in _packets(path):
        sport, dport, seq = struct.unpack_from(">HHI", tcp, 0)
        flags = tcp[13]
        if server_port not in (sport, dport):
            continue
        to_server = dport == server_port
        flow = (sport if to_server else dport, to_server)
        if flags & 0x02:  # SYN: data starts at seq + 1
            isn[flow] = (seq + 1) & 0xFFFFFFFF
            continue
        payload = tcp[(tcp[12] >> 4) * 4:]
        if not payload:
            continue
        base = isn.setdefault(flow, seq)
        rel = (seq - base) & 0xFFFFFFFF
        segs = segments.setdefault(flow, {})
        prev = segs.get(rel)
        if prev is None or len(payload) > len(prev):
            segs[rel] = payload
    streams = {}
    for flow, segs in segments.items():
        buf = bytearray()
        for rel in sorted(segs):
            payload = segs[rel]
            if rel > len(buf):
                raise CaptureError(f"gap in TCP stream {flow} at {len(buf)} (next segment at {rel})")
            buf += payload[len(buf) - rel:]
        streams[flow] = bytes(buf)
    return streams


def smb_messages(path: Path, server_port: int) -> dict[int, list[SmbMessage]]:
    """Every SMB message per connection (keyed by client port), per direction in stream order."""
    out: dict[int, list[SmbMessage]] = {}
    for (client_port, to_server), stream in sorted(tcp_streams(path, server_port).items()):
        msgs = out.setdefault(client_port, [])
        pos = 0
        while pos + 4 <= len(stream):
            length = struct.unpack_from(">I", stream, pos)[0] & 0xFFFFFF
            msg = stream[pos + 4: pos + 4 + length]
            if len(msg) < length:
                raise CaptureError(f"connection {client_port}: capture ends inside a message")
            pos += 4 + length
            proto = msg[:4]
            command = struct.unpack_from("<H", msg, 12)[0] if proto == PLAIN and len(msg) >= 14 else None
            msgs.append(SmbMessage(to_server, proto, command, length))
    return out


def assert_all_encrypted_after_setup(pcap: Path, port: int, connections: int) -> None:
    """After each connection's negotiate + session setup, every SMB message is a TRANSFORM."""
    per_conn = smb_messages(pcap, port)
    assert len(per_conn) >= connections
    for client_port, msgs in per_conn.items():
        for to_server in (True, False):
            seen_encrypted = False
            plain_cmds = []
            for m in (m for m in msgs if m.to_server == to_server):
                if m.protocol == TRANSFORM:
                    seen_encrypted = True
                    continue
                assert m.protocol == PLAIN, f"unexpected SMB framing {m.protocol!r}"
                assert not seen_encrypted, f"plaintext SMB command {m.command} after encryption began"
                plain_cmds.append(m.command)
            assert set(plain_cmds) <= {SMB2_NEGOTIATE, SMB2_SESSION_SETUP}, plain_cmds
            assert seen_encrypted, f"connection {client_port}: no encrypted message at all"
