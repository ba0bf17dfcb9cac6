"""Check-then-record on the spool holds when Postfix runs many filters at once.

Postfix starts up to ``maxproc`` deliveries of one transport at a time (the
default process limit is 100), so these run the real ``listfilter-deliver``
command as many concurrent processes against one snapshot and one spool, with
a recording stand-in for sendmail (the unit under test is the filter, not
Postfix's sendmail). Each test also fails when the lock or the exclusive slot
it relies on is taken away (checked by hand: replace ``claim_notice``'s
``O_EXCL`` with a count-then-create, or drop ``Delivery``'s flock, and the
counts go over).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from ..conftest import REPO

DELIVER = str(Path(sys.executable).parent / "listfilter-deliver")
STUDENTS = "students@lists.example.edu"
ROSTER = f'source = "csv"\ncsv = "{REPO / "docs/example/roster.csv"}"'

# Records every submission: one JSON line with its argv and the message's first header lines.
RECORDING_SENDMAIL = """#!/bin/sh
msg=$(cat)
printf '%s\\n' "$*" >> "{log}"
exit 0
"""

LISTS = """
[domains."lists.example.edu"]
course = "CS 199"

[lists.students]
display_name = "CS 199 Students"
members = { roles = ["applied", "student", "teacher", "ta"] }
posters = { roles = ["instructor"] }
"""


@pytest.fixture
def site(make_config, tmp_path):
    log = tmp_path / "sendmail.log"
    sendmail = tmp_path / "sendmail"
    sendmail.write_text(RECORDING_SENDMAIL.format(log=log))
    sendmail.chmod(0o755)
    config = make_config(LISTS, site=f'sendmail = "{sendmail}"\nnotice_limit = 3', roster=ROSTER)
    proc = subprocess.run([sys.executable, "-m", "listfilter", "--config", str(config), "sync"],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    return tmp_path, log


def post(sender: str, msgid: str) -> bytes:
    return (f"From: {sender}\nTo: {STUDENTS}\nSubject: race\nMessage-ID: <{msgid}>\n\nbody\n").encode()


def deliver_all(base: Path, messages: list[tuple[str, bytes]]) -> list[subprocess.CompletedProcess]:
    """Start every delivery at once; wait for all."""
    procs = [subprocess.Popen([DELIVER, "--snapshot", str(base / "state" / "snapshot.sqlite"), "--sender", sender,
                               "--recipient", STUDENTS, "--queue-id", f"Q{n}"],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
             for n, (sender, _) in enumerate(messages)]
    with ThreadPoolExecutor(len(procs)) as pool:
        outs = list(pool.map(lambda pm: pm[0].communicate(pm[1][1], timeout=120), zip(procs, messages)))
    return [subprocess.CompletedProcess(p.args, p.returncode, o, e) for p, (o, e) in zip(procs, outs)]


def submissions(log: Path) -> list[str]:
    return log.read_text().splitlines() if log.exists() else []


def events(base: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in (base / "state" / "spool" / "events").glob("*.json")]


def test_twenty_refused_posts_at_once_send_at_most_the_notice_limit(site):
    base, log = site
    results = deliver_all(base, [("stranger@example.org", post("stranger@example.org", f"r{n}@x"))
                                 for n in range(20)])
    assert [r.returncode for r in results] == [0] * 20, [r.stderr for r in results]
    notices = [s for s in submissions(log) if s.startswith("-G -i -f <>")]
    assert len(notices) == 3, notices  # notice_limit = 3, however many ran at once
    evs = events(base)
    assert len(evs) == 20 and {e["status"] for e in evs} == {"bounced"}
    assert sum("notice sent" in e["error_message"] for e in evs) == 3
    assert sum("notice limit reached" in e["error_message"] for e in evs) == 17


def test_the_same_post_delivered_ten_times_at_once_goes_out_once(site):
    base, log = site
    raw = post("Jane Doe <instructor@example.edu>", "same@x")
    results = deliver_all(base, [("instructor@example.edu", raw)] * 10)
    assert [r.returncode for r in results] == [0] * 10, [r.stderr for r in results]
    sent = submissions(log)
    assert len(sent) == 1, sent  # one submission, for all members
    assert "-XV" in sent[0] and "alice@example.edu" in sent[0]
    [event] = events(base)  # one (message, list): one record, and it says delivered
    assert event["status"] == "delivered" and event["rule"] == "accept"


def test_a_corrupt_progress_record_is_set_aside_and_the_post_delivered(site):
    base, log = site
    raw = post("Jane Doe <instructor@example.edu>", "corrupt@x")
    from listfilter.common.spool import delivery_key

    sent_dir = base / "state" / "spool" / "sent"
    sent_dir.mkdir(parents=True, exist_ok=True)
    (sent_dir / f"{delivery_key('<corrupt@x>', STUDENTS)}.json").write_bytes(b"{not json")
    [result] = deliver_all(base, [("instructor@example.edu", raw)])
    assert result.returncode == 0, result.stderr
    assert result.stderr == b""  # no traceback, nothing for Postfix to log as a failure
    assert len(submissions(log)) == 1
    bad = list((sent_dir / "bad").iterdir())
    assert len(bad) == 2 and any(p.name.endswith(".reason") for p in bad)
    # and it is now recorded as delivered: a retry is a duplicate
    [again] = deliver_all(base, [("instructor@example.edu", raw)])
    assert again.returncode == 0 and len(submissions(log)) == 1


def test_concurrent_deliveries_of_different_posts_all_go_out(site):
    base, log = site
    results = deliver_all(base, [("instructor@example.edu", post("Jane Doe <instructor@example.edu>", f"d{n}@x"))
                                 for n in range(12)])
    assert [r.returncode for r in results] == [0] * 12, [r.stderr for r in results]
    assert len(submissions(log)) == 12
    assert os.listdir(base / "state" / "spool" / "events").__len__() >= 12
