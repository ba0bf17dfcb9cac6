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
deny       that row denied, owing the joiner a ``denied`` message
leave      the joined membership ended (a one-click leave ends an extra one too), owing a goodbye
=========  ===================================================================

Each is checked again against the config first: the list must still be
opt-in, and a joiner still someone who may join (the installed snapshot
says so, as it did for the mail side); a request that no longer fits is
dropped with a warning. ``approve`` and ``discard`` (held posts) are left
in the spool for :mod:`listfilter.store.moderation`. A record that cannot be
read goes to ``requests/bad/`` with a ``.reason`` file, like the other
areas. A store error stops the ingest with every file still in the spool.

An owner decides a waiting join by reply (the admit and deny requests
above), with ``listfilter members admit`` / ``deny`` or on the admin page's
Members page: all three end in :func:`decide_join` (the CLI and the page
through :func:`owner_decision`, which makes the checks a reply's request gets
here first). :func:`join_requests` is what waits.

After the new snapshot is installed, :func:`send_owed` sends the welcome,
goodbye and denied messages owed (``member_changes.notice``, ``notified_at``
NULL), rendered from ``templates/messages/welcome.txt.j2``, ``goodbye.txt.j2``
and ``denied.txt.j2``, through sendmail with the null envelope sender; a
welcome only once the snapshot has the member, a goodbye once it no longer
has them, a denial at once. A failed send stays owed for the next sync.
"""

from __future__ import annotations

import datetime as dt
from collections import namedtuple

from ..common import events as EV
from ..common import spool as SP
from ..common.words import plural

#: The actions applied here; the others (held posts) are listfilter.store.moderation's.
ACTIONS = ("join", "leave", "pending", "admit", "deny")
#: The messages sent here (member_changes.notice).
NOTICES = ("welcome", "goodbye", "denied")
#: An owner's decisions on a waiting join, and the join_requests status each leads to.
JOIN_DECISIONS = {"admit": "admitted", "deny": "denied"}

#: One ``join_requests`` row, as the CLI and the admin page show it (times aware, UTC).
JoinRequest = namedtuple("JoinRequest", "list_address email name status requested_at decided_by decided_at")
#: What :func:`decide_join` did: whether the request changed, its status now, and the words for the owner.
Judged = namedtuple("Judged", "changed status message")
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
    if record.action in ("join", "pending", "admit") and not may_still_join(snap, address, who):
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
    if record.action == "pending":
        with store.transaction():
            rows = store._q("SELECT status FROM join_requests WHERE list_address = ? AND email_key = ?",
                            (address, who))
            if rows and rows[0][0] == "pending":
                return f"{what}: already waiting for an owner", ""
            store._execute("DELETE FROM join_requests WHERE list_address = ? AND email_key = ?", (address, who))
            store._execute("INSERT INTO join_requests (list_address, email_key, email, name, status, requested_at)"
                           " VALUES (?, ?, ?, ?, 'pending', ?)", (address, who, who, record.name, store._ts(now)))
            return f"{what}: waits for an owner", ""
    judged = decide_join(store, address, who, record.action, record.by, record.via, now)
    if judged.changed or judged.status == JOIN_DECISIONS[record.action]:  # or the same decision again
        return f"{what}: {judged.message}", ""
    return "", f"{what} dropped: {judged.message}"


def may_still_join(snap, address: str, email: str) -> bool:
    """Whether the installed snapshot (None: none yet) still lets ``email`` join the opt-in list ``address``."""
    if snap is None:
        return True
    row = snap.get_list(address)
    return row is None or not row.optin or snap.may_join(row, email.lower())


def join_requests(store, list_address: str | None = None, status: tuple[str, ...] = ("pending",)) -> list[JoinRequest]:
    """The join requests with one of ``status`` (of one list, or all), oldest first."""
    where, params = [f"status IN ({', '.join('?' for _ in status)})"], list(status)
    if list_address is not None:
        where.append("list_address = ?")
        params.append(list_address.lower())
    got = store._q("SELECT list_address, email, name, status, requested_at, decided_by, decided_at FROM join_requests"
                   f" WHERE {' AND '.join(where)} ORDER BY requested_at, list_address, email_key", params)
    return [JoinRequest(a, e, n or "", s, store._from_ts(r), b or "", store._from_ts(d) if d is not None else None)
            for a, e, n, s, r, b, d in got]


def decide_join(store, address: str, email: str, action: str, by: str, via: str, now: dt.datetime, *,
                confirm_days: int | None = None, tz: dt.tzinfo = dt.timezone.utc) -> Judged:
    """Admit or deny (``action``) ``email``'s waiting join of ``address``, by ``by`` via mail, web or cli,
    in one transaction: the first decision counts. An admitted joiner becomes a joined member (welcomed
    once the snapshot has them); a denied one is owed the ``denied`` message. With ``confirm_days``, a
    request older than that has expired, as :func:`expire_pending` would mark it at the next sync.
    An earlier decision's time is said in ``tz`` (the site's time zone)."""
    from . import membership as MS

    decided = JOIN_DECISIONS.get(action)
    if decided is None:
        raise ValueError(f"not a decision on a join request: {action!r}")
    who = email.lower()
    lock = " FOR UPDATE" if store.dialect == "postgresql" else ""
    with store.transaction():
        rows = store._q("SELECT email, name, status, requested_at, decided_by, decided_at FROM join_requests"
                        f" WHERE list_address = ? AND email_key = ?{lock}", (address, who))
        if not rows:
            return Judged(False, "", f"no join request waits: {who} has not asked to join {address}")
        joiner, name, status, requested, old_by, old_at = rows[0]
        what = f"{joiner}'s request to join {address}"
        if status != "pending":
            when = f" on {store._from_ts(old_at).astimezone(tz).isoformat(timespec='minutes')}" \
                if old_at is not None else ""
            if status == "expired":
                return Judged(False, status, f"{what} expired{when}: nobody decided within confirm_days")
            return Judged(False, status, f"{what} was already {status}{' by ' + old_by if old_by else ''}{when}")
        if confirm_days is not None and store._from_ts(requested) < now - dt.timedelta(days=confirm_days):
            return Judged(False, "expired", f"{what} has expired: nobody decided within confirm_days"
                                            f" ({plural(confirm_days, 'day')})")
        store._execute("UPDATE join_requests SET status = ?, decided_by = ?, decided_at = ?"
                       " WHERE list_address = ? AND email_key = ? AND status = 'pending'",
                       (decided, by[:320], store._ts(now), address, who))
        if action == "deny":
            MS.denied(store, address, joiner, by, via, now=now)
            return Judged(True, decided, f"{what} is denied; they are told at the next sync")
        change = MS.join(store, address, joiner, name or "", by, via, now=now)
        return Judged(True, decided, f"{what} is admitted; " + ("they become a member at the next sync"
                                                              if change else "they were a member already"))


def owner_decision(config, store, address: str, email: str, action: str, by: str, via: str,
                   now: dt.datetime) -> Judged:
    """An owner's admit or deny from the CLI or the admin page: the checks a reply's request gets at
    sync (:func:`apply`: the list still opt-in, an admitted joiner still someone who may join), then
    :func:`decide_join`, with the site's ``confirm_days``."""
    served = lists_by_address(config).get(address.lower())
    if served is None or served[0].optin is None:
        return Judged(False, "", f"{address} is {'not an opt-in list' if served else 'no list'} in {config.path}")
    if action == "admit":
        snap = _installed(config)
        try:
            if not may_still_join(snap, address.lower(), email):
                return Judged(False, "", f"{email} may no longer join {address}"
                                         f" ({served[0].optin.describe()})")
        finally:
            if snap is not None:
                snap.close()
    import zoneinfo

    return decide_join(store, address.lower(), email, action, by, via, now, confirm_days=config.site.confirm_days,
                       tz=zoneinfo.ZoneInfo(config.site.timezone))


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


#: The Subject of each message sent here, filled with the list's name.
SUBJECTS = {"welcome": "Welcome to {list_name}", "goodbye": "You have left {list_name}",
            "denied": "Your request to join {list_name}"}


def message(config, lst, domain: str, address: str, kind: str, email: str, now: dt.datetime) -> bytes:
    """The welcome, goodbye or denied message to ``email`` for the list ``address`` (From its -request address)."""
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
    msg["Subject"] = SUBJECTS[kind].format(list_name=" ".join(context["list_name"].split()))
    msg["Date"] = format_datetime(now)
    msg["Message-ID"] = make_msgid(domain=domain)
    msg["Auto-Submitted"] = "auto-generated"
    msg.set_content(render(f"messages/{kind}.txt.j2", **context, address=email))
    return msg.as_bytes()


def send_owed(config, store, lists, now) -> tuple[list[str], list[str]]:
    """Send the welcome, goodbye and denied messages owed (member_changes.notice, not yet notified_at)."""
    from ..common.sendmail import SendError, submit
    from ..common.staging import through_valve

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
                            f" AND notice IN ({', '.join('?' for _ in NOTICES)}) AND id > ? ORDER BY id"
                            f" LIMIT 1{lock}", (*NOTICES, after))
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
            if kind != "denied" and member != (kind == "welcome"):
                continue  # the snapshot does not show the change yet (or undid it): not now
            body = message(config, known[address][0], known[address][1], address, kind, email, now)
            staging = lst.redirect_to
            try:
                submit(config.site.sendmail, "", *through_valve([email], body, staging), timeout=SEND_TIMEOUT)
            except (SendError, OSError) as exc:
                warnings.append(f"requests: the {kind} to {email} for {address} not sent: {exc}; retried next sync")
                continue
            store._execute("UPDATE member_changes SET notified_at = ? WHERE id = ?", (store._ts(now), ident))
            notes.append(f"requests: {kind} sent to {email} for {address}"
                         + (f" (redirected to {staging})" if staging else ""))
