"""Held posts (moderation): from the spool into the store, decided, released or expired.

The mail side keeps a held post in the spool (``held/<id>.eml`` and its
record ``held/<id>.json``, :mod:`listfilter.mail.moderation`); sync moves it
here, into ``held_posts``, message and all. A post's life:

``held`` → ``approved`` (an owner: a reply with the approve token, which
the mail side leaves in the spool as a request and :func:`ingest` applies
through :func:`decide`, or the admin page) → ``released`` (sync handed it back to Postfix); or ``held`` →
``discarded`` (an owner) or ``expired`` (nobody decided within the list's
``hold_days``; its poster is told once).

Each sync (:mod:`listfilter.store.membersync`): :func:`ingest` and
:func:`expire` before the lists are compiled, :func:`approved` for the
snapshot's ``approved`` table, then — once that snapshot is installed —
:func:`release` and :func:`send_owed`. The release submits the stored
message to the list address with its original envelope sender and an
``X-Listfilter-Approved: <id>`` header; ``deliver``'s ``approved`` rule lets
it through once (its post key must match), and it takes the normal path
from there (rewrite, VERP, the mail log, where its delivery replaces the
``held`` row). A released post stays in the snapshot for
:data:`RELEASE_WINDOW_DAYS`, so a copy that Postfix defers is still let
through when it is retried; a second copy is a duplicate.

Columns as used here: ``decided_by``/``decided_at`` are the owner's decision
(or the expiry); ``released_at`` is when the post was handed to Postfix;
``notified_at`` when its poster's expiry notice was dealt with (sent, or never
owed: the mail side found the poster must not be answered, RFC 3834, and the
post came in with ``notified_at`` already set); an expired post whose
``notified_at`` is NULL owes that notice.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
from collections import namedtuple
from pathlib import Path

from ..common.words import plural

log = logging.getLogger("listfilter.store")

_UTC = dt.timezone.utc
#: How long a released post is still let through (Postfix's maximal_queue_lifetime is 5 days).
RELEASE_WINDOW_DAYS = 5
#: The expiry notice's template (rendered on the sync side).
EXPIRED_TEMPLATE = "messages/held-expired.txt.j2"
SEND_TIMEOUT = 120

#: One held post as the admin page and the CLI show it (the message only when asked for).
HeldPost = namedtuple("HeldPost", "id list_address event_id post_key message_id envelope_sender sender_email"
                                  " sender_name subject reason status held_at expires_at decided_by decided_at"
                                  " released_at message", defaults=(b"",))
_COLUMNS = ("id, list_address, event_id, post_key, message_id, envelope_sender, sender_email, sender_name, subject,"
            " reason, status, held_at, expires_at, decided_by, decided_at, released_at")

#: What :func:`decide` did: whether the post changed, and the words for the owner.
Decided = namedtuple("Decided", "changed status message")
#: The decisions an owner can make, and the status each leads to.
DECISIONS = {"approve": "approved", "discard": "discarded"}
#: Every status after ``held`` (listfilter.store.migrations.HELD_STATUSES).
DECIDED_STATUSES = ("approved", "released", "discarded", "expired")


class BadHeld(Exception):
    """A held record in the spool that cannot be read."""


def _lock(store, *, skip_locked: bool = False) -> str:
    if store.dialect != "postgresql":
        return ""  # SQLite: BEGIN IMMEDIATE already holds the write lock
    return " FOR UPDATE SKIP LOCKED" if skip_locked else " FOR UPDATE"


def _row(store, r, with_message: bool = False) -> HeldPost:
    values = list(r[:16])
    for i in (11, 12, 14, 15):  # held_at, expires_at, decided_at, released_at
        values[i] = store._from_ts(values[i]) if values[i] is not None else None
    message = bytes(r[16]) if with_message else b""
    return HeldPost(*values, message=message)


# --------------------------------------------------------------------------
# Reading (sync, the admin page, the CLI)


def held_posts(store, *, lists=None, status=("held",), limit: int = 200) -> list[HeldPost]:
    """Held posts (without their message), newest first; ``lists`` limits them to those list addresses."""
    where, params = [], []
    if status:
        where.append(f"status IN ({', '.join('?' for _ in status)})")
        params += list(status)
    if lists is not None:
        lists = list(lists)
        if not lists:
            return []
        where.append(f"list_address IN ({', '.join('?' for _ in lists)})")
        params += lists
    sql = f"SELECT {_COLUMNS} FROM held_posts" + (f" WHERE {' AND '.join(where)}" if where else "")
    return [_row(store, r) for r in store._q(sql + " ORDER BY held_at DESC, id LIMIT ?", (*params, int(limit)))]


def get(store, held_id: str) -> HeldPost | None:
    """One held post, its message included."""
    rows = store._q(f"SELECT {_COLUMNS}, message FROM held_posts WHERE id = ?", (held_id,))
    return _row(store, rows[0], with_message=True) if rows else None


# --------------------------------------------------------------------------
# Before the lists are compiled


def ingest(config, store, now) -> tuple[list[str], list[str]]:
    """Move every held post waiting in the spool into ``held_posts``: (notes, warnings).

    One transaction per post; its spool files are removed only after it has
    committed (an insert of a post already there, after a crash between the
    two, changes nothing). A record that cannot be read is set aside in
    ``held/bad/`` with its reason, its message beside it.
    """
    from ..common import spool as SP

    spool = Path(config.site.spool_dir)
    done, warnings = 0, []
    for path in SP.pending_held(spool):
        eml = path.with_suffix(".eml")
        try:
            meta, message = _read_held(path, eml)
        except BadHeld as exc:
            warnings.append(f"held post {path.name} set aside: {exc}")
            SP.set_aside(path, str(exc))
            if eml.exists():
                SP.set_aside(eml, str(exc))
            continue
        held_at = dt.datetime.fromisoformat(meta["held_at"]).astimezone(_UTC)
        expires_at = held_at + dt.timedelta(days=meta["hold_days"])
        # a poster the mail side may never answer (RFC 3834) is owed no expiry notice either
        settled = store._ts(held_at) if meta["no_notice"] else None  # notified_at
        with store.transaction():
            store._execute(
                "INSERT INTO held_posts (id, list_address, event_id, post_key, message_id, envelope_sender,"
                " sender_email, sender_name, subject, reason, status, held_at, expires_at, notified_at, message)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 'held', ?, ?, ?, ?) ON CONFLICT (id) DO NOTHING",
                (meta["id"], meta["list"], meta["event_id"], meta["post_key"], meta["message_id"],
                 meta["envelope_sender"], meta["sender_email"], meta["sender_name"], meta["subject"],
                 meta["reason"], store._ts(held_at), store._ts(expires_at), settled, message))
        for p in (eml, path):
            try:
                p.unlink()
            except FileNotFoundError:
                pass
        done += 1
    notes = [f"moderation: {plural(done, 'held post')} taken in from the spool"] if done else []
    n, w = apply_requests(spool, store, now)
    return notes + n, warnings + w


def apply_requests(spool: Path, store, now) -> tuple[list[str], list[str]]:
    """The owners' decisions by reply (``approve``, ``discard`` requests in the spool), each removed once
    applied; :mod:`listfilter.store.requests` applies the others and sets aside what cannot be read."""
    from ..common import events as EV
    from ..common import spool as SP

    notes, warnings = [], []
    for path in SP.pending_requests(spool):
        try:
            record = EV.request_from_json(path.read_bytes())
        except (EV.BadEvent, OSError):
            continue  # listfilter.store.requests sets it aside, with the reason
        if record.action not in DECISIONS:
            continue
        result = decide(store, record.subject, record.action, record.by, record.via, now,
                        list_address=record.list_address)
        (notes if result.changed or result.status else warnings).append(f"moderation: {record.action} by {record.by}:"
                                                       f" {result.message}")
        path.unlink(missing_ok=True)  # only once it is in the store
    return notes, warnings


def _read_held(path: Path, eml: Path) -> tuple[dict, bytes]:
    """A held record and its message; BadHeld when either is missing or wrong."""
    from ..common.events import valid_id

    try:
        meta = json.loads(path.read_bytes().decode("utf-8"))
        message = eml.read_bytes()
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise BadHeld(f"unreadable: {getattr(exc, 'strerror', None) or exc}") from None
    if not isinstance(meta, dict):
        raise BadHeld("not a JSON object")
    for name in ("id", "list", "event_id", "post_key", "held_at"):
        if not isinstance(meta.get(name), str) or not meta[name]:
            raise BadHeld(f"{name}: missing")
    if not valid_id(meta["id"]) or meta["id"] != path.stem:
        raise BadHeld(f"id: not this record's id: {meta['id']!r:.40}")
    if not isinstance(meta.get("hold_days"), int) or not 1 <= meta["hold_days"] <= 3650:
        raise BadHeld(f"hold_days: not a number of days: {meta.get('hold_days')!r:.20}")
    try:
        held_at = dt.datetime.fromisoformat(meta["held_at"])
    except ValueError:
        raise BadHeld(f"held_at: not ISO 8601: {meta['held_at']!r:.40}") from None
    if held_at.tzinfo is None:
        raise BadHeld("held_at: no time zone")
    for name in ("message_id", "envelope_sender", "sender_email", "sender_name", "subject", "reason", "no_notice"):
        value = meta.get(name, "")
        meta[name] = value[:2000] if isinstance(value, str) else ""
    return meta, message


def expire(config, store, now) -> tuple[list[str], list[str]]:
    """Mark held posts past their list's hold_days expired (their posters are told after the sync),
    and say in the mail log what became of the posts an owner discarded or that expired."""
    with store.transaction():
        n = store._execute("UPDATE held_posts SET status = 'expired', decided_at = ? WHERE status = 'held'"
                           " AND expires_at <= ?", (store._ts(now), store._ts(now))).rowcount
        settled = _settle_mail_log(store)
    notes = [f"moderation: {plural(n, 'held post')} expired (nobody decided)"] if n else []
    if settled:
        log.info("moderation: %d mail log rows settled", settled)
    return notes, []


def _settle_mail_log(store) -> int:
    """The mail log's ``held`` rows of discarded and expired posts become ``discarded``, saying why."""
    cast = "?::mail_log_status" if store.dialect == "postgresql" else "?"
    count = 0
    for event_id, status, by in store._q("SELECT h.event_id, h.status, h.decided_by FROM held_posts h JOIN mail_logs m"
                                         " ON m.id = h.event_id WHERE h.status IN ('discarded', 'expired')"
                                         " AND m.status = 'held'"):
        why = f"held, then discarded by {by}" if status == "discarded" else "held, then expired: nobody decided"
        count += store._execute(f"UPDATE mail_logs SET status = {cast}, error_message = ?, updated_at = ?"
                                " WHERE id = ? AND status = 'held'",
                                ("discarded", why, store._ts(dt.datetime.now(_UTC)), event_id)).rowcount
    return count


def approved(store) -> list[tuple[str, str, str]]:
    """(list address, held id, post key) of every approved post, and of those released within
    :data:`RELEASE_WINDOW_DAYS` (a deferred copy is still let through when Postfix retries it)."""
    since = store._ts(dt.datetime.now(_UTC) - dt.timedelta(days=RELEASE_WINDOW_DAYS))
    return [tuple(r) for r in store._q("SELECT list_address, id, post_key FROM held_posts WHERE status = 'approved'"
                                       " OR (status = 'released' AND released_at >= ?) ORDER BY id", (since,))]


# --------------------------------------------------------------------------
# An owner's decision (a reply, applied by store/requests.py; the admin page)


def decide(store, held_id: str, action: str, by: str, via: str, now, *, list_address: str | None = None) -> Decided:
    """Approve or discard a held post (``action``: approve, discard), by ``by`` (an address or the web
    account) ``via`` mail or web. Only a post still held changes: the first decision counts."""
    status = DECISIONS.get(action)
    if status is None:
        raise ValueError(f"not a decision on a held post: {action!r}")
    with store.transaction():
        rows = store._q(f"SELECT {_COLUMNS} FROM held_posts WHERE id = ?{_lock(store)}", (held_id,))
        post = _row(store, rows[0]) if rows else None
        if post is None or (list_address and post.list_address.lower() != list_address.lower()):
            return Decided(False, "", f"no held post {held_id}" + (f" on {list_address}" if list_address else ""))
        what = f"the post from {post.sender_email or post.envelope_sender} to {post.list_address}"
        if post.status != "held":
            by_whom = f" by {post.decided_by}" if post.decided_by else ""
            return Decided(False, post.status, f"{what} was already {post.status}{by_whom}")
        if post.expires_at <= now:
            return Decided(False, "expired", f"{what} has expired")
        who = f"{by} ({via})" if via else by
        store._execute("UPDATE held_posts SET status = ?, decided_by = ?, decided_at = ? WHERE id = ?"
                       " AND status = 'held'", (status, who[:320], store._ts(now), held_id))
    then = " it goes to the members at the next sync" if status == "approved" else ""
    return Decided(True, status, f"{what} is {status}{';' + then if then else ''}")


# --------------------------------------------------------------------------
# After the snapshot is installed


def release(config, store, lists, now) -> tuple[list[str], list[str]]:
    """Hand every approved post back to Postfix (to the list address), marking it released.

    Only posts the installed snapshot lets through (one approved since
    this sync began waits for the next); a sendmail failure is a warning,
    and the post is released at the next sync.
    """
    from ..common.sendmail import SendError, submit
    from ..common.snapshot import APPROVED_HEADER, Snapshot, SnapshotError

    notes, warnings = [], []
    try:
        snap = Snapshot(config.site.snapshot_path)
    except SnapshotError as exc:
        return [], [f"moderation: approved posts not released: {exc}"]
    with snap:
        for post in _one_by_one(store, "status = 'approved'"):
            if snap.approved(post.list_address, post.id) != post.post_key:
                continue  # approved after this sync's snapshot was made: the next one lets it through
            message = f"{APPROVED_HEADER}: {post.id}\n".encode("ascii") + post.message
            try:
                submit(config.site.sendmail, post.envelope_sender, [post.list_address], message,
                       timeout=SEND_TIMEOUT)
            except (SendError, OSError) as exc:
                why = str(exc) if isinstance(exc, SendError) else f"{config.site.sendmail}: {exc}"
                warnings.append(f"moderation: the approved post {post.id} to {post.list_address} was not"
                                f" released ({why}); retried at the next sync")
                continue
            store._execute("UPDATE held_posts SET status = 'released', released_at = ? WHERE id = ?",
                           (store._ts(now), post.id))
            notes.append(f"moderation: released the approved post from {post.sender_email} to"
                         f" {post.list_address}")
    return notes, warnings


def _one_by_one(store, where: str):
    """Each held post matching ``where`` (with its message), in id order, each in a transaction of its
    own with its row locked (SKIP LOCKED on PostgreSQL: two syncs never send the same one); the
    caller's loop body runs inside that transaction, which commits when it asks for the next."""
    after = ""
    while True:
        with store.transaction():
            rows = store._q(f"SELECT {_COLUMNS}, message FROM held_posts WHERE {where} AND id > ?"
                            f" ORDER BY id LIMIT 1{_lock(store, skip_locked=True)}", (after,))
            if not rows:
                return
            post = _row(store, rows[0], with_message=True)
            after = post.id
            yield post


def send_owed(config, store, lists, now) -> tuple[list[str], list[str]]:
    """Tell the posters of expired held posts (once each), as RFC 3834 allows: never a null or
    automatic sender. The mail side decided that when it held the post (with
    :func:`listfilter.mail.notices.notice_suppressed`, on the headers as they came); a post whose
    poster may not be answered came into the store with its notice settled (:func:`ingest`)."""
    from ..common.sendmail import SendError, submit
    from ..common.staging import through_valve

    by_address = {l.address.lower(): l for l in lists}
    notes, warnings = [], []
    for post in _one_by_one(store, "status = 'expired' AND notified_at IS NULL"):
        lst = by_address.get(post.list_address.lower())
        if lst is not None and post.envelope_sender:  # a list gone from the config tells nobody
            to = [post.envelope_sender]
            message = expiry_notice(lst, post, now, config.site.timezone)
            try:
                submit(config.site.sendmail, "", *through_valve(to, message, lst.redirect_to), timeout=SEND_TIMEOUT)
            except (SendError, OSError) as exc:
                warnings.append(f"moderation: expiry notice to <{post.envelope_sender}> not sent ({exc});"
                                " retried at the next sync")
                continue
            notes.append(f"moderation: told <{post.envelope_sender}> that their post to {post.list_address}"
                         " expired")
        store._execute("UPDATE held_posts SET notified_at = ? WHERE id = ?", (store._ts(now), post.id))
    return notes, warnings


def expiry_notice(lst, post: HeldPost, now, timezone: str) -> bytes:
    """The expiry notice to a held post's poster (templates/messages/held-expired.txt.j2), From the
    list's owner address, ``Auto-Submitted: auto-replied`` (RFC 3834 §5), in reply to the post."""
    import zoneinfo
    from email.headerregistry import Address
    from email.message import EmailMessage
    from email.utils import format_datetime, make_msgid

    from ..common.addresses import owner_address
    from ..sync.templating import render

    tz = zoneinfo.ZoneInfo(timezone)
    days = max(1, round((post.expires_at - post.held_at).total_seconds() / 86400))
    subject = " ".join((post.subject or "").split()) or "(no subject)"
    text = render(EXPIRED_TEMPLATE, list_name=lst.display_name, list_address=lst.address,
                  owner_address=owner_address(lst.address), original_subject=subject,
                  held_at=post.held_at.astimezone(tz).strftime("%Y-%m-%d %H:%M %Z"), held_for=plural(days, "day"))
    msg = EmailMessage()
    local, _, domain = owner_address(lst.address).rpartition("@")
    msg["From"] = Address(f"{lst.display_name} (list owner)", local, domain)
    msg["To"] = post.envelope_sender
    msg["Subject"] = f"Your message to {lst.address} expired: {subject}"
    msg["Date"] = format_datetime(now.astimezone(tz))
    msg["Message-ID"] = make_msgid(domain=lst.domain)
    if post.message_id:
        msg["In-Reply-To"] = post.message_id
        msg["References"] = post.message_id
    msg["Auto-Submitted"] = "auto-replied"
    msg.set_content(text)
    return msg.as_bytes()
