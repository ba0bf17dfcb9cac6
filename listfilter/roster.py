"""The enrollment roster: reading it (PostgreSQL or CSV) and deciding membership.

Reading is I/O at the edge (:func:`load`); everything else here is pure
functions over :class:`Enrollment` rows, so membership rules are tested
without a database.

A roster row is one enrollment: ``email, name, enrollment_type, active,
semester, course``. Addresses compare case-insensitively; a person enrolled
twice is one member.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from typing import Iterable

from .config import Config, Domain, ListConfig, MemberQuery, Roster

#: The default query, for the schema in docs/roster.md. It must return the
#: columns email, name, enrollment_type, active, semester, course; the one
#: parameter, %(semesters)s, is the list of semesters the lists ask for.
DEFAULT_QUERY = """\
SELECT u.email, u.name, e.enrollment_type, e.active, e.semester, e.course
  FROM users u
  JOIN enrollments e ON e.user_id = u.id
 WHERE e.semester = ANY(%(semesters)s)
 ORDER BY lower(u.email), u.email, e.id
"""

COLUMNS = ("email", "name", "enrollment_type", "active", "semester", "course")


class RosterError(Exception):
    """The roster could not be read; the message is one line for the operator."""


@dataclass(frozen=True)
class Enrollment:
    email: str
    name: str
    enrollment_type: str
    active: bool
    semester: str
    course: str | None

    @property
    def key(self) -> str:
        return self.email.lower()


@dataclass(frozen=True)
class Member:
    email: str
    name: str


# --------------------------------------------------------------------------
# Reading (I/O)


def semesters_needed(config: Config) -> list[str]:
    """Every semester some list's roster query asks for."""
    out = {config.roster.current_semester}
    for lst in config.lists.values():
        if lst.members_query and lst.members_query.semester:
            out.add(lst.members_query.semester)
    return sorted(out)


def load(config: Config) -> list[Enrollment]:
    """Read every enrollment row the lists may need; raise RosterError."""
    roster = config.roster
    semesters = semesters_needed(config)
    if roster.source == "csv":
        return load_csv(roster, semesters)
    return load_postgresql(roster, semesters)


def load_csv(roster: Roster, semesters: list[str]) -> list[Enrollment]:
    path = roster.csv
    try:
        with open(path, newline="", encoding="utf-8-sig") as fh:  # a spreadsheet's BOM is fine
            reader = csv.DictReader(fh)
            missing = [c for c in COLUMNS if c != "course" and c not in (reader.fieldnames or [])]
            if missing:
                raise RosterError(f"{path}: missing column(s) {', '.join(missing)}")
            rows = []
            for n, row in enumerate(reader, start=2):
                try:
                    rows.append(_row(row["email"], row["name"], row["enrollment_type"],
                                     _csv_bool(row["active"]), row["semester"], row.get("course")))
                except ValueError as exc:
                    raise RosterError(f"{path}:{n}: {exc}") from None
    except OSError as exc:
        raise RosterError(f"cannot read roster {path}: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise RosterError(f"{path}: not UTF-8") from None
    return [r for r in rows if r.semester in semesters]


def load_postgresql(roster: Roster, semesters: list[str]) -> list[Enrollment]:
    dsn = roster.resolved_dsn()
    if not dsn:
        raise RosterError(f"no roster DSN: set ${roster.dsn_env} or roster.dsn")
    import psycopg  # heavy: only the sync side gets here

    try:
        with psycopg.connect(dsn, connect_timeout=10) as conn:
            with conn.cursor() as cur:
                cur.execute(roster.query or DEFAULT_QUERY, {"semesters": semesters})
                names = [d.name for d in cur.description or []]
                missing = [c for c in COLUMNS if c not in names]
                if missing:
                    raise RosterError(f"roster query does not return column(s) {', '.join(missing)}")
                idx = [names.index(c) for c in COLUMNS]
                rows = []
                for rec in cur:
                    try:
                        rows.append(_row(*(rec[i] for i in idx)))
                    except ValueError as exc:
                        raise RosterError(f"roster row {rec!r}: {exc}") from None
                return rows
    except psycopg.Error as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise RosterError(f"roster database: {first}") from None


def _row(email, name, etype, active, semester, course) -> Enrollment:
    if not email or "@" not in str(email):
        raise ValueError(f"bad email {email!r}")
    if not isinstance(active, bool):
        raise ValueError(f"active must be true/false, not {active!r}")
    return Enrollment(str(email).strip(), (name or "").strip(), str(etype).strip(), active,
                      str(semester).strip(), (str(course).strip() or None) if course is not None else None)


def _csv_bool(value: str) -> bool:
    v = (value or "").strip().lower()
    if v in ("true", "t", "yes", "y", "1"):
        return True
    if v in ("false", "f", "no", "n", "0"):
        return False
    raise ValueError(f"active must be true or false, not {value!r}")


# --------------------------------------------------------------------------
# Decisions (pure)


def course_rows(rows: Iterable[Enrollment], domain: Domain) -> list[Enrollment]:
    """The enrollments of the course a domain serves (all rows if it names none)."""
    if domain.course is None:
        return list(rows)
    return [r for r in rows if r.course == domain.course]


def matches(row: Enrollment, query: MemberQuery, roster: Roster) -> bool:
    if row.active != query.active:
        return False
    if row.semester != (query.semester or roster.current_semester):
        return False
    if query.roles is not None and row.enrollment_type not in roster.expand_roles(query.roles):
        return False
    return True


def members(lst: ListConfig, rows: Iterable[Enrollment], roster: Roster) -> dict[str, Member]:
    """A list's members on one domain, keyed by lower-cased address.

    ``rows`` are that domain's course rows. Roster matches come first (they
    carry names), then the explicit emails; duplicates collapse to one.
    """
    out: dict[str, Member] = {}
    if lst.members_query is not None:
        for row in rows:
            if row.key not in out and matches(row, lst.members_query, roster):
                out[row.key] = Member(row.email, row.name)
    for email in lst.member_emails:
        out.setdefault(email.lower(), Member(email, ""))
    return out


def roles_by_person(rows: Iterable[Enrollment], roster: Roster) -> dict[str, frozenset[str]]:
    """Each person's roles in the current semester (active enrollments only).

    A role is an enrollment type, or an alias (instructor, staff) whose types
    the person holds.
    """
    types: dict[str, set[str]] = {}
    for row in rows:
        if row.active and row.semester == roster.current_semester:
            types.setdefault(row.key, set()).add(row.enrollment_type)
    out = {}
    for key, held in types.items():
        roles = set(held)
        roles.update(alias for alias, targets in roster.role_aliases.items() if held & set(targets))
        out[key] = frozenset(roles)
    return out


def posters(lst: ListConfig, list_members: dict[str, Member], roles: dict[str, frozenset[str]]) -> set[str]:
    """Lower-cased addresses allowed to post to a list on one domain."""
    allowed = {e.lower() for e in lst.posters.emails}
    if lst.posters.members:
        allowed.update(list_members)
    if lst.posters.roles:
        wanted = set(lst.posters.roles)
        allowed.update(k for k, held in roles.items() if held & wanted)
    return allowed
