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
from contextlib import contextmanager
from dataclasses import dataclass, field

from ..common import snapshot as S
from ..common import spool
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


@dataclass
class Result:
    plan: Plan
    reloaded: bool = False
    warnings: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # what else happened (mail log), one line each

    @property
    def changed(self) -> bool:
        return self.plan.snapshot_changed or bool(self.plan.maps_changed)


def plan(config: Config, rows: list[R.Enrollment] | None = None) -> Plan:
    """Read the roster (unless rows are given) and compare with what is installed."""
    if rows is None:
        rows = R.load(config)
        if not rows and any(l.members_query for l in config.lists.values()):
            # A truncated export or an emptied table would silently empty every list.
            raise R.RosterError("the roster returned no enrollments at all; refusing to empty every list")
    lists = K.compile_lists(config, rows)
    digest = K.digest(lists, K.site_settings(config))
    maps = M.render(config, lists)
    return Plan(
        lists=lists,
        digest=digest,
        snapshot_changed=S.installed_digest(config.site.snapshot_path) != digest,
        maps=maps,
        maps_changed=M.changed(config, maps),
        rows=rows,
    )


def apply(config: Config, p: Plan) -> Result:
    """Install what the plan says changed: snapshot first, then maps, then reload."""
    result = Result(p)
    if p.snapshot_changed:
        S.write(config.site.snapshot_path, p.lists, {
            **K.site_settings(config),
            "digest": p.digest,
            "generated_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            "config": str(config.path),
        })
    pending = config.site.state_dir / "reload-pending"
    if p.maps_changed:
        M.install(config, p.maps, p.maps_changed)
    if config.postfix.reload and (p.maps_changed or pending.exists()):
        # The marker makes the next sync retry a reload that failed, even
        # though the maps will then look unchanged.
        pending.touch()
        warning = M.reload(config)
        if warning:
            result.warnings.append(warning)
        else:
            result.reloaded = True
        pending.unlink(missing_ok=True)
    return result


def run(config: Config) -> Result:
    """One whole sync, serialised against other syncs by a lock file.

    The mail log (spool ingest and retention, :func:`listfilter.store.ingest.after_sync`)
    comes last, once the snapshot and the maps are installed: a store that is
    down or not yet set up only adds a warning and leaves the exit status alone,
    because the mail keeps flowing and the events wait in the spool for the
    next sync. ``listfilter check`` reports such a store as a problem.
    """
    with lock(config):
        p = plan(config)
        result = apply(config, p)
        try:
            from ..store.ingest import after_sync

            notes, warnings = after_sync(config, p.rows)
        except Exception as exc:  # never let the log undo or hide a good sync
            notes, warnings = [], [f"mail log not updated: internal error ({type(exc).__name__}: {exc})"]
        result.notes.extend(notes)
        result.warnings.extend(warnings)
        try:
            spool.prune(config.site.spool_dir, time.time())
        except OSError as exc:
            result.warnings.append(f"spool not pruned: {exc}")
        return result


@contextmanager
def lock(config: Config):
    """An exclusive lock in the state directory; a second sync waits for the first."""
    config.site.state_dir.mkdir(parents=True, exist_ok=True)
    fd = os.open(config.site.state_dir / "sync.lock", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def snapshot_summary(lists) -> list[str]:
    return [K.summary(l) + "\n" for l in lists]


def installed_summary(config: Config) -> list[str]:
    """The installed snapshot's summary lines (empty if there is none)."""
    try:
        with S.Snapshot(config.site.snapshot_path) as snap:
            return [
                S.summary_line(l.address, l.member_count, len(snap.posters(l.address)), l.posters_rule) + "\n"
                for l in snap.lists()
            ]
    except S.SnapshotError:
        return []
