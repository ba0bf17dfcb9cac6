"""``listfilter sync``: config + roster → snapshot and Postfix maps.

Order matters for "nothing lost": everything that can fail without changing
anything (config, roster, rendering) happens first; only then are the
snapshot and the maps replaced, each atomically. An unchanged re-sync writes
nothing and does not reload Postfix.
"""

from __future__ import annotations

import datetime as dt
import fcntl
import os
import time
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field, replace

from ..common import snapshot as S
from ..common import spool
from ..common.errors import ListfilterError
from ..common.words import plural
from . import compiler as K
from . import maps as M
from . import roster as R
from .config import Config


@dataclass
class Plan:
    """What a sync would do, computed without touching anything."""

    lists: list[S.CompiledList]
    digest: str
    snapshot_changed: bool
    maps: dict[str, str]
    maps_changed: list[str]
    rows: list[R.Enrollment] | None = field(default=None, repr=False)
    #: Addresses no list sends to, with the reason (bounce scoring: :mod:`listfilter.store.bounces`).
    suppressed: dict[str, str] = field(default_factory=dict)
    #: The DMARC policy of each domain that can post (:mod:`listfilter.sync.dmarc`); :func:`plan` takes
    #: the installed entries as they are, :func:`run` asks DNS for the ones that expired.
    dmarc: dict[str, S.DmarcEntry] = field(default_factory=dict)
    #: (list, held id, post key) of the approved posts the mail side lets through once (:mod:`listfilter.store.moderation`).
    approved: list[tuple[str, str, str]] = field(default_factory=list)


@dataclass
class Result:
    plan: Plan
    reloaded: bool = False
    warnings: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # what else happened (mail log), one line each

    @property
    def changed(self) -> bool:
        return self.plan.snapshot_changed or bool(self.plan.maps_changed)


def plan(config: Config, rows: list[R.Enrollment] | None = None,
         suppressed: dict[str, str] | None = None, members=None) -> Plan:
    """Read the roster (unless rows are given) and compare with what is installed.

    ``suppressed`` is what bounce scoring says no list may send to; without
    it the store is read (nothing is ingested), which is what a dry run
    shows. It is part of the digest: a new suppression changes the snapshot.
    ``members`` is the store's part of the lists (a
    :class:`listfilter.store.membersync.MemberSync`: extra and joined
    members, approved posts); without it the store is read, as for ``suppressed``.
    """
    if rows is None:
        rows = R.load(config)
        if not rows and any(l.members_query for l in config.lists.values()):
            # A truncated export or an emptied table would silently empty every list.
            raise R.RosterError("the roster returned no enrollments at all; refusing to empty every list")
    if members is None:
        from ..store.membersync import before_sync as members_before_sync

        members = members_before_sync(config, ingest=False)
    lists = K.compile_lists(config, rows, members.added)
    if suppressed is None:
        from ..store.bounces import before_sync

        suppressed = before_sync(config, ingest=False).suppressed
    maps = M.render(config, lists)
    from .dmarc import installed_view

    return with_suppressed(config, Plan(lists=lists, digest="", snapshot_changed=True, maps=maps,
                                        maps_changed=M.changed(config, maps), rows=rows,
                                        dmarc=installed_view(config, lists), approved=members.approved), suppressed)


def with_suppressed(config: Config, p: Plan, suppressed: dict[str, str]) -> Plan:
    """The plan with this suppressed set: only the digest depends on it, not the compiled lists or the maps."""
    from dataclasses import replace

    digest = K.digest(p.lists, K.site_settings(config), suppressed, p.dmarc, p.approved)
    return replace(p, digest=digest, suppressed=suppressed,
                   snapshot_changed=S.installed_digest(config.site.snapshot_path) != digest)


def apply(config: Config, p: Plan) -> Result:
    """Install what the plan says changed: snapshot first, then maps, then reload."""
    result = Result(p)
    if p.snapshot_changed:
        S.write(config.site.snapshot_path, p.lists, {
            **K.site_settings(config),
            "digest": p.digest,
            "generated_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            "config": str(config.path),
        }, suppressed=p.suppressed, dmarc=p.dmarc, approved=p.approved)
    pending = config.site.state_dir / "reload-pending"
    if p.maps_changed:
        M.install(config, p.maps, p.maps_changed)
    if config.postfix.reload and (p.maps_changed or pending.exists()):
        # The marker makes the next sync retry a reload that failed, even
        # though the maps will then look unchanged.
        os.close(os.open(pending, os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW, 0o644))  # root, in a shared directory
        warning = M.reload(config)
        if warning:
            result.warnings.append(warning)
        else:
            result.reloaded = True
        pending.unlink(missing_ok=True)
    return result


def run(config: Config, user: str | None = None, *, install=None) -> Result:
    """One whole sync, serialised against other syncs by a lock file.

    Run as root with ``user`` (the CLI passes the service user, ``listfilter``),
    sync is divided (:mod:`listfilter.sync.privilege`): root takes the lock and
    installs the Postfix tables; a child running as ``user`` calls this again
    with ``install``, its stand-in for :func:`apply`, and does all the rest
    under its parent's lock. Without ``user``, or not root, all of it runs here.

    The mail log (spool ingest and retention, :func:`listfilter.store.ingest.after_sync`)
    comes last, once the snapshot and the maps are installed: a store that is
    down or not yet set up only adds a warning and leaves the exit status alone,
    because the mail keeps flowing and the events wait in the spool for the
    next sync. ``listfilter check`` reports such a store as a problem.

    Bounces come first and last (:mod:`listfilter.store.bounces`): the spool's
    bounce records are scored against the members just compiled, before the
    snapshot is planned, so a new suppression is in
    this snapshot (a store that cannot be used keeps the installed snapshot's
    suppressed set); the owner notices owed go out once it is installed.

    DMARC policies (:mod:`listfilter.sync.dmarc`) are looked up between the
    two: for the posters' domains, only the answers that expired in the
    installed snapshot, within a bound; a lookup that fails adds one warning
    and is stored as failed (the mail side then treats the domain as strict).
    """
    if install is None and user is not None and os.geteuid() == 0:
        from . import privilege as P

        if P.drops(user):
            return P.run_as(config, P.account(user))
    with lock(config) if install is None else nullcontext():
        try:
            result = _run(config, install)
        except ListfilterError as exc:
            record_last_sync(config, ok=False, warnings=0, error=str(exc))
            raise
        record_last_sync(config, ok=True, warnings=len(result.warnings))
        return result


#: What the last sync did, for ``listfilter status``: {"at", "ok", "warnings", "error"}.
LAST_SYNC = "last-sync.json"


def record_last_sync(config: Config, *, ok: bool, warnings: int, error: str = "") -> None:
    """Replace ``<state_dir>/last-sync.json`` atomically; a failure to write it never fails the sync."""
    import json

    from ..common.atomic import write_bytes

    data = {"at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"), "ok": ok,
            "warnings": warnings, "error": error}
    try:
        write_bytes(config.site.state_dir / LAST_SYNC, (json.dumps(data) + "\n").encode())
    except OSError:
        pass


def _run(config: Config, install) -> Result:
    """The body of :func:`run`, under its lock."""
    from ..store import membersync

    _ensure_token_key(config)
    members = membersync.before_sync(config)  # held posts and requests in; extra and joined members out
    first = plan(config, suppressed={}, members=members)  # the roster, compiled: a bounce counts only for a member now
    bounces = _score_bounces(config, first.lists)
    dmarc = _dmarc(config, first.lists)
    p = with_suppressed(config, replace(first, dmarc=dmarc.entries), bounces.suppressed)
    result = (install or apply)(config, p)
    if dmarc.warning():
        result.warnings.append(dmarc.warning())
    result.notes.extend(members.notes + bounces.notes)
    result.warnings.extend(members.warnings + _store_down(members, bounces))
    try:
        from ..store.ingest import after_sync

        notes, warnings = after_sync(config, p.rows, store_error=bounces.store_error)
    except Exception as exc:  # never let the log undo or hide a good sync
        notes, warnings = [], [f"mail log not updated: internal error ({type(exc).__name__}: {exc})"]
    result.notes.extend(notes)
    result.warnings.extend(warnings)
    notes, warnings = _notify_owners(config, p) if bounces.store_ok else ([], [])
    result.notes.extend(notes)
    result.warnings.extend(warnings)
    if members.store_ok:
        try:
            notes, warnings = membersync.after_sync(config, p.lists)
        except Exception as exc:  # the snapshot is installed: a release problem must not undo the sync
            notes, warnings = [], [f"held posts and membership messages: internal error ({type(exc).__name__}: {exc})"]
        result.notes.extend(notes)
        result.warnings.extend(warnings)
    try:
        spool.prune(config.site.spool_dir, time.time())
    except OSError as exc:
        result.warnings.append(f"spool not pruned: {exc}")
    return result


def _store_down(members, bounces) -> list[str]:
    """The bounces' warnings, with what a store that is down keeps of the members said in the same line."""
    if not members.store_error:
        return bounces.warnings
    if not bounces.store_error:
        return bounces.warnings + [f"extra and joined members not read: {members.store_error}{members.kept_note()}"]
    return [w + members.kept_note() if bounces.store_error in w else w for w in bounces.warnings]


def _ensure_token_key(config: Config) -> None:
    """Make the token key once, where the mail side and the admin app read it (:mod:`listfilter.common.tokens`),
    when a list needs one (opt-in or held posts); an existing key is never replaced."""
    from ..common import tokens

    if any(l.signs_tokens for l in config.lists.values()):
        path = config.site.token_key
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            if tokens.ensure_key(path):
                # a sync run wholly as root (--user root) gives it to the service user, who signs with it
                from ..store.database import _give, service_owner

                _give(path, service_owner(config.site.spool_dir))
        except OSError as exc:
            raise ListfilterError(f"cannot create the token key {path}: {exc.strerror}") from None


def _dmarc(config: Config, lists):
    """The DMARC policies of the domains that can post: the installed ones still fresh, DNS for the rest."""
    from . import dmarc as DM

    return DM.refresh(config, lists, S.installed_dmarc(config.site.snapshot_path))


def _score_bounces(config: Config, lists=None):
    """Score the spool's bounce records in the store and read the suppressed set, before planning.

    Any failure keeps the installed snapshot's suppressed set: an address is
    never sent to again only because scoring could not run.
    """
    from ..store import bounces as B

    try:
        return B.before_sync(config, lists=lists)
    except Exception as exc:  # never let scoring stop the roster from reaching the lists
        kept = B.installed_suppressed(config)
        return B.BounceSync(kept, warnings=[f"bounces not scored: internal error ({type(exc).__name__}: {exc});"
                                            f" keeping the installed snapshot's {plural(len(kept), 'suppressed address')}"],
                            store_ok=False)


def _notify_owners(config: Config, p: Plan) -> tuple[list[str], list[str]]:
    """Send the owner notices owed for suppressions now in the installed snapshot (retried until sent)."""
    try:
        from ..store.bounces import after_sync

        return after_sync(config, p.lists, p.suppressed)
    except Exception as exc:  # the snapshot is installed: a notice problem must not undo the sync
        return [], [f"bounces: owner notices not sent: internal error ({type(exc).__name__}: {exc})"]


@contextmanager
def lock(config: Config):
    """An exclusive lock in the state directory; a second sync waits for the first.

    Yields the descriptor (a divided sync keeps it from its child). Never
    through a symlink: the service user may create names in the state directory.
    """
    config.site.state_dir.mkdir(parents=True, exist_ok=True)
    path = config.site.state_dir / "sync.lock"
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
    except OSError as exc:
        raise ListfilterError(f"cannot open the lock {path}: {exc.strerror}") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield fd
    finally:
        os.close(fd)


def snapshot_summary(lists) -> list[str]:
    return [K.summary(l) + "\n" for l in lists]


def installed_summary(config: Config) -> list[str]:
    """The installed snapshot's summary lines (empty if there is none)."""
    try:
        with S.Snapshot(config.site.snapshot_path) as snap:
            return [
                S.summary_line(l.address, l.member_count, len(snap.posters(l.address)), l.posters_rule, l) + "\n"
                for l in snap.lists()
            ]
    except S.SnapshotError:
        return []
