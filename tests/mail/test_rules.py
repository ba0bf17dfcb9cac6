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


HOLDING = list_row(non_member_posts="hold")


def held(row=HOLDING, **facts) -> R.Post:
    base = dict(from_address="stranger@example.org", may_post=False, is_member=False)
    return post()._replace(list_row=row, **{**base, **facts})


@pytest.mark.parametrize("members,posters,is_member,action", [
    ("refuse", "refuse", False, R.REFUSE), ("refuse", "refuse", True, R.REFUSE),
    ("hold", "refuse", False, R.HOLD), ("hold", "refuse", True, R.REFUSE),
    ("refuse", "hold", False, R.REFUSE), ("refuse", "hold", True, R.HOLD),
    ("hold", "hold", True, R.HOLD), ("hold", "hold", False, R.HOLD)])
def test_poster_holds_as_the_mode_for_that_person_says(members, posters, is_member, action):
    row = list_row(non_member_posts=members, non_poster_posts=posters)
    decision = R.poster(held(row, is_member=is_member))
    assert (decision.rule, decision.action) == ("poster", action)
    if action == R.HOLD:
        who = "a member who may not post" if is_member else "not a member"
        assert decision.reason == (f"stranger@example.org is {who} of students@lists.example.edu;"
                                   " held for the owners to approve")


def test_poster_never_holds_what_has_no_valid_from_or_may_post():
    assert R.poster(held(from_address=None)).action == R.REFUSE
    assert R.poster(held(from_address=None, may_post=True)).action == R.REFUSE
    assert R.poster(held(may_post=True)) is None


APPROVED = PLAIN + b"X-Listfilter-Approved: 0123456789abcdef0123456789abcdef\n"


@pytest.mark.parametrize("post_key,approved_key,rule,action", [
    ("<m1@example.edu>", "<m1@example.edu>", "approved", R.ACCEPT),  # the approved post itself
    ("<m1@example.edu>", "<other@example.edu>", "poster", R.HOLD),  # an approved id on another message
    ("<m1@example.edu>", None, "poster", R.HOLD),  # a forged header: the snapshot approves no such id
    ("", "", "poster", R.HOLD),
])
def test_approved_lets_exactly_the_approved_post_through(post_key, approved_key, rule, action):
    decision, trail = R.decide(held(headers=parse_headers(APPROVED), post_key=post_key, approved_key=approved_key))
    assert (decision.rule, decision.action) == (rule, action)
    if rule == "approved":
        assert decision.reason == "approved by the owners"
        assert [n for n, _ in trail] == ["loop", "duplicate", "approved"]  # poster and authenticated skipped


def test_approved_comes_after_loop_and_duplicate():
    facts = held(post_key="<m1@example.edu>", approved_key="<m1@example.edu>")
    assert R.decide(facts._replace(delivered_recently=True))[0].rule == "duplicate"
    assert R.decide(facts._replace(headers=parse_headers(LOOPED)))[0].rule == "loop"


def test_a_message_already_held_is_not_held_again_but_its_approved_release_goes_through():
    again = held(post_key="<m1@example.edu>", held_as="0123456789abcdef0123456789abcdef")
    decision, trail = R.decide(again)
    assert (decision.rule, decision.action) == ("held", R.DISCARD)
    assert decision.reason == ("<m1@example.edu> to students@lists.example.edu is already held as"
                               " 0123456789abcdef0123456789abcdef for the owners; not held again")
    assert R.decide(again._replace(may_post=True))[0].rule == "held"  # whoever it is from now: the owners decide
    assert R.decide(again._replace(approved_key="<m1@example.edu>"))[0].rule == "approved"
    assert R.decide(again._replace(delivered_recently=True))[0].rule == "duplicate"  # released and delivered
    assert R.held(again._replace(held_as="")) is None


def test_rules_are_pure():
    p = post(LOOPED, may_post=False, delivered_recently=True)
    before = list(p.headers.fields)
    for rule, _ in R.CHAIN:
        assert rule(p) == rule(p)
    assert list(p.headers.fields) == before


# ---------------------------------------------------------------- the chain


def test_chain_order_and_descriptions():
    assert [rule.__name__ for rule, _ in R.CHAIN] == ["loop", "duplicate", "approved", "held", "poster",
                                                      "authenticated"]
    assert all(isinstance(text, str) and text for _, text in R.CHAIN)


CHAIN_CASES = [
    # the post, the rule that decides, its action
    (post(), "accept", R.ACCEPT),
    (post(LOOPED, from_address="stranger@example.org", may_post=False), "loop", R.DISCARD),
    (post(MARKED, delivered_recently=True), "loop", R.DISCARD),
    (post(from_address="stranger@example.org", may_post=False, delivered_recently=True), "duplicate", R.DISCARD),
    (post(from_address="stranger@example.org", may_post=False), "poster", R.REFUSE),
    (post(from_address=None, may_post=False), "poster", R.REFUSE),
    (post()._replace(list_row=list_row(non_member_posts="hold"), from_address="stranger@example.org",
                     may_post=False), "poster", R.HOLD),
    (post()._replace(from_address="stranger@example.org", may_post=False, post_key="<m1@example.edu>",
                     approved_key="<m1@example.edu>"), "approved", R.ACCEPT),
]


@pytest.mark.parametrize("facts,rule,action", CHAIN_CASES)
def test_decide_first_decision_wins(facts, rule, action):
    decision, trail = R.decide(facts)
    assert (decision.rule, decision.action) == (rule, action)
    # the trail holds every rule up to the one that decided, in order; only that one has a verdict
    names = [name for name, _ in trail]
    assert names == ["loop", "duplicate", "approved", "held", "poster", "authenticated"][:len(names)]
    assert [verdict for _, verdict in trail[:-1]] == [None] * (len(trail) - 1)
    if rule == "approved":
        assert trail[-1] == (rule, decision)
    elif action == R.ACCEPT:
        assert names == ["loop", "duplicate", "approved", "held", "poster", "authenticated"] and trail[-1][1] is None
        assert decision == R.Decision("accept", R.ACCEPT, "no rule stopped it")
    else:
        assert trail[-1] == (rule, decision)


def test_decide_returns_the_trail():
    decision, trail = R.decide(post(from_address="stranger@example.org", may_post=False))
    assert trail == [("loop", None), ("duplicate", None), ("approved", None), ("held", None), ("poster", decision)]
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


NOBODY = [
    # (members, poster, exclude_poster, suppressed, why recipients() is empty)
    ([], "prof@example.edu", True, (), "the list has no members"),
    (["Prof@Example.edu"], "prof@example.edu", True, (),
     "the poster is the list's only member, and the list sends posters no copy (exclude_poster = true)"),
    (["gone@example.org"], "prof@example.edu", True, ("gone@example.org",),
     "the list's only member is suppressed after bounces"),
    (["a@example.org", "B@example.org"], None, True, ("a@example.org", "b@example.org"),
     "all 2 members are suppressed after bounces"),
    (["prof@example.edu", "a@example.org", "students-owner@lists.example.edu"], "prof@example.edu", True,
     ("a@example.org",), "every member is left out: the poster (exclude_poster = true), 1 suppressed after bounces,"
                         " 1 of the list's own addresses"),
]


@pytest.mark.parametrize("members,poster,exclude,suppressed,why", NOBODY)
def test_why_nobody_was_left_to_send_to(members, poster, exclude, suppressed, why):
    how = dict(poster=poster, exclude_poster=exclude, list_address=LIST.address, suppressed=frozenset(suppressed))
    assert R.recipients(members, **how) == []  # each case really leaves nobody
    assert R.nobody_reason(members, **how) == why


def test_the_poster_as_the_only_member_gets_the_post_with_exclude_poster_off():
    assert R.recipients(["Prof@Example.edu"], poster="prof@example.edu", exclude_poster=False,
                        list_address=LIST.address) == ["Prof@Example.edu"]


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


# ---------------------------------------------------------------- authenticated


AUTH_ID = "mx.lists.example.edu"
GUARDED = list_row(require_authenticated=True)


def signed_post(*fields: str, from_address: str = "prof@example.edu", trusted=(), client: str = "",
                row=GUARDED) -> R.Post:
    """A post to a list with require_authenticated, carrying ``fields`` as Authentication-Results, top first."""
    from listfilter.common.snapshot import Trusted

    headers = b"".join(f"Authentication-Results: {f}\n".encode() for f in fields) + PLAIN
    return R.Post(headers=parse_headers(headers), list_row=row, from_address=from_address, may_post=True,
                  delivered_recently=False, message_id="<m1@example.edu>", authserv_id=AUTH_ID,
                  trusted=tuple(Trusted(*t) for t in trusted), client_address=client)


def test_authenticated_passes_on_our_dmarc_pass():
    assert R.authenticated(signed_post(f"{AUTH_ID}; dmarc=pass (p=reject dis=none) header.from=example.edu",
                                       f"{AUTH_ID}; dkim=pass header.d=example.edu")) is None
    assert R.authenticated(signed_post(f"{AUTH_ID}; dmarc=pass header.from=example.edu",
                                       from_address="Prof@EXAMPLE.edu")) is None


def test_authenticated_only_guards_lists_that_ask():
    assert R.authenticated(signed_post(row=LIST)) is None
    assert R.authenticated(signed_post(from_address=None)) is None  # the poster rule refuses that one


@pytest.mark.parametrize("fields,reason", [
    ((), f"no Authentication-Results from {AUTH_ID}: nothing shows that the message comes from example.edu"),
    (("other.example; dmarc=pass header.from=example.edu",),
     f"no Authentication-Results from {AUTH_ID}: nothing shows that the message comes from example.edu"),
    ((f"{AUTH_ID}; dmarc=fail (p=reject dis=none) header.from=example.edu",),
     f"dmarc=fail for example.edu ({AUTH_ID}): it has no valid DKIM signature of example.edu, and it was not sent"
     " from a server that example.edu's SPF record names"),
    ((f"{AUTH_ID}; dmarc=none header.from=example.edu",),
     f"dmarc=none for example.edu ({AUTH_ID}): example.edu publishes no DMARC record, so nothing can show the"
     " message is from example.edu"),
    ((f"{AUTH_ID}; dmarc=temperror header.from=example.edu",),
     f"dmarc=temperror for example.edu ({AUTH_ID}): the check could not be completed (a DNS failure); send the"
     " message again later"),
    ((f"{AUTH_ID}; dmarc=permerror header.from=example.edu",),
     f"dmarc=permerror for example.edu ({AUTH_ID}): example.edu's DMARC record cannot be read"),
    ((f"{AUTH_ID}; dmarc=bestguesspass header.from=example.edu",),
     f"dmarc=bestguesspass for example.edu ({AUTH_ID}): the message cannot be shown to come from example.edu"),
    ((f"{AUTH_ID}; dmarc=pass header.from=other.example",),
     f"the DMARC result from {AUTH_ID} is for other.example, not for example.edu"),
    ((f"{AUTH_ID}; dmarc=pass (broken",),
     f"the Authentication-Results from {AUTH_ID} cannot be read (unterminated comment at character 34):"
     " nothing shows that the message comes from example.edu"),
    # a forgery below the milters' own verdict
    ((f"{AUTH_ID}; dmarc=fail header.from=example.edu", f"{AUTH_ID}; dmarc=pass header.from=example.edu"),
     f"dmarc=fail for example.edu ({AUTH_ID}): it has no valid DKIM signature of example.edu, and it was not sent"
     " from a server that example.edu's SPF record names"),
])
def test_authenticated_refuses_with_what_failed(fields, reason):
    assert R.authenticated(signed_post(*fields)) == R.Decision("authenticated", R.REFUSE, reason)
    from listfilter.mail.notices import FIELD_LIMIT

    assert len(reason) <= FIELD_LIMIT  # the notice shows all of it


def test_trusted_senders():
    fail = f"{AUTH_ID}; dmarc=fail header.from=example.edu"
    anywhere = [(("example.edu",), ())]
    relay = [(("example.edu", "cs.example.edu"), ("192.0.2.0/28", "2001:db8::/32"))]
    local = [(("example.edu",), ("local",))]
    assert R.authenticated(signed_post(fail, trusted=anywhere)) is None
    assert R.authenticated(signed_post(trusted=anywhere, client="203.0.113.9")) is None
    assert R.authenticated(signed_post(fail, trusted=relay, client="192.0.2.14")) is None
    assert R.authenticated(signed_post(fail, trusted=relay, client="2001:db8::25")) is None
    assert R.authenticated(signed_post(fail, trusted=local)) is None  # sendmail on this host: no client address
    for trusted, client in ((relay, "192.0.2.16"), (relay, ""), (relay, "not an address"), (local, "127.0.0.1"),
                            ([(("other.example",), ())], "192.0.2.14"), (relay, "::ffff:192.0.2.300")):
        decision = R.authenticated(signed_post(fail, trusted=trusted, client=client))
        assert decision is not None and decision.rule == "authenticated", (trusted, client)
    # a subdomain is not its parent
    assert R.authenticated(signed_post(fail, from_address="x@cs.example.edu", trusted=anywhere)).action == R.REFUSE


def test_authenticated_comes_after_poster_in_the_chain():
    # a stranger is refused as a stranger, not as unauthenticated: the notice says who may post
    p = signed_post()._replace(from_address="stranger@example.org", may_post=False)
    assert R.decide(p)[0].rule == "poster"
    assert R.decide(signed_post())[0].rule == "authenticated"
