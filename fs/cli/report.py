"""How a command reports store entries that failed authentication: one stderr line
each, then exit 4 (integrity), the same in every command that lists the store."""

from __future__ import annotations

import click

from ...errors import IntegrityError
from ..core.volume import ListingProblem, Volume


def fail_on_problems(vol: Volume, problems: list[ListingProblem], verb: str) -> None:
    """Entries that failed authentication: one stderr line each, then exit 4 (integrity)."""
    for problem in problems:
        click.echo(f"sealfs: integrity error: {vol.describe(problem)}", err=True)
    if problems:
        raise IntegrityError(f"{len(problems)} entries failed authentication and were not "
                             f"{verb} (listed above)")
