"""What happens to a post: named rules in a declared order, as Mailman 3's chains.

Each rule is a small pure function over the :class:`Post` (the facts the
runner gathered once: the parsed headers, the list's snapshot row, whether the
poster may post, whether this message was already delivered, whose
Authentication-Results count and where the post came from) and returns a
:class:`Decision`, or None to pass the post on to the next rule. :data:`CHAIN`
is the order; the first decision wins, and a post that no rule stops is
accepted. The runner (:mod:`listfilter.mail.deliver`) does all the I/O
before and after; the log line and the event name the rule that decided.
A rule may also accept (``approved``: a held post the owners approved is
let through once, without the posting-rights checks below it), or hold
(``poster``, on a list whose ``non_member_posts`` or ``non_poster_posts``
is ``hold``: the post is kept for the owners, :mod:`listfilter.mail.moderation`).

Who receives an accepted post is :func:`recipients`: the members, minus the
poster (unless the list says otherwise), minus the list's own addresses (a
list never mails itself), minus the addresses the snapshot says are
suppressed (bounce scoring, on the sync side). When that leaves nobody,
:func:`nobody_reason` says why. Whether an accepted post's From is rewritten
for DMARC is :func:`dmarc_mitigation`, decided on the original From.
"""

from __future__ import annotations

from collections import namedtuple

from ..common.addresses import is_own_address, service_addresses
from ..common.snapshot import DMARC_FAILED, DMARC_GRACE, DMARC_STRICT, LOCAL_SUBMISSION, dmarc_always_match
from .headers import is_loop

#: What a rule decided: the rule's name, the action ("discard", "refuse", "hold"
#: or "accept") and the reason in words.
Decision = namedtuple("Decision", "rule action reason")

#: The facts about one post that the rules decide on. ``from_problem`` says why
#: the From header names nobody for sure (``from_address`` is then None).
#: ``authserv_id`` is this host's (snapshot setting), ``trusted`` the site's
#: ``authenticated_trusted`` (:class:`listfilter.common.snapshot.Trusted` entries),
#: ``client_address`` the SMTP client Postfix received the post from ("" for sendmail).
#: ``is_member``: the From address is one of the list's members (which of the list's
#: moderation modes applies to a poster who may not post). ``post_key`` is what names the
#: post (:func:`listfilter.common.events.post_key`); ``approved_key`` the post key the
#: snapshot's ``approved`` table has for the held id the message's
#: :data:`~listfilter.common.snapshot.APPROVED_HEADER` names (None: no such header, or not approved).
#: ``held_as``: the id this message was already held as for this list ("" when it was not).
Post = namedtuple("Post", "headers list_row from_address may_post delivered_recently message_id from_problem"
                          " authserv_id trusted client_address is_member post_key approved_key held_as",
                  defaults=("", "", (), "", False, "", None, ""))

ACCEPT = "accept"
DISCARD = "discard"
REFUSE = "refuse"
#: Kept for the list's owners to approve or discard (:mod:`listfilter.mail.moderation`).
HOLD = "hold"


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


def approved(post: Post) -> Decision | None:
    """The list's owners approved this very post: it was held, and sync is releasing it.

    The release carries :data:`~listfilter.common.snapshot.APPROVED_HEADER` with
    the held post's id, and the snapshot's ``approved`` row for that id must
    name this message's post key: a poster who writes the header names no
    approved id (they are random, and only sync's release knows them), and
    an approved id on another message matches nothing. The header never
    leaves the list (the rewrite removes it).
    """
    if post.approved_key and post.post_key and post.approved_key == post.post_key:
        return Decision("approved", ACCEPT, "approved by the owners")
    return None


def held(post: Post) -> Decision | None:
    """This very message is already held for this list's owners (a resend, or Postfix's retry).

    Holding it again would keep a second copy and send a second pair of
    notices; the owners decide the first. It comes after ``approved``: the
    approved post's release is the same message, and goes through.
    """
    if post.held_as:
        return Decision("held", DISCARD, f"{post.message_id} to {post.list_row.address} is already held as"
                                         f" {post.held_as} for the owners; not held again")
    return None


def poster(post: Post) -> Decision | None:
    """The From address may not post (Reply-To and Sender never grant posting rights).

    A valid From that may not post is held instead of refused when the list's
    mode for that person says ``hold``: ``non_poster_posts`` for a member,
    ``non_member_posts`` for anyone else. A message with no valid From is
    always refused: there is nobody to tell it is held, or to hold it for.
    """
    if not post.from_address:
        return Decision("poster", REFUSE, post.from_problem or "the message has no valid From address")
    if not post.may_post:
        row = post.list_row
        if holds(row, post.is_member):
            who = "a member who may not post" if post.is_member else "not a member"
            return Decision("poster", HOLD, f"{post.from_address} is {who} of {row.address}; held for the"
                                            " owners to approve")
        return Decision("poster", REFUSE, f"{post.from_address} is not allowed to post to {row.address}")
    return None


def holds(row, member: bool) -> bool:
    """Whether the list holds, rather than refuses, a post from someone who may not post:
    ``non_poster_posts`` for a member, ``non_member_posts`` for anyone else (the policy
    service asks this too, so that it does not refuse at RCPT time what deliver would hold)."""
    return (row.non_poster_posts if member else row.non_member_posts) == HOLD


def authenticated(post: Post) -> Decision | None:
    """The From domain passed DMARC at this host (its own Authentication-Results), or is trusted.

    Only for lists with ``require_authenticated``: anyone can write the
    instructor's address in From, and the poster rule believes From. OpenDKIM
    and OpenDMARC, milters on Postfix's SMTP path, prepend their verdict under
    this host's authserv-id; :func:`listfilter.mail.authres.dmarc_result`
    reads the topmost one of ours and no one else's (RFC 8601 §5).
    """
    if not post.list_row.require_authenticated or not post.from_address:
        return None
    from .authres import dmarc_result, normal_domain

    domain = normal_domain(post.from_address.rpartition("@")[2])
    if is_trusted(post.trusted, domain, post.client_address):
        return None
    found = dmarc_result(post.headers.raw_all("Authentication-Results"), post.authserv_id, domain)
    if found.result == "pass":
        return None
    return Decision("authenticated", REFUSE, authentication_reason(found, domain, post.authserv_id))


def is_trusted(trusted, domain: str, client_address: str) -> bool:
    """Is a From ``domain`` believed without a DMARC pass, for mail from ``client_address``?"""
    for entry in trusted:
        if domain not in entry.domains:
            continue
        if not entry.networks:
            return True
        if not client_address:  # submitted on this host with sendmail
            if LOCAL_SUBMISSION in entry.networks:
                return True
            continue
        import ipaddress

        try:
            client = ipaddress.ip_address(client_address)
        except ValueError:
            continue
        if any(n != LOCAL_SUBMISSION and client in ipaddress.ip_network(n) for n in entry.networks):
            return True
    return False


#: What a DMARC result other than pass means for the poster, in the refusal's words.
_DMARC_MEANS = {
    "fail": "it has no valid DKIM signature of {d}, and it was not sent from a server that {d}'s SPF record names",
    "none": "{d} publishes no DMARC record, so nothing can show the message is from {d}",
    "temperror": "the check could not be completed (a DNS failure); send the message again later",
    "permerror": "{d}'s DMARC record cannot be read",
}


def authentication_reason(found, domain: str, authserv_id: str) -> str:
    """Why :func:`authenticated` refused: what failed, for the notice and the log."""
    if found.problem:
        return f"{found.problem}: nothing shows that the message comes from {domain}"
    if not found.result:
        return f"the DMARC result from {authserv_id} is for {found.other_domain}, not for {domain}"
    means = _DMARC_MEANS.get(found.result, "the message cannot be shown to come from {d}").format(d=domain)
    return f"dmarc={found.result} for {domain} ({authserv_id}): {means}"


#: The chain: (rule, what it checks), in order.
CHAIN = (
    (loop, "mail loop: the post already went through this list"),
    (duplicate, "duplicate: this Message-ID was delivered to this list recently"),
    (approved, "moderation: the owners approved this held post (accepted; the rules below are skipped)"),
    (held, "moderation: this message is already held for the owners (not held again)"),
    (poster, "posting rights: the From address may post to this list"),
    (authenticated, "authenticity: the From domain passed DMARC at this host, or is trusted"),
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


#: What an accepted post gets so that receivers do not refuse it for DMARC: the list's
#: ``dmarc`` mode (``munge`` or ``wrap``, :mod:`listfilter.mail.headers`) and why, in words.
Mitigation = namedtuple("Mitigation", "mode reason")


def dmarc_mitigation(list_row, from_address: str | None, entry, now: float) -> Mitigation | None:
    """Whether a post From ``from_address`` needs the list's DMARC mitigation, decided on the
    original From after the chain accepted it (the rewrite never decides posting rights).

    ``entry`` is the From domain's row of the snapshot's dmarc table (None: sync did not look
    it up), ``now`` Unix time. Every doubt applies it: a domain missing from the snapshot, a
    failed lookup, an entry :data:`~listfilter.common.snapshot.DMARC_GRACE` past its expiry.
    """
    if list_row.dmarc == "off" or not from_address:
        return None
    mode = list_row.dmarc
    domain = from_address.rpartition("@")[2].lower()
    always = dmarc_always_match(list_row.dmarc_always, from_address)
    if always:
        return Mitigation(mode, f"dmarc_always lists {always}")
    if entry is None:
        return Mitigation(mode, f"no DMARC policy for {domain} in the snapshot")
    if entry.status == DMARC_FAILED:
        return Mitigation(mode, f"the DMARC lookup for {domain} failed")
    if now > entry.expires_at + DMARC_GRACE:
        return Mitigation(mode, f"the DMARC policy of {domain} expired (is sync running?)")
    if entry.policy in DMARC_STRICT:
        return Mitigation(mode, f"{domain} has DMARC policy p={entry.policy}")
    return None


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


def nobody_reason(members: list[str], *, poster: str | None, exclude_poster: bool, list_address: str,
                  suppressed: frozenset[str] = frozenset()) -> str:
    """Why :func:`recipients`, given the same arguments, left nobody to send to: the words that
    the log line, the mail log and the admin page give for an accepted post that reached no one."""
    if not members:
        return "the list has no members"
    keys = {m.lower() for m in members}
    own = poster.lower() if exclude_poster and poster else None
    if keys == {own}:
        return "the poster is the list's only member, and the list sends posters no copy (exclude_poster = true)"
    suppressed_n = len(keys & set(suppressed) - {own})
    if suppressed_n == len(keys):
        return ("the list's only member is" if suppressed_n == 1 else f"all {suppressed_n} members are") + \
            " suppressed after bounces"
    parts = []
    if own in keys:
        parts.append("the poster (exclude_poster = true)")
    if suppressed_n:
        parts.append(f"{suppressed_n} suppressed after bounces")
    if (rest := len(keys) - (own in keys) - suppressed_n) > 0:
        parts.append(f"{rest} of the list's own addresses")
    return f"every member is left out: {', '.join(parts)}"


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

