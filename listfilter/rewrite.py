"""Header rewriting for list mail: pure functions, no I/O, standard library only.

``listfilter deliver`` is spawned by Postfix's pipe(8) once per message, so
this module imports nothing outside the standard library.

How a message goes through
--------------------------

1. :func:`split_message` cuts the raw bytes at the first empty line into the
   header block and the body. The body is **never** parsed or re-serialised:
   whatever it holds (8-bit text, binary, base64 attachments, broken MIME) is
   written back byte for byte after the rewritten headers.
2. :func:`parse_headers` parses only the header block with
   ``BytesHeaderParser`` and :func:`make_policy`: ``email.policy.default``
   with ``linesep`` set to the input's line ending (pipe(8) hands us LF, and
   sendmail takes LF; a CRLF input comes out CRLF) and ``refold_source="none"``
   so that every header we do not touch is written back exactly as received
   (folding included; raw 8-bit bytes included). The policy is a small
   subclass, :class:`ListfilterPolicy`, that folds the headers *we* set
   with its own RFC 2047 encoder, because Python 3.11's folder glues words
   together in long non-ASCII subjects and drops the quotes of long display
   names containing commas (one address becomes two).
3. :func:`rewrite_headers` changes the headers (table below) on a copy.
4. :func:`render` folds the headers with the same policy and appends the
   original body. :func:`rewrite` does all four steps.

A Unix ``From `` envelope line (pipe(8)'s ``F`` flag) is dropped: sendmail
must not receive one. Should the header block contain a line that is neither a
header nor a continuation line, the parser ends the headers there (as every
mail client would); :func:`render` then writes those lines back, unchanged,
at the start of the body rather than losing them.

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

import base64
import copy
import datetime
import re
from collections import namedtuple
from email import policy as _policy
from email.headerregistry import Address, AddressHeader, UnstructuredHeader
from email.message import EmailMessage
from email.parser import BytesHeaderParser

__all__ = [
    "ListInfo",
    "split_message",
    "parse_headers",
    "title_case",
    "new_subject",
    "rewrite_headers",
    "is_loop",
    "render",
    "rewrite",
    "header_text",
    "make_policy",
    "ListfilterPolicy",
    "REMOVED_HEADERS",
]

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


_ListFields = namedtuple("_ListFields", "address display_name subject_tag reply_to description",
                         defaults=(None, ""))


class ListInfo(_ListFields):
    """What the rewrite needs to know about one list, at one domain.

    ``address`` ("students@lists.example.edu", lower-case), ``display_name``
    and ``subject_tag`` ("CS 199 Students"), ``reply_to`` (an address, or None
    to keep the poster's) and ``description``. A namedtuple, not a dataclass:
    this module is on the per-message path, and dataclasses costs 7 ms to import.
    """

    __slots__ = ()

    def __new__(cls, *args, **kwargs):
        self = super().__new__(cls, *args, **kwargs)
        local, at, domain = self.address.rpartition("@")
        if not at or not local or not domain:
            raise ValueError(f"list address without local part or domain: {self.address!r}")
        return self

    @property
    def local_part(self) -> str:
        return self.address.rpartition("@")[0]

    @property
    def domain(self) -> str:
        return self.address.rpartition("@")[2]

    @property
    def list_id(self) -> str:
        """RFC 2919 list identifier: ``students.lists.example.edu``."""
        return f"{self.local_part}.{self.domain}"

    @property
    def owner_address(self) -> str:
        return f"{self.local_part}-owner@{self.domain}"

    @property
    def request_address(self) -> str:
        return f"{self.local_part}-request@{self.domain}"

    @property
    def bounces_address(self) -> str:
        return f"{self.local_part}-bounces@{self.domain}"


# --------------------------------------------------------------------------
# Splitting, parsing, rendering

_BLANK_LINE = re.compile(rb"\n\r?\n")


def split_message(raw: bytes) -> tuple[bytes, bytes]:
    """Split at the first empty line: ``(header block, body)``.

    The header block keeps the line ending of its last line; the empty line
    itself belongs to neither part; the body is returned exactly as it is in
    ``raw``. A message without an empty line is all headers, with body ``b""``.
    """
    if raw.startswith(b"\n"):
        return b"", raw[1:]
    if raw.startswith(b"\r\n"):
        return b"", raw[2:]
    m = _BLANK_LINE.search(raw)
    if m is None:
        return raw, b""
    return raw[: m.start() + 1], raw[m.end():]


def _linesep_of(header_bytes: bytes) -> str:
    nl = header_bytes.find(b"\n")
    return "\r\n" if nl > 0 and header_bytes[nl - 1:nl] == b"\r" else "\n"


# --------------------------------------------------------------------------
# Folding the headers we write ourselves
#
# Python 3.11's header folder has bugs that bite exactly here: folding a
# non-ASCII Subject can glue words together or double a space
# ("Übung für" -> "Übungfür"), and folding a long display name containing a
# comma can drop its quotes, turning one address into two. So the headers we
# set (header objects, never the untouched source headers) are folded by the
# small encoder below instead: ASCII words stay readable, every run of
# non-ASCII words becomes RFC 2047 "B" encoded words of at most 75
# characters, and lines are broken only at the spaces between tokens. What a
# reader decodes is exactly the value that was set.

_ATEXT = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789!#$%&'*+-/=?^_`{|}~")
_EW_BYTES = 45  # 45 bytes -> 60 base64 chars -> 72 with "=?utf-8?b?" and "?="


def _needs_encoding(word: str) -> bool:
    return not word.isascii() or ("=?" in word and "?=" in word) or not word.isprintable()


def _encoded_words(text: str) -> list[str]:
    """``text`` as "=?utf-8?b?...?=" words, never splitting a character."""
    out, chunk, size = [], [], 0
    for ch in text:
        n = len(ch.encode("utf-8", "surrogatepass"))
        if chunk and size + n > _EW_BYTES:
            out.append("".join(chunk))
            chunk, size = [], 0
        chunk.append(ch)
        size += n
    if chunk:
        out.append("".join(chunk))
    return ["=?utf-8?b?" + base64.b64encode(c.encode("utf-8", "replace")).decode("ascii") + "?="
            for c in out]


def _unstructured_tokens(text: str) -> list[str]:
    """Unstructured text as foldable tokens (whitespace runs become one space)."""
    tokens: list[str] = []
    run: list[str] = []
    for word in text.split():
        if _needs_encoding(word):
            run.append(word)
            continue
        if run:
            tokens += _encoded_words(" ".join(run))
            run = []
        tokens.append(word)
    if run:
        tokens += _encoded_words(" ".join(run))
    return tokens


def _phrase_tokens(display_name: str) -> list[str]:
    """An RFC 5322 phrase (display name) as foldable tokens.

    ASCII names are atoms or one quoted-string. In a name with non-ASCII
    characters, atext words stay plain and every run of other words becomes
    encoded words. (A run longer than one encoded word is split into adjacent
    encoded words, which RFC 2047 §6.2 readers join without a space; Python's
    own ``headerregistry`` wrongly inserts one there.)
    """
    name = " ".join(display_name.split())
    if not name:
        return []
    if name.isascii() and "=?" not in name and name.isprintable():
        if all(c in _ATEXT or c == " " for c in name):
            return name.split()
        return ['"' + name.replace("\\", "\\\\").replace('"', '\\"') + '"']
    tokens: list[str] = []
    run: list[str] = []
    for word in name.split():
        if all(c in _ATEXT for c in word) and "=?" not in word:
            if run:
                tokens += _encoded_words(" ".join(run))
                run = []
            tokens.append(word)
        else:
            run.append(word)
    if run:
        tokens += _encoded_words(" ".join(run))
    return tokens


def _fold_tokens(name: str, tokens: list[str], maxlen: int, linesep: str = "\n") -> str:
    """``Name: tok tok`` folded before a token where a line would pass ``maxlen``."""
    lines = [name + ":"]
    for tok in tokens:
        if len(lines[-1]) + 1 + len(tok) > maxlen and lines[-1] != name + ":":
            lines.append(" " + tok)
        else:
            lines[-1] += " " + tok
    if not tokens:
        lines[-1] += " "
    return linesep.join(lines) + linesep


def _address_tokens(header: AddressHeader) -> list[str] | None:
    tokens: list[str] = []
    for group in header.groups:
        if group.display_name is not None:
            return None  # named groups: not written by listfilter
        for addr in group.addresses:
            if not addr.addr_spec.isascii():
                return None  # EAI address: cannot be encoded, leave to the stdlib
            phrase = _phrase_tokens(addr.display_name)
            item = phrase + [f"<{addr.addr_spec}>"] if phrase else [addr.addr_spec]
            if tokens:
                tokens[-1] += ","
            tokens += item
    return tokens


class ListfilterPolicy(_policy.EmailPolicy):
    """``email.policy.default``, except that unstructured and address headers
    *set by us* are folded by the encoder above (see the comment there).
    Source headers from the parser are plain strings and, with
    ``refold_source="none"``, are written back as received."""

    def _own_fold(self, name, value) -> str | None:
        if self.utf8 or not hasattr(value, "name"):
            return None
        maxlen = self.max_line_length or 998
        if isinstance(value, UnstructuredHeader):
            return _fold_tokens(name, _unstructured_tokens(str(value)), maxlen, self.linesep)
        if isinstance(value, AddressHeader):
            tokens = _address_tokens(value)
            if tokens is not None:
                return _fold_tokens(name, tokens, maxlen, self.linesep)
        return None

    def fold(self, name, value):
        folded = self._own_fold(name, value)
        return super().fold(name, value) if folded is None else folded

    def fold_binary(self, name, value):
        folded = self._own_fold(name, value)
        return super().fold_binary(name, value) if folded is None else folded.encode("ascii")


def make_policy(linesep: str = "\n") -> ListfilterPolicy:
    """The policy used throughout: ``email.policy.default`` that writes
    untouched headers back exactly as received, with the given line ending,
    and folds the headers we set correctly (:class:`ListfilterPolicy`)."""
    return ListfilterPolicy(linesep=linesep, refold_source="none")


def parse_headers(header_bytes: bytes) -> EmailMessage:
    """Parse a header block; the message's policy carries the input's line ending."""
    pol = make_policy(_linesep_of(header_bytes))
    return BytesHeaderParser(policy=pol).parsebytes(header_bytes)


def render(headers: EmailMessage, body: bytes, linesep: str | None = None) -> bytes:
    """Headers (folded by their policy), an empty line, then ``body`` untouched.

    ``linesep`` defaults to the headers' policy (the input's line ending). Lines
    of the header block that the parser did not accept as headers (it keeps
    them as the "payload" of the header-only message) are written back,
    unchanged, at the start of the body.
    """
    pol = headers.policy
    if linesep is not None and linesep != pol.linesep:
        pol = pol.clone(linesep=linesep)
    sep = pol.linesep.encode("ascii")
    out = [pol.fold_binary(name, value) for name, value in headers.raw_items()]
    out.append(sep)
    leftover = headers.get_payload()
    if isinstance(leftover, str) and leftover:
        out.append(leftover.encode("ascii", "surrogateescape"))
        if body:
            out.append(sep)
    out.append(body)
    return b"".join(out)


def rewrite(raw: bytes, lst: ListInfo, now: datetime.datetime) -> bytes:
    """Split, parse, rewrite and join again with the original body."""
    header_bytes, body = split_message(raw)
    return render(rewrite_headers(parse_headers(header_bytes), lst, now), body)


# --------------------------------------------------------------------------
# Reading header values


def header_text(msg: EmailMessage, name: str) -> str | None:
    """The first ``name`` header, decoded (RFC 2047 and raw UTF-8) to one line
    with whitespace collapsed; None if absent."""
    try:
        value = msg.get(name)
    except Exception:  # a header the registry cannot parse: fall back to raw
        value = next((v for k, v in msg.raw_items() if k.lower() == name.lower()), None)
        if value is not None:
            value = str(value).encode("utf-8", "surrogateescape").decode("utf-8", "replace")
    if value is None:
        return None
    return " ".join(str(value).split())


def _all_texts(msg: EmailMessage, name: str) -> list[str]:
    out = []
    for value in msg.get_all(name) or ():
        out.append(" ".join(str(value).split()))
    return out


# --------------------------------------------------------------------------
# Subjects

#: Words that stay lower-case in a title (except first, or first after a colon).
SMALL_WORDS = frozenset(
    "a an and as at but by en for if in nor of off on or per so the to up v via vs yet".split()
)

_KEEP_AS_IS = re.compile(r"[@/\\_=]|://|\w\.\w", re.UNICODE)


def _cap_part(part: str, first: bool) -> str:
    """Capitalise one hyphen-free piece of a word (which has no upper-case)."""
    i = 0
    while i < len(part) and not part[i].isalnum():
        i += 1
    j = len(part)
    while j > i and not part[j - 1].isalnum():
        j -= 1
    core = part[i:j]
    if not core or not core[0].isalpha():
        return part
    if not first and core.lower() in SMALL_WORDS:
        return part
    return part[:i] + core[0].title() + core[1:] + part[j:]


def _title_word(word: str, first: bool) -> str:
    if _KEEP_AS_IS.search(word):
        return word  # addresses, URLs, paths, file.names, e.g.
    if any(c.isupper() for c in word):
        # Already capitalised/all-caps/mixed: keep, except a plain
        # "Capitalised" small word in mid-title ("Notes On The Exam").
        core = word.strip("\"'()[]{}<>,;:.!?«»“”‘’")
        if (not first and len(core) > 1 and core.lower() in SMALL_WORDS
                and core[0].isupper() and core[1:].islower()):
            return word.replace(core, core.lower(), 1)
        return word
    parts = word.split("-")
    return "-".join(_cap_part(p, first and n == 0) for n, p in enumerate(parts))


def title_case(s: str) -> str:
    """Title Case: small words lower-case (but the first word, and the first
    after a colon), all-caps and mixed-case words (CS, iPhone, HW3) unchanged,
    hyphenated words per part, URLs/addresses/file names untouched.

    Whitespace is collapsed to single spaces.
    """
    out = []
    first = True
    for word in s.split():
        out.append(_title_word(word, first))
        if any(c.isalnum() for c in word):
            first = False
        if word.endswith(":"):
            first = True
    return " ".join(out)


_REPLY_PREFIXES = ("re", "aw", "sv", "antw", "odp")
_FORWARD_PREFIXES = ("fwd", "fw", "wg")
_PREFIX = re.compile(
    r"\s*(?P<p>" + "|".join(_REPLY_PREFIXES + _FORWARD_PREFIXES) + r")"
    r"\s*(?:\[\d+\]|\(\d+\)|\^\d+)?\s*:\s*",
    re.IGNORECASE,
)
_DATE_AFTER_TAG = r"(?:\s*\d{4}-\d{2}-\d{2}\s*:?)?\s*"


def _tag_pattern(tag: str) -> re.Pattern[str]:
    words = tag.split()
    return re.compile(r"\s*\[\s*" + r"\s+".join(map(re.escape, words)) + r"\s*\]" + _DATE_AFTER_TAG,
                      re.IGNORECASE)


def new_subject(old: str | None, tag: str, day: datetime.date) -> str:
    """``[Tag] YYYY-MM-DD: Title Case Subject``.

    A leading run of reply/forward prefixes (Re:, RE:, AW:, Fwd:, FW:, Re[2]:
    ...) mixed with this list's ``[Tag]`` (and the date that follows it)
    collapses to one prefix — ``Re:`` if any was a reply, else ``Fwd:`` — after
    the new tag and date.
    """
    text = " ".join((old or "").split())
    tag = " ".join(tag.split())
    tag_re = _tag_pattern(tag) if tag else None
    reply = forward = False
    while True:
        m = _PREFIX.match(text)
        if m:
            if m.group("p").lower() in _REPLY_PREFIXES:
                reply = True
            else:
                forward = True
            text = text[m.end():]
            continue
        m = tag_re.match(text) if tag_re else None
        if m and m.end() > 0:
            text = text[m.end():]
            continue
        break
    text = text.strip()
    head = f"[{tag}] {day.isoformat()}:" if tag else f"{day.isoformat()}:"
    if not text and not (reply or forward):
        return f"{head} (no subject)"
    prefix = "Re: " if reply else "Fwd: " if forward else ""
    return f"{head} {prefix}{title_case(text) if text else '(no subject)'}"


# --------------------------------------------------------------------------
# The rewrite


def _set_single(msg: EmailMessage, name: str, value) -> None:
    """Set one header, keeping its position if it was there exactly once."""
    if len(msg.get_all(name, ())) == 1:
        msg.replace_header(name, value)
    else:
        del msg[name]
        msg[name] = value


def rewrite_headers(headers: EmailMessage, lst: ListInfo, now: datetime.datetime) -> EmailMessage:
    """A rewritten copy of ``headers`` (see the table in the module docstring).

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
    phrase = _phrase_tokens(name)
    if phrase and name.isascii() and not phrase[0].startswith('"'):
        phrase = ['"' + name + '"']  # always quoted, as RFC 2919's examples
    list_id = _fold_tokens("List-Id", phrase + [f"<{lst.list_id}>"], msg.policy.max_line_length or 998)
    msg.set_raw("List-Id", list_id[len("List-Id: "):].rstrip("\n"))
    msg["List-Post"] = f"<mailto:{lst.address}>"
    msg["List-Help"] = f"<mailto:{lst.request_address}?subject=help>"
    msg["List-Owner"] = f"<mailto:{lst.owner_address}>"
    msg["Precedence"] = "list"
    msg[LOOP_HEADER] = lst.address
    return msg


_ANGLE = re.compile(r"<([^<>]*)>")


def is_loop(headers: EmailMessage, lst: ListInfo) -> bool:
    """True if the message already went through this list."""
    want_id = lst.list_id.casefold()
    for value in _all_texts(headers, "List-Id"):
        ids = _ANGLE.findall(value) or [value]
        if any(i.strip().casefold() == want_id for i in ids):
            return True
    want_addr = lst.address.casefold()
    for value in _all_texts(headers, LOOP_HEADER):
        for part in value.split(","):
            addr = part.strip().strip("<>").strip()
            if addr.casefold() == want_addr:
                return True
    return False
