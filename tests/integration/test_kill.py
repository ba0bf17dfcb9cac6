"""A delivery killed mid-post, and Postfix's retry: through a real Postfix, a real sendmail, a real SIGKILL.

A list of 6,003 members goes out in two batches (5,000 and 1,003, the real
batch size). The sendmail that deliver runs is the real one behind a
wrapper that can stop at a chosen point of one call until the test lets it
go, so that the SIGKILL lands there:

- ``before``: the batch is recorded as in flight, sendmail has not started;
- ``during``: sendmail has started and postdrop is writing the maildrop
  file, with the message half read;
- ``after``: sendmail has returned 0 (the batch is in Postfix's queue) and
  deliver has not yet recorded it;
- ``orphan``: only deliver is killed, while sendmail waits to start; the
  sendmail goes on and submits the batch after deliver is gone.

Killing the process group (deliver, the wrapper, sendmail and postdrop) is
what pipe(8) does at ``command_time_limit`` and what a reboot does;
killing deliver alone is what the out-of-memory killer does. pipe(8) defers
a command that died by a signal, and Postfix retries it within seconds
(this instance's backoff is 1-2 s). Every member must then have the post,
and the duplicates must be within what docs/operations.md promises.
"""

from __future__ import annotations

import collections
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ..harness.postfix import POSTQUEUE, PostfixInstance, ensure_user, swaks, traversable_tmpdir
from ..harness.smtpsink import SMTPSink
from ..harness.wiring import install_programs, listfilter_spool, wire

pytestmark = pytest.mark.integration

DOMAIN = "lists.example.edu"
BIG = f"big@{DOMAIN}"
POSTER = "prof@example.edu"
MEMBERS = [f"m{i:05d}@example.org" for i in range(6003)]
FIRST, SECOND = 5000, 1003  # the batches

# sendmail for these tests: call N does what $ctl/mode.N says. A pause writes deliver's pid
# (the shell's parent) to $ctl/paused.N and waits for $ctl/go.N.
SENDMAIL_WRAPPER = """#!/bin/sh
ctl="{ctl}"
n=$(( $(cat "$ctl/calls" 2>/dev/null || echo 0) + 1 ))
echo $n > "$ctl/calls"
pause() {{ echo $PPID > "$ctl/paused.$n.tmp"; mv "$ctl/paused.$n.tmp" "$ctl/paused.$n"
           while [ ! -e "$ctl/go.$n" ]; do sleep 0.05; done; }}
case "$(cat "$ctl/mode.$n" 2>/dev/null)" in
  before) pause; exec /usr/sbin/sendmail "$@" ;;
  during) {{ head -c 300; pause; cat; }} | /usr/sbin/sendmail "$@" ;;
  after) /usr/sbin/sendmail "$@"; rc=$?; pause; exit $rc ;;
  *) exec /usr/sbin/sendmail "$@" ;;
esac
"""


class Site:
    def __init__(self, base: Path, pf: PostfixInstance, sink: SMTPSink, snapshot: Path):
        self.base, self.pf, self.sink, self.snapshot = base, pf, sink, snapshot
        self.ctl = base / "ctl"
        self.spool = base / "state" / "spool"

    def reset(self, **modes: str) -> None:
        """An idle Postfix, an empty sink, and sendmail call N set to ``modes["cN"]``."""
        assert self.pf.wait_queue_empty(timeout=120), self.pf.queue()
        self.sink.clear()
        for p in self.ctl.iterdir():
            p.unlink()
        for call, mode in modes.items():
            (self.ctl / f"mode.{call.removeprefix('c')}").write_text(mode + "\n")

    def post(self, message_id: str) -> None:
        raw = (f"From: Jane Doe <{POSTER}>\nTo: {BIG}\nSubject: kill test\nMessage-ID: {message_id}\n"
               "Date: Tue, 24 Nov 2026 08:00:00 +0000\n\n" + "A body line of the post.\n" * 200)
        path = self.base / f"msg-{time.time_ns()}.eml"
        path.write_text(raw)
        proc = swaks("--to", BIG, "--from", POSTER, "--data", f"@{path}", port=self.pf.smtpd_port)
        assert proc.returncode == 0, proc.stdout + proc.stderr

    def paused(self, call: int, timeout: float = 120) -> int:
        """Wait until sendmail call ``call`` pauses; deliver's pid."""
        flag = self.ctl / f"paused.{call}"
        deadline = time.monotonic() + timeout
        while not flag.exists():
            assert time.monotonic() < deadline, (f"sendmail call {call} never paused", self.pf.log_tail(20))
            time.sleep(0.05)
        pid = int(flag.read_text())
        assert b"listfilter-deliver" in Path(f"/proc/{pid}/cmdline").read_bytes()
        return pid

    def go(self, call: int) -> None:
        (self.ctl / f"go.{call}").touch()

    def calls(self) -> int:
        path = self.ctl / "calls"
        return int(path.read_text()) if path.exists() else 0

    def copies(self, timeout: float = 300) -> collections.Counter:
        """When Postfix is done: how many copies each member received."""
        assert self.pf.wait_queue_empty(timeout=timeout), (self.pf.queue()[:3], self.deliveries())
        members = set(MEMBERS)
        return collections.Counter(r.lower() for r in self.sink.recipients() if r.lower() in members)

    def deliveries(self) -> list[str]:
        """The log's lines of the pipe deliveries to listfilter and of qmgr's moves (why a post waits)."""
        return [line for line in self.pf.maillog().splitlines()
                if "relay=listfilter" in line or "listfilter" in line.split(": ", 1)[0] or "skipped" in line
                or "(queue active)" in line][-40:]

    def progress(self, message_id: str) -> dict:
        from listfilter.common.spool import delivery_key

        return json.loads((self.spool / "sent" / f"{delivery_key(message_id, BIG)}.json").read_text())

    def message_file(self, message_id: str) -> Path:
        from listfilter.common.spool import delivery_key

        return self.spool / "sent" / f"{delivery_key(message_id, BIG)}.msg"


def kill(pid: int, *, group: bool) -> None:
    """SIGKILL deliver, or its whole process group (pipe(8) makes each command a group leader)."""
    if group:
        assert os.getpgid(pid) == pid, "deliver is not a process group leader: not killing the group"
        os.killpg(pid, signal.SIGKILL)
    else:
        os.kill(pid, signal.SIGKILL)


def another_deliver_started(site: Site, than: int, timeout: float = 60) -> int:
    """The pid of this site's listfilter-deliver other than ``than`` (Postfix's retry), once one runs."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for entry in os.listdir("/proc"):
            if entry.isdigit() and int(entry) != than:
                try:
                    argv = Path(f"/proc/{entry}/cmdline").read_bytes().split(b"\0")
                    if any(a.endswith(b"/listfilter-deliver") for a in argv[:2]) and str(site.snapshot).encode() in argv:
                        return int(entry)
                except OSError:
                    pass
        time.sleep(0.05)
    raise AssertionError("Postfix did not retry the post")


def opened(pid: int, path: Path, timeout: float = 60) -> None:
    """Wait until process ``pid`` has ``path`` open."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if any(os.readlink(f"/proc/{pid}/fd/{fd}") == str(path) for fd in os.listdir(f"/proc/{pid}/fd")):
                return
        except OSError:
            pass
        time.sleep(0.02)
    raise AssertionError(f"process {pid} never opened {path}")


def carried_postfix_settings(snapshot: Path, pf: PostfixInstance) -> None:
    """Sync carried the Postfix settings the mail side reads on a retry: the log
    ([postfix] log_file, this instance's maillog_file) and postqueue."""
    with sqlite3.connect(snapshot) as db:
        meta = dict(db.execute("SELECT key, value FROM meta"))
    assert (meta["postfix_log"], meta["postqueue"]) == (str(pf.maillog_path), POSTQUEUE)


@pytest.fixture(scope="module")
def site():
    ensure_user("listfilter")
    with traversable_tmpdir() as base, SMTPSink() as sink:
        program = install_programs(base / "bin")
        ctl = base / "ctl"
        ctl.mkdir()
        ctl.chmod(0o777)  # the wrapper runs as listfilter
        wrapper = base / "bin" / "sendmail"
        wrapper.write_text(SENDMAIL_WRAPPER.format(ctl=ctl))
        wrapper.chmod(0o755)
        roster = base / "roster.csv"
        roster.write_text("email,name,enrollment_type,active,semester,course\n"
                          f"{POSTER},Jane Doe,teacher,true,current,CS 199\n"
                          + "".join(f"{m},,student,true,current,CS 199\n" for m in MEMBERS))
        pf = PostfixInstance(base / "postfix", relay_port=sink.port)
        config = base / "lists.toml"
        config.write_text(f"""
[site]
dmarc = "off"  # no DMARC lookups: this test starts no DNS server (tests/conftest.py)
timezone = "America/Chicago"
state_dir = "{base / 'state'}"
sendmail = "{wrapper}"
owners = ["{POSTER}"]
[postfix]
config_directory = "{pf.config_dir}"
map_type = "hash"
log_file = "{pf.maillog_path}"
[roster]
source = "csv"
csv = "{roster}"
[domains."{DOMAIN}"]
course = "CS 199"
[lists.big]
members = {{ roles = ["student"] }}
posters = ["{POSTER}"]
""")
        listfilter_spool(wire(pf, config, program))
        pf.start()
        try:
            sync = subprocess.run([sys.executable, "-m", "listfilter", "--config", str(config), "sync"],
                                  capture_output=True, text=True, timeout=120)
            assert sync.returncode == 0, sync.stderr
            snapshot = base / "state" / "snapshot.sqlite"
            carried_postfix_settings(snapshot, pf)
            yield Site(base, pf, sink, snapshot)
        finally:
            pf.stop()


def outcome(copies: collections.Counter) -> tuple[int, int]:
    """(members missing, duplicate copies)."""
    return sum(1 for m in MEMBERS if copies[m] == 0), sum(n - 1 for n in copies.values() if n > 1)


@pytest.mark.parametrize("point, group, calls", [
    ("before", True, 3),   # batch 2 never reached Postfix: the retry sends it
    ("during", True, 3),   # sendmail and postdrop killed mid-message: nothing queued, sent again
    ("after", True, 2),    # queued: the retry finds it in Postfix's log and does not send it
    ("orphan", False, 2),  # the orphaned sendmail queues it; the retry waits for it, then finds it
])
def test_a_kill_in_the_second_batch_costs_no_copy_and_no_duplicate(site, point, group, calls):
    message_id = f"<kill-{point}-{time.time_ns()}@example.edu>"
    site.reset(c2="before" if point == "orphan" else point)
    site.post(message_id)
    deliver = site.paused(2)
    assert site.progress(message_id)["in_flight"]["count"] == SECOND
    kill(deliver, group=group)
    if point == "orphan":
        retry = another_deliver_started(site, than=deliver)
        opened(retry, site.message_file(message_id))
        time.sleep(2)  # time enough for a retry that did not wait to ask Postfix and send the batch again
    site.go(2)
    copies = site.copies()
    assert outcome(copies) == (0, 0), outcome(copies)
    assert site.calls() == calls
    done = site.progress(message_id)
    assert done["done"] is True and "in_flight" not in done and done["recipients"] == FIRST + SECOND
    assert "status=deferred (Command died with signal 9" in site.pf.maillog()


def test_a_kill_right_after_the_first_batch_is_found_in_the_log(site):
    """The batch before any was recorded: without the log it would be 5,000 duplicates."""
    message_id = f"<kill-first-{time.time_ns()}@example.edu>"
    site.reset(c1="after")
    site.post(message_id)
    kill(site.paused(1), group=True)
    site.go(1)
    assert outcome(site.copies()) == (0, 0)
    assert site.calls() == 2  # the retry sent the second batch only


def pickup_of(pf: PostfixInstance) -> int:
    """The pid of the instance's pickup(8)."""
    master = int((pf.queue_dir / "pid" / "master.pid").read_text().split()[0])
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            if stat.split(") ")[0].endswith("(pickup") and int(stat.rsplit(")", 1)[1].split()[1]) == master:
                return int(entry)
    raise AssertionError("no pickup process")


def nudged_wait_log(pf: PostfixInstance, pattern: str, timeout: float = 60) -> None:
    """Wait for ``pattern`` in the log, running ``postqueue -f`` now and then: with pickup
    stopped, no new mail wakes qmgr, and a deferred post that qmgr found still locked by the
    pipe that reported it waits for such a wake-up."""
    from ..harness.postfix import PostfixError

    deadline = time.monotonic() + timeout
    while True:
        try:
            pf.wait_log(pattern, timeout=3)
            return
        except PostfixError:
            if time.monotonic() > deadline:
                raise
            pf.flush()


def test_a_batch_postfix_has_not_picked_up_yet_is_waited_for(site):
    """As after a reboot, when the retry can run before pickup(8) has read the maildrop queue."""
    message_id = f"<kill-maildrop-{time.time_ns()}@example.edu>"
    site.reset(c2="after")
    pickup = pickup_of(site.pf)
    os.kill(pickup, signal.SIGSTOP)
    try:
        site.post(message_id)
        kill(site.paused(2), group=True)
        site.go(2)
        nudged_wait_log(site.pf, r"dsn=4\.3\.0, status=deferred \(the batch of 1003 recipients in flight when an"
                                 r" earlier attempt ended is in Postfix's maildrop queue as \w+; waiting for Postfix"
                                 r" to pick it up")
    finally:
        os.kill(pickup, signal.SIGCONT)
    assert outcome(site.copies()) == (0, 0)
    assert site.calls() == 2


def test_without_a_readable_log_the_batch_in_flight_goes_out_again(site):
    """What the docs promise when the log cannot tell: no member missing, at most that batch twice."""
    message_id = f"<kill-nolog-{time.time_ns()}@example.edu>"
    site.reset(c2="after")
    with sqlite3.connect(site.snapshot) as db:
        db.execute("UPDATE meta SET value = ? WHERE key = 'postfix_log'", (str(site.base / "no-such-log"),))
    try:
        site.post(message_id)
        kill(site.paused(2), group=True)
        site.go(2)
        missing, duplicates = outcome(site.copies())
    finally:
        with sqlite3.connect(site.snapshot) as db:
            db.execute("UPDATE meta SET value = ? WHERE key = 'postfix_log'", (str(site.pf.maillog_path),))
    assert (missing, duplicates) == (0, SECOND)
