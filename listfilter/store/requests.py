"""The spool's requests (confirmed joins and leaves, owners' decisions), applied to the store.

(Contract, filled in by the opt-in work.)
"""

from __future__ import annotations


def ingest(config, store, now) -> tuple[list[str], list[str]]:
    """Apply every request waiting in the spool, then remove it: (notes, warnings)."""
    return [], []


def send_owed(config, store, lists, now) -> tuple[list[str], list[str]]:
    """Send the welcome and goodbye messages owed (member_changes.notice, not yet notified_at)."""
    return [], []
