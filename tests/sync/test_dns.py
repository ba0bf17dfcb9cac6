"""The sync side's DNS: ``[dns]`` in the config, the resolver made from it, DMARC policy discovery (RFC 7489 §6.6.3).

A fake resolver here; tests/integration/test_dmarc_lookup.py asks a real Knot DNS the same questions.
"""

from __future__ import annotations

import dns.message
import dns.name
import dns.rdata
import dns.rdataclass
import dns.rdatatype
import dns.resolver
import dns.rrset
import pytest

from listfilter.sync import config as C
from listfilter.sync import dns as D

NOW = 1_000_000.0

MINIMAL = """
[domains."lists.example.edu"]
[lists.testing]
members = { emails = ["someone@example.edu"] }
posters = ["someone@example.edu"]
owners = ["someone@example.edu"]
"""


class FakeAnswer:
    def __init__(self, name: str, texts: list[str], ttl: int):
        self.rrset = dns.rrset.from_rdata_list(
            dns.name.from_text(name), ttl,
            [dns.rdata.from_text(dns.rdataclass.IN, dns.rdatatype.TXT, _quote(t)) for t in texts])

    def __iter__(self):
        return iter(self.rrset)


def _quote(text: str) -> str:
    # Long records come as several character-strings; split so the join is tested too.
    return " ".join('"' + text[i:i + 20].replace('"', '\\"') + '"' for i in range(0, len(text), 20))


class FakeResolver:
    """Answers TXT questions from a table: name -> list of texts (with a TTL) or an exception to raise."""

    def __init__(self, table: dict[str, object], ttl: int = 3600):
        self.table = table
        self.ttl = ttl
        self.asked: list[str] = []
        self.lifetime = 2.0

    def resolve(self, qname, rdtype, search=True):
        assert rdtype == "TXT" and search is False
        self.asked.append(qname)
        entry = self.table.get(qname)
        if entry is None:
            raise dns.resolver.NXDOMAIN(qnames=[dns.name.from_text(qname)], responses={})
        if isinstance(entry, BaseException):
            raise entry
        texts, ttl = entry if isinstance(entry, tuple) else (entry, self.ttl)
        return FakeAnswer(qname, texts, ttl)


def servfail(qname: str) -> dns.resolver.NoNameservers:
    request = dns.message.make_query(qname, "TXT")
    return dns.resolver.NoNameservers(request=request, errors=[("Do53:192.0.2.53@53", False, 53, "SERVFAIL", None)])


def test_a_record_at_the_domain():
    r = FakeResolver({"_dmarc.example.edu": (["v=DMARC1; p=reject; rua=mailto:d@example.edu"], 600)})
    p = D.dmarc_policies(["Example.EDU."], r, now=NOW)["example.edu"]
    assert (p.status, p.policy, p.subdomain_policy, p.found_at) == ("ok", "reject", "reject", "example.edu")
    assert p.expires_at == NOW + 600 and p.applied == "reject" and p.strict
    assert p.detail == "_dmarc.example.edu: p=reject"


@pytest.mark.parametrize("record, applied, strict", [
    ("v=DMARC1; p=none", "none", False),
    ("v=DMARC1; p=quarantine; pct=50", "quarantine", True),
    ("V = dmarc1 ; P = Reject", "reject", True),  # tag names and the version are case-insensitive
])
def test_each_policy(record, applied, strict):
    p = D.dmarc_policies(["example.edu"], FakeResolver({"_dmarc.example.edu": [record]}), now=NOW)["example.edu"]
    assert (p.applied, p.strict) == (applied, strict)


def test_the_organisational_domain_when_the_domain_has_none():
    r = FakeResolver({"_dmarc.example.ac.uk": (["v=DMARC1; p=reject; sp=quarantine"], 7200)})
    p = D.dmarc_policies(["cs.lists.example.ac.uk"], r, now=NOW)["cs.lists.example.ac.uk"]
    assert r.asked == ["_dmarc.cs.lists.example.ac.uk", "_dmarc.example.ac.uk"]  # PSL: ac.uk is a suffix
    assert (p.status, p.policy, p.subdomain_policy, p.found_at) == ("ok", "reject", "quarantine", "example.ac.uk")
    assert p.applied == "quarantine" and p.detail == "_dmarc.example.ac.uk (organisational domain): p=reject sp=quarantine"
    # The domain's own NXDOMAIN (no SOA: the RFC 2308 default) is shorter-lived than the 7200 s record.
    assert p.expires_at == NOW + min(7200, D.NEGATIVE_TTL)


def test_a_record_at_the_domain_wins_over_the_organisational_domain():
    r = FakeResolver({"_dmarc.lists.example.edu": ["v=DMARC1; p=none"], "_dmarc.example.edu": ["v=DMARC1; p=reject"]})
    p = D.dmarc_policies(["lists.example.edu"], r, now=NOW)["lists.example.edu"]
    assert r.asked == ["_dmarc.lists.example.edu"] and p.applied == "none"


def test_txt_records_that_are_not_dmarc_are_ignored():
    r = FakeResolver({"_dmarc.lists.example.edu": ["hello world", "v=spf1 -all"], "_dmarc.example.edu": ["v=DMARC1; p=reject"]})
    assert D.dmarc_policies(["lists.example.edu"], r, now=NOW)["lists.example.edu"].applied == "reject"


def test_no_record_anywhere():
    r = FakeResolver({})
    p = D.dmarc_policies(["lists.example.edu"], r, now=NOW)["lists.example.edu"]
    assert (p.status, p.policy, p.applied, p.strict) == ("none", None, None, False)
    assert p.detail == "no DMARC record at _dmarc.lists.example.edu nor _dmarc.example.edu"
    assert p.expires_at == NOW + D.NEGATIVE_TTL


def test_a_public_suffix_is_its_own_organisational_domain():
    r = FakeResolver({})
    assert D.dmarc_policies(["edu"], r, now=NOW)["edu"].status == "none"
    assert r.asked == ["_dmarc.edu"]


@pytest.mark.parametrize("error, words", [
    (servfail("_dmarc.example.edu"), "192.0.2.53@53 answered SERVFAIL"),
    (dns.resolver.LifetimeTimeout(timeout=2.0, errors=[]), "no answer within 2 s"),
])
def test_a_failed_lookup_is_failed_and_strict(error, words):
    r = FakeResolver({"_dmarc.example.edu": error})
    p = D.dmarc_policies(["example.edu"], r, now=NOW)["example.edu"]
    assert (p.status, p.policy, p.strict) == ("failed", None, True)
    assert p.expires_at == NOW + D.FAILED_TTL
    assert p.detail == f"lookup failed: _dmarc.example.edu: {words}"


def test_a_failed_lookup_never_falls_back_to_the_organisational_domain():
    r = FakeResolver({"_dmarc.lists.example.edu": servfail("_dmarc.example.edu"), "_dmarc.example.edu": ["v=DMARC1; p=none"]})
    p = D.dmarc_policies(["lists.example.edu"], r, now=NOW)["lists.example.edu"]
    assert p.status == "failed" and r.asked == ["_dmarc.lists.example.edu"]


def test_a_failed_organisational_lookup_is_failed():
    r = FakeResolver({"_dmarc.example.edu": servfail("_dmarc.example.edu")})
    assert D.dmarc_policies(["lists.example.edu"], r, now=NOW)["lists.example.edu"].status == "failed"


def test_two_records_mean_no_dmarc():
    r = FakeResolver({"_dmarc.example.edu": ["v=DMARC1; p=none", "v=DMARC1; p=reject"]})
    p = D.dmarc_policies(["example.edu"], r, now=NOW)["example.edu"]
    assert p.status == "none" and p.detail == "2 DMARC records at _dmarc.example.edu: receivers apply none"


@pytest.mark.parametrize("record, status, applied", [
    ("v=DMARC1; p=block; rua=mailto:d@example.edu", "ok", "none"),  # RFC 7489 §6.6.3 step 6
    ("v=DMARC1; p=block", "none", None),
    ("v=DMARC1; p=reject; sp=nonsense", "none", None),
    ("v=DMARC1", "none", None),
])
def test_invalid_policies(record, status, applied):
    p = D.dmarc_policies(["example.edu"], FakeResolver({"_dmarc.example.edu": [record]}), now=NOW)["example.edu"]
    assert (p.status, p.applied) == (status, applied)


@pytest.mark.parametrize("ttl, kept", [(0, D.MIN_TTL), (30, D.MIN_TTL), (900, 900), (10**7, D.MAX_TTL)])
def test_expiry_follows_the_ttl_within_bounds(ttl, kept):
    r = FakeResolver({"_dmarc.example.edu": (["v=DMARC1; p=reject"], ttl)})
    assert D.dmarc_policies(["example.edu"], r, now=NOW)["example.edu"].expires_at == NOW + kept


def test_one_lookup_per_name_across_domains():
    r = FakeResolver({"_dmarc.example.edu": ["v=DMARC1; p=reject"]})
    out = D.dmarc_policies(["a.example.edu", "b.example.edu", "example.edu", "A.example.edu"], r, now=NOW)
    assert sorted(out) == ["a.example.edu", "b.example.edu", "example.edu"]
    assert sorted(r.asked) == ["_dmarc.a.example.edu", "_dmarc.b.example.edu", "_dmarc.example.edu"]


def test_parse_dmarc():
    assert D.parse_dmarc("v=DMARC1; p=reject; rua=mailto:a@x.example,mailto:b@y.example; ") == {
        "v": "DMARC1", "p": "reject", "rua": "mailto:a@x.example,mailto:b@y.example"}
    assert D.parse_dmarc("p=reject; v=DMARC1") is None  # v= must come first
    assert D.parse_dmarc("v=DMARC2; p=reject") is None


# -------------------------------------------------------------- [dns] config and the resolver


def load(tmp_path, text: str) -> C.Config:
    path = tmp_path / "lists.toml"
    path.write_text(MINIMAL + text)
    return C.load(path)


def test_dns_defaults(tmp_path):
    settings = load(tmp_path, "").dns
    assert settings == C.DNSSettings() and settings.nameservers == () and settings.port == 53 and settings.timeout == 5.0


def test_dns_settings(tmp_path):
    settings = load(tmp_path, """
[dns]
nameservers = ["127.0.0.1", "::1"]
port = 5353
timeout = 1.5
hostname = "Lists.Example.EDU."
expect_mx = ["mx1.example.edu", "192.0.2.25"]
sending_addresses = ["192.0.2.10", "2001:db8::10"]
""").dns
    assert settings == C.DNSSettings(("127.0.0.1", "::1"), 5353, 1.5, "lists.example.edu",
                                     ("mx1.example.edu", "192.0.2.25"), ("192.0.2.10", "2001:db8::10"))
    resolver = D.make_resolver(settings)
    assert resolver.nameservers == ["127.0.0.1", "::1"] and resolver.port == 5353
    assert resolver.timeout == resolver.lifetime == 1.5


@pytest.mark.parametrize("text, where, message", [
    ('nameservers = ["dns.example.edu"]', "dns.nameservers[0]", "'dns.example.edu' is not an IP address"),
    ('nameservers = "127.0.0.1:53"', "dns.nameservers[0]", "is not an IP address"),
    ("port = 0", "dns.port", "must be at least 1"),
    ("port = 70000", "dns.port", "must be at most 65535"),
    ('port = "53"', "dns.port", "expected an integer, not a string"),
    ("timeout = 0", "dns.timeout", "must be more than 0"),
    ('timeout = "5s"', "dns.timeout", "expected a number of seconds, not a string"),
    ('hostname = "not a host"', "dns.hostname", "is not a host name"),
    ('expect_mx = ["mx..example.edu"]', "dns.expect_mx[0]", "is not a host name"),
    ('sending_addresses = ["192.0.2.300"]', "dns.sending_addresses[0]", "is not an IP address"),
    ('nameserver = ["127.0.0.1"]', "dns.nameserver", "unknown key"),
])
def test_dns_errors_name_the_field(tmp_path, text, where, message):
    with pytest.raises(C.ConfigError) as err:
        load(tmp_path, "[dns]\n" + text + "\n")
    assert err.value.where == where and message in err.value.message
    assert str(err.value).startswith(f"{tmp_path / 'lists.toml'}: {where}: ")


def test_without_nameservers_the_host_resolv_conf_is_read(tmp_path, monkeypatch):
    def missing(self, *args, **kwargs):
        raise dns.resolver.NoResolverConfiguration("no nameservers")

    monkeypatch.setattr(dns.resolver.Resolver, "read_resolv_conf", missing)
    with pytest.raises(D.ResolverError, match=r"set \[dns\] nameservers"):
        D.make_resolver(C.DNSSettings())
    assert D.make_resolver(C.DNSSettings(nameservers=("192.0.2.53",))).nameservers == ["192.0.2.53"]
