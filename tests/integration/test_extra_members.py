"""Through a real Postfix: an extra member added with `listfilter members add` gets the list's posts from the
next sync on, and not after `members remove` and the sync after it; on the SQLite store and on PostgreSQL.

The set-up of test_poster_copy.py (a private Postfix wired as `listfilter postfix-config` renders it, swaks
in, an SMTP sink as the relay, a CSV roster). The commands run as root, as an operator would; sync runs
divided (as cron runs it: its work as the listfilter user), so a store file that root left behind for
itself would show here as a sync that cannot read the extra members.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from ..conftest import roster_database
from ..harness.postfix import PostfixInstance, ensure_user, swaks, traversable_tmpdir
from ..harness.smtpsink import SMTPSink
from ..harness.wiring import install_programs, listfilter_spool, wire

pytestmark = [pytest.mark.integration,
              pytest.mark.skipif(os.geteuid() != 0, reason="the divided sync needs root")]

DOMAIN = "lists.example.edu"
STAFF = f"staff@{DOMAIN}"
POSTER = "prof@example.edu"
TA = "ta@example.edu"
GUEST = "guest.speaker@example.org"


def config_text(base, pf, store: str = "") -> str:
    return f"""
[site]
dmarc = "off"  # no DMARC lookups: this test starts no DNS server (tests/conftest.py)
timezone = "America/Chicago"
state_dir = "{base / 'state'}"
owners = ["{POSTER}"]
[postfix]
config_directory = "{pf.config_dir}"
map_type = "hash"
[roster]
source = "csv"
csv = "{base / 'roster.csv'}"
{store}
[domains."{DOMAIN}"]
course = "CS 199"

[lists.staff]
display_name = "CS 199 Staff"
members = {{ roles = ["staff"] }}
posters = "members"
"""


def listfilter(config, *args: str) -> subprocess.CompletedProcess:
    """``listfilter`` as root, with cron's environment (no LISTFILTER_SYNC_USER: sync divides itself)."""
    env = {k: v for k, v in os.environ.items() if k != "LISTFILTER_SYNC_USER"}
    proc = subprocess.run([sys.executable, "-m", "listfilter", "--config", str(config), *args],
                          capture_output=True, text=True, timeout=120, env=env)
    assert proc.returncode == 0, proc.stderr
    return proc


@pytest.fixture(scope="module")
def site():
    ensure_user("listfilter")
    with traversable_tmpdir() as base, SMTPSink() as sink:
        program = install_programs(base / "bin")
        (base / "roster.csv").write_text("email,name,enrollment_type,active,semester,course\n"
                                         f"{POSTER},Pat Prof,teacher,true,current,CS 199\n"
                                         f"{TA},Tia Assistant,ta,true,current,CS 199\n")
        pf = PostfixInstance(base / "postfix", relay_port=sink.port)
        config = base / "lists.toml"
        config.write_text(config_text(base, pf))
        listfilter_spool(wire(pf, config, program))
        pf.start()
        try:
            yield base, pf, sink, config
        finally:
            pf.stop()


def post(site, msgid: str) -> list[str]:
    """Post to staff@ as the professor; the addresses the relay got a copy for."""
    base, pf, sink, _ = site
    assert pf.wait_queue_empty(timeout=30), pf.queue()
    sink.clear()
    path = base / f"{msgid}.eml"
    path.write_bytes(f'From: "Pat Prof" <{POSTER}>\nTo: {STAFF}\nSubject: Talk on Friday\nMessage-ID: <{msgid}>\n\n'
                     "Our guest speaks on Friday.".encode())
    out = swaks("--to", STAFF, "--from", POSTER, "--data", f"@{path}", port=pf.smtpd_port)
    assert "queued as" in out.stdout + out.stderr, out.stdout + out.stderr
    assert pf.wait_queue_empty(timeout=30), (pf.queue(), pf.log_tail(30))
    return sorted(sink.recipients())


def the_flow(site, tag: str) -> None:
    _, pf, _, config = site
    listfilter(config, "db", "upgrade")
    assert listfilter(config, "sync").stderr == ""
    assert post(site, f"before-{tag}@example.edu") == [TA]
    ran = listfilter(config, "members", "add", STAFF, GUEST, "--name", "Gus Guest", "--until", "2099-12-31")
    assert "it takes effect at the next sync" in ran.stdout
    sync = listfilter(config, "sync")
    assert sync.stderr == ""  # the listfilter user read the store root wrote to
    assert f"{GUEST}\tGus Guest\textra" in listfilter(config, "members", STAFF).stdout
    assert post(site, f"with-{tag}@example.edu") == [GUEST, TA], pf.log_tail(30)
    listfilter(config, "members", "remove", STAFF, GUEST)
    assert listfilter(config, "sync").stderr == ""
    assert post(site, f"after-{tag}@example.edu") == [TA]
    trail = listfilter(config, "members", "changes", STAFF).stdout.splitlines()
    assert [line.split("\t")[1:3] for line in trail] == [["remove", GUEST], ["add", GUEST]]
    assert all("\tby root (cli)" in line for line in trail)


def test_an_extra_member_gets_the_posts_until_removed_sqlite(site):
    the_flow(site, "sqlite")


def test_an_extra_member_gets_the_posts_until_removed_postgresql(site):
    base, pf, _, config = site
    with roster_database(rows=[]) as dsn:
        config.write_text(config_text(base, pf, f'[store]\nbackend = "postgresql"\ndsn = "{dsn}"\n'))
        the_flow(site, "postgresql")
