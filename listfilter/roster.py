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
import gc
from contextlib import contextmanager
from operator import itemgetter
from typing import Iterable, NamedTuple

from .config import Config, Domain, ListConfig, Roster

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


class Enrollment(NamedTuple):
    """One roster row (a named tuple: 50,000 of them are built on every sync)."""

    email: str
    name: str
    enrollment_type: str
    active: bool
    semester: str
    course: str | None

    @property
    def key(self) -> str:
        return self.email.lower()


class Member(NamedTuple):
    """A list member: the address as the roster spells it, and the name.

    A named tuple, so that the compiled lists carry these pairs as they are
    (the snapshot stores ``(email, name)``) without copying 100,000 of them."""

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


@contextmanager
def bulk():
    """Pause the cyclic garbage collector while building many small objects.

    Reading 50,000 rows and compiling 200 lists from them creates some
    300,000 tuples and strings, none of them in reference cycles; each of the
    collector's full passes re-walks all of them, which cost about a third of
    a sync's compile time. Reference counting still frees everything; the
    collector resumes (if it was running) on the way out.
    """
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def load(config: Config) -> list[Enrollment]:
    """Read every enrollment row the lists may need; raise RosterError."""
    roster = config.roster
    semesters = semesters_needed(config)
    with bulk():
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
                pick = itemgetter(*(names.index(c) for c in COLUMNS))
                rows = []
                append, make = rows.append, Enrollment._make
                # fetchall() builds the tuples in psycopg's C code, far faster than iterating
                for rec in cur.fetchall():
                    email, name, etype, active, semester, course = pick(rec)
                    # the usual row (text columns, a real boolean): what _row() does, inline
                    if (type(email) is str and "@" in email and type(active) is bool and type(etype) is str
                            and type(semester) is str and (name is None or type(name) is str)
                            and (course is None or type(course) is str)):
                        append(make((email.strip(), name.strip() if name else "", etype.strip(), active,
                                     semester.strip(), (course.strip() or None) if course is not None else None)))
                        continue
                    try:
                        append(_row(email, name, etype, active, semester, course))
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


def by_course(rows: Iterable[Enrollment]) -> dict[str | None, list[Enrollment]]:
    """The rows grouped by course, in roster order within each course: one pass
    instead of one scan of the whole roster per domain."""
    out: dict[str | None, list[Enrollment]] = {}
    for row in rows:
        group = out.get(row.course)
        if group is None:
            group = out[row.course] = []
        group.append(row)
    return out


class CourseIndex:
    """One course's rows, bucketed once by (active, semester, enrollment type).

    A list reads only the rows that can match it, and
    posting rights by role are set unions: compiling 200 lists from 50,000
    rows no longer walks every row once per list.
    """

    def __init__(self, rows: Iterable[Enrollment], roster: Roster):
        self.roster = roster
        buckets: dict[tuple[bool, str, str], list[tuple[int, str, Member]]] = {}
        new = tuple.__new__  # Member(email, name) without the Python-level __new__
        for pos, (email, name, etype, active, semester, _course) in enumerate(rows):
            k = (active, semester, etype)
            bucket = buckets.get(k)
            if bucket is None:
                bucket = buckets[k] = []
            bucket.append((pos, email.lower(), new(Member, (email, name))))
        self.buckets = buckets
        # who holds each enrollment type (active, current semester): the roles' base
        current = roster.current_semester
        self.holders: dict[str, set[str]] = {}
        for (active, semester, etype), bucket in buckets.items():
            if active and semester == current:
                self.holders.setdefault(etype, set()).update(key for _, key, _ in bucket)

    def members(self, lst: ListConfig) -> dict[str, Member]:
        """A list's members on one domain, keyed by lower-cased address: roster
        matches first (in roster order, which decides spelling and name), then
        the explicit emails; duplicates collapse to one."""
        out: dict[str, Member] = {}
        query = lst.members_query
        if query is not None:
            semester = query.semester or self.roster.current_semester
            wanted = self.roster.expand_roles(query.roles) if query.roles is not None else None
            picked = [b for (active, sem, etype), b in self.buckets.items()
                      if active == query.active and sem == semester and (wanted is None or etype in wanted)]
            rows = picked[0] if len(picked) == 1 else sorted((r for b in picked for r in b), key=itemgetter(0))
            for _, key, member in rows:
                if key not in out:
                    out[key] = member
        for email in lst.member_emails:
            out.setdefault(email.lower(), Member(email, ""))
        return out

    def role_holders(self, role: str) -> set[str]:
        """Lower-cased addresses holding ``role``: the type itself, or an alias's types."""
        out = set(self.holders.get(role, ()))
        for target in self.roster.role_aliases.get(role, ()):
            out |= self.holders.get(target, set())
        return out

    def posters(self, lst: ListConfig, list_members: dict[str, Member]) -> set[str]:
        """Lower-cased addresses allowed to post to a list on one domain."""
        allowed = {e.lower() for e in lst.posters.emails}
        if lst.posters.members:
            allowed.update(list_members)
        for role in lst.posters.roles or ():
            allowed |= self.role_holders(role)
        return allowed


def roles_by_person(rows: Iterable[Enrollment], roster: Roster) -> dict[str, frozenset[str]]:
    """Each person's roles in the current semester (active enrollments only).

    A role is an enrollment type, or an alias (instructor, staff) whose types
    the person holds.
    """
    types: dict[str, set[str]] = {}
    current = roster.current_semester
    for row in rows:
        if row.active and row.semester == current:
            key = row.email.lower()
            held = types.get(key)
            if held is None:
                types[key] = {row.enrollment_type}
            else:
                held.add(row.enrollment_type)
    aliases = [(alias, frozenset(targets)) for alias, targets in roster.role_aliases.items()]
    # most people hold the same few combinations of types: work each out once
    resolved: dict[frozenset[str], frozenset[str]] = {}
    out = {}
    for key, held in types.items():
        held = frozenset(held)
        roles = resolved.get(held)
        if roles is None:
            roles = resolved[held] = held | {alias for alias, targets in aliases if held & targets}
        out[key] = roles
    return out
