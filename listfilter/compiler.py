"""Compiling config + roster into the snapshot (sync side).

:func:`compile_lists` is pure: every list on every domain with its members
and posters. :func:`write` stores them in the SQLite format that
:mod:`listfilter.snapshot` reads, replacing the file atomically (temporary
file, fsync, rename, fsync of the directory).
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
from dataclasses import dataclass
from pathlib import Path

from .atomic import fsync_dir, replacing
from .snapshot import FORMAT, summary_line

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


def compile_lists(config, rows) -> list[CompiledList]:
    """Every list on every domain, computed from config and roster rows (pure)."""
    from . import roster as R

    with R.bulk():
        return _compile(config, list(rows), R)


def _compile(config, rows, R) -> list[CompiledList]:
    grouped = R.by_course(rows)
    out = []
    # Domains that serve the same course (a dev and a prod domain) share their
    # members and posters: work each out once per course.
    per_course: dict = {}
    for dname, domain in sorted(config.domains.items()):
        if domain.course not in per_course:
            course = rows if domain.course is None else grouped.get(domain.course, [])
            per_course[domain.course] = (R.CourseIndex(course, config.roster), {})
        index, computed = per_course[domain.course]
        for lst in sorted(config.lists.values(), key=lambda l: l.local_part):
            if dname not in lst.domains:
                continue
            if lst.name not in computed:
                members = index.members(lst)
                allowed = index.posters(lst, members)
                # Member is an (email, name) named tuple: sorted by lower-cased address
                computed[lst.name] = (tuple(m for _, m in sorted(members.items())), tuple(sorted(allowed)))
            members_t, posters_t = computed[lst.name]
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
                members=members_t,
                posters=posters_t,
            ))
    return out


def site_settings(config) -> dict[str, str]:
    """What the mail side needs from [site], carried in the snapshot's meta table
    so that `deliver` reads one file and never validates the whole config."""
    site = config.site
    return {
        "timezone": site.timezone,
        "spool_dir": str(site.spool_dir),
        "sendmail": site.sendmail,
        "notice_limit": str(site.notice_limit),
    }


def digest(lists: list[CompiledList], settings: dict[str, str]) -> str:
    """A content hash: equal digests mean an identical snapshot.

    The members and posters (nearly all of the bytes) are hashed as text
    joined with lone surrogates, which no decoded roster, CSV or TOML string
    can contain, so the encoding is unambiguous; the other fields as JSON.
    """
    h = hashlib.sha256(FORMAT.encode())
    h.update(json.dumps(settings, sort_keys=True).encode())
    for lst in lists:
        fields = {k: v for k, v in lst.__dict__.items() if k not in ("members", "posters")}
        h.update(json.dumps(fields, sort_keys=True, ensure_ascii=False).encode("utf-8", "surrogatepass"))
        h.update("\udcfd".join(["\udcfe".join(map("\udcff".join, lst.members)),
                                 "\udcfe".join(lst.posters), ""]).encode("utf-8", "surrogatepass"))
    return h.hexdigest()


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


def write(path: Path, lists: list[CompiledList], settings: dict[str, str], meta: dict[str, str]) -> None:
    """Write the snapshot atomically: temporary file, fsync, rename, fsync dir.

    ``settings`` (see :func:`site_settings`) and ``meta`` (generated_at,
    config path) both go into the meta table; only settings count in the digest.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    with replacing(path) as tmp:
        conn = sqlite3.connect(tmp)
        try:
            conn.executescript("PRAGMA journal_mode=OFF; PRAGMA synchronous=OFF;" + _SCHEMA)
            conn.executemany("INSERT INTO meta VALUES (?, ?)",
                             sorted({**meta, **settings, "format": FORMAT, "digest": digest(lists, settings)}.items()))
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
    fsync_dir(path.parent)
