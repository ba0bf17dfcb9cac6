"""Through a real Postfix: a list for testing the mail flow (its one member is its one poster) reaches
that member only with exclude_poster = false, and title_case_subject = false keeps the Subject as written.

The same set-up as test_mailflow.py (a private Postfix wired as `listfilter postfix-config` renders it,
swaks in, an SMTP sink as the relay), with a two-line CSV roster instead of PostgreSQL.
"""

from __future__ import annotations

import datetime as dt
import email
import email.policy
import json
import re
import subprocess
import sys
import time
import zoneinfo

import pytest

from ..harness.postfix import PostfixInstance, ensure_user, swaks, traversable_tmpdir
from ..harness.smtpsink import SMTPSink
from ..harness.wiring import install_programs, listfilter_spool, wire

pytestmark = pytest.mark.integration

DOMAIN = "lists.example.edu"
POSTER = "prof@example.edu"
WHY = ("nobody was sent a copy: the poster is the list's only member, and the list sends posters no copy"
       " (exclude_poster = true)")

LISTS = f"""
[domains."{DOMAIN}"]
course = "CS 199"

# the example's testing@: the poster gets their own post back, the Subject as written
[lists.testing]
display_name = "CS 199 Testing"
members = {{ emails = ["{POSTER}"] }}
posters = ["{POSTER}"]
exclude_poster = false
title_case_subject = false

# the same list with the defaults: the poster is left out, so nobody gets it
[lists.quiet]
display_name = "CS 199 Quiet"
members = {{ emails = ["{POSTER}"] }}
posters = ["{POSTER}"]
"""


@pytest.fixture(scope="module")
def site():
    ensure_user("listfilter")
    with traversable_tmpdir() as base, SMTPSink() as sink:
        program = install_programs(base / "bin")
        (base / "roster.csv").write_text("email,name,enrollment_type,active,semester,course\n"
                                         f"{POSTER},Pat Prof,teacher,true,current,CS 199\n")
        pf = PostfixInstance(base / "postfix", relay_port=sink.port)
        config = base / "lists.toml"
        config.write_text(f"""
[site]
dmarc = "off"  # no DMARC lookups: this test starts no DNS server (tests/conftest.py)
timezone = "America/Chicago"
state_dir = "{base / 'state'}"
owners = ["{POSTER}"]
[postfix]
config_directory = "{pf.config_dir}"
map_type = "hash"
[roster]
source = "csv"
csv = "{base / 'roster.csv'}"
{LISTS}""")
        listfilter_spool(wire(pf, config, program))
        pf.start()
        try:
            proc = subprocess.run([sys.executable, "-m", "listfilter", "--config", str(config), "sync"],
                                  capture_output=True, text=True, timeout=60)
            assert proc.returncode == 0, proc.stderr
            yield base, pf, sink
        finally:
            pf.stop()


def post(site, to: str, subject: str, msgid: str) -> None:
    base, pf, sink = site
    assert pf.wait_queue_empty(timeout=30), pf.queue()
    sink.clear()
    path = base / f"{msgid}.eml"
    path.write_bytes(f'From: "Pat Prof" <{POSTER}>\nTo: {to}\nSubject: {subject}\nMessage-ID: <{msgid}>\n\n'
                     "Testing the mail flow.".encode())
    out = swaks("--to", to, "--from", POSTER, "--data", f"@{path}", port=pf.smtpd_port)
    assert "queued as" in out.stdout + out.stderr, out.stdout + out.stderr


def event_for(site, msgid: str) -> dict:
    base, pf, _ = site
    assert pf.wait_queue_empty(timeout=30), (pf.queue(), pf.log_tail(30))
    found = [json.loads(p.read_text()) for p in (base / "state" / "spool" / "events").glob("*.json")]
    [event] = [e for e in found if e["message_id"] == f"<{msgid}>"]
    return event


def test_the_testing_list_sends_the_poster_their_post_with_the_subject_as_written(site):
    _, pf, sink = site
    post(site, f"testing@{DOMAIN}", "relay down test", "copy-1@example.edu")
    assert sink.wait_for(1, timeout=30), pf.log_tail(30)
    [got] = sink.snapshot()
    assert got.rcpt_tos == [POSTER]
    assert got.mail_from == f"testing-bounces+{POSTER.replace('@', '=')}@{DOMAIN}"
    today = dt.datetime.now(zoneinfo.ZoneInfo("America/Chicago")).date().isoformat()
    subject = email.message_from_bytes(got.data, policy=email.policy.default)["Subject"]
    assert subject == f"[CS 199 Testing] {today}: relay down test"  # not "Relay Down Test"
    event = event_for(site, "copy-1@example.edu")
    assert event["status"] == "delivered" and event["recipients"] == [POSTER] and event["error_message"] == ""


def test_without_exclude_poster_false_nobody_gets_it_and_the_record_says_why(site):
    _, pf, sink = site
    post(site, f"quiet@{DOMAIN}", "relay down test", "copy-2@example.edu")
    event = event_for(site, "copy-2@example.edu")
    time.sleep(1)
    assert sink.snapshot() == []
    assert event["status"] == "delivered" and event["recipient_count"] == 0
    assert event["error_message"] == WHY
    # the post went through the pipe, which took it (exit 0); no copy was handed back to Postfix
    assert re.search(rf"to=<quiet@{DOMAIN}>, relay=listfilter, .*status=sent", pf.maillog()), pf.log_tail(30)
    assert f"from=<quiet-bounces@{DOMAIN}>" not in pf.maillog()
