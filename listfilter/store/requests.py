"""The spool's requests (confirmed joins and leaves, owners' decisions), applied to the store.

The mail side (:mod:`listfilter.mail.requests`) and the admin app's
one-click link write one :class:`listfilter.common.events.Request` per
confirmed change into ``<spool>/requests/``, after checking its token. At
each sync :func:`ingest` applies them, oldest first, each in one
transaction, and removes the file once it is in the store:

=========  ===================================================================
action     what the store gets
=========  ===================================================================
join       a joined member (:func:`listfilter.store.membership.join`), owing a welcome
pending    a ``join_requests`` row that waits for an owner (approval = true)
admit      that row admitted, and the joined member
deny       that row denied (nothing is sent)
leave      the joined membership ended (a one-click leave ends an extra one too), owing a goodbye
=========  ===================================================================

Each is checked again against the config first: the list must still be
opt-in, and a joiner still someone who may join (the installed snapshot
says so, as it did for the mail side); a request that no longer fits is
dropped with a warning. ``approve`` and ``discard`` (held posts) are left
in the spool for :mod:`listfilter.store.moderation`. A record that cannot be
read goes to ``requests/bad/`` with a ``.reason`` file, like the other
areas. A store error stops the ingest with every file still in the spool.

After the new snapshot is installed, :func:`send_owed` sends the welcome
and goodbye messages owed (``member_changes.notice``, ``notified_at`` NULL),
rendered from ``templates/messages/welcome.txt.j2`` and ``goodbye.txt.j2``,
through sendmail with the null envelope sender; a welcome only once the
snapshot has the member, a goodbye once it no longer has them. A failed
send stays owed for the next sync.
"""

from __future__ import annotations

import datetime as dt

from ..common import events as EV
from ..common import spool as SP
from ..common.words import plural

#: The actions applied here; the others (held posts) are listfilter.store.moderation's.
ACTIONS = ("join", "leave", "pending", "admit", "deny")
#: The messages sent here (member_changes.notice).
NOTICES = ("welcome", "goodbye")
#: How long sync waits for sendmail to take one message.
SEND_TIMEOUT = 60


def lists_by_address(config) -> dict[str, tuple]:
    """Every list address of the config -> (its ListConfig, its domain)."""
    return {f"{lst.local_part}@{d}": (lst, d) for lst in config.lists.values() for d in lst.domains}


def _installed(config):
    from ..common.snapshot import Snapshot, SnapshotError

    try:
        return Snapshot(config.site.snapshot_path)
    except SnapshotError:
        return None


def ingest(config, store, now) -> tuple[list[str], list[str]]:
    """Apply every request waiting in the spool, then remove it: (notes, warnings)."""
    notes: list[str] = []
    warnings: list[str] = []
    paths = SP.pending_requests(config.site.spool_dir)
    if not paths:
        return notes, warnings
    known = lists_by_address(config)
    snap = _installed(config)
    try:
        for path in paths:
            try:
                record = EV.request_from_json(path.read_bytes())
            except (EV.BadEvent, OSError) as exc:
                where = SP.set_aside(path, str(getattr(exc, "strerror", None) or exc))
                warnings.append(f"requests: {path.name} set aside as {where}: {exc}")
                continue
            if record.action not in ACTIONS:
                continue  # a held post's decision: listfilter.store.moderation applies it
            note, warning = apply(config, store, record, known, snap, now)
            notes += [note] if note else []
            warnings += [warning] if warning else []
            path.unlink(missing_ok=True)  # only once it is in the store
    finally:
        if snap is not None:
            snap.close()
    return notes, warnings


def apply(config, store, record: EV.Request, known: dict, snap, now: dt.datetime) -> tuple[str, str]:
    """One request into the store: (note, warning), either of them "" ."""
    from . import membership as MS

    address, who = record.list_address.lower(), record.subject.lower()
    what = f"requests: {record.action} of {who} for {address} (via {record.via}, by {record.by or 'nobody'})"
    served = known.get(address)
    if served is None or served[0].optin is None:
        return "", f"{what} dropped: {address} is {'not an opt-in list' if served else 'no list'} any more"
    lst = served[0]
    if record.action in ("join", "pending", "admit") and snap is not None:
        row = snap.get_list(address)
        if row is not None and row.optin and not snap.may_join(row, who):
            return "", f"{what} dropped: {who} may no longer join"
    if record.action == "join" and lst.optin.approval:
        record = record._replace(action="pending")  # approval was switched on since the token was made
    if record.action == "join":
        change = MS.join(store, address, who, record.name, record.by or who, record.via, now=now)
        return f"{what}: {'joined' if change else 'already a member'}", ""
    if record.action == "leave":
        sources = ("joined", "extra") if record.via == "one-click" else ("joined",)
        change = MS.leave(store, address, who, record.by or who, record.via, sources=sources, now=now)
        return f"{what}: {'left' if change else 'was no joined member'}", ""
    with store.transaction():
        rows = store._q("SELECT status FROM join_requests WHERE list_address = ? AND email_key = ?", (address, who))
        status = rows[0][0] if rows else None
        if record.action == "pending":
            if status == "pending":
                return f"{what}: already waiting for an owner", ""
            store._execute("DELETE FROM join_requests WHERE list_address = ? AND email_key = ?", (address, who))
            store._execute("INSERT INTO join_requests (list_address, email_key, email, name, status, requested_at)"
                           " VALUES (?, ?, ?, ?, 'pending', ?)", (address, who, who, record.name, store._ts(now)))
            return f"{what}: waits for an owner", ""
        if status not in ("pending", "admitted"):  # admitted: the same decision again, or a retry
            return "", f"{what} dropped: no join request waits ({status or 'none'})"
        decided = "admitted" if record.action == "admit" else "denied"
        store._execute("UPDATE join_requests SET status = ?, decided_by = ?, decided_at = ?"
                       " WHERE list_address = ? AND email_key = ?",
                       (decided, record.by, store._ts(now), address, who))
        if record.action == "deny":
            return f"{what}: denied", ""
        name = (store._q("SELECT name FROM join_requests WHERE list_address = ? AND email_key = ?",
                         (address, who))[0][0]) or ""
        change = MS.join(store, address, who, name, record.by, record.via, now=now)
        return f"{what}: {'admitted' if change else 'already a member'}", ""


def expire_pending(config, store, now: dt.datetime) -> int:
    """Mark join requests nobody decided within ``confirm_days`` expired (their tokens have); how many."""
    cutoff = now - dt.timedelta(days=config.site.confirm_days)
    with store.transaction():
        due = store._q("SELECT count(*) FROM join_requests WHERE status = 'pending' AND requested_at < ?",
                       (store._ts(cutoff),))[0][0]
        store._execute("UPDATE join_requests SET status = 'expired', decided_at = ? WHERE status = 'pending'"
                       " AND requested_at < ?", (store._ts(now), store._ts(cutoff)))
    return int(due)


# --------------------------------------------------------------------------
# Welcome and goodbye


def message(config, lst, domain: str, address: str, kind: str, email: str, now: dt.datetime) -> bytes:
    """The welcome or goodbye message to ``email`` for the list ``address`` (From its -request address)."""
    from email.headerregistry import Address
    from email.message import EmailMessage
    from email.utils import format_datetime, make_msgid

    from ..common.addresses import request_address
    from ..sync.compiler import message_context
    from ..sync.templating import render

    context = message_context(config, lst, domain, address)
    msg = EmailMessage()
    msg["From"] = Address(" ".join(context["list_name"].split()), addr_spec=request_address(address))
    msg["To"] = email
    msg["Subject"] = (f"Welcome to {context['list_name']}" if kind == "welcome"
                      else f"You have left {context['list_name']}")
    msg["Date"] = format_datetime(now)
    msg["Message-ID"] = make_msgid(domain=domain)
    msg["Auto-Submitted"] = "auto-generated"
    msg.set_content(render(f"messages/{kind}.txt.j2", **context, address=email))
    return msg.as_bytes()


def send_owed(config, store, lists, now) -> tuple[list[str], list[str]]:
    """Send the welcome and goodbye messages owed (member_changes.notice, not yet notified_at)."""
    from ..common.sendmail import SendError, submit
    from ..common.staging import redirect_header, redirected

    notes: list[str] = []
    warnings: list[str] = []
    expired = expire_pending(config, store, now)
    if expired:
        notes.append(f"requests: {plural(expired, 'join request')} nobody decided expired")
    compiled = {l.address: l for l in lists}
    known = lists_by_address(config)
    lock = " FOR UPDATE SKIP LOCKED" if store.dialect == "postgresql" else ""
    after = 0
    while True:
        with store.transaction():
            rows = store._q("SELECT id, list_address, email, notice FROM member_changes WHERE notified_at IS NULL"
                            f" AND notice IN (?, ?) AND id > ? ORDER BY id LIMIT 1{lock}", (*NOTICES, after))
            if not rows:
                return notes, warnings
            ident, address, email, kind = rows[0]
            after = ident
            lst = compiled.get(address)
            if lst is None or address not in known:
                store._execute("UPDATE member_changes SET notified_at = ?, detail = ? WHERE id = ?",
                               (store._ts(now), f"no {kind} sent: no list {address} any more", ident))
                continue
            member = any(e.lower() == email.lower() for e, _ in lst.members)
            if member != (kind == "welcome"):
                continue  # the snapshot does not show the change yet (or undid it): not now
            body = message(config, known[address][0], known[address][1], address, kind, email, now)
            staging = lst.redirect_to
            if staging:
                body = redirect_header([email]) + body
            try:
                submit(config.site.sendmail, "", redirected([email], staging), body, timeout=SEND_TIMEOUT)
            except (SendError, OSError) as exc:
                warnings.append(f"requests: the {kind} to {email} for {address} not sent: {exc}; retried next sync")
                continue
            store._execute("UPDATE member_changes SET notified_at = ? WHERE id = ?", (store._ts(now), ident))
            notes.append(f"requests: {kind} sent to {email} for {address}"
                         + (f" (redirected to {staging})" if staging else ""))
