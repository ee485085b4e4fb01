"""`sealfs snapshot create|list|delete STORE`: the point-in-time copies the server keeps.

An Azure Files REST store makes, lists and deletes share snapshots (share-level
operations: the account key or an account SAS). An SMB store lists the previous versions
its server offers (Azure Files' share snapshots, Samba's vfs_shadow_copy2) but cannot make
or delete them. No key is needed: these never read the volume's contents. A snapshot is
read with `--snapshot ID` on ls, cat, get, restore and mount.
"""

from __future__ import annotations

from datetime import UTC, datetime

import click

from ...errors import UsageError


def describe(snapshot) -> str:
    """One line: id, time (UTC), metadata."""
    when = datetime.fromtimestamp(snapshot.time_ns / 1e9, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    meta = " ".join(f"{k}={v}" for k, v in sorted(snapshot.metadata.items()))
    return f"{snapshot.id}  {when}" + (f"  {meta}" if meta else "")


def register(cli, Context, key_options, opened_volume, run) -> None:
    def ctx() -> Context:
        return click.get_current_context().find_object(Context)

    def with_backend(store, action) -> None:
        backend = ctx().backend(store)

        async def main() -> None:
            try:
                await action(backend)
            except ValueError as exc:        # a malformed id or metadata name
                raise UsageError(str(exc)) from None
            finally:
                await backend.aclose()
        run(main)

    @cli.group()
    def snapshot() -> None:
        """Server-side snapshots of a store: create, list, delete (read them with --snapshot ID)."""

    @snapshot.command(name="create")
    @click.argument("store", required=False)
    @click.option("--tag", "tags", multiple=True, metavar="NAME=VALUE",
                  help="Metadata to keep with the snapshot (letters, digits, _ in NAME). Repeatable.")
    @key_options
    def create(store, tags) -> None:
        """Make a snapshot of STORE's share; prints its id as the last line."""
        store = ctx().positionals(store, required=1)[0]
        metadata = {"sealfs": "manual"}
        for tag in tags:
            name, sep, value = tag.partition("=")
            if not sep or not name:
                raise click.BadParameter(f"{tag!r} is not NAME=VALUE", param_hint="--tag")
            metadata[name] = value
        metadata.setdefault("time", datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"))

        async def action(backend) -> None:
            made = await backend.create_snapshot(metadata)
            click.echo(f"created snapshot of {backend.location}:")
            click.echo(made.id)
        with_backend(store, action)

    @snapshot.command(name="list")
    @click.argument("store", required=False)
    @key_options
    def list_cmd(store) -> None:
        """List the snapshots of STORE: id, time, metadata; oldest first."""
        store = ctx().positionals(store, required=1)[0]

        async def action(backend) -> None:
            for snap in await backend.snapshots():
                click.echo(describe(snap))
        with_backend(store, action)

    @snapshot.command(name="delete")
    @click.argument("store", required=False)
    @click.argument("snapshot_id", metavar="ID", required=False)
    @key_options
    def delete(store, snapshot_id) -> None:
        """Delete the snapshot ID of STORE's share (never the share itself)."""
        store, snapshot_id = ctx().positionals(store, snapshot_id, required=2)

        async def action(backend) -> None:
            await backend.delete_snapshot(snapshot_id)
            click.echo(f"deleted snapshot {snapshot_id}")
        with_backend(store, action)
