"""The Azure Files backend: the Backend interface over the File service REST API."""


from __future__ import annotations

import dataclasses
import errno
import logging
import os
import threading
import time
import uuid
import weakref
from collections.abc import Callable
from typing import Any, TypeVar

import trio

from ..base import (
    Backend,
    BackendError,
    BackendStat,
    BackendStatvfs,
    Capabilities,
    Handle,
    TransportSecurityError,
    join,
    parent_of,
)
from .config import (
    CONTRIBUTOR_ROLE,
    RANGE,
    READER_ROLE,
    RETRYABLE,
    THROTTLED,
    AzureSettings,
    AzureTarget,
    check_sas,
)
from .rest import (
    answer_stat,
    download,
    download_with_stat,
    error_code,
    first_line,
    fmt_time,
    gather,
    headers_of,
    is_tls_error,
    list_directory,
    retry_after,
)
from .snapshots import SnapshotOps, check_snapshot_id

log = logging.getLogger("sealfs.azfiles")
T = TypeVar("T")

class _ParentNotFound(FileNotFoundError):
    """404 ParentNotFound: the parent is missing (or a file), so is every kind of entry."""


class _WrongKind(FileExistsError):
    """409 ResourceTypeMismatch: an entry of the other kind holds the name."""


class AzureHandle(Handle):
    __slots__ = ("path", "writable", "state", "closed")

    def __init__(self, path: str, writable: bool, state: _FileState) -> None:
        self.path = path
        self.writable = writable
        self.state = state
        self.closed = False


class _FileState:
    """What every handle on one file shares: its size (Put Range cannot grow a file).

    The size is ours while the state lives: every resize through this backend goes
    through it (under grow_lock, counted in resizes). A server answer is taken for it
    only when no resize ran while the answer was on its way, since an answer given
    before a resize that lands after it would make the next "grow" shrink the file."""

    __slots__ = ("size", "grow_lock", "refs", "info", "resizes")

    def __init__(self, size: int, info: BackendStat) -> None:
        self.size = size
        self.info = info
        self.grow_lock = trio.Lock()
        self.refs = 0
        self.resizes = 0


class AzureFilesBackend(SnapshotOps, Backend):
    """Azure Files REST. See the module docstring."""

    def __init__(self, target: AzureTarget, *, sas: Callable[[], str | None] | None = None,
                 account_key: Callable[[], str | None] | None = None,
                 settings: AzureSettings | None = None, credential: Any = None,
                 snapshot: str | None = None) -> None:
        self.target = target
        self.snapshot = check_snapshot_id(snapshot) if snapshot else None   # read this share snapshot
        self.settings = settings or AzureSettings()
        self.location = target.location
        self.capabilities = Capabilities(case_insensitive=True, max_name_length=255, max_path_length=2048,
                                         hard_links=False, unlink_open_files=False,
                                         stamps_write_time_on_close=False, dir_link_counts=False,
                                         dir_times_follow_entries=False, time_resolution_ns=100)
        self._sas_source = sas
        self._key_source = account_key
        self._credential = credential         # tests and embedders may pass a TokenCredential
        self._share_client: Any = None
        self._service: Any = None
        self._client_args: tuple[Any, dict[str, Any]] | None = None
        self._auth = ""
        self._connect_lock = threading.Lock()
        self._limiter = trio.CapacityLimiter(max(2, self.settings.threads))
        self._files: dict[str, _FileState] = {}
        # Opens in flight per path (lowercase): a state they may join outlives its last
        # handle until they are done, since their stat may be older than its resizes.
        self._opening: dict[str, int] = {}
        # The kind last seen at each path (lowercase): which kind stat() asks first. A hint
        # only, never an answer, so it may go stale across clients.
        self._kinds: dict[str, str] = {}
        self._handles: weakref.WeakSet[AzureHandle] = weakref.WeakSet()
        self._session: Any = None

    @classmethod
    def from_url(cls, store: str, options: Any = None) -> AzureFilesBackend:
        """Build from a STORE URL and BackendOptions (azure_sas / azure_account_key callables)."""
        extra = getattr(options, "extra", None) or {}
        settings = AzureSettings.from_extra(extra)
        return cls(AzureTarget.parse(store, settings.account), sas=getattr(options, "azure_sas", None),
                   account_key=getattr(options, "azure_account_key", None), settings=settings,
                   snapshot=getattr(options, "snapshot", None))

    # -- connection ------------------------------------------------------------------------
    def _client(self) -> Any:
        """The one ShareClient (and its pooled session), built at first use, in a thread."""
        with self._connect_lock:
            if self._share_client is None:
                self._share_client = self._make_client()
            return self._share_client

    def _make_client(self) -> Any:
        import requests
        from azure.core.pipeline.transport import RequestsTransport
        from azure.storage.fileshare import ShareClient

        session = requests.Session()
        adapter = requests.adapters.HTTPAdapter(pool_connections=4, pool_maxsize=self.settings.threads * 2)
        session.mount("https://", adapter)
        verify: Any = True
        if not (os.environ.get("REQUESTS_CA_BUNDLE") or os.environ.get("CURL_CA_BUNDLE")) \
                and os.environ.get("SSL_CERT_FILE"):
            verify = os.environ["SSL_CERT_FILE"]
        self._session = session
        transport = RequestsTransport(session=session, session_owner=False, connection_verify=verify,
                                      connection_timeout=self.settings.connection_timeout,
                                      read_timeout=self.settings.read_timeout)
        credential, intent = self._pick_credential()
        kwargs: dict[str, Any] = {"transport": transport, "retry_total": 0}
        if intent:
            kwargs["token_intent"] = intent
        self._client_args = (credential, kwargs)
        return ShareClient(self.target.account_url, self.target.share, credential=credential,
                           snapshot=self.snapshot, **kwargs)

    def _pick_credential(self) -> tuple[Any, str | None]:
        """A credential given explicitly wins over the ambient identity: a SAS, then the
        account key; with neither, Entra ID through DefaultAzureCredential."""
        if self._credential is not None:
            self._auth = "Entra ID"
            return self._credential, "backup"
        sas = self._sas_source() if self._sas_source else None
        if sas:
            self._auth = "SAS"
            return check_sas(sas), None
        key = self._key_source() if self._key_source else None
        if key:
            log.warning("%s: using the storage account key, which grants full control of the whole "
                        "account; prefer Entra ID or a share SAS", self.target.account)
            self._auth = "account key"
            return {"account_name": self.target.account, "account_key": key.strip()}, None
        from azure.identity import DefaultAzureCredential
        self._auth = "Entra ID"
        return DefaultAzureCredential(exclude_interactive_browser_credential=True), "backup"

    @property
    def transport(self) -> str:
        return f"HTTPS (Azure Files REST, {self._auth or 'not connected'})"

    async def aclose(self) -> None:
        client, self._share_client = self._share_client, None
        service, self._service = self._service, None
        for one in (client, service):
            if one is not None:
                await trio.to_thread.run_sync(one.close)
        if self._session is not None:
            self._session.close()
            self._session = None

    # -- plumbing ----------------------------------------------------------------------------
    def _rel(self, path: str) -> str:
        if path.startswith("/") or "\\" in path:
            raise OSError(errno.EINVAL, "bad backend path", path)
        full = join(self.target.path, path)
        if len(full) > self.capabilities.max_path_length or any(
                len(p.encode("utf-8")) > self.capabilities.max_name_length for p in path.split("/")):
            raise OSError(errno.ENAMETOOLONG, os.strerror(errno.ENAMETOOLONG), path)
        return full

    def _file(self, path: str) -> Any:
        return self._client().get_file_client(self._rel(path))

    def _dir(self, path: str) -> Any:
        rel = self._rel(path)
        client = self._client()
        return client.get_directory_client(rel) if rel else client.get_directory_client()

    async def _run(self, fn: Callable[[], T], path: str, *, idempotent: bool) -> T:
        return await trio.to_thread.run_sync(self._call, fn, path, idempotent, limiter=self._limiter)

    def _call(self, fn: Callable[[], T], path: str, idempotent: bool) -> T:
        """Run one request with bounded retries; map every failure to an OSError."""
        from azure.core.exceptions import (
            ClientAuthenticationError,
            HttpResponseError,
            ServiceRequestError,
            ServiceResponseError,
        )
        deadline = time.monotonic() + self.settings.retry_deadline
        delay = 0.2
        while True:
            wait: float | None = None
            try:
                return fn()
            except ClientAuthenticationError as exc:
                if getattr(exc, "status_code", None) is None:        # the credential, not the server
                    raise PermissionError(errno.EACCES, f"{self.target.account}: no usable Azure credential: "
                                                        f"{first_line(exc)}") from None
                raise self._os_error(exc, path) from None
            except HttpResponseError as exc:
                status = exc.status_code or 0
                if status in THROTTLED or (idempotent and status in RETRYABLE):
                    wait = retry_after(exc, self.settings.max_retry_after)
                    last = f"HTTP {status} {error_code(exc) or ''}".strip()
                else:
                    raise self._os_error(exc, path) from None
            except ServiceRequestError as exc:       # never reached the server: safe to resend
                if is_tls_error(exc):
                    raise TransportSecurityError(f"{self.target.host}: TLS verification failed: "
                                                 f"{first_line(exc)}") from None
                last = f"cannot connect: {first_line(exc)}"
            except ServiceResponseError as exc:
                if not idempotent:
                    raise BackendError(f"{path or '/'}: the connection to {self.target.host} was lost "
                                       f"mid-request ({first_line(exc)}); not retried") from None
                last = f"connection lost: {first_line(exc)}"
            now = time.monotonic()
            pause = wait if wait is not None else delay
            if now + pause > deadline:
                raise BackendError(f"{path or '/'}: {self.target.host} unavailable ({last}); gave up after "
                                   f"{self.settings.retry_deadline:g} s")
            log.info("%s: %s; retrying in %.1f s", path or "/", last, pause)
            time.sleep(pause)
            delay = min(delay * 2, 5.0)

    def _os_error(self, exc: Any, path: str) -> OSError:
        code = error_code(exc) or ""
        status = getattr(exc, "status_code", None) or 0
        p = path or "/"
        if code in ("ResourceNotFound", "ShareNotFound", "ParentNotFound", "ShareSnapshotNotFound") or \
                (status == 404 and not code):
            if code == "ShareNotFound":
                return FileNotFoundError(errno.ENOENT, f"share {self.target.share!r} does not exist", p)
            if code == "ShareSnapshotNotFound":     # not a missing file: no FileNotFoundError
                return BackendError(f"share snapshot {self.snapshot} does not exist", errno.ENOENT)
            if code == "ParentNotFound":
                return _ParentNotFound(errno.ENOENT, os.strerror(errno.ENOENT), p)
            return FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), p)
        if code == "ResourceTypeMismatch":
            return _WrongKind(errno.EEXIST, os.strerror(errno.EEXIST), p)
        if code in ("ResourceAlreadyExists", "ShareAlreadyExists"):
            return FileExistsError(errno.EEXIST, os.strerror(errno.EEXIST), p)
        if code == "DirectoryNotEmpty":
            return OSError(errno.ENOTEMPTY, os.strerror(errno.ENOTEMPTY), p)
        if code == "InvalidResourceName":
            return OSError(errno.EINVAL, "name not allowed by Azure Files", p)
        if code == "InvalidRange":
            return OSError(errno.EINVAL, "range outside the file", p)
        if code == "OperationNotSupportedOnShareSnapshot":
            return PermissionError(errno.EROFS, "share snapshots are read-only", p)
        if status in (401, 403):
            return PermissionError(errno.EACCES, self._denied(code), p)
        if code in ("ShareDisabled", "ShareBeingDeleted"):
            return BackendError(f"{p}: {code}")
        if status == 413:
            return OSError(errno.EFBIG, os.strerror(errno.EFBIG), p)
        return BackendError(f"{p}: {self.target.host} answered HTTP {status} {code}".rstrip())

    def _denied(self, code: str) -> str:
        if self._auth == "Entra ID":
            return (f"{code}: the identity lacks a data role on share {self.target.share!r}: grant "
                    f"'{CONTRIBUTOR_ROLE}' (read-write) or '{READER_ROLE}' (read-only)")
        if self._auth == "SAS":
            return (f"{code}: the SAS token does not allow this "
                    "(needs sp=rcwdl for read-write, rl for read-only)")
        return f"{code}: the storage account refused the credential"

    async def _refine_enoent(self, exc: OSError, path: str) -> OSError:
        """Azure says only "not found"; POSIX says which: ENOTDIR when an ancestor is a file.
        ResourceNotFound already says the parent is a directory: nothing to walk."""
        if not isinstance(exc, _ParentNotFound):
            return FileNotFoundError(exc.errno, exc.strerror, exc.filename)
        parent = parent_of(path)
        while parent:
            kind = await self._kind(parent)
            if kind == "file":
                return NotADirectoryError(errno.ENOTDIR, os.strerror(errno.ENOTDIR), path)
            if kind == "dir":
                break
            parent = parent_of(parent)
        return FileNotFoundError(exc.errno, exc.strerror, exc.filename)

    async def _kind(self, path: str) -> str | None:
        """'file', 'dir' or None (missing)."""
        try:
            st = await self.stat(path)
        except (FileNotFoundError, NotADirectoryError):
            return None
        return "dir" if st.is_dir else "file"

    def _saw(self, path: str, kind: str | None) -> None:
        """Remember the kind last seen at path (None: nothing there)."""
        key = path.lower()
        if kind is None:
            self._kinds.pop(key, None)
            return
        if len(self._kinds) > 100_000:
            self._kinds.clear()
        self._kinds[key] = kind

    # -- files -------------------------------------------------------------------------------
    def _track(self, path: str, writable: bool, st: BackendStat) -> AzureHandle:
        key = path.lower()
        state = self._files.get(key)
        if state is None:
            state = self._files[key] = _FileState(st.size, st)
        state.refs += 1
        handle = AzureHandle(path, writable, state)
        self._handles.add(handle)
        return handle

    async def open(self, path: str, *, write: bool = False, create: bool = False,
                   exclusive: bool = False) -> AzureHandle:
        if create and exclusive:
            return await self.create_file(path, b"")
        key = path.lower()
        state = self._files.get(key)
        if state is not None:
            return self._track(path, write, state.info)
        self._opening[key] = self._opening.get(key, 0) + 1
        try:
            return await self._open_new(path, write, create)
        finally:
            self._opening[key] -= 1
            if not self._opening[key]:
                del self._opening[key]
            self._forget_unused(key)

    async def _open_new(self, path: str, write: bool, create: bool) -> AzureHandle:
        """Open a file this backend has no state for. Its stat may be older than the writes
        of a handle opened and closed meanwhile: _track then joins that handle's state
        (kept while this open is in flight), whose size is newer than the stat's."""
        try:
            st = await self._stat_file(path)
            self._saw(path, "file")
        except FileNotFoundError as exc:
            if not create:
                kind = await self._kind(path)
                if kind == "dir":
                    if write:
                        raise IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR), path) from None
                    raise IsADirectoryError(errno.EISDIR, "directories cannot be opened as files",
                                            path) from None
                raise await self._refine_enoent(exc, path) from None
            st = await self._create(path, 0)
        return self._track(path, write, st)

    async def _create(self, path: str, size: int) -> BackendStat:
        """Create File (it overwrites a file); its answer carries the new file's stat."""
        fc = self._file(path)
        try:
            st = await self._run(lambda: answer_stat(fc.create_file, size, size), path, idempotent=True)
        except FileNotFoundError as exc:
            raise await self._refine_enoent(exc, path) from None
        except FileExistsError:
            self._saw(path, "dir")
            raise IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR), path) from None
        self._saw(path, "file")
        return st if st is not None else await self._stat_file(path)

    async def create_file(self, path: str, data: bytes) -> AzureHandle:
        """Azure's Create File overwrites: create under a unique name, fill it, then rename
        it into place without replacing, which fails atomically if the name exists (file or
        directory): three requests, no existence check before."""
        # The store's reserved name for an in-flight creation (FORMAT.md): listings skip
        # it, and rmdir clears one a crash or a concurrent rename of the directory left.
        tmp = join(parent_of(path), f"sealfs.tmp.azx{uuid.uuid4().hex}")
        await self._create(tmp, len(data))
        try:
            if data:
                await self._put_ranges(tmp, [(0, memoryview(data))])
            st = await self._rename_file(tmp, path, replace=False, size=len(data))
        except BaseException:
            with trio.CancelScope(shield=True):
                try:
                    await self._run(self._file(tmp).delete_file, tmp, idempotent=False)
                except OSError:
                    pass
            raise
        finally:
            self._saw(tmp, None)
        self._saw(path, "file")
        return self._track(path, True, st if st is not None else await self._stat_file(path))

    def untearable(self, start: int, end: int) -> bool:
        """One Put Range (at most 4 MiB) is applied whole or not at all."""
        return 0 < end - start <= RANGE

    async def read(self, handle: Handle, offset: int, size: int) -> bytes:
        return (await self.read_many(handle, [(offset, size)]))[0]

    async def read_many(self, handle: Handle, reads: list[tuple[int, int]]) -> list[bytes]:
        assert isinstance(handle, AzureHandle)
        self._check_open(handle)
        known = handle.state.size
        pieces: list[tuple[int, int, int]] = []        # (read index, offset, length)
        for i, (offset, size) in enumerate(reads):
            end = min(offset + size, known)
            pos = offset
            while pos < end:
                n = min(RANGE, end - pos)
                pieces.append((i, pos, n))
                pos += n
        results: list[bytes] = [b""] * len(pieces)
        path = handle.path

        async def fetch(j: int, offset: int, length: int) -> None:
            fc = self._file(path)
            results[j] = await self._run(lambda: download(fc, offset, length), path, idempotent=True)

        await gather([lambda j=j, o=o, n=n: fetch(j, o, n) for j, (_, o, n) in enumerate(pieces)])
        out: list[list[bytes]] = [[] for _ in reads]
        for (i, _, _), data in zip(pieces, results, strict=True):
            out[i].append(data)
        return [b"".join(parts) for parts in out]

    async def write(self, handle: Handle, offset: int, data: bytes | memoryview) -> None:
        await self.write_many(handle, [(offset, data)])

    async def write_many(self, handle: Handle, writes: list[tuple[int, bytes]]) -> None:
        assert isinstance(handle, AzureHandle)
        self._check_open(handle)
        writes = [(o, d) for o, d in writes if len(d)]
        if not writes:
            return
        end = max(o + len(d) for o, d in writes)
        await self._grow(handle, end)
        await self._put_ranges(handle.path, [(o, memoryview(d).cast("B")) for o, d in writes])

    async def _grow(self, handle: AzureHandle, end: int) -> None:
        state = handle.state
        if end <= state.size:
            return
        async with state.grow_lock:
            if end > state.size:
                state.resizes += 1
                fc = self._file(handle.path)
                await self._run(lambda: fc.resize_file(end), handle.path, idempotent=True)
                state.size = end

    async def _put_ranges(self, path: str, writes: list[tuple[int, memoryview]]) -> None:
        """Each piece of at most 4 MiB goes whole in one request (so it cannot tear);
        adjacent small pieces share one; all requests run in parallel."""
        requests: list[tuple[int, list[memoryview]]] = []
        for offset, view in writes:
            while len(view) > RANGE:
                requests.append((offset, [view[:RANGE]]))
                offset, view = offset + RANGE, view[RANGE:]
            last = requests[-1] if requests else None
            if last is not None and last[0] + sum(len(v) for v in last[1]) == offset \
                    and sum(len(v) for v in last[1]) + len(view) <= RANGE:
                last[1].append(view)
            else:
                requests.append((offset, [view]))

        async def put(offset: int, views: list[memoryview]) -> None:
            body = views[0].tobytes() if len(views) == 1 else b"".join(views)
            fc = self._file(path)
            await self._run(lambda: fc.upload_range(body, offset, len(body)), path, idempotent=True)

        await gather([lambda o=o, v=v: put(o, v) for o, v in requests])

    async def truncate(self, handle: Handle, size: int) -> None:
        assert isinstance(handle, AzureHandle)
        self._check_open(handle)
        fc = self._file(handle.path)
        async with handle.state.grow_lock:
            handle.state.resizes += 1
            await self._run(lambda: fc.resize_file(size), handle.path, idempotent=True)
            handle.state.size = size

    async def flush(self, handle: Handle) -> None:
        """A Put Range is durable when it is acknowledged: nothing to flush."""
        assert isinstance(handle, AzureHandle)
        self._check_open(handle)

    async def close(self, handle: Handle) -> None:
        assert isinstance(handle, AzureHandle)
        if handle.closed:
            return
        handle.closed = True
        handle.state.refs -= 1
        self._forget_unused(handle.path.lower())

    def _forget_unused(self, key: str) -> None:
        """Drop the state at key once no handle uses it and no open may join it."""
        state = self._files.get(key)
        if state is not None and state.refs <= 0 and key not in self._opening:
            del self._files[key]

    def _check_open(self, handle: AzureHandle) -> None:
        if handle.closed:
            raise OSError(errno.EBADF, os.strerror(errno.EBADF), handle.path)

    async def fstat(self, handle: Handle) -> BackendStat:
        assert isinstance(handle, AzureHandle)
        self._check_open(handle)
        state = handle.state
        quiet, resizes = not state.grow_lock.locked(), state.resizes
        st = await self._stat_file(handle.path)
        if quiet and state.resizes == resizes:      # no resize overlapped the answer
            state.size = st.size
            return st
        return dataclasses.replace(st, size=state.size)

    async def fset_times(self, handle: Handle, atime_ns: int, mtime_ns: int) -> None:
        assert isinstance(handle, AzureHandle)
        await self.set_times(handle.path, atime_ns, mtime_ns)

    # -- namespace ---------------------------------------------------------------------------
    async def _stat_file(self, path: str) -> BackendStat:
        fc = self._file(path)
        return await self._run(lambda: headers_of(fc.get_file_properties, False), path, idempotent=True)

    async def _stat_dir(self, path: str) -> BackendStat:
        dc = self._dir(path)
        return await self._run(lambda: headers_of(dc.get_directory_properties, True), path, idempotent=True)

    async def stat(self, path: str) -> BackendStat:
        """The kind seen last at path first, then the other: one request when it is right."""
        if not path:
            return await self._stat_dir(path)
        kinds = ("dir", "file") if self._kinds.get(path.lower()) == "dir" else ("file", "dir")
        missing: FileNotFoundError | None = None
        for kind in kinds:
            try:
                st = await (self._stat_dir(path) if kind == "dir" else self._stat_file(path))
            except (FileNotFoundError, _WrongKind) as exc:
                if isinstance(exc, _ParentNotFound):    # no entry of any kind: ask no more
                    missing = exc
                    break
                if isinstance(exc, FileNotFoundError):
                    missing = exc
                continue
            self._saw(path, kind)
            return st
        self._saw(path, None)
        missing = missing or FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), path)
        raise await self._refine_enoent(missing, path) from None

    async def read_head(self, path: str, size: int) -> tuple[bytes, BackendStat]:
        """One GET: the first bytes, and the properties in the same answer's headers."""
        fc = self._file(path)
        try:
            got = await self._run(lambda: download_with_stat(fc, size), path, idempotent=True)
        except FileNotFoundError as exc:
            if await self._kind(path) == "dir":
                raise IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR), path) from None
            raise await self._refine_enoent(exc, path) from None
        self._saw(path, "file")
        return got

    async def listdir(self, path: str) -> list[str]:
        return [name for name, _ in await self.scandir(path)]

    async def scandir(self, path: str) -> list[tuple[str, BackendStat]]:
        dc = self._dir(path)
        try:
            entries = await self._run(lambda: list_directory(dc), path, idempotent=True)
        except FileNotFoundError as exc:
            if path and await self._kind(path) == "file":
                raise NotADirectoryError(errno.ENOTDIR, os.strerror(errno.ENOTDIR), path) from None
            raise await self._refine_enoent(exc, path) from None
        self._saw(path, "dir")
        for name, st in entries:
            self._saw(join(path, name), "dir" if st.is_dir else "file")
        return entries

    async def make_root(self) -> None:
        client = self._client()
        try:
            await self._run(client.get_share_properties, "", idempotent=True)
        except FileNotFoundError:
            try:
                await self._run(client.create_share, "", idempotent=False)
            except FileExistsError:
                pass
            except PermissionError as exc:
                raise PermissionError(
                    errno.EACCES, f"share {self.target.share!r} does not exist and this credential "
                                  f"cannot create it ({exc.strerror}); create the share first") from None
        except PermissionError:
            pass            # data roles and share SAS tokens cannot read share properties
        built = ""
        for part in [p for p in self.target.path.split("/") if p]:
            built = join(built, part)
            dc = self._client().get_directory_client(built)
            try:
                await self._run(dc.create_directory, built, idempotent=False)
            except FileExistsError:
                pass

    async def mkdir(self, path: str) -> None:
        dc = self._dir(path)
        try:
            await self._run(dc.create_directory, path, idempotent=False)
        except FileNotFoundError as exc:
            raise await self._refine_enoent(exc, path) from None
        except _WrongKind:
            raise FileExistsError(errno.EEXIST, os.strerror(errno.EEXIST), path) from None
        self._saw(path, "dir")

    async def rmdir(self, path: str) -> None:
        dc = self._dir(path)
        try:
            await self._run(dc.delete_directory, path, idempotent=False)
        except (FileNotFoundError, _WrongKind) as exc:
            if await self._kind(path) == "file":
                raise NotADirectoryError(errno.ENOTDIR, os.strerror(errno.ENOTDIR), path) from None
            if isinstance(exc, _WrongKind):
                raise BackendError(f"{path}: {self.target.host} answered ResourceTypeMismatch") from None
            raise await self._refine_enoent(exc, path) from None
        self._saw(path, None)

    async def unlink(self, path: str) -> None:
        fc = self._file(path)
        try:
            await self._run(fc.delete_file, path, idempotent=False)
        except (FileNotFoundError, _WrongKind) as exc:
            if await self._kind(path) == "dir":
                raise IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR), path) from None
            if isinstance(exc, _WrongKind):
                raise BackendError(f"{path}: {self.target.host} answered ResourceTypeMismatch") from None
            raise await self._refine_enoent(exc, path) from None
        self._files.pop(path.lower(), None)
        self._saw(path, None)

    async def _rename_file(self, src: str, dst: str, replace: bool,
                           size: int | None = None) -> BackendStat | None:
        """Rename File; with size known, the answer's headers give the renamed file's stat."""
        fc, new = self._file(src), self._rel(dst)
        return await self._run(lambda: answer_stat(fc.rename_file, size, new, overwrite=replace,
                                                    ignore_read_only=True), src, idempotent=False)

    async def _rename_dir(self, src: str, dst: str) -> None:
        dc, new = self._dir(src), self._rel(dst)
        await self._run(lambda: dc.rename_directory(new, overwrite=False), src, idempotent=False)

    async def _rename_kind(self, kind: str, src: str, dst: str, replace: bool,
                           size: int | None = None) -> BackendStat | None:
        if kind == "file":
            return await self._rename_file(src, dst, replace, size)
        await self._rename_dir(src, dst)
        return None

    async def rename(self, src: str, dst: str, *, replace: bool = True) -> None:
        await self._rename(src, dst, replace)

    async def _rename(self, src: str, dst: str, replace: bool, size: int | None = None,
                      kind: str | None = None) -> BackendStat | None:
        """The rename API reports a taken name itself (409): no look before. The source's
        kind is the one seen last, else asked; what a conflict means is asked after it."""
        kind = kind or self._kinds.get(src.lower()) or await self._src_kind(src)
        if replace and kind == "file" and src.lower() != dst.lower() and self._open_at(dst):
            # Its handles are the path: replaced, they would read the new file. SMB refuses
            # to replace an open file too; the volume then moves it aside first.
            raise PermissionError(errno.EACCES, "the file is open: not replaced", dst)
        try:
            st = await self._rename_kind(kind, src, dst, replace, size)
        except FileExistsError:
            st = await self._rename_taken(kind, src, dst, replace)
        except FileNotFoundError:
            actual = await self._src_kind(src)      # ENOENT or ENOTDIR if the source is gone
            if actual == kind:          # the source is there: the destination's parent is not
                raise await self._refine_enoent(
                    _ParentNotFound(errno.ENOENT, os.strerror(errno.ENOENT), dst), dst) from None
            return await self._rename(src, dst, replace, size, actual)   # a stale kind: once more
        self._saw(src, None)
        self._saw(dst, kind)
        self._follow_rename(src, dst)
        return st

    async def _src_kind(self, src: str) -> str:
        """The source's kind, or the error a missing source gives (ENOENT, or ENOTDIR)."""
        return "dir" if (await self.stat(src)).is_dir else "file"

    async def _rename_taken(self, kind: str, src: str, dst: str, replace: bool) -> BackendStat | None:
        """dst exists. POSIX replaces a file by a file (done by the API already) and an
        empty directory by a directory (Azure never does: we remove it first)."""
        if not replace:
            raise FileExistsError(errno.EEXIST, os.strerror(errno.EEXIST), dst)
        dst_kind = await self._kind(dst)
        if kind == "file" and dst_kind == "dir":
            raise IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR), dst)
        if kind == "dir" and dst_kind == "file":
            raise NotADirectoryError(errno.ENOTDIR, os.strerror(errno.ENOTDIR), dst)
        if kind == "dir" and dst_kind == "dir":
            if await self.listdir(dst):
                raise OSError(errno.ENOTEMPTY, os.strerror(errno.ENOTEMPTY), dst)
            await self.rmdir(dst)
        try:
            return await self._rename_kind(kind, src, dst, replace)
        except FileExistsError:
            raise FileExistsError(errno.EEXIST, os.strerror(errno.EEXIST), dst) from None

    async def place_new(self, handle: Handle, src: str, dst: str) -> BackendStat:
        """One Rename File without replacing: its answer is the stat."""
        assert isinstance(handle, AzureHandle)
        st = await self._rename(src, dst, False, handle.state.size)
        return st if st is not None else await self.fstat(handle)

    def _open_at(self, path: str) -> bool:
        key = path.lower()
        return any(not h.closed and h.path.lower() == key for h in list(self._handles))

    def _follow_rename(self, src: str, dst: str) -> None:
        """Handles address their file by path: they follow it."""
        s, prefix = src.lower(), src.lower() + "/"
        for handle in list(self._handles):
            low = handle.path.lower()
            if low == s:
                handle.path = dst
            elif low.startswith(prefix):
                handle.path = dst + handle.path[len(src):]
        for key in list(self._files):
            if key == s or key.startswith(prefix):
                state = self._files.pop(key)
                self._files[dst.lower() + key[len(s):]] = state

    async def link(self, src: str, dst: str) -> None:
        raise PermissionError(errno.EPERM, "hard links are not supported by Azure Files over REST", dst)

    async def set_times(self, path: str, atime_ns: int | None, mtime_ns: int) -> None:
        """Last-write time, and the access time in the creation-time field (module docstring)."""
        from azure.storage.fileshare import ContentSettings
        mtime = fmt_time(mtime_ns)
        atime = "preserve" if atime_ns is None else fmt_time(atime_ns)

        async def on_dir() -> None:
            dc = self._dir(path)
            await self._run(lambda: dc.set_http_headers(file_last_write_time=mtime, file_creation_time=atime),
                            path, idempotent=True)

        if path and self._kinds.get(path.lower()) == "dir":
            try:
                return await on_dir()
            except FileNotFoundError:
                pass
        if not path:
            return await on_dir()
        fc = self._file(path)
        try:
            await self._run(lambda: fc.set_http_headers(ContentSettings(), file_last_write_time=mtime,
                                                        file_creation_time=atime), path, idempotent=True)
        except FileNotFoundError as exc:
            if await self._kind(path) != "dir":
                raise await self._refine_enoent(exc, path) from None
            await on_dir()

    async def stamp_dir(self, path: str) -> None:
        """One Set Directory Properties: last-write time now, change time now (its default),
        creation time (our access time) preserved."""
        dc = self._dir(path)
        await self._run(lambda: dc.set_http_headers(file_last_write_time="now"), path, idempotent=True)

    async def statvfs(self) -> BackendStatvfs:
        client = self._client()
        block = 4096
        try:
            props = await self._run(client.get_share_properties, "", idempotent=True)
            used = await self._run(client.get_share_stats, "", idempotent=True)
            total = int(props.quota) * 1024 ** 3
        except PermissionError:     # a data role or share SAS may not read share properties
            total, used = 100 * 1024 ** 4, 0
        free = max(0, total - int(used))
        return BackendStatvfs(block, total // block, free // block, free // block, 1 << 32, 1 << 32, 255)


# -- helpers run in worker threads -----------------------------------------------------------

