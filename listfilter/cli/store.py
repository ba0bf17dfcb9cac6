"""`db upgrade`, `db status` and `log`: the mail log store."""

from __future__ import annotations

import json
import sys

import click

from ..common.errors import EXIT_PROBLEM
from ..common.events import STATUSES
from ..store import database as ST
from ..store import deliveries as DV
from ..store import ingest as IN
from ..store import migrations as MG
from . import cli, fail, load_config

# ---------------------------------------------------------------- the mail log


@cli.group("db")
def db():
    """The mail log store: schema migrations."""


@db.command("upgrade")
@click.pass_context
def db_upgrade(ctx):
    """Create or upgrade the store's schema (harmless to run again)."""

    config = load_config(ctx)
    with ST.open_store(config.store, create=True, owner=ST.service_owner(config.site.spool_dir)) as store:
        before = store.version()
        if before > MG.LATEST:
            fail(f"{config.store.describe()}: schema version {before} is newer than this listfilter knows"
                 f" ({MG.LATEST})")
        applied = store.upgrade()
        for m in applied:
            click.echo(f"applied migration {m.version}: {m.name}")
        click.echo(f"{config.store.describe()}: schema version {store.version()}"
                   + (" (already up to date)" if not applied else ""))


@db.command("status")
@click.pass_context
def db_status(ctx):
    """Show the store's schema version and the migrations still to apply."""

    config = load_config(ctx)
    with ST.open_store(config.store) as store:
        click.echo(f"{config.store.describe()}: schema version {store.version()}")
        pending = store.pending()
        for m in pending:
            click.echo(f"pending migration {m.version}: {m.name}")
        if pending:
            sys.exit(EXIT_PROBLEM)


_STATUS_CHOICE = click.Choice(STATUSES)


@cli.command("log")
@click.option("--status", "statuses", type=_STATUS_CHOICE, multiple=True, help="Only this status (repeatable).")
@click.option("--list", "lists", metavar="L", multiple=True,
              help="Only this list: an address, or a list name for every domain it is on (repeatable).")
@click.option("--since", metavar="WHEN", help="Only mail since WHEN: 90m, 12h, 7d, 2w, today, 2026-01-21 or"
                                              " 2026-01-21T09:00 (site time zone).")
@click.option("--members", "members", type=click.Choice(list(DV.MEMBER_FILTERS)),
              help="Only posts with a member in this outcome (from Postfix's log; not-sent: deferred,"
                   " bounced or expired).")
@click.option("--limit", type=click.IntRange(min=1), default=50, show_default=True, help="At most N rows.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON (one array; bodies left out).")
@click.pass_context
def log_cmd(ctx, statuses, lists, since, members, limit, as_json):
    """Show the mail log, newest first (moving new spool events into the store first).

    A post handed to Postfix shows its members' outcomes as sync last read
    them from Postfix's log: ``3 (1 sent · 1 deferred · 1 bounced)``.
    """
    import zoneinfo


    config = load_config(ctx)
    tz = zoneinfo.ZoneInfo(config.site.timezone)
    when = None
    if since:
        try:
            when = ST.parse_since(since, tz)
        except ValueError as exc:
            raise click.BadParameter(str(exc), param_hint="--since") from None
    addresses = []
    for name in lists:
        if "@" in name:
            addresses.append(name.lower())
        elif name in config.lists:
            lst = config.lists[name]
            addresses.extend(f"{lst.local_part}@{d}" for d in lst.domains)
        else:
            raise click.BadParameter(f"no list named {name!r} (give a list name from the config, or an address)",
                                     param_hint="--list")
    with ST.open_store(config.store) as store:
        store.require_current()
        try:
            result = IN.ingest(store, config.site.spool_dir, wait=False)
            for name, reason in result.bad:
                click.echo(f"listfilter: warning: spool event {name} is malformed, moved aside: {reason}", err=True)
        except OSError as exc:  # e.g. run as a user who may not write the spool: show what is there
            click.echo(f"listfilter: warning: spool not read: {exc.strerror}", err=True)
        entries = store.entries(status=statuses or None, lists=addresses or None, since=when,
                                members=DV.MEMBER_FILTERS.get(members), limit=limit, body_chars=0)
        outcomes = DV.counts(store, [e.id for e in entries])
        queue_ids = DV.queue_ids(store, [e.id for e in entries]) if as_json else {}
    if as_json:
        click.echo(json.dumps([{**e.as_json(), "outcomes": outcomes.get(e.id, {}),
                                "outcome": DV.summary(e.status, e.recipient_count, outcomes.get(e.id)),
                                "reinjected_queue_ids": queue_ids.get(e.id, [])} for e in entries],
                              indent=2, ensure_ascii=False))
        return
    for e in entries:
        sender = f"{ST.oneline(e.sender_name)} <{ST.oneline(e.sender_email)}>" if e.sender_name else ST.oneline(e.sender_email)
        click.echo("\t".join([e.created_at.astimezone(tz).strftime("%Y-%m-%d %H:%M %Z"), e.status, e.list_address,
                               sender or "-", _count(e, outcomes.get(e.id)), e.headline]))


def _count(e, outcome: dict[str, int] | None = None) -> str:
    """The recipient count; for a post delivered to nobody, that and why (deliver's words); for one
    handed to Postfix, its members' outcomes as sync read them from Postfix's log."""
    if e.status == "delivered" and not e.recipient_count:
        return f"0 ({ST.oneline(e.error_message) or 'nobody was sent a copy'})"
    said = DV.summary(e.status, e.recipient_count, outcome)
    return f"{e.recipient_count} ({said})" if said else str(e.recipient_count)
