"""`bounces` and `bounces clear`: bounce scores and suppressed addresses, from the store.

Scoring is sync's (:mod:`listfilter.store.bounces`); these commands only read
the store, or lift one suppression. A store that cannot be used is a
StoreError, which the command group reports as one line with exit status 1.
"""

from __future__ import annotations

import json

import click

from ..common.words import plural

from . import cli, fail, load_config, open_current_store


@cli.group(invoke_without_command=True)
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_context
def bounces(ctx, as_json):
    """Show bounce scores and suppressed addresses.

    An address whose mail bounces permanently on 5 different days (with no
    gap of more than 7 days) is suppressed: no list sends to it, and the
    owners of the list it bounced from get one notice, until
    `listfilter bounces clear ADDRESS`. `listfilter sync` does the scoring.
    """
    if ctx.invoked_subcommand is not None:
        return
    from ..store import bounces as B

    with open_current_store(load_config(ctx)) as store:
        scores, notices = B.scores(store), B.notices(store)
    if as_json:
        click.echo(json.dumps({"scores": [s.as_json() for s in scores],
                               "suppressed": sorted(s.address for s in scores if s.suppressed),
                               "notices": [n.as_json() for n in notices]}, indent=2))
        return
    if not scores:
        click.echo("no bounces recorded")
    latest = {n.address: n for n in notices}  # oldest first: the last one wins
    for s in scores:
        line = (f"{s.address}\tscore {s.score}\tlast {s.last_bounce.isoformat() if s.last_bounce else '-'}\t"
                f"{', '.join(s.lists)}")
        if s.suppressed:
            line += f"\tSUPPRESSED ({s.reason}){_notice_state(latest.get(s.address))}"
        click.echo(line)


def _notice_state(notice) -> str:
    if notice is None:
        return ""
    if notice.status == "sent":
        return "; owners told"
    if notice.status == "owed":
        tried = f", {plural(notice.attempts, 'failed attempt')}: {notice.last_error}" if notice.attempts else ""
        return f"; owners' notice owed{tried}"
    return f"; owners' notice dropped: {notice.last_error}"


@bounces.command("records")
@click.option("--days", type=click.IntRange(min=1), default=7, show_default=True,
              help="Show the reports sync read in the last DAYS days.")
@click.option("--not-counted", is_flag=True, help="Only the reports that did not count, with why.")
@click.option("--limit", type=click.IntRange(min=1), default=200, show_default=True, help="Show at most this many.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_context
def bounces_records(ctx, days, not_counted, limit, as_json):
    """Show the bounce reports sync read, newest first, and whether each counted.

    A report counts only for a current member and for a post the mail log
    shows was delivered to that member in the last 7 days, once per post;
    the others are kept with the reason (a forged or stray report, a delay,
    a second report for one post).
    """
    from ..store import bounces as B

    with open_current_store(load_config(ctx)) as store:
        rows = B.records(store, days=days, not_counted=not_counted, limit=limit)
    if as_json:
        click.echo(json.dumps([r.as_json() for r in rows], indent=2))
        return
    if not rows:
        click.echo(f"no bounce reports{' not counted' if not_counted else ''} in the last {days} day(s)")
    for r in rows:
        when = r.received_at.isoformat(timespec="seconds") if r.received_at else "-"
        verdict = "counted" if r.counted else f"NOT COUNTED: {r.reason}"
        click.echo(f"{when}\t{r.list_address}\t{r.member or '(no VERP member)'}\t{verdict}")


@bounces.command("clear")
@click.argument("address")
@click.pass_context
def bounces_clear(ctx, address):
    """Lift the suppression of ADDRESS and forget its bounce score.

    The store changes at once; the lists send to ADDRESS again from the next
    `listfilter sync`, which installs a snapshot without it.
    """
    from ..store import bounces as B

    address = address.strip().lower()
    with open_current_store(load_config(ctx)) as store:
        was = B.clear(store, address)
    if was is None:
        fail(f"no bounce score for {address}")
    if was.suppressed:
        click.echo(f"{address}: suppression lifted, score {was.score} cleared;"
                   " the lists send to it again after the next `listfilter sync`")
    else:
        click.echo(f"{address}: score {was.score} cleared (it was not suppressed)")
