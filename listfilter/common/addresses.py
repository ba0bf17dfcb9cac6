"""The address forms of a list, and what a recipient address names.

A list ``students@lists.example.edu`` owns these addresses (mlmmj and Mailman
use the same forms):

==============================================  ====================================
``students@…``                                  posts (``students+tag@…`` too)
``students-bounces@…``                          the envelope sender of every copy;
``students-bounces+user=example.org@…``         with VERP, the member whose copy bounced
``students-owner@…``                            the list's owners (a virtual alias)
``students-request@…``                          help and commands, to the owners
==============================================  ====================================

An opt-in list also owns ``students-join@…`` and ``students-leave@…`` (a
request to join or leave, confirmed by a reply; :mod:`listfilter.mail.requests`). The RFC 2919 List-Id
is ``students.lists.example.edu``. Both sides use this module: the sync side
for the config's checks and the Postfix maps, the mail side to tell which of
a list's addresses a message came to. Standard library only.
"""

from __future__ import annotations

from collections import namedtuple

#: The suffixes of a list's service addresses, in the order the maps list them.
SERVICE_SUFFIXES = ("bounces", "owner", "request")
#: The suffixes only an opt-in list has.
OPTIN_SUFFIXES = ("join", "leave")
#: Suffixes no list name may end in: the service addresses and those of opt-in lists.
RESERVED_SUFFIXES = SERVICE_SUFFIXES + OPTIN_SUFFIXES
#: The delimiter Postfix's recipient_delimiter is set to (main.cf).
DELIMITER = "+"


def service_address(list_address: str, kind: str) -> str:
    """``students@d``, ``"bounces"`` → ``students-bounces@d``; ``"post"`` gives the list address."""
    local, _, domain = list_address.rpartition("@")
    return list_address if kind == "post" else f"{local}-{kind}@{domain}"


def service_addresses(local_part: str, domain: str, optin: bool = False) -> list[str]:
    """The list address and its -bounces, -owner and -request addresses (and -join, -leave when opt-in)."""
    address = f"{local_part}@{domain}"
    suffixes = RESERVED_SUFFIXES if optin else SERVICE_SUFFIXES
    return [address] + [service_address(address, s) for s in suffixes]


def bounces_address(list_address: str) -> str:
    return service_address(list_address, "bounces")


def owner_address(list_address: str) -> str:
    return service_address(list_address, "owner")


def request_address(list_address: str) -> str:
    return service_address(list_address, "request")


def list_id(list_address: str) -> str:
    """The RFC 2919 list identifier: ``students.lists.example.edu``."""
    local, _, domain = list_address.rpartition("@")
    return f"{local}.{domain}"


#: What a recipient names: the list's lower-case address, which of its
#: addresses ("post", "bounces", "owner", "request", "join" or "leave"), and the part after
#: "+" (VERP data for -bounces), or "".
Target = namedtuple("Target", "list_address kind extension")


def parse_recipient(recipient: str) -> Target | None:
    """``Students+x@Lists.Example.EDU`` → Target("students@lists.example.edu", "post", "x").

    Case-insensitive; a ``+extension`` is kept (VERP data for -bounces).
    None for something that is not an address at all.
    """
    local, at, domain = recipient.strip().strip("<>").rpartition("@")
    if not at or not local or not domain:
        return None
    local, _, extension = local.partition(DELIMITER)
    local = local.lower()
    kind = "post"
    for suffix in RESERVED_SUFFIXES:
        if local.endswith("-" + suffix):
            local, kind = local[: -len(suffix) - 1], suffix
            break
    if not local:
        return None
    return Target(f"{local}@{domain.lower()}", kind, extension)


def verp_member(extension: str) -> str | None:
    """The member a VERP extension encodes: ``user=example.org`` → ``user@example.org``.

    Postfix's ``sendmail -XV`` writes the recipient's ``@`` as ``=`` (the
    default verp_delimiters ``+=``); the last ``=`` is the one it replaced.
    """
    local, eq, domain = extension.rpartition("=")
    if not eq or not local or not domain:
        return None
    return f"{local}@{domain}"


def is_own_address(address: str, list_address: str) -> bool:
    """Whether ``address`` is one of the list's own addresses (with or without ``+extension``)."""
    target = parse_recipient(address)
    return target is not None and target.list_address == list_address.lower()
