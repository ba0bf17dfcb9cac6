"""How many listfilter-policy processes a real Postfix runs: one per smtpd process, not per SMTP session.

smtpd opens its connection to the policy service (spawn(8), which starts
one listfilter-policy for it) at the first RCPT and keeps it across the SMTP
sessions it serves, one after another, until the connection has been idle
for smtpd_policy_service_max_idle (300 s) or open for
smtpd_policy_service_max_ttl (1000 s), or smtpd exits (max_idle, max_use).
Sessions at the same time are served by different smtpd processes, each with
its own policy process. The processes are counted in /proc (their command
line names this instance's snapshot), smtpd's from the maillog.

And what the answers leave in Postfix's own log (maillog_file, written by
postlogd, where the policy service's syslog cannot reach): an allowed sender's
RCPT is answered action=INFO, which smtpd logs as "info: RCPT from" and then
goes on as for DUNNO; a refused one gets smtpd's "reject:" line and no info line.
"""

from __future__ import annotations

import os
import re
import smtplib
import subprocess
import sys

import pytest

from ..harness.postfix import PostfixInstance, ensure_user, traversable_tmpdir
from ..harness.smtpsink import SMTPSink
from ..harness.wiring import install_programs, listfilter_spool, wire

pytestmark = pytest.mark.integration

DOMAIN = "lists.example.edu"
LIST = f"students@{DOMAIN}"

CONFIG = """
[site]
dmarc = "off"  # no DMARC lookups: this test starts no DNS server (tests/conftest.py)
timezone = "America/Chicago"
state_dir = "{state}"
owners = ["prof@example.edu"]
[postfix]
config_directory = "{config_dir}"
map_type = "hash"
[roster]
source = "csv"
csv = "{csv}"
[domains."{domain}"]
[lists.students]
members = {{ emails = ["alice@example.edu"] }}
posters = ["prof@example.edu"]
"""


@pytest.fixture(scope="module")
def site():
    ensure_user("listfilter")
    with traversable_tmpdir() as base, SMTPSink() as sink:
        program = install_programs(base / "bin")
        csv = base / "roster.csv"
        csv.write_text("email,name,enrollment_type,active,semester,course\n", encoding="utf-8")
        csv.chmod(0o644)
        pf = PostfixInstance(base / "postfix", relay_port=sink.port)
        config = base / "lists.toml"
        config.write_text(CONFIG.format(state=base / "state", config_dir=pf.config_dir, csv=csv, domain=DOMAIN))
        listfilter_spool(wire(pf, config, program))
        pf.start()
        try:
            proc = subprocess.run([sys.executable, "-m", "listfilter", "--config", str(config), "sync"],
                                  capture_output=True, text=True, timeout=60)
            assert proc.returncode == 0, proc.stderr
            yield pf, str(base / "state" / "snapshot.sqlite")
        finally:
            pf.stop()


def policy_processes(snapshot: str) -> set[int]:
    """The live listfilter-policy processes of this instance (their argv names its snapshot)."""
    found = set()
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                argv = f.read().split(b"\0")
        except OSError:
            continue
        # the interpreter running the script (spawn(8) itself names it in an "argv=" attribute)
        if len(argv) > 1 and argv[1].endswith(b"/listfilter-policy") and snapshot.encode() in argv:
            found.add(int(entry))
    return found


def smtpd_processes(log: str) -> set[int]:
    """The smtpd processes that refused a RCPT in ``log`` (the policy service's answer)."""
    return {int(pid) for pid in re.findall(r"/smtpd\[(\d+)\]: NOQUEUE: reject: RCPT from", log)}


def test_one_policy_process_serves_consecutive_sessions(site):
    pf, snapshot = site
    start = len(pf.maillog())
    seen: list[set[int]] = []
    for n in range(3):
        out = pf.swaks("--to", LIST, "--from", "stranger@example.org", "--quit-after", "RCPT")
        assert "<** 550 5.7.1" in out.stdout, out.stdout  # the policy service answered
        seen.append(policy_processes(snapshot))
    assert all(seen), seen  # the process outlives each session: smtpd keeps the connection
    assert len(set().union(*seen)) == 1, seen
    assert len(smtpd_processes(pf.maillog()[start:])) == 1, pf.log_tail(20)  # one smtpd process served the three


def info_lines(log: str) -> list[str]:
    return re.findall(r"/smtpd\[\d+\]: (\S+): info: RCPT from (.*)", log)


def test_an_allowed_sender_is_accepted_and_smtpd_logs_the_policy_services_info(site):
    pf, _ = site
    start = len(pf.maillog())
    out = pf.swaks("--to", LIST, "--from", "prof@example.edu", "--quit-after", "RCPT")
    assert f"-> RCPT TO:<{LIST}>\n<-  250 2.1.5 Ok" in out.stdout, out.stdout
    [(qid, text)] = info_lines(pf.maillog()[start:]) or [("", pf.log_tail(20))]
    assert qid == "NOQUEUE", text  # the first RCPT: smtpd makes the queue file after it
    assert text.startswith("localhost[127.0.0.1]: listfilter: the sender may post (only prof@example.edu may);"
                           f" from=<prof@example.edu> to=<{LIST}> proto=ESMTP helo=<"), text


def test_a_later_rcpts_info_line_carries_the_queue_id(site):
    pf, _ = site
    start = len(pf.maillog())
    out = pf.swaks("--to", f"students-owner@{DOMAIN},{LIST}", "--from", "prof@example.edu", "--quit-after", "RCPT")
    assert out.stdout.count("<-  250 2.1.5 Ok") == 2, out.stdout
    log = pf.maillog()[start:]
    qid = re.search(r"/smtpd\[\d+\]: ([0-9A-F]+): client=", log).group(1)
    assert [q for q, _ in info_lines(log)] == [qid], log  # the owner address is no list post: no info


def test_a_refused_sender_gets_smtpds_reject_line_and_no_info(site):
    pf, _ = site
    start = len(pf.maillog())
    out = pf.swaks("--to", LIST, "--from", "stranger@example.org", "--quit-after", "RCPT")
    assert "<** 550 5.7.1" in out.stdout, out.stdout
    log = pf.maillog()[start:]
    assert "NOQUEUE: reject: RCPT from localhost[127.0.0.1]: 550 5.7.1" in log, log
    assert info_lines(log) == [], log


def test_sessions_at_the_same_time_have_a_policy_process_each(site):
    pf, snapshot = site
    clients = [smtplib.SMTP("127.0.0.1", pf.smtpd_port, timeout=30) for _ in range(2)]
    try:
        for smtp in clients:
            smtp.ehlo("client.example.org")
            assert smtp.mail("stranger@example.org")[0] == 250
            assert smtp.rcpt(LIST)[0] == 550
        assert len(policy_processes(snapshot)) == 2
    finally:
        for smtp in clients:
            smtp.quit()
