"""`held`: the posts held for the owners (moderation); `held show`, `held approve` and `held discard`.

A list whose ``non_member_posts`` (or ``non_poster_posts``) is ``hold``
keeps such a post for its owners (:mod:`listfilter.mail.moderation`); sync
moves it into the store (:mod:`listfilter.store.moderation`). These commands
read the store and make an owner's decision there, as a reply with the
approve or discard code or the admin page's Held page would, through the
same :func:`listfilter.store.moderation.decide`: the first decision counts.
An approved post goes to the members at the next sync, which hands it back
to Postfix (offer ``--sync`` to run it now). A decision is recorded with who
made it: the Unix user running the command (:func:`listfilter.cli.members.actor`).
"""

from __future__ import annotations

import datetime as dt
import json
import zoneinfo

import click

from ..common.words import plural
from . import cli, fail, load_config, open_current_store
from .members import _sync_now, actor

#: How many held posts the list shows at most (newest first).
LIMIT = 200


def _local(when: dt.datetime | None, tz) -> str:
    return when.astimezone(tz).isoformat(timespec="seconds") if when is not None else "-"


def _as_json(post) -> dict:
    times = {name: getattr(post, name).isoformat() if getattr(post, name) else None
             for name in ("held_at", "expires_at", "decided_at", "released_at")}
    return {"id": post.id, "list": post.list_address, "from": post.sender_email or post.envelope_sender,
            "from_name": post.sender_name, "envelope_sender": post.envelope_sender, "message_id": post.message_id,
            "subject": post.subject, "reason": post.reason, "status": post.status, "decided_by": post.decided_by,
            **times}


def _one_line(text: str) -> str:
    return " ".join((text or "").split())


@cli.group(invoke_without_command=True)
@click.option("--list", "list_name", metavar="ADDRESS", help="Only this list's held posts.")
@click.option("--all", "show_all", is_flag=True, help="Also the posts already decided (approved, released,"
              " discarded, expired), with their status and who decided.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_context
def held(ctx, list_name, show_all, as_json):
    """Show the posts held for the owners; approve or discard one.

    A list whose non_member_posts (or non_poster_posts) is "hold" keeps such
    a post for its owners instead of refusing it. One line per post, newest
    first: id, list, from, subject, why it is held, when, and when it
    expires if nobody decides. `held show ID` shows one post; `held approve
    ID` and `held discard ID` decide it (an approved post goes to the
    members at the next `listfilter sync`).
    """
    if ctx.invoked_subcommand is not None:
        return
    from ..store import membership as MS
    from ..store import moderation as MOD

    config = load_config(ctx)
    lists = [MS.list_address(config, list_name)] if list_name else None
    status = ("held", *MOD.DECIDED_STATUSES) if show_all else ("held",)
    tz = zoneinfo.ZoneInfo(config.site.timezone)
    with open_current_store(config) as store:
        posts = MOD.held_posts(store, lists=lists, status=status, limit=LIMIT)
    if as_json:
        click.echo(json.dumps([_as_json(p) for p in posts], indent=2))
        return
    if not posts:
        click.echo(f"no {'held or decided' if show_all else 'held'} posts{' on ' + lists[0] if lists else ''}")
        return
    for p in posts:
        line = (f"{p.id}\t{p.list_address}\t{p.sender_email or p.envelope_sender}\t{_one_line(p.subject)}"
                f"\t{_one_line(p.reason)}\theld {_local(p.held_at, tz)}\texpires {_local(p.expires_at, tz)}")
        if show_all:
            line += f"\t{p.status}" + (f" by {p.decided_by}" if p.decided_by else "")
        click.echo(line)
    if len(posts) == LIMIT:
        click.echo(f"(the newest {plural(LIMIT, 'post')})", err=True)


def _post(store, held_id: str):
    """The held post ``held_id`` names, its message included; one line and exit 1 if there is none."""
    from ..common.events import valid_id
    from ..store import moderation as MOD

    post = MOD.get(store, held_id.strip().lower()) if valid_id(held_id.strip()) else None
    if post is None:
        fail(f"no held post {held_id!r} (see `listfilter held --all`)")
    return post


@held.command("show")
@click.argument("held_id", metavar="ID")
@click.option("--json", "as_json", is_flag=True, help="Print JSON (the header lines and the text parts too).")
@click.pass_context
def held_show(ctx, held_id, as_json):
    """Show the held post ID: what is known of it, its header lines and its text.

    The text is the post's plain-text parts; a post with only HTML shows
    that HTML as text, never interpreted. Attachments are named, not shown.
    """
    from ..admin.app import held_view

    config = load_config(ctx)
    tz = zoneinfo.ZoneInfo(config.site.timezone)
    with open_current_store(config) as store:
        post = _post(store, held_id)
    view = held_view(post.message)
    if as_json:
        click.echo(json.dumps({**_as_json(post), "headers": view["headers"],
                               "parts": [{"kind": kind, "text": text} for kind, text in view["parts"]],
                               "attachments": view["attachments"]}, indent=2))
        return
    decided = f" by {post.decided_by}, {_local(post.decided_at, tz)}" if post.decided_by or post.decided_at else ""
    for label, value in (("id", post.id), ("list", post.list_address),
                         ("from", post.sender_email or post.envelope_sender),
                         ("envelope sender", post.envelope_sender or "<>"), ("subject", _one_line(post.subject)),
                         ("reason", _one_line(post.reason)), ("status", post.status + decided),
                         ("held at", _local(post.held_at, tz)), ("expires", _local(post.expires_at, tz))):
        click.echo(f"{label}: {value}")
    click.echo("\n# headers")
    for line in view["headers"]:
        click.echo(line)
    for kind, text in view["parts"]:
        click.echo(f"\n# {kind}")
        click.echo(text.rstrip("\n"))
    if not view["parts"]:
        click.echo("\n# no text part (see the message's source on the admin page)")
    for name in view["attachments"]:
        click.echo(f"# attachment: {name}")


def _decide(ctx, held_id: str, action: str, sync_now: bool) -> None:
    from ..store import moderation as MOD

    config = load_config(ctx)
    tz = zoneinfo.ZoneInfo(config.site.timezone)
    now = dt.datetime.now(dt.timezone.utc)
    with open_current_store(config) as store:
        post = _post(store, held_id)
        result = MOD.decide(store, post.id, action, actor(), "cli", now)
        if not result.changed:
            post = MOD.get(store, post.id)
    if not result.changed:
        what = f"held post {post.id} (from {post.sender_email or post.envelope_sender} to {post.list_address})"
        if post.status == "held":  # past its hold_days; sync marks it expired
            fail(f"{what} expired {_local(post.expires_at, tz)}: it can no longer be approved or discarded")
        by = f" by {post.decided_by}" if post.decided_by else ""
        fail(f"{what} was already {post.status}{by} {_local(post.decided_at, tz)}")
    if action == "approve":
        click.echo(f"approved held post {post.id} from {post.sender_email or post.envelope_sender} to"
                   f" {post.list_address}; it is released to the members at the next sync")
    else:
        click.echo(f"discarded held post {post.id} from {post.sender_email or post.envelope_sender} to"
                   f" {post.list_address}; it is not sent, and its poster is not told")
    if sync_now:
        _sync_now(ctx)


@held.command("approve")
@click.argument("held_id", metavar="ID")
@click.option("--sync", "sync_now", is_flag=True, help="Run `listfilter sync` right after (it releases the post).")
@click.pass_context
def held_approve(ctx, held_id, sync_now):
    """Approve the held post ID: the next `listfilter sync` sends it to the list's members.

    The first decision counts, whoever makes it (an owner's reply, the admin
    page, this command); it is recorded with who made it.
    """
    _decide(ctx, held_id, "approve", sync_now)


@held.command("discard")
@click.argument("held_id", metavar="ID")
@click.pass_context
def held_discard(ctx, held_id):
    """Discard the held post ID: it is never sent.

    The first decision counts, whoever makes it; it is recorded with who made it.
    """
    _decide(ctx, held_id, "discard", False)
