"""The Held posts pages through Flask's test client: who may see and decide, CSRF, escaping (a held post's HTML
is never rendered), the first decision counting, and a store that refuses the write (the SELECT-only role)."""

from __future__ import annotations

import datetime as dt
import uuid

import pytest

from listfilter.admin import app as W
from listfilter.common import spool as SP
from listfilter.common.events import random_id
from listfilter.store import database as ST
from listfilter.store import moderation as MOD
from listfilter.sync import config as C

from ..conftest import COURSE_LISTS
from ..store.test_database import CSV_ROSTER, STUDENTS
from .test_app import WEB, csrf_of, login, proxied, set_up

NOW = dt.datetime.now(dt.timezone.utc).replace(microsecond=0)
EVIL = (b"From: Mallory <mallory@example.org>\nTo: students@lists.example.edu\n"
        b"Subject: <script>alert(1)</script> hello\nMessage-ID: <evil@example.org>\nMIME-Version: 1.0\n"
        b"Content-Type: multipart/alternative; boundary=b\n\n"
        b"--b\nContent-Type: text/plain\n\nplain <b>words</b>\n"
        b"--b\nContent-Type: text/html\n\n<img src=x onerror=alert(2)><p>html</p>\n--b--\n")


def held(site, message: bytes = EVIL) -> str:
    """A held post, taken into the store as sync does; its id."""
    held_id = random_id()
    SP.ensure(site.site.spool_dir)
    SP.write_held(site.site.spool_dir, held_id, message, {
        "id": held_id, "list": STUDENTS, "post_key": "<evil@example.org>", "message_id": "<evil@example.org>",
        "event_id": "0" * 32, "envelope_sender": "mallory@example.org", "sender_email": "mallory@example.org",
        "sender_name": "Mallory <b>M</b>", "subject": "<script>alert(1)</script> hello",
        "reason": "mallory@example.org is not a member", "held_at": NOW.isoformat(), "hold_days": 14})
    with ST.open_store(site.store) as store:
        MOD.ingest(site, store, NOW)
    return held_id


def status(site, held_id: str) -> tuple[str, str]:
    with ST.open_store(site.store) as store:
        post = MOD.get(store, held_id)
        return post.status, post.decided_by


def test_the_list_and_a_post_show_text_never_html(client, site):
    held_id = held(site)
    login(client)
    html = client.get("/held").get_data(as_text=True)
    assert f'data-id="{held_id}"' in html and 'id="nav-held"' in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt; hello" in html and "<script>" not in html
    assert "Mallory &lt;b&gt;M&lt;/b&gt;" in html and "the next\n<code>listfilter sync</code>" in html
    page = client.get(f"/held/{held_id}")
    html = page.get_data(as_text=True)
    assert page.status_code == 200 and 'id="decide"' in html
    assert "plain &lt;b&gt;words&lt;/b&gt;" in html and "<b>words</b>" not in html
    assert "<img" not in html and "&lt;img src=x onerror=alert(2)&gt;" in html  # in the source, as text
    assert "Subject: &lt;script&gt;alert(1)&lt;/script&gt; hello" in html  # the headers
    assert client.get(f"/held/{uuid.uuid4().hex}").status_code == 404
    assert client.get("/held/not-an-id").status_code == 404


def test_approve_then_a_second_decision_is_refused(client, site):
    held_id = held(site)
    login(client)
    token = csrf_of(client.get(f"/held/{held_id}").get_data(as_text=True))
    r = client.post(f"/held/{held_id}", data={"csrf_token": token, "action": "approve"})
    assert r.status_code == 302 and r.headers["Location"] == f"/held/{held_id}?done=approved"
    page = client.get(r.headers["Location"]).get_data(as_text=True)
    assert "Approved. It goes to the members of students@lists.example.edu at the next sync." in page
    assert 'id="decide"' not in page
    assert status(site, held_id) == ("approved", "instructor@example.edu (web)")
    r = client.post(f"/held/{held_id}", data={"csrf_token": token, "action": "discard"})
    assert r.status_code == 409 and b"was already approved by instructor@example.edu (web)" in r.data
    assert status(site, held_id)[0] == "approved"
    assert client.post(f"/held/{held_id}", data={"csrf_token": token, "action": "admit"}).status_code == 400
    decided = client.get("/held").get_data(as_text=True)
    assert f'data-id="{held_id}" data-status="approved"' in decided and 'id="none-waiting"' in decided


def test_csrf_and_roles_guard_the_decision(client, site):
    held_id = held(site)
    login(client)
    r = client.post(f"/held/{held_id}", data={"action": "discard"})
    assert r.status_code == 400 and status(site, held_id)[0] == "held"
    other = W.create_app(site).test_client()
    token = csrf_of(other.get(f"/held/{held_id}", **proxied("instructor@example.edu")).get_data(as_text=True))
    r = other.post(f"/held/{held_id}", data={"csrf_token": token, "action": "discard"}, **proxied("ta.one@example.edu"))
    assert r.status_code == 403 and status(site, held_id)[0] == "held"
    assert other.get("/held", **proxied("ta.one@example.edu")).status_code == 403
    r = other.post(f"/held/{held_id}", data={"csrf_token": token, "action": "discard"},
                   **proxied("instructor@example.edu"))
    assert r.status_code == 302 and status(site, held_id) == ("discarded", "instructor@example.edu (web)")


def test_a_store_that_refuses_the_write_is_a_clear_error(client, site, monkeypatch):
    held_id = held(site)
    login(client)
    token = csrf_of(client.get(f"/held/{held_id}").get_data(as_text=True))

    def refused(*args, **kw):
        raise ST.StoreError("the store sqlite …: attempt to write a readonly database")

    monkeypatch.setattr(MOD, "decide", refused)
    r = client.post(f"/held/{held_id}", data={"csrf_token": token, "action": "approve"})
    assert r.status_code == 503 and b"Decision not saved" in r.data and b"UPDATE on held_posts" in r.data


@pytest.mark.integration
def test_the_select_only_role_needs_the_documented_grant(make_config, pg_dsn, monkeypatch):
    """docs/web.md's role for the app: SELECT only is refused (503, not a 500); with its GRANT the decision saves."""
    import psycopg

    path = make_config(COURSE_LISTS + WEB + f'\n[store]\nbackend = "postgresql"\ndsn = "{pg_dsn}"\n',
                       roster=CSV_ROSTER)
    site = set_up(path)
    held_id = held(site)
    role = f"listfilter_web_{uuid.uuid4().hex[:8]}"
    db = pg_dsn.rsplit("/", 1)[1]
    owner = psycopg.connect(pg_dsn, autocommit=True)
    try:
        for sql in (f"CREATE ROLE {role} LOGIN", f"GRANT CONNECT ON DATABASE {db} TO {role}",
                    f"GRANT USAGE ON SCHEMA public TO {role}", f"GRANT SELECT ON ALL TABLES IN SCHEMA public TO {role}"):
            owner.execute(sql)
        monkeypatch.setenv(site.store.dsn_env, pg_dsn.replace("postgres@", f"{role}@"))
        client = W.create_app(C.load(path)).test_client()
        login(client)
        token = csrf_of(client.get(f"/held/{held_id}").get_data(as_text=True))
        r = client.post(f"/held/{held_id}", data={"csrf_token": token, "action": "approve"})
        assert r.status_code == 503 and b"permission denied for table held_posts" in r.data
        owner.execute(f"GRANT UPDATE ON held_posts TO {role}")
        r = client.post(f"/held/{held_id}", data={"csrf_token": token, "action": "approve"})
        assert r.status_code == 302
        monkeypatch.delenv(site.store.dsn_env)
        assert status(site, held_id)[0] == "approved"
    finally:
        owner.execute(f"DROP OWNED BY {role}")
        owner.execute(f"DROP ROLE {role}")
        owner.close()
