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
X-Listfilter-Redirected-         removed    Only the staging valve (``redirect_all_to``) writes
Recipients                                  it, naming a post's real recipients; a poster's
                                            own would tell members a made-up story.
X-Listfilter-Approved            removed    Only sync's release of a held post writes it (the
                                            ``approved`` rule reads it first); it tells members
                                            nothing, and a poster's own decides nothing.
Date, Message-ID                 added      when the post has none (or an empty Message-ID):
                                            ``sendmail -G`` makes Postfix add neither, and the
                                            Message-ID is what traces the copies.
A second Date, Message-ID,       removed    RFC 5322 §3.6 allows one of each; the first is
Sender, Reply-To, Cc,                       what was checked and logged. (Two From fields are
In-Reply-To, References                     refused before the rewrite: see poster_of.)
===============================  =========  ==================================================

Kept on purpose:

* **From**, verbatim, display name included: members must see who wrote —
  unless the post needs the list's DMARC mitigation (below).
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
  through unchanged, byte for byte — except that a control character in a
  kept field (\\v, \\f, \\x1c–\\x1e, a bare CR, NUL …) becomes a space, so
  that no mail software can read it as a line break and find a header the
  poster smuggled in, and a line over 998 characters is folded.

No List-Unsubscribe is added to a roster list's post: membership comes from
the course roster, and a member cannot leave the list by mail. Each member's
copy of an opt-in list's post carries its own (:func:`unsubscribe_fields`):
RFC 2369 ``List-Unsubscribe: <mailto:LIST-leave@…?subject=leave>`` and, when
the admin app's ``[web] url`` is set, the member's one-click link
``<https://…/unsubscribe/TOKEN>`` with RFC 8058 ``List-Unsubscribe-Post:
List-Unsubscribe=One-Click`` (the token names the list and the member).

The DMARC mitigation
--------------------

A post From a domain whose DMARC policy is quarantine or reject fails DMARC
at every receiver once the list has changed it (its DKIM signature breaks,
and SPF passes for the list's domain, not the poster's). When
:func:`listfilter.mail.rules.dmarc_mitigation` says so, the list sends it
in its own name, as the list's ``dmarc`` setting says:

* ``munge`` (:func:`rewrite_headers` with ``munge``): ``From: Jane Doe via
  CS 199 Students <students@lists.example.edu>`` (a poster without a name:
  ``jane at example.org via …``), and the poster goes where replies need
  them: first in ``Reply-To`` (before any Reply-To of their own), or, when
  the list sets its own ``reply_to``, that stays and the poster is added to
  ``Cc``. Every other field is as above.
* ``wrap`` (:func:`wrap_message`): a new message with the same rewritten
  From, To, Subject, Reply-To, Cc, Date, Message-ID, threading and list
  headers, whose one part is the post exactly as it came
  (``message/rfc822``, shown inline), its own signature intact.

Known limits: a display-name run of non-ASCII words
longer than one encoded word (45 bytes) is written as adjacent encoded words,
which RFC 2047 readers (mail clients) join correctly; Python's own
``headerregistry`` reads a space in between.
"""

from __future__ import annotations

import datetime
import re
from email.headerregistry import Address
from email.utils import format_datetime

from ..common.addresses import list_id, owner_address, request_address, service_address
from ..common.snapshot import APPROVED_HEADER
from ..common.staging import REDIRECT_HEADER
from .message import Field, Headers, all_texts, fold_tokens, header_text, make_field, make_policy, phrase_tokens
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
    REDIRECT_HEADER,  # only the staging valve writes it: never the poster's
    APPROVED_HEADER,  # read by the approved rule, then gone
)
#: RFC 5322 allows one of each: the first is kept, any other is dropped.
SINGLE_HEADERS = ("Date", "Message-ID", "Sender", "In-Reply-To", "References", "Cc", "Reply-To")

LOOP_HEADER = "X-Listfilter-Loop"

#: RFC 5322 §2.1.1: no line longer than 998 characters.
MAX_LINE = 998
# bytes a kept field may not carry: line breaks to Python and to some mail
# software, but not to Postfix — every control but the tab, and the Unicode
# line breaks NEL, LS and PS in UTF-8
_SMUGGLED = re.compile(rb"[\x00-\x08\x0b-\x1f\x7f]|\xc2\x85|\xe2\x80[\xa8\xa9]")


# --------------------------------------------------------------------------
# The rewrite


def kept(field: Field) -> bytes:
    """A field the rewrite keeps: its bytes, with control characters as spaces
    and any line over 998 characters folded at its blanks (or cut into pieces)."""
    lines = [_SMUGGLED.sub(b" ", line) for line in field.raw.split(b"\n")[:-1]]
    # "Date : …" is a Date field to Postfix but not to every reader: write the name as one
    lines[0] = field.name.encode("ascii") + b":" + lines[0].split(b":", 1)[1]
    out = []
    for line in lines:
        while len(line) > MAX_LINE:
            cut = line.rfind(b" ", 1, MAX_LINE)
            if cut <= 0:
                cut = MAX_LINE - 1
            out.append(line[:cut])
            line = b" " + line[cut:].lstrip(b" ")
        out.append(line)
    return b"\n".join(out) + b"\n"


def list_id_field(lst) -> bytes:
    """``List-Id: "Display Name" <list.domain>``, built by hand: a phrase plus
    <list-id> is no address header, and as an unstructured header its quotes
    would be encoded."""
    name = " ".join(lst.display_name.split())
    phrase = phrase_tokens(name)
    if phrase and name.isascii() and not phrase[0].startswith('"'):
        phrase = ['"' + name + '"']  # always quoted, as RFC 2919's examples
    return fold_tokens("List-Id", phrase + [f"<{list_id(lst.address)}>"], 78).encode("ascii")


def rewrite_headers(headers: Headers, lst, now: datetime.datetime, *, message_id: str | None = None,
                    munge: tuple[str, str] | None = None) -> list[bytes]:
    """The header fields members receive (see the table in the module docstring), as raw bytes.

    ``lst`` is the list's snapshot row (address, display_name, subject_tag,
    title_case_subject, reply_to). ``now`` is aware and in the site's timezone: its date goes into
    the Subject, and it is the Date of a post that has none. ``message_id``
    is given to a post that has none (or only an empty one). ``munge`` is the
    poster's (display name, address) when From must become the list's (the
    DMARC mitigation, in the module docstring).
    """
    policy = make_policy()
    subject = new_subject(header_text(headers, "Subject"), lst.subject_tag, now.date(), title=lst.title_case_subject)
    replaced = {
        "subject": make_field("Subject", subject, policy),
        "to": make_field("To", Address(display_name=" ".join(lst.display_name.split()), addr_spec=lst.address),
                         policy),
    }
    if lst.reply_to:
        replaced["reply-to"] = make_field("Reply-To", lst.reply_to, policy)
    if message_id:
        replaced["message-id"] = make_field("Message-ID", message_id, policy)
    if munge is not None:
        replaced.update(_munged(headers, lst, *munge))
    removed = {n.lower() for n in REMOVED_HEADERS}
    single = {n.lower() for n in SINGLE_HEADERS}
    out: list[bytes] = []
    seen: set[str] = set()
    for field in headers.fields:
        key = field.name.lower()
        if key.startswith("list-") or key in removed:
            continue
        if key in replaced:
            if key not in seen:
                out.append(replaced[key])  # where the poster's was
        elif key not in single or key not in seen:
            out.append(kept(field))
        seen.add(key)
    out += [replaced[key] for key in replaced if key not in seen]
    if "date" not in seen:
        # sendmail -G: Postfix adds no Date to a relayed submission
        out.append(make_field("Date", format_datetime(now), policy))
    out += [
        list_id_field(lst),
        make_field("List-Post", f"<mailto:{lst.address}>", policy),
        make_field("List-Help", f"<mailto:{request_address(lst.address)}?subject=help>", policy),
        make_field("List-Owner", f"<mailto:{owner_address(lst.address)}>", policy),
        make_field("Precedence", "list", policy),
        make_field(LOOP_HEADER, lst.address, policy),
    ]
    return out


def unsubscribe_fields(lst, token: str | None = None) -> list[bytes]:
    """The List-Unsubscribe of one member's copy of an opt-in list's post (RFC 2369): mailto the list's
    -leave address, and with ``token`` (the member's, :mod:`listfilter.common.tokens`) and the list's
    ``unsubscribe_url`` also the one-click link, announced by RFC 8058's List-Unsubscribe-Post."""
    policy = make_policy()
    targets = [f"<mailto:{service_address(lst.address, 'leave')}?subject=leave>"]
    if token and lst.unsubscribe_url:
        targets.append(f"<{lst.unsubscribe_url}/{token}>")
    out = [make_field("List-Unsubscribe", ", ".join(targets), policy)]
    if len(targets) > 1:
        out.append(make_field("List-Unsubscribe-Post", "List-Unsubscribe=One-Click", policy))
    return out


def munged_from(name: str, address: str, lst) -> Address:
    """``Jane Doe via CS 199 Students <students@lists.example.edu>``: the list's address, the poster's
    name (or address, its @ written as "at", so that no client takes the name for another address)."""
    who = " ".join((name or address).replace("@", " at ").split())
    return Address(display_name=f"{who} via {' '.join(lst.display_name.split())}", addr_spec=lst.address)


def _munged(headers: Headers, lst, name: str, address: str) -> dict[str, bytes]:
    """The From, and the Reply-To or Cc that keep the poster, of a munged post."""
    try:
        poster = Address(display_name=name or "", addr_spec=address)
    except Exception:  # an address the parser reads but will not rebuild (an EAI local part, say)
        local, _, domain = address.rpartition("@")
        poster = Address(display_name=name or "", username=local, domain=domain)
    out = {"from": make_field("From", munged_from(name, address, lst))}
    if lst.reply_to:  # the list's Reply-To stands (replaced above); the poster joins the Cc
        out["cc"] = _address_field("Cc", _addresses(headers, "Cc") + [poster])
    else:
        out["reply-to"] = _address_field("Reply-To", [poster] + _addresses(headers, "Reply-To"))
    return out


def _addresses(headers: Headers, name: str) -> list[Address]:
    """The mailboxes of the first ``name`` field (the one kept), or none if it cannot be read: the poster,
    whom the field then becomes, is what replies need."""
    values = headers.raw_all(name)
    header = headers.address_header(name, values[0]) if values else None
    if header is None or any(not a.username or not a.domain for a in header.addresses):
        return []
    return list(header.addresses)


def _address_field(name: str, addresses: list[Address]) -> bytes:
    """One address field, each mailbox once (the first spelling kept)."""
    seen: set[str] = set()
    unique = []
    for addr in addresses:
        if addr.addr_spec.lower() not in seen:
            seen.add(addr.addr_spec.lower())
            unique.append(addr)
    try:
        return make_field(name, unique)
    except Exception:  # an EAI address cannot be encoded: written as UTF-8, as it came (RFC 6532)
        return make_policy().clone(utf8=True).fold_binary(name, make_policy().header_factory(name, unique))


#: The header fields of a wrapped post's outer message (with every ``List-*`` the list adds): what clients
#: show and thread by. The rest (Received, DKIM-Signature, Content-*, X-*) stays in the post inside.
WRAP_FIELDS = ("from", "to", "cc", "reply-to", "subject", "date", "message-id", "in-reply-to", "references",
               "precedence", LOOP_HEADER.lower())


def wrap_message(headers: Headers, body: bytes, lst, now: datetime.datetime, *, poster: tuple[str, str],
                 message_id: str | None = None) -> tuple[list[bytes], bytes]:
    """The ``wrap`` mitigation: (header fields, body) of a message From the list whose one part is the post.

    The outer fields are those of the munged rewrite (:data:`WRAP_FIELDS`), plus its MIME fields; the
    part is ``message/rfc822``, the post's header fields and body byte for byte as they came (bar a Unix
    ``From`` line), so that its own DKIM signature still verifies. The fields it adds are header objects
    of the standard library's ``email`` package (:func:`make_field`, with :func:`make_policy`'s policy);
    only the multipart's boundary lines (RFC 2046 §5.1.1) are written here. The package's generator would write the same
    (its message/rfc822 case keeps a str payload as it is), but importing it (with ``copy`` and
    ``random``) costs a post about 1 ms more than everything else the mitigation does.
    """
    import os

    fields = rewrite_headers(headers, lst, now, message_id=message_id, munge=poster)
    outer = [f for f in fields if (n := f.split(b":", 1)[0].decode("ascii").lower()) in WRAP_FIELDS
             or n.startswith("list-")]
    original = b"".join(f.raw for f in headers.fields) + b"\n" + body
    boundary = "=_listfilter_" + os.urandom(12).hex()  # "=_" never comes out of quoted-printable
    while b"--" + boundary.encode("ascii") in original:
        boundary = "=_listfilter_" + os.urandom(12).hex()
    # RFC 2046 §5.2.1: a message/rfc822 part is 7bit, 8bit or binary, and so is the multipart around it
    eightbit = re.search(rb"[\x80-\xff]", original) is not None
    cte = [make_field("Content-Transfer-Encoding", "8bit")] if eightbit else []
    outer += [make_field("MIME-Version", "1.0"),
              make_field("Content-Type", f'multipart/mixed; boundary="{boundary}"'), *cte]
    part = [make_field("Content-Type", "message/rfc822"), make_field("Content-Disposition", "inline"), *cte]
    delimiter = b"--" + boundary.encode("ascii")
    return outer, b"".join([delimiter, b"\n", *part, b"\n", original, b"\n", delimiter, b"--\n"])


_ANGLE = re.compile(r"<([^<>]*)>")


def is_loop(headers: Headers, lst) -> bool:
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
