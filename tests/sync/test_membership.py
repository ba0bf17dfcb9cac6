"""CourseIndex (the bucketed membership rules) gives the same answers as the row-by-row rules."""

from __future__ import annotations

import random

from listfilter.sync import config as C
from listfilter.sync import membership as MB
from listfilter.sync import roster as R


# The row-by-row rules, kept here as the oracle CourseIndex must agree with.


def reference_members(lst, rows, roster):
    """A list's members on one domain, keyed by lower-cased address.

    ``rows`` are that domain's course rows. Roster matches come first (they
    carry names), then the explicit emails; duplicates collapse to one.
    """
    out = {}
    query = lst.members_query
    if query is not None:
        active = query.active
        semester = query.semester or roster.current_semester
        wanted = roster.expand_roles(query.roles) if query.roles is not None else None
        for row in rows:
            if row.active != active or row.semester != semester:
                continue
            if wanted is not None and row.enrollment_type not in wanted:
                continue
            key = row.email.lower()
            if key not in out:
                out[key] = MB.Member(row.email, row.name)
    for email in lst.member_emails:
        out.setdefault(email.lower(), MB.Member(email, ""))
    return out


def reference_posters(lst, list_members, roles):
    """Lower-cased addresses allowed to post to a list on one domain."""
    allowed = {e.lower() for e in lst.posters.emails}
    if lst.posters.members:
        allowed.update(list_members)
    if lst.posters.roles:
        wanted = set(lst.posters.roles)
        allowed.update(k for k, held in roles.items() if held & wanted)
    return allowed


def test_course_index_equals_the_row_by_row_rules(make_config):
    config = C.load(make_config("""
[domains."lists.example.edu"]
course = "CS 199"
[lists.everyone]
members = { roles = ["applied", "student", "teacher", "ta"] }
posters = { roles = ["instructor", "ta"] }
[lists.enrolled]
members = { roles = ["student"], emails = ["Guest@Example.org", "b3@x.example"] }
posters = "members"
[lists.dropped]
members = { active = false }
posters = { roles = ["staff"], emails = ["Boss@Example.org"] }
[lists.old]
members = { semester = "2025-fall", roles = ["student"] }
posters = ["someone@example.org"]
"""))
    rng = random.Random(7)
    rows = [R.Enrollment(f"{rng.choice(['a', 'B', 'c'])}{rng.randrange(40)}@{rng.choice(['x', 'X'])}.example",
                         f"N{i}", rng.choice(["applied", "student", "teacher", "ta"]), rng.random() < 0.8,
                         rng.choice(["current", "current", "2025-fall"]), "CS 199") for i in range(600)]
    index = MB.CourseIndex(rows, config.roster)
    roles = MB.roles_by_person(rows, config.roster)
    for lst in config.lists.values():
        members = reference_members(lst, rows, config.roster)
        assert index.members(lst) == members
        assert list(index.members(lst).items()) == list(members.items())
        assert index.posters(lst, members) == reference_posters(lst, members, roles)


def test_by_course_groups_like_one_scan_per_domain():
    rng = random.Random(11)
    rows = [R.Enrollment(f"p{i}@x.example", "", "student", True, "current", rng.choice(["CS 199", "CS 225", None]))
            for i in range(300)]
    grouped = MB.by_course(rows)
    for course in ("CS 199", "CS 225"):
        assert grouped[course] == MB.course_rows(rows, C.Domain("d.example", course))  # roster order kept
    assert grouped[None] == [r for r in rows if r.course is None]
    assert sum(map(len, grouped.values())) == len(rows)
