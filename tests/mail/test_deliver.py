"""`listfilter deliver` as a process, with sendmail replaced by a recording stub.

These are unit tests of the filter's behaviour (exit codes, events, retries,
notices); tests/test_mailflow.py runs the same paths through a real Postfix.
"""

from __future__ import annotations

import email
import email.policy
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from ..conftest import REPO

STUB = """#!/bin/sh
# records one sendmail call: argv in N.args, message in N.msg; fails if FAIL exists
dir="{dir}"
if [ -e "$dir/FAIL" ]; then echo "sendmail: fatal: simulated failure" >&2; exit 75; fi
n=$(ls "$dir" | grep -c '\\.args$')
printf '%s\\n' "$@" > "$dir/$n.args"
cat > "$dir/$n.msg"
"""

POST = (b'From: "Jane Doe" <Instructor@example.edu>\n'
        b"To: students@lists.example.edu\n"
        b"Subject: hello there\n"
        b"Message-ID: <post-1@example.edu>\n"
        b"Date: Tue, 24 Nov 2026 08:00:00 +0000\n"
        b"\n"
        b"Body line\n")


class Env:
    def __init__(self, tmp_path: Path):
        self.calls = tmp_path / "calls"
        self.calls.mkdir()
        stub = tmp_path / "sendmail"
        stub.write_text(STUB.format(dir=self.calls))
        stub.chmod(0o755)
        src = (REPO / "docs/example/lists.toml").read_text()
        src = src.replace('state_dir = "state"', f'state_dir = "{tmp_path / "state"}"\nsendmail = "{stub}"'
                                                 '\nnotice_limit = 2')
        self.config = tmp_path / "lists.toml"
        self.config.write_text(src.replace('csv = "roster.csv"', f'csv = "{REPO / "docs/example/roster.csv"}"'))
        self.spool = tmp_path / "state" / "spool"
        run = subprocess.run([sys.executable, "-m", "listfilter", "--config", str(self.config), "sync"],
                             capture_output=True, text=True)
        assert run.returncode == 0, run.stderr

    def deliver(self, message: bytes, recipient="students@lists.example.edu", sender="instructor@example.edu",
                *extra: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-m", "listfilter", "--config", str(self.config), "deliver",
             "--sender", sender, "--recipient", recipient, "--queue-id", "4ABCDEF", *extra],
            input=message, capture_output=True, timeout=60)

    def sent(self) -> list[tuple[list[str], bytes]]:
        n = len(list(self.calls.glob("*.args")))
        return [((self.calls / f"{i}.args").read_text().splitlines(), (self.calls / f"{i}.msg").read_bytes())
                for i in range(n)]

    def events(self) -> list[dict]:
        return [json.loads(p.read_text()) for p in sorted((self.spool / "events").glob("*.json"))]


@pytest.fixture
def env(tmp_path):
    return Env(tmp_path)


def test_allowed_post_one_verp_submission(env):
    proc = env.deliver(POST)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == b""
    [(argv, msg)] = env.sent()
    assert argv[:6] == ["-G", "-i", "-f", "students-bounces@lists.example.edu", "-XV", "--"]
    assert argv[6:] == ["alice@example.edu", "bob@example.edu", "Carol@Example.edu", "erin@example.edu",
                        "ta.one@example.edu"]  # the poster (instructor) excluded, Carol once
    parsed = email.message_from_bytes(msg, policy=email.policy.default)
    assert parsed["From"] == '"Jane Doe" <Instructor@example.edu>' or parsed["From"].addresses[0].display_name == "Jane Doe"
    assert parsed["To"].addresses[0].addr_spec == "students@lists.example.edu"
    assert parsed["To"].addresses[0].display_name == "CS 199 Students"
    assert parsed["Subject"].startswith("[CS 199 Students] 20") and parsed["Subject"].endswith(": Hello There")
    assert parsed["List-Id"] == '"CS 199 Students" <students.lists.example.edu>'
    assert parsed["Reply-To"] == "staff@lists.example.edu"
    assert msg.endswith(b"\n\nBody line\n")
    [event] = env.events()
    assert event["status"] == "delivered"
    assert event["recipient_count"] == 5 and "bob@example.edu" in event["recipients"]
    assert event["sender_name"] == "Jane Doe" and event["sender_email"] == "Instructor@example.edu"
    assert event["message_id"] == "<post-1@example.edu>" and event["queue_id"] == "4ABCDEF"
    assert event["subject"] == "hello there" and event["body"] == "Body line\n"


def test_resubmission_is_not_delivered_twice(env):
    assert env.deliver(POST).returncode == 0
    again = env.deliver(POST)
    assert again.returncode == 0
    assert len(env.sent()) == 1
    assert len(env.events()) == 1


def test_sendmail_failure_defers_then_delivers_once(env):
    (env.calls / "FAIL").touch()
    proc = env.deliver(POST)
    assert proc.returncode == 75
    line = proc.stderr.decode()
    assert line.startswith("listfilter: 4.3.0 sendmail failed after 0 of 5 recipients") and line.count("\n") == 1
    [event] = env.events()
    assert event["status"] == "failed" and "simulated failure" in event["error_message"]
    (env.calls / "FAIL").unlink()
    assert env.deliver(POST).returncode == 0
    assert len(env.sent()) == 1
    [event] = env.events()  # the same record, now delivered
    assert event["status"] == "delivered"


def test_failed_batch_retry_skips_accepted_batches(env, monkeypatch):
    # 5 recipients in batches of 2: the second call fails, the retry sends only what is left
    from listfilter.common import spool

    key = "<post-1@example.edu>"
    progress = spool.Progress(env.spool, key, "students@lists.example.edu")
    env.spool.joinpath("sent").mkdir(parents=True, exist_ok=True)
    progress.record_batch(["alice@example.edu", "bob@example.edu"], "4ABCDEF")
    assert env.deliver(POST).returncode == 0
    [(argv, _)] = env.sent()
    assert argv[6:] == ["Carol@Example.edu", "erin@example.edu", "ta.one@example.edu"]


def test_unknown_list_exits_67(env):
    proc = env.deliver(POST, recipient="nosuch@lists.example.edu")
    assert proc.returncode == 67
    assert proc.stderr.decode() == "listfilter: 5.1.1 <nosuch@lists.example.edu>: no such list here\n"
    assert env.sent() == []


def test_missing_snapshot_defers(env):
    (env.config.parent / "state" / "snapshot.sqlite").unlink()
    proc = env.deliver(POST)
    assert proc.returncode == 75
    assert b"snapshot" in proc.stderr and b"missing" in proc.stderr
    assert env.sent() == []


def test_config_mid_edit_keeps_mail_flowing_until_unreadable(env):
    # an invalid field does not matter to the mail side: it uses the last sync's snapshot
    good = env.config.read_text()
    env.config.write_text(good + "\nbogus = 1\n")
    assert env.deliver(POST).returncode == 0
    # a file that is not TOML at all means the snapshot cannot be located: defer
    env.config.write_text(good + "\n[site\n")
    proc = env.deliver(POST.replace(b"post-1", b"post-2"))
    assert proc.returncode == 75 and proc.stderr.startswith(b"listfilter: 4.3.0 cannot read ")
    assert len(env.sent()) == 1


def test_spool_not_writable_defers_before_sending(env):
    env.deliver(POST)  # creates the spool
    for p in env.calls.iterdir():
        p.unlink()
    events = env.spool / "events"
    events.chmod(0o500)
    try:
        if os.access(events, os.W_OK):
            # root ignores permission bits: make the spool path a file instead
            events.chmod(0o700)
            import shutil

            shutil.rmtree(events)
            events.write_text("not a directory")
        proc = env.deliver(POST.replace(b"post-1", b"post-2"))
    finally:
        if events.is_dir():
            events.chmod(0o700)
    assert proc.returncode == 75 and b"spool" in proc.stderr
    assert env.sent() == []


def test_refused_poster_gets_notice_members_nothing(env):
    stranger = POST.replace(b'"Jane Doe" <Instructor@example.edu>', b"Alice <alice@example.edu>")
    proc = env.deliver(stranger, sender="alice@example.edu")
    assert proc.returncode == 0, proc.stderr
    [(argv, notice)] = env.sent()
    assert argv == ["-G", "-i", "-f", "<>", "--", "alice@example.edu"]
    parsed = email.message_from_bytes(notice, policy=email.policy.default)
    assert parsed["Auto-Submitted"] == "auto-replied"
    assert parsed["To"] == "alice@example.edu"
    text = parsed.get_body(("plain",)).get_content()
    assert "alice@example.edu is not allowed to post to students@lists.example.edu" in text
    assert "course instructor, ta" in text
    [event] = env.events()
    assert event["status"] == "bounced" and "notice sent" in event["error_message"]


def test_reply_to_and_sender_do_not_grant_posting(env):
    forged = (b"From: alice@example.edu\nSender: instructor@example.edu\nReply-To: instructor@example.edu\n"
              b"Subject: x\nMessage-ID: <forged@example.edu>\n\nhi\n")
    assert env.deliver(forged, sender="instructor@example.edu").returncode == 0
    [(argv, _)] = env.sent()
    assert argv[-1] == "instructor@example.edu" and "-XV" not in argv  # only the notice went out


@pytest.mark.parametrize("sender,extra_header", [
    ("", b""),
    ("MAILER-DAEMON", b""),
    ("alice@example.edu", b"Auto-Submitted: auto-generated\n"),
    ("alice@example.edu", b"Precedence: bulk\n"),
    ("alice@example.edu", b"List-Id: <other.lists.example.org>\n"),
    ("other-owner@example.org", b""),
])
def test_no_notice_to_null_or_automatic_senders(env, sender, extra_header):
    msg = b"From: alice@example.edu\n" + extra_header + b"Subject: x\nMessage-ID: <auto@example.edu>\n\nhi\n"
    proc = env.deliver(msg, sender=sender)
    assert proc.returncode == 0, proc.stderr
    assert env.sent() == []
    [event] = env.events()
    assert event["status"] == "bounced" and "no notice" in event["error_message"]


def test_notices_are_rate_limited_per_sender_per_day(env):
    for i in range(4):
        msg = f"From: alice@example.edu\nSubject: try {i}\nMessage-ID: <try-{i}@example.edu>\n\nhi\n".encode()
        assert env.deliver(msg, sender="alice@example.edu").returncode == 0
    assert len(env.sent()) == 2  # notice_limit = 2
    assert sum("notice limit reached" in e["error_message"] for e in env.events()) == 2


def test_loop_is_not_sent_again(env):
    looped = POST.replace(b"Subject:", b"List-Id: CS 199 Students <students.lists.example.edu>\nSubject:")
    proc = env.deliver(looped)
    assert proc.returncode == 0
    assert env.sent() == []
    [event] = env.events()
    assert event["status"] == "failed" and event["error_message"] == "mail loop detected"


def test_dry_run_sends_and_writes_nothing(env):
    proc = env.deliver(POST, "students@lists.example.edu", "instructor@example.edu", "--dry-run")
    assert proc.returncode == 0
    out = proc.stdout.decode()
    assert out.startswith("decision: delivered: would deliver to 5 recipients\n")
    assert "  bob@example.edu\n" in out and "List-Id:" in out
    assert env.sent() == [] and not (env.spool / "events").exists()


def test_owner_and_request_mail_reach_the_owners(env):
    proc = env.deliver(POST, "students-request@lists.example.edu", "alice@example.edu")
    assert proc.returncode == 0, proc.stderr
    [(argv, msg)] = env.sent()
    assert argv == ["-G", "-i", "-f", "alice@example.edu", "--", "instructor@example.edu"]
    assert msg == POST


def test_bounce_is_accepted_and_nothing_sent(env):
    dsn = b"From: MAILER-DAEMON@relay.example.edu\nSubject: Undelivered Mail\n\nsorry\n"
    proc = env.deliver(dsn, "students-bounces+alice=example.edu@lists.example.edu", "")
    assert proc.returncode == 0
    assert env.sent() == []


def test_deliver_imports_nothing_heavy(env):
    proc = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "listfilter", "--config", str(env.config), "deliver",
         "--sender", "instructor@example.edu", "--recipient", "students@lists.example.edu", "--dry-run"],
        input=POST, capture_output=True, text=False)
    assert proc.returncode == 0
    modules = {line.split("|")[-1].strip().split(".")[0] for line in proc.stderr.decode().splitlines()
               if line.startswith("import time:")}
    assert "email" in modules  # the measurement works
    assert not modules & {"click", "psycopg", "jinja2", "dns", "flufl"}, modules & {"click", "psycopg", "jinja2"}


def test_message_without_message_id_gets_one_for_tracing(env):
    post = b"From: instructor@example.edu\nSubject: no id\n\nhi\n"
    assert env.deliver(post).returncode == 0
    [(_, msg)] = env.sent()
    parsed = email.message_from_bytes(msg, policy=email.policy.default)
    assert parsed["Message-ID"].endswith("@lists.example.edu>")
    [event] = env.events()
    assert event["message_id"] == parsed["Message-ID"]
    # a retry of the same queue file is still recognised (by queue id) and not re-sent
    assert env.deliver(post).returncode == 0
    assert len(env.sent()) == 1


@pytest.mark.parametrize("headers,body,text", [
    (b"Content-Type: text/plain; charset=utf-8\nContent-Transfer-Encoding: base64\n",
     b"R3LDvMOfZSBhdXMgZGVyIMOcYnVuZw==\n", "Grüße aus der Übung"),
    (b"Content-Type: text/plain; charset=iso-8859-1\nContent-Transfer-Encoding: quoted-printable\n",
     b"Caf=E9 at noon=\n today\n", "Café at noon today\n"),
    (b"Content-Type: text/plain; charset=iso-8859-1\nContent-Transfer-Encoding: 8bit\n",
     "Café\n".encode("latin-1"), "Café\n"),
    (b"Content-Type: multipart/mixed; boundary=b\n", b"--b\n\npart\n--b--\n", "--b\n\npart\n--b--\n"),
])
def test_event_body_is_decoded_for_a_single_text_part(env, headers, body, text):
    post = b"From: instructor@example.edu\nSubject: s\nMessage-ID: <enc@example.edu>\nMIME-Version: 1.0\n" \
           + headers + b"\n" + body
    assert env.deliver(post).returncode == 0
    [event] = env.events()
    assert event["body"] == text
    [(_, sent)] = env.sent()
    assert sent.endswith(b"\n\n" + body)  # what members get is untouched
