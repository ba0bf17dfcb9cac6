"""The mail side's pure decisions, data-driven."""

from __future__ import annotations

import pytest

from listfilter.mail import rules as D

RECIPIENTS = [
    ("students@lists.example.edu", D.Target("students@lists.example.edu", "post", "")),
    ("Students@Lists.Example.EDU", D.Target("students@lists.example.edu", "post", "")),
    ("<students+urgent@lists.example.edu>", D.Target("students@lists.example.edu", "post", "urgent")),
    ("students-bounces+alice=example.edu@lists.example.edu",
     D.Target("students@lists.example.edu", "bounces", "alice=example.edu")),
    ("STAFF-Owner@lists.example.edu", D.Target("staff@lists.example.edu", "owner", "")),
    ("staff-request@lists.example.edu", D.Target("staff@lists.example.edu", "request", "")),
    ("not-an-address", None),
    ("@lists.example.edu", None),
]


@pytest.mark.parametrize("recipient,expected", RECIPIENTS)
def test_parse_recipient(recipient, expected):
    assert D.parse_recipient(recipient) == expected


@pytest.mark.parametrize("extension,member", [
    ("alice=example.edu", "alice@example.edu"),
    ("first.last=mail.example.org", "first.last@mail.example.org"),
    ("a=b=example.org", "a=b@example.org"),
    ("garbage", None),
    ("=example.org", None),
])
def test_verp_member(extension, member):
    assert D.verp_member(extension) == member


def test_check_poster():
    assert D.check_poster("prof@example.edu", "students@l.example.edu", True) == D.PostCheck(True, "")
    refused = D.check_poster("alice@example.edu", "students@l.example.edu", False)
    assert refused == D.PostCheck(False, "alice@example.edu is not allowed to post to students@l.example.edu")
    assert D.check_poster(None, "students@l.example.edu", True).allowed is False


def test_recipients_exclude_poster_dedupe_and_self():
    members = ["alice@example.edu", "Prof@Example.edu", "ALICE@example.edu", "bob@example.edu",
               "students@lists.example.edu", "students-bounces@lists.example.edu", "staff@lists.example.edu"]
    got = D.recipients(members, poster="prof@example.edu", exclude_poster=True,
                       list_address="students@lists.example.edu")
    assert got == ["alice@example.edu", "bob@example.edu", "staff@lists.example.edu"]
    kept = D.recipients(members, poster="prof@example.edu", exclude_poster=False,
                        list_address="students@lists.example.edu")
    assert "Prof@Example.edu" in kept
    suppressed = D.recipients(members, poster=None, exclude_poster=True, list_address="students@lists.example.edu",
                              suppressed=frozenset({"bob@example.edu"}))
    assert "bob@example.edu" not in suppressed and "alice@example.edu" in suppressed


def test_batches_respect_count_and_bytes():
    addrs = [f"user{i:05d}@example.edu" for i in range(12_001)]
    parts = D.batches(addrs)
    assert [len(p) for p in parts] == [5000, 5000, 2001]
    assert [a for p in parts for a in p] == addrs
    small = D.batches(addrs[:100], max_count=1000, max_bytes=10 * 23)
    assert all(sum(len(a) + 1 for a in p) <= 230 for p in small)
    assert sum(len(p) for p in small) == 100
    assert D.batches([]) == []
