"""Bounce scoring in the store: the rules, what counts, ingest of the spool's records, sync, notices, the CLI
and the page.

The scoring rules are one table; everything else runs on SQLite and on the
real PostgreSQL. A bounce counts only for a post the mail log shows as
delivered to the member, so every test that counts one first puts that post
there (:func:`store_posts`, or its event in the spool for sync to ingest). The
tests through real processes start ``listfilter-bounce`` (the console
script) with a real Postfix DSN and run ``listfilter sync`` with a stand-in
sendmail that keeps every submission as a file.
"""

from __future__ import annotations

import datetime as dt
import email
import email.policy
import json
import re
import sqlite3
import subprocess
import sys
import threading
import zoneinfo
from pathlib import Path

import pytest

from listfilter.common import events as EV
from listfilter.common import spool as SP
from listfilter.common.snapshot import Snapshot
from listfilter.store import bounces as B
from listfilter.store import database as ST
from listfilter.store import migrations as MG
from listfilter.sync import config as C

from ..conftest import COURSE_LISTS, REPO

STUDENTS = "students@lists.example.edu"
STAFF = "staff@lists.example.edu"
OWNER = "owner@example.edu"
TZ = zoneinfo.ZoneInfo("America/Chicago")
DSN_SAMPLE = REPO / "tests" / "data" / "bounces" / "postfix-550.eml"
#: The post DSN_SAMPLE returns the headers of.
DSN_POST = "<t1@example.edu>"
BOUNCE = Path(sys.executable).parent / "listfilter-bounce"
D = dt.date(2026, 11, 2)

# A stand-in for sendmail: each submission becomes one file (argv on the first
# line, then the message); it fails while the FAIL file exists.
SENDMAIL = """#!/bin/sh
if [ -e "{dir}/FAIL" ]; then echo "sendmail: fatal: simulated outage" >&2; exit 75; fi
f=$(mktemp "{dir}/sent.XXXXXXXX")
{{ echo "$*"; cat; }} > "$f"
"""


# ---------------------------------------------------------------- the rules (pure)


def days(*offsets: int) -> list[dt.date]:
    return [D + dt.timedelta(days=o) for o in offsets]


SCORING = [
    # bounce days (offsets from D), expected score, suppressed
    ([0], 1, False),
    ([0, 0, 0], 1, False),  # at most one point per day
    ([0, 1, 2, 3], 4, False),
    ([0, 1, 2, 3, 4], 5, True),  # the threshold
    ([0, 0, 1, 1, 2, 3, 3, 4], 5, True),
    ([0, 2, 4, 6, 8], 5, True),  # gaps of up to 7 days keep the run
    ([0, 7, 14, 21, 28], 5, True),  # exactly 7 days is not stale
    ([0, 1, 2, 3, 12], 1, False),  # last bounce more than 7 days old: start again
    ([0, 1, 2, 3, 12, 13, 14, 15, 16], 5, True),
    ([5, 3], 1, False),  # an older bounce ingested late does not count
    ([0, 1, 2, 3, 4, 5, 6], 7, True),  # suppressed: still counted, still suppressed
    ([0, 1, 2, 3, 4, 20], 1, True),  # a suppression outlasts a stale score: only clear lifts it
]


@pytest.mark.parametrize("offsets,expected,suppressed", SCORING)
def test_scoring(offsets, expected, suppressed):
    state, newly_seen = B.BounceScore("a@example.org"), []
    for day in days(*offsets):
        state, newly = B.score(state, day)
        newly_seen.append(newly)
    assert state.score == expected
    assert state.suppressed is suppressed
    assert newly_seen.count(True) == (1 if suppressed else 0)  # the owners are told once


def test_score_is_pure_and_keeps_the_other_fields():
    state = B.BounceScore("a@example.org", score=4, last_bounce=D, lists=(STUDENTS,), reason="")
    new, newly = B.score(state, D + dt.timedelta(days=1))
    assert (new.score, new.last_bounce, new.suppressed, newly) == (5, D + dt.timedelta(days=1), True, True)
    assert new.lists == (STUDENTS,) and new.address == "a@example.org"
    assert state.score == 4 and not state.suppressed  # the old state is untouched


# ---------------------------------------------------------------- fixtures


@pytest.fixture(params=["sqlite", "postgresql"])
def backend(request):
    return request.param


@pytest.fixture
def store_toml(request, backend):
    if backend == "postgresql":
        return f'backend = "postgresql"\ndsn = "{request.getfixturevalue("pg_dsn")}"\n'
    return ""


class Host:
    """One list server: its config, state directory, spool and stand-in sendmail."""

    def __init__(self, base: Path, store_toml: str, lists: str = COURSE_LISTS):
        self.base = base
        base.mkdir(parents=True, exist_ok=True)
        self.outbox = base / "outbox"
        self.outbox.mkdir(exist_ok=True)
        sendmail = base / "sendmail"
        sendmail.write_text(SENDMAIL.format(dir=self.outbox))
        sendmail.chmod(0o755)
        self.config_path = base / "lists.toml"
        self.state = base / "state"
        self.spool = self.state / "spool"
        self.snapshot = self.state / "snapshot.sqlite"
        self.write_config(store_toml, lists)
        SP.ensure(self.spool)

    def write_config(self, store_toml: str, lists: str = COURSE_LISTS) -> None:
        self.config_path.write_text(f"""
[site]
dmarc = "off"  # no DMARC lookups: this test starts no DNS server (tests/conftest.py)
timezone = "America/Chicago"
state_dir = "{self.state}"
sendmail = "{self.base / 'sendmail'}"
owners = ["{OWNER}"]
[postfix]
map_type = "texthash"
reload = false
[roster]
source = "csv"
csv = "{REPO / 'docs/example/roster.csv'}"
{lists}
[store]
{store_toml}
""")

    @property
    def config(self) -> C.Config:
        return C.load(self.config_path)

    def listfilter(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        proc = subprocess.run([sys.executable, "-m", "listfilter", "--config", str(self.config_path), *args],
                              capture_output=True, text=True, timeout=120)
        if check:
            assert proc.returncode == 0, proc.stderr
        assert "Traceback" not in proc.stderr, proc.stderr
        return proc

    def sync(self) -> subprocess.CompletedProcess:
        return self.listfilter("sync")

    def sent(self) -> list[tuple[list[str], email.message.EmailMessage]]:
        out = []
        for path in sorted(self.outbox.glob("sent.*"), key=lambda p: p.stat().st_mtime_ns):
            argv, raw = path.read_bytes().split(b"\n", 1)
            out.append((argv.decode().split(), email.message_from_bytes(raw, policy=email.policy.default)))
        return out

    def suppressed(self) -> dict[str, str]:
        with Snapshot(self.snapshot) as snap:
            return snap.suppressed_with_reasons()

    def bounce_processes(self, member: str, n: int) -> list[subprocess.Popen]:
        """Start ``n`` listfilter-bounce processes at once, each given the real DSN for ``member``."""
        verp = f"students-bounces+{member.replace('@', '=')}@lists.example.edu"
        procs = []
        for i in range(n):
            p = subprocess.Popen([str(BOUNCE), "--snapshot", str(self.snapshot), "--recipient", verp,
                                  "--queue-id", f"Q{i:04d}"], stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
                                 stderr=subprocess.PIPE)
            procs.append(p)
        sample = DSN_SAMPLE.read_bytes().replace(b"alice@example.edu", member.encode())
        for p in procs:
            p.stdin.write(sample)
            p.stdin.close()
        return procs


def finish(procs: list[subprocess.Popen]) -> None:
    for p in procs:
        err = p.stderr.read()
        assert p.wait(timeout=120) == 0, err
        assert b"Traceback" not in err


def today() -> dt.date:
    return dt.datetime.now(TZ).date()


def record(address: str, day: dt.date, list_address: str = STUDENTS, **fields) -> EV.BounceRecord:
    """A VERP bounce of ``address``'s copy of a post of its own (see :func:`post_of`)."""
    values = dict(id=EV.random_id(), list_address=list_address, received_at=EV.now_utc(), day=day.isoformat(),
                  member=address, permanent=(address,), temporary=(), queue_id="4ABCDEF",
                  message_ids=(f"<post-{EV.random_id()}@example.edu>",))
    values.update(fields)
    return EV.BounceRecord(**values)


def post(message_id: str, recipients, list_address: str = STUDENTS, *, ago: dt.timedelta = dt.timedelta(minutes=1),
         status: str = "delivered", before: dt.datetime | None = None) -> EV.Event:
    """The event deliver writes for a post sent to ``recipients``, ``ago`` before ``before`` (now)."""
    at = (before or dt.datetime.now(dt.timezone.utc)) - ago
    return EV.Event(id=EV.stable_id(message_id, list_address), status=status, list_address=list_address,
                    created_at=at.isoformat(timespec="seconds"), message_id=message_id, sender_email=OWNER,
                    subject="a post", recipients=tuple(recipients), recipient_count=len(recipients))


def post_of(rec: EV.BounceRecord) -> EV.Event:
    """The post a record refers to, delivered to its member a minute before the bounce came."""
    return post(rec.message_ids[0], [rec.member], rec.list_address, before=dt.datetime.fromisoformat(rec.received_at))


def store_posts(store, *recs: EV.BounceRecord) -> None:
    store.upsert([ST.entry_of(post_of(r)) for r in recs])


def spool_bounce(host: Host, rec: EV.BounceRecord) -> EV.BounceRecord:
    """A bounce record in the spool, and its post's event beside it (sync ingests the events first)."""
    SP.write_event(host.spool, post_of(rec))
    SP.write_bounce(host.spool, rec)
    return rec


def counted(store, rec: EV.BounceRecord):
    store_posts(store, rec)
    return B.count(store, rec)


def at_threshold(host: Host, *members: str) -> None:
    """Bring ``members`` to one point below the threshold: a bounce on each of the last four days."""
    for member in members:
        for back in range(B.THRESHOLD - 1, 0, -1):
            spool_bounce(host, record(member, today() - dt.timedelta(days=back)))


@pytest.fixture
def host(tmp_path, store_toml):
    h = Host(tmp_path / "host", store_toml)
    h.listfilter("db", "upgrade")
    h.sync()
    return h


@pytest.fixture
def store(host):
    with ST.open_store(host.config.store) as s:
        yield s


def rows(store, table: str) -> int:
    return store._q(f"SELECT count(*) FROM {table}")[0][0]


def by_address(store) -> dict[str, B.BounceScore]:
    return {s.address: s for s in B.scores(store)}


def spool_files(spool: Path) -> list[str]:
    return sorted(str(p.relative_to(spool / "bounces")) for p in (spool / "bounces").rglob("*")
                  if p.is_file() and p.name != "lock")


# ---------------------------------------------------------------- the schema


def test_migration_4_adds_the_bounce_tables(tmp_path, store_toml, backend):
    h = Host(tmp_path / "h", store_toml)
    with ST.open_store(h.config.store, create=True) as s:
        import unittest.mock

        with unittest.mock.patch.object(MG, "MIGRATIONS", MG.MIGRATIONS[:3]):
            s.upgrade()
        assert s.version() == 3 and [m.version for m in s.pending()] == list(range(4, MG.LATEST + 1))
        assert [m.version for m in s.upgrade()] == list(range(4, MG.LATEST + 1)) and s.version() == MG.LATEST
        for table in ("bounce_scores", "bounce_records", "bounce_notices"):
            assert s._has_table(table)
        if backend == "postgresql":
            cols = dict(s._q("SELECT column_name, data_type FROM information_schema.columns"
                             " WHERE table_name = 'bounce_scores'"))
            assert cols["last_bounce"] == "date" and cols["lists"] == "jsonb" and cols["suppressed"] == "boolean"


def test_migration_5_keeps_every_record_with_its_post_and_reason(tmp_path, store_toml, backend):
    h = Host(tmp_path / "h", store_toml)
    with ST.open_store(h.config.store, create=True) as s:
        import unittest.mock

        with unittest.mock.patch.object(MG, "MIGRATIONS", MG.MIGRATIONS[:4]):
            s.upgrade()
        now = dt.datetime.now(dt.timezone.utc)
        s._execute("INSERT INTO bounce_records (id, list_address, day, received_at, queue_id, counted_at)"
                   " VALUES (?, ?, ?, ?, '', ?)", ("a" * 32, STUDENTS, B._day_param(s, D), s._ts(now), s._ts(now)))
        assert [m.version for m in s.upgrade()] == list(range(5, MG.LATEST + 1))
        # a record counted before the upgrade stays counted
        assert s._q("SELECT member, message_id, counted, reason FROM bounce_records") == [("", "", s._bool(True), "")]


# ---------------------------------------------------------------- what counts


def verdict(store, rec: EV.BounceRecord, members=None) -> str:
    return B.verify(store, rec, members)[0] or "counts"


def test_a_bounce_of_a_post_delivered_to_the_member_counts(store):
    rec = record("alice@example.edu", D)
    store_posts(store, rec)
    assert B.verify(store, rec) == ("", rec.message_ids[0])
    # the Message-ID as the log or the report wrote it, with or without its angle brackets, any case of address
    store.upsert([ST.entry_of(post("bare@example.edu", ["Alice@Example.EDU"]))])
    assert verdict(store, record("alice@example.edu", D, message_ids=("<bare@example.edu>",))) == "counts"
    assert verdict(store, record("alice@example.edu", D, message_ids=("<x@y>", "<bare@example.edu>"))) == "counts"


NOW = dt.datetime.now(dt.timezone.utc)
NOT_COUNTED = [
    # what the report claims, the post in the mail log (None: none), the reason it does not count
    ("no Message-ID", dict(message_ids=()), None, "the report returns no Message-ID of a post (no returned headers)"),
    ("a made-up Message-ID", dict(message_ids=("<forged@evil.example>",)), None,
     f"no post <forged@evil.example> was delivered on {STUDENTS} in the 7 days before the bounce"
     " (not a report of our mail)"),
    ("a post the member did not get", {}, dict(recipients=["bob@example.edu"]),
     "post {mid} was not sent to alice@example.edu"),
    ("a post of another list", {}, dict(list_address=STAFF), "no post {mid} was delivered on " + STUDENTS),
    ("a refused post", {}, dict(status="bounced"), "no post {mid} was delivered"),
    ("a failed post", {}, dict(status="failed"), "no post {mid} was delivered"),
    ("a post older than the window", {}, dict(ago=dt.timedelta(days=B.WINDOW_DAYS, minutes=1)),
     "no post {mid} was delivered"),
    ("a post sent after the bounce came", {}, dict(ago=-2 * B.CLOCK_SKEW), "no post {mid} was delivered"),
    ("the plain -bounces address", dict(member=""), {},
     "no VERP member: a report to the plain -bounces address counts for nobody"),
    ("the mail side's reason", dict(member="", reason="sent to the plain -bounces address: …"), {},
     "sent to the plain -bounces address: …"),
    ("no permanent failure", dict(permanent=()), {}, "no permanent failure of alice@example.edu"),
]


@pytest.mark.parametrize("what,claim,logged,reason", NOT_COUNTED, ids=[c[0] for c in NOT_COUNTED])
def test_what_does_not_count(store, what, claim, logged, reason):
    rec = record("alice@example.edu", D, received_at=NOW.isoformat(), **claim)
    mid = (rec.message_ids or ("<none@example.edu>",))[0]
    if logged is not None:
        fields = {"recipients": [rec.member or "alice@example.edu"], "list_address": STUDENTS, **logged}
        store.upsert([ST.entry_of(post(mid, fields.pop("recipients"), fields.pop("list_address"), before=NOW,
                                       **fields))])
    assert verdict(store, rec).startswith(reason.format(mid=mid))


def test_a_bounce_counts_only_for_a_current_member(store):
    rec = record("alice@example.edu", D)
    store_posts(store, rec)
    assert verdict(store, rec, {STUDENTS: {"alice@example.edu"}}) == "counts"
    assert verdict(store, rec, {STUDENTS: {"bob@example.edu"}}) == f"alice@example.edu is not a member of {STUDENTS} now"
    assert verdict(store, rec, {STAFF: {"alice@example.edu"}}) == f"no list {STUDENTS} any more"


def test_one_post_bounces_once_per_member(host, store):
    """A known Message-ID replayed on five days is one point, not a suppression."""
    first = record("alice@example.edu", D)
    store_posts(store, first)
    outcomes = [B.count(store, first._replace(id=EV.random_id(), day=d.isoformat())) for d in days(0, 1, 2, 3, 4)]
    assert [o.reason for o in outcomes] == [""] + [
        f"a bounce of post {first.message_ids[0]} for alice@example.edu was counted already"] * 4
    alice = by_address(store)["alice@example.edu"]
    assert (alice.score, alice.suppressed) == (1, False)
    # on another list the same post is another copy
    other = first._replace(id=EV.random_id(), list_address=STAFF)
    store.upsert([ST.entry_of(post(first.message_ids[0], ["alice@example.edu"], STAFF))])
    assert B.count(store, other).reason == ""
    assert store._q("SELECT count(*) FROM bounce_records WHERE counted = ?", (store._bool(True),)) == [(2,)]


def test_a_record_that_does_not_count_is_kept_with_its_reason_and_touches_no_score(host, store):
    rec = record("alice@example.edu", D, message_ids=("<forged@evil.example>",))
    SP.write_bounce(host.spool, rec)
    result = B.ingest_bounces(store, host.spool, members={STUDENTS: {"alice@example.edu"}})
    [(seen, reason)] = result.not_counted
    assert seen.id == rec.id and reason.startswith("no post <forged@evil.example> was delivered")
    assert B.scores(store) == []  # no row on /bounces for a forgery
    assert store._q("SELECT member, counted, reason FROM bounce_records") == [
        ("alice@example.edu", store._bool(False), reason)]
    SP.write_bounce(host.spool, rec)  # ingested again: nothing more
    assert B.ingest_bounces(store, host.spool).not_counted == []


# ---------------------------------------------------------------- ingest


def test_ingest_counts_each_record_once(host, store):
    recs = [record("alice@example.edu", d) for d in days(0, 1, 2, 3)]
    recs.append(record("alice@example.edu", D + dt.timedelta(days=3), list_address=STAFF))  # same day, other list
    store_posts(store, *recs)
    for r in recs:
        SP.write_bounce(host.spool, r)
    result = B.ingest_bounces(store, host.spool)
    assert (result.ingested, result.bad, result.newly_suppressed) == (5, [], [])
    assert spool_files(host.spool) == []
    alice = by_address(store)["alice@example.edu"]
    assert (alice.score, alice.last_bounce, alice.suppressed) == (4, D + dt.timedelta(days=3), False)
    assert alice.lists == (STAFF, STUDENTS)
    # a record ingested again (a crash after the commit, before the unlink) is not counted again
    SP.write_bounce(host.spool, recs[0])
    SP.write_bounce(host.spool, recs[3])
    assert B.ingest_bounces(store, host.spool).ingested == 2
    assert by_address(store)["alice@example.edu"].score == 4
    assert rows(store, "bounce_records") == 5
    # the fifth day suppresses, once
    last = record("alice@example.edu", D + dt.timedelta(days=4))
    store_posts(store, last)
    SP.write_bounce(host.spool, last)
    [newly] = B.ingest_bounces(store, host.spool).newly_suppressed
    assert newly.address == "alice@example.edu" and newly.reason == (
        f"5 bounces, the last on {(D + dt.timedelta(days=4)).isoformat()} from {STUDENTS}")
    SP.write_bounce(host.spool, last)
    assert B.ingest_bounces(store, host.spool).newly_suppressed == []
    assert B.suppressed(store) == {"alice@example.edu": newly.reason}
    [notice] = B.notices(store)
    assert (notice.address, notice.list_address, notice.status, notice.score) == (
        "alice@example.edu", STUDENTS, "owed", 5)
    # after a clear, records counted before it (left behind by a crash) do not start a new score
    B.clear(store, "alice@example.edu")
    for r in (*recs, last):
        SP.write_bounce(host.spool, r)
    assert B.ingest_bounces(store, host.spool).ingested == 6
    assert B.scores(store) == []


def test_records_are_scored_in_the_order_of_their_day(host, store):
    later = record("bob@example.edu", D + dt.timedelta(days=1), id="0" * 32)  # the first name…
    earlier = record("bob@example.edu", D, id="f" * 32)  # …is the later day
    store_posts(store, later, earlier)
    for r in (later, earlier):
        SP.write_bounce(host.spool, r)
    assert B.ingest_bounces(store, host.spool).ingested == 2
    bob = by_address(store)["bob@example.edu"]
    assert (bob.score, bob.last_bounce) == (2, D + dt.timedelta(days=1))


def test_a_record_without_permanent_failures_counts_nothing(host, store):
    rec = record("bob@example.edu", D, permanent=(), temporary=("bob@example.edu",))
    store_posts(store, rec)
    SP.write_bounce(host.spool, rec)
    result = B.ingest_bounces(store, host.spool)
    assert result.ingested == 1 and result.not_counted == [(rec, "no permanent failure of bob@example.edu")]
    assert B.scores(store) == [] and rows(store, "bounce_records") == 1


MALFORMED = {
    "not-json.json": b"{not json",
    "empty.json": b"",
    "array.json": b"[1, 2]",
    "bad-id.json": json.dumps({"id": "../../etc", "list_address": STUDENTS, "day": "2026-11-02",
                               "received_at": "2026-11-02T10:00:00+00:00"}).encode(),
    "bad-day.json": json.dumps({"id": "a" * 32, "list_address": STUDENTS, "day": "yesterday",
                                "received_at": "2026-11-02T10:00:00+00:00", "permanent": ["x@example.org"]}).encode(),
    "bad-list.json": json.dumps({"id": "b" * 32, "list_address": "students", "day": "2026-11-02",
                                 "received_at": "2026-11-02T10:00:00+00:00"}).encode(),
    "bad-addresses.json": json.dumps({"id": "c" * 32, "list_address": STUDENTS, "day": "2026-11-02",
                                      "received_at": "2026-11-02T10:00:00+00:00", "permanent": "x@example.org"}
                                     ).encode(),
    "latin1.json": "{\"id\": \"é\"}".encode("latin-1"),
}


def test_bad_records_are_set_aside_with_a_reason_and_the_rest_counted(host, store):
    for name, data in MALFORMED.items():
        (host.spool / "bounces" / name).write_bytes(data)
    (host.spool / "bounces" / "dir.json").mkdir()
    good = record("erin@example.edu", D)
    store_posts(store, good)
    SP.write_bounce(host.spool, good)
    result = B.ingest_bounces(store, host.spool)
    assert result.ingested == 1 and by_address(store)["erin@example.edu"].score == 1
    assert sorted(n for n, _ in result.bad) == sorted([*MALFORMED, "dir.json"])
    bad = host.spool / "bounces" / "bad"
    for name in MALFORMED:
        assert (bad / name).exists() and (bad / f"{name}.reason").read_text().strip()
    assert "id: not a record id" in (bad / "bad-id.json.reason").read_text()
    assert "not ISO 8601" in (bad / "bad-day.json.reason").read_text()
    assert "expected a list of addresses" in (bad / "bad-addresses.json.reason").read_text()
    assert [p for p in (host.spool / "bounces").iterdir() if p.name.endswith(".json")] == []
    assert B.ingest_bounces(store, host.spool).ingested == 0  # nothing left; bad/ is left alone


def test_records_stay_until_committed_and_a_crash_is_taken_up(host, store, monkeypatch):
    recs = sorted((record("alice@example.edu", d) for d in days(0, 1, 2)), key=lambda r: r.day)
    store_posts(store, *recs)
    for r in recs:
        SP.write_bounce(host.spool, r)
    real = B.count
    calls = []

    def flaky(s, rec, now=None, **kw):
        calls.append(rec.id)
        if len(calls) == 2:
            raise ST.StoreError("the store went away")
        return real(s, rec, now, **kw)

    monkeypatch.setattr(B, "count", flaky)
    with pytest.raises(ST.StoreError):
        B.ingest_bounces(store, host.spool)
    # the first record is committed and gone; the other two wait, claimed
    assert spool_files(host.spool) == sorted(f".ingest/{r.id}.json" for r in recs[1:])
    assert len(B.waiting(host.spool)) == 2
    monkeypatch.undo()
    result = B.ingest_bounces(store, host.spool)
    assert result.ingested == 2 and spool_files(host.spool) == []
    assert by_address(store)["alice@example.edu"].score == 3


def test_a_concurrent_scoring_waits_for_the_row_and_suppresses_once(host, backend, monkeypatch):
    """Two ingests (two hosts) score the same address at the threshold at the same moment.

    The first holds the address's row inside its transaction; the second
    must wait for it, then read the committed score: one suppression, one notice.
    """
    with ST.open_store(host.config.store) as s:
        for r in (record("alice@example.edu", d) for d in days(0, 1, 2, 3)):
            counted(s, r)
        today_s = [record("alice@example.edu", D + dt.timedelta(days=4)) for _ in range(2)]
        store_posts(s, *today_s)
    inside, release = threading.Event(), threading.Event()
    real = B.score

    def slow(state, day, **kw):
        if threading.current_thread().name == "first":
            inside.set()
            assert release.wait(30)
        return real(state, day, **kw)

    monkeypatch.setattr(B, "score", slow)
    results, errors = {}, []

    def scoring(name: str) -> None:
        try:
            with ST.open_store(host.config.store) as s:
                results[name] = B.count(s, today_s[0 if name == "first" else 1])
        except Exception as exc:  # reported below
            errors.append(exc)

    first = threading.Thread(target=scoring, args=("first",), name="first")
    second = threading.Thread(target=scoring, args=("second",), name="second")
    first.start()
    assert inside.wait(30)
    second.start()
    second.join(1.0)
    assert second.is_alive(), "the second scoring did not wait for the first one's row"
    release.set()
    first.join(30)
    second.join(30)
    assert errors == []
    assert [s.address for s in results["first"].newly] == ["alice@example.edu"] and results["second"].newly == []
    assert results["second"].reason == ""  # counted (another post), on a day already counted
    with ST.open_store(host.config.store) as s:
        assert len(B.notices(s)) == 1
        alice = by_address(s)["alice@example.edu"]
        assert (alice.score, alice.suppressed) == (5, True)


def test_a_notice_being_sent_by_one_sync_is_skipped_by_another(host, monkeypatch):
    """Two hosts' syncs send owed notices at the same moment: each notice goes out once."""
    import listfilter.common.sendmail as SM

    with ST.open_store(host.config.store) as s:
        for r in (record("alice@example.edu", d) for d in days(0, 1, 2, 3, 4)):
            counted(s, r)
    lists = [type("L", (), dict(address=STUDENTS, display_name="CS 199 Students", domain="lists.example.edu",
                                owners=(OWNER,)))]
    inside, release, submitted = threading.Event(), threading.Event(), []

    def submit(sendmail, sender, recipients, message, **kw):
        submitted.append(threading.current_thread().name)
        if threading.current_thread().name == "first":
            inside.set()
            assert release.wait(30)

    monkeypatch.setattr(SM, "submit", submit)
    results = {}

    def sending(name: str) -> None:
        with ST.open_store(host.config.store) as s:
            results[name] = B.send_owed(s, lists, "/usr/sbin/sendmail", {"alice@example.edu"})

    first = threading.Thread(target=sending, args=("first",), name="first")
    first.start()
    assert inside.wait(30)
    second = threading.Thread(target=sending, args=("second",), name="second")
    second.start()
    second.join(2.0)  # SQLite: waits for the first (one writer); PostgreSQL: skips the locked notice
    release.set()
    first.join(30)
    second.join(30)
    assert submitted == ["first"]
    assert [n.address for n in results["first"].sent] == ["alice@example.edu"] and results["second"].sent == []
    with ST.open_store(host.config.store) as s:
        [notice] = B.notices(s)
        assert (notice.status, notice.attempts) == ("sent", 1)


def test_a_notice_waits_until_the_installed_snapshot_suppresses_the_address(host, store, monkeypatch):
    import listfilter.common.sendmail as SM

    for r in (record("alice@example.edu", d) for d in days(0, 1, 2, 3, 4)):
        counted(store, r)
    submitted = []
    monkeypatch.setattr(SM, "submit", lambda *a, **kw: submitted.append(a))
    lists = [type("L", (), dict(address=STUDENTS, display_name="CS 199 Students", domain="lists.example.edu",
                                owners=(OWNER,)))]
    assert B.send_owed(store, lists, "sendmail", frozenset()).sent == [] and submitted == []
    assert [n.status for n in B.notices(store)] == ["owed"]
    # a list gone from the config: the notice is dropped, with the reason
    assert [n.address for n, _ in B.send_owed(store, [], "sendmail", {"alice@example.edu"}).dropped] == [
        "alice@example.edu"]
    [notice] = B.notices(store)
    assert (notice.status, notice.last_error) == ("dropped", f"no list {STUDENTS} in the config any more")
    assert submitted == []


def test_the_owner_notice_goes_to_staging_while_the_valve_is_on(host, store, monkeypatch):
    import listfilter.common.sendmail as SM

    for r in (record("alice@example.edu", d) for d in days(0, 1, 2, 3, 4)):
        counted(store, r)
    submitted = []
    monkeypatch.setattr(SM, "submit", lambda *a, **kw: submitted.append(a))
    lists = [type("L", (), dict(address=STUDENTS, display_name="CS 199 Students", domain="lists.example.edu",
                                owners=(OWNER,), redirect_to="staging@example.edu"))]
    assert [n.address for n in B.send_owed(store, lists, "sendmail", {"alice@example.edu"}).sent] == [
        "alice@example.edu"]
    [(_, sender, recipients, message)] = submitted
    assert (sender, recipients) == ("", ["staging@example.edu"])
    parsed = email.message_from_bytes(message, policy=email.policy.default)
    assert parsed["X-Listfilter-Redirected-Recipients"] == f"1 recipient: {OWNER}"
    assert parsed["To"] == OWNER  # the notice as the owners would have had it


def test_clear_lifts_the_suppression_and_drops_an_owed_notice(host, store):
    for r in (record("alice@example.edu", d) for d in days(0, 1, 2, 3, 4)):
        counted(store, r)
    was = B.clear(store, " Alice@Example.edu ")
    assert was.suppressed and was.score == 5
    assert B.scores(store) == [] and B.suppressed(store) == {}
    [notice] = B.notices(store)
    assert notice.status == "dropped" and "lifted" in notice.last_error
    assert B.clear(store, "alice@example.edu") is None
    counted(store, record("alice@example.edu", D + dt.timedelta(days=5)))
    assert by_address(store)["alice@example.edu"].score == 1  # it starts again from nothing


# ---------------------------------------------------------------- through real processes


def test_forty_concurrent_bounces_at_the_threshold_send_one_notice(host):
    at_threshold(host, "alice@example.edu")
    SP.write_event(host.spool, post(DSN_POST, ["alice@example.edu", "bob@example.edu"]))
    host.sync()
    with ST.open_store(host.config.store) as s:
        assert by_address(s)["alice@example.edu"].score == B.THRESHOLD - 1
    assert host.sent() == [] and host.suppressed() == {}
    finish(host.bounce_processes("alice@example.edu", 40))
    assert len(SP.pending_bounces(host.spool)) == 40
    out = host.sync()
    assert "bounces: 40 records scored" in out.stdout
    assert "alice@example.edu suppressed" in out.stdout
    # one post bounces once per member: the other 39 reports of it count for nothing
    assert out.stdout.count(f"a bounce of post {DSN_POST} for alice@example.edu was counted already") == 20
    assert "bounces: 19 more records not counted" in out.stdout
    [(argv, notice)] = host.sent()
    assert argv == ["-G", "-i", "-f", "<>", "--", OWNER]  # the null sender: it cannot bounce back
    assert notice["Auto-Submitted"] == "auto-generated"
    assert notice["To"] == OWNER
    assert notice["From"].addresses[0].addr_spec == "students-bounces@lists.example.edu"
    assert notice["Subject"] == "alice@example.edu no longer receives CS 199 Students mail (bouncing)"
    text = notice.get_content()
    assert "listfilter bounces clear alice@example.edu" in text and f"on {B.THRESHOLD} different days" in text
    assert list(host.suppressed()) == ["alice@example.edu"]
    assert host.suppressed()["alice@example.edu"].startswith(f"{B.THRESHOLD} bounces, the last on {today()}")
    # the next syncs send nothing more
    host.sync()
    host.sync()
    assert len(host.sent()) == 1
    shown = json.loads(host.listfilter("bounces", "--json").stdout)
    assert shown["suppressed"] == ["alice@example.edu"]
    assert [n["status"] for n in shown["notices"]] == ["sent"]


def forge(host: Host, member: str, raw: bytes) -> subprocess.CompletedProcess:
    """A stranger's report mailed straight to ``member``'s VERP address, through the real command."""
    verp = f"students-bounces+{member.replace('@', '=')}@lists.example.edu"
    return subprocess.run([str(BOUNCE), "--snapshot", str(host.snapshot), "--recipient", verp, "--queue-id", "F0RGED"],
                          input=raw, capture_output=True, timeout=120)


def test_forged_bounces_on_five_days_never_suppress_a_member(host):
    real = DSN_SAMPLE.read_bytes()
    SP.write_event(host.spool, post("<to-staff@example.edu>", ["alice@example.edu"], STAFF))
    SP.write_event(host.spool, post("<to-bob@example.edu>", ["bob@example.edu"]))
    forgeries = [
        real.replace(DSN_POST.encode(), b"<made-up@evil.example>"),  # a Message-ID nobody sent
        real.split(b"Content-Type: text/rfc822-headers")[0],  # no returned headers at all
        real.replace(DSN_POST.encode(), b"<to-staff@example.edu>"),  # a real post, of another list
        real.replace(DSN_POST.encode(), b"<to-bob@example.edu>"),  # a real post alice did not get
        real.replace(DSN_POST.encode(), b"<made-up@evil.example>"),
    ]
    for back, raw in zip(range(4, -1, -1), forgeries):
        assert forge(host, "alice@example.edu", raw).returncode == 0
        [path] = SP.pending_bounces(host.spool)
        data = json.loads(path.read_text())  # the day it came: one of five days
        path.write_text(json.dumps({**data, "day": (today() - dt.timedelta(days=back)).isoformat()}))
        out = host.sync()
        assert "bounces: not counted for alice@example.edu on students@lists.example.edu" in out.stdout
    assert host.suppressed() == {}
    with ST.open_store(host.config.store) as s:
        assert B.scores(s) == []
        reasons = [r for (r,) in s._q("SELECT reason FROM bounce_records ORDER BY day")]
    assert len(reasons) == 5 and all(reasons)
    # and a stranger's bounce for a made-up address leaves not even a record
    proc = forge(host, "mallory@evil.example", real)
    assert proc.returncode == 0 and SP.pending_bounces(host.spool) == []
    # a real bounce of a real post still counts
    SP.write_event(host.spool, post(DSN_POST, ["alice@example.edu"]))
    assert forge(host, "alice@example.edu", real).returncode == 0
    host.sync()
    with ST.open_store(host.config.store) as s:
        assert by_address(s)["alice@example.edu"].score == 1


def test_a_bounce_counts_for_the_members_this_sync_compiled(tmp_path, store_toml):
    """Sync checks membership against the roster it just read, not the snapshot installed before."""
    roster = tmp_path / "roster.csv"
    roster.write_text((REPO / "docs/example/roster.csv").read_text())
    h = Host(tmp_path / "h", store_toml)
    h.config_path.write_text(h.config_path.read_text().replace(str(REPO / "docs/example/roster.csv"), str(roster)))
    h.listfilter("db", "upgrade")
    h.sync()
    with Snapshot(h.snapshot) as snap:
        assert "alice@example.edu" in {e for e, _ in snap.members(STUDENTS)}
    roster.write_text("".join(line for line in roster.read_text().splitlines(keepends=True)
                              if not line.startswith("alice@")))
    bob, alice = record("bob@example.edu", today()), record("alice@example.edu", today())
    spool_bounce(h, bob)
    spool_bounce(h, alice)
    out = h.sync()
    assert "mail log: 2 events logged (before scoring bounces)" in out.stdout
    assert (f"bounces: not counted for alice@example.edu on {STUDENTS} ({alice.id}):"
            f" alice@example.edu is not a member of {STUDENTS} now") in out.stdout
    with ST.open_store(h.config.store) as s:
        assert {x.address: x.score for x in B.scores(s)} == {"bob@example.edu": 1}


def test_two_hosts_sharing_a_postgresql_store_keep_one_score(tmp_path, pg_dsn):
    store_toml = f'backend = "postgresql"\ndsn = "{pg_dsn}"\n'
    a, b = Host(tmp_path / "a", store_toml), Host(tmp_path / "b", store_toml)
    a.listfilter("db", "upgrade")
    a.sync()
    b.sync()
    # alice's copies bounce on alternate hosts on four days: one score of 4
    for back, h in zip(range(4, 0, -1), (a, b, a, b)):
        spool_bounce(h, record("alice@example.edu", today() - dt.timedelta(days=back)))
        h.sync()
    at_threshold(a, "bob@example.edu", "erin@example.edu")
    a.sync()
    with ST.open_store(a.config.store) as s:
        assert {x.address: x.score for x in B.scores(s)} == {
            "alice@example.edu": 4, "bob@example.edu": 4, "erin@example.edu": 4}
    # today, forty bounces of one post arrive on both hosts at once, and both hosts sync at once
    with ST.open_store(a.config.store) as s:
        s.upsert([ST.entry_of(post(DSN_POST, ["alice@example.edu", "bob@example.edu", "erin@example.edu"]))])
    procs = []
    for h in (a, b):
        for member, n in (("alice@example.edu", 7), ("bob@example.edu", 7), ("erin@example.edu", 6)):
            procs += h.bounce_processes(member, n)
    finish(procs)
    syncs = [subprocess.Popen([sys.executable, "-m", "listfilter", "--config", str(h.config_path), "sync"],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for h in (a, b)]
    for p in syncs:
        out, err = p.communicate(timeout=120)
        assert p.returncode == 0 and "warning" not in err, err
    notices = a.sent() + b.sent()
    told = sorted(re.match(r"(\S+) no longer", m["Subject"]).group(1) for _, m in notices)
    assert told == ["alice@example.edu", "bob@example.edu", "erin@example.edu"]  # one each, from one host or the other
    with ST.open_store(a.config.store) as s:
        assert {x.address: (x.score, x.suppressed) for x in B.scores(s)} == {
            "alice@example.edu": (5, True), "bob@example.edu": (5, True), "erin@example.edu": (5, True)}
        assert rows(s, "bounce_scores") == 3 and len(B.notices(s)) == 3
    for h in (a, b):
        assert sorted(h.suppressed()) == ["alice@example.edu", "bob@example.edu", "erin@example.edu"]


def test_the_owner_notice_is_retried_after_sendmail_failed(host):
    at_threshold(host, "alice@example.edu")
    spool_bounce(host, record("alice@example.edu", today()))
    (host.outbox / "FAIL").touch()
    out = host.sync()
    assert "alice@example.edu" in host.suppressed()  # the suppression does not wait for the notice
    assert ("bounces: notice to the owners of students@lists.example.edu about alice@example.edu not sent"
            in out.stderr) and "simulated outage" in out.stderr and "retried at the next sync" in out.stderr
    assert host.sent() == []
    shown = host.listfilter("bounces").stdout
    assert "SUPPRESSED" in shown and "owners' notice owed, 1 failed attempt" in shown
    host.sync()
    (host.outbox / "FAIL").unlink()
    out = host.sync()
    assert "told the owners of students@lists.example.edu that alice@example.edu is suppressed" in out.stdout
    assert len(host.sent()) == 1
    host.sync()
    assert len(host.sent()) == 1
    with ST.open_store(host.config.store) as s:
        [notice] = B.notices(s)
        assert (notice.status, notice.attempts, notice.last_error) == ("sent", 3, "")


def test_a_store_that_cannot_be_used_keeps_the_installed_suppressions(tmp_path):
    h = Host(tmp_path / "h", "")
    h.listfilter("db", "upgrade")
    at_threshold(h, "alice@example.edu")
    spool_bounce(h, record("alice@example.edu", today()))
    h.sync()
    assert list(h.suppressed()) == ["alice@example.edu"]
    store_file = h.config.store.path
    store_file.rename(store_file.with_name("away.sqlite"))
    # a config change rewrites the snapshot while the store is gone: alice stays suppressed
    h.write_config("", COURSE_LISTS + '\n[lists.extra]\nmembers = { emails = ["alice@example.edu"] }\n'
                                      'posters = ["instructor@example.edu"]\n')
    spool_bounce(h, record("bob@example.edu", today()))
    out = h.sync()
    assert "updated snapshot" in out.stdout
    assert ("bounces not scored: the store" in out.stderr and "1 bounce record waiting in" in out.stderr
            and "keeping the installed snapshot's 1 suppressed address" in out.stderr)
    assert list(h.suppressed()) == ["alice@example.edu"]
    assert len(SP.pending_bounces(h.spool)) == 1  # bob's record waits for the store
    # the store is back: bob's record is scored, alice is still suppressed
    store_file.with_name("away.sqlite").rename(store_file)
    h.sync()
    assert SP.pending_bounces(h.spool) == [] and list(h.suppressed()) == ["alice@example.edu"]


def test_clear_takes_effect_at_the_next_sync(host):
    at_threshold(host, "alice@example.edu")
    spool_bounce(host, record("alice@example.edu", today()))
    host.sync()
    assert "alice@example.edu" in host.suppressed()
    out = host.listfilter("bounces", "clear", "Alice@Example.edu")
    assert out.stdout.strip() == ("alice@example.edu: suppression lifted, score 5 cleared;"
                                  " the lists send to it again after the next `listfilter sync`")
    assert "alice@example.edu" in host.suppressed()  # the snapshot changes only with a sync
    assert host.listfilter("sync", "--dry-run").stdout.strip().endswith("dry run: would update snapshot")
    assert "updated snapshot" in host.sync().stdout
    assert host.suppressed() == {}
    assert host.listfilter("bounces").stdout.strip() == "no bounces recorded"
    proc = host.listfilter("bounces", "clear", "alice@example.edu", check=False)
    assert (proc.returncode, proc.stderr) == (1, "listfilter: no bounce score for alice@example.edu\n")


@pytest.mark.parametrize("args", [["bounces"], ["bounces", "--json"], ["bounces", "clear", "alice@example.edu"]])
def test_the_cli_says_one_line_when_the_store_cannot_be_used(tmp_path, args):
    h = Host(tmp_path / "h", "")  # no `db upgrade`: there is no store
    proc = h.listfilter(*args, check=False)
    assert proc.returncode == 1 and proc.stdout == ""
    assert proc.stderr.splitlines() == [f"listfilter: the store {h.config.store.path} does not exist:"
                                        " run `listfilter db upgrade`"]
    h.config.store.path.parent.mkdir(parents=True)
    with sqlite3.connect(h.config.store.path) as db:  # a store behind: one line too
        db.execute("CREATE TABLE listfilter_migrations (version integer PRIMARY KEY, name text, applied_at text)")
        db.execute("INSERT INTO listfilter_migrations VALUES (3, 'v3', '2026-01-01')")
    proc = h.listfilter(*args, check=False)
    assert proc.returncode == 1 and len(proc.stderr.splitlines()) == 1
    assert f"schema version 3 of {MG.LATEST}: run `listfilter db upgrade`" in proc.stderr


def test_the_bounces_page_reads_the_store(host, store):
    from listfilter.admin import app as W
    from listfilter.admin import auth as A

    for r in (record("gone@example.edu", d) for d in days(0, 1, 2, 3, 4)):
        counted(store, r)
    for r in (record("flaky@example.edu", d, list_address=STAFF) for d in days(3, 4)):
        counted(store, r)
    web = f'\n[web]\nadmins = ["dean@example.edu"]\n[web.accounts]\n"dean@example.edu" = "{A.hash_password("pw")}"\n'
    host.write_config(host.config_path.read_text().split("[store]\n", 1)[1], COURSE_LISTS + web)
    client = W.create_app(host.config).test_client()
    assert client.get("/bounces").status_code in (302, 401)  # not without signing in
    token = re.search(r'name="csrf_token" value="([^"]+)"', client.get("/login").get_data(as_text=True)).group(1)
    client.post("/login", data={"csrf_token": token, "username": "dean@example.edu", "password": "pw",
                                "next": "/bounces"})
    html = client.get("/bounces").get_data(as_text=True)
    found = re.findall(r'<tr data-address="([^"]+)">(.*?)</tr>', html, re.S)
    assert [a for a, _ in found] == ["gone@example.edu", "flaky@example.edu"]  # suppressed first
    assert 'class="badge failed">suppressed<' in found[0][1] and STUDENTS in found[0][1]
    assert "notice owed" in found[0][1] and "5 bounces, the last on" in found[0][1]
    assert "counting" in found[1][1] and ">2<" in found[1][1] and STAFF in found[1][1]
    # the reports that did not count are on the page too, with their reason, escaped
    assert 'id="none-uncounted"' in html
    forged = record("alice@example.edu", D, message_ids=("<forged-<b>x</b>@evil.example>",))
    assert B.count(store, forged).reason
    html = client.get("/bounces").get_data(as_text=True)
    rows = re.findall(r'<tr data-id="([^"]+)">(.*?)</tr>', html, re.S)
    assert [i for i, _ in rows] == [forged.id]
    assert "alice@example.edu" in rows[0][1] and "not a report of our mail" in rows[0][1]
    assert "<b>" not in rows[0][1] and "&lt;b&gt;" in rows[0][1]


def test_bounces_records_shows_what_did_not_count_and_why(host, store):
    good = record("gone@example.edu", D, received_at=(NOW - dt.timedelta(hours=1)).isoformat())
    assert counted(store, good).reason == ""
    forged = record("alice@example.edu", D, message_ids=("<forged@evil.example>",))
    assert B.count(store, forged).reason
    lines = host.listfilter("bounces", "records").stdout.splitlines()
    assert len(lines) == 2
    assert lines[1].endswith("\tcounted") and "gone@example.edu" in lines[1]  # newest first
    assert "alice@example.edu\tNOT COUNTED: no post <forged@evil.example> was delivered" in lines[0]
    only = json.loads(host.listfilter("bounces", "records", "--not-counted", "--json").stdout)
    assert [(r["id"], r["member"], r["counted"]) for r in only] == [(forged.id, "alice@example.edu", False)]
    assert "not a report of our mail" in only[0]["reason"]
    old = record("old@example.edu", D, received_at=(NOW - dt.timedelta(days=9)).isoformat())
    assert B.count(store, old).reason
    assert len(json.loads(host.listfilter("bounces", "records", "--json").stdout)) == 2
    assert len(json.loads(host.listfilter("bounces", "records", "--days", "10", "--json").stdout)) == 3
