"""End to end through a real Postfix: swaks → smtpd → pipe(8) → listfilter-deliver
→ sendmail → Postfix → the relay sink.

One private Postfix instance (its own config and queue directories, loopback
ports) serves the module; the roster is a real PostgreSQL database; the
snapshot and maps come from `listfilter sync`; master.cf and main.cf carry
what `listfilter postfix-config` renders.
"""

from __future__ import annotations

import datetime as dt
import email
import email.policy
import json
import subprocess
import sys
import time
import zoneinfo
from pathlib import Path

import pytest


from ..conftest import roster_database
from ..harness.postfix import PostfixInstance, ensure_user, swaks, traversable_tmpdir
from ..harness.smtpsink import SMTPSink
from ..harness.wiring import install_programs, listfilter_spool, wire

pytestmark = pytest.mark.integration

DOMAIN = "lists.example.edu"
STUDENTS = f"students@{DOMAIN}"
# students@ receives everyone current and active on CS 199, minus the poster
STUDENT_MEMBERS = {"alice@example.edu", "bob@example.edu", "erin@example.edu", "prof@example.edu",
                   "ta1@example.edu", "ta2@example.edu"}

LISTS = f"""
[domains."{DOMAIN}"]
course = "CS 199"

[lists.students]
display_name = "CS 199 Students"
members = {{ roles = ["applied", "student", "teacher", "ta"] }}
posters = {{ roles = ["instructor", "ta"] }}
reply_to = "staff"

[lists.staff]
display_name = "CS 199 Staff"
members = {{ roles = ["staff"] }}
posters = "members"

[lists.loopa]
members = {{ emails = ["loopb@{DOMAIN}", "x@example.org"] }}
posters = ["prof@example.edu"]

[lists.loopb]
members = {{ emails = ["loopa@{DOMAIN}", "y@example.org"] }}
posters = ["prof@example.edu"]
"""

# Wraps the real sendmail; fails while the FAIL file exists (a broken relay path).
SENDMAIL_WRAPPER = """#!/bin/sh
if [ -e "{flag}" ]; then echo "sendmail: fatal: simulated outage" >&2; exit 75; fi
exec /usr/sbin/sendmail "$@"
"""


class Site:
    """The running system: Postfix, the sink, the config, and helpers to drive them."""

    def __init__(self, base: Path, pf: PostfixInstance, sink: SMTPSink, config: Path):
        self.base, self.pf, self.sink, self.config = base, pf, sink, config
        self.fail_flag = base / "FAIL"
        self.spool = base / "state" / "spool"

    def sync(self) -> subprocess.CompletedProcess:
        proc = subprocess.run([sys.executable, "-m", "listfilter", "--config", str(self.config), "sync"],
                              capture_output=True, text=True, timeout=60)
        assert proc.returncode == 0, proc.stderr
        return proc

    def send(self, raw: bytes, *, to: str = STUDENTS, sender: str = "prof@example.edu") -> str:
        path = self.base / f"msg-{time.time_ns()}.eml"
        # swaks ends the data with its own line break: leave ours off so the
        # message Postfix receives is exactly `raw`
        path.write_bytes(raw[:-1] if raw.endswith(b"\n") else raw)
        proc = swaks("--to", to, "--from", sender, "--data", f"@{path}", port=self.pf.smtpd_port)
        return proc.stdout + proc.stderr

    def settle(self, timeout: float = 30) -> None:
        """Wait until Postfix has nothing left to do."""
        assert self.pf.wait_queue_empty(timeout=timeout), (self.pf.queue(), self.pf.log_tail(30))

    def events(self) -> list[dict]:
        return [json.loads(p.read_text()) for p in (self.spool / "events").glob("*.json")]

    def event_for(self, message_id: str, list_address: str = STUDENTS) -> dict:
        found = [e for e in self.events() if e["message_id"] == message_id and e["list_address"] == list_address]
        assert len(found) == 1, found
        return found[0]


@pytest.fixture(scope="module")
def site():
    ensure_user("listfilter")
    with traversable_tmpdir() as base, roster_database() as dsn, SMTPSink() as sink:
        program = install_programs(base / "bin")
        wrapper = base / "bin" / "sendmail"
        wrapper.write_text(SENDMAIL_WRAPPER.format(flag=base / "FAIL"))
        wrapper.chmod(0o755)
        config_path = base / "lists.toml"
        pf = PostfixInstance(base / "postfix", relay_port=sink.port)
        config_path.write_text(f"""
[site]
dmarc = "off"  # no DMARC lookups: this test starts no DNS server (tests/conftest.py)
timezone = "America/Chicago"
state_dir = "{base / 'state'}"
sendmail = "{wrapper}"
owners = ["prof@example.edu"]
notice_limit = 100
[postfix]
config_directory = "{pf.config_dir}"
map_type = "hash"
[roster]
dsn = "{dsn}"
{LISTS}""")
        listfilter_spool(wire(pf, config_path, program))
        probe = subprocess.run(["su", "-s", "/bin/sh", "listfilter", "-c",
                                f"{program} --help >/dev/null && echo ok"], capture_output=True, text=True)
        assert probe.stdout.strip() == "ok", (
            f"the listfilter user cannot run {program}: {probe.stderr.strip()} (tests/run grants access)")
        pf.start()
        try:
            s = Site(base, pf, sink, config_path)
            s.sync()
            yield s
        finally:
            pf.stop()


@pytest.fixture
def fresh(site):
    """Each test starts with an idle Postfix and an empty sink."""
    site.settle()
    site.sink.clear()
    if site.fail_flag.exists():
        site.fail_flag.unlink()
    yield site
    if not (site.base / "state" / "snapshot.sqlite").exists():
        site.sync()


def message(subject: str, msgid: str, *, sender: str = '"Pat Prof" <prof@example.edu>', extra: str = "",
            body: str = "Hello everyone,\n\nsee you on Monday.\n") -> bytes:
    return (f"From: {sender}\nTo: {STUDENTS}\nSubject: {subject}\nMessage-ID: <{msgid}>\n"
            f"Date: Tue, 24 Nov 2026 10:00:00 -0600\nMIME-Version: 1.0\n{extra}"
            f"Content-Type: text/plain; charset=utf-8\nContent-Transfer-Encoding: 8bit\n\n{body}").encode()


def body_of(data: bytes) -> bytes:
    return data.replace(b"\r\n", b"\n").split(b"\n\n", 1)[1]


def today() -> str:
    return dt.datetime.now(zoneinfo.ZoneInfo("America/Chicago")).date().isoformat()


def test_allowed_post_reaches_every_member_but_the_poster(fresh):
    out = fresh.send(message("hello there", "t1@example.edu"))
    assert "<-  250" in out and "queued as" in out, out
    expected = STUDENT_MEMBERS - {"prof@example.edu"}
    assert fresh.sink.wait_for(len(expected), timeout=30), fresh.pf.log_tail(30)
    fresh.settle()
    got = fresh.sink.snapshot()
    assert sorted(r.lower() for m in got for r in m.rcpt_tos) == sorted(expected)
    for m in got:
        # VERP: every copy returns to students-bounces+user=domain@
        [rcpt] = m.rcpt_tos
        assert m.mail_from == f"students-bounces+{rcpt.replace('@', '=')}@{DOMAIN}"
        parsed = email.message_from_bytes(m.data, policy=email.policy.default)
        assert parsed["From"].addresses[0].display_name == "Pat Prof"
        assert parsed["From"].addresses[0].addr_spec == "prof@example.edu"
        assert [(a.display_name, a.addr_spec) for a in parsed["To"].addresses] == [("CS 199 Students", STUDENTS)]
        assert parsed["Subject"] == f"[CS 199 Students] {today()}: Hello There"
        assert parsed["Reply-To"] == f"staff@{DOMAIN}"
        assert parsed["List-Id"] == '"CS 199 Students" <students.lists.example.edu>'
        assert parsed["List-Post"] == f"<mailto:{STUDENTS}>"
        assert parsed["List-Help"] == f"<mailto:students-request@{DOMAIN}?subject=help>"
        assert parsed["List-Owner"] == f"<mailto:students-owner@{DOMAIN}>"
        assert parsed["Precedence"] == "list"
        assert parsed["Message-ID"] == "<t1@example.edu>"
        assert parsed["Date"] == "Tue, 24 Nov 2026 10:00:00 -0600"
        assert body_of(m.data) == b"Hello everyone,\n\nsee you on Monday.\n"
    event = fresh.event_for("<t1@example.edu>")
    assert event["status"] == "delivered" and event["recipient_count"] == 5
    assert event["queue_id"] and event["sender_name"] == "Pat Prof"


def test_stranger_is_refused_at_rcpt_with_the_reason(fresh):
    out = fresh.send(message("let me in", "t2a@example.edu", sender="Stranger <stranger@example.org>"),
                     sender="stranger@example.org")
    assert ("<** 550 5.7.1 <students@lists.example.edu>: Recipient address rejected: <stranger@example.org>"
            " may not post to <students@lists.example.edu>; only course instructor, ta may") in out, out
    assert fresh.pf.queue() == []
    time.sleep(1)
    assert fresh.sink.snapshot() == []  # we sent nothing: the sender's own MTA tells them
    [event] = [e for e in fresh.events() if e["status"] == "rejected" and e["sender_email"] == "stranger@example.org"]
    assert event["list_address"] == STUDENTS and "only course instructor, ta may" in event["error_message"]


def test_from_header_not_allowed_is_caught_after_queue_and_notified(fresh):
    # the envelope sender may post (so RCPT passes); the From header may not
    fresh.send(message("let me in", "t2@example.edu", sender="Alice <alice@example.edu>"),
               sender="prof@example.edu")
    assert fresh.sink.wait_for(1, timeout=30), fresh.pf.log_tail(30)
    fresh.settle()
    [notice] = fresh.sink.snapshot()
    assert notice.rcpt_tos == ["prof@example.edu"]  # the envelope sender is told
    assert notice.mail_from == ""  # null envelope sender: nothing can bounce back
    parsed = email.message_from_bytes(notice.data, policy=email.policy.default)
    assert parsed["Auto-Submitted"] == "auto-replied"
    assert parsed["In-Reply-To"] == "<t2@example.edu>"
    text = parsed.get_body(("plain",)).get_content()
    assert f"alice@example.edu is not allowed to post to {STUDENTS}" in text
    assert "course instructor, ta" in text
    attached = [p for p in parsed.iter_parts() if p.get_content_type() == "text/rfc822-headers"]
    assert len(attached) == 1 and b"Subject: let me in" in attached[0].get_payload(decode=True)
    assert fresh.event_for("<t2@example.edu>")["status"] == "bounced"


def test_unknown_list_is_refused_at_rcpt(fresh):
    out = fresh.send(message("anyone?", "t3@example.edu"), to=f"nosuch@{DOMAIN}")
    assert "<** 550" in out and "User unknown in relay recipient table" in out, out
    assert fresh.pf.queue() == []
    time.sleep(1)
    assert fresh.sink.snapshot() == []


def test_missing_snapshot_defers_then_delivers_once(fresh):
    snapshot = fresh.base / "state" / "snapshot.sqlite"
    snapshot.unlink()
    fresh.send(message("deferred", "t4@example.edu"))
    deferred = fresh.pf.wait_queue(lambda q: q and any("snapshot" in r.get("delay_reason", "")
                                                       for e in q for r in e.get("recipients", [])), timeout=30)
    reason = deferred[0]["recipients"][0]["delay_reason"]
    assert "is missing (run listfilter sync)" in reason, reason
    assert fresh.sink.snapshot() == []
    fresh.sync()
    fresh.pf.flush()
    assert fresh.sink.wait_for(5, timeout=30), fresh.pf.log_tail(30)
    fresh.settle()
    time.sleep(1)
    rcpts = [r.lower() for m in fresh.sink.snapshot() for r in m.rcpt_tos]
    assert sorted(rcpts) == sorted(STUDENT_MEMBERS - {"prof@example.edu"})  # each exactly once


def test_sendmail_failure_defers_then_delivers_once(fresh):
    fresh.fail_flag.touch()
    fresh.send(message("relay down", "t5@example.edu"))
    fresh.pf.wait_queue(lambda q: q and any("simulated outage" in r.get("delay_reason", "")
                                            for e in q for r in e.get("recipients", [])), timeout=30)
    assert fresh.event_for("<t5@example.edu>")["status"] == "deferred"
    fresh.fail_flag.unlink()
    fresh.pf.flush()
    assert fresh.sink.wait_for(5, timeout=30), fresh.pf.log_tail(30)
    fresh.settle()
    fresh.pf.flush()  # a second retry must not re-send
    time.sleep(2)
    rcpts = [r.lower() for m in fresh.sink.snapshot() for r in m.rcpt_tos]
    assert sorted(rcpts) == sorted(STUDENT_MEMBERS - {"prof@example.edu"})
    assert fresh.event_for("<t5@example.edu>")["status"] == "delivered"
    # the same message submitted again is not delivered twice either
    fresh.sink.clear()
    fresh.send(message("relay down", "t5@example.edu"))
    fresh.settle()
    time.sleep(1)
    assert fresh.sink.snapshot() == []


def test_reply_is_not_double_tagged(fresh):
    fresh.send(message("Re: [CS 199 Students] 2026-01-21: Hello There", "t6@example.edu",
                       sender="Tom <ta1@example.edu>"), sender="ta1@example.edu")
    assert fresh.sink.wait_for(5, timeout=30)
    fresh.settle()
    subjects = {email.message_from_bytes(m.data, policy=email.policy.default)["Subject"]
                for m in fresh.sink.snapshot()}
    assert subjects == {f"[CS 199 Students] {today()}: Re: Hello There"}
    assert "ta1@example.edu" not in {r.lower() for m in fresh.sink.snapshot() for r in m.rcpt_tos}


def test_null_sender_is_refused_at_rcpt(fresh):
    out = fresh.send(message("out of office", "t7-null@example.edu", sender="alice@example.edu"), sender="<>")
    assert "<** 550 5.7.1" in out and "accepts no mail from the null sender" in out, out
    assert fresh.pf.queue() == []
    time.sleep(1)
    assert fresh.sink.snapshot() == []


def test_refused_auto_submitted_mail_gets_no_notice(fresh):
    out = fresh.send(message("out of office", "t7-auto@example.edu", sender="alice@example.edu",
                             extra="Auto-Submitted: auto-replied\n"), sender="prof@example.edu")
    assert "queued as" in out, out
    fresh.settle()
    time.sleep(1)
    assert fresh.sink.snapshot() == []
    event = fresh.event_for("<t7-auto@example.edu>")
    assert event["status"] == "bounced" and "no notice (auto-submitted)" in event["error_message"]


def test_utf8_and_multipart_arrive_intact(fresh):
    utf8 = message("=?utf-8?q?Pr=C3=BCfung_=C3=BCber_Caf=C3=A9?=", "t8a@example.edu",
                   body="Grüße aus der Übung — café, naïve, 日本語.\n")
    fresh.send(utf8)
    boundary = "=-=b0undary=-="
    attachment = bytes(range(256)) * 4
    import base64

    encoded = base64.encodebytes(attachment).decode()
    multipart = (f'From: "Pat Prof" <prof@example.edu>\nTo: {STUDENTS}\nSubject: slides\n'
                 f"Message-ID: <t8b@example.edu>\nMIME-Version: 1.0\n"
                 f'Content-Type: multipart/mixed; boundary="{boundary}"\n\n'
                 f"preamble\n--{boundary}\nContent-Type: text/plain; charset=utf-8\n"
                 f"Content-Transfer-Encoding: 8bit\n\nSlides attached — see page 3.\n"
                 f"--{boundary}\nContent-Type: application/octet-stream; name=\"slides.bin\"\n"
                 f"Content-Transfer-Encoding: base64\nContent-Disposition: attachment; filename=\"slides.bin\"\n\n"
                 f"{encoded}--{boundary}--\nepilogue\n").encode()
    fresh.send(multipart)
    assert fresh.sink.wait_for(10, timeout=30), fresh.pf.log_tail(30)
    fresh.settle()
    by_id = {}
    for m in fresh.sink.snapshot():
        parsed = email.message_from_bytes(m.data.replace(b"\r\n", b"\n"), policy=email.policy.default)
        by_id.setdefault(parsed["Message-ID"], []).append((m, parsed))
    for m, parsed in by_id["<t8a@example.edu>"]:
        assert parsed["Subject"] == f"[CS 199 Students] {today()}: Prüfung Über Café"
        assert body_of(m.data) == "Grüße aus der Übung — café, naïve, 日本語.\n".encode()
        assert parsed.get_content() == "Grüße aus der Übung — café, naïve, 日本語.\n"
    for m, parsed in by_id["<t8b@example.edu>"]:
        assert body_of(m.data) == multipart.split(b"\n\n", 1)[1]
        [att] = list(parsed.iter_attachments())
        assert att.get_filename() == "slides.bin" and att.get_content() == attachment


def test_a_list_as_member_of_a_list_does_not_loop(fresh):
    msg = message("nested", "t9@example.edu").replace(STUDENTS.encode(), f"loopa@{DOMAIN}".encode())
    fresh.send(msg, to=f"loopa@{DOMAIN}")
    assert fresh.sink.wait_for(2, timeout=30), fresh.pf.log_tail(30)
    fresh.settle()
    time.sleep(2)
    fresh.settle()
    rcpts = sorted(r for m in fresh.sink.snapshot() for r in m.rcpt_tos)
    assert rcpts == ["x@example.org", "y@example.org"]  # each once; nothing circles back
    assert fresh.event_for("<t9@example.edu>", f"loopb@{DOMAIN}")["status"] == "delivered"
    loopa = sorted((e["status"], e["error_message"]) for e in fresh.events()
                   if e["message_id"] == "<t9@example.edu>" and e["list_address"] == f"loopa@{DOMAIN}")
    # the echo is stopped by the loop rule: recorded as discarded, on a record of its own
    assert loopa == [("delivered", ""), ("discarded", f"message already carries loopa@{DOMAIN}'s List-Id;"
                                                      " not sent again")]
    [echo] = [e for e in fresh.events() if e["message_id"] == "<t9@example.edu>"
              and e["list_address"] == f"loopa@{DOMAIN}" and e["status"] == "discarded"]
    assert echo["rule"] == "loop"
