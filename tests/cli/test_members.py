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


# ---------------------------------------------------------------- the joins that wait for an owner


HELPERS = "helpers@lists.example.edu"
HELPERS_LIST = """
[lists.helpers]
display_name = "CS 199 Helpers"
members = { optin = true, eligible = { roles = ["student"] }, approval = true }
posters = ["instructor@example.edu"]
"""


@pytest.fixture
def optin(example_config, tmp_path) -> C.Config:
    """The example with an opt-in list whose owners approve each join, synced, and a fake sendmail."""
    from ..mail.test_deliver import fake_sendmail

    sendmail, _ = fake_sendmail(tmp_path)
    text = example_config.read_text().replace('state_dir = "state"', f'state_dir = "state"\nsendmail = "{sendmail}"')
    example_config.write_text(text + HELPERS_LIST)
    assert listfilter(example_config, "db", "upgrade").returncode == 0
    assert listfilter(example_config, "sync", "--quiet").returncode == 0
    return C.load(example_config)


def waiting(config: C.Config, *emails: str, at=None) -> None:
    """Confirmed joins of helpers@ that wait for an owner, as the mail side leaves them and sync applies them."""
    import datetime as dt

    from listfilter.common import spool as SP
    from listfilter.common.events import Request, random_id
    from listfilter.store import requests as RQ

    at = at or dt.datetime.now(dt.timezone.utc)
    SP.ensure(config.site.spool_dir)
    for e in emails:
        SP.write_request(config.site.spool_dir, Request(id=random_id(), at=at.isoformat(), action="pending",
                                                        list_address=HELPERS, subject=e, name=e.split("@")[0].title(),
                                                        by=e))
    with ST.open_store(config.store) as store:
        assert RQ.ingest(config, store, at)[1] == []


def sent_to(tmp_path) -> list[tuple[str, str]]:
    """(recipient, Subject) of each message the fake sendmail took."""
    import email

    calls = tmp_path / "calls"
    out = []
    for args in sorted(calls.glob("*.args"), key=lambda p: int(p.stem)):
        msg = email.message_from_bytes(args.with_suffix(".msg").read_bytes())
        out.append((args.read_text().splitlines()[-1], str(msg["Subject"])))
    return out


def test_pending_shows_who_waits(example_config, optin):
    assert listfilter(example_config, "members", "pending").stdout == "no joins wait for an owner\n"
    assert listfilter(example_config, "members", "pending", HELPERS).stdout == \
        f"no joins wait for an owner on {HELPERS}\n"
    waiting(optin, "alice@example.edu", "bob@example.edu")
    ran = listfilter(example_config, "members", "pending", HELPERS)
    assert ran.returncode == 0, ran.stderr
    rows = [line.split("\t") for line in ran.stdout.splitlines()]
    assert [r[:3] for r in rows] == [[HELPERS, "alice@example.edu", "Alice"], [HELPERS, "bob@example.edu", "Bob"]]
    assert rows[0][3].endswith(("-06:00", "-05:00")) and rows[0][4].startswith("expires ")
    assert listfilter(example_config, "members", "pending").stdout == ran.stdout  # every list's
    data = json.loads(listfilter(example_config, "members", "pending", "--json").stdout)
    assert [(d["email"], d["name"]) for d in data] == [("alice@example.edu", "Alice"), ("bob@example.edu", "Bob")]
    assert data[0]["expires_at"] > data[0]["requested_at"]


def test_admit_and_deny_are_recorded_and_told_at_the_sync(example_config, optin, tmp_path):
    waiting(optin, "alice@example.edu", "bob@example.edu")
    ran = listfilter(example_config, "members", "admit", HELPERS, "Alice@Example.edu", env={"SUDO_USER": "carol"})
    assert ran.returncode == 0, ran.stderr
    assert ran.stdout == (f"alice@example.edu's request to join {HELPERS} is admitted; they become a member at"
                          " the next sync\n")
    ran = listfilter(example_config, "members", "deny", HELPERS, "bob@example.edu", "--sync")
    assert ran.returncode == 0, ran.stderr
    assert ran.stdout.startswith(f"bob@example.edu's request to join {HELPERS} is denied; they are told at the"
                                 " next sync\n")
    assert f"\nrequests: denied sent to bob@example.edu for {HELPERS}\n" in ran.stdout and "\nsync: " in ran.stdout
    assert listfilter(example_config, "members", "pending", HELPERS).stdout.startswith("no joins wait")
    assert installed(optin, HELPERS) == {"alice@example.edu": "joined"}
    # the sync welcomed the admitted joiner and told the denied one
    assert sorted(sent_to(tmp_path)) == [("alice@example.edu", "Welcome to CS 199 Helpers"),
                                         ("bob@example.edu", "Your request to join CS 199 Helpers")]
    with ST.open_store(optin.store) as store:
        assert sorted(store._q("SELECT email, status, decided_by FROM join_requests")) == [
            ("alice@example.edu", "admitted", "carol (sudo root)"), ("bob@example.edu", "denied", "root")]
        assert [(c.action, c.email, c.actor, c.via, c.notice, c.notified_at is not None)
                for c in reversed(MS.changes(store, HELPERS))] == [
            ("join", "alice@example.edu", "carol (sudo root)", "cli", "welcome", True),
            ("deny", "bob@example.edu", "root", "cli", "denied", True)]
    assert listfilter(example_config, "sync", "--quiet").returncode == 0
    assert len(sent_to(tmp_path)) == 2  # each told once


@pytest.mark.parametrize("action", ["admit", "deny"])
def test_the_first_decision_counts_and_the_second_says_by_whom_and_when(example_config, optin, action):
    waiting(optin, "alice@example.edu")
    assert listfilter(example_config, "members", "admit", HELPERS, "alice@example.edu").returncode == 0
    ran = listfilter(example_config, "members", action, HELPERS, "alice@example.edu")
    assert ran.returncode == 1 and ran.stdout == ""
    assert ran.stderr.startswith(f"listfilter: alice@example.edu's request to join {HELPERS} was already admitted by"
                                 " root on 20")
    with ST.open_store(optin.store) as store:
        assert store._q("SELECT status FROM join_requests") == [("admitted",)]


def test_mistakes_about_joins_are_one_line_and_change_nothing(example_config, optin):
    import datetime as dt

    waiting(optin, "bob@example.edu", at=dt.datetime.now(dt.timezone.utc) - dt.timedelta(days=60))
    with ST.open_store(optin.store) as store:  # a pending row for someone the list no longer lets join
        store._execute("INSERT INTO join_requests (list_address, email_key, email, name, status, requested_at)"
                       " VALUES (?, ?, ?, '', 'pending', ?)", (HELPERS, "stranger@example.org", "stranger@example.org",
                                                              store._ts(dt.datetime.now(dt.timezone.utc))))
    for args, message in [
        (("admit", HELPERS, "carol@example.edu"), f"no join request waits: carol@example.edu has not asked to join"
                                                  f" {HELPERS}"),
        (("deny", STAFF, "alice@example.edu"), f"{STAFF} is not an opt-in list in "),
        (("admit", HELPERS, "bob@example.edu"), f"bob@example.edu's request to join {HELPERS} has expired: nobody"
                                                " decided within confirm_days"),
        (("admit", HELPERS, "stranger@example.org"), f"stranger@example.org may no longer join {HELPERS}"),
        (("admit", "helpers", "bob@example.edu"), "'helpers' is a list name: give one of its addresses"),
        (("deny", HELPERS, "not an address"), "malformed address 'not an address'"),
    ]:
        ran = listfilter(example_config, "members", *args)
        assert ran.returncode == 1 and ran.stderr.startswith(f"listfilter: {message}"), (args, ran.stderr)
        assert ran.stderr.count("\n") == 1
    with ST.open_store(optin.store) as store:
        assert sorted(store._q("SELECT email, status FROM join_requests")) == [
            ("bob@example.edu", "pending"), ("stranger@example.org", "pending")]
        assert MS.changes(store) == []
