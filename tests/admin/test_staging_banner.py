"""The admin page says, on every page, that the staging valve (``redirect_all_to``) is on."""

from __future__ import annotations

import html

from listfilter.admin import app as W
from listfilter.store import database as ST

from ..conftest import COURSE_LISTS
from ..store.test_database import CSV_ROSTER
from .test_app import WEB, login, seed, set_up

STAGING = "flight-ops@example.edu"
BANNER = ("STAGING: redirect_all_to is on: every copy for the lists on lists-dev.example.edu goes only to"
          f" {STAGING}")


def client_for(make_config, body: str):
    config = set_up(make_config(body + WEB, roster=CSV_ROSTER))
    with ST.open_store(config.store) as s:
        seed(s)
    client = W.create_app(config).test_client()
    login(client)
    return client


def test_every_page_shows_the_banner_while_the_valve_is_on(make_config):
    body = COURSE_LISTS.replace('[domains."lists-dev.example.edu"]\ncourse = "CS 199"\n',
                                f'[domains."lists-dev.example.edu"]\ncourse = "CS 199"\nredirect_all_to = "{STAGING}"\n')
    assert body != COURSE_LISTS
    client = client_for(make_config, body)
    for page in ("/email", "/bounces"):
        response = client.get(page)
        assert response.status_code == 200, page
        text = html.unescape(response.get_data(as_text=True))
        assert f'<p class="notice" id="staging"><strong>{BANNER}</strong>.' in text, page


def test_no_banner_while_it_is_off(make_config):
    text = client_for(make_config, COURSE_LISTS).get("/email").get_data(as_text=True)
    assert 'id="staging"' not in text and "STAGING" not in text
