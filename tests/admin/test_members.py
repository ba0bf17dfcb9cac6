"""The Members pages through Flask's test client: who may see and change them, CSRF, the audit trail, escaping,
and a store that refuses the write (the SELECT-only PostgreSQL role docs/web.md describes, then its GRANTs)."""

from __future__ import annotations

import uuid

import pytest

from listfilter.admin import app as W
from listfilter.store import database as ST
from listfilter.store import membership as MS
from listfilter.sync import config as C
from listfilter.sync import run as Y

from ..conftest import COURSE_LISTS
from ..store.test_database import CSV_ROSTER
from .test_app import WEB, csrf_of, login, proxied, set_up

STAFF = "staff@lists.example.edu"
PAGE = f"/lists/{STAFF}/members"


def changes(site, address=STAFF):
    with ST.open_store(site.store) as store:
        return [(c.action, c.email, c.actor, c.via) for c in reversed(MS.changes(store, address))]


def post(client, token, **form):
    return client.post(PAGE, data={"csrf_token": token, **form})


@pytest.fixture
def signed_in(client):
    login(client)
    return client, csrf_of(client.get(PAGE).get_data(as_text=True))


def test_the_page_shows_each_members_source_as_installed(client, site):
    login(client)
    r = client.get(PAGE)
    html = r.get_data(as_text=True)
    assert r.status_code == 200
    assert 'data-email="instructor@example.edu" data-source="roster"' in html
    assert 'id="no-extras"' in html and 'id="no-changes"' in html
    index = client.get("/lists").get_data(as_text=True)
    assert f'href="/lists/{STAFF}/members"' in index and 'id="nav-members"' in index
    assert client.get("/lists/nope@lists.example.edu/members").status_code == 404


def test_add_and_remove_are_recorded_with_the_signed_in_user(signed_in, site):
    client, token = signed_in
    r = post(client, token, action="add", email="Guest@Example.ORG", name="Gus <b>Guest</b>", until="2099-05-15")
    assert r.status_code == 302 and r.headers["Location"].startswith(PAGE)
    html = client.get(r.headers["Location"]).get_data(as_text=True)
    assert "Saved: Guest@example.org is an extra member. It takes effect at the next sync." in html
    assert "Gus &lt;b&gt;Guest&lt;/b&gt;" in html and "<b>Guest</b>" not in html  # shown as text
    assert "the end of 2099-05-15" in html and "instructor@example.edu" in html
    assert '<td class="state">from the next sync</td>' in html
    assert changes(site) == [("add", "Guest@example.org", "instructor@example.edu", "web")]
    Y.run(site)  # the next sync: the page shows them installed, from the store
    html = client.get(PAGE).get_data(as_text=True)
    assert 'data-email="Guest@example.org" data-source="extra"' in html and '<td class="state">yes</td>' in html
    r = post(client, token, action="remove", email="guest@example.org")
    assert r.status_code == 302
    assert changes(site)[-1] == ("remove", "Guest@example.org", "instructor@example.edu", "web")
    with ST.open_store(site.store) as store:
        assert MS.extras(store) == []


def test_a_post_without_the_csrf_token_changes_nothing(signed_in, site):
    client, _ = signed_in
    r = client.post(PAGE, data={"action": "add", "email": "guest@example.org"})
    assert r.status_code == 400 and b"did not come from this site" in r.data
    r = post(client, "forged", action="add", email="guest@example.org")
    assert r.status_code == 400
    assert changes(site) == []


def test_only_instructors_may_see_or_change_members(client, site):
    token = csrf_of(client.get(PAGE, **proxied("instructor@example.edu")).get_data(as_text=True))
    r = client.get(PAGE, **proxied("ta.one@example.edu"))  # staff, but [web] roles = ["instructor"]
    assert r.status_code == 403 and b"instructor@example.edu" not in r.data
    r = client.post(PAGE, data={"csrf_token": token, "action": "add", "email": "guest@example.org"},
                    **proxied("ta.one@example.edu"))  # a valid token from the session: still not allowed
    assert r.status_code == 403
    assert changes(site) == []
    r = client.post(PAGE, data={"csrf_token": token, "action": "add", "email": "guest@example.org"},
                    **proxied("instructor@example.edu"))
    assert r.status_code == 302 and changes(site) == [("add", "guest@example.org", "instructor@example.edu", "web")]


@pytest.mark.parametrize("form, message", [
    ({"action": "add", "email": "not an address"}, "malformed address"),
    ({"action": "add", "email": "g@example.org", "until": "2001-01-01"}, "is in the past"),
    ({"action": "remove", "email": "g@example.org"}, f"g@example.org is not an extra member of {STAFF}"),
    ({"action": "remove", "email": "ta.one@example.edu"}, "the roster holds them: change the roster"),
])
def test_mistakes_are_shown_on_the_page_and_change_nothing(signed_in, site, form, message):
    client, token = signed_in
    r = post(client, token, **form)
    html = r.get_data(as_text=True)
    assert r.status_code == 400 and 'id="error"' in html and message in html
    assert f'value="{form["email"]}"' in html  # the form keeps what was typed
    assert changes(site) == []
    assert post(client, token, action="rename", email="g@example.org").status_code == 400


def test_a_store_that_refuses_the_write_is_a_clear_error_not_a_500(signed_in, site, monkeypatch):
    client, token = signed_in

    def refused(*args, **kw):
        raise ST.StoreError("the store sqlite …: attempt to write a readonly database")

    monkeypatch.setattr(MS, "add", refused)
    r = post(client, token, action="add", email="g@example.org")
    assert r.status_code == 503 and b"Change not saved" in r.data and b"INSERT, UPDATE and DELETE" in r.data


def test_the_select_only_role_is_refused_until_given_the_documented_grants(make_config, pg_dsn, monkeypatch):
    """docs/web.md's role for the app, first as it was (SELECT only), then with the GRANTs the page needs."""
    import psycopg

    path = make_config(COURSE_LISTS + WEB + f'\n[store]\nbackend = "postgresql"\ndsn = "{pg_dsn}"\n',
                       roster=CSV_ROSTER)
    site = set_up(path)
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
        token = csrf_of(client.get(PAGE).get_data(as_text=True))
        r = post(client, token, action="add", email="g@example.org")
        assert r.status_code == 503 and b"permission denied for table list_members" in r.data
        for sql in (f"GRANT INSERT, UPDATE, DELETE ON list_members, member_changes TO {role}",
                    f"GRANT USAGE ON SEQUENCE member_changes_id_seq TO {role}"):
            owner.execute(sql)
        r = post(client, token, action="add", email="g@example.org")
        assert r.status_code == 302
        assert post(client, token, action="remove", email="g@example.org").status_code == 302
        monkeypatch.delenv(site.store.dsn_env)
        assert [c[0] for c in changes(site)] == ["add", "remove"]
    finally:
        owner.execute(f"DROP OWNED BY {role}")
        owner.execute(f"DROP ROLE {role}")
        owner.close()


# ---------------------------------------------------------------- the joins that wait for an owner


HELPERS = "helpers@lists.example.edu"
HELPERS_PAGE = f"/lists/{HELPERS}/members"
HELPERS_LIST = """
[lists.helpers]
display_name = "CS 199 Helpers"
members = { optin = true, eligible = { roles = ["student"] }, approval = true }
posters = ["prof@example.edu"]
"""


@pytest.fixture
def optin(make_config):
    """A site with an opt-in list whose owners approve each join; alice and bob (students) wait, by mail."""
    import datetime as dt

    from listfilter.common import spool as SP
    from listfilter.common.events import Request, random_id
    from listfilter.store import requests as RQ

    config = set_up(make_config(COURSE_LISTS + HELPERS_LIST + WEB, roster=CSV_ROSTER))
    SP.ensure(config.site.spool_dir)
    now = dt.datetime.now(dt.timezone.utc)
    for e, name in (("alice@example.edu", "Alice <b>L</b>"), ("bob@example.edu", "")):
        SP.write_request(config.site.spool_dir, Request(id=random_id(), at=now.isoformat(), action="pending",
                                                        list_address=HELPERS, subject=e, name=name, by=e))
    with ST.open_store(config.store) as store:
        assert RQ.ingest(config, store, now)[1] == []
    return config


@pytest.fixture
def optin_client(optin):
    client = W.create_app(optin).test_client()
    login(client)
    return client, csrf_of(client.get(HELPERS_PAGE).get_data(as_text=True))


def requests_of(site):
    with ST.open_store(site.store) as store:
        return sorted(store._q("SELECT email, status, decided_by FROM join_requests"))


def decide(client, token, **form):
    return client.post(f"/lists/{HELPERS}/joins", data={"csrf_token": token, **form})


def test_the_page_shows_who_waits_for_approval(optin_client, optin):
    client, _ = optin_client
    html = client.get(HELPERS_PAGE).get_data(as_text=True)
    assert "Waiting for approval" in html and 'id="pending"' in html
    assert '<tr data-email="alice@example.edu">' in html and '<tr data-email="bob@example.edu">' in html
    assert "Alice &lt;b&gt;L&lt;/b&gt;" in html and "<b>L</b>" not in html  # shown as text
    assert html.count('name="action" value="admit"') == 2 and html.count('name="action" value="deny"') == 2
    assert "Waiting for approval" not in client.get(PAGE.replace(STAFF, "students@lists.example.edu")).get_data(
        as_text=True)  # not an opt-in list: no such table


def test_admit_and_deny_are_recorded_with_the_signed_in_user(optin_client, optin):
    client, token = optin_client
    r = decide(client, token, action="admit", email="alice@example.edu")
    assert r.status_code == 302 and r.headers["Location"].startswith(HELPERS_PAGE)
    html = client.get(r.headers["Location"]).get_data(as_text=True)
    assert "Admitted alice@example.edu: they become a member, and are welcomed, at the next sync." in html
    assert '<tr data-email="alice@example.edu">' not in html.split('id="pending"')[1].split("</table>")[0]
    r = decide(client, token, action="deny", email="bob@example.edu")
    assert r.status_code == 302
    assert "Denied bob@example.edu's request to join." in client.get(r.headers["Location"]).get_data(as_text=True)
    assert 'id="no-pending"' in client.get(HELPERS_PAGE).get_data(as_text=True)
    assert requests_of(optin) == [("alice@example.edu", "admitted", "instructor@example.edu"),
                                  ("bob@example.edu", "denied", "instructor@example.edu")]
    assert changes(optin, HELPERS) == [("join", "alice@example.edu", "instructor@example.edu", "web"),
                                       ("deny", "bob@example.edu", "instructor@example.edu", "web")]
    r = decide(client, token, action="deny", email="alice@example.edu")  # the first decision counts
    html = r.get_data(as_text=True)
    assert r.status_code == 409 and 'id="error"' in html
    assert "alice@example.edu&#39;s request to join helpers@lists.example.edu was already admitted by" \
           " instructor@example.edu" in html
    assert requests_of(optin)[0][1] == "admitted"


def test_a_join_decision_needs_the_csrf_token_an_instructor_and_a_decision(optin_client, optin):
    client, token = optin_client
    assert client.post(f"/lists/{HELPERS}/joins", data={"action": "admit", "email": "alice@example.edu"}
                       ).status_code == 400
    assert decide(client, "forged", action="admit", email="alice@example.edu").status_code == 400
    assert decide(client, token, action="approve", email="alice@example.edu").status_code == 400
    assert decide(client, token, action="admit", email="not an address").status_code == 400
    assert client.post("/lists/nope@lists.example.edu/joins",
                       data={"csrf_token": token, "action": "admit", "email": "alice@example.edu"}).status_code == 404
    other = W.create_app(optin).test_client()
    token = csrf_of(other.get(HELPERS_PAGE, **proxied("instructor@example.edu")).get_data(as_text=True))
    r = other.post(f"/lists/{HELPERS}/joins", data={"csrf_token": token, "action": "admit",
                                                    "email": "alice@example.edu"}, **proxied("ta.one@example.edu"))
    assert r.status_code == 403
    assert [s for _, s, _ in requests_of(optin)] == ["pending", "pending"]
