"""Azure Files REST answers read into backend terms: times, stats, listings, errors."""


from __future__ import annotations

import datetime as dt
import re
import xml.etree.ElementTree as ET
from collections.abc import Callable
from typing import Any

import trio

from ..base import (
    BackendStat,
)


def fmt_time(ns: int) -> str:
    """Azure's 100 ns time format (datetime would cut to microseconds)."""
    ns = ns // 100 * 100
    secs, rem = divmod(ns, 1_000_000_000)
    base = (dt.datetime(1970, 1, 1, tzinfo=dt.UTC) + dt.timedelta(seconds=secs)).strftime("%Y-%m-%dT%H:%M:%S")
    return f"{base}.{rem // 100:07d}Z"


TIME_RE = re.compile(r"^(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(?:\.(\d{1,7}))?Z$")


def parse_time(text: str | None) -> int:
    if not text:
        return 0
    m = TIME_RE.match(text.strip())
    if m is None:
        return 0
    base = dt.datetime.strptime(m.group(1), "%Y-%m-%dT%H:%M:%S").replace(tzinfo=dt.UTC)
    secs = int((base - dt.datetime(1970, 1, 1, tzinfo=dt.UTC)).total_seconds())
    return secs * 1_000_000_000 + int((m.group(2) or "0").ljust(7, "0")) * 100


def stat_from_headers(headers: Any, is_dir: bool) -> BackendStat:
    size = 0 if is_dir else int(headers.get("Content-Length") or 0)
    return BackendStat(size=size, is_dir=is_dir,
                       mtime_ns=parse_time(headers.get("x-ms-file-last-write-time")),
                       atime_ns=parse_time(headers.get("x-ms-file-creation-time")),
                       ctime_ns=parse_time(headers.get("x-ms-file-change-time")),
                       nlink=1, ino=ino_of(headers.get("x-ms-file-id")))


def ino_of(file_id: str | None) -> int:
    try:
        return int(file_id or 0) & ((1 << 63) - 1)
    except ValueError:
        return 0


def download(fc: Any, offset: int, length: int) -> bytes:
    return fc.download_file(offset=offset, length=length, max_concurrency=1).readall()


def download_with_stat(fc: Any, size: int) -> tuple[bytes, BackendStat]:
    seen: dict[str, Any] = {}

    def hook(response: Any) -> None:
        seen.setdefault("headers", response.http_response.headers)

    try:
        data = fc.download_file(offset=0, length=size, max_concurrency=1, raw_response_hook=hook).readall()
    except Exception as exc:
        if getattr(exc, "error_code", None) == "InvalidRange" or error_code(exc) == "InvalidRange":
            # An empty file has no byte 0: Azure answers 416. Its properties tell the rest.
            return b"", headers_of(fc.get_file_properties, False)
        raise
    headers = seen["headers"]
    st = stat_from_headers(headers, False)
    total = headers.get("Content-Range", "").rpartition("/")[2]
    if total.isdigit():
        st = BackendStat(int(total), False, st.mtime_ns, st.atime_ns, st.ctime_ns, 1, st.ino)
    return data, st


def answer_stat(call: Callable[..., Any], size: int | None, *args: Any, **kwargs: Any) -> BackendStat | None:
    """Run call; with size known, the file's stat from the times and id in its answer
    (Create File, Rename File), else None."""
    seen: dict[str, Any] = {}

    def hook(response: Any) -> None:
        seen["headers"] = response.http_response.headers

    call(*args, raw_response_hook=hook, **kwargs)
    headers = seen.get("headers")
    if size is None or headers is None or not headers.get("x-ms-file-last-write-time") \
            or not headers.get("x-ms-file-change-time"):
        return None
    st = stat_from_headers(headers, False)
    return BackendStat(size, False, st.mtime_ns, st.atime_ns, st.ctime_ns, 1, st.ino)


def headers_of(call: Callable[..., Any], is_dir: bool) -> BackendStat:
    seen: dict[str, Any] = {}

    def hook(response: Any) -> None:
        seen["headers"] = response.http_response.headers

    call(raw_response_hook=hook)
    return stat_from_headers(seen["headers"], is_dir)


def list_directory(dc: Any) -> list[tuple[str, BackendStat]]:
    """Every page of the listing, parsed from the XML itself (the SDK's datetimes would
    drop the 100 ns digits)."""
    bodies: list[bytes] = []

    def hook(response: Any) -> None:
        bodies.append(response.http_response.body())

    pages = dc.list_directories_and_files(include=["timestamps", "attributes", "etag"],
                                          include_extended_info=True, results_per_page=5000,
                                          raw_response_hook=hook).by_page()
    for page in pages:          # walking the pages is what fetches them (the hook keeps them)
        for _entry in page:
            pass
    out = []
    for body in bodies:
        root = ET.fromstring(body)
        for entry in root.iter():
            if entry.tag not in ("File", "Directory"):
                continue
            props = entry.find("Properties")

            def get(tag: str, props: ET.Element | None = props) -> str | None:
                return props.findtext(tag) if props is not None else None
            is_dir = entry.tag == "Directory"
            out.append((entry.findtext("Name") or "", BackendStat(
                size=0 if is_dir else int(get("Content-Length") or 0), is_dir=is_dir,
                mtime_ns=parse_time(get("LastWriteTime")), atime_ns=parse_time(get("CreationTime")),
                ctime_ns=parse_time(get("ChangeTime")), nlink=1, ino=ino_of(entry.findtext("FileId")))))
    return out


async def gather(jobs: list[Callable[[], Any]]) -> None:
    if len(jobs) == 1:
        await jobs[0]()
        return
    try:
        async with trio.open_nursery() as nursery:
            for job in jobs:
                nursery.start_soon(job)
    except BaseExceptionGroup as group:
        raise first_leaf(group) from None


def first_leaf(group: BaseExceptionGroup) -> BaseException:
    """The error one of the parallel requests raised (not the others' cancellations)."""
    leaves: list[BaseException] = []

    def walk(exc: BaseException) -> None:
        if isinstance(exc, BaseExceptionGroup):
            for e in exc.exceptions:
                walk(e)
        else:
            leaves.append(exc)
    walk(group)
    for exc in leaves:
        if not isinstance(exc, trio.Cancelled):
            return exc
    return leaves[0]


def error_code(exc: Any) -> str | None:
    code = getattr(exc, "error_code", None)
    if code is None:
        response = getattr(exc, "response", None)
        code = response.headers.get("x-ms-error-code") if response is not None else None
    return str(getattr(code, "value", code)) if code else None


def retry_after(exc: Any, cap: float) -> float | None:
    response = getattr(exc, "response", None)
    value = response.headers.get("Retry-After") if response is not None else None
    if not value:
        return None
    try:
        return min(cap, max(0.0, float(value)))
    except ValueError:
        return None


def first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def is_tls_error(exc: BaseException) -> bool:
    import ssl
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, ssl.SSLError) or "CERTIFICATE_VERIFY_FAILED" in str(seen):
            return True
        seen = seen.__cause__ or seen.__context__
    return False

