"""`listfilter web` as it runs: the real waitress server, real TCP connections from chosen source addresses.

What Flask's test client cannot show: waitress's handling of proxy headers
(it drops X-Forwarded-* unless told otherwise), requests that really run at
once on waitress's threads, the secret file changing under a running server,
and what the server prints. Each client here is one browser (its own
cookies) on its own loopback source address, so that "the proxy", "a local
user" and "a client" are different peers, as they are in production.
"""

from __future__ import annotations

import collections
import contextlib
import http.client
import os
import re
import secrets
import socket
import subprocess
import sys
import threading
import time
import urllib.parse
from pathlib import Path

import pytest

from listfilter.admin import app as W
from listfilter.admin import auth as A
from listfilter.store import database as ST
from listfilter.sync import config as C

from ..admin.test_app import HASH, PASSWORD, seed, set_up
from ..conftest import COURSE_LISTS
from ..store.test_database import CSV_ROSTER

INSTRUCTOR = "instructor@example.edu"
SECRET_ENV = "LISTFILTER_TEST_PROXY_SECRET"
PROXY_SECRET = secrets.token_hex(24)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Client:
    """One browser: its own cookie jar, and its own source address for every connection."""

    def __init__(self, port: int, source: str = "127.0.0.1", headers: dict[str, str] | None = None):
        self.port, self.source = port, source
        self.headers = dict(headers or {})
        self.cookies: dict[str, str] = {}

    def request(self, method: str, path: str, form: dict | None = None, headers: dict | None = None):
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=60, source_address=(self.source, 0))
        hdrs = {**self.headers, **(headers or {})}
        if self.cookies:
            hdrs["Cookie"] = "; ".join(f"{k}={v}" for k, v in self.cookies.items())
        body = None
        if form is not None:
            body = urllib.parse.urlencode(form)
            hdrs["Content-Type"] = "application/x-www-form-urlencoded"
        try:
            conn.request(method, path, body=body, headers=hdrs)
            resp = conn.getresponse()
            resp.text = resp.read().decode("utf-8", "replace")
        finally:
            conn.close()
        resp.set_cookies = resp.headers.get_all("Set-Cookie") or []
        for line in resp.set_cookies:
            name, _, rest = line.partition("=")
            value = rest.split(";", 1)[0]
            if value and "1970" not in line:
                self.cookies[name] = value
            else:
                self.cookies.pop(name, None)
        return resp

    def get(self, path: str, **kw):
        return self.request("GET", path, **kw)

    def csrf(self, path: str = "/login") -> str:
        page = self.get(path)
        return re.search(r'name="csrf_token" value="([^"]+)"', page.text).group(1)

    def sign_in(self, password: str = PASSWORD, user: str = INSTRUCTOR, headers: dict | None = None):
        token = self.csrf()
        return self.request("POST", "/login", headers=headers,
                            form={"csrf_token": token, "username": user, "password": password, "next": "/email"})

    def sign_out(self):
        return self.request("POST", "/logout", form={"csrf_token": self.csrf("/email")})


@contextlib.contextmanager
def web_server(path: Path, log_path: Path, env: dict[str, str] | None = None):
    """``listfilter web --bind 127.0.0.1:PORT`` in a process of its own; yields the port."""
    port = free_port()
    with log_path.open("w") as log:
        proc = subprocess.Popen([sys.executable, "-m", "listfilter", "--config", str(path), "web",
                                 "--bind", f"127.0.0.1:{port}"], stdout=log, stderr=subprocess.STDOUT,
                                env={**os.environ, **(env or {})})
        try:
            deadline = time.monotonic() + 20
            while True:
                try:
                    socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
                    break
                except OSError:
                    if proc.poll() is not None or time.monotonic() > deadline:
                        pytest.fail(f"listfilter web did not start: {log_path.read_text()}")
                    time.sleep(0.1)
            yield port
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
    assert "Traceback" not in log_path.read_text(), log_path.read_text()


#: The two ways docs/web.md sets up a proxy that local users cannot impersonate.
SETUPS = {
    # the proxy on this host, on loopback like everyone else: it proves itself with the shared secret
    "shared secret": dict(proxies='["127.0.0.1", "::1"]', secret=True, proxy="127.0.0.1", other="127.0.0.1"),
    # the proxy connects from an address of its own
    "distinct address": dict(proxies='["127.0.0.2"]', secret=False, proxy="127.0.0.2", other="127.0.0.3"),
}


def web_config(make_config, setup: dict | None = None) -> Path:
    setup = setup or SETUPS["distinct address"]
    secret = f'proxy_secret_env = "{SECRET_ENV}"\n' if setup["secret"] else ""
    path = make_config(COURSE_LISTS + f"""
[web]
admins = ["dean@example.edu"]
proxy_header = "X-Remote-User"
proxies = {setup["proxies"]}
{secret}[web.accounts]
"{INSTRUCTOR}" = "{HASH}"
""", roster=CSV_ROSTER)
    with ST.open_store(set_up(path).store) as s:  # db upgrade, and sync for web-roles.json
        seed(s)
    return path


@pytest.fixture(params=list(SETUPS), ids=list(SETUPS))
def proxied_site(request, make_config, tmp_path):
    """(port, the proxy's client factory, a non-proxy client factory) for one proxy setup."""
    setup = SETUPS[request.param]
    with web_server(web_config(make_config, setup), tmp_path / "web.log", {SECRET_ENV: PROXY_SECRET}) as port:
        proxy_headers = {A.PROXY_SECRET_HEADER: PROXY_SECRET} if setup["secret"] else {}

        def through_proxy(client_ip: str, proto: str = "https") -> Client:
            """What the proxy sends for a browser at client_ip: X-Forwarded-For appended, its scheme."""
            return Client(port, setup["proxy"], {**proxy_headers, "X-Forwarded-For": client_ip,
                                                 "X-Forwarded-Proto": proto})

        def not_proxy(headers: dict | None = None) -> Client:
            return Client(port, setup["other"], headers)

        yield port, through_proxy, not_proxy


@pytest.fixture
def site(make_config, tmp_path):
    """A server with a standalone account; yields (port, config)."""
    path = web_config(make_config)
    with web_server(path, tmp_path / "web.log") as port:
        yield port, C.load(path)


# ---------------------------------------------------------------- the sign-in limit


def test_forty_parallel_wrong_passwords_are_limited_like_forty_in_a_row(site):
    port, _ = site
    limit = W.LOGIN_ATTEMPTS
    in_a_row = Client(port, "127.0.0.5")
    row = [in_a_row.sign_in("wrong password").status for _ in range(40)]
    assert row == [401] * limit + [429] * (40 - limit)

    clients = [Client(port, "127.0.0.6") for _ in range(40)]
    tokens = [c.csrf() for c in clients]
    start = threading.Barrier(40)
    statuses = [None] * 40

    def attempt(i):
        start.wait()
        statuses[i] = clients[i].request("POST", "/login", form={
            "csrf_token": tokens[i], "username": INSTRUCTOR, "password": "wrong password", "next": "/email"}).status

    threads = [threading.Thread(target=attempt, args=(i,)) for i in range(40)]
    began = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.monotonic() - began
    assert collections.Counter(statuses) == {401: limit, 429: 40 - limit}, statuses
    print(f"40 parallel wrong sign-ins: {statuses.count(401)} checked, {statuses.count(429)} refused,"
          f" {elapsed:.2f} s")
    assert Client(port, "127.0.0.6").sign_in().status == 429  # even the right password waits now
    assert Client(port, "127.0.0.7").sign_in().status == 302  # another client is not held up


def test_the_limit_keys_on_the_client_the_proxy_names(proxied_site):
    port, through_proxy, not_proxy = proxied_site
    # ten strangers, each one failure: together as many as the limit, all through the one proxy
    for n in range(W.LOGIN_ATTEMPTS):
        assert through_proxy(f"203.0.113.{n + 1}").sign_in("wrong password").status == 401
    instructor = through_proxy("198.51.100.7")
    assert instructor.sign_in().status == 302 and instructor.get("/email").status == 200
    # one stranger over the limit is held, whatever it writes in front of what the proxy appended
    for n in range(W.LOGIN_ATTEMPTS - 1):
        stranger = through_proxy(f"192.0.2.{n + 1}, 203.0.113.1")  # client-written entry, then the proxy's
        assert stranger.sign_in("wrong password").status == 401
    assert through_proxy("10.1.1.1, 203.0.113.1").sign_in().status == 429
    assert through_proxy("203.0.113.2").sign_in().status == 302  # its neighbour is not
    # a peer that is not the proxy is keyed on its own address, whatever X-Forwarded-For it sends
    for n in range(W.LOGIN_ATTEMPTS):
        assert not_proxy({"X-Forwarded-For": f"198.51.100.{n + 100}"}).sign_in("wrong password").status == 401
    assert not_proxy({"X-Forwarded-For": "198.51.100.7"}).sign_in().status == 429
    assert through_proxy("198.51.100.7").sign_in().status == 302  # the instructor, through the proxy, still gets in


# ---------------------------------------------------------------- HTTPS through the proxy


def test_the_cookie_is_secure_when_the_proxy_says_https(proxied_site):
    port, through_proxy, not_proxy = proxied_site
    r = through_proxy("198.51.100.7").get("/login")
    assert r.status == 200 and r.set_cookies and all("; Secure" in c for c in r.set_cookies), r.set_cookies
    signed_in = through_proxy("198.51.100.7")
    r = signed_in.sign_in()
    assert r.status == 302 and "; Secure" in r.getheader("Set-Cookie")
    r = through_proxy("198.51.100.7", proto="http").get("/login")
    assert r.set_cookies and not any("Secure" in c for c in r.set_cookies)
    # anyone else may send the header: believed from the proxy only
    r = not_proxy({"X-Forwarded-Proto": "https"}).get("/login")
    assert r.status == 200 and r.set_cookies and not any("Secure" in c for c in r.set_cookies)


def test_the_user_header_is_believed_from_the_proxy_only(proxied_site):
    port, through_proxy, not_proxy = proxied_site
    proxy = through_proxy("198.51.100.7")
    r = proxy.get("/email", headers={"X-Remote-User": INSTRUCTOR})
    assert r.status == 200 and INSTRUCTOR in r.text
    r = not_proxy().get("/email", headers={"X-Remote-User": INSTRUCTOR})
    assert r.status == 302 and r.getheader("Location").startswith("/login")


def test_a_local_user_on_the_proxys_address_without_the_secret_is_nobody(make_config, tmp_path):
    """The shared-secret setup: 127.0.0.1 is a proxy address, and any local user can connect from it."""
    path = web_config(make_config, SETUPS["shared secret"])
    with web_server(path, tmp_path / "web.log", {SECRET_ENV: PROXY_SECRET}) as port:
        for sent in ({}, {A.PROXY_SECRET_HEADER: "guessed"}, {A.PROXY_SECRET_HEADER: PROXY_SECRET[:-1]}):
            local = Client(port, "127.0.0.1", {**sent, "X-Remote-User": INSTRUCTOR, "X-Forwarded-Proto": "https"})
            r = local.get("/email")
            assert r.status == 302 and r.getheader("Location").startswith("/login")
            assert not any("Secure" in c for c in local.get("/login").set_cookies)
        ok = Client(port, "127.0.0.1", {A.PROXY_SECRET_HEADER: PROXY_SECRET, "X-Remote-User": INSTRUCTOR})
        assert ok.get("/email").status == 200
    # and without the secret in its environment the server does not start
    env = {k: v for k, v in os.environ.items() if k != SECRET_ENV}
    proc = subprocess.run([sys.executable, "-m", "listfilter", "--config", str(path), "web", "--bind",
                           f"127.0.0.1:{free_port()}"], env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1 and f"${SECRET_ENV} is unset" in proc.stderr, proc.stderr


# ---------------------------------------------------------------- sessions


def test_signing_out_kills_the_cookie_on_the_server(site):
    port, _ = site
    browser = Client(port)
    assert browser.sign_in().status == 302
    kept = dict(browser.cookies)  # what someone copied off the machine
    r = browser.get("/email")
    assert r.status == 200 and r.set_cookies == []  # a page does not renew the session
    assert browser.sign_out().status == 302
    thief = Client(port, "127.0.0.8")
    thief.cookies = kept
    r = thief.get("/email")
    assert r.status == 302 and r.getheader("Location").startswith("/login")
    assert Client(port).sign_in().status == 302  # signing in again works


def test_rotating_the_secret_signs_everyone_out_without_a_restart(site):
    port, config = site
    first, second = Client(port), Client(port, "127.0.0.9")
    assert first.sign_in().status == 302 and second.sign_in().status == 302
    assert first.get("/email").status == 200
    config.web.secret_file.write_text(secrets.token_hex(32) + "\n")  # rotate: a new secret in the file
    for browser in (first, second):
        r = browser.get("/email")
        assert r.status == 302 and r.getheader("Location").startswith("/login")
    assert first.sign_in().status == 302 and first.get("/email").status == 200
    config.web.secret_file.unlink()  # deleting it signs everyone out too …
    assert first.get("/email").status == 302
    assert not config.web.secret_file.exists()  # … and a page does not write a new one
    assert first.sign_in().status == 302 and first.get("/email").status == 200  # a sign-in does
    assert config.web.secret_file.exists()


# ---------------------------------------------------------------- what the server prints


#: Passwords of every awkward kind; each piece is distinctive, so that finding one in the output means a leak.
PASSWORDS = ["Zq9 x'Kv7 \"Wm4\"", "Zq9@Kv7/Wm4:Jx2?&a=Yp5", "Zq9âKv7%Wm4", "Zq9\\Kv7 password=Wm4"]


@pytest.mark.parametrize("password", PASSWORDS)
def test_the_store_password_is_never_printed(make_config, tmp_path, pg_dsn, password):
    """`db upgrade`, `check` and `web` name the store; with the DSN in either of libpq's forms, never its password."""
    from psycopg.conninfo import conninfo_to_dict, make_conninfo

    parts = {k: v for k, v in conninfo_to_dict(pg_dsn).items() if k != "password"}
    pairs = make_conninfo(**parts, password=password)  # key=value, the password quoted as libpq wants
    assert conninfo_to_dict(pairs)["password"] == password
    uri = (f"postgresql://{parts.get('user', 'postgres')}:{urllib.parse.quote(password, safe='')}@"
           f"{parts.get('host', '127.0.0.1')}:{parts.get('port', '5432')}/{parts['dbname']}?sslmode=disable"
           f"&password={urllib.parse.quote(password, safe='')}")
    path = make_config(COURSE_LISTS + f'[store]\nbackend = "postgresql"\n'
                       f'[web]\n[web.accounts]\n"{INSTRUCTOR}" = "{HASH}"\n', roster=CSV_ROSTER)
    pieces = [password, urllib.parse.quote(password, safe="")] + re.findall(r"[A-Z][a-z]\d", password)

    def leaks(text: str) -> list[str]:
        return [p for p in pieces if p in text]

    for form in (pairs, uri):
        env = {**os.environ, "LISTFILTER_STORE_DSN": form}
        for args in (("db", "upgrade"), ("check",)):
            proc = subprocess.run([sys.executable, "-m", "listfilter", "--config", str(path), *args], env=env,
                                  capture_output=True, text=True, timeout=60)
            out = proc.stdout + proc.stderr
            assert "postgresql " in out and "***" in out and not leaks(out), out
        with web_server(path, tmp_path / "web.log", {"LISTFILTER_STORE_DSN": form}):
            pass
        served = (tmp_path / "web.log").read_text()
        assert "serving http://" in served and "***" in served and not leaks(served), served
    # a DSN libpq cannot parse (a password with a space, unquoted): libpq's error quotes it; masked there too
    broken = make_conninfo(**parts) + " password=Zq9 Kv7"
    proc = subprocess.run([sys.executable, "-m", "listfilter", "--config", str(path), "check"],
                          env={**os.environ, "LISTFILTER_STORE_DSN": broken}, capture_output=True, text=True,
                          timeout=60)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 1 and "PROBLEM  store:" in out and "Zq9" not in out and "Kv7" not in out, out
