"""The log follower (sync side): each member's outcome for every post, from Postfix's log into the store.

``listfilter sync`` runs :func:`follow` after moving the spool into the store
(:func:`listfilter.store.ingest.after_sync`). It reads ``[postfix] log_file``
from where it stopped (:class:`listfilter.sync.postfixlog.LogReader`: across
rotation, each complete line once), or with ``log_source = "journal"`` the
systemd journal from its cursor (:class:`~listfilter.sync.postfixlog.JournalReader`), at most :data:`MAX_LINES` lines or
:data:`MAX_SECONDS` seconds per sync, and writes what it found in one
transaction (:class:`listfilter.store.deliveries.Writer`); only then does it
replace its position file, ``<state_dir>/maillog/log-position.json``
(:data:`POSITION_NAME`), by rename. A crash in between reads the same lines
again, which changes nothing: each row is keyed by (event, member).

Which queue ids are a post's reinjected copies. Postfix's sendmail does not
report the queue id it assigns; each submission leaves, in Postfix's log:

- ``QID: uid=UID from=<students-bounces@…>`` (pickup(8)): submitted locally,
  by the user ``deliver`` runs as, from a list's -bounces address;
- ``QID: message-id=<…>`` (cleanup(8)): the post's Message-ID;
- ``QID: to=<member>, relay=…, dsn=…, status=sent (reply)`` (smtp(8), or
  lmtp, local, virtual, pipe, error, qmgr), once per attempt, and
  ``QID: from=<…>, status=expired, returned to sender``, ``QID: removed`` (qmgr(8)).

A copy whose -bounces address and Message-ID match a ``mail_logs`` row of
that list is recorded in ``reinjections`` with its host and queue id (short
queue ids are used again once ``removed``), and its members' lines in
``deliveries``. A copy whose first lines were read but not yet the rest (the
read stopped in between, or the post's event has not reached the store yet)
is kept in the position file for :data:`PENDING_AGE` of log time; the lines
of a copy already in ``reinjections`` are matched there.

Two syncs never follow at once: sync's own lock serialises them, and the
follower takes an flock beside its position file for anyone else. Hosts that
share a PostgreSQL store each follow their own log with their own state
directory; queue ids are keyed by host, and each member has one row per post.
"""

from __future__ import annotations

import datetime as dt
import fcntl
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

from ..common.addresses import bounces_address
from ..common.atomic import write_bytes
from ..common.paths import service_uid
from ..common.reinjection import is_ours
from ..common.words import plural
from ..store.migrations import DELIVERY_STATUSES
from .config import Config
from .postfixlog import JournalReader, LogLine, LogReader, local_zone

#: The follower's state in ``<state_dir>/maillog/``: where it stopped, and the copies still open.
POSITION_NAME = "log-position.json"
LOCK_NAME = "log-position.lock"
#: Work per sync: lines read and seconds spent, whichever comes first (measured: docs/operations.md).
MAX_LINES = 200_000
MAX_SECONDS = 20.0
#: How long (in log time) a copy whose owner is not known yet is kept in the position file.
PENDING_AGE = dt.timedelta(hours=1)
#: ... and at most this many of them (the oldest go first).
PENDING_MAX = 10_000
#: A queue id in ``reinjections`` older than this is not matched: Postfix gives up on a message after
#: maximal_queue_lifetime (5 days by default), so a later line with that id is another message's.
QUEUE_LIFETIME = dt.timedelta(days=7)
#: The status words of a delivery agent's line (smtp, lmtp, local, virtual, pipe, error, qmgr) that are an
#: outcome; ``expired`` is qmgr's line for the whole copy. (With soft_bounce = yes Postfix logs a would-be
#: bounce as ``deferred`` itself.)
OUTCOMES = ("sent", "deferred", "bounced")
#: Programs whose line with a queue id starts a new message in the queue.
STARTS = ("pickup", "smtpd", "qmqpd")


def position_path(config: Config) -> Path:
    return config.site.state_dir / "maillog" / POSITION_NAME


@dataclass
class _Copy:
    """One message in Postfix's queue, as far as the follower has read it."""

    host: str
    queue_id: str
    seen: dt.datetime
    started: bool  # its first line was read (here, or by the run that carried it over)
    message_id: str = ""
    sender: str | None = None
    local: bool = False  # pickup's uid= and from= say it is a list's copy (common.reinjection.is_ours)
    ops: list = field(default_factory=list)  # its outcome, expiry and removal lines, in order
    event_id: str | None = None
    list_address: str = ""

    def to_json(self) -> dict:
        return {"host": self.host, "queue_id": self.queue_id, "seen": self.seen.isoformat(),
                "message_id": self.message_id, "sender": self.sender, "local": self.local,
                "ops": [[kind, *(v.isoformat() if isinstance(v, dt.datetime) else v for v in args)]
                        for kind, args in self.ops]}

    @classmethod
    def from_json(cls, d: dict) -> _Copy:
        c = cls(host=d["host"], queue_id=d["queue_id"], seen=dt.datetime.fromisoformat(d["seen"]), started=True,
                message_id=d.get("message_id") or "", sender=d.get("sender"), local=bool(d.get("local")))
        for kind, *args in d.get("ops") or []:
            if kind == "outcome":
                rcpt, status, at, *rest = args
                c.ops.append((kind, (rcpt, status, dt.datetime.fromisoformat(at), *rest)))
            else:
                c.ops.append((kind, (dt.datetime.fromisoformat(args[0]),)))
        return c


@dataclass
class FollowResult:
    lines: int = 0  # log lines read
    outcomes: dict[str, int] = field(default_factory=dict)  # lines stored, by status
    copies: int = 0  # reinjected copies newly matched to a post
    pending: int = 0  # copies carried over to the next run
    dropped: int = 0  # copies given up (no post in the store within PENDING_AGE)
    behind: int = 0  # bytes of the log left for the next run
    capped: str = ""  # why this run stopped before the end ("" when it read to the end)
    gaps: list[str] = field(default_factory=list)  # what the reader could not read (rotation)
    busy: bool = False  # another follower was running
    missing: bool = False  # no log file
    position: dict = field(default_factory=dict)

    def note(self) -> str:
        if not (self.lines or self.outcomes or self.copies):
            return ""
        out = f"postfix log: {plural(self.lines, 'line')} read"
        if self.outcomes:
            parts = [f"{self.outcomes[s]} {s}" for s in DELIVERY_STATUSES if self.outcomes.get(s)]
            out += f", {plural(sum(self.outcomes.values()), 'member outcome')} ({', '.join(parts)})"
        if self.copies:
            out += f", {plural(self.copies, 'reinjected copy', 'reinjected copies')} matched"
        if self.capped:
            out += f"; stopped after {self.capped}, {plural(self.behind, 'byte')} left for the next sync"
        return out


class _Follower:
    """One run's reading: the copies seen, and their lines in log order."""

    def __init__(self, bounces: dict[str, str], uid: int | None, carried: list[_Copy]):
        self.bounces, self.uid = bounces, uid
        self.open: dict[tuple[str, str], _Copy] = {}
        self.all: list[_Copy] = []
        for c in carried:
            self._register(c)
        self.last: dt.datetime | None = None

    def _register(self, c: _Copy) -> _Copy:
        self.open[(c.host, c.queue_id)] = c
        self.all.append(c)
        return c

    def _current(self, line: LogLine) -> _Copy:
        c = self.open.get((line.host, line.queue_id))
        if c is None:  # its start is in an earlier run: reinjections knows whether it is ours
            c = self._register(_Copy(line.host, line.queue_id, line.time, started=False))
        return c

    def ours(self, c: _Copy) -> bool | None:
        """Whether a started copy is a list's reinjected post (:func:`listfilter.common.reinjection.is_ours`,
        then the Message-ID): True, False, or None (not known yet)."""
        if c.sender is None:
            return None
        if not c.local:  # pickup's line said is_ours (qmgr's from= alone never makes a copy ours)
            return False
        return True if c.message_id else None

    def read(self, line: LogLine) -> None:
        qid = line.queue_id
        if not qid:
            return
        self.last = line.time
        daemon, f = line.daemon, line.fields
        key = (line.host, qid)
        if daemon in STARTS and ("uid" in f or "client" in f or "sender" in f):
            c = self._register(_Copy(line.host, qid, line.time, started=True))
            if daemon == "pickup":
                c.sender = f.get("from", f.get("sender"))
                c.local = f.get("uid", "").isdigit() and is_ours(f["uid"], c.sender or "", uid=self.uid,
                                                                 senders=self.bounces)
            return
        if daemon == "cleanup" and "message-id" in f:
            c = self.open.get(key)
            if c is None or c.message_id or not c.started:
                c = self._register(_Copy(line.host, qid, line.time, started=True))
            c.message_id = f["message-id"]
            return
        status = f.get("status")
        if "to" in f and status in OUTCOMES:
            c = self._current(line)
            if c.started and self.ours(c) is False:
                return
            recipient = (f.get("orig_to") or f["to"]).lower()
            c.ops.append(("outcome", (recipient, status, line.time, f.get("relay", ""), f.get("dsn", ""),
                                      line.reply, f.get("delay", ""))))
            return
        if daemon != "qmgr":
            return
        if "from" in f and status is None:  # "from=<…>, size=…, nrcpt=… (queue active)"
            c = self._current(line)
            if c.sender is None:
                c.sender = f["from"]
            return
        if status == "expired":
            c = self._current(line)
            if not (c.started and self.ours(c) is False):
                c.ops.append(("expired", (line.time,)))
            return
        if line.text.strip() == "removed":  # the queue id may now be given to another message
            c = self._current(line)
            del self.open[key]
            if not (c.started and self.ours(c) is False):
                c.ops.append(("removed", (line.time,)))


def follow(config: Config, store, *, max_lines: int = MAX_LINES, max_seconds: float = MAX_SECONDS,
           uid: int | None | bool = True, zone: dt.tzinfo | None = None) -> FollowResult:
    """Read the new part of Postfix's log into the store (see the module docstring).

    ``uid``: the user whose local submissions can be posts (True: the
    service user's; None: anyone's). ``zone``: of timestamps that name none
    (default :func:`local_zone`). Raises StoreError (nothing is written and
    the position stays), FollowError (a position file it did not write) or
    OSError (a log it may not read, a position file it cannot replace).
    """
    from ..store import deliveries as DV

    result = FollowResult()
    log_path = config.postfix.log_file
    state = position_path(config)
    if not state.parent.exists():  # a PostgreSQL store: no SQLite file made the directory
        from ..store.database import _give, service_owner

        state.parent.mkdir(mode=0o750, parents=True, exist_ok=True)
        _give(state.parent, service_owner(config.site.spool_dir))
    fd = os.open(state.parent / LOCK_NAME, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o640)
    _own(state.parent / LOCK_NAME)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            result.busy = True
            return result
        saved = _load(state)
        if config.postfix.journal:
            reader = JournalReader(saved.get("log"), directory=config.postfix.journal_directory)
        elif not log_path.exists():
            result.missing = True
            return result
        else:
            reader = LogReader(log_path, saved.get("log"), zone=zone or local_zone())
        try:
            carried = [_Copy.from_json(c) for c in saved.get("open") or []]
        except (KeyError, TypeError, ValueError) as exc:
            raise FollowError(f"the log follower's position {state} has a bad copy in \"open\" ({exc!r}):"
                              " remove it to read the log again from the start of the current file") from None
        bounces = {bounces_address(f"{l.local_part}@{d}").lower(): f"{l.local_part}@{d}".lower()
                   for l in config.lists.values() for d in l.domains}
        f = _Follower(bounces, service_uid() if uid is True else uid, carried)
        deadline = time.monotonic() + max_seconds
        for line in reader.lines():
            f.read(line)
            result.lines += 1
            if result.lines >= max_lines:
                result.capped = plural(max_lines, "line")
                break
            if not result.lines % 1000 and time.monotonic() > deadline:
                result.capped = f"{max_seconds:g} s"
                break
        result.gaps = list(reader.gaps)
        writer, carry = _resolve(store, f, result, DV)
        writer.commit(store)
        result.position = reader.position
        try:
            st = None if config.postfix.journal else log_path.stat()
        except OSError:
            st = None
        if st is not None:  # still in <log>.1 after a rotation: at least the whole new file
            same = st.st_ino == reader.position.get("inode")
            result.behind = max(0, st.st_size - int(reader.position.get("offset") or 0)) if same else st.st_size
        _save(state, {
            "log": reader.position,
            "read_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            "last_line_at": f.last.isoformat() if f.last else saved.get("last_line_at"),
            "behind_bytes": result.behind,
            "open": [c.to_json() for c in carry],
        })
        return result
    finally:
        os.close(fd)


def _resolve(store, f: _Follower, result: FollowResult, DV):
    """Which post each copy is (the store), the writer's rows in log order, and the copies to carry over."""
    started = [c for c in f.all if c.started]
    wanted = {(c.message_id, f.bounces[c.sender.lower()]) for c in started if f.ours(c)}
    events = DV.posts(store, wanted)
    earlier: dict[str, list[_Copy]] = {}
    for c in f.all:
        if not c.started and c.ops:
            earlier.setdefault(c.host, []).append(c)
    for host, cs in earlier.items():
        since = min(c.seen for c in cs) - QUEUE_LIFETIME
        known = DV.copies(store, host, [c.queue_id for c in cs], since=since)
        for c in cs:
            c.event_id = known.get(c.queue_id)
    writer = DV.Writer()
    carry: list[_Copy] = []
    newest = f.last
    for c in started:
        verdict = f.ours(c)
        if verdict:
            c.list_address = f.bounces[c.sender.lower()]
            c.event_id = events.get((c.message_id, c.list_address))
            if c.event_id:
                writer.add(DV.Reinjection(c.host, c.queue_id, c.event_id, c.seen))
                result.copies += 1
                continue
        if verdict is False:
            continue
        # not known yet whose it is (or its post is not in the store yet): keep it a while, unless it left the queue
        removed = any(kind == "removed" for kind, _ in c.ops)
        if removed and verdict is None:
            continue
        if newest is not None and newest - c.seen > PENDING_AGE:
            result.dropped += 1
            continue
        carry.append(c)
    for c in f.all:
        if not c.event_id:
            continue
        for kind, args in c.ops:
            if kind == "outcome":
                rcpt, status, at, relay, dsn, reply, delay = args
                writer.outcome(DV.Delivery(c.event_id, rcpt, status, at, at, c.host, c.queue_id, relay, dsn,
                                           reply, delay))
                result.outcomes[status] = result.outcomes.get(status, 0) + 1
            elif kind == "expired":
                writer.expired(c.event_id, c.host, c.queue_id, args[0])
                result.outcomes["expired"] = result.outcomes.get("expired", 0) + 1
            elif kind == "removed":
                writer.removed(c.event_id, c.host, c.queue_id, args[0])
    if len(carry) > PENDING_MAX:
        result.dropped += len(carry) - PENDING_MAX
        carry = sorted(carry, key=lambda c: c.seen)[-PENDING_MAX:]
    result.pending = len(carry)
    return writer, carry


class FollowError(Exception):
    """The follower's own state cannot be used; one line for the operator."""


def _load(path: Path) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as exc:
        raise FollowError(f"the log follower's position {path} is unreadable ({exc}): remove it to read"
                          " the log again from the start of the current file") from None
    log = data.get("log") if isinstance(data, dict) else None
    if not isinstance(data, dict) or not (log is None or (
            isinstance(log, dict) and isinstance(log.get("path"), str) and isinstance(log.get("offset", 0), int)
            and isinstance(log.get("inode"), (int, type(None)))) or (  # a LogReader's, or a JournalReader's
            isinstance(log, dict) and log.get("journal") is True and isinstance(log.get("cursor"), (str, type(None))))):
        raise FollowError(f"the log follower's position {path} is not one it wrote: remove it to read"
                          " the log again from the start of the current file")
    return data


def _save(path: Path, data: dict) -> None:
    write_bytes(path, (json.dumps(data, indent=1, ensure_ascii=False) + "\n").encode("utf-8"), 0o640)
    _own(path)


def _own(path: Path) -> None:
    """A file root makes here (``sync --user root``) is given to the directory's owner, so that the
    next sync, run as that user, can replace it."""
    if os.geteuid() != 0:
        return
    st = path.parent.stat()
    if st.st_uid != 0:
        try:
            os.chown(path, st.st_uid, st.st_gid)
        except OSError:
            pass
