"""listfilter.mail.requests: -join, -leave and -request mail of an opt-in list, with sendmail faked.

In-process through :func:`listfilter.mail.deliver.deliver`, as Postfix's pipe
runs it; the snapshot is written directly (its texts rendered from the real
templates by sync's own code). tests/integration/test_optin.py runs the same
through a real Postfix.
"""

from __future__ import annotations

import email
import email.policy
import json
import time
from pathlib import Path

import pytest

from listfilter.common import tokens as TK
from listfilter.common.errors import Defer, NoSuchList
from listfilter.common.events import request_from_json
from listfilter.mail import deliver as D
from listfilter.mail.requests import asked, command_word

from . import compiled_list, write_snapshot
from .test_deliver import fake_sendmail

CLUB = "club@lists.example.edu"
JOIN, LEAVE, REQUEST = "club-join@lists.example.edu", "club-leave@lists.example.edu", "club-request@lists.example.edu"
ROSTER = "students@lists.example.edu"


def texts(display_name: str = "Chess Club", join_rule: str = "anyone") -> dict[str, str]:
    """An opt-in list's texts as sync renders them (listfilter.sync.compiler.list_texts)."""
    from listfilter.common.snapshot import TEXT_FIELDS, notice_marker
    from listfilter.sync.compiler import OPTIN_TEXTS
    from listfilter.sync.templating import render

    context = dict(list_name=display_name, list_address=CLUB, list_description="", owner_address=
                   "club-owner@lists.example.edu", request_address=REQUEST, join_address=JOIN, leave_address=LEAVE,
                   join_rule=join_rule, confirm_days="3")
    return {k: render(f"messages/{k}.txt.j2", **context, **{f: notice_marker(f) for f in TEXT_FIELDS})
            for k in OPTIN_TEXTS}


class Env:
    def __init__(self, tmp_path: Path, *, approval=False, join_rule="anyone", eligible=(), redirect_to=None,
                 key=True):
        self.sendmail, self.calls = fake_sendmail(tmp_path)
        self.spool = tmp_path / "spool"
        self.key_path = tmp_path / "token-key"
        if key:
            TK.ensure_key(self.key_path)
        club = compiled_list(CLUB, display_name="Chess Club", owners=("owner@example.edu",),
                             members=[("member@example.edu", "Mem"), ("joined@example.edu", "Jo")],
                             sources={"joined@example.edu": "joined"}, optin=True, join_rule=join_rule,
                             join_approval=approval, eligible=tuple(eligible), texts=texts(join_rule=join_rule),
                             redirect_to=redirect_to)
        roster = compiled_list(ROSTER, members=["alice@example.edu"])
        self.snapshot = write_snapshot(tmp_path / "snapshot.sqlite", [club, roster], spool=self.spool,
                                       sendmail=str(self.sendmail), settings={"token_key": str(self.key_path)})

    def deliver(self, recipient: str, message: bytes, sender: str = "new@example.org") -> str:
        argv = ["--snapshot", str(self.snapshot), "--sender", sender, "--recipient", recipient, "--queue-id", "4QID"]
        return D.deliver(D.parse(argv, D.OPTIONS, D.FLAGS), message)

    def sent(self) -> list[tuple[list[str], email.message.EmailMessage]]:
        n = len(list(self.calls.glob("*.args")))
        return [((self.calls / f"{i}.args").read_text().splitlines(),
                 email.message_from_bytes((self.calls / f"{i}.msg").read_bytes(), policy=email.policy.default))
                for i in range(n)]

    def requests(self) -> list:
        return [request_from_json(p.read_bytes()) for p in sorted((self.spool / "requests").glob("*.json"))]

    def key(self) -> bytes:
        return TK.load_key(self.key_path)


def mail(subject: str = "", body: str = "", frm: str = "New Person <new@example.org>", **headers: str) -> bytes:
    lines = [f"From: {frm}", "To: club-request@lists.example.edu", f"Subject: {subject}",
             "Message-ID: <req-1@example.org>", "Date: Tue, 24 Nov 2026 08:00:00 +0000"]
    lines += [f"{k.replace('_', '-')}: {v}" for k, v in headers.items()]
    return ("\n".join(lines) + "\n\n" + body + "\n").encode()


def envelope(argv: list[str]) -> tuple[str, list[str]]:
    """(sender, recipients) of a fake sendmail call."""
    return argv[argv.index("-f") + 1], argv[argv.index("--") + 1:]


def token_of(msg) -> str:
    found = TK.find(str(msg["Subject"]))
    assert found, msg["Subject"]
    return found[0]


# --------------------------------------------------------------------------
# Reading a command


@pytest.mark.parametrize("subject, body, word", [
    ("join", "", "join"), ("Re: Fwd: SUBSCRIBE please", "", "subscribe"), ("", "\n\n  leave\nthanks", "leave"),
    ("hello", "> join\nunsubscribe", "unsubscribe"), ("Re: confirm abc", "", "confirm"), ("hi there", "text", "hi"),
])
def test_command_word(subject, body, word):
    assert asked(subject, body).word == word


def test_command_word_strips_prefixes():
    assert command_word("RE: AW: Re[2]: help") == "help"


# --------------------------------------------------------------------------
# Join


def test_join_by_mail_is_answered_with_a_confirmation(tmp_path):
    env = Env(tmp_path)
    line = env.deliver(JOIN, mail("anything at all"))
    [(argv, msg)] = env.sent()
    assert envelope(argv) == ("<>", ["new@example.org"])  # the null sender (RFC 3834 §3.3), to the From
    assert msg["From"].addresses[0].addr_spec == REQUEST
    assert msg["Auto-Submitted"] == "auto-replied"
    assert msg["In-Reply-To"] == "<req-1@example.org>"
    token = token_of(msg)
    assert str(msg["Subject"]) == f"confirm {token}"
    claim = TK.verify(env.key(), token, time.time())
    assert claim[:3] == ("join", CLUB, "new@example.org")
    body = msg.get_content()
    assert token in body and f"mailto:{REQUEST}?subject=confirm%20{token}" in body
    assert "new@example.org" in body and "\ufdd0" not in body
    assert "confirmation sent" in line and env.requests() == []  # nothing changes before the reply


@pytest.mark.parametrize("subject, body", [("join", ""), ("Re: subscribe", ""), ("", "join\n")])
def test_join_command_to_request(tmp_path, subject, body):
    env = Env(tmp_path)
    env.deliver(REQUEST, mail(subject, body))
    [(_, msg)] = env.sent()
    assert TK.verify(env.key(), token_of(msg), time.time()).action == "join"


def test_confirming_reply_writes_the_join_request(tmp_path):
    env = Env(tmp_path)
    env.deliver(JOIN, mail())
    token = token_of(env.sent()[0][1])
    line = env.deliver(REQUEST, mail(f"Re: confirm {token}", "> quoted text"))
    [req] = env.requests()
    assert (req.action, req.list_address, req.subject, req.name, req.by, req.via) == (
        "join", CLUB, "new@example.org", "New Person", "new@example.org", "mail")
    assert "confirmed" in line and len(env.sent()) == 1  # the welcome comes from sync, once it is applied
    env.deliver(REQUEST, mail(f"Re: confirm {token}"))  # a second reply: the same record, not another
    assert len(env.requests()) == 1


def test_token_in_body_only(tmp_path):
    env = Env(tmp_path)
    env.deliver(JOIN, mail())
    token = token_of(env.sent()[0][1])
    env.deliver(REQUEST, mail("Re: your message", f"yes please\n\n> confirm {token}\n"))
    assert [r.action for r in env.requests()] == ["join"]


def test_already_a_member_gets_no_token(tmp_path):
    env = Env(tmp_path)
    env.deliver(JOIN, mail(frm="member@example.edu"), sender="member@example.edu")
    [(_, msg)] = env.sent()
    assert "already a member" in msg.get_content()
    assert TK.find(str(msg["Subject"])) == [] and TK.find(msg.get_content()) == []


def test_not_eligible_is_refused(tmp_path):
    env = Env(tmp_path, join_rule="course student", eligible=["student@example.edu"])
    line = env.deliver(JOIN, mail())
    [(_, msg)] = env.sent()
    assert "may not join" in msg.get_content() and "course student" in msg.get_content()
    assert TK.find(msg.get_content()) == [] and "may not join" in line
    env.deliver(JOIN, mail(frm="student@example.edu"), sender="student@example.edu")
    assert TK.find(str(env.sent()[1][1]["Subject"]))


# --------------------------------------------------------------------------
# Leave


def test_leave_not_member(tmp_path):
    env = Env(tmp_path)
    env.deliver(LEAVE, mail())
    [(_, msg)] = env.sent()
    assert "not a member" in msg.get_content() and TK.find(msg.get_content()) == []


def test_leave_confirm_and_reply(tmp_path):
    env = Env(tmp_path)
    env.deliver(REQUEST, mail("unsubscribe", frm="joined@example.edu"), sender="joined@example.edu")
    [(argv, msg)] = env.sent()
    assert envelope(argv)[1] == ["joined@example.edu"]
    token = token_of(msg)
    assert TK.verify(env.key(), token, time.time()).action == "leave"
    env.deliver(REQUEST, mail(f"Re: confirm {token}", frm="joined@example.edu"), sender="joined@example.edu")
    [req] = env.requests()
    assert (req.action, req.subject, req.via) == ("leave", "joined@example.edu", "mail")


def test_leave_of_a_member_the_owners_put_there(tmp_path):
    env = Env(tmp_path)
    env.deliver(LEAVE, mail(frm="member@example.edu"), sender="member@example.edu")
    [(_, msg)] = env.sent()
    assert "only" in msg.get_content() and "they can take it off" in msg.get_content()
    assert TK.find(msg.get_content()) == []


# --------------------------------------------------------------------------
# Bad tokens


def _bad(env: Env, token: str) -> str:
    line = env.deliver(REQUEST, mail(f"Re: confirm {token}"))
    assert env.requests() == []
    return line


def test_forged_token(tmp_path):
    env = Env(tmp_path)
    other_key = b"k" * 32
    line = _bad(env, TK.make(other_key, "join", CLUB, "new@example.org", int(time.time()) + 3600))
    [(argv, msg)] = env.sent()
    assert envelope(argv) == ("<>", ["new@example.org"])
    assert "signature does not match" in msg.get_content() and "signature" in line
    assert "Nothing was changed" in msg.get_content()


def test_changed_token(tmp_path):
    env = Env(tmp_path)
    token = TK.make(env.key(), "join", CLUB, "new@example.org", int(time.time()) + 3600)
    payload, _, mac = token.partition(".")
    tampered = TK.make(env.key(), "join", CLUB, "victim@example.org", int(time.time()) + 3600).partition(".")[0]
    _bad(env, f"{tampered}.{mac}")
    assert "signature" in env.sent()[0][1].get_content()


def test_expired_token(tmp_path):
    env = Env(tmp_path)
    _bad(env, TK.make(env.key(), "join", CLUB, "new@example.org", int(time.time()) - 10))
    assert "expired" in env.sent()[0][1].get_content()


def test_token_for_another_list(tmp_path):
    env = Env(tmp_path)
    _bad(env, TK.make(env.key(), "join", "other@lists.example.edu", "new@example.org", int(time.time()) + 3600))
    assert "another list" in env.sent()[0][1].get_content()


def test_unsubscribe_token_does_not_work_by_mail(tmp_path):
    env = Env(tmp_path)
    _bad(env, TK.make(env.key(), "unsubscribe", CLUB, "joined@example.edu", 0))
    assert "not for" in env.sent()[0][1].get_content()


def test_missing_key_defers(tmp_path):
    env = Env(tmp_path, key=False)
    with pytest.raises(Defer):
        env.deliver(JOIN, mail())
    assert env.sent() == []


# --------------------------------------------------------------------------
# RFC 3834: no confirmation-spam cannon


@pytest.mark.parametrize("headers, sender, frm", [
    ({"Auto_Submitted": "auto-replied"}, "new@example.org", "new@example.org"),
    ({"Precedence": "bulk"}, "new@example.org", "new@example.org"),
    ({"List_Id": "<other.example.org>"}, "new@example.org", "new@example.org"),
    ({}, "", "new@example.org"),  # a null envelope sender
    ({}, "new@example.org", "club@lists.example.edu"),  # From one of our lists
    ({}, "new@example.org", "students-request@lists.example.edu"),
    ({}, "new@example.org", "MAILER-DAEMON@example.org"),
])
def test_no_answer_where_rfc_3834_says_none(tmp_path, headers, sender, frm):
    env = Env(tmp_path)
    line = env.deliver(JOIN, mail(frm=frm, **headers), sender=sender)
    assert env.sent() == [] and "not answered" in line


def test_automatic_reply_confirms_nothing(tmp_path):
    env = Env(tmp_path)
    env.deliver(JOIN, mail())
    token = token_of(env.sent()[0][1])
    line = env.deliver(REQUEST, mail(f"Re: confirm {token}", Auto_Submitted="auto-replied"))
    assert env.requests() == [] and "ignored" in line
    env.deliver(REQUEST, mail(f"Delivery failure: confirm {token}"), sender="")  # a bounce quoting it
    assert env.requests() == [] and len(env.sent()) == 1


def test_notice_limit_per_address(tmp_path):
    env = Env(tmp_path)  # notice_limit 2 a day (tests/mail SETTINGS)
    lines = [env.deliver(JOIN, mail()) for _ in range(3)]
    assert len(env.sent()) == 2 and "notice limit" in lines[2]


# --------------------------------------------------------------------------
# Routing


def test_join_address_of_a_roster_list_is_no_list(tmp_path):
    env = Env(tmp_path)
    with pytest.raises(NoSuchList):
        env.deliver("students-join@lists.example.edu", mail())


def test_unknown_request_goes_to_the_owners(tmp_path):
    env = Env(tmp_path)
    line = env.deliver(REQUEST, mail("Question about the club", "When do you meet?"))
    [(argv, msg)] = env.sent()
    assert envelope(argv) == ("new@example.org", ["owner@example.edu"]) and "forwarded" in line
    assert str(msg["Subject"]) == "Question about the club"


def test_help_is_answered_on_an_opt_in_list(tmp_path):
    env = Env(tmp_path)
    env.deliver(REQUEST, mail("help"))
    [(argv, msg)] = env.sent()
    assert envelope(argv) == ("<>", ["new@example.org"])
    assert JOIN in msg.get_content() and LEAVE in msg.get_content()


def test_roster_list_request_mail_goes_to_the_owners_as_before(tmp_path):
    env = Env(tmp_path)
    env.deliver("students-request@lists.example.edu", mail("join"))
    [(argv, _)] = env.sent()
    assert envelope(argv) == ("new@example.org", ["prof@example.edu"])


def test_staging_valve_redirects_answers(tmp_path):
    env = Env(tmp_path, redirect_to="staging@example.edu")
    env.deliver(JOIN, mail())
    [(argv, msg)] = env.sent()
    assert envelope(argv) == ("<>", ["staging@example.edu"])
    assert "new@example.org" in str(msg["X-Listfilter-Redirected-Recipients"])


# --------------------------------------------------------------------------
# Owner approval


def test_join_with_approval(tmp_path):
    env = Env(tmp_path, approval=True)
    env.deliver(JOIN, mail())
    env.deliver(REQUEST, mail(f"Re: confirm {token_of(env.sent()[0][1])}"))
    [req] = env.requests()
    assert (req.action, req.subject) == ("pending", "new@example.org")
    _, owners, joiner = env.sent()
    assert envelope(owners[0]) == ("<>", ["owner@example.edu"])
    text = owners[1].get_content()
    admit, deny = TK.find(text)
    assert TK.verify(env.key(), admit, time.time()).action == "admit"
    assert TK.verify(env.key(), deny, time.time()).action == "deny"
    assert owners[1]["From"].addresses[0].addr_spec == REQUEST  # the owner's reply must come back here
    assert envelope(joiner[0])[1] == ["new@example.org"] and "owners" in joiner[1].get_content()
    env.deliver(REQUEST, mail(f"Re: deny {deny}", frm="owner@example.edu"), sender="owner@example.edu")
    actions = sorted((r.action, r.by) for r in env.requests())
    assert actions == [("deny", "owner@example.edu"), ("pending", "new@example.org")]
    assert json.loads((sorted((env.spool / "requests").glob("*.json"))[0]).read_text())["list_address"] == CLUB


def test_a_token_shaped_string_in_a_question_still_reaches_the_owners(tmp_path):
    env = Env(tmp_path)
    fake = TK.make(b"z" * 32, "join", CLUB, "x@example.org", 0)
    line = env.deliver(REQUEST, mail("A question", f"What does {fake} mean?"))
    [(argv, _)] = env.sent()
    assert envelope(argv) == ("new@example.org", ["owner@example.edu"]) and "forwarded" in line


def test_dry_run_sends_and_writes_nothing(tmp_path, capsys):
    env = Env(tmp_path)
    argv = ["--snapshot", str(env.snapshot), "--sender", "new@example.org", "--recipient", JOIN, "--dry-run"]
    D.deliver(D.parse(argv, D.OPTIONS, D.FLAGS), mail())
    out = capsys.readouterr().out
    assert "join-confirm sent to <new@example.org>" in out and "Subject: confirm" in out
    assert env.sent() == [] and not (env.spool / "notices").exists()
