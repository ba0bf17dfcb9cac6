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


SNAPSHOT = "/var/lib/listfilter/snapshot.sqlite"


def master_lines(config: C.Config) -> list[list[str]]:
    """master.cf's entries without the comments, split into words."""
    return [l.split() for l in postfixconf.master_cf(config, PROGRAM).splitlines() if not l.startswith("#")]


def test_master_cf_pipe_entry():
    lines = master_lines(reference_config())
    assert lines[0] == ["listfilter", "unix", "-", "n", "n", "-", "4", "pipe"]
    assert lines[1] == [
        "flags=q", "user=listfilter", "null_sender=", "argv=/opt/listfilter/bin/listfilter-deliver",
        "--snapshot", SNAPSHOT, "--sender", "${sender}", "--recipient", "${original_recipient}",
        "--queue-id", "${queue_id}"]


def test_bounce_and_policy_services():
    master = master_lines(reference_config())
    assert master[2] == ["listfilter-bounce", "unix", "-", "n", "n", "-", "4", "pipe"]
    assert master[3] == ["flags=q", "user=listfilter", "null_sender=", "argv=/opt/listfilter/bin/listfilter-bounce",
                         "--snapshot", SNAPSHOT, "--recipient", "${original_recipient}", "--queue-id", "${queue_id}"]
    assert master[4] == ["listfilter-policy", "unix", "-", "n", "n", "-", "0", "spawn"]
    assert master[5] == ["user=listfilter", "argv=/opt/listfilter/bin/listfilter-policy", "--snapshot", SNAPSHOT]
    assert len(master) == 6
    main = postfixconf.main_cf(reference_config(), PROGRAM)
    assert "smtpd_recipient_restrictions = check_policy_service unix:private/listfilter-policy\n" in main
    assert "listfilter-bounce_destination_recipient_limit = 1\n" in main


def test_maxproc_snapshot_and_transport_follow_the_config(tmp_path):
    data = tomllib.loads((EXAMPLE / "lists.toml").read_text())
    data["site"].update(state_dir="/srv/lists", transport="lf")
    data["postfix"] = {"maxproc": 12}
    master = master_lines(C.parse(data, tmp_path / "lists.toml"))
    assert master[0] == ["lf", "unix", "-", "n", "n", "-", "12", "pipe"]
    assert master[2] == ["lf-bounce", "unix", "-", "n", "n", "-", "12", "pipe"]
    assert master[4][0] == "lf-policy" and master[4][-2:] == ["0", "spawn"]  # spawn: one per SMTP connection
    for argv in (master[1], master[3], master[5]):
        assert argv[argv.index("--snapshot") + 1] == "/srv/lists/snapshot.sqlite"


def test_the_pipe_argv_is_what_the_mail_commands_accept():
    """master.cf's fixed command lines, with Postfix's ${…} filled in, parse without a usage error."""
    from listfilter.mail import bounce, command, deliver, policy

    filled = {"${sender}": "prof@example.edu", "${original_recipient}": "students@lists.example.edu",
              "${queue_id}": "4ABC"}
    master = master_lines(reference_config())
    for words, module in ((master[1], deliver), (master[3], bounce), (master[5], policy)):
        at = next(i for i, w in enumerate(words) if w.startswith("argv="))
        program, argv = words[at].split("=", 1)[1], [filled.get(w, w) for w in words[at + 1:]]
        assert program == f"/opt/listfilter/bin/listfilter-{module.__name__.rsplit('.', 1)[1]}"
        args = command.parse(argv, module.OPTIONS, getattr(module, "FLAGS", ()))
        assert args["snapshot"] == SNAPSHOT


def test_relayhost_forms():
    assert postfixconf.relayhost("relay.example.edu:25") == "[relay.example.edu]:25"
    assert postfixconf.relayhost("relay.example.edu") == "[relay.example.edu]"
    assert postfixconf.relayhost("[relay.example.edu]:587") == "[relay.example.edu]:587"
    assert postfixconf.relayhost(None) is None
