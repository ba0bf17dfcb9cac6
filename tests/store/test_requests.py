"""The spool's requests applied by sync (listfilter.store.requests), on SQLite and on the real PostgreSQL.

Requests are written as the mail side writes them (listfilter.common.spool.write_request); the
welcome and goodbye go through a fake sendmail; the whole sync is the real one (listfilter.sync.run).
"""

from __future__ import annotations

import datetime as dt
import email
import email.policy
from pathlib import Path

import pytest

from listfilter.common import spool as SP
from listfilter.common.events import Request, random_id
from listfilter.common.snapshot import Snapshot
from listfilter.store import database as ST
from listfilter.store import membership as MS
from listfilter.store import requests as RQ
from listfilter.sync import config as C
from listfilter.sync import run as Y

from ..conftest import COURSE_LISTS
from ..mail.test_deliver import fake_sendmail
from . import test_database as DB
from .test_database import CSV_ROSTER, T0

backend, store_toml = DB.backend, DB.store_toml

CLUB = "club@lists.example.edu"
HELPERS = "helpers@lists.example.edu"
OPTIN_LISTS = """
[lists.club]
display_name = "Chess Club"
members = { optin = true, eligible = "anyone" }
posters = ["prof@example.edu"]

[lists.helpers]
display_name = "CS 199 Helpers"
members = { optin = true, eligible = { roles = ["student"] }, approval = true }
posters = ["prof@example.edu"]
"""


@pytest.fixture
def calls(tmp_path) -> tuple[Path, Path]:
    return fake_sendmail(tmp_path)


@pytest.fixture
def config(make_config, store_toml, calls) -> C.Config:
    sendmail, _ = calls
    return C.load(make_config(COURSE_LISTS + OPTIN_LISTS + "\n[store]\n" + store_toml, roster=CSV_ROSTER,
                              site=f'sendmail = "{sendmail}"'))


@pytest.fixture
def store(config):
    with ST.open_store(config.store, create=True) as s:
        s.upgrade()
        yield s


def request(config, action: str, subject: str, list_address: str = CLUB, **fields) -> Path:
    record = Request(id=random_id(), at=T0.isoformat(), action=action, list_address=list_address, subject=subject,
                     **{"by": subject, **fields})
    SP.ensure(config.site.spool_dir)
    return SP.write_request(config.site.spool_dir, record)


def sent(calls_dir: Path) -> list[tuple[list[str], email.message.EmailMessage]]:
    n = len(list(calls_dir.glob("*.args")))
    return [((calls_dir / f"{i}.args").read_text().splitlines(),
             email.message_from_bytes((calls_dir / f"{i}.msg").read_bytes(), policy=email.policy.default))
            for i in range(n)]


def joined(store, address: str = CLUB) -> list[str]:
    return [k.email for k in MS.rows(store, address, ("joined",))]


def test_join_is_applied_once_and_owes_a_welcome(config, store):
    path = request(config, "join", "new@example.org", name="New Person")
    request(config, "join", "new@example.org", name="New Person")  # a second confirmation of the same join
    notes, warnings = RQ.ingest(config, store, T0)
    assert warnings == [] and not path.exists() and SP.pending_requests(config.site.spool_dir) == []
    assert joined(store) == ["new@example.org"]
    assert [k.name for k in MS.rows(store, CLUB)] == ["New Person"]
    assert any("joined" in n for n in notes) and any("already a member" in n for n in notes)
    [change] = MS.changes(store, CLUB)
    assert (change.action, change.via, change.notice, change.notified_at) == ("join", "mail", "welcome", None)


def test_leave_ends_the_joined_membership_and_one_click_an_extra_one(config, store):
    MS.join(store, CLUB, "new@example.org", "", "new@example.org", "mail", now=T0)
    MS.add(store, CLUB, "guest@example.org", "", None, "prof", "cli", now=T0)
    request(config, "leave", "new@example.org")
    request(config, "leave", "guest@example.org")  # by mail: an extra membership is the owners' to end
    RQ.ingest(config, store, T0)
    assert joined(store) == [] and [k.email for k in MS.extras(store, CLUB)] == ["guest@example.org"]
    request(config, "leave", "guest@example.org", via="one-click")
    RQ.ingest(config, store, T0)
    assert MS.extras(store, CLUB) == []
    assert [c.notice for c in MS.changes(store, CLUB)][:2] == ["goodbye", "goodbye"]


def test_a_bad_record_is_set_aside_with_its_reason(config, store):
    spool = config.site.spool_dir
    SP.ensure(spool)
    (spool / "requests" / "broken.json").write_text('{"id": "nope"}')
    good = request(config, "join", "new@example.org")
    notes, warnings = RQ.ingest(config, store, T0)
    [warning] = warnings
    assert "broken.json set aside" in warning and not good.exists()
    [bad] = [p for p in (spool / "requests" / "bad").iterdir() if not p.name.endswith(".reason")]
    assert "id" in Path(f"{bad}.reason").read_text()
    assert joined(store) == ["new@example.org"]


def test_a_list_no_longer_opt_in_drops_the_request(config, store):
    request(config, "join", "new@example.org", list_address="students@lists.example.edu")
    request(config, "join", "new@example.org", list_address="gone@lists.example.edu")
    notes, warnings = RQ.ingest(config, store, T0)
    warnings.sort(key=lambda w: "gone@" in w)
    assert len(warnings) == 2 and "not an opt-in list" in warnings[0] and "is no list" in warnings[1]
    assert SP.pending_requests(config.site.spool_dir) == [] and MS.rows(store) == []


def test_held_post_decisions_are_left_for_moderation(config, store):
    path = request(config, "approve", "0123456789abcdef0123456789abcdef")
    assert RQ.ingest(config, store, T0) == ([], [])
    assert path.exists()


def test_approval_pending_admit_deny(config, store):
    Y.run(config)  # an installed snapshot: who may join helpers@ (students)
    request(config, "pending", "alice@example.edu", list_address=HELPERS, name="Alice")
    request(config, "pending", "bob@example.edu", list_address=HELPERS)
    request(config, "pending", "stranger@example.org", list_address=HELPERS)
    notes, warnings = RQ.ingest(config, store, T0)
    assert ["may no longer join" in w for w in warnings] == [True], warnings
    assert sorted(store._q("SELECT email, status FROM join_requests")) == [
        ("alice@example.edu", "pending"), ("bob@example.edu", "pending")]
    assert joined(store, HELPERS) == []
    request(config, "admit", "alice@example.edu", list_address=HELPERS, by="prof@example.edu")
    request(config, "deny", "bob@example.edu", list_address=HELPERS, by="prof@example.edu")
    request(config, "admit", "carol@example.edu", list_address=HELPERS, by="prof@example.edu")
    notes, warnings = RQ.ingest(config, store, T0)
    assert any("no join request waits" in w for w in warnings), warnings
    assert sorted(store._q("SELECT email, status, decided_by FROM join_requests")) == [
        ("alice@example.edu", "admitted", "prof@example.edu"), ("bob@example.edu", "denied", "prof@example.edu")]
    [kept] = MS.rows(store, HELPERS, ("joined",))
    assert (kept.email, kept.name, kept.added_by) == ("alice@example.edu", "Alice", "prof@example.edu")


def test_a_confirmed_join_waits_when_approval_was_switched_on(config, store):
    Y.run(config)
    request(config, "join", "alice@example.edu", list_address=HELPERS)
    RQ.ingest(config, store, T0)
    assert store._q("SELECT status FROM join_requests") == [("pending",)] and joined(store, HELPERS) == []


def test_undecided_join_requests_expire(config, store):
    request(config, "pending", "alice@example.edu", list_address=HELPERS)
    RQ.ingest(config, store, T0)
    assert RQ.expire_pending(config, store, T0 + dt.timedelta(days=config.site.confirm_days - 1)) == 0
    assert RQ.expire_pending(config, store, T0 + dt.timedelta(days=config.site.confirm_days + 1)) == 1
    assert store._q("SELECT status FROM join_requests") == [("expired",)]


def test_sync_applies_then_welcomes_and_says_goodbye(config, store, calls):
    _, calls_dir = calls
    request(config, "join", "new@example.org")
    result = Y.run(config)
    assert not [w for w in result.warnings if "requests" in w], result.warnings
    with Snapshot(config.site.snapshot_path) as snap:
        assert snap.member(CLUB, "new@example.org") == ("new@example.org", "", "joined")
    [(argv, welcome)] = sent(calls_dir)
    assert argv[argv.index("-f") + 1] == "<>" and argv[-1] == "new@example.org"
    assert welcome["From"].addresses[0].addr_spec == "club-request@lists.example.edu"
    assert welcome["Auto-Submitted"] == "auto-generated" and "club-leave@lists.example.edu" in welcome.get_content()
    assert MS.changes(store, CLUB)[0].notified_at is not None
    Y.run(config)
    assert len(sent(calls_dir)) == 1  # sent once
    request(config, "leave", "new@example.org")
    Y.run(config)
    with Snapshot(config.site.snapshot_path) as snap:
        assert snap.member(CLUB, "new@example.org") is None
    (_, goodbye) = sent(calls_dir)[1]
    assert "has left" in goodbye.get_content()


def test_a_failed_send_is_retried_at_the_next_sync(config, store, calls):
    _, calls_dir = calls
    request(config, "join", "new@example.org")
    (calls_dir / "FAIL").write_text("")
    result = Y.run(config)
    assert any("welcome to new@example.org" in w and "retried" in w for w in result.warnings), result.warnings
    assert MS.changes(store, CLUB)[0].notified_at is None
    (calls_dir / "FAIL").unlink()
    Y.run(config)
    assert len(sent(calls_dir)) == 1 and MS.changes(store, CLUB)[0].notified_at is not None


def test_no_welcome_before_the_snapshot_has_the_member(config, store, calls):
    _, calls_dir = calls
    MS.join(store, CLUB, "new@example.org", "", "new@example.org", "mail", now=T0)
    lists = Y.plan(config).lists
    without = [l._replace(members=()) if l.address == CLUB else l for l in lists]
    RQ.send_owed(config, store, without, T0)
    assert sent(calls_dir) == [] and MS.changes(store, CLUB)[0].notified_at is None
    notes, _ = RQ.send_owed(config, store, lists, T0)
    assert len(sent(calls_dir)) == 1 and any("welcome sent" in n for n in notes)


def test_an_owners_decision_from_the_cli_or_the_page_is_the_replys(config, store):
    """owner_decision / decide_join (listfilter members admit/deny, the Members page): the first decision
    counts, the joiner must still be eligible, an old request has expired, a denial owes the denied message."""
    Y.run(config)
    for who in ("alice@example.edu", "bob@example.edu"):
        request(config, "pending", who, list_address=HELPERS)
    RQ.ingest(config, store, T0)
    now = T0 + dt.timedelta(hours=1)
    got = RQ.owner_decision(config, store, HELPERS, "alice@example.edu", "admit", "prof", "cli", now)
    assert got == (True, "admitted", f"alice@example.edu's request to join {HELPERS} is admitted; they become a"
                                     " member at the next sync")
    got = RQ.owner_decision(config, store, HELPERS, "alice@example.edu", "deny", "dean", "web", now)
    assert got.changed is False and got.message.startswith(f"alice@example.edu's request to join {HELPERS} was"
                                                           " already admitted by prof on 2026-01-21T10:00-06:00")
    # a reply with the same decision again is a note, not a warning (a second click, a retry)
    request(config, "admit", "alice@example.edu", list_address=HELPERS, by="prof@example.edu")
    notes, warnings = RQ.ingest(config, store, now)
    assert warnings == [] and "was already admitted by prof" in notes[0]
    assert joined(store, HELPERS) == ["alice@example.edu"]
    late = now + dt.timedelta(days=config.site.confirm_days + 1)
    assert RQ.owner_decision(config, store, HELPERS, "bob@example.edu", "deny", "prof", "cli", late).status == "expired"
    got = RQ.owner_decision(config, store, HELPERS, "bob@example.edu", "deny", "prof", "cli", now)
    assert got[:2] == (True, "denied")
    [deny] = [c for c in MS.changes(store, HELPERS) if c.action == "deny"]
    assert (deny.email, deny.actor, deny.via, deny.notice, deny.notified_at) == ("bob@example.edu", "prof", "cli",
                                                                                  "denied", None)
    assert [k.email for k in MS.rows(store, HELPERS)] == ["alice@example.edu"]  # a denial adds nobody
    assert RQ.owner_decision(config, store, CLUB, "bob@example.edu", "admit", "prof", "cli", now).message == \
        f"no join request waits: bob@example.edu has not asked to join {CLUB}"
    assert RQ.join_requests(store, HELPERS) == []
    assert [(r.email, r.status) for r in RQ.join_requests(store, status=("admitted", "denied"))] == [
        ("alice@example.edu", "admitted"), ("bob@example.edu", "denied")]
