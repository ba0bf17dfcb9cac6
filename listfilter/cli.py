"""The ``listfilter`` command line (sync side, built with click).

The mail-side commands (``deliver``) are dispatched by
:mod:`listfilter.launcher` before this module is imported, so a message never
pays for click; they are declared here too so that ``--help`` lists them.
"""

from __future__ import annotations

import functools
import json
import shutil
import sys
import time
from pathlib import Path

import click

from . import config as C
from . import maps as M
from . import roster as R
from . import compiler as K
from . import snapshot as S
from . import sync as Y

EXIT_PROBLEM = 1
EXIT_CONFIG = 2


def fail(message: str, code: int = EXIT_PROBLEM):
    click.echo(f"listfilter: {message}", err=True)
    sys.exit(code)


def handled(fn):
    """Turn the known error classes into one line on stderr and an exit status."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except C.ConfigError as exc:
            fail(f"config error: {exc}", EXIT_CONFIG)
        except R.RosterError as exc:
            fail(f"roster unavailable: {exc}; nothing was changed")
        except M.MapError as exc:
            fail(f"postfix: {exc}")
        except S.SnapshotError as exc:
            fail(str(exc))

    return wrapper


def load_config(ctx: click.Context) -> C.Config:
    return C.load(ctx.obj["config"])


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--config", "config_path", metavar="PATH", envvar=C.CONFIG_ENV,
              default=C.DEFAULT_CONFIG, show_default=True, show_envvar=True,
              help="The list config (TOML).")
@click.version_option(package_name="listfilter")
@click.pass_context
def cli(ctx, config_path):
    """Roster-driven mailing lists on Postfix.

    `sync` (from cron) renders the snapshot and Postfix maps from the list
    config and the roster; Postfix's pipe runs `deliver` for each message.
    """
    ctx.ensure_object(dict)
    ctx.obj["config"] = config_path


# ---------------------------------------------------------------- sync


@cli.command()
@click.option("--dry-run", is_flag=True, help="Write nothing; print a diff of every map and of the snapshot summary.")
@click.option("-v", "--verbose", is_flag=True, help="Also print one line per list.")
@click.option("-q", "--quiet", is_flag=True, help="Print nothing but warnings and errors (for cron).")
@click.pass_context
@handled
def sync(ctx, dry_run, verbose, quiet):
    """Compile the roster into the snapshot and Postfix maps.

    Writes only what changed (atomically), runs postmap for changed maps and
    `postfix reload` when a map changed. If the roster or the config cannot be
    read, nothing is touched and the exit status is non-zero.
    """
    config = load_config(ctx)
    if dry_run:
        plan = Y.plan(config)
        _print_dry_run(config, plan)
        return
    started = time.monotonic()
    result = Y.run(config)
    for warning in result.warnings:
        click.echo(f"listfilter: warning: {warning}", err=True)
    if quiet:
        return
    for note in result.notes:
        click.echo(note)
    plan = result.plan
    if verbose:
        for line in Y.snapshot_summary(plan.lists):
            click.echo(line, nl=False)
    what = []
    if plan.snapshot_changed:
        what.append("snapshot")
    what.extend(f"map {n}" for n in plan.maps_changed)
    members = sum(len(l.members) for l in plan.lists)
    status = ("updated " + ", ".join(what)) if what else "unchanged"
    reload_note = "; postfix reloaded" if result.reloaded else ""
    click.echo(f"sync: {len(plan.lists)} lists, {members} memberships: {status}{reload_note}"
               f" ({time.monotonic() - started:.2f} s)")


def _print_dry_run(config: C.Config, plan: Y.Plan) -> None:
    import difflib

    click.echo(M.diff(config, plan.maps), nl=False)
    old = Y.installed_summary(config)
    new = Y.snapshot_summary(plan.lists)
    snap = str(config.site.snapshot_path)
    click.echo("".join(difflib.unified_diff(old, new, fromfile=snap if old else "/dev/null",
                                            tofile=snap + " (summary)")), nl=False)
    changes = (["snapshot"] if plan.snapshot_changed else []) + plan.maps_changed
    click.echo(f"dry run: would update {', '.join(changes)}" if changes else "dry run: nothing would change")


@cli.command("maps")
@click.pass_context
@handled
def maps_cmd(ctx):
    """Print the Postfix maps that sync would install."""
    config = load_config(ctx)
    plan = Y.plan(config)
    for name, text in plan.maps.items():
        click.echo(f"# ==> {config.site.map_dir / name} <==")
        click.echo(text)


# ---------------------------------------------------------------- lists


def _compiled(config: C.Config) -> list[K.CompiledList]:
    return K.compile_lists(config, R.load(config))


@cli.command("lists")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_context
@handled
def lists_cmd(ctx, as_json):
    """Show every list address with its member count and who may post (live from the roster)."""
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
        click.echo(f"{l.address}\t{l.display_name}\t{len(l.members)} members\tposters: {l.posters_rule}")


@cli.command()
@click.argument("list_name", metavar="LIST")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_context
@handled
def members(ctx, list_name, as_json):
    """Show the members of LIST (a list address, or a list name for every domain it is on)."""
    config = load_config(ctx)
    wanted = list_name.lower()
    lists = [l for l in _compiled(config) if wanted in (l.address, l.name.lower())]
    if not lists:
        fail(f"no list {list_name!r} (see `listfilter lists`)")
    if as_json:
        click.echo(json.dumps({l.address: [{"email": e, "name": n} for e, n in l.members] for l in lists},
                              indent=2))
        return
    for l in lists:
        if len(lists) > 1:
            click.echo(f"# {l.address}")
        for email, name in l.members:
            click.echo(f"{email}\t{name}" if name else email)


# ---------------------------------------------------------------- check


@cli.command()
@click.option("--offline", is_flag=True, help="Check the config file only; do not read the roster or the state.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_context
def check(ctx, offline, as_json):
    """Check the config, the roster, the snapshot and the maps.

    Exit status: 0 all good, 1 a problem found, 2 the config is invalid.
    """
    results: list[tuple[str, bool, str]] = []
    try:
        config = load_config(ctx)
        results.append(("config", True, f"{config.path}: {len(config.lists)} lists on {len(config.domains)} domains"))
    except C.ConfigError as exc:
        results.append(("config", False, str(exc)))
        _report(results, as_json)
        sys.exit(EXIT_CONFIG)
    if not offline:
        results.extend(_online_checks(config))
    _report(results, as_json)
    sys.exit(0 if all(ok for _, ok, _ in results) else EXIT_PROBLEM)


def _online_checks(config: C.Config):
    try:
        rows = R.load(config)
        yield "roster", True, f"{config.roster.source}: {len(rows)} enrollment rows"
    except R.RosterError as exc:
        rows = None
        yield "roster", False, str(exc)
    if config.postfix.map_type != "texthash":
        postmap = config.postfix.command_directory / "postmap"
        yield "postmap", postmap.exists(), str(postmap) + ("" if postmap.exists() else " not found")
    try:
        with S.Snapshot(config.site.snapshot_path) as snap:
            age = time.time() - config.site.snapshot_path.stat().st_mtime
            yield "snapshot", True, (f"{config.site.snapshot_path}: {len(snap.lists())} lists,"
                                     f" generated {snap.meta.get('generated_at')} ({age / 60:.0f} min ago)")
    except S.SnapshotError as exc:
        yield "snapshot", False, str(exc)
    if rows is not None:
        plan = Y.plan(config, rows)
        stale = (["snapshot"] if plan.snapshot_changed else []) + plan.maps_changed
        yield "up to date", not stale, ("installed maps and snapshot match the roster" if not stale
                                        else "out of date: " + ", ".join(stale) + " (run listfilter sync)")
    yield from _store_checks(config)


def _store_checks(config: C.Config):
    """The mail log: schema version, spool backlog, malformed events."""
    from . import migrations as MG
    from . import store as ST

    if not ST.in_use(config):
        return  # no [store], no store file, no events yet: nothing to check
    try:
        with ST.open_store(config.store) as store:
            version = store.version()
            if version == MG.LATEST:
                yield "store", True, f"{config.store.describe()}: schema version {version}, {store.count()} rows"
            elif version < MG.LATEST:
                yield "store", False, (f"{config.store.describe()}: schema version {version} of {MG.LATEST}"
                                       " (run listfilter db upgrade)")
            else:
                yield "store", False, (f"{config.store.describe()}: schema version {version} is newer than this"
                                       f" listfilter knows ({MG.LATEST})")
    except ST.StoreError as exc:
        yield "store", False, str(exc)
    waiting = ST.pending_events(config.site.spool_dir)
    if waiting:
        try:
            age = time.time() - min(p.stat().st_mtime for p in waiting)
        except OSError:
            age = 0
        # sync ingests every few minutes: an hour-old event means the log is not being fed
        yield "spool", age < 3600, (f"{len(waiting)} event(s) wait in {config.site.spool_dir / ST.EVENTS},"
                                    f" oldest {age / 60:.0f} min" + ("" if age < 3600 else " (is sync running?)"))
    bad = ST.bad_events(config.site.spool_dir)
    if bad:
        yield "spool", False, (f"{len(bad)} malformed event file(s) in {config.site.spool_dir / ST.EVENTS / ST.BAD}"
                               " (see the .reason files, then delete them)")
    web = config.web
    if web is not None and web.proxy_header:
        # sign-on through the proxy needs the roster roles that sync writes
        try:
            age = (time.time() - web.roles_file.stat().st_mtime) / 60
            yield "web roles", True, f"{web.roles_file}: written {age:.0f} min ago"
        except OSError:
            yield "web roles", False, (f"{web.roles_file} is missing: only [web] admins can sign in"
                                       " (run listfilter sync)")


def _report(results, as_json: bool) -> None:
    if as_json:
        click.echo(json.dumps({"ok": all(ok for _, ok, _ in results),
                               "checks": [{"name": n, "ok": ok, "detail": d} for n, ok, d in results]},
                              indent=2))
        return
    for name, ok, detail in results:
        click.echo(f"{'ok' if ok else 'PROBLEM':8} {name}: {detail}")


# ---------------------------------------------------------------- postfix


@cli.command("postfix-config")
@click.option("--listfilter", "listfilter_path", metavar="PATH",
              help="Path of the listfilter program for master.cf (default: this one).")
@click.pass_context
@handled
def postfix_config(ctx, listfilter_path):
    """Print the main.cf settings and master.cf entries for this config."""
    from . import postfixconf

    config = load_config(ctx)
    running = Path(sys.argv[0])
    # the program actually running (e.g. /opt/listfilter/bin/listfilter), not whatever is first on $PATH
    program = listfilter_path or (str(running.absolute()) if running.name == "listfilter" else None) \
        or shutil.which("listfilter") or "/usr/local/bin/listfilter"
    click.echo(postfixconf.main_cf(config, program))
    click.echo(postfixconf.master_cf(config, program), nl=False)


# ---------------------------------------------------------------- bounces


def _spool_dir(ctx) -> Path:
    return load_config(ctx).site.spool_dir


@cli.group(invoke_without_command=True)
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_context
@handled
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
@handled
def bounces_clear(ctx, address):
    """Lift the suppression of ADDRESS and forget its bounce score."""
    from . import bounces as B

    if B.clear(_spool_dir(ctx), address):
        click.echo(f"{address.lower()}: suppression lifted, score cleared")
    else:
        fail(f"no bounce record for {address.lower()}")


# ---------------------------------------------------------------- the mail log


def store_handled(fn):
    """Like handled, for the store: one line on stderr and exit 1."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        from . import store as ST

        try:
            return fn(*args, **kwargs)
        except ST.StoreError as exc:
            fail(str(exc))

    return wrapper


@cli.group("db")
def db():
    """The mail log store: schema migrations."""


@db.command("upgrade")
@click.pass_context
@handled
@store_handled
def db_upgrade(ctx):
    """Create or upgrade the store's schema (harmless to run again)."""
    from . import migrations as MG
    from . import store as ST

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
@handled
@store_handled
def db_status(ctx):
    """Show the store's schema version and the migrations still to apply."""
    from . import store as ST

    config = load_config(ctx)
    with ST.open_store(config.store) as store:
        click.echo(f"{config.store.describe()}: schema version {store.version()}")
        pending = store.pending()
        for m in pending:
            click.echo(f"pending migration {m.version}: {m.name}")
        if pending:
            sys.exit(EXIT_PROBLEM)


_STATUS_CHOICE = click.Choice(["delivered", "bounced", "rejected", "failed"])


@cli.command("log")
@click.option("--status", "statuses", type=_STATUS_CHOICE, multiple=True, help="Only this status (repeatable).")
@click.option("--list", "lists", metavar="L", multiple=True,
              help="Only this list: an address, or a list name for every domain it is on (repeatable).")
@click.option("--since", metavar="WHEN", help="Only mail since WHEN: 90m, 12h, 7d, 2w, today, 2026-01-21 or"
                                              " 2026-01-21T09:00 (site time zone).")
@click.option("--limit", type=click.IntRange(min=1), default=50, show_default=True, help="At most N rows.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON (one array; bodies left out).")
@click.pass_context
@handled
@store_handled
def log_cmd(ctx, statuses, lists, since, limit, as_json):
    """Show the mail log, newest first (moving new spool events into the store first)."""
    import zoneinfo

    from . import store as ST
    from .store import oneline

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
            result = ST.ingest(store, config.site.spool_dir, wait=False)
            for name, reason in result.bad:
                click.echo(f"listfilter: warning: spool event {name} is malformed, moved aside: {reason}", err=True)
        except OSError as exc:  # e.g. run as a user who may not write the spool: show what is there
            click.echo(f"listfilter: warning: spool not read: {exc.strerror}", err=True)
        entries = store.entries(status=statuses or None, lists=addresses or None, since=when, limit=limit,
                                body_chars=0)
    if as_json:
        click.echo(json.dumps([e.as_json() for e in entries], indent=2, ensure_ascii=False))
        return
    for e in entries:
        sender = f"{oneline(e.sender_name)} <{oneline(e.sender_email)}>" if e.sender_name else oneline(e.sender_email)
        click.echo("\t".join([e.created_at.astimezone(tz).strftime("%Y-%m-%d %H:%M %Z"), e.status, e.list_address,
                               sender or "-", str(e.recipient_count), oneline(e.subject) or "(no subject)"]))


# ---------------------------------------------------------------- web


@cli.group("web", invoke_without_command=True)
@click.option("--bind", metavar="HOST:PORT", help="Listen here (default: [web] bind, else 127.0.0.1:8080).")
@click.pass_context
@handled
@store_handled
def web_cmd(ctx, bind):
    """Serve the admin pages (/email) with waitress. `listfilter web passwd` makes a password hash."""
    if ctx.invoked_subcommand is not None:
        return
    from . import web as W

    config = load_config(ctx)
    if bind is not None:
        try:
            C.parse_bind(bind)
        except ValueError as exc:
            raise click.BadParameter(str(exc), param_hint="--bind") from None
    try:
        W.serve(config, bind)
    except W.WebError as exc:
        fail(str(exc))
    except OSError as exc:
        fail(f"cannot listen on {bind or config.web.bind}: {exc.strerror or exc}")


@web_cmd.command("passwd")
@click.argument("user", required=False)
@click.option("--stdin", "from_stdin", is_flag=True, help="Read the password from standard input (one line).")
def web_passwd(user, from_stdin):
    """Print a password hash for [web.accounts] (the password is asked twice)."""
    from . import auth as A

    if from_stdin:
        password = sys.stdin.readline().rstrip("\r\n")
    else:
        password = click.prompt("Password", hide_input=True, confirmation_prompt=True)
    if len(password) < 8:
        fail("the password is too short (at least 8 characters)")
    hashed = A.hash_password(password)
    if user:
        click.echo(f'"{user.lower()}" = "{hashed}"')
    else:
        click.echo(hashed)


# ---------------------------------------------------------------- mail side


_MAIL_HELP = {
    "deliver": "Filter one message from Postfix's pipe (stdin).",
    "bounce": "Process one bounce sent to a list's -bounces address (stdin).",
    "policy": "Answer Postfix policy requests on stdin/stdout (run by spawn).",
}


def _mail_command(name: str):
    """A stand-in so `listfilter --help` lists the mail-side commands; the
    launcher runs them without click (see listfilter.launcher)."""

    @click.pass_context
    def run(ctx):
        from .launcher import run_mail_command

        sys.exit(run_mail_command(["--config", ctx.obj["config"], name, *ctx.args]))

    run.__doc__ = f"{_MAIL_HELP[name]} `listfilter {name} --help` for options."
    return cli.command(name, context_settings={"ignore_unknown_options": True, "allow_extra_args": True,
                                               "help_option_names": []})(run)


for _name in _MAIL_HELP:
    _mail_command(_name)


def main(argv=None):
    cli(args=argv, prog_name="listfilter")
