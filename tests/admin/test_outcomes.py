"""The mail log page with each member's outcome (Postfix's log, as sync read it): the counts in
words, the ``members`` filter, the detail view's member table with the relay's reply escaped, and
"handed to Postfix, outcome not yet read" for a post whose copies the follower has not seen."""

from __future__ import annotations

import datetime as dt
from markupsafe import escape
import re

from listfilter.store import database as ST
from listfilter.store import deliveries as DV

from ..store.test_database import T0, entry_from, event
from .test_app import login

ALICE, BOB = "alice@example.edu", "bob@example.edu"
EVIL = '450 4.2.0 <script>alert("relay")</script> mailbox busy\r\nX-Injected: yes'


def rows_of(html: str) -> dict[str, str]:
    return {m.group(1): m.group(2) for m in re.finditer(r'<details class="row" id="m-([0-9a-f]+)"(.*?)</details>',
                                                         html, re.S)}


def seed_outcomes(site, n: int = 0, bob: str = "deferred", reply: str = EVIL) -> None:
    later = T0 + dt.timedelta(minutes=5)
    w = DV.Writer()
    w.add(DV.Reinjection("mail", "4F2C1A7B9", event(n)["id"], T0))
    w.outcome(DV.Delivery(event(n)["id"], ALICE, "sent", T0, T0, "mail", "4F2C1A7B9", "relay.example.edu[192.0.2.25]:25",
                          "2.0.0", "250 2.0.0 Ok: queued as 9F1D2E", "0.4"))
    w.outcome(DV.Delivery(event(n)["id"], BOB, bob, later, T0, "mail", "4F2C1A7B9", "relay.example.edu[192.0.2.25]:25",
                          "4.2.0" if bob == "deferred" else "5.1.1", reply, "300"))
    with ST.open_store(site.store) as s:
        w.commit(s)


def test_the_table_says_each_posts_outcomes_in_words(client, site):
    seed_outcomes(site)
    login(client)
    html = client.get("/email?status=delivered").get_data(as_text=True)
    rows = rows_of(html)
    assert re.search(r'<span class="delivery" title="1 sent · 1 deferred" data-sent="1" data-deferred="1">'
                     r'1 sent · 1 deferred</span>', rows[event(0)["id"]]), rows[event(0)["id"]]
    # the other delivered post: its copies not read yet, and the page says so rather than guessing
    assert ('<span class="delivery unread muted" title="handed to Postfix, outcome not yet read">'
            "handed to Postfix, outcome not yet read</span>") in rows[event(4)["id"]]
    assert '<span class="count">2</span>' in rows[event(4)["id"]]
    # a refusal was never handed to Postfix: no words at all
    other = rows_of(client.get("/email?status=rejected").get_data(as_text=True))
    assert '<span class="delivery unread muted" title=""></span>' in other[event(2)["id"]]


def test_two_bounced_out_of_45(client, site):
    members = [f"m{i}@example.org" for i in range(45)]
    with ST.open_store(site.store) as s:
        s.upsert([entry_from(event(30, recipients=members, recipient_count=45, subject="Field trip"))])
        w = DV.Writer()
        for i, m in enumerate(members):
            w.outcome(DV.Delivery(event(30)["id"], m, "bounced" if i < 2 else "sent", T0, T0))
        w.commit(s)
    login(client)
    row = rows_of(client.get("/email?status=delivered").get_data(as_text=True))[event(30)["id"]]
    assert ">43 sent · 2 bounced</span>" in row


def test_the_members_filter_finds_posts_with_deferred_or_bounced_members(client, site):
    seed_outcomes(site, 0, "deferred")
    seed_outcomes(site, 4, "bounced", "550 5.1.1 no such user")
    login(client)

    def found(query):
        html = client.get(f"/email?{query}").get_data(as_text=True)
        return sorted(rows_of(html)), html

    ids, html = found("members=deferred")
    assert ids == [event(0)["id"]] and "1 message<" in html
    assert '<option value="deferred" selected>a member deferred</option>' in html
    assert found("members=bounced")[0] == [event(4)["id"]]
    assert found("members=expired")[0] == []
    assert found("members=not-sent")[0] == sorted([event(0)["id"], event(4)["id"]])
    assert found("members=not-sent&list=staff@lists.example.edu")[0] == []
    ids, html = found("members=")  # "any outcome"
    assert len(ids) == 3 and "page 1 of 2" in html
    r = client.get("/email?members=lost%3Cscript%3E")
    assert r.status_code == 400
    text = r.get_data(as_text=True)
    assert "is not a filter; use one of: deferred, bounced, expired, not-sent." in text and "<script>" not in text


def test_the_filter_is_kept_across_pages(client, site):
    with ST.open_store(site.store) as s:
        s.upsert([entry_from(event(n)) for n in range(40, 45)])
        w = DV.Writer()
        for n in range(40, 45):
            w.outcome(DV.Delivery(event(n)["id"], ALICE, "deferred", T0, T0))
        w.commit(s)
    login(client)
    html = client.get("/email?members=deferred").get_data(as_text=True)
    assert "page 1 of 2" in html and 'href="/email?page=2&amp;members=deferred"' in html
    assert len(rows_of(client.get("/email?members=deferred&page=2").get_data(as_text=True))) == 2


def test_the_detail_view_lists_each_member_with_the_relays_reply_escaped(client, site):
    seed_outcomes(site)
    login(client)
    page = client.get(f"/email/{event(0)['id']}").get_data(as_text=True)
    assert '<p class="outcome" id="outcome-summary">1 sent · 1 deferred</p>' in page
    assert "Reinjected into Postfix as <code>4F2C1A7B9</code> on mail." in page
    members = re.findall(r'<tr data-outcome="(\w+)"><td class="recipient">([^<]+)</td>', page)
    assert members == [("deferred", BOB), ("sent", ALICE)]  # the ones not sent first
    assert "250 2.0.0 Ok: queued as 9F1D2E" in page  # the relay's own queue id: what a mail team asks for
    assert "&lt;script&gt;alert(&#34;relay&#34;)&lt;/script&gt; mailbox busy X-Injected: yes" in page
    assert "<script>" not in page and "\r\nX-Injected" not in page
    assert "(first try" in page  # bob: deferred since T0
    assert "<li>alice@example.edu</li>" not in page  # the member table, not the bare list
    for word, meaning in DV.MEANINGS.items():
        assert f"<dt>{word}</dt><dd>{escape(meaning)}</dd>" in page


def test_a_post_whose_copies_are_not_read_yet(client, site):
    login(client)
    page = client.get(f"/email/{event(4)['id']}").get_data(as_text=True)
    assert '<p class="outcome unread muted" id="outcome-summary">handed to Postfix, outcome not yet read</p>' in page
    unread = re.findall(r'<tr data-outcome="unread"><td class="recipient">([^<]+)</td>', page)
    assert unread == [ALICE, BOB] and "Reinjected into Postfix" not in page
    # one member read, the other not yet
    with ST.open_store(site.store) as s:
        w = DV.Writer()
        w.outcome(DV.Delivery(event(4)["id"], ALICE, "sent", T0, T0))
        w.commit(s)
    page = client.get(f"/email/{event(4)['id']}").get_data(as_text=True)
    assert ">1 sent · 1 not yet read</p>" in page
    assert re.findall(r'<tr data-outcome="(\w+)"><td class="recipient">([^<]+)</td>', page) == [
        ("sent", ALICE), ("unread", BOB)]


def test_a_refused_post_has_no_delivery_section(client):
    login(client)
    page = client.get(f"/email/{event(1)['id']}").get_data(as_text=True)
    assert 'id="delivery"' not in page
