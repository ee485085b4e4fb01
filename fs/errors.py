"""One place that turns exceptions into errno values (FUSE) and one-line messages (CLI)."""

from __future__ import annotations

import errno

from ..crypto.errors import IntegrityError, KeyAccessError, SealfsError

EXIT_OK = 0
EXIT_ERROR = 1          # I/O and other runtime errors
EXIT_INTERRUPTED = 130


def errno_of(exc: BaseException) -> int:
    """The errno a FUSE request fails with."""
    if isinstance(exc, OSError) and exc.errno:
        return exc.errno
    if isinstance(exc, IntegrityError):
        return errno.EIO
    if isinstance(exc, KeyAccessError):
        return errno.EACCES
    return errno.EIO


def exit_code_of(exc: BaseException) -> int:
    if isinstance(exc, SealfsError):
        return exc.exit_code
    if isinstance(exc, KeyboardInterrupt):
        return EXIT_INTERRUPTED
    return EXIT_ERROR


def one_line(exc: BaseException) -> str:
    """A single line for stderr: what failed and why, never a traceback or a secret."""
    if isinstance(exc, OSError) and exc.strerror:
        where = f": {exc.filename}" if exc.filename else ""
        return f"{exc.strerror}{where}"
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def first_error(exc: BaseException) -> BaseException:
    """Trio nurseries (parallel crypto and I/O) wrap errors in exception groups: the first
    real error is what the user needs to hear about."""
    while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        exc = exc.exceptions[0]
    return exc
