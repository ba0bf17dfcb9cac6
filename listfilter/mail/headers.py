"""The header rewrite of a list post: a table of what changes, and the loop check.

Pure functions over the parsed headers (:mod:`listfilter.mail.message`) and the
list's snapshot row; standard library only.

What :func:`rewrite_headers` changes, and why
---------------------------------------------

===============================  =========  ==================================================
Header                           Action     Why
===============================  =========  ==================================================
Subject                          replaced   ``[Tag] YYYY-MM-DD: Title Case Subject`` (see
                                            :func:`new_subject`); earlier tags, dates and a
                                            run of Re:/Fwd: prefixes collapse to one prefix.
To                               replaced   ``"Display Name" <list@domain>``: members see the
                                            list, not the poster's (often Bcc'd) recipients.
                                            Other recipients the poster named in To are no
                                            longer shown (they still got their own copy).
Reply-To                         replaced   only when the list has ``reply_to`` configured;
                                 or kept    otherwise the poster's own Reply-To (if any) stays.
List-* (any, e.g. from another   removed    They would describe another list (or lie about
list: List-Id, List-Unsubscribe,            this one): members' clients would offer to
List-Post, List-Archive, ...)               unsubscribe/post elsewhere, and loop checks would
                                            misfire.
List-Id, List-Post, List-Help,   added      RFC 2919 / RFC 2369: identify this list and say
List-Owner                                  where to post, get help and reach the owner.
Precedence                       replaced   by ``Precedence: list`` (de-facto standard; makes
                                            well-behaved vacation responders stay quiet).
X-Listfilter-Loop                added      ``list@domain``: our loop marker (checked by
                                            :func:`is_loop` before rewriting; markers of other
                                            lists are left alone).
Return-Path                      removed    Set by the final delivery agent from the envelope;
                                            an old one would name the poster, not the list's
                                            bounce address.
Delivered-To, X-Original-To      removed    Delivery trace of *our* hop; Postfix uses
                                            Delivered-To for loop detection ("mail forwarding
                                            loop") and both leak the list's internal address.
Disposition-Notification-To,     removed    Read-receipt requests: every member's client would
Return-Receipt-To,                          send a receipt (or prompt to) to the poster.
X-Confirm-Reading-To
Errors-To                        removed    Obsolete; some MTAs still send bounces there,
                                            which would send members' bounces to the poster
                                            instead of the list's bounce address.
===============================  =========  ==================================================

Kept on purpose:

* **From**, verbatim, display name included: members must see who wrote.
  No ``Sender`` is added (Outlook would show "list on behalf of poster").
* **Cc**, as is: the people named there got their copy directly from the
  poster's server, so the header is true; keeping it lets reply-all include
  them. Removing it would hide who else received the message, and it cannot
  cause duplicates (the list does not send to Cc addresses).
* **DKIM-Signature** (and ARC-*, Authentication-Results): changing To and
  Subject breaks a DKIM signature that covers them (nearly all do), but
  removing the signature does not help — a message from a domain with a DMARC
  ``p=reject`` policy fails either way, and a broken signature is treated like
  a missing one (RFC 6376 §6.1). Keeping it at least documents the origin.
* **Message-ID, Date, MIME-Version, Content-*** and every other header pass
  through unchanged, byte for byte.

No List-Unsubscribe is added: membership comes from the course roster, and a
member cannot leave the list by mail.

Known limits: a decoded Subject that itself contains literal encoded-word
syntax (``=?utf-8?q?x?=``) is decoded once more when the new Subject is set
(the stdlib parses values on assignment). A display-name run of non-ASCII words
longer than one encoded word (45 bytes) is written as adjacent encoded words,
which RFC 2047 readers (mail clients) join correctly; Python's own
``headerregistry`` reads a space in between.
"""

from __future__ import annotations

import copy
import datetime
import re
from email.headerregistry import Address
from email.message import EmailMessage

from ..common.addresses import list_id, owner_address, request_address
from .message import all_texts, fold_tokens, phrase_tokens, header_text
from .subject import new_subject

#: Headers removed by :func:`rewrite_headers` (besides every ``List-*``).
REMOVED_HEADERS = (
    "Return-Path",
    "Delivered-To",
    "X-Original-To",
    "Disposition-Notification-To",
    "Return-Receipt-To",
    "X-Confirm-Reading-To",
    "Errors-To",
    "Precedence",
)

LOOP_HEADER = "X-Listfilter-Loop"


# --------------------------------------------------------------------------
# The rewrite


def _set_single(msg: EmailMessage, name: str, value) -> None:
    """Set one header, keeping its position if it was there exactly once."""
    if len(msg.get_all(name, ())) == 1:
        msg.replace_header(name, value)
    else:
        del msg[name]
        msg[name] = value


def rewrite_headers(headers: EmailMessage, lst, now: datetime.datetime) -> EmailMessage:
    """A rewritten copy of ``headers`` (see the table in the module docstring).

    ``lst`` is the list's snapshot row (address, display_name, subject_tag, reply_to).
    ``now`` is aware and in the site's timezone; its date goes into the Subject.
    """
    msg = copy.deepcopy(headers)

    subject = new_subject(header_text(headers, "Subject"), lst.subject_tag, now.date())
    _set_single(msg, "Subject", subject)
    _set_single(msg, "To", Address(display_name=" ".join(lst.display_name.split()), addr_spec=lst.address))
    if lst.reply_to:
        _set_single(msg, "Reply-To", lst.reply_to)

    for name in {k.lower() for k in msg.keys() if k.lower().startswith("list-")}:
        del msg[name]
    for name in REMOVED_HEADERS:
        del msg[name]

    # Built by hand and stored pre-folded (set_raw): List-Id is a phrase plus
    # <list-id>, not an address header, and an unstructured header would
    # encode the phrase's quotes into encoded words.
    name = " ".join(lst.display_name.split())
    phrase = phrase_tokens(name)
    if phrase and name.isascii() and not phrase[0].startswith('"'):
        phrase = ['"' + name + '"']  # always quoted, as RFC 2919's examples
    folded = fold_tokens("List-Id", phrase + [f"<{list_id(lst.address)}>"], msg.policy.max_line_length or 998)
    msg.set_raw("List-Id", folded[len("List-Id: "):].rstrip("\n"))
    msg["List-Post"] = f"<mailto:{lst.address}>"
    msg["List-Help"] = f"<mailto:{request_address(lst.address)}?subject=help>"
    msg["List-Owner"] = f"<mailto:{owner_address(lst.address)}>"
    msg["Precedence"] = "list"
    msg[LOOP_HEADER] = lst.address
    return msg


_ANGLE = re.compile(r"<([^<>]*)>")


def is_loop(headers: EmailMessage, lst) -> bool:
    """True if the message already went through this list."""
    want_id = list_id(lst.address).casefold()
    for value in all_texts(headers, "List-Id"):
        ids = _ANGLE.findall(value) or [value]
        if any(i.strip().casefold() == want_id for i in ids):
            return True
    want_addr = lst.address.casefold()
    for value in all_texts(headers, LOOP_HEADER):
        for part in value.split(","):
            addr = part.strip().strip("<>").strip()
            if addr.casefold() == want_addr:
                return True
    return False
