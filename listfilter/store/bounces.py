"""Bounce scoring (sync side): the one owner of the arithmetic over bounces.

``listfilter-bounce`` only writes one create-only record per bounce into the
spool (``bounces/<id>.json``, a :class:`~listfilter.common.events.BounceRecord`).
``listfilter sync`` scores them here, in the store, so that every host that
shares a PostgreSQL store keeps one score per address. The rules (Mailman's):

- at most one point per address per day (the site-local day the bounce came);
- the score starts again when the last counted bounce is more than
  :data:`STALE_AFTER_DAYS` days old;
- at :data:`THRESHOLD` points the address is *suppressed*: it goes into the
  snapshot's ``suppressed`` table and no list sends to it, and the owners of
  the list it bounced from get one notice;
- only permanent failures count (the mail side records no others);
  ``listfilter bounces clear ADDRESS`` lifts a suppression and forgets the score.

Anyone can mail a -bounces address, and one ``sendmail -XV`` submission for
every member means the VERP address carries no secret; so a record is only
a claim, and :func:`verify` decides whether it counts. It counts when

- it names a VERP member (a report to the plain -bounces address counts for
  nobody), who is a member of the list now (the lists this sync compiled;
  without them, the installed snapshot's);
- one of the Message-IDs the report returned is that of a post the mail log
  shows as delivered on that list to that member, at most
  :data:`WINDOW_DAYS` days before the bounce came (the events are ingested
  first, so a post delivered since the last sync is there);
- no earlier bounce of the same post for the same member was counted: a
  post bounces once per member, so one known Message-ID cannot be replayed
  on five days.

Every record is kept in ``bounce_records``, counted or not, with the reason
it was not; sync says so on its output too.

Tables (migration 4): ``bounce_scores`` (one row per address),
``bounce_records`` (every record ingested, so that ingesting a record twice
counts it once; since migration 5 with its member, the post it matched,
whether it counted and why not) and ``bounce_notices`` (owed, sent or dropped).

Why there is no race:

- the spool is ingested like the events (:mod:`listfilter.store.ingest`):
  one ingester per spool (an flock), a record claimed by rename, unlinked
  only after its transaction has committed, a bad one set aside with a reason;
- each record is scored in one transaction that first inserts its id (a
  record already there was counted: nothing more happens), then makes sure
  each address has a row and locks it (``SELECT … FOR UPDATE`` on
  PostgreSQL; on SQLite the transaction is ``BEGIN IMMEDIATE``, one writer at
  a time), in address order so that two transactions never wait on each
  other in a cycle. The row read is therefore the latest committed one, and
  the step that crosses the threshold, and the notice it owes, happen in
  exactly one transaction, whichever host ingests;
- a notice is sent by the sync that locks its row (``FOR UPDATE SKIP
  LOCKED``), marked sent in that transaction only when sendmail succeeded,
  and retried by the next sync when it failed.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

from ..common import events as EV
from ..common.words import plural
from ..common.spool import BOUNCES, CLAIMED, pending_bounces
from ..common.spool import waiting as waiting_records
from .database import Store, StoreError, _first_line, open_store
from .ingest import IngestResult, _ingest_lock, _set_aside, in_use

log = logging.getLogger("listfilter.store")

THRESHOLD = 5
STALE_AFTER_DAYS = 7
NOTICE_TEMPLATE = "notice-suppressed.txt.j2"
#: How long sync waits for sendmail to take one owner notice.
SEND_TIMEOUT = 60
#: The longest bounce record read (a bounce without VERP may list many addresses).
RECORD_MAX_BYTES = 1024 * 1024
#: How long after a post a bounce of it counts: longer than Postfix's maximal_queue_lifetime
#: (5 days), the longest a copy waits in a queue before it bounces.
WINDOW_DAYS = 7
#: How far a post may seem to come after its bounce (two hosts' clocks, one store).
CLOCK_SKEW = dt.timedelta(hours=1)
#: The most not-counted records sync names one by one on its output.
NOT_COUNTED_SHOWN = 20

_UTC = dt.timezone.utc


# --------------------------------------------------------------------------
# Scoring (pure)


@dataclass(frozen=True)
class BounceScore:
    """One address's row of ``bounce_scores``."""

    address: str
    score: int = 0
    last_bounce: dt.date | None = None
    lists: tuple[str, ...] = ()
    suppressed: bool = False
    suppressed_at: dt.datetime | None = None
    reason: str = ""
    updated_at: dt.datetime | None = None

    def as_json(self) -> dict:
        return {"address": self.address, "score": self.score,
                "last_bounce": self.last_bounce.isoformat() if self.last_bounce else None,
                "lists": list(self.lists), "suppressed": self.suppressed,
                "suppressed_at": self.suppressed_at.isoformat() if self.suppressed_at else None,
                "reason": self.reason}


def score(state: BounceScore, day: dt.date, *, threshold: int = THRESHOLD,
          stale_after: int = STALE_AFTER_DAYS) -> tuple[BounceScore, bool]:
    """Count one permanent bounce on ``day``: (the new state, whether it is newly suppressed).

    A bounce on a day already counted, or older than the last one counted (a
    record ingested late), adds nothing. A suppression stays until cleared.
    """
    points, last = state.score, state.last_bounce
    if last is None or day > last:
        if last is not None and (day - last).days > stale_after:
            points = 0  # an old run of bounces is forgotten
        points, last = points + 1, day
    newly = not state.suppressed and points >= threshold
    return dataclasses.replace(state, score=points, last_bounce=last,
                               suppressed=state.suppressed or newly), newly


# --------------------------------------------------------------------------
# Values as each database stores them


def _pg(store: Store) -> bool:
    return store.dialect == "postgresql"


def _day_param(store: Store, day: dt.date | None):
    """A date column's value: a date on PostgreSQL, ISO text on SQLite."""
    if day is None:
        return None
    return day if _pg(store) else day.isoformat()


def _day_of(value) -> dt.date | None:
    if value is None or isinstance(value, dt.date):
        return value
    return dt.date.fromisoformat(value)


def _json(store: Store) -> str:
    """The placeholder of a JSON column."""
    return "?::jsonb" if _pg(store) else "?"


def _list_of(value) -> tuple[str, ...]:
    return tuple(json.loads(value) if isinstance(value, str) else (value or ()))


def _time_of(store: Store, value) -> dt.datetime | None:
    return None if value is None else store._from_ts(value)


def _lock(store: Store, *, skip_locked: bool = False) -> str:
    """The row-locking clause: SQLite has none (BEGIN IMMEDIATE already holds the write lock)."""
    if not _pg(store):
        return ""
    return " FOR UPDATE SKIP LOCKED" if skip_locked else " FOR UPDATE"


_SCORE_COLUMNS = "address, score, last_bounce, lists, suppressed, suppressed_at, suppressed_reason, updated_at"


def _score_row(store: Store, r) -> BounceScore:
    return BounceScore(address=r[0], score=r[1], last_bounce=_day_of(r[2]), lists=_list_of(r[3]),
                       suppressed=bool(r[4]), suppressed_at=_time_of(store, r[5]), reason=r[6] or "",
                       updated_at=_time_of(store, r[7]))


# --------------------------------------------------------------------------
# Counting one record


#: The members of each list (lower-cased), as sync compiled them: {list address: {member, …}}.
Members = dict[str, set[str]]


@dataclass(frozen=True)
class Counted:
    """What scoring one record did: the addresses it newly suppressed, or why it did not count."""

    newly: list[BounceScore] = field(default_factory=list)
    reason: str = ""  # "" when it counted
    message_id: str = ""  # the post it matched


def _received(record: EV.BounceRecord) -> dt.datetime:
    received = dt.datetime.fromisoformat(record.received_at)
    return received.replace(tzinfo=_UTC) if received.tzinfo is None else received


def _id_variants(message_ids) -> list[str]:
    """Each Message-ID with and without its angle brackets, as a mail log row may hold it."""
    out: list[str] = []
    for m in message_ids:
        m = m.strip()
        bare = m[1:-1] if m.startswith("<") and m.endswith(">") else m
        for v in (m, bare, f"<{bare}>"):
            if v and v not in out:
                out.append(v)
    return out


def verify(store: Store, record: EV.BounceRecord, members: Members | None = None) -> tuple[str, str]:
    """Whether ``record`` counts: ("", the Message-ID of the post it matched) or (why not, "").

    ``members`` are the lists' current members; None checks only the mail
    log (whoever a post was delivered to was a member when it went out).
    """
    if record.reason:
        return record.reason, ""
    member, lst = record.member.strip().lower(), record.list_address.strip().lower()
    if not member:
        return "no VERP member: a report to the plain -bounces address counts for nobody", ""
    if member not in record.permanent:
        return f"no permanent failure of {member}", ""
    if members is not None:
        if lst not in members:
            return f"no list {lst} any more", ""
        if member not in members[lst]:
            return f"{member} is not a member of {lst} now", ""
    if not record.message_ids:
        return "the report returns no Message-ID of a post (no returned headers)", ""
    received = _received(record)
    earliest, latest = received - dt.timedelta(days=WINDOW_DAYS), received + CLOCK_SKEW
    variants = _id_variants(record.message_ids)
    # by Message-ID alone, which its index answers at once; a post has a row or two
    rows = [r for r in store._q(
        f"SELECT list_address, {store._read_column('status')}, created_at, message_id, recipients FROM mail_logs"
        f" WHERE message_id IN ({', '.join('?' for _ in variants)})", variants)
        if r[0] == lst and r[1] == "delivered" and earliest <= store._from_ts(r[2]) <= latest]
    for _, _, _, message_id, recipients in rows:
        sent_to = json.loads(recipients) if isinstance(recipients, str) else (recipients or [])
        if member in (r.lower() for r in sent_to if isinstance(r, str)):
            return "", message_id
    named = ", ".join(record.message_ids[:3]) + (" …" if len(record.message_ids) > 3 else "")
    if rows:
        return f"post {named} was not sent to {member}", ""
    return (f"no post {named} was delivered on {lst} in the {WINDOW_DAYS} days before the bounce"
            " (not a report of our mail)"), ""


def _counted_before(store: Store, record: EV.BounceRecord, message_id: str) -> bool:
    """Whether a bounce of this post for this member (on this list) was counted already."""
    return bool(store._q(
        "SELECT 1 FROM bounce_records WHERE member = ? AND message_id = ? AND list_address = ? AND counted = ?"
        " AND id <> ? LIMIT 1",
        (record.member.lower(), message_id, record.list_address.lower(), store._bool(True), record.id)))


def count(store: Store, record: EV.BounceRecord, now: dt.datetime | None = None, *,
          members: Members | None = None) -> Counted | None:
    """Check and score one bounce record in one transaction (see :func:`verify`).

    None when the record was ingested before (its id is in
    ``bounce_records``). A record that does not count is kept there with
    its reason, and touches no score.
    """
    now = now or dt.datetime.now(_UTC)
    day = dt.date.fromisoformat(record.day)
    member = record.member.strip().lower()
    with store.transaction():
        inserted = store._execute(
            "INSERT INTO bounce_records (id, list_address, day, received_at, addresses, queue_id, counted_at,"
            f" member, message_id, counted, reason) VALUES (?, ?, ?, ?, {_json(store)}, ?, ?, ?, '', ?, '')"
            " ON CONFLICT (id) DO NOTHING",
            (record.id, record.list_address.lower(), _day_param(store, day), store._ts(_received(record)),
             json.dumps(list(record.permanent)), record.queue_id, store._ts(now), member,
             store._bool(False))).rowcount
        if inserted == 0:
            return None
        reason, message_id = verify(store, record, members)
        state = None
        if not reason:
            again = f"a bounce of post {message_id} for {member} was counted already"
            if _counted_before(store, record, message_id):
                reason = again
            else:
                state = _locked(store, member, now)
                if _counted_before(store, record, message_id):  # counted by another host meanwhile
                    reason = again
        if reason:
            store._execute("UPDATE bounce_records SET reason = ?, message_id = ? WHERE id = ?",
                           (reason[:500], message_id, record.id))
            log.info("bounce record %s (%s, %s) not counted: %s", record.id, member or "no VERP",
                     record.list_address, reason)
            return Counted(reason=reason)
        store._execute("UPDATE bounce_records SET counted = ?, message_id = ? WHERE id = ?",
                       (store._bool(True), message_id, record.id))
        new, became = score(state, day)
        new = dataclasses.replace(new, lists=tuple(sorted(set(state.lists) | {record.list_address.lower()})))
        newly = []
        if became:
            new = dataclasses.replace(new, suppressed_at=now, reason=(
                f"{plural(new.score, 'bounce')}, the last on {day.isoformat()} from {record.list_address.lower()}"))
            _owe_notice(store, new, record.list_address.lower(), now)
            newly.append(new)
        _save(store, new, now)
    return Counted(newly=newly, message_id=message_id)


def _locked(store: Store, address: str, now: dt.datetime) -> BounceScore:
    """The address's row, locked until the transaction ends (made first if there is none).

    The INSERT … DO NOTHING waits for a concurrent transaction that is
    inserting the same address, so the SELECT that follows always finds the
    committed row; it loops only if ``bounces clear`` deleted the row between the two.
    """
    for _ in range(3):
        store._execute("INSERT INTO bounce_scores (address, updated_at) VALUES (?, ?) ON CONFLICT (address) DO NOTHING",
                       (address, store._ts(now)))
        rows = store._q(f"SELECT {_SCORE_COLUMNS} FROM bounce_scores WHERE address = ?{_lock(store)}", (address,))
        if rows:
            return _score_row(store, rows[0])
    raise StoreError(f"the bounce score of {address} keeps disappearing; try again")


def _save(store: Store, s: BounceScore, now: dt.datetime) -> None:
    store._execute(
        f"UPDATE bounce_scores SET score = ?, last_bounce = ?, lists = {_json(store)}, suppressed = ?,"
        " suppressed_at = ?, suppressed_reason = ?, updated_at = ? WHERE address = ?",
        (s.score, _day_param(store, s.last_bounce), json.dumps(list(s.lists)), store._bool(s.suppressed),
         store._ts(s.suppressed_at) if s.suppressed_at else None, s.reason, store._ts(now), s.address))


def _owe_notice(store: Store, s: BounceScore, list_address: str, now: dt.datetime) -> None:
    store._execute(
        "INSERT INTO bounce_notices (address, list_address, score, last_bounce, lists, status, attempts,"
        f" last_error, created_at) VALUES (?, ?, ?, ?, {_json(store)}, 'owed', 0, '', ?)",
        (s.address, list_address, s.score, _day_param(store, s.last_bounce), json.dumps(list(s.lists)),
         store._ts(now)))


# --------------------------------------------------------------------------
# Ingesting the spool


@dataclass
class BounceIngest(IngestResult):
    """What one ingest of ``bounces/`` did; ``ingested`` counts records, new or already counted."""

    newly_suppressed: list[BounceScore] = field(default_factory=list)
    not_counted: list[tuple[EV.BounceRecord, str]] = field(default_factory=list)  # (record, why not)


def waiting(spool_dir: Path) -> list[Path]:
    """Bounce records not yet scored, claimed ones included."""
    return waiting_records(spool_dir, BOUNCES)


def ingest_bounces(store: Store, spool_dir: Path, *, wait: bool = True,
                   members: Members | None = None) -> BounceIngest:
    """Score every bounce record in the spool (see the module docstring); raise StoreError.

    Records are scored in the order of their day, so that two days' bounces
    ingested together both count; ``members`` are the lists' current
    members (:func:`verify`). A store that fails stops the ingest and
    leaves the remaining records (claimed) for the next one.
    """
    result = BounceIngest()
    directory = spool_dir / BOUNCES
    if not directory.is_dir():
        return result
    with _ingest_lock(directory, wait) as locked:
        if not locked:
            result.busy = True
            return result
        claimed = directory / CLAIMED
        for path in pending_bounces(spool_dir):
            try:
                os.rename(path, claimed / path.name)
            except (FileNotFoundError, IsADirectoryError):
                continue
        records = []
        for path in sorted(p for p in claimed.iterdir() if p.name.endswith(".json")):
            record = _read(directory, path, result)
            if record is not None:
                records.append((path, record))
        records.sort(key=lambda pr: (pr[1].day, pr[1].received_at, pr[1].id))
        for path, record in records:
            try:
                outcome = count(store, record, members=members)
            except store.refused_errors() as exc:
                _set_aside(directory, path, f"refused by the store: {_first_line(exc)}", result)
                continue
            try:
                path.unlink()  # committed: now the file may go
            except FileNotFoundError:
                pass
            result.ingested += 1
            if outcome is not None:
                result.newly_suppressed.extend(outcome.newly)
                if outcome.reason:
                    result.not_counted.append((record, outcome.reason))
    return result


def _read(directory: Path, path: Path, result: BounceIngest) -> EV.BounceRecord | None:
    try:
        with open(path, "rb") as fh:
            return EV.bounce_from_json(fh.read(RECORD_MAX_BYTES))
    except FileNotFoundError:
        return None
    except IsADirectoryError:
        _set_aside(directory, path, "a directory, not a bounce record", result)
    except OSError as exc:
        _set_aside(directory, path, f"unreadable: {exc.strerror}", result)
    except EV.BadEvent as exc:
        _set_aside(directory, path, str(exc), result)
    return None


def purge_records(store: Store, days: int, now: dt.datetime | None = None) -> int:
    """Forget counted record ids older than ``days`` (0: keep them); they only guard a re-ingest."""
    if not days:
        return 0
    now = now or dt.datetime.now(_UTC)
    with store.transaction():
        return max(store._execute("DELETE FROM bounce_records WHERE counted_at < ?",
                                  (store._ts(now - dt.timedelta(days=days)),)).rowcount, 0)


# --------------------------------------------------------------------------
# Reading and clearing (CLI, web page, sync)


def scores(store: Store) -> list[BounceScore]:
    """Every score, suppressed addresses first, then the highest scores."""
    return [_score_row(store, r) for r in store._q(
        f"SELECT {_SCORE_COLUMNS} FROM bounce_scores ORDER BY suppressed DESC, score DESC, address")]


def suppressed(store: Store) -> dict[str, str]:
    """Every suppressed address with its reason: what the snapshot's ``suppressed`` table gets."""
    return dict(store._q("SELECT address, suppressed_reason FROM bounce_scores WHERE suppressed = ? ORDER BY address",
                         (store._bool(True),)))


def clear(store: Store, address: str) -> BounceScore | None:
    """Forget the score of ``address`` and lift its suppression; the row it had, or None.

    A notice still owed about it is dropped: the owners would be told of a
    suppression that no longer holds.
    """
    address = address.strip().lower()
    with store.transaction():
        rows = store._q(f"SELECT {_SCORE_COLUMNS} FROM bounce_scores WHERE address = ?{_lock(store)}", (address,))
        if not rows:
            return None
        store._execute("DELETE FROM bounce_scores WHERE address = ?", (address,))
        store._execute("UPDATE bounce_notices SET status = 'dropped', last_error = ?"
                       " WHERE address = ? AND status = 'owed'", ("suppression lifted before it was sent", address))
    return _score_row(store, rows[0])


@dataclass(frozen=True)
class Notice:
    """One ``bounce_notices`` row: the owners of ``list_address`` are told ``address`` is suppressed."""

    id: int
    address: str
    list_address: str
    score: int
    last_bounce: dt.date
    lists: tuple[str, ...]
    status: str  # owed, sent or dropped
    attempts: int
    last_error: str
    created_at: dt.datetime
    sent_at: dt.datetime | None

    def as_json(self) -> dict:
        return {"id": self.id, "address": self.address, "list_address": self.list_address, "status": self.status,
                "attempts": self.attempts, "last_error": self.last_error,
                "created_at": self.created_at.isoformat(),
                "sent_at": self.sent_at.isoformat() if self.sent_at else None}


_NOTICE_COLUMNS = ("id, address, list_address, score, last_bounce, lists, status, attempts, last_error,"
                   " created_at, sent_at")


def _notice_row(store: Store, r) -> Notice:
    return Notice(id=r[0], address=r[1], list_address=r[2], score=r[3], last_bounce=_day_of(r[4]),
                  lists=_list_of(r[5]), status=r[6], attempts=r[7], last_error=r[8] or "",
                  created_at=_time_of(store, r[9]), sent_at=_time_of(store, r[10]))


def notices(store: Store) -> list[Notice]:
    """Every owner notice, oldest first."""
    return [_notice_row(store, r) for r in store._q(f"SELECT {_NOTICE_COLUMNS} FROM bounce_notices ORDER BY id")]


@dataclass(frozen=True)
class Record:
    """One row of ``bounce_records``: a bounce report as sync read it, and whether it counted."""

    id: str
    list_address: str
    received_at: dt.datetime | None
    member: str  # from the VERP address; "" when the report came back to the bare -bounces address
    addresses: tuple[str, ...]  # what the report said failed permanently
    message_id: str  # the post it matched, if any
    counted: bool
    reason: str  # why it did not count ("" when it did)

    def as_json(self) -> dict:
        return {"id": self.id, "list": self.list_address,
                "received_at": self.received_at.isoformat() if self.received_at else None,
                "member": self.member, "addresses": list(self.addresses), "message_id": self.message_id,
                "counted": self.counted, "reason": self.reason}


def records(store: Store, *, days: int = STALE_AFTER_DAYS, not_counted: bool = False,
            limit: int = 200) -> list[Record]:
    """The bounce reports sync read in the last ``days`` days, newest first: counted or not, with the reason."""
    since = dt.datetime.now(_UTC) - dt.timedelta(days=days)
    where = "received_at >= ?" + (" AND counted = ?" if not_counted else "")
    params = (store._ts(since),) + ((store._bool(False),) if not_counted else ())
    rows = store._q("SELECT id, list_address, received_at, member, addresses, message_id, counted, reason"
                    f" FROM bounce_records WHERE {where} ORDER BY received_at DESC, id LIMIT {int(limit)}", params)
    return [Record(id=r[0], list_address=r[1], received_at=_time_of(store, r[2]), member=r[3] or "",
                   addresses=_list_of(r[4]), message_id=r[5] or "", counted=bool(r[6]), reason=r[7] or "")
            for r in rows]


# --------------------------------------------------------------------------
# Owner notices


def notice_message(notice: Notice, lst, now: dt.datetime):
    """The notice to the owners of ``lst`` (a compiled list), as an EmailMessage.

    ``Auto-Submitted: auto-generated`` (RFC 3834 §5) tells other robots not to
    answer it; it goes out with the null envelope sender, so a failure to
    deliver it cannot bounce back into the lists.
    """
    from email.headerregistry import Address
    from email.message import EmailMessage
    from email.utils import format_datetime, make_msgid

    from ..common.addresses import bounces_address
    from ..sync.templating import render

    msg = EmailMessage()
    local, _, domain = bounces_address(lst.address).rpartition("@")
    msg["From"] = Address(lst.display_name, local, domain)
    msg["To"] = ", ".join(lst.owners)
    msg["Subject"] = f"{notice.address} no longer receives {lst.display_name} mail (bouncing)"
    msg["Date"] = format_datetime(now)
    msg["Message-ID"] = make_msgid(domain=lst.domain)
    msg["Auto-Submitted"] = "auto-generated"
    msg.set_content(render(NOTICE_TEMPLATE, address=notice.address, list_name=lst.display_name,
                           list_address=lst.address, score=notice.score,
                           last_bounce=notice.last_bounce.isoformat(), lists=list(notice.lists),
                           threshold=THRESHOLD))
    return msg


@dataclass
class Sent:
    sent: list[Notice] = field(default_factory=list)
    failed: list[tuple[Notice, str]] = field(default_factory=list)
    dropped: list[tuple[Notice, str]] = field(default_factory=list)


def send_owed(store: Store, lists, sendmail: str, installed: set[str] | frozenset[str],
              now: dt.datetime | None = None) -> Sent:
    """Send every owed notice whose address the installed snapshot suppresses; raise StoreError.

    One transaction per notice, holding its row while sendmail runs: a
    concurrent sync on another host skips it, and it is marked sent only
    when sendmail succeeded (a failed one stays owed for the next sync).
    """
    from ..common.sendmail import SendError, submit
    from ..common.staging import redirect_header, redirected

    now = now or dt.datetime.now(_UTC)
    by_address = {l.address: l for l in lists}
    out = Sent()
    after = 0
    while True:
        with store.transaction():
            rows = store._q(f"SELECT {_NOTICE_COLUMNS} FROM bounce_notices WHERE status = 'owed' AND id > ?"
                            f" ORDER BY id LIMIT 1{_lock(store, skip_locked=True)}", (after,))
            if not rows:
                return out
            n = _notice_row(store, rows[0])
            after = n.id
            if n.address not in installed:
                continue  # not in the installed snapshot yet: tell the owners once it is
            lst = by_address.get(n.list_address)
            if lst is None:
                why = f"no list {n.list_address} in the config any more"
                store._execute("UPDATE bounce_notices SET status = 'dropped', last_error = ? WHERE id = ?",
                               (why, n.id))
                out.dropped.append((n, why))
                continue
            owners, message = list(lst.owners), notice_message(n, lst, now).as_bytes()
            staging = getattr(lst, "redirect_to", None)  # the staging valve: only there, naming the owners
            if staging:
                message = redirect_header(owners) + message
            try:
                submit(sendmail, "", redirected(owners, staging), message, timeout=SEND_TIMEOUT)
            except (SendError, OSError) as exc:
                why = str(exc) if isinstance(exc, SendError) else f"{sendmail}: {exc.strerror or exc}"
                store._execute("UPDATE bounce_notices SET attempts = attempts + 1, last_error = ? WHERE id = ?",
                               (why[:500], n.id))
                out.failed.append((n, why))
                continue
            store._execute("UPDATE bounce_notices SET status = 'sent', attempts = attempts + 1, last_error = '',"
                           " sent_at = ? WHERE id = ?", (store._ts(now), n.id))
            out.sent.append(n)


# --------------------------------------------------------------------------
# What sync does


@dataclass
class BounceSync:
    """The suppressed set for the snapshot, and what to tell the operator."""

    suppressed: dict[str, str]
    notes: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    store_ok: bool = True  # False: the store could not be used (and the warning says why)
    store_error: str = ""  # why the store could not be used, if that was the cause (the warning says it once)


def installed_suppressed(config) -> dict[str, str]:
    """The installed snapshot's suppressed addresses (none if there is no snapshot)."""
    from ..common.snapshot import Snapshot, SnapshotError

    try:
        with Snapshot(config.site.snapshot_path) as snap:
            return snap.suppressed_with_reasons()
    except SnapshotError:
        return {}


def _wanted(config) -> bool:
    return in_use(config) or bool(waiting(config.site.spool_dir))


def members_of(lists) -> Members:
    """Each compiled list's members, lower-cased: who a bounce may count for."""
    return {l.address.lower(): {e.lower() for e, _ in l.members} for l in lists}


def installed_members(config) -> Members | None:
    """The installed snapshot's members of each list (None if there is no usable snapshot)."""
    from ..common.snapshot import Snapshot, SnapshotError

    try:
        with Snapshot(config.site.snapshot_path) as snap:
            return {row.address: {e.lower() for e, _ in snap.members(row.address)} for row in snap.lists()}
    except SnapshotError:
        return None


def _ingest_events_first(store: Store, spool: Path, out: "BounceSync") -> None:
    """Ingest the waiting events, so that a post delivered since the last sync is in the mail log.

    Only when bounce records wait: otherwise the mail log's own ingest,
    after the snapshot is installed, does it (and reports it) as before.
    """
    from ..common.spool import BAD, EVENTS
    from .ingest import ingest

    result = ingest(store, spool)
    if result.ingested:
        out.notes.append(f"mail log: {plural(result.ingested, 'event')} logged (before scoring bounces)")
    for name, reason in result.bad:
        out.warnings.append(f"spool event {name} is malformed, moved to {spool / EVENTS / BAD}: {reason}")


def before_sync(config, *, ingest: bool = True, lists=None) -> BounceSync:
    """Score the spool's bounce records (unless ``ingest`` is false) and read the suppressed set.

    ``lists`` are the lists this sync compiled: a bounce counts only for
    their members (without them, the installed snapshot's members).
    Never raises for a store problem: a store that is down or not set up
    keeps the installed snapshot's suppressed set, with a warning, so that
    nobody is sent to again only because the store could not be read.
    """
    spool = config.site.spool_dir
    if not _wanted(config):
        return BounceSync(installed_suppressed(config))
    out = BounceSync({})
    try:
        with open_store(config.store) as store:
            store.require_current()
            result = BounceIngest()
            if ingest:
                if waiting(spool):
                    _ingest_events_first(store, spool, out)
                members = members_of(lists) if lists is not None else installed_members(config)
                result = ingest_bounces(store, spool, members=members)
                purge_records(store, config.store.retention_days)
            current = suppressed(store)
    except (StoreError, OSError) as exc:
        kept = installed_suppressed(config)
        count_waiting = len(waiting(spool))
        more = f"; {plural(count_waiting, 'bounce record')} waiting in {spool / BOUNCES}" if count_waiting else ""
        keeping = f"; keeping the installed snapshot's {plural(len(kept), 'suppressed address')}"
        if isinstance(exc, StoreError):  # one line for both: the mail log's ingest does not try the store again
            from .ingest import pending_events

            events = len(pending_events(spool))
            more += f"; {plural(events, 'event')} waiting in {spool / 'events'}" if events else ""
            return BounceSync(kept, warnings=[f"mail log not updated and bounces not scored: {exc}{more}{keeping}"],
                              store_ok=False, store_error=str(exc))
        return BounceSync(kept, warnings=[f"bounces not scored: spool {spool / BOUNCES}: {exc.strerror}{more}{keeping}"],
                          store_ok=False)
    out.suppressed = current
    for name, reason in result.bad:
        out.warnings.append(f"spool bounce record {name} is malformed, moved to {spool / BOUNCES / 'bad'}: {reason}")
    if result.ingested:
        out.notes.append(f"bounces: {plural(result.ingested, 'record')} scored")
    for record, reason in result.not_counted[:NOT_COUNTED_SHOWN]:
        who = record.member or ", ".join(record.permanent) or "nobody"
        out.notes.append(f"bounces: not counted for {who} on {record.list_address} ({record.id}): {reason}")
    if len(result.not_counted) > NOT_COUNTED_SHOWN:
        out.notes.append(f"bounces: {plural(len(result.not_counted) - NOT_COUNTED_SHOWN, 'more record')} not counted"
                         " (their reasons are in bounce_records)")
    for s in result.newly_suppressed:
        out.notes.append(f"bounces: {s.address} suppressed ({s.reason}); the owners will be told")
    return out


def after_sync(config, lists, installed: dict[str, str] | set[str]) -> tuple[list[str], list[str]]:
    """Send the owner notices owed for addresses the installed snapshot suppresses: (notes, warnings).

    Runs once the snapshot is installed; never raises for a store problem.
    """
    if not _wanted(config):
        return [], []
    try:
        with open_store(config.store) as store:
            store.require_current()
            sent = send_owed(store, lists, config.site.sendmail, frozenset(installed))
    except StoreError as exc:
        return [], [f"bounces: owner notices not sent: {exc}"]
    notes = [f"bounces: told the owners of {n.list_address} that {n.address} is suppressed" for n in sent.sent]
    warnings = [f"bounces: notice to the owners of {n.list_address} about {n.address} not sent ({why});"
                " retried at the next sync" for n, why in sent.failed]
    warnings += [f"bounces: notice about {n.address} dropped: {why}" for n, why in sent.dropped]
    return notes, warnings
