"""One rule for every file that holds a secret: only its owner may read it.

Keyfiles, passphrase files, PKCS#11 PIN files and SMB password files are all read
through read_secret_file(), which refuses a file that its group or others can read
(exit 2, one line naming the file and the fix). The mode is checked on the opened
descriptor, so a file swapped between the check and the read is still checked.

Exception: systemd credentials ($CREDENTIALS_DIRECTORY, LoadCredential=). systemd
places them in a per-service directory only the service can enter, whatever their
own mode bits say, so their mode is not ours to judge.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from ...errors import KeyAccessError, UsageError
from ..secmem import SecretBuffer, secret

_MAX_SECRET_FILE = 64 * 1024     # a passphrase, a PIN, a password or a 32-byte key


class SecretFileModeError(UsageError):
    """A secret file readable by group or others: refused before a byte is read."""


def _in_credentials_dir(path: Path) -> bool:
    base = os.environ.get("CREDENTIALS_DIRECTORY")
    if not base:
        return False
    try:
        return Path(path).resolve().parent == Path(base).resolve()
    except OSError:
        return False


def check_private(path: Path, st: os.stat_result, what: str) -> None:
    """Refuse a secret file that group or others can read (systemd credentials excepted)."""
    if st.st_mode & (stat.S_IRGRP | stat.S_IROTH) \
            and not _in_credentials_dir(path):
        who = " and ".join(w for w, bit in (("group", stat.S_IRGRP), ("others", stat.S_IROTH))
                           if st.st_mode & bit)
        raise SecretFileModeError(f"{what} {path} is readable by {who}: run `chmod 600 {path}`")


def _open_checked(path: Path, what: str) -> int:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        raise KeyAccessError(f"{what} {path} does not exist") from None
    except OSError as exc:
        raise KeyAccessError(f"cannot read {what} {path}: {exc.strerror}") from None
    try:
        st = os.fstat(fd)
        if stat.S_ISDIR(st.st_mode):
            raise KeyAccessError(f"{what} {path} is a directory")
        check_private(path, st, what)
    except BaseException:
        os.close(fd)
        raise
    return fd


def read_key_file(path: Path | str, size: int) -> SecretBuffer:
    """A keyfile of exactly size bytes, read straight into locked memory (no Python copy)."""
    path = Path(path)
    fd = _open_checked(path, "keyfile")
    key = secret(size)
    try:
        got = 0
        while got < size and (n := os.readv(fd, [key.view[got:]])):
            got += n
        extra = len(os.read(fd, 4096)) if got == size else 0
    except OSError as exc:
        key.wipe()
        raise KeyAccessError(f"cannot read keyfile {path}: {exc.strerror}") from None
    finally:
        os.close(fd)
    if got + extra != size:
        key.wipe()
        raise KeyAccessError(f"keyfile {path} must hold exactly {size} bytes, it has "
                             f"{got + extra}{' or more' if extra else ''}")
    return key


def read_secret_file(path: Path | str, what: str) -> bytes:
    """The whole content of a secret file, after checking its mode on the open descriptor."""
    path = Path(path)
    fd = _open_checked(path, what)
    try:
        chunks = []
        total = 0
        while chunk := os.read(fd, 4096):
            chunks.append(chunk)
            total += len(chunk)
            if total > _MAX_SECRET_FILE:
                raise KeyAccessError(f"{what} {path} is too large to be a {what}")
        return b"".join(chunks)
    except OSError as exc:
        raise KeyAccessError(f"cannot read {what} {path}: {exc.strerror}") from None
    finally:
        os.close(fd)
