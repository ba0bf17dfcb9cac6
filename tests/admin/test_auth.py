"""Secrets around the admin page: hash strength, who the proxy and the client are, sessions, the store DSN."""

from __future__ import annotations

import ipaddress
import re
import socket
import stat

import pytest

from listfilter.admin import app as W
from listfilter.admin import auth as A
from listfilter.sync import config as C

from ..cli.runner import listfilter
from ..conftest import COURSE_LISTS
from .test_app import HASH, login

# ---------------------------------------------------------------- password hashes against OWASP's minimums

SALT = "$c2FsdHNhbHQ$" + "ab" * 32
#: (werkzeug method, strong enough?) — OWASP Password Storage Cheat Sheet: scrypt N=2^17 r=8 p=1 or an equal
#: setting; PBKDF2-HMAC-SHA256 600,000, -SHA512 210,000, -SHA1 1,300,000 iterations.
HASHES = [
    ("scrypt:131072:8:1", True), ("scrypt:262144:8:1", True), ("scrypt:65536:8:2", True),
    ("scrypt:32768:8:3", True), ("scrypt:16384:8:5", True), ("scrypt:8192:8:10", True),
    ("scrypt:32768:8:1", False),  # werkzeug's own default
    ("scrypt:65536:8:1", False), ("scrypt:131072:4:1", False), ("scrypt:8192:8:9", False),
    ("pbkdf2:sha256:600000", True), ("pbkdf2:sha256:1000000", True), ("pbkdf2:sha512:210000", True),
    ("pbkdf2:sha1:1300000", True), ("pbkdf2:sha256", True),  # werkzeug's default, 1,000,000 today
    ("pbkdf2:sha256:599999", False), ("pbkdf2:sha256:260000", False), ("pbkdf2:sha1:600000", False),
    ("pbkdf2:sha512:100000", False), ("pbkdf2:md5:9000000", False), ("pbkdf2:sha256:many", False),
    ("scrypt:big:8:1", False),
]


@pytest.mark.parametrize("method, strong", HASHES)
def test_hash_strength(method, strong):
    why = A.hash_weakness(method + SALT)
    assert (why is None) == strong, why
    if not strong:
        assert why and ("at least" in why or "unknown" in why or "use sha256" in why)


def test_new_hashes_meet_the_minimums_and_verify():
    stored = A.hash_password("correct horse battery")
    assert stored.startswith(A.NEW_HASH_METHOD + "$") and A.hash_weakness(stored) is None
    assert A.verify_password({"a@example.edu": stored}, "A@example.edu", "correct horse battery")
    assert not A.verify_password({"a@example.edu": stored}, "a@example.edu", "correct horse batterY")
    assert not A.verify_password({"a@example.edu": stored}, "b@example.edu", "correct horse battery")


def accounts_config(make_config, accounts: dict[str, str], web: str = ""):
    lines = "\n".join(f'"{u}" = "{h}"' for u, h in accounts.items())
    # an accounts file beside the config (none is written here), never the host's /etc/listfilter
    return make_config(COURSE_LISTS + f'[web]\naccounts_file = "web-accounts"\n{web}\n[web.accounts]\n{lines}\n')


def test_check_refuses_weak_hashes_one_line_per_account(make_config):
    path = accounts_config(make_config, {
        "old@example.edu": "pbkdf2:sha256:260000" + SALT,
        "werkzeug@example.edu": "scrypt:32768:8:1" + SALT,
        "ok@example.edu": HASH,
    })
    ran = listfilter(path, "check", "--offline")
    assert ran.returncode == 1, ran.stdout
    lines = [line for line in ran.stdout.splitlines() if line.startswith("PROBLEM  web accounts")]
    assert lines == [
        "PROBLEM  web accounts: old@example.edu: the password hash is pbkdf2-sha256 with 260,000 iterations"
        " (at least 600,000), below OWASP's minimum (make a new one with `listfilter web passwd old@example.edu`)",
        "PROBLEM  web accounts: werkzeug@example.edu: the password hash is scrypt with N=32768, r=8, p=1"
        " (at least N=2^17, r=8, p=1), below OWASP's minimum"
        " (make a new one with `listfilter web passwd werkzeug@example.edu`)",
    ]
    ran = listfilter(accounts_config(make_config, {"ok@example.edu": HASH}), "check", "--offline")
    assert ran.returncode == 0 and "ok       web accounts: 1 account, every hash meets OWASP's minimums" \
        in ran.stdout, ran.stdout


def test_passwd_makes_a_hash_that_check_accepts(make_config, tmp_path):
    path = make_config(COURSE_LISTS + '[web]\naccounts_file = "web-accounts"\n')
    ran = listfilter(path, "web", "passwd", "prof@example.edu", "--stdin", "--group", "root", input="s3cret-pass\n")
    assert ran.returncode == 0, ran.stderr
    [line] = (tmp_path / "web-accounts").read_text().splitlines()[2:]  # after the two comment lines
    assert re.fullmatch(r"prof@example\.edu:scrypt:131072:8:1\$[^$]{16}\$[0-9a-f]{128}", line), line
    ran = listfilter(path, "check", "--offline")
    assert ran.returncode == 0 and "ok       web accounts: 1 account, every hash meets" in ran.stdout, ran.stdout
    assert "warning" not in ran.stdout


# ---------------------------------------------------------------- the proxy any local user could be


def web_settings(make_config, web: str) -> C.WebSettings:
    return C.load(make_config(COURSE_LISTS + "[web]\nproxy_header = \"X-Remote-User\"\n" + web)).web


LOCAL = [ipaddress.ip_network(n) for n in ("127.0.0.0/8", "::1/128", "192.0.2.2/32", "2001:db8::2/128")]


@pytest.mark.parametrize("proxies, bind, flagged", [
    (["127.0.0.1", "::1"], "127.0.0.1", ["127.0.0.1"]),        # the old docs' example
    (["127.0.0.0/8"], "127.0.0.1", ["127.0.0.0/8"]),
    (["127.0.0.2"], "127.0.0.1", ["127.0.0.2"]),               # any 127/8 source reaches 127.0.0.1
    (["::1"], "::1", ["::1"]),
    (["::1"], "127.0.0.1", []),                                # an IPv4 socket cannot be reached from ::1
    (["10.9.8.7"], "127.0.0.1", []),                           # the proxy on another host
    (["10.9.8.7"], "0.0.0.0", []),
    (["127.0.0.1"], "0.0.0.0", ["127.0.0.1"]),
    (["192.0.2.0/24"], "0.0.0.0", ["192.0.2.0/24"]),            # holds one of this host's addresses
    (["192.0.2.0/24"], "192.0.2.2", ["192.0.2.0/24"]),
    (["2001:db8::2"], "::", ["2001:db8::2"]),
    (["192.0.2.9", "127.0.0.1"], "192.0.2.2", ["127.0.0.1"]),
])
def test_spoofable_proxies(make_config, proxies, bind, flagged):
    web = web_settings(make_config, f"proxies = {proxies!r}\n".replace("'", '"'))
    assert A.spoofable_proxies(web, bind, LOCAL) == flagged
    with_secret = web_settings(make_config, f"proxies = {proxies!r}\nproxy_secret_env = \"S\"\n".replace("'", '"'))
    assert A.spoofable_proxies(with_secret, bind, LOCAL) == []


def test_this_hosts_addresses_are_found():
    local = A.local_addresses()
    assert ipaddress.ip_network("127.0.0.0/8") in local and ipaddress.ip_network("::1/128") in local
    for net in local:
        if net.prefixlen == net.max_prefixlen and not net.network_address.is_link_local:  # (those need a scope)
            family = socket.AF_INET if net.version == 4 else socket.AF_INET6
            with socket.socket(family) as s:
                s.bind((str(net.network_address), 0))


def test_check_warns_when_loopback_is_the_proxy_on_loopback(make_config, monkeypatch):
    web = 'proxy_header = "X-Remote-User"\nproxies = ["127.0.0.1", "::1"]\nbind = "127.0.0.1:8080"\n'
    ran = listfilter(make_config(COURSE_LISTS + "[web]\n" + web), "check", "--offline")
    assert ran.returncode == 1
    assert ("PROBLEM  web proxies: 127.0.0.1 is an address local users can connect from to the app"
            " (bind 127.0.0.1:8080): any of them could claim to be anyone. Set [web] proxy_secret_env,"
            " or bind where only the proxy connects from (docs/web.md)") in ran.stdout, ran.stdout
    assert "::1 is an address" not in ran.stdout
    path = make_config(COURSE_LISTS + "[web]\n" + web + 'proxy_secret_env = "LF_PROXY_SECRET"\n')
    ran = listfilter(path, "check", "--offline", env={"LF_PROXY_SECRET": None})
    assert ran.returncode == 1 and "PROBLEM  web proxies: $LF_PROXY_SECRET is unset" in ran.stdout, ran.stdout
    ran = listfilter(path, "check", "--offline", env={"LF_PROXY_SECRET": "x" * 32})
    assert ran.returncode == 0, ran.stdout
    assert "ok       web proxies: requests count as the proxy's only with the secret in $LF_PROXY_SECRET" \
        in ran.stdout
    ran = listfilter(make_config(COURSE_LISTS + '[web]\nproxy_header = "X-Remote-User"\nproxies = ["10.9.8.7"]\n'),
                     "check", "--offline")
    assert ran.returncode == 0 and "web proxies" not in ran.stdout, ran.stdout


def test_proxy_secret_env_needs_proxies(make_config):
    with pytest.raises(C.ConfigError, match="web.proxy_secret_env: only used with proxies"):
        C.load(make_config(COURSE_LISTS + f'[web]\nproxy_secret_env = "S"\n[web.accounts]\n"a@example.edu" = "{HASH}"\n'))


# ---------------------------------------------------------------- who the client is


@pytest.mark.parametrize("peer, forwarded, trusted, client", [
    ("10.9.8.7", "203.0.113.5", True, "203.0.113.5"),
    ("10.9.8.7", "198.51.100.1, 203.0.113.5", True, "203.0.113.5"),      # the client's own claim is ignored
    ("10.9.8.7", "203.0.113.5, 10.9.8.7", True, "203.0.113.5"),          # through two proxies of ours
    ("10.9.8.7", "203.0.113.5,192.0.2.40", True, "203.0.113.5"),         # 192.0.2.0/24 is a proxy network too
    ("10.9.8.7", "2001:db8::5", True, "2001:db8::5"),
    ("10.9.8.7", "[2001:db8::5]:4711", True, "2001:db8::5"),
    ("10.9.8.7", "::ffff:203.0.113.5", True, "203.0.113.5"),
    ("10.9.8.7", "unknown", True, "10.9.8.7"),                           # not written by the proxy: the peer
    ("10.9.8.7", "203.0.113.5, garbage", True, "10.9.8.7"),
    ("10.9.8.7", "", True, "10.9.8.7"),
    ("10.9.8.7", None, True, "10.9.8.7"),
    ("203.0.113.9", "198.51.100.1", False, "203.0.113.9"),              # not the proxy: its own address
    ("::ffff:203.0.113.9", None, False, "203.0.113.9"),
])
def test_client_address(make_config, peer, forwarded, trusted, client):
    web = web_settings(make_config, 'proxies = ["10.9.8.7", "192.0.2.0/24"]\n')
    assert A.client_address(web, peer, forwarded, trusted) == client


def test_trusted_proxy_needs_the_secret_when_one_is_set(make_config, monkeypatch):
    web = web_settings(make_config, 'proxies = ["127.0.0.1"]\nproxy_secret_env = "LF_PROXY_SECRET"\n')
    monkeypatch.delenv("LF_PROXY_SECRET", raising=False)
    with pytest.raises(ValueError, match="unset"):
        A.proxy_secret(web)
    monkeypatch.setenv("LF_PROXY_SECRET", "short")
    with pytest.raises(ValueError, match="too short"):
        A.proxy_secret(web)
    monkeypatch.setenv("LF_PROXY_SECRET", "s" * 24)
    secret = A.proxy_secret(web)
    assert A.trusted_proxy(web, "127.0.0.1", "s" * 24, secret)
    assert not A.trusted_proxy(web, "127.0.0.1", None, secret)
    assert not A.trusted_proxy(web, "127.0.0.1", "s" * 23, secret)
    assert not A.trusted_proxy(web, "127.0.0.1", "ś" * 24, secret)
    assert not A.trusted_proxy(web, "127.0.0.2", "s" * 24, secret)


# ---------------------------------------------------------------- sessions


def test_a_session_ends_at_a_fixed_time_however_busy(client, monkeypatch):
    t0 = 2_000_000_000.0
    clock = [t0]
    monkeypatch.setattr(A, "now", lambda: clock[0])
    assert login(client).status_code == 302
    for hours in (1, 6, 11, 11.99):
        clock[0] = t0 + hours * 3600
        r = client.get("/email")
        assert r.status_code == 200 and "Set-Cookie" not in r.headers, hours  # nothing renews it
    clock[0] = t0 + 12 * 3600 + 1
    r = client.get("/email")
    assert r.status_code == 302 and "/login" in r.headers["Location"]
    assert login(client).status_code == 302 and client.get("/email").status_code == 200  # a new sign-in


def test_pages_never_write_the_session_file(client, site):
    assert login(client).status_code == 302
    path = site.web.session_file
    before = (path.read_bytes(), path.stat().st_mtime_ns)
    for url in ("/email", "/email?page=2", "/bounces", "/nosuch", "/login", "/"):
        assert client.get(url).status_code < 500
    W.create_app(site).test_client().get("/email")  # anonymous, another app on the same file
    assert (path.read_bytes(), path.stat().st_mtime_ns) == before
    assert sorted(p.name for p in path.parent.iterdir() if p.name.startswith("web-sessions")) == \
        ["web-sessions.sqlite"]
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_signing_out_ends_the_server_session(client, app):
    assert login(client).status_code == 302
    cookie = client.get_cookie("listfilter_session").value
    page = client.get("/email").get_data(as_text=True)
    token = re.search(r'name="csrf_token" value="([^"]+)"', page).group(1)
    assert client.post("/logout", data={"csrf_token": token}).status_code == 302
    other = app.test_client()
    other.set_cookie("listfilter_session", cookie)
    assert other.get("/email").status_code == 302


# ---------------------------------------------------------------- the store DSN, as it is shown


DSNS = [
    # (DSN, the secret that must not show, what is shown)
    ("postgresql://lf:s3cret@db.example.edu/maillog", "s3cret", "postgresql://lf:***@db.example.edu/maillog"),
    ("postgres://lf:p%40ss%2Fw%3Ard@db:5432/m?sslmode=require", "p%40ss", "postgres://lf:***@db:5432/m?sslmode=require"),
    ("postgresql://lf:pa@ss@db/m", "pa@ss", "postgresql://lf:***@db/m"),          # a raw @ in the password
    ("postgresql://lf:pass/word:x@db/m", "pass/word", "postgresql://lf:***@db/m"),
    ("postgresql://db/m?password=hunter22&sslmode=require", "hunter22", "postgresql://db/m?password=***&sslmode=require"),
    ("postgresql://db/m?sslmode=require&PassWord=hunter22", "hunter22", "postgresql://db/m?sslmode=require&PassWord=***"),
    ("postgresql://db/m?pass%77ord=hunter22", "hunter22", "postgresql://db/m?pass%77ord=***"),  # libpq decodes keys
    ("postgresql://lf:a@db/m?password=b2b2b2", "b2b2b2", "postgresql://lf:***@db/m?password=***"),
    ("postgresql://lf@db/m?application_name=a@b&password=x1y2", "x1y2", None),
    ("postgresql://db/m?sslpassword=keykey", "keykey", "postgresql://db/m?sslpassword=***"),
    ("host=db user=lf password=s3cret dbname=m", "s3cret", "host=db user=lf password=*** dbname=m"),
    ("host=db password = s3cret dbname=m", "s3cret", "host=db password=*** dbname=m"),
    ("host=db password='with spaces and \\'quotes\\'' dbname=m", "spaces", "host=db password=*** dbname=m"),
    ("host=db password='alpha \"beta\" gamma' dbname=m", '"beta"', "host=db password=*** dbname=m"),
    ("host=db password=back\\ slash dbname=m", "slash", "host=db password=*** dbname=m"),
    ("host=db password=two words dbname=m", "words", "host=db password=*** ***"),   # libpq cannot parse it
    ("host=db password='unterminated dbname=m", "unterminated", "host=db ***"),
    ("host=db PASSWORD=loud", "loud", "host=db PASSWORD=***"),
    ("host=db sslpassword=keykey", "keykey", "host=db sslpassword=***"),
    ("just-a-secret-string", "just-a-secret-string", "***"),
]


@pytest.mark.parametrize("dsn, secret, shown", DSNS)
def test_describe_masks_the_password_in_full(dsn, secret, shown, monkeypatch):
    monkeypatch.setenv("LF_TEST_STORE_DSN", dsn)
    store = C.StoreSettings(backend="postgresql", path=None, dsn_env="LF_TEST_STORE_DSN", dsn=None,
                            retention_days=0, body_retention_days=0, store_bodies=True, body_max_bytes=0)
    described = store.describe()
    assert secret not in described and "***" in described, described
    if shown is not None:
        assert described == "postgresql " + shown
    # a libpq error that quotes a piece of the DSN is masked too
    for piece in (secret, secret.strip('"')):
        assert piece not in store.redact(f'missing "=" after "{piece}" in connection info string')


def test_describe_without_a_dsn(monkeypatch):
    monkeypatch.delenv("LF_TEST_STORE_DSN", raising=False)
    store = C.StoreSettings(backend="postgresql", path=None, dsn_env="LF_TEST_STORE_DSN", dsn=None,
                            retention_days=0, body_retention_days=0, store_bodies=True, body_max_bytes=0)
    assert store.describe() == "postgresql $LF_TEST_STORE_DSN (unset)"
    assert store.redact("text") == "text"


def test_a_deleted_session_file_signs_everyone_out_and_a_sign_in_makes_it_again(client, site):
    assert login(client).status_code == 302 and client.get("/email").status_code == 200
    site.web.session_file.unlink()
    r = client.get("/email")
    assert r.status_code == 302 and "/login" in r.headers["Location"]
    assert not site.web.session_file.exists()  # a GET wrote nothing
    assert login(client).status_code == 302 and client.get("/email").status_code == 200
    assert stat.S_IMODE(site.web.session_file.stat().st_mode) == 0o600


def test_a_broken_session_file_fails_closed(client, site):
    site.web.session_file.write_bytes(b"not a database" * 100)
    r = login(client)
    assert r.status_code == 503 and b"Sign-in unavailable" in r.data
    assert client.get("/email").status_code == 302
