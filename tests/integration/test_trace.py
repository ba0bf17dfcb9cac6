"""`listfilter trace` through a real Postfix: a post to a list of three members, whose relay (the sink)
accepts one, defers one with 451 (then accepts it on Postfix's retry) and refuses one with 550.

The trace, by Message-ID, by the inbound queue id, by the reinjected queue id, by the relay's own
"queued as" id and by the store's event id, must show the same facts: the inbound queue id (as
swaks saw Postfix answer), the policy service's verdict at RCPT (smtpd's "info: RCPT from" line
for its action=INFO answer, in Postfix's own maillog_file), the pipe delivery to listfilter,
listfilter's decision and rule (the store's record: this test host has no syslog daemon, so
listfilter's own syslog line is lost), the queue id of the copy listfilter handed back (as the
Received header the relay got names it), and each member's every attempt with the relay's reply.
"""

from __future__ import annotations

import email
import email.policy
import grp
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from listfilter.store import database as ST
from listfilter.sync import config as C

from ..harness.postfix import PostfixInstance, ensure_user, swaks, traversable_tmpdir
from ..harness.smtpsink import SMTPSink
from ..harness.wiring import install_programs, listfilter_spool, wire

pytestmark = pytest.mark.integration

DOMAIN = "lists.example.edu"
CLUB = f"club@{DOMAIN}"
POSTER = "prof@example.edu"
OK, LATER, GONE = "ok@example.org", "later@example.org", "gone@example.org"


class Site:
    def __init__(self, base: Path, pf: PostfixInstance, sink: SMTPSink, config: Path):
        self.base, self.pf, self.sink, self.config_path = base, pf, sink, config

    def listfilter(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        proc = subprocess.run([sys.executable, "-m", "listfilter", "--config", str(self.config_path), *args],
                              capture_output=True, text=True, timeout=120)
        if check:
            assert proc.returncode == 0, proc.stderr
        return proc


@pytest.fixture(scope="module")
def site():
    ensure_user("listfilter")
    with traversable_tmpdir() as base, SMTPSink() as sink:
        sink.queued_as = True
        program = install_programs(base / "bin")
        roster = base / "roster.csv"
        roster.write_text("email,name,enrollment_type,active,semester,course\n"
                          f"{POSTER},Pat Prof,teacher,true,current,CS 199\n")
        pf = PostfixInstance(base / "postfix", relay_port=sink.port)
        config = base / "lists.toml"
        config.write_text(f"""
[site]
dmarc = "off"  # no DMARC lookups: this test starts no DNS server
timezone = "America/Chicago"
state_dir = "{base / 'state'}"
sendmail = "/usr/sbin/sendmail"
owners = ["{POSTER}"]
[postfix]
config_directory = "{pf.config_dir}"
map_type = "hash"
log_file = "{pf.maillog_path}"
[roster]
source = "csv"
csv = "{roster}"
[domains."{DOMAIN}"]
course = "CS 199"
[lists.club]
members = {{ emails = ["{OK}", "{LATER}", "{GONE}"] }}
posters = ["{POSTER}"]
""")
        listfilter_spool(wire(pf, config, program))
        pf.start()
        try:
            s = Site(base, pf, sink, config)
            s.listfilter("db", "upgrade")
            s.listfilter("sync")
            yield s
        finally:
            pf.stop()


@pytest.fixture(scope="module")
def post(site):
    """One post, delivered to all three as far as it goes; the facts to check the trace against."""
    message_id = f"<trace-{time.time_ns()}@example.edu>"
    site.sink.reject[LATER] = "451 4.7.1 Greylisted, try again later"
    site.sink.reject[GONE] = "550 5.1.1 No such user here"
    raw = (f"From: Pat Prof <{POSTER}>\nTo: {CLUB}\nSubject: trace me\nMessage-ID: {message_id}\n"
           "MIME-Version: 1.0\nContent-Type: text/plain; charset=utf-8\n\nSee you on Monday.").encode()
    path = site.base / "post.eml"
    path.write_bytes(raw)
    out = swaks("--to", CLUB, "--from", POSTER, "--data", f"@{path}", port=site.pf.smtpd_port)
    inbound = re.search(r"queued as ([0-9A-F]+)", out.stdout + out.stderr).group(1)
    site.pf.wait_log(r"to=<later@example\.org>.*status=deferred", timeout=30)
    del site.sink.reject[LATER]  # Postfix's next try gets through
    assert site.sink.wait_for(2, timeout=60), site.pf.log_tail(40)
    assert site.pf.wait_queue_empty(timeout=60), (site.pf.queue(), site.pf.log_tail(40))
    site.listfilter("sync")  # moves deliver's record into the store
    [copy] = site.sink.messages_for(OK)
    [later] = site.sink.messages_for(LATER)
    received = email.message_from_bytes(copy.data, policy=email.policy.default).get_all("Received")[0]
    reinjected = re.search(r"\bid ([0-9A-F]+)", received).group(1)
    with ST.open_store(C.load(site.config_path).store) as store:
        [entry] = [e for e in store.entries(lists=[CLUB]) if e.message_id == message_id]
    return {"message_id": message_id, "inbound": inbound, "reinjected": reinjected, "event_id": entry.id,
            "rule": entry.rule, "ok_id": copy.queue_id, "later_id": later.queue_id}


def trace_json(site, what: str) -> dict:
    proc = site.listfilter("trace", "--json", what)
    return json.loads(proc.stdout)


def test_the_trace_by_message_id_tells_the_whole_story(site, post):
    text = site.listfilter("trace", post["message_id"]).stdout
    assert f"received {post['inbound']} from localhost[127.0.0.1], envelope from <{POSTER}>" in text, text
    assert re.search(rf"/pipe: to=<{CLUB}> relay=listfilter, delay=[\d.]+, .*dsn=2\.0\.0, status=sent", text), text
    assert re.search(rf"\n\S+ \S+  RCPT <{CLUB}>: accepted by the policy service: the sender may post"
                     rf" \(only {re.escape(POSTER)} may\)\n", text), text
    assert f"listfilter on <{CLUB}>: delivered (3 recipients), rule {post['rule']}  [store, event" in text, text
    assert f"reinjected {post['reinjected']} from <club-bounces@{DOMAIN}>, 3 recipient(s)" in text, text
    assert re.search(rf"{OK} +sent +relay=127\.0\.0\.1\[127\.0\.0\.1\]:{site.sink.port}, dsn=2\.0\.0, .*"
                     rf"\(250 2\.0\.0 Ok: queued as {post['ok_id']}\)", text), text
    lines = text.splitlines()
    i = next(n for n, line in enumerate(lines) if LATER in line)
    assert re.search(r"deferred .*dsn=4\.7\.1.*451 4\.7\.1 Greylisted, try again later", lines[i]), lines[i]
    assert re.search(rf"^\S+ \S+ +sent .*queued as {post['later_id']}\)", lines[i + 1]), lines[i + 1]
    assert re.search(rf"{GONE} +bounced .*dsn=5\.1\.1.*550 5\.1\.1 No such user here", text), text
    assert "non-delivery notification" in text, text


def test_json_has_the_same_facts(site, post):
    trace = trace_json(site, post["message_id"])
    [inbound] = trace["posts"]
    assert inbound["queue_id"] == post["inbound"] and inbound["from"] == POSTER
    assert inbound["client"] == "localhost[127.0.0.1]"
    [pipe] = [d for d in inbound["deliveries"] if d["to"] == CLUB]
    assert pipe["relay"] == "listfilter" and pipe["status"] == "sent" and pipe["dsn"] == "2.0.0"
    [lst] = inbound["lists"]
    assert lst["list"] == CLUB
    policy = lst["policy"]
    assert (policy["source"], policy["reason"], policy["refusals"]) == (
        "log", f"the sender may post (only {POSTER} may)", [])
    # smtpd's own line, as Postfix's maillog_file has it
    assert re.search(rf"/smtpd\[\d+\]: NOQUEUE: {re.escape(policy['text'])}$", site.pf.maillog(), re.M), policy
    assert policy["text"].startswith(f"info: RCPT from localhost[127.0.0.1]: listfilter: {policy['reason']};"
                                     f" from=<{POSTER}> to=<{CLUB}> proto=ESMTP helo=<"), policy
    assert policy["time"] <= inbound["time"]
    assert lst["decision"]["status"] == "delivered" and lst["decision"]["rule"] == post["rule"]
    assert lst["decision"]["event_id"] == post["event_id"]
    [copy] = lst["reinjected"]
    assert copy["queue_id"] == post["reinjected"] and copy["from"] == f"club-bounces@{DOMAIN}"
    members = {m["address"]: m for m in copy["members"]}
    assert set(members) == {OK, LATER, GONE}
    assert [(a["status"], a["queued_as"]) for a in members[OK]["attempts"]] == [("sent", post["ok_id"])]
    assert [a["status"] for a in members[LATER]["attempts"]][0] == "deferred"
    assert members[LATER]["status"] == "sent" and members[LATER]["attempts"][-1]["queued_as"] == post["later_id"]
    assert members[GONE]["status"] == "bounced" and members[GONE]["attempts"][-1]["dsn"] == "5.1.1"
    assert "550 5.1.1 No such user here" in members[GONE]["attempts"][-1]["reply"]
    assert copy["counts"] == {"sent": 2, "bounced": 1}
    assert [n["kind"] for n in copy["notices"]] == ["non-delivery"]


@pytest.mark.parametrize("what", ["inbound", "reinjected", "ok_id", "event_id"])
def test_every_name_of_the_post_gives_the_same_account(site, post, what):
    by_message_id = trace_json(site, post["message_id"])
    other = trace_json(site, post[what])
    assert other["posts"] == by_message_id["posts"]
    assert other["query"]["kind"] == ("event-id" if what == "event_id" else "queue-id")


def test_an_unknown_post_is_an_error_that_says_where_it_looked(site):
    proc = site.listfilter("trace", "<nobody-sent-this@example.edu>", check=False)
    assert proc.returncode == 1
    assert f"not found in {site.pf.maillog_path}" in proc.stderr, proc.stderr


def as_user(site, user: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["runuser", "-u", user, "--", sys.executable, "-m", "listfilter", "--config",
                           str(site.config_path), *args], capture_output=True, text=True, timeout=120, cwd="/")


def test_a_user_in_the_groups_docs_name_traces_without_root(site, post):
    # docs/operations.md: the log's group (adm, as Debian's rsyslog has it) and, for the SQLite
    # store, the group its directory is given (docs/web.md); a group of the test's own stands in
    subprocess.run(["groupadd", "-f", "adm"], check=True)
    subprocess.run(["groupadd", "-f", "lftrace-store"], check=True)
    ensure_user("lftrace")
    ensure_user("lfnobody")
    subprocess.run(["usermod", "-aG", "adm,lftrace-store", "lftrace"], check=True)
    log = site.pf.maillog_path
    os.chown(log, 0, grp.getgrnam("adm").gr_gid)
    log.chmod(0o640)
    store = C.load(site.config_path).store.path
    for path, mode in ((store.parent, 0o2770), *((p, 0o660) for p in store.parent.glob("maillog.sqlite*"))):
        os.chown(path, -1, grp.getgrnam("lftrace-store").gr_gid)
        path.chmod(mode)
    root = trace_json(site, post["message_id"])
    for what in (post["message_id"], post["event_id"]):
        proc = as_user(site, "lftrace", "trace", "--json", what)
        assert proc.returncode == 0, proc.stderr
        assert json.loads(proc.stdout)["posts"] == root["posts"]
    proc = as_user(site, "lfnobody", "trace", post["message_id"])
    assert proc.returncode == 1
    assert f"{log}: Permission denied" in proc.stderr and "docs/operations.md" in proc.stderr, proc.stderr
