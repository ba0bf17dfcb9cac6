"""Bounces end to end through a real Postfix: the relay refuses a member with 550, Postfix's own
DSN comes back to the list's VERP -bounces address, pipe(8) runs ``listfilter-bounce``, which
records it; ``listfilter sync`` scores the records in the store (PostgreSQL), suppresses the
member in the snapshot and tells the owners, and the next post no longer goes to the member.

One private Postfix instance (tests.harness.postfix), the aiosmtpd sink as its relayhost, a
real PostgreSQL for the roster and the store; main.cf and master.cf as `listfilter
postfix-config` renders them. Five days of bounces are simulated by moving the store's last
bounce back one day after each.

Anyone can mail the -bounces addresses: a stranger's forged reports, mailed straight to a
member's VERP address on five (simulated) days, must never suppress the member, while Postfix's
real report of a real post still counts.
"""

from __future__ import annotations

import datetime as dt
import email
import email.policy
import json
import subprocess
import sys
import time
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from listfilter.common.snapshot import Snapshot
from listfilter.store import bounces as B
from listfilter.store import database as ST
from listfilter.sync import config as C

from ..conftest import roster_database
from ..harness.postfix import PostfixInstance, ensure_user, swaks, traversable_tmpdir
from ..harness.smtpsink import SMTPSink
from ..harness.wiring import install_programs, listfilter_spool, wire

pytestmark = pytest.mark.integration

DOMAIN = "lists.example.edu"
STUDENTS = f"students@{DOMAIN}"
OWNER = "prof@example.edu"
# students@ without its poster (prof): everyone current and active on CS 199
RECIPIENTS = {"alice@example.edu", "bob@example.edu", "erin@example.edu", "ta1@example.edu", "ta2@example.edu"}

LISTS = f"""
[domains."{DOMAIN}"]
course = "CS 199"

[lists.students]
display_name = "CS 199 Students"
members = {{ roles = ["applied", "student", "teacher", "ta"] }}
posters = {{ roles = ["instructor", "ta"] }}
"""

# sync sends the owner notices with site.sendmail: into this private instance, like deliver's posts
SENDMAIL_WRAPPER = """#!/bin/sh
MAIL_CONFIG="{config_dir}" exec /usr/sbin/sendmail "$@"
"""


class Site:
    def __init__(self, base: Path, pf: PostfixInstance, sink: SMTPSink, config: Path):
        self.base, self.pf, self.sink, self.config_path = base, pf, sink, config
        self.config = C.load(config)
        self.spool = base / "state" / "spool"
        self.snapshot = base / "state" / "snapshot.sqlite"

    def listfilter(self, *args: str) -> subprocess.CompletedProcess:
        proc = subprocess.run([sys.executable, "-m", "listfilter", "--config", str(self.config_path), *args],
                              capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0 and "warning" not in proc.stderr, proc.stderr
        return proc

    def post(self, subject: str, msgid: str) -> None:
        raw = (f"From: Pat Prof <{OWNER}>\nTo: {STUDENTS}\nSubject: {subject}\nMessage-ID: <{msgid}>\n"
               "MIME-Version: 1.0\nContent-Type: text/plain; charset=utf-8\n\nSee you on Monday.").encode()
        path = self.base / f"msg-{time.time_ns()}.eml"
        path.write_bytes(raw)
        proc = swaks("--to", STUDENTS, "--from", OWNER, "--data", f"@{path}", port=self.pf.smtpd_port)
        assert "queued as" in proc.stdout + proc.stderr, proc.stdout + proc.stderr

    def settle(self, timeout: float = 60) -> None:
        assert self.pf.wait_queue_empty(timeout=timeout), (self.pf.queue(), self.pf.log_tail(30))

    def records(self) -> list[dict]:
        return [json.loads(p.read_text()) for p in (self.spool / "bounces").glob("*.json")]

    def score(self, address: str) -> B.BounceScore | None:
        with ST.open_store(self.config.store) as store:
            return {s.address: s for s in B.scores(store)}.get(address)

    def back_one_day(self, address: str) -> None:
        """Make the last counted bounce of ``address`` yesterday's: the next one falls on a new day."""
        with ST.open_store(self.config.store) as store, store.transaction():
            [(last,)] = store._q("SELECT last_bounce FROM bounce_scores WHERE address = ?", (address,))
            store._execute("UPDATE bounce_scores SET last_bounce = ? WHERE address = ?",
                           (B._day_param(store, B._day_of(last) - dt.timedelta(days=1)), address))

    def suppressed(self) -> dict[str, str]:
        with Snapshot(self.snapshot) as snap:
            return snap.suppressed_with_reasons()


@pytest.fixture(scope="module")
def site():
    ensure_user("listfilter")
    with traversable_tmpdir() as base, roster_database() as dsn, SMTPSink() as sink:
        program = install_programs(base / "bin")
        pf = PostfixInstance(base / "postfix", relay_port=sink.port)
        wrapper = base / "bin" / "sendmail"
        wrapper.write_text(SENDMAIL_WRAPPER.format(config_dir=pf.config_dir))
        wrapper.chmod(0o755)
        config_path = base / "lists.toml"
        config_path.write_text(f"""
[site]
dmarc = "off"  # no DMARC lookups: this test starts no DNS server (tests/conftest.py)
timezone = "America/Chicago"
state_dir = "{base / 'state'}"
sendmail = "{wrapper}"
owners = ["{OWNER}"]
[postfix]
config_directory = "{pf.config_dir}"
map_type = "hash"
[roster]
dsn = "{dsn}"
[store]
dsn = "{dsn}"
{LISTS}""")
        listfilter_spool(wire(pf, config_path, program))
        pf.start()
        try:
            s = Site(base, pf, sink, config_path)
            s.listfilter("db", "upgrade")
            s.listfilter("sync")
            yield s
        finally:
            pf.stop()


def wait_until(predicate, timeout: float = 60.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.2)
    return predicate()


def test_a_member_bouncing_on_five_days_is_suppressed_and_the_owners_told_once(site):
    site.sink.reject["alice@example.edu"] = "550 5.1.1 <alice@example.edu>: mailbox unavailable"
    try:
        for day in range(B.THRESHOLD):
            site.sink.clear()
            site.post(f"day {day}", f"bounce-day-{day}@example.edu")
            # Postfix's DSN for alice's copy reaches students-bounces+alice=example.edu@ → listfilter-bounce
            records = wait_until(site.records)
            assert len(records) == 1, site.pf.log_tail(40)
            [rec] = records
            site.settle()
            assert rec["list_address"] == STUDENTS and rec["permanent"] == ["alice@example.edu"]
            assert rec["member"] == "alice@example.edu" and rec["queue_id"]
            assert {r.lower() for m in site.sink.snapshot() for r in m.rcpt_tos} == RECIPIENTS - {"alice@example.edu"}
            out = site.listfilter("sync")
            assert "bounces: 1 record scored" in out.stdout and site.records() == []
            assert site.score("alice@example.edu").score == day + 1
            if day < B.THRESHOLD - 1:
                assert site.suppressed() == {}
                site.back_one_day("alice@example.edu")  # that bounce was yesterday
        assert "alice@example.edu suppressed" in out.stdout
        assert list(site.suppressed()) == ["alice@example.edu"]
        # the owners are told once, from the null sender, through Postfix
        notices = wait_until(lambda: [m for m in site.sink.snapshot() if m.rcpt_tos == [OWNER]])
        site.settle()
        [notice] = notices
        assert notice.mail_from == ""
        parsed = email.message_from_bytes(notice.data, policy=email.policy.default)
        assert parsed["Subject"] == "alice@example.edu no longer receives CS 199 Students mail (bouncing)"
        assert parsed["Auto-Submitted"] == "auto-generated"
        # the next post no longer goes to alice, and nothing more is sent to the owners
        site.sink.clear()
        site.post("after", "bounce-after@example.edu")
        assert site.sink.wait_for(len(RECIPIENTS) - 1, timeout=60), site.pf.log_tail(40)
        site.settle()
        site.listfilter("sync")
        time.sleep(1)
        got = [r.lower() for m in site.sink.snapshot() for r in m.rcpt_tos]
        assert sorted(got) == sorted(RECIPIENTS - {"alice@example.edu"})  # no copy to alice, no second notice
        assert site.records() == [] and site.sink.rejected == []  # no delivery to alice was even tried
    finally:
        site.sink.reject.clear()
    # cleared, she receives again from the next sync
    assert "suppression lifted" in site.listfilter("bounces", "clear", "alice@example.edu").stdout
    site.listfilter("sync")
    assert site.suppressed() == {}
    site.sink.clear()
    site.post("welcome back", "bounce-back@example.edu")
    assert site.sink.wait_for(len(RECIPIENTS), timeout=60), site.pf.log_tail(40)
    site.settle()
    assert "alice@example.edu" in {r.lower() for m in site.sink.snapshot() for r in m.rcpt_tos}


# A report in the form Postfix writes, for a copy of a post it never refused: what a stranger can send.
FORGED = """From: Mail Delivery System <MAILER-DAEMON@mx.evil.example>
To: {verp}
Subject: Undelivered Mail Returned to Sender
Auto-Submitted: auto-replied
MIME-Version: 1.0
Content-Type: multipart/report; report-type=delivery-status; boundary="BB"
Message-ID: <forged-{n}@mx.evil.example>

--BB
Content-Type: text/plain; charset=us-ascii

<alice@example.edu>: host mx.example.edu said: 550 5.1.1 User unknown

--BB
Content-Type: message/delivery-status

Reporting-MTA: dns; mx.evil.example

Final-Recipient: rfc822; alice@example.edu
Action: failed
Status: 5.1.1
Diagnostic-Code: smtp; 550 5.1.1 User unknown
{returned}--BB--
"""
HEADERS = """
--BB
Content-Type: text/rfc822-headers

From: Pat Prof <prof@example.edu>
To: {STUDENTS}
Subject: [CS 199 Students] anything
Message-ID: {{message_id}}

"""


def forged(n: int, message_id: str | None) -> str:
    returned = HEADERS.format(STUDENTS=STUDENTS).format(message_id=message_id) if message_id else "\n"
    return FORGED.format(verp=f"students-bounces+alice=example.edu@{DOMAIN}", n=n, returned=returned)


def dated(site: Site, day: dt.date) -> None:
    """Give the waiting bounce records ``day``: the day they arrived on, simulated."""
    for path in (site.spool / "bounces").glob("*.json"):
        path.write_text(json.dumps({**json.loads(path.read_text()), "day": day.isoformat()}))


def test_a_strangers_forged_reports_on_five_days_never_suppress_a_member(site):
    # alice receives a real post: a stranger who learned its Message-ID can replay it
    site.sink.clear()
    site.post("a real post", "forge-target@example.edu")
    assert site.sink.wait_for(len(RECIPIENTS), timeout=60), site.pf.log_tail(40)
    site.settle()
    site.listfilter("sync")
    today = dt.datetime.now(ZoneInfo("America/Chicago")).date()
    claims = ["<made-up-1@evil.example>", None, "<not-ours@elsewhere.example>",
              "<forge-target@example.edu>", "<forge-target@example.edu>"]
    for n, message_id in enumerate(claims):
        path = site.base / f"forged-{n}.eml"
        path.write_text(forged(n, message_id))
        proc = swaks("--to", f"students-bounces+alice=example.edu@{DOMAIN}", "--from", "stranger@evil.example",
                     "--data", f"@{path}", port=site.pf.smtpd_port)
        assert "queued as" in proc.stdout + proc.stderr, proc.stdout + proc.stderr
        assert wait_until(site.records), site.pf.log_tail(40)
        site.settle()
        dated(site, today - dt.timedelta(days=len(claims) - 1 - n))
        out = site.listfilter("sync")
        score = site.score("alice@example.edu")
        if n < 3:  # a Message-ID nobody sent, none at all, one not of ours: nothing, not even a score row
            assert score is None and "bounces: not counted for alice@example.edu" in out.stdout, out.stdout
        else:  # a real post replayed: one point for that post, once
            assert score.score == 1 and not score.suppressed
        assert site.suppressed() == {}
    assert "a bounce of post <forge-target@example.edu> for alice@example.edu was counted already" in out.stdout
    with ST.open_store(site.config.store) as store:
        kept = store._q("SELECT counted, reason FROM bounce_records ORDER BY received_at DESC"
                        " LIMIT 5")
    assert sum(1 for counted, _ in kept if counted) == 1 and all(reason for counted, reason in kept if not counted)
    # a real bounce of a real post still counts
    site.sink.reject["alice@example.edu"] = "550 5.1.1 <alice@example.edu>: mailbox unavailable"
    try:
        site.sink.clear()
        site.post("a real bounce", "really-bounced@example.edu")
        [rec] = wait_until(site.records)
        site.settle()
        assert rec["member"] == "alice@example.edu" and rec["message_ids"] == ["<really-bounced@example.edu>"]
        site.back_one_day("alice@example.edu")
        out = site.listfilter("sync")
        assert "not counted" not in out.stdout, out.stdout
        assert site.score("alice@example.edu").score == 2 and site.suppressed() == {}
    finally:
        site.sink.reject.clear()
        site.listfilter("bounces", "clear", "alice@example.edu")
