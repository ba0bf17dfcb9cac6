"""Extra members and joined members, kept in the store (``list_members``), and every change to them.

(Contract, filled in by the extra-members work.)
"""

from __future__ import annotations


def added(store, now) -> dict[str, list[tuple[str, str, str]]]:
    """list address -> (email, name, source) of every unexpired extra member and every joined member."""
    return {}


def expire(config, store, now) -> tuple[list[str], list[str]]:
    """Remove extra members past their ``until`` (each a member_changes row): (notes, warnings)."""
    return [], []
