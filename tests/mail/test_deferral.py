"""A post that ``listfilter-deliver`` defers (exit 75) leaves a ``deferred`` event, one per (message, list).

Run as pipe(8) runs it (a process: the exit code and the stderr line are the
point), against docs/example synced into a temporary state directory, with
sendmail faked (tests/mail/test_deliver.py's Env).
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from listfilter.common import spool as SP
from listfilter.common.events import stable_id

from .test_deliver import DELIVER, POST, STUDENTS, Env

KEY = "<post-1@example.edu>"


@pytest.fixture
def env(tmp_path):
    assert DELIVER.is_file(), f"{DELIVER} is missing: pip install -e ."
    return Env(tmp_path)


def sync(env) -> None:
    proc = subprocess.run([sys.executable, "-m", "listfilter", "--config", str(env.config), "sync"],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


def files(env) -> list[str]:
    return sorted(p.name for p in (env.spool / "events").glob("*.json"))


def test_missing_snapshot_leaves_a_deferred_event_that_the_delivery_replaces(env):
    SP.ensure(env.spool)  # sync made it; deliver would have
    env.snapshot.unlink()
    proc = env.deliver(POST)
    assert proc.returncode == 75
    line = proc.stderr.decode().strip()
    assert line == f"4.3.0 snapshot {env.snapshot} is missing (run listfilter sync); will retry"
    ident = stable_id(KEY, STUDENTS)
    assert files(env) == [f"{ident}.deferred.json"]
    [event] = env.events()
    assert (event["id"], event["status"], event["error_message"]) == (ident, "deferred", line)
    assert event["subject"] == "hello there" and event["sender_email"] == "Instructor@example.edu"
    assert event["sender_name"] == "Jane Doe" and event["envelope_sender"] == "instructor@example.edu"
    assert event["queue_id"] == "4ABCDEF" and event["message_id"] == KEY and event["recipient_count"] == 0
    assert event["body"] == "Body line\n" and env.sent() == []
    # Postfix retries for days: the one record is updated, not multiplied
    first = event["created_at"]
    for _ in range(3):
        assert env.deliver(POST).returncode == 75
    assert files(env) == [f"{ident}.deferred.json"] and env.events()[0]["created_at"] >= first
    # the snapshot is back: the retry delivers, and its record replaces the deferral
    sync(env)
    assert env.deliver(POST).returncode == 0
    assert files(env) == [f"{ident}.json"]
    [event] = env.events()
    assert event["status"] == "delivered" and event["recipient_count"] == 5


def test_a_post_without_message_id_is_named_by_its_queue_id_in_both_records(env):
    post = b"From: instructor@example.edu\nSubject: no id\n\nhi\n"
    SP.ensure(env.spool)  # sync made it; deliver would have
    env.snapshot.unlink()
    assert env.deliver(post).returncode == 75
    [deferred] = env.events()
    assert deferred["id"] == stable_id("queue:4ABCDEF", STUDENTS) and deferred["message_id"] == ""
    sync(env)
    assert env.deliver(post).returncode == 0
    [delivered] = env.events()
    assert delivered["id"] == deferred["id"] and delivered["status"] == "delivered"


def test_without_the_snapshot_the_spool_comes_from_the_command_line(env, tmp_path):
    other = tmp_path / "elsewhere"
    other.mkdir()  # the spool, not yet its subdirectories
    env.snapshot.unlink()
    proc = env.deliver(POST, STUDENTS, "instructor@example.edu", "--spool", str(other))
    assert proc.returncode == 75
    [record] = (other / "events").glob("*.json")
    assert json.loads(record.read_text())["status"] == "deferred"
    assert not (env.spool / "events").exists() or files(env) == []


def test_a_spool_that_does_not_exist_is_not_made_and_the_deferral_stands(env, tmp_path):
    env.snapshot.unlink()
    proc = env.deliver(POST, STUDENTS, "instructor@example.edu", "--spool", str(tmp_path / "nowhere"))
    assert proc.returncode == 75  # the same ending, with syslog as the only record
    assert proc.stderr.decode() == f"4.3.0 snapshot {env.snapshot} is missing (run listfilter sync); will retry\n"
    assert not (tmp_path / "nowhere").exists()


def test_a_deferred_second_copy_does_not_erase_the_first_copys_delivery(env):
    assert env.deliver(POST).returncode == 0
    # the same Message-ID again, deferred (the snapshot is gone, so no rule runs) while the first
    # copy's record still waits in the spool for ingest
    env.snapshot.unlink()
    assert env.deliver(POST).returncode == 75
    ident = stable_id(KEY, STUDENTS)
    assert files(env) == [f"{ident}.deferred.json", f"{ident}.json"]
    assert json.loads((env.spool / "events" / f"{ident}.json").read_text())["status"] == "delivered"


@pytest.mark.parametrize("recipient", ["students-owner@lists.example.edu", "students-bounces@lists.example.edu"])
def test_mail_that_has_no_rows_gets_no_deferred_row(env, recipient):
    env.snapshot.unlink()
    env.spool.joinpath("events").mkdir(parents=True, exist_ok=True)
    assert env.deliver(POST, recipient, "alice@example.edu").returncode == 75
    assert files(env) == []


def test_a_dry_run_records_nothing(env):
    env.snapshot.unlink()
    env.spool.joinpath("events").mkdir(parents=True, exist_ok=True)
    assert env.deliver(POST, STUDENTS, "instructor@example.edu", "--dry-run").returncode == 75
    assert files(env) == []
