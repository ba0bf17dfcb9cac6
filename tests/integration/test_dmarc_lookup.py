"""DMARC policy discovery against a real authoritative server (Knot, tests/harness/dns.py), through the
resolver made from ``[dns]`` — the code sync runs, asking the network the way it will in production."""

from __future__ import annotations

import time

import pytest

from listfilter.sync import config as C
from listfilter.sync import dns as D
from tests.harness.dns import DNSServer, free_dns_port

pytestmark = pytest.mark.integration

ZONES = {
    "example.edu": """
_dmarc          900 IN TXT "v=DMARC1; p=reject; sp=quarantine; rua=mailto:dmarc-reports@example.edu"
_dmarc.physics      IN TXT "v=DMARC1; p=none"
""",
    "example.org": "www IN A 192.0.2.80",  # a zone with no DMARC record at all
    "example.co.uk": '_dmarc IN TXT "v=DMARC1; p=quarantine"',
}


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    with DNSServer(tmp_path_factory.mktemp("dns"), ZONES) as server:
        yield server


@pytest.fixture
def resolver(server):
    return D.make_resolver(C.DNSSettings(nameservers=(server.address,), port=server.port, timeout=2.0))


def test_policies_from_a_real_server(resolver):
    before = time.time()
    got = D.dmarc_policies(["example.edu", "cs.example.edu", "physics.example.edu", "example.org",
                            "mail.example.org", "lists.dept.example.co.uk"], resolver)
    found = {d: (p.status, p.applied, p.found_at) for d, p in got.items()}
    assert found == {
        "example.edu": ("ok", "reject", "example.edu"),
        "cs.example.edu": ("ok", "quarantine", "example.edu"),  # organisational domain's sp=
        "physics.example.edu": ("ok", "none", "physics.example.edu"),
        "example.org": ("none", None, None),
        "mail.example.org": ("none", None, None),
        "lists.dept.example.co.uk": ("ok", "quarantine", "example.co.uk"),
    }
    # Expiry from the answer's TTL: 900 s for example.edu's record; the harness's negative TTL (SOA minimum 60 s)
    # for cs.example.edu, whose own _dmarc name does not exist and could appear any minute.
    assert before + 900 <= got["example.edu"].expires_at <= time.time() + 900
    assert before + 60 <= got["cs.example.edu"].expires_at <= time.time() + 60
    assert got["example.edu"].detail == "_dmarc.example.edu: p=reject sp=quarantine"


def test_a_policy_change_is_seen_at_the_next_lookup(server, resolver):
    server.set_zone("example.org", '_dmarc IN TXT "v=DMARC1; p=reject"')
    try:
        assert D.dmarc_policies(["mail.example.org"], resolver)["mail.example.org"].applied == "reject"
    finally:
        server.set_zone("example.org", ZONES["example.org"])


def test_a_zone_the_server_does_not_serve_is_failed(resolver):
    p = D.dmarc_policies(["example.net"], resolver)["example.net"]
    assert (p.status, p.strict) == ("failed", True)
    assert p.detail.endswith("answered REFUSED")


def test_servfail_is_failed_not_none(server, resolver):
    server.set_servfail("example.org")
    try:
        p = D.dmarc_policies(["mail.example.org"], resolver)["mail.example.org"]
        assert (p.status, p.strict) == ("failed", True)
        assert p.detail.endswith("answered SERVFAIL")
    finally:
        server.set_zone("example.org", ZONES["example.org"])


def test_a_dead_nameserver_times_out_as_failed():
    resolver = D.make_resolver(C.DNSSettings(nameservers=("127.0.0.1",), port=free_dns_port(), timeout=0.5))
    started = time.monotonic()
    p = D.dmarc_policies(["example.edu", "example.org"], resolver)
    assert all(v.status == "failed" and v.strict for v in p.values())
    assert p["example.edu"].detail == "lookup failed: _dmarc.example.edu: no answer within 0.5 s"
    assert time.monotonic() - started < 3  # bounded by the timeout, not dnspython's default of 5 s a lookup
