"""The rendered Postfix settings, and the reference copies in postfix/."""

from __future__ import annotations

import tomllib
from pathlib import Path

from listfilter.sync import config as C
from listfilter.sync import postfixconf

from ..conftest import EXAMPLE, REPO

PROGRAM = "/opt/listfilter/bin/listfilter"


def reference_config() -> C.Config:
    """The bundled example as installed: /etc/listfilter/lists.toml, default paths."""
    data = tomllib.loads((EXAMPLE / "lists.toml").read_text())
    del data["site"]["state_dir"], data["postfix"]
    data["roster"] = {}
    return C.parse(data, Path("/etc/listfilter/lists.toml"))


def test_reference_files_match_the_templates():
    config = reference_config()
    assert (REPO / "postfix" / "main.cf").read_text() == postfixconf.main_cf(config, PROGRAM)
    assert (REPO / "postfix" / "master.cf").read_text() == postfixconf.master_cf(config, PROGRAM)


def test_main_cf_settings():
    text = postfixconf.main_cf(reference_config(), PROGRAM)
    settings = dict(l.split(" = ", 1) for l in text.splitlines() if " = " in l and not l.startswith("#"))
    assert settings["relay_domains"] == "hash:/var/lib/listfilter/postfix/domains"
    assert settings["relay_recipient_maps"] == "hash:/var/lib/listfilter/postfix/recipients"
    assert settings["transport_maps"] == "hash:/var/lib/listfilter/postfix/transport"
    assert settings["virtual_alias_maps"] == "hash:/var/lib/listfilter/postfix/virtual"
    assert settings["recipient_delimiter"] == "+"
    assert settings["listfilter_destination_recipient_limit"] == "1"
    assert settings["relayhost"] == "[outbound-relays.example.edu]:25"


def test_master_cf_pipe_entry():
    lines = [l for l in postfixconf.master_cf(reference_config(), PROGRAM).splitlines() if not l.startswith("#")]
    assert lines[0].split() == ["listfilter", "unix", "-", "n", "n", "-", "-", "pipe"]
    assert lines[1].split() == [
        "flags=q", "user=listfilter", "null_sender=", f"argv={PROGRAM}", "--config", "/etc/listfilter/lists.toml", "deliver",
        "--sender", "${sender}", "--recipient", "${original_recipient}", "--queue-id", "${queue_id}"]


def test_bounce_and_policy_services():
    master = [l for l in postfixconf.master_cf(reference_config(), PROGRAM).splitlines() if not l.startswith("#")]
    assert master[2].split() == ["listfilter-bounce", "unix", "-", "n", "n", "-", "-", "pipe"]
    assert master[3].split()[-7:] == ["--config", "/etc/listfilter/lists.toml", "bounce", "--recipient",
                                      "${original_recipient}", "--queue-id", "${queue_id}"]
    assert master[4].split() == ["listfilter-policy", "unix", "-", "n", "n", "-", "0", "spawn"]
    assert master[5].split() == ["user=listfilter", f"argv={PROGRAM}", "--config", "/etc/listfilter/lists.toml",
                                 "policy"]
    main = postfixconf.main_cf(reference_config(), PROGRAM)
    assert "smtpd_recipient_restrictions = check_policy_service unix:private/listfilter-policy\n" in main
    assert "listfilter-bounce_destination_recipient_limit = 1\n" in main


def test_relayhost_forms():
    assert postfixconf.relayhost("relay.example.edu:25") == "[relay.example.edu]:25"
    assert postfixconf.relayhost("relay.example.edu") == "[relay.example.edu]"
    assert postfixconf.relayhost("[relay.example.edu]:587") == "[relay.example.edu]:587"
    assert postfixconf.relayhost(None) is None
