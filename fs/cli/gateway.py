"""`sealfs gateway`: serve a volume to SMB 3 clients through the system's smbd.

`sealfs gateway STORE --share NAME` runs in the foreground (fs/gateway/supervisor.py);
`sealfs gateway users add|remove|list` manages the share's own passdb. The mount runs as
a child `sealfs mount` that gets its secrets the way a --daemon child does (a pipe, never
argv or the environment).
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import click

from ...crypto.keys.broker import harden_process
from ...errors import UsageError
from ..fuse.notify import notify_ready, notify_stopping
from ..gateway.smbconf import (
    GatewaySettings,
    check_share_name,
    group_name,
    mountpoint_for,
    parse_listen,
    state_dir_for,
)
from ..gateway.supervisor import Gateway, MountCommand
from ..gateway.users import Passdb, read_password
from .daemon import READY_FD_ENV, SECRETS_STDIN_ENV
from .keysource import HANDED_OVER_ENV

MOUNT_OPTIONS = "allow_other,default_permissions"


class _DefaultServe(click.Group):
    """`sealfs gateway STORE ...` is `sealfs gateway serve STORE ...`; `users` is a subgroup."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        if args and args[0] not in self.commands and args[0] not in ("-h", "--help"):
            args = ["serve", *args]
        return super().parse_args(ctx, args)


def _settings(ctx, share: str | None, listen: str | None = None, hosts_allow: tuple[str, ...] = (),
              force_user: str | None = None) -> GatewaySettings:
    """Command line first, then the config file's [gateway] table."""
    table = ctx.config.gateway if ctx.config is not None else None
    share = share or (table.share if table else None)
    if not share:
        raise UsageError("missing --share NAME (or a [gateway] table with share = ... in --config)")
    try:
        check_share_name(share)
        address, port = parse_listen(listen or (table.listen if table else None))
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    allow = hosts_allow or (table.hosts_allow if table else ()) or ("127.0.0.1", "::1")
    force = force_user or (table.force_user if table else None)
    return GatewaySettings(share=share, mountpoint=mountpoint_for(share),
                           state_dir=state_dir_for(share), address=address, port=port,
                           hosts_allow=tuple(allow), force_user=force,
                           group=None if force else group_name(share))


def _mount_command(ctx, store: str, settings: GatewaySettings, verbose: bool) -> MountCommand:
    """`sealfs mount STORE MP -o allow_other,default_permissions` with this command's key flags."""
    argv = [sys.executable, "-m", "sealfs.fs.cli", *(["-v"] if verbose else []), "mount",
            store, str(settings.mountpoint), "-o", MOUNT_OPTIONS]
    flags = {"--keyfile": ctx.keyfile, "--passphrase-file": ctx.passphrase_file,
             "--smb-password-file": ctx.smb_password_file, "--azure-sas-file": ctx.azure_sas_file,
             "--azure-account-key-file": ctx.azure_account_key_file, "--audit-log": ctx.audit_log,
             "--config": str(ctx.config.path) if ctx.config is not None else None}
    for flag, value in flags.items():
        if value:
            argv += [flag, os.path.abspath(value)]
    if ctx.smb_require_aes256:
        argv.append("--smb-require-aes256")
    env = dict(os.environ)
    handover = {name: env.pop(name) for name in HANDED_OVER_ENV if name in env}
    secrets = ctx.secrets()
    if secrets.keyfile is None and secrets.passphrase is not None and "SEALFS_PASSPHRASE" not in handover:
        # a prompted passphrase (or one from a file the child reads again: harmless)
        handover["SEALFS_PASSPHRASE"] = secrets.passphrase().decode("utf-8", "surrogateescape")
    stdin = None
    if handover:
        env[SECRETS_STDIN_ENV] = "1"
        stdin = json.dumps(handover).encode() + b"\n"
    return MountCommand(argv=argv, env=env, ready_fd_env=READY_FD_ENV, stdin=stdin,
                        log_path=settings.state_dir / "log" / "mount.log")


def register(cli, Context, key_options, opened_volume, run) -> None:  # every cli module's signature
    def ctx():
        return click.get_current_context().find_object(Context)

    @cli.group(name="gateway", cls=_DefaultServe)
    def gateway() -> None:
        """Serve a volume to SMB 3 clients (encryption required) through smbd.

        \b
        sealfs gateway STORE --share NAME [--listen ADDR[:PORT]]
        sealfs gateway users add|remove|list --share NAME [USER] [--password-file FILE]
        """

    @gateway.command(name="serve")
    @click.argument("store", required=False)
    @click.option("--share", default=None, help="Share name (also names the state directory).")
    @click.option("--listen", default=None, metavar="ADDR[:PORT]",
                  help="Address and port smbd listens on (default: all addresses, port 445).")
    @click.option("--hosts-allow", multiple=True, metavar="NET",
                  help="Client address or network allowed (repeatable; default: loopback only).")
    @click.option("--force-user", default=None, metavar="USER",
                  help="Every SMB user works as this Unix account (default: one account per user).")
    @key_options
    def serve(store: str | None, share: str | None, listen: str | None,
              hosts_allow: tuple[str, ...], force_user: str | None) -> None:
        """Mount the volume in STORE and serve it as SHARE (foreground; SIGTERM stops it)."""
        c = ctx()
        store = c.positionals(store, required=1)[0]
        settings = _settings(c, share, listen, hosts_allow, force_user)
        if os.geteuid() != 0:
            raise UsageError("the gateway runs smbd and a shared FUSE mount: run it as root")
        harden_process()
        settings.state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        (settings.state_dir / "log").mkdir(exist_ok=True, mode=0o700)
        verbose = c.debug or _verbose()
        command = _mount_command(c, store, settings, verbose)
        gw = Gateway(settings, command,
                     on_ready=lambda: notify_ready(f"serving {settings.share} on port {settings.port}"))
        try:
            code = gw.run()
        finally:
            notify_stopping("stopped")
        if code:
            raise click.exceptions.Exit(code)

    @gateway.group(name="users")
    def users() -> None:
        """The share's SMB users (its own passdb, in the gateway's state directory)."""

    share_option = click.option("--share", default=None, help="Share name (or from --config).")

    @users.command(name="add")
    @click.argument("user")
    @share_option
    @click.option("--password-file", type=click.Path(dir_okay=False), default=None,
                  help="File holding the password (default: one line on stdin).")
    @key_options
    def users_add(user: str, share: str | None, password_file: str | None) -> None:
        """Add USER (or set its password), with a Unix account without a login shell
        (Samba authenticates only users that have one)."""
        passdb = Passdb(_settings(ctx(), share))
        if password_file is None and sys.stdin.isatty():
            password = click.prompt("SMB password", hide_input=True, confirmation_prompt=True)
        else:
            password = read_password(Path(password_file) if password_file else None, sys.stdin)
        try:
            created = passdb.add(user, password)
        except ValueError as exc:
            raise UsageError(str(exc)) from None
        click.echo(f"added {user}" + (" (new system account, no login shell)" if created else ""))

    @users.command(name="remove")
    @click.argument("user")
    @share_option
    @key_options
    def users_remove(user: str, share: str | None) -> None:
        """Remove USER from the share (and the Unix account `users add` created for it)."""
        try:
            deleted = Passdb(_settings(ctx(), share)).remove(user)
        except ValueError as exc:
            raise UsageError(str(exc)) from None
        click.echo(f"removed {user}" + (" and its system account" if deleted else ""))

    @users.command(name="list")
    @share_option
    @key_options
    def users_list(share: str | None) -> None:
        """List the share's SMB users."""
        for name in Passdb(_settings(ctx(), share)).list():
            click.echo(name)


def _verbose() -> bool:
    import logging
    return logging.getLogger("sealfs").getEffectiveLevel() <= logging.INFO
