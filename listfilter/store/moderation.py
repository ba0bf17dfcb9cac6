"""Held posts (moderation): from the spool into the store, decided, released or expired.

(Contract, filled in by the moderation work.)
"""

from __future__ import annotations


def ingest(config, store, now) -> tuple[list[str], list[str]]:
    """Move every held post waiting in the spool into ``held_posts``: (notes, warnings)."""
    return [], []


def expire(config, store, now) -> tuple[list[str], list[str]]:
    """Mark held posts past their list's hold_days expired (their posters are told after the sync)."""
    return [], []


def approved(store) -> list[tuple[str, str, str]]:
    """(list address, held id, post key) of every approved post not yet released."""
    return []


def release(config, store, lists, now) -> tuple[list[str], list[str]]:
    """Hand every approved post back to Postfix (to the list address), marking it released."""
    return [], []


def send_owed(config, store, lists, now) -> tuple[list[str], list[str]]:
    """Tell the posters of expired held posts (once each)."""
    return [], []
