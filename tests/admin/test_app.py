"""The admin pages through Flask's test client: every route with and without auth, both ways in, escaping."""

from __future__ import annotations

import datetime as dt
import json
import os
import re
import stat
import time
import uuid

import pytest

from listfilter.admin import app as W
from listfilter.admin import auth as A
from listfilter.common import spool as SP
from listfilter.store import database as ST
from listfilter.store import ingest as IN
from listfilter.sync import config as C
from listfilter.sync import run as Y

from ..cli.runner import listfilter
from ..conftest import COURSE_LISTS
from ..store.test_database import CSV_ROSTER, STUDENTS, T0, entry_from, event, write_event

PASSWORD = "correct horse battery"
HASH = A.hash_password(PASSWORD)
PROXY = "10.9.8.7"
WEB = f"""
[web]
admins = ["dean@example.edu"]
proxy_header = "X-Remote-User"
proxies = ["{PROXY}", "192.0.2.0/24"]
page_size = 3
[web.accounts]
"instructor@example.edu" = "{HASH}"
"""

#: Rows of the seeded store: (n, status, list, extra fields)
SEED = [
    (0, "delivered", STUDENTS, {}),
    (1, "bounced", STUDENTS, {"sender_email": "alice@example.edu", "sender_name": "Alice Liddell",
                              "recipients": [], "recipient_count": 0,
                              "error_message": "alice@example.edu may not post to this list; notice sent"}),
    (2, "rejected", "staff@lists.example.edu", {"list_display_name": "CS 199 Staff", "recipients": [],
                                                "recipient_count": 0}),
    (3, "failed", STUDENTS, {"error_message": "sendmail failed after 0 of 2 recipients"}),
    (4, "delivered", STUDENTS, {"subject": "<img src=x onerror=alert(1)>\r\nX-Injected: yes",
                                "sender_name": "Mallory\r\nSet-Cookie: evil=1",
                                "body": "<script>alert('body')</script>\n<b>bold</b>\n"}),
]


def seed(store):
    store.upsert([entry_from(event(n, status=s, list_address=l, **extra)) for n, s, l, extra in SEED])


def set_up(path, *, sync: bool = True) -> C.Config:
    """`listfilter db upgrade` and `listfilter sync`, in this process (the CLI is tested elsewhere)."""
    config = C.load(path)
    with ST.open_store(config.store, create=True) as s:
        s.upgrade()
    if sync:
        result = Y.run(config)  # writes web-roles.json from the roster
        assert result.warnings == []
    return config


@pytest.fixture
def site(make_config, tmp_path):
    config = set_up(make_config(COURSE_LISTS + WEB, roster=CSV_ROSTER))
    with ST.open_store(config.store) as s:
        seed(s)
    return config


@pytest.fixture
def app(site):
    return W.create_app(site)


@pytest.fixture
def client(app):
    return app.test_client()


def csrf_of(html: str) -> str:
    return re.search(r'name="csrf_token" value="([^"]+)"', html).group(1)


def login(client, user="instructor@example.edu", password=PASSWORD, next_="/email", **kw):
    token = csrf_of(client.get("/login", **kw).get_data(as_text=True))
    return client.post("/login", data={"csrf_token": token, "username": user, "password": password, "next": next_},
                       **kw)


def proxied(user: str, addr: str = PROXY) -> dict:
    return {"headers": {"X-Remote-User": user}, "environ_base": {"REMOTE_ADDR": addr}}


ID4 = event(4)["id"]
ROUTES = ["/", "/email", "/email?status=failed", f"/email/{ID4}", "/email/not-an-id", "/email/" + uuid.uuid4().hex,
          "/email/" + str(uuid.uuid4()), "/bounces", "/nosuch"]


# ---------------------------------------------------------------- no way in without auth


@pytest.mark.parametrize("route", ROUTES)
def test_anonymous_gets_the_login_page_and_no_data(client, route):
    r = client.get(route)
    assert r.status_code == 302 and r.headers["Location"].startswith("/login?next=")
    page = client.get(r.headers["Location"])
    assert page.status_code == 200 and b'name="password"' in page.data
    assert b"Message 0" not in r.data + page.data


@pytest.mark.parametrize("route", ROUTES)
def test_proxy_only_site_answers_401(make_config, route):
    path = make_config(COURSE_LISTS + f'[web]\nproxy_header = "X-Remote-User"\nproxies = ["{PROXY}"]\n')
    client = W.create_app(set_up(path, sync=False)).test_client()
    r = client.get(route)
    assert r.status_code == 401 and b"single sign-on" in r.data
    r = client.get(route, headers={"X-Remote-User": "dean@example.edu"})  # not from the proxy: ignored
    assert r.status_code == 401
    assert client.get("/login").status_code == 404


def test_post_without_csrf_is_refused(client):
    r = client.post("/login", data={"username": "instructor@example.edu", "password": PASSWORD})
    assert r.status_code == 400 and b"expired" in r.data
    client.get("/login")
    r = client.post("/login", data={"username": "instructor@example.edu", "password": PASSWORD,
                                    "csrf_token": "forged"})
    assert r.status_code == 400
    assert login(client).status_code == 302
    assert client.post("/logout").status_code == 400  # signed in, but no token: still refused
    assert client.get("/email").status_code == 200


# ---------------------------------------------------------------- standalone accounts


def test_login_sets_a_safe_session_cookie_and_logout_clears_it(client):
    r = login(client, password="wrong password")
    assert r.status_code == 401 and b"Wrong user name or password" in r.data
    r = login(client, user="nobody@example.edu")
    assert r.status_code == 401
    r = login(client, next_="/email?status=failed")
    assert r.status_code == 302 and r.headers["Location"] == "/email?status=failed"
    cookie = r.headers["Set-Cookie"]
    assert cookie.startswith("listfilter_session=") and "HttpOnly" in cookie and "SameSite=Lax" in cookie
    assert "Secure" not in cookie  # plain HTTP here: a Secure cookie would never come back
    page = client.get("/email")
    assert page.status_code == 200 and b"instructor@example.edu" in page.data
    token = csrf_of(page.get_data(as_text=True))
    r = client.post("/logout", data={"csrf_token": token})
    assert r.status_code == 302 and r.headers["Location"] == "/login"
    assert client.get("/email").status_code == 302


def test_cookie_is_secure_over_https_and_behind_a_trusted_proxy(client, app):
    r = login(client, base_url="https://lists.example.edu")
    assert "; Secure" in r.headers["Set-Cookie"]
    other = app.test_client()
    r = login(other, headers={"X-Forwarded-Proto": "https"}, environ_base={"REMOTE_ADDR": PROXY})
    assert "; Secure" in r.headers["Set-Cookie"]
    third = app.test_client()
    r = login(third, headers={"X-Forwarded-Proto": "https"}, environ_base={"REMOTE_ADDR": "203.0.113.5"})
    assert "Secure" not in r.headers["Set-Cookie"]  # anyone can send that header


@pytest.mark.parametrize("target", ["//evil.example/x", "https://evil.example/", "/\\evil.example", "/ok\r\nX: y"])
def test_login_never_redirects_off_site(client, target):
    r = login(client, next_=target)
    assert r.status_code == 302 and r.headers["Location"] == "/email"


def test_failed_logins_are_throttled(client, monkeypatch):
    monkeypatch.setattr(W, "LOGIN_ATTEMPTS", 3)
    for _ in range(3):
        assert login(client, password="nope nope").status_code == 401
    r = login(client)  # even the right password waits now
    assert r.status_code == 429 and b"Too many failed sign-ins" in r.data


# ---------------------------------------------------------------- single sign-on through the proxy


def test_proxy_user_roles_decide(client, site):
    roles = json.loads(site.web.roles_file.read_text())
    assert roles["people"] == {"instructor@example.edu": ["instructor", "staff", "teacher"]}
    assert client.get("/email", **proxied("Instructor@Example.edu")).status_code == 200
    assert client.get("/email", **proxied("dean@example.edu", "192.0.2.44")).status_code == 200  # [web] admins
    r = client.get("/email", **proxied("ta.one@example.edu"))  # staff, but roles = ["instructor"]
    assert r.status_code == 403 and b"not an instructor" in r.data and b"Message 0" not in r.data
    r = client.get(f"/email/{ID4}", **proxied("alice@example.edu"))
    assert r.status_code == 403 and b"Mallory" not in r.data
    # the header from anywhere but the proxy is ignored: the login page, not the data
    r = client.get("/email", **proxied("dean@example.edu", "203.0.113.9"))
    assert r.status_code == 302 and "/login" in r.headers["Location"]


def test_check_reports_missing_roles(make_config):
    path = make_config(COURSE_LISTS + WEB, roster=CSV_ROSTER)
    set_up(path, sync=False)
    proc = listfilter(path, "check")
    assert "PROBLEM  web roles: " in proc.stdout and "only [web] admins can sign in (run listfilter sync)" \
        in proc.stdout, proc.stdout
    assert listfilter(path, "sync").returncode == 0
    proc = listfilter(path, "check")
    assert "ok       web roles: " in proc.stdout, proc.stdout  # the exit status is also the host's Postfix and syslog


def test_roles_setting_lets_tas_in_after_the_next_sync(make_config):
    path = make_config(COURSE_LISTS + WEB.replace("page_size = 3", 'page_size = 3\nroles = ["staff"]'),
                       roster=CSV_ROSTER)
    client = W.create_app(set_up(path)).test_client()
    assert client.get("/email", **proxied("ta.one@example.edu")).status_code == 200
    assert client.get("/email", **proxied("alice@example.edu")).status_code == 403


# ---------------------------------------------------------------- the pages


def test_email_page_lists_newest_first_with_badges_and_pages(client):
    login(client)
    html = client.get("/email").get_data(as_text=True)
    assert html.count('<details class="row"') == 3  # page_size = 3
    ids = re.findall(r'<details class="row" id="m-([0-9a-f-]+)"', html)
    assert ids == [event(n)["id"] for n in (4, 3, 2)]
    for status in ("delivered", "failed", "rejected"):
        assert f'<span class="badge {status}" data-status="{status}">{status}</span>' in html
    assert "2026-01-21 09:04 CST" in html  # the site's time zone
    assert "Jane Doe" in html and "&lt;prof@example.edu&gt;" in html and "CS 199 Staff" in html
    assert "page 1 of 2" in html and 'href="/email?page=2"' in html
    page2 = client.get("/email?page=2").get_data(as_text=True)
    assert re.findall(r'id="m-([0-9a-f-]+)"', page2) == [event(n)["id"] for n in (1, 0)]
    assert "Alice Liddell" in page2 and "may not post to this list" in page2
    assert client.get("/email?page=99").status_code == 200  # clamps to the last page
    assert client.get("/email?page=x").status_code == 200


def test_filters_by_status_and_list(client):
    login(client)
    html = client.get("/email?status=failed").get_data(as_text=True)
    assert re.findall(r'<details class="row" id="m-[^"]+" data-status="(\w+)"', html) == ["failed"]
    assert '<option value="failed" selected>' in html and "1 message<" in html
    html = client.get("/email?list=staff@lists.example.edu").get_data(as_text=True)
    assert re.findall(r'<details class="row" id="m-[^"]+" data-status="(\w+)"', html) == ["rejected"]
    html = client.get("/email?list=staff@lists.example.edu&status=delivered").get_data(as_text=True)
    assert 'id="empty"' in html and "No mail matches these filters" in html
    html = client.get("/email?status=bogus&list=nosuch@x").get_data(as_text=True)
    assert html.count('<details class="row"') == 3  # unknown filters are ignored
    # the page links exist when there are pages (5 rows, 3 a page) …
    html = client.get("/email").get_data(as_text=True)
    assert '<nav class="pages">' in html and "page 1 of 2" in html and 'rel="next"' in html
    # … and not for one page: two delivered rows, page_size 3
    html = client.get("/email?status=delivered&page=1").get_data(as_text=True)
    assert re.findall(r'<details class="row" id="m-[^"]+" data-status="(\w+)"', html) == ["delivered"] * 2
    assert "2 messages<" in html
    assert '<nav class="pages">' not in html and 'rel="next"' not in html and "page 1 of" not in html


def test_row_expands_in_place_and_permalink_shows_everything(client):
    login(client)
    html = client.get("/email?status=failed").get_data(as_text=True)
    row = html.split('<details class="row"')[1]
    assert "<summary" in row and "alice@example.edu" in row and "Body of message 3" in row
    assert f'href="/email/{event(3)["id"]}"' in row
    r = client.get(f"/email/{event(3)['id']}")
    assert r.status_code == 200
    page = r.get_data(as_text=True)
    assert "<li>alice@example.edu</li>" in page and "<li>bob@example.edu</li>" in page
    assert "Body of message 3" in page and "4AB0003" in page and "&lt;m3@example.edu&gt;" in page
    assert client.get(f"/email/{uuid.uuid4().hex}").status_code == 404
    assert client.get(f"/email/{uuid.uuid4()}").status_code == 404
    assert client.get("/email/../../etc/passwd").status_code == 404
    assert client.get(f"/email/{event(3)['id'].upper()}").status_code == 200
    assert client.get(f"/email/{event(3)['id'][:31]}").status_code == 404


def test_a_legacy_uuid_row_has_its_permalink(client, site):
    legacy = str(uuid.uuid4())
    with ST.open_store(site.store) as s:
        s.upsert([entry_from(event(9, id=legacy, subject="From before the 32-character ids"))])
    login(client)
    r = client.get(f"/email/{legacy.upper()}")
    assert r.status_code == 200 and b"From before the 32-character ids" in r.data
    assert f'href="/email/{legacy}"'.encode() in client.get("/email").data


@pytest.mark.parametrize("ident", ["not-an-id", "..", "0" * 31, "0" * 33, "g" * 32, "%00" + "0" * 29,
                                   "8d5e1c1e-8a7f-4c43-9a43-0d6d5b0c2b1", "8d5e1c1e8a7f4c439a430d6d5b0c2b11-"])
def test_ids_not_of_event_form_never_reach_the_store(client, monkeypatch, ident):
    asked = []
    real = ST.Store.get
    monkeypatch.setattr(ST.Store, "get", lambda self, i: (asked.append(i), real(self, i))[1])
    login(client)
    assert client.get(f"/email/{ident}").status_code == 404
    assert asked == []
    assert client.get(f"/email/{ID4}").status_code == 200 and asked == [ID4]


def test_html_in_bodies_and_headers_is_shown_as_text(client):
    login(client)
    for url in ("/email", f"/email/{ID4}"):
        r = client.get(url)
        html = r.get_data(as_text=True)
        assert "<script" not in html.lower() and "<img" not in html.lower()
        assert "&lt;script&gt;alert(&#39;body&#39;)&lt;/script&gt;" in html
        assert "&lt;img src=x onerror=alert(1)&gt; X-Injected: yes" in html  # CR/LF folded to one line
        assert "Mallory Set-Cookie: evil=1" in html
        assert "X-Injected" not in r.headers and "evil" not in r.headers.get("Set-Cookie", "")
        assert r.headers["Content-Security-Policy"].startswith("default-src 'none'")
        assert r.headers["X-Frame-Options"] == "DENY"
    title = re.search(r"<title>(.*?)</title>", client.get(f"/email/{ID4}").get_data(as_text=True), re.S).group(1)
    assert "\n" not in title and "&lt;img" in title


def test_multipart_bodies_show_their_text_part():
    body = ("--b1\nContent-Type: text/plain; charset=utf-8\nContent-Transfer-Encoding: quoted-printable\n\n"
            "Gr=C3=BC=C3=9Fe\n--b1\nContent-Type: text/html\n\n<p>hi</p>\n"
            "--b1\nContent-Type: application/pdf\nContent-Disposition: attachment; filename=\"a.pdf\"\n\nJVBE\n--b1--\n")
    view = W.body_view(body)
    assert view["decoded"] and view["parts"] == [("text", "Grüße")] and view["attachments"] == ["a.pdf"]
    assert W.body_view("plain text\n") == {"parts": [("text", "plain text\n")], "attachments": [],
                                           "source": "plain text\n", "decoded": False}
    assert W.body_view("--\n")["decoded"] is False
    assert W.body_view(None)["parts"] == []


def spool_and_store(config: C.Config) -> tuple[dict, int, list]:
    """Every file under the spool (content and mtime), and the store's rows."""
    spool = config.site.spool_dir
    files = {str(p.relative_to(spool)): (p.read_bytes(), p.stat().st_mtime_ns)
             for p in sorted(spool.rglob("*")) if p.is_file()}
    with ST.open_store(config.store) as s:
        return files, s.count(), [e.as_json(body=True) for e in s.entries(limit=1000)]


def test_pages_only_read(client, site):
    """A GET moves nothing from the spool into the store (sync does): every page, signed in or not."""
    spool = site.site.spool_dir
    write_event(spool, event(7, subject="Fresh from the spool"))
    old = write_event(spool, event(8, subject="Waiting since yesterday"))
    os.utime(old, (time.time() - 86400,) * 2)
    (spool / "events" / "junk.json").write_text("{")
    before = spool_and_store(site)
    assert len(before[0]) == 3 and before[1] == len(SEED)
    for route in ROUTES:
        client.get(route)  # anonymous
    login(client)
    for route in ROUTES + ["/email?page=2", f"/email/{event(7)['id']}", "/login"]:
        r = client.get(route)
        assert r.status_code < 500, (route, r.status_code)
    proxy_client = W.create_app(site).test_client()
    for route in ROUTES:
        proxy_client.get(route, **proxied("instructor@example.edu"))
    assert spool_and_store(site) == before
    assert b"Fresh from the spool" not in client.get("/email").data
    # what sync does, and then the page shows it
    with ST.open_store(site.store) as store:
        assert IN.ingest(store, spool).ingested == 2
    html = client.get("/email").get_data(as_text=True)
    assert "Fresh from the spool" in html and "waited in the spool" not in html
    assert [p.name for p in SP.pending_events(spool)] == []


def test_events_waiting_over_an_hour_are_a_warning(client, site):
    login(client)
    spool = site.site.spool_dir
    path = write_event(spool, event(7))
    assert "waited in the spool" not in client.get("/email").get_data(as_text=True)  # sync will take it
    os.utime(path, (time.time() - W.BACKLOG_AGE - 60,) * 2)
    for url in ("/email", f"/email/{ID4}"):
        html = client.get(url).get_data(as_text=True)
        assert ('<p class="notice">1 event has waited in the spool for over an hour: the log is behind.'
                " Is `listfilter sync` running from cron?</p>") in html
    assert SP.pending_events(spool) == [path]  # still only a warning: the page took nothing


def test_store_not_set_up_is_503_after_auth(make_config):
    path = make_config(COURSE_LISTS + WEB)
    client = W.create_app(C.load(path)).test_client()
    assert client.get("/email").status_code == 302  # nothing, not even the error, before sign-in
    r = login(client)
    r = client.get("/email")
    assert r.status_code == 503 and b"listfilter db upgrade" in r.data


def test_secret_file_is_private_and_reused(site):
    W.create_app(site)
    mode = stat.S_IMODE(site.web.secret_file.stat().st_mode)
    assert mode == 0o600
    key = site.web.secret_file.read_bytes()
    W.create_app(site)
    assert site.web.secret_file.read_bytes() == key


def test_passwd_makes_a_hash_the_accounts_file_accepts(make_config, tmp_path):
    accounts = tmp_path / "web-accounts"
    path = make_config(COURSE_LISTS + f'[web]\naccounts_file = "{accounts}"\n')
    proc = listfilter(path, "web", "passwd", "Prof@Example.edu", "--stdin", "--print", input="s3cret-pass\n")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("prof@example.edu:scrypt:131072:8:1$") and not accounts.exists()
    proc = listfilter(path, "web", "passwd", "Prof@Example.edu", "--stdin", "--group", "root", input="s3cret-pass\n")
    assert proc.returncode == 0, proc.stderr
    web = A.with_accounts(C.load(path).web)
    assert A.verify_password(web.accounts, "prof@example.edu", "s3cret-pass")
    assert not A.verify_password(web.accounts, "prof@example.edu", "s3cret-pasS")
    proc = listfilter(path, "web", "passwd", "--stdin", input="short\n")
    assert proc.returncode == 1 and "too short" in proc.stderr


def test_deep_and_filtered_pages_are_full(site):
    """Pages far down, filtered or not, hold a whole page (bench/web_bench.py times them with 10,000 rows)."""
    with ST.open_store(site.store) as s:
        s.upsert([entry_from(event(1000 + n, status=("delivered", "bounced", "rejected", "failed")[n % 4],
                                   created_at=(T0 + dt.timedelta(seconds=n)).isoformat()))
                  for n in range(400)])
    web = site.web.__class__(**{**site.web.__dict__, "page_size": 50})
    client = W.create_app(site.__class__(**{**site.__dict__, "web": web})).test_client()
    login(client)
    for url, rows, page in (("/email", 50, "page 1 of 9"), ("/email?page=8", 50, "page 8 of 9"),
                            ("/email?page=9", 5, "page 9 of 9"), ("/email?status=failed&page=2", 50, "page 2 of 3")):
        html = client.get(url).get_data(as_text=True)
        assert html.count('<details class="row"') == rows and page in html, url
