"""The DNS test harness itself (tests/harness/dns.py): a real Knot DNS on a loopback port."""

from __future__ import annotations

import dns.resolver
import dns.reversename
import pytest

from tests.harness.dns import DNSError, DNSServer

pytestmark = pytest.mark.integration

ZONES = {
    "example.edu": """
_dmarc          IN TXT  "v=DMARC1; p=reject; rua=mailto:dmarc@example.edu"
lists           IN MX   10 mx.example.edu.
lists           IN TXT  "v=spf1 ip4:192.0.2.25 -all"
mx              IN A    192.0.2.25
""",
    "2.0.192.in-addr.arpa": "25 IN PTR mx.example.edu.",
}


@pytest.fixture
def server(tmp_path):
    with DNSServer(tmp_path / "dns", ZONES) as server:
        yield server


def texts(resolver, name):
    return sorted(b"".join(r.strings).decode() for r in resolver.resolve(name, "TXT"))


def test_serves_txt_mx_a_ptr(server):
    resolver = server.resolver()
    assert server.address == "127.0.0.1" and server.port > 0
    assert texts(resolver, "_dmarc.example.edu") == ["v=DMARC1; p=reject; rua=mailto:dmarc@example.edu"]
    assert texts(resolver, "lists.example.edu") == ["v=spf1 ip4:192.0.2.25 -all"]
    mx = resolver.resolve("lists.example.edu", "MX")
    assert [(r.preference, r.exchange.to_text()) for r in mx] == [(10, "mx.example.edu.")]
    assert [r.address for r in resolver.resolve("mx.example.edu", "A")] == ["192.0.2.25"]
    ptr = resolver.resolve(dns.reversename.from_address("192.0.2.25"), "PTR")
    assert [r.target.to_text() for r in ptr] == ["mx.example.edu."]
    assert mx.rrset.ttl == 300


def test_missing_names_and_unserved_zones(server):
    resolver = server.resolver()
    with pytest.raises(dns.resolver.NXDOMAIN):
        resolver.resolve("_dmarc.nobody.example.edu", "TXT")
    with pytest.raises(dns.resolver.NoAnswer):
        resolver.resolve("mx.example.edu", "TXT")
    # A zone the server does not serve: REFUSED, which the stub resolver reports as no nameserver answering.
    with pytest.raises(dns.resolver.NoNameservers, match="REFUSED"):
        resolver.resolve("_dmarc.example.org", "TXT")


def test_set_zone_changes_are_visible_when_it_returns(server):
    resolver = server.resolver()
    server.set_zone("example.edu", '_dmarc IN TXT "v=DMARC1; p=none"')
    assert texts(resolver, "_dmarc.example.edu") == ["v=DMARC1; p=none"]
    with pytest.raises(dns.resolver.NXDOMAIN):  # the zone was replaced whole
        resolver.resolve("mx.example.edu", "A")
    server.set_zone("Example.ORG.", '_dmarc 60 IN TXT "v=DMARC1; p=quarantine"')  # a new zone
    answer = resolver.resolve("_dmarc.example.org", "TXT")
    assert answer.rrset.ttl == 60 and texts(resolver, "_dmarc.example.org") == ["v=DMARC1; p=quarantine"]
    assert sorted(server.zones) == ["2.0.192.in-addr.arpa", "example.edu", "example.org"]


def test_servfail_and_back(server):
    resolver = server.resolver()
    server.set_servfail("example.edu")
    with pytest.raises(dns.resolver.NoNameservers, match="SERVFAIL"):
        resolver.resolve("_dmarc.example.edu", "TXT")
    server.set_zone("example.edu", ZONES["example.edu"])
    assert texts(resolver, "_dmarc.example.edu")[0].startswith("v=DMARC1; p=reject")


def test_a_broken_zone_file_is_an_error_naming_the_line(server):
    with pytest.raises(DNSError, match="line 5"):
        server.set_zone("example.edu", "lists IN MX not-a-number mx")


def test_stop_stops_answering(tmp_path):
    server = DNSServer(tmp_path / "dns", {"example.edu": "a IN A 192.0.2.1"}).start()
    resolver = server.resolver(timeout=0.3)
    assert [r.address for r in resolver.resolve("a.example.edu", "A")] == ["192.0.2.1"]
    server.stop()
    with pytest.raises(dns.resolver.LifetimeTimeout):
        resolver.resolve("a.example.edu", "A")
    server.stop()  # idempotent
