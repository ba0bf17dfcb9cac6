"""listfilter.mail.policy: the RCPT-time policy service's decisions, and the protocol on a real process."""

from __future__ import annotations

import datetime as dt
import json
import subprocess
import sys
from pathlib import Path

import pytest

from listfilter.common.events import Event, from_json, valid_id
from listfilter.common.policyline import INFO_LIMIT, info_text
from listfilter.mail import policy as P

from . import list_row
from .test_deliver import Env

POLICY = Path(sys.executable).with_name("listfilter-policy")
STUDENTS = list_row(posters_rule="course instructor, ta")
ALLOWED = {"prof@example.edu", "ta1@example.edu"}
MAY_POST = "INFO listfilter: the sender may post (only course instructor, ta may)"


def get_list(address):
    return STUDENTS if address == STUDENTS.address else None


def may_post(address, sender):
    return sender.lower() in ALLOWED


def request(**kw) -> dict:
    base = {"request": "smtpd_access_policy", "protocol_state": "RCPT", "sender": "prof@example.edu",
            "recipient": "students@lists.example.edu", "client_address": "192.0.2.7", "queue_id": ""}
    return {**base, **kw}


DECISIONS = [
    (request(), MAY_POST),
    (request(sender="TA1@Example.EDU"), MAY_POST),
    (request(recipient="Students+urgent@Lists.Example.EDU"), MAY_POST),
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
    got, verdict = P.decide(req, get_list, may_post)
    assert got == action
    event = verdict if isinstance(verdict, Event) else None
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


ACCEPTS = [  # (request, the acceptance's reason); every DUNNO in DECISIONS has no verdict
    (request(), "the sender may post (only course instructor, ta may)"),
    (request(sender="TA1@Example.EDU", recipient="Students+urgent@Lists.Example.EDU", queue_id="4ABC"),
     "the sender may post (only course instructor, ta may)"),
]


@pytest.mark.parametrize("req,why", ACCEPTS)
def test_a_list_post_let_through_is_answered_info_for_smtpd_to_log(req, why):
    action, verdict = P.decide(req, get_list, may_post)
    assert isinstance(verdict, P.Accept)
    assert (verdict.list_address, verdict.reason) == ("students@lists.example.edu", why)
    assert action == f"INFO listfilter: {why}"  # not the sender's address: smtpd logs from=<…> itself


@pytest.mark.parametrize("setting, member", [("non_member_posts", False), ("non_poster_posts", True)])
def test_a_post_deliver_will_hold_is_accepted_and_says_so(setting, member):
    row = list_row(posters_rule="course instructor, ta", **{setting: "hold"})
    action, verdict = P.decide(request(sender="stranger@example.org"), lambda a: row, may_post,
                               lambda address, sender: member)
    assert action == f"INFO listfilter: held for the owners' approval ({setting} = hold)"
    assert verdict.reason == f"held for the owners' approval ({setting} = hold)"


@pytest.mark.parametrize("reason, text", [
    ("plain words", "listfilter: plain words"),
    ("two\nlines\r\n\tand  tabs ", "listfilter: two lines and tabs"),  # one line, as smtpd logs one
    ("a; from=<x@example.org>", "listfilter: a, from=<x@example.org>"),  # the first "; from=<" is smtpd's
    ("caf\u00e9 \x00\x7f", "listfilter: caf? ??"),  # printable ASCII only: Postfix would turn the rest into ?
    ("x" * 500, "listfilter: " + "x" * (INFO_LIMIT - len("listfilter: "))),
])
def test_info_text_is_one_short_printable_line(reason, text):
    assert info_text(reason) == text
    assert len(info_text(reason)) <= INFO_LIMIT


def test_a_posters_rule_postfix_would_mangle_is_cleaned_in_the_answer():
    row = list_row(posters_rule="Pr\u00fcfer;\nta")
    action, _ = P.decide(request(), lambda a: row, may_post)
    assert action == "INFO listfilter: the sender may post (only Pr?fer, ta may)"


@pytest.mark.parametrize("req,action", [(r, a) for r, a in DECISIONS if a == "DUNNO"])
def test_what_is_not_a_list_post_has_no_verdict(req, action):
    assert P.decide(req, get_list, may_post) == ("DUNNO", None)


class FakeSnapshot:
    def get_list(self, address):
        return get_list(address)

    def may_post(self, address, sender):
        return may_post(address, sender)

    def member(self, address, sender):
        return None

    def settings(self):
        return {"spool_dir": "/nonexistent/spool"}


@pytest.mark.parametrize("req, answer, logged", [
    # an acceptance is smtpd's to log (the INFO answer): one fact, one line, in Postfix's own log
    (request(queue_id="4ABC"), MAY_POST, []),
    (request(sender="stranger@example.org"),
     "550 5.7.1 <stranger@example.org> may not post to <students@lists.example.edu>; only course instructor, ta may",
     ["policy: reject: from=<stranger@example.org> to=<students@lists.example.edu>: <stranger@example.org>"
      " may not post to <students@lists.example.edu>; only course instructor, ta may"]),
    (request(recipient="students-owner@lists.example.edu"), "DUNNO", []),
    (request(recipient="nosuch@lists.example.edu"), "DUNNO", []),
    (request(protocol_state="DATA"), "DUNNO", []),
])
def test_the_service_logs_a_refusal_and_answers_an_acceptance_info(monkeypatch, req, answer, logged):
    lines = []
    monkeypatch.setattr(P.syslog, "syslog", lambda priority, text: lines.append((priority, text)))
    service = P.Service("/nonexistent/snapshot.sqlite")
    monkeypatch.setattr(service, "snapshot", FakeSnapshot)
    monkeypatch.setattr(service, "record", lambda snap, event: None)
    assert service.answer(req) == answer
    assert lines == [(P.syslog.LOG_NOTICE, text) for text in logged]


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
        "action=" + MAY_POST,
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
        assert policy.stdout.readline() == f"action={MAY_POST}\n"
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
