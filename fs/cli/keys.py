"""`sealfs keys list | add-dek | rotate-kek` and `sealfs rekey`."""

from __future__ import annotations

from pathlib import Path

import click

from ...crypto.keys.kms import KeySecrets, provider_for_init
from ...errors import UsageError
from ..tools.rekey import add_dek, dek_usage, rekey, rotate_kek
from .keysource import read_passphrase_file
from .report import fail_on_problems


def register(cli, Context, key_options, opened_volume, run) -> None:
    def ctx() -> "Context":
        return click.get_current_context().find_object(Context)

    @cli.group()
    def keys() -> None:
        """Inspect and rotate a volume's keys (KEK and data keys)."""

    @keys.command(name="list")
    @click.argument("store", required=False)
    @key_options
    def list_keys(store: str | None) -> None:
        """Show the KEK, every DEK and how many files each one seals."""
        store = ctx().positionals(store, required=1)[0]

        async def main() -> None:
            async with opened_volume(store) as vol:
                cfg = vol.config
                usage = await dek_usage(vol)
                counts = usage.files
                click.echo(f"KEK: {cfg.kek.get('provider')} {vol.broker.provider.kek_id}")
                for dek in cfg.deks:
                    flags = [f for f, on in (("current", dek.id == cfg.current_dek_id),
                                             ("names", dek.id == cfg.name_dek_id)) if on]
                    version = f" version {dek.kek_version}" if dek.kek_version else ""
                    click.echo(f"DEK {dek.id}: {dek.algorithm}{version}, created {dek.created}, "
                               f"{counts.get(dek.id, 0)} files"
                               + (f" ({', '.join(flags)})" if flags else ""))
                # an unreadable file may still be sealed by any DEK: its count is unknown
                fail_on_problems(vol, usage.problems, "counted")
        run(main)

    @keys.command(name="add-dek")
    @click.argument("store", required=False)
    @key_options
    def add_dek_cmd(store: str | None) -> None:
        """Add a new DEK; new files use it (old files keep theirs until `sealfs rekey`)."""
        store = ctx().positionals(store, required=1)[0]

        async def main() -> None:
            async with opened_volume(store) as vol:
                wrapped = await add_dek(vol)
                click.echo(f"added DEK {wrapped.id}; new files use it. Run `sealfs rekey` to "
                           f"re-seal existing files.")
        run(main)

    @keys.command(name="rotate-kek")
    @click.argument("store", required=False)
    @click.option("--to", "to_uri", default=None, help="New KEK: Key Vault key URL or pkcs11: URI.")
    @click.option("--to-keyfile", type=click.Path(dir_okay=False), default=None,
                  help="New local keyfile (created with 32 random bytes if missing).")
    @click.option("--to-passphrase-file", type=click.Path(dir_okay=False), default=None,
                  help="New local passphrase, read from this file.")
    @click.option("--allow-purgeable-kek", is_flag=True,
                  help="Accept a new Key Vault key that can be purged.")
    @key_options
    def rotate_kek_cmd(store: str | None, to_uri: str | None, to_keyfile: str | None,
                       to_passphrase_file: str | None, allow_purgeable_kek: bool) -> None:
        """Re-wrap every DEK under a new KEK. No data is re-encrypted.

        Afterwards the old KEK is no longer needed, except for old copies of
        sealfs.json (e.g. in share snapshots), which still open with the old KEK.
        """
        store = ctx().positionals(store, required=1)[0]
        targets = [t for t in (to_uri, to_keyfile, to_passphrase_file) if t]
        if len(targets) != 1:
            raise UsageError("give exactly one of --to URI, --to-keyfile FILE, --to-passphrase-file FILE")
        new_secrets = KeySecrets(keyfile=Path(to_keyfile) if to_keyfile else None)
        if to_passphrase_file:
            path = Path(to_passphrase_file)
            new_secrets.passphrase = lambda: read_passphrase_file(path)

        async def main() -> None:
            async with opened_volume(store) as vol:
                new_provider = provider_for_init(to_uri, new_secrets)
                old = vol.broker.provider.kek_id
                await rotate_kek(vol, new_provider, allow_purgeable_kek)
                click.echo(f"re-wrapped {len(vol.config.deks)} DEKs: {old} -> {new_provider.kek_id}")
        run(main)

    @cli.command(name="rekey")
    @click.argument("store", required=False)
    @key_options
    def rekey_cmd(store: str | None) -> None:
        """Re-seal files still under older DEKs with the current one (resumable)."""
        store = ctx().positionals(store, required=1)[0]
        from rich.console import Console
        console = Console(stderr=True)

        async def main() -> None:
            async with opened_volume(store) as vol:
                with console.status("re-sealing files...") as status:
                    result = await rekey(vol, lambda p: status.update(f"re-sealed /{p}"))
                click.echo(f"re-sealed {result.resealed} files; {result.already_current} already "
                           f"on DEK {vol.config.current_dek_id}"
                           + (f"; {result.skipped_links} hard-linked files skipped"
                              if result.skipped_links else ""))
                # not re-sealed: an older DEK may still seal them, so none may be retired yet
                fail_on_problems(vol, result.problems, "re-sealed")
        run(main)
