"""listfilter.mail.headers: the header rewrite of a list post, and the loop check.

Data-driven: each table is a list of realistic cases, run through the whole
path a post takes (split, parse once, rewrite, render) and parsed back with
the standard library. The last part holds the hostile mail at the unit
level (the end-to-end tests through Postfix are tests/integration/): what
members receive has exactly the fields the rewrite meant, however Postfix or
Python splits its lines, one of each singleton, no line over 998, and a cost
bounded however long the headers.
"""

from __future__ import annotations

import base64
import datetime
import email
import re
import time
import tracemalloc
from email import policy
from email.parser import BytesParser
from email.utils import format_datetime
from zoneinfo import ZoneInfo

import pytest

from listfilter.mail.headers import LOOP_HEADER, REMOVED_HEADERS, is_loop, rewrite_headers
from listfilter.mail.message import VALUE_LIMIT, Headers, decode_bytes, parse_headers, poster_of, render, split_message
from listfilter.mail.subject import title_case

from . import PYTHON_ONLY_BREAKS, SMUGGLING_PLACES, STDLIB_REJECTS, list_row, smuggling_message

TZ = ZoneInfo("America/Chicago")
NOW = datetime.datetime(2026, 1, 22, 9, 30, tzinfo=TZ)
LIST = list_row(description="Everyone in CS 199")


def msg(*headers: str, body: bytes = b"Hello.\n", nl: bytes = b"\n") -> bytes:
    """A raw message from header lines (str, UTF-8 encoded) and a body."""
    return nl.join(h.encode("utf-8") for h in headers) + nl + nl + body


def rewrite(raw: bytes, lst, now: datetime.datetime) -> bytes:
    """What deliver does to a post: split, parse the headers once, rewrite them, render with the body."""
    fields, body = split_message(raw)
    return render(rewrite_headers(Headers(fields), lst, now), body)


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


def head_of(raw: bytes) -> bytes:
    """The header block of ``raw`` as Postfix reads it: its fields' bytes."""
    fields, _ = split_message(raw)
    return b"".join(f.raw for f in fields)


def header_lines(raw: bytes) -> list[bytes]:
    return head_of(raw).splitlines(keepends=True)


def field_names(raw: bytes) -> list[str]:
    """The names of the header fields of ``raw``, split the Postfix way."""
    return [f.name for f in split_message(raw)[0]]


def fields_named(raw: bytes, name: str) -> list[bytes]:
    return [f.raw for f in split_message(raw)[0] if f.name.lower() == name.lower()]


def subject_field(raw: bytes) -> bytes:
    (field,) = fields_named(raw, "Subject")
    return field


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
    ("Subject: =?utf-8?q?=3D=3Futf-8=3Fq=3Fx=3F=3D_is_how_it_looks?=",  # decoded once: the text shows "=?...?="
     "[CS 199 Students] 2026-01-22: =?utf-8?q?x?= Is How It Looks"),
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
    head = head_of(out)
    assert subject_field(out).isascii(), "new headers are RFC 2047 encoded, not raw 8-bit"
    assert b"\r" not in head  # LF throughout, whatever the input's line ending
    for line in subject_field(out).split(b"\n")[:-1]:
        assert len(line) <= 78


def test_a_list_without_title_case_keeps_the_subject_as_written():
    headers = [h for h in BASIC if not h.startswith("Subject:")]
    headers.insert(2, "Subject: Re: relay down test")
    untitled = parse_out(rewrite(msg(*headers), list_row(title_case_subject=False), NOW))
    assert untitled.get_all("Subject") == ["[CS 199 Students] 2026-01-22: Re: relay down test"]
    titled = parse_out(rewrite(msg(*headers), LIST, NOW))
    assert titled.get_all("Subject") == ["[CS 199 Students] 2026-01-22: Re: Relay Down Test"]


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
    assert head_of(out).isascii()


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
    "X-Listfilter-Redirected-Recipients: 2 recipients: dean@example.edu, provost@example.edu",
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
    assert (line + "\n").encode("utf-8") in out  # byte for byte, with an LF line ending (what sendmail takes)


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
    before = list(headers.fields)
    out = rewrite_headers(headers, LIST, NOW)
    assert list(headers.fields) == before
    assert b"Precedence: list\n" in out and b"Precedence: bulk\n" not in out
    assert headers.get("Precedence") == "bulk"


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


def test_headers_come_out_lf_whatever_the_input():
    name = "A very long display name, with a comma, " * 3
    out = rewrite(msg(*BASIC, nl=b"\r\n", body=b"body\r\n"), list_row(display_name=name.strip(), subject_tag="Tag"), NOW)
    head = head_of(out)
    assert b"\n " in head  # something was folded
    assert b"\r" not in head
    assert out.endswith(b"\n\nbody\r\n")  # the body as it came


def test_removed_headers_table():
    # every row of the docstring's table that says "removed", besides List-*
    assert set(REMOVED_HEADERS) == {"Return-Path", "Delivered-To", "X-Original-To", "Disposition-Notification-To",
                                    "Return-Receipt-To", "X-Confirm-Reading-To", "Errors-To", "Precedence",
                                    "X-Listfilter-Redirected-Recipients", "X-Listfilter-Approved"}
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
    assert is_loop(Headers(split_message(msg(*lines))[0]), LIST) is expected
    assert is_loop(parse_headers(head_of(msg(*lines))), LIST) is expected


def test_is_loop_with_several_loop_headers():
    head = head_of(msg(*BASIC, "X-Listfilter-Loop: staff@lists.example.edu",
                       "X-Listfilter-Loop: students@lists.example.edu"))
    assert is_loop(parse_headers(head), LIST) is True


def test_own_output_is_a_loop():
    out = rewrite(msg(*BASIC), LIST, NOW)
    head = head_of(out)
    assert is_loop(parse_headers(head), LIST) is True
    other = list_row("staff@lists.example.edu", display_name="CS 199 Staff")
    assert is_loop(parse_headers(head), other) is False


# --------------------------------------------------------------------------
# Hostile mail: what the filter must take in its stride, through the rewrite.

OURS = ["List-Id", "List-Post", "List-Help", "List-Owner", "Precedence", "X-Listfilter-Loop"]
#: Bytes no header line we hand to sendmail may carry: the controls but TAB and
#: LF, and the UTF-8 forms of NEL, LINE SEPARATOR and PARAGRAPH SEPARATOR.
_LINE_BREAKS_TO_SOMEONE = re.compile(rb"[\x00-\x08\x0b-\x1f\x7f]|\xc2\x85|\xe2\x80[\xa8\xa9]")


def python_field_names(head: bytes) -> list[str]:
    """The field names a reader finds that splits lines as Python's ``str.splitlines()`` does
    (after decoding the header block as UTF-8, as an SMTPUTF8 reader would)."""
    names = []
    for line in head.decode("utf-8", "surrogateescape").splitlines():
        if not line:
            break  # an "empty line": the headers would end here
        if line[:1] not in " \t":
            names.append(line.split(":", 1)[0])
    return names


def assert_exactly_the_rewrite(out: bytes, names: list[str], body: bytes) -> None:
    """What members receive has the fields the rewrite meant, read the Postfix way and the Python ways."""
    head = head_of(out)
    assert field_names(out) == names
    assert python_field_names(head) == names
    assert _LINE_BREAKS_TO_SOMEONE.search(head) is None
    assert parse_out(out).keys() == names
    resent = email.message_from_string(out.decode("utf-8", "surrogateescape"), policy=policy.default).as_string()
    assert email.message_from_string(resent, policy=policy.default).keys() == names  # re-serialised by Python
    assert split_message(out)[1] == body
    assert fields_named(out, LOOP_HEADER) == [b"X-Listfilter-Loop: students@lists.example.edu\n"]
    assert is_loop(Headers(split_message(out)[0]), LIST)


@pytest.mark.parametrize("sep", PYTHON_ONLY_BREAKS.values(), ids=PYTHON_ONLY_BREAKS.keys())
@pytest.mark.parametrize("place", SMUGGLING_PLACES)
def test_nothing_smuggled_reaches_the_members(place, sep):
    """\\v, \\f, \\x1c-\\x1e, a bare CR (and NEL, LS, PS) inside a field: no Bcc, no second From,
    no Reply-To, no List-*, and the list's own headers stay headers."""
    raw, names, body = smuggling_message(place, sep)
    out = rewrite(raw, LIST, NOW)
    assert_exactly_the_rewrite(out, names + OURS, body)
    parsed = parse_out(out)
    assert "Bcc" not in parsed and "Reply-To" not in parsed and len(parsed.get_all("From")) == 1
    assert [str(v) for v in parsed.get_all("List-Id")] == ['"CS 199 Students" <students.lists.example.edu>']


def test_a_smuggled_subject_is_text_in_the_new_subject():
    raw, _, _ = smuggling_message("Subject", b"\x0b")
    subject = str(parse_out(rewrite(raw, LIST, NOW))["Subject"])
    assert subject.startswith("[CS 199 Students] 2026-01-22: Hello Bcc: victim@example.org From: instructor@example.edu")


# Raw UTF-8 and legacy 8-bit bytes: the new Subject carries the text a mail
# client shows for the old one (UTF-8, else Windows-1252, else Latin-1), never U+FFFD.
RAW_SUBJECTS = [
    (b"Gr\xc3\xbc\xc3\x9fe aus K\xc3\xb6ln", "Grüße aus Köln"),
    (b"Gr\xfc\xdfe aus K\xf6ln", "Grüße aus Köln"),
    (b"\x93Midterm\x94 moved \x96 room 2\x80", "“Midterm” moved – room 2€"),
    (b"Re: \xdcbung f\xfcr morgen", "Re: Übung für morgen"),
    (b"\xe8\xa9\xa6\xe9\xa8\x93\xe3\x81\xae\xe6\x97\xa5\xe7\xa8\x8b", "試験の日程"),
    (b"=?utf-8?q?Gr=C3=BC=C3=9Fe?= aus K\xc3\xb6ln", "Grüße aus Köln"),
    (b"Stra\xdfe\x0bBcc: x@example.org", "Straße Bcc: x@example.org"),
]


@pytest.mark.parametrize("value,text", RAW_SUBJECTS)
def test_8bit_subject_comes_out_as_the_text_clients_show(value, text):
    raw = b"\n".join(h.encode() for h in BASIC if not h.startswith("Subject:")) + b"\nSubject: " + value + b"\n\nHi\n"
    out = rewrite(raw, LIST, NOW)
    subject = str(parse_out(out)["Subject"])
    assert subject == "[CS 199 Students] 2026-01-22: " + title_case(text)
    assert "\ufffd" not in subject
    assert subject_field(out).isascii()


@pytest.mark.parametrize("line", [b"From: J\xfcrgen M\xfcller <jm@example.de>", b"From: J\xc3\xbcrgen <j\xc3\xbcrgen@example.de>",
                                  b"Reply-To: \xe5\xad\xa6\xe7\x94\x9f <\xe5\xad\xa6\xe7\x94\x9f@example.edu>",
                                  b"X-Note: caf\xe9 \x80 \xff"])
def test_8bit_fields_are_kept_byte_for_byte(line):
    raw = line + b"\n" + b"\n".join(h.encode() for h in BASIC if not h.startswith(line.split(b":")[0].decode() + ":"))
    out = rewrite(raw + b"\n\nHi\n", LIST, NOW)
    assert fields_named(out, line.split(b":")[0].decode()) == [line + b"\n"]


# Singleton fields that appear more than once (RFC 5322 §3.6: one each): the
# first is what was checked and logged, and the only one members receive.
DUPLICATES = [
    # extra lines (added after BASIC, or before it with a leading "^"), name, the value members get
    (["To: other@example.org"], "To", "CS 199 Students <students@lists.example.edu>"),
    (["Subject: second"], "Subject", "[CS 199 Students] 2026-01-22: Hello There"),
    (["^Subject: first"], "Subject", "[CS 199 Students] 2026-01-22: First"),
    (["Date: Thu, 22 Jan 2026 10:00:00 -0600"], "Date", "Wed, 21 Jan 2026 10:00:00 -0600"),
    (["^DATE: Mon, 19 Jan 2026 10:00:00 -0600"], "Date", "Mon, 19 Jan 2026 10:00:00 -0600"),
    (["Message-ID: <m2@example.edu>", "message-id: <m3@example.edu>"], "Message-ID", "<m1@example.edu>"),
    (["Sender: a@example.edu", "Sender: b@example.edu"], "Sender", "a@example.edu"),
    (["Reply-To: a@example.org", "Reply-To: b@example.org"], "Reply-To", "a@example.org"),
    (["Cc: a@example.org", "CC: b@example.org"], "Cc", "a@example.org"),
    (["In-Reply-To: <a@example.org>", "In-Reply-To: <b@example.org>"], "In-Reply-To", "<a@example.org>"),
    (["References: <a@example.org>", "References: <b@example.org>"], "References", "<a@example.org>"),
    (["To: a@example.org", "Subject: b", "Date: Thu, 22 Jan 2026 10:00:00 -0600", "Message-ID: <m2@example.edu>"],
     "Message-ID", "<m1@example.edu>"),
]


@pytest.mark.parametrize("extra,name,value", DUPLICATES)
def test_one_of_each_singleton_reaches_the_members(extra, name, value):
    before = [e[1:] for e in extra if e.startswith("^")]
    after = [e for e in extra if not e.startswith("^")]
    out = rewrite(msg(*before, *BASIC, *after), LIST, NOW)
    parsed = parse_out(out)
    for single in ("From", "To", "Subject", "Date", "Message-ID"):
        assert len(parsed.get_all(single)) == 1, single
        assert len(fields_named(out, single)) == 1, single
    assert [str(v) for v in parsed.get_all(name)] == [value]
    assert len(fields_named(out, name)) == 1


def test_two_from_fields_name_no_poster():
    """A second From is refused before any rewrite (see poster_of): whichever comes first."""
    for order in ((0, 1), (1, 0)):
        froms = [b"From: prof@example.edu", b"From: Mallory <mallory@example.org>"]
        raw = b"\n".join([froms[order[0]], froms[order[1]], b"Subject: x"]) + b"\n\nbody\n"
        poster = poster_of(Headers(split_message(raw)[0]))
        assert poster.address is None and "2 From" in poster.problem


# No Date (sendmail -G makes Postfix add none), no or an empty Message-ID.
def test_a_post_without_date_gets_one():
    out = rewrite(msg(*[h for h in BASIC if not h.startswith("Date:")]), LIST, NOW)
    (date,) = parse_out(out).get_all("Date")
    assert date.datetime == NOW
    assert fields_named(out, "Date") == [f"Date: {format_datetime(NOW)}\n".encode()]


MESSAGE_IDS = [
    # the post's Message-ID lines, message_id given, the Message-IDs members get
    (["Message-ID: <m1@example.edu>"], None, ["<m1@example.edu>"]),
    ([], "<new@lists.example.edu>", ["<new@lists.example.edu>"]),
    (["Message-ID:"], "<new@lists.example.edu>", ["<new@lists.example.edu>"]),
    (["Message-ID: ", "Message-ID: <m2@example.edu>"], "<new@lists.example.edu>", ["<new@lists.example.edu>"]),
]


@pytest.mark.parametrize("lines,message_id,expected", MESSAGE_IDS)
def test_message_id(lines, message_id, expected):
    raw = msg('From: "Doe, Jane" <prof@example.edu>', *lines, "Subject: x")
    fields, body = split_message(raw)
    out = render(rewrite_headers(Headers(fields), LIST, NOW, message_id=message_id), body)
    assert [str(v) for v in parse_out(out).get_all("Message-ID")] == expected
    if lines:  # in place of the poster's (first) one
        assert field_names(out)[:3] == ["From", "Message-ID", "Subject"]


# Values the standard library's parser rejects never raise, and the fields we
# set are still the ones members get.
@pytest.mark.parametrize("reply_to", [None, "staff@lists.example.edu"])
@pytest.mark.parametrize("line", STDLIB_REJECTS)
def test_values_the_stdlib_rejects_are_rewritten(line, reply_to):
    raw = (b"From: Jane <jane@example.edu>\nSubject: Hi\nDate: Wed, 21 Jan 2026 10:00:00 -0600\n" + line
           + b"\nMIME-Version: 1.0\n\nbody\n")
    fields, body = split_message(raw)
    headers = Headers(fields)
    out = render(rewrite_headers(headers, list_row(reply_to=reply_to), NOW, message_id="<new@lists.example.edu>"), body)
    for single in ("From", "To", "Subject", "Date", "Message-ID"):
        assert len(fields_named(out, single)) == 1, single
    assert max(len(x) for x in head_of(out).split(b"\n")) <= 998
    # the fields we set, read back with the standard library (which may still choke on the poster's own)
    parsed = parse_out(b"".join(fields_named(out, n)[0] for n in ("To", "Subject", "Reply-To") if fields_named(out, n)))
    assert [a.addr_spec for a in parsed["To"].addresses] == ["students@lists.example.edu"]
    assert str(parsed["Subject"]).startswith("[CS 199 Students] 2026-01-22: ")
    if reply_to:
        assert [a.addr_spec for a in parsed["Reply-To"].addresses] == [reply_to]
    assert split_message(out)[1] == body


def test_a_non_header_line_with_8bit_bytes_starts_the_body_after_our_headers():
    raw = b"From: Jane <jane@example.edu>\nJ\xfcrgen was here\nSubject: hi\n\nbody\n"
    out = rewrite(raw, LIST, NOW)
    assert field_names(out) == ["From", "Subject", "To", "Date"] + OURS
    assert out.endswith(b"\n\nJ\xfcrgen was here\nSubject: hi\n\nbody\n")


# No output line over 998 characters (RFC 5322 §2.1.1): a kept field is folded
# at its blanks (or cut), and unfolds to what it was.
LONG_LINES = [
    # the field, whether it has blanks to fold at (then it unfolds to exactly what it was)
    (b"X-Words: " + b"word " * 2000, True),
    (b"References: " + b" ".join(b"<%d@example.edu>" % i for i in range(500)), True),
    (b"From: " + b", ".join(b"u%d@example.edu" % i for i in range(300)), True),
    (b"X-Long: " + b"a" * 5000, False),
    (b"DKIM-Signature: v=1; d=example.edu; b=" + b"QUJD" * 1500, False),
    (b"Received: from x by y;\n " + b"z" * 3000, False),
    (b"X-Tabs: " + b"\t" * 2000 + b"x", False),
    (b"Subject: " + b"x" * 5000, None),  # replaced
    (b"Subject: " + b"Gr\xc3\xbc\xc3\x9fe " * 1000, None),
]


@pytest.mark.parametrize("line,blanks", LONG_LINES, ids=lambda v: v[:12].decode("latin-1") if isinstance(v, bytes) else "")
def test_no_output_line_is_longer_than_998(line, blanks):
    name = line.split(b":")[0].decode()
    raw = b"\n".join(h.encode() for h in BASIC if not h.startswith(name + ":")) + b"\n" + line + b"\n\nbody\n"
    out = rewrite(raw, LIST, NOW)
    head = head_of(out)
    assert max(len(x) for x in head.split(b"\n")) <= 998
    assert max(len(x) for x in head.decode("utf-8", "surrogateescape").splitlines()) <= 998
    (field,) = fields_named(out, name)
    if blanks:  # folded at its blanks: unfolding (RFC 5322 §2.2.3) gives the field back
        assert field.replace(b"\n", b"") == line
    elif blanks is False:  # cut where it had to be: nothing but blanks and line breaks added
        assert re.sub(rb"\s", b"", field) == re.sub(rb"\s", b"", line)


# Bounded cost: headers up to Postfix's header_size_limit (100 KB each) cost
# well under a second and memory a small multiple of the message. Correctness
# bounds, not benchmarks.
_EW = "\n ".join("=?utf-8?b?" + base64.b64encode("Übung für morgen ".encode() * 2).decode() + "?="
                 for _ in range(1550)).encode()  # about 100 KB of encoded words, folded as a client would
_FROM = b", ".join(b'"Student %d =?utf-8?q?M=C3=BCller?=" <s%d@example.edu>' % (i, i) for i in range(2000))
_LONG_NAME = b"Jane " * 20000 + b"<jane@example.edu>"
COSTLY = [
    ("one 100 KB encoded-word Subject", [b"Subject: " + _EW]),
    ("one 100 KB From", [b"From: " + _FROM]),
    ("one 100 KB display name", [b"From: " + _LONG_NAME]),
    ("ten of each", [b"Subject: " + _EW] * 10 + [b"From: " + _FROM] * 5 + [b"From: " + _LONG_NAME] * 5),
]


@pytest.mark.parametrize("label,lines", COSTLY, ids=[c[0] for c in COSTLY])
def test_bounded_cost(label, lines):
    base = [h.encode() for h in BASIC if not h.startswith(("Subject:", "From:"))]
    raw = b"\n".join(base + lines) + b"\n\nbody\n"
    assert len(max(lines, key=len)) >= 95_000

    def handle() -> tuple[bytes, object]:
        fields, body = split_message(raw)
        headers = Headers(fields)
        poster = poster_of(headers)
        return render(rewrite_headers(headers, LIST, NOW), body), poster

    start = time.perf_counter()
    out, poster = handle()
    elapsed = time.perf_counter() - start
    tracemalloc.start()
    try:
        handle()
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert elapsed < 2.0, f"{label}: {elapsed:.2f} s"
    assert peak < 50_000_000, f"{label}: {peak / 1e6:.1f} MB"
    assert poster.address is None  # too long, or several
    assert max(len(x) for x in head_of(out).split(b"\n")) <= 998
    assert len(fields_named(out, "Subject")) == 1
    subject = str(parse_out(out)["Subject"])
    assert len(subject) <= VALUE_LIMIT + 40
    if "Subject" in label or "each" in label:
        assert subject.startswith("[CS 199 Students] 2026-01-22: Übung Für Morgen Übung Für Morgen")


# The From members see is the poster that was checked.
SEEN_FROMS = [
    b"Jane Doe <jane@example.edu>",
    b'"instructor@example.edu" <jane@example.edu>',
    b"Jane (instructor@example.edu) <jane@example.edu>",
    b"jane@example.edu (instructor@example.edu)",
    b'"Jane <instructor@example.edu>" <jane@example.edu>',
    b"=?utf-8?q?Jane_=3Cinstructor=40example=2Eedu=3E?= <jane@example.edu>",
    b"J\xc3\xbcrgen M\xc3\xbcller <jane@example.edu>",
    b"J\xfcrgen M\xfcller <jane@example.edu>",
    b"J\xc3\xbcrgen <j\xc3\xbcrgen@example.de>",
]


@pytest.mark.parametrize("value", SEEN_FROMS)
def test_the_from_members_see_is_the_poster_checked(value):
    raw = b"From: " + value + b"\nTo: x@example.org\nSubject: hi\n\nbody\n"
    checked = poster_of(Headers(split_message(raw)[0]))
    out = rewrite(raw, LIST, NOW)
    assert checked.problem == "" and checked.address
    assert poster_of(Headers(split_message(out)[0])) == checked
    assert fields_named(out, "From") == [b"From: " + value + b"\n"]
    if value.isascii():
        assert [a.addr_spec for a in parse_out(out)["From"].addresses] == [checked.address]
    else:
        assert checked.address in decode_bytes(value)
