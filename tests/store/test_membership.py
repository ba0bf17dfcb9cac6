"""Extra and joined members in the store, on SQLite and on the real PostgreSQL, and through sync.

Every change is one transaction with its member_changes row; at sync the
unexpired ones reach the snapshot (source ``extra`` or ``joined``), the
expired ones are removed and recorded, and a store that is down keeps the
installed snapshot's.
"""

from __future__ import annotations

import datetime as dt
import zoneinfo

import pytest

from listfilter.common.snapshot import Snapshot
from listfilter.store import database as ST
from listfilter.store import membership as MS
from listfilter.sync import run as Y

from . import test_database as DB
from .test_database import T0

# the mail log's fixtures: a store on each backend, its config
backend, store_toml, config_path, config, store = DB.backend, DB.store_toml, DB.config_path, DB.config, DB.store

STAFF = "staff@lists.example.edu"
CHICAGO = zoneinfo.ZoneInfo("America/Chicago")
GUEST = "Guest@Example.ORG"


def snapshot_members(config, address=STAFF) -> dict[str, tuple[str, str]]:
    with Snapshot(config.site.snapshot_path) as snap:
        return {e.lower(): (n, s) for e, n, s in snap.members_with_sources(address)}


def kinds(store, address=STAFF) -> list[tuple[str, str, str, str, str]]:
    """(action, email, source, actor, via) of the list's changes, oldest first."""
    return [(c.action, c.email, c.source, c.actor, c.via) for c in reversed(MS.changes(store, address))]


# ---------------------------------------------------------------- extra members


def test_add_records_who_and_is_read_for_the_sync(store):
    until = T0 + dt.timedelta(days=30)
    change = MS.add(store, STAFF, GUEST, "Gus Guest", until, "alice", "cli", now=T0, tz=CHICAGO)
    assert (change.action, change.source, change.actor, change.via) == ("add", "extra", "alice", "cli")
    assert change.detail == "until 2026-02-20 09:00 CST"
    [kept] = MS.extras(store, STAFF)
    assert (kept.email, kept.name, kept.until, kept.added_by, kept.added_at) == (GUEST, "Gus Guest", until, "alice", T0)
    assert MS.added(store, T0) == {STAFF: [(GUEST, "Gus Guest", "extra")]}
    assert kinds(store) == [("add", GUEST, "extra", "alice", "cli")]
    assert MS.extras(store, "students@lists.example.edu") == []


def test_adding_again_updates_and_records_only_a_real_change(store):
    MS.add(store, STAFF, GUEST, "Gus Guest", None, "alice", "cli", now=T0)
    assert MS.add(store, STAFF, GUEST.lower(), None, None, "bob", "web", now=T0) is not None  # a new spelling
    assert MS.add(store, STAFF, GUEST.lower(), None, None, "bob", "web", now=T0) is None  # nothing changed
    end = dt.datetime(2026, 5, 16, 5, 0, tzinfo=dt.timezone.utc)  # the end of 2026-05-15 in Chicago
    change = MS.add(store, STAFF, GUEST.lower(), "Gus G.", end, "bob", "web", now=T0, tz=CHICAGO)
    assert change.action == "update"
    assert change.detail == "name 'Gus Guest' -> 'Gus G.'; no end date -> until the end of 2026-05-15"
    [kept] = MS.extras(store)
    assert (kept.name, kept.until, kept.added_by) == ("Gus G.", end, "alice")  # added by whoever added first
    assert [k[0] for k in kinds(store)] == ["add", "update", "update"]


def test_remove_records_and_refuses_someone_not_an_extra_member(store, config):
    MS.add(store, STAFF, GUEST, "", None, "alice", "cli", now=T0)
    change = MS.remove(store, STAFF, GUEST.lower(), "bob", "web", now=T0)
    assert (change.action, change.email, change.actor, change.via) == ("remove", GUEST, "bob", "web")
    assert MS.extras(store) == [] and MS.added(store, T0) == {}
    with pytest.raises(MS.MembershipError, match=f"^{GUEST.lower()} is not an extra member of {STAFF}$"):
        MS.remove(store, STAFF, GUEST.lower(), "bob", "web")
    assert Y.run(config).warnings == []  # a snapshot: the roster holds instructor@ on staff@
    with pytest.raises(MS.MembershipError, match="the roster holds them: change the roster"):
        MS.remove(store, STAFF, "instructor@example.edu", "bob", "web", config=config)
    assert [k[0] for k in kinds(store)] == ["add", "remove"]


def test_each_change_is_one_transaction(store, monkeypatch):
    def broken(*args, **kw):
        raise ST.StoreError("member_changes refused")

    monkeypatch.setattr(MS, "_record", broken)
    with pytest.raises(ST.StoreError):
        MS.add(store, STAFF, GUEST, "", None, "alice", "cli")
    with pytest.raises(ST.StoreError):
        MS.join(store, STAFF, GUEST, "", GUEST, "mail")
    assert MS.rows(store) == []  # the member rows went with the change that failed
    monkeypatch.undo()
    MS.add(store, STAFF, GUEST, "", None, "alice", "cli")
    monkeypatch.setattr(MS, "_record", broken)
    with pytest.raises(ST.StoreError):
        MS.remove(store, STAFF, GUEST, "alice", "cli")
    assert len(MS.extras(store)) == 1


def test_expired_members_are_not_added_and_expire_removes_and_records_them(store, config):
    MS.add(store, STAFF, "gone@example.org", "", T0 + dt.timedelta(hours=1), "alice", "cli", now=T0)
    MS.add(store, STAFF, "stays@example.org", "", T0 + dt.timedelta(days=9), "alice", "cli", now=T0)
    MS.add(store, STAFF, "always@example.org", "", None, "alice", "cli", now=T0)
    later = T0 + dt.timedelta(hours=1)
    assert [e for e, _, _ in MS.added(store, later)[STAFF]] == ["always@example.org", "stays@example.org"]
    notes, warnings = MS.expire(config, store, later)
    assert notes == [f"members: gone@example.org's extra membership of {STAFF} expired"] and warnings == []
    assert [k.email for k in MS.extras(store)] == ["always@example.org", "stays@example.org"]
    [change] = [c for c in MS.changes(store, STAFF) if c.action == "expire"]
    assert (change.email, change.actor, change.via, change.notice) == ("gone@example.org", "sync", "sync", "")
    assert change.detail == "until 2026-01-21 10:00 CST"
    assert MS.expire(config, store, later) == ([], [])


# ---------------------------------------------------------------- joined members (the opt-in work's)


def test_join_and_leave_owe_their_messages_once(store):
    change = MS.join(store, STAFF, GUEST, "Gus", GUEST, "mail", now=T0)
    assert (change.action, change.source, change.notice) == ("join", "joined", "welcome")
    assert MS.join(store, STAFF, GUEST.lower(), "Gus", GUEST, "mail") is None  # confirmed twice: one welcome
    far = T0 + dt.timedelta(days=3650)
    assert MS.added(store, far) == {STAFF: [(GUEST, "Gus", "joined")]}  # a join never expires
    MS.add(store, STAFF, GUEST, "", None, "alice", "cli")  # an extra member as well
    change = MS.leave(store, STAFF, GUEST.lower(), GUEST, "one-click")
    assert (change.action, change.source, change.notice) == ("leave", "joined", "goodbye")
    assert [k.source for k in MS.rows(store)] == ["extra"]  # leaving ends the join only
    assert MS.leave(store, STAFF, GUEST, GUEST, "mail") is None
    assert MS.leave(store, STAFF, GUEST, GUEST, "one-click", sources=("joined", "extra")).source == "extra"
    assert MS.rows(store) == []
    assert [k[0] for k in kinds(store)] == ["join", "add", "leave", "leave"]
    owed = MS.owed(store)
    assert [(c.action, c.notice) for c in owed] == [("join", "welcome"), ("leave", "goodbye"), ("leave", "goodbye")]
    MS.notified(store, owed[0].id, T0)
    assert [c.id for c in MS.owed(store)] == [c.id for c in owed[1:]]
    [sent] = [c for c in MS.changes(store) if c.id == owed[0].id]
    assert sent.notified_at == T0


# ---------------------------------------------------------------- what a person types


def test_list_addresses_are_the_configs(config):
    assert MS.list_address(config, " Staff@Lists.Example.edu ") == STAFF
    with pytest.raises(MS.MembershipError, match=r"'staff' is a list name: give one of its addresses"
                                                 r" \(staff@lists-dev.example.edu, staff@lists.example.edu\)"):
        MS.list_address(config, "staff")
    with pytest.raises(MS.MembershipError, match=r"no list 'nope@lists.example.edu' in .*lists.toml; the lists are:"
                                                 r" enrolled@lists-dev.example.edu, .*testing@lists.example.edu$"):
        MS.list_address(config, "nope@lists.example.edu")


@pytest.mark.parametrize("text, expected", [
    ("2026-05-15", dt.datetime(2026, 5, 16, 5, 0)),  # the end of that day, Chicago daylight time
    ("2026-01-25", dt.datetime(2026, 1, 26, 6, 0)),
    ("2026-05-15T14:30", dt.datetime(2026, 5, 15, 19, 30)),
    ("2026-05-15T14:30+00:00", dt.datetime(2026, 5, 15, 14, 30)),
])
def test_until_ends_at_the_end_of_the_day_in_the_sites_time_zone(text, expected):
    got = MS.parse_until(text, CHICAGO, now=T0)
    assert got == expected.replace(tzinfo=dt.timezone.utc)
    assert MS.describe_until(got, CHICAGO) == ("the end of " + text if len(text) == 10 else
                                               got.astimezone(CHICAGO).strftime("%Y-%m-%d %H:%M %Z"))


@pytest.mark.parametrize("text, message", [
    ("2026-01-20", "is in the past"),
    ("2026-01-21T08:59", "is in the past"),  # 14:59 UTC, a minute before T0
    ("tomorrow", r"use a date \(2026-05-15\) or a time"),
    ("2026-02-30", "use a date"),
])
def test_until_refuses_the_past_and_what_is_not_a_date(text, message):
    with pytest.raises(MS.MembershipError, match=message):
        MS.parse_until(text, CHICAGO, now=T0)
    assert MS.parse_until("2026-01-21", CHICAGO, now=T0)  # today: ends tonight


@pytest.mark.parametrize("text", ["bad addr", "nobody", "a@b", "@example.org"])
def test_addresses_are_checked(text):
    with pytest.raises(MS.MembershipError, match="malformed address"):
        MS.parse_address(text)
    assert MS.parse_address(" Gus@Example.ORG ") == "Gus@example.org"


# ---------------------------------------------------------------- through sync


def test_sync_sends_to_extra_members_and_removes_them_when_they_expire(store, config):
    now = dt.datetime.now(dt.timezone.utc)
    MS.add(store, STAFF, GUEST, "Gus Guest", now + dt.timedelta(days=1), "alice", "cli")
    MS.add(store, STAFF, "instructor@example.edu", "", None, "alice", "cli")  # the roster holds them already
    result = Y.run(config)
    assert result.warnings == []
    got = snapshot_members(config)
    assert got[GUEST.lower()] == ("Gus Guest", "extra")
    assert got["instructor@example.edu"] == ("Jane Doe", "roster")
    assert "guest@example.org" not in snapshot_members(config, "staff@lists-dev.example.edu")  # one address only
    # its until passes: the next sync removes the guest and says so
    store._execute("UPDATE list_members SET until = ? WHERE email_key = ?",
                   (store._ts(now - dt.timedelta(minutes=1)), GUEST.lower()))
    result = Y.run(config)
    assert f"members: {GUEST}'s extra membership of {STAFF} expired" in result.notes
    assert GUEST.lower() not in snapshot_members(config)
    assert [k[0] for k in kinds(store)] == ["add", "add", "expire"]


def test_a_store_that_is_down_keeps_the_installed_extra_members(store, config, backend, monkeypatch):
    MS.add(store, STAFF, GUEST, "Gus Guest", None, "alice", "cli")
    assert Y.run(config).warnings == []
    store.close()
    if backend == "sqlite":
        config.store.path.rename(config.store.path.with_suffix(".away"))
    else:
        monkeypatch.setenv(config.store.dsn_env, "postgresql://nobody@127.0.0.1:1/none?connect_timeout=2")
    result = Y.run(config)
    assert any("keeping the installed snapshot's 1 extra or joined member" in w for w in result.warnings), \
        result.warnings
    assert snapshot_members(config)[GUEST.lower()] == ("Gus Guest", "extra")
