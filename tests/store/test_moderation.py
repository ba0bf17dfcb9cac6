"""Held posts in the store, on SQLite and on the real PostgreSQL: ingest from the spool, an owner's
decision (by reply or on the page), expiry and its notice, and the release through (a fake) sendmail."""

from __future__ import annotations

import datetime as dt
import email
import email.policy
import json

import pytest

from listfilter.common import spool as SP
from listfilter.common.events import Request, random_id, stable_id
from listfilter.common.snapshot import Snapshot
from listfilter.store import moderation as MOD
from listfilter.sync import config as C
from listfilter.sync import run as Y

from ..conftest import COURSE_LISTS
from ..mail.test_deliver import fake_sendmail
from . import test_database as DB
from .test_database import CSV_ROSTER

#: The store fixtures of test_database (pytest finds fixtures among a module's names); config_path is this module's.
backend, store_toml, config, store = DB.backend, DB.store_toml, DB.config, DB.store

UTC = dt.timezone.utc
STUDENTS = "students@lists.example.edu"
NOW = dt.datetime.now(UTC).replace(microsecond=0)
POST = (b"From: Stranger <stranger@example.org>\nTo: students@lists.example.edu\nSubject: may I join?\n"
        b"Message-ID: <h1@example.org>\n\nHello\n")


@pytest.fixture
def calls(tmp_path):
    return fake_sendmail(tmp_path)


@pytest.fixture
def config_path(make_config, store_toml, calls):  # this module's students@ holds
    lists = COURSE_LISTS.replace('reply_to = "staff"\n', 'reply_to = "staff"\nnon_member_posts = "hold"\n')
    return make_config(lists + "\n[store]\n" + store_toml, roster=CSV_ROSTER, site=f'sendmail = "{calls[0]}"')


def sent(calls) -> list[tuple[list[str], bytes]]:
    d = calls[1]
    return [((d / f"{i}.args").read_text().splitlines(), (d / f"{i}.msg").read_bytes())
            for i in range(len(list(d.glob("*.args"))))]


def hold(config, message: bytes = POST, *, held_at: dt.datetime = NOW, hold_days: int = 14, sender=None,
         no_notice: str = "") -> str:
    """A held post in the spool, as listfilter-deliver leaves it; its id."""
    held_id = random_id()
    msgid = email.message_from_bytes(message)["Message-ID"]
    SP.ensure(config.site.spool_dir)
    SP.write_held(config.site.spool_dir, held_id, message, {
        "id": held_id, "list": STUDENTS, "post_key": msgid, "message_id": msgid,
        "event_id": stable_id(msgid, STUDENTS), "envelope_sender": sender or "stranger@example.org",
        "sender_email": "stranger@example.org", "sender_name": "Stranger", "subject": "may I join?",
        "reason": "stranger@example.org is not a member", "held_at": held_at.isoformat(), "hold_days": hold_days,
        "queue_id": "4ABC", "no_notice": no_notice})
    return held_id


def status(store, held_id: str) -> str:
    return MOD.get(store, held_id).status


# ---------------------------------------------------------------- ingest


def test_ingest_takes_the_message_in_and_empties_the_spool(config, store):
    held_id = hold(config)
    notes, warnings = MOD.ingest(config, store, NOW)
    assert notes == ["moderation: 1 held post taken in from the spool"] and warnings == []
    post = MOD.get(store, held_id)
    assert post.message == POST and post.status == "held" and post.post_key == "<h1@example.org>"
    assert post.held_at == NOW and post.expires_at == NOW + dt.timedelta(days=14)
    assert SP.pending_held(config.site.spool_dir) == []
    assert list((config.site.spool_dir / "held").glob("*.eml")) == []
    assert MOD.ingest(config, store, NOW) == ([], [])  # nothing more
    assert [p.id for p in MOD.held_posts(store)] == [held_id]
    assert MOD.held_posts(store, lists=["staff@lists.example.edu"]) == []


def test_an_unreadable_record_is_set_aside_and_the_rest_go_on(config, store):
    good = hold(config)
    bad = hold(config)
    path = config.site.spool_dir / "held" / f"{bad}.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), "hold_days": "soon"}))
    notes, warnings = MOD.ingest(config, store, NOW)
    assert [w.split(":")[0] for w in warnings] == [f"held post {bad}.json set aside"]
    assert "hold_days: not a number of days" in warnings[0]
    assert MOD.get(store, good) is not None and MOD.get(store, bad) is None
    assert len(list((config.site.spool_dir / "held" / "bad").glob(f"{bad}.*"))) >= 2  # record, message, reasons


# ---------------------------------------------------------------- decisions


def test_the_first_decision_counts(config, store):
    held_id = hold(config)
    MOD.ingest(config, store, NOW)
    first = MOD.decide(store, held_id, "approve", "prof@example.edu", "web", NOW)
    assert first.changed and first.status == "approved" and "next sync" in first.message
    again = MOD.decide(store, held_id, "discard", "other@example.edu", "mail", NOW)
    assert not again.changed and again.message.endswith("was already approved by prof@example.edu (web)")
    assert status(store, held_id) == "approved"
    assert not MOD.decide(store, "f" * 32, "approve", "prof@example.edu", "web", NOW).changed
    with pytest.raises(ValueError):
        MOD.decide(store, held_id, "admit", "prof@example.edu", "web", NOW)


def test_a_decision_names_the_list_and_comes_in_time(config, store):
    held_id = hold(config, hold_days=1)
    MOD.ingest(config, store, NOW)
    wrong = MOD.decide(store, held_id, "approve", "x@example.edu", "mail", NOW, list_address="staff@lists.example.edu")
    assert not wrong.changed and wrong.message == f"no held post {held_id} on staff@lists.example.edu"
    late = MOD.decide(store, held_id, "approve", "x@example.edu", "mail", NOW + dt.timedelta(days=1))
    assert not late.changed and late.message.endswith("has expired")
    assert status(store, held_id) == "held"


def test_a_reply_in_the_spool_is_applied_and_removed(config, store):
    held_id = hold(config)
    SP.write_request(config.site.spool_dir, Request(id=random_id(), at=NOW.isoformat(), action="discard",
                                                    list_address=STUDENTS, subject=held_id, by="prof@example.edu"))
    notes, warnings = MOD.ingest(config, store, NOW)
    assert warnings == [] and notes[-1].startswith("moderation: discard by prof@example.edu: the post from")
    assert status(store, held_id) == "discarded" and MOD.get(store, held_id).decided_by == "prof@example.edu (mail)"
    assert SP.pending_requests(config.site.spool_dir) == []


# ---------------------------------------------------------------- expiry


def test_expiry_and_the_posters_notice_once(config, store, calls):
    old = hold(config, held_at=NOW - dt.timedelta(days=3), hold_days=2)
    auto = hold(config, POST.replace(b"Subject:", b"Auto-Submitted: auto-replied\nSubject:"),
                held_at=NOW - dt.timedelta(days=3), hold_days=2, no_notice="auto-submitted")  # as deliver found
    fresh = hold(config)
    MOD.ingest(config, store, NOW)
    assert MOD.expire(config, store, NOW)[0] == ["moderation: 2 held posts expired (nobody decided)"]
    assert (status(store, old), status(store, auto), status(store, fresh)) == ("expired", "expired", "held")
    lists = Y.plan(C.load(config.path), suppressed={}).lists
    notes, warnings = MOD.send_owed(config, store, lists, NOW)
    assert warnings == [] and notes == [f"moderation: told <stranger@example.org> that their post to {STUDENTS}"
                                        " expired"]
    [(argv, message)] = sent(calls)
    assert argv == ["-G", "-i", "-f", "<>", "--", "stranger@example.org"]
    notice = email.message_from_bytes(message, policy=email.policy.default)
    assert notice["Auto-Submitted"] == "auto-replied" and notice["In-Reply-To"] == "<h1@example.org>"
    text = notice.get_body(("plain",)).get_content()
    assert "nobody approved it within\n2 days" in text and "may I join?" in text
    assert MOD.send_owed(config, store, lists, NOW) == ([], [])  # once; and none to the automatic sender
    assert len(sent(calls)) == 1


def test_the_mail_log_says_what_became_of_a_held_post(config, store):
    from listfilter.store.ingest import ingest as ingest_events

    held_id = hold(config)
    MOD.ingest(config, store, NOW)
    SP.write_event(config.site.spool_dir, _held_event(held_id))
    ingest_events(store, config.site.spool_dir)
    MOD.decide(store, held_id, "discard", "prof@example.edu", "web", NOW)
    MOD.expire(config, store, NOW)
    row = store.get(stable_id("<h1@example.org>", STUDENTS))
    assert row.status == "discarded" and row.error_message == "held, then discarded by prof@example.edu (web)"


def _held_event(held_id: str):
    from listfilter.common.events import Event, now_utc

    return Event(id=stable_id("<h1@example.org>", STUDENTS), status="held", list_address=STUDENTS,
                 created_at=now_utc(), rule="poster", sender_email="stranger@example.org",
                 message_id="<h1@example.org>", error_message=f"held as {held_id}")


# ---------------------------------------------------------------- release, through a whole sync


def test_sync_releases_an_approved_post_once(config, store, calls):
    held_id = hold(config)
    MOD.ingest(config, store, NOW)
    MOD.decide(store, held_id, "approve", "prof@example.edu", "mail", NOW)
    result = Y.run(config)
    assert f"moderation: released the approved post from stranger@example.org to {STUDENTS}" in result.notes
    with Snapshot(config.site.snapshot_path) as snap:
        assert snap.approved(STUDENTS, held_id) == "<h1@example.org>"  # what lets the release through
    [(argv, message)] = sent(calls)
    assert argv == ["-G", "-i", "-f", "stranger@example.org", "--", STUDENTS]
    assert message == f"X-Listfilter-Approved: {held_id}\n".encode() + POST
    assert status(store, held_id) == "released"
    Y.run(config)
    assert len(sent(calls)) == 1  # released once
    with Snapshot(config.site.snapshot_path) as snap:  # still let through while Postfix may retry it
        assert snap.approved(STUDENTS, held_id) == "<h1@example.org>"


def test_a_post_approved_after_the_snapshot_waits_and_a_failure_is_retried(config, store, calls):
    held_id = hold(config)
    MOD.ingest(config, store, NOW)
    Y.run(config)  # a snapshot without it
    MOD.decide(store, held_id, "approve", "prof@example.edu", "web", NOW)
    lists = Y.plan(C.load(config.path), suppressed={}).lists
    assert MOD.release(config, store, lists, NOW) == ([], [])  # the installed snapshot does not let it through
    assert sent(calls) == [] and status(store, held_id) == "approved"
    (calls[1] / "FAIL").touch()
    result = Y.run(config)
    assert any(w.startswith(f"moderation: the approved post {held_id} to {STUDENTS} was not released")
               for w in result.warnings)
    assert status(store, held_id) == "approved"
    (calls[1] / "FAIL").unlink()
    Y.run(config)
    assert status(store, held_id) == "released" and len(sent(calls)) == 1


def test_approved_lists_what_the_snapshot_lets_through(config, store):
    a, b, c = hold(config), hold(config, POST.replace(b"<h1@", b"<h2@")), hold(config, POST.replace(b"<h1@", b"<h3@"))
    MOD.ingest(config, store, NOW)
    MOD.decide(store, a, "approve", "p", "web", NOW)
    MOD.decide(store, b, "discard", "p", "web", NOW)
    assert MOD.approved(store) == [(STUDENTS, a, "<h1@example.org>")]
    store._execute("UPDATE held_posts SET status = 'released', released_at = ? WHERE id = ?",
                   (store._ts(NOW - dt.timedelta(days=MOD.RELEASE_WINDOW_DAYS + 1)), a))
    assert MOD.approved(store) == [] and status(store, c) == "held"


def test_migration_9_moves_the_expiry_notice_out_of_released_at(config, backend, monkeypatch):
    """Version 8 marked an expired post's notice as dealt with in released_at; version 9 has notified_at."""
    from listfilter.store import database as ST
    from listfilter.store import migrations as MG

    with ST.open_store(config.store, create=True) as s:
        monkeypatch.setattr(MG, "MIGRATIONS", MG.MIGRATIONS[:8])
        assert s.upgrade()[-1].version == 8
        monkeypatch.undo()
        for ident, status, released in (("a" * 32, "expired", NOW), ("b" * 32, "expired", None),
                                        ("c" * 32, "released", NOW)):
            s._execute("INSERT INTO held_posts (id, list_address, event_id, post_key, status, held_at, expires_at,"
                       " released_at, message) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                       (ident, STUDENTS, ident, "<k@x>", status, s._ts(NOW), s._ts(NOW),
                        s._ts(released) if released else None, b"x"))
        assert [m.version for m in s.upgrade()][0] == 9
        got = {r[0][0]: (r[1] is not None, r[2] is not None)
               for r in s._q("SELECT id, released_at, notified_at FROM held_posts ORDER BY id")}
        assert got == {"a": (False, True), "b": (False, False), "c": (True, False)}
