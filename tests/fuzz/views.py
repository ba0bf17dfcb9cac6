"""How Postfix and a mail client see a message: the judge's own readers, independent of listfilter.

The fuzz checks (:mod:`tests.fuzz.checks`) never ask Python's ``email``
package alone which lines are headers: its parser ends a line at a bare CR,
and when it writes a header back it breaks the value at ``\\v``, ``\\f`` and
``\\x1c``-``\\x1e`` as well (``email.policy``'s folding uses
``str.splitlines``); Postfix does neither, and what members receive is what
Postfix makes of the bytes listfilter hands to ``sendmail``. So this module
reads a message as Postfix does:

- ``sendmail`` turns CRLF into LF (``sendmail_fix_line_endings = always``,
  postconf(5)); every other byte, a bare CR included, is part of its line.
  A line ends at LF and nowhere else.
- A header line starts at a line start with a field name and ``:``: one or
  more printable ASCII characters other than ``:`` (no control character, no
  8-bit byte), optionally followed by spaces or tabs before the colon
  (``is_header()`` in Postfix's ``global/is_header.c``, which accepts RFC 822's
  obsolete space before the colon).
- A line that starts with a space or a tab continues the header before it
  (RFC 5322 §2.2.3 folding); with no header before it, it is not a header.
- The first line that is neither ends the header section: an empty line is the
  separator; any other line is the first line of the body (cleanup(8)).

:func:`shown_from` is the other reader: the address a member's mail client
displays for a From header (RFC 5322 §3.4: the angle-addr of a name-addr, the
addr-spec otherwise), with anything a client would have to guess at (several
angle-addrs in one mailbox, a group, text around a bare address, an
unterminated quote or comment) reported as ambiguous.
"""

from __future__ import annotations

import re
from collections import namedtuple

#: One header field as Postfix sees it: the lower-cased name and its physical
#: lines (without line endings; continuation lines included).
Field = namedtuple("Field", "name lines")

#: A message as Postfix sees it: the header fields in order, the body (every
#: byte after the header section, CRLF turned into LF), and how the header
#: section ended: at the empty line ("blank"), at a line that is not a header
#: ("line", the body's first line) or at the end of the message ("end").
View = namedtuple("View", "fields body ended")

_NAME = re.compile(rb"([!-9;-~]+)[ \t]*:")


def header_name(line: bytes) -> str | None:
    """The field name of a header line (lower-cased), or None if Postfix would not take it as one."""
    m = _NAME.match(line)
    return m.group(1).decode("ascii").lower() if m else None


def postfix_view(raw: bytes, *, drop_unix_from: bool = False) -> View:
    """Split ``raw`` into header fields and body as Postfix would after ``sendmail``.

    ``drop_unix_from``: a first line starting with ``From `` is not part of the
    message (an mbox envelope line, which listfilter-deliver documents it drops).
    """
    data = raw.replace(b"\r\n", b"\n")
    if drop_unix_from and data.startswith(b"From "):
        nl = data.find(b"\n")
        data = b"" if nl < 0 else data[nl + 1:]
    fields: list[Field] = []
    pos, size = 0, len(data)
    while pos < size:
        end = data.find(b"\n", pos)
        line, nxt = (data[pos:], size) if end < 0 else (data[pos:end], end + 1)
        if line == b"":
            return View(fields, data[nxt:], "blank")
        name = header_name(line)
        if name is not None:
            fields.append(Field(name, [line]))
        elif line[:1] in (b" ", b"\t") and fields:
            fields[-1].lines.append(line)
        else:
            return View(fields, data[pos:], "line")
        pos = nxt
    return View(fields, b"", "end")


def field_value(field: Field) -> bytes:
    """The value of a field, unfolded (RFC 5322 §2.2.3: the line breaks removed)."""
    first = field.lines[0]
    value = first[first.index(b":") + 1:]
    return b"".join([value, *field.lines[1:]]).strip(b" \t")


def counts(view: View) -> dict[str, int]:
    """How many times each field name occurs."""
    out: dict[str, int] = {}
    for f in view.fields:
        out[f.name] = out.get(f.name, 0) + 1
    return out


# --------------------------------------------------------------------------
# The From a mail client shows

#: What a client shows for a From value: the addresses (lower-cased, as
#: decoded UTF-8), or ambiguous with the reason.
Shown = namedtuple("Shown", "addresses ambiguous")


def _tokens(text: str):
    """RFC 5322 lexical tokens: ("q", quoted-string), ("c", comment), ("<", angle content), ("s", special), ("a", atom)."""
    i, n = 0, len(text)
    while i < n:
        ch = text[i]
        if ch in " \t\r\n":
            i += 1
        elif ch == '"':
            j, buf = i + 1, []
            while j < n and text[j] != '"':
                if text[j] == "\\" and j + 1 < n:
                    j += 1
                buf.append(text[j])
                j += 1
            if j >= n:
                raise ValueError("unterminated quoted-string")
            yield "q", "".join(buf)
            i = j + 1
        elif ch == "(":
            depth, j = 1, i + 1
            while j < n and depth:
                if text[j] == "\\":
                    j += 1
                elif text[j] == "(":
                    depth += 1
                elif text[j] == ")":
                    depth -= 1
                j += 1
            if depth:
                raise ValueError("unterminated comment")
            yield "c", text[i:j]
            i = j
        elif ch == "<":
            j = text.find(">", i + 1)
            if j < 0:
                raise ValueError("unterminated angle-addr")
            yield "<", text[i + 1:j]
            i = j + 1
        elif ch in ">),;:@[]\\.":
            yield "s", ch
            i += 1
        else:
            j = i
            while j < n and text[j] not in ' \t\r\n"()<>,;:@[]\\.':
                j += 1
            yield "a", text[i:j]
            i = j


def _addr_spec(text: str) -> str | None:
    """``local@domain`` with comments and folding whitespace removed, or None if it is not one."""
    parts: list[str] = []
    for kind, value in _tokens(text):
        if kind == "c":
            continue
        if kind == "<":
            return None
        parts.append(f'"{value}"' if kind == "q" else value)
    spec = "".join(parts)
    local, at, domain = spec.rpartition("@")
    if not at or not local or not domain or "@" in local.replace('"@"', ""):
        return None
    return spec.lower()


def decode_header_bytes(value: bytes) -> str:
    """Raw header bytes as a mail client reads them: UTF-8 (RFC 6532) first, then a legacy
    fallback (windows-1252, then Latin-1 for the five bytes it leaves undefined)."""
    try:
        return value.decode("utf-8")
    except UnicodeDecodeError:
        return "".join(bytes([b]).decode("cp1252", "ignore") or chr(b) for b in value)


def shown_from(value: bytes) -> Shown:
    """The address(es) a mail client displays for this From value (unfolded bytes)."""
    text = decode_header_bytes(value)
    try:
        tokens = list(_tokens(text))
    except ValueError as exc:
        return Shown((), str(exc))
    if any(kind == "s" and v in ":;" for kind, v in tokens):
        return Shown((), "a colon outside quotes, comments and <>: group syntax or text after the address")
    mailboxes: list[list[tuple[str, str]]] = [[]]
    for tok in tokens:
        if tok == ("s", ","):
            mailboxes.append([])
        else:
            mailboxes[-1].append(tok)
    out = []
    for box in mailboxes:
        if not [t for t in box if t[0] != "c"]:
            continue  # an empty list element (RFC 5322 §4.4 obs-mbox-list)
        angles = [v for kind, v in box if kind == "<"]
        if len(angles) > 1:
            return Shown((), "several angle-addrs in one mailbox")
        if angles:
            spec = _addr_spec(angles[0].rpartition(":")[2])  # an obs-route "@a,@b:" is not shown
            if spec is None:
                return Shown((), f"not an address: <{angles[0]}>")
            out.append(spec)
            continue
        plain = "".join(f'"{v}"' if k == "q" else v for k, v in box if k != "c")
        spec = _addr_spec(plain)
        if spec is None or _adjacent_words(box):
            return Shown((), f"not one address: {plain!r}")
        out.append(spec)
    if not out:
        return Shown((), "no address")
    return Shown(tuple(out), "")


def _adjacent_words(box) -> bool:
    """Two words with nothing but whitespace or a comment between them (``a@b c@d``, ``John
    Smith jsmith@x``): not one addr-spec, whatever a client would make of it."""
    prev = None
    for kind, _ in box:
        if kind == "c":
            continue
        if prev in ("a", "q") and kind in ("a", "q"):
            return True
        prev = kind
    return False
