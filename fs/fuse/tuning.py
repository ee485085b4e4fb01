"""How a sealfs mount tunes the kernel's FUSE client: attribute and entry timeouts and the
read-ahead window.

A module of its own, without pyfuse3, because it is public: the bench's pass-through
peer (bench/passthrough.py) mounts with these same settings, so that the gap between it
and sealfs is sealfs's own work and not a different kernel configuration.
"""

from __future__ import annotations

import logging
from pathlib import Path

log = logging.getLogger("sealfs.mount")

# Seconds the kernel may answer from its cached attributes and names before asking again.
ATTR_TIMEOUT = 1.0
ENTRY_TIMEOUT = 1.0

# The kernel reads ahead 128 KiB by default, so a sequential reader reaches sealfs as one
# FUSE request (one Python round trip) per 128 KiB. A FUSE request can carry 1 MiB (256
# pages, the kernel's max_pages), so a 1 MiB window takes 7 of every 8 round trips out of
# cold sequential reads (docs/PERFORMANCE.md, "Numbers behind the code").
READ_AHEAD_KB = 1024


def widen_readahead(mountpoint: Path, kb: int = READ_AHEAD_KB) -> None:
    """Raise the read-ahead window of the mount's backing device info (root only; a
    mount by another user keeps the kernel default). Called once the kernel has taken
    the INIT reply, which sets the window; the device is found through
    /proc/self/mountinfo, not stat(), which would be a FUSE request to ourselves."""
    try:
        with open("/proc/self/mountinfo") as f:
            devices = [line.split()[2] for line in f
                       if line.split()[4] == str(mountpoint)]
        if not devices:
            return
        knob = Path("/sys/class/bdi") / devices[-1] / "read_ahead_kb"
        if int(knob.read_text()) < kb:
            knob.write_text(f"{kb}\n")
    except (OSError, ValueError) as exc:
        log.debug("read-ahead window left at the kernel default: %s", exc)
