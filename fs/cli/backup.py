"""Backup commands: `sealfs sync`, `sealfs restore`, `sealfs fsck` (no mount needed).

Exit codes (on top of fs/cli/main.py's): sync/restore exit 4 when some volume entry failed
authentication (or was planted in the store), else 1 when some files failed (each
reported on one stderr line, counted in the summary); fsck exits 4 when problems remain.
"""

from __future__ import annotations

import sys

import click

from ...errors import UsageError


def register(cli, Context, key_options, opened_volume, run) -> None:
    def ctx() -> Context:
        return click.get_current_context().find_object(Context)

    @cli.command()
    @click.argument("src", required=False)
    @click.argument("store", required=False)
    @click.option("--path", "vpath", default=None, metavar="/DIR",
                  help="Directory inside the volume to back up into (default / or sync.path).")
    @click.option("--delete", is_flag=True, default=False,
                  help="Delete volume entries that are not in SRC (excluded ones are kept).")
    @click.option("--dry-run", "-n", is_flag=True, help="Show what would change; change nothing.")
    @click.option("--exclude", multiple=True, metavar="PATTERN",
                  help="Glob on the name (or on the path relative to SRC if it contains '/'); "
                       "a trailing '/' matches directories only. Repeatable.")
    @click.option("--checksum", is_flag=True, default=False,
                  help="Compare content (sha256) instead of size + mtime.")
    @click.option("--jobs", type=click.IntRange(1, 4), default=4, show_default=True,
                  help="Files transferred at once.")
    @click.option("--snapshot", "take_snapshot", is_flag=True, default=False,
                  help="After a sync without errors, snapshot the store (Azure Files REST stores).")
    @click.option("--no-xattrs", "no_xattrs", is_flag=True, default=False,
                  help="Do not copy extended attributes and POSIX ACLs (kept by default).")
    @key_options
    def sync(src, store, vpath, delete, dry_run, exclude, checksum, jobs, take_snapshot,
             no_xattrs) -> None:
        """Back up the local directory SRC into the volume in STORE (incremental, resumable).

        Prints "sync: N copied (B bytes), M deleted, K unchanged, E errors" (then ", X
        xattrs updated" and ", W warnings" when not 0); exits 4 when a volume entry failed
        authentication, else 1 when some files failed. Xattrs and ACLs are kept (an
        attribute that cannot be read or stored is a warning). With --config NAME, SRC
        and STORE default to sync.source and store.
        """
        from ..tools.sync import Reporter, SyncOptions, snapshot_after_sync, sync_tree
        c = ctx()
        cfg = c.config.sync if c.config is not None else None
        if c.config is not None:
            src = src or (str(cfg.source) if cfg is not None else None)
            store = store or c.config.store
        if not src or not store:
            raise UsageError("missing SRC and/or STORE (or give --config NAME with a [sync] table)")
        opts = SyncOptions(
            path=vpath or (cfg.path if cfg is not None else "/"),
            delete=delete or (cfg.delete if cfg is not None else False),
            dry_run=dry_run,
            excludes=tuple(exclude) + (tuple(cfg.exclude) if cfg is not None else ()),
            checksum=checksum or (cfg.checksum if cfg is not None else False),
            jobs=jobs, xattrs=not no_xattrs)
        result = {}

        async def main() -> None:
            async with opened_volume(store) as vol:
                if take_snapshot and not vol.backend.makes_snapshots:   # refused before any copy
                    raise UsageError(f"--snapshot: {vol.backend.location} cannot make snapshots "
                                     "(the Azure Files REST store can)")
                with Reporter("sync") as reporter:
                    result["stats"] = await sync_tree(vol, src, opts, reporter)
                if take_snapshot and not dry_run:
                    result["snapshot"] = await snapshot_after_sync(vol, src, result["stats"])

        run(main)
        stats = result["stats"]
        click.echo(stats.summary("sync") + (" (dry run)" if dry_run else ""))
        if result.get("snapshot") is not None:
            click.echo(f"sync: snapshot {result['snapshot'].id}")
        elif take_snapshot and not dry_run:
            click.echo("sync: no snapshot taken: the sync had errors", err=True)
        if stats.errors:
            raise click.exceptions.Exit(stats.exit_code)

    @cli.command()
    @click.argument("store", required=False)
    @click.argument("dst", required=False)
    @click.option("--path", "vpath", default=None, metavar="/DIR",
                  help="Directory inside the volume to restore (default / or sync.path).")
    @click.option("--jobs", type=click.IntRange(1, 4), default=4, show_default=True,
                  help="Files transferred at once.")
    @click.option("--snapshot", "snapshot", default=None, metavar="ID",
                  help="Restore the volume as it was in this snapshot (`sealfs snapshot list`).")
    @click.option("--no-xattrs", "no_xattrs", is_flag=True, default=False,
                  help="Do not restore extended attributes and POSIX ACLs.")
    @key_options
    def restore(store, dst, vpath, jobs, snapshot, no_xattrs) -> None:
        """Restore the volume tree (or --path) from STORE into the local directory DST.

        Prints "restore: N copied (B bytes), K unchanged, E errors" (then xattrs updated
        and warnings, when not 0); exits 4 when a volume entry failed authentication (each
        named by its ciphertext path), else 1 when some files failed. Xattrs and ACLs are
        set after the content, before the times; one the target refuses is a warning.
        """
        from ..tools.sync import Reporter, restore_tree
        c = ctx()
        c.snapshot = snapshot or c.snapshot
        store, dst = c.positionals(store, dst, required=2)
        cfg = c.config.sync if c.config is not None else None
        path = vpath or (cfg.path if cfg is not None else "/")
        result = {}

        async def main() -> None:
            async with opened_volume(store) as vol:
                with Reporter("restore") as reporter:
                    result["stats"] = await restore_tree(vol, dst, path, reporter, jobs,
                                                         xattrs=not no_xattrs)

        run(main)
        stats = result["stats"]
        click.echo(stats.summary("restore"))
        if stats.errors:
            raise click.exceptions.Exit(stats.exit_code)

    @cli.command()
    @click.argument("store", required=False)
    @click.option("--repair", is_flag=True,
                  help="Fix safe problems only: orphaned sidecars, sealfs.tmp./sealfs.del. "
                       "leftovers, uncommitted tails.")
    @key_options
    def fsck(store, repair) -> None:
        """Verify a volume: config, directories, names, headers, every chunk, layout.

        Prints "PROBLEM: <path>: <what>" per problem; exits 4 if any problem remains.
        """
        from ..tools.fsck import fsck_volume
        store = ctx().positionals(store, required=1)[0]
        result = {}

        def out(line: str) -> None:
            click.echo(line)
            sys.stdout.flush()

        async def main() -> None:
            async with opened_volume(store) as vol:
                result["r"] = await fsck_volume(vol, repair, out)

        run(main)
        r = result["r"]
        click.echo(r.summary())
        if not r.clean:
            raise click.exceptions.Exit(4)
