"""`check`: the config, the roster, the snapshot, the maps and the store, each ok or a problem."""

from __future__ import annotations

import json
import sys
import time

import click

from ..common import snapshot as S
from ..common import spool as SP
from ..common.errors import EXIT_CONFIG, EXIT_PROBLEM
from ..sync import config as C
from ..sync import roster as R
from ..sync import run as Y
from . import cli, load_config

# ---------------------------------------------------------------- check


@cli.command()
@click.option("--offline", is_flag=True, help="Check the config file only; do not read the roster or the state.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_context
def check(ctx, offline, as_json):
    """Check the config, the roster, the snapshot and the maps.

    Exit status: 0 all good, 1 a problem found, 78 the config is invalid.
    """
    results: list[tuple[str, bool, str]] = []
    try:
        config = load_config(ctx)
        results.append(("config", True, f"{config.path}: {len(config.lists)} lists on {len(config.domains)} domains"))
    except C.ConfigError as exc:
        results.append(("config", False, str(exc)))
        _report(results, as_json)
        sys.exit(EXIT_CONFIG)
    results.extend(_web_checks(config))
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
    from ..store import database as ST
    from ..store.ingest import in_use
    from ..store import migrations as MG

    if not in_use(config):
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
    for area, what in ((SP.EVENTS, "event"), (SP.BOUNCES, "bounce record")):
        waiting = SP.waiting(config.site.spool_dir, area)
        if waiting:
            try:
                age = time.time() - min(p.stat().st_mtime for p in waiting)
            except OSError:
                age = 0
            # sync ingests every few minutes: an hour-old record means the store is not being fed
            yield "spool", age < 3600, (f"{len(waiting)} {what}(s) wait in {config.site.spool_dir / area},"
                                        f" oldest {age / 60:.0f} min" + ("" if age < 3600 else " (is sync running?)"))
        bad = SP.bad_records(config.site.spool_dir, area)
        if bad:
            yield "spool", False, (f"{len(bad)} malformed {what} file(s) in {config.site.spool_dir / area / SP.BAD}"
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


def _web_checks(config: C.Config):
    """[web], from the config alone: password hashes against OWASP's minimums, a proxy any local user could be."""
    from ..admin import auth as A

    web = config.web
    if web is None:
        return
    weak = [(user, A.hash_weakness(stored)) for user, stored in sorted(web.accounts.items())]
    for user, why in weak:
        if why:
            yield "web accounts", False, (f"{user}: the password hash is {why}, below OWASP's minimum"
                                          f" (make a new one with `listfilter web passwd {user}`)")
    if web.accounts and not any(why for _, why in weak):
        yield "web accounts", True, f"{len(web.accounts)} account(s), every hash meets OWASP's minimums"
    if not web.proxies:
        return
    host, _ = C.parse_bind(web.bind)
    for proxy in A.spoofable_proxies(web, host):
        yield "web proxies", False, (f"{proxy} is an address local users can connect from to the app"
                                     f" (bind {web.bind}): any of them could claim to be anyone."
                                     " Set [web] proxy_secret_env, or bind where only the proxy connects"
                                     " from (docs/web.md)")
    if web.proxy_secret_env:
        try:
            A.proxy_secret(web)
            yield "web proxies", True, (f"requests count as the proxy's only with the secret in"
                                        f" ${web.proxy_secret_env}")
        except ValueError as exc:
            yield "web proxies", False, str(exc)


def _report(results, as_json: bool) -> None:
    if as_json:
        click.echo(json.dumps({"ok": all(ok for _, ok, _ in results),
                               "checks": [{"name": n, "ok": ok, "detail": d} for n, ok, d in results]},
                              indent=2))
        return
    for name, ok, detail in results:
        click.echo(f"{'ok' if ok else 'PROBLEM':8} {name}: {detail}")
