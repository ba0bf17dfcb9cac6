"""The fast paths give the same answers as the straightforward code they replace."""

from __future__ import annotations

import importlib
import random

import pytest

from listfilter.sync import config as C
from listfilter import launcher as L
from listfilter.sync import roster as R
from listfilter.common import spool


ARGVS = [
    ["--config", "/x.toml", "deliver", "--sender", "a@b", "--recipient", "l@d", "--queue-id", "Q1"],
    ["--config", "/x.toml", "deliver", "--sender", "", "--recipient", "l@d", "--queue-id", "Q1"],
    ["deliver", "--sender", "a@b", "--recipient", "l@d", "--dry-run"],
    ["--config=/x.toml", "deliver", "--sender=a@b", "--recipient=l@d"],
    ["deliver", "--sender", "a@b", "--recipient", "l@d", "--queue-id=", "--sender", "c@d"],
    ["--config", "/x", "policy"],
    ["bounce", "--recipient", "l-bounces+u=x@d", "--queue-id", "Q"],
    ["deliver", "--send", "a", "--recipient", "l@d"],  # an abbreviation, as argparse allows
]
UNUSUAL = [
    ["deliver", "--recipient", "l@d"],
    ["deliver", "--sender", "a", "--recipient", "l@d", "extra"],
    ["deliver", "--sender", "a", "--recipient", "l@d", "--config", "/y"],
    ["deliver", "--sender", "a", "--recipient", "l@d", "--dry-run=1"],
    ["deliver", "--help"],
]


def _module(argv):
    name = L.command_of(argv)
    return name, importlib.import_module(L.MAIL_COMMANDS[name].split(":")[0])


@pytest.mark.parametrize("argv", ARGVS)
def test_quick_parse_equals_argparse(argv):
    name, mod = _module(argv)
    assert vars(L.quick_parse(argv, name, mod)) == vars(L.parse_with_argparse(argv, name, mod))


@pytest.mark.parametrize("argv", UNUSUAL)
def test_unusual_command_lines_go_to_argparse(argv):
    name, mod = _module(argv)
    assert L.quick_parse(argv, name, mod) is None


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
                out[key] = R.Member(row.email, row.name)
    for email in lst.member_emails:
        out.setdefault(email.lower(), R.Member(email, ""))
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
    index = R.CourseIndex(rows, config.roster)
    roles = R.roles_by_person(rows, config.roster)
    for lst in config.lists.values():
        members = reference_members(lst, rows, config.roster)
        assert index.members(lst) == members
        assert list(index.members(lst).items()) == list(members.items())
        assert index.posters(lst, members) == reference_posters(lst, members, roles)
