"""`bounces` and `bounces clear`: bounce scores and suppressed addresses."""

from __future__ import annotations

import json
from pathlib import Path

import click

from . import cli, fail, load_config

# ---------------------------------------------------------------- bounces


def _spool_dir(ctx) -> Path:
    return load_config(ctx).site.spool_dir


@cli.group(invoke_without_command=True)
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_context
def bounces(ctx, as_json):
    """Show bounce scores and suppressed addresses.

    An address whose mail bounces permanently on 5 different days (with no
    gap of more than 7 days) is suppressed: no list sends to it until
    `listfilter bounces clear ADDRESS`.
    """
    if ctx.invoked_subcommand is not None:
        return
    from . import bounces as B

    spool = _spool_dir(ctx)
    states = B.all_states(spool)
    suppressed = B.suppressed(spool)
    if as_json:
        click.echo(json.dumps({"scores": states, "suppressed": sorted(suppressed)}, indent=2))
        return
    if not states and not suppressed:
        click.echo("no bounces recorded")
    for s in states:
        mark = "SUPPRESSED" if s["address"] in suppressed else ""
        click.echo(f"{s['address']}\tscore {s['score']}\tlast {s['last_bounce']}\t"
                   f"{', '.join(s.get('lists', []))}\t{mark}".rstrip())


@bounces.command("clear")
@click.argument("address")
@click.pass_context
def bounces_clear(ctx, address):
    """Lift the suppression of ADDRESS and forget its bounce score."""
    from . import bounces as B

    if B.clear(_spool_dir(ctx), address):
        click.echo(f"{address.lower()}: suppression lifted, score cleared")
    else:
        fail(f"no bounce record for {address.lower()}")
