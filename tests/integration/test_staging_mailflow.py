"""The staging valve end to end through a real Postfix: with ``redirect_all_to`` on for the dev domain,
a post, a refusal notice and -owner mail on that domain reach only the staging address at the sink,
naming the real recipients; the prod domain's lists are unaffected.

One private Postfix (as in test_mailflow.py), a real PostgreSQL roster, maps and snapshot from `sync`.
"""

from __future__ import annotations

import email
import email.policy
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ..conftest import roster_database
from ..harness.postfix import PostfixInstance, ensure_user, swaks, traversable_tmpdir
from ..harness.smtpsink import SMTPSink
from ..harness.wiring import install_programs, listfilter_spool, wire

pytestmark = pytest.mark.integration

PROD, DEV = "lists.example.edu", "lists-dev.example.edu"
STAGING = "flight-ops@example.edu"
HEADER = "X-Listfilter-Redirected-Recipients"
# students@ on either domain: everyone current and active on CS 199, minus the poster (prof@)
MEMBERS = ["alice@example.edu", "bob@example.edu", "erin@example.edu", "ta1@example.edu", "ta2@example.edu"]

LISTS = f"""
[domains."{PROD}"]
course = "CS 199"

[domains."{DEV}"]
course = "CS 199"
redirect_all_to = "{STAGING}"

[lists.students]
display_name = "CS 199 Students"
members = {{ roles = ["applied", "student", "teacher", "ta"] }}
posters = {{ roles = ["instructor", "ta"] }}
domains = ["{PROD}", "{DEV}"]
"""


class Site:
    def __init__(self, base: Path, pf: PostfixInstance, sink: SMTPSink, config: Path):
        self.base, self.pf, self.sink, self.config = base, pf, sink, config

    def sync(self) -> subprocess.CompletedProcess:
        proc = subprocess.run([sys.executable, "-m", "listfilter", "--config", str(self.config), "sync"],
                              capture_output=True, text=True, timeout=60)
        assert proc.returncode == 0, proc.stderr
        return proc

    def send(self, raw: bytes, *, to: str, sender: str = "prof@example.edu") -> str:
        path = self.base / f"msg-{time.time_ns()}.eml"
        path.write_bytes(raw[:-1] if raw.endswith(b"\n") else raw)
        proc = swaks("--to", to, "--from", sender, "--data", f"@{path}", port=self.pf.smtpd_port)
        return proc.stdout + proc.stderr

    def arrived(self, count: int):
        """The sink's messages, once ``count`` have come and Postfix is idle."""
        assert self.sink.wait_for(count, timeout=30), self.pf.log_tail(30)
        assert self.pf.wait_queue_empty(timeout=30), (self.pf.queue(), self.pf.log_tail(30))
        time.sleep(0.5)  # nothing more is on its way
        return self.sink.snapshot()


@pytest.fixture(scope="module")
def site():
    ensure_user("listfilter")
    with traversable_tmpdir() as base, roster_database() as dsn, SMTPSink() as sink:
        program = install_programs(base / "bin")
        config_path = base / "lists.toml"
        pf = PostfixInstance(base / "postfix", relay_port=sink.port)
        config_path.write_text(f"""
[site]
dmarc = "off"  # no DMARC lookups: this test starts no DNS server
timezone = "America/Chicago"
state_dir = "{base / 'state'}"
owners = ["prof@example.edu"]
notice_limit = 100
[postfix]
config_directory = "{pf.config_dir}"
map_type = "hash"
[roster]
dsn = "{dsn}"
{LISTS}""")
        listfilter_spool(wire(pf, config_path, program))
        pf.start()
        try:
            s = Site(base, pf, sink, config_path)
            s.sync()
            yield s
        finally:
            pf.stop()


@pytest.fixture
def fresh(site):
    assert site.pf.wait_queue_empty(timeout=30)
    site.sink.clear()
    return site


def message(to: str, msgid: str, sender: str = '"Pat Prof" <prof@example.edu>') -> bytes:
    return (f"From: {sender}\nTo: {to}\nSubject: hello\nMessage-ID: <{msgid}>\n"
            f"Date: Tue, 24 Nov 2026 10:00:00 -0600\n\nsee you on Monday.\n").encode()


def parsed(m):
    return email.message_from_bytes(m.data, policy=email.policy.default)


def test_sync_says_the_valve_is_on(site):
    assert (f"STAGING: redirect_all_to is on: every copy for the lists on {DEV} goes only to {STAGING}"
            in site.sync().stderr)


def test_a_post_to_a_dev_list_reaches_only_the_staging_address(fresh):
    out = fresh.send(message(f"students@{DEV}", "s1@example.edu"), to=f"students@{DEV}")
    assert "queued as" in out, out
    [copy] = fresh.arrived(1)
    assert copy.rcpt_tos == [STAGING]
    assert copy.mail_from == f"students-bounces+{STAGING.replace('@', '=')}@{DEV}"  # VERP, as for a member
    msg = parsed(copy)
    assert msg[HEADER].lower() == f"5 recipients: {', '.join(MEMBERS)}"  # as the roster spells them
    assert msg["List-Id"] == f'"CS 199 Students" <students.{DEV}>'


def test_a_post_to_the_prod_list_is_unaffected(fresh):
    fresh.send(message(f"students@{PROD}", "s2@example.edu"), to=f"students@{PROD}")
    got = fresh.arrived(len(MEMBERS))
    assert sorted(r.lower() for m in got for r in m.rcpt_tos) == MEMBERS
    assert all(HEADER not in parsed(m) for m in got)


def test_a_refusal_notice_on_the_dev_domain_goes_to_the_staging_address(fresh):
    # the envelope sender may post (RCPT passes); the From header may not: a notice after the queue
    fresh.send(message(f"students@{DEV}", "s3@example.edu", sender="Alice <alice@example.edu>"),
               to=f"students@{DEV}")
    [notice] = fresh.arrived(1)
    assert notice.rcpt_tos == [STAGING] and notice.mail_from == ""
    msg = parsed(notice)
    assert msg[HEADER] == "1 recipient: prof@example.edu"
    assert msg["Auto-Submitted"] == "auto-replied" and msg["In-Reply-To"] == "<s3@example.edu>"


def test_owner_mail_on_the_dev_domain_goes_to_the_staging_address(fresh):
    fresh.send(message(f"students-owner@{DEV}", "s4@example.edu", sender="x@example.org"),
               to=f"students-owner@{DEV}", sender="x@example.org")
    [copy] = fresh.arrived(1)
    assert copy.rcpt_tos == [STAGING]
    fresh.sink.clear()
    fresh.send(message(f"students-owner@{PROD}", "s5@example.edu", sender="x@example.org"),
               to=f"students-owner@{PROD}", sender="x@example.org")
    [copy] = fresh.arrived(1)
    assert copy.rcpt_tos == ["prof@example.edu"]
