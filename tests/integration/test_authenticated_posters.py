"""Posters who are who they say: a real verifying OpenDKIM and a real OpenDMARC as smtpd's milters.

A private Postfix wired as ``listfilter postfix-config`` renders it for a
config with ``[verify]`` (its smtpd_milters, header_checks and the deliver
pipe's ``--client-address``), the two milters started with the settings it
prints, and the instructor's domain example.edu served by a real
authoritative DNS server (tests/harness/dns.py): a DKIM key made by
opendkim-genkey, ``_dmarc`` at ``p=reject``, and SPF naming the campus relay.
The test signs the instructor's posts with dkimpy and that key.

Where a post comes from is set with XCLIENT (Postfix's own test hook,
XCLIENT_README): the milters, SPF and ``${client_address}`` all see the
address given, so a stranger's client, the instructor's laptop and the
campus relay are three addresses on one loopback connection.

OpenDMARC (and libspf2 inside it) asks the C library's resolver, which reads
/etc/resolv.conf and has no port setting: the harness's server is started on
port 53 of a loopback address of its own, and OpenDMARC runs in a mount
namespace of its own where /etc/resolv.conf names that address. OpenDKIM's
resolver (libunbound) is pointed at it by a ResolverConfiguration file.
"""

from __future__ import annotations

import email
import email.policy
import json
import random
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path
from unittest import mock

import dkim
import pytest

from listfilter.sync import postfixconf

from ..harness import dns as dns_harness
from ..harness.dns import DNSServer
from ..harness.postfix import PostfixInstance, ensure_user, free_port, swaks, traversable_tmpdir
from ..harness.smtpsink import SMTPSink
from ..harness.wiring import install_programs, listfilter_spool, wire

pytestmark = pytest.mark.integration

OPENDKIM = "/usr/sbin/opendkim"
OPENDMARC = "/usr/sbin/opendmarc"
GENKEY = "/usr/sbin/opendkim-genkey"
UNSHARE = shutil.which("unshare") or "/usr/bin/unshare"

ID = "mx.lists.example.edu"  # this host's authserv-id
STUDENTS = "students@lists.example.edu"
CLUB = "club@lists.example.edu"
INSTRUCTOR = "prof@example.edu"
MEMBERS = {"alice@example.org", "bob@example.net"}
#: Where posts come from (XCLIENT): the campus relay is in example.edu's SPF record; the relay
#: of another campus unit is trusted by network; the laptop and the stranger are neither.
CAMPUS_RELAY, UNIT_RELAY, LAPTOP, STRANGER = "192.0.2.1", "198.51.100.7", "203.0.113.5", "203.0.113.66"

LISTS = """
[domains."lists.example.edu"]

[lists.students]
display_name = "CS 199 Students"
members = { emails = ["alice@example.org", "bob@example.net"] }
posters = ["prof@example.edu"]

[lists.club]
members = { emails = ["alice@example.org", "prof@example.edu"] }
posters = "members"
exclude_poster = false
"""


class Milter:
    """One milter in the foreground (a fresh process for each start)."""

    def __init__(self, name: str, argv: list[str], port: int, log: Path):
        self.name, self.argv, self.port, self.log, self.proc = name, argv, port, log, None

    def start(self) -> None:
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(self.argv, stdout=log, stderr=log)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, f"{self.name} exited {self.proc.returncode}: {self.log.read_text()}"
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return
            except OSError:
                time.sleep(0.05)
        raise AssertionError(f"{self.name} not listening on {self.port}: {self.log.read_text()}")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None


def settings_with(text: str, **replace: str) -> str:
    """Rendered milter settings with some lines replaced (or added) for the test's paths."""
    lines = [l for l in text.splitlines() if l.split(None, 1)[:1] not in ([k] for k in replace)]
    return "\n".join(lines + [f"{k} {v}" for k, v in replace.items()]) + "\n"


class Site:
    def __init__(self, base: Path, pf: PostfixInstance, sink: SMTPSink, config_path: Path, key: bytes):
        self.base, self.pf, self.sink, self.config_path, self.key = base, pf, sink, config_path, key
        self.spool = base / "state" / "spool"
        self.milters: dict[str, Milter] = {}

    def send(self, raw: bytes, *, client: str, to: str = STUDENTS, sender: str = INSTRUCTOR) -> str:
        path = self.base / f"msg-{time.time_ns()}.eml"
        path.write_bytes(raw)
        proc = swaks("--to", to, "--from", sender, "--data", f"@{path}",
                     "--xclient", f"ADDR={client} NAME=[UNAVAILABLE]", port=self.pf.smtpd_port)
        return proc.stdout + proc.stderr

    def received(self, count: int, timeout: float = 30) -> list:
        assert self.sink.wait_for(count, timeout=timeout), self.pf.log_tail(30)
        assert self.pf.wait_queue_empty(timeout=30), (self.pf.queue(), self.pf.log_tail(30))
        got = self.sink.snapshot()
        assert len(got) == count, [m.rcpt_tos for m in got]
        return got

    def event_for(self, message_id: str, list_address: str = STUDENTS) -> dict:
        events = [json.loads(p.read_text()) for p in (self.spool / "events").glob("*.json")]
        found = [e for e in events if e["message_id"] == message_id and e["list_address"] == list_address]
        assert len(found) == 1, (found, self.pf.log_tail(20))
        return found[0]

    def sign(self, raw: bytes) -> bytes:
        """The instructor's own mail system: a DKIM signature of example.edu (dkimpy, the published key)."""
        return dkim.sign(raw, b"sel", b"example.edu", self.key,
                         include_headers=[b"from", b"to", b"subject", b"date", b"message-id"]) + raw


@pytest.fixture(scope="module")
def site():
    for program in (OPENDKIM, OPENDMARC, GENKEY, UNSHARE):
        assert Path(program).exists(), f"{program} missing: install Debian's opendkim, opendkim-tools and opendmarc" \
                                       " (tests/run does)"
    ensure_user("listfilter")
    with traversable_tmpdir() as base, SMTPSink() as sink:
        subprocess.run([GENKEY, "-b", "2048", "-D", str(base), "-d", "example.edu", "-s", "sel"],
                       check=True, capture_output=True)
        zone = ((base / "sel.txt").read_text() + '\n_dmarc IN TXT "v=DMARC1; p=reject"\n'
                '@ IN TXT "v=spf1 ip4:192.0.2.0/28 -all"\n')
        dns = DNSServer(base / "dns", {"example.edu": zone})
        dns.address = f"127.53.{random.randint(1, 254)}.{random.randint(1, 254)}"
        dkim_port, dmarc_port = free_port(), free_port()
        program = install_programs(base / "bin")
        pf = PostfixInstance(base / "postfix", relay_port=sink.port, myhostname=ID)
        pf.main_cf_settings["smtpd_authorized_xclient_hosts"] = "127.0.0.0/8"  # the test's own clients
        config_path = base / "lists.toml"
        (base / "roster.csv").write_text("email,name,enrollment_type,active,semester,course\n")
        config_path.write_text(f"""
[site]
timezone = "America/Chicago"
state_dir = "{base / 'state'}"
owners = ["prof@example.edu"]
notice_limit = 100
dmarc = "off"  # the From stays the poster's: this test is about who posted
authserv_id = "{ID}"
authenticated_trusted = [{{ domains = ["example.edu"], networks = ["{UNIT_RELAY}/32", "local"] }}]
[verify]
opendkim = "inet:127.0.0.1:{dkim_port}"
opendmarc = "inet:127.0.0.1:{dmarc_port}"
header_checks = "{base / 'header_checks'}"
[dns]
nameservers = ["{dns.address}"]
[postfix]
config_directory = "{pf.config_dir}"
map_type = "hash"
[roster]
source = "csv"
csv = "{base / 'roster.csv'}"
{LISTS}""")
        config = wire(pf, config_path, program)
        listfilter_spool(config)
        (base / "header_checks").write_text(postfixconf.header_checks(config))
        (base / "unbound.conf").write_text(f'server:\n    do-not-query-localhost: no\nforward-zone:\n'
                                           f'    name: "."\n    forward-addr: {dns.address}@53\n')
        (base / "resolv.conf").write_text(f"nameserver {dns.address}\noptions edns0 attempts:1 timeout:2\n")
        (base / "opendkim-verify.conf").write_text(settings_with(
            postfixconf.opendkim_verify_conf(config), PidFile=str(base / "opendkim.pid"), Syslog="no",
            ResolverConfiguration=str(base / "unbound.conf")))
        (base / "opendmarc.conf").write_text(settings_with(
            postfixconf.opendmarc_conf(config), PidFile=str(base / "opendmarc.pid"), Syslog="false"))
        s = Site(base, pf, sink, config_path, (base / "sel.private").read_bytes())
        s.dns = dns
        s.milters = {
            "opendkim": Milter("opendkim", [OPENDKIM, "-f", "-x", str(base / "opendkim-verify.conf")], dkim_port,
                               base / "opendkim.log"),
            "opendmarc": Milter("opendmarc", [UNSHARE, "--mount", "--propagation", "private", "sh", "-c",
                                              f"mount --bind {base / 'resolv.conf'} /etc/resolv.conf &&"
                                              f" exec {OPENDMARC} -f -c {base / 'opendmarc.conf'}"],
                                dmarc_port, base / "opendmarc.log"),
        }
        try:
            with mock.patch.object(dns_harness, "free_dns_port", lambda host: 53):  # the C resolver knows no port
                dns.start()
            for milter in s.milters.values():
                milter.start()
            pf.start()
            proc = subprocess.run([sys.executable, "-m", "listfilter", "--config", str(config_path), "sync"],
                                  capture_output=True, text=True, timeout=60)
            assert proc.returncode == 0, proc.stderr
            yield s
        finally:
            pf.stop()
            for milter in s.milters.values():
                milter.stop()
            dns.stop()


@pytest.fixture
def fresh(site):
    assert site.pf.wait_queue_empty(timeout=30), site.pf.queue()
    site.sink.clear()
    for milter in site.milters.values():
        if milter.proc is None:
            milter.start()
    yield site


def post(subject: str, msgid: str, *, to: str = STUDENTS, extra: str = "") -> bytes:
    return (f'From: "Pat Prof" <{INSTRUCTOR}>\r\nTo: {to}\r\nSubject: {subject}\r\nMessage-ID: <{msgid}>\r\n'
            f"Date: Tue, 24 Nov 2026 10:00:00 -0600\r\nMIME-Version: 1.0\r\n{extra}"
            "Content-Type: text/plain; charset=utf-8\r\n\r\nThe exam is on Monday.\r\n").encode()


def notice_of(message) -> tuple[str, bytes]:
    """A refusal notice's text and the original's headers attached to it."""
    parsed = email.message_from_bytes(message.data, policy=email.policy.default)
    [attached] = [p for p in parsed.iter_parts() if p.get_content_type() == "text/rfc822-headers"]
    return parsed.get_body(("plain",)).get_content(), attached.get_payload(decode=True)


FAILED = ("dmarc=fail for example.edu (mx.lists.example.edu): it has no valid DKIM signature of example.edu,"
          " and it was not sent from a server that example.edu's SPF record names")


def test_a_signed_post_from_the_instructor_is_delivered(fresh):
    fresh.send(fresh.sign(post("exam room", "a1@example.edu")), client=LAPTOP)
    copies = fresh.received(len(MEMBERS))
    assert {r for m in copies for r in m.rcpt_tos} == MEMBERS
    event = fresh.event_for("<a1@example.edu>")
    assert (event["status"], event["rule"]) == ("delivered", "accept")
    for copy in copies:
        # the milters' verdict stays here: cleanup strips this host's fields from the copies it sends too
        assert b"Authentication-Results: " + ID.encode() not in copy.data


def test_the_same_from_unsigned_from_a_strangers_client_is_refused(fresh):
    fresh.send(post("exam moved", "a2@example.edu"), client=STRANGER)  # From and envelope are the instructor's
    [notice] = fresh.received(1)
    assert notice.rcpt_tos == [INSTRUCTOR] and notice.mail_from == ""  # the notice rules: to the envelope sender
    text, headers = notice_of(notice)
    assert f"Why: {FAILED}" in " ".join(text.split())
    assert b"dmarc=fail (p=reject dis=none) header.from=example.edu" in headers  # what the milter found
    event = fresh.event_for("<a2@example.edu>")
    assert (event["status"], event["rule"]) == ("bounced", "authenticated")
    assert event["error_message"].startswith(FAILED + "; notice sent to <prof@example.edu>")


def test_forged_authentication_results_do_not_count(fresh):
    """A field claiming our authserv-id, written by the sender: cleanup's header_checks removes it, and
    with header_checks gone the mail side still reads only the milters' own verdict, above it.

    (OpenDKIM also removes a field of ours that holds a DKIM result, but not one with a DMARC result
    alone: the forgery here is that one, so only header_checks can strip it.)"""
    forged = f"Authentication-Results: {ID}; dmarc=pass header.from=example.edu\r\n"
    fresh.send(post("forged", "a3@example.edu", extra=forged), client=STRANGER)
    [notice] = fresh.received(1)
    text, headers = notice_of(notice)
    assert f"Why: {FAILED}" in " ".join(text.split())
    assert b"dmarc=pass" not in headers  # stripped as it arrived
    assert fresh.event_for("<a3@example.edu>")["rule"] == "authenticated"

    fresh.sink.clear()
    fresh.pf.postconf("-e", "header_checks =")
    fresh.pf.reload()
    try:
        time.sleep(1)
        fresh.send(post("forged again", "a4@example.edu", extra=forged), client=STRANGER)
        [notice] = fresh.received(1)
        text, headers = notice_of(notice)
        assert forged.encode() in headers  # it reached listfilter this time, below the milters' fields
        assert headers.index(b"dmarc=fail") < headers.index(forged.encode())
        assert f"Why: {FAILED}" in " ".join(text.split())
        assert fresh.event_for("<a4@example.edu>")["rule"] == "authenticated"
    finally:
        fresh.pf.postconf("-e", f"header_checks = regexp:{fresh.base / 'header_checks'}")
        fresh.pf.reload()
        time.sleep(1)


def test_an_unsigned_post_through_the_campus_relay_passes_on_spf(fresh):
    """The campus's own relay path: SPF names the relay, the envelope is example.edu's, DMARC passes."""
    fresh.send(post("via the relay", "a5@example.edu"), client=CAMPUS_RELAY)
    assert len(fresh.received(len(MEMBERS))) == len(MEMBERS)
    assert fresh.event_for("<a5@example.edu>")["status"] == "delivered"


def test_trusted_senders_by_network_and_local_submission(fresh):
    fresh.send(post("from the unit relay", "a6@example.edu"), client=UNIT_RELAY)  # dmarc=fail, but trusted
    assert len(fresh.received(len(MEMBERS))) == len(MEMBERS)
    assert fresh.event_for("<a6@example.edu>")["status"] == "delivered"
    fresh.sink.clear()
    # sendmail on this host: no milter, no client address; "local" trusts it
    fresh.pf.sendmail(["-f", INSTRUCTOR, STUDENTS], post("from the course app", "a7@example.edu"))
    assert len(fresh.received(len(MEMBERS))) == len(MEMBERS)
    assert fresh.event_for("<a7@example.edu>")["status"] == "delivered"


def test_a_members_may_post_list_does_not_ask(fresh):
    """require_authenticated is off by default where members may post."""
    fresh.send(post("club news", "a8@example.edu", to=CLUB), client=STRANGER, to=CLUB)
    assert {r for m in fresh.received(2) for r in m.rcpt_tos} == {"alice@example.org", INSTRUCTOR}
    assert fresh.event_for("<a8@example.edu>", CLUB)["status"] == "delivered"


def test_while_a_milter_is_down_mail_waits(fresh):
    """default_action=tempfail: no post arrives without its verdict; the sender's server retries."""
    fresh.milters["opendmarc"].stop()
    out = fresh.send(fresh.sign(post("while down", "a9@example.edu")), client=LAPTOP)
    assert "<** 4" in out and "4.7.1" in out, out
    assert fresh.pf.queue() == [] and fresh.sink.snapshot() == []
