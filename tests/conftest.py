"""Shared fixtures: a real PostgreSQL roster database and config files."""

from __future__ import annotations

import contextlib
import os
import shutil
import textwrap
import uuid
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
EXAMPLE = REPO / "docs" / "example"
PG_ADMIN_DSN = os.environ.get("LISTFILTER_TEST_PG", "postgresql://postgres@127.0.0.1:5432/postgres")
#: The tests run as root in pytest's tmp_path (mode 0700), which the listfilter
#: user cannot reach: `sync` keeps all its work as root here. The divided sync
#: has its own tests (tests/sync/test_privilege.py, tests/integration/test_privilege.py).
os.environ.setdefault("LISTFILTER_SYNC_USER", "root")

#: The roster seeded into every test database: course CS 199 with applicants,
#: enrolled and inactive students, a teacher, two TAs (one enrolled twice with
#: different case), last semester's student, and another course's student.
ROSTER_SQL = """
CREATE TABLE users (
    id serial PRIMARY KEY,
    email text NOT NULL UNIQUE,
    name text NOT NULL DEFAULT '',
    role text NOT NULL DEFAULT 'student'
);
CREATE TABLE enrollments (
    id serial PRIMARY KEY,
    user_id integer NOT NULL REFERENCES users(id),
    course text NOT NULL,
    enrollment_type text NOT NULL,
    active boolean NOT NULL DEFAULT true,
    semester text NOT NULL DEFAULT 'current'
);
"""

ROSTER_ROWS = [
    # email, name, course, type, active, semester
    ("prof@example.edu", "Jane Doe", "CS 199", "teacher", True, "current"),
    ("ta1@example.edu", "Tom Alvarez", "CS 199", "ta", True, "current"),
    ("TA2@Example.edu", "Uma Tran", "CS 199", "ta", True, "current"),
    ("alice@example.edu", "Alice Liddell", "CS 199", "student", True, "current"),
    ("bob@example.edu", "Bob Brown", "CS 199", "student", True, "current"),
    ("dan@example.edu", "Dan Dropped", "CS 199", "student", False, "current"),
    ("erin@example.edu", "Erin Applicant", "CS 199", "applied", True, "current"),
    ("frank@example.edu", "Frank Former", "CS 199", "student", True, "2025-fall"),
    ("grace@example.edu", "Grace Other", "CS 225", "student", True, "current"),
]


def pytest_collection_modifyitems(items):
    """Everything under tests/integration/ (a real Postfix, Chromium, concurrent processes) and
    every test that needs the real PostgreSQL carries the ``integration`` marker, so
    ``-m "not integration"`` is the quick unit run and no test can forget the mark."""
    for item in items:
        if "integration" in item.path.parts or "pg_dsn" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.integration)


def _pg_connect(dsn: str):
    import psycopg

    return psycopg.connect(dsn, autocommit=True, connect_timeout=5)


@pytest.fixture
def pg_dsn():
    """A fresh PostgreSQL database with the default roster schema, dropped afterwards."""
    with roster_database() as dsn:
        yield dsn


@contextlib.contextmanager
def roster_database(rows=ROSTER_ROWS):
    """Create a PostgreSQL database seeded with ``rows``; drop it on exit."""
    import psycopg
    from psycopg import sql

    name = f"listfilter_test_{uuid.uuid4().hex[:12]}"
    try:
        admin = _pg_connect(PG_ADMIN_DSN)
    except psycopg.OperationalError as exc:
        pytest.fail(f"PostgreSQL is required at {PG_ADMIN_DSN}: {exc}")
    with admin:
        admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    dsn = PG_ADMIN_DSN.rsplit("/", 1)[0] + "/" + name
    with _pg_connect(dsn) as conn:
        conn.execute(ROSTER_SQL)
        seed_roster(conn, rows)
    try:
        yield dsn
    finally:
        with _pg_connect(PG_ADMIN_DSN) as admin:
            admin.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


def seed_roster(conn, rows) -> None:
    """Insert (email, name, course, type, active, semester) rows."""
    for email, name, course, etype, active, semester in rows:
        uid = conn.execute(
            "INSERT INTO users (email, name) VALUES (%s, %s) ON CONFLICT (email) DO UPDATE SET name = EXCLUDED.name"
            " RETURNING id", (email, name)).fetchone()[0]
        conn.execute(
            "INSERT INTO enrollments (user_id, course, enrollment_type, active, semester) VALUES (%s, %s, %s, %s, %s)",
            (uid, course, etype, active, semester))


#: A config in the shape of the customer's: two domains, the four course lists.
COURSE_LISTS = """
[domains."lists.example.edu"]
course = "CS 199"

[domains."lists-dev.example.edu"]
course = "CS 199"

[lists.testing]
display_name = "CS 199 Testing"
members = { emails = ["prof@example.edu"] }
posters = ["prof@example.edu"]

[lists.students]
display_name = "CS 199 Students"
description = "Everyone: applied, enrolled and staff"
members = { roles = ["applied", "student", "teacher", "ta"] }
posters = { roles = ["instructor", "ta"] }
reply_to = "staff"

[lists.enrolled]
display_name = "CS 199 Enrolled"
members = { roles = ["student"] }
posters = { roles = ["instructor"] }

[lists.staff]
display_name = "CS 199 Staff"
members = { roles = ["staff"] }
posters = "members"
"""


@pytest.fixture(autouse=True)
def no_dmarc_dns(monkeypatch):
    """No test asks DNS unless it starts tests/harness/dns.py: a sync run in the test's own process
    reads every poster domain as publishing no DMARC record. (A sync run as a subprocess would ask
    the host's resolver: those tests' configs say ``dmarc = "off"``, or point ``[dns]`` at the harness.)"""
    from listfilter.common import snapshot as S
    from listfilter.sync import dmarc

    def no_record(domains, settings, now=None):
        import time

        expires = int((now or time.time()) + 3600)
        return {d: S.DmarcEntry(d, None, "none", expires, f"no DMARC record at _dmarc.{d} (test)") for d in domains}

    monkeypatch.setattr(dmarc, "look_up", no_record)


@pytest.fixture
def make_config(tmp_path):
    """Write a config file under tmp_path and return its path.

    ``make_config(body, site=..., postfix=..., roster=...)``: each keyword is
    the body of that table; defaults keep state in tmp_path/state and use
    plain-text maps, so nothing needs Postfix unless the test asks for it.
    """

    def make(body: str = COURSE_LISTS, *, site: str = "", postfix: str = 'map_type = "texthash"\nreload = false',
             roster: str = "", name: str = "lists.toml") -> Path:
        text = "\n".join([
            "[site]",
            'timezone = "America/Chicago"',
            f'state_dir = "{tmp_path / "state"}"',
            'owners = ["prof@example.edu"]',
            # a sync run as a subprocess would ask the host's resolver (no_dmarc_dns above)
            "" if "dmarc" in site else 'dmarc = "off"',
            textwrap.dedent(site),
            "[postfix]",
            textwrap.dedent(postfix),
            "[roster]",
            textwrap.dedent(roster),
            textwrap.dedent(body),
        ])
        path = tmp_path / name
        path.write_text(text)
        return path

    return make


@pytest.fixture
def example_config(tmp_path) -> Path:
    """A copy of the bundled example, so tests never write into the checkout."""
    dest = tmp_path / "example"
    shutil.copytree(EXAMPLE, dest, ignore=shutil.ignore_patterns("state"))
    return dest / "lists.toml"


def in_ci() -> bool:
    return os.environ.get("CI", "").lower() in ("1", "true", "yes")


@pytest.fixture(scope="session")
def host_postfix_config():
    """Postfix's commands refuse to run without /etc/postfix/main.cf; Debian's
    "No configuration" install leaves none. Create an inert one if missing."""
    main_cf = Path("/etc/postfix/main.cf")
    if not main_cf.exists():
        if not Path("/usr/sbin/postconf").exists():
            pytest.fail("Postfix is required (apt-get install postfix)")
        debian = Path("/usr/share/postfix/main.cf.debian")
        main_cf.write_text(debian.read_text() if debian.exists() else "")
    return main_cf
