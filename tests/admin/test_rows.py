"""What the rows say: a refusal at RCPT time shows what is known, and every status its meaning (Flask client)."""

from __future__ import annotations

import re

from listfilter.common.events import MEANINGS, STATUSES
from listfilter.store import database as ST

from ..store.test_database import entry_from, event
from .test_app import login

REFUSED = event(10, status="rejected", rule="policy", list_address="staff@lists.example.edu",
                list_display_name="CS 199 Staff", sender_email="stranger@example.org", sender_name="",
                envelope_sender="stranger@example.org", client_address="192.0.2.7", helo_name="mx.example.org",
                subject="", message_id="", queue_id="", recipients=[], recipient_count=0, body=None,
                error_message="<stranger@example.org> may not post to <staff@lists.example.edu>; only members may")
NULL_SENDER = event(11, **{**REFUSED, "id": event(11)["id"], "sender_email": "", "envelope_sender": "",
                           "helo_name": "<script>alert(1)</script>",
                           "error_message": "<staff@lists.example.edu> accepts no mail from the null sender"})
DEFERRED = event(12, status="deferred", rule="", recipients=[], recipient_count=0,
                 error_message="4.3.0 snapshot /var/lib/listfilter/snapshot.sqlite is missing (run listfilter sync);"
                               " will retry")


def add(site, *records):
    with ST.open_store(site.store) as s:
        s.upsert([entry_from(r) for r in records])


def row_of(html: str, ident: str) -> str:
    return html.split(f'id="m-{ident}"')[1].split("</details>")[0]


def summary_of(html: str, ident: str) -> str:
    return row_of(html, ident).split("</summary>")[0]


def test_a_refusal_at_rcpt_shows_the_sender_client_and_helo_instead_of_no_subject(client, site):
    add(site, REFUSED, NULL_SENDER)
    login(client)
    html = client.get("/email?status=rejected").get_data(as_text=True)
    summary = summary_of(html, REFUSED["id"])
    headline = "refused at RCPT: MAIL FROM &lt;stranger@example.org&gt;, client 192.0.2.7, HELO mx.example.org"
    assert f'<span class="subject rcpt muted" title="{headline}">{headline}</span>' in summary
    assert "(no subject)" not in html  # the seed's rejected row (no client known) says so too
    seed_row = summary_of(html, event(2)["id"])
    assert "refused at RCPT: MAIL FROM &lt;prof@example.edu&gt;</span>" in seed_row
    # the null sender, and a HELO name that is markup, shown as text
    summary = summary_of(html, NULL_SENDER["id"])
    assert ("refused at RCPT: MAIL FROM &lt;&gt;, client 192.0.2.7, HELO &lt;script&gt;alert(1)&lt;/script&gt;"
            in summary) and "<script>" not in html
    # the open row and the permalink: every fact as its own field, and why nothing else is there
    for page in (row_of(html, REFUSED["id"]), client.get(f"/email/{REFUSED['id']}").get_data(as_text=True)):
        assert '<dt>Envelope sender</dt><dd class="envelope">&lt;stranger@example.org&gt;</dd>' in page
        assert '<dt>SMTP client</dt><dd class="client">192.0.2.7</dd>' in page
        assert '<dt>HELO name</dt><dd class="helo">mx.example.org</dd>' in page
        assert "only members may" in page and "None was received: the SMTP client was refused at RCPT time" in page
        assert "The body is not kept" not in page and "Message-ID" not in page
    page = client.get(f"/email/{REFUSED['id']}").get_data(as_text=True)
    assert "<title>refused at RCPT: MAIL FROM &lt;stranger@example.org&gt;, client 192.0.2.7" in page
    assert re.search(r"<h2><span class=\"badge rejected\"[^>]*>rejected</span> refused at RCPT: ", page)
    page = client.get(f"/email/{NULL_SENDER['id']}").get_data(as_text=True)
    assert '<dd class="envelope">&lt;&gt; (the null sender)</dd>' in page


def test_a_post_keeps_its_subject_and_fields(client):
    login(client)
    page = client.get(f"/email/{event(0)['id']}").get_data(as_text=True)
    assert "<h2>" in page and "Message 0</h2>" in page and "<dt>Message-ID</dt>" in page
    assert "SMTP client" not in page and "refused at RCPT" not in page


def test_the_legend_says_what_each_status_means_and_delivered_is_no_receipt(client):
    login(client)
    html = client.get("/email").get_data(as_text=True)
    legend = html.split('<dl class="legend small" id="legend"')[1].split("</dl>")[0]
    for status in STATUSES:
        assert f'<dt><span class="badge {status}" data-status="{status}">{status}</span></dt><dd>' in legend
    assert ("<dd>handed to Postfix for the number of recipients shown; not a receipt: whether each copy arrived"
            " is in Postfix&#39;s log</dd>") in legend
    # an open delivered row says it too, next to its count
    row = row_of(html, event(4)["id"])
    assert ('<dt>Status</dt><dd class="meaning">delivered: handed to Postfix for the number of recipients shown;'
            in row)


def test_a_deferral_is_a_row_with_its_reason_and_a_filter(client, site):
    add(site, DEFERRED)
    login(client)
    html = client.get("/email?status=deferred").get_data(as_text=True)
    assert re.findall(r'<details class="row" id="m-([^"]+)" data-status="(\w+)"', html) == [
        (DEFERRED["id"], "deferred")]
    assert '<option value="deferred" selected>deferred</option>' in html
    row = row_of(html, DEFERRED["id"])
    assert "Message 12</span>" in row and '<span class="count">0</span>' in row
    assert ('<dd class="error">4.3.0 snapshot /var/lib/listfilter/snapshot.sqlite is missing (run listfilter sync);'
            " will retry</dd>") in row
    assert f"deferred: {MEANINGS['deferred']}".replace("'", "&#39;") in row
