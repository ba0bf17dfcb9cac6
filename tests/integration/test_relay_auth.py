"""Through a real Postfix to a relay that wants STARTTLS and a login, the way a relay provider's port 587 does.

The sink (tests/harness/smtpsink.py) requires STARTTLS (or TLS from connect, port 465) with a certificate
made here with openssl, and AUTH PLAIN or LOGIN before MAIL. The private Postfix carries what
`listfilter postfix-config` prints, and the login table that command writes; a post goes in with swaks
and through listfilter-deliver. A wrong password leaves the copies deferred with the sink's 535 in
Postfix's log; a certificate the config's CA did not sign gets no password at all.
"""

from __future__ import annotations

import contextlib
import os
import re
import ssl
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from ..harness.postfix import PostfixInstance, ensure_user, swaks, traversable_tmpdir
from ..harness.smtpsink import SMTPSink
from ..harness.wiring import install_programs, listfilter_spool, wire

# the implicit-TLS sink: see SMTPSink.start
pytestmark = [pytest.mark.integration, pytest.mark.filterwarnings("ignore:Requiring AUTH while not requiring TLS")]

DOMAIN = "lists.example.edu"
LIST = f"students@{DOMAIN}"
POSTER = "prof@example.edu"
MEMBERS = ["alice@example.org", "bob@example.org"]
USER = "lists@example.edu"
PASSWORD = "pa:ss w0rd#1"  # a colon, a space and a hash: all kept by the login table


def make_certificate(directory: Path, name: str) -> tuple[Path, Path]:
    """A self-signed certificate for ``name`` (and its key), good for two days."""
    directory.mkdir(parents=True, exist_ok=True)
    cert, key = directory / f"{name}-cert.pem", directory / f"{name}-key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
                    "-subj", f"/CN={name}", "-addext", f"subjectAltName=DNS:{name}",
                    "-keyout", str(key), "-out", str(cert)], check=True, capture_output=True)
    return cert, key


def server_context(cert: Path, key: Path) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    return context


@dataclass
class Site:
    base: Path
    pf: PostfixInstance
    sink: SMTPSink
    config: Path
    program: Path

    def listfilter(self, *args: str) -> subprocess.CompletedProcess:
        env = {k: v for k, v in os.environ.items() if k != "LISTFILTER_RELAY_PASSWORD"}
        return subprocess.run([sys.executable, "-m", "listfilter", "--config", str(self.config), *args],
                              capture_output=True, text=True, timeout=60, env=env)

    def set_password(self, password: str) -> None:
        secret = self.base / "relay-password"
        secret.write_text(password + "\n")
        secret.chmod(0o600)

    def postfix_config(self) -> subprocess.CompletedProcess:
        """Run `listfilter postfix-config` and give the instance every main.cf line it prints."""
        ran = self.listfilter("postfix-config", "--listfilter", str(self.program))
        assert ran.returncode == 0, ran.stderr
        main_cf = ran.stdout[:ran.stdout.index("# ---- master.cf")]
        self.pf.main_cf_settings.update(
            line.split(" = ", 1) for line in main_cf.splitlines() if " = " in line and not line.startswith("#"))
        self.pf._write_config()
        return ran

    def post(self, subject: str) -> str:
        proc = swaks("--to", LIST, "--from", POSTER, "--header", f"Subject: {subject}",
                     "--body", "Read chapter 3.", port=self.pf.smtpd_port)
        assert "<-  250 2.0.0 Ok: queued" in proc.stdout, proc.stdout
        return proc.stdout


@contextlib.contextmanager
def relay_site(tls: str = "starttls", password: str = PASSWORD, impostor: bool = False):
    """Postfix, listfilter and a sink that wants TLS and a login; with ``impostor`` the sink's certificate
    is not the one the config trusts."""
    ensure_user("listfilter")
    with traversable_tmpdir() as base:
        trusted = make_certificate(base, "localhost")
        shown = make_certificate(base / "impostor", "localhost") if impostor else trusted
        with SMTPSink(tls_context=server_context(*shown), implicit_tls=tls == "implicit",
                      logins={USER: PASSWORD}) as sink:
            program = install_programs(base / "bin")
            (base / "roster.csv").write_text("email,name,enrollment_type,active,semester,course\n"
                                             f"{POSTER},Pat Prof,teacher,true,current,CS 199\n")
            pf = PostfixInstance(base / "postfix", relay_port=sink.port)
            config = base / "lists.toml"
            config.write_text(f"""
[site]
dmarc = "off"  # no DMARC lookups: this test starts no DNS server (tests/conftest.py)
timezone = "America/Chicago"
state_dir = "{base / 'state'}"
owners = ["{POSTER}"]

[site.relay]
host = "localhost"
port = {sink.port}
tls = "{tls}"
ca_file = "{trusted[0]}"
username = "{USER}"
password_file = "{base / 'relay-password'}"
password_map = "{pf.config_dir / 'sasl_passwd'}"

[postfix]
config_directory = "{pf.config_dir}"
map_type = "hash"

[roster]
source = "csv"
csv = "{base / 'roster.csv'}"

[domains."{DOMAIN}"]
course = "CS 199"

[lists.students]
members = {{ emails = {MEMBERS!r} }}
posters = ["{POSTER}"]
""".replace("'", '"'))
            site = Site(base, pf, sink, config, program)
            site.set_password(password)
            listfilter_spool(wire(pf, config, program))  # the pipes; the relay's lines come next
            site.postfix_config()
            pf.start()
            try:
                ran = site.listfilter("sync")
                assert ran.returncode == 0, ran.stderr
                yield site
            finally:
                pf.stop()


def deferred_because(pattern: str):
    """Every copy in the queue was deferred for ``pattern`` (with retries every second or two, a deferred
    copy is as often back in the incoming or active queue: its delay_reason is what stays)."""
    return lambda entries: bool(entries) and all(
        re.search(pattern, r.get("delay_reason", "")) for e in entries for r in e["recipients"])


@pytest.mark.parametrize("tls", ["starttls", "implicit"])
def test_a_post_reaches_the_members_through_the_login(tls):
    with relay_site(tls) as site:
        site.post("Week 3 reading")
        assert site.sink.wait_for(len(MEMBERS), timeout=30), site.pf.log_tail()
        messages = site.sink.snapshot()
        assert sorted(r for m in messages for r in m.rcpt_tos) == MEMBERS
        for m in messages:
            assert m.login == USER
            assert m.tls_version and m.tls_version.startswith("TLSv1."), m.tls_version
            assert "Subject: [students] " in m.text and "Week 3 Reading" in m.text
        assert site.sink.auth_attempts and all(
            mech in ("PLAIN", "LOGIN") and user == USER and ok for mech, user, ok in site.sink.auth_attempts)
        # Postfix checked the certificate against ca_file and the name localhost
        site.pf.wait_log(rf"Verified TLS connection established to localhost\[127\.0\.0\.1\]:{site.sink.port}")
        site.pf.wait_log(r"to=<alice@example\.org>, relay=localhost\[127\.0\.0\.1\]:\d+, .*status=sent")
        assert site.pf.wait_queue_empty(timeout=10), site.pf.queue()

        settings = site.pf.main_cf_settings
        assert settings["relayhost"] == f"[localhost]:{site.sink.port}"
        assert settings["smtp_sasl_auth_enable"] == "yes"
        assert settings["smtp_tls_security_level"] == "secure"
        assert settings.get("smtp_tls_wrappermode") == ("yes" if tls == "implicit" else None)
        assert (site.pf.config_dir / "sasl_passwd").stat().st_mode & 0o777 == 0o600


def test_a_wrong_password_defers_the_copies_until_it_is_fixed():
    with relay_site(password="wrong") as site:
        site.post("Week 4 reading")
        site.pf.wait_queue(deferred_because(r"SASL authentication failed.* 535 5\.7\.8"), timeout=30)
        site.pf.wait_log(r"SASL authentication failed; server localhost\[127\.0\.0\.1\] said:"
                         r" 535 5\.7\.8 Authentication credentials invalid")
        assert site.sink.snapshot() == []
        assert (("PLAIN", USER, False) in site.sink.auth_attempts
                or ("LOGIN", USER, False) in site.sink.auth_attempts), site.sink.auth_attempts

        # the right password in the file, postfix-config again: no reload, the next try gets through
        site.set_password(PASSWORD)
        assert site.postfix_config().stderr.startswith("listfilter: wrote ")
        site.pf.flush()
        assert site.sink.wait_for(len(MEMBERS), timeout=30), site.pf.log_tail()
        assert {m.login for m in site.sink.snapshot()} == {USER}
        assert site.pf.wait_queue_empty(timeout=10), site.pf.queue()


def test_a_certificate_the_config_does_not_trust_gets_no_password():
    with relay_site(impostor=True) as site:
        site.post("Week 5 reading")
        site.pf.wait_queue(deferred_because(r"^Server certificate not verified$"), timeout=30)
        site.pf.wait_log(rf"certificate verification failed for localhost\[127\.0\.0\.1\]:{site.sink.port}:"
                         " self-signed certificate")
        assert site.sink.auth_attempts == [] and site.sink.snapshot() == []
