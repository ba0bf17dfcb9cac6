"""The DMARC mitigation end to end: sync looks the posters' policies up in a real DNS server
(Knot, tests/harness/dns.py), and posts go through a real Postfix (swaks → smtpd → pipe(8) →
listfilter-deliver → sendmail → Postfix → the relay sink), as tests/integration/test_mailflow.py.

Posters: jane@example.org (p=reject), ned@example.net (p=none), sal@example.com (its zone answers
SERVFAIL) and pat@cs.example.org (no record of its own: the organisational domain's sp=quarantine).
"""

from __future__ import annotations

import email
import email.policy
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ..harness.dns import DNSServer
from ..harness.postfix import PostfixInstance, ensure_user, swaks, traversable_tmpdir
from ..harness.smtpsink import SMTPSink
from ..harness.wiring import install_programs, listfilter_spool, wire

pytestmark = pytest.mark.integration

DOMAIN = "lists.example.edu"
STUDENTS, WRAPPED, ANNOUNCE = (f"{n}@{DOMAIN}" for n in ("students", "wrapped", "announce"))
MEMBERS = ["alice@example.edu", "bob@example.edu"]
POSTERS = ["jane@example.org", "ned@example.net", "sal@example.com", "pat@cs.example.org"]

ZONES = {
    "example.org": '_dmarc IN TXT "v=DMARC1; p=reject; sp=quarantine; rua=mailto:d@example.org"',
    "example.net": '_dmarc IN TXT "v=DMARC1; p=none"',
}

LISTS = f"""
[domains."{DOMAIN}"]

[lists.students]
display_name = "CS 199 Students"
members = {{ emails = {MEMBERS!r} }}
posters = {POSTERS!r}

[lists.wrapped]
display_name = "CS 199 Wrapped"
members = {{ emails = {MEMBERS!r} }}
posters = {POSTERS!r}
dmarc = "wrap"

[lists.announce]
display_name = "CS 199 Announcements"
members = {{ emails = {MEMBERS!r} }}
posters = {POSTERS!r}
reply_to = "students"
""".replace("'", '"')


class Site:
    def __init__(self, base: Path, pf: PostfixInstance, sink: SMTPSink, dns: DNSServer, config: Path):
        self.base, self.pf, self.sink, self.dns, self.config = base, pf, sink, dns, config
        self.snapshot = base / "state" / "snapshot.sqlite"

    def sync(self) -> subprocess.CompletedProcess:
        proc = subprocess.run([sys.executable, "-m", "listfilter", "--config", str(self.config), "sync"],
                              capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0, proc.stderr
        return proc

    def post(self, raw: bytes, to: str, sender: str) -> list[email.message.EmailMessage]:
        """Send ``raw`` and return the copies the sink received, one per member."""
        self.sink.clear()
        path = self.base / f"msg-{time.time_ns()}.eml"
        path.write_bytes(raw[:-1] if raw.endswith(b"\n") else raw)
        out = swaks("--to", to, "--from", sender, "--data", f"@{path}", port=self.pf.smtpd_port)
        assert "queued as" in out.stdout + out.stderr, out.stdout + out.stderr
        assert self.sink.wait_for(len(MEMBERS), timeout=30), self.pf.log_tail(30)
        assert self.pf.wait_queue_empty(timeout=30), self.pf.queue()
        got = self.sink.snapshot()
        assert sorted(r for m in got for r in m.rcpt_tos) == MEMBERS
        return [m.data.replace(b"\r\n", b"\n") for m in got]

    def dmarc_rows(self) -> dict[str, tuple]:
        with sqlite3.connect(self.snapshot) as db:
            return {d: (p, s) for d, p, s in db.execute("SELECT domain, policy, status FROM dmarc")}


@pytest.fixture(scope="module")
def site():
    ensure_user("listfilter")
    with traversable_tmpdir() as base, SMTPSink() as sink, DNSServer(base / "dns", ZONES) as dns:
        dns.set_servfail("example.com")
        program = install_programs(base / "bin")
        pf = PostfixInstance(base / "postfix", relay_port=sink.port)
        config_path = base / "lists.toml"
        config_path.write_text(f"""
[site]
timezone = "America/Chicago"
state_dir = "{base / 'state'}"
owners = ["prof@example.edu"]
[postfix]
config_directory = "{pf.config_dir}"
map_type = "hash"
[roster]
source = "csv"
csv = "{base / 'roster.csv'}"
[dns]
nameservers = ["{dns.address}"]
port = {dns.port}
timeout = 2
{LISTS}""")
        (base / "roster.csv").write_text("email,name,enrollment_type,active,semester,course\n")
        listfilter_spool(wire(pf, config_path, program))
        pf.start()
        try:
            s = Site(base, pf, sink, dns, config_path)
            s.synced = s.sync()
            yield s
        finally:
            pf.stop()


def message(sender: str, msgid: str, subject: str = "exam room") -> bytes:
    return (f"From: {sender}\nTo: {STUDENTS}\nSubject: {subject}\nMessage-ID: <{msgid}>\n"
            "Date: Tue, 24 Nov 2026 10:00:00 -0600\nMIME-Version: 1.0\n"
            "DKIM-Signature: v=1; a=rsa-sha256; c=relaxed/relaxed; d=example.org; s=s1; h=from:to:subject; bh=x; b=y\n"
            "Content-Type: text/plain; charset=utf-8\nContent-Transfer-Encoding: 8bit\n\n"
            "The exam is in room 101.\nFrom now on, bring a pencil.\n").encode()


def parse(data: bytes) -> email.message.EmailMessage:
    return email.message_from_bytes(data, policy=email.policy.default)


def addresses(msg, name):
    return [(a.display_name, a.addr_spec) for a in msg[name].addresses] if name in msg else []


def test_sync_stored_each_posters_policy_and_said_which_lookup_failed(site):
    assert site.dmarc_rows() == {"example.org": ("reject", "ok"), "example.net": ("none", "ok"),
                                 "example.com": (None, "failed"), "cs.example.org": ("quarantine", "ok")}
    warning = [l for l in site.synced.stderr.splitlines() if "DMARC" in l]
    assert warning == ["listfilter: warning: DMARC lookups failed for 1 domain of 4 (example.com: _dmarc.example.com:"
                       f" {site.dns.address}@{site.dns.port} answered SERVFAIL): posts From them get the list's DMARC"
                       " mitigation until a lookup succeeds"], site.synced.stderr


def test_a_poster_from_a_reject_domain_arrives_munged_with_reply_to_the_poster(site):
    for data in site.post(message('"Jane Doe" <jane@example.org>', "d1@example.org"), STUDENTS, "jane@example.org"):
        assert data.startswith(b"From: Jane Doe via CS 199 Students <students@lists.example.edu>\n") or \
            b"\nFrom: Jane Doe via CS 199 Students <students@lists.example.edu>\n" in data
        msg = parse(data)
        assert addresses(msg, "From") == [("Jane Doe via CS 199 Students", STUDENTS)]
        assert addresses(msg, "Reply-To") == [("Jane Doe", "jane@example.org")]
        assert msg["Subject"].endswith(": Exam Room") and msg["Message-ID"] == "<d1@example.org>"
        assert msg["DKIM-Signature"].startswith("v=1; a=rsa-sha256")  # kept, as every other field
        assert data.split(b"\n\n", 1)[1] == b"The exam is in room 101.\nFrom now on, bring a pencil.\n"


def test_a_poster_from_a_none_domain_arrives_unchanged(site):
    for data in site.post(message("Ned <ned@example.net>", "d2@example.net"), STUDENTS, "ned@example.net"):
        msg = parse(data)
        assert addresses(msg, "From") == [("Ned", "ned@example.net")]
        assert "Reply-To" not in msg and b"via CS 199" not in data


def test_a_poster_whose_lookup_failed_arrives_munged(site):
    for data in site.post(message("sal@example.com", "d3@example.com"), STUDENTS, "sal@example.com"):
        msg = parse(data)
        assert addresses(msg, "From") == [("sal at example.com via CS 199 Students", STUDENTS)]
        assert addresses(msg, "Reply-To") == [("", "sal@example.com")]


def test_a_subdomain_gets_the_organisational_domains_sp(site):
    for data in site.post(message("Pat <pat@cs.example.org>", "d4@cs.example.org"), STUDENTS, "pat@cs.example.org"):
        assert addresses(parse(data), "From") == [("Pat via CS 199 Students", STUDENTS)]


def test_with_the_lists_reply_to_the_poster_is_in_cc(site):
    for data in site.post(message('"Jane Doe" <jane@example.org>', "d5@example.org"), ANNOUNCE, "jane@example.org"):
        msg = parse(data)
        assert addresses(msg, "From") == [("Jane Doe via CS 199 Announcements", ANNOUNCE)]
        assert msg["Reply-To"] == STUDENTS
        assert addresses(msg, "Cc") == [("Jane Doe", "jane@example.org")]


def test_wrap_arrives_as_message_rfc822_with_the_original_intact(site):
    raw = message('"Jane Doe" <jane@example.org>', "d6@example.org")
    for data in site.post(raw, WRAPPED, "jane@example.org"):
        msg = parse(data)
        assert addresses(msg, "From") == [("Jane Doe via CS 199 Wrapped", WRAPPED)]
        assert addresses(msg, "Reply-To") == [("Jane Doe", "jane@example.org")]
        assert msg["Subject"].startswith("[CS 199 Wrapped] ") and msg["Message-ID"] == "<d6@example.org>"
        assert "DKIM-Signature" not in msg  # the poster's signature travels inside, with what it signed
        [part] = msg.iter_parts()
        assert part.get_content_type() == "message/rfc822"
        inner = part.get_content()
        assert inner["From"] == "Jane Doe <jane@example.org>" and inner["Subject"] == "exam room"
        # the post as Postfix handed it to listfilter: its Received line first, then every byte as sent
        before = data[:data.index(raw)]
        added = before[before.rindex(b"\n\n") + 2:]  # between the part's own fields and the post
        assert added.startswith(b"Received: from ") and b"\n\n" not in added, added


def test_the_mail_log_records_why(site):
    import json

    events = [json.loads(p.read_text()) for p in (site.base / "state" / "spool" / "events").glob("*.json")]
    notes = {(e["list_address"], e["message_id"]): e["error_message"] for e in events}
    assert notes[(STUDENTS, "<d1@example.org>")] == ("From: rewritten to the list's address (dmarc = munge):"
                                                     " example.org has DMARC policy p=reject")
    assert notes[(STUDENTS, "<d2@example.net>")] == ""
    assert notes[(STUDENTS, "<d3@example.com>")].endswith("the DMARC lookup for example.com failed")
    assert notes[(WRAPPED, "<d6@example.org>")].startswith("sent inside a message from the list (dmarc = wrap)")
