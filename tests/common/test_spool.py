"""listfilter.common.spool: events, bounces, delivery progress under a lock, notice slots, pruning."""

from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path

import pytest

from listfilter.common import spool as SP
from listfilter.common.events import BounceRecord, Event, random_id

STUDENTS = "students@lists.example.edu"
KEY = "<m1@example.edu>"


@pytest.fixture
def spool(tmp_path) -> Path:
    path = tmp_path / "spool"
    SP.ensure(path)
    return path


def test_ensure_creates_the_tree(tmp_path):
    SP.ensure(tmp_path / "spool")
    assert sorted(p.name for p in (tmp_path / "spool").iterdir()) == sorted(SP.SUBDIRS)
    SP.ensure(tmp_path / "spool")  # idempotent


def test_ensure_refuses_an_unusable_spool(tmp_path):
    (tmp_path / "spool").mkdir()
    (tmp_path / "spool" / "events").write_text("not a directory")
    with pytest.raises(SP.SpoolError, match="spool .*events cannot be created") as info:
        SP.ensure(tmp_path / "spool")
    assert info.value.exit_code == 75  # the mail side defers


# ---------------------------------------------------------------- events/


def event(n: int = 0) -> Event:
    return Event(id=f"{n:032x}", status="delivered", list_address=STUDENTS, created_at="2026-01-21T15:00:00+00:00")


def test_write_event_and_pending_events(spool):
    first = SP.write_event(spool, event(1))
    assert first == spool / "events" / f"{1:032x}.json"
    assert json.loads(first.read_bytes())["id"] == f"{1:032x}"
    SP.write_event(spool, event(1)._replace(status="bounced"))  # a retry's record replaces the earlier one
    assert json.loads(first.read_bytes())["status"] == "bounced"
    assert [p.name for p in (spool / "events").iterdir()] == [first.name]  # no temporary file left behind
    claimed = spool / "events" / SP.CLAIMED
    claimed.mkdir()
    (claimed / "c.json").write_text("{}")
    (spool / "events" / ".x.json.123.tmp").write_text("{")  # being written
    (spool / "events" / ".hidden.json").write_text("{")
    (spool / "events" / "notes.txt").write_text("")
    assert sorted(p.name for p in SP.pending_events(spool)) == [f"{1:032x}.json", "c.json"]


def test_a_deferral_goes_beside_the_outcome_and_the_outcome_removes_it(spool):
    events = spool / "events"
    deferral = SP.write_event(spool, event(1)._replace(status="deferred", error_message="4.3.0 first try"))
    assert deferral == events / f"{1:032x}.deferred.json"
    SP.write_event(spool, event(1)._replace(status="deferred", error_message="4.3.0 second try"))
    assert [p.name for p in events.iterdir()] == [deferral.name]  # one file per (message, list), updated
    assert json.loads(deferral.read_bytes())["error_message"] == "4.3.0 second try"
    outcome = SP.write_event(spool, event(1))  # the retry that delivers ends the deferral
    assert [p.name for p in events.iterdir()] == [outcome.name]
    # a second copy deferring while the delivery waits for ingest does not erase it
    SP.write_event(spool, event(1)._replace(status="deferred"))
    assert sorted(p.name for p in events.iterdir()) == sorted([outcome.name, deferral.name])
    assert json.loads(outcome.read_bytes())["status"] == "delivered"
    assert len(SP.pending_events(spool)) == 2


def test_pending_events_of_a_missing_spool(tmp_path):
    assert SP.pending_events(tmp_path / "nothing") == []
    assert SP.bad_events(tmp_path / "nothing") == []
    assert SP.pending_bounces(tmp_path / "nothing") == []


def test_set_aside_moves_the_record_with_its_reason(spool):
    path = spool / "events" / "junk.json"
    path.write_bytes(b"{junk")
    target = SP.set_aside(path, "not JSON:\n  Expecting property name")
    assert not path.exists()
    assert target.parent == spool / "events" / "bad" and target.read_bytes() == b"{junk"
    assert (target.parent / (target.name + ".reason")).read_text() == "not JSON: Expecting property name\n"
    assert SP.bad_events(spool) == []  # bad_events lists *.json; a set-aside name carries a suffix
    assert SP.set_aside(path, "gone") is None  # already moved by someone else


def test_write_event_into_an_unwritable_spool(tmp_path):
    with pytest.raises(SP.SpoolError, match="cannot write"):
        SP.write_event(tmp_path / "missing", event())


# ---------------------------------------------------------------- bounces/


def test_write_bounce_and_pending_bounces(spool):
    records = [BounceRecord(id=random_id(), list_address=STUDENTS, received_at="2026-11-02T04:30:00+00:00",
                            day="2026-11-01", member="alice@example.edu", permanent=("alice@example.edu",))
               for _ in range(3)]
    paths = [SP.write_bounce(spool, r) for r in records]
    assert SP.pending_bounces(spool) == sorted(paths)
    assert json.loads(paths[0].read_bytes())["permanent"] == ["alice@example.edu"]


# ---------------------------------------------------------------- sent/


def test_delivery_key():
    key = SP.delivery_key(KEY, STUDENTS)
    assert len(key) == 32 and key == SP.delivery_key(KEY, "Students@Lists.Example.EDU")
    assert key != SP.delivery_key(KEY, "staff@lists.example.edu")


def test_delivery_progress_survives_a_restart(spool):
    with SP.Delivery(spool, KEY, STUDENTS) as d:
        assert not d.done and d.accepted == set() and d.set_aside is None
        assert not d.recent(7)  # nothing recorded yet
        d.record_batch(["Alice@example.edu", "bob@example.edu"], "4ABC")
    with SP.Delivery(spool, KEY, STUDENTS) as d:
        assert not d.done
        assert d.accepted == {"alice@example.edu", "bob@example.edu"}  # compared lower-cased
        d.record_batch(["carol@example.edu"], "4ABD")
        assert d.data["queue_ids"] == ["4ABC", "4ABD"]
        d.finish(queue_id="4ABD", recipients=3)
    with SP.Delivery(spool, KEY, STUDENTS) as d:
        assert d.done and d.recent(7)
        assert d.data["accepted_count"] == 3 and "accepted" not in d.data  # no longer needed
        assert d.data["recipients"] == 3 and d.data["list"] == STUDENTS and d.data["message"] == KEY


def test_delivery_recent_is_the_duplicate_window(spool):
    with SP.Delivery(spool, KEY, STUDENTS) as d:
        d.finish()
    old = time.time() - 8 * 86400
    os.utime(d.path, (old, old))
    with SP.Delivery(spool, KEY, STUDENTS) as d:
        assert d.done and not d.recent(SP.DUPLICATE_WINDOW_DAYS) and d.recent(9)


def test_deliveries_of_other_messages_or_lists_are_separate(spool):
    with SP.Delivery(spool, KEY, STUDENTS) as d:
        d.finish()
    with SP.Delivery(spool, KEY, "staff@lists.example.edu") as other, SP.Delivery(spool, "<m2@x>", STUDENTS) as m2:
        assert not other.done and not m2.done


@pytest.mark.parametrize("content", [b"{corrupt", b"\xff\xfe", b"[1, 2]", b'{"accepted": "alice@example.edu"}', b""])
def test_unreadable_progress_is_set_aside(spool, content):
    path = spool / "sent" / f"{SP.delivery_key(KEY, STUDENTS)}.json"
    path.write_bytes(content)
    with SP.Delivery(spool, KEY, STUDENTS) as d:
        assert not d.done and d.accepted == set()  # delivering afresh
        assert "was unreadable" in d.set_aside and "delivering afresh" in d.set_aside
    assert not path.exists()
    [moved] = [p for p in (spool / "sent" / "bad").iterdir() if not p.name.endswith(".reason")]
    assert moved.read_bytes() == content and moved.name.startswith(path.name)
    reason = (spool / "sent" / "bad" / (moved.name + ".reason")).read_text()
    assert reason.startswith("unreadable progress record: ")


def test_one_delivery_of_a_message_to_a_list_at_a_time(spool, monkeypatch):
    monkeypatch.setattr(SP, "LOCK_WAIT", 0.3)
    with SP.Delivery(spool, KEY, STUDENTS):
        started = time.monotonic()
        with pytest.raises(SP.SpoolError, match="another delivery of this message to this list is still running"):
            with SP.Delivery(spool, KEY, STUDENTS):
                pass
        assert time.monotonic() - started >= 0.3
        with SP.Delivery(spool, KEY, "staff@lists.example.edu"):
            pass  # another list: no wait
    with SP.Delivery(spool, KEY, STUDENTS):
        pass  # released


def test_a_waiting_delivery_sees_the_first_ones_progress(spool):
    entered = threading.Event()
    seen = {}

    def second():
        entered.set()
        with SP.Delivery(spool, KEY, STUDENTS) as d:
            seen["done"] = d.done

    with SP.Delivery(spool, KEY, STUDENTS) as d:
        t = threading.Thread(target=second)
        t.start()
        entered.wait(5)
        time.sleep(0.2)
        assert "done" not in seen  # still waiting for the lock
        d.finish()
    t.join(10)
    assert seen == {"done": True}  # read under the lock, after the first finished


def test_a_batch_in_flight_survives_a_kill_until_it_is_recorded(spool):
    position = {"path": "/var/log/mail.log", "inode": 12, "offset": 3456}
    with SP.Delivery(spool, KEY, STUDENTS) as d:
        assert d.in_flight is None and d.batches == []
        d.begin_batch(["a@example.org", "b@example.org"], message_id="<m1@example.edu>", log_position=position)
    # killed here: the next attempt finds the batch in flight
    with SP.Delivery(spool, KEY, STUDENTS) as d:
        flight = d.in_flight
        assert flight["recipients"] == ["a@example.org", "b@example.org"] and flight["count"] == 2
        assert abs(flight["at"] - time.time()) < 60 and flight["attempts"] == 1
        assert d.accepted == set()
        d.begin_batch(["a@example.org", "b@example.org"], message_id="<other@x>", log_position=None)
        assert d.in_flight["attempts"] == 2  # sent again
        assert d.data["message_id"] == "<m1@example.edu>" and d.data["postfix_log"] == position  # the first's
        d.record_batch(["a@example.org", "b@example.org"], "4ABC")
        d.begin_batch(["c@example.org"], message_id="<m1@example.edu>", log_position=None)
    with SP.Delivery(spool, KEY, STUDENTS) as d:
        assert d.accepted == {"a@example.org", "b@example.org"} and d.batches == [2]
        assert d.in_flight["recipients"] == ["c@example.org"] and d.in_flight["attempts"] == 1
        d.abandon_batch()
    with SP.Delivery(spool, KEY, STUDENTS) as d:
        assert d.in_flight is None
        d.begin_batch(["c@example.org"], message_id="<m1@example.edu>", log_position=None)
        d.finish(recipients=3)
    with SP.Delivery(spool, KEY, STUDENTS) as d:
        assert d.done and d.in_flight is None


def test_an_unreadable_batch_in_flight_is_set_aside(spool):
    path = spool / "sent" / f"{SP.delivery_key(KEY, STUDENTS)}.json"
    path.write_text(json.dumps({"accepted": [], "in_flight": {"recipients": "a@example.org"}}))
    with SP.Delivery(spool, KEY, STUDENTS) as d:
        assert d.in_flight is None and "in_flight is not a batch" in d.set_aside


def test_the_message_file_goes_when_the_delivery_ends(spool):
    with SP.Delivery(spool, KEY, STUDENTS) as d:
        d.message_file(b"Subject: a longer first version\n\nbody\n")
        fh = d.message_file(b"Subject: s\n\nbody\n")  # rewritten in place
        fh.seek(0)
        assert fh.read() == d.message_path.read_bytes() == b"Subject: s\n\nbody\n"
    assert not d.message_path.exists()


#: A delivery that hands its message file to a lingering stand-in for sendmail (it reads its
#: input, then waits, as sendmail waits for postdrop), prints the stand-in's pid and is killed.
KILLED_DELIVERY = """
import os, subprocess, sys
from pathlib import Path
from listfilter.common import spool as SP
d = SP.Delivery(Path(sys.argv[1]), sys.argv[2], sys.argv[3]).__enter__()
d.begin_batch(["a@example.org"], message_id="<m1@example.edu>", log_position=None)
stdin = d.message_file(b"Subject: s\\n\\nbody\\n")
p = subprocess.Popen(["sh", "-c", "cat > /dev/null; exec sleep 60"], stdin=stdin, stdout=subprocess.DEVNULL,
                     stderr=subprocess.DEVNULL)
print(p.pid, flush=True)
os.kill(os.getpid(), 9)
"""


def test_a_retry_waits_for_a_sendmail_that_outlived_the_killed_delivery(spool, monkeypatch):
    import signal
    import subprocess
    import sys

    monkeypatch.setattr(SP, "LOCK_WAIT", 0.3)
    killed = subprocess.run([sys.executable, "-c", KILLED_DELIVERY, str(spool), KEY, STUDENTS],
                            capture_output=True, text=True, timeout=30)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    orphan = int(killed.stdout)
    try:
        with pytest.raises(SP.SpoolError, match="the sendmail of an earlier attempt of this delivery is still"):
            with SP.Delivery(spool, KEY, STUDENTS):
                pass
    finally:
        os.kill(orphan, signal.SIGKILL)
    for _ in range(100):  # the orphan is init's child now: wait until it is gone
        try:
            os.kill(orphan, 0)
            time.sleep(0.05)
        except ProcessLookupError:
            break
    with SP.Delivery(spool, KEY, STUDENTS) as d:  # now free, and the batch is still in flight
        assert d.in_flight["recipients"] == ["a@example.org"]


def test_delivery_without_a_sent_directory_defers(tmp_path):
    with pytest.raises(SP.SpoolError, match="cannot open"):
        with SP.Delivery(tmp_path, KEY, STUDENTS):
            pass


# ---------------------------------------------------------------- notices/


def test_claim_notice_slots(spool):
    day = "2026-01-22"
    slots = [SP.claim_notice(spool, "Alice@example.edu", day, 2) for _ in range(3)]
    assert slots[0] is not None and slots[1] is not None and slots[2] is None
    assert SP.notices_sent(spool, "alice@EXAMPLE.edu", day) == 2  # one sender, whatever the case
    assert SP.notices_sent(spool, "bob@example.edu", day) == 0
    assert SP.notices_sent(spool, "alice@example.edu", "2026-01-23") == 0
    assert SP.claim_notice(spool, "alice@example.edu", "2026-01-23", 2) is not None  # a new day
    SP.release_notice(slots[0])  # the notice could not be sent: the slot is given back
    assert SP.notices_sent(spool, "alice@example.edu", day) == 1
    assert SP.claim_notice(spool, "alice@example.edu", day, 2) == slots[0]
    SP.release_notice(spool / "no-such-slot")  # never raises
    assert SP.claim_notice(spool, "carol@example.edu", day, 0) is None


def test_simultaneous_refusals_take_at_most_the_limit(spool):
    results = []
    barrier = threading.Barrier(20)

    def claim():
        barrier.wait()
        results.append(SP.claim_notice(spool, "alice@example.edu", "2026-01-22", 3))

    threads = [threading.Thread(target=claim) for _ in range(20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    taken = [r for r in results if r is not None]
    assert len(results) == 20 and len(taken) == 3 and len(set(taken)) == 3


def test_claim_notice_in_an_unwritable_spool(tmp_path):
    (tmp_path / SP.NOTICES).write_text("a file")
    with pytest.raises(SP.SpoolError, match="cannot create"):
        SP.claim_notice(tmp_path, "alice@example.edu", "2026-01-22", 2)


# ---------------------------------------------------------------- prune


def test_prune_removes_old_deliveries_and_past_notice_days(spool):
    now = time.time()
    day = 86400

    def aged(path: Path, days: float) -> Path:
        os.utime(path, (now - days * day, now - days * day))
        return path

    with SP.Delivery(spool, "<old@x>", STUDENTS) as d:
        d.finish()
    old_lock = aged(d.lock_path, 8)
    old = aged(d.path, 8)
    with SP.Delivery(spool, "<new@x>", STUDENTS) as d:
        d.finish()
    new = aged(d.path, 6)
    SP.claim_notice(spool, "a@example.edu", "2026-01-19", 5)
    SP.claim_notice(spool, "b@example.edu", "2026-01-19", 5)
    SP.claim_notice(spool, "a@example.edu", "2026-01-22", 5)
    aged(spool / "notices" / "2026-01-19", 3)
    assert SP.prune(spool, now) == 4  # the old record, its lock, and the two slots of the old day
    assert not old.exists() and not old_lock.exists() and new.exists()
    assert sorted(p.name for p in (spool / "notices").iterdir()) == ["2026-01-22"]
    assert SP.prune(spool, now) == 0
    assert SP.prune(spool, now + 2 * day, sent_days=7) == 1  # the other record is now past the window


def test_prune_of_an_empty_spool(tmp_path):
    assert SP.prune(tmp_path, time.time()) == 0
