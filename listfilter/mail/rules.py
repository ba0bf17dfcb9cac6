"""What happens to a post: named rules in a declared order, as Mailman 3's chains.

Each rule is a small pure function over the :class:`Post` (the facts the
runner gathered once: the parsed headers, the list's snapshot row, whether the
poster may post, whether this message was already delivered) and returns a
:class:`Decision`, or None to pass the post on to the next rule. :data:`CHAIN`
is the order; the first decision wins, and a post that no rule stops is
accepted. The runner (:mod:`listfilter.mail.deliver`) does all the I/O
before and after; the log line and the event name the rule that decided.

Who receives an accepted post is :func:`recipients`: the members, minus the
poster (unless the list says otherwise), minus the list's own addresses (a
list never mails itself), minus the addresses the snapshot says are
suppressed (bounce scoring, on the sync side).
"""

from __future__ import annotations

from collections import namedtuple

from ..common.addresses import is_own_address, service_addresses
from .headers import is_loop

#: What a rule decided: the rule's name, the action ("discard", "refuse" or
#: "accept") and the reason in words.
Decision = namedtuple("Decision", "rule action reason")

#: The facts about one post that the rules decide on. ``from_problem`` says why
#: the From header names nobody for sure (``from_address`` is then None).
Post = namedtuple("Post", "headers list_row from_address may_post delivered_recently message_id from_problem",
                  defaults=("",))

ACCEPT = "accept"
DISCARD = "discard"
REFUSE = "refuse"


def loop(post: Post) -> Decision | None:
    """The message already went through this list (its List-Id or loop marker)."""
    if is_loop(post.headers, post.list_row):
        return Decision("loop", DISCARD, f"message already carries {post.list_row.address}'s List-Id;"
                                         " not sent again")
    return None


def duplicate(post: Post) -> Decision | None:
    """The same Message-ID was delivered to this list within the duplicate window."""
    if post.delivered_recently:
        return Decision("duplicate", DISCARD, f"{post.message_id} was already delivered to"
                                              f" {post.list_row.address}; not sent again")
    return None


def poster(post: Post) -> Decision | None:
    """The From address may not post (Reply-To and Sender never grant posting rights)."""
    if not post.from_address:
        return Decision("poster", REFUSE, post.from_problem or "the message has no valid From address")
    if not post.may_post:
        return Decision("poster", REFUSE, f"{post.from_address} is not allowed to post to {post.list_row.address}")
    return None


#: The chain: (rule, what it checks), in order.
CHAIN = (
    (loop, "mail loop: the post already went through this list"),
    (duplicate, "duplicate: this Message-ID was delivered to this list recently"),
    (poster, "posting rights: the From address may post to this list"),
)


def decide(post: Post, chain=CHAIN) -> tuple[Decision, list[tuple[str, Decision | None]]]:
    """Run the chain; the decision and each rule's verdict up to it (for dry runs)."""
    trail: list[tuple[str, Decision | None]] = []
    for rule, _ in chain:
        decision = rule(post)
        trail.append((rule.__name__, decision))
        if decision is not None:
            return decision, trail
    return Decision("accept", ACCEPT, "no rule stopped it"), trail


def recipients(members: list[str], *, poster: str | None, exclude_poster: bool, list_address: str,
               suppressed: frozenset[str] = frozenset()) -> list[str]:
    """Who gets the post: members, deduplicated case-insensitively, minus the
    poster (when the list says so), minus the list's own addresses and minus
    suppressed addresses. Order is kept."""
    local, _, domain = list_address.lower().rpartition("@")
    skip = set(suppressed) | set(service_addresses(local, domain))
    if exclude_poster and poster:
        skip.add(poster.lower())
    own_domain = "@" + domain
    seen: set[str] = set()
    out = []
    for email in members:
        key = email.lower()
        if key in seen or key in skip:
            continue
        if key.endswith(own_domain) and "+" in key and is_own_address(key, list_address):
            continue  # students+x@ or students-bounces+y@ as a member
        seen.add(key)
        out.append(email)
    return out


def batches(addresses: list[str], max_count: int = 5000, max_bytes: int = 1 << 20) -> list[list[str]]:
    """Split recipients into sendmail command lines: at most ``max_count``
    addresses and ``max_bytes`` of arguments each (ARG_MAX is 2 MiB)."""
    out: list[list[str]] = []
    current: list[str] = []
    size = 0
    for addr in addresses:
        n = len(addr.encode("utf-8", "surrogateescape")) + 1
        if current and (len(current) >= max_count or size + n > max_bytes):
            out.append(current)
            current, size = [], 0
        current.append(addr)
        size += n
    if current:
        out.append(current)
    return out
