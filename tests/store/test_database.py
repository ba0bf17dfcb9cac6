"""The mail log store on SQLite and on the real PostgreSQL: migrations, upserts, queries, retention."""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import threading
import uuid
from pathlib import Path

import pytest

from listfilter.common import events as EV
from listfilter.store import database as ST
from listfilter.store import migrations as MG
from listfilter.sync import config as C

from ..cli.runner import listfilter
from ..conftest import COURSE_LISTS, REPO

UTC = dt.timezone.utc
T0 = dt.datetime(2026, 1, 21, 15, 0, tzinfo=UTC)
#: Every migration's version, in order.
ALL = list(range(1, MG.LATEST + 1))
STUDENTS = "students@lists.example.edu"
CSV_ROSTER = f'source = "csv"\ncsv = "{REPO / "docs/example/roster.csv"}"'


def event_id(n: int) -> str:
    """An event id of the form the mail side makes (32 hex characters), fixed per n."""
    return uuid.uuid5(uuid.NAMESPACE_URL, f"test:{n}").hex


def event(n: int = 0, **fields) -> dict:
    """An event record shaped like the ones `listfilter-deliver` writes."""
    ev = {
        "id": event_id(n),
        "status": "delivered",
        "list_address": STUDENTS,
        "rule": "",
        "list_display_name": "CS 199 Students",
        "sender_email": "prof@example.edu",
        "sender_name": "Jane Doe",
        "envelope_sender": "prof@example.edu",
        "subject": f"Message {n}",
        "message_id": f"<m{n}@example.edu>",
        "queue_id": f"4AB{n:04d}",
        "recipients": ["alice@example.edu", "bob@example.edu"],
        "recipient_count": 2,
        "error_message": "",
        "created_at": (T0 + dt.timedelta(minutes=n)).isoformat(timespec="seconds"),
        "body": f"Body of message {n}\n",
    }
    ev.update(fields)
    return ev


def write_event(spool: Path, ev: dict, name: str | None = None) -> Path:
    d = spool / "events"
    d.mkdir(parents=True, exist_ok=True)
    path = d / (name or f"{ev['id']}.json")
    path.write_text(json.dumps(ev))
    return path


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.integration)])
def backend(request):
    return request.param


@pytest.fixture
def store_toml(request, backend):
    """The body of the [store] table for the backend under test (PostgreSQL: its own database)."""
    if backend == "postgresql":
        return f'backend = "postgresql"\ndsn = "{request.getfixturevalue("pg_dsn")}"\n'
    return ""


@pytest.fixture
def config_path(make_config, store_toml):
    return make_config(COURSE_LISTS + "\n[store]\n" + store_toml, roster=CSV_ROSTER)


@pytest.fixture
def config(config_path) -> C.Config:
    return C.load(config_path)


@pytest.fixture
def store(config):
    with ST.open_store(config.store, create=True) as s:
        s.upgrade()
        yield s


def entry_from(record: dict, **kw) -> ST.Entry:
    """The row ingest makes of a spool record: validated by from_json, then entry_of."""
    return ST.entry_of(EV.from_json(json.dumps(record).encode()), **kw)


def entry(n: int = 0, **fields) -> ST.Entry:
    return entry_from(event(n, **fields))


# ---------------------------------------------------------------- migrations


def test_upgrade_creates_the_schema_and_is_idempotent(config, backend):
    with ST.open_store(config.store, create=True) as s:
        assert s.version() == 0
        assert [m.version for m in s.pending()] == ALL
        applied = s.upgrade()
        assert [m.version for m in applied] == ALL
        assert s.version() == MG.LATEST
        assert s.upgrade() == [] and s.version() == MG.LATEST
        s.require_current()
        if backend == "postgresql":
            cols = dict(s._q("SELECT column_name, udt_name FROM information_schema.columns"
                             " WHERE table_name = 'mail_logs'"))
            assert cols["status"] == "mail_log_status"
            assert cols["created_at"] == "timestamp"
            assert cols["id"] == "text" and cols["recipients"] == "jsonb"
            assert cols["rule"] == "text" and cols["client_address"] == "text"
            labels = [r[0] for r in s._q("SELECT unnest(enum_range(NULL::mail_log_status))::text")]
            assert labels == list(EV.STATUSES)
        else:
            cols = [r[1] for r in s._q("PRAGMA table_info(mail_logs)")]
            assert cols[:9] == ["id", "status", "list_address", "sender_email", "subject", "recipient_count",
                                "error_message", "message_id", "created_at"]
            assert {"sender_name", "recipients", "queue_id", "body", "rule", "client_address"} <= set(cols)


def test_a_new_sqlite_store_is_not_for_every_local_user(make_config):
    """The log holds message bodies: its directory 0750, the file 0640, and so SQLite's -wal beside it."""
    import stat

    config = C.load(make_config(COURSE_LISTS, roster=CSV_ROSTER))
    with ST.open_store(config.store, create=True) as s:
        s.upgrade()
        s.upsert([entry(1)])
        path = config.store.path
        assert stat.S_IMODE(path.parent.stat().st_mode) == 0o750
        assert stat.S_IMODE(path.stat().st_mode) == 0o640
        assert stat.S_IMODE(path.with_name(path.name + "-wal").stat().st_mode) == 0o640


def test_a_store_behind_is_refused_until_upgraded(config, config_path, monkeypatch):
    with ST.open_store(config.store, create=True) as s:
        monkeypatch.setattr(MG, "MIGRATIONS", MG.MIGRATIONS[:1])
        assert [m.version for m in s.upgrade()] == [1]
        monkeypatch.undo()
        assert s.version() == 1
        with pytest.raises(ST.StoreError, match=f"schema version 1 of {MG.LATEST}: run `listfilter db upgrade`"):
            s.require_current()
    proc = listfilter(config_path, "check")
    assert proc.returncode == 1
    assert "PROBLEM  store: " in proc.stdout and f"schema version 1 of {MG.LATEST} (run listfilter db upgrade)" in proc.stdout
    proc = listfilter(config_path, "log")
    assert proc.returncode == 1 and f"schema version 1 of {MG.LATEST}: run `listfilter db upgrade`" in proc.stderr
    proc = listfilter(config_path, "db", "status")
    assert proc.returncode == 1
    assert [l for l in proc.stdout.splitlines() if l.startswith("pending")] == [
        f"pending migration {m.version}: {m.name}" for m in MG.MIGRATIONS[1:]]
    proc = listfilter(config_path, "db", "upgrade")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines()[:-1] == [f"applied migration {m.version}: {m.name}" for m in MG.MIGRATIONS[1:]]
    assert proc.stdout.splitlines()[1] == "applied migration 3: discarded status, the deciding rule, the SMTP client"
    proc = listfilter(config_path, "db", "upgrade")
    assert proc.returncode == 0 and "(already up to date)" in proc.stdout
    proc = listfilter(config_path, "check")
    assert "ok       store: " in proc.stdout and f"schema version {MG.LATEST}, 0 rows" in proc.stdout, proc.stdout
    proc = listfilter(config_path, "db", "status")
    assert proc.returncode == 0 and "pending" not in proc.stdout


def test_a_newer_schema_is_refused(store, config_path):
    store._execute(f"INSERT INTO {MG.TABLE} (version, name, applied_at) VALUES (?, ?, ?)",
                   (99, "from the future", store._ts(T0)))
    with pytest.raises(ST.StoreError, match="newer than this listfilter knows"):
        store.require_current()
    proc = listfilter(config_path, "db", "upgrade")
    assert proc.returncode == 1 and "schema version 99 is newer" in proc.stderr


def test_concurrent_upgrades_apply_each_migration_once(config):
    errors = []

    def run():
        try:
            with ST.open_store(config.store, create=True) as s:
                s.upgrade()
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=run) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    with ST.open_store(config.store) as s:
        assert [r[0] for r in s._q(f"SELECT version FROM {MG.TABLE} ORDER BY version")] == ALL


SEED_PG = """
CREATE TYPE mail_log_status AS ENUM ('delivered', 'bounced', 'failed');
CREATE TABLE mail_logs (
    id text PRIMARY KEY, status mail_log_status NOT NULL, list_address text NOT NULL, sender_email text,
    subject text, recipient_count integer NOT NULL DEFAULT 0, error_message text, message_id text,
    created_at timestamp NOT NULL DEFAULT now());
INSERT INTO mail_logs (id, status, list_address, sender_email, subject, recipient_count, created_at)
VALUES ('8d5e1c1e-8a7f-4c43-9a43-0d6d5b0c2b11', 'delivered', 'students@lists.example.edu', 'prof@example.edu',
        'From the course app', 7, '2026-01-02 03:04:05');
"""


@pytest.mark.integration
def test_postgresql_adopts_the_course_apps_seed_table(pg_dsn, make_config):
    """The course web app's database may already hold mail_logs (with an older enum): keep its rows."""
    import psycopg

    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute(SEED_PG)
    config = C.load(make_config(f'[store]\ndsn = "{pg_dsn}"\n' + COURSE_LISTS))
    assert config.store.backend == "postgresql"
    with ST.open_store(config.store) as s:
        assert [m.version for m in s.upgrade()] == ALL
        [old] = s.entries()
        assert (old.subject, old.recipient_count, old.recipients, old.sender_name) == (
            "From the course app", 7, [], "")
        assert old.created_at == dt.datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
        assert s.get("8d5e1c1e-8a7f-4c43-9a43-0d6d5b0c2b11") == old  # a legacy UUID id is still an id
        s.upsert([entry(1, status="rejected"), entry(2, status="discarded")])  # values the seed's enum lacked
        assert s.count(status=["rejected"]) == 1 and s.count(status=["discarded"]) == 1


def released_v2() -> tuple[MG.Migration, ...]:
    """Migrations 1 and 2 as a database made before version 3 has them: its PostgreSQL enum
    got only the four statuses of the time (migration 1 now adds every status it knows)."""
    first, second = MG.MIGRATIONS[:2]
    return (dataclasses.replace(first, postgresql=tuple(st for st in first.postgresql if "'discarded'" not in st)),
            second)


V2_ROW = ("id, status, list_address, sender_email, subject, recipient_count, error_message, message_id, created_at,"
          " sender_name, list_display_name, envelope_sender, recipients, queue_id, body, body_truncated, updated_at")


def insert_v2_row(s: ST.Store, n: int, status: str = "delivered") -> None:
    """A row as the version-2 code wrote it (no rule, no client_address)."""
    values = ", ".join(s._placeholder(c.strip()) for c in V2_ROW.split(","))
    s._execute(f"INSERT INTO mail_logs ({V2_ROW}) VALUES ({values})",
               (event_id(n), status, STUDENTS, "prof@example.edu", f"Message {n}", 2, "", f"<m{n}@example.edu>",
                s._ts(T0 + dt.timedelta(minutes=n)), "Jane Doe", "CS 199 Students", "prof@example.edu",
                json.dumps(["alice@example.edu", "bob@example.edu"]), f"4AB{n:04d}", f"Body of message {n}\n",
                s._bool(False), s._ts(T0)))


def test_upgrade_from_version_2_keeps_the_rows_and_accepts_discarded(config, backend, monkeypatch):
    with ST.open_store(config.store, create=True) as s:
        monkeypatch.setattr(MG, "MIGRATIONS", released_v2())
        assert [m.version for m in s.upgrade()] == [1, 2]
        monkeypatch.undo()
        insert_v2_row(s, 1)
        insert_v2_row(s, 2, "failed")
        with pytest.raises(s.refused_errors()):  # version 2 knows no "discarded"
            insert_v2_row(s, 3, "discarded")
    with ST.open_store(config.store) as s:  # a new connection: the refused statement left nothing behind
        v2_rows = f"SELECT {V2_ROW} FROM mail_logs ORDER BY id"
        before = s._q(v2_rows)
        assert sorted(r[4] for r in before) == ["Message 1", "Message 2"]
        assert [m.version for m in s.upgrade()] == ALL[2:]
        s.require_current()
        assert s._q(v2_rows) == before  # every row and field kept
        assert [(e.rule, e.client_address) for e in s.entries()] == [("", ""), ("", "")]
        loop = entry(3, status="discarded", rule="loop", client_address="192.0.2.7",
                     error_message="loop: X-Loop names this list")
        s.upsert([loop])
        assert s.count() == 3 and s.count(status=["discarded"]) == 1
        assert s.get(loop.id) == loop
        if backend == "sqlite":  # the table was rebuilt: its indexes too
            indexes = {r[0] for r in s._q("SELECT name FROM sqlite_master WHERE type = 'index'"
                                          " AND tbl_name = 'mail_logs' AND name NOT LIKE 'sqlite_%'")}
            assert indexes == {"mail_logs_created_at_idx", "mail_logs_status_idx", "mail_logs_list_idx",
                               "mail_logs_message_id_idx"}  # migration 5: a bounce finds its post


# ---------------------------------------------------------------- writing and reading


def test_upsert_newest_record_wins(store):
    first = entry(1, status="failed", error_message="sendmail failed; Postfix will retry")
    later = entry(1, status="delivered", created_at=(T0 + dt.timedelta(hours=1)).isoformat())
    store.upsert([first])
    store.upsert([later])
    store.upsert([first])  # an older record ingested late changes nothing
    [row] = store.entries()
    assert row.status == "delivered" and row.error_message == ""
    assert row.created_at == T0 + dt.timedelta(hours=1)
    store.upsert([later])  # the same record twice: still one row
    assert store.count() == 1


def test_round_trip_of_every_field(store):
    e = entry(3, subject="Grüße — 日本語 ✓", sender_name='Jane "JD" Doe', recipients=["a@x.org"] * 3,
              recipient_count=3, body="line 1\r\nline 2\n", error_message="oops", queue_id="4XYZ",
              rule="poster", client_address="2001:db8::25")
    store.upsert([e])
    got = store.get(e.id)
    assert got == e
    assert (got.rule, got.client_address) == ("poster", "2001:db8::25")
    assert store.get(uuid.uuid4().hex) is None
    assert got.as_json()["created_at"] == "2026-01-21T15:03:00+00:00" and "body" not in got.as_json()


def test_queries_filter_sort_and_page(store):
    statuses = ["delivered", "bounced", "rejected", "failed"]
    lists = [STUDENTS, "staff@lists.example.edu"]
    store.upsert([entry(n, status=statuses[n % 4], list_address=lists[n % 2]) for n in range(40)])
    assert store.count() == 40
    rows = store.entries(limit=10)
    assert [r.subject for r in rows] == [f"Message {n}" for n in range(39, 29, -1)]  # newest first
    assert [r.subject for r in store.entries(limit=10, offset=35)] == [f"Message {n}" for n in range(4, -1, -1)]
    assert store.count(status=["failed"]) == 10
    assert {r.status for r in store.entries(status=["failed", "bounced"], limit=100)} == {"failed", "bounced"}
    assert store.count(lists=["Staff@Lists.Example.EDU"]) == 20
    assert store.count(status=["bounced"], lists=[STUDENTS]) == 0  # bounced are the odd ones: staff
    assert store.count(since=T0 + dt.timedelta(minutes=30)) == 10
    assert store.list_addresses() == [("staff@lists.example.edu", "CS 199 Students"), (STUDENTS, "CS 199 Students")]
    assert [len(r.body) for r in store.entries(limit=1, body_chars=4)] == [4]


def test_retention_purges_rows_and_bodies(store):
    now = T0 + dt.timedelta(days=100)
    store.upsert([entry(n, created_at=(now - dt.timedelta(days=days)).isoformat())
                  for n, days in enumerate([1, 20, 40, 95, 120])])
    deleted, cleared = store.purge(90, 30, now=now)
    assert (deleted, cleared) == (2, 1)  # 95 and 120 days gone; 40 loses its body
    rows = {r.subject: r.body for r in store.entries()}
    assert rows == {"Message 0": "Body of message 0\n", "Message 1": "Body of message 1\n", "Message 2": None}
    assert store.purge(0, 0, now=now) == (0, 0)  # 0: keep forever


def test_awkward_text_is_stored(store):
    """NUL (which PostgreSQL refuses in text) and a lone surrogate (not UTF-8) are replaced, not fatal."""
    e = ST.entry_of(EV.from_json(json.dumps(event(5)).replace("Message 5", "bad\\u0000nul \\ud800 end").encode()))
    store.upsert([e])
    assert store.get(e.id).subject == "bad\ufffdnul ? end"


def test_bodies_are_capped_or_not_stored(store):
    big = "é" * 40_000  # 80,000 bytes
    e = entry_from(event(6, body=big), body_max_bytes=1001)
    assert len(e.body.encode()) == 1000 and e.body_truncated  # cut on a character boundary
    assert entry_from(event(6, body=big), store_bodies=False).body is None
    assert not entry_from(event(6, body="é" * 500), body_max_bytes=1000).body_truncated  # exactly the cap
    store.upsert([e])
    assert store.get(e.id).body_truncated


def test_store_settings_and_errors(tmp_path, make_config, monkeypatch):
    config = C.load(make_config(COURSE_LISTS))
    assert config.store.backend == "sqlite"
    assert config.store.path == tmp_path / "state" / "maillog" / "maillog.sqlite"
    assert (config.store.retention_days, config.store.body_retention_days) == (365, 0)
    with pytest.raises(ST.StoreError, match="does not exist: run `listfilter db upgrade`"):
        ST.open_store(config.store)
    assert not config.store.path.exists()  # looking does not create it
    config = C.load(make_config(COURSE_LISTS + '[store]\nbackend = "postgresql"\n'))
    monkeypatch.delenv("LISTFILTER_STORE_DSN", raising=False)
    with pytest.raises(ST.StoreError, match=r"no store DSN: set \$LISTFILTER_STORE_DSN"):
        ST.open_store(config.store)
    monkeypatch.setenv("LISTFILTER_STORE_DSN", "postgresql://u:secret@127.0.0.1:1/x?connect_timeout=2")
    with pytest.raises(ST.StoreError) as info:
        ST.open_store(config.store)
    assert "secret" not in str(info.value) and "u:***@127.0.0.1:1" in str(info.value)


@pytest.mark.parametrize("text,expected", [
    ('[store]\nbackend = "mysql"\n', "store.backend: 'mysql' is not one of: sqlite, postgresql"),
    ('[store]\nretention_days = -1\n', "store.retention_days: must be at least 0"),
    ('[store]\nretention_days = 30\nbody_retention_days = 60\n', "store.body_retention_days: longer than"),
    ('[store]\ndsn = "x"\npath = "y"\n', "store.path: only used with backend"),
    ('[store]\nbackend = "sqlite"\ndsn = "x"\n', "store.dsn: only used with backend"),
    ('[store]\nbodies = false\n', "store.bodies: unknown key"),
    ('[web]\nproxy_header = "X-User"\n', "web.proxies: required with proxy_header"),
    ('[web]\nproxy_header = "X-User"\nproxies = ["10.0.0.0/33"]\n', "web.proxies[0]: '10.0.0.0/33' is not"),
    ('[web]\nproxy_header = "X User"\nproxies = ["10.0.0.1"]\n', "web.proxy_header: invalid value"),
    ('[web.accounts]\n"a@example.edu" = "hunter2"\n', "web.accounts.a@example.edu: not a password hash"),
    ('[web]\nbind = "localhost"\n[web.accounts]\n', "web.bind: 'localhost' is not HOST:PORT"),
    ('[web]\nroles = ["dean"]\nproxy_header = "X-U"\nproxies = ["::1"]\n', "web.roles[0]: unknown role 'dean'"),
    ('[web]\nadmins = ["nobody"]\nproxy_header = "X-U"\nproxies = ["::1"]\n', "web.admins[0]: malformed address"),
])
def test_store_and_web_config_errors_name_the_field(make_config, text, expected):
    with pytest.raises(C.ConfigError) as info:
        C.load(make_config(COURSE_LISTS + text))
    assert expected in str(info.value)


# ---------------------------------------------------------------- listfilter log


def test_log_command(config_path, config, store):
    store.upsert([entry(0), entry(1, status="bounced", list_address="staff@lists.example.edu",
                                sender_name="", subject="Evil\r\nX-Injected: yes\x1b[31m"),
                  entry(2, status="failed", list_address="staff@lists-dev.example.edu")])
    proc = listfilter(config_path, "log")
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert len(lines) == 3  # CR/LF in a subject cannot add a line, nor an escape colour the terminal
    assert lines[0].split("\t") == ["2026-01-21 09:02 CST", "failed", "staff@lists-dev.example.edu",
                                    "Jane Doe <prof@example.edu>", "2", "Message 2"]
    assert lines[1].split("\t")[3:] == ["prof@example.edu", "2", "Evil X-Injected: yes [31m"]
    assert "\x1b" not in proc.stdout
    proc = listfilter(config_path, "log", "--list", "staff", "--json")
    assert [r["status"] for r in json.loads(proc.stdout)] == ["failed", "bounced"]  # every domain's staff@
    proc = listfilter(config_path, "log", "--status", "bounced", "--status", "delivered", "--limit", "1", "--json")
    [row] = json.loads(proc.stdout)
    assert row["status"] == "bounced" and row["recipients"] == ["alice@example.edu", "bob@example.edu"]
    proc = listfilter(config_path, "log", "--since", "2026-01-21T09:01", "--json")  # site time: 15:01 UTC
    assert [r["subject"] for r in json.loads(proc.stdout)] == ["Message 2", "Evil\r\nX-Injected: yes\x1b[31m"]
    assert listfilter(config_path, "log", "--since", "1h").stdout == ""
    proc = listfilter(config_path, "log", "--since", "yesterday-ish")
    assert proc.returncode == 2 and "--since" in proc.stderr
    proc = listfilter(config_path, "log", "--list", "nosuch")
    assert proc.returncode == 2 and "no list named 'nosuch'" in proc.stderr
    store.upsert([entry(3, status="discarded", rule="duplicate", created_at=(T0 - dt.timedelta(days=1)).isoformat())])
    proc = listfilter(config_path, "log", "--status", "discarded", "--json")
    assert [(r["status"], r["rule"]) for r in json.loads(proc.stdout)] == [("discarded", "duplicate")]
    proc = listfilter(config_path, "log", "--status", "bogus")
    assert proc.returncode == 2 and "'bogus' is not one of" in proc.stderr


def test_parse_since():
    tz = __import__("zoneinfo").ZoneInfo("America/Chicago")
    now = dt.datetime(2026, 1, 21, 12, 0, tzinfo=UTC)
    assert ST.parse_since("90m", tz, now) == now - dt.timedelta(minutes=90)
    assert ST.parse_since("2w", tz, now) == now - dt.timedelta(days=14)
    assert ST.parse_since("today", tz, now) == dt.datetime(2026, 1, 21, 6, 0, tzinfo=UTC)
    assert ST.parse_since("2026-01-20", tz, now) == dt.datetime(2026, 1, 20, 6, 0, tzinfo=UTC)
    assert ST.parse_since("2026-01-20T10:00+00:00", tz, now) == dt.datetime(2026, 1, 20, 10, 0, tzinfo=UTC)
    with pytest.raises(ValueError):
        ST.parse_since("soon", tz, now)
