"""`listfilter dns-check` against a real authoritative server (Knot, tests/harness/dns.py) and a real SMTP relay sink.

The site is the customer's: lists.example.edu, mail leaving through the campus relay on port 25 without a login,
SPF listing the relay's two addresses, DMARC at the organisational domain with reports going to the DNS provider.
Each test breaks one thing in the zones (or the relay) and reads the finding and the exit status.
"""

from __future__ import annotations

import base64
import json
import re
import socket
import ssl
import subprocess
import threading
import time

import pytest

from listfilter.cli import dnscheck as DC
from listfilter.sync import config as C
from listfilter.sync import dns as D
from tests.cli.runner import listfilter
from tests.conftest import REPO
from tests.harness.dns import DNSServer, free_dns_port
from tests.harness.smtpsink import SMTPSink

pytestmark = pytest.mark.integration

EDU = """
lists            IN MX  10 lists-host
lists            IN TXT "v=spf1 ip4:192.0.2.25 ip4:192.0.2.26 -all"
lists-host       IN A   198.51.100.10
outbound-relays  IN A   127.0.0.1
relay1           IN A   192.0.2.25
relay2           IN A   192.0.2.26
_dmarc           IN TXT "v=DMARC1; p=quarantine; rua=mailto:re+x1@dmarc.provider.example.net"
"""
PROVIDER = 'example.edu._report._dmarc.dmarc IN TXT "v=DMARC1"'
REVERSE = "25 IN PTR relay1.example.edu.\n26 IN PTR relay2.example.edu."
ZONES = {"example.edu": EDU, "provider.example.net": PROVIDER, "2.0.192.in-addr.arpa": REVERSE}

CONFIG = """
[site]
{relay}
owners = ["prof@example.edu"]
[dns]
nameservers = ["127.0.0.1"]
port = {port}
timeout = 1
hostname = "lists-host.example.edu"
{dns}
[domains."lists.example.edu"]
[lists.testing]
members = {{ emails = ["someone@example.edu"] }}
posters = ["someone@example.edu"]
"""


@pytest.fixture(scope="module")
def knot(tmp_path_factory):
    with DNSServer(tmp_path_factory.mktemp("dns"), ZONES) as server:
        yield server


@pytest.fixture
def server(knot):
    """The one server of this module, its zones as ZONES says (a test changes them with set_zone)."""
    for origin, records in ZONES.items():
        if knot.zones.get(origin) != records:
            knot.set_zone(origin, records)
    return knot


@pytest.fixture
def relay():
    with SMTPSink() as sink:
        yield sink


def write_config(tmp_path, server, relay_port, dns='sending_addresses = ["192.0.2.25", "192.0.2.26"]',
                 relay=None, name="lists.toml"):
    path = tmp_path / name
    relay = relay if relay is not None else f'relay = "[outbound-relays.example.edu]:{relay_port}"'
    path.write_text(CONFIG.format(relay=relay, port=server.port, dns=dns))
    return path


def dns_check(config, *args):
    ran = listfilter(config, "dns-check", "--json", *args)
    out = json.loads(ran.stdout)
    return ran.returncode, out, {(f["domain"], f["check"]): f for f in out["findings"]}


def statuses(found):
    return {key: f["status"] for key, f in found.items()}


GOOD = {
    ("sending", "host"): "ok",
    ("sending", "ptr"): "ok",
    ("sending", "relay"): "ok",
    ("lists.example.edu", "mx"): "ok",
    ("lists.example.edu", "spf"): "ok",
    ("lists.example.edu", "dmarc"): "ok",
}


def test_the_customers_site_passes(tmp_path, server, relay):
    config = write_config(tmp_path, server, relay.port)
    code, out, found = dns_check(config)
    assert (code, out["status"], out["hostname"]) == (0, "ok", "lists-host.example.edu")
    assert statuses(found) == GOOD
    ptrs = [f["message"] for f in out["findings"] if f["check"] == "ptr"]
    assert ptrs == ["192.0.2.25 -> relay1.example.edu -> 192.0.2.25", "192.0.2.26 -> relay2.example.edu -> 192.0.2.26"]
    assert found["lists.example.edu", "mx"]["message"] == "MX 10 lists-host.example.edu (198.51.100.10): this host"
    assert found["lists.example.edu", "spf"]["message"] == (
        "v=spf1 ip4:192.0.2.25 ip4:192.0.2.26 -all: 192.0.2.25 pass, 192.0.2.26 pass;"
        " this host 198.51.100.10 fail (not needed while mail leaves through the relay)")
    assert found["lists.example.edu", "dmarc"]["message"] == (
        "_dmarc.example.edu (organisational domain): p=quarantine;"
        " aggregate reports to mailto:re+x1@dmarc.provider.example.net; no failure reports")
    assert found["sending", "relay"]["message"].startswith(
        f"outbound-relays.example.edu:{relay.port} (127.0.0.1): sink.test.example")
    assert all(f["fix"] == "" for f in out["findings"])
    text = listfilter(config, "dns-check")
    assert text.returncode == 0 and text.stdout.splitlines()[-1] == "7 ok, 0 warn, 0 fail"
    assert "  ok    mx      MX 10 lists-host.example.edu (198.51.100.10): this host" in text.stdout


def test_mx_elsewhere_fails_and_a_foreign_backup_warns(tmp_path, server, relay):
    config = write_config(tmp_path, server, relay.port)
    server.set_zone("example.edu", EDU.replace("lists            IN MX  10 lists-host",
                                               "lists IN MX 10 mx.elsewhere.example.org."))
    code, _, found = dns_check(config)
    mx = found["lists.example.edu", "mx"]
    assert (code, mx["status"]) == (2, "fail")
    assert mx["message"] == "MX 10 mx.elsewhere.example.org (no address): not this host (lists-host.example.edu, 198.51.100.10)"
    assert mx["fix"] == ("point the MX of lists.example.edu at lists-host.example.edu, 198.51.100.10,"
                         " or list the host in [dns] expect_mx")

    server.set_zone("example.edu", EDU + "lists IN MX 20 backup.example.edu.\nbackup IN A 192.0.2.99\n")
    code, _, found = dns_check(config)
    assert (code, found["lists.example.edu", "mx"]["status"]) == (1, "warn")
    assert "but 20 backup.example.edu (192.0.2.99) is not" in found["lists.example.edu", "mx"]["message"]

    # The backup listed by address in expect_mx (with this host's name): both accepted.
    config = write_config(tmp_path, server, relay.port, name="expect.toml",
                          dns='sending_addresses = ["192.0.2.25", "192.0.2.26"]\n'
                              'expect_mx = ["lists-host.example.edu", "192.0.2.99"]')
    code, _, found = dns_check(config)
    assert (code, found["lists.example.edu", "mx"]["status"]) == (0, "ok")


def test_no_mx_fails(tmp_path, server, relay):
    server.set_zone("example.edu", EDU.replace("lists            IN MX  10 lists-host", ""))
    code, _, found = dns_check(write_config(tmp_path, server, relay.port))
    mx = found["lists.example.edu", "mx"]
    assert (code, mx["status"]) == (2, "fail")
    assert mx["message"] == "lists.example.edu has no MX record: mail for the lists cannot be delivered"
    assert mx["fix"] == "publish lists.example.edu. MX 10 lists-host.example.edu."


@pytest.mark.parametrize("spf, status, message, fix", [
    ("v=spf1 ip4:192.0.2.25 -all", "fail", "192.0.2.25 pass, 192.0.2.26 fail",
     "add ip4:192.0.2.26 (or an include: that covers it) to the SPF record of lists.example.edu"),
    ("v=spf1 ip4:192.0.2.25 ~all", "warn", "192.0.2.25 pass, 192.0.2.26 softfail",
     "add ip4:192.0.2.26 (or an include: that covers it) to the SPF record of lists.example.edu"),
    ("v=spf1 include:_spf.example.edu -all", "ok", "192.0.2.25 pass, 192.0.2.26 pass", ""),  # the campus record
    ("v=spf1 a:relay1.example.edu a:relay2.example.edu -all", "ok", "192.0.2.25 pass, 192.0.2.26 pass", ""),
    # include: of a name without SPF: a permanent error (RFC 7208 §5.2)
    ("v=spf1 include:_spf.gone.example.edu -all", "fail", "192.0.2.25 permerror", ""),
])
def test_spf_is_evaluated_for_each_sending_address(tmp_path, server, relay, spf, status, message, fix):
    zone = EDU.replace("v=spf1 ip4:192.0.2.25 ip4:192.0.2.26 -all", spf)
    zone += '_spf IN TXT "v=spf1 ip4:192.0.2.0/28 ip4:192.0.2.16/28 -all"\n'
    server.set_zone("example.edu", zone)
    code, _, found = dns_check(write_config(tmp_path, server, relay.port))
    f = found["lists.example.edu", "spf"]
    assert (code, f["status"]) == ({"ok": 0, "warn": 1, "fail": 2}[status], status)
    assert f["message"].startswith(f"{spf}: ") and message in f["message"]
    if fix:
        assert f["fix"] == fix


def test_no_spf_record_fails_with_the_record_to_publish(tmp_path, server, relay):
    server.set_zone("example.edu", EDU.replace('lists            IN TXT "v=spf1 ip4:192.0.2.25 ip4:192.0.2.26 -all"', ""))
    code, _, found = dns_check(write_config(tmp_path, server, relay.port))
    f = found["lists.example.edu", "spf"]
    assert (code, f["status"], f["message"]) == (2, "fail", "lists.example.edu publishes no SPF record")
    assert f["fix"] == 'publish lists.example.edu. TXT "v=spf1 ip4:192.0.2.25 ip4:192.0.2.26 -all"'


def test_dmarc_missing_warns_and_its_own_record_is_read(tmp_path, server, relay):
    config = write_config(tmp_path, server, relay.port)
    server.set_zone("example.edu", EDU.replace('_dmarc           IN TXT "v=DMARC1; p=quarantine; '
                                               'rua=mailto:re+x1@dmarc.provider.example.net"', ""))
    code, _, found = dns_check(config)
    f = found["lists.example.edu", "dmarc"]
    assert (code, f["status"]) == (1, "warn")
    assert f["message"] == "no DMARC record at _dmarc.lists.example.edu nor _dmarc.example.edu"
    assert f["fix"] == 'publish _dmarc.example.edu. TXT "v=DMARC1; p=none; rua=mailto:dmarc-reports@example.edu"'

    server.set_zone("example.edu", EDU + '_dmarc.lists IN TXT "v=DMARC1; p=reject; pct=50;'
                                         ' rua=mailto:d@example.edu; ruf=mailto:f@example.edu"\n')
    code, _, found = dns_check(config)
    assert (code, found["lists.example.edu", "dmarc"]["message"]) == (
        0, "_dmarc.lists.example.edu: p=reject; pct=50; aggregate reports to mailto:d@example.edu;"
           " failure reports to mailto:f@example.edu")


def test_reports_to_another_domain_need_its_consent(tmp_path, server, relay):
    server.set_zone("provider.example.net", "www IN A 192.0.2.80")
    code, _, found = dns_check(write_config(tmp_path, server, relay.port))
    f = found["lists.example.edu", "dmarc"]
    assert (code, f["status"]) == (1, "warn")
    assert f["message"].endswith("mailto:re+x1@dmarc.provider.example.net has not authorised them"
                                 " (no example.edu._report._dmarc.dmarc.provider.example.net)")


@pytest.mark.parametrize("reverse, message", [
    ("25 IN PTR relay1.example.edu.", "192.0.2.26 has no PTR record"),
    (REVERSE.replace("relay2", "relay9"),
     "192.0.2.26 -> relay9.example.edu, which does not resolve back to 192.0.2.26"),
])
def test_ptr_must_match_forward(tmp_path, server, relay, reverse, message):
    server.set_zone("2.0.192.in-addr.arpa", reverse)
    code, out, _ = dns_check(write_config(tmp_path, server, relay.port))
    ptrs = [f for f in out["findings"] if f["check"] == "ptr"]
    assert code == 2 and [p["status"] for p in ptrs] == ["ok", "fail"]
    assert ptrs[1]["message"] == message and ptrs[1]["fix"]


def test_a_relay_that_does_not_answer_fails(tmp_path, server):
    dead = free_dns_port()
    code, _, found = dns_check(write_config(tmp_path, server, dead))
    f = found["sending", "relay"]
    assert (code, f["status"]) == (2, "fail")
    assert f["message"].startswith(f"outbound-relays.example.edu:{dead} (127.0.0.1): ")
    assert "Connection refused" in f["message"]
    assert f["fix"] == (f"check [site] relay, and that the relay lets this host (lists-host.example.edu)"
                        f" connect to port {dead}")


def test_a_relay_whose_starttls_breaks_warns(tmp_path, server):
    """The customer's earlier failure: STARTTLS offered, no certificate, no TLS session."""
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]

    def serve():
        conn, _ = listener.accept()
        with conn, conn.makefile("rwb") as f:
            f.write(b"220 relay.example.edu ESMTP\r\n")
            f.flush()
            for line in f:
                if line.upper().startswith(b"EHLO"):
                    f.write(b"250-relay.example.edu\r\n250 STARTTLS\r\n")
                elif line.upper().startswith(b"STARTTLS"):
                    f.write(b"220 2.0.0 go ahead\r\n")
                    f.flush()
                    conn.recv(4096)  # the ClientHello, answered by a hang-up
                    return
                else:
                    f.write(b"250 ok\r\n")
                f.flush()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        code, _, found = dns_check(write_config(tmp_path, server, port))
    finally:
        thread.join(5)
        listener.close()
    f = found["sending", "relay"]
    assert (code, f["status"]) == (1, "warn")
    assert f["message"].startswith(f"outbound-relays.example.edu:{port} (127.0.0.1) offers STARTTLS but TLS fails")


def make_certificate(directory, name: str):
    """A self-signed certificate naming ``name`` (the relay's CA file too), and a server context with it."""
    cert, key = directory / f"{name}.pem", directory / f"{name}.key"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", f"/CN={name}",
                    "-addext", f"subjectAltName=DNS:{name}", "-keyout", str(key), "-out", str(cert)],
                   check=True, capture_output=True)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    return cert, context


def relay_table(port, cert, tls="starttls"):
    return (f'relay = {{ host = "outbound-relays.example.edu", port = {port}, tls = "{tls}", verify = true,'
            f' ca_file = "{cert}", username = "lists@example.edu" }}')


def test_an_authenticated_relay_with_starttls(tmp_path, server):
    cert, context = make_certificate(tmp_path, "outbound-relays.example.edu")
    with SMTPSink(tls_context=context, logins={"lists@example.edu": "secret"}) as sink:
        config = write_config(tmp_path, server, 0, relay=relay_table(sink.port, cert))
        code, _, found = dns_check(config)
    f = found["sending", "relay"]
    assert (code, f["status"]) == (0, "ok")
    assert f["message"].endswith("; EHLO 250, STARTTLS, AUTH LOGIN PLAIN")


def test_a_relay_certificate_for_another_name_fails(tmp_path, server):
    cert, context = make_certificate(tmp_path, "smtp.elsewhere.example.net")
    with SMTPSink(tls_context=context, logins={"lists@example.edu": "secret"}) as sink:
        config = write_config(tmp_path, server, 0, relay=relay_table(sink.port, cert))
        code, _, found = dns_check(config)
    f = found["sending", "relay"]
    assert (code, f["status"]) == (2, "fail")
    assert "offers STARTTLS but TLS fails" in f["message"] and "certificate verify failed" in f["message"]


@pytest.mark.filterwarnings("ignore:Requiring AUTH while not requiring TLS")  # aiosmtpd cannot see implicit TLS
def test_a_relay_with_implicit_tls(tmp_path, server):
    cert, context = make_certificate(tmp_path, "outbound-relays.example.edu")
    with SMTPSink(tls_context=context, implicit_tls=True, logins={"lists@example.edu": "secret"}) as sink:
        config = write_config(tmp_path, server, 0, relay=relay_table(sink.port, cert, tls="implicit"))
        code, _, found = dns_check(config)
    f = found["sending", "relay"]
    assert (code, f["status"]) == (0, "ok") and f["message"].endswith("; EHLO 250, TLS, AUTH LOGIN PLAIN")


def test_a_failing_zone_fails_every_finding_in_it(tmp_path, server, relay):
    server.set_servfail("example.edu")
    code, out, found = dns_check(write_config(tmp_path, server, relay.port))
    assert code == 2 and [f["status"] for f in out["findings"]] == ["fail"] * 7
    assert found["lists.example.edu", "dmarc"]["message"].endswith("answered SERVFAIL")
    assert "answered SERVFAIL" in found["sending", "host"]["message"]


def test_no_relay_this_host_sends_and_spf_must_cover_it(tmp_path, server, monkeypatch):
    monkeypatch.setattr(DC, "postfix_relayhost", lambda config: "")
    server.set_zone("100.51.198.in-addr.arpa", "10 IN PTR lists-host.example.edu.")
    config = write_config(tmp_path, server, 0, dns="", relay="")
    code, out, found = dns_check(config)
    assert found["sending", "relay"] == {"domain": "sending", "check": "relay", "status": "ok",
                                         "message": "no relay: this host delivers to the receivers itself", "fix": ""}
    assert found["sending", "ptr"]["message"] == "198.51.100.10 -> lists-host.example.edu -> 198.51.100.10"
    f = found["lists.example.edu", "spf"]
    assert (code, f["status"]) == (2, "fail")
    assert f["fix"] == "add ip4:198.51.100.10 (or an include: that covers it) to the SPF record of lists.example.edu"


def test_postfix_relayhost_is_used_when_the_config_names_none(tmp_path, server, relay, monkeypatch):
    monkeypatch.setattr(DC, "postfix_relayhost", lambda config: f"[outbound-relays.example.edu]:{relay.port}")
    code, _, found = dns_check(write_config(tmp_path, server, 0, relay=""))
    assert code == 0 and found["sending", "relay"]["status"] == "ok"


def test_a_loopback_sending_address_warns(tmp_path, server, relay):
    server.set_zone("0.0.127.in-addr.arpa", "1 IN PTR outbound-relays.example.edu.")
    code, out, found = dns_check(write_config(tmp_path, server, relay.port, dns=""))
    # and SPF, rightly, does not pass for it
    assert code == 2 and [(f["check"], f["status"]) for f in out["findings"] if f["status"] != "ok"] == [
        ("sending", "warn"), ("spf", "fail")]
    assert found["sending", "sending"]["message"] == "sending from 127.0.0.1: a loopback address"
    assert found["sending", "ptr"]["message"] == "127.0.0.1 -> outbound-relays.example.edu -> 127.0.0.1"


def test_only_one_domain(tmp_path, server, relay):
    config = write_config(tmp_path, server, relay.port)
    config.write_text(config.read_text() + '[domains."lists-dev.example.edu"]\n')
    code, out, _ = dns_check(config)
    assert code == 2 and {f["domain"] for f in out["findings"]} == {"sending", "lists.example.edu", "lists-dev.example.edu"}
    code, out, _ = dns_check(config, "--domain", "Lists.Example.EDU")
    assert code == 0 and {f["domain"] for f in out["findings"]} == {"sending", "lists.example.edu"}
    ran = listfilter(config, "dns-check", "--domain", "example.org")
    assert ran.returncode == 2 and "example.org is not a list domain" in ran.stderr


def test_a_dead_nameserver_is_one_finding_not_a_wait_per_lookup(tmp_path, server, relay):
    config = write_config(tmp_path, server, relay.port)
    dead = free_dns_port()
    config.write_text(config.read_text().replace(f"port = {server.port}", f"port = {dead}"))
    started = time.monotonic()
    code, out, _ = dns_check(config)
    assert time.monotonic() - started < 3
    assert (code, out["findings"]) == (2, [{
        "domain": "sending", "check": "dns", "status": "fail",
        "message": f"no answer from 127.0.0.1 (port {dead}) within 1 s (asked for lists-host.example.edu)",
        "fix": "check [dns] nameservers and port, or the host's /etc/resolv.conf"}])


# ----------------------------------------------------------------- DKIM


def rsa_key(path, bits=2048):
    """A private key as opendkim-genkey makes one (it runs openssl genrsa), and the p= of its record."""
    subprocess.run(["openssl", "genrsa", "-out", str(path), str(bits)], check=True, capture_output=True)
    der = subprocess.run(["openssl", "rsa", "-in", str(path), "-pubout", "-outform", "DER"],
                         check=True, capture_output=True).stdout
    return base64.b64encode(der).decode()


def txt(record: str) -> str:
    return " ".join(f'"{record[i:i + 200]}"' for i in range(0, len(record), 200))  # 255-octet strings (RFC 1035)


@pytest.fixture(scope="module")
def keys(tmp_path_factory):
    d = tmp_path_factory.mktemp("keys")
    return {name: (d / f"{name}.private", rsa_key(d / f"{name}.private", bits))
            for name, bits in (("key", 2048), ("other", 2048), ("small", 1024), ("tiny", 768))}


def test_dkim_record_matches_the_key(server, keys):
    key, public = keys["key"]
    server.set_zone("example.edu", EDU + f"s1._domainkey.lists IN TXT {txt(f'v=DKIM1; k=rsa; p={public}')}\n")
    f = DC.dkim_finding("lists.example.edu", "s1", key, server.resolver())
    assert (f.status, f.message) == ("ok", f"s1._domainkey.lists.example.edu matches {key}, RSA 2048 bits")


@pytest.mark.parametrize("record, status, message", [
    (None, "fail", "no DKIM record at s1._domainkey.lists.example.edu"),
    ("v=DKIM1; k=rsa; p=", "fail", "s1._domainkey.lists.example.edu: the key is revoked (empty p=)"),
    ("other", "fail", "s1._domainkey.lists.example.edu does not hold the public key of {key}"),
    ("small", "warn", "s1._domainkey.lists.example.edu matches {key}, RSA 1024 bits"),
    ("tiny", "fail", "s1._domainkey.lists.example.edu matches {key}, RSA 768 bits: receivers ignore keys under 1024 bits"
                     " (RFC 8301)"),
])
def test_dkim_findings(server, keys, record, status, message):
    key, public = keys[record if record in ("small", "tiny") else "key"]
    if record in ("other", "small", "tiny"):
        record = f"v=DKIM1; k=rsa; p={keys[record][1]}"
    server.set_zone("example.edu", EDU + (f"s1._domainkey.lists IN TXT {txt(record)}\n" if record else ""))
    f = DC.dkim_finding("lists.example.edu", "s1", key, server.resolver())
    assert (f.status, f.message) == (status, message.format(key=key)) and f.fix


def test_dkim_key_file_missing(server, tmp_path):
    f = DC.dkim_finding("lists.example.edu", "s1", tmp_path / "nope.private", server.resolver())
    assert (f.status, f.message) == ("fail", f"{tmp_path / 'nope.private'}: No such file or directory")


def test_dkim_in_the_command_when_the_domain_signs(tmp_path, server, relay, keys):
    key, public = keys["key"]
    config = write_config(tmp_path, server, relay.port)
    config.write_text(config.read_text().replace('[domains."lists.example.edu"]\n',
                                                 f'[domains."lists.example.edu"]\ndkim_selector = "s1"\n'
                                                 f'dkim_key = "{key}"\n'))
    assert C.load(config).domains["lists.example.edu"].dkim.selector == "s1"
    code, _, found = dns_check(config)
    assert (code, found["lists.example.edu", "dkim"]["status"]) == (2, "fail")
    server.set_zone("example.edu", EDU + f"s1._domainkey.lists IN TXT {txt(f'v=DKIM1; k=rsa; p={public}')}\n")
    code, _, found = dns_check(config)
    assert (code, found["lists.example.edu", "dkim"]["status"]) == (0, "ok")


def test_the_resolver_is_the_one_from_the_config(tmp_path, server, relay):
    config = C.load(write_config(tmp_path, server, relay.port))
    resolver = D.make_resolver(config.dns)
    assert (resolver.nameservers, resolver.port, resolver.lifetime) == (["127.0.0.1"], server.port, 1.0)


# ----------------------------------------------------------------- docs/deliverability.md, "dns-check"

DOC = REPO / "docs" / "deliverability.md"


def doc_block(name: str) -> str:
    m = re.search(rf"<!-- dns-check: {name} -->\n```[a-z]*\n(.*?)```", DOC.read_text(), re.S)
    assert m, f"docs/deliverability.md has no block {name!r}"
    return m.group(1)


def zones_of(records: str) -> dict[str, str]:
    """Absolute zone-file lines, each into the zone it belongs to."""
    zones: dict[str, list[str]] = {}
    for line in filter(str.strip, records.splitlines()):
        name = line.split()[0]
        origin = next(o for o in ("2.0.192.in-addr.arpa.", "provider.example.net.", "example.edu.") if name.endswith(o))
        zones.setdefault(origin.rstrip("."), []).append(line)
    return {o: "\n".join(lines) for o, lines in zones.items()}


def test_the_walkthrough_in_the_docs(tmp_path, knot):
    relay_address = "192.0.2.20"  # the doc's; the test's relay listens on 127.0.0.1
    campus = doc_block("campus").replace(f"IN A    {relay_address}", "IN A    127.0.0.1")
    with SMTPSink() as sink:
        config = tmp_path / "lists.toml"
        config.write_text(
            doc_block("config").replace('outbound-relays.example.edu:25"', f'outbound-relays.example.edu:{sink.port}"')
            .replace("[dns]\n", f'[dns]\nnameservers = ["127.0.0.1"]\nport = {knot.port}\n')
            + '\n[domains."lists.example.edu"]\n[lists.testing]\nmembers = { emails = ["someone@example.edu"] }\n'
              'posters = ["someone@example.edu"]\nowners = ["prof@example.edu"]\n')

        def run() -> tuple[int, str]:
            ran = listfilter(config, "dns-check")
            out = ran.stdout.replace(f"outbound-relays.example.edu:{sink.port} (127.0.0.1)",
                                     f"outbound-relays.example.edu:25 ({relay_address})")
            return ran.returncode, version(out)

        for origin, records in zones_of(campus).items():
            knot.set_zone(origin, records)
        before = run()
        zones = zones_of(campus + "\n" + doc_block("records"))
        knot.set_zone("example.edu", zones["example.edu"])
        after = run()
    assert before == (2, version(doc_block("before"))), before[1]
    assert after == (0, version(doc_block("after"))), after[1]


def version(text: str) -> str:
    """The test relay's banner names its aiosmtpd version: not what this test is about."""
    return re.sub(r"Python SMTP [0-9.]+", "Python SMTP x.y", text)
