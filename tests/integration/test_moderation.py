"""Held posts end to end through a real Postfix: hold, approve by reply, release once, discard, expire.

swaks → smtpd (the policy service lets a sender the list would hold through) → pipe(8) →
listfilter-deliver, which holds a non-member's post and tells the poster and the owners (once: the same
message sent again is recognised as held); the owner
replies with the approve token through Postfix; the real ``listfilter sync`` takes the post into
the store, applies the decision, installs a snapshot that approves it and hands it back to Postfix,
and deliver lets it through to the members exactly once. A second held post is discarded through
the store (the admin page's path), a third expires with a notice to its poster.

One private Postfix (as in test_mailflow.py), a CSV roster, a SQLite store.
"""

from __future__ import annotations

import datetime as dt
import email
import email.policy
import subprocess
import sys
import time
from pathlib import Path

import pytest

from listfilter.common import tokens as TK
from listfilter.store import database as ST
from listfilter.store import moderation as MOD
from listfilter.sync import config as C

from ..harness.postfix import PostfixInstance, ensure_user, swaks, traversable_tmpdir
from ..harness.smtpsink import SMTPSink
from ..harness.wiring import STORE_BACKENDS, install_programs, listfilter_spool, store_table, wire

pytestmark = pytest.mark.integration

DOMAIN = "lists.example.edu"
LIST = f"students@{DOMAIN}"
REQUEST = f"students-request@{DOMAIN}"
OWNER = "prof@example.edu"
STRANGER = "stranger@example.org"
MEMBERS = {OWNER, "alice@example.edu", "bob@example.edu"}
WEB_URL = "https://lists.example.edu"

# sync hands approved posts and sends expiry notices with site.sendmail: into this private instance
SENDMAIL_WRAPPER = """#!/bin/sh
MAIL_CONFIG="{config_dir}" exec /usr/sbin/sendmail "$@"
"""


class Site:
    def __init__(self, base: Path, pf: PostfixInstance, sink: SMTPSink, config: Path, wrapper: Path):
        self.base, self.pf, self.sink, self.config, self.wrapper = base, pf, sink, config, wrapper

    def cli(self, *args: str) -> str:
        proc = subprocess.run([sys.executable, "-m", "listfilter", "--config", str(self.config), *args],
                              capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        return proc.stdout + proc.stderr

    def sync(self) -> str:
        return self.cli("sync")

    def send(self, *, to: str, sender: str, subject: str, msgid: str, body: str = "Hello.\n",
             frm: str | None = None) -> str:
        raw = (f"From: {frm or sender}\nTo: {to}\nSubject: {subject}\nMessage-ID: {msgid}\n"
               f"Date: Tue, 24 Nov 2026 10:00:00 -0600\n\n{body}")
        path = self.base / f"msg-{time.time_ns()}.eml"
        path.write_text(raw.rstrip("\n"))
        proc = swaks("--to", to, "--from", sender, "--data", f"@{path}", port=self.pf.smtpd_port)
        out = proc.stdout + proc.stderr
        assert "<-  250" in out and "queued as" in out, out
        return out

    def settle(self) -> None:
        assert self.pf.wait_queue_empty(timeout=30), (self.pf.queue(), self.pf.log_tail(40))

    def received(self, count: int) -> list:
        """Wait for ``count`` messages at the sink; each (envelope sender, recipients, parsed message)."""
        assert self.sink.wait_for(count, timeout=30), (self.sink.snapshot(), self.pf.log_tail(40))
        self.settle()
        got = self.sink.snapshot()
        assert len(got) == count, [(m.mail_from, m.rcpt_tos) for m in got]
        return [(m.mail_from, sorted(r.lower() for r in m.rcpt_tos),
                 email.message_from_bytes(m.data, policy=email.policy.default)) for m in got]

    def nothing_more(self) -> None:
        """Postfix has nothing left, and the sink got nothing (deliver decided by then)."""
        self.settle()
        time.sleep(1)
        assert self.sink.snapshot() == [], [(m.mail_from, m.rcpt_tos) for m in self.sink.snapshot()]

    def store(self):
        return ST.open_store(C.load(self.config).store)

    def held(self, message_id: str):
        with self.store() as store:
            [post] = [p for p in MOD.held_posts(store, status=("held",) + MOD.DECIDED_STATUSES)
                      if p.message_id == message_id]
            return post


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
                                         f"{OWNER},Pat Prof,teacher,true,current,CS 199\n"
                                         "alice@example.edu,Alice,student,true,current,CS 199\n"
                                         "bob@example.edu,Bob,student,true,current,CS 199\n")
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
[domains."{DOMAIN}"]
course = "CS 199"
[lists.students]
display_name = "CS 199 Students"
members = {{ roles = ["student", "teacher"] }}
posters = ["{OWNER}"]
non_member_posts = "hold"
hold_days = 3
""")
        listfilter_spool(wire(pf, config, program))
        pf.start()
        try:
            s = Site(base, pf, sink, config, wrapper)
            s.cli("db", "upgrade")
            s.sync()
            yield s
        finally:
            pf.stop()


def test_hold_approve_release_once_discard_expire(site):
    # 1. a non-member posts: smtpd takes it (no 550), deliver holds it; the owners and the poster are told
    out = site.send(to=LIST, sender=STRANGER, subject="Room for one more?", msgid="<h1@example.org>",
                    frm=f"Stranger <{STRANGER}>", body="Hello, is there room for one more?\n")
    assert "550" not in out
    got = site.received(2)
    by_rcpt = {tuple(rcpts): (mail_from, msg) for mail_from, rcpts, msg in got}
    assert set(by_rcpt) == {(OWNER,), (STRANGER,)}  # no copy to the members
    mail_from, owners = by_rcpt[(OWNER,)]
    assert mail_from == "" and owners["Reply-To"] == REQUEST
    text = owners.get_body(("plain",)).get_content()
    assert STRANGER in text and "Room for one more?" in text and "    Hello, is there room for one more?" in text
    assert f"{WEB_URL}/held/" in text
    approve = TK.find(str(owners["Subject"]))
    assert len(approve) == 1 and f"approve {approve[0]}" in text
    mail_from, poster = by_rcpt[(STRANGER,)]
    assert mail_from == "" and "is being held for the list's owners" in poster.get_body(("plain",)).get_content()
    site.sink.clear()
    # the same message again (the poster sends it twice): already held, so no second post and no notices
    site.send(to=LIST, sender=STRANGER, subject="Room for one more?", msgid="<h1@example.org>",
              frm=f"Stranger <{STRANGER}>", body="Hello, is there room for one more?\n")
    site.nothing_more()
    assert len(list((site.base / "state" / "spool" / "held").glob("*.json"))) == 1

    # 2. the owner replies through Postfix; sync takes the post in, approves it and releases it
    site.send(to=REQUEST, sender=OWNER, subject=f"Re: {owners['Subject']}", msgid="<reply-1@example.edu>",
              body="> a message to the mailing list\n")
    site.settle()
    assert list((site.base / "state" / "spool" / "requests").glob("*.json"))
    out = site.sync()
    assert "moderation: approve by prof@example.edu" in out and "released the approved post" in out, out
    assert "moderation: 1 held post taken in from the spool" in out, out  # one post, however often it came
    got = site.received(3)
    assert sorted(r for _, rcpts, _ in got for r in rcpts) == sorted(MEMBERS)  # the members, each once
    for mail_from, rcpts, msg in got:
        assert mail_from == f"students-bounces+{rcpts[0].replace('@', '=')}@{DOMAIN}"
        assert msg["Message-ID"] == "<h1@example.org>" and "X-Listfilter-Approved" not in msg
        assert msg["From"].addresses[0].addr_spec == STRANGER
    post = site.held("<h1@example.org>")
    assert post.status == "released" and post.decided_by == f"{OWNER} (mail)"
    site.sink.clear()

    # 3. exactly once: the next sync releases nothing more, and a second copy is a duplicate
    assert "released" not in site.sync()
    site.nothing_more()
    with site.store() as store:
        message = MOD.get(store, post.id).message
    resend = subprocess.run([str(site.wrapper), "-G", "-i", "-f", STRANGER, "--", LIST],
                            input=f"X-Listfilter-Approved: {post.id}\n".encode() + message, capture_output=True)
    assert resend.returncode == 0, resend.stderr
    site.nothing_more()
    site.sync()  # the spool's events into the mail log
    with site.store() as store:
        [row] = [e for e in store.entries(limit=100) if e.message_id == "<h1@example.org>"]
        assert (row.status, row.rule, row.recipient_count) == ("delivered", "approved", 3)

    # 4. a second held post is discarded on the admin page's path (the store); nothing reaches the members
    site.send(to=LIST, sender=STRANGER, subject="Second try", msgid="<h2@example.org>")
    site.received(2)
    site.sink.clear()
    site.sync()
    with site.store() as store:
        result = MOD.decide(store, site.held("<h2@example.org>").id, "discard", OWNER, "web",
                            dt.datetime.now(dt.timezone.utc))
    assert result.changed and result.status == "discarded"
    site.sync()
    site.nothing_more()
    assert site.held("<h2@example.org>").status == "discarded"

    # 5. a third expires (the clock moved on: its expiry is put in the past) and its poster is told
    site.send(to=LIST, sender=STRANGER, subject="Third try", msgid="<h3@example.org>")
    site.received(2)
    site.sink.clear()
    site.sync()
    third = site.held("<h3@example.org>")
    with site.store() as store, store.transaction():
        moved = dt.datetime.now(dt.timezone.utc) - dt.timedelta(days=3, minutes=1)
        store._execute("UPDATE held_posts SET held_at = ?, expires_at = ? WHERE id = ?",
                       (store._ts(moved), store._ts(moved + dt.timedelta(days=3)), third.id))
    out = site.sync()
    assert "1 held post expired" in out and f"told <{STRANGER}>" in out, out
    [(mail_from, rcpts, notice)] = site.received(1)
    assert (mail_from, rcpts) == ("", [STRANGER]) and notice["Auto-Submitted"] == "auto-replied"
    assert "nobody approved it within\n3 days" in notice.get_body(("plain",)).get_content().replace("\r\n", "\n")
    site.sink.clear()
    site.sync()
    site.nothing_more()  # told once
    assert site.held("<h3@example.org>").status == "expired"
