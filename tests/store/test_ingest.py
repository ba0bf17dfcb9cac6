"""Spool events into the store: idempotent, crash-safe, malformed files set aside; sync and retention."""

from __future__ import annotations

import datetime as dt
import fcntl
import json
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from listfilter.common import events as EV
from listfilter.cli.sync import SYNC_USER_ENV
from listfilter.common import spool as SP
from listfilter.store import database as ST
from listfilter.store import ingest as IN
from listfilter.sync import config as C
from listfilter.sync import run as Y

from ..cli.runner import listfilter
from ..conftest import COURSE_LISTS, REPO
from . import test_database as DB
from .test_database import CSV_ROSTER, STUDENTS, T0, event, write_event

#: The store fixtures of test_database (pytest finds fixtures among a module's names).
backend, store_toml, config_path, config, store = DB.backend, DB.store_toml, DB.config_path, DB.config, DB.store


@pytest.fixture
def spool(config):
    return config.site.spool_dir


def rows(store) -> dict[str, ST.Entry]:
    return {e.id: e for e in store.entries(limit=10_000)}


def spool_files(spool) -> list[str]:
    return sorted(str(p.relative_to(spool / "events")) for p in (spool / "events").rglob("*")
                  if p.is_file() and p.name != "lock")


def test_ingest_moves_events_and_is_idempotent(store, spool):
    evs = [event(n) for n in range(5)]
    for ev in evs:
        write_event(spool, ev)
    result = IN.ingest(store, spool)
    assert (result.ingested, result.bad) == (5, [])
    assert spool_files(spool) == []
    got = rows(store)
    assert sorted(got) == sorted(e["id"] for e in evs)
    assert got[evs[2]["id"]].recipients == ["alice@example.edu", "bob@example.edu"]
    # the same record again (e.g. a crash after commit, before the unlink): still one row
    write_event(spool, evs[2])
    assert IN.ingest(store, spool).ingested == 1
    assert store.count() == 5
    assert IN.ingest(store, spool).ingested == 0  # nothing left


def test_a_retry_updates_the_same_row_newest_wins(store, spool):
    failed = event(1, status="failed", error_message="sendmail failed after 0 of 2 recipients; Postfix will retry")
    write_event(spool, failed)
    IN.ingest(store, spool)
    delivered = event(1, created_at=(T0 + dt.timedelta(minutes=20)).isoformat())
    write_event(spool, delivered)
    IN.ingest(store, spool)
    [row] = rows(store).values()
    assert (row.status, row.error_message) == ("delivered", "")
    write_event(spool, failed)  # an older record turning up late does not win
    IN.ingest(store, spool)
    [row] = rows(store).values()
    assert row.status == "delivered"


def test_a_newer_record_written_during_ingest_is_not_lost(store, spool, monkeypatch):
    """deliver replaces <id>.json by rename: the file ingest removes must be the one it stored."""
    old = event(1, status="failed")
    path = write_event(spool, old)
    real_upsert = store.upsert
    calls = []

    def upsert(entries):
        if not calls:  # mid-ingest, a retry of the same message writes its newer record
            tmp = path.with_name(".tmp")
            tmp.write_text(json.dumps(event(1, created_at=(T0 + dt.timedelta(hours=1)).isoformat())))
            os.replace(tmp, path)
        calls.append(entries)
        return real_upsert(entries)

    monkeypatch.setattr(store, "upsert", upsert)
    IN.ingest(store, spool)
    assert path.exists()  # the newer record is still waiting
    assert rows(store)[old["id"]].status == "failed"
    IN.ingest(store, spool)
    assert rows(store)[old["id"]].status == "delivered" and not path.exists()


def test_files_stay_until_committed_and_a_crash_is_taken_up(store, spool, monkeypatch):
    for n in range(3):
        write_event(spool, event(n))
    seen = []

    def failing(entries):
        seen.append(spool_files(spool))  # at commit time every file is still there (claimed)
        raise ST.StoreError("the store went away")

    monkeypatch.setattr(store, "upsert", failing)
    with pytest.raises(ST.StoreError):
        IN.ingest(store, spool)
    assert seen == [[f".ingest/{event(n)['id']}.json" for n in sorted(range(3), key=lambda n: event(n)["id"])]]
    assert len(SP.pending_events(spool)) == 3  # nothing lost
    monkeypatch.undo()
    # a new version of one claimed record arrives before the next ingest: both are read, newest wins
    write_event(spool, event(0, status="bounced", created_at=(T0 + dt.timedelta(hours=2)).isoformat()))
    result = IN.ingest(store, spool)
    assert result.ingested == 4 and spool_files(spool) == []
    assert rows(store)[event(0)["id"]].status == "bounced"
    assert store.count() == 3


MALFORMED = {
    "not-json.json": b"{not json",
    "empty.json": b"",
    "array.json": b"[1, 2]",
    "latin1.json": '{"id": "caf\xe9"}'.encode("latin-1"),
    "bad-status.json": json.dumps(event(90, status="dropped")).encode(),
    "no-id.json": json.dumps({k: v for k, v in event(91).items() if k != "id"}).encode(),
    "bad-id.json": json.dumps(event(92, id="../../etc/passwd")).encode(),
    "short-id.json": json.dumps(event(98, id="0123456789abcdef")).encode(),
    "bad-time.json": json.dumps(event(93, created_at="yesterday")).encode(),
    "bad-recipients.json": json.dumps(event(94, recipients="alice@example.edu")).encode(),
    "bad-count.json": json.dumps(event(95, recipient_count=-1)).encode(),
    "bad-subject.json": json.dumps(event(96, subject={"a": 1})).encode(),
    "no-list.json": json.dumps(event(97, list_address="")).encode(),
}


def test_malformed_files_are_set_aside_and_never_block_the_others(store, spool):
    good = [event(n) for n in range(3)]
    write_event(spool, good[0])
    for name, content in MALFORMED.items():
        (spool / "events" / name).write_bytes(content)
    write_event(spool, good[1])
    (spool / "events" / "dir.json").mkdir()
    write_event(spool, good[2])
    (spool / "events" / ".deliver-tmp.json.123.tmp").write_text("{")  # a record being written: not ours yet
    result = IN.ingest(store, spool)
    assert result.ingested == 3 and sorted(rows(store)) == sorted(e["id"] for e in good)
    reasons = dict(result.bad)
    assert set(reasons) == set(MALFORMED) | {"dir.json"}
    assert reasons["not-json.json"].startswith("not JSON: ")
    assert reasons["latin1.json"] == "not UTF-8 (byte 11)"
    assert reasons["bad-status.json"] == ("status: 'dropped' is not one of delivered, bounced, rejected, failed,"
                                          " discarded, deferred, held")
    assert reasons["bad-id.json"] == "id: not an event id: '../../etc/passwd'"
    assert reasons["short-id.json"] == "id: not an event id: '0123456789abcdef'"
    assert reasons["bad-time.json"].startswith("created_at: not an ISO 8601 time")
    assert reasons["array.json"] == "expected a JSON object, not list"
    bad = spool / "events" / "bad"
    for name, content in MALFORMED.items():
        assert (bad / name).read_bytes() == content  # moved, untouched
        assert (bad / f"{name}.reason").read_text().strip() == reasons[name]
    assert (spool / "events" / ".deliver-tmp.json.123.tmp").exists()
    assert [p.name for p in SP.bad_events(spool)] == sorted([*MALFORMED, "dir.json"])
    # a second file of the same name later: kept beside the first, not over it
    (spool / "events" / "empty.json").write_bytes(b"")
    IN.ingest(store, spool)
    assert len([p for p in bad.iterdir() if p.name.startswith("empty.") and p.name.endswith(".json")]) == 2


def test_a_row_the_database_refuses_is_set_aside(store, spool, monkeypatch):
    """Validation is the first line; if the database still refuses one row, the batch goes on without it."""
    real = IN.entry_of

    def lenient(ev, **kw):
        e = real(ev, **kw)
        if ev.subject == "weird":
            e.status = "weird"  # slips past validation: the CHECK constraint / enum refuses it
        return e

    monkeypatch.setattr(IN, "entry_of", lenient)
    write_event(spool, event(1))
    write_event(spool, event(2, subject="weird"), name="weird.json")
    write_event(spool, event(3))
    result = IN.ingest(store, spool)
    assert result.ingested == 2 and store.count() == 2
    [(name, reason)] = result.bad
    assert name == "weird.json" and reason.startswith("refused by the store: ")
    assert spool_files(spool) == ["bad/weird.json", "bad/weird.json.reason"]


def test_legacy_uuid_ids_are_still_ingested(store, spool):
    """Records written before ids became 32 hex characters carry a UUID: still valid, kept as written."""
    legacy = str(uuid.uuid4())
    write_event(spool, event(1, id=legacy.upper()))
    write_event(spool, event(2))
    assert IN.ingest(store, spool).ingested == 2
    assert store.get(legacy).subject == "Message 1"  # lower-cased, as /email/<id> looks it up
    assert len(event(2)["id"]) == 32 and store.get(event(2)["id"]).subject == "Message 2"


def test_one_ingest_at_a_time(store, spool):
    write_event(spool, event(1))
    (spool / "events" / ".ingest").mkdir(exist_ok=True)
    fd = os.open(spool / "events" / ".ingest" / "lock", os.O_RDWR | os.O_CREAT)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        result = IN.ingest(store, spool, wait=False)  # `listfilter log`'s way: skip, do not wait
        assert result.busy and result.ingested == 0
    finally:
        os.close(fd)
    assert IN.ingest(store, spool, wait=False).ingested == 1


def test_ingest_in_many_batches(store, spool, monkeypatch):
    """More records than one batch (bench/ingest_bench.py measures the rate)."""
    n = 1234
    for i in range(n):
        write_event(spool, event(i, recipients=[f"member{k}@example.edu" for k in range(20)], recipient_count=20))
    batches = []
    real = store.upsert
    monkeypatch.setattr(store, "upsert", lambda entries: (batches.append(len(entries)), real(entries))[1])
    result = IN.ingest(store, spool, batch=500)
    assert result.ingested == n and store.count() == n and spool_files(spool) == []
    assert batches == [500, 500, 234]


# ---------------------------------------------------------------- through listfilter sync


def test_sync_ingests_and_applies_retention(config_path, config, spool):
    old = event(1, created_at=(dt.datetime.now(dt.timezone.utc) - dt.timedelta(days=400)).isoformat())
    write_event(spool, old)
    write_event(spool, event(2, created_at=dt.datetime.now(dt.timezone.utc).isoformat()))
    (spool / "events" / "junk.json").write_text("junk")
    # no store yet: the snapshot and maps are installed all the same; the events wait
    proc = listfilter(config_path, "sync")
    assert proc.returncode == 0, proc.stderr
    assert "updated snapshot" in proc.stdout and config.site.snapshot_path.exists()
    assert "listfilter: warning: mail log not updated and bounces not scored: " in proc.stderr
    assert "run `listfilter db upgrade`; 3 events waiting in" in proc.stderr
    assert proc.stderr.count("the store ") == 1  # one cause, said once
    assert len(SP.pending_events(spool)) == 3
    assert listfilter(config_path, "db", "upgrade").returncode == 0
    proc = listfilter(config_path, "sync")
    assert proc.returncode == 0, proc.stderr
    assert "mail log: 2 events logged, 1 row older than 365 days purged" in proc.stdout
    assert proc.stderr.startswith("listfilter: warning: spool event junk.json is malformed, moved to ")
    assert SP.pending_events(spool) == []
    with ST.open_store(config.store) as s:
        assert [e.subject for e in s.entries()] == ["Message 2"]
    proc = listfilter(config_path, "sync")  # nothing to do: nothing said
    assert proc.returncode == 0 and proc.stderr == "" and "mail log" not in proc.stdout
    proc = listfilter(config_path, "check")
    assert "PROBLEM  spool: 1 malformed event file" in proc.stdout


def test_sync_with_the_store_down_still_updates_the_lists(make_config, tmp_path):
    path = make_config('[store]\ndsn = "postgresql://postgres@127.0.0.1:1/gone?connect_timeout=2"\n'
                       + COURSE_LISTS, roster=CSV_ROSTER)
    config = C.load(path)
    write_event(config.site.spool_dir, event(1))
    proc = listfilter(path, "sync")
    assert proc.returncode == 0, proc.stderr
    assert "updated snapshot, map domains" in proc.stdout
    lines = proc.stderr.splitlines()
    assert all(l.startswith("listfilter: warning: ") for l in lines), lines  # one line per problem
    [line] = [l for l in lines if "the store" in l]  # one line for the mail log and the bounces alike
    assert line.startswith("listfilter: warning: mail log not updated and bounces not scored: the store postgresql ")
    assert line.endswith(f"; 1 event waiting in {config.site.spool_dir / 'events'};"
                         " keeping the installed snapshot's 0 suppressed addresses")
    assert len(SP.pending_events(config.site.spool_dir)) == 1
    assert "Traceback" not in proc.stderr


def test_sync_without_store_or_events_leaves_no_trace(make_config, tmp_path):
    path = make_config(roster=CSV_ROSTER)
    config = C.load(path)
    assert not config.store.configured and config.web is None
    assert config.store.path == tmp_path / "state" / "maillog" / "maillog.sqlite"  # where it would be
    proc = listfilter(path, "sync")
    assert proc.returncode == 0 and proc.stderr == ""
    assert "mail log" not in proc.stdout
    assert not config.store.path.parent.exists()
    assert sorted(str(p.relative_to(tmp_path / "state")) for p in (tmp_path / "state").rglob("*") if p.is_file()) == [
        "last-sync.json", "postfix/domains", "postfix/recipients", "postfix/transport", "postfix/virtual",
        "snapshot.sqlite", "sync.lock"]


# ---------------------------------------------------------------- the real mail side's records

SENDMAIL = """#!/bin/sh
[ -e "{flag}" ] && {{ echo "sendmail: fatal: simulated failure" >&2; exit 75; }}
cat > /dev/null
"""


def test_events_from_listfilter_deliver_end_up_in_the_log(make_config, tmp_path):
    stub = tmp_path / "sendmail"
    stub.write_text(SENDMAIL.format(flag=tmp_path / "FAIL"))
    stub.chmod(0o755)
    path = make_config(site=f'sendmail = "{stub}"', roster=CSV_ROSTER)
    config = C.load(path)
    assert listfilter(path, "db", "upgrade").returncode == 0
    assert listfilter(path, "sync").returncode == 0

    def deliver(msg: bytes, sender: str) -> int:
        """As master.cf runs it: the exit status is what pipe(8) reads."""
        return subprocess.run([str(Path(sys.executable).parent / "listfilter-deliver"),
                               "--snapshot", str(config.site.snapshot_path),
                               "--sender", sender, "--recipient", STUDENTS, "--queue-id", "4QUEUE1"],
                              input=msg, capture_output=True, timeout=60).returncode

    post = (b'From: "Instructor Ivy" <instructor@example.edu>\nTo: students@lists.example.edu\n'
            b"Subject: exam <b>room</b>\nMessage-ID: <e2e-1@example.edu>\n\nSee you in <script>alert(1)</script>\n")
    (tmp_path / "FAIL").touch()
    assert deliver(post, "instructor@example.edu") == 75  # deferred, and recorded so
    assert listfilter(path, "sync").returncode == 0
    with ST.open_store(config.store) as s:
        [row] = s.entries()
        assert row.status == "deferred" and "simulated failure" in row.error_message
    (tmp_path / "FAIL").unlink()
    time.sleep(1.1)  # the retry's record is newer by the clock
    assert deliver(post, "instructor@example.edu") == 0
    refused = post.replace(b"instructor@example.edu", b"alice@example.edu").replace(b"e2e-1", b"e2e-2")
    assert deliver(refused, "alice@example.edu") == 0
    proc = listfilter(path, "sync")
    assert "mail log: 2 events logged" in proc.stdout, proc
    with ST.open_store(config.store) as s:
        by_id = {e.message_id: e for e in s.entries()}
    assert set(by_id) == {"<e2e-1@example.edu>", "<e2e-2@example.edu>"}  # the retry updated its row
    ok = by_id["<e2e-1@example.edu>"]
    assert (ok.status, ok.sender_name, ok.queue_id, ok.list_display_name) == (
        "delivered", "Instructor Ivy", "4QUEUE1", "CS 199 Students")
    assert ok.recipient_count == len(ok.recipients) > 0 and "instructor@example.edu" not in ok.recipients
    assert ok.body == "See you in <script>alert(1)</script>\n" and ok.subject == "exam <b>room</b>"
    assert by_id["<e2e-2@example.edu>"].status == "bounced"


# ---------------------------------------------------------------- the production layout: root and listfilter


@pytest.mark.integration
def test_root_made_log_stays_usable_by_the_listfilter_user():
    """sync and db upgrade run as root; deliver and the web app as listfilter: both must write the log."""
    if os.geteuid() != 0:
        pytest.skip("needs root (tests/run runs the suite as root)")
    import pwd
    import shutil

    from ..harness.postfix import ensure_user, traversable_tmpdir

    user = ensure_user("listfilter")
    with traversable_tmpdir(prefix="listfilter-log-") as base:
        shutil.copy(REPO / "docs/example/roster.csv", base / "roster.csv")
        path = base / "lists.toml"
        path.write_text(f'[site]\nstate_dir = "state"\nowners = ["o@example.edu"]\n[postfix]\nmap_type = "texthash"\n'
                        f'reload = false\n[roster]\ncsv = "roster.csv"\n{COURSE_LISTS}\n[store]\n'
                        '[web]\nproxy_header = "X-Remote-User"\nproxies = ["127.0.0.1"]\n')
        config = C.load(path)
        assert listfilter(path, "db", "upgrade").returncode == 0  # before any spool exists
        store_dir = config.store.path.parent
        for p in (store_dir, config.store.path):
            assert p.stat().st_uid == user.pw_uid, p
        spool = config.site.spool_dir
        (spool / "events").mkdir(parents=True)
        for d in (spool, spool / "events"):
            os.chown(d, user.pw_uid, user.pw_gid)
        write_event(spool, event(1))
        (spool / "events" / "junk.json").write_text("{")
        proc = listfilter(path, "sync", env={SYNC_USER_ENV: "listfilter"})  # as cron runs it: divided
        assert proc.returncode == 0 and "mail log: 1 event logged" in proc.stdout, proc
        for p in (spool / "events" / ".ingest", spool / "events" / ".ingest" / "lock", spool / "events" / "bad",
                  spool / "events" / "bad" / "junk.json.reason"):
            assert p.stat().st_uid == user.pw_uid, p
        for p in store_dir.iterdir():  # SQLite's -wal and -shm, made by root, belong to the file's owner
            assert p.stat().st_uid == user.pw_uid, p
        write_event(spool, event(2))
        os.chown(spool / "events" / f"{event(2)['id']}.json", user.pw_uid, user.pw_gid)
        as_user = subprocess.run(
            ["su", "-s", "/bin/sh", "listfilter", "-c",
             f"{sys.executable} -m listfilter --config {path} log --json"
             f" && {sys.executable} -c 'from listfilter.sync import config;"
             f" from listfilter.admin import app as web;"
             f" web.create_app(config.load(\"{path}\"))'"],
            capture_output=True, text=True, cwd=REPO, timeout=60)
        assert as_user.returncode == 0, as_user.stderr
        assert [r["subject"] for r in json.loads(as_user.stdout)] == ["Message 2", "Message 1"]
        assert SP.pending_events(spool) == []
        secret = store_dir / "web-secret"
        assert secret.stat().st_uid == user.pw_uid and secret.stat().st_mode & 0o777 == 0o600
        assert pwd.getpwuid(config.store.path.stat().st_uid).pw_name == "listfilter"


def test_rejections_recorded_by_the_policy_service_are_ingested(store, config, spool):
    """The RCPT-time policy service's own record of a refusal, from a real snapshot, lands in the log whole."""
    from listfilter.mail import policy

    Y.apply(config, Y.plan(config))  # the snapshot and maps, as sync installs them
    service = policy.Service(str(config.site.snapshot_path))
    request = {"request": "smtpd_access_policy", "protocol_state": "RCPT", "recipient": "Students+x@Lists.Example.EDU",
               "sender": "alice@example.edu", "queue_id": "", "client_address": "192.0.2.1",
               "client_name": "mail.example.org"}
    action = service.answer(request)
    assert action == ("550 5.7.1 <alice@example.edu> may not post to <students@lists.example.edu>;"
                      " only course instructor, ta may")
    assert service.answer({**request, "sender": "instructor@example.edu"}).startswith("INFO ")  # nothing recorded
    [path] = SP.pending_events(spool)
    assert EV.valid_id(path.stem) and len(path.stem) == 32
    assert IN.ingest(store, spool).ingested == 1
    [row] = store.entries()
    assert (row.id, row.status, row.rule, row.list_address, row.list_display_name) == (
        path.stem, "rejected", "policy", STUDENTS, "CS 199 Students")
    assert (row.sender_email, row.envelope_sender, row.client_address) == (
        "alice@example.edu", "alice@example.edu", "192.0.2.1")
    assert (row.recipient_count, row.recipients, row.body) == (0, [], "")
    assert row.error_message == action.removeprefix("550 5.7.1 ")
    assert abs(row.created_at - dt.datetime.now(dt.timezone.utc)) < dt.timedelta(minutes=5)
