"""The spool: the mail side's state, in plain files that ``ls`` and ``cat`` explain.

Under the spool directory (site.spool_dir, writable by the ``listfilter`` user)::

    events/<id>.json           one record per outcome (an Event), for the mail log
    events/<id>.deferred.json  the latest deferral of that (message, list), until an outcome replaces it
    events/.ingest/            records sync has claimed and not yet committed
    events/bad/                records ingest could not read, each with a .reason file
    sent/<key>.json            progress, then completion, of one (message, list) delivery; or that it is held
    sent/<key>.lock            held while that delivery runs: one delivery at a time
    sent/<key>.msg             the post as handed to sendmail, while the delivery runs
    sent/bad/                  progress records that could not be read, set aside
    notices/<day>/<hash>.<n>   slot n of one sender's refusal notices that day (hash of the address)
    bounces/<id>.json          one record per bounce received (create-only; sync scores them)
    bounces/.ingest/           records sync has claimed and not yet committed
    bounces/bad/               records sync could not read, each with a .reason file
    requests/<id>.json         a confirmed join or leave, an owner's decision (a Request; sync applies it)
    requests/bad/              requests sync could not read, each with a .reason file
    held/<id>.eml              a held post as it came (moderation), until sync moves it into the store
    held/<id>.json             what the mail side knew of it; written after the .eml, so it says the .eml is whole

The mail side only ever creates files (temporary name, then rename) or takes
an exclusive slot (``O_EXCL``); the checks that must not race are atomic:
the duplicate window and a delivery's progress are read and written under an
flock of their lock file, and a notice is sent only by the process that
created its slot. Sync ingests events and bounces and prunes old records.
This module is the only one that knows the tree. Standard library only.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import time
from pathlib import Path

from .errors import Defer

EVENTS = "events"
CLAIMED = ".ingest"
BAD = "bad"
SENT = "sent"
NOTICES = "notices"
BOUNCES = "bounces"
REQUESTS = "requests"
HELD = "held"
SUBDIRS = (EVENTS, SENT, NOTICES, BOUNCES, REQUESTS, HELD)
#: The name part of a deferral's record, between the event id and ".json".
DEFERRAL = ".deferred"

#: A (Message-ID, list) pair delivered this recently is not delivered again;
#: sync prunes its record after that.
DUPLICATE_WINDOW_DAYS = 7
#: How long a delivery waits for a concurrent delivery of the same message to the same list.
LOCK_WAIT = 120.0


class SpoolError(Defer):
    """The spool cannot be used: the mail side defers (exit 75)."""


def ensure(spool: Path) -> None:
    """Check (and create where possible) the spool directories; raise SpoolError."""
    for sub in SUBDIRS:
        d = spool / sub
        try:
            d.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise SpoolError(f"spool {d} cannot be created: {exc.strerror}") from None
        if not os.access(d, os.W_OK | os.X_OK):
            raise SpoolError(f"spool {d} is not writable by uid {os.getuid()}")


def _write(path: Path, data: bytes) -> None:
    from .atomic import write_bytes

    try:
        write_bytes(path, data)
    except IsADirectoryError:
        # something that is no record stands where the record goes: it would
        # fail the same way on every retry, so it is set aside, not waited on
        set_aside(path, "a directory where a spool record belongs")
        _write_once(path, data)
    except OSError as exc:
        raise SpoolError(f"cannot write {path}: {exc.strerror}") from None


def _write_once(path: Path, data: bytes) -> None:
    from .atomic import write_bytes

    try:
        write_bytes(path, data)
    except OSError as exc:
        raise SpoolError(f"cannot write {path}: {exc.strerror}") from None


def _open_lock(path: Path) -> int:
    """The lock file's descriptor; a directory in its place is set aside first."""
    try:
        return os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    except IsADirectoryError:
        set_aside(path, "a directory where a lock file belongs")
    try:
        return os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    except OSError as exc:
        raise SpoolError(f"cannot open {path}: {exc.strerror}") from None


def set_aside(path: Path, reason: str) -> Path | None:
    """Move an unreadable record into ``bad/`` beside it, with ``<name>.reason``; the new path."""
    bad = path.parent / BAD
    target = bad / f"{path.name}.{time.time_ns()}"
    try:
        bad.mkdir(exist_ok=True)
        os.rename(path, target)
        (bad / (target.name + ".reason")).write_text(" ".join(reason.split())[:500] + "\n", encoding="utf-8")
    except FileNotFoundError:
        return None
    except OSError:
        try:
            path.unlink()  # cannot keep it: never let it block the mail
        except OSError:
            pass
        return None
    return target


# --------------------------------------------------------------------------
# events/


def write_event(spool: Path, event) -> Path:
    """Store an :class:`~listfilter.common.events.Event` (a retry's record replaces the earlier one).

    A deferral (a status in ``events.TEMPORARY``) is ``<id>.deferred.json``,
    beside the outcome's ``<id>.json`` and never over it: a second copy of a
    post that defers while the first copy's delivery still waits here for
    ingest cannot erase that delivery (ingest keeps the outcome:
    :meth:`listfilter.store.database.Store.upsert`). An outcome removes the
    deferral it ends.
    """
    from .events import TEMPORARY

    deferral = spool / EVENTS / f"{event.id}{DEFERRAL}.json"
    if event.status in TEMPORARY:
        _write(deferral, event.to_json())
        return deferral
    path = spool / EVENTS / f"{event.id}.json"
    _write(path, event.to_json())
    try:
        deferral.unlink()
    except OSError:  # none, or claimed by an ingest: the store ranks the two records
        pass
    return path


def waiting(spool: Path, area: str = EVENTS) -> list[Path]:
    """Records of ``area`` (events/ or bounces/) that sync has not yet ingested, claimed ones included."""
    out = []
    for d in (spool / area / CLAIMED, spool / area):
        try:
            out.extend(p for p in d.iterdir() if p.name.endswith(".json") and not p.name.startswith("."))
        except FileNotFoundError:
            pass
    return out


def bad_records(spool: Path, area: str = EVENTS) -> list[Path]:
    """Records of ``area`` that ingest set aside in its bad/."""
    try:
        return sorted(p for p in (spool / area / BAD).iterdir() if p.name.endswith(".json"))
    except FileNotFoundError:
        return []


def pending_events(spool: Path) -> list[Path]:
    return waiting(spool, EVENTS)


def bad_events(spool: Path) -> list[Path]:
    return bad_records(spool, EVENTS)


# --------------------------------------------------------------------------
# bounces/


def write_bounce(spool: Path, record) -> Path:
    """Store a :class:`~listfilter.common.events.BounceRecord` under its own (random) id."""
    path = spool / BOUNCES / f"{record.id}.json"
    _write(path, record.to_json())
    return path


def pending_bounces(spool: Path) -> list[Path]:
    """Bounce records waiting for sync to score them, oldest name first."""
    try:
        return sorted(p for p in (spool / BOUNCES).iterdir() if p.name.endswith(".json") and not p.name.startswith("."))
    except FileNotFoundError:
        return []


# --------------------------------------------------------------------------
# requests/, held/


def write_request(spool: Path, record) -> Path:
    """Store a :class:`~listfilter.common.events.Request` under its own (random) id."""
    path = spool / REQUESTS / f"{record.id}.json"
    _write(path, record.to_json())
    return path


def pending_requests(spool: Path) -> list[Path]:
    """Request records waiting for sync, oldest name first."""
    return _records(spool / REQUESTS)


def write_held(spool: Path, held_id: str, message: bytes, meta: dict) -> Path:
    """Keep a held post: the message first, then its record (which makes it complete); the record's path."""
    _write(spool / HELD / f"{held_id}.eml", message)
    path = spool / HELD / f"{held_id}.json"
    _write(path, json.dumps(meta, ensure_ascii=False, separators=(",", ":")).encode("utf-8", "surrogatepass"))
    return path


def pending_held(spool: Path) -> list[Path]:
    """Held posts' records waiting for sync (each with its ``.eml`` beside it), oldest name first."""
    return _records(spool / HELD)


def _records(directory: Path) -> list[Path]:
    try:
        return sorted(p for p in directory.iterdir() if p.name.endswith(".json") and not p.name.startswith("."))
    except FileNotFoundError:
        return []


# --------------------------------------------------------------------------
# sent/


def delivery_key(message_key: str, list_address: str) -> str:
    """A file name for one (Message-ID or queue id, list) pair."""
    return hashlib.sha256(f"{message_key}\0{list_address.lower()}".encode("utf-8", "surrogatepass")).hexdigest()[:32]


class Delivery:
    """One (message, list) delivery, held exclusively while it runs.

    ``with Delivery(spool, key, list) as d:`` waits (at most :data:`LOCK_WAIT`
    seconds, then defers) until no other process delivers the same message to
    the same list, then reads its progress: whether it is ``done`` and how
    recently (:meth:`recent`), which recipients Postfix already ``accepted``,
    and the batch that was handed to sendmail but not yet recorded as
    accepted (``in_flight``: the process was killed between the two). A
    record that cannot be read is set aside (``set_aside`` says where) and the
    delivery starts afresh: a member may get a second copy, but none is lost.

    The message goes to sendmail from a file, ``sent/<key>.msg``
    (:meth:`message_file`), locked by the delivery. sendmail reads it as its
    standard input and so shares the lock until it exits: a sendmail that
    outlives a killed delivery holds it, and the retry waits for that
    sendmail before it asks Postfix whether the batch arrived (a pipe would
    give an orphaned sendmail end-of-file halfway and submit half a message).

    A post held for the owners (:mod:`listfilter.mail.moderation`) leaves its
    held id here (:meth:`mark_held`, :attr:`held`): a second copy of the same
    message to the same list (a resend, a retry) is then not held again.
    """

    def __init__(self, spool: Path, message_key: str, list_address: str):
        key = delivery_key(message_key, list_address)
        self.path = spool / SENT / f"{key}.json"
        self.lock_path = spool / SENT / f"{key}.lock"
        self.message_path = spool / SENT / f"{key}.msg"
        self.fresh = {"message": message_key, "list": list_address, "done": False, "accepted": []}
        self.data = dict(self.fresh)
        self.set_aside: str | None = None
        self._fd: int | None = None
        self._message = None  # the open, locked message file

    def __enter__(self):
        try:
            self._fd = _open_lock(self.lock_path)
        except OSError as exc:
            raise SpoolError(f"cannot open {self.lock_path}: {exc.strerror}") from None
        if not self._lock(self._fd, time.monotonic() + LOCK_WAIT):
            self.__exit__()
            raise SpoolError("another delivery of this message to this list is still running")
        self.load()
        if self.in_flight is not None and self.message_path.exists():
            try:
                self._hold_message("the sendmail of an earlier attempt of this delivery is still running")
            except SpoolError:
                self.__exit__()
                raise
        return self

    def __exit__(self, *exc) -> None:
        if self._message is not None:
            try:
                self.message_path.unlink()  # every sendmail of ours has returned: nobody reads it
            except OSError:
                pass
            self._message.close()
            self._message = None
        if self._fd is not None:
            os.close(self._fd)  # releases the flock
            self._fd = None

    @staticmethod
    def _lock(fd: int, deadline: float) -> bool:
        """flock ``fd`` exclusively, waiting until ``deadline`` (time.monotonic); whether it was had."""
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return True
            except BlockingIOError:
                if time.monotonic() > deadline:
                    return False
                time.sleep(0.05)

    def _hold_message(self, busy: str) -> None:
        """Open and lock ``sent/<key>.msg``; a sendmail still reading it makes this wait."""
        if self._message is not None:
            return
        try:
            fd = os.open(self.message_path, os.O_RDWR | os.O_CREAT, 0o600)
        except OSError as exc:
            raise SpoolError(f"cannot open {self.message_path}: {exc.strerror}") from None
        if not self._lock(fd, time.monotonic() + LOCK_WAIT):
            os.close(fd)
            raise SpoolError(busy)
        self._message = os.fdopen(fd, "r+b")

    def load(self, readonly: bool = False) -> None:
        """Read the progress record (a dry run reads it without the lock, ``readonly``: an
        unreadable record is then left where it is, and the delivery starts afresh all the same)."""
        try:
            with open(self.path, "rb") as fh:
                data = json.loads(fh.read())
            if not isinstance(data, dict) or not isinstance(data.get("accepted", []), list):
                raise ValueError("not a progress record")
            flight = data.get("in_flight")
            if flight is not None and not (isinstance(flight, dict) and isinstance(flight.get("recipients"), list)):
                raise ValueError("in_flight is not a batch")
            self.data = data
        except FileNotFoundError:
            pass
        except (OSError, ValueError) as exc:
            if readonly:
                self.set_aside = f"{self.path} is unreadable ({exc}); a real delivery sets it aside and starts afresh"
                return
            where = set_aside(self.path, f"unreadable progress record: {exc}")
            self.set_aside = f"{self.path} was unreadable ({exc}); set aside as {where}; delivering afresh"

    def _save(self, *, durable: bool = False) -> None:
        """Replace the record; ``durable`` also syncs the directory, so that the rename survives a crash."""
        from .atomic import write_bytes

        try:
            write_bytes(self.path, json.dumps(self.data, ensure_ascii=False).encode("utf-8", "surrogatepass"),
                        sync_dir=durable)
        except OSError as exc:
            raise SpoolError(f"cannot write {self.path}: {exc.strerror}") from None

    @property
    def done(self) -> bool:
        return bool(self.data.get("done"))

    def recent(self, max_age_days: float) -> bool:
        try:
            return time.time() - self.path.stat().st_mtime < max_age_days * 86400
        except FileNotFoundError:
            return False

    @property
    def held(self) -> str:
        """The id this message was held as for this list ("" when it was not)."""
        value = self.data.get("held", "")
        return value if isinstance(value, str) else ""

    def mark_held(self, held_id: str) -> None:
        """Record, durably, that this message is held for the owners as ``held_id``."""
        self.data["held"] = held_id
        self._save(durable=True)

    @property
    def accepted(self) -> set[str]:
        return {str(a).lower() for a in self.data.get("accepted", [])}

    @property
    def in_flight(self) -> dict | None:
        """The batch handed to sendmail and not yet recorded: ``recipients``, ``count``, ``at`` (epoch
        seconds) and ``attempts``; None when there is none."""
        return self.data.get("in_flight")

    @property
    def batches(self) -> list[int]:
        """How many recipients each batch recorded as accepted had, in order."""
        return list(self.data.get("batches", []))

    def message_file(self, message: bytes):
        """``message`` in ``sent/<key>.msg``, locked, open for sendmail's standard input."""
        self._hold_message("the message file of this delivery is locked by another process")
        fh = self._message
        try:
            fh.seek(0)
            fh.truncate()
            fh.write(message)
            fh.flush()
        except OSError as exc:
            raise SpoolError(f"cannot write {self.message_path}: {exc.strerror}") from None
        return fh

    def begin_batch(self, addresses: list[str], *, message_id: str, log_position: dict | None) -> None:
        """Record ``addresses`` as in flight, durably, before they are handed to sendmail.

        The first batch of a delivery also records the Message-ID it goes
        out with and where Postfix's log ended (``log_position``): a retry
        reads the log from there to learn whether Postfix took a batch.
        """
        previous = self.in_flight or {}
        same = previous.get("recipients") == list(addresses)
        self.data.setdefault("message_id", message_id)
        if "postfix_log" not in self.data:
            self.data["postfix_log"] = log_position
        self.data["in_flight"] = {"recipients": list(addresses), "count": len(addresses), "at": time.time(),
                                  "attempts": int(previous.get("attempts", 0)) + 1 if same else 1}
        self._save(durable=True)

    def record_batch(self, addresses: list[str], queue_id: str | None) -> None:
        """Record ``addresses`` as accepted by Postfix; the batch in flight, if any, is no longer."""
        self.data["accepted"] = list(self.data.get("accepted", [])) + list(addresses)
        self.data.setdefault("queue_ids", []).append(queue_id)
        self.data["batches"] = self.batches + [len(addresses)]
        self.data.pop("in_flight", None)
        self._save()

    def abandon_batch(self) -> None:
        """Forget the batch in flight: Postfix did not take it, and it goes out again."""
        if self.data.pop("in_flight", None) is not None:
            self._save()

    def finish(self, **info) -> None:
        """Mark the delivery complete; the accepted addresses are no longer needed."""
        accepted = len(self.data.pop("accepted", []))
        self.data.pop("in_flight", None)
        self.data.update(info, done=True, accepted_count=accepted)
        self._save()


# --------------------------------------------------------------------------
# notices/


def _sender_hash(sender: str) -> str:
    return hashlib.sha256(sender.lower().encode("utf-8", "surrogatepass")).hexdigest()[:24]


def claim_notice(spool: Path, sender: str, day: str, limit: int) -> Path | None:
    """Take one of ``limit`` notice slots of ``sender`` on ``day``, or None when all are taken.

    Creating a slot with O_EXCL is atomic, so twenty simultaneous refusals
    from one sender send at most ``limit`` notices. Give a slot back with
    :func:`release_notice` if the notice could not be sent.
    """
    directory = spool / NOTICES / day
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise SpoolError(f"cannot create {directory}: {exc.strerror}") from None
    name = _sender_hash(sender)
    for n in range(limit):
        path = directory / f"{name}.{n}"
        try:
            os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644))
            return path
        except FileExistsError:
            continue
        except OSError as exc:
            raise SpoolError(f"cannot create {path}: {exc.strerror}") from None
    return None


def release_notice(slot: Path) -> None:
    try:
        slot.unlink()
    except OSError:
        pass


def notices_sent(spool: Path, sender: str, day: str) -> int:
    """How many notice slots ``sender`` holds on ``day``."""
    prefix = _sender_hash(sender) + "."
    try:
        return sum(1 for name in os.listdir(spool / NOTICES / day) if name.startswith(prefix))
    except FileNotFoundError:
        return 0


# --------------------------------------------------------------------------
# pruning (sync)


def prune(spool: Path, now: float, *, sent_days: float = DUPLICATE_WINDOW_DAYS, notice_days: float = 2) -> int:
    """Remove delivery records older than the duplicate window and notice
    slots of past days; returns how many files went."""
    import shutil

    removed = 0
    sent = spool / SENT
    if sent.is_dir():
        for path in sent.iterdir():
            try:
                if path.is_file() and now - path.stat().st_mtime > sent_days * 86400:
                    path.unlink()
                    removed += 1
            except FileNotFoundError:
                pass
    notices = spool / NOTICES
    if notices.is_dir():
        for day in notices.iterdir():
            try:
                if now - day.stat().st_mtime > notice_days * 86400:
                    removed += sum(1 for _ in day.iterdir())
                    shutil.rmtree(day)
            except FileNotFoundError:
                pass
    return removed
