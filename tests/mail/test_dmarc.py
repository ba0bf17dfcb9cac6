"""The DMARC mitigation on the mail side: the decision (a table of cases), the munged rewrite, the
wrapped message, and both through ``listfilter-deliver`` with sendmail faked.

The snapshot's dmarc table is written directly here; tests/sync/test_dmarc.py fills it the way
sync does, and tests/integration/test_dmarc_mailflow.py runs it all through a real Postfix and DNS.
"""

from __future__ import annotations

import datetime
import email
import email.policy
import json
from zoneinfo import ZoneInfo

import pytest

from listfilter.common.snapshot import DMARC_GRACE, DmarcEntry
from listfilter.mail import deliver as D
from listfilter.mail.headers import rewrite_headers, wrap_message
from listfilter.mail.message import Headers, poster_of, render, split_message
from listfilter.mail.rules import Mitigation, dmarc_mitigation

from . import STUDENTS, compiled_list, list_row, write_snapshot
from .test_deliver import fake_sendmail

TZ = ZoneInfo("America/Chicago")
NOW = datetime.datetime(2026, 1, 22, 9, 30, tzinfo=TZ)
T = NOW.timestamp()


def entry(policy, status="ok", expires=T + 600, domain="example.org"):
    return DmarcEntry(domain, policy, status, int(expires), "detail")


# ---------------------------------------------------------------- the decision

CASES = [
    # (list's dmarc, dmarc_always, From address, the From domain's entry, expected: None or (mode, reason))
    ("munge", (), "jane@example.org", entry("reject"), ("munge", "example.org has DMARC policy p=reject")),
    ("wrap", (), "jane@example.org", entry("quarantine"), ("wrap", "example.org has DMARC policy p=quarantine")),
    ("munge", (), "jane@example.org", entry("none"), None),
    ("munge", (), "jane@example.org", entry(None, "none"), None),  # no DMARC record at all
    ("munge", (), "jane@example.org", entry(None, "failed"), ("munge", "the DMARC lookup for example.org failed")),
    ("munge", (), "jane@example.org", entry(None, "failed", expires=T + 10 * DMARC_GRACE),
     ("munge", "the DMARC lookup for example.org failed")),
    ("munge", (), "jane@example.org", None, ("munge", "no DMARC policy for example.org in the snapshot")),
    ("munge", (), "jane@example.org", entry("none", expires=T - 60), None),  # expired, but sync refreshes within the grace
    ("munge", (), "jane@example.org", entry("none", expires=T - DMARC_GRACE - 1),
     ("munge", "the DMARC policy of example.org expired (is sync running?)")),
    ("munge", ("gmail.com",), "sam@Gmail.COM", entry("none", domain="gmail.com"), ("munge", "dmarc_always lists gmail.com")),
    ("munge", ("example.edu",), "ta@cs.example.edu", entry("none"), ("munge", "dmarc_always lists example.edu")),
    ("munge", ("jane@example.org",), "Jane@Example.org", entry("none"), ("munge", "dmarc_always lists jane@example.org")),
    ("munge", ("other@example.org", "ample.org"), "jane@example.org", entry("none"), None),  # no partial matches
    ("off", ("gmail.com",), "sam@gmail.com", entry("reject"), None),
    ("off", (), "jane@example.org", None, None),
    ("munge", (), None, None, None),  # no From address: the chain refused it already
]


@pytest.mark.parametrize("mode, always, address, dmarc, expected", CASES)
def test_the_decision(mode, always, address, dmarc, expected):
    row = list_row(dmarc=mode, dmarc_always=always)
    got = dmarc_mitigation(row, address, dmarc, T)
    assert got == (Mitigation(*expected) if expected else None)


# ---------------------------------------------------------------- munge

POST = (b'From: "Jane Doe" <jane@example.org>\n'
        b"To: students@lists.example.edu\n"
        b"Cc: Bob <bob@example.net>\n"
        b"Subject: hello there\n"
        b"Date: Wed, 21 Jan 2026 10:00:00 -0600\n"
        b"Message-ID: <m1@example.org>\n"
        b"DKIM-Signature: v=1; a=rsa-sha256; d=example.org; s=s1; h=from:to:subject; b=AAAA\n"
        b"X-Mailer: Thunderbird\n"
        b"MIME-Version: 1.0\n"
        b"Content-Type: text/plain; charset=utf-8\n"
        b"\n"
        b"Hello \xc3\xa9veryone,\nFrom the desk of Jane\n")


def munged(raw: bytes, lst) -> tuple[bytes, email.message.EmailMessage]:
    fields, body = split_message(raw)
    headers = Headers(fields)
    name, address, _ = poster_of(headers)
    out = render(rewrite_headers(headers, lst, NOW, munge=(name, address)), body)
    return out, email.message_from_bytes(out, policy=email.policy.default)


def plain(raw: bytes, lst) -> bytes:
    fields, body = split_message(raw)
    return render(rewrite_headers(Headers(fields), lst, NOW), body)


def addresses(msg, name):
    return [(a.display_name, a.addr_spec) for a in msg[name].addresses] if name in msg else []


def test_munge_puts_the_list_in_from_and_the_poster_in_reply_to():
    out, msg = munged(POST, list_row())
    assert out.startswith(b"From: Jane Doe via CS 199 Students <students@lists.example.edu>\n")
    assert addresses(msg, "From") == [("Jane Doe via CS 199 Students", STUDENTS)]
    assert addresses(msg, "Reply-To") == [("Jane Doe", "jane@example.org")]
    assert addresses(msg, "Cc") == [("Bob", "bob@example.net")]
    # nothing else changes: the same fields as the rewrite without the mitigation, but From and Reply-To
    def others(raw):
        return [f for f in raw.split(b"\n\n", 1)[0].split(b"\n") if not f.startswith((b"From:", b"Reply-To:"))]
    assert others(out) == others(plain(POST, list_row()))
    assert out.split(b"\n\n", 1)[1] == POST.split(b"\n\n", 1)[1]


def test_with_the_lists_reply_to_the_poster_joins_the_cc():
    _, msg = munged(POST, list_row(reply_to="staff@lists.example.edu"))
    assert msg["Reply-To"] == "staff@lists.example.edu"
    assert addresses(msg, "Cc") == [("Bob", "bob@example.net"), ("Jane Doe", "jane@example.org")]
    _, alone = munged(POST.replace(b"Cc: Bob <bob@example.net>\n", b""), list_row(reply_to="staff@lists.example.edu"))
    assert addresses(alone, "Cc") == [("Jane Doe", "jane@example.org")]


def test_the_posters_own_reply_to_is_kept_after_the_poster():
    raw = POST.replace(b"X-Mailer", b"Reply-To: Jane at home <jane@home.example>, jane@example.org\nX-Mailer")
    out, msg = munged(raw, list_row())
    assert addresses(msg, "Reply-To") == [("Jane Doe", "jane@example.org"), ("Jane at home", "jane@home.example")]
    assert out.count(b"\nReply-To:") == 1


@pytest.mark.parametrize("from_field, display", [
    (b"From: jane@example.org", "jane at example.org via CS 199 Students"),
    (b'From: "jane@example.org" <jane@example.org>', "jane at example.org via CS 199 Students"),
    ('From: "Jürgen Müller" <jane@example.org>'.encode(), "Jürgen Müller via CS 199 Students"),
    (b"From: =?iso-8859-1?q?J=FCrgen?= <jane@example.org>", "Jürgen via CS 199 Students"),
    (b'From: "Doe, Jane" <jane@example.org>', "Doe, Jane via CS 199 Students"),
])
def test_the_name_in_the_munged_from(from_field, display):
    out, msg = munged(POST.replace(b'From: "Jane Doe" <jane@example.org>', from_field), list_row())
    assert addresses(msg, "From") == [(display, STUDENTS)]
    head = out.split(b"\n\n", 1)[0]
    assert head.isascii()  # RFC 2047, with the message module's encoder
    assert b"@example.org via" not in head


# ---------------------------------------------------------------- wrap


def wrapped(raw: bytes, lst) -> tuple[bytes, email.message.EmailMessage]:
    fields, body = split_message(raw)
    headers = Headers(fields)
    name, address, _ = poster_of(headers)
    out_fields, out_body = wrap_message(headers, body, lst, NOW, poster=(name, address))
    out = render(out_fields, out_body)
    return out, email.message_from_bytes(out, policy=email.policy.default)


def test_wrap_sends_the_post_intact_inside_a_message_from_the_list():
    out, msg = wrapped(POST, list_row())
    assert addresses(msg, "From") == [("Jane Doe via CS 199 Students", STUDENTS)]
    assert addresses(msg, "Reply-To") == [("Jane Doe", "jane@example.org")]
    assert addresses(msg, "To") == [("CS 199 Students", STUDENTS)]
    assert msg["Subject"] == "[CS 199 Students] 2026-01-22: Hello There"
    assert msg["Message-ID"] == "<m1@example.org>" and msg["Date"] == "Wed, 21 Jan 2026 10:00:00 -0600"
    assert msg["List-Post"] == f"<mailto:{STUDENTS}>" and msg["X-Listfilter-Loop"] == STUDENTS
    for gone in ("DKIM-Signature", "X-Mailer"):  # inside only
        assert gone not in msg
    assert msg.get_content_type() == "multipart/mixed" and msg["Content-Transfer-Encoding"] == "8bit"
    [part] = msg.iter_parts()
    assert part.get_content_type() == "message/rfc822" and part.get_content_disposition() == "inline"
    inner = part.get_content()
    assert inner["From"] == "Jane Doe <jane@example.org>" and inner["Subject"] == "hello there"
    assert inner["DKIM-Signature"].startswith("v=1; a=rsa-sha256; d=example.org")
    # the post byte for byte, its body's "From " line not mangled, between the part's headers and the boundary
    boundary = msg.get_boundary().encode()
    assert b"\n\n" + POST + b"\n--" + boundary + b"--" in out
    assert out.count(b"\n--" + boundary) == 2


def test_wrap_with_a_7bit_post_and_the_lists_reply_to():
    raw = POST.replace("é".encode(), b"e")
    out, msg = wrapped(raw, list_row(reply_to="staff@lists.example.edu"))
    assert "Content-Transfer-Encoding" not in msg and b"8bit" not in out
    assert msg["Reply-To"] == "staff@lists.example.edu"
    assert addresses(msg, "Cc") == [("Bob", "bob@example.net"), ("Jane Doe", "jane@example.org")]
    assert raw in out


def test_a_boundary_that_the_post_contains_is_not_used(monkeypatch):
    import os

    draws = iter([bytes(12), bytes(12), b"\x11" * 12])
    monkeypatch.setattr(os, "urandom", lambda n: next(draws))
    raw = POST.replace(b"From the desk", b"--=_listfilter_" + bytes(12).hex().encode() + b"\nFrom the desk")
    out, msg = wrapped(raw, list_row())
    assert msg.get_boundary() == "=_listfilter_" + "11" * 12
    [part] = msg.iter_parts()
    assert raw in out and part.get_content()["Message-ID"] == "<m1@example.org>"


# ---------------------------------------------------------------- through listfilter-deliver

MEMBERS = ["alice@example.edu", "bob@example.edu"]


def deliver_with(tmp_path, dmarc, *, mode="munge", post=POST, dry=False):
    tmp_path.mkdir(exist_ok=True)
    sendmail, calls = fake_sendmail(tmp_path)
    spool = tmp_path / "spool"
    lst = compiled_list(members=MEMBERS, posters=["jane@example.org"], dmarc=mode)
    snapshot = write_snapshot(tmp_path / "snapshot.sqlite", [lst], spool=spool, sendmail=str(sendmail), dmarc=dmarc)
    argv = ["--snapshot", str(snapshot), "--sender", "jane@example.org", "--recipient", STUDENTS, "--queue-id", "4QID"]
    line = D.deliver(D.parse(argv + (["--dry-run"] if dry else []), D.OPTIONS, D.FLAGS), post)
    sent = [p.read_bytes() for p in sorted(calls.glob("*.msg"))]
    events = [json.loads(p.read_text()) for p in (spool / "events").glob("*.json")] if (spool / "events").is_dir() else []
    return line, sent, events


def reject(expires=None):
    import time

    return {"example.org": DmarcEntry("example.org", "reject", "ok", int(expires or time.time() + 600),
                                      "_dmarc.example.org: p=reject")}


def test_deliver_munges_a_post_from_a_reject_domain_and_records_why(tmp_path):
    line, [msg], [event] = deliver_with(tmp_path, reject())
    assert msg.startswith(b"From: Jane Doe via CS 199 Students <students@lists.example.edu>\n")
    assert b"\nReply-To: Jane Doe <jane@example.org>\n" in msg
    assert line.endswith("status=delivered (2 recipients), dmarc=munge (example.org has DMARC policy p=reject)"
                         " (rule accept)"), line
    assert event["status"] == "delivered" and event["sender_email"] == "jane@example.org"  # the poster, as checked
    assert event["error_message"] == ("From: rewritten to the list's address (dmarc = munge):"
                                      " example.org has DMARC policy p=reject")


def test_deliver_leaves_a_none_domain_alone(tmp_path):
    none = {"example.org": DmarcEntry("example.org", "none", "ok", 4_000_000_000, "_dmarc.example.org: p=none")}
    line, [msg], [event] = deliver_with(tmp_path, none)
    assert msg.startswith(b'From: "Jane Doe" <jane@example.org>\n') and b"Reply-To" not in msg
    assert "dmarc=" not in line and event["error_message"] == ""


def test_deliver_munges_when_the_snapshot_has_no_entry_or_a_failed_one(tmp_path):
    _, [msg], [event] = deliver_with(tmp_path / "a", None)
    assert msg.startswith(b"From: Jane Doe via CS 199 Students <")
    assert event["error_message"].endswith("no DMARC policy for example.org in the snapshot")
    failed = {"example.org": DmarcEntry("example.org", None, "failed", 0, "lookup failed: SERVFAIL")}
    line, [msg], _ = deliver_with(tmp_path / "b", failed)
    assert msg.startswith(b"From: Jane Doe via CS 199 Students <") and "the DMARC lookup for example.org failed" in line


def test_deliver_wraps(tmp_path):
    line, [msg], [event] = deliver_with(tmp_path, reject(), mode="wrap")
    parsed = email.message_from_bytes(msg, policy=email.policy.default)
    [part] = parsed.iter_parts()
    assert part.get_content_type() == "message/rfc822" and POST in msg
    assert "dmarc=wrap (example.org has DMARC policy p=reject)" in line
    assert event["error_message"].startswith("sent inside a message from the list (dmarc = wrap)")


def test_deliver_off_sends_the_from_as_it_came(tmp_path):
    line, [msg], _ = deliver_with(tmp_path, reject(), mode="off")
    assert msg.startswith(b'From: "Jane Doe" <jane@example.org>\n') and "dmarc=" not in line


def test_the_dry_run_says_so(tmp_path, capsys):
    deliver_with(tmp_path, reject(), dry=True)
    out = capsys.readouterr().out
    assert ("dmarc: From: rewritten to the list's address (dmarc = munge): example.org has DMARC policy p=reject\n"
            in out)
    assert 'From: Jane Doe via CS 199 Students <students@lists.example.edu>' in out


def test_posting_rights_are_decided_on_the_original_from(tmp_path):
    """A stranger from a p=reject domain is refused, not munged into the list's own address."""
    stranger = POST.replace(b'"Jane Doe" <jane@example.org>', b"Mallory <mallory@example.org>")
    line, sent, [event] = deliver_with(tmp_path, reject(), post=stranger)
    assert event["status"] == "bounced" and "mallory@example.org is not allowed to post" in line
    assert all(b"via CS 199 Students" not in m for m in sent)  # at most the refusal notice went out
