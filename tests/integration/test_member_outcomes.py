"""Each member's outcome, end to end through a real Postfix: the relay accepts one member, defers one
(450) and refuses one (550); ``listfilter sync`` follows Postfix's own log (its maillog_file) into the
store; the store, ``listfilter log`` and the admin page say "1 sent · 1 deferred · 1 bounced" with the
relay's replies. Once the deferred member is accepted on retry, the next sync says "2 sent · 1 bounced".

One private Postfix instance (tests.harness.postfix), the aiosmtpd sink as its relayhost, the real
deliver pipe (as the ``listfilter`` user, whose pickup lines name its uid), the mail log in SQLite.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from listfilter.admin import app as W
from listfilter.admin import auth as A
from listfilter.store import database as ST
from listfilter.store import deliveries as DV
from listfilter.sync import config as C
from listfilter.sync import follow as FO

from ..conftest import REPO
from ..harness.postfix import PostfixInstance, ensure_user, swaks, traversable_tmpdir
from ..harness.smtpsink import SMTPSink
from ..harness.wiring import install_programs, listfilter_spool, wire

pytestmark = pytest.mark.integration

DOMAIN = "lists.example.edu"
CLUB = f"club@{DOMAIN}"
POSTER = "prof@example.edu"
ANN, BEN, CAT = "ann@example.org", "ben@example.org", "cat@example.org"
BUSY = "450 4.2.0 <ben@example.org>: mailbox busy, try again later"
GONE = "550 5.1.1 <cat@example.org>: no such user <b>here</b>"
PASSWORD = "correct horse battery"

SENDMAIL_WRAPPER = """#!/bin/sh
MAIL_CONFIG="{config_dir}" exec /usr/sbin/sendmail "$@"
"""


class Site:
    def __init__(self, base: Path, pf: PostfixInstance, sink: SMTPSink, config: Path):
        self.base, self.pf, self.sink, self.config_path = base, pf, sink, config
        self.config = C.load(config)

    def listfilter(self, *args: str) -> subprocess.CompletedProcess:
        proc = subprocess.run([sys.executable, "-m", "listfilter", "--config", str(self.config_path), *args],
                              capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0 and "warning" not in proc.stderr, proc.stdout + proc.stderr
        return proc

    def post(self, subject: str, msgid: str) -> None:
        raw = (f"From: Pat Prof <{POSTER}>\nTo: {CLUB}\nSubject: {subject}\nMessage-ID: <{msgid}>\n"
               "MIME-Version: 1.0\nContent-Type: text/plain; charset=utf-8\n\nSee you on Monday.").encode()
        path = self.base / f"msg-{time.time_ns()}.eml"
        path.write_bytes(raw)
        proc = swaks("--to", CLUB, "--from", POSTER, "--data", f"@{path}", port=self.pf.smtpd_port)
        assert "queued as" in proc.stdout + proc.stderr, proc.stdout + proc.stderr

    def event_id(self, msgid: str) -> str:
        with ST.open_store(self.config.store) as store:
            [e] = [e for e in store.entries(limit=100) if e.message_id == f"<{msgid}>"]
            return e.id

    def outcomes(self, event_id: str) -> dict[str, DV.Delivery]:
        with ST.open_store(self.config.store) as store:
            return {d.recipient: d for d in DV.of_event(store, event_id)}

    def page(self, path: str) -> str:
        client = W.create_app(self.config).test_client()
        html = client.get("/login").get_data(as_text=True)
        token = re.search(r'name="csrf_token" value="([^"]+)"', html).group(1)
        client.post("/login", data={"csrf_token": token, "username": "dean@example.edu", "password": PASSWORD,
                                    "next": "/email"})
        response = client.get(path)
        assert response.status_code == 200, response.get_data(as_text=True)
        return response.get_data(as_text=True)


@pytest.fixture(scope="module")
def site():
    ensure_user("listfilter")
    with traversable_tmpdir() as base, SMTPSink() as sink:
        program = install_programs(base / "bin")
        pf = PostfixInstance(base / "postfix", relay_port=sink.port)
        wrapper = base / "bin" / "sendmail"
        wrapper.write_text(SENDMAIL_WRAPPER.format(config_dir=pf.config_dir))
        wrapper.chmod(0o755)
        config_path = base / "lists.toml"
        config_path.write_text(f"""
[site]
timezone = "America/Chicago"
state_dir = "{base / 'state'}"
sendmail = "{wrapper}"
owners = ["{POSTER}"]
[postfix]
config_directory = "{pf.config_dir}"
map_type = "hash"
log_file = "{pf.maillog_path}"
[roster]
source = "csv"
csv = "{REPO / 'docs/example/roster.csv'}"
[web]
admins = ["dean@example.edu"]
[web.accounts]
"dean@example.edu" = "{A.hash_password(PASSWORD)}"

[domains."{DOMAIN}"]
course = "CS 199"

[lists.club]
display_name = "Flying Club"
members = {{ emails = ["{ANN}", "{BEN}", "{CAT}"] }}
posters = ["{POSTER}"]
""")
        listfilter_spool(wire(pf, config_path, program))
        pf.start()
        try:
            s = Site(base, pf, sink, config_path)
            s.listfilter("db", "upgrade")
            s.listfilter("sync")
            yield s
        finally:
            pf.stop()


def test_sent_deferred_and_bounced_members_then_the_retry(site):
    site.sink.reject.update({BEN: BUSY, CAT: GONE})
    site.post("Saturday's flight", "outcomes-1@example.edu")
    site.pf.wait_log(r"to=<ben@example\.org>.*status=deferred", timeout=30)
    site.pf.wait_log(r"to=<cat@example\.org>.*status=bounced", timeout=30)
    site.pf.wait_log(r"to=<ann@example\.org>.*status=sent", timeout=30)
    [copy] = re.findall(r"(\w+): uid=\d+ from=<club-bounces@lists\.example\.edu>", site.pf.maillog())

    out = site.listfilter("sync").stdout
    # Postfix may have tried ben again already: deferred once or more
    assert re.search(r"postfix log: \d+ lines read, \d+ member outcomes \(1 sent, \d+ deferred, 1 bounced\),"
                     r" 1 reinjected copy matched", out), out
    ident = site.event_id("outcomes-1@example.edu")
    got = site.outcomes(ident)
    assert {r: d.status for r, d in got.items()} == {ANN: "sent", BEN: "deferred", CAT: "bounced"}
    assert {d.queue_id for d in got.values()} == {copy}
    assert got[ANN].dsn == "2.0.0" and got[ANN].reply == "250 2.0.0 Message accepted for delivery"
    assert got[BEN].dsn == "4.2.0" and BUSY in got[BEN].reply and "in reply to RCPT TO command" in got[BEN].reply
    assert got[CAT].dsn == "5.1.1" and GONE in got[CAT].reply
    assert all(d.relay.startswith("127.0.0.1[127.0.0.1]:") for d in got.values())
    with ST.open_store(site.config.store) as store:
        assert DV.queue_ids(store, [ident]) == {ident: [copy]}

    [row] = json.loads(site.listfilter("log", "--json", "--members", "deferred").stdout)
    assert row["outcome"] == "1 sent · 1 deferred · 1 bounced" and row["reinjected_queue_ids"] == [copy]
    line = site.listfilter("log").stdout.splitlines()[0]
    assert line.split("\t")[4] == "3 (1 sent · 1 deferred · 1 bounced)"

    html = site.page("/email")
    assert ">1 sent · 1 deferred · 1 bounced</span>" in html
    assert ident in site.page("/email?members=bounced") and ident in site.page("/email?members=deferred")
    detail = site.page(f"/email/{ident}")
    assert "1 sent · 1 deferred · 1 bounced" in detail and f"<code>{copy}</code>" in detail
    assert "no such user &lt;b&gt;here&lt;/b&gt;" in detail and "<b>here</b>" not in detail  # the reply, escaped
    assert "mailbox busy, try again later" in detail

    # the relay takes ben now; Postfix retries; the next sync reads the retry
    del site.sink.reject[BEN]
    site.pf.flush()
    site.pf.wait_log(r"to=<ben@example\.org>.*status=sent", timeout=30)
    assert site.pf.wait_queue_empty(timeout=30)
    out = site.listfilter("sync").stdout
    # ben's retries: deferred again (qmgr may have tried before the flush), then sent
    assert re.search(r"postfix log: \d+ lines read, \d+ member outcomes? \(1 sent(, \d+ deferred)?\)$", out, re.M), out
    got = site.outcomes(ident)
    assert {r: d.status for r, d in got.items()} == {ANN: "sent", BEN: "sent", CAT: "bounced"}
    assert got[BEN].first_at < got[BEN].at  # deferred first, sent on the retry
    assert ">2 sent · 1 bounced</span>" in site.page("/email")
    assert ident not in site.page("/email?members=deferred") and ident in site.page("/email?members=not-sent")
    assert site.listfilter("log").stdout.splitlines()[0].split("\t")[4] == "3 (2 sent · 1 bounced)"

    # nothing new: the next sync reads nothing again
    assert "member outcome" not in site.listfilter("sync").stdout
    state = json.loads(FO.position_path(site.config).read_text())
    assert state["log"]["path"] == str(site.pf.maillog_path)
    assert state["log"]["offset"] == site.pf.maillog_path.stat().st_size and state["open"] == []
