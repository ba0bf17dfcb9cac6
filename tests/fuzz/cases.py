"""The fuzz cases: deterministic from (seed, index), one family per class of hostile mail.

A case is a message, the envelope Postfix's pipe(8) would hand
``listfilter-deliver`` with it, and what the snapshot says about its poster:
``posters`` is who the list lets post. The list's members are
:data:`MEMBERS` plus the posters (so that a copy to the poster would show).

Where a case starts (its family)
--------------------------------

- ``corpus``: a message of CPython's email test corpus (:mod:`tests.fuzz.corpus`),
  ``seed``: one of ours in tests/data/fuzz/. The poster is the From address a
  naive reader takes (Python's own parse of the first From), which is what a
  forger counts on.
- one family per class of hostile mail, each a parametrised generator:
  ``utf8`` (8-bit and UTF-8 bytes in any header, the envelope included),
  ``duplicate`` (singleton headers more than once), ``from-display`` (a
  display name that looks like an address, comments, groups, several
  addresses), ``injection`` (\\v \\f \\x1c-\\x1e and bare CR in a header the
  poster wrote, and the header lines Python and Postfix read differently),
  ``parser`` (values the standard library's parser rejects), ``cost`` (headers
  up to Postfix's 100 KB ``header_size_limit``, messages up to
  ``message_size_limit``), ``no-date``, ``poison`` (empty and binary messages,
  deep MIME nesting, an over-long VERP extension, corrupt state files).

Then, for about half the cases, one to three **mutations** (:data:`MUTATIONS`):
header duplication, byte flips in the header block, inserted control
characters, long encoded words, deep MIME nesting, 8-bit bytes in addresses,
a missing From, Date or Message-ID, truncation, CRLF line ends, a Unix
``From `` line, refolding, field-name case. And a **variant**: usually the
list allows the poster; in the ``stranger`` variant it allows nobody the
message names; a few cases go to the list's -request/-owner or -bounces address.

``must_deliver`` marks the cases a correct filter delivers: a clean corpus
message, an allowed SMTPUTF8 or 8-bit post, a post without a Date, a large but
valid post. Everything else may be delivered or refused; the checks judge
whatever was done.
"""

from __future__ import annotations

import base64
import random
from collections import namedtuple
from dataclasses import dataclass, field

from . import corpus
from .views import field_value, header_name, postfix_view, shown_from

LIST = "fuzz@lists.example.edu"
REQUEST = "fuzz-request@lists.example.edu"
OWNER = "fuzz-owner@lists.example.edu"
BOUNCES = "fuzz-bounces@lists.example.edu"
OWNERS = ("owner@example.edu",)
REPLY_TO = "staff@lists.example.edu"
#: Members of every case's list, besides its posters.
MEMBERS = ("alice@example.edu", "Bob@Example.ORG", "ünïcode.member@example.edu")
#: The only poster of a stranger variant: named by no message.
NOBODY = "nobody.allowed@example.net"
MALLORY = "mallory@evil.example"
DISPLAY_NAMES = ("CS 199 Students", "Übungsgruppe Ünïcode — CS 199", "Smith, Jones & Co. (Fall 2026) Students")

POSTERS = ("instructor@example.edu", "Prof.Smith@Example.EDU", "ta.one+course@example.edu", "o'brien@example.edu")
UTF8_POSTERS = ("zoë@example.edu", "δοκιμή@παράδειγμα.δοκιμή", "用户@例子.广告", "jürgen.müller@uni-bücher.de",
                "инструктор@пример.рф")
NAMES = ("Pat Instructor", "Smith, John (TA)", "O'Brien", "Dr. Jane Q. Public")
#: Text in each legacy charset it can be written in (and UTF-8).
TEXTS = {
    "utf-8": ("Zoë Ünal", "Łukasz Żółć", "山田 太郎", "Ἀριστοτέλης", "Jürgen Müller", "Владимир Петров", "😀 emoji"),
    "latin-1": ("Zoë Ünal", "Jürgen Müller", "Café crème à la française"),
    "cp1252": ("Zoë “quoted” Ünal", "Jürgen Müller – TA", "Œuvre €5"),
    "koi8-r": ("Владимир Петров", "Привет, мир"),
    "shift_jis": ("山田太郎", "こんにちは"),
    "iso-8859-7": ("Αριστοτέλης", "Καλημέρα"),
}
DATE = b"Tue, 24 Nov 2026 08:00:00 -0600"
BODY = b"Hello everyone,\n\nthe notes for week 3 are up.\n\n-- \nPat\n"
#: The characters Python's email package breaks a line at and Postfix does not: its parser at a bare
#: CR, its header folding (str.splitlines) at all of them.
PY_BREAKS = (b"\v", b"\f", b"\x1c", b"\x1d", b"\x1e", b"\r")


@dataclass(frozen=True)
class Profile:
    """Sizes: the full run goes up to Postfix's limits; the CI subset keeps the large bodies smaller."""

    name: str
    max_body: int  # message_size_limit (10,240,000 by default)
    header_kb: int  # the largest single header, in KB (header_size_limit is 102,400 bytes)
    mutate: float = 0.5


FULL = Profile("full", 10_240_000, 98)
CI = Profile("ci", 1_000_000, 98)

#: What a family's generator returns (the variant and the mutations come on top).
Base = namedtuple("Base", "name raw sender posters must_deliver setup recipient message_key",
                  defaults=("", None, ""))


@dataclass(frozen=True)
class Case:
    seed: int
    index: int
    family: str
    name: str
    raw: bytes = field(repr=False)
    sender: str
    recipient: str
    posters: tuple[str, ...]
    members: tuple[str, ...]
    display_name: str
    reply_to: bool
    must_deliver: bool
    mutations: tuple[str, ...] = ()
    variant: str = "poster"
    setup: str = ""
    message_key: str = ""

    @property
    def id(self) -> str:
        return f"{self.seed}-{self.index:06d}"

    def argv(self, snapshot: str) -> list[str]:
        """The command line master.cf gives listfilter-deliver (pipe(8) flags=q: the values as they are)."""
        return ["--snapshot", snapshot, "--sender", self.sender, "--recipient", self.recipient,
                "--queue-id", f"F{self.index:06d}"]


# --------------------------------------------------------------------------
# Building messages


def message(lines: list[bytes], body: bytes = BODY) -> bytes:
    return b"\n".join(lines) + b"\n\n" + body


def enc(text: str, charset: str = "utf-8") -> bytes:
    return text.encode(charset)


def mailbox(name: str | bytes | None, addr: str, *, quote: bool = True) -> bytes:
    """``"name" <addr>`` as raw bytes (UTF-8 where not ASCII); ``quote=False`` leaves a name without
    specials unquoted (raw 8-bit bytes in a bare phrase, as some clients write them)."""
    a = addr.encode("utf-8")
    if not name:
        return a
    n = name if isinstance(name, bytes) else name.encode("utf-8")
    if quote or any(c in b',;:<>@"()[]\\.' for c in n):  # RFC 5322 specials: a phrase must quote them
        n = b'"' + n.replace(b"\\", b"\\\\").replace(b'"', b'\\"') + b'"'
    return n + b" <" + a + b">"


def encoded_word(text: str, charset: str = "utf-8") -> bytes:
    return b"=?" + charset.encode() + b"?b?" + base64.b64encode(text.encode(charset)) + b"?="


#: How a long run of encoded words is written: "b" words one per line, "q" words six to a line, or
#: short words with no space between them, six to a line (the costliest for Python's parser).
EW_STYLES = ("b", "q", "adjacent")


def encoded_text(rng: random.Random, size: int, style: str = "b") -> bytes:
    """About ``size`` bytes of RFC 2047 encoded words of UTF-8 text."""
    words, total = [], 0
    pool = TEXTS["utf-8"]
    while total < size:
        if style == "adjacent":
            w = b"=?utf-8?q?" + rng.choice([b"a", b"=C3=BC", b"_x"]) + b"?="
        elif style == "q":
            w = b"=?utf-8?q?" + b"".join(b"=%02X" % c for c in rng.choice(pool).encode()) + b"?="
        else:
            w = encoded_word(rng.choice(pool) + f" {len(words)}")
        if style != "b" and len(words) % 6 == 5:
            w += b"\n"  # folded as a mail client would; adjacent words stay adjacent (RFC 2047 §6.2)
        words.append(w)
        total += len(w) + (0 if style == "adjacent" else 2)
    sep = {"b": b"\n", "q": b" ", "adjacent": b""}[style]
    return sep.join(words).replace(b"\n", b"\n ").rstrip(b"\n ")


def standard(rng: random.Random, poster: str, *, from_line: bytes | None = None, subject: bytes = b"week 3 notes",
             date: bool = True, msgid: str | None = "", extra: list[bytes] = ()) -> list[bytes]:
    """A post's header lines: From, To, Subject, Date, Message-ID, MIME headers, then ``extra``."""
    name = rng.choice(NAMES)
    lines = [b"From: " + (from_line if from_line is not None else mailbox(name, poster)),
             b"To: " + LIST.encode(), b"Subject: " + subject]
    if date:
        lines.append(b"Date: " + DATE)
    if msgid is not None:
        lines.append(b"Message-ID: " + (msgid or f"<{rng.getrandbits(48):x}@mail.example.edu>").encode())
    lines += [b"MIME-Version: 1.0", b"Content-Type: text/plain; charset=utf-8", b"Content-Transfer-Encoding: 8bit"]
    lines += list(extra)
    return lines


def replace_field(lines: list[bytes], name: str, new: list[bytes] | bytes) -> list[bytes]:
    """``lines`` with the (first) field ``name`` replaced by ``new`` (appended if absent)."""
    new = [new] if isinstance(new, bytes) else new
    out, done = [], False
    for line in lines:
        if not done and header_name(line) == name.lower():
            out += new
            done = True
        else:
            out.append(line)
    return out if done else out + new


def strip_unix_from(raw: bytes) -> bytes:
    if raw.startswith(b"From "):
        nl = raw.find(b"\n")
        return b"" if nl < 0 else raw[nl + 1:]
    return raw


# --------------------------------------------------------------------------
# What a naive reader claims, and what counts as clean


_SINGLETONS = ("from", "sender", "reply-to", "to", "cc", "bcc", "message-id", "in-reply-to", "references",
               "subject", "date")


def naive_from(raw: bytes) -> str | None:
    """The From address as Python's email package reads it (first header, first address), lower-cased."""
    from email import policy
    from email.parser import BytesHeaderParser

    try:
        header = BytesHeaderParser(policy=policy.default).parsebytes(raw)["From"]
        a = header.addresses[0]
        if a.username and a.domain:
            return a.addr_spec.lower()
    except Exception:
        pass
    view = postfix_view(raw)
    froms = [f for f in view.fields if f.name == "from"]
    if froms:
        shown = shown_from(field_value(froms[0]))
        if len(shown.addresses) == 1:
            return shown.addresses[0]
    return None


def is_clean(raw: bytes, poster: str | None) -> bool:
    """A message every reader takes the same way, from one unambiguous From: a correct filter delivers it."""
    from email import policy
    from email.parser import BytesHeaderParser

    if not poster:
        return False
    view = postfix_view(raw)
    if view.ended == "line":
        return False  # a line in the header block that is no header
    data = raw.replace(b"\r\n", b"\n")
    block = data[: len(data) - len(view.body)]
    if any(c in block for c in PY_BREAKS[:-1]) or b"\r" in block.replace(b"\r\n", b"") or b"\0" in block:
        return False
    try:
        block.decode("utf-8")
        msg = BytesHeaderParser(policy=policy.default).parsebytes(raw)
        if [k.lower() for k in msg.keys()] != [f.name for f in view.fields]:
            return False
        for name in ("from", "to", "cc", "reply-to", "sender", "subject", "date", "message-id"):
            for value in msg.get_all(name, ()):
                str(value)
                getattr(value, "addresses", None)
    except Exception:
        return False
    names = [f.name for f in view.fields]
    if any(names.count(n) > 1 for n in _SINGLETONS):
        return False
    froms = [f for f in view.fields if f.name == "from"]
    if len(froms) != 1:
        return False
    shown = shown_from(field_value(froms[0]))
    return not shown.ambiguous and shown.addresses == (poster,)


# --------------------------------------------------------------------------
# The families


def gen_corpus(rng: random.Random, profile: Profile, seeds=None) -> Base:
    seed = rng.choice(seeds or corpus.cpython_messages())
    raw = strip_unix_from(seed.raw)
    poster = naive_from(raw)
    return Base(seed.name, raw, poster or "someone@example.org", (poster,) if poster else (),
                is_clean(raw, poster))


def gen_seed(rng: random.Random, profile: Profile) -> Base:
    return gen_corpus(rng, profile, corpus.own_seeds())


def gen_utf8(rng: random.Random, profile: Profile) -> Base:
    """8-bit and UTF-8 bytes in the headers (names, addresses, Subject, Sender, Reply-To, the envelope)."""
    where = rng.choice(["from-name", "from-local", "from-bare", "subject", "sender", "reply-to", "to-name", "cc",
                        "comments", "envelope", "everything", "legacy-local"])
    charset = rng.choice(["utf-8", "utf-8", "utf-8", "latin-1", "cp1252", "koi8-r", "shift_jis", "iso-8859-7"])
    text = rng.choice(TEXTS[charset])
    ascii_poster = rng.choice(POSTERS)
    utf8_poster = rng.choice(UTF8_POSTERS)
    must = True
    sender = None
    if where == "from-name":
        poster = ascii_poster
        lines = standard(rng, poster, from_line=mailbox(enc(text, charset), poster, quote=rng.random() < 0.5))
    elif where in ("from-local", "from-bare", "envelope", "everything"):
        poster = utf8_poster
        name = rng.choice(TEXTS["utf-8"])
        from_line = mailbox(None, poster) if where == "from-bare" else mailbox(name, poster, quote=rng.random() < .5)
        extra = []
        if where == "everything":
            extra = [b"Sender: " + mailbox(name, poster), b"Reply-To: " + mailbox(name, rng.choice(UTF8_POSTERS)),
                     b"Cc: " + mailbox(rng.choice(TEXTS["utf-8"]), rng.choice(UTF8_POSTERS))]
        subject = enc(rng.choice(TEXTS["utf-8"])) if where == "everything" else b"week 3 notes"
        lines = standard(rng, poster, from_line=from_line, subject=subject, extra=extra)
        sender = poster if where in ("envelope", "everything") else rng.choice([poster, ascii_poster])
    elif where == "legacy-local":
        poster = "josé@example.edu"  # written in Latin-1: no reader can be sure of it
        lines = standard(rng, poster, from_line=b"Jos\xe9 <jos\xe9@example.edu>")
        must = False
    else:
        poster = ascii_poster
        value = enc(text, charset)
        header = {"subject": b"Subject: " + value,
                  "sender": b"Sender: " + mailbox(rng.choice(TEXTS["utf-8"]), utf8_poster),
                  "reply-to": b"Reply-To: " + mailbox(rng.choice(TEXTS["utf-8"]), utf8_poster),
                  "to-name": b"To: " + mailbox(enc(text, charset), LIST, quote=rng.random() < 0.5),
                  "cc": b"Cc: " + mailbox(rng.choice(TEXTS["utf-8"]), utf8_poster),
                  "comments": b"Comments: " + value}[where]
        lines = replace_field(standard(rng, poster), header_name(header), header)
    return Base(f"utf8 {where} {charset}", message(lines), sender or poster, (poster.lower(),), must)


def gen_duplicate(rng: random.Random, profile: Profile) -> Base:
    """A singleton header (RFC 5322 §3.6) more than once; the From the list allows is one of them."""
    name = rng.choice(["From"] * 4 + ["Sender", "Date", "Subject", "Message-ID", "To", "Reply-To", "Cc"])
    poster = rng.choice(POSTERS)
    far = rng.random() < 0.5
    lines = standard(rng, poster)
    if name == "From":
        form = rng.choice(["allowed-first", "stranger-first", "same", "same-other-case", "same-other-name", "three"])
        allowed = b"From: " + mailbox(rng.choice(NAMES), poster)
        stranger = b"From: " + mailbox("Mallory", MALLORY)
        pair = {"allowed-first": (allowed, stranger), "stranger-first": (stranger, allowed),
                "same": (allowed, allowed),
                "same-other-case": (allowed, b"From: " + poster.upper().encode()),
                "same-other-name": (allowed, b"From: " + mailbox("Someone Else", poster)),
                "three": (allowed, stranger + b"\nFrom: " + mailbox("Pat", poster))}[form]
    else:
        form = "two values"
        second = {"Sender": b"Sender: " + MALLORY.encode(), "Date": b"Date: Mon, 01 Jan 2024 00:00:00 +0000",
                  "Subject": b"Subject: URGENT: wire the course fee to Mallory",
                  "Message-ID": b"Message-ID: <second-id@evil.example>", "To": b"To: everyone@evil.example",
                  "Reply-To": b"Reply-To: " + MALLORY.encode(), "Cc": b"Cc: " + MALLORY.encode()}[name]
        first = {"Reply-To": b"Reply-To: " + poster.encode(), "Cc": b"Cc: ta.two@example.edu",
                 "Sender": b"Sender: " + poster.encode()}.get(name) or next(
            line for line in lines if header_name(line) == name.lower())
        pair = (first, second) if rng.random() < 0.5 else (second, first)
    lines = [line for line in lines if header_name(line) != name.lower()]
    if far:
        lines = [pair[0]] + lines + [pair[1]]
    else:
        at = rng.randrange(len(lines) + 1)
        lines[at:at] = list(pair)
    return Base(f"duplicate {name} {form}{' far apart' if far else ''}", message(lines), poster,
                (poster.lower(),), False)


def gen_from_display(rng: random.Random, profile: Profile) -> Base:
    """A From whose display name, comment or group looks like the allowed address, or several addresses."""
    p = rng.choice(POSTERS).encode()
    p2 = rng.choice([x for x in POSTERS if x.encode() != p]).encode()
    a = MALLORY.encode()
    forms = {
        "name-is-address": (p + b" <" + a + b">", (p,)),
        "quoted-name-is-address": (b'"' + p + b'" <' + a + b">", (p,)),
        "no-space": (p + b"<" + a + b">", (p,)),
        "encoded-name": (encoded_word(p.decode()) + b" <" + a + b">", (p,)),
        "comment-after": (a + b" (" + p + b")", (p,)),
        "comment-before": (b"(" + p + b") " + a, (p,)),
        "nested-comment": (b"((" + p + b")) " + a, (p,)),
        "name-with-comment": (p + b" (via list) <" + a + b">", (p,)),
        "group": (p + b": " + a + b";", (p,)),
        "named-group": (b"Team: " + p + b", " + a + b";", (p,)),
        "empty-group": (b"undisclosed-recipients:;", (p,)),
        "several-allowed-first": (p + b", " + a, (p,)),
        "several-allowed-last": (a + b", " + p, (p,)),
        "several-all-allowed": (p + b", " + p2, (p, p2)),
        "two-angles": (b"<" + p + b"> <" + a + b">", (p,)),
        "angle-then-bare": (b"<" + p + b">" + a, (p,)),
        "two-bare": (p + b" " + a, (p,)),
        "mailbox-and-name": (b'"' + p + b'" <' + a + b">, " + p, (p,)),
        "unterminated-angle": (p + b" <" + a, (p,)),
        "unterminated-quote": (b'"' + p + b" <" + a + b">", (p,)),
        "escaped-quote": (b'"x\\" <' + p + b'>" <' + a + b">", (p,)),
        "route": (b"<@relay.example:" + a + b">", (p,)),
        "honest-name-is-address": (a + b" <" + p + b">", (p,)),
        "honest-comment": (p + b" (" + a + b")", (p,)),
    }
    form = rng.choice(sorted(forms))
    value, allowed = forms[form]
    lines = standard(rng, p.decode(), from_line=value)
    posters = tuple(x.decode().lower() for x in allowed)
    return Base(f"from-display {form}", message(lines), p.decode(), posters, False)


_PAYLOADS = (b"Reply-To: " + MALLORY.encode(), b"From: " + MALLORY.encode(), b"Bcc: " + MALLORY.encode(),
             b"List-Unsubscribe: <mailto:" + MALLORY.encode() + b">", b"List-Id: <other.lists.example.org>",
             b"Sender: " + MALLORY.encode(), b"To: everyone@evil.example", b"Subject: spoofed",
             b"X-Listfilter-Loop: " + LIST.encode(), b"Content-Type: text/html", b"")
_HOSTS = ("Subject", "X-Mailer", "Comments", "Keywords", "From", "To", "Cc", "Reply-To", "In-Reply-To", "References",
          "Content-Type", "User-Agent", "Thread-Topic", "Date", "Message-ID")


def gen_injection(rng: random.Random, profile: Profile) -> Base:
    """Characters Python breaks a line at and Postfix does not, inside a header the poster wrote."""
    poster = rng.choice(POSTERS)
    lines = standard(rng, poster, extra=[b"X-Mailer: Mutt 2.2", b"In-Reply-To: <prev@example.edu>"])
    shape = rng.choice(["inline", "inline", "end", "continuation", "line-start", "last-header", "encoded-word",
                        "empty-name", "obs-colon"])
    sep = rng.choice(PY_BREAKS + (b"\r\v", b"\v\v", b"\f\r", b"\x1c\x1d\x1e"))
    payload = rng.choice(_PAYLOADS)
    host = rng.choice(_HOSTS)
    current = next((line for line in lines if header_name(line) == host.lower()), None)
    value = current[len(host) + 2:] if current else b"value"
    if host == "From":
        value = mailbox(b"Pat" + sep + payload, poster)
    if shape == "inline":
        line = [host.encode() + b": " + value + (b"" if host == "From" else sep + payload)]
    elif shape == "end":
        line = [host.encode() + b": " + value + sep]
    elif shape == "continuation":
        line = [host.encode() + b": " + value, b"\tmore" + sep + payload]
    elif shape == "line-start":
        line = [host.encode() + b": " + value, sep + payload]
    elif shape == "last-header":
        line = [host.encode() + b": " + value + sep + payload]
        lines = [x for x in lines if header_name(x) != host.lower()] + line
        line = None
    elif shape == "encoded-word":
        host = "Subject"
        code = b"".join(b"=%02X" % c for c in sep)
        line = [b"Subject: =?utf-8?q?hi" + code + payload.replace(b" ", b"_").replace(b"?", b"=3F") + b"?="]
    elif shape == "empty-name":
        line = None
        lines = lines + [b": " + (payload or b"stray")]
    else:  # obs-colon: RFC 822's space before the colon; Postfix reads a header, Python does not
        line = [host.encode() + b" : " + value]
    if line is not None:
        lines = replace_field(lines, host, line)
    sep_name = "".join(f"\\x{c:02x}" for c in sep)
    return Base(f"injection {shape} {host} {sep_name} {payload[:12].decode()!r}", message(lines), poster,
                (poster.lower(),), False)


def _deep(depth: int, inner: bytes = b"x") -> bytes:
    return b"(" * depth + inner + b")" * depth


def gen_parser(rng: random.Random, profile: Profile) -> Base:
    """Header values Python's email parser rejects or chokes on (one to three of them)."""
    poster = rng.choice(POSTERS)
    depth = rng.choice([50, 500, 2000, 5000])
    bad_address = [b"<<<", b"a@b@c", b'"unterminated', b"(((", b",,,", b"@", b"<@>", b"=?utf-8?q?broken",
                   b"a@[1.2.3", b"<a@b", b"a@b>", b"\\", b":;", _deep(depth)]
    malformed = [
        *((b"To", v) for v in bad_address), *((b"Reply-To", v) for v in bad_address),
        *((b"Cc", v) for v in bad_address[:6]), *((b"Sender", v) for v in bad_address[:4]),
        (b"Message-ID", b""), (b"Message-ID", b"<>"), (b"Message-ID", b"   "), (b"Message-ID", b"<a@b> <c@d>"),
        (b"Message-ID", b"no-angle@x"), (b"Message-ID", b"<a@b"), (b"Message-ID", _deep(depth)),
        (b"Content-Type", b"text/plain; charset*=''"),
        (b"Content-Type", b"text/plain; name*0*=utf-8''%E2%82; name*1*=%AC"),
        (b"Content-Type", b"text/plain; filename*=utf-8'en'%ff%fe"),
        (b"Content-Type", b'text/plain; charset="utf-8'), (b"Content-Type", b"multipart/mixed; boundary="),
        (b"Content-Type", b"multipart/mixed"), (b"Content-Type", b"text/plain; charset=x-unknown"),
        (b"Content-Type", b";;;"), (b"Content-Type", b"text/plain; a*=''; a*0=x; a*1*=%"),
        (b"Content-Type", b"text/plain; name*=bogus'xx'%zz"),
        (b"Content-Disposition", b"attachment; filename*=''%ff"),
        (b"Content-Disposition", b"attachment; filename*0*=us-ascii'en'This%20is%20; filename*1*=%E2"),
        (b"Date", b"99 Foo 2026 99:99:99"), (b"Date", b""), (b"Date", b"Tue, 31 Feb 2026 25:61:61 +9999"),
        (b"Date", b"((("), (b"Subject", b"=?utf-8?b?!!!!?="), (b"Subject", b"=?x-bogus?q?a?="),
        (b"Subject", b"=?utf-8?q?"), (b"Subject", b"=?utf-8*en?q?x?="), (b"Subject", b"=?utf-16?b?AAA=?="),
        (b"Subject", b"=?utf-8?q?=E2=82?="), (b"MIME-Version", b"1.0 ((("),
        (b"Content-Transfer-Encoding", b"x-uuencode"), (b"Content-Transfer-Encoding", b'"quoted"'),
        (b"Received", b"from ((("), (b"In-Reply-To", b"<"), (b"References", b"<<a@b>>"),
        (b"References", _deep(depth)), (b"Resent-From", b",,"), (b"Return-Path", b"<"),
        (b"Disposition-Notification-To", b"<<<"), (b"Keywords", b'"'), (b"X-Nul", b"a\0b"),
        (b"From", b"Pat " + _deep(depth) + b" <" + poster.encode() + b">"),
        (b"From", b"Pat <" + poster.encode() + b"> " + _deep(depth)),
        (None, b"\xe9t\xe9 not a header line"), (None, b"\xff\xfe\x00garbage"), (None, b"Subj\xe9ct: x"),
    ]
    lines = standard(rng, poster)
    picked = rng.sample(malformed, rng.choice([1, 1, 2, 3]))
    for name, value in picked:
        if name is None:
            at = rng.randrange(1, len(lines) + 1)
            lines.insert(at, value)
        elif rng.random() < 0.7:
            lines = replace_field(lines, name.decode(), name + b": " + value)
        else:
            lines.insert(rng.randrange(len(lines) + 1), name + b": " + value)
    what = ", ".join(f"{(n or b'line').decode()}={v[:16]!r}" for n, v in picked)
    return Base(f"parser {what}", message(lines), poster, (poster.lower(),), False)


def gen_cost(rng: random.Random, profile: Profile) -> Base:
    """Headers up to header_size_limit and messages up to message_size_limit (postconf(5))."""
    poster = rng.choice(POSTERS)
    kb = rng.choice([20, 50, profile.header_kb])
    size = kb * 1024
    kind = rng.choice(["ew-subject", "ew-subject", "ew-many", "to-many", "references", "display-name",
                       "many-headers", "deep-fold", "comment-depth", "long-line", "big-body", "big-body"])
    lines = standard(rng, poster)
    body = BODY
    must = kind in ("ew-subject", "references", "big-body", "many-headers")
    style = rng.choice(EW_STYLES)
    if kind == "ew-subject":
        lines = replace_field(lines, "Subject", b"Subject: " + encoded_text(rng, size, style))
        kind += f" {style}"
    elif kind == "ew-many":
        n = rng.choice([2, 5, 10])
        names = [rng.choice([b"Subject", b"Comments", b"Keywords", b"Thread-Topic", b"X-Big-%d" % i]) for i in range(n)]
        lines = [line for line in lines if header_name(line) != "subject"]
        lines += [name + b": " + encoded_text(rng, size, style) for name in names]
        kind += f" x{n} {style}"
    elif kind == "to-many":
        addrs, total = [], 0
        while total < size:
            addrs.append(f"student{len(addrs)}@example.edu".encode())
            total += len(addrs[-1]) + 3
        lines = replace_field(lines, "To", b"To: " + b",\n ".join(addrs))
    elif kind == "references":
        ids = [b"<%d.%x@mail.example.edu>" % (i, rng.getrandbits(40)) for i in range(size // 34)]
        lines.append(b"References: " + b"\n ".join(ids))
    elif kind == "display-name":
        lines = replace_field(lines, "From", b"From: " + encoded_text(rng, size, style) + b" <" + poster.encode() + b">")
    elif kind == "many-headers":
        lines += [b"X-Header-%d: value %d" % (i, i) for i in range(size // 24)]
    elif kind == "deep-fold":
        lines.append(b"X-Folded: start" + b"".join(b"\n x" for _ in range(size // 3)))
    elif kind == "comment-depth":
        lines.append(b"Comments: " + _deep(size // 2 - 10))
    elif kind == "long-line":
        lines.append(b"X-Long: " + b"x" * (size - 10))
    else:  # big-body
        total = rng.choice([1 << 20, profile.max_body // 2, profile.max_body - 4096])
        kind += f" {total >> 10} KB"
        chunk = base64.encodebytes(rng.randbytes(57 * 1000))
        body = (chunk * (total // len(chunk) + 1))[:total]
        lines = replace_field(lines, "Content-Transfer-Encoding", b"Content-Transfer-Encoding: base64")
        lines = replace_field(lines, "Content-Type", b"Content-Type: application/octet-stream")
    return Base(f"cost {kind} {kb} KB", message(lines, body), poster, (poster.lower(),), must)


def gen_no_date(rng: random.Random, profile: Profile) -> Base:
    """No Date (and perhaps no Message-ID): listfilter adds what sendmail -G will not."""
    poster = rng.choice(POSTERS)
    form = rng.choice(["no-date", "no-date", "no-date-no-message-id", "resent-date-only", "empty-date",
                       "date-space-colon", "lower-case-date"])
    lines = standard(rng, poster, date=False, msgid=None if form == "no-date-no-message-id" else "")
    must = form in ("no-date", "no-date-no-message-id", "lower-case-date")
    if form == "resent-date-only":
        lines.append(b"Resent-Date: " + DATE)
        must = True
    elif form == "empty-date":
        lines.append(b"Date:")
    elif form == "date-space-colon":
        lines.append(b"Date : " + DATE)
    elif form == "lower-case-date":
        lines.append(b"date: " + DATE)
    return Base(f"no-date {form}", message(lines), poster, (poster.lower(),), must)


def gen_poison(rng: random.Random, profile: Profile) -> Base:
    """Messages and states that fail the same way on every retry unless the filter ends them now."""
    poster = rng.choice(POSTERS)
    kind = rng.choice(["empty", "newline", "no-headers", "headers-only", "nul", "binary", "deep-mime",
                       "many-params", "long-verp", "long-extension", "null-sender", "mailer-daemon",
                       "long-sender", "8bit-sender", "progress-garbage", "progress-types", "progress-binary",
                       "lock-is-directory", "event-is-directory", "unix-from-inside"])
    msgid = f"<poison.{rng.getrandbits(40):x}@mail.example.edu>"
    lines = standard(rng, poster, msgid=msgid)
    raw = message(lines)
    sender, recipient, setup, must = poster, "", "", False
    if kind == "empty":
        raw = b""
    elif kind == "newline":
        raw = b"\n"
    elif kind == "no-headers":
        raw = b"just a body line\nand another\n"
    elif kind == "headers-only":
        raw = b"\n".join(lines)
    elif kind == "nul":
        raw = raw.replace(b"Subject: ", b"Subject: \0\0", 1).replace(b"From:", b"Fr\0om:", rng.random() < .5)
    elif kind == "binary":
        raw = rng.randbytes(rng.choice([64, 1024, 4096]))
    elif kind == "deep-mime":
        depth = rng.choice([1000, 3000, 5000])
        raw = message(replace_field(lines, "Content-Type", b'Content-Type: multipart/mixed; boundary="b0"'),
                      nested_mime(depth))
        kind += f" {depth}"
    elif kind == "many-params":
        params = b"".join(b";\n p%d=v%d" % (i, i) for i in range(5000))
        raw = message(replace_field(lines, "Content-Type", b"Content-Type: text/plain" + params))
    elif kind == "long-verp":
        n = rng.choice([300, 1000, 5000])
        recipient = f"fuzz-bounces+{'x' * n}=example.org@lists.example.edu"
    elif kind == "long-extension":
        recipient = f"fuzz+{'y' * rng.choice([300, 5000])}@lists.example.edu"
    elif kind == "null-sender":
        sender = ""
    elif kind == "mailer-daemon":
        sender = "MAILER-DAEMON"
    elif kind == "long-sender":
        sender = "s" * 1000 + "@example.org"  # fits an SMTP command line (line_length_limit 2048)
    elif kind == "8bit-sender":
        sender = b"p\xe9t\xe9@example.org".decode("utf-8", "surrogateescape")
    elif kind.startswith(("progress", "lock", "event")):
        setup = kind
    elif kind == "unix-from-inside":
        raw = message(lines[:2] + [b"From someone@example.org Tue Nov 24 08:00:00 2026"] + lines[2:])
    return Base(f"poison {kind}", raw, sender, (poster.lower(),), must, setup, recipient, msgid)


def nested_mime(depth: int) -> bytes:
    """A body of ``depth`` nested multipart/mixed parts (boundaries b0 … b<depth-1>)."""
    opening = b"".join(b'--b%d\nContent-Type: multipart/mixed; boundary="b%d"\n\n' % (i, i + 1) for i in range(depth))
    closing = b"".join(b"--b%d--\n" % i for i in reversed(range(depth + 1)))
    return opening + b"--b%d\nContent-Type: text/plain\n\ninnermost\n" % depth + closing


#: family: (weight, generator)
FAMILIES = {
    "corpus": (30, gen_corpus),
    "seed": (5, gen_seed),
    "utf8": (9, gen_utf8),
    "duplicate": (8, gen_duplicate),
    "from-display": (9, gen_from_display),
    "injection": (11, gen_injection),
    "parser": (9, gen_parser),
    "cost": (4, gen_cost),
    "no-date": (5, gen_no_date),
    "poison": (8, gen_poison),
}


# --------------------------------------------------------------------------
# Mutations


def _split(raw: bytes) -> tuple[bytes, bytes]:
    """(header block, rest) at the first empty line; the rest keeps that line."""
    for sep in (b"\n\n", b"\r\n\r\n"):
        at = raw.find(sep)
        if at >= 0:
            return raw[:at + 1], raw[at + 1:]
    return raw, b""


def _fields(block: bytes) -> list[bytes]:
    """The header block as logical fields (a line and its continuation lines), each with its line ends."""
    out: list[bytes] = []
    for line in _lines(block):
        if out and line[:1] in (b" ", b"\t"):
            out[-1] += line
        else:
            out.append(line)
    return out


def _lines(block: bytes) -> list[bytes]:
    parts = block.split(b"\n")
    out = [p + b"\n" for p in parts[:-1]]
    return out + ([parts[-1]] if parts[-1] else [])


def m_dup_header(rng, raw):
    block, rest = _split(raw)
    fields = _fields(block)
    if not fields:
        return raw
    important = [i for i, f in enumerate(fields) if header_name(f) in _SINGLETONS]
    i = rng.choice(important) if important and rng.random() < 0.6 else rng.randrange(len(fields))
    copy = fields[i] if fields[i].endswith(b"\n") else fields[i] + b"\n"
    at = i + 1 if rng.random() < 0.5 else len(fields)
    fields = [f if f.endswith(b"\n") else f + b"\n" for f in fields]
    fields.insert(at, copy)
    return b"".join(fields) + rest


_INTERESTING = b"\0\t\n\r\v\f\x1c\x1d\x1e :;<>\"(),@\\=?\x80\xc3\xe9\xff"


def m_byte_flip(rng, raw):
    block, rest = _split(raw)
    if not block:
        return raw
    b = bytearray(block)
    for _ in range(rng.choice([1, 2, 4])):
        b[rng.randrange(len(b))] = rng.choice(_INTERESTING) if rng.random() < 0.7 else rng.randrange(256)
    return bytes(b) + rest


def m_ctl_insert(rng, raw):
    block, rest = _split(raw)
    at = rng.randrange(len(block) + 1)
    ins = rng.choice(PY_BREAKS) + (rng.choice(_PAYLOADS) if rng.random() < 0.5 else b"")
    return block[:at] + ins + block[at:] + rest


def m_long_ew(rng, raw, profile=FULL):
    block, rest = _split(raw)
    size = rng.choice([1, 5, 20, 60, profile.header_kb]) * 1024
    name = rng.choice([b"Subject", b"X-Long-Encoded", b"Comments"])
    line = name + b": " + encoded_text(rng, size, rng.choice(EW_STYLES)) + b"\n"
    fields = [f for f in _fields(block) if header_name(f) != name.decode().lower() or name != b"Subject"]
    fields = [f if f.endswith(b"\n") else f + b"\n" for f in fields]
    fields.insert(rng.randrange(len(fields) + 1), line)
    return b"".join(fields) + (rest or b"\n")


def m_deep_mime(rng, raw):
    block, rest = _split(raw)
    depth = rng.choice([100, 1000, 3000])
    fields = [f for f in _fields(block) if header_name(f) != "content-type"]
    fields = [f if f.endswith(b"\n") else f + b"\n" for f in fields]
    fields.append(b'Content-Type: multipart/mixed; boundary="b0"\n')
    return b"".join(fields) + b"\n" + nested_mime(depth)


def m_8bit_address(rng, raw):
    block, rest = _split(raw)
    fields = _fields(block)
    targets = [i for i, f in enumerate(fields) if header_name(f) in ("from", "to", "reply-to", "cc", "sender")]
    if not targets:
        return raw
    i = rng.choice(targets)
    f = fields[i]
    at = f.rfind(b"@")
    if at < 0:
        return raw
    ins = rng.choice([b"\xc3\xbc", b"\xfc", b"\xff", b"\xe2\x80\xae", b"\xf0\x9f\x98\x80"])
    fields[i] = f[:at] + ins + f[at:]
    return b"".join(fields) + rest


def _drop(name):
    def drop(rng, raw):
        block, rest = _split(raw)
        return b"".join(f for f in _fields(block) if header_name(f) != name) + rest
    return drop


def m_truncate(rng, raw):
    if not raw:
        return raw
    block, _ = _split(raw)
    end = rng.randrange(1, len(block) + 1) if rng.random() < 0.7 or len(block) >= len(raw) else \
        rng.randrange(len(block), len(raw))
    return raw[:end]


def m_crlf(rng, raw):
    return raw.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")


def m_unix_from(rng, raw):
    return b"From someone@example.org Tue Nov 24 08:00:00 2026\n" + raw


def m_refold(rng, raw):
    block, rest = _split(raw)
    b = bytearray()
    for line in _lines(block):
        if b" " in line[1:] and rng.random() < 0.4:
            spaces = [i for i, c in enumerate(line) if c == 0x20 and i > 0]
            i = rng.choice(spaces)
            line = line[:i] + rng.choice([b"\n ", b"\n\t", b"\n  "]) + line[i + 1:]
        b += line
    return bytes(b) + rest


def m_name_case(rng, raw):
    block, rest = _split(raw)
    out = []
    for f in _fields(block):
        name = header_name(f)
        if name and rng.random() < 0.5:
            n = len(name)
            f = rng.choice([f[:n].upper(), f[:n].lower(), f[:n].swapcase()]) + f[n:]
        out.append(f)
    return b"".join(out) + rest


MUTATIONS = {
    "dup-header": m_dup_header, "byte-flip": m_byte_flip, "ctl-insert": m_ctl_insert, "long-ew": m_long_ew,
    "deep-mime": m_deep_mime, "8bit-address": m_8bit_address, "drop-from": _drop("from"),
    "drop-date": _drop("date"), "drop-message-id": _drop("message-id"), "truncate": m_truncate, "crlf": m_crlf,
    "unix-from": m_unix_from, "refold": m_refold, "name-case": m_name_case,
}


# --------------------------------------------------------------------------
# A case from (seed, index)


def _pick(rng: random.Random, weights: dict[str, int]) -> str:
    names = sorted(weights)
    return rng.choices(names, [weights[n] for n in names])[0]


def as_argv(s: str) -> str:
    """``s`` as a program finds it in its argv: pipe(8) passes bytes, Python decodes them as UTF-8 with
    surrogateescape (so the bytes of valid UTF-8 read as text, any other 8-bit byte as a surrogate)."""
    return s.encode("utf-8", "surrogateescape").decode("utf-8", "surrogateescape")


def _is_text(s: str) -> bool:
    try:
        s.encode("utf-8")
        return True
    except UnicodeEncodeError:
        return False


def make_case(seed: int, index: int, profile: Profile = FULL) -> Case:
    """Case ``index`` of the run with ``seed``: the same bytes on every machine with the same corpus."""
    rng = random.Random(f"listfilter-fuzz:{seed}:{index}")
    family = _pick(rng, {name: w for name, (w, _) in FAMILIES.items()})
    base = FAMILIES[family][1](rng, profile)
    raw, must, mutations = base.raw, base.must_deliver, []
    if rng.random() < profile.mutate and not base.recipient and not base.setup:
        for kind in rng.sample(sorted(MUTATIONS), rng.choice([1, 1, 2, 3])):
            fn = MUTATIONS[kind]
            raw = fn(rng, raw, profile) if kind == "long-ew" else fn(rng, raw)
            mutations.append(kind)
        must = False
    # a roster holds text: an address that is not valid UTF-8 can be no one's
    posters = tuple(p.lower() for p in map(as_argv, base.posters) if _is_text(p))
    members = posters
    recipient = base.recipient or LIST
    r = rng.random()
    if base.recipient:
        variant = "bounces" if "-bounces" in base.recipient else "poster"
    elif r < 0.15 and not base.setup:
        variant, posters, must = "stranger", (NOBODY,), False
    elif r < 0.17:
        variant, recipient, must = "request", rng.choice([REQUEST, OWNER]), False
    elif r < 0.18:
        variant, recipient, must = "bounces", "fuzz-bounces+alice=example.edu@lists.example.edu", False
    else:
        variant = "poster"
    name = base.name + "".join(f" +{m}" for m in mutations) + ("" if variant == "poster" else f" [{variant}]")
    return Case(seed=seed, index=index, family=family, name=name, raw=raw, sender=as_argv(base.sender),
                recipient=recipient, posters=posters, members=members,
                display_name=rng.choice(DISPLAY_NAMES), reply_to=rng.random() < 0.5, must_deliver=must,
                mutations=tuple(mutations), variant=variant, setup=base.setup, message_key=base.message_key)
