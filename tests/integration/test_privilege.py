"""A real divided `listfilter sync` as root: the work as listfilter, the Postfix tables and the reload as root.

Everything lives in a directory the listfilter user can reach (not pytest's
tmp_path, which is root's alone), and Postfix is a private instance
(tests/harness/postfix.py): the reload is the real `postfix reload` of that
instance, seen in its log. These tests run `listfilter` as a subprocess
without LISTFILTER_SYNC_USER (tests/conftest.py sets it to root for the rest
of the suite): the process boundary and the real setuid are the point.
"""

from __future__ import annotations

import os
import pwd
import shutil
import sqlite3
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from listfilter.sync import config as C

from ..conftest import REPO
from ..harness.postfix import PostfixInstance, ensure_user, free_port, traversable_tmpdir

pytestmark = [pytest.mark.integration,
              pytest.mark.skipif(os.geteuid() != 0, reason="the divided sync needs root")]

BIN = Path(sys.executable).parent

LISTS = """
[domains."lists.example.edu"]
course = "CS 199"

[lists.students]
display_name = "CS 199 Students"
members = { active = true }
posters = { roles = ["instructor", "ta"] }

[lists.testing]
members = { emails = ["instructor@example.edu"] }
posters = ["instructor@example.edu"]
"""

MORE = """
[lists.staff]
display_name = "CS 199 Staff"
members = { roles = ["staff"] }
posters = "members"
"""


def env(**extra: str) -> dict[str, str]:
    """The environment cron gives sync: no LISTFILTER_SYNC_USER, so the default user, listfilter."""
    out = {k: v for k, v in os.environ.items() if k != "LISTFILTER_SYNC_USER"}
    out.update(extra)
    return out


def listfilter(config: Path, *args: str, **extra: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(BIN / "listfilter"), "--config", str(config), *args],
                          capture_output=True, text=True, env=env(**extra), timeout=120)


def owner(path: Path) -> str:
    st = path.lstat()
    return f"{pwd.getpwuid(st.st_uid).pw_name}:{st.st_gid}"


def owned_by(path: Path, user: str) -> bool:
    return pwd.getpwuid(path.lstat().st_uid).pw_name == user


@pytest.fixture(scope="module")
def service_user():
    return ensure_user("listfilter")


@pytest.fixture
def base(service_user):
    with traversable_tmpdir(prefix="listfilter-priv-") as d:
        yield d


@pytest.fixture
def postfix(base):
    pf = PostfixInstance(base / "postfix", relay_port=free_port())
    pf.start()
    try:
        yield pf
    finally:
        pf.stop()


def write_config(base: Path, pf: PostfixInstance | None, *, roster: str | None = None, lists: str = LISTS,
                 command_directory: str = "/usr/sbin") -> Path:
    sendmail = base / "sendmail"
    sendmail.write_text("#!/bin/sh\nexec cat >/dev/null\n")
    sendmail.chmod(0o755)
    csv = base / "roster.csv"
    if not csv.exists():
        shutil.copy(REPO / "docs/example/roster.csv", csv)
        csv.chmod(0o644)
    postfix = f'config_directory = "{pf.config_dir}"\n' if pf else "reload = false\n"
    path = base / "lists.toml"
    path.write_text(f"""
[site]
dmarc = "off"  # no DMARC lookups: this test starts no DNS server (tests/conftest.py)
timezone = "America/Chicago"
state_dir = "{base / 'state'}"
sendmail = "{sendmail}"
owners = ["instructor@example.edu"]
[postfix]
{postfix}map_type = "hash"
command_directory = "{command_directory}"
[roster]
{roster or f'source = "csv"{chr(10)}csv = "{csv}"'}
[store]
backend = "sqlite"
{lists}""")
    path.chmod(0o600)  # root's: the parent reads the config, the child never opens it
    return path


def reloads(pf: PostfixInstance) -> int:
    return pf.maillog().count("reload -- version")


def wait_reloads(pf: PostfixInstance, n: int, timeout: float = 10) -> int:
    deadline = time.monotonic() + timeout
    while reloads(pf) < n and time.monotonic() < deadline:
        time.sleep(0.1)
    return reloads(pf)


def deliver_as_listfilter(config: C.Config, msgid: str) -> None:
    """What Postfix's pipe(8) does: listfilter-deliver as listfilter, so an event waits in the spool."""
    raw = (f"From: instructor@example.edu\nTo: testing@lists.example.edu\nSubject: hello\n"
           f"Message-ID: <{msgid}>\n\nbody\n").encode()
    proc = subprocess.run(["runuser", "-u", "listfilter", "--", str(BIN / "listfilter-deliver"),
                           "--snapshot", str(config.site.snapshot_path), "--sender", "instructor@example.edu",
                           "--recipient", "testing@lists.example.edu", "--queue-id", "4TESTQ1D"],
                          input=raw, capture_output=True, timeout=60)
    assert proc.returncode == 0, proc.stderr


def test_divided_sync_leaves_the_state_to_listfilter_and_the_tables_to_root(base, postfix, service_user):
    path = write_config(base, postfix)
    config = C.load(path)
    state = config.site.state_dir
    # the mail log, set up as docs/store.md says: `db upgrade` as root gives it to listfilter
    up = listfilter(path, "db", "upgrade")
    assert up.returncode == 0, up.stderr

    first = listfilter(path, "sync")
    assert first.returncode == 0, first.stderr
    assert first.stderr == ""
    assert "updated snapshot, map domains, map recipients, map transport, map virtual; postfix reloaded" \
        in first.stdout
    assert f"state directory {state}: owned by root, group listfilter, mode 1775" in first.stdout
    assert wait_reloads(postfix, 1) == 1

    # what listfilter works is listfilter's ...
    assert owned_by(config.site.snapshot_path, "listfilter")
    spool = config.site.spool_dir
    for d in (spool, *(spool / sub for sub in ("events", "sent", "notices", "bounces"))):
        assert owned_by(d, "listfilter"), (d, owner(d))
        assert stat.S_IMODE(d.stat().st_mode) == 0o750, d  # it holds message bodies
    assert owned_by(config.store.path, "listfilter") and owned_by(config.store.path.parent, "listfilter")
    # ... Postfix's tables and their indexes are root's, in a directory only root may change
    map_dir = config.site.map_dir
    names = sorted(p.name for p in map_dir.iterdir())
    assert names == ["domains", "domains.db", "recipients", "recipients.db", "transport", "transport.db",
                     "virtual", "virtual.db"]
    assert all(owned_by(map_dir / n, "root") for n in names) and owned_by(map_dir, "root")
    assert stat.S_IMODE(map_dir.stat().st_mode) == 0o755
    st = state.stat()
    assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (0, service_user.pw_gid, 0o1775)
    assert owned_by(state / "sync.lock", "root")

    # mail arrives (as listfilter); an unchanged re-sync logs it and neither installs nor reloads
    deliver_as_listfilter(config, "one@example.edu")
    tables = {n: (map_dir / n).stat().st_ino for n in names}
    again = listfilter(path, "sync")
    assert again.returncode == 0 and again.stderr == "", again.stderr
    assert "unchanged" in again.stdout and "postfix reloaded" not in again.stdout
    assert "mail log: 1 event logged" in again.stdout
    assert {n: (map_dir / n).stat().st_ino for n in names} == tables
    with sqlite3.connect(f"file:{config.store.path}?mode=ro", uri=True) as db:
        assert db.execute("SELECT message_id, status FROM mail_logs").fetchall() == [("<one@example.edu>", "delivered")]
    assert owned_by(config.store.path, "listfilter")
    assert not list((spool / "events").glob("*.json"))

    # a new list changes the tables: root installs them and reloads again
    write_config(base, postfix, lists=LISTS + MORE)
    third = listfilter(path, "sync")
    assert third.returncode == 0, third.stderr
    assert "map recipients, map transport, map virtual; postfix reloaded" in third.stdout, third.stdout
    assert wait_reloads(postfix, 2) == 2
    assert "staff@lists.example.edu" in (map_dir / "transport").read_text()
    assert owned_by(map_dir / "transport.db", "root") and owned_by(config.site.snapshot_path, "listfilter")
    assert not (state / "reload-pending").exists()


def test_the_roster_is_read_as_listfilter(base):
    """A roster only root can read: the divided sync cannot, --user root can, and nothing changes."""
    path = write_config(base, None)
    csv = base / "roster.csv"
    csv.chmod(0o600)
    for args in (("sync",), ("sync", "--dry-run")):
        proc = listfilter(path, *args)
        assert proc.returncode == 1
        assert proc.stderr == f"listfilter: roster unavailable: cannot read roster {csv}: Permission denied;" \
                              " nothing was changed\n"
    assert not (base / "state" / "snapshot.sqlite").exists()
    proc = listfilter(path, "sync", "--user", "root")
    assert proc.returncode == 0, proc.stderr
    assert owned_by(base / "state" / "snapshot.sqlite", "root")


def test_the_roster_dsn_reaches_the_unprivileged_side(base, pg_dsn):
    """cron passes LISTFILTER_ROSTER_DSN in the environment; the child, which connects, gets it."""
    path = write_config(base, None, roster='source = "postgresql"')
    proc = listfilter(path, "sync", "-v", LISTFILTER_ROSTER_DSN=pg_dsn)
    assert proc.returncode == 0, proc.stderr
    assert "students@lists.example.edu: 6 members" in proc.stdout
    assert owned_by(base / "state" / "snapshot.sqlite", "listfilter")
    missing = listfilter(path, "sync")  # and without it, the child says so as an undivided sync would
    assert missing.returncode == 1 and missing.stderr.startswith("listfilter: roster unavailable:")


def test_a_failure_of_roots_part_is_one_line_after_the_snapshot(base):
    path = write_config(base, None, command_directory=str(base / "no-postfix-here"))
    proc = listfilter(path, "sync")
    assert proc.returncode == 1
    assert proc.stderr == (f"listfilter: postfix: {base}/no-postfix-here/postmap not found"
                           " (is Postfix installed? see postfix.command_directory)\n")
    assert owned_by(base / "state" / "snapshot.sqlite", "listfilter")  # the snapshot comes first
    assert sorted(p.name for p in (base / "state" / "postfix").iterdir()) == []


def test_dry_run_as_root_writes_nothing(base):
    path = write_config(base, None)
    proc = listfilter(path, "sync", "--dry-run")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.endswith("dry run: would update snapshot, domains, recipients, transport, virtual\n")
    assert "+students@lists.example.edu\tlistfilter:" in proc.stdout
    assert not (base / "state").exists()


def test_a_missing_user_is_one_line(base):
    path = write_config(base, None)
    proc = listfilter(path, "sync", "--user", "no-such-user-lf")
    assert proc.returncode == 1
    assert proc.stderr.startswith("listfilter: privileges: the user 'no-such-user-lf' does not exist: create it")
    assert proc.stderr.count("\n") == 1
    assert not (base / "state").exists()
