"""listfilter.common.addresses: a list's address forms, and what a recipient address names."""

from __future__ import annotations

import pytest

from listfilter.common import addresses as A

STUDENTS = "students@lists.example.edu"


def test_service_addresses():
    assert A.service_addresses("students", "lists.example.edu") == [
        STUDENTS, "students-bounces@lists.example.edu", "students-owner@lists.example.edu",
        "students-request@lists.example.edu"]
    assert A.bounces_address(STUDENTS) == "students-bounces@lists.example.edu"
    assert A.owner_address(STUDENTS) == "students-owner@lists.example.edu"
    assert A.request_address(STUDENTS) == "students-request@lists.example.edu"
    assert A.service_address(STUDENTS, "post") == STUDENTS
    assert A.RESERVED_SUFFIXES == ("bounces", "owner", "request", "join", "leave")


@pytest.mark.parametrize("address,expected", [
    (STUDENTS, "students.lists.example.edu"),
    ("cs-199.staff@lists-dev.example.edu", "cs-199.staff.lists-dev.example.edu"),
])
def test_list_id(address, expected):
    assert A.list_id(address) == expected  # RFC 2919: local part, ".", domain


RECIPIENTS = [
    (STUDENTS, A.Target(STUDENTS, "post", "")),
    ("Students@Lists.Example.EDU", A.Target(STUDENTS, "post", "")),
    ("<students+urgent@lists.example.edu>", A.Target(STUDENTS, "post", "urgent")),
    ("  students@lists.example.edu ", A.Target(STUDENTS, "post", "")),
    ("students-bounces+alice=example.edu@lists.example.edu", A.Target(STUDENTS, "bounces", "alice=example.edu")),
    ("students-bounces@lists.example.edu", A.Target(STUDENTS, "bounces", "")),
    ("STAFF-Owner@lists.example.edu", A.Target("staff@lists.example.edu", "owner", "")),
    ("staff-request@lists.example.edu", A.Target("staff@lists.example.edu", "request", "")),
    ("staff-request+x@lists.example.edu", A.Target("staff@lists.example.edu", "request", "x")),
    ("cs-owner-list@lists.example.edu", A.Target("cs-owner-list@lists.example.edu", "post", "")),
    ("a+b+c@lists.example.edu", A.Target("a@lists.example.edu", "post", "b+c")),
    ("not-an-address", None),
    ("@lists.example.edu", None),
    ("students@", None),
    ("-owner@lists.example.edu", None),
    ("+tag@lists.example.edu", None),
]


@pytest.mark.parametrize("recipient,expected", RECIPIENTS)
def test_parse_recipient(recipient, expected):
    assert A.parse_recipient(recipient) == expected


@pytest.mark.parametrize("extension,member", [
    ("alice=example.edu", "alice@example.edu"),
    ("first.last=mail.example.org", "first.last@mail.example.org"),
    ("a=b=example.org", "a=b@example.org"),  # the last "=" is the one sendmail -XV wrote
    ("garbage", None),
    ("=example.org", None),
    ("alice=", None),
    ("", None),
])
def test_verp_member(extension, member):
    assert A.verp_member(extension) == member


@pytest.mark.parametrize("address,own", [
    (STUDENTS, True),
    ("Students+x@Lists.Example.EDU", True),
    ("students-bounces+a=b.org@lists.example.edu", True),
    ("students-owner@lists.example.edu", True),
    ("staff@lists.example.edu", False),
    ("students@lists-dev.example.edu", False),
    ("garbage", False),
])
def test_is_own_address(address, own):
    assert A.is_own_address(address, "Students@lists.example.edu") is own
