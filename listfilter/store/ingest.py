"""Moving the mail side's records from the spool into the store (sync side).

:func:`ingest` moves the event records (``<spool>/events/<id>.json``) into
``mail_logs``, idempotently. The event id is stable per (message, list), so a
retry's record updates the same row: an outcome wins over a deferral, and
otherwise the newest ``created_at``, whatever the order of ingest
(:meth:`listfilter.store.database.Store.upsert`). :func:`after_sync` is what ``listfilter sync``
does with the store once the snapshot and the maps are installed: this ingest,
retention, then the new part of Postfix's log (:mod:`listfilter.sync.follow`).

How ingest keeps "nothing lost, nothing blocked":

1. One ingester at a time: an flock on ``<spool>/events/.ingest/lock``.
2. A file is first *claimed* by renaming it into ``events/.ingest/``. The
   mail side replaces ``<id>.json`` by rename when a retry writes a newer
   record; the claim makes sure that newer file is never the one removed.
3. Claimed records are written in batches, one transaction each; a claimed
   file is unlinked only after its batch has committed. Files left claimed by
   a crash are taken up first by the next ingest.
4. A file that is not a valid event (unreadable, not JSON, missing or wrong
   fields: :func:`listfilter.common.events.from_json`) — or that the database
   itself refuses — is moved to ``events/bad/`` with a ``.reason`` file
   beside it and a logged warning; the others go on. A store that cannot be
   reached stops the ingest with a StoreError, leaving every file in the
   spool for the next try.
"""

from __future__ import annotations

import fcntl
import logging
import os
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from ..common import events as EV
from ..common.spool import BAD, CLAIMED, EVENTS, pending_events
from ..common.words import plural
from ..sync.config import Config, StoreSettings
from .database import Entry, Store, StoreError, _first_line, _give, _owner_of, entry_of, open_store

log = logging.getLogger("listfilter.store")

#: Records committed per transaction during ingest.
BATCH = 500

@dataclass
class IngestResult:
    ingested: int = 0
    bad: list[tuple[str, str]] = field(default_factory=list)  # (file name, reason)
    busy: bool = False  # another ingest was running (only when not waiting)


@contextmanager
def _ingest_lock(events: Path, wait: bool):
    claimed = events / CLAIMED
    owner = _owner_of(events)  # root working in the listfilter user's spool leaves it the user's
    if not claimed.exists():
        claimed.mkdir(mode=0o755, exist_ok=True)
        _give(claimed, owner)
    fd = os.open(claimed / "lock", os.O_RDWR | os.O_CREAT, 0o644)
    if owner:
        _give(claimed / "lock", owner)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except BlockingIOError:
            yield False
            return
        yield True
    finally:
        os.close(fd)


def in_use(config: Config) -> bool:
    """Whether the mail log is wanted: asked for in the config, set up, or has events waiting.

    A fresh install with no [store] table, no SQLite file and no events yet
    is left alone (by sync and by check); once mail flows, its events make
    the missing store a problem that check reports and sync warns about.
    """
    settings = config.store
    return (settings.configured or config.web is not None or settings.backend != "sqlite"
            or settings.path.exists() or bool(pending_events(config.site.spool_dir)))


def ingest(store: Store, spool_dir: Path, *, wait: bool = True, batch: int = BATCH) -> IngestResult:
    """Move every event record from the spool into the store (see the module docstring)."""
    result = IngestResult()
    events = spool_dir / EVENTS
    if not events.is_dir():
        return result
    settings = store.settings
    with _ingest_lock(events, wait) as locked:
        if not locked:
            result.busy = True
            return result
        claimed_dir = events / CLAIMED
        # 1. files a previous ingest claimed but did not finish (crash, store down)
        leftovers = sorted(p for p in claimed_dir.iterdir() if p.name.endswith(".json"))
        _ingest_files(store, events, leftovers, result, settings, batch)
        # 2. new files: claim, parse, write in batches, then unlink
        names = sorted(p.name for p in events.iterdir() if p.name.endswith(".json") and not p.name.startswith("."))
        for start in range(0, len(names), batch):
            claimed = []
            for name in names[start:start + batch]:
                target = claimed_dir / name
                try:
                    os.rename(events / name, target)
                except FileNotFoundError:
                    continue
                except IsADirectoryError:
                    continue
                claimed.append(target)
            _ingest_files(store, events, claimed, result, settings, batch)
    return result


def _ingest_files(store: Store, events: Path, paths: list[Path], result: IngestResult,
                  settings: StoreSettings, batch: int) -> None:
    for start in range(0, len(paths), batch):
        good: list[tuple[Path, Entry]] = []
        for path in paths[start:start + batch]:
            try:
                with open(path, "rb") as fh:
                    raw = fh.read(64 * 1024 * 1024)
                entry = entry_of(EV.from_json(raw), store_bodies=settings.store_bodies,
                                 body_max_bytes=settings.body_max_bytes)
            except FileNotFoundError:
                continue
            except IsADirectoryError:
                _set_aside(events, path, "a directory, not an event file", result)
                continue
            except OSError as exc:
                _set_aside(events, path, f"unreadable: {exc.strerror}", result)
                continue
            except EV.BadEvent as exc:
                _set_aside(events, path, str(exc), result)
                continue
            good.append((path, entry))
        if not good:
            continue
        try:
            store.upsert([e for _, e in good])
            done = good
        except store.refused_errors():
            # one row the database refuses must not hold back the others: retry one by one
            done = []
            for path, entry in good:
                try:
                    store.upsert([entry])
                    done.append((path, entry))
                except store.refused_errors() as exc:
                    _set_aside(events, path, f"refused by the store: {_first_line(exc)}", result)
        for path, _ in done:  # committed: now the files may go
            try:
                path.unlink()
            except FileNotFoundError:
                pass
        result.ingested += len(done)


def _set_aside(events: Path, path: Path, reason: str, result: IngestResult) -> None:
    """Move a malformed spool file to events/bad/, with its reason beside it."""
    bad = events / BAD
    if not bad.exists():
        bad.mkdir(exist_ok=True)
        _give(bad, _owner_of(events))
    target = bad / path.name
    if target.exists():
        target = bad / f"{path.stem}.{time.time_ns()}.json"
    reason = " ".join(reason.split())[:500]
    try:
        os.rename(path, target)
        (bad / (target.name + ".reason")).write_text(reason + "\n", encoding="utf-8")
        _give(bad / (target.name + ".reason"), _owner_of(events))
    except OSError as exc:
        log.error("spool file %s is malformed (%s) and cannot be moved aside: %s", path, reason, exc.strerror)
        result.bad.append((path.name, f"{reason} (could not move it aside: {exc.strerror})"))
        return
    log.warning("spool file %s moved to %s: %s", path.name, target, reason)
    result.bad.append((path.name, reason))


# --------------------------------------------------------------------------
# After a sync


def after_sync(config: Config, rows=None, *, store_error: str = "") -> tuple[list[str], list[str]]:
    """Ingest the spool, apply retention and follow Postfix's log; the web roles file too. Returns (notes, warnings).

    ``store_error``: this sync already found the store unusable and said so
    (scoring bounces, :func:`listfilter.store.bounces.before_sync`); the
    store is not tried again, so the operator reads one line, not two.

    Runs after the snapshot and maps are installed, and never raises for a
    store problem: mail keeps flowing without the store, and the events wait
    in the spool until the next sync. ``listfilter check`` reports the state.
    """
    notes: list[str] = []
    warnings: list[str] = []
    if config.web is not None and config.web.proxy_header and rows is not None:
        from ..admin import auth

        try:
            if auth.write_roles(config, rows):
                notes.append(f"web: roles file {config.web.roles_file} updated")
        except OSError as exc:
            warnings.append(f"web: cannot write {config.web.roles_file}: {exc.strerror}")
    settings = config.store
    if not in_use(config) or store_error:
        return notes, warnings  # no store wanted and nothing to put in one, or already reported: nothing to say
    waiting = pending_events(config.site.spool_dir)
    try:
        with open_store(settings) as store:
            store.require_current()
            result = ingest(store, config.site.spool_dir)
            deleted, cleared = store.purge(settings.retention_days, settings.body_retention_days)
            followed = _follow(config, store, notes, warnings)
    except StoreError as exc:
        more = f"; {plural(len(waiting), 'event')} waiting in {config.site.spool_dir / EVENTS}" if waiting else ""
        warnings.append(f"mail log not updated: {exc}{more}")
        return notes, warnings
    except OSError as exc:
        warnings.append(f"mail log not updated: spool {config.site.spool_dir / EVENTS}: {exc.strerror}")
        return notes, warnings
    for name, reason in result.bad:
        warnings.append(f"spool event {name} is malformed, moved to {config.site.spool_dir / EVENTS / BAD}: {reason}")
    parts = []
    if result.ingested:
        parts.append(f"{plural(result.ingested, 'event')} logged")
    if deleted:
        parts.append(f"{plural(deleted, 'row')} older than {plural(settings.retention_days, 'day')} purged")
    if cleared:
        parts.append(f"{plural(cleared, 'body')} older than {plural(settings.body_retention_days, 'day')} cleared")
    if parts:
        notes.append("mail log: " + ", ".join(parts))
    if followed:
        notes.append(followed)
    return notes, warnings


def _follow(config: Config, store: Store, notes: list[str], warnings: list[str]) -> str:
    """Read Postfix's log into the store (:mod:`listfilter.sync.follow`); its note, if any.

    After the spool, so that the posts its copies belong to are in the store.
    Never raises: a log that cannot be read only adds a warning.
    """
    from ..sync import follow as FO

    source = "the journal" if config.postfix.journal else str(config.postfix.log_file)
    where = f"postfix log {source}"
    try:
        result = FO.follow(config, store)
    except (StoreError, FO.FollowError) as exc:
        warnings.append(f"{where} not read: {exc}")
        return ""
    except OSError as exc:
        why = f"{exc.filename or source}: {exc.strerror}" if exc.strerror else str(exc)
        warnings.append(f"{where} not read: {why} (members' outcomes not recorded; docs/operations.md)")
        return ""
    except Exception as exc:  # the spool's events are in: say what failed, and only that
        warnings.append(f"{where} not read: internal error ({type(exc).__name__}: {exc})")
        return ""
    if result.missing:  # not set up: `listfilter check` reports it as a problem
        return ""
    if result.busy:
        return f"{where}: another log follower is running"
    warnings.extend(f"{where}: {gap}" for gap in result.gaps)
    if result.dropped:
        warnings.append(f"{where}: {plural(result.dropped, 'reinjected copy', 'reinjected copies')} of posts"
                        " not in the mail log, given up")
    return result.note()


