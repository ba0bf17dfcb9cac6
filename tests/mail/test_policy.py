"""The RCPT-time policy service: decisions, and the protocol on a real process."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from listfilter.mail import policy as P
from listfilter.common.snapshot import ListRow

from ..mail.test_deliver import Env

STUDENTS = ListRow("students@lists.example.edu", "students", "students", "lists.example.edu", "CS 199 Students",
                   "", "CS 199 Students", None, ("prof@example.edu",), "course instructor, ta", True, 6)
ALLOWED = {"prof@example.edu", "ta1@example.edu"}


def get_list(address):
    return STUDENTS if address == STUDENTS.address else None


def may_post(address, sender):
    return sender.lower() in ALLOWED


def request(**kw) -> dict:
    base = {"request": "smtpd_access_policy", "protocol_state": "RCPT", "sender": "prof@example.edu",
            "recipient": "students@lists.example.edu"}
    return {**base, **kw}


DECISIONS = [
    (request(), "DUNNO"),
    (request(sender="TA1@Example.EDU"), "DUNNO"),
    (request(recipient="Students+urgent@Lists.Example.EDU"), "DUNNO"),
    (request(sender="stranger@example.org"),
     "550 5.7.1 <stranger@example.org> may not post to <students@lists.example.edu>;"
     " only course instructor, ta may"),
    (request(sender=""), "550 5.7.1 <students@lists.example.edu> accepts no mail from the null sender"),
    (request(sender="", recipient="students-bounces+a=example.org@lists.example.edu"), "DUNNO"),  # bounces
    (request(sender="stranger@example.org", recipient="students-owner@lists.example.edu"), "DUNNO"),
    (request(sender="stranger@example.org", recipient="nosuch@lists.example.edu"), "DUNNO"),
    (request(sender="stranger@example.org", recipient="friend@example.org"), "DUNNO"),
    (request(sender="stranger@example.org", protocol_state="DATA"), "DUNNO"),
    ({"request": "junk", "recipient": "students@lists.example.edu"}, "DUNNO"),
    ({}, "DUNNO"),
]


@pytest.mark.parametrize("req,action", DECISIONS)
def test_decide(req, action):
    got, event = P.decide(req, get_list, may_post)
    assert got == action
    assert (event is not None) == action.startswith("550")
    if event:
        assert event["status"] == "rejected" and event["list_address"] == "students@lists.example.edu"
        assert event["error_message"] == action.removeprefix("550 5.7.1 ")


def test_parse_request_tolerates_malformed_lines():
    assert P.parse_request(["request=smtpd_access_policy", "garbage line", "=novalue", "sender=a=b@example.org"]) \
        == {"request": "smtpd_access_policy", "sender": "a=b@example.org"}


def converse(env: Env, text: str) -> tuple[str, subprocess.CompletedProcess]:
    proc = subprocess.run([sys.executable, "-m", "listfilter", "--config", str(env.config), "policy"],
                          input=text.encode(), capture_output=True, timeout=30)
    return proc.stdout.decode(), proc


def block(**kw) -> str:
    return "".join(f"{k}={v}\n" for k, v in request(**kw).items()) + "\n"


@pytest.fixture
def env(tmp_path):
    return Env(tmp_path)


def test_many_requests_on_one_connection(env):
    text = (block(sender="instructor@example.edu") + block(sender="stranger@example.org", queue_id="")
            + "this line is malformed\n\n" + "\n" + block(recipient="someone@example.org")
            + block(sender=""))
    out, proc = converse(env, text)
    assert proc.returncode == 0, proc.stderr
    assert out.split("\n\n")[:-1] == [
        "action=DUNNO",
        "action=550 5.7.1 <stranger@example.org> may not post to <students@lists.example.edu>;"
        " only course instructor, ta may",
        "action=DUNNO",  # the malformed block
        "action=DUNNO",
        "action=550 5.7.1 <students@lists.example.edu> accepts no mail from the null sender",
    ]
    events = [json.loads(p.read_text()) for p in (env.spool / "events").glob("*.json")]
    assert sorted(e["sender_email"] for e in events) == ["", "stranger@example.org"]
    assert all(e["status"] == "rejected" and e["recipient_count"] == 0 for e in events)


def test_missing_snapshot_answers_dunno(env):
    (env.config.parent / "state" / "snapshot.sqlite").unlink()
    out, proc = converse(env, block(sender="stranger@example.org"))
    assert proc.returncode == 0 and out == "action=DUNNO\n\n"


def test_new_snapshot_is_picked_up_mid_connection(env):
    policy = subprocess.Popen([sys.executable, "-m", "listfilter", "--config", str(env.config), "policy"],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        policy.stdin.write(block(sender="zoe@example.edu"))
        policy.stdin.flush()
        assert policy.stdout.readline().startswith("action=550 5.7.1")
        policy.stdout.readline()
        # zoe becomes a TA; sync replaces the snapshot while the connection is open
        roster = env.config.parent / "roster.csv"
        src = env.config.read_text()
        import re

        csv_path = re.search(r'csv = "([^"]+)"', src).group(1)
        roster.write_text(open(csv_path).read() + "zoe@example.edu,Zoe,ta,true,current,CS 199\n")
        env.config.write_text(src.replace(csv_path, str(roster)))
        subprocess.run([sys.executable, "-m", "listfilter", "--config", str(env.config), "sync"], check=True,
                       capture_output=True)
        policy.stdin.write(block(sender="zoe@example.edu"))
        policy.stdin.flush()
        assert policy.stdout.readline() == "action=DUNNO\n"
    finally:
        policy.stdin.close()
        policy.wait(timeout=10)


def test_policy_imports_nothing_heavy():
    proc = subprocess.run([sys.executable, "-X", "importtime", "-c", "import listfilter.policy, listfilter.launcher"],
                          capture_output=True, text=True)
    modules = {l.split("|")[-1].strip().split(".")[0] for l in proc.stderr.splitlines() if l.startswith("import time")}
    assert "listfilter" in modules
    assert not modules & {"click", "psycopg", "jinja2", "dns", "flufl"}
