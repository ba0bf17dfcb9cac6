"""listfilter.mail.message: splitting the way Postfix does, reading values, who the From names, rendering, folding.

Data-driven: each table is a list of realistic cases; every test asserts
concrete values, parsed back with the standard library where that is what a
member's software would do. The sections marked "Hostile mail" are the classes of
input the filter must take in its stride.
"""

from __future__ import annotations

import base64
import email
from email import policy
from email.headerregistry import Address
from email.parser import BytesParser

import pytest

from listfilter.mail.message import (
    VALUE_LIMIT,
    Field,
    Headers,
    Poster,
    all_texts,
    decode_bytes,
    fold_tokens,
    header_text,
    make_field,
    make_policy,
    parse_headers,
    phrase_tokens,
    poster_of,
    render,
    split_message,
)

from . import PYTHON_ONLY_BREAKS, SMUGGLING_PLACES, STDLIB_REJECTS, smuggling_message

BASIC = (
    'From: "Doe, Jane" <prof@example.edu>',
    "To: students@lists.example.edu",
    "Subject: Hello there",
    "Date: Wed, 21 Jan 2026 10:00:00 -0600",
    "Message-ID: <m1@example.edu>",
    "MIME-Version: 1.0",
    "Content-Type: text/plain; charset=utf-8",
)


def msg(*headers: str, body: bytes = b"Hello.\n", nl: bytes = b"\n") -> bytes:
    """A raw message from header lines (str, UTF-8 encoded) and a body."""
    return nl.join(h.encode("utf-8") for h in headers) + nl + nl + body


def parse_out(raw: bytes):
    return BytesParser(policy=policy.default).parsebytes(raw)


def round_trip(raw: bytes, **set_headers) -> bytes:
    """Split, replace the given headers in place of the first of each (as a list post's rewrite does), render."""
    fields, body = split_message(raw)
    wanted = {name.lower(): (name, value) for name, value in set_headers.items()}
    out, done = [], set()
    for field in fields:
        key = field.name.lower()
        if key not in wanted:
            out.append(field.raw)
        elif key not in done:
            out.append(make_field(*wanted[key]))
            done.add(key)
    out += [make_field(name, value) for key, (name, value) in wanted.items() if key not in done]
    return render(out, body)


def head_of(raw: bytes) -> bytes:
    """The header block of ``raw`` as the fields' bytes (what Postfix reads as headers)."""
    fields, _ = split_message(raw)
    return b"".join(f.raw for f in fields)


def header_lines(raw: bytes) -> list[bytes]:
    return head_of(raw).splitlines(keepends=True)


def headers_of(raw: bytes) -> Headers:
    fields, _ = split_message(raw)
    return Headers(fields)


# --------------------------------------------------------------------------
# split_message: lines end at LF only; a field is a name, optional blanks and
# a colon; SP/TAB continues it; the first empty line (or the first line that
# is neither) ends the headers -- as Postfix's cleanup(8) reads them.

SPLITS = [
    # raw, [(name, raw field)], body
    (b"A: 1\nB: 2\n\nbody\n", [("A", b"A: 1\n"), ("B", b"B: 2\n")], b"body\n"),
    # a CR before LF belongs to the line ending: the fields come out LF, the body as it was
    (b"A: 1\r\nB: 2\r\n\r\nbody\r\n", [("A", b"A: 1\n"), ("B", b"B: 2\n")], b"body\r\n"),
    (b"A: 1\nB: 2\n", [("A", b"A: 1\n"), ("B", b"B: 2\n")], b""),  # no body, no empty line
    (b"A: 1\nB: 2", [("A", b"A: 1\n"), ("B", b"B: 2\n")], b""),  # not even a final newline
    (b"A: 1\n\n", [("A", b"A: 1\n")], b""),  # empty body
    (b"A: 1\n\n\n\nx\n\ny", [("A", b"A: 1\n")], b"\n\nx\n\ny"),  # blank lines in body stay
    (b"\nbody only\n", [], b"body only\n"),
    (b"\r\nbody only\r\n", [], b"body only\r\n"),
    (b"A: 1\n folded\n\nb", [("A", b"A: 1\n folded\n")], b"b"),
    (b"A: 1\r\n\tfolded\r\n\r\nb", [("A", b"A: 1\n\tfolded\n")], b"b"),
    (b"A: 1\r\n\r\n\x00\xff\r\n\n", [("A", b"A: 1\n")], b"\x00\xff\r\n\n"),
    (b"A: 1\n \n\nb", [("A", b"A: 1\n \n")], b"b"),  # whitespace-only line is no separator
    (b"Subject \t: x\n\nb", [("Subject", b"Subject \t: x\n")], b"b"),  # blanks before the colon
    (b"X-\x7e!#: x\n", [("X-~!#", b"X-\x7e!#: x\n")], b""),  # any printable ASCII but ':' in a name
    # a line that is neither a field nor a continuation ends the headers and starts the body
    (b"A: 1\nnot a header\nB: 2\n\nb", [("A", b"A: 1\n")], b"not a header\nB: 2\n\nb"),
    (b"A: 1\nJ\xfcrgen was here\nB: 2\n\nb", [("A", b"A: 1\n")], b"J\xfcrgen was here\nB: 2\n\nb"),
    (b"A: 1\nJ\xc3\xbcrgen: x\n\nb", [("A", b"A: 1\n")], b"J\xc3\xbcrgen: x\n\nb"),  # 8-bit name: no field
    (b"A: 1\n: no name\n", [("A", b"A: 1\n")], b": no name\n"),
    (b"A: 1\nB : \x01\n", [("A", b"A: 1\n"), ("B", b"B : \x01\n")], b""),
    (b" x: 1\nA: 2\n\nb", [], b" x: 1\nA: 2\n\nb"),  # a continuation with nothing to continue
    (b"A: 1\nFrom x\n\nb", [("A", b"A: 1\n")], b"From x\n\nb"),
    # \v \f \x1c-\x1e and a bare CR are no line ends (one field each, as Postfix sees it)
    (b"A: 1\x0bB: 2\x0cC: 3\n\nb", [("A", b"A: 1\x0bB: 2\x0cC: 3\n")], b"b"),
    (b"A: 1\x1cB: 2\x1dC: 3\x1eD: 4\n\nb", [("A", b"A: 1\x1cB: 2\x1dC: 3\x1eD: 4\n")], b"b"),
    (b"A: 1\rB: 2\n\nb", [("A", b"A: 1\rB: 2\n")], b"b"),
    (b"A: 1\r\r\nB: 2\n", [("A", b"A: 1\r\n"), ("B", b"B: 2\n")], b""),  # only the last CR is the line end's
    (b"A: 1\n\rB: 2\n\nb", [("A", b"A: 1\n")], b"\rB: 2\n\nb"),
    (b"A: 1\x0b\x0bB: 2\n\nb", [("A", b"A: 1\x0b\x0bB: 2\n")], b"b"),  # no empty line either
    # a Unix envelope line (pipe(8)'s F flag) is dropped; "From:" is a field
    (b"From prof@example.edu  Wed Jan 21 10:00:00 2026\nA: 1\n\nb", [("A", b"A: 1\n")], b"b"),
    (b"From: prof@example.edu\n\nb", [("From", b"From: prof@example.edu\n")], b"b"),
    (b"From prof@example.edu", [], b""),
]


@pytest.mark.parametrize("raw,fields,body", SPLITS)
def test_split_message(raw, fields, body):
    got, got_body = split_message(raw)
    assert [(f.name, f.raw) for f in got] == fields
    assert got_body == body
    assert raw.endswith(body)  # the body is never touched
    assert all(isinstance(f, Field) and f.raw.endswith(b"\n") for f in got)
    assert all(b"\n" not in f.raw[:-1].replace(b"\n ", b"").replace(b"\n\t", b"") for f in got)


# --------------------------------------------------------------------------
# Hostile mail: header injection through characters Python treats as line breaks
# and Postfix does not. Split the Postfix way, the message has exactly the
# fields its author wrote (the smuggled "fields" are text inside one of them).


@pytest.mark.parametrize("sep", PYTHON_ONLY_BREAKS.values(), ids=PYTHON_ONLY_BREAKS.keys())
@pytest.mark.parametrize("place", SMUGGLING_PLACES)
def test_python_line_breaks_do_not_make_fields(place, sep):
    raw, names, body = smuggling_message(place, sep)
    fields, got_body = split_message(raw)
    assert [f.name for f in fields] == names
    assert got_body == body
    (carrier,) = [f for f in fields if f.name == SMUGGLING_PLACES[place][0]]
    assert sep in carrier.raw and len(carrier.raw.decode("utf-8", "surrogateescape").splitlines()) > 2  # a trap for Python
    headers = Headers(fields)
    assert headers.count("From") == 1 and "Bcc" not in headers and "Reply-To" not in headers
    assert not any(n.lower().startswith("list-") for n in headers.names()) and "X-Listfilter-Loop" not in headers
    for value in headers.get_all(SMUGGLING_PLACES[place][0]):  # one line, no control characters
        assert value.isprintable() and "Bcc: victim@example.org" in value
    assert poster_of(headers).address in ("jane@example.edu", None)


# --------------------------------------------------------------------------
# render: the fields, the empty line, the body untouched. What we do not touch
# comes back byte for byte (with LF line endings).

KEPT = [
    'From: "Doe, Jane" <prof@example.edu>',
    "From: =?utf-8?q?J=C3=BCrgen_M=C3=BCller?= <jm@example.de>",
    "From: Jürgen Müller <jm@example.de>",  # raw 8-bit stays raw
    "Content-Type: multipart/mixed;\n boundary=\"===============123==\"",
    "DKIM-Signature: v=1; a=rsa-sha256; c=relaxed/relaxed; d=example.edu; s=sel;\n"
    "\th=from:to:subject:date; bh=47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU=;\n"
    "\tb=dGVzdCBzaWduYXR1cmU=",
    "Subject: " + "a very long subject that the sender's client did not fold " * 3,
    "Subject: =?ISO-8859-1?Q?=DCbung_f=FCr_morgen?=",
]


@pytest.mark.parametrize("line", KEPT)
@pytest.mark.parametrize("nl", ["\n", "\r\n"])
def test_untouched_message_renders_byte_identical(line, nl):
    headers = [h for h in BASIC if h.split(":")[0] != line.split(":")[0]]
    raw = msg(line.replace("\n", nl), *headers, nl=nl.encode())
    assert round_trip(raw) == msg(line, *headers)  # CRLF input: the headers come out LF


def test_make_policy_keeps_source_headers_unfolded():
    pol = make_policy("\r\n")
    assert pol.linesep == "\r\n" and pol.refold_source == "none"


def test_make_field_is_ascii_and_lf_terminated():
    assert make_field("Subject", "Grüße") == b"Subject: =?utf-8?b?R3LDvMOfZQ==?=\n"
    assert make_field("To", Address("CS 199", addr_spec="s@lists.example.edu")) == b"To: CS 199 <s@lists.example.edu>\n"


_ATTACHMENT = base64.encodebytes(bytes(range(256)) * 4)
BODIES = [
    ("8bit text", b"Gr\xc3\xbc\xc3\x9fe, Stra\xdfe (latin-1 too)\n-- \nsig\n"),
    ("binary >= 0x80", bytes(range(0x80, 0x100)) * 3 + b"\n" + bytes(range(1, 0x80))),
    ("no final newline", b"last line without newline"),
    ("empty", b""),
    ("mbox From line", b"From the start of the body\n>From quoted\n.\n..\n"),
    ("header-looking lines", b"Subject: not a header\nTo: nobody\n\nmore\n"),
    ("trailing whitespace", b"line   \n\t\n \n\n\n"),
    ("mixed line endings", b"crlf\r\nlf\ncr\ronly\r\n"),
    ("multipart with base64", (
        b"This is a multi-part message in MIME format.\n"
        b"--===============123==\n"
        b"Content-Type: text/plain; charset=\"iso-8859-1\"\n"
        b"Content-Transfer-Encoding: 8bit\n\n"
        b"F\xfcr alle: die Folien\n\n"
        b"--===============123==\n"
        b"Content-Type: application/pdf; name=\"slides.pdf\"\n"
        b"Content-Transfer-Encoding: base64\n"
        b"Content-Disposition: attachment; filename=\"slides.pdf\"\n\n"
        + _ATTACHMENT +
        b"--===============123==--\n"
        b"epilogue \xff\n")),
]


@pytest.mark.parametrize("nl", [b"\n", b"\r\n"])
@pytest.mark.parametrize("label,body", BODIES, ids=[b[0] for b in BODIES])
def test_body_is_byte_identical(label, body, nl):
    headers = list(BASIC)
    if label == "multipart with base64":
        headers[-1] = 'Content-Type: multipart/mixed; boundary="===============123=="'
    out = round_trip(msg(*headers, body=body, nl=nl), Subject="[Tag] 2026-01-22: Ünïcödé")
    fields, out_body = split_message(out)
    assert out_body == body
    assert out == b"".join(f.raw for f in fields) + b"\n" + body


def test_message_without_body_or_separator():
    out = round_trip(b"From: a@example.edu\nSubject: hi\n")
    assert out == b"From: a@example.edu\nSubject: hi\n\n"


def test_crlf_input_gives_lf_headers_and_the_body_as_it_was():
    out = round_trip(msg(*BASIC, body=b"body\r\n", nl=b"\r\n"), Subject="Grüße " * 30)
    head = head_of(out)
    assert b"\n " in head and b"\r" not in head  # the new Subject was folded, with LF (what sendmail takes)
    assert out.endswith(b"\n\nbody\r\n")


def test_lf_input_gives_lf_output():
    out = round_trip(msg(*BASIC, body=b"body\n"), Subject="Grüße " * 30)
    assert b"\n " in out and b"\r" not in out


def test_non_header_line_in_header_block_is_kept_in_body():
    out = round_trip(b"From: a@example.edu\nSubject: hi\nthis is not a header\n\nbody\n", Subject="new")
    assert out == b"From: a@example.edu\nSubject: new\n\nthis is not a header\n\nbody\n"


def test_non_header_line_without_body():
    out = round_trip(b"From: a@example.edu\nnot a header\n")
    assert out == b"From: a@example.edu\n\nnot a header\n"


def test_non_header_line_with_8bit_bytes_starts_the_body():
    out = round_trip(b"From: a@example.edu\nJ\xfcrgen \xff was here\nSubject: hi\n\nbody\n", Subject="new")
    assert out == b"From: a@example.edu\nSubject: new\n\nJ\xfcrgen \xff was here\nSubject: hi\n\nbody\n"


def test_unix_from_line_is_dropped():
    raw = b"From prof@example.edu  Wed Jan 21 10:00:00 2026\n" + msg(*BASIC)
    out = round_trip(raw)
    assert out == msg(*BASIC)


def test_render_joins_fields_an_empty_line_and_the_body():
    assert render([b"From: a@example.edu\n", b"Subject: hi\n"], b"body\r\n") == \
        b"From: a@example.edu\nSubject: hi\n\nbody\r\n"
    assert render([], b"body") == b"\nbody"


def test_rendered_message_parses_cleanly():
    out = round_trip(msg(*BASIC, "Cc: ta1@example.edu"), Subject="Grüße aus Köln",
                     To=Address(display_name="Doe, Jane's Students", addr_spec="students@lists.example.edu"))
    parsed = email.message_from_bytes(out, policy=policy.default)
    assert parsed.defects == []
    assert parsed.get_content() == "Hello.\n"
    assert str(parsed["Subject"]) == "Grüße aus Köln"


# --------------------------------------------------------------------------
# Folding the headers we set (Python 3.11's own folder glues words, doubles
# spaces and drops quotes in exactly these cases)

@pytest.mark.parametrize("n", range(0, 90, 3))
@pytest.mark.parametrize("words", ["Übung für morgen ist abgesagt", "試験の日程について 変更",
                                   "naïve café, résumé", "emoji 🎉🎉 party"])
def test_folded_subject_decodes_to_exactly_the_value_set(n, words):
    value = " ".join(["[CS 199 Students] 2026-01-22:"] + ["Word"] * (n // 4) + ["x" * (n % 4 + 1)] + words.split())
    out = round_trip(msg(*BASIC), Subject=value)
    assert str(parse_out(out)["Subject"]) == value
    for line in header_lines(out):
        assert line.isascii()
        if len(line.rstrip(b"\n")) > 78:  # only an unbreakable token may be longer
            assert b" " not in line.strip()


@pytest.mark.parametrize("n", range(0, 100, 7))
@pytest.mark.parametrize("tail", ["plain, ascii", 'with "quotes"', "Müller, Hans", "学生 リスト, 2026"])
def test_long_display_names_stay_one_address(n, tail):
    name = ("x" * n + " " + tail).strip()
    out = round_trip(msg(*BASIC), To=Address(display_name=name, addr_spec="students@lists.example.edu"))
    addrs = parse_out(out)["To"].addresses
    assert [(a.display_name, a.addr_spec) for a in addrs] == [(name, "students@lists.example.edu")]
    assert head_of(out).isascii()


def test_encoded_words_are_at_most_75_characters():
    out = round_trip(msg(*BASIC), Subject="Übung für morgen " * 10)
    words = [w for line in header_lines(out) for w in line.split() if w.startswith(b"=?")]
    assert words and all(len(w) <= 75 for w in words)
    assert all(w.startswith(b"=?utf-8?b?") and w.endswith(b"?=") for w in words)


@pytest.mark.parametrize("value", ["x" * 5000, "word " + "y" * 2000 + " end", ("a" * 80 + " ") * 40,
                                   "Grüße" * 400, "=?utf-8?q?" + "z" * 3000 + "?="])
def test_fields_we_set_have_no_line_over_998(value):
    """RFC 5322 §2.1.1: a long word becomes encoded words rather than a line longer than 998."""
    out = round_trip(msg(*BASIC), Subject=value)
    assert max(len(line) for line in head_of(out).split(b"\n")) <= 998
    assert str(parse_out(out)["Subject"]) == " ".join(value.split())


PHRASES = [
    ("CS 199 Students", ["CS", "199", "Students"]),
    ("  CS   199 ", ["CS", "199"]),
    ("Doe, Jane", ['"Doe, Jane"']),
    ('The "Best" List', ['"The \\"Best\\" List"']),
    ("Back\\slash", ['"Back\\\\slash"']),
    ("", []),
    ("Müller Hans", ["=?utf-8?b?TcO8bGxlcg==?=", "Hans"]),
]


@pytest.mark.parametrize("name,tokens", PHRASES)
def test_phrase_tokens(name, tokens):
    assert phrase_tokens(name) == tokens


def test_fold_tokens_breaks_only_between_tokens():
    assert fold_tokens("List-Id", ["a", "b"], 78) == "List-Id: a b\n"
    assert fold_tokens("X", ["aaaa", "bbbb", "cccc"], 9, "\r\n") == "X: aaaa\r\n bbbb\r\n cccc\r\n"
    assert fold_tokens("X", ["a" * 20], 10) == "X: " + "a" * 20 + "\n"  # an unbreakable token stays whole
    assert fold_tokens("X", [], 10) == "X: \n"


# --------------------------------------------------------------------------
# Reading values: Headers, header_text and all_texts

HEADER_TEXTS = [
    ("Subject: =?utf-8?q?Gr=C3=BC=C3=9Fe_aus_K=C3=B6ln?=", "Grüße aus Köln"),
    ("Subject: =?ISO-2022-JP?B?GyRCO244MyRORnxEeCRLJEQkJCRGGyhC?=", "試験の日程について"),
    ("Subject: Grüße aus Köln", "Grüße aus Köln"),  # raw 8-bit UTF-8
    ("Subject: folded\n   over\n\tthree lines", "folded over three lines"),
    ("Subject:", ""),
    ("X-Other: x", None),
]


@pytest.mark.parametrize("line", [t[0] for t in HEADER_TEXTS])
@pytest.mark.parametrize("nl", [b"\n", b"\r\n"])
def test_header_text(line, nl):
    expected = dict(HEADER_TEXTS)[line]
    headers = parse_headers(line.encode("utf-8").replace(b"\n", nl) + nl)
    assert header_text(headers, "Subject") == expected
    assert header_text(headers, "subject") == expected  # names are case-insensitive
    assert headers.get("SUBJECT") == expected


def test_header_text_first_of_several():
    headers = parse_headers(b"Subject: one\nSubject: two\n")
    assert header_text(headers, "Subject") == "one"
    assert headers.get_all("subject") == ["one", "two"]
    assert headers.count("Subject") == 2 and "subject" in headers and "Cc" not in headers


def test_a_value_the_parser_cannot_read_stays_as_it_came(monkeypatch):
    headers = parse_headers(b"Subject: =?utf-8?q?caf=C3=A9?= caf\xc3\xa9\n")

    class Broken:
        def header_factory(self, name, value):
            raise ValueError("unparsable")

    monkeypatch.setattr(headers, "policy", Broken())
    assert header_text(headers, "Subject") == "=?utf-8?q?caf=C3=A9?= café"  # the raw value, decoded as UTF-8


def test_all_texts():
    headers = parse_headers(b"List-Id: <a.example.org>\nX: y\nlist-id: Two\n  <b.example.org>\n")
    assert all_texts(headers, "List-Id") == ["<a.example.org>", "Two <b.example.org>"]
    assert all_texts(headers, "Nope") == []


def test_raw_all_leaves_encoded_words_encoded():
    headers = parse_headers(b"Subject: =?utf-8?q?caf=C3=A9?=\n  tomorrow\n")
    assert headers.raw_all("Subject") == ["=?utf-8?q?caf=C3=A9?=  tomorrow"]
    assert headers.get_all("Subject") == ["café tomorrow"]
    assert headers.names() == ["Subject"]


# Hostile mail: raw UTF-8 and legacy 8-bit bytes are read as mail clients read them
# (UTF-8, else Windows-1252, else Latin-1), never as U+FFFD; control characters
# are spaces; values are cut before a parser sees them.
RAW_VALUES = [
    # raw value bytes, text
    (b"Gr\xc3\xbc\xc3\x9fe aus K\xc3\xb6ln", "Grüße aus Köln"),  # UTF-8
    (b"Gr\xfc\xdfe aus K\xf6ln", "Grüße aus Köln"),  # Latin-1 / Windows-1252
    (b"\x93Quoted\x94 \x96 5 \x80, that\x92s it\x85", "“Quoted” – 5 €, that’s it…"),  # Windows-1252 only
    (b"caf\xe9 \x81", "café \x81"),  # 0x81 is no Windows-1252 character: Latin-1
    (b"caf\xc3\xa9 na\xefve", "cafÃ© naïve"),  # not valid UTF-8 as a whole: one legacy reading of the field
    (b"\xe8\xa9\xa6\xe9\xa8\x93", "試験"),
    (b"=?utf-8?q?caf=C3=A9?= na\xc3\xafve", "café naïve"),  # encoded words and raw UTF-8 together
    (b"=?iso-8859-1?q?=DCbung?= f\xfcr", "Übung für"),
    (b"a\x0bb\x0cc\x1cd\x1de\x1ef\rg\x00h\x7fi\x01j", "a b c d e f g h i j"),  # control characters as spaces
    (b"=?utf-8?q?a=0Bb=0Dc=0Ad=1Ce?=", "a b c d e"),  # ... also encoded ones
    (b"a\xe2\x80\xa8b\xc2\x85c", "a b c"),  # Unicode line separators too
    (b"=?utf-8?q?=3D=3Futf-8=3Fq=3Fx=3F=3D?=", "=?utf-8?q?x?="),  # decoded once, not twice
    (b"=?x-unknown?q?abc?=", "abc"),
    (b"=?utf-8?q?unterminated", "=?utf-8?q?unterminated"),
    (b"x" * 5000, "x" * VALUE_LIMIT),
    (b"=?utf-8?b?" + b"QUFB" * 30000 + b"?=", ("=?utf-8?b?" + "QUFB" * 30000)[:VALUE_LIMIT]),  # cut: left as it came
]


@pytest.mark.parametrize("value,text", RAW_VALUES)
def test_values_are_decoded_as_mail_clients_do(value, text):
    headers = parse_headers(b"Subject: " + value + b"\nFrom: x@example.edu\n")
    assert headers.get("Subject") == text
    assert headers.get_all("Subject") == [text]
    assert "\ufffd" not in text


@pytest.mark.parametrize("data,text", [(b"", ""), (b"plain", "plain"), (b"\xc3\xbc", "ü"), (b"\xfc", "ü"),
                                       (b"\x80", "€"), (b"\x81\xfc", "\x81ü")])
def test_decode_bytes(data, text):
    assert decode_bytes(data) == text


def test_each_field_is_decoded_on_its_own():
    headers = parse_headers(b"Subject: K\xc3\xb6ln\nFrom: J\xfcrgen <jm@example.de>\nX-A: \x93q\x94\n")
    assert headers.get("Subject") == "Köln"
    assert headers.get("From") == "Jürgen <jm@example.de>"
    assert headers.get("X-A") == "“q”"
    assert poster_of(headers) == Poster("Jürgen", "jm@example.de", "")


CONTENT_TYPES = [
    # Content-Type value, maintype, charset
    (b"text/plain; charset=utf-8", "text", "utf-8"),
    (b"text/plain; charset=\"ISO-8859-1\"", "text", "ISO-8859-1"),
    (b"multipart/mixed; boundary=x", "multipart", None),
    (b"TEXT/HTML", "text", None),
    (None, "text", None),  # RFC 2045 §5.2: no Content-Type is text/plain; us-ascii
    (b"/", "text", None),
    (b"", "text", None),
    (b"text", "text", None),
    (b"image/png (" * 300, "text", None),
]


@pytest.mark.parametrize("value,maintype,charset", CONTENT_TYPES)
def test_content_type(value, maintype, charset):
    headers = parse_headers(b"From: a@example.edu\n" + (b"Content-Type: " + value + b"\n" if value is not None else b""))
    assert headers.get_content_maintype() == maintype
    assert headers.get_content_charset() == charset


def test_two_content_types_are_read_as_none():
    headers = parse_headers(b"Content-Type: image/png\nContent-Type: text/html; charset=utf-8\n")
    assert (headers.get_content_maintype(), headers.get_content_charset()) == ("text", None)


# --------------------------------------------------------------------------
# Hostile mail: who the From header names. The angle-addr a client shows is the
# address; a From whose parse and angle-addr disagree, a group, several
# mailboxes, two From (or Sender) fields, an unreadable or too long From name
# nobody (problem says why, and contains the word given here).

FROM_FORMS = [
    # From field value (bytes), display name, address, a word of the problem ("" = none)
    (b"Jane Doe <jane@example.edu>", "Jane Doe", "jane@example.edu", ""),
    (b"jane@example.edu", "", "jane@example.edu", ""),
    (b"<jane@example.edu>", "", "jane@example.edu", ""),
    (b'"Doe, Jane" <jane@example.edu>', "Doe, Jane", "jane@example.edu", ""),
    (b"Jane <JANE@Example.EDU>", "Jane", "JANE@Example.EDU", ""),
    (b"Jane <jane@[192.0.2.1]>", "Jane", "jane@[192.0.2.1]", ""),
    (b"Jane <jane@example.edu>,", "Jane", "jane@example.edu", ""),
    # a display name that looks like an address: judged by the angle-addr, or ambiguous
    (b'"instructor@example.edu" <someone@example.org>', "instructor@example.edu", "someone@example.org", ""),
    (b"=?utf-8?q?instructor=40example=2Eedu?= <someone@example.org>", "instructor@example.edu",
     "someone@example.org", ""),
    (b"instructor@example.edu <someone@example.org>", "", None, "ambiguous"),
    (b"instructor@example.edu <instructor@example.edu>", "", "instructor@example.edu", ""),
    # quoted display names with <> in them
    (b'"Jane <instructor@example.edu>" <someone@example.org>', "Jane <instructor@example.edu>", "someone@example.org", ""),
    (b'"Jane \\" <instructor@example.edu>" <someone@example.org>', 'Jane " <instructor@example.edu>',
     "someone@example.org", ""),
    (b'"Doe, Jane <instructor@example.edu>" <someone@example.org>', "Doe, Jane <instructor@example.edu>",
     "someone@example.org", ""),
    (b"=?utf-8?q?Jane_=3Cinstructor=40example=2Eedu=3E?= <someone@example.org>", "Jane <instructor@example.edu>",
     "someone@example.org", ""),
    # comments that contain addresses
    (b"someone@example.org (instructor@example.edu)", "", "someone@example.org", ""),
    (b"(instructor@example.edu) someone@example.org", "", "someone@example.org", ""),
    (b"Jane <someone@example.org> (instructor@example.edu)", "Jane", "someone@example.org", ""),
    (b"Jane (instructor@example.edu) <someone@example.org>", "Jane", "someone@example.org", ""),
    (b"Jane <someone@example.org> (a (nested <instructor@example.edu>) comment)", "Jane", "someone@example.org", ""),
    # a second address outside the angle-addr, comments and quotes: what would a client show?
    (b"Jane <someone@example.org> instructor@example.edu", "", None, "ambiguous"),
    (b"<someone@example.org> instructor@example.edu", "", None, "ambiguous"),
    (b"Jane <instructor@example.edu", "", None, "ambiguous"),
    (b"Jane <@route.example:instructor@example.edu>", "", None, "ambiguous"),
    # groups and several addresses
    (b"Team: someone@example.org, instructor@example.edu;", "", None, "group"),
    (b"Team: instructor@example.edu;", "", None, "group"),
    (b"undisclosed-recipients:;", "", None, "group"),
    (b"someone@example.org, instructor@example.edu", "", None, "2 addresses"),
    (b"Jane <someone@example.org>, Prof <instructor@example.edu>", "", None, "2 addresses"),
    # encoded-word and 8-bit names (and SMTPUTF8 addresses)
    (b"=?utf-8?q?J=C3=BCrgen_M=C3=BCller?= <jm@example.de>", "Jürgen Müller", "jm@example.de", ""),
    (b"=?iso-8859-1?q?J=FCrgen?= <jm@example.de>", "Jürgen", "jm@example.de", ""),
    (b"=?utf-8?b?SsO8cmdlbg==?= <jm@example.de>", "Jürgen", "jm@example.de", ""),
    (b"J\xc3\xbcrgen M\xc3\xbcller <jm@example.de>", "Jürgen Müller", "jm@example.de", ""),
    (b"J\xfcrgen M\xfcller <jm@example.de>", "Jürgen Müller", "jm@example.de", ""),
    (b'"M\xc3\xbcller, J\xc3\xbcrgen" <jm@example.de>', "Müller, Jürgen", "jm@example.de", ""),
    (b"J\xc3\xbcrgen <j\xc3\xbcrgen@example.de>", "Jürgen", "jürgen@example.de", ""),
    (b"j\xc3\xbcrgen@b\xc3\xbccher.example", "", "jürgen@bücher.example", ""),
    (b"\xe5\xad\xa6\xe7\x94\x9f <\xe5\xad\xa6\xe7\x94\x9f@example.edu>", "学生", "学生@example.edu", ""),
    # control characters (Python line breaks) inside the From: one field, read as spaces
    (b"Jane\x0bFrom: instructor@example.edu <someone@example.org>", "", None, "group"),
    (b"someone@example.org\rFrom: instructor@example.edu", "", None, "ambiguous"),
    (b"Jane\x0c<instructor@example.edu> <someone@example.org>", "", None, "ambiguous"),
    # what the standard library's parser rejects, or what is no address
    (b"", "", None, "0 addresses"),
    (b"@example.edu", "", None, "address"),
    (b"jane@", "", None, "read"),
    (b'"unterminated <jane@example.edu>', "", None, "address"),
    (b"Jane <<jane@example.edu>>", "", None, "address"),
    (b"(" * 1500 + b"x" + b")" * 1500 + b" jane@example.edu", "", None, "read"),  # deeply nested comments
    (b"jane@example.edu " + b"(" * 1900, "", None, "read"),
    (b"=?utf-8?q?=3Cinstructor=40example=2Eedu=3E?= someone@example.org", "", None, "read"),
    (b"Jane " * 900 + b"<jane@example.edu>", "", None, "too long"),  # over VALUE_LIMIT
]


@pytest.mark.parametrize("value,name,address,problem", FROM_FORMS)
def test_poster_of(value, name, address, problem):
    poster = poster_of(parse_headers(b"To: students@lists.example.edu\nFrom: " + value + b"\nSubject: x\n"))
    assert (poster.name, poster.address) == (name, address)
    if problem:
        assert problem in poster.problem
    else:
        assert poster.problem == ""


FROM_FIELDS = [
    # header block, address, a word of the problem
    (b"Subject: x\n", None, "no From"),
    (b"From: jane@example.edu\nFrom: instructor@example.edu\n", None, "2 From"),
    (b"From: instructor@example.edu\nSubject: x\nfrom: jane@example.edu\n", None, "2 From"),
    (b"From: jane@example.edu\nFrom: jane@example.edu\n", None, "2 From"),
    (b"From: jane@example.edu\nSender: a@example.edu\nSender: b@example.edu\n", None, "2 Sender"),
    (b"From: jane@example.edu\nSender: secretary@example.edu\n", "jane@example.edu", ""),  # Sender grants nothing
    (b"From: jane@example.edu\nReply-To: instructor@example.edu\n", "jane@example.edu", ""),
    (b"From: jane@example.edu\n\x0bFrom: instructor@example.edu\n", "jane@example.edu", ""),  # the second is body
    (b"From: jane@example.edu\n From: instructor@example.edu\n", None, "ambiguous"),  # a continuation
    (b"From: Jane\n <jane@example.edu>\n", "jane@example.edu", ""),  # folded
    (b"From: \n", None, "0 addresses"),
    (b"From: " + b"a" * 200_000 + b"@example.edu\n", None, "too long"),
]


@pytest.mark.parametrize("head,address,problem", FROM_FIELDS)
def test_poster_of_the_from_fields(head, address, problem):
    poster = poster_of(parse_headers(head))
    assert poster.address == address
    assert (problem in poster.problem) if problem else poster.problem == ""


@pytest.mark.parametrize("value,name,address,problem", [f for f in FROM_FORMS if not f[3]])
def test_the_from_checked_is_the_from_the_stdlib_reads(value, name, address, problem):
    """Where poster_of names a poster, a member's standard-library parser reads that one address too."""
    parsed = BytesParser(policy=policy.default).parsebytes(b"From: " + value + b"\n\n")
    if value.isascii():
        assert [a.addr_spec.lower() for a in parsed["From"].addresses] == [address.lower()]
    else:
        text = value.decode("utf-8", "surrogateescape")
        assert address in text or address in decode_bytes(value)


# --------------------------------------------------------------------------
# Hostile mail: values the standard library's parser rejects never raise here
# (they used to defer the message, for days).


@pytest.mark.parametrize("line", STDLIB_REJECTS)
def test_values_the_stdlib_rejects_never_raise(line):
    raw = b"From: Jane <jane@example.edu>\nSubject: Hi\n" + line + b"\nMIME-Version: 1.0\n\nbody\n"
    fields, body = split_message(raw)
    headers = Headers(fields)
    for name in {f.name for f in fields} | {"From", "To", "Reply-To", "Message-ID", "Content-Type", "Date"}:
        assert all(isinstance(v, str) for v in headers.get_all(name) + headers.raw_all(name))
        assert headers.get(name) is None or isinstance(headers.get(name), str)
    assert headers.get_content_maintype() in ("text", "multipart")
    assert headers.get_content_charset() is None or isinstance(headers.get_content_charset(), str)
    assert poster_of(headers) == Poster("Jane", "jane@example.edu", "")
    assert body.endswith(b"body\n") and raw.endswith(body)
