"""`sealfs sync` and `sealfs restore`: incremental, resumable backups through a Volume.

No mount is needed: the plaintext tree goes straight through the Volume library.

sync SRC -> volume PATH
  - A file is unchanged when size and mtime (ns) are equal, or with checksum=True when
    the sha256 of both contents is equal (size first: different sizes always copy).
  - Every file (or symlink) is written to a volume temporary in its directory
    (Volume.create_temp: a reserved backend name, sealfs.tmp.sync.<random>, that no
    plaintext name can equal), given its times, closed, and only then renamed over its
    final name, so no half-written file is ever visible under a final name and no
    user's file is ever taken for a temporary. A rerun removes the sync temporaries in
    the directories it visits first: a killed sync simply resumes.
  - Modes, uid/gid, mtimes, symlinks and empty directories are kept. Directory modes
    and times are applied last, deepest first (creating children changes them).
  - Extended attributes and POSIX ACLs are kept (xattrs=False skips them) through the
    Volume's own setxattr/removexattr (fs/tools/xattrcopy.py). A file whose content is
    unchanged is still compared by its attributes: the local set against the sealed
    one, read only when either side has any (the inode's flag), so a tree without
    xattrs costs no store read. A difference updates the attributes in place, without
    copying the content (rsync -X does the same). ctime could not serve: the volume's
    is the sync's own, never the source's.
  - At most `jobs` files are transferred at once (one trio nursery, a capacity limiter).
  - Excluded entries (`--exclude` glob, matched against the basename, or against the
    path relative to SRC when the pattern contains "/"; a trailing "/" matches only
    directories) are neither copied nor deleted.
  - Special files (FIFOs, devices, sockets) and hard links are not preserved: FIFOs and
    devices are skipped with a warning; hard links are copied as separate files.

With --snapshot, a successful sync (no error at all) ends with a server-side snapshot of
the store (an Azure share snapshot), tagged sealfs=sync, the time, the volume id and a
hash of the source path: snapshot metadata is readable by whoever may list snapshots, so
it carries no plaintext name. A sync with errors takes none.

restore volume PATH -> DST does the reverse with the same temp-then-rename rule, on
the local side through directory descriptors and never following a symlink
(fs/tools/localfiles.py): random O_EXCL temporaries, removed only by the run that made them.

Per-file failures (OSError, IntegrityError) are reported on stderr, one line each, and
counted; so is every volume entry that fails authentication or that sealfs never writes
(Volume.listdir's problems), by its ciphertext path: those make the exit code 4
(integrity) instead of 1. Anything else (key access, config, the backend going away
before the tree is listed) is fatal and propagates to the CLI's exit-code mapping.
"""

from __future__ import annotations

import contextlib
import errno
import fnmatch
import hashlib
import os
import stat as stat_module
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import trio

from ...backends.base import ForeignEntryError, Snapshot
from ...crypto.format.header import Kind
from ...errors import IntegrityError, UsageError
from ..core.volume import Attr, ListingProblem, OpenFile, Volume, split_path
from . import localfiles
from .xattrcopy import XattrCopier, at, volume_xattrs

COPY_BLOCK = 1024 * 1024
DEFAULT_JOBS = 4
TEMP_TAG = "sync."              # sync's volume temporaries: sealfs.tmp.sync.<random>
_PER_FILE_ERRORS = (OSError, IntegrityError)


@dataclass
class SyncOptions:
    path: str = "/"
    delete: bool = False
    dry_run: bool = False
    excludes: tuple[str, ...] = ()
    checksum: bool = False
    jobs: int = DEFAULT_JOBS
    xattrs: bool = True


@dataclass
class SyncStats:
    copied: int = 0
    bytes: int = 0
    deleted: int = 0
    unchanged: int = 0
    errors: int = 0
    #: the errors that were authentication failures (or entries planted in the store)
    integrity_errors: int = 0
    error_lines: list[str] = field(default_factory=list)
    #: entries whose xattrs changed without their content
    xattrs_updated: int = 0
    #: xattrs that could not be read or set (refused by the target, unsupported)
    warnings: int = 0

    @property
    def exit_code(self) -> int:
        """0, or 4 (integrity) when any entry failed authentication, else 1."""
        return 4 if self.integrity_errors else 1 if self.errors else 0

    def summary(self, verb: str = "sync") -> str:
        line = (f"{verb}: {self.copied} copied ({self.bytes} bytes), ")
        if verb == "sync":
            line += f"{self.deleted} deleted, "
        line += f"{self.unchanged} unchanged, {self.errors} errors"
        if self.xattrs_updated:
            line += f", {self.xattrs_updated} xattrs updated"
        return line + (f", {self.warnings} warnings" if self.warnings else "")


class Reporter:
    """Per-file error lines on stderr and, only on a TTY, a rich progress bar."""

    def __init__(self, verb: str, stream=None, progress: bool | None = None) -> None:
        self.verb = verb
        self.stream = stream if stream is not None else sys.stderr
        if progress is None:
            progress = bool(getattr(self.stream, "isatty", lambda: False)())
        self._progress = None
        self._task = None
        if progress:
            from rich.console import Console
            from rich.progress import (
                BarColumn,
                DownloadColumn,
                Progress,
                TextColumn,
                TimeRemainingColumn,
                TransferSpeedColumn,
            )
            self._progress = Progress(TextColumn(f"{verb}"), BarColumn(), DownloadColumn(),
                                      TransferSpeedColumn(), TimeRemainingColumn(),
                                      TextColumn("{task.fields[files]}"),
                                      console=Console(file=self.stream), transient=True)

    def __enter__(self) -> Reporter:
        if self._progress is not None:
            self._progress.start()
        return self

    def __exit__(self, *exc) -> None:
        if self._progress is not None:
            self._progress.stop()

    def start(self, total_bytes: int, files: int) -> None:
        if self._progress is not None:
            self._task = self._progress.add_task(self.verb, total=max(1, total_bytes),
                                                 files=f"0/{files} files")
            self._files = files
            self._done = 0

    def advance(self, nbytes: int) -> None:
        if self._progress is not None and self._task is not None:
            self._progress.advance(self._task, nbytes)

    def file_done(self) -> None:
        if self._progress is not None and self._task is not None:
            self._done += 1
            self._progress.update(self._task, files=f"{self._done}/{self._files} files")

    def problem(self, stats: SyncStats, vol: Volume, problem: ListingProblem) -> None:
        """A volume entry that failed authentication: an error named by its ciphertext path."""
        self.error(stats, vol.where_of(problem), IntegrityError(problem.reason))

    def line(self, text: str) -> None:
        if self._progress is not None:
            self._progress.console.print(text, markup=False, highlight=False)
        else:
            print(text, file=self.stream, flush=True)

    def error(self, stats: SyncStats, where: str, exc: BaseException) -> None:
        stats.errors += 1
        if isinstance(exc, (IntegrityError, ForeignEntryError)):
            stats.integrity_errors += 1
        text = f"{self.verb}: error: {where}: {_one_line(exc)}"
        stats.error_lines.append(text)
        self.line(text)


def _one_line(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


# -- helpers ------------------------------------------------------------------------------
def _vjoin(base: str, rel: str) -> str:
    parts = split_path(base) + split_path(rel)
    return "/" + "/".join(parts)


def _parent_rel(rel: str) -> str:
    return rel.rsplit("/", 1)[0] if "/" in rel else ""


def _depth(rel: str) -> int:
    return rel.count("/") + (1 if rel else 0)


def excluded(rel: str, is_dir: bool, patterns: tuple[str, ...]) -> bool:
    name = rel.rsplit("/", 1)[-1]
    for pattern in patterns:
        dir_only = pattern.endswith("/")
        pat = pattern.rstrip("/")
        if not pat or (dir_only and not is_dir):
            continue
        if "/" in pat:
            if fnmatch.fnmatchcase(rel, pat.lstrip("/")):
                return True
        elif fnmatch.fnmatchcase(name, pat):
            return True
    return False


def _kind_of_mode(mode: int) -> Kind | None:
    if stat_module.S_ISDIR(mode):
        return Kind.DIRECTORY
    if stat_module.S_ISREG(mode):
        return Kind.REGULAR
    if stat_module.S_ISLNK(mode):
        return Kind.SYMLINK
    return None


def scan_source(root: Path, excludes: tuple[str, ...], warn: Callable[[str], None]
                ) -> dict[str, os.stat_result]:
    """rel path -> lstat for everything below root (root itself is "")."""
    out: dict[str, os.stat_result] = {"": os.stat(root)}
    stack = [""]
    while stack:
        rel = stack.pop()
        try:
            with os.scandir(root / rel if rel else root) as it:
                entries = list(it)
        except OSError as exc:
            warn(f"{root / rel}: {_one_line(exc)}")
            continue
        for entry in entries:
            child = f"{rel}/{entry.name}" if rel else entry.name
            try:
                st = entry.stat(follow_symlinks=False)
            except OSError as exc:
                warn(f"{root / child}: {_one_line(exc)}")
                continue
            is_dir = stat_module.S_ISDIR(st.st_mode)
            if excluded(child, is_dir, excludes):
                continue
            if _kind_of_mode(st.st_mode) is None:
                warn(f"{root / child}: skipped (special file)")
                continue
            out[child] = st
            if is_dir:
                stack.append(child)
    return out


async def scan_volume(vol: Volume, base: str, excludes: tuple[str, ...],
                      on_problem: Callable[[ListingProblem], None] | None = None
                      ) -> dict[str, Attr]:
    """rel path -> Attr below base. Entries that fail authentication go to on_problem
    (unless excluded by name)."""
    out: dict[str, Attr] = {"": await vol.stat(base)}
    stack = [""]
    while stack:
        rel = stack.pop()
        listing = await vol.listdir(_vjoin(base, rel))
        for problem in listing.problems:
            child = f"{rel}/{problem.name}" if rel else problem.name
            if on_problem is not None and not (
                    child is not None and excluded(child, problem.bstat.is_dir, excludes)):
                on_problem(problem)
        for name, attr in listing:
            child = f"{rel}/{name}" if rel else name
            if excluded(child, attr.is_dir, excludes):
                continue
            out[child] = attr
            if attr.is_dir:
                stack.append(child)
    return out


async def _remove_tree(vol: Volume, path: str, reported: set[str] = frozenset()) -> int:
    """Remove a volume entry (recursively); the number of entries removed.

    Entries that fail authentication stay, with the directories that hold them; those
    not already in `reported` (backend paths) make it fail with an IntegrityError."""
    attr = await vol.stat(path)
    if not attr.is_dir:
        await vol.unlink(path)
        return 1
    count = 0
    tree = await vol.walk(path)
    keep = {prefix for p in tree.problems for prefix in _ancestors(p.parent)}
    for child, cattr in reversed(tree):
        if child in keep:
            continue
        await (vol.rmdir("/" + child) if cattr.is_dir else vol.unlink("/" + child))
        count += 1
    if not tree.problems:
        await vol.rmdir(path)
        return count + 1
    new = [p for p in tree.problems if p.bpath not in reported]
    if new:
        raise IntegrityError(f"{len(new)} entries below it failed authentication and were "
                             f"left in place, e.g. {vol.describe(new[0])}")
    return count


def _ancestors(rel: str) -> list[str]:
    """rel and every directory above it (volume paths without the leading "/")."""
    parts = split_path(rel)
    return ["/".join(parts[:i]) for i in range(1, len(parts) + 1)]


async def _sha256_local(path: Path) -> str:
    def run() -> str:
        h = hashlib.sha256()
        with localfiles.open_source(path) as fh:
            while block := fh.read(COPY_BLOCK):
                h.update(block)
        return h.hexdigest()
    return await trio.to_thread.run_sync(run)


async def _sha256_volume(vol: Volume, path: str) -> str:
    h = hashlib.sha256()
    f = await vol.open(path)
    try:
        offset = 0
        while block := await f.read(offset, COPY_BLOCK):
            h.update(block)
            offset += len(block)
    finally:
        await f.close()
    return h.hexdigest()


# -- sync ---------------------------------------------------------------------------------
async def sync_tree(vol: Volume, source: str | os.PathLike[str], opts: SyncOptions,
                    reporter: Reporter | None = None) -> SyncStats:
    root = Path(source)
    if not root.is_dir():
        raise UsageError(f"{root} is not a directory")
    reporter = reporter or Reporter("sync", progress=False)
    stats = SyncStats()
    base = _vjoin(opts.path, "")
    say = (lambda text: reporter.line(f"sync: would {text}")) if opts.dry_run else (lambda text: None)

    # The destination directory (mkdir -p).
    parts = split_path(base)
    for i in range(1, len(parts) + 1):
        sub = "/" + "/".join(parts[:i])
        try:
            if not (await vol.stat(sub)).is_dir:
                raise UsageError(f"{sub} exists in the volume and is not a directory")
        except FileNotFoundError:
            if opts.dry_run:
                say(f"create directory {sub}")
                break
            await vol.mkdir(sub, 0o755)

    src = scan_source(root, opts.excludes, lambda t: reporter.line(f"sync: warning: {t}"))
    xc = XattrCopier(lambda t: reporter.line(f"sync: warning: {t}")) if opts.xattrs else None
    reported: set[str] = set()

    def on_problem(problem: ListingProblem) -> None:
        reported.add(problem.bpath)
        reporter.problem(stats, vol, problem)

    try:
        dst = await scan_volume(vol, base, opts.excludes, on_problem)
    except FileNotFoundError:
        if not opts.dry_run:
            raise
        dst = {}

    # 1. Leftovers of an interrupted run: its temporaries (invisible, never a user's name).
    if not opts.dry_run:
        for rel in [rel for rel, attr in dst.items() if attr.is_dir]:
            with contextlib.suppress(FileNotFoundError):
                await vol.remove_temps(_vjoin(base, rel), TEMP_TAG)

    # 2. Deletions: --delete extras, and entries whose kind changes (file <-> directory).
    gone: list[str] = []
    for rel, attr in dst.items():
        if not rel:
            continue
        st = src.get(rel)
        if st is None:
            if opts.delete:
                gone.append(rel)
        elif attr.is_dir != stat_module.S_ISDIR(st.st_mode):
            gone.append(rel)
    gone.sort(key=_depth)
    removed_roots: list[str] = []
    for rel in gone:
        if any(rel.startswith(r + "/") for r in removed_roots):
            continue
        removed_roots.append(rel)
        if opts.dry_run:
            say(f"delete {_vjoin(base, rel)}")
            stats.deleted += sum(1 for r in dst if r == rel or r.startswith(rel + "/"))
            continue
        try:
            stats.deleted += await _remove_tree(vol, _vjoin(base, rel), reported)
        except _PER_FILE_ERRORS as exc:
            reporter.error(stats, _vjoin(base, rel), exc)
    for rel in removed_roots:
        for r in [r for r in dst if r == rel or r.startswith(rel + "/")]:
            del dst[r]

    # 3. Directories, parents first.
    dirs = sorted((rel for rel, st in src.items() if rel and stat_module.S_ISDIR(st.st_mode)),
                  key=_depth)
    failed_dirs: set[str] = set()
    for rel in dirs:
        if rel in dst:
            continue
        if _parent_rel(rel) in failed_dirs:
            failed_dirs.add(rel)
            continue
        st = src[rel]
        if opts.dry_run:
            say(f"create directory {_vjoin(base, rel)}")
            continue
        try:
            await vol.mkdir(_vjoin(base, rel), stat_module.S_IMODE(st.st_mode), st.st_uid, st.st_gid,
                            inherit=False)
        except _PER_FILE_ERRORS as exc:
            failed_dirs.add(rel)
            reporter.error(stats, str(root / rel), exc)

    # 4. Files and symlinks, at most opts.jobs at once.
    resolution = vol.backend.capabilities.time_resolution_ns
    todo = [(rel, st) for rel, st in src.items()
            if rel and not stat_module.S_ISDIR(st.st_mode) and _parent_rel(rel) not in failed_dirs]
    todo.sort(key=lambda item: item[0])
    reporter.start(sum(st.st_size for rel, st in todo
                       if _needs_copy_quick(st, dst.get(rel), opts.checksum, resolution)), len(todo))
    limiter = trio.CapacityLimiter(max(1, opts.jobs))

    async def one(rel: str, st: os.stat_result) -> None:
        async with limiter:
            try:
                await _sync_entry(vol, root, base, rel, st, dst.get(rel), opts, stats, reporter,
                                  say, xc)
            except _PER_FILE_ERRORS as exc:
                reporter.error(stats, str(root / rel), exc)
            finally:
                reporter.file_done()

    async with trio.open_nursery() as nursery:
        for rel, st in todo:
            nursery.start_soon(one, rel, st)

    # 5. Directory modes and times, deepest first (children changed them).
    if not opts.dry_run:
        for rel in sorted(["", *dirs], key=_depth, reverse=True):
            if rel in failed_dirs:
                continue
            st = src[rel]
            path = _vjoin(base, rel)
            try:
                attr = await vol.stat(path)
                mode = stat_module.S_IMODE(st.st_mode)
                if attr.mode != mode or attr.uid != st.st_uid or attr.gid != st.st_gid:
                    await vol.setattr(path, mode=mode, uid=st.st_uid, gid=st.st_gid)
                if xc is not None and await xc.entry_to_volume(vol, str(root / rel), path, attr) \
                        and rel in dst:
                    stats.xattrs_updated += 1
                if not same_time(attr.mtime_ns, st.st_mtime_ns, resolution):
                    await vol.setattr(path, atime_ns=st.st_atime_ns, mtime_ns=st.st_mtime_ns)
            except _PER_FILE_ERRORS as exc:
                reporter.error(stats, str(root / rel), exc)
    stats.warnings += xc.warnings if xc is not None else 0
    return stats


def _needs_copy_quick(st: os.stat_result, attr: Attr | None, checksum: bool,
                      resolution: int) -> bool:
    if attr is None or attr.size != st.st_size:
        return True
    return checksum or not same_time(attr.mtime_ns, st.st_mtime_ns, resolution)


def same_time(stored_ns: int, local_ns: int, resolution: int) -> bool:
    """Whether a time read back from the store is the local one: the store keeps times
    only to its resolution (100 ns on SMB and Azure Files), so ext4's nanoseconds come
    back cut, and an exact comparison would copy every file on every sync."""
    return stored_ns // resolution == local_ns // resolution


async def _sync_entry(vol: Volume, root: Path, base: str, rel: str, st: os.stat_result,
                      attr: Attr | None, opts: SyncOptions, stats: SyncStats,
                      reporter: Reporter, say: Callable[[str], None],
                      xc: XattrCopier | None = None) -> None:
    path = _vjoin(base, rel)
    local = root / rel
    resolution = vol.backend.capabilities.time_resolution_ns
    is_link = stat_module.S_ISLNK(st.st_mode)
    target = os.readlink(local) if is_link else None
    want_kind = Kind.SYMLINK if is_link else Kind.REGULAR
    same = False
    if attr is not None and attr.kind == want_kind:
        if is_link:
            same = same_time(attr.mtime_ns, st.st_mtime_ns, resolution) \
                and await vol.readlink(path) == target
        elif attr.size != st.st_size:
            same = False
        elif opts.checksum:
            same = await _sha256_local(local) == await _sha256_volume(vol, path)
        else:
            same = same_time(attr.mtime_ns, st.st_mtime_ns, resolution)
    if same:
        stats.unchanged += 1
        mode = stat_module.S_IMODE(st.st_mode)
        if not is_link and (attr.mode != mode or attr.uid != st.st_uid or attr.gid != st.st_gid):
            if opts.dry_run:
                say(f"change mode of {path}")
            else:
                await vol.setattr(path, mode=mode, uid=st.st_uid, gid=st.st_gid)
                if not same_time(attr.mtime_ns, st.st_mtime_ns, resolution):
                    await vol.setattr(path, atime_ns=st.st_atime_ns, mtime_ns=st.st_mtime_ns)
        if xc is not None and await xc.entry_to_volume(vol, str(local), path, attr,
                                                                opts.dry_run):
            stats.xattrs_updated += 1
            say(f"set xattrs of {path}")
        return
    if opts.dry_run:
        say(f"copy {local} -> {path}")
        stats.copied += 1
        stats.bytes += 0 if is_link else st.st_size
        return
    parent = _vjoin(base, _parent_rel(rel))
    fh = None if is_link else await trio.to_thread.run_sync(localfiles.open_source, local)
    # Read through the descriptor the content comes from (a symlink: its own, unfollowed).
    want = None if xc is None else xc.read_local(str(local) if fh is None else fh.fileno(),
                                                 str(local))
    temp = None
    written = 0
    try:
        if is_link:
            f, temp = await vol.create_temp(parent, 0o777, st.st_uid, st.st_gid, tag=TEMP_TAG,
                                            kind=Kind.SYMLINK, content=os.fsencode(target))
        else:
            f, temp = await vol.create_temp(parent, stat_module.S_IMODE(st.st_mode),
                                            st.st_uid, st.st_gid, tag=TEMP_TAG)
        try:
            if fh is not None:
                written = await _upload(f, fh, reporter)
            if want:
                await xc.write_volume(vol, path, want, {}, handle=f)
            await vol.setattr(path, atime_ns=st.st_atime_ns, mtime_ns=st.st_mtime_ns, handle=f)
        finally:
            await f.close()
        await vol.place_temp(temp, path)
    except BaseException:
        if temp is not None:
            with trio.CancelScope(shield=True), contextlib.suppress(Exception):
                await vol.discard_temp(temp)
        raise
    finally:
        if fh is not None:
            fh.close()
    stats.copied += 1
    stats.bytes += written


async def _upload(f: OpenFile, fh, reporter: Reporter) -> int:
    offset = 0
    while block := await trio.to_thread.run_sync(fh.read, COPY_BLOCK):
        await f.write(offset, block)
        offset += len(block)
        reporter.advance(len(block))
    return offset


# -- restore ------------------------------------------------------------------------------
def snapshot_metadata(vol: Volume, source: str | os.PathLike[str]) -> dict[str, str]:
    """What a post-sync snapshot is tagged with (see the module docstring)."""
    path = os.path.abspath(os.fspath(source)).encode("utf-8", "surrogateescape")
    return {"sealfs": "sync", "source": hashlib.sha256(path).hexdigest()[:32],
            "volume": vol.config.volume_id.hex(),
            "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}


async def snapshot_after_sync(vol: Volume, source: str | os.PathLike[str],
                              stats: SyncStats) -> Snapshot | None:
    """A snapshot of the store once everything synced is on it; none after any error."""
    if stats.errors:
        return None
    await vol.flush_all()
    return await vol.backend.create_snapshot(snapshot_metadata(vol, source))


async def restore_tree(vol: Volume, dest: str | os.PathLike[str], path: str = "/",
                       reporter: Reporter | None = None, jobs: int = DEFAULT_JOBS,
                       xattrs: bool = True) -> SyncStats:
    """Copy the volume tree at `path` into the local directory `dest` (created if needed).

    Files already present with the same size and mtime are left alone (their xattrs made
    the volume's). Each file appears under its name only once complete (temp name, then
    os.replace), with owner, mode, xattrs and ACLs, then times set on its descriptor.
    """
    reporter = reporter or Reporter("restore", progress=False)
    stats = SyncStats()
    base = _vjoin(path, "")
    root_attr = await vol.stat(base)
    if not root_attr.is_dir:
        raise UsageError(f"{base} is not a directory in the volume")
    entries = await scan_volume(vol, base, (),
                                lambda problem: reporter.problem(stats, vol, problem))
    root = Path(dest)
    root.mkdir(parents=True, exist_ok=True)
    # Everything below DST goes through descriptors and never follows a symlink: someone
    # who can write into DST cannot make this run write, chmod or chown outside it.
    root_fd = os.open(root, localfiles.DIR_FLAGS)
    try:
        xc = XattrCopier(lambda t: reporter.line(f"restore: warning: {t}")) if xattrs else None
        await _restore_into(vol, base, root, root_fd, entries, stats, reporter, jobs, xc)
        stats.warnings += xc.warnings if xc is not None else 0
    finally:
        os.close(root_fd)
    return stats


async def _restore_into(vol: Volume, base: str, root: Path, root_fd: int,
                        entries: dict[str, Attr], stats: SyncStats, reporter: Reporter,
                        jobs: int, xc: XattrCopier | None = None) -> None:
    chown = os.geteuid() == 0
    dirs = sorted((rel for rel, a in entries.items() if a.is_dir), key=_depth)
    failed: set[str] = set()
    for rel in dirs:
        if not rel:
            continue
        if _parent_rel(rel) in failed:
            failed.add(rel)
            continue
        try:
            parent_fd = localfiles.open_dir(root_fd, _parent_rel(rel))
            try:
                # Writable while we fill it; the real mode is set at the end.
                os.close(localfiles.make_dir(parent_fd, rel.rsplit("/", 1)[-1], 0o700))
            finally:
                os.close(parent_fd)
        except OSError as exc:
            failed.add(rel)
            reporter.error(stats, str(root / rel), exc)

    todo = sorted((rel, a) for rel, a in entries.items()
                  if not a.is_dir and _parent_rel(rel) not in failed)
    reporter.start(sum(a.size for _, a in todo if a.kind == Kind.REGULAR), len(todo))
    limiter = trio.CapacityLimiter(max(1, jobs))

    async def one(rel: str, attr: Attr) -> None:
        async with limiter:
            try:
                await _restore_entry(vol, base, root, root_fd, rel, attr, stats, reporter, chown,
                                     xc)
            except _PER_FILE_ERRORS as exc:
                reporter.error(stats, _vjoin(base, rel), exc)
            finally:
                reporter.file_done()

    async with trio.open_nursery() as nursery:
        for rel, attr in todo:
            nursery.start_soon(one, rel, attr)

    for rel in sorted(dirs, key=_depth, reverse=True):
        if rel in failed:
            continue
        attr = entries[rel]
        try:
            fd = localfiles.open_dir(root_fd, rel)
            try:
                if chown:
                    with contextlib.suppress(OSError):
                        os.fchown(fd, attr.uid, attr.gid)
                os.fchmod(fd, attr.mode & 0o7777)
                if xc is not None:      # last: a default ACL set earlier would be inherited
                    want = await volume_xattrs(vol, _vjoin(base, rel), attr.xattrs)
                    xc.write_local(fd, str(root / rel if rel else root), want)
                os.utime(fd, ns=(attr.atime_ns, attr.mtime_ns))
            finally:
                os.close(fd)
        except OSError as exc:
            reporter.error(stats, str(root / rel if rel else root), exc)


async def _restore_entry(vol: Volume, base: str, root: Path, root_fd: int, rel: str,
                         attr: Attr, stats: SyncStats, reporter: Reporter, chown: bool,
                         xc: XattrCopier | None = None) -> None:
    vpath = _vjoin(base, rel)
    if attr.kind not in (Kind.REGULAR, Kind.SYMLINK):
        reporter.line(f"restore: warning: {vpath}: skipped (special file)")
        return
    dir_fd = localfiles.open_dir(root_fd, _parent_rel(rel))
    try:
        await _restore_at(vol, vpath, dir_fd, rel.rsplit("/", 1)[-1], root / rel, attr,
                          stats, reporter, chown, xc)
    finally:
        os.close(dir_fd)


async def _restore_at(vol: Volume, vpath: str, dir_fd: int, name: str, local: Path,
                      attr: Attr, stats: SyncStats, reporter: Reporter, chown: bool,
                      xc: XattrCopier | None = None) -> None:
    lst = localfiles.lstat_at(dir_fd, name)
    if lst is not None and lst.st_mtime_ns == attr.mtime_ns:
        same = False
        if attr.kind == Kind.REGULAR and stat_module.S_ISREG(lst.st_mode) \
                and lst.st_size == attr.size:
            if stat_module.S_IMODE(lst.st_mode) != attr.mode & 0o7777:
                os.chmod(name, attr.mode & 0o7777, dir_fd=dir_fd, follow_symlinks=False)
            same = True
        elif attr.kind == Kind.SYMLINK and stat_module.S_ISLNK(lst.st_mode) \
                and os.readlink(name, dir_fd=dir_fd) == await vol.readlink(vpath):
            same = True
        if same:
            stats.unchanged += 1
            if xc is not None and await xc.entry_to_local(vol, vpath, attr, dir_fd, name,
                                                        str(local)):
                stats.xattrs_updated += 1
            return
    if lst is not None and stat_module.S_ISDIR(lst.st_mode):
        raise IsADirectoryError(errno.EISDIR, "a directory is in the way", str(local))
    owner = (attr.uid, attr.gid) if chown else None
    written = 0
    want = await volume_xattrs(vol, vpath, attr.xattrs) if xc is not None else None

    def set_xattrs(target: int | str) -> None:
        if xc is not None:
            xc.write_local(target, str(local), want)

    if attr.kind == Kind.SYMLINK:
        localfiles.place_symlink(dir_fd, name, await vol.readlink(vpath),
                                 attr.atime_ns, attr.mtime_ns, owner,
                                 lambda tmp: set_xattrs(at(dir_fd, tmp)))
    else:
        written = await _download(vol, vpath, dir_fd, name, attr, owner, reporter, set_xattrs)
    stats.copied += 1
    stats.bytes += written


async def _download(vol: Volume, vpath: str, dir_fd: int, name: str, attr: Attr,
                    owner: tuple[int, int] | None, reporter: Reporter,
                    set_xattrs: Callable[[int], None] | None = None) -> int:
    f = await vol.open(vpath)
    try:
        new = await trio.to_thread.run_sync(localfiles.NewFile, dir_fd)
        try:
            offset = 0
            while block := await f.read(offset, COPY_BLOCK):
                await trio.to_thread.run_sync(new.file.write, block)
                offset += len(block)
                reporter.advance(len(block))
            await trio.to_thread.run_sync(new.place, name, attr.mode, attr.atime_ns,
                                          attr.mtime_ns, owner, set_xattrs)
        except BaseException:
            new.discard()
            raise
    finally:
        await f.close()
    return offset
