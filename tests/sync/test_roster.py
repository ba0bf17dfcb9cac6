"""Membership and posting rights from the roster: pure rules, CSV, and real PostgreSQL."""

from __future__ import annotations

import pytest

from listfilter.sync import config as C
from listfilter.sync import roster as R
from listfilter.sync import compiler as K

from ..conftest import ROSTER_ROWS, seed_roster


def rows_from(seed) -> list[R.Enrollment]:
    return [R.Enrollment(email, name, etype, active, semester, course)
            for email, name, course, etype, active, semester in seed]


def members_of(lists, address):
    return [e for e, _ in next(l for l in lists if l.address == address).members]


def posters_of(lists, address):
    return list(next(l for l in lists if l.address == address).posters)


def test_course_lists_from_rows(make_config):
    config = C.load(make_config())
    lists = K.compile_lists(config, rows_from(ROSTER_ROWS))
    # everyone on the course: applied, enrolled, staff; not inactive, not last semester, not CS 225
    assert members_of(lists, "students@lists.example.edu") == [
        "alice@example.edu", "bob@example.edu", "erin@example.edu", "prof@example.edu",
        "ta1@example.edu", "TA2@Example.edu"]
    assert members_of(lists, "enrolled@lists.example.edu") == ["alice@example.edu", "bob@example.edu"]
    assert members_of(lists, "staff@lists.example.edu") == ["prof@example.edu", "ta1@example.edu", "TA2@Example.edu"]
    assert members_of(lists, "testing@lists.example.edu") == ["prof@example.edu"]
    # posters: roles instructor (teacher) and ta; members for staff@; lower-cased
    assert posters_of(lists, "students@lists.example.edu") == ["prof@example.edu", "ta1@example.edu", "ta2@example.edu"]
    assert posters_of(lists, "enrolled@lists.example.edu") == ["prof@example.edu"]
    assert posters_of(lists, "staff@lists.example.edu") == ["prof@example.edu", "ta1@example.edu", "ta2@example.edu"]
    # both domains get the same lists
    assert members_of(lists, "students@lists-dev.example.edu") == members_of(lists, "students@lists.example.edu")


def test_duplicates_collapse_case_insensitively(make_config):
    config = C.load(make_config())
    seed = ROSTER_ROWS + [("ALICE@example.edu", "Alice L.", "CS 199", "applied", True, "current")]
    lists = K.compile_lists(config, rows_from(seed))
    students = members_of(lists, "students@lists.example.edu")
    assert [e.lower() for e in students].count("alice@example.edu") == 1


def test_explicit_emails_merge_with_roster(make_config):
    config = C.load(make_config("""
[domains."lists.example.edu"]
course = "CS 199"
[lists.mixed]
members = { roles = ["teacher"], emails = ["PROF@example.edu", "guest@example.org"] }
posters = { emails = ["guest@example.org"], roles = ["ta"] }
"""))
    lists = K.compile_lists(config, rows_from(ROSTER_ROWS))
    assert members_of(lists, "mixed@lists.example.edu") == ["guest@example.org", "prof@example.edu"]
    assert posters_of(lists, "mixed@lists.example.edu") == ["guest@example.org", "ta1@example.edu", "ta2@example.edu"]


def test_inactive_and_other_semester_queries(make_config):
    config = C.load(make_config("""
[domains."lists.example.edu"]
course = "CS 199"
[lists.dropped]
members = { active = false }
posters = []
[lists.alumni]
members = { semester = "2025-fall" }
posters = []
"""))
    lists = K.compile_lists(config, rows_from(ROSTER_ROWS))
    assert members_of(lists, "dropped@lists.example.edu") == ["dan@example.edu"]
    assert members_of(lists, "alumni@lists.example.edu") == ["frank@example.edu"]
    assert R.semesters_needed(config) == ["2025-fall", "current"]


def test_inactive_staff_cannot_post(make_config):
    config = C.load(make_config())
    seed = [r if r[0] != "ta1@example.edu" else (*r[:4], False, r[5]) for r in ROSTER_ROWS]
    lists = K.compile_lists(config, rows_from(seed))
    assert "ta1@example.edu" not in posters_of(lists, "students@lists.example.edu")


def test_csv_roster(tmp_path, make_config):
    csv = tmp_path / "roster.csv"
    csv.write_text("email,name,enrollment_type,active,semester,course\n" + "".join(
        f"{e},{n},{t},{str(a).lower()},{s},{c}\n" for e, n, c, t, a, s in ROSTER_ROWS))
    config = C.load(make_config(roster=f'source = "csv"\ncsv = "{csv}"'))
    rows = R.load(config)
    assert sorted(r.email for r in rows) == sorted(r[0] for r in ROSTER_ROWS if r[5] == "current")
    assert members_of(K.compile_lists(config, rows), "enrolled@lists.example.edu") == [
        "alice@example.edu", "bob@example.edu"]


def test_csv_errors_name_file_and_line(tmp_path, make_config):
    csv = tmp_path / "roster.csv"
    csv.write_text("email,name,enrollment_type,active,semester\na@example.edu,A,student,maybe,current\n")
    config = C.load(make_config(roster=f'source = "csv"\ncsv = "{csv}"'))
    with pytest.raises(R.RosterError, match=rf"{csv}:2: active must be true or false, not 'maybe'"):
        R.load(config)
    csv.write_text("email,name\n")
    with pytest.raises(R.RosterError, match="missing column"):
        R.load(config)


@pytest.mark.integration
def test_postgresql_default_query(pg_dsn, make_config):
    config = C.load(make_config(roster=f'dsn = "{pg_dsn}"'))
    rows = R.load(config)
    assert {r.email for r in rows} == {r[0] for r in ROSTER_ROWS if r[5] == "current"}
    lists = K.compile_lists(config, rows)
    assert members_of(lists, "students@lists.example.edu") == [
        "alice@example.edu", "bob@example.edu", "erin@example.edu", "prof@example.edu",
        "ta1@example.edu", "TA2@Example.edu"]
    assert members_of(lists, "enrolled@lists.example.edu") == ["alice@example.edu", "bob@example.edu"]


@pytest.mark.integration
def test_postgresql_other_semester_and_dsn_from_environment(pg_dsn, make_config, monkeypatch):
    monkeypatch.setenv("COURSE_DB", pg_dsn)
    config = C.load(make_config("""
[domains."lists.example.edu"]
course = "CS 199"
[lists.alumni]
members = { semester = "2025-fall" }
posters = []
""", roster='dsn_env = "COURSE_DB"'))
    assert members_of(K.compile_lists(config, R.load(config)), "alumni@lists.example.edu") == ["frank@example.edu"]


@pytest.mark.integration
def test_postgresql_custom_query_is_parameterised(pg_dsn, make_config):
    import psycopg

    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        seed_roster(conn, [("o'brien@example.edu", "Pat O'Brien", "CS 199", "student", True, "current")])
    query = ("SELECT u.email, u.name, e.enrollment_type, e.active, e.semester, e.course"
             " FROM users u JOIN enrollments e ON e.user_id = u.id"
             " WHERE e.semester = ANY(%(semesters)s) AND e.enrollment_type <> 'applied'")
    config = C.load(make_config(roster=f'dsn = "{pg_dsn}"\nquery = """{query}"""'))
    lists = K.compile_lists(config, R.load(config))
    students = members_of(lists, "students@lists.example.edu")
    assert "erin@example.edu" not in students
    assert "o'brien@example.edu" in students


@pytest.mark.integration
def test_postgresql_unreachable_and_bad_query(pg_dsn, make_config):
    down = C.load(make_config(roster='dsn = "postgresql://postgres@127.0.0.1:1/none?connect_timeout=2"'))
    with pytest.raises(R.RosterError, match="roster database: "):
        R.load(down)
    bad = C.load(make_config(roster=f'dsn = "{pg_dsn}"\nquery = "SELECT email FROM users"', name="bad.toml"))
    with pytest.raises(R.RosterError, match="does not return column"):
        R.load(bad)
