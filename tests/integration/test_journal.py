"""Each member's outcome from the systemd journal, end to end: a real Postfix delivers a post to a sink that
accepts one member and refuses another; its log lines become entries of a real journal file (what journald
writes, made by systemd-journal-remote: tests.harness.journal); ``listfilter sync`` with
``log_source = "journal"`` reads them with journalctl into the store, resumes at its cursor, and
``listfilter trace`` reads the same journal.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from listfilter.store import database as ST
from listfilter.store import deliveries as DV
from listfilter.sync import config as C
from listfilter.sync import follow as FO

from ..conftest import REPO
from ..harness.journal import Journal
from ..harness.postfix import PostfixInstance, ensure_user, swaks, traversable_tmpdir
from ..harness.smtpsink import SMTPSink
from ..harness.wiring import install_programs, listfilter_spool, wire

pytestmark = pytest.mark.integration

DOMAIN = "lists.example.edu"
CLUB = f"club@{DOMAIN}"
POSTER = "prof@example.edu"
ANN, CAT = "ann@example.org", "cat@example.org"
GONE = "550 5.1.1 <cat@example.org>: no such user"

SENDMAIL_WRAPPER = """#!/bin/sh
MAIL_CONFIG="{config_dir}" exec /usr/sbin/sendmail "$@"
"""


class Site:
    def __init__(self, base: Path, pf: PostfixInstance, sink: SMTPSink, config: Path, journal: Journal):
        self.base, self.pf, self.sink, self.config_path, self.journal = base, pf, sink, config, journal
        self.config = C.load(config)
        self.copied = 0  # maillog lines already in the journal

    def listfilter(self, *args: str, ok: bool = True) -> subprocess.CompletedProcess:
        proc = subprocess.run([sys.executable, "-m", "listfilter", "--config", str(self.config_path), *args],
                              capture_output=True, text=True, timeout=120)
        if ok:
            assert proc.returncode == 0 and "warning" not in proc.stderr, proc.stdout + proc.stderr
        return proc

    def post(self, subject: str, msgid: str) -> None:
        raw = (f"From: Pat Prof <{POSTER}>\nTo: {CLUB}\nSubject: {subject}\nMessage-ID: <{msgid}>\n\nHello.").encode()
        path = self.base / f"msg-{time.time_ns()}.eml"
        path.write_bytes(raw)
        proc = swaks("--to", CLUB, "--from", POSTER, "--data", f"@{path}", port=self.pf.smtpd_port)
        assert "queued as" in proc.stdout + proc.stderr, proc.stdout + proc.stderr

    def to_journal(self) -> int:
        """Postfix's new log lines (its maillog_file) into the journal, as journald would have them."""
        lines = self.pf.maillog().splitlines()
        new = lines[self.copied:]
        self.copied = len(lines)
        return self.journal.append_lines(new)

    def outcomes(self, msgid: str) -> dict[str, str]:
        with ST.open_store(self.config.store) as store:
            [e] = [e for e in store.entries(limit=100) if e.message_id == f"<{msgid}>"]
            return {d.recipient: d.status for d in DV.of_event(store, e.id)}


@pytest.fixture(scope="module")
def site():
    ensure_user("listfilter")
    with traversable_tmpdir() as base, SMTPSink() as sink:
        journal = Journal(base / "journal")
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
log_source = "journal"
journal_directory = "{journal.directory}"
[roster]
source = "csv"
csv = "{REPO / 'docs/example/roster.csv'}"
[store]
backend = "sqlite"

[domains."{DOMAIN}"]
course = "CS 199"

[lists.club]
display_name = "Flying Club"
members = {{ emails = ["{ANN}", "{CAT}"] }}
posters = ["{POSTER}"]
""")
        listfilter_spool(wire(pf, config_path, program))
        subprocess.run(["chmod", "-R", "a+rX", str(journal.directory)], check=True)  # sync reads it as listfilter
        pf.start()
        try:
            s = Site(base, pf, sink, config_path, journal)
            s.listfilter("db", "upgrade")
            s.listfilter("sync")
            yield s
        finally:
            pf.stop()


def test_outcomes_from_the_journal_resume_at_the_cursor(site):
    site.sink.reject[CAT] = GONE
    site.post("First flight", "journal-1@example.edu")
    site.pf.wait_log(r"to=<cat@example\.org>.*status=bounced", timeout=30)
    site.pf.wait_log(r"to=<ann@example\.org>.*status=sent", timeout=30)
    assert site.to_journal() > 5
    subprocess.run(["chmod", "-R", "a+rX", str(site.journal.directory)], check=True)
    out = site.listfilter("sync").stdout
    assert re.search(r"postfix log: \d+ lines read, 2 member outcomes \(1 sent, 1 bounced\),"
                     r" 1 reinjected copy matched", out), out
    assert site.outcomes("journal-1@example.edu") == {ANN: "sent", CAT: "bounced"}
    state = json.loads(FO.position_path(site.config).read_text())
    assert state["log"]["journal"] is True and state["log"]["cursor"].startswith("s=")

    # nothing new in the journal: nothing read; then only the second post's lines
    assert "postfix log" not in site.listfilter("sync").stdout
    del site.sink.reject[CAT]
    site.post("Second flight", "journal-2@example.edu")
    site.pf.wait_log(r"to=<cat@example\.org>.*status=sent", timeout=30)
    assert site.pf.wait_queue_empty(timeout=30)
    site.to_journal()
    subprocess.run(["chmod", "-R", "a+rX", str(site.journal.directory)], check=True)
    out = site.listfilter("sync").stdout
    assert re.search(r"postfix log: \d+ lines read, 2 member outcomes \(2 sent\), 1 reinjected copy matched", out), out
    assert site.outcomes("journal-2@example.edu") == {ANN: "sent", CAT: "sent"}
    assert site.outcomes("journal-1@example.edu") == {ANN: "sent", CAT: "bounced"}  # read once, not again

    trace = json.loads(site.listfilter("trace", "journal-1@example.edu", "--json").stdout)
    [inbound] = trace["posts"]
    [copy] = inbound["lists"][0]["reinjected"]
    assert {m["address"]: m["status"] for m in copy["members"]} == {ANN: "sent", CAT: "bounced"}, trace
    # check: this Postfix writes its own maillog_file (the test copies it), which check names; with
    # Postfix logging through syslog, it reads the journal
    check = site.listfilter("check", ok=False).stdout
    assert re.search(r"PROBLEM +postfix log: Postfix logs to \S+ \(maillog_file\), not to the journal", check), check
    from listfilter.cli.check import _journal_check

    [(name, ok, text)] = list(_journal_check(site.config, ""))
    assert ok and text == f"the journal in {site.journal.directory} is readable", text
