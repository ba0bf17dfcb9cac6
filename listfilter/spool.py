"""The mail side's own state: plain files you can read with ls and cat.

Under the spool directory (writable by the ``listfilter`` user)::

    events/<id>.json         one record per outcome, for the log store (sync ingests them)
    sent/<key>.json          progress and completion of one (message, list) delivery
    notices/<day>/<sender>   one line per refusal notice sent to that sender that day

Every file is written to a temporary name in the same directory and renamed,
so a reader never sees half a record. Standard library only.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path

EVENTS = "events"
SENT = "sent"
NOTICES = "notices"
SUBDIRS = (EVENTS, SENT, NOTICES)


class SpoolError(Exception):
    """The spool cannot be written (the mail side defers: exit 75)."""


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


def write_json(path: Path, data: dict) -> None:
    from .atomic import write_bytes

    try:
        write_bytes(path, json.dumps(data, ensure_ascii=False, separators=(",", ":")).encode())
    except OSError as exc:
        raise SpoolError(f"cannot write {path}: {exc.strerror}") from None


def read_json(path: Path) -> dict | None:
    try:
        with open(path, encoding="utf-8") as fh:
            return json.load(fh)
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise SpoolError(f"cannot read {path}: {exc}") from None


def delivery_key(message_key: str, list_address: str) -> str:
    """A file name for one (Message-ID or queue id, list) pair."""
    return hashlib.sha256(f"{message_key}\0{list_address.lower()}".encode()).hexdigest()[:32]


def event_id(message_key: str, list_address: str) -> str:
    """A stable UUID per (message, list): a retry's record replaces the earlier one."""
    import uuid

    return str(uuid.uuid5(uuid.NAMESPACE_URL, f"listfilter:{message_key}\0{list_address.lower()}"))


class Progress:
    """Which recipients of one (message, list) Postfix has already accepted."""

    def __init__(self, spool: Path, message_key: str, list_address: str):
        self.path = spool / SENT / (delivery_key(message_key, list_address) + ".json")
        self.data = read_json(self.path) or {
            "message": message_key, "list": list_address, "done": False, "accepted": [],
        }

    @property
    def done(self) -> bool:
        return bool(self.data.get("done"))

    def recent(self, max_age_days: float) -> bool:
        try:
            return time.time() - self.path.stat().st_mtime < max_age_days * 86400
        except FileNotFoundError:
            return False

    @property
    def accepted(self) -> set[str]:
        return {a.lower() for a in self.data.get("accepted", [])}

    def record_batch(self, addresses: list[str], queue_id: str | None) -> None:
        self.data["accepted"] = self.data.get("accepted", []) + list(addresses)
        self.data.setdefault("queue_ids", []).append(queue_id)
        write_json(self.path, self.data)

    def finish(self, **info) -> None:
        """Mark the delivery complete; the accepted addresses are no longer needed."""
        accepted = len(self.data.pop("accepted", []))
        self.data.update(info, done=True, accepted_count=accepted)
        write_json(self.path, self.data)


def write_event(spool: Path, event: dict) -> Path:
    path = spool / EVENTS / f"{event['id']}.json"
    write_json(path, event)
    return path


def notices_sent_today(spool: Path, sender: str, day: str) -> int:
    path = _notice_path(spool, sender, day)
    try:
        return len(path.read_text(encoding="utf-8").splitlines())
    except FileNotFoundError:
        return 0
    except OSError as exc:
        raise SpoolError(f"cannot read {path}: {exc.strerror}") from None


def record_notice(spool: Path, sender: str, day: str, list_address: str) -> None:
    path = _notice_path(spool, sender, day)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "a", encoding="utf-8") as fh:  # O_APPEND: one line per notice
            fh.write(f"{int(time.time())} {list_address}\n")
    except OSError as exc:
        raise SpoolError(f"cannot write {path}: {exc.strerror}") from None


def _notice_path(spool: Path, sender: str, day: str) -> Path:
    return spool / NOTICES / day / hashlib.sha256(sender.lower().encode()).hexdigest()[:24]


def prune(spool: Path, now: float, *, sent_days: float = 7, notice_days: float = 2) -> int:
    """Remove delivery records older than the duplicate window and notice
    counts of past days (sync calls this); returns how many files went."""
    import shutil

    removed = 0
    sent = spool / SENT
    if sent.is_dir():
        for path in sent.iterdir():
            try:
                if now - path.stat().st_mtime > sent_days * 86400:
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
