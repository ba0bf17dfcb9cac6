"""`listfilter trace` over the real log samples (tests/data/postfixlog/, see its README), which hold
listfilter's own syslog lines too; tests/integration/test_trace.py runs it through a real Postfix."""

from __future__ import annotations

import datetime as dt
import json

import pytest

from listfilter.cli import trace as T
from listfilter.sync.postfixlog import parse_line

from ..conftest import REPO
from .runner import listfilter

DATA = REPO / "tests" / "data" / "postfixlog"
TRACE_ID = "<trace-1796160284316569538@example.edu>"
CLUB = "club@lists.example.edu"
STUDENTS = "students@lists.example.edu"


@pytest.fixture(autouse=True)
def utc_host(monkeypatch):
    """The samples were written on a UTC host: their traditional timestamps are read in UTC."""
    monkeypatch.setenv("TZ", "UTC")
    monkeypatch.setattr(T, "_ZONE", None)


def test_lines_without_a_zone_are_read_in_the_hosts_zone_as_the_follower_reads_them(example_config, monkeypatch):
    monkeypatch.setenv("TZ", "America/Chicago")
    a = trace_json(example_config, "--log", str(DATA / "trace.log"), TRACE_ID)  # "Dec  1 21:24:44": CST
    b = trace_json(example_config, "--log", str(DATA / "trace-iso.log"), TRACE_ID)  # ISO, with its zone
    assert a["posts"][0]["lists"][0]["decision"]["time"] == "2026-12-02T03:24:44+00:00"
    assert b["posts"][0]["lists"][0]["decision"]["time"] == "2026-12-01T21:24:44+00:00"


def trace(config, *args):
    ran = listfilter(config, "trace", *args)
    assert ran.returncode == 0, ran.stderr
    return ran.stdout


def trace_json(config, *args) -> dict:
    return json.loads(trace(config, "--json", *args))


@pytest.mark.parametrize("what, kind", [
    ("<a@b>", "message-id"), ("a@b", "message-id"), ("81D6820F162", "queue-id"), ("SINK000001", "queue-id"),
    ("3Pt2mN2VXxznjll", "queue-id"), ("eea2951da1c432f798f162e037dca1c1", "event-id"),
    ("123e4567-e89b-12d3-a456-426614174000", "event-id"),
])
def test_what_the_argument_names(what, kind):
    assert T.classify(what) == kind


def test_the_whole_story_from_the_log(example_config):
    text = trace(example_config, "--log", str(DATA / "trace.log"), TRACE_ID)
    assert "(times America/Chicago)" in text
    assert ("2026-12-01 15:24:44  received 696DF20F157 from localhost[127.0.0.1], envelope from <prof@example.edu>,"
            " 434 bytes, 1 recipient(s)") in text, text
    assert f"RCPT <{CLUB}>: accepted" in text
    assert (f"postfix-test/pipe: to=<{CLUB}> relay=listfilter, delay=0.18, delays=0.06/0.01/0/0.11, dsn=2.0.0,"
            " status=sent (delivered via listfilter service)") in text
    assert f"listfilter on <{CLUB}>: delivered (3 recipients), rule accept  [log]" in text
    assert "reinjected 81D6820F162 from <club-bounces@lists.example.edu>, 3 recipient(s): 1 bounced, 2 sent" in text
    lines = text.splitlines()
    later = next(i for i, ln in enumerate(lines) if "later@example.org" in ln)
    assert "deferred" in lines[later] and "451 4.7.1 Greylisted" in lines[later]
    assert lines[later + 1].startswith("2026-12-01 15:24:45") and "queued as SINK000002" in lines[later + 1]
    assert "non-delivery notification 8B62420F167; to=<club-bounces+gone=example.org@lists.example.edu> sent" in text
    assert "81D6820F162 done (removed from the queue)" in text


def test_json_from_either_timestamp_form_is_the_same(example_config):
    a = trace_json(example_config, "--log", str(DATA / "trace.log"), TRACE_ID)
    b = trace_json(example_config, "--log", str(DATA / "trace-iso.log"), TRACE_ID)
    assert a["posts"] == b["posts"]
    [post] = a["posts"]
    [lst] = post["lists"]
    assert lst["decision"] == {"source": "log", "time": "2026-12-01T21:24:44+00:00", "status": "delivered",
                               "rule": "accept", "detail": "3 recipients", "text": lst["decision"]["text"]}
    [copy] = lst["reinjected"]
    members = {m["address"]: m for m in copy["members"]}
    assert [(a["status"], a["dsn"], a["queued_as"]) for a in members["later@example.org"]["attempts"]] == [
        ("deferred", "4.7.1", ""), ("sent", "2.0.0", "SINK000002")]
    assert members["gone@example.org"]["attempts"][0]["reply"] == (
        "host 127.0.0.1[127.0.0.1] said: 550 5.1.1 No such user here (in reply to RCPT TO command)")


@pytest.mark.parametrize("what", ["696DF20F157", "81D6820F162", "SINK000001", "SINK000002"])
def test_any_queue_id_of_the_post_gives_the_same_account(example_config, what):
    by_message_id = trace_json(example_config, "--log", str(DATA / "trace.log"), TRACE_ID)
    assert trace_json(example_config, "--log", str(DATA / "trace.log"), what)["posts"] == by_message_id["posts"]


def test_a_post_listfilter_deferred_then_delivered(example_config):
    [post] = trace_json(example_config, "--log", str(DATA / "mailflow.log"), "t4@example.edu")["posts"]
    assert [d["status"] for d in post["deliveries"]] == ["deferred", "sent"]
    [lst] = post["lists"]
    assert lst["decision"]["status"] == "delivered"
    assert any(x["text"].startswith("4.3.0 snapshot ") for x in lst["listfilter_lines"])
    [copy] = lst["reinjected"]
    assert copy["queue_id"] == "27B4220E0A4" and copy["counts"] == {"sent": 5}


def test_a_refused_from_address(example_config):
    [post] = trace_json(example_config, "--log", str(DATA / "mailflow.log"), "<t2@example.edu>")["posts"]
    [lst] = post["lists"]
    assert (lst["decision"]["status"], lst["decision"]["rule"]) == ("bounced", "poster")
    assert lst["reinjected"] == []


def test_a_refusal_at_rcpt_time_from_its_record():
    lines = [parse_line(ln) for ln in (DATA / "mailflow.log").read_text().splitlines()]
    rejects = [ln for ln in lines if ln.queue_id is None and "reject" in ln.text]
    entry = {"id": "e" * 32, "status": "rejected", "list_address": STUDENTS, "envelope_sender": "stranger@example.org",
             "client_address": "127.0.0.1", "rule": "poster", "message_id": "", "queue_id": "",
             "created_at": dt.datetime(2026, 12, 1, 21, 25, 4, tzinfo=dt.timezone.utc),
             "error_message": "<stranger@example.org> may not post", "recipient_count": 0}
    account = T.build_refusal(entry, rejects)
    assert [r["program"] for r in account["refused"]["log"]] == ["listfilter", "postfix-test/smtpd"]
    text = T.render(account)
    assert "refused at RCPT: <stranger@example.org> to <students@lists.example.edu> from 127.0.0.1 (rule poster)" in text
    assert "550 5.7.1 <students@lists.example.edu>: Recipient address rejected" in text


def test_standard_input(example_config):
    ran = listfilter(example_config, "trace", "--json", "--log", "-", TRACE_ID,
                     input=(DATA / "trace-iso.log").read_bytes())
    assert ran.returncode == 0, ran.stderr
    assert json.loads(ran.stdout)["posts"][0]["queue_id"] == "696DF20F157"


def test_since_leaves_out_earlier_lines(example_config):
    ran = listfilter(example_config, "trace", "--log", str(DATA / "trace.log"), "--since", "2026-12-02", TRACE_ID)
    assert ran.returncode == 1 and "not found in" in ran.stderr and "since 2026-12-02" in ran.stderr


def test_an_unreadable_log_says_which_and_where_to_look(example_config, tmp_path):
    ran = listfilter(example_config, "trace", "--log", str(tmp_path / "nope.log"), TRACE_ID)
    assert ran.returncode == 1
    assert f"{tmp_path / 'nope.log'}: No such file or directory" in ran.stderr
    assert "docs/operations.md" in ran.stderr


def test_an_event_id_the_store_does_not_have(example_config):
    assert listfilter(example_config, "db", "upgrade").returncode == 0
    ran = listfilter(example_config, "trace", "--log", str(DATA / "trace.log"), "0" * 32)
    assert ran.returncode == 1 and f"no event {'0' * 32} in the mail log store" in ran.stderr


def info(time: str, sender: str = "prof@example.edu", client: str = "localhost[127.0.0.1]", qid: str = "NOQUEUE",
         pid: int = 6978, why: str = "listfilter: the sender may post (only course instructor may)") -> str:
    """smtpd's line for the policy service's ``action=INFO`` answer, as the private Postfix of
    tests/integration/test_trace.py logs it (the post of trace.log came through smtpd[6978])."""
    return (f"Dec 01 {time} mail postfix-test/smtpd[{pid}]: {qid}: info: RCPT from {client}: {why};"
            f" from=<{sender}> to=<{CLUB}> proto=ESMTP helo=<vm>")


def policy_of(tmp_path, *extra: str) -> tuple[dict, str]:
    """The trace sample with ``extra`` lines put before smtpd's "696DF20F157: client=" line (21:24:44)."""
    raw = (DATA / "trace.log").read_text().splitlines()
    at = next(i for i, ln in enumerate(raw) if "696DF20F157: client=" in ln)
    log = tmp_path / "mail.log"
    log.write_text("\n".join(raw[:at] + list(extra) + raw[at:]) + "\n")
    message_id, lines = T.gather([log], TRACE_ID, "message-id")
    account = T.build(message_id, lines)
    return account["posts"][0]["lists"][0]["policy"], T.render(account)


def test_smtpds_info_line_for_the_policy_service_is_the_rcpt_verdict(tmp_path):
    policy, text = policy_of(tmp_path, info("21:20:00", sender="Prof@Example.EDU"), info("21:24:44"))
    assert policy == {"verdict": "accepted by the policy service: the sender may post (only course instructor may)",
                      "refusals": [], "source": "log", "time": "2026-12-01T21:24:44+00:00",
                      "reason": "the sender may post (only course instructor may)",
                      "text": info("21:24:44").partition("NOQUEUE: ")[2]}
    assert (f"2026-12-01 21:24:44  RCPT <{CLUB}>: accepted by the policy service: the sender may post"
            " (only course instructor may)\n") in text, text
    assert "no policy line found" not in text


def test_an_info_line_after_the_first_rcpt_is_matched_by_its_queue_id(tmp_path):
    raw = (DATA / "trace.log").read_text().splitlines()
    at = next(i for i, ln in enumerate(raw) if "696DF20F157: client=" in ln) + 1
    log = tmp_path / "mail.log"
    log.write_text("\n".join(raw[:at] + [info("21:24:44", qid="696DF20F157")] + raw[at:]) + "\n")
    account = T.build(*T.gather([log], TRACE_ID, "message-id"))
    policy = account["posts"][0]["lists"][0]["policy"]
    assert (policy["source"], policy["text"]) == ("log", info("21:24:44").partition("NOQUEUE: ")[2])


@pytest.mark.parametrize("line", [
    info("21:24:44", sender="stranger@example.org"),  # another sender
    info("21:24:44", client="mx.example.org[192.0.2.7]"),  # another client
    info("21:24:44", pid=7001),  # another smtpd process: another session
    info("21:19:43"),  # more than five minutes before the post's client= line
    info("21:24:45"),  # after it, without a queue id: a later session's
    info("21:24:44", qid="5A5A5A5A5A"),  # another post's queue id (gather leaves it out)
    info("21:24:44").replace(CLUB, STUDENTS),  # another list
    info("21:24:44", why="tagged by the site's own check_client_access"),  # an INFO that is not listfilter's
])
def test_an_info_line_of_another_post_is_not_this_ones(tmp_path, line):
    policy, text = policy_of(tmp_path, line)
    assert (policy["verdict"], policy["source"], policy["time"]) == ("accepted", "inferred", "")
    assert f"RCPT <{CLUB}>: accepted (no policy line found)" in text, text


def test_a_post_submitted_locally_had_no_rcpt_and_gets_no_policy_verdict(tmp_path):
    raw = [ln.replace("postfix-test/smtpd[6978]: 696DF20F157: client=localhost[127.0.0.1]",
                      "postfix-test/pickup[6978]: 696DF20F157: uid=1000 from=<prof@example.edu>")
           for ln in (DATA / "trace.log").read_text().splitlines()]
    log = tmp_path / "mail.log"
    log.write_text("\n".join([info("21:24:44"), *raw]) + "\n")
    account = T.build(*T.gather([log], TRACE_ID, "message-id"))
    [post] = account["posts"]
    assert post["submitted_by_uid"] == "1000" and post["lists"][0]["policy"]["source"] == "inferred"
    assert "RCPT <" not in T.render(account)
