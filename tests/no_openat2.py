"""Run a command on a "kernel without openat2": a seccomp filter makes the syscall fail
with ENOSYS (as before Linux 5.6, or under a container's filter), then exec the command.

    python tests/no_openat2.py PROGRAM ARGS...

Filters survive execve, so the local backend's fallback path walk is what runs.
"""

from __future__ import annotations

import ctypes
import errno
import os
import platform
import struct
import sys

_ARCH = {"x86_64": 0xC000003E, "aarch64": 0xC00000B7}
_SYS_OPENAT2 = 437
_PR_SET_NO_NEW_PRIVS = 38
_PR_SET_SECCOMP = 22
_SECCOMP_MODE_FILTER = 2
_RET_ALLOW = 0x7FFF0000
_RET_ERRNO = 0x00050000


def _insn(code: int, jt: int, jf: int, k: int) -> bytes:
    return struct.pack("HBBI", code, jt, jf, k)


def deny_openat2() -> None:
    arch = _ARCH[platform.machine()]
    prog = b"".join([
        _insn(0x20, 0, 0, 4),                       # A = seccomp_data.arch
        _insn(0x15, 0, 3, arch),                    # other arch: allow
        _insn(0x20, 0, 0, 0),                       # A = seccomp_data.nr
        _insn(0x15, 0, 1, _SYS_OPENAT2),
        _insn(0x06, 0, 0, _RET_ERRNO | errno.ENOSYS),
        _insn(0x06, 0, 0, _RET_ALLOW),
    ])
    buf = ctypes.create_string_buffer(prog, len(prog))

    class SockFprog(ctypes.Structure):
        _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]

    fprog = SockFprog(len(prog) // 8, ctypes.addressof(buf))
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_void_p, ctypes.c_ulong,
                           ctypes.c_ulong]
    if libc.prctl(_PR_SET_NO_NEW_PRIVS, 1, None, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "PR_SET_NO_NEW_PRIVS")
    if libc.prctl(_PR_SET_SECCOMP, _SECCOMP_MODE_FILTER, ctypes.addressof(fprog), 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "PR_SET_SECCOMP")


if __name__ == "__main__":
    deny_openat2()
    os.execv(sys.argv[1], sys.argv[1:])
