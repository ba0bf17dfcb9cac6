"""Least privilege for ``listfilter sync``: root only for the Postfix tables.

Run as root, sync splits itself the way Postfix does (master(8) keeps root,
and the daemons that need none run as ``mail_owner``). A child process
drops to the service user (:data:`~listfilter.common.paths.SERVICE_USER`,
the user master.cf runs the mail side as) and does everything that reads the
roster or writes listfilter's own state: it reads the roster, compiles the
lists, writes the snapshot and the web roles file, and works the spool and
the mail log. The parent stays root for the two things only root may do: installing the lookup
tables (``postmap``, then rename, :func:`listfilter.sync.maps.install`) and
``postfix reload``. Not run as root, or asked to run as root (``--user
root``), sync does everything in one process, as before.

The two processes speak JSON, one object per line, over a pair of pipes::

    child  -> parent   {"ask": {"maps": {name: text}}}     install these tables, reload
    parent -> child    {"reply": {"maps_changed": [...], "reloaded": bool, "warnings": [...]}}
                       {"abort": true}                     root failed: stop (the parent reports why)
    child  -> parent   {"result": ...}                     what sync did, for the report
                       {"error": {"kind", "message", "report", "exit_code"}}

JSON and not pickle: root never runs anything the unprivileged side chose.
The root side decides for itself which tables changed (it reads what is
installed) and checks that the table directory is root's before it writes
there. An expected error in the child (a :class:`ListfilterError`: the roster
is down, a snapshot cannot be written) comes back as the same one line and
the same exit status.

Who owns what (docs/operations.md, "Who runs what"):

- the state directory is ``root:<the user's group>``, mode 1775: group-
  writable so the user can replace the snapshot in it, sticky so that it
  cannot rename or remove what root keeps there (the table directory, the
  lock), the way Postfix's maildrop directory is ``postfix:postdrop`` 1730.
  :func:`prepare` makes it so, once, before the first drop; a snapshot or
  roles file left by a root-only sync is given to the user at the same time;
- the table directory (``postfix/`` by default) and the tables are root's;
- the snapshot, the spool and the mail log are the user's, created by it.
"""

from __future__ import annotations

import dataclasses
import json
import os
import pwd
import signal
import stat
import sys
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from ..common import spool
from ..common.errors import EXIT_PROBLEM, ListfilterError
from . import maps as M
from . import run as Y
from .config import Config

#: What the child may create is not for other users to read unless it says so
#: (the snapshot and the roles file are written 0644 on purpose; the spool
#: holds message bodies, hence 0750 for its directories).
CHILD_UMASK = 0o027
#: The state directory: group-writable for the user, sticky for root's files.
STATE_DIR_MODE = 0o1770


class PrivilegeError(ListfilterError):
    """Dropping to the service user failed, or its process did not answer."""

    label = "privileges"


class ChildError(ListfilterError):
    """A ListfilterError raised in the unprivileged child, carried over the pipe.

    ``report()`` gives the child's line and ``exit_code`` its status, so the
    operator sees exactly what an undivided sync would have printed.
    """

    def __init__(self, message: str, line: str, exit_code: int, kind: str):
        super().__init__(message)
        self.line = line
        self.exit_code = exit_code
        self.kind = kind

    def report(self) -> str:
        return self.line


class _Aborted(BaseException):
    """Root told the child to stop (a BaseException: no ``except Exception`` in sync swallows it)."""


@dataclass(frozen=True)
class Account:
    name: str
    uid: int
    gid: int
    home: str


def account(name: str) -> Account:
    """The user to drop to; a PrivilegeError with what to do if it does not exist."""
    try:
        pw = pwd.getpwnam(name)
    except KeyError:
        raise PrivilegeError(
            f"the user {name!r} does not exist: create it (useradd --system --no-create-home"
            f" --shell /usr/sbin/nologin {name}), the mail side runs as it; or run sync with --user root") from None
    return Account(pw.pw_name, pw.pw_uid, pw.pw_gid, pw.pw_dir)


def drops(user: str | None) -> bool:
    """Whether sync divides itself: run as root, and told to use a user who is not root."""
    return user is not None and os.geteuid() == 0 and account(user).uid != 0


# --------------------------------------------------------------------------
# Dropping


def drop(acct: Account) -> None:
    """Become ``acct`` for good: supplementary groups, then the group, then the user.

    The order matters: once the uid is not 0, neither the groups nor the gid
    can be changed any more. Then check every id (real, effective and saved)
    and that root cannot be regained, rather than trust the calls.
    """
    os.initgroups(acct.name, acct.gid)
    os.setgid(acct.gid)
    os.setuid(acct.uid)
    if os.getresuid() != (acct.uid,) * 3 or os.getresgid() != (acct.gid,) * 3:
        raise PrivilegeError(f"dropping to {acct.name} failed: uids {os.getresuid()}, gids {os.getresgid()}")
    if set(os.getgroups()) != set(os.getgrouplist(acct.name, acct.gid)):
        raise PrivilegeError(f"dropping to {acct.name} failed: groups {sorted(os.getgroups())}")
    try:
        os.setuid(0)
    except PermissionError:
        pass
    else:
        raise PrivilegeError(f"dropping to {acct.name} failed: root could be regained")


def _become(acct: Account, close: tuple[int, ...]) -> None:
    """Everything the child does before its work: close root's descriptors, drop, settle."""
    for fd in close:
        try:
            os.close(fd)
        except OSError:
            pass
    drop(acct)
    os.umask(CHILD_UMASK)
    os.chdir("/")
    # like su(1): the user's own home (libpq's ~/.pgpass), the rest of the
    # environment (the roster DSN in LISTFILTER_ROSTER_DSN, PG*) as it came
    os.environ.update(HOME=acct.home, USER=acct.name, LOGNAME=acct.name)


# --------------------------------------------------------------------------
# The pipe


def _send(fh, message: dict) -> None:
    fh.write(json.dumps(message, separators=(",", ":")) + "\n")
    fh.flush()


def error_of(exc: ListfilterError) -> dict:
    """What crosses the pipe of a ListfilterError: its line (``report()``, which a subclass may extend) and status."""
    return {"kind": type(exc).__name__, "message": str(exc), "report": exc.report(), "exit_code": exc.exit_code}


def error_from(data: Any) -> ChildError:
    """The parent's copy of a child's error (checked: the child is not trusted)."""
    try:
        code = data["exit_code"]
        if not (isinstance(code, int) and 1 <= code <= 255):
            code = EXIT_PROBLEM
        return ChildError(str(data["message"]), " ".join(str(data["report"]).split()), code, str(data["kind"]))
    except (TypeError, KeyError):
        what = f"unreadable error from the unprivileged process: {data!r:.200}"
        return ChildError(what, f"privileges: {what}", EXIT_PROBLEM, "")


def call(acct: Account, work: Callable[[Callable[[dict], dict]], Any],
         serve: Callable[[dict], dict] | None = None, *, close: tuple[int, ...] = ()) -> Any:
    """``work(ask)`` in a child process running as ``acct``; its result (JSON) here.

    ``ask(request)`` sends a request to this process, which answers with
    ``serve(request)``; if ``serve`` raises a ListfilterError, the child is
    stopped and that error raised here. ``close`` names descriptors the child
    must not keep (the sync lock: the child could otherwise release it).
    """
    up_r, up_w = os.pipe()  # child -> parent
    down_r, down_w = os.pipe()  # parent -> child
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child's coverage is its result
        _child(acct, work, close, up_w, down_r, (up_r, down_w))
    os.close(up_w)
    os.close(down_r)
    with os.fdopen(up_r, "r", encoding="utf-8") as inbox, os.fdopen(down_w, "w", encoding="utf-8") as outbox:
        try:
            outcome = _serve(inbox, outbox, serve)
        except BaseException:
            _stop(pid)
            raise
    status = _reap(pid)
    kind, value = outcome
    if kind == "result":
        return value
    if kind == "error":
        raise error_from(value)
    if kind == "abort":
        raise value
    how = f"signal {-status}" if status < 0 else f"status {status}"
    raise PrivilegeError(f"the process running as {acct.name} ended ({how}) without a result")


def _serve(inbox, outbox, serve) -> tuple[str, Any]:
    """Answer the child's requests until it sends its result or an error, or ends."""
    for line in inbox:
        try:
            message = json.loads(line)
        except ValueError:
            raise PrivilegeError("unreadable message from the unprivileged process") from None
        if not isinstance(message, dict):
            raise PrivilegeError("unreadable message from the unprivileged process")
        if "ask" in message:
            if serve is None:
                raise PrivilegeError("the unprivileged process asked for something nobody serves")
            try:
                reply = {"reply": serve(message["ask"])}
            except ListfilterError as exc:
                try:
                    _send(outbox, {"abort": True})
                except BrokenPipeError:
                    pass
                for _ in inbox:  # let it end
                    pass
                return "abort", exc
            try:
                _send(outbox, reply)
            except BrokenPipeError:
                pass
        elif "result" in message:
            return "result", message["result"]
        elif "error" in message:
            return "error", message["error"]
    return "ended", None


def _child(acct, work, close, up_w, down_r, parent_ends) -> None:  # pragma: no cover
    """The child's whole life: it never returns, and never runs the parent's cleanup."""
    status = 1
    try:
        for fd in parent_ends:
            os.close(fd)
        outbox = os.fdopen(up_w, "w", encoding="utf-8")
        inbox = os.fdopen(down_r, "r", encoding="utf-8")

        def ask(request: dict) -> dict:
            _send(outbox, {"ask": request})
            line = inbox.readline()
            message = json.loads(line) if line else {"abort": True}
            if "reply" not in message:
                raise _Aborted()
            return message["reply"]

        try:
            _become(acct, close)
            result = work(ask)
            _send(outbox, {"result": result})
            status = 0
        except _Aborted:
            pass
        except ListfilterError as exc:
            _send(outbox, {"error": error_of(exc)})
        except BaseException as exc:  # a bug: its traceback on stderr, one line to the parent
            traceback.print_exc()
            line = f"internal error ({type(exc).__name__}: {exc})"
            _send(outbox, {"error": {"kind": type(exc).__name__, "message": line, "report": line,
                                     "exit_code": EXIT_PROBLEM}})
    finally:
        try:
            sys.stdout.flush()
            sys.stderr.flush()
        finally:
            os._exit(status)


def _reap(pid: int) -> int:
    """The child's exit status (negative: the signal that ended it)."""
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status)


def _stop(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        pass
    _reap(pid)


# --------------------------------------------------------------------------
# What root checks and sets up before it drops


def prepare(config: Config, acct: Account) -> tuple[list[str], list[str]]:
    """Make the state directory usable by ``acct`` and safe for root; returns (notes, warnings).

    Idempotent; it changes something only on the first divided sync of an
    installation (or a new state directory), and says what it changed.
    """
    notes: list[str] = []
    warnings: list[str] = []
    state = config.site.state_dir
    created = not state.exists()
    state.mkdir(parents=True, exist_ok=True)
    st = state.stat()
    mode = stat.S_IMODE(st.st_mode)
    want = STATE_DIR_MODE | (0o005 if created else mode & 0o005)
    if st.st_uid != 0 or st.st_gid != acct.gid or mode != want:
        os.chown(state, 0, acct.gid)
        os.chmod(state, want)
        was = "created" if created else f"was uid {st.st_uid}, gid {st.st_gid}, mode {mode:o}"
        notes.append(f"state directory {state}: owned by root, group {_group(acct.gid)}, mode {want:o}"
                     f" ({was}), so that {acct.name} can write it")
    map_dir = config.site.map_dir
    if not map_dir.exists():
        map_dir.mkdir(parents=True)
        os.chmod(map_dir, 0o755)
    check_map_dir(config)
    for path in (config.site.snapshot_path, config.web.roles_file if config.web else None):
        if path is not None and path.parent == state and _give_if_root(path, acct):
            notes.append(f"{path}: given to {acct.name} (written by root before)")
    for path, what in _own_dirs(config):
        try:
            owner = path.stat().st_uid
        except FileNotFoundError:
            continue
        if owner != acct.uid:
            warnings.append(f"{what} {path} is owned by uid {owner}, not {acct.name}, who works it:"
                            f" chown -R {acct.name}: {path}")
    return notes, warnings


def _group(gid: int) -> str:
    import grp

    try:
        return grp.getgrgid(gid).gr_name
    except KeyError:
        return str(gid)


def _give_if_root(path: Path, acct: Account) -> bool:
    """chown a regular file root left to ``acct``; never through a symlink."""
    try:
        st = path.lstat()
    except FileNotFoundError:
        return False
    if not stat.S_ISREG(st.st_mode) or st.st_uid != 0:
        return False
    os.chown(path, acct.uid, acct.gid, follow_symlinks=False)
    return True


def _own_dirs(config: Config) -> list[tuple[Path, str]]:
    """Directories the unprivileged side must own: the spool, and an SQLite store's directory."""
    out = [(config.site.spool_dir, "the spool")]
    if config.store is not None and config.store.backend == "sqlite":
        out += [(config.store.path.parent, "the mail log's directory"), (config.store.path, "the mail log")]
    return out


def check_map_dir(config: Config) -> None:
    """Refuse to write the tables where anyone but root could swap them.

    Postfix reads the tables as root and trusts them (relay_domains,
    transport_maps): the table directory must be root's and not writable by
    others, and every directory above it root's, or sticky where others may
    write (as /tmp, or the state directory).
    """
    map_dir = config.site.map_dir
    try:
        st = map_dir.lstat()
    except OSError as exc:
        raise M.MapError(f"the table directory {map_dir}: {exc.strerror}") from None
    if stat.S_ISLNK(st.st_mode):
        raise M.MapError(f"the table directory {map_dir} is a symlink: set [site] map_dir to the directory itself")
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != 0 or st.st_mode & 0o022:
        raise M.MapError(f"the table directory {map_dir} must be a directory owned by root and writable only"
                         f" by root (it is uid {st.st_uid}, mode {stat.S_IMODE(st.st_mode):o}): fix it with"
                         f" chown root:root {map_dir}; chmod 755 {map_dir}")
    for parent in map_dir.resolve().parents:
        pst = parent.stat()
        if pst.st_uid != 0 or (pst.st_mode & 0o022 and not pst.st_mode & stat.S_ISVTX):
            raise M.MapError(f"the table directory {map_dir} is inside {parent}, which someone other than root"
                             f" may change (uid {pst.st_uid}, mode {stat.S_IMODE(pst.st_mode):o})")


# --------------------------------------------------------------------------
# sync, divided


def run_as(config: Config, acct: Account) -> Y.Result:
    """A whole sync: :func:`listfilter.sync.run.run` in the child as ``acct``, the tables here.

    Root prepares the state directory, then takes the sync lock and keeps it
    (the child does not get the descriptor). The child's ``install`` writes
    the snapshot (:func:`listfilter.sync.run.apply` with the tables left
    out), then asks root to install the tables, and carries on with the mail
    log once root has answered: the order of an undivided sync.
    """
    try:
        notes, warnings = prepare(config, acct)
    except OSError as exc:
        raise PrivilegeError(f"cannot prepare {exc.filename} for {acct.name}: {exc.strerror}") from None
    installed: dict = {}

    def serve(request: dict) -> dict:
        maps = _maps_of(request)
        check_map_dir(config)
        changed = M.changed(config, maps)
        r = Y.apply(config, Y.Plan(lists=[], digest="", snapshot_changed=False, maps=maps, maps_changed=changed))
        installed.update(maps=maps, maps_changed=changed, reloaded=r.reloaded)
        return {"maps_changed": changed, "reloaded": r.reloaded, "warnings": list(r.warnings)}

    def work(ask) -> dict:
        reach(config.site.state_dir, acct, write=True)
        trouble = _ensure_spool(config, acct)
        result = Y.run(config, install=_child_install(ask))
        result.warnings[:0] = trouble
        return report_of(result)

    with Y.lock(config) as fd:
        result = result_of(call(acct, work, serve, close=(fd,)), installed)
    result.notes[:0] = notes
    result.warnings[:0] = warnings
    return result


def as_user(user: str | None, fn: Callable[[], Any], *, reads: tuple[Path, ...] = ()) -> Any:
    """``fn()`` as ``user`` when run as root (in a child; its result must be JSON), else here.

    For what only reads, such as ``sync --dry-run``: nothing is prepared,
    nothing is installed. ``reads`` are directories the user must be able to
    read, if they exist, checked first for a clear message.
    """
    if not drops(user):
        return fn()
    acct = account(user)
    present = [path for path in reads if path.exists()]  # as root: the user may not even see them

    def work(ask):
        for path in present:
            reach(path, acct, write=False)
        return fn()

    return call(acct, work)


def reach(directory: Path, acct: Account, *, write: bool) -> None:
    """A one-line PrivilegeError unless the (dropped) user can use ``directory``."""
    if os.access(directory, (os.W_OK if write else os.R_OK) | os.X_OK):
        return
    blocked = next((p for p in reversed(directory.parents) if not os.access(p, os.X_OK)), None)
    why = (f"{blocked} is not searchable by {acct.name}" if blocked
           else f"{directory} is not {'writable' if write else 'readable'} by {acct.name}")
    raise PrivilegeError(f"{acct.name} cannot {'write' if write else 'read'} {directory}: {why}"
                         " (the mail side, running as the same user, reads the snapshot there)")


def _ensure_spool(config: Config, acct: Account) -> list[str]:
    """Create the spool as the user (so it is the user's), or say why it cannot be."""
    try:
        spool.ensure(config.site.spool_dir)
    except spool.SpoolError as exc:
        return [f"{exc} (the spool must be {acct.name}'s: chown -R {acct.name}: {config.site.spool_dir})"]
    return []


def _child_install(ask: Callable[[dict], dict]) -> Callable:
    """The child's stand-in for apply(): the snapshot here, the tables by root."""

    def install(config: Config, p: Y.Plan) -> Y.Result:
        here = dataclasses.replace(config, postfix=dataclasses.replace(config.postfix, reload=False))
        result = Y.apply(here, dataclasses.replace(p, maps_changed=[]))
        reply = ask({"maps": p.maps})
        p.maps_changed = list(reply["maps_changed"])
        result.plan = p
        result.reloaded = bool(reply["reloaded"])
        result.warnings.extend(reply["warnings"])
        return result

    return install


def _maps_of(request: Any) -> dict[str, str]:
    """The tables the child rendered, checked: only the known names, text only."""
    maps = request.get("maps") if isinstance(request, dict) else None
    if not isinstance(maps, dict) or set(maps) != set(M.MAP_NAMES) \
            or not all(isinstance(t, str) and "\0" not in t for t in maps.values()):
        raise PrivilegeError("the unprivileged process sent tables that are not listfilter's")
    return maps


@dataclass
class Divided(Y.Result):
    """A divided sync's Result, as root has it.

    The compiled lists stay in the child (``plan.lists`` is empty): carrying
    every membership across the pipe would cost more than the unchanged
    re-sync it reports on. What ``listfilter sync`` prints comes instead.
    """

    list_count: int = 0
    memberships: int = 0
    summary: list[str] = dataclasses.field(default_factory=list)  # one line per list, as -v prints them


def report_of(result: Y.Result) -> dict:
    """The child's Result as JSON: what ``listfilter sync`` prints."""
    p = result.plan
    return {
        "list_count": len(p.lists),
        "memberships": sum(len(l.members) for l in p.lists),
        "summary": Y.snapshot_summary(p.lists),
        "digest": p.digest,
        "snapshot_changed": p.snapshot_changed,
        "suppressed": dict(p.suppressed),
        "warnings": list(result.warnings),
        "notes": list(result.notes),
    }


def result_of(report: Any, installed: dict) -> Divided:
    """The parent's Result: the child's report, and what root itself installed."""
    try:
        plan = Y.Plan(lists=[], digest=str(report["digest"]), snapshot_changed=bool(report["snapshot_changed"]),
                      maps=installed.get("maps", {}), maps_changed=installed.get("maps_changed", []),
                      suppressed={str(k): str(v) for k, v in report["suppressed"].items()})
        return Divided(plan, reloaded=installed.get("reloaded", False),
                       warnings=[str(w) for w in report["warnings"]], notes=[str(n) for n in report["notes"]],
                       list_count=int(report["list_count"]), memberships=int(report["memberships"]),
                       summary=[str(line) for line in report["summary"]])
    except (TypeError, KeyError, ValueError, AttributeError):
        raise PrivilegeError("unreadable result from the unprivileged process") from None
