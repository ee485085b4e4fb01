"""Previous versions an SMB server offers: listing them and reading the store as it was.

A server lists its snapshots of a share with FSCTL_SRV_ENUMERATE_SNAPSHOTS (Azure Files
share snapshots; Samba's vfs_shadow_copy2 over snapshot directories; Windows VSS), each
named by a token @GMT-YYYY.MM.DD-HH.MM.SS. Every CREATE carrying an
SMB2_CREATE_TIMEWARP_TOKEN context with that time opens the name as it was then, read-only
(the channel adds it to every CREATE of a backend opened at a snapshot). SMB has no
request to make or delete a snapshot: that is the server's business.
"""

from __future__ import annotations

import calendar
import errno
import re
import struct
from typing import Any

from smbprotocol.create_contexts import CreateContextName, SMB2CreateContextRequest
from smbprotocol.ioctl import CtlCode, IOCTLFlags, SMB2IOCTLRequest, SMB2IOCTLResponse
from smbprotocol.open import CreateDisposition, CreateOptions, SMB2CreateRequest

from ..base import Snapshot
from .messages import DIR_LIST_ACCESS, RELATED_FID, close_msg, create_msg

GMT = re.compile(r"^@GMT-(\d{4})\.(\d\d)\.(\d\d)-(\d\d)\.(\d\d)\.(\d\d)$")
SMB_CANNOT = ("snapshots are created by the server (Azure Files, Samba vfs_shadow_copy2); "
              "use the Azure Files REST store to create them")
_FILETIME_EPOCH = 116444736000000000
_MAX_LIST = 64 * 1024              # room for ~1300 tokens of 48 bytes


def gmt_ns(token: str) -> int:
    """@GMT-2024.05.01-10.00.00 as ns since the epoch; ValueError if it is no such token."""
    m = GMT.match(token or "")
    if m is None:
        raise ValueError(f"{token!r} is not an SMB previous-version token "
                         "(like @GMT-2024.05.01-10.00.00: see `sealfs snapshot list`)")
    y, mo, d, h, mi, s = (int(g) for g in m.groups())
    return calendar.timegm((y, mo, d, h, mi, s, 0, 0, 0)) * 1_000_000_000


def timewarp_contexts(token: str) -> bytes:
    """The CREATE contexts that open a name as it was at token (MS-SMB2 2.2.13.2.7)."""
    ctx = SMB2CreateContextRequest()
    ctx["buffer_name"] = CreateContextName.SMB2_CREATE_TIMEWARP_TOKEN
    ctx["buffer_data"] = struct.pack("<Q", gmt_ns(token) // 100 + _FILETIME_EPOCH)
    return SMB2CreateContextRequest.pack_multiple([ctx])


def add_timewarp(messages: list[Any], contexts: bytes) -> None:
    """Every CREATE among messages opens its name at the snapshot (see the module docstring)."""
    for message in messages:
        if isinstance(message, SMB2CreateRequest) and not len(message["buffer_contexts"]):
            message["buffer_contexts"] = contexts


def parse_snapshot_array(buf: bytes) -> list[str]:
    """SRV_SNAPSHOT_ARRAY (MS-SMB2 2.2.32.2): counts, then NUL-terminated UTF-16 tokens."""
    if len(buf) < 12:
        return []
    size = struct.unpack_from("<I", buf, 8)[0]
    text = buf[12:12 + size].decode("utf-16-le", "replace")
    return [t for t in text.split("\x00") if GMT.match(t)]


class SmbSnapshotOps:
    """Mixed into SmbBackend: it provides _smb_path, _path_op and _run."""

    async def snapshots(self) -> list[Snapshot]:
        name = self._smb_path("")  # type: ignore[attr-defined]

        def msgs() -> list[Any]:
            ioctl = SMB2IOCTLRequest()
            ioctl["ctl_code"] = CtlCode.FSCTL_SRV_ENUMERATE_SNAPSHOTS
            ioctl["file_id"] = RELATED_FID
            ioctl["max_input_response"] = 0
            ioctl["max_output_response"] = _MAX_LIST
            ioctl["flags"] = IOCTLFlags.SMB2_0_IOCTL_IS_FSCTL
            return [create_msg(name, DIR_LIST_ACCESS, CreateDisposition.FILE_OPEN,
                               CreateOptions.FILE_DIRECTORY_FILE), ioctl, close_msg(RELATED_FID)]

        resps = await self._run(self._path_op, "", msgs, True)  # type: ignore[attr-defined]
        answer = SMB2IOCTLResponse()
        answer.unpack(resps[1]["data"].get_value())
        tokens = sorted(set(parse_snapshot_array(answer["buffer"].get_value())))
        return sorted((Snapshot(t, gmt_ns(t)) for t in tokens), key=lambda s: s.time_ns)

    async def create_snapshot(self, metadata: dict[str, str]) -> Snapshot:
        raise OSError(errno.EOPNOTSUPP, SMB_CANNOT)

    async def delete_snapshot(self, snapshot_id: str) -> None:
        raise OSError(errno.EOPNOTSUPP, SMB_CANNOT)
