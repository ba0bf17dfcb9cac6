"""What the mail side decides, as pure functions over data.

Each rule is one small function (in the manner of Mailman 3's rules), tested
without Postfix, a snapshot or a message file: which list and which of its
addresses a recipient names, who the poster is, whether they may post, and
who receives.
"""

from __future__ import annotations

from collections import namedtuple

# The list's service addresses (see config.SERVICE_SUFFIXES), by suffix.
KINDS = {"bounces": "bounces", "owner": "owner", "request": "request"}


#: What a pipe recipient names: the list's lower-case address, which of its
#: addresses ("post", "bounces", "owner" or "request"), and the part after
#: "+" (VERP data for -bounces), or "".
Target = namedtuple("Target", "list_address kind extension")


def parse_recipient(recipient: str) -> Target | None:
    """``Students+x@Lists.Example.EDU`` → Target("students@lists.example.edu", "post", "x").

    Case-insensitive; a ``+extension`` is tolerated (and kept for VERP).
    Returns None for something that is not an address at all.
    """
    local, at, domain = recipient.strip().strip("<>").rpartition("@")
    if not at or not local or not domain:
        return None
    local, _, extension = local.partition("+")
    local = local.lower()
    kind = "post"
    for suffix in KINDS:
        if local.endswith("-" + suffix):
            local, kind = local[: -len(suffix) - 1], KINDS[suffix]
            break
    return Target(f"{local}@{domain.lower()}", kind, extension)


def verp_member(extension: str) -> str | None:
    """The member address a VERP extension encodes: ``user=example.org`` → ``user@example.org``."""
    local, eq, domain = extension.rpartition("=")
    if not eq or not local or not domain:
        return None
    return f"{local}@{domain}"


#: Whether a poster may post, and why not ("" when allowed).
PostCheck = namedtuple("PostCheck", "allowed reason")


def check_poster(from_address: str | None, list_address: str, may_post: bool) -> PostCheck:
    """Whether the From header's address may post.

    ``may_post`` is the snapshot's answer for that address (compared
    lower-cased). Reply-To and Sender never grant posting rights: only From.
    """
    if not from_address:
        return PostCheck(False, "the message has no valid From address")
    if may_post:
        return PostCheck(True, "")
    return PostCheck(False, f"{from_address} is not allowed to post to {list_address}")


def recipients(members: list[str], *, poster: str | None, exclude_poster: bool, list_address: str,
               suppressed: frozenset[str] = frozenset()) -> list[str]:
    """Who gets the post: members, deduplicated case-insensitively, minus the
    poster (when the list says so), minus the list's own addresses (a list
    never mails itself) and minus suppressed addresses. Order is kept."""
    local, _, domain = list_address.lower().rpartition("@")
    own = {f"{local}@{domain}"} | {f"{local}-{kind}@{domain}" for kind in KINDS}
    skip = set(suppressed) | own
    if exclude_poster and poster:
        skip.add(poster.lower())
    own_domain = "@" + domain
    seen: set[str] = set()
    out = []
    for email in members:
        key = email.lower()
        if key in seen or key in skip:
            continue
        if key.endswith(own_domain) and "+" in key:
            target = parse_recipient(key)  # students+x@ or students-bounces+y@ as a member
            if target is not None and target.list_address == list_address.lower():
                continue
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
        n = len(addr.encode()) + 1
        if current and (len(current) >= max_count or size + n > max_bytes):
            out.append(current)
            current, size = [], 0
        current.append(addr)
        size += n
    if current:
        out.append(current)
    return out
