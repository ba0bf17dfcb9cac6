"""listfilter.mail.policy: the RCPT-time policy service's decisions, and the protocol on a real process."""

from __future__ import annotations

import datetime as dt
import json
import subprocess
import sys
from pathlib import Path

import pytest

from listfilter.common.events import Event, from_json, valid_id
from listfilter.mail import policy as P

from . import list_row
from .test_deliver import Env

POLICY = Path(sys.executable).with_name("listfilter-policy")
STUDENTS = list_row(posters_rule="course instructor, ta")
ALLOWED = {"prof@example.edu", "ta1@example.edu"}


def get_list(address):
    return STUDENTS if address == STUDENTS.address else None


def may_post(address, sender):
    return sender.lower() in ALLOWED


def request(**kw) -> dict:
    base = {"request": "smtpd_access_policy", "protocol_state": "RCPT", "sender": "prof@example.edu",
            "recipient": "students@lists.example.edu", "client_address": "192.0.2.7", "queue_id": ""}
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
        assert isinstance(event, Event)
        assert (event.status, event.rule, event.list_address) == ("rejected", "policy", "students@lists.example.edu")
        assert event.error_message == action.removeprefix("550 5.7.1 ")
        assert event.sender_email == event.envelope_sender == req["sender"]
        assert event.client_address == "192.0.2.7" and event.list_display_name == "CS 199 Students"
        assert valid_id(event.id) and len(event.id) == 32
        assert dt.datetime.fromisoformat(event.created_at).tzinfo is not None
        assert from_json(event.to_json()) == event  # what ingest reads back


def test_each_rejection_is_its_own_record():
    _, first = P.decide(request(sender="stranger@example.org"), get_list, may_post)
    _, second = P.decide(request(sender="stranger@example.org"), get_list, may_post)
    assert first.id != second.id  # nothing was queued: no message to key a record on


def test_decide_records_the_queue_id_when_postfix_has_one():
    _, event = P.decide(request(sender="stranger@example.org", queue_id="4ABC"), get_list, may_post)
    assert event.queue_id == "4ABC"


def test_parse_request_tolerates_malformed_lines():
    assert P.parse_request(["request=smtpd_access_policy", "garbage line", "=novalue", "sender=a=b@example.org"]) \
        == {"request": "smtpd_access_policy", "sender": "a=b@example.org"}


def converse(env: Env, text: str) -> tuple[str, subprocess.CompletedProcess]:
    proc = subprocess.run([str(POLICY), "--snapshot", str(env.snapshot)], input=text.encode(),
                          capture_output=True, timeout=30)
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
    assert all(e["status"] == "rejected" and e["recipient_count"] == 0 and e["rule"] == "policy" for e in events)
    assert {e["client_address"] for e in events} == {"192.0.2.7"}


def test_missing_snapshot_answers_dunno(env):
    env.snapshot.unlink()
    out, proc = converse(env, block(sender="stranger@example.org"))
    assert proc.returncode == 0 and out == "action=DUNNO\n\n"


def test_a_rejection_that_cannot_be_recorded_still_stands(env):
    env.spool.mkdir(parents=True, exist_ok=True)
    (env.spool / "events").write_text("not a directory")
    out, proc = converse(env, block(sender="stranger@example.org"))
    assert proc.returncode == 0 and out.startswith("action=550 5.7.1 <stranger@example.org> may not post")


def test_a_wrong_command_line_fails_the_service():
    proc = subprocess.run([str(POLICY), "--snapshot"], input=b"", capture_output=True, timeout=30)
    assert proc.returncode == 75
    assert proc.stderr.decode() == "4.3.5 option --snapshot needs a value\n"


def test_new_snapshot_is_picked_up_mid_connection(env):
    policy = subprocess.Popen([str(POLICY), "--snapshot", str(env.snapshot)],
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


def test_a_rejection_records_the_helo_name_when_postfix_sends_one():
    _, event = P.decide(request(sender="stranger@example.org", helo_name="mx.example.org"), get_list, may_post)
    assert (event.client_address, event.helo_name, event.envelope_sender) == (
        "192.0.2.7", "mx.example.org", "stranger@example.org")
    assert from_json(event.to_json()).helo_name == "mx.example.org"
    _, event = P.decide(request(sender="stranger@example.org"), get_list, may_post)
    assert event.helo_name == ""
