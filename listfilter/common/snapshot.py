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
- ``members(list, email, name, source)``: who receives, and why (:data:`SOURCES`);
- ``posters(list, email)``: who may post (explicit, role-derived and, when
  the list lets members post, every member), lower-cased;
- ``suppressed(email, reason)``: addresses no list sends to (bounce scoring
  on the sync side decides them);
- ``dmarc(domain, policy, status, expires_at, detail)``: the DMARC policy of
  every domain that can post to a list with ``dmarc`` not ``off``, looked up
  by sync (:mod:`listfilter.sync.dmarc`), columns :data:`DMARC_COLUMNS`;
- ``eligible(list, email)``: who may join an opt-in list whose ``join_rule`` is
  not ``anyone`` (lower-cased);
- ``texts(list, kind, text)``: the messages the mail side sends for a list
  (:data:`TEXT_KINDS`), rendered by sync with the per-message fields left as
  markers (:func:`fill_notice`);
- ``approved(list, held_id, post_key)``: held posts an owner approved, which
  sync is releasing; the mail side lets exactly these through once.
"""

from __future__ import annotations

import json
import os
import sqlite3
from collections import namedtuple
from pathlib import Path

from .errors import ListfilterError
from .words import plural

#: Bumped whenever a table or column changes: a reader refuses a snapshot of
#: another format (the mail side defers, exit 75) until sync writes a new one.
FORMAT = "7"

#: What the mail side needs from [site], carried in the meta table. ``authserv_id`` is
#: this host's (whose Authentication-Results count); ``authenticated_trusted`` is
#: :func:`encode_trusted`'s JSON.
SETTINGS = ("timezone", "spool_dir", "sendmail", "notice_limit", "postfix_log", "postqueue",
            "authserv_id", "authenticated_trusted", "token_key", "confirm_days")

#: The lists table: (column, SQL type). ``owners`` and ``dmarc_always`` are JSON arrays;
#: ``exclude_poster``, ``title_case_subject`` and ``require_authenticated`` are 0 or 1 (the list config's fields).
#: ``redirect_to`` is the staging valve (``redirect_all_to`` of the list's domain or of [site]): when set,
#: every copy for the list goes only there; NULL when off. ``optin`` and ``join_approval`` are 0 or 1;
#: ``join_rule`` says who may join in words ("anyone": no eligible rows; "" for a list that is not
#: opt-in); ``non_member_posts`` and ``non_poster_posts`` are "refuse" or "hold"; ``unsubscribe_url``
#: is the one-click link's base (``[web] url`` + ``/unsubscribe``), "" when there is none.
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
    ("title_case_subject", "INTEGER NOT NULL"),
    ("notice", "TEXT NOT NULL"),
    ("notice_undated", "TEXT NOT NULL"),
    ("dmarc", "TEXT NOT NULL"),
    ("dmarc_always", "TEXT NOT NULL"),
    ("require_authenticated", "INTEGER NOT NULL"),
    ("redirect_to", "TEXT"),
    ("optin", "INTEGER NOT NULL"),
    ("join_rule", "TEXT NOT NULL"),
    ("join_approval", "INTEGER NOT NULL"),
    ("non_member_posts", "TEXT NOT NULL"),
    ("non_poster_posts", "TEXT NOT NULL"),
    ("hold_days", "INTEGER NOT NULL"),
    ("unsubscribe_url", "TEXT NOT NULL"),
    ("member_count", "INTEGER NOT NULL"),
)
_NAMES = tuple(name for name, _ in LIST_COLUMNS)

#: One list as the mail side reads it. ``notice`` and ``notice_undated`` are
#: the refusal notice's text, rendered by sync with :data:`NOTICE_FIELDS`
#: left as markers (see :func:`fill_notice`).
ListRow = namedtuple("ListRow", _NAMES)

#: One list as sync compiles it: the row (without the count) plus its members
#: ((email, name) pairs, sorted by lower-cased email) and posters (lower-cased, sorted);
#: ``sources`` maps the lower-cased address of each member who is not the roster's to its
#: source (:data:`SOURCES`), ``eligible`` who may join (lower-cased, sorted), ``texts`` the
#: list's messages ({kind: text}, :data:`TEXT_KINDS`).
CompiledList = namedtuple("CompiledList", _NAMES[:-1] + ("members", "posters", "sources", "eligible", "texts"),
                          defaults=(False, "", False, "refuse", "refuse", 14, "", (), (), {}, (), {}))

#: Where a member comes from: the roster's query, the config's ``emails``, ``listfilter members add``
#: (or the admin page), or a confirmed join of an opt-in list.
SOURCES = ("roster", "config", "extra", "joined")

#: The messages the mail side sends, one text per list and kind (rendered by sync from
#: ``templates/messages/<kind>.txt.j2``): a join or leave request's confirmation, what the
#: sender is told when they may not join or are not a member, a confirmed join that waits for
#: an owner, the owners' request to decide it, a held post's notice to its poster and to the
#: owners, and the answer to a request the list cannot read.
TEXT_KINDS = ("join-confirm", "leave-confirm", "join-refused", "leave-not-member", "join-pending",
              "join-admit", "held-poster", "held-owners", "request-help")

#: The dmarc table: one row per domain. ``policy`` is the one receivers apply
#: (none, quarantine, reject; NULL without a record or when the lookup failed),
#: ``status`` one of :data:`DMARC_STATUSES`, ``expires_at`` Unix seconds (the
#: answer's TTL), ``detail`` one line saying where the record was or what failed.
DMARC_COLUMNS = ("domain", "policy", "status", "expires_at", "detail")
DmarcEntry = namedtuple("DmarcEntry", DMARC_COLUMNS)
#: A record was found; the domain publishes none; the lookup failed (SERVFAIL, a timeout): strict.
DMARC_STATUSES = ("ok", "none", "failed")
DMARC_FAILED = "failed"
#: The policies for which a post needs the mitigation.
DMARC_STRICT = ("quarantine", "reject")
#: How long past ``expires_at`` an entry still stands. Sync asks again for every
#: expired entry each time it runs (every 5 minutes from cron), so an entry this
#: stale means sync has stopped: the mail side then treats the domain as strict.
DMARC_GRACE = 3600


def dmarc_always_match(always, address: str) -> str | None:
    """The entry of a list's ``dmarc_always`` that covers ``address``: the address itself,
    its domain, or a parent domain (``example.edu`` covers ``cs.example.edu``); None if none does."""
    address = address.lower()
    domain = address.rpartition("@")[2]
    for entry in always:
        if entry == address or entry == domain or ("@" not in entry and domain.endswith("." + entry)):
            return entry
    return None

#: One ``[site] authenticated_trusted`` entry as the mail side reads it: lower-cased From
#: domains, and the networks (text, or :data:`LOCAL_SUBMISSION`; (): any client).
Trusted = namedtuple("Trusted", "domains networks")
#: The ``networks`` entry for mail submitted on this host with sendmail: it has no client address.
LOCAL_SUBMISSION = "local"


def encode_trusted(entries) -> str:
    """The ``authenticated_trusted`` setting: entries with ``domains`` and ``networks``, as JSON."""
    return json.dumps([[list(e.domains), list(e.networks)] for e in entries])


def decode_trusted(text: str) -> tuple[Trusted, ...]:
    return tuple(Trusted(tuple(d), tuple(n)) for d, n in json.loads(text or "[]"))


#: The header of an approved post as sync releases it, naming its held id: the ``approved`` table's
#: contract between the release (listfilter.store.moderation) and deliver's ``approved`` rule.
APPROVED_HEADER = "X-Listfilter-Approved"

#: The refusal notice's per-message fields, which sync leaves as markers.
NOTICE_FIELDS = ("poster", "original_subject", "original_date", "reason")
#: The per-message fields of :data:`TEXT_KINDS`: who asked (``address``), the token that
#: confirms and the address a reply goes to, when it expires, and the held post's id;
#: ``second_token`` is an owner's other answer (deny beside admit, discard beside approve);
#: ``excerpt`` the first lines of a held post's body.
TEXT_FIELDS = NOTICE_FIELDS + ("address", "token", "reply_address", "expires", "held_id", "second_token",
                               "excerpt")


def notice_marker(field: str) -> str:
    """A marker no config or roster text contains (Unicode noncharacters around the name)."""
    return f"\ufdd0{field}\ufdd1"


def fill_notice(text: str, **values: str) -> str:
    """The notice with its markers replaced by ``values``, in one pass (a value
    that itself looks like a marker stays as it is)."""
    import re

    return re.sub("\ufdd0(" + "|".join(TEXT_FIELDS) + ")\ufdd1", lambda m: values.get(m.group(1), ""), text)


def summary_line(address: str, members: int, posters: int, rule: str, lst=None) -> str:
    """One line per list, as ``sync --dry-run`` and ``lists`` show it; ``lst`` (a list row or a compiled
    list) adds whether people join it themselves and whether it holds posts."""
    extra = []
    if lst is not None and lst.optin:
        extra.append(f"opt-in: {lst.join_rule} may join" + (", owners admit" if lst.join_approval else ""))
    if lst is not None and "hold" in (lst.non_member_posts, lst.non_poster_posts):
        held = [who for who, mode in (("non-members", lst.non_member_posts), ("members who may not post",
                                                                               lst.non_poster_posts)) if mode == "hold"]
        extra.append(f"holds posts from {' and '.join(held)}")
    return f"{address}: {plural(members, 'member')}, {plural(posters, 'poster')} ({rule})" + "".join(
        f"; {e}" for e in extra)


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

    def members_with_sources(self, address: str) -> list[tuple[str, str, str]]:
        """(email, name, source) of every member (:data:`SOURCES`)."""
        return self._q("SELECT email, name, source FROM members WHERE list = ? ORDER BY email COLLATE NOCASE",
                       (address.lower(),))

    def member(self, address: str, email: str) -> tuple[str, str, str] | None:
        """(email, name, source) of one member (compared case-insensitively), or None."""
        rows = self._q("SELECT email, name, source FROM members WHERE list = ? AND email = ? COLLATE NOCASE",
                       (address.lower(), email))
        return rows[0] if rows else None

    def may_join(self, row: "ListRow", email: str) -> bool:
        """Whether ``email`` may join the opt-in list ``row`` (its join_rule, and the eligible table)."""
        if not row.optin:
            return False
        if row.join_rule == "anyone":
            return True
        return bool(self._q("SELECT 1 FROM eligible WHERE list = ? AND email = ?", (row.address, email.lower())))

    def text(self, address: str, kind: str) -> str | None:
        """One of the list's messages (:data:`TEXT_KINDS`), markers and all; None if sync rendered none."""
        rows = self._q("SELECT text FROM texts WHERE list = ? AND kind = ?", (address.lower(), kind))
        return rows[0][0] if rows else None

    def approved(self, address: str, held_id: str) -> str | None:
        """The post key of a held post approved for the list, or None (not approved, or released long ago)."""
        rows = self._q("SELECT post_key FROM approved WHERE list = ? AND held_id = ?", (address.lower(), held_id))
        return rows[0][0] if rows else None

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

    def dmarc(self, domain: str) -> DmarcEntry | None:
        """The DMARC entry of one (lower-cased) domain, or None when sync did not look it up."""
        rows = self._q(f"SELECT {', '.join(DMARC_COLUMNS)} FROM dmarc WHERE domain = ?", (domain.lower(),))
        return DmarcEntry._make(rows[0]) if rows else None

    def dmarc_entries(self) -> dict[str, DmarcEntry]:
        """Every DMARC entry, by domain (sync reuses the ones not yet expired)."""
        return {r[0]: DmarcEntry._make(r) for r in self._q(f"SELECT {', '.join(DMARC_COLUMNS)} FROM dmarc")}


_BOOLEANS = ("exclude_poster", "title_case_subject", "require_authenticated", "optin",
             "join_approval")  # stored as 0/1


def _list_row(r) -> ListRow:
    row = ListRow._make(r)
    return row._replace(owners=tuple(json.loads(row.owners)), dmarc_always=tuple(json.loads(row.dmarc_always)),
                        **{k: bool(getattr(row, k)) for k in _BOOLEANS})


def installed_digest(path: Path) -> str | None:
    """The digest of the installed snapshot, or None if there is none usable."""
    try:
        with Snapshot(path) as snap:
            return snap.meta.get("digest")
    except SnapshotError:
        return None


def installed_dmarc(path: Path) -> dict[str, DmarcEntry]:
    """The installed snapshot's DMARC entries (none if there is no usable snapshot)."""
    try:
        with Snapshot(path) as snap:
            return snap.dmarc_entries()
    except SnapshotError:
        return {}


# --------------------------------------------------------------------------
# Writing (sync only)

_SCHEMA = f"""
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL) WITHOUT ROWID;
CREATE TABLE lists ({', '.join(f'{n} {t}' for n, t in LIST_COLUMNS)}) WITHOUT ROWID;
CREATE TABLE members (list TEXT NOT NULL, email TEXT NOT NULL, name TEXT NOT NULL,
                      source TEXT NOT NULL DEFAULT 'roster', PRIMARY KEY (list, email)) WITHOUT ROWID;
CREATE TABLE posters (list TEXT NOT NULL, email TEXT NOT NULL,
                      PRIMARY KEY (list, email)) WITHOUT ROWID;
CREATE TABLE suppressed (email TEXT PRIMARY KEY, reason TEXT NOT NULL) WITHOUT ROWID;
CREATE TABLE dmarc (domain TEXT PRIMARY KEY, policy TEXT, status TEXT NOT NULL, expires_at INTEGER NOT NULL,
                    detail TEXT NOT NULL) WITHOUT ROWID;
CREATE TABLE eligible (list TEXT NOT NULL, email TEXT NOT NULL, PRIMARY KEY (list, email)) WITHOUT ROWID;
CREATE TABLE texts (list TEXT NOT NULL, kind TEXT NOT NULL, text TEXT NOT NULL, PRIMARY KEY (list, kind)) WITHOUT ROWID;
CREATE TABLE approved (list TEXT NOT NULL, held_id TEXT NOT NULL, post_key TEXT NOT NULL,
                       PRIMARY KEY (list, held_id)) WITHOUT ROWID;
"""


def _list_values(lst: CompiledList) -> tuple:
    """One row of the lists table, in :data:`LIST_COLUMNS` order."""
    values = {**lst._asdict(), "owners": json.dumps(list(lst.owners)),
              "dmarc_always": json.dumps(list(lst.dmarc_always)), "member_count": len(lst.members)}
    values.update((k, int(values[k])) for k in _BOOLEANS)
    return tuple(values[n] for n in _NAMES)


def write(path: Path, lists: list[CompiledList], meta: dict[str, str],
          suppressed: dict[str, str] | None = None, dmarc: dict[str, DmarcEntry] | None = None,
          approved: list[tuple[str, str, str]] | None = None) -> None:
    """Write the snapshot atomically: temporary file, fsync, rename, fsync dir.

    ``meta`` holds the digest, the site settings and what describes the run
    (generated_at, config path); ``suppressed`` maps addresses to a reason;
    ``dmarc`` domains to their :class:`DmarcEntry`; ``approved`` holds (list, held_id, post_key).
    """
    from .atomic import fsync_dir, replacing

    path.parent.mkdir(parents=True, exist_ok=True)
    with replacing(path) as tmp:
        conn = sqlite3.connect(tmp)
        try:
            conn.executescript("PRAGMA journal_mode=OFF; PRAGMA synchronous=OFF;" + _SCHEMA)
            conn.executemany("INSERT INTO meta VALUES (?, ?)", sorted({**meta, "format": FORMAT}.items()))
            conn.executemany(
                f"INSERT INTO lists ({', '.join(_NAMES)}) VALUES ({', '.join('?' for _ in LIST_COLUMNS)})",
                [_list_values(l) for l in lists])
            conn.executemany("INSERT INTO members VALUES (?,?,?,?)",
                             ((l.address, e, n, l.sources.get(e.lower(), "roster")) for l in lists for e, n in l.members))
            conn.executemany("INSERT INTO posters VALUES (?,?)",
                             ((l.address, p) for l in lists for p in l.posters))
            conn.executemany("INSERT INTO suppressed VALUES (?,?)", sorted((suppressed or {}).items()))
            conn.executemany(f"INSERT INTO dmarc ({', '.join(DMARC_COLUMNS)}) VALUES (?,?,?,?,?)",
                             sorted(tuple(e) for e in (dmarc or {}).values()))
            conn.executemany("INSERT INTO eligible VALUES (?,?)", ((l.address, e) for l in lists for e in l.eligible))
            conn.executemany("INSERT INTO texts VALUES (?,?,?)",
                             ((l.address, k, t) for l in lists for k, t in sorted(l.texts.items())))
            conn.executemany("INSERT INTO approved VALUES (?,?,?)", sorted(approved or ()))
            conn.commit()
        finally:
            conn.close()
    fsync_dir(path.parent)
