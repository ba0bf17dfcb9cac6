"""Through a real Postfix: a post listfilter defers leaves one ``deferred`` row, which the delivery replaces;
a refusal at RCPT time shows on the admin page with the SMTP client, the envelope sender and the HELO name.

The module has its own private Postfix (test_mailflow's ``site`` fixture, a
fresh instance per module), so ingesting its spool disturbs no other test.
The mail log is read the way an administrator reads it: ``listfilter log``
(which ingests the spool first) and the Flask app, against a config that is
the site's plus a ``[store]`` and a ``[web]`` table.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest

from listfilter.admin import app as W
from listfilter.sync import config as C

from .test_mailflow import STUDENT_MEMBERS, STUDENTS, fresh, message, site  # noqa: F401 (fixtures)

pytestmark = pytest.mark.integration

ADMIN = "dean@example.edu"


@pytest.fixture
def logged(fresh):  # noqa: F811 (the fixture imported above)
    """The site's config with a mail log and the admin page; ``db upgrade`` done."""
    path = fresh.base / "with-log.toml"
    if not path.exists():
        path.write_text(fresh.config.read_text() + f"""
[store]
path = "{fresh.base / 'maillog.sqlite'}"
[web]
admins = ["{ADMIN}"]
proxy_header = "X-Remote-User"
proxies = ["127.0.0.1"]
""")
        assert cli(path, "db", "upgrade").returncode == 0
    return fresh, path


def cli(path, *args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "listfilter", "--config", str(path), *args],
                          capture_output=True, text=True, timeout=60)


def rows(path, message_id: str | None = None, **filters) -> list[dict]:
    """``listfilter log --json`` (it ingests the spool first)."""
    args = [a for k, v in filters.items() for a in (f"--{k}", v)]
    proc = cli(path, "log", "--json", "--limit", "1000", *args)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    return [r for r in out if message_id is None or r["message_id"] == message_id]


def page(path, url: str) -> str:
    client = W.create_app(C.load(path)).test_client()
    r = client.get(url, headers={"X-Remote-User": ADMIN}, environ_base={"REMOTE_ADDR": "127.0.0.1"})
    assert r.status_code == 200, r.data[:500]
    return r.get_data(as_text=True)


def deferred_for(queue, text: str) -> bool:
    return bool(queue) and any(text in r.get("delay_reason", "") for e in queue for r in e.get("recipients", []))


def test_a_post_while_the_snapshot_is_missing_is_one_deferred_row_then_one_delivered_row(logged):
    s, path = logged
    snapshot = s.base / "state" / "snapshot.sqlite"
    snapshot.unlink()
    s.send(message("while the snapshot is missing", "d1@example.edu"))
    s.pf.wait_queue(lambda q: deferred_for(q, "is missing (run listfilter sync)"), timeout=30)
    [row] = rows(path, "<d1@example.edu>")
    assert row["status"] == "deferred" and row["list_address"] == STUDENTS
    assert row["error_message"] == f"4.3.0 snapshot {snapshot} is missing (run listfilter sync); will retry"
    assert row["subject"] == "while the snapshot is missing" and row["sender_email"] == "prof@example.edu"
    assert row["queue_id"] and row["recipient_count"] == 0
    html = page(path, "/email?status=deferred")
    assert f'id="m-{row["id"]}" data-status="deferred"' in html and "is missing (run listfilter sync)" in html
    # Postfix retries: still one row, updated
    time.sleep(1.1)
    s.pf.flush()
    s.pf.wait_queue(lambda q: deferred_for(q, "is missing"), timeout=30)
    deadline = time.monotonic() + 30
    while (again := rows(path, "<d1@example.edu>")) and again[0]["created_at"] == row["created_at"]:
        assert time.monotonic() < deadline, s.pf.log_tail(30)
        time.sleep(0.5)
    assert len(again) == 1 and again[0]["status"] == "deferred" and again[0]["id"] == row["id"]
    # the snapshot is back and Postfix retries: the same row, now delivered
    s.sync()
    s.pf.flush()
    assert s.sink.wait_for(5, timeout=30), s.pf.log_tail(30)
    s.settle()
    [done] = rows(path, "<d1@example.edu>")
    assert (done["id"], done["status"], done["recipient_count"]) == (row["id"], "delivered", 5)
    assert sorted(r.lower() for r in done["recipients"]) == sorted(STUDENT_MEMBERS - {"prof@example.edu"})
    html = page(path, f"/email/{row['id']}")
    assert '<dd class="meaning">delivered: handed to Postfix for the number of recipients shown;' in html


def test_a_refusal_at_rcpt_shows_client_sender_and_helo_on_the_page(logged):
    s, path = logged
    out = s.send(message("let me in", "d2@example.edu", sender="Stranger <stranger@example.org>"),
                    sender="stranger@example.org")
    assert "<** 550 5.7.1" in out, out
    [row] = [r for r in rows(path, status="rejected") if r["envelope_sender"] == "stranger@example.org"]
    assert (row["client_address"], row["subject"], row["message_id"]) == ("127.0.0.1", "", "")
    assert row["helo_name"]  # what swaks said in EHLO
    html = page(path, "/email?status=rejected")
    summary = html.split(f'id="m-{row["id"]}"')[1].split("</summary>")[0]
    assert (f"refused at RCPT: MAIL FROM &lt;stranger@example.org&gt;, client 127.0.0.1,"
            f" HELO {row['helo_name']}</span>") in summary
    assert "(no subject)" not in summary
    detail = page(path, f"/email/{row['id']}")
    assert '<dd class="client">127.0.0.1</dd>' in detail
    assert '<dd class="envelope">&lt;stranger@example.org&gt;</dd>' in detail
    assert f'<dd class="helo">{row["helo_name"]}</dd>' in detail
    assert "only course instructor, ta may" in detail
