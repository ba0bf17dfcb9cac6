"""listfilter.mail.handoff: whether Postfix took a batch in flight, from its log and its queue.

The log lines are in the form Postfix 3.7 writes them (copied from the test
instance's maillog); tests/integration/test_kill.py reads a real one after
real kills.
"""

from __future__ import annotations

import json
import os
import subprocess
import time

import pytest

from listfilter.common import spool as SP
from listfilter.common.errors import Defer
from listfilter.mail import handoff as H

MID = "<big@example.edu>"
BOUNCES = "students-bounces@lists.example.edu"
UID = 999
BATCH = [f"user{i}@example.org" for i in range(3)]


def submission(qid: str, *, uid: int = UID, sender: str = BOUNCES, message_id: str = MID,
               nrcpt: int | None = 3) -> str:
    """The lines one sendmail submission leaves: pickup, cleanup and (once queued) qmgr."""
    out = (f"Dec 01 18:14:12 mail postfix/pickup[28306]: {qid}: uid={uid} from=<{sender}>\n"
           f"Dec 01 18:14:12 mail postfix/cleanup[28314]: {qid}: message-id={message_id}\n")
    if nrcpt is not None:
        out += (f"Dec 01 18:14:12 mail postfix/qmgr[28307]: {qid}: from=<{sender}>, size=197, nrcpt={nrcpt}"
                " (queue active)\n")
    return out


#: The post itself arriving by SMTP: the same Message-ID, but no pickup line and another sender.
INCOMING = ("Dec 01 18:14:10 mail postfix/smtpd[28309]: 7A1B2C3D4E: client=localhost[127.0.0.1]\n"
            f"Dec 01 18:14:10 mail postfix/cleanup[28314]: 7A1B2C3D4E: message-id={MID}\n"
            "Dec 01 18:14:10 mail postfix/qmgr[28307]: 7A1B2C3D4E: from=<prof@example.edu>, size=300, nrcpt=1"
            " (queue active)\n")


@pytest.fixture(autouse=True)
def no_settling(monkeypatch):
    monkeypatch.setattr(H, "SETTLE", 0)


@pytest.fixture
def log(tmp_path):
    path = tmp_path / "maillog"
    path.write_text("Dec 01 18:00:00 mail postfix/master[1]: daemon started\n" + submission("0OLD0", nrcpt=3))
    return path


def ask(log, *, recorded=(), postqueue=None, position=None):
    position = position or {"path": str(log), "inode": log.stat().st_ino, "offset": OFFSETS[str(log)]}
    return H.ask({"recipients": BATCH}, list(recorded), message_id=MID, sender=BOUNCES, position=position,
                 postqueue=postqueue, uid=UID)


OFFSETS: dict[str, int] = {}


def start(log):
    """The log's position when the delivery's first batch went out."""
    OFFSETS[str(log)] = log.stat().st_size
    return H.log_position(str(log))


def append(log, text: str) -> None:
    with open(log, "a") as fh:
        fh.write(text)


def test_a_submission_after_the_first_batch_is_the_batch_in_flight(log):
    start(log)  # the 0OLD0 lines before it (an earlier delivery of the same Message-ID) do not count
    append(log, INCOMING)
    assert not ask(log).taken
    append(log, submission("4BATCH1", nrcpt=5000))
    v = ask(log)
    assert v.taken and v.queue_id == "4BATCH1" and v.why == "nrcpt=5000"
    assert not ask(log, recorded=[5000]).taken  # that one was recorded: the one in flight did not arrive
    append(log, submission("4BATCH2"))
    v = ask(log, recorded=[5000])
    assert v.taken and v.queue_id == "4BATCH2" and v.why == "nrcpt=3"


def test_a_log_that_does_not_show_the_batch_is_read_again_a_moment_later(log, monkeypatch):
    """pickup(8) empties the maildrop file once cleanup has logged it, but the line reaches
    the file through postlogd or syslog a moment later."""
    start(log)
    looks = []
    monkeypatch.setattr(H, "SETTLE", 2.0)
    monkeypatch.setattr(time, "sleep", lambda s: (looks.append(s), append(log, submission("4LATE"))))
    v = ask(log)
    assert looks == [2.0] and v.taken and v.queue_id == "4LATE"
    looks.clear()
    assert ask(log, recorded=[3]).absent and looks == [2.0]  # looked twice, and it is not there


@pytest.mark.parametrize("other", [
    submission("4X", uid=0),  # another user's submission (postsuper -r requeues as postfix)
    submission("4X", sender="staff-bounces@lists.example.edu"),  # the same post to another list
    submission("4X", message_id="<other@example.edu>"),  # another post to this list
])
def test_submissions_that_are_not_this_deliverys_do_not_count(log, other):
    start(log)
    append(log, other)
    assert not ask(log).taken


def test_a_submission_not_yet_queued_is_pending(log):
    start(log)
    append(log, submission("4HALF", nrcpt=None))
    v = ask(log)
    assert not v.taken and v.pending and v.queue_id == "4HALF"
    append(log, "Dec 01 18:14:13 mail postfix/qmgr[28307]: 4HALF: from=<x@y>, size=197, nrcpt=3 (queue active)\n")
    assert ask(log).taken  # qmgr's line counts even when canonical rewriting changed the sender


def test_a_line_cut_by_the_recorded_offset_is_skipped(log):
    append(log, "Dec 01 18:14:12 mail postfix/pickup[1]: 4CUT: uid=999 ")
    start(log)  # the offset falls inside a line being written
    append(log, f"from=<{BOUNCES}>\n" + submission("4CUT", nrcpt=3).split("\n", 1)[1])
    assert not ask(log).taken  # the pickup line started before the batch: not this delivery's


def test_a_rotated_log_is_followed_to_its_dot_one(log):
    start(log)
    append(log, submission("4BATCH1", nrcpt=5000))
    inode = log.stat().st_ino
    os.rename(log, log.with_name("maillog.1"))
    log.write_text(submission("4BATCH2"))
    position = {"path": str(log), "inode": inode, "offset": OFFSETS[str(log)]}
    v = H.ask({"recipients": BATCH}, [5000], message_id=MID, sender=BOUNCES, position=position, postqueue=None,
              uid=UID)
    assert v.taken and v.queue_id == "4BATCH2"
    os.unlink(log.with_name("maillog.1"))  # rotated further (compressed, removed): nothing can tell
    v = H.ask({"recipients": BATCH}, [5000], message_id=MID, sender=BOUNCES, position=position, postqueue=None,
              uid=UID)
    assert not v.taken and not v.pending and "was rotated since" in v.why


@pytest.mark.parametrize("position, why", [
    (None, "was not known when the batch went out"),
    ({"path": "/nonexistent/maillog", "inode": 1, "offset": 0}, "cannot be read"),
])
def test_without_a_log_the_batch_goes_out_again(position, why):
    v = H.ask({"recipients": BATCH}, [], message_id=MID, sender=BOUNCES, position=position, postqueue=None, uid=UID)
    assert not v.taken and not v.pending and why in v.why


def test_a_truncated_log_tells_nothing(log):
    start(log)
    log.write_text("")
    v = ask(log)
    assert not v.taken and "truncated" in v.why


def test_a_log_that_cannot_be_opened_tells_nothing(tmp_path):
    where = tmp_path / "logdir"  # stat works, open does not (as for a log the listfilter user may not read)
    where.mkdir()
    position = {"path": str(where), "inode": where.stat().st_ino, "offset": 0}
    v = H.ask({"recipients": BATCH}, [], message_id=MID, sender=BOUNCES, position=position, postqueue=None, uid=UID)
    assert not v.taken and "cannot be read by uid" in v.why


def fake_postqueue(tmp_path, entries) -> str:
    """A postqueue that prints ``entries`` as ``postqueue -j`` does, one JSON object a line."""
    out = tmp_path / "queue.json"
    out.write_text("".join(json.dumps(e) + "\n" for e in entries))
    script = tmp_path / "postqueue"
    script.write_text(f'#!/bin/sh\n[ "$1" = -j ] && cat "{out}"\n')
    script.chmod(0o755)
    return str(script)


def entry(queue_name: str, recipients=BATCH, sender=BOUNCES) -> dict:
    return {"queue_name": queue_name, "queue_id": "9CA9621E094", "arrival_time": 1796149042, "message_size": 177,
            "forced_expire": False, "sender": sender, "recipients": [{"address": a} for a in recipients]}


def test_a_batch_still_in_the_maildrop_queue_is_pending(log, tmp_path):
    start(log)
    v = ask(log, postqueue=fake_postqueue(tmp_path, [entry("maildrop", [a.upper() for a in BATCH])]))
    assert v.pending and not v.taken and "maildrop queue as 9CA9621E094" in v.why


@pytest.mark.parametrize("other", [entry("deferred"), entry("maildrop", BATCH[:2]),
                                   entry("maildrop", sender="staff-bounces@lists.example.edu")])
def test_other_queue_entries_are_not_the_batch(log, tmp_path, other):
    start(log)
    assert not ask(log, postqueue=fake_postqueue(tmp_path, [other])).pending


def test_a_missing_postqueue_reads_the_log_only(log, tmp_path):
    start(log)
    append(log, submission("4B"))
    assert ask(log, postqueue=str(tmp_path / "no-postqueue")).taken


def test_message_id_of_rewritten_fields():
    fields = [b"From: a@example.edu\n", b"Message-ID:\n <x@y>\n", b"Message-ID: <second@y>\n"]
    assert H.message_id_of(fields) == "<x@y>"
    assert H.message_id_of([b"Subject: s\n"]) == ""


# ------------------------------------------------------------ resolve: what the delivery does with the verdict


@pytest.fixture
def spool(tmp_path):
    path = tmp_path / "spool"
    SP.ensure(path)
    return path


def in_flight(spool, log, batch=BATCH, recorded=()):
    with SP.Delivery(spool, MID, "students@lists.example.edu") as d:
        position = H.log_position(str(log))
        for done in recorded:
            d.begin_batch(done, message_id=MID, log_position=position)
            d.record_batch(done, "4POST")
        d.begin_batch(batch, message_id=MID, log_position=position)


def resolve(spool, log, **settings):
    with SP.Delivery(spool, MID, "students@lists.example.edu") as d:
        verdict = H.resolve(d, {"postfix_log": str(log), **settings}, sender=BOUNCES, queue_id="4POST")
        return verdict, d.in_flight, d.accepted, d.batches


def test_resolve_records_a_taken_batch_as_accepted(spool, log, monkeypatch):
    monkeypatch.setattr(os, "getuid", lambda: UID)
    in_flight(spool, log, recorded=[["first@example.org"]])
    append(log, submission("4B1", nrcpt=1) + submission("4B2"))
    verdict, flight, accepted, batches = resolve(spool, log)
    assert verdict.taken and flight is None
    assert accepted == {"first@example.org", *BATCH} and batches == [1, 3]


def test_resolve_forgets_a_batch_postfix_never_saw(spool, log, monkeypatch):
    monkeypatch.setattr(os, "getuid", lambda: UID)
    in_flight(spool, log)
    verdict, flight, accepted, _ = resolve(spool, log)
    assert not verdict.taken and flight is None and accepted == set()


def test_resolve_defers_while_postfix_picks_the_batch_up_then_gives_up(spool, log, monkeypatch):
    monkeypatch.setattr(os, "getuid", lambda: UID)
    in_flight(spool, log)
    append(log, submission("4HALF", nrcpt=None))
    with pytest.raises(Defer, match="not yet queued; waiting for Postfix to pick it up"):
        resolve(spool, log)
    monkeypatch.setattr(time, "time", lambda: H.PENDING_LIMIT + 10**10)  # an hour later and still not queued
    verdict, flight, _, _ = resolve(spool, log)
    assert verdict.pending and flight is None  # sent again


def test_from_the_journal_a_submission_since_the_first_batch_is_the_batch_in_flight(tmp_path):
    """With log_source = "journal" the position is a time; the retry reads the journal from it
    (a real journal file, written by systemd-journal-remote, read by the real journalctl)."""
    import datetime as dt

    from ..harness.journal import Journal

    journal = Journal(tmp_path / "journal")
    setting = f"{H.JOURNAL}:{journal.directory}"
    t0 = dt.datetime.now(dt.timezone.utc) - dt.timedelta(minutes=10)

    def entries(text: str, at: dt.datetime):
        out = []
        for line in text.splitlines():
            tag, _, message = line.split(" ", 4)[-1].partition(": ")
            ident, _, pid = tag.rstrip("]").partition("[")
            out.append((at, "mail", ident, pid, message))
        return out

    journal.append(entries(submission("0OLD0"), t0))  # an earlier delivery of the same Message-ID
    position = {"journal": setting, "since": (t0 + dt.timedelta(minutes=5)).timestamp()}
    assert H.log_position(setting) == {"journal": setting, "since": pytest.approx(time.time(), abs=5)}
    assert ask(None, position=position).absent
    journal.append(entries(submission("4BATCH1", nrcpt=5000), t0 + dt.timedelta(minutes=6)))
    v = ask(None, position=position)
    assert v.taken and v.queue_id == "4BATCH1" and v.why == "nrcpt=5000"
    assert ask(None, position={"journal": f"{H.JOURNAL}:{tmp_path / 'none'}", "since": 0}).why.startswith(
        "the journal cannot be read")


def test_resolve_survives_an_unexpected_error(spool, log, monkeypatch):
    in_flight(spool, log)
    monkeypatch.setattr(H, "lines", lambda *a, **k: 1 / 0)
    verdict, flight, _, _ = resolve(spool, log)
    assert not verdict.taken and "internal error" in verdict.why and flight is None


def test_resolve_without_a_batch_in_flight_does_nothing(spool, log):
    with SP.Delivery(spool, MID, "students@lists.example.edu") as d:
        assert H.resolve(d, {}, sender=BOUNCES, queue_id="4POST") is None


# ------------------------------------------------------------ through listfilter-deliver, with a killing sendmail

# A stand-in for sendmail that does what Postfix's would leave in the log for call N (the three
# lines of a queued submission), unless $dir/nolog exists; call KILL_AT kills deliver after that.
KILLING_SENDMAIL = """#!/bin/sh
dir="{dir}"
n=$(( $(cat "$dir/calls" 2>/dev/null || echo 0) + 1 ))
echo $n > "$dir/calls"
cat > "$dir/$n.msg"
printf '%s\\n' "$@" > "$dir/$n.args"
mid=$(sed -n 's/^[Mm]essage-[Ii][Dd]: *//p' "$dir/$n.msg" | head -1)
shift 6
if [ ! -e "$dir/nolog" ]; then
  {{ echo "Dec 01 18:14:12 mail postfix/pickup[1]: 4Q$n: uid=$(id -u) from=<{sender}>"
     echo "Dec 01 18:14:12 mail postfix/cleanup[2]: 4Q$n: message-id=$mid"
     echo "Dec 01 18:14:12 mail postfix/qmgr[3]: 4Q$n: from=<{sender}>, size=999, nrcpt=$# (queue active)"
  }} >> "{log}"
fi
[ "$(cat "$dir/KILL_AT" 2>/dev/null)" = "$n" ] && kill -9 $PPID
exit 0
"""


@pytest.fixture
def killing(tmp_path):
    """A list of 5,003 members, the killing sendmail, and a log the snapshot names."""
    from listfilter.common.snapshot import Snapshot

    from . import compiled_list, write_snapshot
    from .test_deliver import DELIVER

    calls, log = tmp_path / "calls", tmp_path / "maillog"
    calls.mkdir()
    log.write_text("Dec 01 18:00:00 mail postfix/master[1]: daemon started\n")
    script = tmp_path / "sendmail"
    script.write_text(KILLING_SENDMAIL.format(dir=calls, log=log, sender=BOUNCES))
    script.chmod(0o755)
    members = [f"user{i:05d}@example.edu" for i in range(5003)]
    spool = tmp_path / "spool"
    snapshot = write_snapshot(tmp_path / "snapshot.sqlite",
                              [compiled_list(members=members, posters=["prof@example.edu"])],
                              spool=spool, sendmail=str(script))
    import sqlite3

    with sqlite3.connect(snapshot) as db:
        db.execute("UPDATE meta SET value = ? WHERE key = 'postfix_log'", (str(log),))
    with Snapshot(snapshot) as snap:
        assert snap.settings()["postfix_log"] == str(log)

    def deliver(post: bytes):
        return subprocess.run([str(DELIVER), "--snapshot", str(snapshot), "--sender", "prof@example.edu",
                               "--recipient", "students@lists.example.edu", "--queue-id", "4POST"],
                              input=post, capture_output=True, timeout=60)

    return deliver, calls, members



@pytest.mark.parametrize("kill_at", [1, 2])
def test_deliver_killed_after_sendmail_returned_does_not_send_that_batch_again(killing, kill_at):
    deliver, calls, members = killing
    (calls / "KILL_AT").write_text(f"{kill_at}\n")
    post = b"From: prof@example.edu\nSubject: s\nMessage-ID: <big@example.edu>\n\nhi\n"
    assert deliver(post).returncode == -9  # killed; Postfix would retry
    (calls / "KILL_AT").unlink()
    proc = deliver(post)
    assert proc.returncode == 0, proc.stderr
    sent = [(calls / f"{n}.args").read_text().splitlines()[6:] for n in range(1, int((calls / "calls").read_text()) + 1)]
    assert sent == [members[:5000], members[5000:]]  # each batch once
    assert deliver(post).returncode == 0 and len(sent) == int((calls / "calls").read_text())  # now a duplicate


def test_deliver_killed_with_no_trace_in_the_log_sends_the_batch_again(killing):
    deliver, calls, members = killing
    (calls / "KILL_AT").write_text("2\n")
    (calls / "nolog").touch()  # as if sendmail had been killed before postdrop finished
    post = b"From: prof@example.edu\nSubject: s\nMessage-ID: <big@example.edu>\n\nhi\n"
    assert deliver(post).returncode == -9
    (calls / "KILL_AT").unlink()
    assert deliver(post).returncode == 0
    assert (calls / "calls").read_text().strip() == "3"
    assert (calls / "3.args").read_text().splitlines()[6:] == members[5000:]


def test_a_post_without_message_id_keeps_the_one_its_first_batch_carried(killing):
    deliver, calls, members = killing
    (calls / "KILL_AT").write_text("2\n")
    (calls / "nolog").touch()
    post = b"From: prof@example.edu\nSubject: no id\n\nhi\n"
    assert deliver(post).returncode == -9
    (calls / "KILL_AT").unlink()
    assert deliver(post).returncode == 0
    ids = {line for n in (1, 2, 3) for line in (calls / f"{n}.msg").read_text().splitlines()
           if line.lower().startswith("message-id:")}
    assert len(ids) == 1, ids  # every member's copy has the same Message-ID
