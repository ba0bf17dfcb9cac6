"""Deferred rows in the store (SQLite and the real PostgreSQL): an outcome replaces a deferral, never the reverse.

A deferral (``deferred``, or the older ``failed``) has the id of the post's
eventual outcome (one per message and list). Whatever order the records are
ingested in, the row ends as the outcome; between two deferrals, or two
outcomes, the newest wins. Migration 6 brings a version-5 store the status
and the HELO column, keeping every row.
"""

from __future__ import annotations

import datetime as dt
import json

import pytest

from listfilter.common import spool as SP
from listfilter.common.events import Event, from_json
from listfilter.store import database as ST
from listfilter.store import ingest as IN
from listfilter.store import migrations as MG

from ..cli.runner import listfilter
from . import test_database as DB
from .test_database import STUDENTS, T0, entry, event, event_id

#: The store fixtures of test_database (pytest finds fixtures among a module's names).
backend, store_toml, config_path, config, store = DB.backend, DB.store_toml, DB.config_path, DB.config, DB.store

LATER = (T0 + dt.timedelta(hours=1)).isoformat()
DEFERRED = dict(status="deferred", recipients=[], recipient_count=0,
                error_message="4.3.0 snapshot /var/lib/listfilter/snapshot.sqlite is missing (run listfilter sync);"
                              " will retry")


def status(store) -> tuple[str, dt.datetime]:
    [row] = store.entries()
    return row.status, row.created_at


@pytest.mark.parametrize("outcome", ["delivered", "bounced", "discarded"])
def test_the_outcome_of_the_retry_replaces_the_deferral(store, outcome):
    store.upsert([entry(1, **DEFERRED)])
    assert status(store) == ("deferred", T0 + dt.timedelta(minutes=1))
    store.upsert([entry(1, status=outcome, created_at=LATER)])
    assert status(store) == (outcome, T0 + dt.timedelta(hours=1))
    assert store.count() == 1


def test_a_deferral_never_replaces_an_outcome_newer_or_older(store):
    store.upsert([entry(1)])  # delivered at T0 + 1 min
    store.upsert([entry(1, **DEFERRED, created_at=LATER)])  # a second copy deferred later
    assert status(store)[0] == "delivered"
    store.upsert([entry(1, **DEFERRED)])  # the same deferral ingested late
    assert status(store)[0] == "delivered"
    [row] = store.entries()
    assert row.recipient_count == 2 and row.error_message == ""


def test_an_older_outcome_ingested_after_a_deferral_still_wins(store):
    store.upsert([entry(1, **DEFERRED, created_at=LATER)])
    store.upsert([entry(1)])
    assert status(store) == ("delivered", T0 + dt.timedelta(minutes=1))


def test_deferrals_update_one_row_newest_first_and_failed_counts_as_one(store):
    for n, minutes in enumerate((5, 10, 7)):
        store.upsert([entry(1, **{**DEFERRED, "error_message": f"try {n}"},
                            created_at=(T0 + dt.timedelta(minutes=minutes)).isoformat())])
    [row] = store.entries()
    assert (row.status, row.error_message, store.count()) == ("deferred", "try 1", 1)
    store.upsert([entry(1, status="failed", created_at=LATER)])  # an older version's word for a deferral
    assert status(store)[0] == "failed"
    store.upsert([entry(1, **DEFERRED)])  # not newer
    assert status(store)[0] == "failed"
    store.upsert([entry(1)])
    assert status(store)[0] == "delivered"


def test_ingest_of_a_deferral_and_its_outcome_in_one_batch_or_two(store, config):
    spool = config.site.spool_dir
    SP.ensure(spool)
    deferral = Event(id=event_id(1), status="deferred", list_address=STUDENTS, created_at=LATER,
                     error_message="4.3.0 …; will retry")
    outcome = from_json(json.dumps(event(1)).encode())
    # a second copy's deferral (newer) beside the first copy's delivery, both waiting: one batch
    SP.write_event(spool, outcome)
    SP.write_event(spool, deferral)
    assert len(SP.pending_events(spool)) == 2
    assert IN.ingest(store, spool).ingested == 2
    assert status(store)[0] == "delivered"
    # a deferral alone, repeated on every retry, then the outcome: separate ingests, one row
    for n in range(3):
        SP.write_event(spool, deferral._replace(id=event_id(2), created_at=(T0 + dt.timedelta(minutes=n)).isoformat(),
                                                error_message=f"try {n}"))
        assert len(SP.pending_events(spool)) == 1
        IN.ingest(store, spool)
        assert store.get(event_id(2)).error_message == f"try {n}"
    SP.write_event(spool, outcome._replace(id=event_id(2), created_at=LATER))
    IN.ingest(store, spool)
    assert store.get(event_id(2)).status == "delivered" and store.count() == 2
    assert SP.pending_events(spool) == []


def test_upgrade_from_version_5_keeps_the_rows_and_accepts_deferred(config, backend, monkeypatch):
    with ST.open_store(config.store, create=True) as s:
        monkeypatch.setattr(MG, "MIGRATIONS", MG.MIGRATIONS[:5])
        assert [m.version for m in s.upgrade()] == [1, 2, 3, 4, 5]
        monkeypatch.undo()
        DB.insert_v2_row(s, 1)
        DB.insert_v2_row(s, 2, "failed")
        s._execute("UPDATE mail_logs SET rule = 'policy', client_address = '192.0.2.7' WHERE id = ?", (event_id(2),))
        with pytest.raises(s.refused_errors()):  # version 5 knows no "deferred"
            DB.insert_v2_row(s, 3, "deferred")
    with ST.open_store(config.store) as s:
        columns = DB.V2_ROW + ", rule, client_address"
        before = s._q(f"SELECT {columns} FROM mail_logs ORDER BY id")
        assert [m.version for m in s.upgrade()] == list(range(6, MG.LATEST + 1))
        s.require_current()
        assert s._q(f"SELECT {columns} FROM mail_logs ORDER BY id") == before  # every row and field kept
        assert {e.helo_name for e in s.entries()} == {""}
        rejected = entry(3, status="rejected", rule="policy", client_address="192.0.2.9", helo_name="mx.example.org",
                         recipients=[], recipient_count=0, subject="", body=None)
        s.upsert([rejected, entry(4, **DEFERRED)])
        assert s.get(rejected.id) == rejected and s.count(status=["deferred"]) == 1
        if backend == "sqlite":  # the table was rebuilt: its indexes too
            indexes = {r[0] for r in s._q("SELECT name FROM sqlite_master WHERE type = 'index'"
                                          " AND tbl_name = 'mail_logs' AND name NOT LIKE 'sqlite_%'")}
            assert indexes == {"mail_logs_created_at_idx", "mail_logs_status_idx", "mail_logs_list_idx",
                               "mail_logs_message_id_idx"}


def test_log_shows_deferrals_and_what_a_refusal_at_rcpt_knows(config_path, store):
    refused = entry(2, status="rejected", rule="policy", sender_name="", sender_email="stranger@example.org",
                    envelope_sender="stranger@example.org", client_address="192.0.2.7", helo_name="mx.example.org",
                    subject="", recipients=[], recipient_count=0)
    store.upsert([entry(0), entry(1, **DEFERRED), refused])
    proc = listfilter(config_path, "log", "--status", "deferred", "--status", "rejected")
    assert proc.returncode == 0, proc.stderr
    lines = [line.split("\t") for line in proc.stdout.splitlines()]
    assert lines == [
        ["2026-01-21 09:02 CST", "rejected", STUDENTS, "stranger@example.org", "0",
         "refused at RCPT: MAIL FROM <stranger@example.org>, client 192.0.2.7, HELO mx.example.org"],
        ["2026-01-21 09:01 CST", "deferred", STUDENTS, "Jane Doe <prof@example.edu>", "0", "Message 1"]]
    rows = json.loads(listfilter(config_path, "log", "--status", "rejected", "--json").stdout)
    assert [(r["client_address"], r["helo_name"]) for r in rows] == [("192.0.2.7", "mx.example.org")]
