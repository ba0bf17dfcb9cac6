"""listfilter.mail.deliver: ``listfilter-deliver`` as Postfix's pipe(8) runs it, with sendmail faked.

The command runs as a process where its exit code and stderr line are the
point (sysexits: 0, 67, 75; the DSN first); the log line is read from
:func:`listfilter.mail.deliver.deliver` in-process. The snapshot comes from
a real sync of docs/example, or is written directly for a list of more than
5,000 members. tests/integration/test_mailflow.py runs the same paths
through a real Postfix.
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

from listfilter.common import spool as SP
from listfilter.common.events import stable_id
from listfilter.mail import deliver as D

from ..conftest import REPO
from . import compiled_list, write_snapshot

DELIVER = Path(sys.executable).with_name("listfilter-deliver")
STUDENTS = "students@lists.example.edu"

FAKE_SENDMAIL = """#!/bin/sh
# A fake sendmail(1). Each accepted call leaves its argv in N.args and the message in N.msg.
# It fails (exit 75) while the file FAIL exists, or when FAIL_AT holds the number of calls accepted so far.
dir="{dir}"
n=$(ls "$dir" | grep -c '\\.args$')
if [ -e "$dir/FAIL" ] || [ "$(cat "$dir/FAIL_AT" 2>/dev/null)" = "$n" ]; then
  cat > /dev/null
  echo "sendmail: fatal: simulated failure" >&2
  exit 75
fi
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
#: The members of students@ in docs/example's roster, but the poster, in the snapshot's order.
STUDENT_RECIPIENTS = ["alice@example.edu", "bob@example.edu", "Carol@Example.edu", "erin@example.edu",
                      "ta.one@example.edu"]


def fake_sendmail(tmp_path: Path) -> tuple[Path, Path]:
    """The fake sendmail script and the directory it records calls in."""
    calls = tmp_path / "calls"
    calls.mkdir()
    script = tmp_path / "sendmail"
    script.write_text(FAKE_SENDMAIL.format(dir=calls))
    script.chmod(0o755)
    return script, calls


class Env:
    """docs/example synced into tmp_path, with the fake sendmail and a notice limit of 2."""

    def __init__(self, tmp_path: Path, edit: tuple[str, str] | None = None):
        sendmail, self.calls = fake_sendmail(tmp_path)
        src = (REPO / "docs/example/lists.toml").read_text()
        if edit:  # (text in the example, what replaces it)
            assert src.count(edit[0]) == 1, edit
            src = src.replace(*edit)
        src = src.replace('state_dir = "state"', f'state_dir = "{tmp_path / "state"}"\nsendmail = "{sendmail}"'
                                                 '\nnotice_limit = 2\ndmarc = "off"')  # no DNS from the sync below
        self.config = tmp_path / "lists.toml"
        self.config.write_text(src.replace('csv = "roster.csv"', f'csv = "{REPO / "docs/example/roster.csv"}"'))
        self.snapshot = tmp_path / "state" / "snapshot.sqlite"
        self.spool = tmp_path / "state" / "spool"
        run = subprocess.run([sys.executable, "-m", "listfilter", "--config", str(self.config), "sync"],
                             capture_output=True, text=True)
        assert run.returncode == 0, run.stderr
        assert self.snapshot.is_file()

    def argv(self, recipient: str, sender: str, *extra: str) -> list[str]:
        return ["--snapshot", str(self.snapshot), "--sender", sender, "--recipient", recipient,
                "--queue-id", "4ABCDEF", *extra]

    def deliver(self, message: bytes, recipient=STUDENTS, sender="instructor@example.edu",
                *extra: str) -> subprocess.CompletedProcess:
        """Run listfilter-deliver as master.cf does."""
        return subprocess.run([str(DELIVER), *self.argv(recipient, sender, *extra)], input=message,
                              capture_output=True, timeout=60)

    def log_line(self, message: bytes, recipient=STUDENTS, sender="instructor@example.edu") -> str:
        """Deliver in-process; the line that goes to syslog."""
        return D.deliver(D.parse(self.argv(recipient, sender), D.OPTIONS, D.FLAGS), message)

    def sent(self) -> list[tuple[list[str], bytes]]:
        n = len(list(self.calls.glob("*.args")))
        return [((self.calls / f"{i}.args").read_text().splitlines(), (self.calls / f"{i}.msg").read_bytes())
                for i in range(n)]

    def events(self) -> list[dict]:
        return [json.loads(p.read_text()) for p in sorted((self.spool / "events").glob("*.json"))]


@pytest.fixture
def env(tmp_path):
    assert DELIVER.is_file(), f"{DELIVER} is missing: pip install -e ."
    return Env(tmp_path)


# ---------------------------------------------------------------- a post that goes out


def test_allowed_post_one_verp_submission(env):
    proc = env.deliver(POST)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == b"" and proc.stdout == b""
    [(argv, msg)] = env.sent()
    assert argv[:6] == ["-G", "-i", "-f", "students-bounces@lists.example.edu", "-XV", "--"]
    assert argv[6:] == STUDENT_RECIPIENTS  # the poster (instructor) excluded, Carol once
    assert msg.startswith(b'From: "Jane Doe" <Instructor@example.edu>\n')  # From passes byte for byte
    parsed = email.message_from_bytes(msg, policy=email.policy.default)
    assert [(a.display_name, a.addr_spec) for a in parsed["From"].addresses] == [("Jane Doe",
                                                                                   "Instructor@example.edu")]
    assert "Sender" not in parsed
    assert parsed["To"].addresses[0].addr_spec == STUDENTS
    assert parsed["To"].addresses[0].display_name == "CS 199 Students"
    assert parsed["Subject"].startswith("[CS 199 Students] 20") and parsed["Subject"].endswith(": Hello There")
    assert parsed["List-Id"] == '"CS 199 Students" <students.lists.example.edu>'
    assert parsed["Reply-To"] == "staff@lists.example.edu"
    assert msg.endswith(b"\n\nBody line\n")
    [event] = env.events()
    assert event["id"] == stable_id("<post-1@example.edu>", STUDENTS) and len(event["id"]) == 32
    assert event["status"] == "delivered" and event["rule"] == "accept"
    assert event["recipient_count"] == 5 and event["recipients"] == STUDENT_RECIPIENTS
    assert event["sender_name"] == "Jane Doe" and event["sender_email"] == "Instructor@example.edu"
    assert event["envelope_sender"] == "instructor@example.edu"
    assert event["message_id"] == "<post-1@example.edu>" and event["queue_id"] == "4ABCDEF"
    assert event["subject"] == "hello there" and event["body"] == "Body line\n"
    assert event["error_message"] == ""


def test_the_log_line_names_the_outcome_and_the_rule(env):
    line = env.log_line(POST)
    assert line == ("to=<students@lists.example.edu>, from=<Instructor@example.edu>,"
                    " message-id=<post-1@example.edu>, status=delivered (5 recipients) (rule accept)")


TESTING = "testing@lists.example.edu"
ALONE = POST.replace(b"Message-ID: <post-1", b"Message-ID: <alone")
#: testing@ with exclude_poster on: its one member, the instructor, is the poster.
ONLY_THE_POSTER = ("nobody was sent a copy: the poster is the list's only member, and the list sends posters"
                   " no copy (exclude_poster = true)")


def test_the_testing_list_sends_its_poster_their_own_post(env):
    # the example's testing@ has exclude_poster = false: its one member, who posts, gets the post
    line = env.log_line(ALONE, recipient=TESTING)
    assert line.endswith("status=delivered (1 recipient) (rule accept)"), line
    [(argv, msg)] = env.sent()
    assert argv[6:] == ["instructor@example.edu"]
    assert b"Subject: [CS 199 Testing] " in msg
    [event] = env.events()
    assert event["recipients"] == ["instructor@example.edu"] and event["error_message"] == ""


def test_a_post_with_nobody_left_to_send_to(tmp_path):
    env = Env(tmp_path, edit=("exclude_poster = false", "exclude_poster = true"))
    line = env.log_line(ALONE, recipient=TESTING)
    assert line.endswith(f"status=delivered (0 recipients, {ONLY_THE_POSTER}) (rule accept)"), line
    assert env.sent() == []  # no sendmail call without recipients
    [event] = env.events()
    assert event["status"] == "delivered" and event["recipient_count"] == 0 and event["recipients"] == []
    assert event["error_message"] == ONLY_THE_POSTER  # what the mail log and the admin page show
    dry = env.deliver(ALONE.replace(b"<alone", b"<alone-dry"), TESTING, "instructor@example.edu", "--dry-run")
    assert f"decision: delivered: would deliver to 0 recipients ({ONLY_THE_POSTER})\n" in dry.stdout.decode()


def test_a_post_to_a_list_whose_members_are_all_suppressed(tmp_path):
    sendmail, calls = fake_sendmail(tmp_path)
    spool = tmp_path / "spool"
    snapshot = write_snapshot(tmp_path / "snapshot.sqlite",
                              [compiled_list(members=["gone@example.org"], posters=["prof@example.edu"])],
                              spool=spool, sendmail=str(sendmail), suppressed={"gone@example.org": "bounces"})
    post = b"From: prof@example.edu\nSubject: anyone\nMessage-ID: <sup@example.edu>\n\nhi\n"
    argv = ["--snapshot", str(snapshot), "--sender", "prof@example.edu", "--recipient", STUDENTS]
    line = D.deliver(D.parse(argv, D.OPTIONS, D.FLAGS), post)
    assert line.endswith("status=delivered (0 recipients, nobody was sent a copy: the list's only member is"
                         " suppressed after bounces) (rule accept)"), line
    assert list(calls.iterdir()) == []


def test_resubmission_is_a_duplicate_and_keeps_the_first_record(env):
    assert env.deliver(POST).returncode == 0
    again = env.deliver(POST)
    assert again.returncode == 0 and again.stderr == b""
    assert len(env.sent()) == 1
    [event] = env.events()  # the delivery's own record stands: a duplicate writes none over it
    assert event["status"] == "delivered" and event["recipient_count"] == 5
    assert env.log_line(POST) == ("duplicate: <post-1@example.edu> was already delivered to"
                                  " students@lists.example.edu; not sent again (rule duplicate)")
    assert env.events() == [event]


def test_a_duplicate_from_a_stranger_is_decided_by_duplicate(env):
    assert env.deliver(POST).returncode == 0
    # the same Message-ID again, now with a From that may not post: no refusal notice for a copy already sent
    stranger = POST.replace(b'"Jane Doe" <Instructor@example.edu>', b"stranger@example.org")
    assert env.log_line(stranger, sender="stranger@example.org").endswith("(rule duplicate)")
    assert len(env.sent()) == 1
    assert [e["status"] for e in env.events()] == ["delivered"]


def test_message_without_message_id_gets_one_for_tracing(env):
    post = b"From: instructor@example.edu\nSubject: no id\n\nhi\n"
    assert env.deliver(post).returncode == 0
    [(_, msg)] = env.sent()
    parsed = email.message_from_bytes(msg, policy=email.policy.default)
    assert parsed["Message-ID"].endswith("@lists.example.edu>")
    [event] = env.events()
    assert event["message_id"] == parsed["Message-ID"]
    assert event["id"] == stable_id("queue:4ABCDEF", STUDENTS)  # keyed by the queue id
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


# ---------------------------------------------------------------- failures and retries


def test_sendmail_failure_defers_then_delivers_once(env):
    (env.calls / "FAIL").touch()
    proc = env.deliver(POST)
    assert proc.returncode == 75
    line = proc.stderr.decode()
    assert line.startswith("4.3.0 sendmail failed after 0 of 5 recipients: ") and line.count("\n") == 1
    assert line.endswith("sendmail: fatal: simulated failure; will retry\n")
    [event] = env.events()
    assert event["status"] == "deferred" and event["error_message"] == line.strip()  # what pipe(8) was told
    assert event["subject"] == "hello there" and event["recipient_count"] == 0  # nobody has a copy yet
    (env.calls / "FAIL").unlink()
    assert env.deliver(POST).returncode == 0
    assert len(env.sent()) == 1
    [event] = env.events()  # the same record, now delivered
    assert event["status"] == "delivered" and event["recipient_count"] == 5


def test_a_retry_skips_the_recipients_already_accepted(env):
    SP.ensure(env.spool)
    with SP.Delivery(env.spool, "<post-1@example.edu>", STUDENTS) as progress:
        progress.record_batch(["alice@example.edu", "BOB@example.edu"], "4ABCDEF")
    assert env.deliver(POST).returncode == 0
    [(argv, _)] = env.sent()
    assert argv[6:] == ["Carol@Example.edu", "erin@example.edu", "ta.one@example.edu"]
    [event] = env.events()
    assert event["recipient_count"] == 5  # the event counts everyone the post went to


def test_a_corrupt_progress_record_is_set_aside_and_the_post_delivered(env):
    SP.ensure(env.spool)
    record = env.spool / "sent" / f"{SP.delivery_key('<post-1@example.edu>', STUDENTS)}.json"
    record.write_bytes(b'{"accepted": ["alice@exa\x00\xff')
    proc = env.deliver(POST)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == b""  # no traceback, no DSN
    [(argv, _)] = env.sent()
    assert argv[6:] == STUDENT_RECIPIENTS  # delivered afresh
    bad = sorted((env.spool / "sent" / "bad").iterdir())
    [moved] = [p for p in bad if not p.name.endswith(".reason")]
    assert moved.read_bytes() == b'{"accepted": ["alice@exa\x00\xff'
    assert [p.name for p in bad] == sorted([moved.name, moved.name + ".reason"])
    assert (moved.parent / (moved.name + ".reason")).read_text().startswith("unreadable progress record: ")
    assert json.loads(record.read_text())["done"] is True  # a fresh record replaces it
    [event] = env.events()
    assert event["status"] == "delivered"


@pytest.fixture
def big_list(tmp_path):
    """A list of 5,003 members in a snapshot written directly, and the fake sendmail."""
    sendmail, calls = fake_sendmail(tmp_path)
    members = [f"user{i:05d}@example.edu" for i in range(5003)]
    spool = tmp_path / "spool"
    snapshot = write_snapshot(tmp_path / "snapshot.sqlite",
                              [compiled_list(members=members, posters=["prof@example.edu"])],
                              spool=spool, sendmail=str(sendmail))
    return snapshot, spool, calls, members


def test_more_than_5000_recipients_second_batch_fails_then_retry_sends_the_rest(big_list):
    snapshot, spool, calls, members = big_list
    post = b"From: prof@example.edu\nSubject: to everyone\nMessage-ID: <big@example.edu>\n\nhi\n"
    argv = [str(DELIVER), "--snapshot", str(snapshot), "--sender", "prof@example.edu", "--recipient", STUDENTS,
            "--queue-id", "4BIG"]
    (calls / "FAIL_AT").write_text("1\n")  # the second call fails
    proc = subprocess.run(argv, input=post, capture_output=True, timeout=60)
    assert proc.returncode == 75
    assert proc.stderr.decode().startswith("4.3.0 sendmail failed after 5000 of 5003 recipients: ")
    assert proc.stderr.count(b"\n") == 1
    [first] = sorted(calls.glob("*.args"))
    assert first.read_text().splitlines()[6:] == members[:5000]
    progress = json.loads((spool / "sent" / f"{SP.delivery_key('<big@example.edu>', STUDENTS)}.json").read_text())
    assert progress["accepted"] == members[:5000] and progress["done"] is False
    [event] = [json.loads(p.read_text()) for p in (spool / "events").glob("*.json")]
    assert event["status"] == "deferred" and event["recipient_count"] == 5000  # the first batch went out

    (calls / "FAIL_AT").unlink()
    proc = subprocess.run(argv, input=post, capture_output=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    args = sorted(calls.glob("*.args"))
    assert len(args) == 2
    assert args[1].read_text().splitlines()[6:] == members[5000:]  # only the rest
    [event] = [json.loads(p.read_text()) for p in (spool / "events").glob("*.json")]
    assert event["status"] == "delivered" and event["recipient_count"] == 5003


def test_unknown_list_exits_67(env):
    proc = env.deliver(POST, recipient="nosuch@lists.example.edu")
    assert proc.returncode == 67
    assert proc.stderr.decode() == "5.1.1 <nosuch@lists.example.edu>: no such list here\n"
    assert env.sent() == [] and env.events() == []


def test_a_recipient_that_is_no_address_exits_67(env):
    proc = env.deliver(POST, recipient="nonsense")
    assert proc.returncode == 67
    assert proc.stderr.decode() == "5.1.1 'nonsense' is not a list address\n"


def test_missing_snapshot_defers(env):
    env.snapshot.unlink()
    proc = env.deliver(POST)
    assert proc.returncode == 75
    assert proc.stderr.decode() == (f"4.3.0 snapshot {env.snapshot} is missing (run listfilter sync);"
                                    " will retry\n")
    assert env.sent() == []


def test_wrong_command_line_defers(env):
    proc = subprocess.run([str(DELIVER), "--snapshot", str(env.snapshot), "--recipient", STUDENTS], input=POST,
                          capture_output=True, timeout=60)
    assert proc.returncode == 75
    assert proc.stderr.decode() == "4.3.5 missing --sender; will retry\n"


def test_the_mail_side_never_reads_the_config(env):
    # a config mid-edit, even one that is not TOML, does not matter: deliver reads the last sync's snapshot
    env.config.write_text("[site\n")
    assert env.deliver(POST).returncode == 0
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
    assert proc.returncode == 75 and proc.stderr.startswith(b"4.3.0 spool ")
    assert proc.stderr.endswith(b"; will retry\n")
    assert env.sent() == []


# ---------------------------------------------------------------- refusals, loops, service addresses


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
    assert event["status"] == "bounced" and event["rule"] == "poster"
    assert event["error_message"] == ("alice@example.edu is not allowed to post to students@lists.example.edu;"
                                      " notice sent to <alice@example.edu>")


def test_reply_to_and_sender_do_not_grant_posting(env):
    forged = (b"From: alice@example.edu\nSender: instructor@example.edu\nReply-To: instructor@example.edu\n"
              b"Subject: x\nMessage-ID: <forged@example.edu>\n\nhi\n")
    assert env.deliver(forged, sender="instructor@example.edu").returncode == 0
    [(argv, _)] = env.sent()
    assert argv[-1] == "instructor@example.edu" and "-XV" not in argv  # only the notice went out
    [event] = env.events()
    assert event["status"] == "bounced" and event["rule"] == "poster"


@pytest.mark.parametrize("sender,extra_header,why", [
    ("", b"", "null sender"),
    ("MAILER-DAEMON", b"", "null sender"),
    ("alice@example.edu", b"Auto-Submitted: auto-generated\n", "auto-submitted"),
    ("alice@example.edu", b"Precedence: bulk\n", "precedence bulk"),
    ("alice@example.edu", b"List-Id: <other.lists.example.org>\n", "list mail"),
    ("other-owner@example.org", b"", "role address"),
])
def test_no_notice_to_null_or_automatic_senders(env, sender, extra_header, why):
    msg = b"From: alice@example.edu\n" + extra_header + b"Subject: x\nMessage-ID: <auto@example.edu>\n\nhi\n"
    proc = env.deliver(msg, sender=sender)
    assert proc.returncode == 0, proc.stderr
    assert env.sent() == []
    [event] = env.events()
    assert event["status"] == "bounced" and event["error_message"].endswith(f"; no notice ({why})")


def test_notices_are_rate_limited_per_sender_per_day(env):
    for i in range(4):
        msg = f"From: alice@example.edu\nSubject: try {i}\nMessage-ID: <try-{i}@example.edu>\n\nhi\n".encode()
        assert env.deliver(msg, sender="alice@example.edu").returncode == 0
    assert len(env.sent()) == 2  # notice_limit = 2
    assert sum("no notice (notice limit reached (2 today))" in e["error_message"] for e in env.events()) == 2


def test_a_notice_that_cannot_be_sent_defers_and_gives_its_slot_back(env):
    stranger = b"From: alice@example.edu\nSubject: x\nMessage-ID: <s@example.edu>\n\nhi\n"
    (env.calls / "FAIL").touch()
    proc = env.deliver(stranger, sender="alice@example.edu")
    assert proc.returncode == 75
    assert proc.stderr.decode().startswith("4.3.0 cannot send the refusal notice: ")
    [event] = env.events()
    assert event["status"] == "deferred" and event["error_message"] == proc.stderr.decode().strip()
    (env.calls / "FAIL").unlink()
    for _ in range(2):  # both slots are still free
        assert env.deliver(stranger, sender="alice@example.edu").returncode == 0
    assert len(env.sent()) == 2
    [event] = env.events()  # the outcome replaced the deferral
    assert event["status"] == "bounced"


def test_loop_is_discarded_and_not_sent_again(env):
    looped = POST.replace(b"Subject:", b"List-Id: CS 199 Students <students.lists.example.edu>\nSubject:")
    proc = env.deliver(looped)
    assert proc.returncode == 0 and proc.stderr == b""
    assert env.sent() == []
    [event] = env.events()
    assert event["status"] == "discarded" and event["rule"] == "loop"
    assert event["error_message"] == ("message already carries students@lists.example.edu's List-Id;"
                                      " not sent again")


def test_the_echo_of_a_post_does_not_replace_its_delivery(env):
    assert env.deliver(POST).returncode == 0
    [(_, copy)] = env.sent()
    assert env.deliver(copy).returncode == 0  # the list's own copy comes back
    assert len(env.sent()) == 1
    statuses = sorted((e["status"], e["rule"]) for e in env.events())
    assert statuses == [("delivered", "accept"), ("discarded", "loop")]


def test_a_looped_post_from_a_stranger_is_decided_by_loop(env):
    looped = b"From: stranger@example.org\nX-Listfilter-Loop: students@lists.example.edu\nSubject: x\n\nhi\n"
    assert env.deliver(looped, sender="stranger@example.org").returncode == 0
    assert env.sent() == []  # no refusal notice either
    [event] = env.events()
    assert (event["status"], event["rule"]) == ("discarded", "loop")


def test_dry_run_prints_the_chain_and_sends_and_writes_nothing(env):
    proc = env.deliver(POST, STUDENTS, "instructor@example.edu", "--dry-run")
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout.decode()
    assert out.startswith("rule loop: pass\nrule duplicate: pass\nrule approved: pass\nrule held: pass\nrule poster: pass\n"
                          "rule authenticated: pass\n"
                          "decision: delivered: would deliver to 5 recipients\nrecipients (5):\n")
    assert "  bob@example.edu\n" in out and "List-Id:" in out
    assert env.sent() == [] and not env.spool.exists()


def test_dry_run_of_a_refused_post(env):
    proc = env.deliver(POST, STUDENTS, "alice@example.edu", "--dry-run")
    assert proc.returncode == 0, proc.stderr
    assert "decision: delivered: " in proc.stdout.decode()  # the From address decides, not the envelope sender
    stranger = POST.replace(b'"Jane Doe" <Instructor@example.edu>', b"alice@example.edu")
    out = env.deliver(stranger, STUDENTS, "alice@example.edu", "--dry-run").stdout.decode()
    assert "rule poster: refuse: alice@example.edu is not allowed to post to students@lists.example.edu\n" in out
    assert "decision: bounced: " in out and "Auto-Submitted: auto-replied" in out
    assert env.sent() == [] and not env.spool.exists()


def files_under(path: Path) -> dict[str, bytes]:
    return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}


@pytest.fixture
def syslog_calls(monkeypatch):
    """Every call of the syslog module, by any mail module (they all share it)."""
    import syslog

    calls = []
    for name in ("openlog", "syslog", "closelog", "setlogmask"):
        monkeypatch.setattr(syslog, name, lambda *a, name=name, **k: calls.append((name, a)))
    return calls


def dry_run_in_process(monkeypatch, capsysbinary, argv: list[str], message: bytes) -> tuple[int, bytes, bytes]:
    """listfilter-deliver's main() with --dry-run, in this process (so that the syslog spy sees it)."""
    import io

    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(message)))
    code = D.main([*argv, "--dry-run"])
    out, err = capsysbinary.readouterr()
    return code, out, err


REFUSED = POST.replace(b'"Jane Doe" <Instructor@example.edu>', b"alice@example.edu")


@pytest.mark.parametrize("recipient, sender, message, code, shows", [
    (STUDENTS, "instructor@example.edu", POST, 0, b"decision: delivered: would deliver to 5 recipients\n"),
    (STUDENTS, "alice@example.edu", REFUSED, 0, b"decision: bounced: "),
    ("students-owner@lists.example.edu", "alice@example.edu", POST, 0, b"decision: delivered: would forward"),
    # these three would log a line each in a real run
    ("students-bounces+alice=example.edu@lists.example.edu", "", POST, 0, b""),
    ("nosuch@lists.example.edu", "alice@example.edu", POST, 67, b""),
    (STUDENTS, "instructor@example.edu", b"", 0, b"decision: "),
])
def test_dry_run_writes_no_syslog_line_and_nothing_in_the_spool(env, monkeypatch, capsysbinary, syslog_calls,
                                                                  recipient, sender, message, code, shows):
    got, out, err = dry_run_in_process(monkeypatch, capsysbinary, env.argv(recipient, sender), message)
    assert got == code, err
    assert shows in out
    assert syslog_calls == []
    assert env.sent() == [] and not env.spool.exists()


def test_dry_run_failures_go_to_stderr_not_syslog(env, monkeypatch, capsysbinary, syslog_calls):
    env.snapshot.rename(env.snapshot.with_name("moved.sqlite"))
    got, out, err = dry_run_in_process(monkeypatch, capsysbinary, env.argv(STUDENTS, "instructor@example.edu"), POST)
    assert got == 75 and err.startswith(b"4.3.0 ") and err.count(b"\n") == 1, err
    env.snapshot.with_name("moved.sqlite").rename(env.snapshot)
    # a message the handling breaks on: its traceback goes to stderr in a dry run
    monkeypatch.setattr(D.R, "decide", lambda facts: 1 / 0)
    got, out, err = dry_run_in_process(monkeypatch, capsysbinary, env.argv(STUDENTS, "instructor@example.edu"), POST)
    assert got == 0 and b"ZeroDivisionError" in err and b"decision: discarded: " in out
    assert syslog_calls == []
    assert env.sent() == [] and not env.spool.exists()


def test_dry_run_of_a_delivered_post_changes_nothing_in_the_spool(env, monkeypatch, capsysbinary, syslog_calls):
    assert env.deliver(POST).returncode == 0
    bad = ALONE.replace(b"<alone", b"<broken-record")
    assert env.deliver(bad).returncode == 0
    [record] = [p for p in (env.spool / "sent").glob("*.json") if b"broken-record" in p.read_bytes()]
    record.write_text("not json")  # a real run would set this aside
    before = files_under(env.spool)
    got, out, _ = dry_run_in_process(monkeypatch, capsysbinary, env.argv(STUDENTS, "instructor@example.edu"), POST)
    assert got == 0 and b"decision: discarded: <post-1@example.edu> was already delivered" in out
    got, out, _ = dry_run_in_process(monkeypatch, capsysbinary, env.argv(STUDENTS, "instructor@example.edu"), bad)
    assert got == 0 and b"decision: delivered: " in out
    assert files_under(env.spool) == before
    assert syslog_calls == []


@pytest.mark.parametrize("recipient", ["students-request@lists.example.edu", "students-owner@lists.example.edu"])
def test_owner_and_request_mail_reach_the_owners(env, recipient):
    proc = env.deliver(POST, recipient, "alice@example.edu")
    assert proc.returncode == 0, proc.stderr
    [(argv, msg)] = env.sent()
    assert argv == ["-G", "-i", "-f", "alice@example.edu", "--", "instructor@example.edu"]
    assert msg == POST  # unchanged
    assert env.events() == []


def test_bounce_is_accepted_and_nothing_sent(env):
    dsn = b"From: MAILER-DAEMON@relay.example.edu\nSubject: Undelivered Mail\n\nsorry\n"
    proc = env.deliver(dsn, "students-bounces+alice=example.edu@lists.example.edu", "")
    assert proc.returncode == 0, proc.stderr
    assert env.sent() == []
    assert env.log_line(dsn, "students-bounces+alice=example.edu@lists.example.edu", "") == (
        "bounce for students@lists.example.edu from member alice@example.edu received; nothing sent")
