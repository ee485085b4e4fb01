"""Every constant of the on-storage format, in one place (docs/FORMAT.md explains them)."""

from __future__ import annotations

FORMAT_VERSION = 2                    # the store's format (sealfs.json "version")
FILE_FORMAT_VERSION = 1               # file headers and chunk AADs: unchanged since format 1
DIR_RECORD_VERSION = 2                # directory records: the dir id sealed since format 2
MAGIC = b"SEALFS"                     # first bytes of every file header

CONFIG_NAME = "sealfs.json"           # volume config at the store root
DIR_META_NAME = "sealfs.dir"          # a directory's record (sealed id + metadata), in its stub
STORAGE_DIR = "d"                     # at the store root: every directory's storage, by locator
XATTR_DIR = "x"                       # at the store root: every inode's sealed xattr blob, by locator
LOCATOR_CHARS = 32                    # base32 characters of a locator (160 bits)
LOCATOR_SPLIT = 2                     # d/<first 2>/<other 30>: at most 1024 fan-out directories
LONGNAME_PREFIX = "sealfs.ln."        # hashed long-name entries; sidecar adds ".name"
LONGNAME_SIDECAR_SUFFIX = ".name"
TEMP_PREFIX = "sealfs.tmp."           # in-flight creations, renamed into place
HIDDEN_PREFIX = "sealfs.del."         # NFS-style hidden victims of unlink-while-open
JOURNAL_DIR = "sealfs.journal"        # at the store root: journals of in-place chunk rewrites
RESERVED_PREFIX = "sealfs."           # no encoded name starts with this (base32 has no '.')

KEY_SIZE = 32                         # AES-256
NONCE_SIZE = 12                       # GCM nonce
TAG_SIZE = 16                         # GCM / SIV tag
FILE_ID_SIZE = 16
DIR_ID_SIZE = 16
CHUNK_OVERHEAD = NONCE_SIZE + TAG_SIZE

MIN_CHUNK_SIZE = 4 * 1024
MAX_CHUNK_SIZE = 4 * 1024 * 1024
DEFAULT_CHUNK_SIZE = 64 * 1024

NAME_PAD = 16                         # plaintext names are zero-padded to a multiple of this
MAX_NAME_BYTES = 255                  # POSIX NAME_MAX for plaintext names
MAX_SHORT_ENCODED_NAME = 255          # longer encodings take the long-name form

# HKDF info strings (the key hierarchy)
INFO_FILE = b"sealfs/v1/file"
INFO_NAMES = b"sealfs/v1/names"
INFO_CONFIG = b"sealfs/v1/config"
INFO_DIRS = b"sealfs/v1/dirs"
INFO_PIN = b"sealfs/v1/pin"
INFO_LOCATOR = b"sealfs/v2/locator"
INFO_XATTRS = b"sealfs/v2/xattrs"

# AAD prefixes
CHUNK_AAD_PREFIX = b"sealfs"
DIR_AAD_PREFIX = b"sealfs.dir"
XATTR_AAD_PREFIX = b"sealfs.xattr"

# Extended attributes (one sealed blob per inode): Linux's limits, and what one inode holds
XATTR_BLOB_VERSION = 2
XATTR_NAME_MAX = 255                  # bytes of a name (Linux XATTR_NAME_MAX)
XATTR_VALUE_MAX = 64 * 1024           # bytes of one value (Linux XATTR_SIZE_MAX)
XATTR_TOTAL_MAX = 384 * 1024          # payload bytes of one inode: 256 KiB of values and their names fit
META_FLAG_XATTRS = 0x01               # sealed metadata flags: the inode has an xattr blob

# scrypt defaults for passphrase KEKs: 128 MiB (128*N*r bytes) and a fraction of a second
# of one core, once per mount or command that unwraps with a passphrase
SCRYPT_N = 1 << 17
SCRYPT_R = 8
SCRYPT_P = 1
SCRYPT_SALT_SIZE = 32
# What a reader will run before the config MAC can be checked (the parameters come from
# sealfs.json, i.e. from the store). 128*N*r bytes of memory and p*N*r units of work:
# 1 GiB and 8x the default's work, the most `sealfs init` can write (N = 2^20, r = 8, p = 1).
SCRYPT_MAX_MEMORY = 1 << 30
SCRYPT_MAX_WORK = 8 * SCRYPT_P * SCRYPT_N * SCRYPT_R
