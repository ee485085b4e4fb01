"""The sealfs exception hierarchy, and the one place that maps it to errno values
(FUSE) and to one-line messages and exit codes (CLI).

Backends raise OSError (with a meaningful errno) because that is the vocabulary of
storage; everything that concerns keys, format and integrity raises a SealfsError.
"""

from __future__ import annotations

import errno


class SealfsError(Exception):
    """Base of every error sealfs reports on purpose (one clear line, no traceback)."""

    exit_code = 1


class UsageError(SealfsError):
    """The user asked for something that cannot work as asked."""

    exit_code = 2


class ConfigError(SealfsError):
    """The volume config (sealfs.json) or a local config file is missing or malformed."""

    exit_code = 3


class IntegrityError(SealfsError):
    """Authentication failed: ciphertext, header, name or config was modified or damaged."""

    exit_code = 4


class KeyAccessError(SealfsError):
    """A key could not be obtained: wrong passphrase or keyfile, KMS refusal or outage."""

    exit_code = 5


class PinMismatchError(SealfsError):
    """The volume config differs from the one pinned on first use (possible substitution)."""

    exit_code = 6


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
