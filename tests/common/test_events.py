"""listfilter.common.events: the event record, its one validation, ids, and bounce records."""

from __future__ import annotations

import json
import uuid

import pytest

from listfilter.common import events as E

STUDENTS = "students@lists.example.edu"


def event(**fields) -> E.Event:
    base = dict(id=E.stable_id("<m1@example.edu>", STUDENTS), status="delivered", list_address=STUDENTS,
                created_at="2026-01-21T15:00:00+00:00", rule="accept", list_display_name="CS 199 Students",
                sender_email="prof@example.edu", sender_name="Jane Doe", envelope_sender="prof@example.edu",
                client_address="192.0.2.1", subject="Grüße", message_id="<m1@example.edu>", queue_id="4ABC",
                recipients=("alice@example.edu", "bob@example.edu"), recipient_count=2, error_message="",
                body="Body \u2603\n")
    return E.Event(**{**base, **fields})


def record(**fields) -> bytes:
    """An event as JSON, with fields replaced (None removes one)."""
    data = json.loads(event().to_json())
    data.update(fields)
    return json.dumps({k: v for k, v in data.items() if v is not None}).encode()


# ---------------------------------------------------------------- round trip


@pytest.mark.parametrize("status", E.STATUSES)
def test_to_json_from_json_round_trip(status):
    ev = event(status=status)
    assert E.from_json(ev.to_json()) == ev


def test_to_json_is_compact_utf8_with_every_field():
    raw = event().to_json()
    assert "Grüße".encode() in raw and b", " not in raw
    assert list(json.loads(raw)) == list(E.FIELDS)
    assert json.loads(raw)["recipients"] == ["alice@example.edu", "bob@example.edu"]


def test_statuses():
    assert E.STATUSES == ("delivered", "bounced", "rejected", "failed", "discarded", "deferred", "held")
    assert set(E.MEANINGS) == set(E.STATUSES) and set(E.TEMPORARY) < set(E.STATUSES)


def test_defaults_make_a_minimal_event():
    ev = E.Event(id=E.random_id(), status="rejected", list_address=STUDENTS, created_at="2026-01-21T15:00:00+00:00")
    assert E.from_json(ev.to_json()) == ev
    assert ev.recipients == () and ev.recipient_count == 0 and ev.rule == "" and ev.client_address == ""


# ---------------------------------------------------------------- what from_json normalises


def test_from_json_normalises():
    ev = E.from_json(record(id=str(uuid.UUID(int=7)).upper(), list_address=" Students@Lists.Example.EDU ",
                            created_at="2026-01-21T09:00:00.123456-06:00", subject=None, rule=None,
                            recipient_count=None))
    assert ev.id == "00000000-0000-0000-0000-000000000007"  # the UUID form of older records, lower-cased
    assert ev.list_address == STUDENTS
    assert ev.created_at == "2026-01-21T15:00:00+00:00"  # UTC, whole seconds
    assert ev.subject == "" and ev.rule == ""  # missing text is ""
    assert ev.recipient_count == 2  # missing count: the recipients'


def test_from_json_naive_time_is_utc():
    assert E.from_json(record(created_at="2026-01-21T15:00:00")).created_at == "2026-01-21T15:00:00+00:00"


def test_from_json_replaces_nul_and_lone_surrogates():
    """PostgreSQL refuses NUL in text, and a lone surrogate is not UTF-8: replaced, not fatal."""
    raw = record(subject="PLACEHOLDER").replace(b"PLACEHOLDER", b"bad\\u0000nul \\ud800 end")
    ev = E.from_json(raw)
    assert ev.subject == "bad\ufffdnul ? end"


def test_from_json_caps_long_fields():
    ev = E.from_json(record(subject="s" * 5000, queue_id="q" * 200, recipients=["r" * 400], body="b" * 10_000))
    assert len(ev.subject) == E.FIELD_MAX and len(ev.queue_id) == 100 and len(ev.recipients[0]) == 320
    assert len(ev.body) == 10_000  # the body is capped by the store, not here


# ---------------------------------------------------------------- every BadEvent


BAD = [
    # raw record, the start of the reason
    (b"{not json", "not JSON: "),
    (b"", "not JSON: "),
    (b"[1, 2]", "expected a JSON object, not list"),
    (b'"text"', "expected a JSON object, not str"),
    ('{"id": "caf\xe9"}'.encode("latin-1"), "not UTF-8 (byte 11)"),
    (record(id=None), "id: not an event id: None"),
    (record(id="../../etc/passwd"), "id: not an event id: '../../etc/passwd'"),
    (record(id=7), "id: not an event id: 7"),
    (record(id="0" * 31), "id: not an event id"),
    (record(status="sent"), "status: 'sent' is not one of delivered, bounced, rejected, failed, discarded"),
    (record(status=None), "status: None is not one of"),
    (record(subject={"a": 1}), "subject: expected a string, not dict"),
    (record(rule=5), "rule: expected a string, not int"),
    (record(list_address=""), "list_address: not an address: ''"),
    (record(list_address=None), "list_address: not an address"),
    (record(created_at=None), "created_at: missing"),
    (record(created_at=1700000000), "created_at: expected a string, not int"),
    (record(created_at="yesterday"), "created_at: not an ISO 8601 time: 'yesterday'"),
    (record(recipients="alice@example.edu"), "recipients: expected a list of strings"),
    (record(recipients=["alice@example.edu", 3]), "recipients: expected a list of strings"),
    (record(recipient_count=-1), "recipient_count: expected a count, not -1"),
    (record(recipient_count=True), "recipient_count: expected a count, not True"),
    (record(recipient_count="2"), "recipient_count: expected a count, not '2'"),
    (record(recipient_count=2.0), "recipient_count: expected a count, not 2.0"),
    (record(body=["x"]), "body: expected a string, not list"),
]


@pytest.mark.parametrize("raw,reason", BAD)
def test_bad_event(raw, reason):
    with pytest.raises(E.BadEvent) as info:
        E.from_json(raw)
    assert str(info.value).startswith(reason)
    assert isinstance(info.value, ValueError)


# ---------------------------------------------------------------- ids


def test_stable_id_is_one_per_message_and_list():
    a = E.stable_id("<m1@example.edu>", STUDENTS)
    assert len(a) == 32 and all(c in "0123456789abcdef" for c in a)
    assert a == E.stable_id("<m1@example.edu>", "Students@Lists.Example.EDU")  # a retry replaces the record
    assert a != E.stable_id("<m2@example.edu>", STUDENTS)
    assert a != E.stable_id("<m1@example.edu>", "staff@lists.example.edu")
    assert E.valid_id(a)


def test_random_id():
    ids = {E.random_id() for _ in range(100)}
    assert len(ids) == 100 and all(len(i) == 32 and E.valid_id(i) for i in ids)


@pytest.mark.parametrize("ident,valid", [
    ("0123456789abcdef0123456789ABCDEF", True),
    (str(uuid.uuid4()), True),
    ("0123456789abcdef0123456789abcde", False),
    ("0123456789abcdef0123456789abcdeg", False),
    ("../0123456789abcdef0123456789abcdef", False),
    ("", False),
])
def test_valid_id(ident, valid):
    assert E.valid_id(ident) is valid


# ---------------------------------------------------------------- bounce records


def bounce(**fields) -> E.BounceRecord:
    base = dict(id=E.random_id(), list_address=STUDENTS, received_at="2026-11-02T04:30:00+00:00", day="2026-11-01",
                member="alice@example.edu", permanent=("alice@example.edu",), temporary=(), queue_id="B0UNCE")
    return E.BounceRecord(**{**base, **fields})


def test_bounce_record_round_trip():
    rec = bounce(permanent=("a@example.edu", "b@example.edu"), temporary=("c@example.edu",))
    assert E.bounce_from_json(rec.to_json()) == rec
    assert json.loads(rec.to_json())["permanent"] == ["a@example.edu", "b@example.edu"]


def test_bounce_from_json_normalises_addresses():
    data = json.loads(bounce().to_json())
    data["permanent"] = ["B@Example.edu ", "a@example.edu", "b@example.edu"]
    assert E.bounce_from_json(json.dumps(data).encode()).permanent == ("a@example.edu", "b@example.edu")


@pytest.mark.parametrize("change,reason", [
    ({"id": "x"}, "id: not a record id"),
    ({"list_address": "nobody"}, "list_address: not an address"),
    ({"day": "yesterday"}, "day/received_at: not ISO 8601"),
    ({"received_at": ""}, "day/received_at: not ISO 8601"),
    ({"permanent": "alice@example.edu"}, "permanent: expected a list of addresses"),
    ({"temporary": ["not an address"]}, "temporary: expected a list of addresses"),
])
def test_bad_bounce_record(change, reason):
    data = {**json.loads(bounce().to_json()), **change}
    with pytest.raises(E.BadEvent, match=f"^{reason}"):
        E.bounce_from_json(json.dumps(data).encode())


@pytest.mark.parametrize("raw,reason", [(b"{", "not a JSON bounce record"), (b"\xff", "not a JSON bounce record"),
                                        (b"[]", "expected a JSON object, not list")])
def test_bounce_record_not_json(raw, reason):
    with pytest.raises(E.BadEvent, match=f"^{reason}"):
        E.bounce_from_json(raw)
