"""An opt-in list end to end through a real Postfix, the way a Mailman administrator checks one.

swaks → smtpd → pipe(8) → listfilter-deliver for -join, -request and -leave
mail; the answers go back through sendmail and Postfix to the relay sink;
the test replies to the confirmation through Postfix, runs the real
``listfilter sync`` (which applies the spool's requests and sends the
welcome and goodbye), posts, leaves by mail, and finally leaves with an
RFC 8058 one-click POST against the real waitress server. After each step:
what the sink received, and what ``listfilter members`` shows. A second
list with ``approval = true`` shows the owner's admit reply doing the same.

One private Postfix (as in test_mailflow.py), a CSV roster, a SQLite store.
"""

from __future__ import annotations

import email
import email.policy
import http.client
import subprocess
import sys
import time
from pathlib import Path

import pytest

from listfilter.admin import auth as A
from listfilter.common import tokens as TK

from ..harness.postfix import PostfixInstance, ensure_user, swaks, traversable_tmpdir
from ..harness.smtpsink import SMTPSink
from ..harness.wiring import STORE_BACKENDS, install_programs, listfilter_spool, store_table, wire

pytestmark = pytest.mark.integration

DOMAIN = "lists.example.edu"
CLUB = f"club@{DOMAIN}"
JOIN, LEAVE, REQUEST = f"club-join@{DOMAIN}", f"club-leave@{DOMAIN}", f"club-request@{DOMAIN}"
JOINER = "newbie@example.org"
OWNER = "prof@example.edu"
WEB_URL = "https://lists.example.edu"

# sync sends the welcome and goodbye with site.sendmail: into this private instance, like deliver's answers
SENDMAIL_WRAPPER = """#!/bin/sh
MAIL_CONFIG="{config_dir}" exec /usr/sbin/sendmail "$@"
"""


class Site:
    def __init__(self, base: Path, pf: PostfixInstance, sink: SMTPSink, config: Path):
        self.base, self.pf, self.sink, self.config = base, pf, sink, config

    def cli(self, *args: str) -> str:
        proc = subprocess.run([sys.executable, "-m", "listfilter", "--config", str(self.config), *args],
                              capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        return proc.stdout

    def sync(self) -> str:
        return self.cli("sync")

    def members(self) -> str:
        return self.cli("members", CLUB)

    def send(self, *, to: str, sender: str, subject: str, body: str = "Hello.\n", frm: str | None = None,
             msgid: str | None = None) -> str:
        msgid = msgid or f"<{time.time_ns()}@example.org>"
        raw = (f"From: {frm or sender}\nTo: {to}\nSubject: {subject}\nMessage-ID: {msgid}\n"
               f"Date: Tue, 24 Nov 2026 10:00:00 -0600\n\n{body}")
        path = self.base / f"msg-{time.time_ns()}.eml"
        path.write_text(raw.rstrip("\n"))
        proc = swaks("--to", to, "--from", sender, "--data", f"@{path}", port=self.pf.smtpd_port)
        out = proc.stdout + proc.stderr
        assert "<-  250" in out and "queued as" in out, out
        return out

    def settle(self) -> None:
        assert self.pf.wait_queue_empty(timeout=30), (self.pf.queue(), self.pf.log_tail(30))

    def received(self, count: int) -> list:
        """Wait for ``count`` messages at the sink; each (envelope sender, recipients, parsed message)."""
        assert self.sink.wait_for(count, timeout=30), (self.sink.snapshot(), self.pf.log_tail(40))
        self.settle()
        got = self.sink.snapshot()
        assert len(got) == count, [(m.mail_from, m.rcpt_tos) for m in got]
        return [(m.mail_from, [r.lower() for r in m.rcpt_tos],
                 email.message_from_bytes(m.data, policy=email.policy.default)) for m in got]


@pytest.fixture(scope="module", params=STORE_BACKENDS)
def site(request):
    ensure_user("listfilter")
    with traversable_tmpdir() as base, SMTPSink() as sink, store_table(request.param, base) as store:
        program = install_programs(base / "bin")
        pf = PostfixInstance(base / "postfix", relay_port=sink.port)
        wrapper = base / "bin" / "sendmail"
        wrapper.write_text(SENDMAIL_WRAPPER.format(config_dir=pf.config_dir))
        wrapper.chmod(0o755)
        (base / "roster.csv").write_text("email,name,enrollment_type,active,semester,course\n"
                                         f"{OWNER},Pat Prof,teacher,true,current,CS 199\n")
        config = base / "lists.toml"
        config.write_text(f"""
[site]
dmarc = "off"  # no DMARC lookups: this test starts no DNS server (tests/conftest.py)
timezone = "America/Chicago"
state_dir = "{base / 'state'}"
sendmail = "{wrapper}"
owners = ["{OWNER}"]
notice_limit = 100
[postfix]
config_directory = "{pf.config_dir}"
map_type = "hash"
[roster]
source = "csv"
csv = "{base / 'roster.csv'}"
{store}[web]
url = "{WEB_URL}"
[web.accounts]
"{OWNER}" = "{A.hash_password('not used here')}"
[domains."{DOMAIN}"]
course = "CS 199"
[lists.club]
display_name = "Chess Club"
description = "Anyone who likes chess"
members = {{ optin = true, eligible = "anyone" }}
posters = ["{OWNER}"]
[lists.board]
display_name = "Club Board"
members = {{ optin = true, eligible = "anyone", approval = true }}
posters = ["{OWNER}"]
""")
        listfilter_spool(wire(pf, config, program))
        pf.start()
        try:
            s = Site(base, pf, sink, config)
            s.cli("db", "upgrade")
            s.sync()
            yield s
        finally:
            pf.stop()


def confirm_token(msg) -> str:
    [token] = TK.find(str(msg["Subject"]))
    assert str(msg["Subject"]) == f"confirm {token}"
    return token


def test_join_post_leave_and_one_click(site):
    # the maps: -join and -leave are addresses of the opt-in list, routed to listfilter
    maps = site.base / "state" / "postfix"
    recipients = (maps / "recipients").read_text()
    assert JOIN in recipients and LEAVE in recipients
    assert JOINER not in site.members()

    # 1. a join request: the sink gets the confirmation, with the null sender, for the From address
    site.send(to=JOIN, sender=JOINER, subject="please add me", frm=f"Nina Newbie <{JOINER}>")
    [(mail_from, rcpts, msg)] = site.received(1)
    assert (mail_from, rcpts) == ("", [JOINER])
    assert msg["From"].addresses[0].addr_spec == REQUEST and msg["Auto-Submitted"] == "auto-replied"
    token = confirm_token(msg)
    assert JOINER not in site.members()  # nothing changes before the reply
    site.sink.clear()

    # 2. the reply, through Postfix: a request in the spool; sync applies it and sends the welcome
    site.send(to=REQUEST, sender=JOINER, subject=f"Re: confirm {token}", frm=f"Nina Newbie <{JOINER}>",
              body="> someone, hopefully you, asked\n")
    site.settle()
    assert list((site.base / "state" / "spool" / "requests").glob("*.json"))
    out = site.sync()
    assert f"join of {JOINER} for {CLUB}" in out and "welcome sent" in out, out
    [(mail_from, rcpts, welcome)] = site.received(1)
    assert (mail_from, rcpts) == ("", [JOINER]) and "welcome" in welcome.get_content().lower()
    shown = site.members()
    assert JOINER in shown and "joined" in shown, shown
    site.sink.clear()

    # 3. a post reaches the new member, with the RFC 2369 / RFC 8058 unsubscribe headers
    site.send(to=CLUB, sender=OWNER, subject="Tournament on Friday", frm=f"Pat Prof <{OWNER}>",
              msgid="<post-1@example.edu>")
    [(mail_from, rcpts, post)] = site.received(1)
    assert rcpts == [JOINER] and mail_from == f"club-bounces+{JOINER.replace('@', '=')}@{DOMAIN}"
    unsubscribe = str(post["List-Unsubscribe"])
    assert unsubscribe.startswith(f"<mailto:{LEAVE}?subject=leave>, <{WEB_URL}/unsubscribe/"), unsubscribe
    assert post["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    link = unsubscribe.split(", <", 1)[1].rstrip(">")
    site.sink.clear()

    # 4. leave by mail, and its confirmation
    site.send(to=LEAVE, sender=JOINER, subject="bye")
    [(mail_from, rcpts, msg)] = site.received(1)
    assert (mail_from, rcpts) == ("", [JOINER])
    token = confirm_token(msg)
    site.sink.clear()
    site.send(to=REQUEST, sender=JOINER, subject=f"Re: confirm {token}")
    site.settle()
    out = site.sync()
    assert f"leave of {JOINER} for {CLUB}" in out and "goodbye sent" in out, out
    [(_, rcpts, goodbye)] = site.received(1)
    assert rcpts == [JOINER] and "left" in goodbye.get_content()
    assert JOINER not in site.members()
    site.sink.clear()

    # 5. join again, then leave with the one-click link of the earlier post (RFC 8058)
    site.send(to=REQUEST, sender=JOINER, subject="join")
    [(_, _, msg)] = site.received(1)
    site.sink.clear()
    site.send(to=REQUEST, sender=JOINER, subject=f"Re: confirm {confirm_token(msg)}")
    site.settle()
    site.sync()
    site.received(1)  # the welcome
    assert JOINER in site.members()
    site.sink.clear()
    one_click(site, link)
    changes = site.cli("members", "changes", CLUB)
    assert "one-click" in changes.splitlines()[-1] or "one-click" in changes, changes
    assert JOINER not in site.members()  # the store has the leave; the list's copies stop at the next sync
    out = site.sync()
    assert f"goodbye sent to {JOINER}" in out, out
    [(_, rcpts, _)] = site.received(1)
    assert rcpts == [JOINER]
    assert JOINER not in site.members()


def one_click(site: Site, link: str) -> None:
    """GET shows a page and changes nothing; the RFC 8058 POST (no cookie, no CSRF token) leaves."""
    from .test_web_server import web_server

    path = link.removeprefix(WEB_URL)
    with web_server(site.config, site.base / "web.log") as port:
        def request(method: str, target: str, body: str = "") -> tuple[int, str]:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
            headers = {"Content-Type": "application/x-www-form-urlencoded"} if method == "POST" else {}
            conn.request(method, target, body=body, headers=headers)
            resp = conn.getresponse()
            text = resp.read().decode("utf-8", "replace")
            conn.close()
            return resp.status, text

        status, page = request("GET", path)
        assert status == 200 and 'method="post"' in page and JOINER in page, page
        assert "one-click" not in site.cli("members", "changes", CLUB)  # a GET changes nothing
        status, _ = request("POST", path[:-3] + ("AAA" if not path.endswith("AAA") else "BBB"),
                            "List-Unsubscribe=One-Click")  # forged
        assert status == 400
        assert "one-click" not in site.cli("members", "changes", CLUB)
        status, page = request("POST", path, "List-Unsubscribe=One-Click")  # no cookie, no CSRF token
        assert status == 200 and "has left" in page, page


def test_a_join_that_needs_an_owner(site):
    """approval = true: the confirmed join waits; the owner's reply with the admit code lets them in."""
    board, board_request = f"board@{DOMAIN}", f"board-request@{DOMAIN}"
    site.sink.clear()
    site.send(to=f"board-join@{DOMAIN}", sender=JOINER, subject="join")
    [(_, _, msg)] = site.received(1)
    site.sink.clear()
    site.send(to=board_request, sender=JOINER, subject=f"Re: confirm {confirm_token(msg)}")
    got = site.received(2)
    [(_, _, admit_msg)] = [g for g in got if g[1] == [OWNER]]
    [(_, _, pending)] = [g for g in got if g[1] == [JOINER]]
    assert "owners" in pending.get_content()
    admit, deny = TK.find(admit_msg.get_content())
    assert admit_msg["From"].addresses[0].addr_spec == board_request
    out = site.sync()
    assert "waits for an owner" in out and JOINER not in site.cli("members", board), out
    site.sink.clear()
    site.send(to=board_request, sender=OWNER, subject=f"Re: admit {admit}")
    site.settle()
    out = site.sync()
    assert "admitted" in out and f"welcome sent to {JOINER}" in out, out
    [(_, rcpts, _)] = site.received(1)
    assert rcpts == [JOINER]
    shown = site.cli("members", board)
    assert JOINER in shown and "joined" in shown, shown
    changes = site.cli("members", "changes", board)
    assert OWNER in changes, changes
