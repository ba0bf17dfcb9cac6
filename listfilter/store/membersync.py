"""Membership beyond the roster, at sync: what the store adds to the lists, and what it owes.

Sync calls :func:`before_sync` before it compiles the lists and
:func:`after_sync` once the new snapshot is installed, as it does for
bounces (:mod:`listfilter.store.bounces`). Before: the spool's held posts
and requests are moved into the store (:mod:`.moderation`,
:mod:`.requests`), extra members past their ``--until`` and held posts past
their ``hold_days`` expire, and the store's extra and joined members
(:mod:`.membership`) and approved posts are read for the snapshot. After:
the approved posts are released through Postfix (the new snapshot lets
each through once), and the welcome, goodbye and expiry messages owed are
sent.

Never raises for a store problem: a store that is down keeps the installed
snapshot's extra and joined members (a person who joined is never dropped
only because the store could not be read) and approves nothing; the
spool keeps the records for the next sync.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field

from ..common.words import plural


@dataclass
class MemberSync:
    """What the store adds to this sync's snapshot, and what to tell the operator."""

    #: list address -> (email, name, source) of the members the store keeps (listfilter.sync.membership.Added)
    added: dict[str, list[tuple[str, str, str]]] = field(default_factory=dict)
    #: (list address, held id, post key) of every approved post not yet released, and of those released
    #: lately (listfilter.store.moderation.approved: a copy Postfix retries still gets through)
    approved: list[tuple[str, str, str]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    store_ok: bool = True
    store_error: str = ""  # why the store could not be used (sync says it once, with the bounces' line)

    def kept_note(self) -> str:
        """What a store that is down keeps of the members, for the one line that says it is down."""
        count = sum(len(v) for v in self.added.values())
        return f"; keeping the installed snapshot's {plural(count, 'extra or joined member')}" if count else ""


def wanted(config) -> bool:
    """Whether anything here can be in use: a store in use, or held posts or requests waiting in the spool."""
    from ..common import spool as SP
    from .ingest import in_use

    spool = config.site.spool_dir
    return in_use(config) or bool(SP.pending_requests(spool)) or bool(SP.pending_held(spool))


def installed_added(config) -> dict[str, list[tuple[str, str, str]]]:
    """The installed snapshot's extra and joined members of each list (none without a snapshot)."""
    from ..common.snapshot import Snapshot, SnapshotError

    out: dict[str, list[tuple[str, str, str]]] = {}
    try:
        with Snapshot(config.site.snapshot_path) as snap:
            for row in snap.lists():
                kept = [m for m in snap.members_with_sources(row.address) if m[2] in ("extra", "joined")]
                if kept:
                    out[row.address] = kept
    except SnapshotError:
        pass
    return out


def before_sync(config, *, ingest: bool = True, now: dt.datetime | None = None) -> MemberSync:
    """Move held posts and requests into the store (unless ``ingest`` is false), expire what is due,
    and read the added members and the approved posts."""
    from . import membership, moderation, requests
    from .database import StoreError, open_store

    now = now or dt.datetime.now(dt.timezone.utc)
    if not wanted(config):
        return MemberSync(installed_added(config))
    out = MemberSync()
    try:
        with open_store(config.store) as store:
            store.require_current()
            if ingest:
                for step in (moderation.ingest, requests.ingest, membership.expire, moderation.expire):
                    notes, warnings = step(config, store, now)
                    out.notes.extend(notes)
                    out.warnings.extend(warnings)
            out.added = membership.added(store, now)
            out.approved = moderation.approved(store)
    except StoreError as exc:  # sync says so once, in the line that the mail log and the bounces share
        return MemberSync(installed_added(config), store_ok=False, store_error=str(exc))
    except OSError as exc:
        kept = MemberSync(installed_added(config), store_ok=False)
        kept.warnings.append(f"extra and joined members not read: {exc}{kept.kept_note()}")
        return kept
    return out


def after_sync(config, lists, *, now: dt.datetime | None = None) -> tuple[list[str], list[str]]:
    """Once the snapshot is installed: release the approved posts, send the messages owed (notes, warnings)."""
    from . import moderation, requests
    from .database import StoreError, open_store

    now = now or dt.datetime.now(dt.timezone.utc)
    if not wanted(config):
        return [], []
    notes: list[str] = []
    warnings: list[str] = []
    try:
        with open_store(config.store) as store:
            store.require_current()
            for step in (moderation.release, requests.send_owed, moderation.send_owed):
                n, w = step(config, store, lists, now)
                notes.extend(n)
                warnings.extend(w)
    except (StoreError, OSError) as exc:
        warnings.append(f"held posts not released and membership messages not sent: {exc}; retried at the next sync")
    return notes, warnings
