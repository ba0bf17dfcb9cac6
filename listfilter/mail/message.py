"""The message on the mail side: split the way Postfix does, read values safely, render.

No I/O, standard library only.

How a message goes through
--------------------------

1. :func:`split_message` cuts the raw bytes into header fields and the body
   **the way Postfix does** (cleanup(8), is_header()): a line ends at LF and
   nowhere else (a CR before it belongs to the line ending); a field starts
   with a name of printable ASCII and a colon; a line starting with a space or
   a tab continues it; the first empty line ends the headers, and so does the
   first line that is neither (it then starts the body). Python's
   ``str.splitlines`` would also break at \v, \f, \x1c–\x1e and a bare CR —
   so a poster could smuggle a Bcc or a second From past a parser that a
   member's software splits differently. Here one field is one field, as
   Postfix and the members see it.
2. :class:`Headers` gives the fields' values as text: unfolded, raw 8-bit bytes
   decoded as mail clients do (UTF-8 first, then the legacy Windows-1252,
   then Latin-1), every control character a space, RFC 2047 encoded words
   decoded, and cut to a bounded length before the standard library's parser
   sees them (its cost grows far faster than the input). :func:`poster_of`
   decides who the From header names, or why it names nobody for sure.
3. :func:`listfilter.mail.headers.rewrite_headers` builds the new header
   fields: untouched fields are written back byte for byte (bar the control
   characters above, which become spaces, and folding of a line over 998
   characters); the fields listfilter sets are folded by
   :class:`ListfilterPolicy`'s own RFC 2047 encoder.
4. :func:`render` joins the fields, an empty line and the body, which is
   **never** parsed or re-serialised: whatever it holds (8-bit text, binary,
   broken MIME) goes out byte for byte.

A Unix ``From `` envelope line (pipe(8)'s ``F`` flag) is dropped: sendmail
must not receive one. Everything goes out with LF line endings, which is
what sendmail takes (Postfix's own input is LF).
"""

from __future__ import annotations

import base64
import re
from collections import namedtuple
from email import policy as _policy
from email.headerregistry import AddressHeader, UnstructuredHeader

from ..common.events import decode_bytes

# --------------------------------------------------------------------------
# Splitting the way Postfix does

#: One header field: its name as written, and its raw bytes (every line, LF-terminated).
Field = namedtuple("Field", "name raw")

# Postfix's is_header(): printable ASCII but ':' for the name, optional blanks, then ':'
_FIELD_NAME = re.compile(rb"([\x21-\x39\x3b-\x7e]+)[ \t]*:")


def split_message(raw: bytes) -> tuple[list[Field], bytes]:
    """(header fields, body). The body is returned exactly as it is in ``raw``."""
    fields: list[Field] = []
    lines: list[bytes] = []
    name = None
    pos = 0
    if raw.startswith(b"From "):  # a Unix envelope line, not a header
        nl = raw.find(b"\n")
        pos = len(raw) if nl < 0 else nl + 1
    while pos < len(raw):
        nl = raw.find(b"\n", pos)
        end = len(raw) if nl < 0 else nl + 1
        line = raw[pos:end].removesuffix(b"\n").removesuffix(b"\r")
        if not line:  # the empty line: the body follows it
            pos = end
            break
        if line[:1] in (b" ", b"\t") and name is not None:
            lines.append(line + b"\n")
        else:
            m = _FIELD_NAME.match(line)
            if m is None:
                break  # not a header: the body starts here
            if name is not None:
                fields.append(Field(name, b"".join(lines)))
            name, lines = m.group(1).decode("ascii"), [line + b"\n"]
        pos = end
    if name is not None:
        fields.append(Field(name, b"".join(lines)))
    return fields, raw[pos:]


def render(fields: list[bytes], body: bytes) -> bytes:
    """Header fields (raw bytes, LF-terminated), the empty line, the body untouched."""
    return b"".join(fields) + b"\n" + body


# --------------------------------------------------------------------------
# Reading values

#: Values are cut to this many characters before a parser sees them: a Subject
#: or a From longer than this is not one a person wrote.
VALUE_LIMIT = 4000
_CONTROLS = re.compile(r"[\x00-\x08\x0a-\x1f\x7f\x85\u2028\u2029]")


def field_text(field: Field) -> str:
    """A field's value on one line: unfolded, decoded, control characters as spaces (no RFC 2047)."""
    value = field.raw.split(b":", 1)[1] if b":" in field.raw else b""
    return _CONTROLS.sub(" ", decode_bytes(value.replace(b"\n", b""))).strip()


class Headers:
    """The header fields of one message, read the way Postfix and the members see them."""

    def __init__(self, fields: list[Field]):
        self.fields = fields
        self.policy = make_policy()

    def names(self) -> list[str]:
        return [f.name for f in self.fields]

    def count(self, name: str) -> int:
        key = name.lower()
        return sum(1 for f in self.fields if f.name.lower() == key)

    def __contains__(self, name: str) -> bool:
        return self.count(name) > 0

    def raw_all(self, name: str) -> list[str]:
        """Every ``name`` field's text, RFC 2047 words left encoded."""
        key = name.lower()
        return [field_text(f) for f in self.fields if f.name.lower() == key]

    def get_all(self, name: str) -> list[str]:
        """Every ``name`` field's text, RFC 2047 words decoded."""
        return [self.decoded(name, t) for t in self.raw_all(name)]

    def get(self, name: str, default: str | None = None) -> str | None:
        values = self.raw_all(name)
        return self.decoded(name, values[0]) if values else default

    def decoded(self, name: str, text: str) -> str:
        """``text`` with its encoded words decoded (an unstructured reading of any field)."""
        text = text[:VALUE_LIMIT]
        if "=?" not in text:
            return " ".join(text.split())
        try:
            value = str(self.policy.header_factory("X-Text", text))
        except Exception:  # a value the parser cannot read stays as it came
            value = text
        return " ".join(_CONTROLS.sub(" ", value).split())

    def address_header(self, name: str, text: str):
        """``text`` parsed as an address header (None when the parser gives up)."""
        try:
            return self.policy.header_factory(name, text[:VALUE_LIMIT])
        except Exception:
            return None

    def _content_type(self):
        values = self.raw_all("Content-Type")
        if len(values) != 1:
            return None
        try:
            return self.policy.header_factory("Content-Type", values[0][:VALUE_LIMIT])
        except Exception:
            return None

    def get_content_maintype(self) -> str:
        """As RFC 2045 says: text when there is no (readable) Content-Type."""
        ct = self._content_type()
        return ct.maintype if ct is not None and not ct.defects else "text"

    def get_content_charset(self) -> str | None:
        ct = self._content_type()
        return (ct.params.get("charset") or None) if ct is not None else None


def parse_headers(header_bytes: bytes) -> Headers:
    """The fields of a header block (as from :func:`split_message`, or a block on its own)."""
    fields, _ = split_message(header_bytes.rstrip(b"\r\n") + b"\n\n")
    return Headers(fields)


def header_text(headers: Headers, name: str) -> str | None:
    """The first ``name`` field, decoded to one line with whitespace collapsed; None if absent."""
    return headers.get(name)


def all_texts(headers: Headers, name: str) -> list[str]:
    return headers.get_all(name)


# --------------------------------------------------------------------------
# Who the From header names

#: Who the From header names: display name and address, or why it names nobody for sure.
Poster = namedtuple("Poster", "name address problem")

_QUOTED = re.compile(r'"(?:[^"\\]|\\.)*"')


def _strip_comments(text: str) -> str | None:
    """``text`` without RFC 5322 comments (nested ones too), quoted strings left alone."""
    out, depth, quoted, escaped = [], 0, False, False
    for ch in text:
        if escaped:
            escaped = False
            if not depth:
                out.append(ch)
            continue
        if ch == "\\":
            escaped = True
            if not depth:
                out.append(ch)
        elif ch == '"' and not depth:
            quoted = not quoted
            out.append(ch)
        elif ch == "(" and not quoted:
            depth += 1
        elif ch == ")" and not quoted and depth:
            depth -= 1
        elif not depth:
            out.append(ch)
    if depth or quoted:
        return None  # an unterminated comment or quoted string: readers disagree on what follows
    return "".join(out)


def poster_of(headers: Headers) -> Poster:
    """The one mailbox the From header names, as mail clients show it.

    A message must have one From field naming one mailbox (RFC 5322 §3.6.2);
    the address is the angle-addr a client shows, so a display name that looks
    like an address (``instructor@example.edu <someone@else>``) is judged by
    ``someone@else`` — and where the standard library's parser and the
    angle-addr disagree, the From is ambiguous and names nobody. Groups,
    several mailboxes and a second From field name nobody either.
    """
    values = headers.raw_all("From")
    if not values:
        return Poster("", None, "the message has no From header")
    if len(values) > 1:
        return Poster("", None, f"the message has {len(values)} From headers")
    if headers.count("Sender") > 1:
        return Poster("", None, f"the message has {headers.count('Sender')} Sender headers")
    text = values[0]
    if len(text) > VALUE_LIMIT:
        return Poster("", None, "the From header is too long to be read")
    header = headers.address_header("From", text)
    if header is None:
        return Poster("", None, "the From header cannot be read")
    if any(g.display_name is not None for g in header.groups):
        return Poster("", None, "the From header names a group, not a mailbox")
    if len(header.addresses) != 1:
        return Poster("", None, f"the From header names {len(header.addresses)} addresses, not one")
    addr = header.addresses[0]
    if not addr.username or not addr.domain or " " in addr.addr_spec:
        return Poster("", None, "the From header has no valid address")
    stripped = _strip_comments(text)
    if stripped is None:
        return Poster("", None, "the From header is ambiguous: an unterminated comment or quoted string")
    bare = _QUOTED.sub('""', stripped)
    # another address beside the mailbox (trailing text, a folded "From:"): which one would a client show?
    outside = re.sub(r"<[^<>]*>", " ", bare).split()
    if any("@" in w and w.strip(",;").lower() != addr.addr_spec.lower() for w in outside):
        return Poster("", None, "the From header is ambiguous: it shows more than one address")
    angles = re.findall(r"<([^<>]*)>", bare)
    if len(angles) > 1 or (not angles and ("<" in bare or ">" in bare)):
        return Poster("", None, "the From header is ambiguous")
    if angles and angles[0].strip().lower() != addr.addr_spec.lower():
        return Poster("", None, f"the From header is ambiguous: it shows <{angles[0].strip()}>")
    if angles and bare.rsplit(">", 1)[1].strip(" \t,;"):
        # text after the mailbox (a control character turned to a space, or plain junk):
        # not one mailbox, and a reader may take it for something else
        return Poster("", None, "the From header has text after its address")
    return Poster(addr.display_name, addr.addr_spec, "")


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


#: A word longer than this is written as encoded words, so no line passes RFC 5322's 998.
_LONG_WORD = 76
#: The same for a display name: a readable quoted-string (escapes and all) or word up to
#: this long still fits a 998-character line, and encoded words would cost the reader a
#: space (Python's ``headerregistry`` puts one between adjacent encoded words in a phrase).
_LONG_PHRASE = 480


def _needs_encoding(word: str) -> bool:
    return (not word.isascii() or ("=?" in word and "?=" in word) or not word.isprintable()
            or len(word) > _LONG_WORD)


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
    if name.isascii() and "=?" not in name and name.isprintable() and len(name) <= _LONG_PHRASE:
        if all(c in _ATEXT or c == " " for c in name):
            return name.split()
        return ['"' + name.replace("\\", "\\\\").replace('"', '\\"') + '"']
    tokens: list[str] = []
    run: list[str] = []
    for word in name.split():
        if all(c in _ATEXT for c in word) and "=?" not in word and len(word) <= _LONG_PHRASE:
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
    """The policy for the fields listfilter writes and the values it reads:
    ``email.policy.default`` with :class:`ListfilterPolicy`'s folding."""
    return ListfilterPolicy(linesep=linesep, refold_source="none")


def make_field(name: str, value, policy: ListfilterPolicy | None = None) -> bytes:
    """One header field listfilter sets, folded and encoded (ASCII, RFC 2047), LF-terminated."""
    policy = policy or make_policy()
    header = policy.header_factory(name, value)
    if isinstance(value, str) and isinstance(header, UnstructuredHeader):
        # the text as set: the factory would decode an "=?...?=" the text itself contains a second time
        return fold_tokens(name, _unstructured_tokens(value), policy.max_line_length or 998).encode("ascii")
    return policy.fold_binary(name, header)
