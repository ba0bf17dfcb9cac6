"""The compiled snapshot: everything the mail side knows, in one SQLite file.

``listfilter sync`` compiles config + roster (:mod:`listfilter.sync.compiler`)
and writes the file through :func:`write`, replacing it atomically; the mail
side opens it read-only (``immutable=1``: the file is never changed in place,
only replaced) with nothing but the standard library. This module owns the
format: the tables, their columns and the version.

Tables (``sqlite3 snapshot.sqlite .dump`` reads them):

- ``meta(key, value)``: format, digest, generated_at, config path, and the
  site settings the mail side needs (:data:`SETTINGS`);
- ``lists``: one row per list address, columns :data:`LIST_COLUMNS`;
- ``members(list, email, name)``: who receives;
- ``posters(list, email)``: who may post (explicit, role-derived and, when
  the list lets members post, every member), lower-cased;
- ``suppressed(email, reason)``: addresses no list sends to (bounce scoring
  on the sync side decides them).
"""

from __future__ import annotations

import json
import os
import sqlite3
from collections import namedtuple
from pathlib import Path

from .errors import ListfilterError

FORMAT = "3"

#: What the mail side needs from [site], carried in the meta table.
SETTINGS = ("timezone", "spool_dir", "sendmail", "notice_limit")

#: The lists table: (column, SQL type). ``owners`` is a JSON array.
LIST_COLUMNS = (
    ("address", "TEXT PRIMARY KEY"),
    ("name", "TEXT NOT NULL"),
    ("local_part", "TEXT NOT NULL"),
    ("domain", "TEXT NOT NULL"),
    ("display_name", "TEXT NOT NULL"),
    ("description", "TEXT NOT NULL"),
    ("subject_tag", "TEXT NOT NULL"),
    ("reply_to", "TEXT"),
    ("owners", "TEXT NOT NULL"),
    ("posters_rule", "TEXT NOT NULL"),
    ("exclude_poster", "INTEGER NOT NULL"),
    ("notice", "TEXT NOT NULL"),
    ("notice_undated", "TEXT NOT NULL"),
    ("member_count", "INTEGER NOT NULL"),
)
_NAMES = tuple(name for name, _ in LIST_COLUMNS)

#: One list as the mail side reads it. ``notice`` and ``notice_undated`` are
#: the refusal notice's text, rendered by sync with :data:`NOTICE_FIELDS`
#: left as markers (see :func:`fill_notice`).
ListRow = namedtuple("ListRow", _NAMES)

#: One list as sync compiles it: the row (without the count) plus its members
#: ((email, name) pairs, sorted by lower-cased email) and posters (lower-cased, sorted).
CompiledList = namedtuple("CompiledList", _NAMES[:-1] + ("members", "posters"))

#: The refusal notice's per-message fields, which sync leaves as markers.
NOTICE_FIELDS = ("poster", "original_subject", "original_date", "reason")


def notice_marker(field: str) -> str:
    """A marker no config or roster text contains (Unicode noncharacters around the name)."""
    return f"\ufdd0{field}\ufdd1"


def fill_notice(text: str, **values: str) -> str:
    """The notice with its markers replaced by ``values``, in one pass (a value
    that itself looks like a marker stays as it is)."""
    import re

    return re.sub("\ufdd0(" + "|".join(NOTICE_FIELDS) + ")\ufdd1", lambda m: values.get(m.group(1), ""), text)


def summary_line(address: str, members: int, posters: int, rule: str) -> str:
    """One line per list, as ``sync --dry-run`` and ``lists`` show it."""
    return f"{address}: {members} members, {posters} posters ({rule})"


class SnapshotError(ListfilterError):
    """The snapshot is missing or unreadable (the mail side defers: exit 75)."""


# --------------------------------------------------------------------------
# Reading (both sides; the mail side uses only this)


class Snapshot:
    """Read-only access to an installed snapshot."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        try:
            # immutable=1: no locking, no journal; the file is only ever replaced.
            self._db = sqlite3.connect(f"file:{self.path}?mode=ro&immutable=1", uri=True)
            self.meta = dict(self._db.execute("SELECT key, value FROM meta"))
        except sqlite3.Error as exc:
            if not self.path.is_file():
                raise SnapshotError(f"snapshot {self.path} is missing (run listfilter sync)") from None
            raise SnapshotError(f"snapshot {self.path} is unreadable: {exc}") from None
        if self.meta.get("format") != FORMAT:
            raise SnapshotError(f"snapshot {self.path} has format {self.meta.get('format')!r},"
                                f" expected {FORMAT} (run listfilter sync)")

    def close(self) -> None:
        self._db.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def _q(self, sql: str, args=()):
        try:
            return self._db.execute(sql, args).fetchall()
        except sqlite3.Error as exc:
            raise SnapshotError(f"snapshot {self.path} is unreadable: {exc}") from None

    def settings(self) -> dict[str, str]:
        """The site settings compiled in by sync (:data:`SETTINGS`)."""
        missing = [k for k in SETTINGS if k not in self.meta]
        if missing:
            raise SnapshotError(f"snapshot {self.path} lacks {', '.join(missing)} (run listfilter sync)")
        return self.meta

    def get_list(self, address: str) -> ListRow | None:
        rows = self._q(f"SELECT {', '.join(_NAMES)} FROM lists WHERE address = ?", (address.lower(),))
        return _list_row(rows[0]) if rows else None

    def lists(self) -> list[ListRow]:
        return [_list_row(r) for r in self._q(f"SELECT {', '.join(_NAMES)} FROM lists ORDER BY domain, local_part")]

    def members(self, address: str) -> list[tuple[str, str]]:
        return self._q("SELECT email, name FROM members WHERE list = ? ORDER BY email COLLATE NOCASE",
                       (address.lower(),))

    def posters(self, address: str) -> list[str]:
        return [r[0] for r in self._q("SELECT email FROM posters WHERE list = ? ORDER BY email",
                                      (address.lower(),))]

    def may_post(self, address: str, email: str) -> bool:
        return bool(self._q("SELECT 1 FROM posters WHERE list = ? AND email = ?",
                            (address.lower(), email.lower())))

    def suppressed(self) -> frozenset[str]:
        """Every address that no list sends to (lower-cased)."""
        return frozenset(r[0] for r in self._q("SELECT email FROM suppressed"))

    def suppressed_with_reasons(self) -> dict[str, str]:
        return dict(self._q("SELECT email, reason FROM suppressed ORDER BY email"))


def _list_row(r) -> ListRow:
    r = list(r)
    r[8] = tuple(json.loads(r[8]))  # owners
    r[10] = bool(r[10])  # exclude_poster
    return ListRow._make(r)


def installed_digest(path: Path) -> str | None:
    """The digest of the installed snapshot, or None if there is none usable."""
    try:
        with Snapshot(path) as snap:
            return snap.meta.get("digest")
    except SnapshotError:
        return None


# --------------------------------------------------------------------------
# Writing (sync only)

_SCHEMA = f"""
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL) WITHOUT ROWID;
CREATE TABLE lists ({', '.join(f'{n} {t}' for n, t in LIST_COLUMNS)}) WITHOUT ROWID;
CREATE TABLE members (list TEXT NOT NULL, email TEXT NOT NULL, name TEXT NOT NULL,
                      PRIMARY KEY (list, email)) WITHOUT ROWID;
CREATE TABLE posters (list TEXT NOT NULL, email TEXT NOT NULL,
                      PRIMARY KEY (list, email)) WITHOUT ROWID;
CREATE TABLE suppressed (email TEXT PRIMARY KEY, reason TEXT NOT NULL) WITHOUT ROWID;
"""


def write(path: Path, lists: list[CompiledList], meta: dict[str, str],
          suppressed: dict[str, str] | None = None) -> None:
    """Write the snapshot atomically: temporary file, fsync, rename, fsync dir.

    ``meta`` holds the digest, the site settings and what describes the run
    (generated_at, config path); ``suppressed`` maps addresses to a reason.
    """
    from .atomic import fsync_dir, replacing

    path.parent.mkdir(parents=True, exist_ok=True)
    with replacing(path) as tmp:
        conn = sqlite3.connect(tmp)
        try:
            conn.executescript("PRAGMA journal_mode=OFF; PRAGMA synchronous=OFF;" + _SCHEMA)
            conn.executemany("INSERT INTO meta VALUES (?, ?)", sorted({**meta, "format": FORMAT}.items()))
            conn.executemany(
                f"INSERT INTO lists VALUES ({', '.join('?' for _ in LIST_COLUMNS)})",
                [(*l[:8], json.dumps(list(l.owners)), l.posters_rule, int(l.exclude_poster), l.notice,
                  l.notice_undated, len(l.members)) for l in lists])
            conn.executemany("INSERT INTO members VALUES (?,?,?)",
                             ((l.address, e, n) for l in lists for e, n in l.members))
            conn.executemany("INSERT INTO posters VALUES (?,?)",
                             ((l.address, p) for l in lists for p in l.posters))
            conn.executemany("INSERT INTO suppressed VALUES (?,?)", sorted((suppressed or {}).items()))
            conn.commit()
        finally:
            conn.close()
    fsync_dir(path.parent)
