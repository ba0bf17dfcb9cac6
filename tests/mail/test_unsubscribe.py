"""An opt-in list's post: one copy per member, each with its own List-Unsubscribe (RFC 2369, RFC 8058).

In-process through listfilter.mail.deliver with sendmail faked (tests/mail/test_deliver.py's);
tests/integration/test_optin.py shows the headers arriving through a real Postfix.
"""

from __future__ import annotations

import email
import email.policy
import time
from pathlib import Path

import pytest

from listfilter.common import tokens as TK
from listfilter.common.errors import Defer
from listfilter.mail import deliver as D

from . import compiled_list, write_snapshot
from .test_deliver import fake_sendmail

CLUB = "club@lists.example.edu"
ROSTER = "students@lists.example.edu"
URL = "https://lists.example.edu/unsubscribe"
MEMBERS = ["a@example.org", "B@Example.org", "c@example.org"]


def post(to: str = CLUB, msgid: str = "<p1@example.edu>") -> bytes:
    return (f"From: Pat Prof <prof@example.edu>\nTo: {to}\nSubject: Friday\nMessage-ID: {msgid}\n"
            "Date: Tue, 24 Nov 2026 08:00:00 +0000\n\nSee you.\n").encode()


class Env:
    def __init__(self, tmp_path: Path, *, url: str = URL, redirect_to=None, key: bool = True):
        self.sendmail, self.calls = fake_sendmail(tmp_path)
        self.spool = tmp_path / "spool"
        self.key_path = tmp_path / "token-key"
        if key:
            TK.ensure_key(self.key_path)
        club = compiled_list(CLUB, display_name="Chess Club", members=MEMBERS, posters=["prof@example.edu"],
                             optin=True, join_rule="anyone", unsubscribe_url=url, redirect_to=redirect_to)
        roster = compiled_list(ROSTER, members=MEMBERS, posters=["prof@example.edu"])
        self.snapshot = write_snapshot(tmp_path / "snapshot.sqlite", [club, roster], spool=self.spool,
                                       sendmail=str(self.sendmail), settings={"token_key": str(self.key_path),
                                                                              "postfix_log": ""})

    def deliver(self, raw: bytes, to: str = CLUB) -> str:
        argv = ["--snapshot", str(self.snapshot), "--sender", "prof@example.edu", "--recipient", to,
                "--queue-id", "4QID"]
        return D.deliver(D.parse(argv, D.OPTIONS, D.FLAGS), raw)

    def sent(self) -> list[tuple[list[str], email.message.EmailMessage]]:
        n = len(list(self.calls.glob("*.args")))
        return [((self.calls / f"{i}.args").read_text().splitlines(),
                 email.message_from_bytes((self.calls / f"{i}.msg").read_bytes(), policy=email.policy.default))
                for i in range(n)]


def rcpts(argv: list[str]) -> list[str]:
    return argv[argv.index("--") + 1:]


def test_each_member_gets_a_copy_with_their_own_link(tmp_path):
    env = Env(tmp_path)
    line = env.deliver(post())
    copies = env.sent()
    assert [rcpts(a) for a, _ in copies] == [[m] for m in MEMBERS] and "3 recipients" in line
    key = TK.load_key(env.key_path)
    for (argv, msg), member in zip(copies, MEMBERS):
        assert "-XV" in argv and argv[argv.index("-f") + 1] == "club-bounces@lists.example.edu"
        mailto, link = str(msg["List-Unsubscribe"]).split(", ")
        assert mailto == "<mailto:club-leave@lists.example.edu?subject=leave>"
        assert link.startswith(f"<{URL}/") and link.endswith(">")
        claim = TK.verify(key, link[len(URL) + 2:-1], time.time() + 10 * 365 * 86400, actions=("unsubscribe",))
        assert claim == ("unsubscribe", CLUB, member.lower(), 0)  # never expires
        assert msg["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
        assert msg["Message-ID"] == "<p1@example.edu>" and msg.get_content() == "See you.\n"


def test_without_a_web_url_only_the_mailto(tmp_path):
    env = Env(tmp_path, url="", key=False)  # no link: no key needed
    env.deliver(post())
    for _, msg in env.sent():
        assert msg["List-Unsubscribe"] == "<mailto:club-leave@lists.example.edu?subject=leave>"
        assert msg["List-Unsubscribe-Post"] is None


def test_a_roster_list_keeps_one_submission_and_no_unsubscribe(tmp_path):
    env = Env(tmp_path)
    env.deliver(post(ROSTER), to=ROSTER)
    [(argv, msg)] = env.sent()
    assert rcpts(argv) == MEMBERS
    assert msg["List-Unsubscribe"] is None and msg["List-Unsubscribe-Post"] is None


def test_a_retry_sends_nobody_twice(tmp_path):
    env = Env(tmp_path)
    (env.calls / "FAIL_AT").write_text("1")  # the second member's sendmail fails
    with pytest.raises(Defer):
        env.deliver(post())
    assert [rcpts(a) for a, _ in env.sent()] == [[MEMBERS[0]]]
    (env.calls / "FAIL_AT").unlink()
    env.deliver(post())
    assert [rcpts(a) for a, _ in env.sent()] == [[m] for m in MEMBERS]
    env.deliver(post())  # the same post again: a duplicate, sent to nobody
    assert len(env.sent()) == 3


def test_staging_sends_one_copy_without_a_members_link(tmp_path):
    env = Env(tmp_path, redirect_to="staging@example.edu")
    env.deliver(post())
    [(argv, msg)] = env.sent()
    assert rcpts(argv) == ["staging@example.edu"]
    assert msg["List-Unsubscribe"] == "<mailto:club-leave@lists.example.edu?subject=leave>"
    assert msg["List-Unsubscribe-Post"] is None


def test_a_missing_key_defers_the_post(tmp_path):
    env = Env(tmp_path, key=False)
    with pytest.raises(Defer):
        env.deliver(post())
    assert env.sent() == []
