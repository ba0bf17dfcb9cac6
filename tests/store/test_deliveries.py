"""Each member's outcome in the store (``reinjections``, ``deliveries``), on SQLite and the real PostgreSQL:
the migration, which line wins, expiry, two writers at once, the filter, retention, and `listfilter log`."""

from __future__ import annotations

import datetime as dt
import json
import threading

import pytest

from listfilter.store import database as ST
from listfilter.store import deliveries as DV
from listfilter.store import migrations as MG

from ..cli.runner import listfilter
from . import test_database as DB
from .test_database import STUDENTS, T0, entry, event_id

# the mail log's fixtures: a store on each backend, its config
backend, store_toml, config_path, config, store = DB.backend, DB.store_toml, DB.config_path, DB.config, DB.store

ALICE, BOB = "alice@example.edu", "bob@example.edu"
HOST, COPY = "mail", "4AB0001F"


def outcome(n: int, rcpt: str, status: str, minutes: int = 0, **kw) -> DV.Delivery:
    at = T0 + dt.timedelta(minutes=minutes)
    return DV.Delivery(event_id(n), rcpt, status, at, at, kw.pop("host", HOST), kw.pop("queue_id", COPY),
                       "relay.example.edu[192.0.2.25]:25", kw.pop("dsn", {"sent": "2.0.0", "deferred": "4.2.0"}
                                                                  .get(status, "5.1.1")),
                       kw.pop("reply", f"{status} reply"), "0.5")


def write(store, *items) -> None:
    w = DV.Writer()
    for item in items:
        if isinstance(item, DV.Reinjection):
            w.add(item)
        else:
            w.outcome(item)
    w.commit(store)


def rows(store, n: int = 1) -> dict[str, DV.Delivery]:
    return {d.recipient: d for d in DV.of_event(store, event_id(n))}


def test_migration_7_adds_the_tables_and_keeps_the_log(config, backend, monkeypatch):
    with ST.open_store(config.store, create=True) as s:
        monkeypatch.setattr(MG, "MIGRATIONS", MG.MIGRATIONS[:6])
        assert s.upgrade()[-1].version == 6
        monkeypatch.undo()
        s.upsert([entry(1), entry(2)])
        assert [m.version for m in s.upgrade()][0] == 7
        s.require_current()
        assert s.count() == 2
        write(s, DV.Reinjection(HOST, COPY, event_id(1), T0), outcome(1, ALICE, "sent"))
        assert rows(s)[ALICE].status == "sent"
        with pytest.raises(s.refused_errors()):  # the CHECK: only the four outcome words
            s._execute("INSERT INTO deliveries (event_id, recipient, status, at, first_at, updated_at)"
                       " VALUES (?, ?, ?, ?, ?, ?)", (event_id(1), BOB, "delivered", s._ts(T0), s._ts(T0), s._ts(T0)))


def test_a_retry_updates_the_member_and_a_deferral_never_hides_an_outcome(store):
    store.upsert([entry(1)])
    write(store, outcome(1, ALICE, "deferred", 0, reply="450 4.2.0 mailbox busy"), outcome(1, BOB, "sent", 0))
    write(store, outcome(1, ALICE, "sent", 30, reply="250 2.0.0 Ok: queued as 9F1"))
    got = rows(store)
    assert got[ALICE].status == "sent" and got[ALICE].reply == "250 2.0.0 Ok: queued as 9F1"
    assert got[ALICE].first_at == T0 and got[ALICE].at == T0 + dt.timedelta(minutes=30)  # deferred first
    # a second copy of the same post to bob (a batch sent again after a kill) is deferred later
    write(store, outcome(1, BOB, "deferred", 40, queue_id="4AB0002F"))
    assert rows(store)[BOB].status == "sent"
    # lines read again, or out of order: an older deferral changes nothing; the newer of two outcomes wins
    write(store, outcome(1, ALICE, "deferred", 0))
    assert rows(store)[ALICE].status == "sent"
    write(store, outcome(1, BOB, "bounced", 50))
    assert rows(store)[BOB].status == "bounced"
    write(store, outcome(1, BOB, "sent", 10))
    assert rows(store)[BOB].status == "bounced"
    assert store._q("SELECT count(*) FROM deliveries")[0][0] == 2


def test_expiry_marks_only_that_copys_deferred_members(store):
    store.upsert([entry(1), entry(2)])
    write(store, outcome(1, ALICE, "deferred"), outcome(1, BOB, "sent"), outcome(2, ALICE, "deferred", queue_id="X"))
    w = DV.Writer()
    w.expired(event_id(1), HOST, COPY, T0 + dt.timedelta(days=5))
    w.commit(store)
    assert {r: d.status for r, d in rows(store).items()} == {ALICE: "expired", BOB: "sent"}
    assert rows(store)[ALICE].reply == "deferred reply"  # the last deferral's reason stays
    assert rows(store, 2)[ALICE].status == "deferred"


def test_a_queue_id_is_matched_while_in_the_queue_and_per_host(store):
    store.upsert([entry(1), entry(2)])
    write(store, DV.Reinjection(HOST, COPY, event_id(1), T0), DV.Reinjection("other", COPY, event_id(2), T0))
    assert DV.copies(store, HOST, [COPY, "NOSUCH"]) == {COPY: event_id(1)}
    assert DV.copies(store, "other", [COPY]) == {COPY: event_id(2)}
    assert DV.copies(store, HOST, [COPY], since=T0 + dt.timedelta(days=8)) == {}
    w = DV.Writer()
    w.removed(event_id(1), HOST, COPY, T0 + dt.timedelta(minutes=1))
    w.commit(store)
    assert DV.copies(store, HOST, [COPY]) == {}
    write(store, DV.Reinjection(HOST, COPY, event_id(2), T0 + dt.timedelta(hours=1)))  # the id, used again
    assert DV.copies(store, HOST, [COPY]) == {COPY: event_id(2)}
    assert DV.queue_ids(store, [event_id(1), event_id(2)]) == {event_id(1): [COPY], event_id(2): [COPY, COPY]}
    [r] = DV.reinjections(store, event_id(1))
    assert r.removed_at == T0 + dt.timedelta(minutes=1)


def test_posts_are_found_by_message_id_and_list(store):
    store.upsert([entry(1), entry(2, list_address="staff@lists.example.edu"), entry(3, message_id="bare@example.edu")])
    found = DV.posts(store, [("m1@example.edu", STUDENTS), ("m2@example.edu", STUDENTS),
                             ("m2@example.edu", "STAFF@lists.example.edu"), ("bare@example.edu", STUDENTS)])
    assert found == {("m1@example.edu", STUDENTS): event_id(1),
                     ("m2@example.edu", "staff@lists.example.edu"): event_id(2),
                     ("bare@example.edu", STUDENTS): event_id(3)}


def test_two_writers_at_once_count_each_member_once(config, store):
    """Two hosts sharing the store write the same members' lines at the same moment."""
    store.upsert([entry(1)])
    members = [f"m{i}@example.org" for i in range(300)]
    errors = []

    def host(name):
        try:
            with ST.open_store(config.store) as s:
                for _ in range(3):
                    write(s, DV.Reinjection(name, COPY, event_id(1), T0),
                          *(outcome(1, m, "sent", host=name) for m in members))
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=host, args=(f"host{i}",)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert store._q("SELECT count(*) FROM deliveries")[0][0] == 300
    assert DV.counts(store, [event_id(1)]) == {event_id(1): {"sent": 300}}


def test_counts_summary_and_the_members_filter(store):
    store.upsert([entry(1), entry(2), entry(3), entry(4, recipients=[], recipient_count=0),
                  entry(5, status="rejected", recipients=[], recipient_count=0)])
    write(store, outcome(1, ALICE, "sent"), outcome(1, BOB, "sent"),
          outcome(2, ALICE, "sent"), outcome(2, BOB, "deferred"),
          outcome(3, ALICE, "bounced"))
    counts = DV.counts(store, [event_id(n) for n in range(1, 6)])
    said = {n: DV.summary(e.status, e.recipient_count, counts.get(e.id))
            for n, e in ((int(e.subject.split()[-1]), e) for e in store.entries())}
    assert said == {1: "2 sent", 2: "1 sent · 1 deferred", 3: "1 bounced · 1 not yet read",
                    4: "", 5: ""}
    assert DV.summary("delivered", 45, None) == DV.NOT_YET_READ == "handed to Postfix, outcome not yet read"
    assert DV.summary("delivered", 45, {"sent": 43, "bounced": 2}) == "43 sent · 2 bounced"
    subjects = lambda **kw: sorted(e.subject for e in store.entries(**kw))  # noqa: E731
    assert subjects(members=DV.MEMBER_FILTERS["deferred"]) == ["Message 2"]
    assert subjects(members=DV.MEMBER_FILTERS["bounced"]) == ["Message 3"]
    assert subjects(members=DV.MEMBER_FILTERS["not-sent"]) == ["Message 2", "Message 3"]
    assert subjects(members=DV.MEMBER_FILTERS["not-sent"], status=["delivered"], lists=[STUDENTS]) == [
        "Message 2", "Message 3"]
    assert store.count(members=DV.MEMBER_FILTERS["expired"]) == 0


def test_awkward_replies_are_kept_as_they_came(store):
    store.upsert([entry(1)])
    reply = "550 5.7.1 <b>nein</b> \u00fcberf\u00fcllt \U0001F4EC 'quoted' \"double\" (nested (parens))"
    write(store, outcome(1, ALICE, "bounced", reply=reply))
    assert rows(store)[ALICE].reply == reply


def test_retention_takes_the_outcomes_with_their_post(store):
    now = T0 + dt.timedelta(days=100)
    store.upsert([entry(1, created_at=(now - dt.timedelta(days=95)).isoformat()),
                  entry(2, created_at=(now - dt.timedelta(days=5)).isoformat())])
    write(store, DV.Reinjection(HOST, "OLD", event_id(1), T0), DV.Reinjection(HOST, "NEW", event_id(2), T0),
          outcome(1, ALICE, "sent"), outcome(2, ALICE, "sent"))
    assert store.purge(90, 0, now=now) == (1, 0)
    assert store._q("SELECT event_id FROM deliveries") == [(event_id(2),)]
    assert store._q("SELECT queue_id FROM reinjections") == [("NEW",)]


def test_log_command_shows_the_members_outcomes(config_path, store):
    store.upsert([entry(1), entry(2), entry(3, status="rejected", recipients=[], recipient_count=0)])
    write(store, DV.Reinjection(HOST, COPY, event_id(1), T0), outcome(1, ALICE, "sent"), outcome(1, BOB, "deferred"))
    proc = listfilter(config_path, "log")
    assert proc.returncode == 0, proc.stderr
    counts = [line.split("\t")[4] for line in proc.stdout.splitlines()]
    assert counts == ["0", "2 (handed to Postfix, outcome not yet read)", "2 (1 sent · 1 deferred)"]
    proc = listfilter(config_path, "log", "--members", "deferred", "--json")
    [row] = json.loads(proc.stdout)
    assert row["outcomes"] == {"sent": 1, "deferred": 1} and row["outcome"] == "1 sent · 1 deferred"
    assert row["reinjected_queue_ids"] == [COPY]
    assert json.loads(listfilter(config_path, "log", "--members", "bounced", "--json").stdout) == []
    proc = listfilter(config_path, "log", "--members", "lost")
    assert proc.returncode == 2 and "'lost' is not one of" in proc.stderr
