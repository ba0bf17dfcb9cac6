"""Mail to a list's -join, -leave and -request addresses: requests, and the replies that confirm them.

``listfilter-deliver`` hands these here (:func:`handle`). Standard library
only; the texts were rendered by sync (:func:`listfilter.sync.compiler.list_texts`)
and come with the snapshot, per-message fields left as markers.

=========================================  ===========================================================
What came                                  What happens
=========================================  ===========================================================
anything to ``LIST-join@``, or ``join`` /  a join request for the From address: refused (join-refused)
``subscribe`` as the Subject or first      when the snapshot says it may not join, "already a member"
non-blank body line to ``LIST-request@``   (no token), else join-confirm with a token
``LIST-leave@``, ``leave`` /               leave-not-member, or leave-confirm with a token
``unsubscribe`` to ``LIST-request@``
a reply carrying a token (Subject or       checked (:func:`listfilter.common.tokens.verify`) and, when
body), to any of the three                 it is ours, for this list and unexpired, one spool request
                                           (:class:`listfilter.common.events.Request`) for sync to
                                           apply: join (or pending + the owners' join-admit when the
                                           list has ``approval``), leave, admit, deny; a held post's
                                           approve or discard goes to :mod:`listfilter.mail.moderation`.
                                           A bad token is answered (request-help, saying why)
``help`` to an opt-in list's -request      request-help (the owners are not bothered with it)
anything else to -request                  forwarded to the owners, as on every list
=========================================  ===========================================================

The token proves that whoever replies received the mail sent to the
address, so a forged From cannot join anyone; nothing is stored on the mail
side beyond the spool. Every answer follows the refusal notice's rules
(:mod:`listfilter.mail.notices`): none to a null sender, a robot, a list
(ours above all), or automatic or bulk mail (RFC 3834), at most
``notice_limit`` a day per address (:func:`listfilter.common.spool.claim_notice`);
each is From ``LIST-request@`` with ``Auto-Submitted: auto-replied``, sent
with the null envelope sender (RFC 3834 §3.3), through the staging valve
like every copy. A reply that is itself automatic (a vacation message, a
bounce quoting our confirmation) confirms nothing. Each message is one log
line; commands leave no mail_logs row.
"""

from __future__ import annotations

import datetime as dt
import re
import sys
import time
from collections import namedtuple
from email.headerregistry import Address

from ..common import spool as SP
from ..common import staging as ST
from ..common import tokens as TK
from ..common.addresses import owner_address, request_address
from ..common.errors import Defer, ListfilterError
from ..common.events import Request, now_utc, stable_id
from ..common.snapshot import fill_notice
from .message import header_text, poster_of

JOIN_WORDS = ("join", "subscribe")
LEAVE_WORDS = ("leave", "unsubscribe", "signoff")
HELP_WORDS = ("help", "info", "?")
#: The words a reply carrying a token starts with (ours, and Mailman's "confirm").
TOKEN_WORDS = ("confirm", "admit", "deny", "approve", "discard")
#: The token actions a reply by mail may carry (the one-click link's are for the admin app only).
MAIL_ACTIONS = ("join", "leave", "admit", "deny", "approve", "discard")
#: The Subject of each answer (the list's name follows); a confirmation's is "confirm <token>".
SUBJECTS = {"join-refused": "Your request to join {name}", "leave-not-member": "Your request to leave {name}",
            "join-pending": "Your request to join {name} waits for its owners",
            "request-help": "About the list {name}"}
#: Reasons notices.notice_suppressed gives that do not stop a confirmation: an owner's role address,
#: and the Microsoft flag against answers (which a confirmation is not).
_CONFIRM_DESPITE = ("role address", "auto-response suppressed")
#: The body a command is read from: at most this much of it.
BODY_LIMIT = 64 * 1024
_PREFIX = re.compile(r"^\s*(?:(?:re|fwd?|aw|sv|antw|tr|wg)\s*(?:\[\d+\])?\s*:\s*)+", re.IGNORECASE)

#: What a message asks: the command word (lower-cased, "" if none) and the token-shaped strings it carries.
Asked = namedtuple("Asked", "word tokens")


def command_word(line: str) -> str:
    """The first word of a Subject or body line, lower-cased, without Re:/Fwd: prefixes."""
    words = _PREFIX.sub("", line or "").split()
    return words[0].lower().strip(":") if words else ""


def body_text(raw: bytes) -> str:
    """The message's first text/plain part (or its only text), decoded, at most :data:`BODY_LIMIT`;
    "" when there is none or it cannot be read."""
    from email import message_from_bytes, policy

    try:
        msg = message_from_bytes(raw, policy=policy.default)
        part = msg.get_body(preferencelist=("plain", "html")) if msg.is_multipart() else msg
        if part is None or part.get_content_maintype() != "text":
            return ""
        return str(part.get_content())[:BODY_LIMIT]
    except Exception:  # a body the parser cannot read asks for nothing
        return ""


def asked(subject: str, body: str) -> Asked:
    """What a message asks: the Subject's first word, else the first non-blank (unquoted) body line's;
    and the tokens in the Subject, then the body."""
    word = command_word(subject)
    if word not in JOIN_WORDS + LEAVE_WORDS + HELP_WORDS + TOKEN_WORDS:
        first = next((line for line in body.splitlines() if line.strip() and not line.lstrip().startswith(">")), "")
        body_word = command_word(first)
        word = body_word if body_word in JOIN_WORDS + LEAVE_WORDS + HELP_WORDS + TOKEN_WORDS else word
    found = TK.find(subject)
    found += [t for t in TK.find(body) if t not in found]
    return Asked(word, found)


def handle(job, kind: str) -> str:
    """Act on one message to ``kind`` ("join", "leave" or "request") of ``job``'s list; the log line.

    Raises Defer when the key cannot be read or sendmail fails (nothing was
    lost: the retry does it all again, and the request's id is the token's)."""
    try:
        return _handle(job, kind)
    except ListfilterError:
        raise
    except Exception as exc:  # a message that breaks the handling: the owners see it, as before
        return f"{kind} mail for {job.row.address} not read ({type(exc).__name__}: {exc}); " + job.to_owners(kind)


def _handle(job, kind: str) -> str:
    subject = header_text(job.headers, "Subject") or ""
    what = asked(subject, body_text(job.raw))
    if what.tokens and (kind == "request" or what.word in TOKEN_WORDS):
        # a reply to one of ours keeps its Subject: a bad token there is answered; a token-shaped string
        # only in the body of other mail (a question to the owners) is no reply, and the mail goes on
        line = confirm(job, what.tokens, explain=what.word in TOKEN_WORDS or bool(TK.find(subject)))
        if line is not None:
            return line
    row = job.row
    if not row.optin:
        return job.to_owners(kind)
    if kind == "join" or (kind == "request" and what.word in JOIN_WORDS):
        return ask(job, "join")
    if kind == "leave" or (kind == "request" and what.word in LEAVE_WORDS):
        return ask(job, "leave")
    if what.word in HELP_WORDS:
        to = _answerable(job)
        if isinstance(to, Refused):
            return f"help request for {row.address} not answered ({to.why})"
        return answer(job, "request-help", to, address=to)
    return job.to_owners(kind)


# --------------------------------------------------------------------------
# A request to join or leave


#: Why a message gets no answer.
Refused = namedtuple("Refused", "why")


def _answerable(job) -> "str | Refused":
    """The From address to answer, or why none may be (the refusal notice's rules, both for the
    envelope sender and the From address, which is the one the request is for)."""
    from .notices import notice_suppressed

    name, address, problem = poster_of(job.headers)
    why = notice_suppressed(job.sender, job.headers, job.snap.get_list)
    if why is None and not address:
        why = problem or "no From address"
    if why is None:
        why = notice_suppressed(address, job.headers, job.snap.get_list)
    return Refused(why) if why else address


def ask(job, action: str) -> str:
    """A request to join or leave for the From address: its answer, with a token unless there is nothing
    to confirm; the log line."""
    row = job.row
    to = _answerable(job)
    if isinstance(to, Refused):
        return f"{action} request for {row.address} not answered ({to.why})"
    member = job.snap.member(row.address, to)
    if action == "join" and member is not None:
        return answer(job, "request-help", to, address=to,
                      reason=f"{to} is already a member of this list: there is nothing to join.\n\n",
                      note=f"join request from <{to}> for {row.address}: already a member")
    if action == "join" and not job.snap.may_join(row, to):
        return answer(job, "join-refused", to, address=to,
                      note=f"join request from <{to}> for {row.address}: may not join")
    if action == "leave" and member is None:
        return answer(job, "leave-not-member", to, address=to,
                      note=f"leave request from <{to}> for {row.address}: not a member")
    if action == "leave" and member[2] != "joined":  # the roster's, the config's or an owner's: theirs to end
        return answer(job, "request-help", to, address=to,
                      reason=f"{to} is on this list because its owners put it there ({member[2]}), so only"
                             f" they can take it off: write to {owner_address(row.address)}.\n\n",
                      note=f"leave request from <{to}> for {row.address}: a {member[2]} member, not joined")
    key, expires = _signing(job)
    token = TK.make(key, action, row.address, to.lower(), expires)
    return answer(job, f"{action}-confirm", to, address=to, token=token, expires=_when(job, expires),
                  subject=f"confirm {token}", note=f"{action} request from <{to}> for {row.address}: confirmation sent")


def _signing(job) -> tuple[bytes, int]:
    """The token key (missing: Defer, the world may change) and when a token made now expires."""
    return TK.load_key(job.settings["token_key"]), int(time.time()) + int(job.settings["confirm_days"]) * 86400


# --------------------------------------------------------------------------
# A reply carrying a token


def confirm(job, found: list[str], explain: bool = True) -> str | None:
    """The first of ``found`` that is a valid token for this list, acted on; else (with ``explain``) the
    answer saying why none is, or None. The log line."""
    from .notices import notice_suppressed

    row = job.row
    why = notice_suppressed(job.sender, job.headers, job.snap.get_list)
    if why is not None and why not in _CONFIRM_DESPITE:
        return f"reply with a token to {row.address} ignored ({why}): an automatic reply confirms nothing"
    key = TK.load_key(job.settings["token_key"])
    problem = ""
    for candidate in found:
        try:
            claim = TK.verify(key, candidate, time.time(), actions=MAIL_ACTIONS)
        except TK.TokenError as exc:
            problem = problem or str(exc)
            continue
        if claim.list_address != row.address:
            problem = problem or f"the token is for another list ({claim.list_address})"
            continue
        return _act(job, claim, candidate)
    return _bad_token(job, problem) if explain else None


def _bad_token(job, problem: str) -> str:
    row = job.row
    note = f"reply with a token to {row.address}: {problem}"
    if job.snap.text(row.address, "request-help") is None:
        return f"{note}; not answered (the list has no help text)"
    to = _answerable(job)
    if isinstance(to, Refused):
        return f"{note}; not answered ({to.why})"
    again = ("To start again, follow the instructions below." if row.optin else
             "A held post the code was for stays held until an owner decides or it expires.")
    reason = (f"Your message carried a confirmation code that cannot be used: {problem}.\n"
              f"Nothing was changed. {again}\n\n")
    return answer(job, "request-help", to, address=to, reason=reason, note=note)


def _act(job, claim: TK.Claim, token: str) -> str:
    row = job.row
    name, by, _ = poster_of(job.headers)
    by = by or job.sender
    if claim.action in ("approve", "discard"):
        from .moderation import decide_by_reply

        return decide_by_reply(job, claim, by)
    if claim.action in ("admit", "deny"):
        _request(job, token, claim.action, claim.subject, "", by)
        return f"{claim.action} of <{claim.subject}> for {row.address} by <{by}>: recorded for sync"
    if claim.action == "leave":
        _request(job, token, "leave", claim.subject, "", by)
        return f"leave of <{claim.subject}> from {row.address} confirmed by <{by}>: recorded for sync"
    # join: the address may have stopped being one that may join since the token was made
    if not job.snap.may_join(row, claim.subject):
        return answer(job, "join-refused", claim.subject, address=claim.subject,
                      note=f"join of <{claim.subject}> for {row.address} confirmed, but it may no longer join")
    joiner_name = name if by.lower() == claim.subject else ""
    if not row.join_approval:
        _request(job, token, "join", claim.subject, joiner_name, by)
        return f"join of <{claim.subject}> to {row.address} confirmed by <{by}>: recorded for sync"
    _request(job, token, "pending", claim.subject, joiner_name, by)
    key, expires = _signing(job)
    admit = TK.make(key, "admit", row.address, claim.subject, expires)
    deny = TK.make(key, "deny", row.address, claim.subject, expires)
    owners = answer(job, "join-admit", list(row.owners), address=claim.subject, token=admit, second_token=deny,
                    expires=_when(job, expires), subject=f"admit {admit}", limited=False,
                    note=f"owners of {row.address} asked to admit <{claim.subject}>")
    line = answer(job, "join-pending", claim.subject, address=claim.subject,
                  note=f"join of <{claim.subject}> to {row.address} confirmed by <{by}>: waits for the owners")
    return f"{line}; {owners}"


def _request(job, token: str, action: str, subject: str, name: str, by: str) -> None:
    """One spool request for sync; its id is the token's, so a retry (or a second reply) writes the same."""
    record = Request(id=stable_id(f"request:{action}:{token}", job.row.address), at=now_utc(), action=action,
                     list_address=job.row.address, subject=subject.lower(), name=name, by=by, via="mail")
    if job.dry:
        sys.stdout.write(f"request: {record.to_json().decode('utf-8', 'replace')}\n")
        return
    SP.write_request(job.spool, record)


# --------------------------------------------------------------------------
# Answers


def _when(job, expires: int) -> str:
    import zoneinfo

    return dt.datetime.fromtimestamp(expires, zoneinfo.ZoneInfo(job.settings["timezone"])).strftime(
        "%Y-%m-%d %H:%M %Z")


def build_answer(row, kind: str, to: list[str], text: str, *, subject: str, now: dt.datetime,
                 in_reply_to: str = "") -> bytes:
    """One answer From the list's -request address (where a reply must come back, the owners' too:
    -owner mail goes straight to the owners), as LF-terminated bytes."""
    from .notices import text_message

    sender = Address(display_name=" ".join(row.display_name.split()), addr_spec=request_address(row.address))
    return text_message(row, sender=sender, to=to, subject=subject, text=text, now=now, in_reply_to=in_reply_to)


def answer(job, kind: str, to, *, note: str = "", subject: str = "", limited: bool = True, **fields: str) -> str:
    """Send the list's ``kind`` text to ``to`` (an address, or a list for the owners), its markers filled
    with ``fields``; the log line (``note`` and where it went, or why it did not)."""
    row = job.row
    recipients = [to] if isinstance(to, str) else list(to)
    note = note or f"{kind} for {row.address}"
    text = job.snap.text(row.address, kind)
    if text is None:
        return f"{note}; no answer (the snapshot has no {kind} text for the list: run listfilter sync)"
    text = fill_notice(text, reply_address=request_address(row.address), **fields)
    now = dt.datetime.now(dt.timezone.utc)
    slot = None
    if limited and not job.dry:
        limit = int(job.settings["notice_limit"])
        slot = SP.claim_notice(job.spool, recipients[0], now.date().isoformat(), limit)
        if slot is None:
            return f"{note}; no answer (notice limit reached: {limit} today)"
    message_id = (header_text(job.headers, "Message-ID") or "").strip()
    message = build_answer(row, kind, recipients, text, now=now,
                           subject=subject or SUBJECTS.get(kind, "{name}").format(name=row.display_name),
                           in_reply_to=message_id if message_id.startswith("<") and len(message_id) < 250 else "")
    staging = row.redirect_to
    where = f"{kind} sent to {', '.join('<' + r + '>' for r in recipients)}" + (
        f", redirected to {staging} (staging)" if staging else "")
    if job.dry:
        job._dry(f"{note}; {where}", *ST.through_valve(recipients, message, staging))
        return ""
    from ..common.sendmail import SendError, submit

    try:
        submit(job.settings["sendmail"], "", *ST.through_valve(recipients, message, staging))
    except SendError as exc:
        if slot is not None:
            SP.release_notice(slot)
        raise Defer(f"cannot send the {kind} answer: {exc}") from None
    return f"{note}; {where}"
