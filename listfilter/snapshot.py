"""The compiled snapshot: what the mail side knows about every list.

``listfilter sync`` compiles config + roster into :class:`CompiledList`
objects (pure), and writes them into one SQLite file in the state directory,
replaced atomically (temporary file, fsync, rename). The mail side opens it
read-only (``immutable=1``: the file is never changed in place, only replaced)
with nothing but the standard library's ``sqlite3``.

Tables (``sqlite3 snapshot.sqlite .dump`` reads them):

- ``meta(key, value)``: format, digest, generated_at, config path.
- ``lists``: one row per list address (``students@lists.example.edu``).
- ``members(list, email, name)``: who receives.
- ``posters(list, email)``: who may post (explicit, role-derived and, when
  the list lets members post, every member), lower-cased.
"""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import tempfile
from dataclasses import dataclass
from pathlib import Path

FORMAT = "1"


@dataclass(frozen=True)
class CompiledList:
    address: str  # lower-case local@domain
    name: str  # the [lists.NAME] key
    local_part: str
    domain: str
    display_name: str
    description: str
    subject_tag: str
    reply_to: str | None
    owners: tuple[str, ...]
    posters_rule: str  # who may post, in words
    exclude_poster: bool
    members: tuple[tuple[str, str], ...]  # (email, name), sorted by lower-cased email
    posters: tuple[str, ...]  # lower-cased, sorted

    def summary(self) -> str:
        return summary_line(self.address, len(self.members), len(self.posters), self.posters_rule)


def summary_line(address: str, members: int, posters: int, rule: str) -> str:
    """One line per list, as ``sync --dry-run`` and ``lists`` show it."""
    return f"{address}: {members} members, {posters} posters ({rule})"


def compile_lists(config, rows) -> list[CompiledList]:
    """Every list on every domain, computed from config and roster rows (pure)."""
    from . import roster as R

    out = []
    for dname, domain in sorted(config.domains.items()):
        course = R.course_rows(rows, domain)
        roles = R.roles_by_person(course, config.roster)
        for lst in sorted(config.lists.values(), key=lambda l: l.local_part):
            if dname not in lst.domains:
                continue
            members = R.members(lst, course, config.roster)
            allowed = R.posters(lst, members, roles)
            out.append(CompiledList(
                address=f"{lst.local_part}@{dname}",
                name=lst.name,
                local_part=lst.local_part,
                domain=dname,
                display_name=lst.display_name,
                description=lst.description,
                subject_tag=lst.subject_tag,
                reply_to=config.reply_to_address(lst, dname),
                owners=lst.owners,
                posters_rule=lst.posters.describe(),
                exclude_poster=lst.exclude_poster,
                members=tuple((m.email, m.name) for _, m in sorted(members.items())),
                posters=tuple(sorted(allowed)),
            ))
    return out


def digest(lists: list[CompiledList]) -> str:
    """A content hash: equal digests mean an identical snapshot."""
    h = hashlib.sha256(FORMAT.encode())
    for lst in lists:
        h.update(json.dumps(lst.__dict__, sort_keys=True, ensure_ascii=False).encode())
    return h.hexdigest()


# --------------------------------------------------------------------------
# Writing (sync side)

_SCHEMA = """
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL) WITHOUT ROWID;
CREATE TABLE lists (
    address TEXT PRIMARY KEY, name TEXT NOT NULL, local_part TEXT NOT NULL, domain TEXT NOT NULL,
    display_name TEXT NOT NULL, description TEXT NOT NULL, subject_tag TEXT NOT NULL,
    reply_to TEXT, owners TEXT NOT NULL, posters_rule TEXT NOT NULL,
    exclude_poster INTEGER NOT NULL, member_count INTEGER NOT NULL
) WITHOUT ROWID;
CREATE TABLE members (list TEXT NOT NULL, email TEXT NOT NULL, name TEXT NOT NULL,
                      PRIMARY KEY (list, email)) WITHOUT ROWID;
CREATE TABLE posters (list TEXT NOT NULL, email TEXT NOT NULL,
                      PRIMARY KEY (list, email)) WITHOUT ROWID;
"""


def write(path: Path, lists: list[CompiledList], meta: dict[str, str]) -> None:
    """Write the snapshot atomically: temporary file, fsync, rename, fsync dir."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".snapshot.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        conn = sqlite3.connect(tmp)
        try:
            conn.executescript("PRAGMA journal_mode=OFF; PRAGMA synchronous=OFF;" + _SCHEMA)
            conn.executemany("INSERT INTO meta VALUES (?, ?)",
                             sorted({**meta, "format": FORMAT, "digest": digest(lists)}.items()))
            conn.executemany(
                "INSERT INTO lists VALUES (?,?,?,?,?,?,?,?,?,?,?,?)",
                [(l.address, l.name, l.local_part, l.domain, l.display_name, l.description,
                  l.subject_tag, l.reply_to, json.dumps(list(l.owners)), l.posters_rule,
                  int(l.exclude_poster), len(l.members)) for l in lists])
            conn.executemany("INSERT INTO members VALUES (?,?,?)",
                             ((l.address, e, n) for l in lists for e, n in l.members))
            conn.executemany("INSERT INTO posters VALUES (?,?)",
                             ((l.address, p) for l in lists for p in l.posters))
            conn.commit()
        finally:
            conn.close()
        os.chmod(tmp, 0o644)
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
        _fsync_dir(path.parent)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


# --------------------------------------------------------------------------
# Reading (both sides; the mail side uses only this)


class SnapshotError(Exception):
    """The snapshot is missing or unreadable (the mail side defers: exit 75)."""


@dataclass(frozen=True)
class ListRow:
    address: str
    name: str
    local_part: str
    domain: str
    display_name: str
    description: str
    subject_tag: str
    reply_to: str | None
    owners: tuple[str, ...]
    posters_rule: str
    exclude_poster: bool
    member_count: int


class Snapshot:
    """Read-only access to an installed snapshot."""

    def __init__(self, path: Path):
        self.path = Path(path)
        if not self.path.is_file():
            raise SnapshotError(f"snapshot {self.path} is missing (run listfilter sync)")
        try:
            self._db = sqlite3.connect(f"file:{self.path}?mode=ro&immutable=1", uri=True)
            self.meta = dict(self._db.execute("SELECT key, value FROM meta"))
        except sqlite3.Error as exc:
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

    def get_list(self, address: str) -> ListRow | None:
        rows = self._q("SELECT * FROM lists WHERE address = ?", (address.lower(),))
        return _list_row(rows[0]) if rows else None

    def lists(self) -> list[ListRow]:
        return [_list_row(r) for r in self._q("SELECT * FROM lists ORDER BY domain, local_part")]

    def members(self, address: str) -> list[tuple[str, str]]:
        return self._q("SELECT email, name FROM members WHERE list = ? ORDER BY email COLLATE NOCASE", (address.lower(),))

    def posters(self, address: str) -> list[str]:
        return [r[0] for r in self._q("SELECT email FROM posters WHERE list = ? ORDER BY email",
                                      (address.lower(),))]

    def may_post(self, address: str, email: str) -> bool:
        return bool(self._q("SELECT 1 FROM posters WHERE list = ? AND email = ?",
                            (address.lower(), email.lower())))


def _list_row(r) -> ListRow:
    return ListRow(r[0], r[1], r[2], r[3], r[4], r[5], r[6], r[7], tuple(json.loads(r[8])), r[9],
                   bool(r[10]), r[11])


def installed_digest(path: Path) -> str | None:
    """The digest of the installed snapshot, or None if there is none usable."""
    try:
        with Snapshot(path) as snap:
            return snap.meta.get("digest")
    except SnapshotError:
        return None
