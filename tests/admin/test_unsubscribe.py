"""The one-click unsubscribe link (RFC 8058) through Flask's test client: public, token-checked, POST only.

tests/integration/test_optin.py runs the same against the real waitress server.
"""

from __future__ import annotations

import time

import pytest

from listfilter.admin import app as W
from listfilter.common import tokens as TK
from listfilter.store import database as ST
from listfilter.store import membership as MS

from ..conftest import COURSE_LISTS
from ..store.test_database import CSV_ROSTER
from .test_app import WEB, set_up

CLUB = "club@lists.example.edu"
MEMBER = "new@example.org"
CLUB_LIST = """
[lists.club]
display_name = "Chess Club"
members = { optin = true, eligible = "anyone" }
posters = ["prof@example.edu"]
"""


@pytest.fixture
def config(make_config):
    config = set_up(make_config(COURSE_LISTS + CLUB_LIST + WEB.replace("[web]\n", '[web]\nurl = "https://lists.example.edu"\n')
                                + "\n[store]\n", roster=CSV_ROSTER))
    with ST.open_store(config.store) as store:
        MS.join(store, CLUB, MEMBER, "", MEMBER, "mail")
    return config


@pytest.fixture
def client(config):
    return W.create_app(config).test_client()


def token(config, list_address: str = CLUB, member: str = MEMBER, action: str = "unsubscribe") -> str:
    return TK.make(TK.load_key(config.site.token_key), action, list_address, member, 0)


def member_changes(config) -> list[tuple[str, str]]:
    with ST.open_store(config.store) as store:
        return [(c.action, c.via) for c in MS.changes(store, CLUB)]


def test_get_shows_a_button_and_changes_nothing(config, client):
    r = client.get(f"/unsubscribe/{token(config)}")
    page = r.get_data(as_text=True)
    assert r.status_code == 200 and MEMBER in page and 'method="post"' in page and "Chess Club" in page
    assert "Set-Cookie" not in r.headers  # no session for a passer-by
    assert member_changes(config) == [("join", "mail")]


def test_one_click_post_leaves_without_cookie_or_csrf(config, client):
    r = client.post(f"/unsubscribe/{token(config)}", data={"List-Unsubscribe": "One-Click"})
    assert r.status_code == 200 and "has left" in r.get_data(as_text=True)
    assert member_changes(config)[0] == ("leave", "one-click")
    with ST.open_store(config.store) as store:
        assert MS.rows(store, CLUB) == []
    again = client.post(f"/unsubscribe/{token(config)}", data={"List-Unsubscribe": "One-Click"})
    assert again.status_code == 200 and "not a member" in again.get_data(as_text=True)
    assert len(member_changes(config)) == 2


@pytest.mark.parametrize("method", ["get", "post"])
def test_a_forged_or_changed_token_is_refused(config, client, method):
    good = token(config)
    other = TK.make(b"x" * 32, "unsubscribe", CLUB, MEMBER, 0)
    changed = token(config, member="victim@example.org").partition(".")[0] + "." + good.partition(".")[2]
    for bad in (other, changed, "not-a-token"):
        r = getattr(client, method)(f"/unsubscribe/{bad}", data={"List-Unsubscribe": "One-Click"})
        assert r.status_code == 400 and "not valid" in r.get_data(as_text=True)
    assert member_changes(config) == [("join", "mail")]


def test_a_token_for_something_else_is_refused(config, client):
    join = TK.make(TK.load_key(config.site.token_key), "join", CLUB, MEMBER, int(time.time()) + 3600)
    assert client.post(f"/unsubscribe/{join}").status_code == 400
    roster = token(config, "students@lists.example.edu")  # not an opt-in list
    assert client.post(f"/unsubscribe/{roster}").status_code == 404
    assert member_changes(config) == [("join", "mail")]


def test_a_missing_key_says_unavailable(config, client):
    good = token(config)
    config.site.token_key.unlink()
    assert client.post(f"/unsubscribe/{good}").status_code == 503
    assert member_changes(config) == [("join", "mail")]


def test_every_other_route_still_needs_sign_in_and_csrf(client):
    assert client.get("/lists").status_code == 302
    r = client.post(f"/lists/{CLUB}/members", data={"action": "add", "email": "x@example.org"})
    assert r.status_code == 400 and "expired" in r.get_data(as_text=True)  # no CSRF token
