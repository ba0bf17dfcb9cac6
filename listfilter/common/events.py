"""The event record: what the mail side decided about one message, for the mail log.

Every producer (``deliver``, ``policy``) builds an :class:`Event`; the spool
(:mod:`listfilter.common.spool`) stores it as one JSON file; ingest
(:mod:`listfilter.store.ingest`) reads it back with :func:`from_json`, which
is the one validation. The status words are :data:`STATUSES` and no others;
:data:`MEANINGS` says in one line what each means (the admin page shows it,
docs/store.md says it at length):

=============  ===========================================================
``delivered``  handed back to Postfix for ``recipient_count`` members (0:
               nobody was left to send to). Handed to Postfix, not
               received: whether each copy arrived is in Postfix's log
``bounced``    the From address may not post: refused after the queue, the
               envelope sender told (or why not)
``rejected``   the envelope sender was refused at RCPT time by the policy
               service (``listfilter-policy``); no message was received
``deferred``   deliver exited 75: Postfix keeps the message and retries;
               the retry's record replaces this one (see :data:`TEMPORARY`)
``discarded``  stopped on purpose and not sent: a mail loop, or a message
               the mail side cannot handle
``failed``     written by listfilter before ``deferred`` existed, for a
               sendmail failure; nothing writes it now
=============  ===========================================================

Standard library only (the mail side writes these per message).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import re
from collections import namedtuple

#: In the order the store's PostgreSQL enum has them (each migration appends).
STATUSES = ("delivered", "bounced", "rejected", "failed", "discarded", "deferred", "held")
#: Statuses that say "not finished": a later outcome of the same (message, list)
#: replaces them, and they never replace an outcome (listfilter.store.database.Store.upsert).
TEMPORARY = ("deferred", "failed")
#: What each status means, in one line (the admin page's legend).
MEANINGS = {
    "delivered": "handed to Postfix for the number of recipients shown; not a receipt:"
                 " whether each copy arrived is in Postfix's log",
    "bounced": "the From address may not post: refused after the queue; the envelope sender was told (or why not)",
    "rejected": "refused at RCPT time by the policy service: the SMTP client, the envelope sender and why;"
                " no message was received",
    "deferred": "listfilter could not handle it yet (exit 75): Postfix keeps the message and retries;"
                " the retry's outcome replaces this row",
    "discarded": "stopped on purpose, not sent: a mail loop, or a message that cannot be handled",
    "failed": "sendmail failed (written by older versions; now deferred)",
    "held": "kept for the list's owners to approve or discard (moderation); the poster was told (or why not);"
            " an approved post's delivery replaces this row",
}

FIELDS = ("id", "status", "list_address", "created_at", "rule", "list_display_name", "sender_email",
          "sender_name", "envelope_sender", "client_address", "subject", "message_id", "queue_id",
          "recipients", "recipient_count", "error_message", "body", "helo_name")
_DEFAULTS = ("", "", "", "", "", "", "", "", "", (), 0, "", "", "")


class BadEvent(ValueError):
    """A record that is not a valid event."""


class Event(namedtuple("Event", FIELDS, defaults=_DEFAULTS)):
    """One outcome for one (message, list). ``created_at`` is an ISO 8601 UTC
    time; ``rule`` names the rule that decided (see :mod:`listfilter.mail.rules`)."""

    __slots__ = ()

    def to_json(self) -> bytes:
        data = {k: text(v) if isinstance(v, str) else v for k, v in self._asdict().items()}
        data["recipients"] = [text(r) for r in self.recipients]
        return json.dumps(data, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


def decode_bytes(data: bytes) -> str:
    """8-bit text as mail clients read it: UTF-8, else Windows-1252, else Latin-1."""
    for charset in ("utf-8", "cp1252"):
        try:
            return data.decode(charset)
        except UnicodeDecodeError:
            pass
    return data.decode("latin-1")


def text(value: str) -> str:
    """``value`` as valid Unicode: bytes a command line or a header carried undecoded
    (lone surrogates, as Python's surrogateescape leaves them) are read as mail
    clients read 8-bit text (:func:`decode_bytes`)."""
    try:
        value.encode("utf-8")
        return value
    except UnicodeEncodeError:
        return decode_bytes(value.encode("utf-8", "surrogateescape"))


def now_utc() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


def post_key(message_id: str, queue_id: str) -> str:
    """What names a post across Postfix's retries: its Message-ID, else the queue id."""
    return message_id or f"queue:{queue_id}"


def stable_id(message_key: str, list_address: str) -> str:
    """One id per (Message-ID or queue id, list): a retry's record replaces the earlier one."""
    return hashlib.sha256(f"listfilter:{message_key}\0{list_address.lower()}".encode(
        "utf-8", "surrogatepass")).hexdigest()[:32]


def random_id() -> str:
    """An id for a record that stands alone (a refusal at RCPT time)."""
    return os.urandom(16).hex()


_ID = re.compile(r"^(?:[0-9a-f]{32}|[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12})$")


def valid_id(ident: str) -> bool:
    """Whether ``ident`` has the form of an event id (a URL part, a CLI argument)."""
    return bool(_ID.match(ident.lower()))


_TEXT_LIMITS = {"list_address": 320, "sender_email": 320, "envelope_sender": 320, "client_address": 100,
                "helo_name": 320,
                "message_id": 1000, "queue_id": 100, "rule": 40}
#: Longest text kept for the other one-line fields (subject, names, error message).
FIELD_MAX = 4000


def _text(data: dict, name: str, limit: int | None) -> str:
    """A text field: a string or null; NULs (which PostgreSQL refuses) and lone surrogates replaced."""
    value = data.get(name)
    if value is None:
        return ""
    if not isinstance(value, str):
        raise BadEvent(f"{name}: expected a string, not {type(value).__name__}")
    if "\x00" in value:
        value = value.replace("\x00", "\ufffd")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        value = value.encode("utf-8", "replace").decode("utf-8")
    return value[:limit] if limit is not None else value


def from_json(raw: bytes) -> Event:
    """Validate one spool record; raise BadEvent (a ValueError) saying what is wrong."""
    try:
        data = json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise BadEvent(f"not UTF-8 (byte {exc.start})") from None
    except ValueError as exc:
        raise BadEvent(f"not JSON: {exc}") from None
    if not isinstance(data, dict):
        raise BadEvent(f"expected a JSON object, not {type(data).__name__}")
    ident = data.get("id")
    if not isinstance(ident, str) or not _ID.match(ident.lower()):
        raise BadEvent(f"id: not an event id: {ident!r:.80}")
    status = data.get("status")
    if status not in STATUSES:
        raise BadEvent(f"status: {status!r:.40} is not one of {', '.join(STATUSES)}")
    fields = {name: _text(data, name, _TEXT_LIMITS.get(name, FIELD_MAX))
              for name in FIELDS if name not in ("id", "status", "recipients", "recipient_count", "body")}
    fields["list_address"] = fields["list_address"].strip().lower()
    if "@" not in fields["list_address"]:
        raise BadEvent(f"list_address: not an address: {fields['list_address']!r:.80}")
    raw_time = data.get("created_at")
    if not isinstance(raw_time, str):
        raise BadEvent("created_at: missing")
    try:
        created = dt.datetime.fromisoformat(raw_time)
    except ValueError:
        raise BadEvent(f"created_at: not an ISO 8601 time: {raw_time!r:.40}") from None
    created = created.replace(tzinfo=dt.timezone.utc) if created.tzinfo is None else created
    fields["created_at"] = created.astimezone(dt.timezone.utc).replace(microsecond=0).isoformat()
    recipients = data.get("recipients") or []
    if not isinstance(recipients, list) or not all(isinstance(r, str) for r in recipients):
        raise BadEvent("recipients: expected a list of strings")
    count = data.get("recipient_count", len(recipients))
    if isinstance(count, bool) or not isinstance(count, int) or count < 0:
        raise BadEvent(f"recipient_count: expected a count, not {count!r:.40}")
    return Event(id=ident.lower(), status=status, recipient_count=count, body=_text(data, "body", None),
                 recipients=tuple(_text({"r": r}, "r", 320) for r in recipients), **fields)


# --------------------------------------------------------------------------
# Bounce records: what the -bounces pipe found in one bounce


BOUNCE_FIELDS = ("id", "list_address", "received_at", "day", "member", "permanent", "temporary", "queue_id",
                 "message_ids", "reason")
#: The most Message-IDs one record keeps (the returned post's, first; see listfilter.mail.bounce).
MESSAGE_IDS_MAX = 10


class BounceRecord(namedtuple("BounceRecord", BOUNCE_FIELDS, defaults=("", (), (), "", (), ""))):
    """One bounce to a list's -bounces address, as ``listfilter-bounce`` read it.

    ``member`` is the address VERP names ("" without VERP); ``permanent`` and
    ``temporary`` are the failed addresses the report names that are this
    list's members (with VERP: the member, by the kind of failure). ``day`` is
    the site-local date the bounce arrived on; scoring (sync) counts at most
    one point per address per day. ``message_ids`` are the Message-IDs of the
    post the report returns (its headers, RFC 3462 / RFC 6533), which sync
    checks against what was sent; ``reason``, when set, says why the mail
    side already knows the record counts for nobody (sync keeps it, with the
    reason, and scores nothing). The mail side only ever creates these.
    """

    __slots__ = ()

    def to_json(self) -> bytes:
        data = self._asdict()
        for name in ("permanent", "temporary", "message_ids"):
            data[name] = list(getattr(self, name))
        return json.dumps(data, ensure_ascii=False, separators=(",", ":")).encode("utf-8", "surrogatepass")


def bounce_from_json(raw: bytes) -> BounceRecord:
    """Validate one bounce record; raise BadEvent.

    A record written before ``message_ids`` and ``reason`` existed reads
    with neither (and so, at sync, refers to no post).
    """
    try:
        data = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise BadEvent(f"not a JSON bounce record: {exc}") from None
    if not isinstance(data, dict):
        raise BadEvent(f"expected a JSON object, not {type(data).__name__}")
    ident = data.get("id")
    if not isinstance(ident, str) or not _ID.match(ident.lower()):
        raise BadEvent(f"id: not a record id: {ident!r:.80}")
    fields = {name: _text(data, name, 320) for name in ("list_address", "received_at", "day", "member", "queue_id")}
    fields["reason"] = _text(data, "reason", 500)
    if "@" not in fields["list_address"]:
        raise BadEvent(f"list_address: not an address: {fields['list_address']!r:.80}")
    try:
        dt.date.fromisoformat(fields["day"])
        dt.datetime.fromisoformat(fields["received_at"])
    except ValueError:
        raise BadEvent(f"day/received_at: not ISO 8601: {fields['day']!r:.20} {fields['received_at']!r:.40}") from None
    lists = {}
    for name in ("permanent", "temporary"):
        value = data.get(name) or []
        if not isinstance(value, list) or not all(isinstance(a, str) and "@" in a for a in value):
            raise BadEvent(f"{name}: expected a list of addresses")
        lists[name] = tuple(sorted({a.strip().lower()[:320] for a in value}))
    ids = data.get("message_ids") or []
    if not isinstance(ids, list) or not all(isinstance(i, str) for i in ids):
        raise BadEvent("message_ids: expected a list of strings")
    kept = []
    for i in ids:
        i = _text({"i": i}, "i", _TEXT_LIMITS["message_id"]).strip()
        if i and i not in kept:
            kept.append(i)
    return BounceRecord(id=ident.lower(), **fields, **lists, message_ids=tuple(kept[:MESSAGE_IDS_MAX]))


# --------------------------------------------------------------------------
# Requests: what a reply or a link asked to change, for sync to apply


#: What a request asks. ``join``, ``leave``: a confirmed join or leave of an opt-in list
#: (``leave`` also from a one-click link); ``pending``: a confirmed join that waits for an
#: owner; ``admit``, ``deny``: an owner's answer to it; ``approve``, ``discard``: an owner's
#: decision on a held post (``subject`` is then the held post's id).
REQUEST_ACTIONS = ("join", "leave", "pending", "admit", "deny", "approve", "discard")
#: How it came: a reply by mail, the one-click link (RFC 8058), or the admin page.
REQUEST_VIA = ("mail", "one-click", "web")
REQUEST_FIELDS = ("id", "at", "action", "list_address", "subject", "name", "by", "via")


class Request(namedtuple("Request", REQUEST_FIELDS, defaults=("", "", "mail"))):
    """One change asked for on the mail side (or by the one-click link), applied by sync.

    ``subject`` is the address joining or leaving, or the held post's id;
    ``name`` the joiner's display name; ``by`` who asked (the address the
    confirmation came from, or the owner who decided). The token that
    carried it was checked before the record was written; sync checks the
    record again against the list (it may have stopped being opt-in).
    """

    __slots__ = ()

    def to_json(self) -> bytes:
        return json.dumps(self._asdict(), ensure_ascii=False, separators=(",", ":")).encode("utf-8", "surrogatepass")


def request_from_json(raw: bytes) -> Request:
    """Validate one request record; raise BadEvent."""
    try:
        data = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise BadEvent(f"not a JSON request record: {exc}") from None
    if not isinstance(data, dict):
        raise BadEvent(f"expected a JSON object, not {type(data).__name__}")
    ident = data.get("id")
    if not isinstance(ident, str) or not _ID.match(ident.lower()):
        raise BadEvent(f"id: not a record id: {ident!r:.80}")
    fields = {name: _text(data, name, 320) for name in ("at", "action", "list_address", "subject", "name", "by", "via")}
    if fields["action"] not in REQUEST_ACTIONS:
        raise BadEvent(f"action: not one of {', '.join(REQUEST_ACTIONS)}: {fields['action']!r:.40}")
    if fields["via"] not in REQUEST_VIA:
        raise BadEvent(f"via: not one of {', '.join(REQUEST_VIA)}: {fields['via']!r:.40}")
    if "@" not in fields["list_address"] or not fields["subject"]:
        raise BadEvent("list_address/subject: missing")
    try:
        dt.datetime.fromisoformat(fields["at"])
    except ValueError:
        raise BadEvent(f"at: not ISO 8601: {fields['at']!r:.40}") from None
    return Request(id=ident.lower(), **fields)
