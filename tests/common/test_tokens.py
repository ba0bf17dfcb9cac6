"""Signed tokens (listfilter.common.tokens): what they carry, and every way one can be wrong."""

from __future__ import annotations

import os

import pytest

from listfilter.common import tokens as T

KEY = bytes(range(32))
LIST = "announce@club.example.org"
NOW = 1_800_000_000


def test_a_token_says_what_it_was_made_for():
    token = T.make(KEY, "join", "Announce@Club.Example.org", "ann@example.net", NOW + 60)
    assert T.verify(KEY, token, NOW) == T.Claim("join", LIST, "ann@example.net", NOW + 60)
    assert T.find(f"Re: confirm {token}\n> quoted {token}") == [token]


def test_a_changed_payload_or_another_key_is_refused():
    token = T.make(KEY, "join", LIST, "ann@example.net", NOW + 60)
    other = T.make(KEY, "join", LIST, "eve@example.net", NOW + 60)
    forged = other.split(".")[0] + "." + token.split(".")[1]  # eve's payload under ann's signature
    with pytest.raises(T.TokenError, match="signature"):
        T.verify(KEY, forged, NOW)
    with pytest.raises(T.TokenError, match="signature"):
        T.verify(b"k" * 32, token, NOW)
    with pytest.raises(T.TokenError, match="not a listfilter token"):
        T.verify(KEY, "no-dot-here", NOW)


def test_expiry_and_action_are_checked():
    token = T.make(KEY, "leave", LIST, "ann@example.net", NOW + 60)
    with pytest.raises(T.TokenError, match="expired"):
        T.verify(KEY, token, NOW + 61)
    with pytest.raises(T.TokenError, match="for leave, not for join"):
        T.verify(KEY, token, NOW, actions=("join",))
    forever = T.make(KEY, "unsubscribe", LIST, "ann@example.net", 0)
    assert T.verify(KEY, forever, NOW + 10**9).action == "unsubscribe"
    with pytest.raises(ValueError):
        T.make(KEY, "delete-everything", LIST, "x", 0)


def test_the_key_is_made_once_and_kept(tmp_path):
    path = tmp_path / T.KEY_NAME
    assert T.ensure_key(path) is True
    first = T.load_key(path)
    assert len(first) == 32 and oct(os.stat(path).st_mode & 0o777) == "0o640"
    assert T.ensure_key(path) is False and T.load_key(path) == first
    with pytest.raises(T.TokenKeyError, match="cannot be read"):
        T.load_key(tmp_path / "missing")
    (tmp_path / "short").write_text("abcd\n")
    with pytest.raises(T.TokenKeyError, match="too short"):
        T.load_key(tmp_path / "short")
