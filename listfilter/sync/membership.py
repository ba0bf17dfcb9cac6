"""Who is on each list and who may post: pure functions over roster rows.

The rows come from :mod:`listfilter.sync.roster`; the lists' queries from the
config. Addresses compare case-insensitively; a person enrolled twice is one
member.
"""

from __future__ import annotations

from operator import itemgetter
from typing import Iterable, NamedTuple

from .config import Domain, ListConfig, MemberQuery, OptIn, Roster
from .roster import Enrollment


class Member(NamedTuple):
    """A list member: the address as the roster spells it, and the name.

    A named tuple, so that the compiled lists carry these pairs as they are
    (the snapshot stores ``(email, name)``) without copying 100,000 of them."""

    email: str
    name: str


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

    def members(self, lst: ListConfig, sources: dict[str, str] | None = None) -> dict[str, Member]:
        """A list's members on one domain, keyed by lower-cased address: roster
        matches first (in roster order, which decides spelling and name), then
        the explicit emails; duplicates collapse to one. ``sources``, if given,
        gets ``"config"`` for each explicit email the roster did not match."""
        out = self.matching(lst.members_query) if lst.members_query is not None else {}
        for email in lst.member_emails:
            key = email.lower()
            if key not in out:
                out[key] = Member(email, "")
                if sources is not None:
                    sources[key] = "config"
        return out

    def matching(self, query: MemberQuery) -> dict[str, Member]:
        """The roster's people a query names, keyed by lower-cased address, in roster order."""
        out: dict[str, Member] = {}
        semester = query.semester or self.roster.current_semester
        wanted = self.roster.expand_roles(query.roles) if query.roles is not None else None
        picked = [b for (active, sem, etype), b in self.buckets.items()
                  if active == query.active and sem == semester and (wanted is None or etype in wanted)]
        rows = picked[0] if len(picked) == 1 else sorted((r for b in picked for r in b), key=itemgetter(0))
        for _, key, member in rows:
            if key not in out:
                out[key] = member
        return out

    def eligible(self, optin: OptIn) -> frozenset[str] | None:
        """Who may join an opt-in list (lower-cased), or None for anyone."""
        if optin.eligible is None and not optin.eligible_emails:
            return None
        keys = set(self.matching(optin.eligible)) if optin.eligible is not None else set()
        return frozenset(keys | {e.lower() for e in optin.eligible_emails})

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


#: A member kept in the store, not the roster: (email, name, source), source "extra" or "joined".
Added = tuple[str, str, str]


def merge(lst: ListConfig, base: dict[str, Member], allowed: set[str], sources: dict[str, str],
          eligible: frozenset[str] | None, added: Iterable[Added]) -> tuple[dict[str, Member], set[str], dict[str, str]]:
    """A list's members with the store's added to the roster's and the config's: extra members
    always, joined ones while they may still join (``eligible``; None: anyone). A person the
    roster or the config already holds keeps that source. When members may post, so may the
    added ones. Returns new (members, posters, sources); the arguments are not changed."""
    added = list(added)
    if not added:
        return base, allowed, sources
    members, sources = dict(base), dict(sources)
    for email, name, source in added:
        key = email.lower()
        if key in members:
            continue
        if source == "joined" and eligible is not None and key not in eligible:
            continue  # left the course (or the role) since joining: kept in the store, not sent to
        members[key] = Member(email, name)
        sources[key] = source
    posters = set(allowed) | (set(members) if lst.posters.members else set())
    return members, posters, sources


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
