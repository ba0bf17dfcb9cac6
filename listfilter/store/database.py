"""The mail log store: one ``mail_logs`` row per (message, list), in SQLite or PostgreSQL.

Sync side only (the mail side never imports this). :class:`Store` is a
connection to the store named by ``[store]`` (an SQLite file in the state
directory by default, or a PostgreSQL DSN), with the versioned migrations of
:mod:`listfilter.store.migrations` and the queries the CLI and the web pages
use. Every SQL statement is parameterised. Moving the spool's records in is
:mod:`listfilter.store.ingest`; bounce scores are :mod:`listfilter.store.bounces`;
each member's outcome, from Postfix's log, is :mod:`listfilter.store.deliveries`.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import re
import sqlite3
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

from ..common.errors import ListfilterError
from ..common.events import TEMPORARY, Event
from ..common.paths import SERVICE_USER
from ..sync.config import StoreSettings
from . import migrations as MG

log = logging.getLogger("listfilter.store")
log.addHandler(logging.NullHandler())  # the CLI reports on its own; the web app configures logging

_UTC = dt.timezone.utc


class StoreError(ListfilterError):
    """The store cannot be used; the message is one line for the operator."""


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
    client_address: str = ""
    helo_name: str = ""
    rule: str = ""
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

    @property
    def refused_at_rcpt(self) -> bool:
        """A refusal by the policy service: no message was received, so no subject or body."""
        return self.status == "rejected"

    @property
    def headline(self) -> str:
        """The row in one line where a subject goes: the subject, or for a refusal at RCPT
        time what is known instead (the envelope sender, the SMTP client, its HELO name)."""
        if self.refused_at_rcpt:
            parts = [f"refused at RCPT: MAIL FROM <{oneline(self.envelope_sender)}>"]
            if self.client_address:
                parts.append(f"client {oneline(self.client_address)}")
            if self.helo_name:
                parts.append(f"HELO {oneline(self.helo_name)}")
            return ", ".join(parts)
        return oneline(self.subject) or "(no subject)"


_COLUMNS = ("id", "status", "list_address", "list_display_name", "sender_email", "sender_name", "envelope_sender",
            "client_address", "helo_name", "rule", "subject", "recipient_count", "recipients", "error_message",
            "message_id", "queue_id", "body", "body_truncated", "created_at")


def entry_of(event: Event, *, store_bodies: bool = True, body_max_bytes: int = 64 * 1024) -> Entry:
    """The row for a validated event: the body kept (and capped) as ``[store]`` says."""
    body = event.body if store_bodies else None
    truncated = False
    if body is not None:
        encoded = body.encode("utf-8")
        if len(encoded) > body_max_bytes:
            body = encoded[:body_max_bytes].decode("utf-8", "ignore")
            truncated = True
    fields = {k: v for k, v in event._asdict().items() if k not in ("created_at", "body", "recipients")}
    return Entry(**fields, created_at=dt.datetime.fromisoformat(event.created_at), recipients=list(event.recipients),
                 body=body, body_truncated=truncated)


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

    def refused_errors(self) -> tuple[type[BaseException], ...]:
        return self._errors()

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

    _UPSERT_COLUMNS = _COLUMNS + ("updated_at",)

    def _upsert_sql(self) -> str:
        cols = self._UPSERT_COLUMNS
        values = ", ".join(self._placeholder(c) for c in cols)
        updates = ", ".join(f"{c} = excluded.{c}" for c in cols if c != "id")
        # Which record of a (message, list) the row keeps, whatever the order they are
        # ingested in: an outcome over a deferral (Postfix retried and it went out; or a
        # second copy deferred after the first was delivered, which must not hide that
        # delivery); between two outcomes or two deferrals, the newest.
        temporary = ", ".join(f"'{s}'" for s in TEMPORARY)
        new_temp, old_temp = f"excluded.status IN ({temporary})", f"mail_logs.status IN ({temporary})"
        return (f"INSERT INTO mail_logs ({', '.join(cols)}) VALUES ({values})"
                f" ON CONFLICT (id) DO UPDATE SET {updates} WHERE CASE WHEN ({new_temp}) = ({old_temp})"
                f" THEN excluded.created_at >= mail_logs.created_at ELSE {old_temp} END")

    def _placeholder(self, column: str) -> str:
        return "?"

    def _row(self, e: Entry, now: dt.datetime) -> tuple:
        special = {"recipients": json.dumps(e.recipients, ensure_ascii=False),
                   "body_truncated": self._bool(e.body_truncated), "created_at": self._ts(e.created_at)}
        return (*(special[c] if c in special else getattr(e, c) for c in _COLUMNS), self._ts(now))

    def _bool(self, value: bool):
        return value

    def upsert(self, entries: list[Entry]) -> None:
        """Insert or update rows, in one transaction (the caller's, if one is open).

        Of two records of one (message, list), the row keeps the outcome over a
        deferral (``events.TEMPORARY``) and otherwise the newer one (:meth:`_upsert_sql`).
        """
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
                from .deliveries import purge as purge_outcomes  # the members' outcomes go with their post

                purge_outcomes(self, now - dt.timedelta(days=retention_days))
                deleted = self._execute("DELETE FROM mail_logs WHERE created_at < ?",
                                        (self._ts(now - dt.timedelta(days=retention_days)),)).rowcount
            if body_retention_days:
                cleared = self._execute("UPDATE mail_logs SET body = NULL WHERE body IS NOT NULL AND created_at < ?",
                                        (self._ts(now - dt.timedelta(days=body_retention_days)),)).rowcount
        return max(deleted, 0), max(cleared, 0)

    # -- reading

    def _where(self, status: Iterable[str] | None, lists: Iterable[str] | None,
               since: dt.datetime | None, members: Iterable[str] | None = None) -> tuple[str, list[Any]]:
        """``members``: only posts with a member whose outcome is one of these (``deliveries``)."""
        clauses, params = [], []
        members = [m for m in (members or ()) if m]
        if members:
            clauses.append("id IN (SELECT event_id FROM deliveries WHERE status IN"
                           f" ({', '.join('?' for _ in members)}))")
            params.extend(members)
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

    def count(self, *, status=None, lists=None, since=None, members=None) -> int:
        where, params = self._where(status, lists, since, members)
        return self._q(f"SELECT count(*) FROM mail_logs{where}", params)[0][0]

    def entries(self, *, status=None, lists=None, since=None, members=None, limit: int = 50, offset: int = 0,
                body_chars: int | None = None) -> list[Entry]:
        """Rows newest first; ``body_chars`` caps the body text fetched (None: all of it)."""
        where, params = self._where(status, lists, since, members)
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
                  "envelope_sender", "queue_id", "client_address", "helo_name", "rule"):
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
                # the log holds message bodies: not for every local user (docs/web.md
                # says how to let the web app's own user in)
                try:
                    path.parent.mkdir(mode=0o750, parents=True)
                    _give(path.parent, owner)
                except FileExistsError:  # there already (or made just now by a concurrent upgrade)
                    pass
                sqlite3.connect(path).close()
                os.chmod(path, 0o640)
                _give(path, owner)  # SQLite gives its -wal and -shm files the database's owner and mode
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
            # libpq's parse errors quote the DSN: mask its secrets there too
            raise StoreError(f"the store {settings.describe()}: {settings.redact(_first_line(exc))}") from None
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
