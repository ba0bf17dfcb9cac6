"""`listfilter held` (the held posts), `held show`, `held approve` and `held discard`, in this process.

The bundled example (copied per test) with its SQLite store set up by `db upgrade`, a fake sendmail, and
held posts put in the spool as the mail side writes them, then taken into the store as sync does.
"""

from __future__ import annotations

import datetime as dt
import json

import pytest

from listfilter.common import spool as SP
from listfilter.common.events import random_id, stable_id
from listfilter.store import database as ST
from listfilter.store import moderation as MOD
from listfilter.sync import config as C

from ..mail.test_deliver import fake_sendmail
from .runner import listfilter

STAFF = "staff@lists.example.edu"
STUDENTS = "students@lists.example.edu"
NOW = dt.datetime.now(dt.timezone.utc).replace(microsecond=0)
PLAIN = (b"From: Stranger <stranger@example.org>\nTo: staff@lists.example.edu\nSubject: a question\n"
         b"Message-ID: <q-1@example.org>\n\nIs there room\nfor one more?\n")
HTML_ONLY = (b"From: Mallory <mallory@example.org>\nTo: students@lists.example.edu\nSubject: <b>look</b>\n"
             b"Message-ID: <m-1@example.org>\nMIME-Version: 1.0\nContent-Type: multipart/mixed; boundary=b\n\n"
             b"--b\nContent-Type: text/html\n\n<script>alert(1)</script><p>html</p>\n"
             b"--b\nContent-Type: application/pdf\nContent-Disposition: attachment; filename=x.pdf\n\nJVBER\n--b--\n")


@pytest.fixture
def site(example_config, tmp_path):
    sendmail, calls = fake_sendmail(tmp_path)
    text = example_config.read_text()
    example_config.write_text(text.replace('state_dir = "state"', f'state_dir = "state"\nsendmail = "{sendmail}"'))
    assert listfilter(example_config, "db", "upgrade").returncode == 0
    return C.load(example_config)


@pytest.fixture
def calls(site, tmp_path):
    return tmp_path / "calls"  # where the fake sendmail records each call


def hold(config, message: bytes = PLAIN, *, address: str = STAFF, held_at: dt.datetime = NOW,
         hold_days: int = 14) -> str:
    """A held post in the spool, taken into the store as sync does; its id."""
    held_id = random_id()
    message_id = message.split(b"Message-ID: ")[1].split(b"\n")[0].decode()
    sender = message.split(b"<")[1].split(b">")[0].decode()
    subject = message.split(b"Subject: ")[1].split(b"\n")[0].decode()
    SP.ensure(config.site.spool_dir)
    SP.write_held(config.site.spool_dir, held_id, message, {
        "id": held_id, "list": address, "post_key": message_id, "message_id": message_id,
        "event_id": stable_id(message_id, address), "envelope_sender": sender, "sender_email": sender,
        "sender_name": "", "subject": subject, "reason": f"{sender} is not a member of {address}; held",
        "held_at": held_at.isoformat(), "hold_days": hold_days})
    with ST.open_store(config.store) as store:
        MOD.ingest(config, store, NOW)
    return held_id


def post(config, held_id: str):
    with ST.open_store(config.store) as store:
        return MOD.get(store, held_id)


def test_the_list_shows_what_waits_and_all_shows_the_decided_too(example_config, site):
    assert listfilter(example_config, "held").stdout == "no held posts\n"
    first = hold(site)
    second = hold(site, HTML_ONLY, address=STUDENTS)
    ran = listfilter(example_config, "held")
    assert ran.returncode == 0, ran.stderr
    rows = [line.split("\t") for line in ran.stdout.splitlines()]
    assert sorted(r[0] for r in rows) == sorted([first, second])
    [row] = [r for r in rows if r[0] == first]
    assert row[1:5] == [STAFF, "stranger@example.org", "a question",
                        f"stranger@example.org is not a member of {STAFF}; held"]
    assert row[5].startswith("held ") and row[6].startswith("expires ") and len(row) == 7
    assert row[5].endswith(("-06:00", "-05:00"))  # the site's time zone
    assert [r[0] for r in map(lambda l: l.split("\t"), listfilter(example_config, "held", "--list", STAFF)
                              .stdout.splitlines())] == [first]
    data = json.loads(listfilter(example_config, "held", "--json").stdout)
    assert {d["id"]: (d["list"], d["status"]) for d in data} == {first: (STAFF, "held"), second: (STUDENTS, "held")}

    assert listfilter(example_config, "held", "discard", second, env={"SUDO_USER": "alice"}).returncode == 0
    assert [line.split("\t")[0] for line in listfilter(example_config, "held").stdout.splitlines()] == [first]
    lines = listfilter(example_config, "held", "--all").stdout.splitlines()
    [decided] = [line.split("\t") for line in lines if line.startswith(second)]
    assert decided[-1] == "discarded by alice (sudo root) (cli)"
    assert [d["decided_by"] for d in json.loads(listfilter(example_config, "held", "--all", "--json").stdout)
            if d["id"] == second] == ["alice (sudo root) (cli)"]
    assert listfilter(example_config, "held", "--list", "nope@lists.example.edu").returncode == 1


def test_show_prints_the_headers_and_the_text_never_interpreting_html(example_config, site):
    plain = hold(site)
    ran = listfilter(example_config, "held", "show", plain)
    assert ran.returncode == 0, ran.stderr
    lines = ran.stdout.splitlines()
    assert lines[:3] == [f"id: {plain}", f"list: {STAFF}", "from: stranger@example.org"]
    assert "status: held" in lines and "# headers" in lines and "Subject: a question" in lines
    assert ran.stdout.endswith("# text\nIs there room\nfor one more?\n")
    html = hold(site, HTML_ONLY, address=STUDENTS)
    ran = listfilter(example_config, "held", "show", html.upper())  # ids are read in any case
    assert "# HTML, shown as text\n<script>alert(1)</script><p>html</p>\n" in ran.stdout
    assert ran.stdout.endswith("# attachment: x.pdf\n")
    data = json.loads(listfilter(example_config, "held", "show", "--json", html).stdout)
    assert data["parts"] == [{"kind": "HTML, shown as text", "text": "<script>alert(1)</script><p>html</p>"}]
    assert "Subject: <b>look</b>" in data["headers"] and data["attachments"] == ["x.pdf"]


def test_approve_is_released_at_the_next_sync(example_config, site, calls):
    held_id = hold(site)
    ran = listfilter(example_config, "held", "approve", held_id)
    assert ran.returncode == 0, ran.stderr
    assert ran.stdout == (f"approved held post {held_id} from stranger@example.org to {STAFF}; it is released to"
                          " the members at the next sync\n")
    got = post(site, held_id)
    assert (got.status, got.decided_by) == ("approved", "root (cli)")
    assert list(calls.glob("*.args")) == []  # nothing sent until the sync


def test_approve_with_sync_releases_it_now(example_config, site, calls):
    held_id = hold(site)
    ran = listfilter(example_config, "held", "approve", "--sync", held_id)
    assert ran.returncode == 0, ran.stderr
    assert "\nsync: " in ran.stdout
    assert post(site, held_id).status == "released"
    [args] = [p.read_text().splitlines() for p in calls.glob("*.args")]
    assert args[-1] == STAFF  # handed back to Postfix, to the list address


@pytest.mark.parametrize("first, then, message", [
    ("approve", "approve", "was already approved by root (cli) "),
    ("approve", "discard", "was already approved by root (cli) "),
    ("discard", "approve", "was already discarded by root (cli) "),
])
def test_the_first_decision_counts_and_the_second_says_by_whom_and_when(example_config, site, first, then,
                                                                        message):
    held_id = hold(site)
    assert listfilter(example_config, "held", first, held_id).returncode == 0
    ran = listfilter(example_config, "held", then, held_id)
    assert ran.returncode == 1 and ran.stdout == ""
    assert ran.stderr.startswith(f"listfilter: held post {held_id} (from stranger@example.org to {STAFF}) {message}")
    assert ran.stderr.rstrip().endswith(("-06:00", "-05:00")) and ran.stderr.count("\n") == 1
    assert post(site, held_id).status == MOD.DECISIONS[first]


def test_unknown_and_expired_posts_are_one_line_and_change_nothing(example_config, site):
    for ident in ("0" * 32, "not-an-id"):
        ran = listfilter(example_config, "held", "approve", ident)
        assert ran.returncode == 1 and ran.stderr == f"listfilter: no held post {ident!r} (see `listfilter held --all`)\n"
    assert listfilter(example_config, "held", "show", "0" * 32).returncode == 1
    old = hold(site, held_at=NOW - dt.timedelta(days=3), hold_days=2)  # past its hold_days; sync not yet run
    ran = listfilter(example_config, "held", "discard", old)
    assert ran.returncode == 1 and f"held post {old} (from stranger@example.org to {STAFF}) expired " in ran.stderr
    assert post(site, old).status == "held"
