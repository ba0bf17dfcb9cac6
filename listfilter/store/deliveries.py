"""Each member's outcome, as Postfix's log tells it: the ``reinjections`` and ``deliveries`` tables.

Sync side only. :mod:`listfilter.sync.follow` reads Postfix's log and hands
this module what it found; the web page and ``listfilter log`` read it back.

- ``reinjections``: one row per (host, queue id, event): the queue id Postfix
  gave a reinjected copy of a post (``sendmail`` does not report it; the log
  does, see :mod:`listfilter.sync.follow`), when cleanup(8) logged it, and
  when qmgr(8) logged it ``removed`` (short queue ids are used again after that).
- ``deliveries``: one row per (event, member), the member's latest outcome:
  ``sent``, ``deferred``, ``bounced`` or ``expired`` (:data:`MEANINGS`), the
  time of the log line, the relay, the DSN, the relay's reply and the delay.
  A later line for the same member updates the row (a retry: deferred, then
  sent), but a deferral never hides an outcome (a second copy deferred after
  the first was sent); between two outcomes, or two deferrals, the newer wins.

The key (event, member) is what keeps a member counted once, whoever writes:
two hosts sharing a PostgreSQL store, or a follower that reads a line again
after a crash between its commit and its position file.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Iterable

from .database import Store
from .migrations import DELIVERY_STATUSES

_UTC = dt.timezone.utc

#: What each outcome means, in one line (the web page's legend; docs/store.md says it at length).
MEANINGS = {
    "sent": "the next hop (the relay, or the member's own server) accepted the copy",
    "deferred": "the next hop refused for now (4xx) or could not be reached; Postfix retries",
    "bounced": "refused for good (5xx); Postfix sent a bounce report to the list's -bounces address",
    "expired": "still deferred when Postfix's queue lifetime ran out; returned as a bounce",
}
assert tuple(MEANINGS) == DELIVERY_STATUSES

#: The web page's and the CLI's ``members`` filter: posts with a member in one of these outcomes.
MEMBER_FILTERS = {
    "deferred": ("deferred",),
    "bounced": ("bounced",),
    "expired": ("expired",),
    "not-sent": ("deferred", "bounced", "expired"),
}
#: How a post with no outcome read yet is shown: the log has not been read that far, or never will be.
NOT_YET_READ = "handed to Postfix, outcome not yet read"
#: Rows written per executemany (each batch inside the caller's one transaction).
BATCH = 500


@dataclass(frozen=True)
class Delivery:
    """One ``deliveries`` row: a member's latest outcome for one post."""

    event_id: str
    recipient: str  # lower case; Postfix's orig_to= when it logged one, else to=
    status: str  # one of DELIVERY_STATUSES
    at: dt.datetime  # the log line's time, aware (UTC)
    first_at: dt.datetime | None = None  # the first line's (a deferral's, before the retry that sent it)
    host: str = ""
    queue_id: str = ""  # the reinjected copy's
    relay: str = ""
    dsn: str = ""
    reply: str = ""
    delay: str = ""

    def as_json(self) -> dict:
        return {"recipient": self.recipient, "status": self.status, "at": self.at.isoformat(),
                "first_at": (self.first_at or self.at).isoformat(), "host": self.host, "queue_id": self.queue_id,
                "relay": self.relay, "dsn": self.dsn, "reply": self.reply, "delay": self.delay}


@dataclass(frozen=True)
class Reinjection:
    """One ``reinjections`` row: a queue id Postfix gave a reinjected copy of a post."""

    host: str
    queue_id: str
    event_id: str
    seen_at: dt.datetime
    removed_at: dt.datetime | None = None


# --------------------------------------------------------------------------
# Writing (the follower)


def _chunks(items: list, size: int = BATCH):
    for start in range(0, len(items), size):
        yield items[start:start + size]


def _upsert_sql() -> str:
    cols = ("event_id", "recipient", "status", "at", "first_at", "host", "queue_id", "relay", "dsn", "reply",
            "delay", "updated_at")
    updates = ", ".join(f"{c} = excluded.{c}" for c in cols if c not in ("event_id", "recipient", "first_at"))
    new_temp, old_temp = "excluded.status = 'deferred'", "deliveries.status = 'deferred'"
    return (f"INSERT INTO deliveries ({', '.join(cols)}) VALUES ({', '.join('?' for _ in cols)})"
            f" ON CONFLICT (event_id, recipient) DO UPDATE SET {updates}"
            f" WHERE CASE WHEN ({new_temp}) = ({old_temp}) THEN excluded.at >= deliveries.at ELSE {old_temp} END")


class Writer:
    """What one follower run writes, in log order, then :meth:`commit` in one transaction.

    ``add`` a reinjection, ``outcome`` a member's line, ``expired`` the members
    still deferred in a copy whose queue lifetime ran out, ``removed`` a copy
    that left the queue. Runs of outcomes are written with executemany in
    batches of :data:`BATCH`; the order between kinds is kept.
    """

    def __init__(self):
        self.ops: list[tuple[str, tuple]] = []

    def __len__(self) -> int:
        return len(self.ops)

    def add(self, r: Reinjection) -> None:
        self.ops.append(("add", (r.host, r.queue_id, r.event_id, r.seen_at)))

    def outcome(self, d: Delivery) -> None:
        if d.status not in DELIVERY_STATUSES:
            raise ValueError(f"not a delivery status: {d.status!r}")
        self.ops.append(("outcome", (d.event_id, d.recipient.lower(), d.status, d.at, d.first_at or d.at, d.host,
                                     d.queue_id, d.relay, d.dsn, d.reply, d.delay)))

    def expired(self, event_id: str, host: str, queue_id: str, at: dt.datetime) -> None:
        self.ops.append(("expired", (event_id, host, queue_id, at)))

    def removed(self, event_id: str, host: str, queue_id: str, at: dt.datetime) -> None:
        self.ops.append(("removed", (event_id, host, queue_id, at)))

    def commit(self, store: Store, now: dt.datetime | None = None) -> None:
        """Write everything in one transaction (nothing if it fails: the follower keeps its position)."""
        if not self.ops:
            return
        now = store._ts(now or dt.datetime.now(_UTC))
        ts = store._ts
        upsert = _upsert_sql()
        with store.transaction():
            run: list[tuple] = []

            def flush():
                for chunk in _chunks(run):
                    store._executemany(upsert, chunk)
                run.clear()

            for kind, args in self.ops:
                if kind == "outcome":
                    e, rcpt, status, at, first, *rest = args
                    run.append((e, rcpt, status, ts(at), ts(first), *rest, now))
                    continue
                flush()
                if kind == "add":
                    host, qid, event_id, seen = args
                    # a queue id whose "removed" line was never read (a lost log) is not this copy's
                    store._execute("UPDATE reinjections SET removed_at = ? WHERE host = ? AND queue_id = ?"
                                   " AND event_id <> ? AND removed_at IS NULL", (ts(seen), host, qid, event_id))
                    store._execute("INSERT INTO reinjections (host, queue_id, event_id, seen_at) VALUES (?, ?, ?, ?)"
                                   " ON CONFLICT (host, queue_id, event_id) DO NOTHING", (host, qid, event_id, ts(seen)))
                elif kind == "expired":
                    event_id, host, qid, at = args
                    store._execute("UPDATE deliveries SET status = 'expired', at = ?, updated_at = ?"
                                   " WHERE event_id = ? AND host = ? AND queue_id = ? AND status = 'deferred'",
                                   (ts(at), now, event_id, host, qid))
                elif kind == "removed":
                    event_id, host, qid, at = args
                    store._execute("UPDATE reinjections SET removed_at = ? WHERE host = ? AND queue_id = ?"
                                   " AND event_id = ? AND removed_at IS NULL", (ts(at), host, qid, event_id))
            flush()
        self.ops.clear()


# --------------------------------------------------------------------------
# Looking up (the follower)


def posts(store: Store, wanted: Iterable[tuple[str, str]]) -> dict[tuple[str, str], str]:
    """The event id of each (Message-ID without <>, list address) the mail log has.

    Looked up by Message-ID (indexed), with and without angle brackets; of
    two rows for one key (a post without a Message-ID of its own has one
    made), a ``delivered`` one, else the newest.
    """
    from .bounces import _id_variants

    wanted = {(m, l.lower()) for m, l in wanted if m}
    out: dict[tuple[str, str], tuple] = {}
    ids = sorted({v for m, _ in wanted for v in _id_variants([m])})
    for chunk in _chunks(ids):
        rows = store._q(f"SELECT id, message_id, list_address, {store._read_column('status')}, created_at"
                        f" FROM mail_logs WHERE message_id IN ({', '.join('?' for _ in chunk)})", chunk)
        for ident, message_id, lst, status, created in rows:
            key = (_bare(message_id or ""), (lst or "").lower())
            if key not in wanted:
                continue
            rank = (status == "delivered", store._from_ts(created))
            if key not in out or rank > out[key][0]:
                out[key] = (rank, ident)
    return {k: v[1] for k, v in out.items()}


def _bare(message_id: str) -> str:
    m = message_id.strip()
    return m[1:-1] if m.startswith("<") and m.endswith(">") else m


def copies(store: Store, host: str, queue_ids: Iterable[str], *,
           since: dt.datetime | None = None) -> dict[str, str]:
    """The event each queue id on ``host`` is a reinjected copy of, if it is one still in the queue.

    ``since``: ignore copies seen before then (a queue id used again after
    a "removed" line the follower never read, once the queue lifetime is past).
    """
    out: dict[str, tuple] = {}
    for chunk in _chunks(sorted(set(queue_ids))):
        params: list = [host, *chunk]
        extra = ""
        if since is not None:
            extra = " AND seen_at >= ?"
            params.append(store._ts(since))
        for qid, event_id, seen in store._q(
                "SELECT queue_id, event_id, seen_at FROM reinjections WHERE host = ? AND removed_at IS NULL"
                f" AND queue_id IN ({', '.join('?' for _ in chunk)}){extra}", params):
            seen = store._from_ts(seen)
            if qid not in out or seen > out[qid][0]:
                out[qid] = (seen, event_id)
    return {k: v[1] for k, v in out.items()}


# --------------------------------------------------------------------------
# Reading (the web page, the CLI)


def counts(store: Store, event_ids: Iterable[str]) -> dict[str, dict[str, int]]:
    """{event id: {status: members}} for the events that have any outcome read."""
    out: dict[str, dict[str, int]] = {}
    for chunk in _chunks(sorted(set(event_ids))):
        for event_id, status, n in store._q(
                "SELECT event_id, status, count(*) FROM deliveries"
                f" WHERE event_id IN ({', '.join('?' for _ in chunk)}) GROUP BY event_id, status", chunk):
            out.setdefault(event_id, {})[status] = n
    return {e: {s: c[s] for s in DELIVERY_STATUSES if s in c} for e, c in out.items()}  # in the words' order


def queue_ids(store: Store, event_ids: Iterable[str]) -> dict[str, list[str]]:
    """{event id: the queue ids of its reinjected copies, first seen first}."""
    out: dict[str, list[tuple]] = {}
    for chunk in _chunks(sorted(set(event_ids))):
        for event_id, qid, seen in store._q(
                "SELECT event_id, queue_id, seen_at FROM reinjections"
                f" WHERE event_id IN ({', '.join('?' for _ in chunk)})", chunk):
            out.setdefault(event_id, []).append((store._from_ts(seen), qid))
    return {k: [q for _, q in sorted(v)] for k, v in out.items()}


_COLUMNS = "event_id, recipient, status, at, first_at, host, queue_id, relay, dsn, reply, delay"


def of_event(store: Store, event_id: str) -> list[Delivery]:
    """Every member's outcome for one event: the ones not sent first, then by address."""
    order = {s: i for i, s in enumerate(("bounced", "expired", "deferred", "sent"))}
    rows = [Delivery(e, r, s, store._from_ts(at), store._from_ts(first), h or "", q or "", rl or "", dsn or "",
                     reply or "", delay or "")
            for e, r, s, at, first, h, q, rl, dsn, reply, delay in store._q(
                f"SELECT {_COLUMNS} FROM deliveries WHERE event_id = ?", (event_id,))]
    return sorted(rows, key=lambda d: (order.get(d.status, 9), d.recipient))


def reinjections(store: Store, event_id: str) -> list[Reinjection]:
    """The queue ids of an event's reinjected copies, first seen first."""
    return sorted((Reinjection(h, q, e, store._from_ts(s), store._from_ts(r) if r else None)
                   for h, q, e, s, r in store._q("SELECT host, queue_id, event_id, seen_at, removed_at"
                                                 " FROM reinjections WHERE event_id = ?", (event_id,))),
                  key=lambda r: (r.seen_at, r.host, r.queue_id))


def purge(store: Store, cutoff: dt.datetime) -> int:
    """Delete the outcomes and queue ids of the events older than ``cutoff`` (retention); the outcomes' count.

    Run before the events themselves are deleted, in the same transaction.
    """
    old = "SELECT id FROM mail_logs WHERE created_at < ?"
    n = store._execute(f"DELETE FROM deliveries WHERE event_id IN ({old})", (store._ts(cutoff),)).rowcount
    store._execute(f"DELETE FROM reinjections WHERE event_id IN ({old})", (store._ts(cutoff),))
    return max(n, 0)


# --------------------------------------------------------------------------
# Showing


def summary(status: str, recipient_count: int, outcome: dict[str, int] | None) -> str:
    """The members' outcomes in plain words: ``45 sent``, ``44 sent · 1 deferred``, ``43 sent · 2 bounced``.

    "" for a post that was not handed to Postfix (not ``delivered``, or to
    nobody). With no outcome read yet: :data:`NOT_YET_READ`; with some,
    the members not read yet as ``N not yet read``.
    """
    if outcome:
        parts = [f"{outcome[s]} {s}" for s in DELIVERY_STATUSES if outcome.get(s)]
        unread = recipient_count - sum(outcome.values())
        if status == "delivered" and unread > 0:
            parts.append(f"{unread} not yet read")
        return " · ".join(parts)
    return NOT_YET_READ if status == "delivered" and recipient_count else ""
