"""Signed tokens: what a reply or a link must carry to change a list.

A token says *what* (the action), *on which list*, *for whom* (an address,
or a held post's id), *until when*, and carries an HMAC-SHA256 of all that
under the site's token key. Nothing about a token is stored anywhere: the
mail side makes one for a join request and checks the reply that brings it
back (no state beyond the spool), the admin app checks an RFC 8058
one-click unsubscribe link, and the sync side makes none. So a confirmation
cannot be forged without the key, cannot be moved to another list, address,
post or action, and stops working when it expires.

The form is ``<payload>.<mac>``, both base64url without padding: the
payload is the JSON array ``[action, list, subject, expires]`` (expires is
Unix seconds; 0 means never, for the per-member unsubscribe link), the MAC
its first 16 bytes. It contains only ``A-Z a-z 0-9 - _ .``, so it survives
a Subject line, a URL path and a mail client's line wrapping at the dots.

The key is 32 random bytes, hex, in one file (``[site] token_key_file``,
default ``<state_dir>/token-key``) that sync creates once, mode 0640, and
never rewrites; replacing it invalidates every token in flight.
Standard library only.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import re
from collections import namedtuple
from pathlib import Path

from .errors import Defer, ListfilterError

#: What a token can ask for. ``join``/``leave``: the subscriber confirms (opt-in lists);
#: ``admit``/``deny``: an owner decides a join that needs approval; ``approve``/``discard``:
#: an owner decides a held post; ``unsubscribe``: the one-click link (RFC 8058), per member.
ACTIONS = ("join", "leave", "admit", "deny", "approve", "discard", "unsubscribe")

#: The file name of the key in the state directory.
KEY_NAME = "token-key"
_MAC_BYTES = 16
#: A token as it appears in text (a Subject, a body, a URL).
PATTERN = re.compile(r"(?<![A-Za-z0-9_.-])([A-Za-z0-9_-]{20,600}\.[A-Za-z0-9_-]{22})(?![A-Za-z0-9_-])")

#: What a valid token says.
Claim = namedtuple("Claim", "action list_address subject expires")


class TokenError(ListfilterError):
    """The token is malformed, forged, for something else, or expired: the words say which."""


class TokenKeyError(Defer):
    """The key file is missing or unreadable (the mail side defers: the world may change)."""


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _mac(key: bytes, payload: str) -> str:
    return _b64(hmac.new(key, payload.encode("ascii"), hashlib.sha256).digest()[:_MAC_BYTES])


def make(key: bytes, action: str, list_address: str, subject: str, expires: int) -> str:
    """A token for ``action`` on ``list_address`` about ``subject`` (an address, lower-cased, or a held
    post's id), valid until ``expires`` (Unix seconds; 0: never)."""
    if action not in ACTIONS:
        raise ValueError(f"unknown token action {action!r}")
    payload = _b64(json.dumps([action, list_address.lower(), subject, int(expires)],
                              separators=(",", ":"), ensure_ascii=False).encode("utf-8"))
    return f"{payload}.{_mac(key, payload)}"


def verify(key: bytes, token: str, now: float, *, actions: tuple[str, ...] = ACTIONS) -> Claim:
    """What a token says, if it is ours, unexpired and for one of ``actions``; else TokenError."""
    payload, dot, mac = token.strip().rpartition(".")
    if not dot or not payload or not mac:
        raise TokenError("not a listfilter token")
    if not hmac.compare_digest(_mac(key, payload), mac):
        raise TokenError("the token's signature does not match (it was changed, or is from another site)")
    try:
        action, list_address, subject, expires = json.loads(_unb64(payload).decode("utf-8"))
        claim = Claim(str(action), str(list_address), str(subject), int(expires))
    except (ValueError, TypeError, UnicodeDecodeError):
        raise TokenError("the token's content cannot be read") from None
    if claim.action not in actions:
        raise TokenError(f"the token is for {claim.action}, not for {' or '.join(actions)}")
    if claim.expires and now > claim.expires:
        raise TokenError("the token has expired")
    return claim


def find(text: str) -> list[str]:
    """The token-shaped strings in ``text``, in order, without repeats (a Subject, a body's lines)."""
    seen: list[str] = []
    for m in PATTERN.finditer(text or ""):
        if m.group(1) not in seen:
            seen.append(m.group(1))
    return seen


def load_key(path: str | os.PathLike) -> bytes:
    """The key in ``path`` (hex); TokenKeyError when it is missing or not a key."""
    try:
        text = Path(path).read_text(encoding="ascii").strip()
        key = bytes.fromhex(text)
    except (OSError, ValueError, UnicodeDecodeError) as exc:
        raise TokenKeyError(f"token key {path} cannot be read: {getattr(exc, 'strerror', None) or exc}") from None
    if len(key) < 16:
        raise TokenKeyError(f"token key {path} is too short ({len(key)} bytes; sync makes 32)")
    return key


def ensure_key(path: str | os.PathLike) -> bool:
    """Create the key file once (32 random bytes, hex, mode 0640, create-only); True if it was made now."""
    import secrets

    p = Path(path)
    try:
        fd = os.open(p, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o640)
    except FileExistsError:
        return False
    with os.fdopen(fd, "w", encoding="ascii") as f:
        f.write(secrets.token_hex(32) + "\n")
        f.flush()
        os.fsync(f.fileno())
    return True
