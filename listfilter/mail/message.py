"""The message on the mail side: split, parse once, render; no I/O, standard library only.

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
3. :func:`listfilter.mail.headers.rewrite_headers` changes the headers on a copy.
4. :func:`render` folds the headers with the same policy and appends the
   original body.

A Unix ``From `` envelope line (pipe(8)'s ``F`` flag) is dropped: sendmail
must not receive one. Should the header block contain a line that is neither a
header nor a continuation line, the parser ends the headers there (as every
mail client would); :func:`render` then writes those lines back, unchanged,
at the start of the body rather than losing them.
"""

from __future__ import annotations

import base64
import re
from email import policy as _policy
from email.headerregistry import AddressHeader, UnstructuredHeader
from email.message import EmailMessage
from email.parser import BytesHeaderParser

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


def phrase_tokens(display_name: str) -> list[str]:
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


def fold_tokens(name: str, tokens: list[str], maxlen: int, linesep: str = "\n") -> str:
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
            phrase = phrase_tokens(addr.display_name)
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
            return fold_tokens(name, _unstructured_tokens(str(value)), maxlen, self.linesep)
        if isinstance(value, AddressHeader):
            tokens = _address_tokens(value)
            if tokens is not None:
                return fold_tokens(name, tokens, maxlen, self.linesep)
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


def all_texts(msg: EmailMessage, name: str) -> list[str]:
    out = []
    for value in msg.get_all(name) or ():
        out.append(" ".join(str(value).split()))
    return out
