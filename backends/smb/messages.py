"""SMB2 messages: the requests the backend sends, the parsers of their responses, and what
an NTSTATUS means to a POSIX caller. No I/O here: a request is built, a response parsed.

Access times live in each file's and directory's CreationTime. A sealfs mount is noatime
(atime is set at creation and by utimens, nothing else moves it), but the server moves its
LastAccessTime whenever it reads a file or lists a directory for us: a Linux smbd's kernel
does under relatime, and Samba takes a time of -1 (MS-FSA's "stop updating it through this
handle") as "leave it". Putting it back after each read would cost a SET_INFO per read
for good (that SET_INFO moves the change time, so the next read moves the atime again).
CreationTime is set once by the server at creation, kept across renames and hard links,
settable to 100 ns, in every stat and listing reply, and moved by no read.

That leaves LastAccessTime free, and it becomes the CHANGE MARK (BackendStat.change_mark):
every SET_INFO of times sealfs sends (times_info, and the handle cache's pin) sets it to a
new value, strictly increasing in the process. Samba reports the last write time as the
change time, and a metadata-only change (chmod, chown, setxattr: a header or record
rewritten, its write time pinned back) goes with such a SET_INFO, so the mark is what
tells another client's caches (fs/core/headers.py, a directory's record in paths.py)
that the file changed. The mark is this client's clock plus MARK_LEAD: Linux under
relatime moves an access time at a read only when it is not after the change time (which
the SET_INFO has just moved to the server's now) or over a day old, so a mark ahead of
the server's clock stays as it was set, and a read does not look like a change. Whenever
a server does move it (a day later, a clock further ahead, strictatime), the answers stay
right: each move only makes those caches read the header or record once more.
"""

from __future__ import annotations

import errno
import os
import struct
import threading
import time
from typing import Any

from smbprotocol.exceptions import SMBResponseException
from smbprotocol.file_info import FileBasicInformation, FileInformationClass, InfoType
from smbprotocol.open import (
    FilePipePrinterAccessMask as Access,
)
from smbprotocol.open import (
    ImpersonationLevel,
    ShareAccess,
    SMB2CloseRequest,
    SMB2CreateRequest,
    SMB2CreateResponse,
    SMB2QueryInfoRequest,
    SMB2QueryInfoResponse,
    SMB2ReadRequest,
    SMB2SetInfoRequest,
    SMB2WriteRequest,
    SMB2WriteResponse,
)

from ..base import BackendError, BackendStat

_FILETIME_EPOCH = 116444736000000000  # 1970-01-01 as 100 ns ticks since 1601
_FILE_ATTRIBUTE_DIRECTORY = 0x10
RELATED_FID = b"\xff" * 16
_SHARE_ALL = ShareAccess.FILE_SHARE_READ | ShareAccess.FILE_SHARE_WRITE | ShareAccess.FILE_SHARE_DELETE
READ_ACCESS = Access.FILE_READ_DATA | Access.FILE_READ_ATTRIBUTES | Access.SYNCHRONIZE
WRITE_ACCESS = READ_ACCESS | Access.FILE_WRITE_DATA | Access.FILE_APPEND_DATA | Access.FILE_WRITE_ATTRIBUTES
DIR_LIST_ACCESS = Access.FILE_READ_DATA | Access.FILE_READ_ATTRIBUTES | Access.SYNCHRONIZE


# NTSTATUS -> the errno a local filesystem gives for the same situation.
_STATUS_ERRNO: dict[int, int] = {
    0xC0000034: errno.ENOENT,        # OBJECT_NAME_NOT_FOUND
    0xC000003A: errno.ENOENT,        # OBJECT_PATH_NOT_FOUND
    0xC000000F: errno.ENOENT,        # NO_SUCH_FILE
    0xC0000056: errno.ENOENT,        # DELETE_PENDING: the name is going away
    0xC0000035: errno.EEXIST,        # OBJECT_NAME_COLLISION
    0xC00000BA: errno.EISDIR,        # FILE_IS_A_DIRECTORY
    0xC0000103: errno.ENOTDIR,       # NOT_A_DIRECTORY
    0xC0000101: errno.ENOTEMPTY,     # DIRECTORY_NOT_EMPTY
    0xC0000022: errno.EACCES,        # ACCESS_DENIED
    0xC0000121: errno.EACCES,        # CANNOT_DELETE
    0xC0000043: errno.EBUSY,         # SHARING_VIOLATION
    0xC0000054: errno.EBUSY,         # FILE_LOCK_CONFLICT
    0xC000007F: errno.ENOSPC,        # DISK_FULL
    0xC0000044: errno.EDQUOT,        # QUOTA_EXCEEDED
    0xC0000033: errno.EINVAL,        # OBJECT_NAME_INVALID
    0xC000000D: errno.EINVAL,        # INVALID_PARAMETER
    0xC0000106: errno.ENAMETOOLONG,  # NAME_TOO_LONG
    0xC00000BB: errno.ENOTSUP,       # NOT_SUPPORTED
    0xC0000002: errno.ENOTSUP,       # NOT_IMPLEMENTED
    0xC00000D4: errno.EXDEV,         # NOT_SAME_DEVICE
    0xC00000A2: errno.EROFS,         # MEDIA_WRITE_PROTECTED
    0xC000009A: errno.ENOMEM,        # INSUFFICIENT_RESOURCES
    0xC0000128: errno.EBADF,         # FILE_CLOSED
}
# The server forgot our session/tree/handle: reconnect and try again.
STALE_STATUSES = {
    0xC00000C9,  # NETWORK_NAME_DELETED
    0xC0000203,  # USER_SESSION_DELETED
    0xC000035C,  # NETWORK_SESSION_EXPIRED
    0xC0000008,  # INVALID_HANDLE
    0xC0000128,  # FILE_CLOSED
}


# -- errors ---------------------------------------------------------------------------------
class NameNotFound(FileNotFoundError):
    """The last component is missing in a directory that exists (OBJECT_NAME_NOT_FOUND):
    plainly ENOENT, no need to look at the parents for ENOTDIR."""


def status_error(exc: SMBResponseException, path: str) -> OSError:
    if exc.status == 0xC0000034:
        return NameNotFound(errno.ENOENT, os.strerror(errno.ENOENT), path)
    err = _STATUS_ERRNO.get(exc.status)
    if err is None:
        return BackendError(f"{path or '/'}: SMB server error 0x{exc.status:08x}")
    return OSError(err, os.strerror(err), path)


def _filetime_ns(raw: int) -> int:
    return (raw - _FILETIME_EPOCH) * 100 if raw else 0


def _ns_filetime(ns: int) -> int:
    return ns // 100 + _FILETIME_EPOCH


#: How far ahead of this client's clock a change mark is (see the docstring at the top):
#: well beyond the clock skew Kerberos tolerates between a client and its server (5
#: minutes), so that the server's next read leaves it as it is.
MARK_LEAD_NS = 3600 * 10**9

_mark_lock = threading.Lock()
_last_mark = 0


def change_mark() -> int:
    """A new LastAccessTime (a FILETIME): MARK_LEAD ahead of this client's clock, and later
    than every mark this process gave before (two SET_INFOs within 100 ns, or a clock
    stepped back)."""
    global _last_mark
    with _mark_lock:
        _last_mark = max(_ns_filetime(time.time_ns() + MARK_LEAD_NS), _last_mark + 1)
        return _last_mark


# -- requests ----------------------------------------------------------------------------------
def create_msg(name: str, access: int, disposition: int, options: int) -> Any:
    create = SMB2CreateRequest()
    create["impersonation_level"] = ImpersonationLevel.Impersonation
    create["desired_access"] = access
    create["file_attributes"] = 0
    create["share_access"] = _SHARE_ALL
    create["create_disposition"] = disposition
    create["create_options"] = options
    create["buffer_path"] = name.encode("utf-16-le") if name else b"\x00\x00"
    return create


def close_msg(fid: bytes) -> Any:
    close = SMB2CloseRequest()
    close["file_id"] = fid
    return close


def stat_queries(fid: bytes) -> list[Any]:
    """What a BackendStat is made of (stat_from_infos): basic, standard, internal."""
    return [query_msg(fid, InfoType.SMB2_0_INFO_FILE, FileInformationClass.FILE_BASIC_INFORMATION, 40),
            query_msg(fid, InfoType.SMB2_0_INFO_FILE, FileInformationClass.FILE_STANDARD_INFORMATION, 24),
            query_msg(fid, InfoType.SMB2_0_INFO_FILE, FileInformationClass.FILE_INTERNAL_INFORMATION, 8)]


def query_msg(fid: bytes, info_type: int, info_class: int, out_len: int) -> Any:
    q = SMB2QueryInfoRequest()
    q["info_type"] = info_type
    q["file_info_class"] = info_class
    q["file_id"] = fid
    q["output_buffer_length"] = out_len
    return q


def setinfo_msg(fid: bytes, info: Any) -> Any:
    s = SMB2SetInfoRequest()
    s["info_type"] = info.INFO_TYPE
    s["file_info_class"] = info.INFO_CLASS
    s["file_id"] = fid
    s["buffer"] = info
    return s


def query_buffer(response: Any) -> bytes:
    q = SMB2QueryInfoResponse()
    q.unpack(response["data"].get_value())
    return q["buffer"].get_value()


def parse_create(response: Any) -> SMB2CreateResponse:
    c = SMB2CreateResponse()
    c.unpack(response["data"].get_value())
    return c


# -- request shaping ---------------------------------------------------------------------------
def write_requests(writes: list[tuple[int, bytes]], limit: int) -> list[tuple[int, list[memoryview]]]:
    """The WRITE requests for writes (in the given order), each as views of the callers'
    buffers, no copies: adjacent writes share requests of up to limit bytes, a write
    no larger than limit is never split (Backend.untearable), a larger one is cut."""
    out: list[tuple[int, list[memoryview]]] = []
    start, segments, length = -1, [], 0
    for offset, data in writes:
        view = memoryview(data).cast("B")
        if not len(view):
            continue
        if segments and (offset != start + length or length + len(view) > limit >= len(view)):
            out.append((start, segments))
            segments, length = [], 0
        if not segments:
            start = offset
        pos = 0
        while pos < len(view):
            if length == limit:
                out.append((start, segments))
                start, segments, length = start + length, [], 0
            take = min(limit - length, len(view) - pos)
            segments.append(view[pos:pos + take])
            length += take
            pos += take
    if segments:
        out.append((start, segments))
    return out


def merge_ranges(reads: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """Union of the (offset, size) ranges, sorted: each span is read once."""
    spans: list[list[int]] = []
    for offset, size in sorted(r for r in reads if r[1] > 0):
        if spans and offset <= spans[-1][0] + spans[-1][1]:
            spans[-1][1] = max(spans[-1][1], offset + size - spans[-1][0])
        else:
            spans.append([offset, size])
    return [(o, n) for o, n in spans]


def cut_spans(got: list[tuple[int, list[memoryview]]], offset: int, size: int) -> list[memoryview]:
    """One requested range as views of the spans' pieces (short only at end of file)."""
    out: list[memoryview] = []
    end = offset + size
    for start, pieces in got:
        if not start <= offset < start + sum(len(p) for p in pieces):
            continue
        for piece in pieces:
            lo, hi = max(offset - start, 0), min(end - start, len(piece))
            if lo < hi:
                out.append(piece[lo:hi])
            start += len(piece)
            if start >= end:
                break
        break
    return out


# -- reads and writes, times, stat and listing -------------------------------------------------
def read_msg(fid: bytes, offset: int, length: int) -> Any:
    r = SMB2ReadRequest()
    r["length"] = length
    r["offset"] = offset
    r["minimum_count"] = 0
    r["file_id"] = fid
    r["padding"] = b"\x50"
    return r


_READ_RESPONSE = struct.Struct("<HBxI")   # structure size, data offset, data length
_SMB2_HEADER_SIZE = 64


def read_payload(response: Any) -> memoryview:
    """The data of a READ response, as a view of the message (SMB2ReadResponse.unpack
    copies it twice)."""
    body = response["data"].get_value()
    _size, offset, length = _READ_RESPONSE.unpack_from(body)
    start = offset - _SMB2_HEADER_SIZE
    return memoryview(body)[start:start + length]


def check_written(response: Any, size: int, path: str) -> None:
    """A WRITE response must account for every byte sent (a short write is an error)."""
    w = SMB2WriteResponse()
    w.unpack(response["data"].get_value())
    if w["count"].get_value() != size:
        raise BackendError(f"{path}: server wrote {w['count'].get_value()} of {size} bytes")


def write_msg(fid: bytes, offset: int, data: bytes) -> Any:
    w = SMB2WriteRequest()
    w["length"] = len(data)
    w["offset"] = offset
    w["file_id"] = fid
    w["buffer"] = data
    return w


def times_info(atime_ns: int | None, mtime_ns: int) -> FileBasicInformation:
    """Access and write time to set; 0 leaves a field (change, None atime) as is. The access
    time goes to CreationTime, where sealfs keeps it, and LastAccessTime takes a new change
    mark (see the docstring at the top)."""
    info = FileBasicInformation()
    atime = 0 if atime_ns is None else _ns_filetime(atime_ns)
    info["creation_time"] = atime
    info["last_access_time"] = change_mark()
    info["last_write_time"] = _ns_filetime(mtime_ns)
    info["change_time"] = 0
    info["file_attributes"] = 0
    return info


def stat_from_infos(basic: bytes, standard: bytes, internal: bytes) -> BackendStat:
    # The access time is the CreationTime, the server's LastAccessTime the change mark (see
    # the docstring at the top).
    atime_raw, mark_raw, mtime_raw, change_raw, attrs = struct.unpack_from("<QQQQI", basic)
    _alloc, eof, nlink, _delete_pending, is_dir = struct.unpack_from("<qqIBB", standard)
    ino = struct.unpack_from("<Q", internal)[0] if len(internal) >= 8 else 0
    directory = bool(is_dir) or bool(attrs & _FILE_ATTRIBUTE_DIRECTORY)
    return BackendStat(size=0 if directory else eof, is_dir=directory, mtime_ns=_filetime_ns(mtime_raw),
                       atime_ns=_filetime_ns(atime_raw), ctime_ns=_filetime_ns(change_raw),
                       nlink=nlink or 1, ino=ino, change_mark=mark_raw)


_DIR_ENTRY = struct.Struct("<IIQQQQqqIIIIQ")  # FileIdFullDirectoryInformation fixed part (80 bytes)


def parse_dir_entries(buf: bytes) -> list[tuple[str, BackendStat]]:
    out = []
    pos = 0
    while True:
        (next_off, _idx, atime, mark, mtime, change, eof, _alloc, attrs, name_len, _ea,
         _res, file_id) = _DIR_ENTRY.unpack_from(buf, pos)
        name = buf[pos + _DIR_ENTRY.size: pos + _DIR_ENTRY.size + name_len].decode("utf-16-le")
        if name not in (".", ".."):
            is_dir = bool(attrs & _FILE_ATTRIBUTE_DIRECTORY)
            out.append((name, BackendStat(size=0 if is_dir else eof, is_dir=is_dir,
                                          mtime_ns=_filetime_ns(mtime), atime_ns=_filetime_ns(atime),
                                          ctime_ns=_filetime_ns(change), nlink=None, ino=file_id,
                                          change_mark=mark)))
        if not next_off:
            return out
        pos += next_off
