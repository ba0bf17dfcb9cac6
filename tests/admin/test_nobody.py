"""The mail log page: a post delivered to nobody says so in its row, and why in its details."""

from __future__ import annotations

import re

from listfilter.mail import rules as R
from listfilter.store import database as ST

from ..store.test_database import STUDENTS, entry_from, event
from .test_app import login

#: What deliver records for students@ when its one member is the poster.
WHY = "nobody was sent a copy: " + R.nobody_reason(["prof@example.edu"], poster="prof@example.edu",
                                                   exclude_poster=True, list_address=STUDENTS)


def test_a_row_delivered_to_nobody_says_nobody_and_why(client, site):
    with ST.open_store(site.store) as s:
        s.upsert([entry_from(event(20, recipients=[], recipient_count=0, error_message=WHY, subject="relay down"))])
    login(client)
    html = client.get("/email?status=delivered").get_data(as_text=True)
    rows = {m.group(1): m.group(2) for m in re.finditer(r'<details class="row" id="m-([0-9a-f]+)"(.*?)</details>',
                                                         html, re.S)}
    nobody = rows[event(20)["id"]]
    assert re.search(r'<span class="count nobody" title="nobody was sent a copy: the poster is the list&#39;s only'
                     r' member[^"]*">nobody</span>', nobody), nobody
    assert "<dt>Detail</dt>" in nobody and "the poster is the list&#39;s only member" in nobody
    other = rows[event(0)["id"]]  # an ordinary delivery keeps its count
    assert '<span class="count">2</span>' in other and "nobody" not in other
    page = client.get(f"/email/{event(20)['id']}").get_data(as_text=True)
    assert "<dt>Detail</dt>" in page and "nobody was sent a copy: the poster is the list&#39;s only member" in page
