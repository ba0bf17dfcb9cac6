"""listfilter.mail.headers: the header rewrite of a list post, and the loop check.

Data-driven: each table is a list of realistic cases, run through the whole
path a post takes (split, parse once, rewrite, render) and parsed back with
the standard library.
"""

from __future__ import annotations

import datetime
import email
from email import policy
from email.parser import BytesParser
from zoneinfo import ZoneInfo

import pytest

from listfilter.mail.headers import LOOP_HEADER, REMOVED_HEADERS, is_loop, rewrite_headers
from listfilter.mail.message import parse_headers, render, split_message
from listfilter.mail.subject import title_case

from . import list_row

TZ = ZoneInfo("America/Chicago")
NOW = datetime.datetime(2026, 1, 22, 9, 30, tzinfo=TZ)
LIST = list_row(description="Everyone in CS 199")


def msg(*headers: str, body: bytes = b"Hello.\n", nl: bytes = b"\n") -> bytes:
    """A raw message from header lines (str, UTF-8 encoded) and a body."""
    return nl.join(h.encode("utf-8") for h in headers) + nl + nl + body


def rewrite(raw: bytes, lst, now: datetime.datetime) -> bytes:
    """What deliver does to a post: split, parse the headers once, rewrite them, render with the body."""
    head, body = split_message(raw)
    return render(rewrite_headers(parse_headers(head), lst, now), body)


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
# The Subject: the old one decoded (RFC 2047, 8-bit, folded), the new one encoded and folded

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
    lst = list_row(display_name=name, subject_tag="CS 199")
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
    lst = list_row(display_name=name, subject_tag="CS 199")
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
    lst = list_row(reply_to=list_reply_to)
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
# The body and the message as a whole


def test_body_passes_the_rewrite_untouched():
    body = b"Gr\xfc\xdfe\r\n--b\n\x00\xff no final newline"
    out = rewrite(msg(*BASIC, body=body), LIST, NOW)
    assert out.endswith(b"\n\n" + body)


def test_rewritten_message_parses_cleanly():
    out = rewrite(msg(*BASIC, "Cc: ta1@example.edu"), LIST, NOW)
    parsed = email.message_from_bytes(out, policy=policy.default)
    assert parsed.defects == []
    assert parsed.get_content() == "Hello.\n"


def test_folded_headers_use_the_input_line_ending():
    name = "A very long display name, with a comma, " * 3
    out = rewrite(msg(*BASIC, nl=b"\r\n"), list_row(display_name=name.strip(), subject_tag="Tag"), NOW)
    head, _ = split_message(out)
    assert b"\r\n " in head  # something was folded
    assert b"\n" not in head.replace(b"\r\n", b"")


def test_removed_headers_table():
    # every row of the docstring's table that says "removed", besides List-*
    assert set(REMOVED_HEADERS) == {"Return-Path", "Delivered-To", "X-Original-To", "Disposition-Notification-To",
                                    "Return-Receipt-To", "X-Confirm-Reading-To", "Errors-To", "Precedence"}
    assert LOOP_HEADER == "X-Listfilter-Loop"


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
    other = list_row("staff@lists.example.edu", display_name="CS 199 Staff")
    assert is_loop(parse_headers(head), other) is False
