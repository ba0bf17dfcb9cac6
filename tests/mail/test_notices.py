"""listfilter.mail.notices: when a refusal notice may go out, what it says, and how big it may get.

The notice's text comes pre-rendered in the list's snapshot row (sync renders
templates/notice-refused.txt.j2 once per list); the rows here are built with
sync's own :func:`listfilter.sync.compiler.refusal_notices`. The last part
runs the real ``listfilter-deliver`` as a process, against a real sync of
docs/example, with the fake sendmail of tests/mail/test_deliver.py.
"""

from __future__ import annotations

import datetime
import email
import email.policy
import os
import re
import subprocess
import time
from email import policy
from email.parser import BytesParser
from email.utils import parsedate_to_datetime
from zoneinfo import ZoneInfo

import pytest

from listfilter.common.snapshot import notice_marker
from listfilter.mail.message import parse_headers, split_message
from listfilter.mail.notices import (
    FIELD_LIMIT, HEADERS_LIMIT, LIST_HEADERS, LOOP_HEADERS, NO_ADDRESS, attached_headers, build_refusal_notice,
    notice_suppressed)
from listfilter.sync.compiler import refusal_notices

from ..conftest import REPO
from . import list_row
from .test_deliver import DELIVER, Env

NOW = datetime.datetime(2026, 1, 22, 9, 30, tzinfo=ZoneInfo("America/Chicago"))
POSTERS = "course instructor, ta"
LIST = list_row(description="Everyone in CS 199: applied, enrolled and staff", posters_rule=POSTERS)
REASON = "bob@example.edu is not allowed to post to students@lists.example.edu"


def headers_of(*lines: str):
    raw = "\n".join(lines).encode("utf-8") + b"\n"
    return parse_headers(raw)


PLAIN = ("From: Bob Brown <bob@example.edu>", "To: students@lists.example.edu",
         "Subject: question", "Message-ID: <q1@example.edu>")

# --------------------------------------------------------------------------
# Suppression rules, without the snapshot

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
    # loop markers, whatever they name
    ("bob@example.edu", ("X-Loop: cs101@lists.example.org",), "loop header"),
    ("bob@example.edu", ("x-loop: procmail",), "loop header"),
    ("bob@example.edu", ("X-Loop:",), "loop header"),
    ("bob@example.edu", ("X-BeenThere: cs101@lists.example.org",), "loop header"),
    ("bob@example.edu", ("X-Listfilter-Loop: staff@lists.example.edu",), "loop header"),
    # list headers: RFC 2919, RFC 2369, RFC 8058, ezmlm, SmartList
    ("bob@example.edu", ("List-Id: Some List <some.lists.example.org>",), "list mail"),
    ("bob@example.edu", ("List-Id: <students.lists.example.edu>",), "list mail"),
    ("bob@example.edu", ("List-Help: <mailto:cs101-request@lists.example.org?subject=help>",), "list mail"),
    ("bob@example.edu", ("List-Subscribe: <mailto:cs101-join@lists.example.org>",), "list mail"),
    ("bob@example.edu", ("List-Unsubscribe: <mailto:leave@news.example.com>",), "list mail"),
    ("bob@example.edu", ("List-Post: <mailto:x@lists.example.org>",), "list mail"),
    ("bob@example.edu", ("List-Post: NO (posting not allowed on this list)",), "list mail"),
    ("bob@example.edu", ("List-Owner: <mailto:cs101-owner@lists.example.org>",), "list mail"),
    ("bob@example.edu", ("List-Archive: <https://lists.example.org/archive/cs101>",), "list mail"),
    ("bob@example.edu", ("LIST-ARCHIVE: <https://lists.example.org/archive/cs101>",), "list mail"),
    ("bob@example.edu", ("List-Unsubscribe-Post: List-Unsubscribe=One-Click",), "list mail"),
    ("bob@example.edu", ("Mailing-List: contact cs101-help@lists.example.org; run by ezmlm",), "list mail"),
    ("bob@example.edu", ("X-Mailing-List: <cs101@lists.example.org> archive/latest/42",), "list mail"),
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
    ("bob@example.edu", ("X-Looping: no",), None),
    ("bob@example.edu", ("X-List: not a list header",), None),
    ("bob@example.edu", ("Delivered-To: students@lists.example.edu",), None),  # ours only with the snapshot
]


@pytest.mark.parametrize("sender,extra,expected", SUPPRESSION)
def test_notice_suppressed(sender, extra, expected):
    assert notice_suppressed(sender, headers_of(*PLAIN, *extra)) == expected


def test_suppression_order_null_sender_first():
    h = headers_of(*PLAIN, "Auto-Submitted: auto-replied", "Precedence: bulk", "List-Id: <x.y>")
    assert notice_suppressed("", h) == "null sender"
    assert notice_suppressed("bob@example.edu", h) == "auto-submitted"


def test_every_loop_and_list_header_is_in_the_table():
    named = {line.split(":", 1)[0].lower() for _, extra, _ in SUPPRESSION for line in extra}
    assert {h.lower() for h in LOOP_HEADERS + LIST_HEADERS} <= named


# --------------------------------------------------------------------------
# Suppression with the snapshot's lists

#: The lists "the snapshot" has here: students on two domains, staff on one.
OUR_LISTS = frozenset({"students@lists.example.edu", "students@lists-dev.example.edu", "staff@lists.example.edu"})
looked_up: list[str] = []


def is_list(address: str) -> bool:
    looked_up.append(address)
    return address in OUR_LISTS


LOOKUP = [
    # envelope sender, extra header lines, expected reason
    ("students@lists.example.edu", (), "list address"),
    ("Students@Lists-Dev.Example.EDU", (), "list address"),
    ("<staff@lists.example.edu>", (), "list address"),
    ("students+announce@lists.example.edu", (), "list address"),
    ("students-bounces@lists.example.edu", (), "list address"),
    ("students-bounces+bob=example.edu@lists.example.edu", (), "list address"),
    ("STAFF-OWNER@lists.example.edu", (), "list address"),
    ("students-request@lists-dev.example.edu", (), "list address"),
    ("students-join@lists.example.edu", (), "list address"),
    ("staff-leave+x@lists.example.edu", (), "list address"),
    # not ours: a role address elsewhere is still a role address; people are people
    ("students@other.example.org", (), None),
    ("staff@lists-dev.example.edu", (), None),  # staff is not served on the dev domain here
    ("studentsx@lists.example.edu", (), None),
    ("alice@lists.example.edu", (), None),
    ("other-owner@lists.example.edu", (), "role address"),
    # Delivered-To naming one of our lists
    ("bob@example.edu", ("Delivered-To: staff@lists.example.edu",), "delivered to a list"),
    ("bob@example.edu", ("Delivered-To: <Students-Bounces+x=y.org@lists-dev.example.edu>",), "delivered to a list"),
    ("bob@example.edu", ("Delivered-To: bob@gmail.example", "Delivered-To: students@lists.example.edu"),
     "delivered to a list"),
    ("bob@example.edu", ("Delivered-To: bob@gmail.example",), None),
    ("bob@example.edu", ("Delivered-To: staff@lists-dev.example.edu",), None),
    ("bob@example.edu", ("Delivered-To: not an address",), None),
    ("bob@example.edu", (), None),
]


@pytest.mark.parametrize("sender,extra,expected", LOOKUP)
def test_notice_suppressed_with_the_snapshot(sender, extra, expected):
    assert notice_suppressed(sender, headers_of(*PLAIN, *extra), is_list) == expected


def test_the_lookup_is_asked_about_lower_cased_list_addresses():
    looked_up.clear()
    assert notice_suppressed("Staff-Bounces+Bob=Example.EDU@Lists.Example.EDU", headers_of(*PLAIN), is_list)
    assert looked_up == ["staff@lists.example.edu"]


def test_the_snapshot_lookup_is_get_list(tmp_path):
    """deliver passes Snapshot.get_list: a row is a yes, None a no."""
    from listfilter.common.snapshot import Snapshot

    from . import compiled_list, write_snapshot

    path = write_snapshot(tmp_path / "s.sqlite", [compiled_list("students@lists.example.edu")], spool=tmp_path)
    with Snapshot(path) as snap:
        assert notice_suppressed("students-bounces@lists.example.edu", headers_of(*PLAIN), snap.get_list) \
            == "list address"
        assert notice_suppressed("students@Lists.Example.edu", headers_of(*PLAIN), snap.get_list) == "list address"
        assert notice_suppressed("staff@lists.example.edu", headers_of(*PLAIN), snap.get_list) is None


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
          poster: str | None = "bob@example.edu", reason: str = REASON):
    raw = build_refusal_notice(original_headers=original, lst=lst, poster=poster, envelope_sender=sender,
                               reason=reason, now=NOW)
    return raw, BytesParser(policy=policy.default).parsebytes(raw)


def text_of(notice) -> str:
    return list(notice.iter_parts())[0].get_content()


def attachment_of(notice) -> str:
    return list(notice.iter_parts())[1].get_content()


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
    fields, _ = split_message(raw)
    assert all(f.raw.isascii() for f in fields)


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
    assert f"Why: {REASON}\n" in text
    assert f"Who may post to this list: {POSTERS}\n" in text
    assert "students-owner@lists.example.edu" in text
    assert "  Subject: Frage zur Übung\n" in text
    assert "  Date:    Wed, 21 Jan 2026 10:00:00 -0600\n" in text
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
    assert attachment_of(n) == "From: Jürgen <j@example.de>\nSubject: Grüße\nMessage-ID: <x@example.de>\n"
    assert str(n["Subject"]).endswith("was not delivered: Grüße")
    assert str(n["In-Reply-To"]) == "<x@example.de>"
    assert "References" in n and str(n["References"]) == "<x@example.de>"


def test_legacy_8bit_lines_are_decoded_as_mail_clients_do():
    original = "From: Jürgen <j@example.de>\n".encode("utf-8") + "Subject: Grüße\n".encode("cp1252")
    _, n = build(original, sender="j@example.de")
    assert attachment_of(n) == "From: Jürgen <j@example.de>\nSubject: Grüße\n"


def test_notice_without_subject_or_message_id():
    original = b"From: Bob <bob@example.edu>\nTo: students@lists.example.edu\n"
    _, n = build(original)
    assert str(n["Subject"]) == "Your message to students@lists.example.edu was not delivered"
    assert "In-Reply-To" not in n and "References" not in n
    text = text_of(n)
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


def test_notice_to_an_smtputf8_sender():
    # RFC 6532: a UTF-8 address is written as UTF-8 (an encoded word is not allowed in an addr-spec)
    raw, _ = build(sender="jürgen@exämple.de", poster="jürgen@exämple.de")
    n = email.message_from_string(raw.decode("utf-8"), policy=policy.default)
    assert [a.addr_spec for a in n["To"].addresses] == ["jürgen@exämple.de"]
    assert b"\nTo: j\xc3\xbcrgen@ex\xc3\xa4mple.de\n" in raw
    assert str(n["Subject"]) == "Your message to students@lists.example.edu was not delivered: Frage zur Übung"
    assert "The address it checked was:\n\n    jürgen@exämple.de\n" in text_of(n)
    assert max(map(len, raw.split(b"\n"))) <= 998


def test_notice_for_list_with_awkward_display_name():
    lst = list_row("club@lists.example.edu", display_name='Schach-Club "Königin", Uni', subject_tag="Schach")
    _, n = build(lst=lst)
    (frm,) = n["From"].addresses
    assert frm.display_name == 'Schach-Club "Königin", Uni (list owner)'
    assert frm.addr_spec == "club-owner@lists.example.edu"
    assert str(n["Message-ID"]).endswith("@lists.example.edu>")
    assert "About this list" not in text_of(n)  # empty description


def test_notice_text_is_the_rows_with_the_fields_filled_in():
    text = text_of(build()[1])
    assert text == (LIST.notice.replace(notice_marker("poster"), "bob@example.edu")
                    .replace(notice_marker("original_subject"), "Frage zur Übung")
                    .replace(notice_marker("original_date"), "Wed, 21 Jan 2026 10:00:00 -0600")
                    .replace(notice_marker("reason"), REASON))
    assert "\ufdd0" not in text and "\ufdd1" not in text


def test_a_field_that_looks_like_a_marker_is_not_filled_in():
    # the poster's own text is filled in once: a marker inside it stays as it came
    poster = f"eve{notice_marker('reason')}@example.org"
    text = text_of(build(poster=poster, sender="eve@example.org")[1])
    assert f"\n    {poster}\n" in text
    assert text.count(REASON) == 1


def test_the_undated_text_when_the_original_has_no_date():
    original = b"From: Bob <bob@example.edu>\nSubject: hi\n"
    lst = LIST._replace(notice="DATED " + notice_marker("original_date"), notice_undated="UNDATED")
    _, n = build(original, lst=lst)
    assert text_of(n).strip() == "UNDATED"
    _, n = build(lst=lst)
    assert text_of(n).strip() == "DATED Wed, 21 Jan 2026 10:00:00 -0600"


# --------------------------------------------------------------------------
# What the notice tells the student


def test_it_says_which_address_was_checked_and_that_only_from_counts():
    text = text_of(build(poster="bob.brown@gmail.example", reason="bob.brown@gmail.example is not allowed")[1])
    assert "The list goes by the address in the From line of your message, and by\nnothing else" in text
    assert "not Reply-To" in text
    assert "The address it checked was:\n\n    bob.brown@gmail.example\n" in text
    assert "sending from a personal address" in text and "instead of your university address" in text
    assert text.index("Who may post to this list: course instructor, ta\n") < text.index("The address it checked")


@pytest.mark.parametrize("poster", [None, ""])
def test_when_the_from_names_no_address_it_says_so(poster):
    text = text_of(build(poster=poster, reason="the message has 2 From headers")[1])
    assert f"The address it checked was:\n\n    {NO_ADDRESS}\n" in text
    assert "Why: the message has 2 From headers\n" in text


def notice_of(**contact) -> str:
    notice, undated = refusal_notices("students@lists.example.edu", "CS 199 Students", "", POSTERS, **contact)
    return text_of(build(lst=LIST._replace(notice=notice, notice_undated=undated))[1])


def test_where_to_write_instead_the_owners_always():
    text = notice_of()
    assert ("To reach the people behind this list instead, write to:\n\n"
            "  - its owners, students-owner@lists.example.edu\n"
            "    (a reply to this notice reaches them)\n\n") in text
    assert "contact address" not in text


def test_where_to_write_instead_a_contact_list_of_ours():
    text = notice_of(reply_to="staff@lists.example.edu", reply_to_name="CS 199 Staff",
                     reply_to_posters="list members")
    assert ("  - its owners, students-owner@lists.example.edu\n"
            "    (a reply to this notice reaches them)\n"
            "  - its contact address, CS 199 Staff <staff@lists.example.edu>\n"
            "    (who may post there: list members)\n") in text


def test_where_to_write_instead_an_outside_contact_address():
    text = notice_of(reply_to="cs199-help@example.edu")
    assert "  - its contact address, cs199-help@example.edu\n\n" in text
    assert "who may post there" not in text


def test_a_list_that_replies_to_itself_names_no_contact():
    assert "contact address" not in notice_of(reply_to="Students@lists.example.edu", reply_to_name="CS 199 Students",
                                              reply_to_posters=POSTERS)


def test_sync_names_the_contact_list_by_its_name_and_posting_rule(tmp_path):
    """compile_lists: reply_to as a list name, as the full address of one of our
    lists, as an outside address, and as the list itself."""
    from listfilter.sync import config as C
    from listfilter.sync.compiler import compile_lists

    src = (REPO / "docs/example/lists.toml").read_text().replace('csv = "roster.csv"',
                                                                  f'csv = "{REPO / "docs/example/roster.csv"}"')
    src += ('\n[lists.help]\nmembers = { emails = ["instructor@example.edu"] }\nposters = ["instructor@example.edu"]\n'
            'reply_to = "staff@lists-dev.example.edu"\n'
            '\n[lists.outside]\nmembers = { emails = ["instructor@example.edu"] }\nposters = "members"\n'
            'reply_to = "cs199-help@example.edu"\n'
            '\n[lists.chat]\nmembers = { emails = ["instructor@example.edu"] }\nposters = "members"\n'
            'reply_to = "chat"\n')
    (tmp_path / "lists.toml").write_text(src)
    lists = {l.address: l.notice for l in compile_lists(C.load(tmp_path / "lists.toml"), [])}
    assert ("  - its contact address, CS 199 Staff <staff@lists-dev.example.edu>\n"
            "    (who may post there: course staff)\n") in lists["students@lists-dev.example.edu"]
    assert "  - its contact address, CS 199 Staff <staff@lists-dev.example.edu>\n" in lists["help@lists.example.edu"]
    assert "  - its contact address, cs199-help@example.edu\n\n" in lists["outside@lists.example.edu"]
    assert "contact address" not in lists["chat@lists.example.edu"]
    assert "contact address" not in lists["staff@lists.example.edu"]


# --------------------------------------------------------------------------
# Bounded size


def big_header_block(size: int = 3 * 1024 * 1024) -> bytes:
    """A header block of ``size`` bytes as hostile or broken mail brings it: the
    usual fields, a 98 KB encoded-word Subject, a References of thousands of
    ids, a DKIM signature, 100 KB folded report headers (Postfix's
    header_size_limit) and tens of thousands of Received lines."""
    word = "=?utf-8?q?=C3=9Cbung_f=C3=BCr_alle?="
    subject = "Subject: " + "\n ".join([word] * (98_000 // (len(word) + 2)))
    refs = "References: " + "\n ".join(f"<ref-{i}@mail.example.org>" for i in range(4000))
    lines = ["From: Alice <alice@example.edu>", "To: students@lists.example.edu", subject,
             "Date: Wed, 21 Jan 2026 10:00:00 -0600", "Message-ID: <big-1@example.edu>", refs,
             "DKIM-Signature: v=1; a=rsa-sha256; d=example.edu; s=sel;\n\tb=" + "A" * 300]
    report = "X-Spam-Report: " + "\n\t".join(["* 0.1 SOME_RULE text of the rule that fired here"] * 2000)
    lines += [report] * 10
    block = "\n".join(lines).encode() + b"\n"
    i = 0
    received = []
    while len(block) + sum(map(len, received)) < size:
        received.append(f"Received: from relay{i}.example.net (relay{i}.example.net [192.0.2.{i % 250}])\n"
                        f"\tby mx.example.edu (Postfix) with ESMTP id {i:010X}; Wed, 21 Jan 2026 10:00:00 -0600\n"
                        .encode())
        i += 1
    return b"".join(received) + block


def test_attached_headers_under_the_limit_are_whole():
    assert attached_headers(ORIGINAL) == ORIGINAL.decode()
    assert attached_headers(b"A: 1\nB: 2\n", limit=10) == "A: 1\nB: 2\n"  # 9 bytes without the last LF


def test_attached_headers_are_cut_after_the_last_whole_field():
    block = b"A: 1\nB: 2\n  two\n  three\nC: 3\n"
    assert attached_headers(block, limit=12) == (
        "A: 1\n[23 more bytes of the original headers (4 lines) were left out of this notice]\n")
    assert attached_headers(block, limit=24) == (
        "A: 1\nB: 2\n  two\n  three\n[4 more bytes of the original headers (1 lines) were left out of this notice]\n")


def test_attached_headers_fall_back_to_a_line_and_then_a_character_boundary():
    folded = b"Subject: one\n two\n three\n"  # one field, longer than the limit
    assert attached_headers(folded, limit=20).startswith("Subject: one\n two\n[")
    long_line = ("X-Long: " + "ü" * 50 + "\n").encode()
    text = attached_headers(long_line, limit=21)  # the 21st byte is the first of a "ü"
    assert text == "X-Long: " + "ü" * 6 + "\n[88 more bytes of the original headers (1 lines) were left out of this notice]\n"


def test_a_3_mb_header_block_makes_a_small_notice():
    block = big_header_block()
    raw, n = build(block, poster="alice@example.edu", sender="alice@example.edu")
    assert len(raw) < 20 * 1024, len(raw)
    attached = attachment_of(n)
    assert len(attached.encode()) <= HEADERS_LIMIT + 200
    kept, note = attached.rstrip("\n").rsplit("\n", 1)
    left_out = len(block.rstrip(b"\n")) - len(kept.encode()) - 1  # the LF after the last line kept
    lines = len(block.splitlines()) - len(kept.splitlines())
    assert note == f"[{left_out:,} more bytes of the original headers ({lines:,} lines) were left out of this notice]"
    assert block.startswith(kept.encode() + b"\n") and kept.endswith("-0600")  # a whole Received field
    assert len(str(n["Subject"])) <= len("Your message to students@lists.example.edu was not delivered: ") + FIELD_LIMIT
    assert len(str(n["References"]).split()) == 10 and str(n["References"]).endswith("<big-1@example.edu>")
    assert max(map(len, raw.split(b"\n"))) <= 998


def test_a_3_mb_block_of_8bit_headers_makes_a_small_notice():
    # quoted-printable writes each non-ASCII byte as three: the cap holds for what is sent
    line = ("Received: from gerät-" + "ü" * 40 + ".example.net by mx.example.edu\n").encode()
    legacy = ("X-Comment: Grüße aus der Übung\n").encode("cp1252")
    block = "From: alice@example.edu\nSubject: Grüße\n".encode() + (line + legacy) * 25000
    raw, n = build(block, poster="alice@example.edu", sender="alice@example.edu")
    part = list(n.iter_parts())[1]
    assert part["Content-Transfer-Encoding"] == "quoted-printable"
    assert len(raw) < 20 * 1024, len(raw)
    attached = part.get_content()
    assert attached.startswith("From: alice@example.edu\nSubject: Grüße\nReceived: from gerät-üü")
    assert "\nX-Comment: Grüße aus der Übung\n" in attached
    assert attached.endswith(" were left out of this notice]\n")


def test_long_fields_are_cut():
    long_from = "a" * 5000 + "@example.edu"
    original = (b"Subject: " + b"word " * 20000 + b"\nDate: " + b"x" * 5000 + b"\nMessage-ID: <" + b"m" * 400
                + b"@example.edu>\nReferences: <ok@example.org> <" + b"r" * 400 + b"@example.org>\n")
    raw, n = build(original, poster=long_from, reason=f"{long_from} is not allowed to post")
    text = text_of(n)
    assert f"  Subject: {'word ' * 59}word…\n" in text
    assert "Why: " + "a" * (FIELD_LIMIT - 1) + "…\n" in text
    assert "\n    " + "a" * (FIELD_LIMIT - 1) + "…\n" in text
    assert "In-Reply-To" not in n and "References" not in n  # an id no header line can hold is left out
    assert len(raw) < 20 * 1024
    assert max(map(len, raw.split(b"\n"))) <= 998


def test_a_long_header_line_is_attached_quoted_printable():
    original = b"From: bob@example.edu\nX-Long: " + b"x" * 5000 + b"\n"
    raw, n = build(original)
    part = list(n.iter_parts())[1]
    assert part["Content-Transfer-Encoding"] == "quoted-printable"
    assert part.get_content() == original.decode()
    assert max(map(len, raw.split(b"\n"))) <= 998


# --------------------------------------------------------------------------
# Through the real command


class Posts(Env):
    """docs/example synced once for the module; each post has its own Message-ID."""

    def post(self, sender: str, *extra: str, frm: str = "Alice <alice@example.edu>",
             recipient: str = "students@lists.example.edu", msgid: str) -> tuple[subprocess.CompletedProcess,
                                                                                  list, dict]:
        """Post from ``frm`` (not allowed on students@); the process, the
        notices it submitted and the event it wrote."""
        before = len(self.sent())
        msg = "\n".join([f"From: {frm}", f"To: {recipient}", *extra, "Subject: a question",
                         f"Message-ID: <{msgid}@example.edu>", "", "Hello"]).encode() + b"\n"
        proc = self.deliver(msg, recipient, sender)
        [event] = [e for e in self.events() if e["message_id"] == f"<{msgid}@example.edu>"]
        return proc, self.sent()[before:], event


@pytest.fixture(scope="module")
def posts(tmp_path_factory):
    assert DELIVER.is_file(), f"{DELIVER} is missing: pip install -e ."
    return Posts(tmp_path_factory.mktemp("notices"))


@pytest.fixture
def fresh(tmp_path):
    """A sync of its own, for posts that do get a notice (notice_limit = 2 a day)."""
    return Posts(tmp_path)


E2E_SUPPRESSED = [
    # envelope sender, extra header lines, the reason the event gives
    ("alice@example.edu", ("X-Loop: alice@example.edu",), "loop header"),
    ("alice@example.edu", ("X-BeenThere: cs101@lists.example.org",), "loop header"),
    ("alice@example.edu", ("List-Id: CS 101 <cs101.lists.example.org>",), "list mail"),
    ("alice@example.edu", ("List-Help: <mailto:cs101-request@lists.example.org?subject=help>",), "list mail"),
    ("alice@example.edu", ("List-Subscribe: <mailto:cs101-join@lists.example.org>",), "list mail"),
    ("alice@example.edu", ("List-Unsubscribe: <https://news.example.com/leave?u=1>",), "list mail"),
    ("alice@example.edu", ("List-Post: <mailto:cs101@lists.example.org>",), "list mail"),
    ("alice@example.edu", ("List-Owner: <mailto:cs101-owner@lists.example.org>",), "list mail"),
    ("alice@example.edu", ("List-Archive: <https://lists.example.org/cs101/>",), "list mail"),
    ("alice@example.edu", ("Mailing-List: contact cs101-help@lists.example.org; run by ezmlm",), "list mail"),
    ("alice@example.edu", ("Delivered-To: staff@lists-dev.example.edu",), "delivered to a list"),
    ("staff@lists.example.edu", (), "list address"),
    ("enrolled@lists-dev.example.edu", (), "list address"),
    ("staff-bounces+alice=example.edu@lists.example.edu", (), "list address"),
    ("testing-owner@lists-dev.example.edu", (), "list address"),
    ("enrolled-request@lists.example.edu", (), "list address"),
]


@pytest.mark.parametrize("sender,extra,why", E2E_SUPPRESSED)
def test_no_notice_through_the_command(posts, sender, extra, why):
    msgid = re.sub(r"\W+", "-", f"{sender} {extra}")
    proc, notices, event = posts.post(sender, *extra, msgid=msgid)
    assert proc.returncode == 0 and proc.stderr == b""
    assert notices == []
    assert event["status"] == "bounced" and event["rule"] == "poster"
    assert event["error_message"] == f"alice@example.edu is not allowed to post to students@lists.example.edu; no notice ({why})"


def test_a_person_with_a_delivered_to_of_their_own_gets_the_notice(fresh):
    proc, notices, event = fresh.post("alice@example.edu", "Delivered-To: alice@gmail.example", msgid="own-dt")
    assert proc.returncode == 0 and len(notices) == 1
    assert event["error_message"].endswith("; notice sent to <alice@example.edu>")


def test_the_notice_a_refused_student_reads(fresh):
    proc, [(argv, raw)], event = fresh.post("alice.smith@gmail.example", frm="Alice Smith <alice.smith@gmail.example>",
                                            msgid="personal")
    assert proc.returncode == 0, proc.stderr
    assert argv == ["-G", "-i", "-f", "<>", "--", "alice.smith@gmail.example"]  # RFC 3834 §3.3: null sender
    n = email.message_from_bytes(raw, policy=email.policy.default)
    assert n["Auto-Submitted"] == "auto-replied" and "Precedence" not in n
    assert n["To"] == "alice.smith@gmail.example"
    text = n.get_body(("plain",)).get_content()
    assert "Why: alice.smith@gmail.example is not allowed to post to students@lists.example.edu\n" in text
    assert "Who may post to this list: course instructor, ta\n" in text
    assert "The address it checked was:\n\n    alice.smith@gmail.example\n" in text
    assert "sending from a personal address" in text and "instead of your university address" in text
    assert ("  - its owners, students-owner@lists.example.edu\n"
            "    (a reply to this notice reaches them)\n"
            "  - its contact address, CS 199 Staff <staff@lists.example.edu>\n"
            "    (who may post there: course staff)\n") in text
    assert event["error_message"].endswith("; notice sent to <alice.smith@gmail.example>")


def test_an_smtputf8_poster_gets_a_notice_addressed_to_them(fresh):
    proc, notices, event = fresh.post("jürgen@exämple.de", frm="Jürgen <jürgen@exämple.de>", msgid="eai")
    assert proc.returncode == 0, proc.stderr
    [(argv, raw)] = notices
    assert argv[-1] == "jürgen@exämple.de"
    n = email.message_from_string(raw.decode("utf-8"), policy=email.policy.default)
    assert [a.addr_spec for a in n["To"].addresses] == ["jürgen@exämple.de"]
    assert "The address it checked was:\n\n    jürgen@exämple.de\n" in n.get_body(("plain",)).get_content()
    assert event["error_message"].endswith("; notice sent to <jürgen@exämple.de>")


def test_the_checked_address_is_never_a_display_name(fresh):
    # a display name that looks like an allowed address: the notice never names it as the address checked
    proc, [(_, raw)], event = fresh.post("alice.smith@gmail.example",
                                         frm="instructor@example.edu <alice.smith@gmail.example>", msgid="lookalike")
    assert proc.returncode == 0, proc.stderr
    text = email.message_from_bytes(raw, policy=email.policy.default).get_body(("plain",)).get_content()
    checked = text.split("The address it checked was:\n\n    ", 1)[1].split("\n", 1)[0]
    assert checked in ("alice.smith@gmail.example", NO_ADDRESS)
    assert f"Why: {event['error_message'].split('; notice sent')[0]}\n" in text


def test_a_from_without_an_address_is_named_as_such(fresh):
    proc, [(_, raw)], event = fresh.post("alice@example.edu", frm="Alice", msgid="no-address")
    assert proc.returncode == 0, proc.stderr
    text = email.message_from_bytes(raw, policy=email.policy.default).get_body(("plain",)).get_content()
    assert f"The address it checked was:\n\n    {NO_ADDRESS}\n" in text
    assert f"Why: {event['error_message'].split(';')[0]}\n" in text


def test_a_3_mb_header_block_through_the_command(fresh):
    block = big_header_block()
    message = block + b"\nHello\n"
    proc = subprocess.Popen([str(DELIVER), *fresh.argv("students@lists.example.edu", "alice@example.edu")],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    start = time.monotonic()
    proc.stdin.write(message)
    proc.stdin.close()
    _, status, usage = os.wait4(proc.pid, 0)
    elapsed = time.monotonic() - start
    proc.returncode = os.waitstatus_to_exitcode(status)
    stderr = proc.stderr.read()
    proc.stdout.close(), proc.stderr.close()
    [(argv, notice)] = fresh.sent()
    print(f"\n3 MB header block ({len(block):,} bytes): deliver took {elapsed:.2f} s,"
          f" peak RSS {usage.ru_maxrss / 1024:.1f} MiB; notice {len(notice):,} bytes")
    assert proc.returncode == 0, stderr
    assert argv[-1] == "alice@example.edu"
    assert len(notice) < 20 * 1024
    # peak RSS is printed, not asserted: a child forked from a large pytest process can report the
    # parent's pages as its own (memory targets belong in bench/, not in unit tests)
    n = email.message_from_bytes(notice, policy=email.policy.default)
    attached = list(n.iter_parts())[1].get_content()
    assert attached.startswith("Received: from relay0.example.net")
    assert re.search(r"\n\[[\d,]+ more bytes of the original headers \([\d,]+ lines\) were left out of this notice\]\n$",
                     attached)
    [event] = fresh.events()
    assert event["status"] == "bounced" and event["error_message"].endswith("; notice sent to <alice@example.edu>")
