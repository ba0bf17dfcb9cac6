"""listfilter.mail.bounce: classifying real bounces, and the one record each bounce leaves in the spool.

Scoring the records (a point per address per day, suppression) is sync's
job, tested with listfilter.store.bounces.
"""

from __future__ import annotations

import datetime as dt
import email
import subprocess
import sys
import types
from pathlib import Path

import pytest

from listfilter.common import spool as SP
from listfilter.common.events import bounce_from_json, valid_id
from listfilter.mail import bounce as B

from . import STUDENTS, compiled_list, write_snapshot
from .test_deliver import fake_sendmail

SAMPLES = Path(__file__).resolve().parent.parent / "data" / "bounces"
BOUNCE = Path(sys.executable).with_name("listfilter-bounce")
MEMBERS = {"alice@example.edu", "bob@example.edu", "erin@example.edu", "ta1@example.edu"}
#: 04:30 UTC on 2 November is still 1 November in Chicago, the site's timezone.
ARRIVED = dt.datetime(2026, 11, 2, 4, 30, tzinfo=dt.timezone.utc)


def sample(name: str) -> bytes:
    return (SAMPLES / f"{name}.eml").read_bytes()


# ---------------------------------------------------------------- classification, over real samples


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
]


@pytest.mark.parametrize("name,member,expected", CLASSIFY)
def test_classify_samples(name, member, expected):
    message = email.message_from_bytes(sample(name))
    assert B.classify(message, member, MEMBERS) == expected


def test_non_member_addresses_do_not_count_without_verp():
    message = email.message_from_bytes(sample("exim-550"))
    assert B.classify(message, None, {"alice@example.edu"}) == (set(), set())


def test_flufl_errors_are_caught(monkeypatch):
    import flufl.bounce

    def explode(msg):
        raise UnicodeDecodeError("utf-8", b"\xff", 0, 1, "bad")

    monkeypatch.setattr(flufl.bounce, "all_failures", explode)
    monkeypatch.setattr(B.syslog, "syslog", lambda *a: None)
    assert B.classify(email.message_from_string("Subject: x\n\nhi\n"), "a@example.edu", set()) == (set(), set())


# ---------------------------------------------------------------- handle(): one record per bounce


@pytest.fixture
def site(tmp_path, monkeypatch):
    """A snapshot of students@ with four members, a spool, the fake sendmail, and a fixed clock."""
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


def handle(site, name: str, recipient: str) -> str:
    return B.handle({"snapshot": str(site.snapshot), "recipient": recipient, "queue_id": "B0UNCE"}, sample(name))


def records(site) -> list:
    return [bounce_from_json(p.read_bytes()) for p in SP.pending_bounces(site.spool)]


def test_a_verp_bounce_records_the_member(site):
    line = handle(site, "postfix-550", "students-bounces+alice=example.edu@lists.example.edu")
    [record] = records(site)
    assert valid_id(record.id)
    assert record._replace(id="", received_at="") == B.BounceRecord(
        id="", list_address=STUDENTS, received_at="", day="2026-11-01",  # the site's day, not UTC's
        member="alice@example.edu", permanent=("alice@example.edu",), temporary=(), queue_id="B0UNCE")
    assert dt.datetime.fromisoformat(record.received_at).tzinfo is not None
    assert line == (f"bounce for {STUDENTS} from alice@example.edu: permanent failure of alice@example.edu"
                    f" recorded as {record.id}.json")


def test_the_verp_member_is_lower_cased(site):
    handle(site, "exim-550", "students-bounces+TA1=Example.EDU@lists.example.edu")
    [record] = records(site)
    assert record.member == "ta1@example.edu" and record.permanent == ("ta1@example.edu",)


def test_a_bounce_without_verp_records_the_members_it_names(site):
    handle(site, "exim-550", "students-bounces@lists.example.edu")
    [record] = records(site)
    assert record.member == "" and record.permanent == ("ta1@example.edu",) and record.temporary == ()


def test_every_bounce_is_its_own_record(site):
    # counting them (once per address per day) is sync's job; the mail side never reads a record back
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


@pytest.mark.parametrize("recipient,line", [
    ("nolist-bounces+alice=example.edu@lists.example.edu",
     "bounce for nolist-bounces+alice=example.edu@lists.example.edu ignored: no list nolist@lists.example.edu"),
    ("nonsense", "bounce for 'nonsense' ignored: not an address"),
])
def test_a_bounce_for_no_list_is_ignored(site, recipient, line):
    assert handle(site, "postfix-550", recipient) == line
    assert not site.spool.exists()  # not even the spool is touched


# ---------------------------------------------------------------- the command, as Postfix runs it


def run_bounce(site, name: str, recipient: str, snapshot: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([str(BOUNCE), "--snapshot", str(snapshot or site.snapshot), "--recipient", recipient,
                           "--queue-id", "B0UNCE"], input=sample(name), capture_output=True, timeout=60)


def test_the_command_records_and_exits_0(site):
    proc = run_bounce(site, "postfix-550", "students-bounces+alice=example.edu@lists.example.edu")
    assert proc.returncode == 0 and proc.stderr == b"" and proc.stdout == b""
    [record] = records(site)
    assert record.member == "alice@example.edu"
    assert list(site.calls.iterdir()) == []  # nothing is ever sent in reply to a bounce


def test_the_command_ignores_an_unknown_list_with_exit_0(site):
    proc = run_bounce(site, "postfix-550", "nolist-bounces+alice=example.edu@lists.example.edu")
    assert proc.returncode == 0 and proc.stderr == b""
    assert list(site.calls.iterdir()) == []


def test_an_unusable_spool_defers(site):
    site.spool.mkdir()
    (site.spool / "events").write_text("not a directory")  # spool.ensure fails, as for an unwritable spool
    proc = run_bounce(site, "postfix-550", "students-bounces+alice=example.edu@lists.example.edu")
    assert proc.returncode == 75
    assert proc.stderr.startswith(b"4.3.0 spool ") and proc.stderr.endswith(b"; will retry\n")


def test_a_missing_snapshot_defers(site, tmp_path):
    proc = run_bounce(site, "postfix-550", "students-bounces@lists.example.edu", snapshot=tmp_path / "none.sqlite")
    assert proc.returncode == 75
    assert proc.stderr.decode().startswith(f"4.3.0 snapshot {tmp_path / 'none.sqlite'} is missing")
