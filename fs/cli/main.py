"""The `sealfs` command line. Every failure is one line on stderr and a documented exit code.

Exit codes: 0 success; 1 I/O or runtime error; 2 usage; 3 config; 4 integrity
(tampered or damaged data); 5 key access (wrong key, KMS refusal or outage);
6 volume pin mismatch; 130 interrupted.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import stat as stat_module
import sys
from collections.abc import AsyncIterator, Callable
from datetime import datetime
from pathlib import Path

import click
import trio

from ...backends.base import Backend
from ...backends.registry import BackendOptions, open_backend
from ...crypto.format.config import validate_chunk_size
from ...crypto.format.constants import CONFIG_NAME, DEFAULT_CHUNK_SIZE, DIR_META_NAME, SCRYPT_P, SCRYPT_R
from ...crypto.format.kdf import pin_fingerprint
from ...crypto.keys.audit import AuditLog
from ...crypto.keys.broker import harden_process
from ...crypto.keys.kms import provider_for_init
from ...crypto.keys.kms_local import scrypt_problem
from ...errors import ConfigError, SealfsError, UsageError, exit_code_of, first_error, one_line
from ..core.pins import PinStore
from ..core.volume import Attr, ListingProblem, Volume, VolumeTuning
from ..tools import localfiles
from .config_file import VolumeConfigFile, load_config_file, secret_files
from .keysource import azure_secret_source, resolve_secrets, smb_password_source
from .malloc import limit_malloc_arenas, reuse_large_buffers
from .report import fail_on_problems
from .units import format_size, parse_size

log = logging.getLogger("sealfs")
COPY_BLOCK = 1024 * 1024


class Context:
    """Options shared by every command that opens a store."""

    def __init__(self) -> None:
        self.debug = False
        self.keyfile: str | None = None
        self.passphrase_file: str | None = None
        self.config: VolumeConfigFile | None = None
        self.smb_password_file: str | None = None
        self.smb_require_aes256 = False
        self.azure_sas_file: str | None = None
        self.azure_account_key_file: str | None = None
        self.audit_log: str | None = None
        self.snapshot: str | None = None      # --snapshot: the store read-only at this snapshot

    def audit(self) -> AuditLog:
        """--audit-log, else the config file's audit_log, else SEALFS_AUDIT_LOG (or none)."""
        if self.audit_log:
            return AuditLog(self.audit_log)
        if self.config is not None and self.config.audit_log:
            return AuditLog(self.config.audit_log)
        return AuditLog()

    def secrets(self, confirm: bool = False, options: dict | None = None):
        files = secret_files(self.config)     # systemd credentials, then the config file
        return resolve_secrets(
            self.keyfile, self.passphrase_file, confirm_prompt=confirm, options=options,
            config_keyfile=str(files.keyfile) if files and files.keyfile else None,
            config_passphrase_file=str(files.passphrase_file) if files and files.passphrase_file else None)

    def positionals(self, *values: str | None, required: int) -> list[str | None]:
        """STORE first; with --config, STORE comes from the file and may be omitted."""
        given = [v for v in values if v is not None]
        if self.config is not None and (len(given) < len(values) or not given):
            given = [self.config.store, *given]
        given += [None] * (len(values) - len(given))
        missing = [i for i in range(required) if given[i] is None]
        if missing:
            raise UsageError("missing STORE" + (" and other arguments" if missing != [0] else "")
                             + " (or give --config NAME)")
        return given

    def tuning(self) -> VolumeTuning:
        tuning = VolumeTuning()
        if self.config is not None:
            if self.config.chunk_cache:
                tuning.cache_bytes = self.config.chunk_cache
            if self.config.dirty_limit:
                tuning.dirty_bytes = self.config.dirty_limit
        return tuning

    def backend(self, store: str) -> Backend:
        files = secret_files(self.config) if self.config is not None else None
        password = smb_password_source(
            self.smb_password_file,
            str(files.smb_password_file) if files and files.smb_password_file else None)
        extra = {"smb_require_aes256": True} if self.smb_require_aes256 else {}
        sas = azure_secret_source(self.azure_sas_file, "SEALFS_AZURE_SAS",
                                  str(files.azure_sas_file) if files and files.azure_sas_file else None,
                                  "Azure SAS")
        account_key = azure_secret_source(
            self.azure_account_key_file, "SEALFS_AZURE_ACCOUNT_KEY",
            str(files.azure_account_key_file) if files and files.azure_account_key_file else None,
            "Azure account key")
        try:
            return open_backend(store, BackendOptions(smb_password=password, azure_sas=sas,
                                                      azure_account_key=account_key, extra=extra,
                                                      snapshot=self.snapshot))
        except ValueError as exc:
            raise UsageError(str(exc)) from None


def key_options(fn: Callable) -> Callable:
    """--keyfile / --passphrase-file / --config, accepted by every command."""
    @click.option("--keyfile", type=click.Path(dir_okay=False), default=None,
                  help="32-byte keyfile (local KEK). Env: SEALFS_KEYFILE.")
    @click.option("--passphrase-file", type=click.Path(dir_okay=False), default=None,
                  help="File holding the passphrase (local KEK). Env: SEALFS_PASSPHRASE.")
    @click.option("--config", "config_name", default=None, metavar="NAME|PATH",
                  help="Volume config file (/etc/sealfs/NAME.toml): STORE, MOUNTPOINT, keys, options.")
    @click.option("--smb-password-file", type=click.Path(dir_okay=False), default=None,
                  help="File holding the SMB password (smb:// stores). Env: SEALFS_SMB_PASSWORD.")
    @click.option("--smb-require-aes256", is_flag=True, default=False,
                  help="Refuse SMB servers that do not negotiate AES-256-GCM.")
    @click.option("--azure-sas-file", type=click.Path(dir_okay=False), default=None,
                  help="File holding a SAS token (https:// Azure Files stores; spr=https). "
                       "Env: SEALFS_AZURE_SAS.")
    @click.option("--azure-account-key-file", type=click.Path(dir_okay=False), default=None,
                  help="File holding the storage account key (grants the whole account). "
                       "Env: SEALFS_AZURE_ACCOUNT_KEY.")
    @click.option("--audit-log", type=click.Path(dir_okay=False), default=None,
                  help="Append one JSON line per key operation here. Env: SEALFS_AUDIT_LOG.")
    @functools.wraps(fn)
    def wrapper(*args, keyfile=None, passphrase_file=None, config_name=None,
                smb_password_file=None, smb_require_aes256=False, audit_log=None,
                azure_sas_file=None, azure_account_key_file=None, **kwargs):
        ctx = click.get_current_context().find_object(Context)
        if audit_log:
            ctx.audit_log = audit_log
        if smb_password_file:
            ctx.smb_password_file = smb_password_file
        if smb_require_aes256:
            ctx.smb_require_aes256 = True
        if azure_sas_file:
            ctx.azure_sas_file = azure_sas_file
        if azure_account_key_file:
            ctx.azure_account_key_file = azure_account_key_file
        if keyfile:
            ctx.keyfile = keyfile
        if passphrase_file:
            ctx.passphrase_file = passphrase_file
        if config_name:
            ctx.config = load_config_file(config_name)
        return fn(*args, **kwargs)
    return wrapper


def snapshot_option(fn: Callable) -> Callable:
    """--snapshot ID: open the store read-only as it was in that snapshot."""
    @click.option("--snapshot", "snapshot", default=None, metavar="ID",
                  help="Read the volume as it was in this snapshot (read-only; ids from "
                       "`sealfs snapshot list`). It opens with the key that wrapped it then.")
    @functools.wraps(fn)
    def wrapper(*args, snapshot=None, **kwargs):
        if snapshot:
            click.get_current_context().find_object(Context).snapshot = snapshot
        return fn(*args, **kwargs)
    return wrapper


def _ctx() -> Context:
    return click.get_current_context().find_object(Context)


def run(async_fn: Callable, *args) -> None:
    """Every command, the mount too, moves data through megabyte buffers (fs/cli/malloc.py),
    and may unwrap keys: no core dumps, no ptrace by peers, before any key is read."""
    harden_process()
    reuse_large_buffers()
    trio.run(async_fn, *args)


@contextlib.asynccontextmanager
async def opened_volume(store: str) -> AsyncIterator[Volume]:
    ctx = click.get_current_context().find_object(Context)
    volume = await Volume.load(ctx.backend(store), ctx.secrets(), pins=PinStore(),
                               tuning=ctx.tuning(), audit=ctx.audit())
    try:
        yield volume
    finally:
        await volume.close()


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--debug", is_flag=True, help="Show tracebacks and debug logs.")
@click.option("-v", "--verbose", is_flag=True, help="Informational logs on stderr.")
@click.version_option(package_name="sealfs")
@click.pass_context
def cli(click_ctx: click.Context, debug: bool, verbose: bool) -> None:
    """sealfs: a transparent encrypting filesystem (AES-256-GCM chunks, wrapped keys)."""
    ctx = click_ctx.ensure_object(Context)
    ctx.debug = debug
    logging.basicConfig(level=logging.DEBUG if debug else logging.INFO if verbose else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    if not debug:   # client libraries narrate every request at INFO
        for noisy in ("smbprotocol", "spnego", "azure", "urllib3", "pkcs11"):
            logging.getLogger(noisy).setLevel(logging.WARNING)


@cli.command()
@click.argument("store", required=False)
@click.option("--chunk-size", default=format_size(DEFAULT_CHUNK_SIZE), show_default=True,
              help="Chunk size, a power of two from 4K to 4M.")
@click.option("--kek", default=None, help="KEK URI: https://VAULT.vault.azure.net/keys/NAME or pkcs11:...")
@click.option("--scrypt-n", type=int, default=None, hidden=True,
              help="scrypt cost for passphrase volumes (tests use a small one).")
@click.option("--allow-purgeable-kek", is_flag=True,
              help="Accept a Key Vault key that can be purged (deleting it loses all data).")
@key_options
def init(store: str, chunk_size: str, kek: str | None, scrypt_n: int | None,
         allow_purgeable_kek: bool) -> None:
    """Create a new encrypted volume in STORE (a local directory)."""
    store = _ctx().positionals(store, required=1)[0]
    ctx = click.get_current_context().find_object(Context)
    size = _init_chunk_size(chunk_size)
    if scrypt_n is not None and (problem := scrypt_problem(scrypt_n, SCRYPT_R, SCRYPT_P)):
        raise UsageError(f"--scrypt-n: {problem}")
    if ctx.keyfile is None and ctx.passphrase_file is None and kek is None \
            and not os.environ.get("SEALFS_KEYFILE") and not os.environ.get("SEALFS_PASSPHRASE") \
            and not sys.stdin.isatty():
        raise UsageError("init needs --keyfile FILE, --passphrase-file FILE or --kek URI")
    options = {"scrypt_n": scrypt_n} if scrypt_n else {}
    secrets = resolve_secrets(ctx.keyfile, ctx.passphrase_file, confirm_prompt=True, options=options)
    backend = ctx.backend(store)

    async def main() -> None:
        try:
            # Reaches the store first: a busy or unreachable store fails before a key exists.
            await _refuse_existing_volume(backend)
            new_keyfile = secrets.keyfile if secrets.keyfile and not secrets.keyfile.exists() else None
            provider = provider_for_init(kek or (ctx.config.kek if ctx.config else None), secrets)
            try:
                await backend.make_root()
                config = await Volume.init(backend, provider, chunk_size=size, pins=PinStore(),
                                           audit=ctx.audit(), allow_purgeable=allow_purgeable_kek)
            except BaseException:
                await _remove_unused_keyfile(backend, new_keyfile)
                raise
            finally:
                provider.close()
            soft_delete = await backend.soft_delete()
        finally:
            await backend.aclose()
        click.echo(f"created volume {config.volume_id.hex()} in {backend.location} "
                   f"(chunk size {format_size(config.chunk_size)}, KEK {provider.kek_id})")
        if soft_delete is not None and not soft_delete.enabled:
            advice = ("a deleted share cannot be recovered: turn it on for the storage account"
                      if soft_delete.enabled is False else "check that it is on for the storage account")
            click.echo(f"sealfs: warning: share soft delete is {soft_delete.describe()}; {advice}", err=True)
    run(main)


def _init_chunk_size(text: str) -> int:
    """--chunk-size as bytes; a bad one is a usage error found before anything is created."""
    try:
        size = parse_size(text)
        validate_chunk_size(size)
    except (ValueError, ConfigError) as exc:
        raise UsageError(f"--chunk-size: {exc}") from None
    return size


async def _refuse_existing_volume(backend: Backend) -> None:
    try:
        await backend.stat(CONFIG_NAME)
    except FileNotFoundError:
        return
    raise UsageError(f"{backend.location} already holds a sealfs volume")


async def _remove_unused_keyfile(backend: Backend, keyfile: Path | None) -> None:
    """Delete the keyfile this init created, but only while the store holds nothing of the
    volume (neither sealfs.dir nor sealfs.json): then the key protects nothing."""
    if keyfile is None:
        return
    for name in (DIR_META_NAME, CONFIG_NAME):
        try:
            await backend.stat(name)
            return
        except FileNotFoundError:
            pass
        except Exception:  # noqa: BLE001 (cannot tell whether the store is empty: keep the key)
            return
    keyfile.unlink(missing_ok=True)


@cli.command()
@click.argument("store", required=False)
@snapshot_option
@key_options
def info(store: str) -> None:
    """Show a volume's parameters (after verifying its config)."""
    store = _ctx().positionals(store, required=1)[0]
    async def main() -> None:
        async with opened_volume(store) as vol:
            cfg = vol.config
            click.echo(f"location:     {vol.backend.location}")
            click.echo(f"transport:    {vol.backend.transport}")
            click.echo(f"volume id:    {cfg.volume_id.hex()}")
            click.echo(f"format:       sealfs v{cfg.version}")
            click.echo(f"chunk size:   {format_size(cfg.chunk_size)}")
            click.echo(f"KEK:          {cfg.kek.get('provider')} ({vol.broker.provider.kek_id})")
            click.echo(f"DEKs:         {', '.join(str(d.id) for d in cfg.deks)} "
                       f"(current {cfg.current_dek_id}, names {cfg.name_dek_id})")
            click.echo(f"created:      {cfg.created}")
            soft_delete = await vol.backend.soft_delete()
            if soft_delete is not None:
                click.echo(f"soft delete:  {soft_delete.describe()}")
    run(main)


def _format_entry(name: str, attr: Attr, long: bool, mark: str = " ") -> str:
    """mark: after the mode, '+' for an ACL, '@' for other xattrs (fs/cli/xattr.py)."""
    if not long:
        return name + ("/" if attr.is_dir else "")
    mtime = datetime.fromtimestamp(attr.mtime_ns / 1e9).strftime("%Y-%m-%d %H:%M")
    return (f"{stat_module.filemode(attr.st_mode)}{mark} {attr.nlink:>2} {attr.uid:>5} "
            f"{attr.gid:>5} {attr.size:>12} {mtime} {name}")


@cli.command(name="ls")
@click.argument("store", required=False)
@click.argument("path", required=False)
@click.option("-l", "long", is_flag=True, help="Long listing.")
@click.option("-R", "recursive", is_flag=True, help="List subdirectories recursively.")
@snapshot_option
@key_options
def ls_cmd(store: str, path: str, long: bool, recursive: bool) -> None:
    """List a directory of the volume (decrypted names)."""
    store, path = _ctx().positionals(store, path, required=1)
    path = path or "/"
    from .xattr import mark_of

    async def main() -> None:
        async with opened_volume(store) as vol:
            attr = await vol.stat(path)
            if not attr.is_dir:
                mark = await mark_of(vol, path, attr) if long else " "
                click.echo(_format_entry(path.rstrip("/").rsplit("/", 1)[-1], attr, long, mark))
                return
            listing = await (vol.walk(path) if recursive else vol.listdir(path))
            entries = listing if recursive else sorted(listing, key=lambda entry: entry[0])
            for name, cattr in entries:
                full = name if recursive else path.rstrip("/") + "/" + name
                mark = await mark_of(vol, full, cattr) if long else " "
                click.echo(_format_entry(name, cattr, long, mark))
            fail_on_problems(vol, listing.problems, "listed")
    run(main)


@cli.command()
@click.argument("store", required=False)
@click.argument("path", required=False)
@snapshot_option
@key_options
def cat(store: str, path: str) -> None:
    """Write a file's plaintext to stdout. Only authenticated bytes are ever printed."""
    store, path = _ctx().positionals(store, path, required=2)
    async def main() -> None:
        out = sys.stdout.buffer
        async with opened_volume(store) as vol:
            f = await vol.open(path)
            try:
                offset = 0
                while True:
                    block = await f.read(offset, COPY_BLOCK)
                    if not block:
                        break
                    out.write(block)
                    offset += len(block)
                out.flush()
            finally:
                await f.close()
    run(main)


@cli.command()
@click.argument("store", required=False)
@click.argument("local", required=False)
@click.argument("path", required=False)
@key_options
def put(store: str, local: str, path: str) -> None:
    """Copy a local file into the volume (replacing PATH if it exists)."""
    store, local, path = _ctx().positionals(store, local, path, required=3)
    if not os.path.isfile(local):
        raise UsageError(f"{local} is not a readable file")
    async def main() -> None:
        async with opened_volume(store) as vol:
            target = path
            with contextlib.suppress(FileNotFoundError):
                if (await vol.stat(path)).is_dir:
                    target = path.rstrip("/") + "/" + os.path.basename(local)
            st = os.stat(local)
            try:
                f = await vol.create(target, stat_module.S_IMODE(st.st_mode))
            except FileExistsError:
                f = await vol.open(target, write=True, truncate=True)
            try:
                with open(local, "rb") as src:
                    offset = 0
                    while block := src.read(COPY_BLOCK):
                        await f.write(offset, block)
                        offset += len(block)
            finally:
                await f.close()
            await vol.setattr(target, atime_ns=st.st_atime_ns, mtime_ns=st.st_mtime_ns)
    run(main)


@cli.command()
@click.argument("store", required=False)
@click.argument("path", required=False)
@click.argument("local", required=False)
@snapshot_option
@key_options
def get(store: str, path: str, local: str) -> None:
    """Copy a file out of the volume; LOCAL appears only once complete and verified."""
    store, path, local = _ctx().positionals(store, path, local, required=3)
    async def main() -> None:
        target = Path(local)
        if target.is_dir():
            target = target / path.rstrip("/").rsplit("/", 1)[-1]
        async with opened_volume(store) as vol:
            attr = await vol.stat(path)
            f = await vol.open(path)
            try:
                # A private temporary under a random name (localfiles.py): a symlink planted
                # in LOCAL's directory is never written, chmodded or taken for ours.
                dir_fd = os.open(target.parent, localfiles.DIR_FLAGS)
                try:
                    new = localfiles.NewFile(dir_fd)
                    try:
                        offset = 0
                        while block := await f.read(offset, COPY_BLOCK):
                            new.file.write(block)
                            offset += len(block)
                        new.place(target.name, attr.mode, attr.atime_ns, attr.mtime_ns)
                    except BaseException:
                        new.discard()
                        raise
                finally:
                    os.close(dir_fd)
            finally:
                await f.close()
    run(main)


@cli.command()
@click.argument("store", required=False)
@click.argument("path", required=False)
@click.option("-r", "recursive", is_flag=True, help="Remove directories and their contents.")
@key_options
def rm(store: str, path: str, recursive: bool) -> None:
    """Remove a file (or, with -r, a directory tree)."""
    store, path = _ctx().positionals(store, path, required=2)
    async def main() -> None:
        async with opened_volume(store) as vol:
            attr = await vol.stat(path)
            if not attr.is_dir:
                await vol.unlink(path)
                return
            if not recursive:
                raise IsADirectoryError(21, "Is a directory (use -r)", path)
            tree = await vol.walk(path)
            # what failed authentication stays, and so do the directories holding it
            keep = _holding(tree.problems)
            for child, cattr in reversed(tree):
                if child not in keep:
                    await (vol.rmdir(child) if cattr.is_dir else vol.unlink(child))
            if not tree.problems:
                await vol.rmdir(path)
            fail_on_problems(vol, tree.problems, "removed")
    run(main)


def _holding(problems: list[ListingProblem]) -> set[str]:
    """The plaintext directories (and their ancestors) that hold a problem entry."""
    out: set[str] = set()
    for problem in problems:
        parts = problem.parent.split("/") if problem.parent else []
        for i in range(1, len(parts) + 1):
            out.add("/".join(parts[:i]))
    return out


@cli.command()
@click.argument("store", required=False)
@click.argument("path", required=False)
@click.option("-p", "parents", is_flag=True, help="Create parents as needed; no error if it exists.")
@key_options
def mkdir(store: str, path: str, parents: bool) -> None:
    """Create a directory in the volume."""
    store, path = _ctx().positionals(store, path, required=2)
    async def main() -> None:
        async with opened_volume(store) as vol:
            if not parents:
                await vol.mkdir(path)
                return
            parts = [p for p in path.split("/") if p]
            for i in range(1, len(parts) + 1):
                with contextlib.suppress(FileExistsError):
                    await vol.mkdir("/".join(parts[:i]))
    run(main)


@cli.command()
@click.argument("store", required=False)
@click.argument("src", required=False)
@click.argument("dst", required=False)
@key_options
def mv(store: str, src: str, dst: str) -> None:
    """Rename or move within the volume (replaces a file or empty directory at DST)."""
    store, src, dst = _ctx().positionals(store, src, dst, required=3)
    async def main() -> None:
        async with opened_volume(store) as vol:
            target = dst
            with contextlib.suppress(FileNotFoundError):
                if (await vol.stat(dst)).is_dir and not (await vol.stat(src)).is_dir:
                    target = dst.rstrip("/") + "/" + src.rstrip("/").rsplit("/", 1)[-1]
            await vol.rename(src, target)
    run(main)


@cli.command()
@click.argument("store", required=False)
@key_options
def repin(store: str) -> None:
    """Trust the volume now at STORE after a legitimate config change (re-pin it)."""
    store = _ctx().positionals(store, required=1)[0]
    async def main() -> None:
        ctx = click.get_current_context().find_object(Context)
        pins = PinStore()
        backend = ctx.backend(store)
        # Verify the volume opens (key, config MAC, root directory) before dropping the old
        # pin: a failed repin must leave the old pin in place.
        volume = await Volume.load(backend, ctx.secrets(), pins=None)
        try:
            names_dek = await volume.broker.dek(volume.config.name_dek_id)
            forgot = pins.forget(backend.location)
            pins.check(backend.location, volume.config.volume_id.hex(), pin_fingerprint(names_dek))
        finally:
            await volume.close()
        click.echo(f"{'re-pinned' if forgot else 'pinned'} volume {volume.config.volume_id.hex()} "
                   f"at {backend.location}")
    run(main)


def _split_options(options: tuple[str, ...]) -> set[str]:
    return {o.strip() for group in options for o in group.split(",") if o.strip()}


@cli.command()
@click.argument("store", required=False)
@click.argument("mountpoint", required=False)
@click.option("-o", "options", multiple=True, help="Mount options, comma separated (e.g. ro,nonempty).")
@click.option("--daemon", is_flag=True, help="Fork into the background once the mount is live.")
@click.option("--log-file", type=click.Path(dir_okay=False), default=None,
              help="Where a --daemon mount writes its log (default: discarded).")
@click.option("--allow-purgeable-kek", is_flag=True,
              help="Mount even if the Key Vault key can be purged.")
@click.option("--key-ttl", type=float, default=None,
              help="Seconds an idle data key stays cached (default 3600).")
@snapshot_option
@key_options
def mount(store: str | None, mountpoint: str | None, options: tuple[str, ...], daemon: bool,
          log_file: str | None, allow_purgeable_kek: bool, key_ttl: float | None) -> None:
    """Mount the volume in STORE on MOUNTPOINT (foreground unless --daemon)."""
    from ..fuse.mount import VolumeLock, check_mountpoint, serve
    ctx = _ctx()
    ready = _ready_reporter()
    try:
        if ctx.config is not None and mountpoint is None:
            if store is not None:             # `mount --config NAME MOUNTPOINT`
                store, mountpoint = None, store
            mountpoint = mountpoint or (str(ctx.config.mountpoint) if ctx.config.mountpoint else None)
        store, mountpoint = ctx.positionals(store, mountpoint, required=2)
        opts = _split_options(options + (ctx.config.options if ctx.config else ()))
        if ctx.snapshot:
            opts = (opts - {"rw"}) | {"ro"}
        mp = check_mountpoint(mountpoint, allow_nonempty="nonempty" in opts)
        if daemon:
            from .daemon import spawn_daemon
            spawn_daemon(ctx.secrets(), log_file)
            return

        async def main() -> None:
            limit_malloc_arenas()  # bounded memory whatever the file size
            volume = await Volume.load(ctx.backend(store), ctx.secrets(), pins=PinStore(),
                                       tuning=ctx.tuning(), audit=ctx.audit(), check_kek=True,
                                       allow_purgeable=allow_purgeable_kek, key_ttl=key_ttl)
            # A snapshot mount may run beside the live volume's: a lock of its own.
            lock = VolumeLock(volume.config.volume_id.hex()
                              + (f".snapshot-{ctx.snapshot}" if ctx.snapshot else ""))
            try:
                lock.acquire(mp)
                await serve(volume, mp, opts, on_ready=ready.ready)
            finally:
                try:
                    await volume.close()
                finally:
                    lock.release()
        run(main)
    except BaseException as exc:
        ready.failed(exc)
        raise


def _ready_reporter():
    from .daemon import ReadyReporter
    return ReadyReporter.from_environment()


@cli.command()
@click.argument("mountpoint", required=False)
@click.option("--timeout", type=float, default=120.0, show_default=True,
              help="Seconds to wait for the mount process to flush and exit.")
@click.option("--config", "config_name", default=None, metavar="NAME|PATH",
              help="Take MOUNTPOINT from this volume config file.")
def umount(mountpoint: str | None, timeout: float, config_name: str | None) -> None:
    """Flush and unmount a sealfs mount (waits until the data is on the backend)."""
    from ..fuse.mount import unmount
    if mountpoint is None and config_name:
        config = load_config_file(config_name)
        mountpoint = str(config.mountpoint) if config.mountpoint else None
    if mountpoint is None:
        raise UsageError("missing MOUNTPOINT (or give --config NAME)")
    unmount(mountpoint, timeout)


def _register_extensions() -> None:
    """Command groups that live in their own modules (backups, keys, benchmarks)."""
    import importlib
    for module in ("backup", "keys", "bench", "snapshot", "xattr", "gateway"):
        try:
            mod = importlib.import_module(f"{__package__}.{module}")
        except ModuleNotFoundError as exc:
            if exc.name != f"{__package__}.{module}":
                raise
            continue
        mod.register(cli, Context, key_options, opened_volume, run)


_register_extensions()


def main(argv: list[str] | None = None) -> None:
    """Console entry point: one line on stderr and a documented exit code on failure."""
    debug = "--debug" in (argv if argv is not None else sys.argv[1:])
    try:
        code = cli.main(args=argv, prog_name="sealfs", standalone_mode=False)
        if isinstance(code, int) and code:
            # click returns (not raises) a command's Exit(code) when standalone_mode=False
            sys.exit(code)
    except click.exceptions.Abort:
        click.echo("sealfs: aborted", err=True)
        sys.exit(130)
    except click.ClickException as exc:
        click.echo(f"sealfs: {exc.format_message()}", err=True)
        sys.exit(2)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    except (SealfsError, OSError, KeyboardInterrupt) as exc:
        if debug:
            raise
        click.echo(f"sealfs: error: {one_line(exc)}", err=True)
        sys.exit(exit_code_of(exc))
    except BaseException as exc:   # an error we did not anticipate: still one line
        if debug or isinstance(exc, SystemExit):
            raise
        group = first_error(exc)
        if group is not exc:
            click.echo(f"sealfs: error: {one_line(group)}", err=True)
            sys.exit(exit_code_of(group))
        click.echo(f"sealfs: internal error: {type(exc).__name__}: {one_line(exc)} "
                   f"(rerun with --debug for a traceback)", err=True)
        sys.exit(1)


if __name__ == "__main__":
    main()
