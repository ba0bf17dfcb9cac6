"""listfilter.rewrite: splitting, subjects, header rewriting, loop detection.

Data-driven: each table below is a list of realistic cases; every test
asserts concrete values, parsed back with the standard library.
"""

from __future__ import annotations

import base64
import datetime
import email
from email import policy
from email.parser import BytesParser
from zoneinfo import ZoneInfo

import pytest

from listfilter.mail.message import (
    ListInfo,
    is_loop,
    new_subject,
    parse_headers,
    render,
    rewrite,
    rewrite_headers,
    split_message,
    title_case,
)

TZ = ZoneInfo("America/Chicago")
NOW = datetime.datetime(2026, 1, 22, 9, 30, tzinfo=TZ)
DAY = NOW.date()
TAG = "CS 199 Students"
LIST = ListInfo(
    address="students@lists.example.edu",
    display_name="CS 199 Students",
    subject_tag="CS 199 Students",
    reply_to=None,
    description="Everyone in CS 199",
)


def msg(*headers: str, body: bytes = b"Hello.\n", nl: bytes = b"\n") -> bytes:
    """A raw message from header lines (str, UTF-8 encoded) and a body."""
    return nl.join(h.encode("utf-8") for h in headers) + nl + nl + body


BASIC = (
    'From: "Doe, Jane" <prof@example.edu>',
    "To: students@lists.example.edu",
    "Subject: Hello there",
    "Date: Wed, 21 Jan 2026 10:00:00 -0600",
    "Message-ID: <m1@example.edu>",
    "MIME-Version: 1.0",
    "Content-Type: text/plain; charset=utf-8",
)


def parse_out(raw: bytes):
    return BytesParser(policy=policy.default).parsebytes(raw)


def header_lines(raw: bytes) -> list[bytes]:
    head, _ = split_message(raw)
    return head.splitlines(keepends=True)


def unfolded(raw: bytes, name: bytes) -> bytes:
    """The first ``name`` header of ``raw``, unfolded (CRLF/LF removed)."""
    out, inside = [], False
    for line in header_lines(raw):
        if line.lower().startswith(name.lower() + b":") and not out:
            inside = True
        elif line[:1] not in b" \t":
            inside = False
        if inside:
            out.append(line.rstrip(b"\r\n"))
    return b"".join(out)


# --------------------------------------------------------------------------
# ListInfo


def test_listinfo_derived_addresses():
    assert LIST.list_id == "students.lists.example.edu"
    assert LIST.owner_address == "students-owner@lists.example.edu"
    assert LIST.request_address == "students-request@lists.example.edu"
    assert LIST.bounces_address == "students-bounces@lists.example.edu"
    assert LIST.local_part == "students"
    assert LIST.domain == "lists.example.edu"


def test_listinfo_is_frozen_and_validated():
    with pytest.raises(AttributeError):
        LIST.address = "x@y"  # type: ignore[misc]
    with pytest.raises(ValueError):
        ListInfo("no-at-sign", "X", "X")


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
# title_case

TITLES = [
    ("hello there", "Hello There"),
    ("the end of the world", "The End of the World"),
    ("notes on the exam: the answers", "Notes on the Exam: The Answers"),
    ("Notes On The Exam", "Notes on the Exam"),
    ("a tale of two cities", "A Tale of Two Cities"),
    ("CS 199 HW3 is due", "CS 199 HW3 Is Due"),
    ("my new iPhone and the URL", "My New iPhone and the URL"),
    ("URGENT: read this", "URGENT: Read This"),
    ("state-of-the-art e-mail", "State-of-the-Art E-Mail"),
    ("über die prüfung", "Über Die Prüfung"),
    ("élan vital à paris", "Élan Vital À Paris"),
    ("ölçme ve değerlendirme", "Ölçme Ve Değerlendirme"),
    ("試験の日程について", "試験の日程について"),
    ("exam 試験 schedule", "Exam 試験 Schedule"),
    ("office hours: 3rd floor", "Office Hours: 3rd Floor"),
    ('"quoted words" (and parens)', '"Quoted Words" (and Parens)'),
    ("see https://example.edu/syllabus for details",
     "See https://example.edu/syllabus for Details"),
    ("mail prof@example.edu about hw_3 and notes.pdf",
     "Mail prof@example.edu About hw_3 and notes.pdf"),
    ("python vs java", "Python vs Java"),
    ("  lots   of\twhite\n space  ", "Lots of White Space"),
    ("meet up at 5 via zoom", "Meet up at 5 via Zoom"),
    ("to be or not to be", "To Be or Not to Be"),
    ("", ""),
]


@pytest.mark.parametrize("text,expected", TITLES)
def test_title_case(text, expected):
    assert title_case(text) == expected


# --------------------------------------------------------------------------
# new_subject

SUBJECTS = [
    ("Hello There", "[CS 199 Students] 2026-01-22: Hello There"),
    ("hello there", "[CS 199 Students] 2026-01-22: Hello There"),
    ("Re: [CS 199 Students] 2026-01-21: Hello There",
     "[CS 199 Students] 2026-01-22: Re: Hello There"),
    ("RE: Re: [CS 199 Students] 2026-01-21: hello there",
     "[CS 199 Students] 2026-01-22: Re: Hello There"),
    ("[CS 199 Students] 2026-01-21: Re: Hello There",
     "[CS 199 Students] 2026-01-22: Re: Hello There"),
    ("Re: [CS 199 Students] 2026-01-21: Re: Hello There",
     "[CS 199 Students] 2026-01-22: Re: Hello There"),
    ("Fwd: Re: homework", "[CS 199 Students] 2026-01-22: Re: Homework"),
    ("Fwd: FW: Fw: homework", "[CS 199 Students] 2026-01-22: Fwd: Homework"),
    ("fwd:re:homework", "[CS 199 Students] 2026-01-22: Re: Homework"),
    ("Re[2]: homework", "[CS 199 Students] 2026-01-22: Re: Homework"),
    ("Re [3] : homework", "[CS 199 Students] 2026-01-22: Re: Homework"),
    ("AW: Re: Frage zur Übung", "[CS 199 Students] 2026-01-22: Re: Frage Zur Übung"),
    ("WG: Unterlagen", "[CS 199 Students] 2026-01-22: Fwd: Unterlagen"),
    ("Fwd: [CS 199 Students] 2026-01-20: Exam room",
     "[CS 199 Students] 2026-01-22: Fwd: Exam Room"),
    ("Re: [cs 199 students] 2026-01-21: case of the tag",
     "[CS 199 Students] 2026-01-22: Re: Case of the Tag"),
    ("Re: [CS 199 Students] no date here",
     "[CS 199 Students] 2026-01-22: Re: No Date Here"),
    ("Re: [CS 199\n  Students] 2026-01-21:\n hello",
     "[CS 199 Students] 2026-01-22: Re: Hello"),
    ("[CS 225 Students] 2026-01-21: other list",
     "[CS 199 Students] 2026-01-22: [CS 225 Students] 2026-01-21: Other List"),
    ("Question about [CS 199 Students]",
     "[CS 199 Students] 2026-01-22: Question About [CS 199 Students]"),
    ("Regarding the exam", "[CS 199 Students] 2026-01-22: Regarding the Exam"),
    ("Return of the quiz", "[CS 199 Students] 2026-01-22: Return of the Quiz"),
    ("Fwdx: thing", "[CS 199 Students] 2026-01-22: Fwdx: Thing"),
    ("", "[CS 199 Students] 2026-01-22: (no subject)"),
    ("   ", "[CS 199 Students] 2026-01-22: (no subject)"),
    (None, "[CS 199 Students] 2026-01-22: (no subject)"),
    ("Re:", "[CS 199 Students] 2026-01-22: Re: (no subject)"),
    ("Re: [CS 199 Students] 2026-01-21:", "[CS 199 Students] 2026-01-22: Re: (no subject)"),
    ("Re:   lots\t of\r\n  space", "[CS 199 Students] 2026-01-22: Re: Lots of Space"),
    ("試験の日程について", "[CS 199 Students] 2026-01-22: 試験の日程について"),
    ("Re: 試験の日程について", "[CS 199 Students] 2026-01-22: Re: 試験の日程について"),
]


@pytest.mark.parametrize("old,expected", SUBJECTS)
def test_new_subject(old, expected):
    assert new_subject(old, TAG, DAY) == expected


def test_new_subject_is_idempotent_on_its_own_output():
    once = new_subject("Re: hello there", TAG, DAY)
    assert new_subject(once, TAG, DAY) == once


def test_new_subject_uses_given_day_and_tag():
    assert new_subject("x", "Staff", datetime.date(2025, 12, 31)) == "[Staff] 2025-12-31: X"


# --------------------------------------------------------------------------
# Subjects through the whole rewrite: RFC 2047, 8-bit, folding

ENCODED_SUBJECTS = [
    ("Subject: =?utf-8?q?Gr=C3=BC=C3=9Fe_aus_K=C3=B6ln?=",
     "[CS 199 Students] 2026-01-22: Grüße Aus Köln"),
    ("Subject: =?ISO-8859-1?Q?=DCbung_f=FCr_morgen?=",
     "[CS 199 Students] 2026-01-22: Übung Für Morgen"),
    ("Subject: =?UTF-8?B?6Kmm6aiT44Gu5pel56iL44Gr44Gk44GE44Gm?=",
     "[CS 199 Students] 2026-01-22: 試験の日程について"),
    ("Subject: =?ISO-2022-JP?B?GyRCO244MyRORnxEeCRLJEQkJCRGGyhC?=",
     "[CS 199 Students] 2026-01-22: 試験の日程について"),
    ("Subject: Re: =?utf-8?q?=5BCS_199_Students=5D_2026-01-21=3A_caf=C3=A9?=",
     "[CS 199 Students] 2026-01-22: Re: Café"),
    ("Subject: =?utf-8?q?RE=3A?= =?utf-8?q?_Fwd=3A_na=C3=AFve?= question",
     "[CS 199 Students] 2026-01-22: Re: Naïve Question"),
    ("Subject: Grüße aus Köln",  # raw 8-bit UTF-8, no RFC 2047
     "[CS 199 Students] 2026-01-22: Grüße Aus Köln"),
    ("Subject: Re: [CS 199 Students] 2026-01-21: a very long subject line that\n"
     " was folded by the sender's client because it is longer than seventy-eight\n"
     "\tcharacters",
     "[CS 199 Students] 2026-01-22: Re: A Very Long Subject Line That Was Folded by the "
     "Sender's Client Because It Is Longer Than Seventy-Eight Characters"),
    ("Subject:", "[CS 199 Students] 2026-01-22: (no subject)"),
    (None, "[CS 199 Students] 2026-01-22: (no subject)"),
]


@pytest.mark.parametrize("subject_line,expected", ENCODED_SUBJECTS)
@pytest.mark.parametrize("nl", [b"\n", b"\r\n"])
def test_subject_through_rewrite(subject_line, expected, nl):
    headers = [h for h in BASIC if not h.startswith("Subject:")]
    if subject_line is not None:
        headers.insert(2, subject_line.replace("\n", nl.decode()))
    out = rewrite(msg(*headers, nl=nl), LIST, NOW)
    parsed = parse_out(out)
    assert parsed.get_all("Subject") == [expected]
    head, _ = split_message(out)
    assert head.isascii(), "new headers are RFC 2047 encoded, not raw 8-bit"
    for line in head.split(nl)[:-1]:
        assert not line.endswith(b"\r") and b"\n" not in line  # one line ending throughout
        if line.startswith((b"Subject:", b" ", b"\t")):
            assert len(line) <= 78


LONG = ("an extremely long subject about the midterm exam room change and the "
        "new office hours schedule für alle Studierenden im Kurs, bitte lesen")


def test_long_subject_is_folded_and_round_trips():
    out = rewrite(msg(*BASIC[:2], f"Subject: {LONG}", *BASIC[3:]), LIST, NOW)
    subject_lines = []
    for line in header_lines(out):
        if line.startswith(b"Subject:") or (subject_lines and line[:1] in b" \t"):
            subject_lines.append(line)
        elif subject_lines:
            break
    assert len(subject_lines) > 1
    assert all(len(line.rstrip(b"\n")) <= 78 for line in subject_lines)
    assert str(parse_out(out)["Subject"]) == "[CS 199 Students] 2026-01-22: " + title_case(LONG)


# --------------------------------------------------------------------------
# To and List-Id with awkward display names

DISPLAY_NAMES = [
    "CS 199 Students",
    "Doe, Jane's Students",
    'The "Best" List',
    "Back\\slash (and parens)",
    "Müller, Hans",
    "学生 リスト, 2026",
    "Ünïcödé \"quoted\", with comma",
    "A really long display name for a list " * 3,
]


@pytest.mark.parametrize("name", DISPLAY_NAMES)
def test_to_header_display_name_round_trips(name):
    lst = ListInfo(LIST.address, name, "CS 199", None)
    out = rewrite(msg(*BASIC), lst, NOW)
    parsed = parse_out(out)
    assert len(parsed.get_all("To")) == 1
    (addr,) = parsed["To"].addresses
    assert addr.display_name == " ".join(name.split())
    assert addr.addr_spec == "students@lists.example.edu"
    head, _ = split_message(out)
    assert head.isascii()


@pytest.mark.parametrize("name", DISPLAY_NAMES)
def test_list_id_display_name_round_trips(name):
    lst = ListInfo(LIST.address, name, "CS 199", None)
    out = rewrite(msg(*BASIC), lst, NOW)
    raw_line = unfolded(out, b"List-Id")
    assert raw_line.endswith(b" <students.lists.example.edu>")
    assert raw_line.isascii()
    value = str(parse_out(out)["List-Id"])
    clean = " ".join(name.split())
    if clean.isascii():
        quoted = '"' + clean.replace("\\", "\\\\").replace('"', '\\"') + '"'
        assert value == f"{quoted} <students.lists.example.edu>"
    else:
        assert value == f"{clean} <students.lists.example.edu>"


def test_list_id_exact_for_the_common_case():
    out = rewrite(msg(*BASIC), LIST, NOW)
    assert b'List-Id: "CS 199 Students" <students.lists.example.edu>\n' in out


# --------------------------------------------------------------------------
# The header table

def test_all_added_headers_exact():
    out = rewrite(msg(*BASIC), LIST, NOW)
    parsed = parse_out(out)
    assert parsed["To"].addresses[0].display_name == "CS 199 Students"
    assert str(parsed["List-Post"]) == "<mailto:students@lists.example.edu>"
    assert str(parsed["List-Help"]) == "<mailto:students-request@lists.example.edu?subject=help>"
    assert str(parsed["List-Owner"]) == "<mailto:students-owner@lists.example.edu>"
    assert parsed.get_all("Precedence") == ["list"]
    assert parsed.get_all("X-Listfilter-Loop") == ["students@lists.example.edu"]
    assert parsed.get_all("Subject") == ["[CS 199 Students] 2026-01-22: Hello There"]


REMOVED = [
    "Return-Path: <alice@example.edu>",
    "Delivered-To: students@lists.example.edu",
    "X-Original-To: students@lists.example.edu",
    "Disposition-Notification-To: Jane <prof@example.edu>",
    "Return-Receipt-To: prof@example.edu",
    "X-Confirm-Reading-To: prof@example.edu",
    "Errors-To: prof@example.edu",
    "Precedence: bulk",
    "List-Id: Other list <other.lists.example.org>",
    "List-Unsubscribe: <mailto:other-leave@lists.example.org>",
    "List-Unsubscribe-Post: List-Unsubscribe=One-Click",
    "List-Archive: <https://lists.example.org/archive>",
    "List-Subscribe: <mailto:other-join@lists.example.org>",
    "LIST-POST: <mailto:other@lists.example.org>",
    "list-help: <mailto:other-request@lists.example.org>",
]


@pytest.mark.parametrize("line", REMOVED)
def test_removed_headers(line):
    out = rewrite(msg(line, *BASIC), LIST, NOW)
    name = line.split(":", 1)[0]
    value = line.split(":", 1)[1].strip()
    parsed = parse_out(out)
    assert value not in [str(v) for v in parsed.get_all(name, [])]
    assert line.encode() not in out


KEPT = [
    'From: "Doe, Jane" <prof@example.edu>',
    "From: =?utf-8?q?J=C3=BCrgen_M=C3=BCller?= <jm@example.de>",
    "From: Jürgen Müller <jm@example.de>",  # raw 8-bit stays raw
    "Cc: ta1@example.edu, \"Tran, Uma\" <TA2@Example.edu>",
    "Sender: secretary@example.edu",
    "Message-ID: <CAF=abc+def@mail.gmail.com>",
    "Date: Wed, 21 Jan 2026 10:00:00 -0600",
    "MIME-Version: 1.0",
    "Content-Type: multipart/mixed;\n boundary=\"===============123==\"",
    "Content-Transfer-Encoding: 8bit",
    "DKIM-Signature: v=1; a=rsa-sha256; c=relaxed/relaxed; d=example.edu; s=sel;\n"
    "\th=from:to:subject:date; bh=47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU=;\n"
    "\tb=dGVzdCBzaWduYXR1cmU=",
    "ARC-Seal: i=1; a=rsa-sha256; cv=none; d=example.edu; s=arc; b=xyz",
    "Authentication-Results: mx.example.edu; dkim=pass header.d=example.edu",
    "Received: from mail.example.edu (mail.example.edu [192.0.2.1])\n"
    "\tby mx.lists.example.edu (Postfix) with ESMTPS id 4Xyz\n"
    "\tfor <students@lists.example.edu>; Wed, 21 Jan 2026 10:00:01 -0600 (CST)",
    "In-Reply-To: <m0@example.edu>",
    "References: <a@example.edu>\n <m0@example.edu>",
    "X-Listfilter-Loop: staff@lists.example.edu",
    "X-Mailer: Something/1.0",
    "Thread-Topic: hello",
    "Reply-To: Jane Doe <jane.private@example.org>",
]


@pytest.mark.parametrize("line", KEPT)
@pytest.mark.parametrize("nl", ["\n", "\r\n"])
def test_kept_headers_are_byte_identical(line, nl):
    headers = [h for h in BASIC if h.split(":")[0] != line.split(":")[0]]
    raw = msg(line.replace("\n", nl), *headers, nl=nl.encode())
    out = rewrite(raw, LIST, NOW)
    assert (line.replace("\n", nl) + nl).encode("utf-8") in out


def test_cc_kept_and_to_replaced():
    raw = msg('From: "Doe, Jane" <prof@example.edu>', "To: Someone <someone@example.org>",
              "Cc: ta1@example.edu", "Subject: x")
    parsed = parse_out(rewrite(raw, LIST, NOW))
    assert [a.addr_spec for a in parsed["To"].addresses] == ["students@lists.example.edu"]
    assert [a.addr_spec for a in parsed["Cc"].addresses] == ["ta1@example.edu"]
    assert parsed["From"].addresses[0].display_name == "Doe, Jane"


def test_duplicate_to_and_subject_collapse_to_one():
    raw = msg("From: a@example.edu", "To: x@example.org", "To: y@example.org",
              "Subject: one", "Subject: two")
    parsed = parse_out(rewrite(raw, LIST, NOW))
    assert len(parsed.get_all("To")) == 1
    assert parsed.get_all("Subject") == ["[CS 199 Students] 2026-01-22: One"]


def test_missing_to_and_subject_are_added():
    parsed = parse_out(rewrite(msg("From: a@example.edu"), LIST, NOW))
    assert parsed["To"].addresses[0].addr_spec == "students@lists.example.edu"
    assert str(parsed["Subject"]) == "[CS 199 Students] 2026-01-22: (no subject)"


def test_header_order_preserved_for_replaced_headers():
    raw = msg("Received: from x by y; Wed, 21 Jan 2026 10:00:01 -0600", *BASIC)
    names = [line.split(b":")[0] for line in header_lines(rewrite(raw, LIST, NOW))
             if line[:1] not in b" \t"]
    assert names[:8] == [b"Received", b"From", b"To", b"Subject", b"Date", b"Message-ID",
                         b"MIME-Version", b"Content-Type"]
    assert names[8:] == [b"List-Id", b"List-Post", b"List-Help", b"List-Owner", b"Precedence",
                         b"X-Listfilter-Loop"]


REPLY_TO = [
    # list reply_to, poster's Reply-To line, expected Reply-To addr-specs
    (None, None, []),
    (None, "Reply-To: jane.private@example.org", ["jane.private@example.org"]),
    ("staff@lists.example.edu", None, ["staff@lists.example.edu"]),
    ("staff@lists.example.edu", "Reply-To: jane.private@example.org", ["staff@lists.example.edu"]),
    ('"CS 199 Staff" <staff@lists.example.edu>', "Reply-To: a@b.org", ["staff@lists.example.edu"]),
]


@pytest.mark.parametrize("list_reply_to,poster_line,expected", REPLY_TO)
def test_reply_to(list_reply_to, poster_line, expected):
    lst = ListInfo(LIST.address, LIST.display_name, LIST.subject_tag, list_reply_to)
    lines = list(BASIC) + ([poster_line] if poster_line else [])
    parsed = parse_out(rewrite(msg(*lines), lst, NOW))
    got = [a.addr_spec for h in parsed.get_all("Reply-To", []) for a in h.addresses]
    assert got == expected


def test_rewrite_headers_does_not_mutate_its_input():
    headers = parse_headers(msg(*BASIC, "Precedence: bulk").split(b"\n\n")[0] + b"\n")
    before = list(headers.raw_items())
    out = rewrite_headers(headers, LIST, NOW)
    assert list(headers.raw_items()) == before
    assert str(out["Precedence"]) == "list"
    assert str(headers["Precedence"]) == "bulk"


def test_subject_date_is_the_date_of_now_in_its_timezone():
    late = datetime.datetime(2026, 1, 22, 23, 30, tzinfo=TZ)  # 05:30 UTC next day
    out = rewrite(msg(*BASIC), LIST, late)
    assert str(parse_out(out)["Subject"]) == "[CS 199 Students] 2026-01-22: Hello There"


# --------------------------------------------------------------------------
# The body is never touched

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
    raw = msg(*headers, body=body, nl=nl)
    out = rewrite(raw, LIST, NOW)
    head, out_body = split_message(out)
    assert out_body == body
    assert out.endswith(nl + nl + body) or (head + nl + body == out)
    assert out == head + nl + body


def test_message_without_body_or_separator():
    raw = b"From: a@example.edu\nSubject: hi\n"
    out = rewrite(raw, LIST, NOW)
    head, body = split_message(out)
    assert body == b""
    assert out.endswith(b"\n\n")
    assert str(parse_out(out)["Subject"]) == "[CS 199 Students] 2026-01-22: Hi"


def test_crlf_input_gives_crlf_output_everywhere():
    raw = msg(*BASIC, body=b"body\r\n", nl=b"\r\n")
    out = rewrite(raw, LIST, NOW)
    assert b"\n" not in out.replace(b"\r\n", b"")
    assert out.endswith(b"\r\n\r\nbody\r\n")


def test_lf_input_gives_lf_output():
    out = rewrite(msg(*BASIC, body=b"body\n"), LIST, NOW)
    assert b"\r" not in out


def test_non_header_line_in_header_block_is_kept_in_body():
    raw = b"From: a@example.edu\nSubject: hi\nthis is not a header\n\nbody\n"
    out = rewrite(raw, LIST, NOW)
    assert out.endswith(b"\n\nthis is not a header\n\nbody\n")
    assert str(parse_out(out)["Subject"]) == "[CS 199 Students] 2026-01-22: Hi"


def test_render_keeps_non_header_lines_when_called_directly():
    head, body = split_message(b"From: a@example.edu\nnot a header\n\nbody\n")
    out = render(rewrite_headers(parse_headers(head), LIST, NOW), body)
    assert out.endswith(b"\n\nnot a header\n\nbody\n")


def test_unix_from_line_is_dropped():
    raw = b"From prof@example.edu  Wed Jan 21 10:00:00 2026\n" + msg(*BASIC)
    out = rewrite(raw, LIST, NOW)
    assert not out.startswith(b"From ")
    assert out.startswith(b'From: "Doe, Jane" <prof@example.edu>\n')


def test_render_with_explicit_linesep():
    headers = parse_headers(b"From: a@example.edu\nSubject: hi\n")
    out = render(headers, b"body\r\n", "\r\n")
    assert out == b"From: a@example.edu\r\nSubject: hi\r\n\r\nbody\r\n"


def test_rewritten_message_parses_cleanly():
    out = rewrite(msg(*BASIC, "Cc: ta1@example.edu"), LIST, NOW)
    parsed = email.message_from_bytes(out, policy=policy.default)
    assert parsed.defects == []
    assert parsed.get_content() == "Hello.\n"


# --------------------------------------------------------------------------
# Loop detection

LOOPS = [
    ("List-Id: CS 199 Students <students.lists.example.edu>", True),
    ("List-Id: <STUDENTS.Lists.Example.EDU>", True),
    ('List-Id: "Anything, really" <students.lists.example.edu>', True),
    ("List-Id: =?utf-8?q?Sch=C3=BCler?= <students.lists.example.edu>", True),
    ("List-Id: students.lists.example.edu", True),
    ("List-Id: CS 199 Staff <staff.lists.example.edu>", False),
    ("List-Id: <students.lists.example.edu.evil.org>", False),
    ("List-Id: <students.lists-dev.example.edu>", False),
    ("X-Listfilter-Loop: students@lists.example.edu", True),
    ("X-Listfilter-Loop: Students@Lists.Example.EDU", True),
    ("X-Listfilter-Loop: <students@lists.example.edu>", True),
    ("X-Listfilter-Loop: staff@lists.example.edu", False),
    ("X-Listfilter-Loop: students@lists-dev.example.edu", False),
    ("X-Loop: students@lists.example.edu", False),
    ("List-Post: <mailto:students@lists.example.edu>", False),
    (None, False),
]


@pytest.mark.parametrize("line,expected", LOOPS)
def test_is_loop(line, expected):
    lines = list(BASIC) + ([line] if line else [])
    head, _ = split_message(msg(*lines))
    assert is_loop(parse_headers(head), LIST) is expected


def test_is_loop_with_several_loop_headers():
    head, _ = split_message(msg(*BASIC, "X-Listfilter-Loop: staff@lists.example.edu",
                                "X-Listfilter-Loop: students@lists.example.edu"))
    assert is_loop(parse_headers(head), LIST) is True


def test_own_output_is_a_loop():
    out = rewrite(msg(*BASIC), LIST, NOW)
    head, _ = split_message(out)
    assert is_loop(parse_headers(head), LIST) is True
    other = ListInfo("staff@lists.example.edu", "CS 199 Staff", "CS 199 Staff")
    assert is_loop(parse_headers(head), other) is False


# --------------------------------------------------------------------------
# Folding of the headers we write (Python 3.11's own folder glues words,
# doubles spaces and drops quotes in exactly these cases)

@pytest.mark.parametrize("n", range(0, 90, 3))
@pytest.mark.parametrize("words", ["Übung für morgen ist abgesagt", "試験の日程について 変更",
                                   "naïve café, résumé", "emoji 🎉🎉 party"])
def test_folded_subject_decodes_to_exactly_the_new_subject(n, words):
    old = " ".join(["word"] * (n // 4) + ["x" * (n % 4 + 1)] + words.split())
    raw = msg(*[h for h in BASIC if not h.startswith("Subject:")], f"Subject: {old}")
    out = rewrite(raw, LIST, NOW)
    assert str(parse_out(out)["Subject"]) == new_subject(old, TAG, DAY)
    for line in header_lines(out):
        assert line.isascii()
        if len(line.rstrip(b"\n")) > 78:  # only an unbreakable token may be longer
            assert b" " not in line.strip()


@pytest.mark.parametrize("n", range(0, 100, 7))
@pytest.mark.parametrize("tail", ["plain, ascii", 'with "quotes"', "Müller, Hans", "学生 リスト, 2026"])
def test_long_display_names_stay_one_address(n, tail):
    name = ("x" * n + " " + tail).strip()
    out = rewrite(msg(*BASIC), ListInfo(LIST.address, name, "CS 199"), NOW)
    addrs = parse_out(out)["To"].addresses
    assert [(a.display_name, a.addr_spec) for a in addrs] == [(name, "students@lists.example.edu")]


def test_folded_headers_use_the_input_line_ending():
    name = "A very long display name, with a comma, " * 3
    out = rewrite(msg(*BASIC, nl=b"\r\n"), ListInfo(LIST.address, name.strip(), "Tag"), NOW)
    head, _ = split_message(out)
    assert b"\r\n " in head  # something was folded
    assert b"\n" not in head.replace(b"\r\n", b"")
