"""listfilter.mail.notices: when a refusal notice may go out, and what it looks like.

The notice's text comes pre-rendered in the list's snapshot row (sync renders
templates/notice-refused.txt.j2 once per list); the rows here are built with
sync's own :func:`listfilter.sync.compiler.refusal_notices`.
"""

from __future__ import annotations

import datetime
from email import policy
from email.parser import BytesParser
from email.utils import parsedate_to_datetime
from zoneinfo import ZoneInfo

import pytest

from listfilter.common.snapshot import notice_marker
from listfilter.mail.message import parse_headers, split_message
from listfilter.mail.notices import build_refusal_notice, notice_suppressed

from . import list_row

NOW = datetime.datetime(2026, 1, 22, 9, 30, tzinfo=ZoneInfo("America/Chicago"))
POSTERS = "course instructor, ta"
LIST = list_row(description="Everyone in CS 199: applied, enrolled and staff", posters_rule=POSTERS)
REASON = "only course instructors and TAs may post to this list"


def headers_of(*lines: str):
    raw = "\n".join(lines).encode("utf-8") + b"\n"
    return parse_headers(raw)


PLAIN = ("From: Bob Brown <bob@example.edu>", "To: students@lists.example.edu",
         "Subject: question", "Message-ID: <q1@example.edu>")

# --------------------------------------------------------------------------
# Suppression rules

SUPPRESSION = [
    # envelope sender, extra header lines, expected reason
    ("", (), "null sender"),
    ("<>", (), "null sender"),
    ("  <>  ", (), "null sender"),
    ("MAILER-DAEMON@mx.example.org", (), "role address"),
    ("mailer-daemon@mx.example.org", (), "role address"),
    ("MAILER-DAEMON", (), "role address"),
    ("<Mailer-Daemon@example.org>", (), "role address"),
    ("students-owner@lists.example.edu", (), "role address"),
    ("owner-cs101@lists.example.org", (), "role address"),
    ("Owner-CS101@lists.example.org", (), "role address"),
    ("cs101-request@lists.example.org", (), "role address"),
    ("cs101-REQUEST@lists.example.org", (), "role address"),
    ("cs101-bounces@lists.example.org", (), "role address"),
    ("cs101-bounces+bob=example.edu@lists.example.org", (), "role address"),
    ("bounces+12345-abcd-bob=example.edu@em.sendgrid.example", (), "role address"),
    ("bounce-123-456@mailer.example.com", (), "role address"),
    ("noreply@example.com", (), "role address"),
    ("no-reply@example.com", (), "role address"),
    ("bob@example.edu", ("Auto-Submitted: auto-replied",), "auto-submitted"),
    ("bob@example.edu", ("Auto-Submitted: auto-generated",), "auto-submitted"),
    ("bob@example.edu", ("Auto-Submitted: Auto-Notified; owner-email=x@y",), "auto-submitted"),
    ("bob@example.edu", ("Auto-Submitted: something-new",), "auto-submitted"),
    ("bob@example.edu", ("Auto-Submitted:",), "auto-submitted"),
    ("bob@example.edu", ("X-Autoreply: yes",), "auto-submitted"),
    ("bob@example.edu", ("X-Autorespond: vacation",), "auto-submitted"),
    ("bob@example.edu", ("Precedence: bulk",), "precedence bulk"),
    ("bob@example.edu", ("Precedence: BULK",), "precedence bulk"),
    ("bob@example.edu", ("Precedence: junk",), "precedence junk"),
    ("bob@example.edu", ("Precedence: list",), "precedence list"),
    ("bob@example.edu", ("Precedence: auto_reply",), "precedence auto_reply"),
    ("bob@example.edu", ("List-Id: Some List <some.lists.example.org>",), "list mail"),
    ("bob@example.edu", ("List-Id: <students.lists.example.edu>",), "list mail"),
    ("bob@example.edu", ("List-Unsubscribe: <mailto:leave@news.example.com>",), "list mail"),
    ("bob@example.edu", ("List-Post: <mailto:x@lists.example.org>",), "list mail"),
    ("bob@example.edu", ("X-Auto-Response-Suppress: All",), "auto-response suppressed"),
    ("bob@example.edu", ("X-Auto-Response-Suppress: DR, RN, NRN, OOF, AutoReply",),
     "auto-response suppressed"),
    ("bob@example.edu", ("X-Auto-Response-Suppress: OOF, autoreply",), "auto-response suppressed"),
    ("bob@example.edu", ("X-Auto-Response-Suppress: DR",), "auto-response suppressed"),
    ("bob@example.edu", ("X-Auto-Response-Suppress: NDR",), "auto-response suppressed"),
    # allowed
    ("bob@example.edu", (), None),
    ("<bob@example.edu>", (), None),
    ("postmaster@example.edu", (), None),
    ("bob-owner-fan@example.edu", (), None),
    ("requester@example.edu", (), None),
    ("owner@example.edu", (), None),
    ("bouncer-fan@example.edu", (), None),
    ("bob@example.edu", ("Auto-Submitted: no",), None),
    ("bob@example.edu", ("Auto-Submitted: No (this is a person)",), None),
    ("bob@example.edu", ("Auto-Submitted: no; comment=1",), None),
    ("bob@example.edu", ("Precedence: first-class",), None),
    ("bob@example.edu", ("Precedence: normal",), None),
    ("bob@example.edu", ("X-Auto-Response-Suppress: OOF",), None),
    ("bob@example.edu", ("X-Auto-Response-Suppress: None",), None),
    ("bob@example.edu", ("X-Listfilter-Loop: staff@lists.example.edu",), None),
]


@pytest.mark.parametrize("sender,extra,expected", SUPPRESSION)
def test_notice_suppressed(sender, extra, expected):
    assert notice_suppressed(sender, headers_of(*PLAIN, *extra)) == expected


def test_suppression_order_null_sender_first():
    h = headers_of(*PLAIN, "Auto-Submitted: auto-replied", "Precedence: bulk", "List-Id: <x.y>")
    assert notice_suppressed("", h) == "null sender"
    assert notice_suppressed("bob@example.edu", h) == "auto-submitted"


# --------------------------------------------------------------------------
# The notice

ORIGINAL = (
    b'From: Bob Brown <bob@example.edu>\n'
    b'To: "CS 199 Students" <students@lists.example.edu>\n'
    b'Subject: =?utf-8?q?Frage_zur_=C3=9Cbung?=\n'
    b'Date: Wed, 21 Jan 2026 10:00:00 -0600\n'
    b'Message-ID: <q1@example.edu>\n'
    b'References: <p0@example.edu>\n <p1@example.edu>\n'
    b'DKIM-Signature: v=1; a=rsa-sha256; d=example.edu; s=sel;\n\tb=abc\n'
)


def build(original: bytes = ORIGINAL, sender: str = "bob@example.edu", lst=LIST,
          poster: str = "Bob Brown <bob@example.edu>", reason: str = REASON):
    raw = build_refusal_notice(original_headers=original, lst=lst, poster=poster, envelope_sender=sender,
                               reason=reason, now=NOW)
    return raw, BytesParser(policy=policy.default).parsebytes(raw)


def test_notice_headers():
    raw, n = build()
    assert isinstance(raw, bytes)
    (frm,) = n["From"].addresses
    assert frm.display_name == "CS 199 Students (list owner)"
    assert frm.addr_spec == "students-owner@lists.example.edu"
    assert [a.addr_spec for a in n["To"].addresses] == ["bob@example.edu"]
    assert str(n["Subject"]) == ("Your message to students@lists.example.edu was not delivered: "
                                 "Frage zur Übung")
    assert n.get_all("Auto-Submitted") == ["auto-replied"]
    assert "Precedence" not in n
    assert str(n["In-Reply-To"]) == "<q1@example.edu>"
    assert str(n["References"]).split() == ["<p0@example.edu>", "<p1@example.edu>", "<q1@example.edu>"]
    msgid = str(n["Message-ID"])
    assert msgid.startswith("<") and msgid.endswith("@lists.example.edu>")
    assert msgid != "<q1@example.edu>"
    assert parsedate_to_datetime(str(n["Date"])) == NOW
    assert b"\r" not in raw  # LF for sendmail
    head, _ = split_message(raw)
    assert head.isascii()


def test_notice_message_ids_are_fresh():
    _, a = build()
    _, b = build()
    assert str(a["Message-ID"]) != str(b["Message-ID"])


def test_notice_structure_and_text():
    _, n = build()
    assert n.get_content_type() == "multipart/mixed"
    parts = list(n.iter_parts())
    assert [p.get_content_type() for p in parts] == ["text/plain", "text/rfc822-headers"]
    text = parts[0].get_content()
    assert "CS 199 Students <students@lists.example.edu>" in text
    assert f"Reason: {REASON}\n" in text
    assert f"Who may post to this list: {POSTERS}\n" in text
    assert "students-owner@lists.example.edu" in text
    assert "Subject: Frage zur Übung\n" in text
    assert "From:    Bob Brown <bob@example.edu>\n" in text
    assert "About this list: Everyone in CS 199: applied, enrolled and staff\n" in text
    assert "{{" not in text and "{%" not in text
    assert n.defects == [] and all(p.defects == [] for p in parts)


def test_notice_attaches_original_headers():
    _, n = build()
    part = list(n.iter_parts())[1]
    assert part.get_content_type() == "text/rfc822-headers"
    assert part.get_content() == ORIGINAL.decode("ascii")
    inner = BytesParser(policy=policy.default).parsebytes(part.get_content().encode())
    assert str(inner["Message-ID"]) == "<q1@example.edu>"
    assert str(inner["Subject"]) == "Frage zur Übung"


def test_notice_original_headers_with_crlf_and_8bit():
    original = ("From: Jürgen <j@example.de>\r\nSubject: Grüße\r\nMessage-ID: <x@example.de>\r\n"
                .encode("utf-8"))
    _, n = build(original, sender="j@example.de")
    part = list(n.iter_parts())[1]
    assert part.get_content() == "From: Jürgen <j@example.de>\nSubject: Grüße\nMessage-ID: <x@example.de>\n"
    assert str(n["Subject"]).endswith("was not delivered: Grüße")
    assert str(n["In-Reply-To"]) == "<x@example.de>"
    assert "References" in n and str(n["References"]) == "<x@example.de>"


def test_notice_without_subject_or_message_id():
    original = b"From: Bob <bob@example.edu>\nTo: students@lists.example.edu\n"
    _, n = build(original)
    assert str(n["Subject"]) == "Your message to students@lists.example.edu was not delivered"
    assert "In-Reply-To" not in n and "References" not in n
    text = list(n.iter_parts())[0].get_content()
    assert "Subject: (no subject)\n" in text
    assert "Date:" not in text


@pytest.mark.parametrize("sender,expected", [
    ("<bob@example.edu>", "bob@example.edu"),
    ("Bob.Brown+cs199@Example.EDU", "Bob.Brown+cs199@Example.EDU"),
    ("SRS0=abcd=XY=example.org=bob@forwarder.example.net",
     "SRS0=abcd=XY=example.org=bob@forwarder.example.net"),
])
def test_notice_to_is_the_envelope_sender(sender, expected):
    _, n = build(sender=sender)
    assert [a.addr_spec for a in n["To"].addresses] == [expected]


def test_notice_for_list_with_awkward_display_name():
    lst = list_row("club@lists.example.edu", display_name='Schach-Club "Königin", Uni', subject_tag="Schach")
    _, n = build(lst=lst)
    (frm,) = n["From"].addresses
    assert frm.display_name == 'Schach-Club "Königin", Uni (list owner)'
    assert frm.addr_spec == "club-owner@lists.example.edu"
    assert str(n["Message-ID"]).endswith("@lists.example.edu>")
    text = list(n.iter_parts())[0].get_content()
    assert "About this list" not in text  # empty description


def test_notice_text_is_the_rows_with_the_fields_filled_in():
    _, n = build()
    text = list(n.iter_parts())[0].get_content()
    assert text == (LIST.notice.replace(notice_marker("poster"), "Bob Brown <bob@example.edu>")
                    .replace(notice_marker("original_subject"), "Frage zur Übung")
                    .replace(notice_marker("original_date"), "Wed, 21 Jan 2026 10:00:00 -0600")
                    .replace(notice_marker("reason"), REASON))
    assert "\ufdd0" not in text and "\ufdd1" not in text


def test_a_field_that_looks_like_a_marker_is_not_filled_in():
    # the poster's own text is filled in once: a marker inside it stays as it came
    poster = f"Eve {notice_marker('reason')} <eve@example.org>"
    _, n = build(poster=poster, sender="eve@example.org")
    text = list(n.iter_parts())[0].get_content()
    assert f"From:    {poster}\n" in text
    assert text.count(REASON) == 1


def test_the_undated_text_when_the_original_has_no_date():
    original = b"From: Bob <bob@example.edu>\nSubject: hi\n"
    lst = LIST._replace(notice="DATED " + notice_marker("original_date"), notice_undated="UNDATED")
    _, n = build(original, lst=lst)
    assert list(n.iter_parts())[0].get_content().strip() == "UNDATED"
    _, n = build(lst=lst)
    assert list(n.iter_parts())[0].get_content().strip() == "DATED Wed, 21 Jan 2026 10:00:00 -0600"
