"""`check`: the config, the roster, Postfix, syslog, the snapshot, the maps and the store, each ok or a problem."""

from __future__ import annotations

import errno
import json
import socket
import stat
import sys
import time
from pathlib import Path

import click

from ..common import snapshot as S
from ..common import spool as SP
from ..common.errors import EXIT_CONFIG, EXIT_PROBLEM
from ..common.paths import SERVICE_USER
from ..common.words import plural
from ..sync import config as C
from ..sync import maps as M
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
        results.append(("config", True, f"{config.path}: {plural(len(config.lists), 'list')}"
                                         f" on {plural(len(config.domains), 'domain')}"))
    except C.ConfigError as exc:
        results.append(("config", False, str(exc)))
        _report(results, as_json)
        sys.exit(EXIT_CONFIG)
    if (staging := config.staging_note()) is not None:
        results.append(("staging", True, staging))
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
    yield from _host_checks(config)
    yield from _verify_checks(config)
    yield from _relay_checks(config)
    try:
        with S.Snapshot(config.site.snapshot_path) as snap:
            age = time.time() - config.site.snapshot_path.stat().st_mtime
            yield "snapshot", True, (f"{config.site.snapshot_path}: {plural(len(snap.lists()), 'list')},"
                                     f" generated {snap.meta.get('generated_at')} ({age / 60:.0f} min ago)")
    except S.SnapshotError as exc:
        yield "snapshot", False, str(exc)
    if rows is not None:
        plan = Y.plan(config, rows)
        stale = (["snapshot"] if plan.snapshot_changed else []) + plan.maps_changed
        yield "up to date", not stale, ("installed maps and snapshot match the roster" if not stale
                                        else "out of date: " + ", ".join(stale) + " (run listfilter sync)")
    yield from _store_checks(config)
    yield from _token_key_check(config)


#: The user the admin app runs as (docs/web.md); it reads the token key for one-click unsubscribe links.
WEB_USER = "listfilter-web"


def _token_key_check(config: C.Config):
    """The token key (common.tokens), where a list needs one: made by sync, readable by deliver (pipe(8):
    the service user with its own group or postfix.log_group) and, for one-click links, by the admin app."""
    import grp
    import pwd

    lists = [l for l in config.lists.values() if l.signs_tokens]
    if not lists:
        return
    path = config.site.token_key
    try:
        st = path.stat()
    except OSError as exc:
        yield "token key", False, (f"{path}: {exc.strerror}: confirmations and held-post decisions defer until"
                                   " `listfilter sync` makes it")
        return

    def can_read(name: str, groups: set[int]) -> bool | None:
        try:
            user = pwd.getpwnam(name)
        except KeyError:
            return None
        return _readable(st, user.pw_uid, groups | {user.pw_gid})

    if st.st_mode & 0o007:
        yield "token key", False, (f"{path} is readable by every local user (mode {st.st_mode & 0o777:04o}):"
                                   f" anyone could confirm a join or approve a post; chmod 0640 {path}")
        return
    groups = set()
    if config.postfix.log_group:
        try:
            groups.add(grp.getgrnam(config.postfix.log_group).gr_gid)
        except KeyError:
            pass
    if can_read(SERVICE_USER, groups) is False:
        yield "token key", False, (f"{path} is not readable by deliver ({SERVICE_USER}): every request and held post"
                                   f" defers; chown {SERVICE_USER} {path}")
        return
    one_click = config.web is not None and config.web.url and any(l.optin for l in lists)
    if one_click:
        try:
            web_groups = {g.gr_gid for g in grp.getgrall() if WEB_USER in g.gr_mem}
        except KeyError:
            web_groups = set()
        if can_read(WEB_USER, web_groups) is False:
            yield "token key", False, (f"{path} is not readable by the admin app ({WEB_USER}): one-click unsubscribe"
                                       f" links are refused; chgrp {WEB_USER} {path} (docs/web.md)")
            return
    yield "token key", True, (f"{path}: readable by deliver" + (" and the admin app" if one_click else "")
                              + f", for {plural(len(lists), 'list')} with confirmations or held posts")


#: Where syslog(3) sends every line (glibc's _PATH_LOG). Python's syslog module, which the mail programs log
#: with, cannot be pointed anywhere else; the tests point this at a socket of their own.
SYSLOG_SOCKET = Path("/dev/log")
#: The checks whose verdict is this host's (Postfix running, syslog, the log deliver reads), not the config's.
HOST_CHECKS = ("postfix", "syslog", "postfix log")

#: Debian's init script and postfix@.service run /usr/lib/postfix/configure-instance.sh before `postfix start`:
#: it copies /etc/hosts, resolv.conf and the like into the chroot under the queue directory.
START_POSTFIX = ("start it with `service postfix start` (or `systemctl start postfix`), not `postfix start`,"
                 " which skips Debian's chroot set-up (hosts, resolv.conf)")


def _host_checks(config: C.Config):
    """Postfix installed and running, and a syslog daemon on /dev/log, for the Postfix the config names."""
    postconf = config.postfix.command_directory / "postconf"
    settings: dict[str, str] = {}
    if not postconf.exists():
        yield "postfix", False, (f"not installed: {postconf} not found (apt-get install postfix,"
                                 " or set postfix.command_directory)")
    else:
        try:
            out = M.run_postfix(config, "postconf", "queue_directory", "process_id_directory", "maillog_file")
            settings = dict(line.split(" = ", 1) for line in out.splitlines() if " = " in line)
            pid_file = Path(settings["queue_directory"]) / settings["process_id_directory"] / "master.pid"
        except (M.MapError, KeyError) as exc:
            yield "postfix", False, f"cannot read main.cf: {exc}"
        else:
            running, detail = master_running(pid_file)
            if running is None:  # master.pid is root's (mode 0600): ask Postfix's showq service instead
                running, detail = _showq_answers(config, detail)
            if running is None:
                yield "postfix", False, f"cannot tell whether it runs: {detail}"
            else:
                yield "postfix", running, (f"running ({detail})" if running else
                                           f"not running ({detail}): {START_POSTFIX}")
    why = syslog_unreachable(SYSLOG_SOCKET)
    maillog = settings.get("maillog_file", "")
    if why is None:
        yield "syslog", True, f"{SYSLOG_SOCKET} accepts log lines" + (
            f"; Postfix logs to {maillog} itself (maillog_file)" if maillog else "")
    else:
        lost = (f"Postfix logs to {maillog} itself (maillog_file), but listfilter's own lines need a syslog daemon"
                if maillog else "no syslog daemon: Postfix's and listfilter's log lines are lost, no message can be traced")
        yield "syslog", False, (f"{why}: {lost}; install one (apt-get install rsyslog),"
                                f" or run systemd-journald, which provides {SYSLOG_SOCKET}")
    if settings and config.postfix.journal:
        yield from _journal_check(config, maillog)
    elif settings:
        yield from _log_file_check(config, maillog)


def _journal_check(config: C.Config, maillog: str):
    """``log_source = "journal"``: Postfix logs through syslog, and the journal's mail lines can be read."""
    from ..sync.postfixlog import JournalReader

    if maillog:
        yield "postfix log", False, (f"Postfix logs to {maillog} (maillog_file), not to the journal:"
                                     f' set log_source = "file" and log_file = "{maillog}"')
        return
    reader = JournalReader(directory=config.postfix.journal_directory)
    try:
        count = sum(1 for _ in zip(range(1), reader.raw_lines()))
    except OSError as exc:
        yield "postfix log", False, (f"the journal cannot be read: {exc.strerror or exc} (run sync as a user in the"
                                     " systemd-journal group)")
        return
    where = f" in {config.postfix.journal_directory}" if config.postfix.journal_directory else ""
    yield "postfix log", True, f"the journal{where} is readable" + ("" if count else ", with no mail lines yet")


def _log_file_check(config: C.Config, maillog: str):
    """The log the mail side reads on a retry after a kill ([postfix] log_file): Postfix's, and readable by listfilter."""
    import grp
    import pwd

    log_file = config.postfix.log_file
    if maillog and Path(maillog) != log_file:
        yield "postfix log", False, (f"Postfix logs to {maillog} (maillog_file), but postfix.log_file is {log_file}:"
                                     f' set log_file = "{maillog}"')
        return
    try:
        st = log_file.stat()
    except OSError as exc:
        yield "postfix log", False, (f"{log_file}: {exc.strerror} (is syslog writing the mail facility there?"
                                     " Otherwise set postfix.log_file)")
        return
    try:
        user = pwd.getpwnam(SERVICE_USER)
    except KeyError:
        return  # no listfilter user yet: the privileges check says so
    # pipe(8) runs deliver with the user's own group, or postfix.log_group: never its other groups
    gid = user.pw_gid
    if config.postfix.log_group:
        try:
            gid = grp.getgrnam(config.postfix.log_group).gr_gid
        except KeyError:
            yield "postfix log", False, f"postfix.log_group: no group {config.postfix.log_group!r} on this host"
            return
    readable = _readable(st, user.pw_uid, {gid})
    who = f"{SERVICE_USER}:{_group_name(gid)}"
    if readable:
        yield "postfix log", True, f"{log_file} is readable by deliver ({who})"
    else:
        yield "postfix log", False, (f"{log_file} is not readable by deliver ({who}): a retry after a killed delivery"
                                     f' cannot tell what Postfix took (set postfix.log_group = "{_group_name(st.st_gid)}"'
                                     " and update master.cf from listfilter postfix-config)")


def _readable(st, uid: int, gids: set[int]) -> bool:
    """Whether a file with this stat can be read by ``uid`` running with the groups ``gids``."""
    return bool(st.st_mode & 0o004 or (st.st_mode & 0o040 and st.st_gid in gids)
                or (st.st_mode & 0o400 and st.st_uid == uid))


def _group_name(gid: int) -> str:
    import grp

    try:
        return grp.getgrgid(gid).gr_name
    except KeyError:
        return str(gid)


def master_running(pid_file: Path) -> tuple[bool | None, str]:
    """Whether the master process named in Postfix's ``master.pid`` is alive: (running, detail).

    None when this user may not read the file (root's, mode 0600). The file stays
    behind after ``postfix stop``, and its pid may since belong to another
    process: only a live process called ``master`` counts.
    """
    try:
        text = pid_file.read_text()
    except PermissionError:
        return None, f"{pid_file} is not readable by this user"
    except FileNotFoundError:
        return False, f"no {pid_file}"
    except OSError as exc:
        return False, f"{pid_file}: {exc.strerror}"
    try:
        pid = int(text.split()[0])
    except (ValueError, IndexError):
        return False, f"{pid_file} holds no process id"
    try:  # proc(5): "pid (comm) state …"; a zombie has ended, whatever its name
        head, _, rest = Path(f"/proc/{pid}/stat").read_text().rpartition(")")
        name, state = head.partition("(")[2], rest.split()[0]
    except (OSError, IndexError):
        state = "X"
    if state in ("Z", "X"):
        return False, f"master process {pid} of {pid_file} has ended"
    if name != "master":
        return False, f"{pid_file} names process {pid}, which is {name}, not Postfix's master"
    return True, f"master process {pid}"


def _showq_answers(config: C.Config, unreadable: str) -> tuple[bool | None, str]:
    """``postqueue -j`` as a user who may not read master.pid.

    For such a user postqueue fails with "mail system is down" when the master
    is not running; root's postqueue would read the queue directly instead and
    succeed, which is why root reads master.pid.
    """
    try:
        M.run_postfix(config, "postqueue", "-j")
    except M.MapError as exc:
        if "mail system is down" in str(exc):
            return False, f"{config.postfix.command_directory / 'postqueue'}: mail system is down"
        return None, f"{unreadable}, and {exc}; run check as root"
    return True, f"{config.postfix.command_directory / 'postqueue'} reached its showq service"


def syslog_unreachable(path: Path) -> str | None:
    """Why syslog(3) could not write to ``path``, or None when a daemon listens there.

    syslog(3) connects a datagram socket first, and a stream socket when the
    listener is one (EPROTOTYPE); so does this.
    """
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        return f"{path} does not exist"
    except OSError as exc:
        return f"{path}: {exc.strerror}"
    if not stat.S_ISSOCK(mode):
        return f"{path} is not a socket"
    for kind in (socket.SOCK_DGRAM, socket.SOCK_STREAM):
        with socket.socket(socket.AF_UNIX, kind) as sock:
            try:
                sock.connect(str(path))
                return None
            except OSError as exc:
                if exc.errno == errno.ECONNREFUSED:
                    return f"nothing listens on {path} ({exc.strerror})"
                if exc.errno != errno.EPROTOTYPE:
                    return f"cannot connect to {path} ({exc.strerror})"
    return f"nothing listens on {path}"


#: How long check waits for a milter to accept a connection: one on this host answers at once.
MILTER_TIMEOUT = 2.0


def milter_unreachable(address: str, timeout: float = MILTER_TIMEOUT) -> str | None:
    """Why nothing accepts a connection at a milter ``address`` (``inet:HOST:PORT`` or ``unix:/PATH``,
    as main.cf's smtpd_milters names it), or None when something does.

    Only the connection is tried: a milter speaks first only after the MTA's
    option negotiation, so a connect is what smtpd itself finds out first.
    """
    if address.startswith("unix:"):
        family, target = socket.AF_UNIX, address[len("unix:"):]
    else:
        host, _, port = address[len("inet:"):].rpartition(":")
        host = host.strip("[]")
        family, target = (socket.AF_INET6 if ":" in host else socket.AF_INET), (host, int(port))
    try:
        if family == socket.AF_UNIX:
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
                sock.settimeout(timeout)
                sock.connect(target)
        else:
            socket.create_connection(target, timeout=timeout).close()
    except TimeoutError:
        return f"{address}: no answer within {timeout:g} s"
    except OSError as exc:
        return f"{address}: {exc.strerror or exc}"
    return None


def _verify_checks(config: C.Config):
    """The inbound milters, when a list counts a post as the poster's only with their Authentication-Results."""
    strict = sorted({name for name, lst in config.lists.items() if lst.require_authenticated})
    if config.verify is None or not strict:
        return
    milters = (("OpenDKIM", config.verify.opendkim), ("OpenDMARC", config.verify.opendmarc))
    down = [f"{what} at {why}" for what, address in milters if (why := milter_unreachable(address))]
    if not down:
        yield "verify milters", True, (", ".join(f"{what} at {address}" for what, address in milters)
                                       + " accept connections")
        return
    effect = ("smtpd defers every post (verify.default_action = tempfail)"
              if config.verify.default_action == "tempfail" else
              "posts arrive unverified and are refused (verify.default_action = accept)")
    yield "verify milters", False, (f"{'; '.join(down)}: {effect} to {', '.join(strict)}"
                                    " (require_authenticated); start the milters (docs/deliverability.md)")


def _relay_checks(config: C.Config):
    """The relay's login: its password present and private, and the login table Postfix reads up to date."""
    from ..sync import postfixconf as PC

    relay = config.site.relay
    if PC.login_table(config) is None:
        return
    try:
        password = relay.resolved_password()
    except C.ConfigError as exc:
        yield "relay login", False, exc.message
        return
    problem = PC.login_table_problem(config, password)
    if problem:
        yield "relay login", False, problem
    else:
        yield "relay login", True, (f"{relay.username} at {PC.relayhost(relay)}: password from"
                                    f" {relay.password_source()}, in {relay.password_map} (mode 0600)")


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
                yield "store", True, f"{config.store.describe()}: schema version {version}, {plural(store.count(), 'row')}"
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
            yield "spool", age < 3600, (f"{plural(len(waiting), what)} waiting in {config.site.spool_dir / area},"
                                        f" oldest {age / 60:.0f} min" + ("" if age < 3600 else " (is sync running?)"))
        bad = SP.bad_records(config.site.spool_dir, area)
        if bad:
            yield "spool", False, (f"{plural(len(bad), f'malformed {what} file')} in {config.site.spool_dir / area / SP.BAD}"
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
    """[web], from the config and its accounts file: where the password hashes are, and the file's mode;
    the hashes against OWASP's minimums; a way in at all; a proxy any local user could be."""
    from ..admin import auth as A

    web = config.web
    if web is None:
        return
    try:
        from_file, warning = A.read_accounts_file(web.accounts_file)
    except A.AccountsFileError as exc:
        from_file, warning = {}, None
        yield "web accounts", False, str(exc)
    if warning:  # a warning: the app still starts
        yield "web accounts", True, f"warning: {warning}"
    if web.accounts:
        yield "web accounts", True, (
            f"warning: {plural(len(web.accounts), 'password hash', 'password hashes')} in [web.accounts] of"
            f" {config.path}, which every local user can read and which is meant for version control:"
            f" run `listfilter web passwd --from-config` to copy {'it' if len(web.accounts) == 1 else 'them'}"
            f" to {web.accounts_file},"
            f" then delete [web.accounts] from {config.path}")
    accounts = {**web.accounts, **from_file}
    weak = [(user, A.hash_weakness(stored)) for user, stored in sorted(accounts.items())]
    for user, why in weak:
        if why:
            yield "web accounts", False, (f"{user}: the password hash is {why}, below OWASP's minimum"
                                          f" (make a new one with `listfilter web passwd {user}`)")
    if accounts and not any(why for _, why in weak):
        yield "web accounts", True, f"{plural(len(accounts), 'account')}, every hash meets OWASP's minimums"
    if A.no_way_in(web, accounts):
        yield "web", False, A.no_way_in(web, accounts)
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
