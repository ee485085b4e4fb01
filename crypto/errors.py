"""The sealfs exception hierarchy above the storage layer.

Backends raise OSError (with a meaningful errno) because that is the vocabulary of
storage; everything that concerns keys, format and integrity raises a SealfsError.
fs/errors.py maps both to errno values for FUSE and to exit codes for the CLI.
"""

from __future__ import annotations


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
