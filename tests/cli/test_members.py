"""`listfilter members` (with each member's source) and `members add`, `remove`, `changes`, in this process.

The bundled example (copied per test) with its SQLite store set up by `db upgrade`.
"""

from __future__ import annotations

import json
import os
import pwd

import pytest

from listfilter.common.snapshot import Snapshot
from listfilter.store import database as ST
from listfilter.store import membership as MS
from listfilter.sync import config as C

from .runner import listfilter

STAFF = "staff@lists.example.edu"


@pytest.fixture
def site(example_config) -> C.Config:
    assert listfilter(example_config, "db", "upgrade").returncode == 0
    return C.load(example_config)


def installed(config: C.Config, address: str = STAFF) -> dict[str, str]:
    with Snapshot(config.site.snapshot_path) as snap:
        return {e: s for e, _, s in snap.members_with_sources(address)}


def test_add_shows_the_source_and_takes_effect_at_the_sync(example_config, site):
    ran = listfilter(example_config, "members", "add", STAFF, "Guest@Example.ORG", "--name", "Gus Guest",
                     "--until", "2099-05-15")
    assert ran.returncode == 0, ran.stderr
    assert ran.stdout == (f"added Guest@example.org as an extra member of {STAFF} until the end of 2099-05-15;"
                          " it takes effect at the next sync\n")
    ran = listfilter(example_config, "members", STAFF)
    assert ran.stdout.splitlines() == ["Guest@example.org\tGus Guest\textra", "instructor@example.edu\tJane Doe\troster",
                                       "ta.one@example.edu\tTom Alvarez\troster"]
    assert listfilter(example_config, "members", "show", STAFF).stdout == ran.stdout
    data = json.loads(listfilter(example_config, "members", "--json", STAFF).stdout)
    assert data[STAFF][0] == {"email": "Guest@example.org", "name": "Gus Guest", "source": "extra"}
    assert "Guest@example.org" not in listfilter(example_config, "members", "staff@lists-dev.example.edu").stdout
    assert listfilter(example_config, "sync", "--quiet").returncode == 0
    assert installed(site)["Guest@example.org"] == "extra"
    ran = listfilter(example_config, "members", "add", STAFF, "Guest@example.org", "--until", "2099-05-15")
    assert ran.stdout == f"Guest@example.org is already an extra member of {STAFF} until the end of 2099-05-15:" \
                         " nothing changed\n"


def test_remove_and_the_audit_trail(example_config, site):
    listfilter(example_config, "members", "add", STAFF, "guest@example.org")
    ran = listfilter(example_config, "members", "remove", STAFF, "guest@example.org", "--sync",
                     env={"SUDO_USER": "alice"})
    assert ran.returncode == 0, ran.stderr
    assert ran.stdout.startswith(f"removed guest@example.org's extra membership of {STAFF};"
                                 " it takes effect at the next sync\nsync: ")
    assert "guest@example.org" not in installed(site)
    ran = listfilter(example_config, "members", "changes", STAFF)
    lines = [line.split("\t") for line in ran.stdout.splitlines()]
    assert [line[1:] for line in lines] == [["remove", "guest@example.org", "extra", "by alice (sudo root) (cli)"],
                                            ["add", "guest@example.org", "extra", "by root (cli)", "no end date"]]
    assert lines[0][0].endswith(("-06:00", "-05:00"))  # the site's time zone
    [newest] = json.loads(listfilter(example_config, "members", "changes", STAFF, "--json", "--limit", "1").stdout)
    assert (newest["action"], newest["actor"], newest["via"]) == ("remove", "alice (sudo root)", "cli")
    assert listfilter(example_config, "members", "changes", "students@lists.example.edu").stdout == \
        "no membership changes recorded for students@lists.example.edu\n"


def test_add_with_sync_puts_them_in_the_snapshot_now(example_config, site):
    ran = listfilter(example_config, "members", "add", STAFF, "guest@example.org", "--sync")
    assert ran.returncode == 0 and "\nsync: 8 lists, 25 memberships: updated snapshot" in ran.stdout
    assert installed(site)["guest@example.org"] == "extra"


@pytest.mark.parametrize("args, message", [
    (("add", "nope@lists.example.edu", "g@example.org"), "no list 'nope@lists.example.edu' in "),
    (("add", "staff", "g@example.org"), "'staff' is a list name: give one of its addresses"),
    (("add", STAFF, "not an address"), "malformed address 'not an address'"),
    (("add", STAFF, "g@example.org", "--until", "2001-01-01"), "--until '2001-01-01' is in the past"),
    (("add", STAFF, "g@example.org", "--until", "soon"), "--until 'soon': use a date"),
    (("remove", STAFF, "g@example.org"), f"g@example.org is not an extra member of {STAFF}"),
    (("changes", "nope@lists.example.edu"), "no list 'nope@lists.example.edu'"),
])
def test_mistakes_are_one_line_and_change_nothing(example_config, site, args, message):
    ran = listfilter(example_config, "members", *args)
    assert ran.returncode == 1 and ran.stderr.startswith(f"listfilter: {message}") and ran.stderr.count("\n") == 1
    with ST.open_store(site.store) as store:
        assert MS.rows(store) == [] and MS.changes(store) == []


def test_removing_a_roster_member_says_to_change_the_roster(example_config, site):
    assert listfilter(example_config, "sync", "--quiet").returncode == 0
    ran = listfilter(example_config, "members", "remove", STAFF, "ta.one@example.edu")
    assert ran.returncode == 1
    assert ran.stderr == (f"listfilter: ta.one@example.edu is not an extra member of {STAFF}; the roster holds them:"
                          " change the roster (they leave the list at the sync after it does)\n")
    ran = listfilter(example_config, "members", "remove", "testing@lists.example.edu", "instructor@example.edu")
    assert "the config names them: remove them from members.emails" in ran.stderr
    ran = listfilter(example_config, "members", "add", STAFF, "ta.one@example.edu", "--until", "2099-01-01")
    assert ran.stdout.startswith("added ta.one@example.edu as an extra member of staff@lists.example.edu until the end"
                                 " of 2099-01-01 (already a member from the roster: the extra membership keeps them")


def test_a_store_that_cannot_be_read_shows_the_installed_extra_members_and_says_so(example_config, site):
    listfilter(example_config, "members", "add", STAFF, "guest@example.org", "--sync")
    for path in site.store.path.parent.glob("maillog.sqlite*"):
        path.unlink()
    site.store.path.write_text("not a database\n" * 100)
    ran = listfilter(example_config, "members", STAFF)
    assert ran.returncode == 0 and "guest@example.org\t\textra" in ran.stdout.splitlines()
    assert ran.stderr.startswith("listfilter: warning: extra and joined members not read: the store ")
    assert ran.stderr.rstrip().endswith("; keeping the installed snapshot's 1 extra or joined member")


def test_without_a_store_it_says_to_set_one_up(example_config):
    ran = listfilter(example_config, "members", "add", STAFF, "g@example.org")
    assert ran.returncode == 1 and "run `listfilter db upgrade`" in ran.stderr


@pytest.mark.skipif(os.geteuid() != 0, reason="root writing the service user's store")
def test_root_leaves_no_root_owned_store_files(example_config, site):
    """A divided sync runs as listfilter: a change made as root must leave the store's files its."""
    user = pwd.getpwnam("listfilter")
    store_dir = site.store.path.parent
    for path in (store_dir, *store_dir.iterdir()):
        os.chown(path, user.pw_uid, user.pw_gid)
    for name in ("maillog.sqlite-wal", "maillog.sqlite-shm"):  # made afresh by the next opener
        (store_dir / name).unlink(missing_ok=True)
    assert listfilter(example_config, "members", "add", STAFF, "g@example.org").returncode == 0
    assert listfilter(example_config, "members", "changes", STAFF).returncode == 0
    owners = {p.name: p.stat().st_uid for p in (store_dir, *store_dir.iterdir())}
    assert set(owners.values()) == {user.pw_uid}, owners
