"""`sync`, `maps`, `lists` and `postfix-config`: compiling and showing the lists (`members`: :mod:`.members`)."""

from __future__ import annotations

import json
import shutil
import sys
import time
from pathlib import Path

import click

from ..common.paths import SERVICE_USER
from ..common.words import plural
from ..sync import compiler as K
from ..sync import config as C
from ..sync import maps as M
from ..sync import roster as R
from ..sync import run as Y
from . import cli, load_config

#: Overrides --user's default (e.g. ``root`` for a sync that must not divide itself).
SYNC_USER_ENV = "LISTFILTER_SYNC_USER"

# ---------------------------------------------------------------- sync


def _service_user(ctx: click.Context, user: str) -> str | None:
    """The user sync divides itself for; None (undivided) on a host without the default one.

    A host that has never been set up for Postfix (trying the bundled example
    as root) has no ``listfilter`` user, and no mail side that could run as
    it: sync says so and runs as it is. A user named with --user or
    $LISTFILTER_SYNC_USER must exist.
    """
    import os
    import pwd

    if os.geteuid() != 0 or ctx.get_parameter_source("user") != click.core.ParameterSource.DEFAULT:
        return user
    try:
        pwd.getpwnam(user)
    except KeyError:
        click.echo(f"listfilter: warning: no {user!r} user on this host, so sync runs entirely as root;"
                   " create it before Postfix runs the mail side (docs/postfix.md)", err=True)
        return None
    return user


@cli.command()
@click.option("--dry-run", is_flag=True, help="Write nothing; print a diff of every map and of the snapshot summary.")
@click.option("-v", "--verbose", is_flag=True, help="Also print one line per list.")
@click.option("-q", "--quiet", is_flag=True, help="Print nothing but warnings and errors (for cron).")
@click.option("--user", metavar="NAME", default=SERVICE_USER, show_default=True, envvar=SYNC_USER_ENV,
              show_envvar=True, help="When run as root, do all but installing the Postfix maps and"
              " reloading as this user (the one master.cf runs the mail side as); `root` keeps all of it as root.")
@click.pass_context
def sync(ctx, dry_run, verbose, quiet, user):
    """Compile the roster into the snapshot and Postfix maps.

    Writes only what changed (atomically), runs postmap for changed maps and
    `postfix reload` when a map changed. If the roster or the config cannot be
    read, nothing is touched and the exit status is non-zero. Run as root, it
    reads the roster and writes the snapshot, the spool and the mail log as
    --user, and keeps root for the maps and the reload (docs/operations.md).
    """
    from ..sync import privilege as P

    config = load_config(ctx)
    user = _service_user(ctx, user)
    if dry_run:
        if (staging := config.staging_note()) is not None:
            click.echo(f"listfilter: {staging}", err=True)
        text = P.as_user(user, lambda: _dry_run_text(config), reads=(config.site.state_dir, config.site.map_dir))
        click.echo(text, nl=False)
        return
    started = time.monotonic()
    result = Y.run(config, user)
    for warning in result.warnings:
        click.echo(f"listfilter: warning: {warning}", err=True)
    if (staging := config.staging_note()) is not None:  # on every run, --quiet or not
        click.echo(f"listfilter: {staging}", err=True)
    if quiet:
        return
    for note in result.notes:
        click.echo(note)
    plan = result.plan
    count, members, summary = _shown(result)
    if verbose:
        for line in summary:
            click.echo(line, nl=False)
    what = []
    if plan.snapshot_changed:
        what.append("snapshot")
    what.extend(f"map {n}" for n in plan.maps_changed)
    status = ("updated " + ", ".join(what)) if what else "unchanged"
    reload_note = "; postfix reloaded" if result.reloaded else ""
    click.echo(f"sync: {plural(count, 'list')}, {plural(members, 'membership')}: {status}{reload_note}"
               f" ({time.monotonic() - started:.2f} s)")


def _shown(result: Y.Result) -> tuple[int, int, list[str]]:
    """(lists, memberships, one line per list) of a sync; a divided sync's root has only these."""
    from ..sync import privilege as P

    if isinstance(result, P.Divided):
        return result.list_count, result.memberships, result.summary
    lists = result.plan.lists
    return len(lists), sum(len(l.members) for l in lists), Y.snapshot_summary(lists)


def _dry_run_text(config: C.Config) -> str:
    """What ``sync --dry-run`` prints: it reads the roster, so it runs as --user (a string crosses the pipe)."""
    import difflib

    plan = Y.plan(config)
    old = Y.installed_summary(config)
    new = Y.snapshot_summary(plan.lists)
    snap = str(config.site.snapshot_path)
    changes = (["snapshot"] if plan.snapshot_changed else []) + plan.maps_changed
    return (M.diff(config, plan.maps)
            + "".join(difflib.unified_diff(old, new, fromfile=snap if old else "/dev/null", tofile=snap + " (summary)"))
            + (f"dry run: would update {', '.join(changes)}" if changes else "dry run: nothing would change") + "\n")


@cli.command("maps")
@click.pass_context
def maps_cmd(ctx):
    """Print the Postfix maps that sync would install."""
    config = load_config(ctx)
    plan = Y.plan(config)
    for name, text in plan.maps.items():
        click.echo(f"# ==> {config.site.map_dir / name} <==")
        click.echo(text)


# ---------------------------------------------------------------- lists


def _compiled(config: C.Config) -> list:
    """The lists as the next sync would compile them: the roster's members and the store's
    (extra and joined members; a store that is down keeps the installed snapshot's, with a warning)."""
    from ..store.membersync import before_sync

    kept = before_sync(config, ingest=False)
    warnings = kept.warnings + ([f"extra and joined members not read: {kept.store_error}{kept.kept_note()}"]
                                if kept.store_error else [])
    for warning in warnings:
        click.echo(f"listfilter: warning: {warning}", err=True)
    return K.compile_lists(config, R.load(config), kept.added)


@cli.command("lists")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_context
def lists_cmd(ctx, as_json):
    """Show every list address with its member count and who may post (live, as the next sync would)."""
    config = load_config(ctx)
    lists = _compiled(config)
    if as_json:
        click.echo(json.dumps([
            {"address": l.address, "name": l.name, "display_name": l.display_name,
             "description": l.description, "members": len(l.members), "posters": len(l.posters),
             "posters_rule": l.posters_rule, "reply_to": l.reply_to, "owners": list(l.owners)}
            for l in lists], indent=2))
        return
    for l in lists:
        click.echo(f"{l.address}\t{l.display_name}\t{plural(len(l.members), 'member')}\tposters: {l.posters_rule}")


# ---------------------------------------------------------------- postfix


@cli.command("postfix-config")
@click.option("--listfilter", "listfilter_path", metavar="PATH",
              help="Path of the listfilter program for master.cf (default: this one).")
@click.pass_context
def postfix_config(ctx, listfilter_path):
    """Print the main.cf settings and master.cf entries for this config.

    When list domains are signed ([dkim]), OpenDKIM's KeyTable, SigningTable
    and opendkim.conf settings follow; when inbound mail is verified
    ([verify]), the header_checks table and the settings of the verifying
    OpenDKIM and of OpenDMARC.

    For a relay with a login, first write its login table (root's, mode 0600)
    from the password in the environment or the password file.
    """
    from ..sync import postfixconf

    config = load_config(ctx)
    running = Path(sys.argv[0])
    # the program actually running (e.g. /opt/listfilter/bin/listfilter), not whatever is first on $PATH
    program = listfilter_path or (str(running.absolute()) if running.name == "listfilter" else None) \
        or shutil.which("listfilter") or "/usr/local/bin/listfilter"
    # the relay's password cannot go in main.cf: it goes in a table of root's, before the lines that name it
    if postfixconf.install_login_table(config):
        click.echo(f"listfilter: wrote {postfixconf.login_table(config)} (mode 0600) with the relay login"
                   f" from {config.site.relay.password_source()}", err=True)
    click.echo(postfixconf.main_cf(config, program))
    click.echo(postfixconf.master_cf(config, program), nl=False)
    if config.dkim:  # OpenDKIM's tables and settings, for the sites that sign
        click.echo()
        click.echo(postfixconf.opendkim(config), nl=False)
    if config.verify:  # header_checks and the verifying milters' settings, for the sites that verify
        click.echo()
        click.echo(postfixconf.verify_files(config), nl=False)
