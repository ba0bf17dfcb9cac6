"""`members`: a list's members and where each comes from; `members add`, `remove` and `changes`: extra members;
`members pending`, `admit` and `deny`: the joins of an opt-in list whose owners approve each one.

`listfilter members LIST` (the same as `members show LIST`) computes the
members live, as the next sync would: the roster's, the config's
``members.emails``, and the ones the store keeps (extra members, and the
joined members of an opt-in list; :mod:`listfilter.store.membership`).
`add` and `remove` change the store at once; the lists change at the next
sync, which installs a snapshot with them (or offer ``--sync`` to run it now).
Each change is recorded with who made it: the Unix user running the command.
`admit` and `deny` decide a join that waits for an owner (``approval =
true``) as an owner's reply would (:func:`listfilter.store.requests.owner_decision`).
"""

from __future__ import annotations

import json
import os

import click

from ..common.words import plural
from ..store import membership as MS
from . import cli, fail, load_config, open_current_store

#: The subcommands; any other first argument is a LIST, shown (``members LIST`` is ``members show LIST``).
SUBCOMMANDS = ("show", "add", "remove", "changes", "pending", "admit", "deny")


class _Members(click.Group):
    """``members LIST [--json]`` keeps working beside the subcommands: a first argument that
    names none of them is the LIST of ``show``."""

    def parse_args(self, ctx, args):
        first = next((a for a in args if not a.startswith("-")), None)
        if first is not None and first not in self.commands:
            args = ["show", *args]
        return super().parse_args(ctx, args)


@cli.group(cls=_Members)
def members():
    """Show a list's members and where each comes from; add and remove extra members.

    `listfilter members LIST` shows them (as `members show LIST`). Extra
    members are people the roster does not hold (a guest speaker, a TA from
    another department): `members add` and `members remove` change the store
    at once, and the lists at the next `listfilter sync`. `members pending`
    shows the joins that wait for an owner; `members admit` and `members deny`
    decide them.
    """


def actor() -> str:
    """Who makes a change from the command line: the Unix user (and who ran sudo, if someone did)."""
    import getpass

    user = getpass.getuser()
    sudo = os.environ.get("SUDO_USER", "")
    return f"{sudo} (sudo {user})" if sudo and sudo != user else user


def _sync_now(ctx) -> None:
    """Run `listfilter sync` in this process (as its own --user default would)."""
    from ..common.paths import SERVICE_USER
    from .sync import SYNC_USER_ENV, sync

    ctx.invoke(sync, user=os.environ.get(SYNC_USER_ENV) or SERVICE_USER)


@members.command("show")
@click.argument("list_name", metavar="LIST")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_context
def members_show(ctx, list_name, as_json):
    """Show the members of LIST (a list address, or a list name for every domain it is on).

    One line per member: address, name and source (roster, config, extra or
    joined), computed live as the next sync would install them.
    """
    from .sync import _compiled

    config = load_config(ctx)
    wanted = list_name.lower()
    lists = [l for l in _compiled(config) if wanted in (l.address, l.name.lower())]
    if not lists:
        fail(f"no list {list_name!r} (see `listfilter lists`)")
    if as_json:
        click.echo(json.dumps({l.address: [{"email": e, "name": n, "source": l.sources.get(e.lower(), "roster")}
                                           for e, n in l.members] for l in lists}, indent=2))
        return
    for l in lists:
        if len(lists) > 1:
            click.echo(f"# {l.address}")
        for email, name in l.members:
            click.echo(f"{email}\t{name}\t{l.sources.get(email.lower(), 'roster')}")


@members.command("add")
@click.argument("list_name", metavar="LIST")
@click.argument("address")
@click.option("--name", metavar="NAME", help="The member's name (kept when re-adding without it).")
@click.option("--until", metavar="DATE", help="The membership ends at the end of this day (YYYY-MM-DD, the"
              " site's time zone), or at this time (YYYY-MM-DDTHH:MM); without it, it has no end.")
@click.option("--sync", "sync_now", is_flag=True, help="Run `listfilter sync` right after.")
@click.pass_context
def members_add(ctx, list_name, address, name, until, sync_now):
    """Add ADDRESS to LIST (a list address) as an extra member.

    Adding an extra member again sets their end date (and name, if given)
    to these. The change is recorded with who made it, and reaches the list
    at the next `listfilter sync`.
    """
    import zoneinfo

    config = load_config(ctx)
    lst = MS.list_address(config, list_name)
    email = MS.parse_address(address)
    tz = zoneinfo.ZoneInfo(config.site.timezone)
    ends = MS.parse_until(until, tz) if until else None
    held = MS.installed_source(config, lst, email)
    with open_current_store(config) as store:
        change = MS.add(store, lst, email, name, ends, actor(), "cli", tz=tz)
    when = f"until {MS.describe_until(ends, tz)}" if ends else "with no end date"
    if change is None:
        click.echo(f"{email} is already an extra member of {lst} {when}: nothing changed")
    else:
        verb = "added" if change.action == "add" else "updated"
        note = f" (already a member from the {held}: the extra membership keeps them on the list without it)" \
            if held in ("roster", "config") else ""
        click.echo(f"{verb} {email} as an extra member of {lst} {when}{note}; it takes effect at the next sync")
    if sync_now:
        _sync_now(ctx)


@members.command("remove")
@click.argument("list_name", metavar="LIST")
@click.argument("address")
@click.option("--sync", "sync_now", is_flag=True, help="Run `listfilter sync` right after.")
@click.pass_context
def members_remove(ctx, list_name, address, sync_now):
    """End the extra membership of ADDRESS in LIST (a list address).

    Only extra members can be removed here: a member from the roster leaves
    when the roster drops them. The change is recorded with who made it,
    and reaches the list at the next `listfilter sync`.
    """
    config = load_config(ctx)
    lst = MS.list_address(config, list_name)
    email = MS.parse_address(address)
    with open_current_store(config) as store:
        change = MS.remove(store, lst, email, actor(), "cli", config=config)
    click.echo(f"removed {change.email}'s extra membership of {lst}; it takes effect at the next sync")
    if sync_now:
        _sync_now(ctx)


@members.command("changes")
@click.argument("list_name", metavar="LIST")
@click.option("--limit", metavar="N", type=click.IntRange(min=1), default=50, show_default=True,
              help="At most N changes, newest first.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_context
def members_changes(ctx, list_name, limit, as_json):
    """Show who changed the extra and joined members of LIST, and when (newest first)."""
    import zoneinfo

    config = load_config(ctx)
    lst = MS.list_address(config, list_name)
    tz = zoneinfo.ZoneInfo(config.site.timezone)
    with open_current_store(config) as store:
        rows = MS.changes(store, lst, limit)
    if as_json:
        click.echo(json.dumps([c.as_json() for c in rows], indent=2))
        return
    if not rows:
        click.echo(f"no membership changes recorded for {lst}")
        return
    for c in rows:
        detail = f"\t{c.detail}" if c.detail else ""
        click.echo(f"{c.at.astimezone(tz).isoformat(timespec='seconds')}\t{c.action}\t{c.email}\t{c.source}"
                   f"\tby {c.actor} ({c.via}){detail}")
    if len(rows) == limit:
        click.echo(f"(the newest {plural(limit, 'change')}; --limit shows more)", err=True)


@members.command("pending")
@click.argument("list_name", metavar="LIST", required=False)
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_context
def members_pending(ctx, list_name, as_json):
    """Show the joins that wait for an owner (opt-in lists with approval = true), of LIST or of every list.

    One line per joiner: list, address, name, when they confirmed, and when
    the request expires (the site's confirm_days) if nobody decides.
    """
    import datetime as dt
    import zoneinfo

    from ..store import requests as RQ

    config = load_config(ctx)
    lst = MS.list_address(config, list_name) if list_name else None
    tz = zoneinfo.ZoneInfo(config.site.timezone)
    days = dt.timedelta(days=config.site.confirm_days)
    with open_current_store(config) as store:
        waiting = RQ.join_requests(store, lst)
    if as_json:
        click.echo(json.dumps([{"list": r.list_address, "email": r.email, "name": r.name,
                                "requested_at": r.requested_at.isoformat(),
                                "expires_at": (r.requested_at + days).isoformat()} for r in waiting], indent=2))
        return
    if not waiting:
        click.echo(f"no joins wait for an owner{' on ' + lst if lst else ''}")
        return
    for r in waiting:
        click.echo(f"{r.list_address}\t{r.email}\t{r.name}\t{r.requested_at.astimezone(tz).isoformat(timespec='seconds')}"
                   f"\texpires {(r.requested_at + days).astimezone(tz).isoformat(timespec='seconds')}")


def _decide_join(ctx, list_name: str, address: str, action: str, sync_now: bool) -> None:
    import datetime as dt

    from ..store import requests as RQ

    config = load_config(ctx)
    lst = MS.list_address(config, list_name)
    email = MS.parse_address(address)
    with open_current_store(config) as store:
        judged = RQ.owner_decision(config, store, lst, email, action, actor(), "cli", dt.datetime.now(dt.timezone.utc))
    if not judged.changed:
        fail(judged.message)
    click.echo(judged.message)
    if sync_now:
        _sync_now(ctx)


@members.command("admit")
@click.argument("list_name", metavar="LIST")
@click.argument("address")
@click.option("--sync", "sync_now", is_flag=True, help="Run `listfilter sync` right after.")
@click.pass_context
def members_admit(ctx, list_name, address, sync_now):
    """Admit ADDRESS, whose join of LIST (a list address) waits for an owner.

    They become a joined member at the next `listfilter sync`, which sends
    them the welcome. The first decision counts, whoever makes it (a reply,
    the admin page, this command); it is recorded with who made it.
    """
    _decide_join(ctx, list_name, address, "admit", sync_now)


@members.command("deny")
@click.argument("list_name", metavar="LIST")
@click.argument("address")
@click.option("--sync", "sync_now", is_flag=True, help="Run `listfilter sync` right after.")
@click.pass_context
def members_deny(ctx, list_name, address, sync_now):
    """Deny ADDRESS's join of LIST (a list address), which waits for an owner.

    The next `listfilter sync` tells them so. The first decision counts; it
    is recorded with who made it.
    """
    _decide_join(ctx, list_name, address, "deny", sync_now)
