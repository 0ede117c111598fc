"""``backstop keys``: make an age identity, and see which savesets each recipient opens."""

from __future__ import annotations

from pathlib import Path

import click

from backstop.orchestration.catalog import RedisCatalog
from backstop.orchestration.cli_common import (
    EXIT_USAGE,
    config_option,
    json_option,
    print_json,
    settings_from,
)
from backstop.orchestration.status import connect
from backstop.orchestration.tables import Column, print_table
from backstop.workers.age import Identity, write_identity


@click.group("keys")
def keys_group() -> None:
    """Age keys of encrypted savesets."""


@keys_group.command("new")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path),
              default=Path("backstop.key"), show_default=True,
              help="The identity file to write (mode 0600; never over an existing file).")
@click.pass_context
def keys_new(ctx: click.Context, out: Path) -> None:
    """Write a new age identity and print its recipient (the public key for the config's
    `encryption.recipients`)."""
    identity = Identity.generate()
    try:
        write_identity(out, identity)
    except FileExistsError:
        click.echo(f"backstop: {out} exists; choose another --out", err=True)
        ctx.exit(EXIT_USAGE)
    click.echo(f"identity written to {out} (mode 0600); its recipient:", err=True)
    click.echo(str(identity.recipient))


@keys_group.command("which")
@config_option
@click.option("--task", default=None, help="Only savesets of TASK.")
@json_option
@click.pass_context
def keys_which(ctx: click.Context, config_file: str | None, task: str | None,
               as_json: bool) -> None:
    """Per recipient, the savesets it can open: keep an old key as long as one is listed."""
    settings = settings_from(ctx, config_file)
    client = connect(settings)
    try:
        found: dict[str, list[str]] = {}
        for saveset in RedisCatalog(client).all(task):
            for recipient in saveset.recipients:
                found.setdefault(recipient, []).append(saveset.id)
    finally:
        client.close()
    if as_json:
        print_json([{"recipient": r, "savesets": ids} for r, ids in sorted(found.items())])
        return
    print_table((Column("recipient", whole=True), Column("savesets", right=True),
                 Column("newest", whole=True, drop=1)),
                [(r, str(len(ids)), ids[-1]) for r, ids in sorted(found.items())])
