"""The compiled snapshot, read side: what the mail side knows about every list.

``listfilter sync`` compiles config + roster (:mod:`listfilter.compiler`) into
one SQLite file in the state directory, replaced atomically. The mail side
opens it read-only (``immutable=1``: the file is never changed in place, only
replaced) with nothing but the standard library's ``sqlite3`` and ``json``:
this module is on the per-message path and imports nothing else.

Tables (``sqlite3 snapshot.sqlite .dump`` reads them):

- ``meta(key, value)``: format, digest, generated_at, config path, and the
  site settings the mail side needs (timezone, spool_dir, sendmail,
  notice_limit);
- ``lists``: one row per list address (``students@lists.example.edu``);
- ``members(list, email, name)``: who receives;
- ``posters(list, email)``: who may post (explicit, role-derived and, when
  the list lets members post, every member), lower-cased.
"""

from __future__ import annotations

import json
import sqlite3
from collections import namedtuple
from pathlib import Path

from .paths import DEFAULT_STATE_DIR, SNAPSHOT_NAME, config_path

FORMAT = "2"


def locate(config: str | None) -> Path:
    """The snapshot's path for a config file, reading only ``site.state_dir``.

    The mail side calls this instead of validating the whole config: what it
    needs from the config was compiled into the snapshot by the last sync, so
    a config being edited never stops the mail.
    """
    import tomllib

    path = config_path(config)
    try:
        with open(path, "rb") as fh:
            data = tomllib.load(fh)
        state_dir = data.get("site", {}).get("state_dir", DEFAULT_STATE_DIR)
        if not isinstance(state_dir, str):
            raise TypeError("site.state_dir is not a string")
    except (OSError, ValueError, TypeError, AttributeError) as exc:
        raise SnapshotError(f"cannot read {path}: {exc}") from None
    return path.resolve().parent / state_dir / SNAPSHOT_NAME


def summary_line(address: str, members: int, posters: int, rule: str) -> str:
    """One line per list, as ``sync --dry-run`` and ``lists`` show it."""
    return f"{address}: {members} members, {posters} posters ({rule})"


# --------------------------------------------------------------------------
# Reading (both sides; the mail side uses only this)


class SnapshotError(Exception):
    """The snapshot is missing or unreadable (the mail side defers: exit 75)."""


ListRow = namedtuple("ListRow", "address name local_part domain display_name description subject_tag"
                                " reply_to owners posters_rule exclude_poster member_count")


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

    def settings(self) -> dict[str, str]:
        """The site settings compiled in by sync (timezone, spool_dir, sendmail, notice_limit)."""
        missing = [k for k in ("timezone", "spool_dir", "sendmail", "notice_limit") if k not in self.meta]
        if missing:
            raise SnapshotError(f"snapshot {self.path} lacks {', '.join(missing)} (run listfilter sync)")
        return self.meta

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
