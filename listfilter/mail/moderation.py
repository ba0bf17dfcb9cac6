"""Held posts on the mail side: keep the post, tell the poster and the owners; take an owner's decision.

A list whose ``non_member_posts`` (or ``non_poster_posts``) is ``hold``
keeps a post that :func:`listfilter.mail.rules.poster` would otherwise
refuse. :func:`hold` does what the mail side can do alone, with no state
beyond the spool:

1. it tells the poster that the post is held (the list's ``held-poster``
   text), under the same rules as a refusal notice: never to a null or
   automatic sender (:func:`listfilter.mail.notices.notice_suppressed`,
   RFC 3834), at most ``notice_limit`` a day (:func:`listfilter.common.spool.claim_notice`);
2. it sends the owners one notice (the ``held-owners`` text): who wrote,
   the subject, why it is held, the first lines of the body, and two signed
   tokens (:mod:`listfilter.common.tokens`), *approve* and *discard*, each
   valid for the list's ``hold_days``; an owner replies (the notice's
   Subject ends with ``approve <token>``, its Reply-To is the list's
   ``-request`` address), or writes to ``-request`` with ``discard <token>``
   in the Subject, or decides on the admin page;
3. only then it keeps the post: ``held/<id>.eml`` and ``held/<id>.json`` in
   the spool (:func:`listfilter.common.spool.write_held`), which sync moves
   into the store, and a ``held`` event under the post's own id, which the
   approved post's delivery later replaces. The record says when the poster
   must never be answered (``no_notice``: RFC 3834's reasons, not the day's
   limit), so that sync sends no expiry notice either;
4. last, after the ``held`` event, it leaves the held id in the delivery's
   progress record (:meth:`listfilter.common.spool.Delivery.mark_held`):
   the same message again (a resend, or Postfix's retry) meets the ``held``
   rule and is discarded with no notices, "already held as <id>". A failure
   or a crash before that step can hold a second copy; none is ever lost,
   and no held post lacks its event.

The order makes a failure safe: a notice that cannot be sent defers the
message (Postfix retries; nothing was kept), and a post is never kept
without its owners having been told. A post without a Message-ID is kept
with the one the list gives it, so that its release is the same post (its
post key) when it comes back.

:func:`decide_by_reply` is an owner's reply that carried a valid approve or
discard token (:mod:`listfilter.mail.requests` checked it): it becomes a
:class:`listfilter.common.events.Request` in the spool, which sync applies
(:func:`listfilter.store.moderation.decide`). An approved post goes out at
the sync after that: through Postfix to the list address, with the
``X-Listfilter-Approved`` header that the ``approved`` rule lets through once.

The staging valve (``redirect_to``) applies to both notices. Standard
library only.
"""

from __future__ import annotations

import datetime as dt
from email.headerregistry import Address

from ..common import spool as SP
from ..common import staging as ST
from ..common.addresses import owner_address, request_address
from ..common.errors import Defer
from ..common.events import now_utc, random_id, stable_id
from ..common.snapshot import fill_notice
from .notices import field_line as _field
from .notices import text_message

#: How much of the held post's body the owners' notice quotes.
EXCERPT_LINES = 12
EXCERPT_CHARS = 1500


def hold(job, decision, progress=None) -> str:
    """Hold the post ``job`` (:class:`listfilter.mail.deliver.Job`) for the owners; the log line.
    ``progress`` (:class:`listfilter.common.spool.Delivery`) is told the held id once it is kept.

    Raises Defer (exit 75) when a notice cannot be sent, the token key cannot
    be read or the spool cannot be written: nothing is kept, and Postfix retries.
    """
    from ..common import tokens
    from ..common.sendmail import SendError, submit
    from .notices import notice_suppressed

    row, settings, event = job.row, job.settings, job.event
    now = dt.datetime.now(job._tz())
    held_id = random_id()
    message_id = event.message_id
    raw = job.raw if not job.new_message_id else f"Message-ID: {message_id}\n".encode("ascii") + job.raw
    key = tokens.load_key(settings["token_key"])
    expires = now + dt.timedelta(days=row.hold_days)
    expires_text = expires.strftime("%Y-%m-%d %H:%M %Z").strip()
    subject = _field(event.subject) or "(no subject)"
    fields = dict(poster=_field(event.sender_email), original_subject=subject, reason=_field(decision.reason),
                  address=_field(event.sender_email), expires=expires_text, held_id=held_id,
                  reply_address=request_address(row.address))

    # the poster: as a refusal notice would be (RFC 3834), one of the day's notices
    why_not = never = notice_suppressed(job.sender, job.headers, job.snap.get_list)
    poster_text = job.snap.text(row.address, "held-poster")
    if why_not is None and poster_text is None:
        why_not = "the snapshot has no held-poster text (run listfilter sync)"
    slot = None
    if why_not is None and not job.dry:
        limit = int(settings["notice_limit"])
        slot = SP.claim_notice(job.spool, job.sender, now.date().isoformat(), limit)
        if slot is None:
            why_not = f"notice limit reached ({limit} today)"
    poster_notice = None
    sender = Address(display_name=f"{row.display_name} (list owner)", addr_spec=owner_address(row.address))
    if why_not is None:
        poster_notice = text_message(row, sender=sender, to=[job.sender], subject=f"Your message to {row.address}"
                                     f" is held: {subject}", text=fill_notice(poster_text, **fields), now=now,
                                     in_reply_to=message_id, auto="auto-replied")
    poster_note = (f"the poster was told (<{job.sender}>)" if poster_notice is not None
                   else f"no notice to the poster ({why_not})")

    # the owners: one notice with the two decisions
    owners = list(row.owners)
    owners_text = job.snap.text(row.address, "held-owners")
    if owners_text is None:
        raise Defer(f"the snapshot has no held-owners text for {row.address}: run listfilter sync")
    until = int(expires.timestamp())
    approve = tokens.make(key, "approve", row.address, held_id, until)
    discard = tokens.make(key, "discard", row.address, held_id, until)
    owners_notice = text_message(row, sender=sender, to=owners,
                                 subject=f"Held for {row.address}: {subject[:80]}: approve {approve}",
                                 text=fill_notice(owners_text, **fields, token=approve, second_token=discard,
                                                  excerpt=excerpt(job.headers, job.raw)),
                                 now=now, auto="auto-generated", reply_to=request_address(row.address))
    staging = row.redirect_to
    summary = (f"to=<{row.address}>, from=<{event.sender_email}>, message-id={message_id}, status=held"
               f" ({decision.reason}; {poster_note}; the owners were told; held as {held_id})")
    if staging:
        summary += f", notices redirected to {staging} (staging)"
    if job.dry:
        return job._dry(f"held: {summary}", [], owners_notice)

    sendmail = settings["sendmail"]
    try:
        if owners:
            submit(sendmail, "", *ST.through_valve(owners, owners_notice, staging))
        if poster_notice is not None:
            submit(sendmail, "", *ST.through_valve([job.sender], poster_notice, staging))
    except SendError as exc:
        if slot is not None:
            SP.release_notice(slot)
        raise Defer(f"cannot send the held post's notices: {exc}") from None

    meta = {"id": held_id, "list": row.address, "post_key": message_id, "message_id": message_id,
            "event_id": stable_id(message_id, row.address), "envelope_sender": job.sender,
            "sender_email": event.sender_email, "sender_name": event.sender_name, "subject": event.subject,
            "reason": decision.reason, "held_at": now_utc(), "hold_days": row.hold_days,
            "queue_id": job.queue_id, "no_notice": never or ""}
    SP.write_held(job.spool, held_id, raw, meta)
    # the post's own id (its Message-ID: given one now if it had none), so that its delivery replaces this
    job.event = event._replace(id=meta["event_id"])
    line = job._record("held", decision, summary, error=f"{decision.reason}; {poster_note}; held as {held_id}")
    if progress is not None:  # the very last step: a retry after any failure before it holds the post anew
        progress.mark_held(held_id)
    return line


def decide_by_reply(job, claim, sender: str) -> str:
    """An owner's reply with a valid approve or discard token (``claim``): the request for sync; the log line."""
    from ..common.events import Request

    request = Request(id=random_id(), at=now_utc(), action=claim.action, list_address=claim.list_address,
                      subject=claim.subject, by=sender, via="mail")
    if not job.dry:
        SP.write_request(job.spool, request)
    return (f"{claim.action} of held post {claim.subject} on {claim.list_address} by <{sender}> recorded;"
            " sync applies it")


def excerpt(headers, raw: bytes) -> str:
    """The first lines of the post's plain text, indented, for the owners' notice (never its HTML)."""
    text = None
    try:
        maintype = headers.get_content_maintype()
        if maintype == "text" and (headers.get("Content-Type") or "text/plain").split(";")[0].strip().lower() \
                == "text/plain":
            from .deliver import body_text
            from .message import split_message

            text = body_text(headers, split_message(raw)[1])
        elif maintype == "multipart":
            import email
            from email import policy

            part = email.message_from_bytes(raw[:256 * 1024], policy=policy.default).get_body(("plain",))
            text = part.get_content() if part is not None else None
    except Exception:  # an unreadable body is only shown on the admin page
        text = None
    if text is None:
        return "    (no plain-text part: see the admin page)"
    lines = [" ".join(line.split()) for line in text.splitlines()]
    while lines and not lines[0]:
        lines.pop(0)
    shown, used = [], 0
    for line in lines[:EXCERPT_LINES]:
        line = line[:200]
        if used + len(line) > EXCERPT_CHARS:
            break
        shown.append(f"    {line}" if line else "")
        used += len(line)
    if len(lines) > len(shown):
        shown.append("    [...]")
    return "\n".join(shown) or "    (empty)"


