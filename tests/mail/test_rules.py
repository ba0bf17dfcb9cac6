"""listfilter.mail.rules: each rule alone, the chain's order, who receives, and the sendmail batches."""

from __future__ import annotations

import pytest

from listfilter.mail import rules as R
from listfilter.mail.message import parse_headers

from . import list_row

LIST = list_row()
PLAIN = b"From: prof@example.edu\nSubject: x\nMessage-ID: <m1@example.edu>\n"
LOOPED = PLAIN + b"List-Id: CS 199 Students <students.lists.example.edu>\n"
MARKED = PLAIN + b"X-Listfilter-Loop: students@lists.example.edu\n"


def post(headers: bytes = PLAIN, *, from_address: str | None = "prof@example.edu", may_post: bool = True,
         delivered_recently: bool = False) -> R.Post:
    return R.Post(headers=parse_headers(headers), list_row=LIST, from_address=from_address, may_post=may_post,
                  delivered_recently=delivered_recently, message_id="<m1@example.edu>")


# ---------------------------------------------------------------- each rule alone


@pytest.mark.parametrize("headers,expected", [(PLAIN, None), (LOOPED, "loop"), (MARKED, "loop"),
                                              (PLAIN + b"List-Id: <staff.lists.example.edu>\n", None)])
def test_loop(headers, expected):
    decision = R.loop(post(headers))
    assert (decision and decision.rule) == expected
    if decision:
        assert decision.action == R.DISCARD
        assert decision.reason == "message already carries students@lists.example.edu's List-Id; not sent again"


def test_duplicate():
    assert R.duplicate(post()) is None
    assert R.duplicate(post(delivered_recently=True)) == R.Decision(
        "duplicate", R.DISCARD, "<m1@example.edu> was already delivered to students@lists.example.edu; not sent again")


def test_poster():
    assert R.poster(post()) is None
    assert R.poster(post(from_address="alice@example.edu", may_post=False)) == R.Decision(
        "poster", R.REFUSE, "alice@example.edu is not allowed to post to students@lists.example.edu")
    assert R.poster(post(from_address=None, may_post=False)) == R.Decision(
        "poster", R.REFUSE, "the message has no valid From address")
    # without a From address nobody may post, whatever may_post says
    assert R.poster(post(from_address=None, may_post=True)).action == R.REFUSE


def test_rules_are_pure():
    p = post(LOOPED, may_post=False, delivered_recently=True)
    before = list(p.headers.fields)
    for rule, _ in R.CHAIN:
        assert rule(p) == rule(p)
    assert list(p.headers.fields) == before


# ---------------------------------------------------------------- the chain


def test_chain_order_and_descriptions():
    assert [rule.__name__ for rule, _ in R.CHAIN] == ["loop", "duplicate", "poster"]
    assert all(isinstance(text, str) and text for _, text in R.CHAIN)


CHAIN_CASES = [
    # the post, the rule that decides, its action
    (post(), "accept", R.ACCEPT),
    (post(LOOPED, from_address="stranger@example.org", may_post=False), "loop", R.DISCARD),
    (post(MARKED, delivered_recently=True), "loop", R.DISCARD),
    (post(from_address="stranger@example.org", may_post=False, delivered_recently=True), "duplicate", R.DISCARD),
    (post(from_address="stranger@example.org", may_post=False), "poster", R.REFUSE),
    (post(from_address=None, may_post=False), "poster", R.REFUSE),
]


@pytest.mark.parametrize("facts,rule,action", CHAIN_CASES)
def test_decide_first_decision_wins(facts, rule, action):
    decision, trail = R.decide(facts)
    assert (decision.rule, decision.action) == (rule, action)
    # the trail holds every rule up to the one that decided, in order; only that one has a verdict
    names = [name for name, _ in trail]
    assert names == ["loop", "duplicate", "poster"][:len(names)]
    assert [verdict for _, verdict in trail[:-1]] == [None] * (len(trail) - 1)
    if action == R.ACCEPT:
        assert names == ["loop", "duplicate", "poster"] and trail[-1][1] is None
        assert decision == R.Decision("accept", R.ACCEPT, "no rule stopped it")
    else:
        assert trail[-1] == (rule, decision)


def test_decide_returns_the_trail():
    decision, trail = R.decide(post(from_address="stranger@example.org", may_post=False))
    assert trail == [("loop", None), ("duplicate", None), ("poster", decision)]
    decision, trail = R.decide(post(LOOPED))
    assert trail == [("loop", decision)]


def test_decide_takes_another_chain():
    def never(p):
        return None

    def always(p):
        return R.Decision("always", R.REFUSE, "because")

    decision, trail = R.decide(post(), chain=((never, ""), (always, ""), (R.loop, "")))
    assert decision.rule == "always" and [n for n, _ in trail] == ["never", "always"]


# ---------------------------------------------------------------- recipients


MEMBERS = ["alice@example.edu", "Prof@Example.edu", "ALICE@example.edu", "bob@example.edu",
           "students@lists.example.edu", "Students-Bounces@Lists.Example.edu", "students-owner@lists.example.edu",
           "students-request@lists.example.edu", "students+x@lists.example.edu",
           "students-bounces+a=b.org@lists.example.edu", "staff@lists.example.edu", "carol@example.edu"]


def test_recipients_exclude_poster_dedupe_and_self():
    got = R.recipients(MEMBERS, poster="prof@example.edu", exclude_poster=True, list_address=LIST.address)
    # order kept, first spelling wins, the list's own addresses never, other lists are ordinary members
    assert got == ["alice@example.edu", "bob@example.edu", "staff@lists.example.edu", "carol@example.edu"]


def test_recipients_keep_the_poster_when_the_list_says_so():
    got = R.recipients(MEMBERS, poster="prof@example.edu", exclude_poster=False, list_address=LIST.address)
    assert got == ["alice@example.edu", "Prof@Example.edu", "bob@example.edu", "staff@lists.example.edu",
                   "carol@example.edu"]
    assert R.recipients(MEMBERS, poster=None, exclude_poster=True, list_address=LIST.address) == got


def test_recipients_skip_suppressed_addresses():
    got = R.recipients(MEMBERS, poster=None, exclude_poster=True, list_address=LIST.address,
                       suppressed=frozenset({"bob@example.edu", "alice@example.edu"}))
    assert got == ["Prof@Example.edu", "staff@lists.example.edu", "carol@example.edu"]


# ---------------------------------------------------------------- batches


def test_batches_of_more_than_5000_recipients():
    addrs = [f"user{i:05d}@example.edu" for i in range(12_001)]
    parts = R.batches(addrs)
    assert [len(p) for p in parts] == [5000, 5000, 2001]
    assert [a for p in parts for a in p] == addrs  # every address once, in order
    assert [len(p) for p in R.batches(addrs[:5001])] == [5000, 1]
    assert [len(p) for p in R.batches(addrs[:5000])] == [5000]


def test_batches_respect_the_byte_limit():
    addrs = [f"user{i:05d}@example.edu" for i in range(100)]  # 22 bytes + 1 each
    small = R.batches(addrs, max_count=1000, max_bytes=10 * 23)
    assert [len(p) for p in small] == [10] * 10
    assert all(sum(len(a) + 1 for a in p) <= 230 for p in small)
    assert R.batches(["x" * 50], max_bytes=10) == [["x" * 50]]  # one address longer than the limit: alone
    assert R.batches([]) == []
