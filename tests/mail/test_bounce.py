"""Bounce handling: scoring rules, classification over sample bounces, and the command."""

from __future__ import annotations

import datetime as dt
import email
import json
import subprocess
import sys
from pathlib import Path

import pytest

from listfilter.mail import bounce as B

from ..conftest import REPO
from ..mail.test_deliver import Env

SAMPLES = Path(__file__).parent / "data" / "bounces"
D = dt.date(2026, 11, 2)


def days(*offsets: int) -> list[dt.date]:
    return [D + dt.timedelta(days=o) for o in offsets]


SCORING = [
    # bounce days (offsets), expected score, suppressed
    ([0], 1, False),
    ([0, 0, 0], 1, False),  # at most one point per day
    ([0, 1, 2, 3], 4, False),
    ([0, 1, 2, 3, 4], 5, True),  # the threshold
    ([0, 2, 4, 6, 8], 5, True),  # gaps of up to 7 days keep the run
    ([0, 1, 2, 3, 11], 1, False),  # last bounce more than 7 days old: start again
    ([0, 1, 2, 3, 11, 12, 13, 14, 15], 5, True),
    ([5, 3], 1, False),  # an older bounce arriving late does not count
]


@pytest.mark.parametrize("offsets,expected,suppressed", SCORING)
def test_scoring(offsets, expected, suppressed):
    state, newly_seen = None, []
    for day in days(*offsets):
        state, newly = B.score(state, day)
        newly_seen.append(newly)
    assert state["score"] == expected
    assert state["suppressed"] is suppressed
    assert newly_seen.count(True) == (1 if suppressed else 0)  # owners are told once


def test_suppressed_stays_suppressed_and_notifies_once():
    state = None
    for day in days(0, 1, 2, 3, 4, 5, 6):
        state, newly = B.score(state, day)
    assert state["score"] == 7 and state["suppressed"] and not newly


CLASSIFY = [
    # sample, VERP member, (permanent, temporary)
    ("postfix-550", "alice@example.edu", ({"alice@example.edu"}, set())),
    ("postfix-550", None, ({"alice@example.edu"}, set())),
    ("postfix-delayed", "bob@example.edu", (set(), {"bob@example.edu"})),
    ("vacation", "erin@example.edu", (set(), set())),
    ("exim-550", None, ({"ta1@example.edu"}, set())),
    ("exim-550", "TA1@Example.edu", ({"ta1@example.edu"}, set())),
    ("garbage", None, (set(), set())),
    ("garbage", "alice@example.edu", (set(), set())),
]


@pytest.mark.parametrize("sample,member,expected", CLASSIFY)
def test_classify_samples(sample, member, expected):
    message = email.message_from_bytes((SAMPLES / f"{sample}.eml").read_bytes())
    members = {"alice@example.edu", "bob@example.edu", "erin@example.edu", "ta1@example.edu"}
    assert B.classify(message, member, members) == expected


def test_non_member_addresses_do_not_count_without_verp():
    message = email.message_from_bytes((SAMPLES / "exim-550.eml").read_bytes())
    assert B.classify(message, None, {"alice@example.edu"}) == (set(), set())


def test_flufl_errors_are_caught(monkeypatch):
    import flufl.bounce

    def explode(msg):
        raise UnicodeDecodeError("utf-8", b"\xff", 0, 1, "bad")

    monkeypatch.setattr(flufl.bounce, "all_failures", explode)
    assert B.classify(email.message_from_string("Subject: x\n\nhi\n"), "a@example.edu", set()) == (set(), set())


# ---------------------------------------------------------------- the command


def run_bounce(env: Env, sample: str, recipient: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "listfilter", "--config", str(env.config), "bounce", "--recipient", recipient,
         "--queue-id", "B0UNCE"], input=(SAMPLES / f"{sample}.eml").read_bytes(), capture_output=True, timeout=60)


@pytest.fixture
def env(tmp_path):
    return Env(tmp_path)


def test_bounce_command_scores_and_suppresses(env):
    verp = "students-bounces+alice=example.edu@lists.example.edu"
    for i in range(5):
        proc = run_bounce(env, "postfix-550", verp)
        assert proc.returncode == 0, proc.stderr
        state = json.loads((env.spool / "bounces" / "alice@example.edu").read_text())
        assert state["score"] == i + 1
        if i < 4:  # simulate the clock: the last bounce was yesterday
            state["last_bounce"] = (dt.date.fromisoformat(state["last_bounce"]) - dt.timedelta(days=1)).isoformat()
            (env.spool / "bounces" / "alice@example.edu").write_text(json.dumps(state))
    assert (env.spool / "suppressed" / "alice@example.edu").exists()
    # the owners got exactly one notice, from a null sender; nothing went to the bouncing member
    [(argv, notice)] = env.sent()
    assert argv == ["-G", "-i", "-f", "<>", "--", "instructor@example.edu"]
    parsed = email.message_from_bytes(notice)
    assert parsed["Subject"] == "alice@example.edu no longer receives CS 199 Students mail (bouncing)"
    assert "listfilter bounces clear alice@example.edu" in parsed.get_payload(decode=True).decode()
    # deliver now skips alice on every list
    post = b"From: instructor@example.edu\nSubject: next\nMessage-ID: <after@example.edu>\n\nhi\n"
    assert env.deliver(post).returncode == 0
    argv, _ = env.sent()[-1]
    assert "alice@example.edu" not in argv and "bob@example.edu" in argv
    # the CLI shows and clears it
    listfilter = [sys.executable, "-m", "listfilter", "--config", str(env.config)]
    shown = json.loads(subprocess.run(listfilter + ["bounces", "--json"], capture_output=True, text=True).stdout)
    assert shown["suppressed"] == ["alice@example.edu"]
    assert shown["scores"][0]["score"] == 5
    cleared = subprocess.run(listfilter + ["bounces", "clear", "Alice@example.edu"], capture_output=True, text=True)
    assert cleared.returncode == 0 and "suppression lifted" in cleared.stdout
    assert not (env.spool / "suppressed" / "alice@example.edu").exists()
    assert env.deliver(post.replace(b"after@", b"after2@")).returncode == 0
    assert "alice@example.edu" in env.sent()[-1][0]


@pytest.mark.parametrize("sample,recipient", [
    ("postfix-delayed", "students-bounces+bob=example.edu@lists.example.edu"),
    ("vacation", "students-bounces+erin=example.edu@lists.example.edu"),
    ("garbage", "students-bounces@lists.example.edu"),
])
def test_temporary_vacation_and_garbage_never_count(env, sample, recipient):
    for _ in range(6):
        proc = run_bounce(env, sample, recipient)
        assert proc.returncode == 0, proc.stderr
    assert not (env.spool / "bounces").exists() or not any((env.spool / "bounces").iterdir())
    assert env.sent() == []  # nothing is ever sent in reply to a bounce


def test_bounce_state_not_writable_defers(env):
    env.spool.mkdir(parents=True, exist_ok=True)
    (env.spool / "events").write_text("not a directory")  # spool.ensure fails, as for an unwritable spool
    proc = run_bounce(env, "postfix-550", "students-bounces+alice=example.edu@lists.example.edu")
    assert proc.returncode == 75 and b"spool" in proc.stderr


def test_bounce_for_unknown_list_is_dropped(env):
    proc = run_bounce(env, "postfix-550", "nolist-bounces+alice=example.edu@lists.example.edu")
    assert proc.returncode == 0
    assert env.sent() == []
