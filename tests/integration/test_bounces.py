"""Bounces end to end through a real Postfix: the relay refuses a member with 550, Postfix's own
DSN comes back to the list's VERP -bounces address, pipe(8) runs ``listfilter-bounce``, which
records it; ``listfilter sync`` scores the records in the store (PostgreSQL), suppresses the
member in the snapshot and tells the owners, and the next post no longer goes to the member.

One private Postfix instance (tests.harness.postfix), the aiosmtpd sink as its relayhost, a
real PostgreSQL for the roster and the store; main.cf and master.cf as `listfilter
postfix-config` renders them. Five days of bounces are simulated by moving the store's last
bounce back one day after each.
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
            assert "bounces: 1 record(s) scored" in out.stdout and site.records() == []
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
