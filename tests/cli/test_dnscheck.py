"""dns-check's pure parts; the findings themselves are tested against a real DNS server in
tests/integration/test_dnscheck.py."""

from __future__ import annotations

import pytest

from listfilter.cli import dnscheck as DC
from listfilter.sync import config as C


@pytest.mark.parametrize("relayhost, host, port, mx", [
    ("[outbound-relays.example.edu]:25", "outbound-relays.example.edu", 25, False),
    ("[smtp.example.net]:587", "smtp.example.net", 587, False),
    ("relay.example.edu", "relay.example.edu", 25, True),  # no brackets: Postfix looks up its MX first
    ("relay.example.edu:2525, [backup.example.edu]", "relay.example.edu", 2525, True),
    ("[192.0.2.25]", "192.0.2.25", 25, False),
])
def test_parse_relayhost(relayhost, host, port, mx):
    target = DC.parse_relayhost(relayhost)
    assert (target.host, target.port, target.mx, target.tls) == (host, port, mx, "may")


def test_no_relayhost():
    assert DC.parse_relayhost("") is None and DC.parse_relayhost("  ") is None


def test_the_relay_from_the_config_is_bracketed():
    relay = C.Relay(host="smtp.example.net", port=587, tls="starttls", verify=True, username="lists")
    config = type("Config", (), {"site": type("Site", (), {"relay": relay})()})()
    target = DC.relay_target(config)
    assert (target.host, target.port, target.tls, target.verify, target.username, target.mx) == (
        "smtp.example.net", 587, "starttls", True, "lists", False)


def test_worst():
    f = [DC.Finding("d", "mx", DC.OK, ""), DC.Finding("d", "spf", DC.WARN, "")]
    assert DC.worst(f) == "warn" and DC.worst(f + [DC.Finding("d", "dmarc", DC.FAIL, "")]) == "fail"
    assert DC.worst([]) == "ok" and [DC.EXIT[s] for s in (DC.OK, DC.WARN, DC.FAIL)] == [0, 1, 2]


def test_dkim_only_when_the_domain_names_a_selector_and_a_key():
    assert DC.dkim_settings(C.Domain("lists.example.edu", None)) is None
    signing = C.Domain("lists.example.edu", None, C.DKIMKey("s1", DC.Path("/etc/dkimkeys/s1.private")))
    assert DC.dkim_settings(signing) == ("s1", DC.Path("/etc/dkimkeys/s1.private"))
