"""listfilter.mail.bounce: reading real bounces, and the one record each bounce leaves in the spool.

The samples are real: Postfix's own DSNs (tests/data/bounces, two of them
made by a private Postfix 3.7 whose relay refused an SMTPUTF8 recipient),
and flufl.bounce's corpus (tests/data/bounces/flufl) with the addresses its
own tests expect. Whether a record counts (the member, the post it refers
to) is sync's job, tested with listfilter.store.bounces.
"""

from __future__ import annotations

import base64
import concurrent.futures
import datetime as dt
import email
import os
import subprocess
import sys
import types
from dataclasses import dataclass
from pathlib import Path

import pytest

from listfilter.common import spool as SP
from listfilter.common.events import bounce_from_json, valid_id
from listfilter.mail import bounce as B
from listfilter.mail.command import parse

from . import STUDENTS, compiled_list, write_snapshot
from .test_deliver import fake_sendmail

SAMPLES = Path(__file__).resolve().parent.parent / "data" / "bounces"
FLUFL = SAMPLES / "flufl"
BOUNCE = Path(sys.executable).with_name("listfilter-bounce")
MEMBERS = {"alice@example.edu", "bob@example.edu", "erin@example.edu", "ta1@example.edu", "jürgen@example.edu"}
#: 04:30 UTC on 2 November is still 1 November in Chicago, the site's timezone.
ARRIVED = dt.datetime(2026, 11, 2, 4, 30, tzinfo=dt.timezone.utc)


def sample(name: str) -> bytes:
    return (SAMPLES / f"{name}.eml").read_bytes()


def parsed(raw: bytes):
    return email.message_from_bytes(raw)


def report(name: str) -> B.Report:
    return B.read_report(parsed(sample(name)))


def without_from(raw: bytes) -> bytes:
    """The message with its top-level From header (and its continuation lines) removed, bytes untouched else."""
    head, sep, body = raw.replace(b"\r\n", b"\n").partition(b"\n\n")
    out, skipping = [], False
    for line in head.split(b"\n"):
        if skipping and line[:1] in (b" ", b"\t"):
            continue
        skipping = line.lower().startswith(b"from:")
        if not skipping:
            out.append(line)
    return b"\n".join(out) + sep + body


# ---------------------------------------------------------------- what a report says, over real samples


CLASSIFY = [
    # sample, VERP member, (permanent, temporary)
    ("postfix-550", "alice@example.edu", ({"alice@example.edu"}, set())),
    ("postfix-550", None, ({"alice@example.edu"}, set())),
    ("postfix-delayed", "bob@example.edu", (set(), {"bob@example.edu"})),
    ("vacation", "erin@example.edu", (set(), set())),
    ("exim-550", None, ({"ta1@example.edu"}, set())),
    ("exim-550", "TA1@Example.edu", ({"ta1@example.edu"}, set())),
    ("garbage", None, (set(), set())),
    ("garbage", "alice@example.edu", (set(), set())),
    ("postfix-smtputf8-550", None, ({"jürgen@example.edu"}, set())),
    ("postfix-smtputf8-550-headers", None, ({"jürgen@example.edu"}, set())),
    ("postfix-smtputf8-550", "jürgen@example.edu", ({"jürgen@example.edu"}, set())),
]


@pytest.mark.parametrize("name,member,expected", CLASSIFY)
def test_classify_samples(name, member, expected):
    assert B.classify(report(name), member, MEMBERS) == expected


def test_non_member_addresses_do_not_count_without_verp():
    assert B.classify(report("exim-550"), None, {"alice@example.edu"}) == (set(), set())


# ---------------------------------------------------------------- RFC 6533: internationalised DSNs


def test_flufl_bounce_alone_misses_the_smtputf8_recipient():
    """Why the reader exists: Postfix's report of a refused SMTPUTF8 recipient, as flufl.bounce sees it."""
    from flufl.bounce import all_failures

    for name in ("postfix-smtputf8-550", "postfix-smtputf8-550-headers"):
        assert all_failures(parsed(sample(name))) == (frozenset(), frozenset())


def test_the_real_postfix_global_dsn_is_read():
    message = parsed(sample("postfix-smtputf8-550"))
    [part] = [p for p in message.walk() if p.get_content_type() == "message/global-delivery-status"]
    assert B.status_blocks(part)[1]["final-recipient"] == "utf-8; jürgen@example.edu"
    assert B.status_failures(message) == (set(), {"jürgen@example.edu"})


def global_dsn(fields: str, *, kind: str = "message/global-delivery-status", cte: str = "8bit",
               returned: str = "") -> bytes:
    """A report in RFC 6533's format (section 6), for the forms the real Postfix does not send."""
    body = fields.encode("utf-8")
    if cte == "base64":
        body = base64.encodebytes(body)
    return (b"From: MAILER-DAEMON@mx.example.org\nTo: students-bounces@lists.example.edu\n"
            b"Subject: Undelivered Mail Returned to Sender\nMIME-Version: 1.0\n"
            b"Content-Type: multipart/report; report-type=global-delivery-status; boundary=BB\n\n"
            b"--BB\nContent-Type: text/plain; charset=utf-8\n\nA message could not be delivered.\n\n"
            b"--BB\nContent-Type: " + kind.encode() + b"\nContent-Transfer-Encoding: " + cte.encode() + b"\n\n"
            + body + b"\n" + returned.encode("utf-8") + b"--BB--\n")


RFC6533 = [
    # (what, the report, (temporary, permanent))
    ("unitext address", global_dsn("Reporting-MTA: dns; mx.example.org\n\n"
                                   "Final-Recipient: utf-8; jürgen@example.edu\nAction: failed\nStatus: 5.1.1\n"),
     (set(), {"jürgen@example.edu"})),
    ("base64 transfer encoding (section 6.3)",
     global_dsn("Reporting-MTA: dns; mx.example.org\n\nFinal-Recipient: utf-8; jürgen@example.edu\n"
                "Action: failed\nStatus: 5.1.1\n", cte="base64"), (set(), {"jürgen@example.edu"})),
    ("embedded \\x{FC} in a 7-bit message/delivery-status (utf-8-addr-xtext)",
     global_dsn("Reporting-MTA: dns; mx.example.org\n\nFinal-Recipient: utf-8; j\\x{FC}rgen@example.edu\n"
                "Action: failed\nStatus: 5.1.1\n", kind="message/delivery-status", cte="7bit"),
     (set(), {"jürgen@example.edu"})),
    ("a delay is temporary", global_dsn("Reporting-MTA: dns; mx.example.org\n\n"
                                        "Original-Recipient: utf-8; jürgen@example.edu\nAction: delayed\n"
                                        "Status: 4.4.1\n"), ({"jürgen@example.edu"}, set())),
    ("rfc822 address in a global report", global_dsn("Reporting-MTA: dns; mx.example.org\n\n"
                                                     "Final-Recipient: rfc822; Bob@Example.edu\nAction: failed\n"),
     (set(), {"bob@example.edu"})),
    ("delivered is no failure", global_dsn("Reporting-MTA: dns; mx.example.org\n\n"
                                           "Final-Recipient: utf-8; jürgen@example.edu\nAction: delivered\n"),
     (set(), set())),
]


@pytest.mark.parametrize("what,raw,expected", RFC6533, ids=[c[0] for c in RFC6533])
def test_rfc6533_reports(what, raw, expected):
    assert B.status_failures(parsed(raw)) == expected


# ---------------------------------------------------------------- flufl.bounce's detectors, one at a time


class Exploding:
    def process(self, msg):
        raise RuntimeError("boom")


def test_a_detector_that_raises_does_not_lose_the_others(monkeypatch):
    real = B._detectors()
    monkeypatch.setattr(B, "_detectors", lambda: [Exploding, *real])
    got = B.read_report(parsed(sample("exim-550")))
    assert got.permanent == {"ta1@example.edu"} and got.notes == ("detector Exploding raised RuntimeError",)


FALLBACK = """
import email, sys
import flufl.bounce._scan as scan
from listfilter.mail import bounce as B
from listfilter.mail.command import parse

class Exploding:
    def process(self, msg):
        raise RuntimeError("boom")

B._detectors = lambda: None  # a flufl.bounce that does not expose its detectors
scan._DETECTORS = [Exploding]
got = B.read_report(email.message_from_bytes(sys.stdin.buffer.read()))
print(got.notes, sorted(got.permanent))
"""


def test_flufl_bounces_own_log_never_reaches_stderr():
    """Where flufl.bounce does not expose its detectors its whole scan runs, guarded; the traceback it
    logs (at ERROR: Python's last-resort handler would print it) must not reach pipe(8)'s stderr."""
    proc = subprocess.run([sys.executable, "-c", FALLBACK], input=sample("exim-550"), capture_output=True,
                          timeout=60)
    assert proc.returncode == 0 and proc.stderr == b""
    # the report's own text still names the address
    assert proc.stdout == b"('detector flufl.bounce raised RuntimeError',) ['ta1@example.edu']\n"


def test_a_report_without_from_still_finds_the_address():
    """flufl.bounce's Yale detector raises on a report without From; all_failures then loses everything."""
    from flufl.bounce import all_failures

    message = parsed(without_from((FLUFL / "qmail_01.txt").read_bytes()))
    with pytest.raises(IndexError):
        all_failures(message)
    got = B.read_report(message)
    assert got.permanent == {"userx@example.de"} and "detector Yale raised IndexError" in got.notes


def test_the_text_reader_is_the_last_resort():
    raw = (b"Subject: failure notice\n\nSorry, we were unable to deliver your message.\n\n"
           b"<alice@example.edu>:\nRemote host said: 550 5.1.1 <alice@example.edu>: User unknown\n\n"
           b"<bob@example.edu>: 452 4.2.2 mailbox full, will retry\n\n"
           b"--- Below this line is a copy of the message.\n\nTo: erin@example.edu\n550 5.1.1 erin@example.edu\n")
    assert B.named_with_permanent_status(parsed(raw)) == {"alice@example.edu"}
    assert B.read_report(parsed(b"Subject: hello\n\nCall me on 550 5.1.1\n")).permanent == set()


# ---------------------------------------------------------------- the returned post's Message-ID


MESSAGE_IDS = [
    # sample path, the Message-IDs found (first: the returned post's)
    (SAMPLES / "postfix-550.eml", ("<t1@example.edu>",)),  # text/rfc822-headers
    (SAMPLES / "postfix-smtputf8-550.eml", ("<week3-utf8@example.edu>",)),  # message/global
    (SAMPLES / "postfix-smtputf8-550-headers.eml", ("<week3-utf8@example.edu>",)),  # message/global-headers
    (SAMPLES / "exim-550.eml", ()),  # the copy has no Message-ID; the report's own is never taken
    (FLUFL / "simple_43.txt", ("<ea184277-2081-cdae-1478-0639bb427e8c@our-domain.de>",)),  # message/rfc822
    (FLUFL / "dumbass_01.txt", ("<927suu$r5l$1@panix2.panix.com>",)),
    (FLUFL / "qmail_01.txt", ()),
    (SAMPLES / "vacation.eml", ()),
]


@pytest.mark.parametrize("path,expected", MESSAGE_IDS, ids=[p.name for p, _ in MESSAGE_IDS])
def test_returned_message_ids(path, expected):
    assert B.returned_message_ids(parsed(path.read_bytes())) == expected


def test_message_ids_quoted_in_text_come_after_the_returned_headers():
    raw = (b"Content-Type: multipart/report; report-type=delivery-status; boundary=BB\n"
           b"Message-ID: <the-report-itself@mx.example.org>\n\n"
           b"--BB\nContent-Type: text/plain\n\nYour message\n  Message-ID: <quoted@example.edu>\nwas not delivered.\n"
           b"--BB\nContent-Type: message/delivery-status\n\nReporting-MTA: dns; mx\n"
           b"X-Original-Message-ID: <field@example.edu>\n\nFinal-Recipient: rfc822; a@example.edu\nAction: failed\n\n"
           b"--BB\nContent-Type: text/rfc822-headers\n\nSubject: hi\nMessage-ID:\n <returned@example.edu>\n\n--BB--\n")
    assert B.returned_message_ids(parsed(raw)) == (
        "<returned@example.edu>", "<field@example.edu>", "<quoted@example.edu>")


# ---------------------------------------------------------------- handle(): one record per bounce, or a reason


@pytest.fixture
def site(tmp_path, monkeypatch):
    """A snapshot of students@ with five members, a spool, the fake sendmail, and a fixed clock."""
    sendmail, calls = fake_sendmail(tmp_path)
    spool = tmp_path / "spool"
    snapshot = write_snapshot(tmp_path / "snapshot.sqlite", [compiled_list(members=sorted(MEMBERS))],
                              spool=spool, sendmail=str(sendmail))

    class Clock(dt.datetime):
        @classmethod
        def now(cls, tz=None):
            return ARRIVED.astimezone(tz) if tz else ARRIVED

    monkeypatch.setattr(B, "dt", types.SimpleNamespace(datetime=Clock))
    return types.SimpleNamespace(snapshot=snapshot, spool=spool, calls=calls)


def handle(site, name: str, recipient: str, raw: bytes | None = None) -> str:
    return B.handle({"snapshot": str(site.snapshot), "recipient": recipient, "queue_id": "B0UNCE"},
                    sample(name) if raw is None else raw)


def records(site) -> list:
    return [bounce_from_json(p.read_bytes()) for p in SP.pending_bounces(site.spool)]


def test_a_verp_bounce_records_the_member_and_the_post(site):
    line = handle(site, "postfix-550", "students-bounces+alice=example.edu@lists.example.edu")
    [record] = records(site)
    assert valid_id(record.id)
    assert record._replace(id="", received_at="") == B.BounceRecord(
        id="", list_address=STUDENTS, received_at="", day="2026-11-01",  # the site's day, not UTC's
        member="alice@example.edu", permanent=("alice@example.edu",), temporary=(), queue_id="B0UNCE",
        message_ids=("<t1@example.edu>",), reason="")
    assert dt.datetime.fromisoformat(record.received_at).tzinfo is not None
    assert line == (f"bounce for {STUDENTS} from alice@example.edu: permanent failure of alice@example.edu"
                    f" (message-id <t1@example.edu>) recorded as {record.id}.json")


def test_the_verp_member_is_lower_cased(site):
    handle(site, "exim-550", "students-bounces+TA1=Example.EDU@lists.example.edu")
    [record] = records(site)
    assert record.member == "ta1@example.edu" and record.permanent == ("ta1@example.edu",)
    assert record.message_ids == ()


def test_an_smtputf8_member_is_recorded(site):
    handle(site, "postfix-smtputf8-550", "students-bounces+jürgen=example.edu@lists.example.edu")
    [record] = records(site)
    assert (record.member, record.permanent, record.message_ids) == (
        "jürgen@example.edu", ("jürgen@example.edu",), ("<week3-utf8@example.edu>",))


@pytest.mark.parametrize("recipient", [
    "students-bounces+mallory=example.org@lists.example.edu",  # a stranger's made-up member
    "students-bounces+dan=example.edu@lists.example.edu",  # someone who is not on this list
])
def test_a_verp_address_that_is_no_member_leaves_no_record(site, recipient):
    member = B.verp_member(recipient.split("+")[1].split("@")[0])
    line = handle(site, "postfix-550", recipient)
    assert line == f"bounce for {STUDENTS} from {member}: not counted: {member} is not a member of {STUDENTS}"
    assert not site.spool.exists()  # not even the spool is touched


@pytest.mark.parametrize("extension", ["nonsense", "x" * 5000])
def test_a_verp_extension_that_names_no_address_leaves_no_record(site, extension):
    line = handle(site, "postfix-550", f"students-bounces+{extension}@lists.example.edu")
    assert line.startswith(f"bounce for {STUDENTS}: VERP extension ") and line.endswith("names no address; not counted")
    assert len(line) < 300 and not site.spool.exists()


def test_a_bounce_to_the_plain_address_counts_for_nobody(site):
    line = handle(site, "exim-550", "students-bounces@lists.example.edu")
    [record] = records(site)
    assert record.member == "" and record.permanent == ("ta1@example.edu",) and record.reason == B.NO_VERP
    assert line.endswith(f"recorded as {record.id}.json; {B.NO_VERP}")


def test_a_plain_bounce_naming_no_member_leaves_no_record(site):
    raw = sample("exim-550").replace(b"ta1@example.edu", b"stranger@example.org")
    line = handle(site, "exim-550", "students-bounces@lists.example.edu", raw)
    assert line == f"bounce for {STUDENTS}: names no member (stranger@example.org); not counted"
    assert not site.spool.exists()


def test_every_bounce_is_its_own_record(site):
    # counting them (once per post and member, once per day) is sync's job; the mail side never reads one back
    for _ in range(3):
        handle(site, "postfix-550", "students-bounces+alice=example.edu@lists.example.edu")
    assert len({r.id for r in records(site)}) == 3
    assert {r.day for r in records(site)} == {"2026-11-01"}


@pytest.mark.parametrize("name,recipient,what", [
    ("postfix-delayed", "students-bounces+bob=example.edu@lists.example.edu", "temporary failure; not counted"),
    ("vacation", "students-bounces+erin=example.edu@lists.example.edu",
     "no failure found (auto-reply or unreadable); not counted"),
    ("garbage", "students-bounces@lists.example.edu", "no failure found (auto-reply or unreadable); not counted"),
])
def test_temporary_vacation_and_garbage_leave_no_record(site, name, recipient, what):
    line = handle(site, name, recipient)
    assert line.endswith(f": {what}") and line.startswith(f"bounce for {STUDENTS}")
    assert records(site) == []


def nested(depth: int) -> bytes:
    head = b"From: MAILER-DAEMON@mx.example.org\nContent-Type: multipart/mixed; boundary=b0\n\n"
    parts = b"".join(b"--b%d\nContent-Type: multipart/mixed; boundary=b%d\n\n" % (i - 1, i) for i in range(1, depth))
    return head + parts + b"--b%d\nContent-Type: text/plain\n\n<alice@example.edu>: 550 5.1.1 unknown\n" % (depth - 1)


def test_a_report_the_parser_cannot_take_ends_with_a_reason(site):
    line = handle(site, "garbage", "students-bounces+alice=example.edu@lists.example.edu", nested(5000))
    assert line == (f"bounce for {STUDENTS} from alice@example.edu: unreadable (RecursionError: maximum recursion"
                    " depth exceeded); not counted")
    assert records(site) == []


@pytest.mark.parametrize("recipient,line", [
    ("nolist-bounces+alice=example.edu@lists.example.edu",
     "bounce for nolist-bounces+alice=example.edu@lists.example.edu ignored: no list nolist@lists.example.edu"),
    ("nonsense", "bounce for 'nonsense' ignored: not an address"),
])
def test_a_bounce_for_no_list_is_ignored(site, recipient, line):
    assert handle(site, "postfix-550", recipient) == line
    assert not site.spool.exists()


# ---------------------------------------------------------------- the command, as Postfix runs it


def run_bounce(site, recipient: str, raw: bytes, snapshot: Path | None = None,
               queue_id: str = "B0UNCE") -> subprocess.CompletedProcess:
    return subprocess.run([str(BOUNCE), "--snapshot", str(snapshot or site.snapshot), "--recipient", recipient,
                           "--queue-id", queue_id], input=raw, capture_output=True, timeout=120)


def test_the_command_records_and_exits_0(site):
    proc = run_bounce(site, "students-bounces+alice=example.edu@lists.example.edu", sample("postfix-550"))
    assert proc.returncode == 0 and proc.stderr == b"" and proc.stdout == b""
    [record] = records(site)
    assert record.member == "alice@example.edu" and record.message_ids == ("<t1@example.edu>",)
    assert list(site.calls.iterdir()) == []  # nothing is ever sent in reply to a bounce


@pytest.mark.parametrize("name", ["postfix-smtputf8-550", "postfix-smtputf8-550-headers"])
def test_the_command_records_an_smtputf8_member(site, name):
    proc = run_bounce(site, "students-bounces+jürgen=example.edu@lists.example.edu", sample(name))
    assert (proc.returncode, proc.stderr) == (0, b"")
    [record] = records(site)
    assert record.member == "jürgen@example.edu" and record.message_ids == ("<week3-utf8@example.edu>",)


def test_a_report_without_from_is_recorded_and_nothing_reaches_stderr(site):
    """flufl.bounce's own log (the Yale detector's traceback) must not reach pipe(8)'s stderr."""
    raw = without_from(sample("exim-550"))
    assert b"\nFrom:" not in raw.split(b"\n\n")[0]
    proc = run_bounce(site, "students-bounces+ta1=example.edu@lists.example.edu", raw)
    assert (proc.returncode, proc.stderr, proc.stdout) == (0, b"", b"")
    [record] = records(site)
    assert record.member == "ta1@example.edu" and record.permanent == ("ta1@example.edu",)


def test_the_command_ignores_an_unknown_list_with_exit_0(site):
    proc = run_bounce(site, "nolist-bounces+alice=example.edu@lists.example.edu", sample("postfix-550"))
    assert proc.returncode == 0 and proc.stderr == b""
    assert list(site.calls.iterdir()) == []


def test_an_unreadable_report_ends_with_exit_0(site):
    proc = run_bounce(site, "students-bounces+alice=example.edu@lists.example.edu", nested(5000))
    assert (proc.returncode, proc.stderr) == (0, b"")  # the same on every retry: no deferral
    assert records(site) == []


def test_an_unusable_spool_defers(site):
    site.spool.mkdir()
    (site.spool / "events").write_text("not a directory")  # spool.ensure fails, as for an unwritable spool
    proc = run_bounce(site, "students-bounces+alice=example.edu@lists.example.edu", sample("postfix-550"))
    assert proc.returncode == 75
    assert proc.stderr.startswith(b"4.3.0 spool ") and proc.stderr.endswith(b"; will retry\n")


def test_a_missing_snapshot_defers(site, tmp_path):
    proc = run_bounce(site, "students-bounces@lists.example.edu", sample("postfix-550"),
                      snapshot=tmp_path / "none.sqlite")
    assert proc.returncode == 75
    assert proc.stderr.decode().startswith(f"4.3.0 snapshot {tmp_path / 'none.sqlite'} is missing")


# ---------------------------------------------------------------- flufl.bounce's corpus, through the command

PERMANENT, DELAY, AUTO_REPLY, UNNAMED = "permanent", "delay", "auto-reply", "unnamed"

#: Every sample flufl.bounce 6.0.0's tests name, with the addresses they expect from it
#: (tests/test_detectors.py DETECTORS, tests/test_scan.py, tests/test_pipeline.py) and its kind:
#: a permanent failure, a delay (flufl.bounce's temporary failures), an auto-reply or human
#: reply (qmail_08 "Auto reply", groupwise_03 "Not a bounce"), or a failure report that names
#: no usable address (flufl.bounce expects nothing of it).
FLUFL_EXPECTED = {
    "aol_01.txt": (("screenname@aol.com",), PERMANENT),
    "bounce_02.txt": (("userx@example.com",), PERMANENT),
    "bounce_03.txt": (("userx@example.uk",), PERMANENT),
    "caiwireless_01.txt": (("userx@example.com",), PERMANENT),
    "dsn_01.txt": (("userx@example.com",), PERMANENT),
    "dsn_02.txt": (("zzzzz@example.uk",), PERMANENT),
    "dsn_03.txt": (("userx@example.be",), PERMANENT),
    "dsn_04.txt": (("userx@example.ch",), PERMANENT),
    "dsn_05.txt": (("userx@example.cz",), DELAY),
    "dsn_06.txt": (("userx@example.com",), DELAY),
    "dsn_07.txt": (("userx@example.nz",), DELAY),
    "dsn_08.txt": (("userx@example.de",), DELAY),
    "dsn_09.txt": (("userx@example.com",), PERMANENT),
    "dsn_10.txt": (("anne.person@dom.ain",), PERMANENT),
    "dsn_11.txt": (("joem@example.com",), PERMANENT),
    "dsn_12.txt": (("userx@example.jp",), PERMANENT),
    "dsn_13.txt": (("userx@example.com",), PERMANENT),
    "dsn_14.txt": (("userx@example.com.dk",), PERMANENT),
    "dsn_15.txt": (("userx@example.com",), PERMANENT),
    "dsn_16.txt": (("userx@example.com",), PERMANENT),
    "dsn_17.txt": (("userx@example.fi",), DELAY),
    "dsn_18.txt": (("email@replaced.net",), PERMANENT),
    "dumbass_01.txt": ((), UNNAMED),
    "exim_01.txt": (("userx@its.example.nl",), PERMANENT),
    "groupwise_01.txt": (("userx@example.EDU",), PERMANENT),
    "groupwise_02.txt": (("userx@example.com",), PERMANENT),
    "groupwise_03.txt": ((), AUTO_REPLY),
    "hotpop_01.txt": (("userx@example.com",), PERMANENT),
    "llnl_01.txt": (("user1@example.gov",), PERMANENT),
    "microsoft_01.txt": (("userx@example.COM",), PERMANENT),
    "microsoft_02.txt": (("userx@example.COM",), PERMANENT),
    "microsoft_03.txt": (("userx@example.com",), PERMANENT),
    "microsoft_04.txt": (("userx@example.COM",), PERMANENT),
    "netscape_01.txt": (("aaaaa@corel.com", "bbbbb@corel.com"), PERMANENT),
    "newmailru_01.txt": (("zzzzz@newmail.ru",), PERMANENT),
    "postfix_01.txt": (("xxxxx@local.ie",), PERMANENT),
    "postfix_02.txt": (("yyyyy@digicool.com",), PERMANENT),
    "postfix_03.txt": (("ttttt@ggggg.com",), PERMANENT),
    "postfix_04.txt": (("userx@mail1.example.com",), PERMANENT),
    "postfix_05.txt": (("userx@example.net",), PERMANENT),
    "qmail_01.txt": (("userx@example.de",), PERMANENT),
    "qmail_02.txt": (("userx@example.com",), PERMANENT),
    "qmail_03.txt": (("userx@example.jp",), PERMANENT),
    "qmail_04.txt": (("userx@example.au",), PERMANENT),
    "qmail_05.txt": (("userx@example.com",), PERMANENT),
    "qmail_06.txt": (("ntl@xxx.com",), PERMANENT),
    "qmail_07.txt": (("user@example.net",), PERMANENT),
    "qmail_08.txt": ((), AUTO_REPLY),
    "sendmail_01.txt": (("zzzzz@nfg.nl", "zzzzz@shaft.coal.nl"), PERMANENT),
    "simple_01.txt": (("bbbsss@example.com",), PERMANENT),
    "simple_02.txt": (("userx@example.net",), PERMANENT),
    "simple_03.txt": (("userx@example.za",), DELAY),
    "simple_04.txt": (("userx@example.com",), PERMANENT),
    "simple_05.txt": (("userx@example.net",), PERMANENT),
    "simple_06.txt": (("userx@example.com",), PERMANENT),
    "simple_07.txt": (("userx@example.net",), PERMANENT),
    "simple_08.txt": (("userx@example.de",), PERMANENT),
    "simple_09.txt": (("userx@example.de",), PERMANENT),
    "simple_10.txt": (("userx@example.com",), PERMANENT),
    "simple_11.txt": (("userx@example.com",), PERMANENT),
    "simple_12.txt": (("userx@example.ac.jp",), PERMANENT),
    "simple_13.txt": (("userx@example.fr",), PERMANENT),
    "simple_14.txt": (("userx@example.com", "usery@example.com"), PERMANENT),
    "simple_15.txt": (("userx@example.be",), PERMANENT),
    "simple_16.txt": (("userx@example.com",), PERMANENT),
    "simple_17.txt": (("userx@example.com",), PERMANENT),
    "simple_18.txt": (("userx@example.com",), PERMANENT),
    "simple_19.txt": (("userx@example.com.ar",), PERMANENT),
    "simple_20.txt": (("userx@example.com",), PERMANENT),
    "simple_21.txt": (("userx@example.com",), DELAY),
    "simple_22.txt": (("User@example.org",), DELAY),
    "simple_23.txt": (("userx@example.it",), PERMANENT),
    "simple_24.txt": (("userx@example.com",), PERMANENT),
    "simple_25.txt": (("userx@example.com",), PERMANENT),
    "simple_26.txt": (("userx@example.it",), PERMANENT),
    "simple_27.txt": (("userx@example.net.py",), PERMANENT),
    "simple_28.txt": (("userx@example.com",), DELAY),
    "simple_29.txt": (("userx@example.com",), PERMANENT),
    "simple_30.txt": (("userx@example.com",), PERMANENT),
    "simple_31.txt": (("userx@example.fr",), PERMANENT),
    "simple_32.txt": (("userx@example.com",), PERMANENT),
    "simple_33.txt": (("userx@example.com",), PERMANENT),
    "simple_34.txt": (("roland@example.com",), PERMANENT),
    "simple_35.txt": (("calvin@example.com",), DELAY),
    "simple_36.txt": (("userx@example.com",), PERMANENT),
    "simple_37.txt": (("user@example.edu",), PERMANENT),
    "simple_38.txt": (("userx@example.com",), PERMANENT),
    "simple_39.txt": (("userx@example.ru",), PERMANENT),
    "simple_40.txt": (("user@example.com",), DELAY),
    "simple_41.txt": (("userx@example.com",), PERMANENT),
    "simple_42.txt": ((), UNNAMED),
    "simple_43.txt": ((), UNNAMED),
    "simple_44.txt": (("user@example.com",), PERMANENT),
    "simple_45.txt": (("subscriber@earthlink.net",), PERMANENT),
    "sina_01.txt": (("userx@sina.com", "usery@sina.com"), PERMANENT),
    "smtp32_01.txt": (("userx@example.ph",), PERMANENT),
    "smtp32_02.txt": (("userx@example.com",), PERMANENT),
    "smtp32_03.txt": (("userx@example.com",), PERMANENT),
    "smtp32_04.txt": (("after_another@example.net", "one_bad_address@example.net"), PERMANENT),
    "smtp32_05.txt": (("userx@example.com",), PERMANENT),
    "smtp32_06.txt": (("Absolute_garbage_addr@example.net",), PERMANENT),
    "smtp32_07.txt": (("userx@example.com",), PERMANENT),
    "yahoo_01.txt": (("userx@example.com",), PERMANENT),
    "yahoo_02.txt": (("userx@example.es",), PERMANENT),
    "yahoo_03.txt": (("userx@example.com",), PERMANENT),
    "yahoo_04.txt": (("userx@example.es", "usery@example.uk"), PERMANENT),
    "yahoo_05.txt": (("userx@example.com", "usery@example.com"), PERMANENT),
    "yahoo_06.txt": (("usera@example.com", "userx@example.com", "usery@example.com", "userz@example.com"), PERMANENT),
    "yahoo_07.txt": (("userw@example.com", "userx@example.com", "usery@example.com", "userz@example.com"), PERMANENT),
    "yahoo_08.txt": (("usera@example.com", "userb@example.com", "userc@example.com", "userd@example.com",
                      "usere@example.com", "userf@example.com"), PERMANENT),
    "yahoo_09.txt": (("userx@example.com", "usery@example.com"), PERMANENT),
    "yahoo_10.txt": (("userx@example.com", "usery@example.com", "userz@example.com"), PERMANENT),
    "yahoo_11.txt": (("bad_user@aol.com",), PERMANENT),
    "yahoo_12.txt": (("user@yahoo.com",), PERMANENT),
    "yahoo_13.txt": (("bogus-address@example.net",), PERMANENT),
    "yale_01.txt": (("userx@cs.yale.edu", "userx@yale.edu"), PERMANENT),
}
#: The VERP member of a sample that names nobody.
ANYONE = "member@example.edu"
CORPUS_LIST = "students@lists.example.edu"


@dataclass(frozen=True)
class Case:
    """One run of ``listfilter-bounce``: a sample, to a VERP address (``member``) or the plain one."""

    file: str
    kind: str
    expected: tuple[str, ...]  # lower-cased
    member: str | None  # None: the plain -bounces address
    strip_from: bool

    @property
    def recipient(self) -> str:
        local, _, domain = CORPUS_LIST.partition("@")
        return f"{local}-bounces{'+' + self.member.replace('@', '=') if self.member else ''}@{domain}"


def corpus_cases(strip_from: bool) -> list[Case]:
    """Each sample to the plain address, and to the VERP address of each address it names (or of ANYONE)."""
    cases = []
    for file, (addresses, kind) in sorted(FLUFL_EXPECTED.items()):
        expected = tuple(sorted({a.lower() for a in addresses}))
        cases.append(Case(file, kind, expected, None, strip_from))
        for member in expected or (ANYONE,):
            cases.append(Case(file, kind, expected, member, strip_from))
    return cases


@dataclass
class Outcome:
    case: Case
    returncode: int
    stderr: bytes
    record: object  # the BounceRecord, or None

    @property
    def counted(self) -> bool:
        """Recorded as a failure that sync may count (a plain record counts for nobody)."""
        return self.record is not None and not self.record.reason

    @property
    def attributed(self) -> bool:
        """The record names exactly what flufl.bounce's tests expect of the sample."""
        r, c = self.record, self.case
        if r is None:
            return False
        if c.member:
            return r.member == c.member and r.permanent == (c.member,)
        return set(c.expected) <= set(r.permanent) and r.reason == B.NO_VERP


def run_corpus(base: Path, cases: list[Case], workers: int | None = None, *, command: bool = True) -> list[Outcome]:
    """Run every case through the real ``listfilter-bounce`` (in parallel), or with ``command=False``
    through its :func:`~listfilter.mail.bounce.handle` in this process; the outcome of each.

    One snapshot whose list has every expected address (and ANYONE) as a
    member; each run has its own queue id, which its record carries.
    """
    members = sorted({a for c in cases for a in c.expected} | {ANYONE})
    spool = base / "spool"
    snapshot = write_snapshot(base / "snapshot.sqlite", [compiled_list(CORPUS_LIST, members=members)], spool=spool)

    def one(n: int, case: Case):
        raw = (FLUFL / case.file).read_bytes()
        raw = without_from(raw) if case.strip_from else raw
        argv = ["--snapshot", str(snapshot), "--recipient", case.recipient, "--queue-id", f"C{n:05d}"]
        if not command:
            try:
                B.handle(parse(argv, B.OPTIONS), raw)
            except Exception as exc:  # what the command would end with a deferral for
                return 75, f"{type(exc).__name__}: {exc}".encode()
            return 0, b""
        proc = subprocess.run([str(BOUNCE), *argv], input=raw, capture_output=True, timeout=300)
        return proc.returncode, proc.stderr

    with concurrent.futures.ThreadPoolExecutor((workers or 2 * (os.cpu_count() or 1)) if command else 1) as pool:
        results = list(pool.map(one, range(len(cases)), cases))
    by_queue_id = {}
    for path in SP.pending_bounces(spool):
        record = bounce_from_json(path.read_bytes())
        by_queue_id[record.queue_id] = record
    return [Outcome(c, rc, err, by_queue_id.get(f"C{n:05d}")) for n, (c, (rc, err)) in enumerate(zip(cases, results))]


def figures(outcomes: list[Outcome]) -> dict[str, tuple[int, int]]:
    """(hits, of) for what the issue measures, by form (VERP, plain)."""
    out = {}
    for form, verp in (("verp", True), ("plain", False)):
        mine = [o for o in outcomes if (o.case.member is not None) is verp]
        permanent = [o for o in mine if o.case.kind == PERMANENT]
        out[f"{form} attributed"] = (sum(o.attributed for o in permanent), len(permanent))
        for kind in (DELAY, AUTO_REPLY):
            of_kind = [o for o in mine if o.case.kind == kind]
            out[f"{form} {kind} recorded"] = (sum(o.record is not None for o in of_kind), len(of_kind))
    plain = [o for o in outcomes if o.case.member is None]
    out["plain counted"] = (sum(o.counted for o in plain), len(plain))
    return out


#: Every how-many-th sample also goes through the real command, as its own process.
COMMAND_STRIDE = 5


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> dict[bool, list[Outcome]]:
    """Every sample, as Postfix hands it over and stripped of its From, through the command's
    :func:`~listfilter.mail.bounce.handle` in this process (a process costs a quarter-second a sample)."""
    return {strip: run_corpus(tmp_path_factory.mktemp(f"corpus-{strip}"), corpus_cases(strip), command=False)
            for strip in (False, True)}


def test_the_corpus_is_all_here():
    assert sorted(p.name for p in FLUFL.glob("*.txt")) == sorted(FLUFL_EXPECTED)
    assert (FLUFL / "LICENSE").read_text().startswith("Copyright 2004-2026 Barry Warsaw")


def test_a_sample_of_the_corpus_through_the_command_ends_as_in_process(corpus, tmp_path):
    """One sample in :data:`COMMAND_STRIDE`, of every kind, through the real ``listfilter-bounce``:
    exit 0, nothing on stderr, and the very record the in-process run made."""
    cases = [c for c in corpus_cases(False)][::COMMAND_STRIDE]
    assert {c.kind for c in cases} == {c.kind for c in corpus_cases(False)}
    by_file = {(o.case.file, o.case.member): o for o in corpus[False]}
    outcomes = run_corpus(tmp_path, cases)
    assert {(o.returncode, o.stderr) for o in outcomes} == {(0, b"")}  # no traceback, no deferral

    def said(o: Outcome):
        r = o.record
        return None if r is None else (r.member, r.permanent, r.temporary, r.reason, r.message_ids)

    assert [said(o) for o in outcomes] == [said(by_file[(o.case.file, o.case.member)]) for o in outcomes]


@pytest.mark.parametrize("strip_from", [False, True], ids=["with From", "without From"])
def test_the_corpus_is_read_as_flufl_bounce_expects(corpus, strip_from):
    outcomes = corpus[strip_from]
    assert {(o.returncode, o.stderr) for o in outcomes} == {(0, b"")}  # no traceback, no deferral
    got = figures(outcomes)
    missed = sorted({o.case.file for o in outcomes if o.case.kind == PERMANENT and not o.attributed})
    for form in ("verp", "plain"):
        hits, of = got[f"{form} attributed"]
        assert hits >= 0.95 * of, (form, got, missed)
        assert got[f"{form} {DELAY} recorded"][0] == 0, [o.case.file for o in outcomes if o.case.kind == DELAY
                                                          and o.record is not None]
        assert got[f"{form} {AUTO_REPLY} recorded"][0] == 0
    assert got["plain counted"][0] == 0  # a plain report is recorded with its reason and counts for nobody

