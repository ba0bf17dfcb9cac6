"""listfilter.mail.message: splitting, parsing once, rendering, folding the headers we set, reading values.

Data-driven: each table is a list of realistic cases; every test asserts
concrete values, parsed back with the standard library.
"""

from __future__ import annotations

import base64
import email
from email import policy
from email.headerregistry import Address
from email.parser import BytesParser

import pytest

from listfilter.mail.message import (
    all_texts,
    fold_tokens,
    header_text,
    make_policy,
    parse_headers,
    phrase_tokens,
    render,
    split_message,
)

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
    """Split, parse, replace the given headers (as a list post's rewrite does), render."""
    head, body = split_message(raw)
    headers = parse_headers(head)
    for name, value in set_headers.items():
        del headers[name]
        headers[name] = value
    return render(headers, body)


def header_lines(raw: bytes) -> list[bytes]:
    head, _ = split_message(raw)
    return head.splitlines(keepends=True)


# --------------------------------------------------------------------------
# split_message

SPLITS = [
    # raw, header, body
    (b"A: 1\nB: 2\n\nbody\n", b"A: 1\nB: 2\n", b"body\n"),
    (b"A: 1\r\nB: 2\r\n\r\nbody\r\n", b"A: 1\r\nB: 2\r\n", b"body\r\n"),
    (b"A: 1\nB: 2\n", b"A: 1\nB: 2\n", b""),  # no body, no empty line
    (b"A: 1\nB: 2", b"A: 1\nB: 2", b""),  # not even a final newline
    (b"A: 1\n\n", b"A: 1\n", b""),  # empty body
    (b"A: 1\n\n\n\nx\n\ny", b"A: 1\n", b"\n\nx\n\ny"),  # blank lines in body stay
    (b"\nbody only\n", b"", b"body only\n"),
    (b"\r\nbody only\r\n", b"", b"body only\r\n"),
    (b"A: 1\n folded\n\nb", b"A: 1\n folded\n", b"b"),
    (b"A: 1\r\n\r\n\x00\xff\r\n\n", b"A: 1\r\n", b"\x00\xff\r\n\n"),
    (b"A: 1\n \n\nb", b"A: 1\n \n", b"b"),  # whitespace-only line is no separator
]


@pytest.mark.parametrize("raw,head,body", SPLITS)
def test_split_message(raw, head, body):
    h, b = split_message(raw)
    assert (h, b) == (head, body)
    assert raw.startswith(h) and raw.endswith(b)
    sep = raw[len(h):len(raw) - len(b)]
    assert sep in (b"", b"\n", b"\r\n")


# --------------------------------------------------------------------------
# parse_headers and render: what we do not touch comes back byte for byte

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
    assert round_trip(raw) == raw


def test_parse_headers_takes_the_input_line_ending():
    assert parse_headers(b"A: 1\r\nB: 2\r\n").policy.linesep == "\r\n"
    assert parse_headers(b"A: 1\nB: 2\n").policy.linesep == "\n"
    assert parse_headers(b"").policy.linesep == "\n"


def test_make_policy_keeps_source_headers_unfolded():
    pol = make_policy("\r\n")
    assert pol.linesep == "\r\n" and pol.refold_source == "none"


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
    head, out_body = split_message(out)
    assert out_body == body
    assert out == head + nl + body


def test_message_without_body_or_separator():
    out = round_trip(b"From: a@example.edu\nSubject: hi\n")
    assert out == b"From: a@example.edu\nSubject: hi\n\n"


def test_crlf_input_gives_crlf_output_everywhere():
    out = round_trip(msg(*BASIC, body=b"body\r\n", nl=b"\r\n"), Subject="Grüße " * 30)
    assert b"\r\n " in out  # the new Subject was folded, with CRLF
    assert b"\n" not in out.replace(b"\r\n", b"")
    assert out.endswith(b"\r\n\r\nbody\r\n")


def test_lf_input_gives_lf_output():
    out = round_trip(msg(*BASIC, body=b"body\n"), Subject="Grüße " * 30)
    assert b"\n " in out and b"\r" not in out


def test_non_header_line_in_header_block_is_kept_in_body():
    out = round_trip(b"From: a@example.edu\nSubject: hi\nthis is not a header\n\nbody\n", Subject="new")
    assert out == b"From: a@example.edu\nSubject: new\n\nthis is not a header\n\nbody\n"


def test_non_header_line_without_body():
    out = round_trip(b"From: a@example.edu\nnot a header\n")
    assert out == b"From: a@example.edu\n\nnot a header\n"


def test_unix_from_line_is_dropped():
    raw = b"From prof@example.edu  Wed Jan 21 10:00:00 2026\n" + msg(*BASIC)
    out = round_trip(raw)
    assert out == msg(*BASIC)


def test_render_with_explicit_linesep():
    headers = parse_headers(b"From: a@example.edu\nSubject: hi\n")
    assert render(headers, b"body\r\n", "\r\n") == b"From: a@example.edu\r\nSubject: hi\r\n\r\nbody\r\n"


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
    assert split_message(out)[0].isascii()


def test_encoded_words_are_at_most_75_characters():
    out = round_trip(msg(*BASIC), Subject="Übung für morgen " * 10)
    words = [w for line in header_lines(out) for w in line.split() if w.startswith(b"=?")]
    assert words and all(len(w) <= 75 for w in words)
    assert all(w.startswith(b"=?utf-8?b?") and w.endswith(b"?=") for w in words)


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
# header_text and all_texts

HEADER_TEXTS = [
    ("Subject: =?utf-8?q?Gr=C3=BC=C3=9Fe_aus_K=C3=B6ln?=", "Grüße aus Köln"),
    ("Subject: =?ISO-2022-JP?B?GyRCO244MyRORnxEeCRLJEQkJCRGGyhC?=", "試験の日程について"),
    ("Subject: Grüße aus Köln", "Grüße aus Köln"),  # raw 8-bit UTF-8
    ("Subject: folded\n   over\n\tthree lines", "folded over three lines"),
    ("Subject:", ""),
    ("X-Other: x", None),
]


@pytest.mark.parametrize("line,expected", HEADER_TEXTS)
def test_header_text(line, expected):
    headers = parse_headers(line.encode("utf-8") + b"\n")
    assert header_text(headers, "Subject") == expected
    assert header_text(headers, "subject") == expected  # names are case-insensitive


def test_header_text_first_of_several():
    headers = parse_headers(b"Subject: one\nSubject: two\n")
    assert header_text(headers, "Subject") == "one"


def test_header_text_of_a_header_the_registry_cannot_parse(monkeypatch):
    headers = parse_headers(b"Subject: caf\xc3\xa9\n")

    def broken(name, failobj=None):
        raise ValueError("unparsable")

    monkeypatch.setattr(headers, "get", broken)
    assert header_text(headers, "Subject") == "café"  # the raw value, decoded as UTF-8


def test_all_texts():
    headers = parse_headers(b"List-Id: <a.example.org>\nX: y\nlist-id: Two\n  <b.example.org>\n")
    assert all_texts(headers, "List-Id") == ["<a.example.org>", "Two <b.example.org>"]
    assert all_texts(headers, "Nope") == []
