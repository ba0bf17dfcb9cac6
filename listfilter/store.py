"""The mail log store: one ``mail_logs`` row per (message, list), in SQLite or PostgreSQL.

Sync side only (the mail side never imports this). What is here:

- :class:`Store`: a connection to the store named by ``[store]`` (an SQLite
  file in the state directory by default, or a PostgreSQL DSN), with the
  versioned migrations of :mod:`listfilter.migrations` and the queries the CLI
  and the web pages use. Every SQL statement is parameterised.
- :func:`ingest`: moves the mail side's event records
  (``<spool>/events/<id>.json``) into the store, idempotently. The event id
  is stable per (message, list), so a retry's newer record updates the same
  row; the newest ``created_at`` wins, whatever the order of ingest.
- :func:`purge`: retention.
- :func:`after_sync`: what ``listfilter sync`` does once the snapshot and the
  maps are installed.

How ingest keeps "nothing lost, nothing blocked":

1. One ingester at a time: an flock on ``<spool>/events/.ingest/lock`` (sync
   waits for it; the web app skips its ingest while another one runs).
2. A file is first *claimed* by renaming it into ``events/.ingest/``. The
   mail side replaces ``<id>.json`` by rename when a retry writes a newer
   record; the claim makes sure that newer file is never the one removed.
3. Claimed records are written in batches, one transaction each; a claimed
   file is unlinked only after its batch has committed. Files left claimed by
   a crash are taken up first by the next ingest.
4. A file that is not a valid event (unreadable, not JSON, missing or wrong
   fields) — or that the database itself refuses — is moved to
   ``events/bad/`` with a ``.reason`` file beside it and a logged warning;
   the others go on. A store that cannot be reached stops the ingest with a
   :class:`StoreError`, leaving every file in the spool for the next try.
"""

from __future__ import annotations

import datetime as dt
import fcntl
import json
import logging
import os
import re
import sqlite3
import time
import uuid
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

from . import migrations as MG
from .config import Config, StoreSettings

log = logging.getLogger("listfilter.store")
log.addHandler(logging.NullHandler())  # the CLI reports on its own; the web app configures logging

STATUSES = MG.STATUSES
EVENTS = "events"
CLAIMED = ".ingest"
BAD = "bad"
#: Records committed per transaction during ingest.
BATCH = 500
#: Longest text kept for one-line fields (subject, names, error message).
FIELD_MAX = 4000

_UTC = dt.timezone.utc


class StoreError(Exception):
    """The store cannot be used; the message is one line for the operator."""


class BadEvent(ValueError):
    """A spool file that is not a valid event record."""


# --------------------------------------------------------------------------
# Rows


@dataclass
class Entry:
    """One ``mail_logs`` row."""

    id: str
    status: str
    list_address: str
    created_at: dt.datetime  # aware, UTC
    list_display_name: str = ""
    sender_email: str = ""
    sender_name: str = ""
    envelope_sender: str = ""
    subject: str = ""
    recipient_count: int = 0
    recipients: list[str] = field(default_factory=list)
    error_message: str = ""
    message_id: str = ""
    queue_id: str = ""
    body: str | None = None
    body_truncated: bool = False

    def as_json(self, body: bool = False) -> dict[str, Any]:
        out = {k: getattr(self, k) for k in _COLUMNS if k != "body" or body}
        out["created_at"] = self.created_at.isoformat()
        return out


_COLUMNS = ("id", "status", "list_address", "list_display_name", "sender_email", "sender_name", "envelope_sender",
            "subject", "recipient_count", "recipients", "error_message", "message_id", "queue_id", "body",
            "body_truncated", "created_at")


def _clean(value: Any, where: str, limit: int | None = FIELD_MAX) -> str:
    """A text field of an event: str or null; NULs (which PostgreSQL refuses) replaced."""
    if value is None:
        return ""
    if not isinstance(value, str):
        raise BadEvent(f"{where}: expected a string, not {type(value).__name__}")
    if "\x00" in value:
        value = value.replace("\x00", "\ufffd")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate from JSON's \udXXX: not storable as UTF-8
        value = value.encode("utf-8", "replace").decode("utf-8")
    if limit is not None and len(value) > limit:
        value = value[:limit]
    return value


def parse_event(data: Any, *, store_bodies: bool = True, body_max_bytes: int = 64 * 1024) -> Entry:
    """Validate one decoded event record into an Entry; raise BadEvent."""
    if not isinstance(data, dict):
        raise BadEvent(f"expected a JSON object, not {type(data).__name__}")
    try:
        ident = str(uuid.UUID(data.get("id") if isinstance(data.get("id"), str) else ""))
    except ValueError:
        raise BadEvent(f"id: not a UUID: {data.get('id')!r:.80}") from None
    status = data.get("status")
    if status not in STATUSES:
        raise BadEvent(f"status: {status!r:.40} is not one of {', '.join(STATUSES)}")
    list_address = _clean(data.get("list_address"), "list_address", 320).strip().lower()
    if "@" not in list_address:
        raise BadEvent(f"list_address: not an address: {list_address!r:.80}")
    raw_time = data.get("created_at")
    if not isinstance(raw_time, str):
        raise BadEvent("created_at: missing")
    try:
        created = dt.datetime.fromisoformat(raw_time)
    except ValueError:
        raise BadEvent(f"created_at: not an ISO 8601 time: {raw_time!r:.40}") from None
    created = (created.replace(tzinfo=_UTC) if created.tzinfo is None else created.astimezone(_UTC)).replace(
        microsecond=0)
    recipients = data.get("recipients") or []
    if not isinstance(recipients, list) or not all(isinstance(r, str) for r in recipients):
        raise BadEvent("recipients: expected a list of strings")
    recipients = [_clean(r, "recipients", 320) for r in recipients]
    count = data.get("recipient_count", len(recipients))
    if isinstance(count, bool) or not isinstance(count, int) or count < 0:
        raise BadEvent(f"recipient_count: expected a count, not {count!r:.40}")
    body = _clean(data.get("body"), "body", None) if store_bodies else None
    truncated = False
    if body is not None:
        encoded = body.encode("utf-8")
        if len(encoded) > body_max_bytes:
            body = encoded[:body_max_bytes].decode("utf-8", "ignore")
            truncated = True
    return Entry(
        id=ident, status=status, list_address=list_address, created_at=created,
        list_display_name=_clean(data.get("list_display_name"), "list_display_name"),
        sender_email=_clean(data.get("sender_email"), "sender_email", 320),
        sender_name=_clean(data.get("sender_name"), "sender_name"),
        envelope_sender=_clean(data.get("envelope_sender"), "envelope_sender", 320),
        subject=_clean(data.get("subject"), "subject"),
        recipient_count=count, recipients=recipients,
        error_message=_clean(data.get("error_message"), "error_message"),
        message_id=_clean(data.get("message_id"), "message_id", 1000),
        queue_id=_clean(data.get("queue_id"), "queue_id", 100),
        body=body, body_truncated=truncated,
    )


# --------------------------------------------------------------------------
# The connection


def open_store(settings: StoreSettings, *, create: bool = False, owner: tuple[int, int] | None = None) -> "Store":
    """Connect to the store; raise StoreError.

    With ``create`` an SQLite file (and its directory) may be made; made by
    root, they are given to ``owner`` (see :func:`service_owner`), so that the
    web app, running as that user, can write the log too.
    """
    if settings.backend == "sqlite":
        return _SQLite(settings, create, owner)
    return _PostgreSQL(settings)


#: The user the mail side runs as (master.cf's user=listfilter).
SERVICE_USER = "listfilter"


def service_owner(spool_dir: Path) -> tuple[int, int] | None:
    """(uid, gid) that files root makes for the mail log should have: the spool's owner, else listfilter."""
    try:
        st = spool_dir.stat()
        if st.st_uid != 0:
            return st.st_uid, st.st_gid
    except OSError:
        pass
    import pwd

    try:
        pw = pwd.getpwnam(SERVICE_USER)
    except KeyError:
        return None
    return pw.pw_uid, pw.pw_gid


def _give(path: Path, owner: tuple[int, int] | None) -> None:
    """chown a file root just made to ``owner`` (nothing when not root)."""
    if owner is None or os.geteuid() != 0:
        return
    try:
        os.chown(path, *owner)
    except OSError as exc:
        log.warning("cannot give %s to uid %d: %s", path, owner[0], exc.strerror)


def _owner_of(directory: Path) -> tuple[int, int] | None:
    st = directory.stat()
    return (st.st_uid, st.st_gid) if st.st_uid != os.geteuid() else None


class Store:
    """The store's schema and queries; subclasses hold the connection."""

    dialect = ""

    def __init__(self, settings: StoreSettings):
        self.settings = settings

    # -- plumbing (subclasses)

    def _errors(self) -> tuple[type[BaseException], ...]:
        """Errors that mean "this row is refused" rather than "the store is down"."""
        raise NotImplementedError

    def _execute(self, sql: str, params: Iterable[Any] = ()):
        raise NotImplementedError

    def _executemany(self, sql: str, rows: list[tuple]) -> None:
        raise NotImplementedError

    @contextmanager
    def transaction(self, *, exclusive: bool = False):
        raise NotImplementedError

    def _has_table(self, name: str) -> bool:
        raise NotImplementedError

    def _ts(self, when: dt.datetime):
        """A time as the database stores it (UTC, no zone)."""
        raise NotImplementedError

    def _from_ts(self, value) -> dt.datetime:
        raise NotImplementedError

    def close(self) -> None:
        self.conn.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def _q(self, sql: str, params: Iterable[Any] = ()) -> list[tuple]:
        return self._execute(sql, params).fetchall()

    # -- migrations

    def version(self) -> int:
        """The schema version applied (0: none)."""
        if not self._has_table(MG.TABLE):
            return 0
        row = self._q(f"SELECT max(version) FROM {MG.TABLE}")[0]
        return row[0] or 0

    def pending(self) -> list[MG.Migration]:
        current = self.version()
        return [m for m in MG.MIGRATIONS if m.version > current]

    def upgrade(self) -> list[MG.Migration]:
        """Apply the missing migrations in order, each in one transaction; return them."""
        applied = []
        for m in MG.MIGRATIONS:
            with self.transaction(exclusive=True):
                self._create_migrations_table()
                if self._q(f"SELECT 1 FROM {MG.TABLE} WHERE version = ?", (m.version,)):
                    continue  # already there (or applied by a concurrent upgrade)
                for statement in m.statements(self.dialect):
                    self._execute(statement)
                self._execute(f"INSERT INTO {MG.TABLE} (version, name, applied_at) VALUES (?, ?, ?)",
                              (m.version, m.name, self._ts(dt.datetime.now(_UTC))))
            applied.append(m)
        return applied

    def _create_migrations_table(self) -> None:
        self._execute(f"CREATE TABLE IF NOT EXISTS {MG.TABLE} (version integer PRIMARY KEY,"
                      f" name text NOT NULL, applied_at {self._ts_type} NOT NULL)")

    def require_current(self) -> None:
        """Raise StoreError unless the schema is exactly the latest this listfilter knows."""
        v = self.version()
        if v < MG.LATEST:
            raise StoreError(f"the store {self.settings.describe()} is at schema version {v} of {MG.LATEST}:"
                             " run `listfilter db upgrade`")
        if v > MG.LATEST:
            raise StoreError(f"the store {self.settings.describe()} is at schema version {v}, newer than"
                             f" this listfilter knows ({MG.LATEST}): upgrade listfilter")

    # -- writing

    _UPSERT_COLUMNS = ("id", "status", "list_address", "list_display_name", "sender_email", "sender_name",
                       "envelope_sender", "subject", "recipient_count", "recipients", "error_message",
                       "message_id", "queue_id", "body", "body_truncated", "created_at", "updated_at")

    def _upsert_sql(self) -> str:
        cols = self._UPSERT_COLUMNS
        values = ", ".join(self._placeholder(c) for c in cols)
        updates = ", ".join(f"{c} = excluded.{c}" for c in cols if c != "id")
        # the newest record of a (message, list) wins, whatever the order they are ingested in
        return (f"INSERT INTO mail_logs ({', '.join(cols)}) VALUES ({values})"
                f" ON CONFLICT (id) DO UPDATE SET {updates} WHERE excluded.created_at >= mail_logs.created_at")

    def _placeholder(self, column: str) -> str:
        return "?"

    def _row(self, e: Entry, now: dt.datetime) -> tuple:
        return (e.id, e.status, e.list_address, e.list_display_name, e.sender_email, e.sender_name,
                e.envelope_sender, e.subject, e.recipient_count, json.dumps(e.recipients, ensure_ascii=False),
                e.error_message, e.message_id, e.queue_id, e.body, self._bool(e.body_truncated),
                self._ts(e.created_at), self._ts(now))

    def _bool(self, value: bool):
        return value

    def upsert(self, entries: list[Entry]) -> None:
        """Insert or update rows, in one transaction (the caller's, if one is open)."""
        if not entries:
            return
        now = dt.datetime.now(_UTC)
        with self.transaction():
            self._executemany(self._upsert_sql(), [self._row(e, now) for e in entries])

    def purge(self, retention_days: int, body_retention_days: int = 0, now: dt.datetime | None = None) -> tuple[int, int]:
        """Delete rows older than retention_days and bodies older than body_retention_days (0: never)."""
        now = now or dt.datetime.now(_UTC)
        deleted = cleared = 0
        with self.transaction():
            if retention_days:
                deleted = self._execute("DELETE FROM mail_logs WHERE created_at < ?",
                                        (self._ts(now - dt.timedelta(days=retention_days)),)).rowcount
            if body_retention_days:
                cleared = self._execute("UPDATE mail_logs SET body = NULL WHERE body IS NOT NULL AND created_at < ?",
                                        (self._ts(now - dt.timedelta(days=body_retention_days)),)).rowcount
        return max(deleted, 0), max(cleared, 0)

    # -- reading

    def _where(self, status: Iterable[str] | None, lists: Iterable[str] | None,
               since: dt.datetime | None) -> tuple[str, list[Any]]:
        clauses, params = [], []
        status = [s for s in (status or ()) if s]
        if status:
            clauses.append(f"status IN ({', '.join(self._placeholder('status') for _ in status)})")
            params.extend(status)
        lists = [l.lower() for l in (lists or ()) if l]
        if lists:
            clauses.append(f"list_address IN ({', '.join('?' for _ in lists)})")
            params.extend(lists)
        if since is not None:
            clauses.append("created_at >= ?")
            params.append(self._ts(since))
        return (" WHERE " + " AND ".join(clauses)) if clauses else "", params

    def count(self, *, status=None, lists=None, since=None) -> int:
        where, params = self._where(status, lists, since)
        return self._q(f"SELECT count(*) FROM mail_logs{where}", params)[0][0]

    def entries(self, *, status=None, lists=None, since=None, limit: int = 50, offset: int = 0,
                body_chars: int | None = None) -> list[Entry]:
        """Rows newest first; ``body_chars`` caps the body text fetched (None: all of it)."""
        where, params = self._where(status, lists, since)
        body = "body" if body_chars is None else f"substr(body, 1, {int(body_chars)})"
        rows = self._q(f"SELECT {self._select_columns(body)} FROM mail_logs{where}"
                       " ORDER BY created_at DESC, id DESC LIMIT ? OFFSET ?", [*params, int(limit), int(offset)])
        return [self._entry(r) for r in rows]

    def get(self, ident: str) -> Entry | None:
        rows = self._q(f"SELECT {self._select_columns('body')} FROM mail_logs WHERE id = ?", (ident,))
        return self._entry(rows[0]) if rows else None

    def list_addresses(self) -> list[tuple[str, str]]:
        """(address, display name) of every list the log mentions."""
        return [(a, n or "") for a, n in self._q(
            "SELECT list_address, max(list_display_name) FROM mail_logs GROUP BY list_address ORDER BY list_address")]

    def _select_columns(self, body: str) -> str:
        return ", ".join(body if c == "body" else self._read_column(c) for c in _COLUMNS)

    def _read_column(self, column: str) -> str:
        return column

    def _entry(self, r) -> Entry:
        d = dict(zip(_COLUMNS, r))
        rec = d["recipients"]
        d["recipients"] = json.loads(rec) if isinstance(rec, str) else list(rec or [])
        d["created_at"] = self._from_ts(d["created_at"])
        d["body_truncated"] = bool(d["body_truncated"])
        for k in ("sender_email", "subject", "error_message", "message_id", "list_display_name", "sender_name",
                  "envelope_sender", "queue_id"):
            d[k] = d[k] or ""
        return Entry(**d)


class _SQLite(Store):
    dialect = "sqlite"
    _ts_type = "TEXT"

    def __init__(self, settings: StoreSettings, create: bool, owner: tuple[int, int] | None = None):
        super().__init__(settings)
        path = settings.path
        try:
            if create and not path.exists():
                try:
                    path.parent.mkdir(parents=True)
                    _give(path.parent, owner)
                except FileExistsError:  # there already (or made just now by a concurrent upgrade)
                    pass
                sqlite3.connect(path).close()
                _give(path, owner)  # SQLite gives its -wal and -shm files the database's owner
            elif not path.exists():
                raise StoreError(f"the store {path} does not exist: run `listfilter db upgrade`")
            self.conn = sqlite3.connect(path if create else f"file:{path}?mode=rw", uri=not create,
                                        timeout=30, isolation_level=None, check_same_thread=False)
            self.conn.execute("PRAGMA busy_timeout = 30000")
            for attempt in range(100):
                try:
                    if self.conn.execute("PRAGMA journal_mode").fetchone()[0] != "wal":
                        self.conn.execute("PRAGMA journal_mode = WAL")  # readers never wait for the ingest
                    break
                except sqlite3.OperationalError as exc:
                    # switching a new file to WAL does not wait for a concurrent opener: retry
                    if "locked" not in str(exc) or attempt == 99:
                        raise
                    time.sleep(0.05)
            self.conn.execute("PRAGMA synchronous = NORMAL")
        except sqlite3.Error as exc:
            raise StoreError(f"the store {path}: {exc}") from None
        self._depth = 0

    def _errors(self):
        return (sqlite3.IntegrityError, sqlite3.DataError, sqlite3.InterfaceError)

    def _execute(self, sql, params=()):
        try:
            return self.conn.execute(sql, tuple(params))
        except self._errors():
            raise
        except sqlite3.Error as exc:
            raise StoreError(f"the store {self.settings.path}: {exc}") from None

    def _executemany(self, sql, rows):
        try:
            self.conn.executemany(sql, rows)
        except self._errors():
            raise
        except sqlite3.Error as exc:
            raise StoreError(f"the store {self.settings.path}: {exc}") from None

    @contextmanager
    def transaction(self, *, exclusive: bool = False):
        if self._depth:
            self._depth += 1
            try:
                yield
            finally:
                self._depth -= 1
            return
        self._execute("BEGIN IMMEDIATE")
        self._depth = 1
        try:
            yield
        except BaseException:
            self._depth = 0
            try:
                self.conn.execute("ROLLBACK")
            except sqlite3.Error:
                pass
            raise
        self._depth = 0
        self._execute("COMMIT")

    def _has_table(self, name):
        return bool(self._q("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?", (name,)))

    def _ts(self, when):
        return when.astimezone(_UTC).strftime("%Y-%m-%d %H:%M:%S")

    def _from_ts(self, value):
        return dt.datetime.fromisoformat(value).replace(tzinfo=_UTC)

    def _bool(self, value):
        return int(value)


class _PostgreSQL(Store):
    dialect = "postgresql"
    _ts_type = "timestamp"

    def __init__(self, settings: StoreSettings):
        super().__init__(settings)
        dsn = settings.resolved_dsn()
        if not dsn:
            raise StoreError(f"no store DSN: set ${settings.dsn_env} or store.dsn")
        import psycopg  # heavy: only here

        self._psycopg = psycopg
        try:
            self.conn = psycopg.connect(dsn, connect_timeout=10, autocommit=True)
        except psycopg.Error as exc:
            raise StoreError(f"the store {settings.describe()}: {_first_line(exc)}") from None
        self._tx = None

    def _errors(self):
        p = self._psycopg
        return (p.DataError, p.IntegrityError, p.errors.UntranslatableCharacter, p.errors.CharacterNotInRepertoire)

    def _sql(self, sql: str) -> str:
        return sql.replace("?", "%s")

    def _execute(self, sql, params=()):
        params = tuple(params)
        try:
            return self.conn.execute(self._sql(sql) if params else sql, params or None)
        except self._errors():
            raise
        except self._psycopg.Error as exc:
            raise StoreError(f"the store {self.settings.describe()}: {_first_line(exc)}") from None

    def _executemany(self, sql, rows):
        try:
            with self.conn.cursor() as cur:
                cur.executemany(self._sql(sql), rows)
        except self._errors():
            raise
        except self._psycopg.Error as exc:
            raise StoreError(f"the store {self.settings.describe()}: {_first_line(exc)}") from None

    @contextmanager
    def transaction(self, *, exclusive: bool = False):
        if self._tx is not None:
            yield
            return
        try:
            tx = self.conn.transaction()
            tx.__enter__()
        except self._psycopg.Error as exc:
            raise StoreError(f"the store {self.settings.describe()}: {_first_line(exc)}") from None
        self._tx = tx
        try:
            if exclusive:  # one migrating process at a time
                self._execute("SELECT pg_advisory_xact_lock(727274)")
            yield
        except BaseException as exc:
            self._tx = None
            try:
                tx.__exit__(type(exc), exc, exc.__traceback__)
            except self._psycopg.Error:
                pass
            raise
        self._tx = None
        try:
            tx.__exit__(None, None, None)
        except self._errors():
            raise
        except self._psycopg.Error as exc:
            raise StoreError(f"the store {self.settings.describe()}: {_first_line(exc)}") from None

    def _has_table(self, name):
        return self._q("SELECT to_regclass(?)", (name,))[0][0] is not None

    def _placeholder(self, column):
        return {"status": "?::mail_log_status", "recipients": "?::jsonb"}.get(column, "?")

    def _read_column(self, column):
        return "status::text" if column == "status" else column

    def _ts(self, when):
        return when.astimezone(_UTC).replace(tzinfo=None)

    def _from_ts(self, value):
        return value.replace(tzinfo=_UTC)


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]


# --------------------------------------------------------------------------
# Ingest


@dataclass
class IngestResult:
    ingested: int = 0
    bad: list[tuple[str, str]] = field(default_factory=list)  # (file name, reason)
    busy: bool = False  # another ingest was running (only when not waiting)


@contextmanager
def _ingest_lock(events: Path, wait: bool):
    claimed = events / CLAIMED
    owner = _owner_of(events)  # root working in the listfilter user's spool leaves it the user's
    if not claimed.exists():
        claimed.mkdir(mode=0o755, exist_ok=True)
        _give(claimed, owner)
    fd = os.open(claimed / "lock", os.O_RDWR | os.O_CREAT, 0o644)
    if owner:
        _give(claimed / "lock", owner)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except BlockingIOError:
            yield False
            return
        yield True
    finally:
        os.close(fd)


def pending_events(spool_dir: Path) -> list[Path]:
    """Event files waiting in the spool (claimed ones included)."""
    events = spool_dir / EVENTS
    out = []
    for d in (events / CLAIMED, events):
        try:
            out.extend(p for p in d.iterdir() if p.name.endswith(".json") and not p.name.startswith("."))
        except FileNotFoundError:
            pass
    return out


def bad_events(spool_dir: Path) -> list[Path]:
    try:
        return sorted(p for p in (spool_dir / EVENTS / BAD).iterdir() if p.name.endswith(".json"))
    except FileNotFoundError:
        return []


def in_use(config: Config) -> bool:
    """Whether the mail log is wanted: asked for in the config, set up, or has events waiting.

    A fresh install with no [store] table, no SQLite file and no events yet
    is left alone (by sync and by check); once mail flows, its events make
    the missing store a problem that check reports and sync warns about.
    """
    settings = config.store
    return (settings.configured or config.web is not None or settings.backend != "sqlite"
            or settings.path.exists() or bool(pending_events(config.site.spool_dir)))


def ingest(store: Store, spool_dir: Path, *, wait: bool = True, batch: int = BATCH) -> IngestResult:
    """Move every event record from the spool into the store (see the module docstring)."""
    result = IngestResult()
    events = spool_dir / EVENTS
    if not events.is_dir():
        return result
    settings = store.settings
    with _ingest_lock(events, wait) as locked:
        if not locked:
            result.busy = True
            return result
        claimed_dir = events / CLAIMED
        # 1. files a previous ingest claimed but did not finish (crash, store down)
        leftovers = sorted(p for p in claimed_dir.iterdir() if p.name.endswith(".json"))
        _ingest_files(store, events, leftovers, result, settings, batch)
        # 2. new files: claim, parse, write in batches, then unlink
        names = sorted(p.name for p in events.iterdir() if p.name.endswith(".json") and not p.name.startswith("."))
        for start in range(0, len(names), batch):
            claimed = []
            for name in names[start:start + batch]:
                target = claimed_dir / name
                try:
                    os.rename(events / name, target)
                except FileNotFoundError:
                    continue
                except IsADirectoryError:
                    continue
                claimed.append(target)
            _ingest_files(store, events, claimed, result, settings, batch)
    return result


def _ingest_files(store: Store, events: Path, paths: list[Path], result: IngestResult,
                  settings: StoreSettings, batch: int) -> None:
    for start in range(0, len(paths), batch):
        good: list[tuple[Path, Entry]] = []
        for path in paths[start:start + batch]:
            try:
                with open(path, "rb") as fh:
                    raw = fh.read(64 * 1024 * 1024)
                data = json.loads(raw.decode("utf-8"))
                entry = parse_event(data, store_bodies=settings.store_bodies, body_max_bytes=settings.body_max_bytes)
            except FileNotFoundError:
                continue
            except IsADirectoryError:
                _set_aside(events, path, "a directory, not an event file", result)
                continue
            except OSError as exc:
                _set_aside(events, path, f"unreadable: {exc.strerror}", result)
                continue
            except UnicodeDecodeError as exc:
                _set_aside(events, path, f"not UTF-8 (byte {exc.start})", result)
                continue
            except ValueError as exc:  # JSONDecodeError and BadEvent
                _set_aside(events, path, f"{'not JSON: ' if isinstance(exc, json.JSONDecodeError) else ''}{exc}",
                           result)
                continue
            good.append((path, entry))
        if not good:
            continue
        try:
            store.upsert([e for _, e in good])
            done = good
        except store._errors():
            # one row the database refuses must not hold back the others: retry one by one
            done = []
            for path, entry in good:
                try:
                    store.upsert([entry])
                    done.append((path, entry))
                except store._errors() as exc:
                    _set_aside(events, path, f"refused by the store: {_first_line(exc)}", result)
        for path, _ in done:  # committed: now the files may go
            try:
                path.unlink()
            except FileNotFoundError:
                pass
        result.ingested += len(done)


def _set_aside(events: Path, path: Path, reason: str, result: IngestResult) -> None:
    """Move a malformed spool file to events/bad/, with its reason beside it."""
    bad = events / BAD
    if not bad.exists():
        bad.mkdir(exist_ok=True)
        _give(bad, _owner_of(events))
    target = bad / path.name
    if target.exists():
        target = bad / f"{path.stem}.{time.time_ns()}.json"
    reason = " ".join(reason.split())[:500]
    try:
        os.rename(path, target)
        (bad / (target.name + ".reason")).write_text(reason + "\n", encoding="utf-8")
        _give(bad / (target.name + ".reason"), _owner_of(events))
    except OSError as exc:
        log.error("spool file %s is malformed (%s) and cannot be moved aside: %s", path, reason, exc.strerror)
        result.bad.append((path.name, f"{reason} (could not move it aside: {exc.strerror})"))
        return
    log.warning("spool file %s moved to %s: %s", path.name, target, reason)
    result.bad.append((path.name, reason))


# --------------------------------------------------------------------------
# After a sync


def after_sync(config: Config, rows=None) -> tuple[list[str], list[str]]:
    """Ingest the spool and apply retention; the web roles file too. Returns (notes, warnings).

    Runs after the snapshot and maps are installed, and never raises for a
    store problem: mail keeps flowing without the store, and the events wait
    in the spool until the next sync. ``listfilter check`` reports the state.
    """
    notes: list[str] = []
    warnings: list[str] = []
    if config.web is not None and config.web.proxy_header and rows is not None:
        from . import auth

        try:
            if auth.write_roles(config, rows):
                notes.append(f"web: roles file {config.web.roles_file} updated")
        except OSError as exc:
            warnings.append(f"web: cannot write {config.web.roles_file}: {exc.strerror}")
    settings = config.store
    if not in_use(config):
        return notes, warnings  # no store wanted and nothing to put in one: nothing to say
    waiting = pending_events(config.site.spool_dir)
    try:
        with open_store(settings) as store:
            store.require_current()
            result = ingest(store, config.site.spool_dir)
            deleted, cleared = store.purge(settings.retention_days, settings.body_retention_days)
    except StoreError as exc:
        more = f"; {len(waiting)} event(s) wait in {config.site.spool_dir / EVENTS}" if waiting else ""
        warnings.append(f"mail log not updated: {exc}{more}")
        return notes, warnings
    except OSError as exc:
        warnings.append(f"mail log not updated: spool {config.site.spool_dir / EVENTS}: {exc.strerror}")
        return notes, warnings
    for name, reason in result.bad:
        warnings.append(f"spool event {name} is malformed, moved to {config.site.spool_dir / EVENTS / BAD}: {reason}")
    parts = []
    if result.ingested:
        parts.append(f"{result.ingested} event(s) logged")
    if deleted:
        parts.append(f"{deleted} row(s) older than {settings.retention_days} days purged")
    if cleared:
        parts.append(f"{cleared} bodies older than {settings.body_retention_days} days cleared")
    if parts:
        notes.append("mail log: " + ", ".join(parts))
    return notes, warnings


# --------------------------------------------------------------------------
# Showing rows


CONTROL_CHARS = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]+")


def oneline(value) -> str:
    """Control characters (CR, LF, ESC …) as one space: a header's text stays on one line."""
    return CONTROL_CHARS.sub(" ", str(value or "")).strip()


# --------------------------------------------------------------------------
# Reading times from the command line


_RELATIVE = re.compile(r"^\s*(\d+)\s*(m|min|h|d|w)\s*$", re.I)


def parse_since(text: str, tz: dt.tzinfo, now: dt.datetime | None = None) -> dt.datetime:
    """``90m``, ``12h``, ``7d``, ``2w``, a date or an ISO time (site time zone unless given)."""
    now = now or dt.datetime.now(_UTC)
    m = _RELATIVE.match(text)
    if m:
        n, unit = int(m.group(1)), m.group(2).lower()
        minutes = {"m": 1, "min": 1, "h": 60, "d": 1440, "w": 10080}[unit] * n
        return now - dt.timedelta(minutes=minutes)
    if text.strip().lower() == "today":
        local = now.astimezone(tz)
        return local.replace(hour=0, minute=0, second=0, microsecond=0).astimezone(_UTC)
    try:
        when = dt.datetime.fromisoformat(text.strip())
    except ValueError:
        raise ValueError(f"{text!r}: use 90m, 12h, 7d, 2w, today, 2026-01-21 or 2026-01-21T09:00") from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=tz)
    return when.astimezone(_UTC)
