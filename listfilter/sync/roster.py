"""The enrollment roster: reading it from PostgreSQL or a CSV file (I/O at the edge).

Who is on which list is decided from these rows by
:mod:`listfilter.sync.membership`, pure functions tested without a database.

A roster row is one enrollment: ``email, name, enrollment_type, active,
semester, course``. Addresses compare case-insensitively; a person enrolled
twice is one member.
"""

from __future__ import annotations

import csv
import gc
from contextlib import contextmanager
from operator import itemgetter
from typing import NamedTuple

from ..common.errors import ListfilterError
from .config import Config, Roster

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


class RosterError(ListfilterError):
    """The roster could not be read; the message is one line for the operator."""

    label = "roster unavailable"

    def report(self) -> str:
        return f"{super().report()}; nothing was changed"


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
