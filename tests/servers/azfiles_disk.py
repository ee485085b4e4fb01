"""The Azure Files test server's shares, kept on disk (tests/servers/azfiles.py).

A share is a directory: its files are real files and its directories real directories,
so a test can reach a store's ciphertext and tamper with it as it does on a local or an
SMB store. What Azure keeps beside the bytes (creation and change times, attributes, an
ETag token) lives in one extended attribute per entry, never as an entry of its own. The
last-write time of a file is its mtime (set to the 100 ns the request gave), and the
attribute records that mtime: an mtime that differs says the bytes were changed outside
the server, whose times and ETag then follow the file as a server would see them.

Names are case-insensitive and case-preserving, as on Azure Files: a lookup takes the
name as given when it exists, else the entry whose name matches it ignoring case. Only
regular files and directories exist for the service: a symlink, FIFO or socket a test
plants is neither listed nor followed.
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
import time
from dataclasses import dataclass, field
from pathlib import Path

META = "user.sealfs-azfiles"


def now_ns() -> int:
    return time.time_ns() // 100 * 100


def _read_meta(path: Path) -> dict:
    try:
        return json.loads(os.getxattr(path, META, follow_symlinks=False))
    except (OSError, ValueError):
        return {}


@dataclass
class Node:
    """An entry of a share as the service sees it; save() keeps its properties."""

    path: Path
    is_dir: bool
    size: int
    created: int
    written: int
    changed: int
    modified: int              # Last-Modified (REST): the last change of anything
    etag: str
    file_id: int
    attributes: str
    fixed_id: int | None = None     # a snapshot's copy keeps its original's id

    @property
    def name(self) -> str:
        return self.path.name

    @classmethod
    def load(cls, path: Path, st: os.stat_result | None = None) -> Node:
        st = st or os.lstat(path)
        is_dir = stat.S_ISDIR(st.st_mode)
        meta = _read_meta(path)
        own = bool(meta) and (is_dir or meta.get("w") == st.st_mtime_ns)
        if own:
            created, written, changed = meta["c"], meta["w"], meta["ch"]
        else:       # made or rewritten outside the server
            created, written, changed = meta.get("c", st.st_mtime_ns), st.st_mtime_ns, st.st_ctime_ns
        token = meta.get("t", "")
        tag = hashlib.sha256(f"{token}|{st.st_ino}|{st.st_size}|{st.st_mtime_ns}|{own}".encode()).hexdigest()
        return cls(path, is_dir, 0 if is_dir else st.st_size, created, written, changed, st.st_ctime_ns,
                   f'"0x{tag[:14].upper()}"', meta.get("id", st.st_ino),
                   meta.get("a") or ("Directory" if is_dir else "Archive"), meta.get("id"))

    def save(self) -> None:
        """Record the times and attributes with a new ETag token (each change moves it)."""
        if not self.is_dir:
            st = os.lstat(self.path)
            os.utime(self.path, ns=(st.st_atime_ns, self.written), follow_symlinks=False)
        meta = {"c": self.created, "w": self.written, "ch": self.changed, "a": self.attributes,
                "t": os.urandom(6).hex()}
        if self.fixed_id is not None:
            meta["id"] = self.fixed_id
        os.setxattr(self.path, META, json.dumps(meta).encode(), follow_symlinks=False)
        fresh = Node.load(self.path)
        self.modified, self.etag, self.size = fresh.modified, fresh.etag, fresh.size

    # -- bytes ---------------------------------------------------------------------------
    def read(self, start: int, end: int) -> bytes:
        """Bytes start..end inclusive."""
        with open(self.path, "rb") as f:
            f.seek(start)
            return f.read(end - start + 1)

    def write(self, start: int, data: bytes) -> None:
        fd = os.open(self.path, os.O_WRONLY | os.O_NOFOLLOW)
        try:
            os.pwrite(fd, data, start)
        finally:
            os.close(fd)

    def resize(self, size: int) -> None:
        os.truncate(self.path, size)
        self.size = size


def _is_entry(st: os.stat_result) -> bool:
    return stat.S_ISDIR(st.st_mode) or stat.S_ISREG(st.st_mode)


@dataclass
class Share:
    """A share or a share snapshot: its service-level properties and its directory."""

    name: str
    root: Path
    quota: int = 5120
    metadata: dict[str, str] = field(default_factory=dict)
    snapshot: str = ""
    created: int = field(default_factory=now_ns)
    etag: str = field(default_factory=lambda: f'"0x{os.urandom(7).hex().upper()}"')

    # -- lookups -------------------------------------------------------------------------
    def find(self, rel: str) -> Path | None:
        """The entry at rel ("" = the root), its name's case as stored; None if missing."""
        path = self.root
        parts = [p for p in rel.split("/") if p]
        for i, part in enumerate(parts):
            path = self._child(path, part)
            if path is None:
                return None
            try:
                st = os.lstat(path)
            except OSError:
                return None
            if not _is_entry(st) or (i < len(parts) - 1 and not stat.S_ISDIR(st.st_mode)):
                return None
        return path

    @staticmethod
    def _child(parent: Path, name: str) -> Path | None:
        if name in (".", ".."):
            return None
        exact = parent / name
        if os.path.lexists(exact):
            return exact
        low = name.lower()
        try:
            names = os.listdir(parent)
        except OSError:
            return None
        return next((parent / n for n in names if n.lower() == low), None)

    def get(self, rel: str) -> Node | None:
        path = self.find(rel)
        return Node.load(path) if path is not None else None

    def children(self, node: Node) -> list[Node]:
        out = []
        with os.scandir(node.path) as it:
            for entry in it:
                st = entry.stat(follow_symlinks=False)
                if _is_entry(st):
                    out.append(Node.load(Path(entry.path), st))
        return out

    def has_entries(self, node: Node) -> bool:
        """Anything at all in the directory (an entry the service does not show included)."""
        with os.scandir(node.path) as it:
            return any(True for _ in it)

    # -- changes -------------------------------------------------------------------------
    def new_node(self, path: Path) -> Node:
        """A just-made entry with every time now (the request's headers may set them)."""
        node = Node.load(path)
        t = now_ns()
        node.created = node.written = node.changed = t
        node.fixed_id = None
        node.save()
        return node

    def mkdir(self, parent: Node, name: str) -> Node:
        os.mkdir(parent.path / name)
        return self.new_node(parent.path / name)

    def create_file(self, parent: Node, name: str, existing: Node | None, size: int, tmp_dir: Path) -> Node:
        """A new file (a new id) in place of any file of that name, made aside then moved
        in, so no half-made entry is ever listed."""
        tmp = tmp_dir / f"new-{os.urandom(8).hex()}"
        with open(tmp, "wb") as f:
            f.truncate(size)
        target = existing.path if existing is not None else parent.path / name
        os.replace(tmp, target)
        return self.new_node(target)

    def used_bytes(self) -> int:
        return sum(os.lstat(Path(d, f)).st_size for d, _dirs, files in os.walk(self.root) for f in files)

    def file_bytes(self) -> list[bytes]:
        return [Path(d, f).read_bytes() for d, _dirs, files in os.walk(self.root) for f in files
                if stat.S_ISREG(os.lstat(Path(d, f)).st_mode)]

    def copy_to(self, root: Path) -> None:
        """A snapshot's tree: the same bytes, times, attributes and file ids."""
        _copy_tree(self.root, root)


def _copy_tree(src: Path, dst: Path) -> None:
    os.mkdir(dst)
    with os.scandir(src) as it:
        for entry in it:
            st = entry.stat(follow_symlinks=False)
            if stat.S_ISDIR(st.st_mode):
                _copy_tree(Path(entry.path), dst / entry.name)
            elif stat.S_ISREG(st.st_mode):
                (dst / entry.name).write_bytes(Path(entry.path).read_bytes())
            else:
                continue
            _copy_node(Node.load(Path(entry.path), st), dst / entry.name)
    _copy_node(Node.load(src), dst)


def _copy_node(orig: Node, path: Path) -> None:
    node = Node.load(path)
    node.created, node.written, node.changed, node.attributes = (orig.created, orig.written, orig.changed,
                                                                 orig.attributes)
    node.fixed_id = orig.file_id
    node.save()
