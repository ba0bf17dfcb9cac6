"""The rendered Postfix settings, and the reference copies in postfix/."""

from __future__ import annotations

import subprocess
import tomllib
from pathlib import Path

import pytest

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
        "--snapshot", SNAPSHOT, "--spool", "/var/lib/listfilter/spool", "--sender", "${sender}",
        "--recipient", "${original_recipient}", "--queue-id", "${queue_id}"]


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
    assert master[4][0] == "lf-policy" and master[4][-2:] == ["0", "spawn"]  # spawn: one per smtpd process
    for argv in (master[1], master[3], master[5]):
        assert argv[argv.index("--snapshot") + 1] == "/srv/lists/snapshot.sqlite"
    # deliver's spool, for recording a deferral while the snapshot cannot be read
    assert master[1][master[1].index("--spool") + 1] == "/srv/lists/spool"
    data["site"]["spool_dir"] = "/var/spool/lists"
    master = master_lines(C.parse(data, tmp_path / "lists.toml"))
    assert master[1][master[1].index("--spool") + 1] == "/var/spool/lists"


def test_log_group_gives_the_deliver_pipe_a_group_that_reads_the_log(tmp_path):
    """pipe(8) runs the command with one group: log_group is the one that reads Postfix's log."""
    data = tomllib.loads((EXAMPLE / "lists.toml").read_text())
    data["postfix"] = {"log_group": "adm"}
    master = master_lines(C.parse(data, tmp_path / "lists.toml"))
    assert master[1][:2] == ["flags=q", "user=listfilter:adm"]
    assert master[3][1] == "user=listfilter" and master[5][0] == "user=listfilter"  # bounce and policy: no log
    data["postfix"] = {"log_group": "adm wheel"}
    with pytest.raises(C.ConfigError, match=r"postfix\.log_group: 'adm wheel' is not a group name"):
        C.parse(data, tmp_path / "lists.toml")


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


def with_relay(relay, tmp_path=Path("/etc/listfilter")) -> C.Config:
    """The reference config with ``site.relay`` set to ``relay`` (a string or a table)."""
    data = tomllib.loads((EXAMPLE / "lists.toml").read_text())
    del data["site"]["state_dir"], data["postfix"]
    data["roster"] = {}
    data["site"]["relay"] = relay
    return C.parse(data, tmp_path / "lists.toml")


def settings_of(text: str) -> dict[str, str]:
    return dict(l.split(" = ", 1) for l in text.splitlines() if " = " in l and not l.startswith("#"))


def test_relayhost_forms():
    for written, relayhost in (("relay.example.edu:25", "[relay.example.edu]:25"),
                               ("relay.example.edu", "[relay.example.edu]"),
                               ("[relay.example.edu]:587", "[relay.example.edu]:587"),
                               ("[ipv6:2001:db8::25]:25", "[ipv6:2001:db8::25]:25"),
                               ({"host": "relay.example.edu"}, "[relay.example.edu]"),
                               ({"host": "smtp.example.net", "tls": "starttls"}, "[smtp.example.net]:587"),
                               ({"host": "smtp.example.net", "tls": "implicit"}, "[smtp.example.net]:465"),
                               ({"host": "smtp.example.net", "tls": "starttls", "port": 2525},
                                "[smtp.example.net]:2525")):
        assert postfixconf.relayhost(with_relay(written).site.relay) == relayhost, written
    assert postfixconf.relayhost(None) is None


def test_a_relay_without_login_renders_the_reference_lines():
    """The table form without a login, TLS when offered, is the string form's output to the byte."""
    assert (postfixconf.main_cf(with_relay({"host": "outbound-relays.example.edu", "port": 25}), PROGRAM)
            == (REPO / "postfix" / "main.cf").read_text())


LOGIN = {"host": "smtp.example.net", "tls": "starttls", "username": "lists@example.edu"}


def test_login_over_starttls_with_a_verified_certificate():
    text = postfixconf.main_cf(with_relay(LOGIN), PROGRAM)
    settings = settings_of(text)
    assert {k: v for k, v in settings.items() if k.startswith(("relayhost", "smtp_"))} == {
        "relayhost": "[smtp.example.net]:587",
        "smtp_tls_security_level": "secure",
        "smtp_tls_CAfile": "/etc/ssl/certs/ca-certificates.crt",
        "smtp_tls_loglevel": "1",
        "smtp_sasl_auth_enable": "yes",
        "smtp_sasl_password_maps": "hash:/etc/postfix/listfilter_sasl_passwd",
        "smtp_sasl_security_options": "noanonymous",
        "smtp_sasl_tls_security_options": "noanonymous",
    }
    assert "smtp_tls_security_level = may" not in text and "smtp_tls_wrappermode" not in text
    # everything above the relay is the reference file's
    reference = (REPO / "postfix" / "main.cf").read_text()
    head = reference[:reference.index("relayhost = ")]
    assert text.startswith(head)


def test_implicit_tls_unverified_and_without_login(tmp_path):
    settings = settings_of(postfixconf.main_cf(with_relay(
        {"host": "smtp.example.net", "tls": "implicit", "verify": False}), PROGRAM))
    assert settings["relayhost"] == "[smtp.example.net]:465"
    assert settings["smtp_tls_wrappermode"] == "yes"
    assert settings["smtp_tls_security_level"] == "encrypt"
    assert not any(k.startswith("smtp_sasl") or k == "smtp_tls_CAfile" for k in settings)
    ca = postfixconf.main_cf(with_relay({**LOGIN, "ca_file": "provider-ca.pem", "password_map": "sasl/passwd"},
                                        tmp_path), PROGRAM)
    assert settings_of(ca)["smtp_tls_CAfile"] == str(tmp_path / "provider-ca.pem")  # relative to the config
    assert settings_of(ca)["smtp_sasl_password_maps"] == f"hash:{tmp_path / 'sasl/passwd'}"


def test_login_table_text():
    relay = with_relay({**LOGIN, "port": 2525}).site.relay
    # Postfix splits the value at the first colon: the password may hold colons, spaces and #
    assert postfixconf.sasl_passwd(relay, "p:a ss#1") == "[smtp.example.net]:2525 lists@example.edu:p:a ss#1\n"


def login_config(tmp_path: Path, **relay) -> C.Config:
    data = tomllib.loads((EXAMPLE / "lists.toml").read_text())
    data["site"].update(state_dir=str(tmp_path / "state"), relay={
        **LOGIN, "password_file": str(tmp_path / "relay-password"), "password_map": str(tmp_path / "sasl_passwd"),
        **relay})
    data["postfix"] = {"map_type": "hash"}
    return C.parse(data, tmp_path / "lists.toml")


def test_install_login_table_with_postmap(tmp_path, monkeypatch, host_postfix_config):
    monkeypatch.delenv("LISTFILTER_RELAY_PASSWORD", raising=False)
    config = login_config(tmp_path)
    secret = tmp_path / "relay-password"
    secret.write_text("s3cret: #1\n")
    secret.chmod(0o600)
    assert postfixconf.install_login_table(config) is True
    table = tmp_path / "sasl_passwd"
    for path in (table, tmp_path / "sasl_passwd.db"):
        assert path.stat().st_mode & 0o777 == 0o600, path
    assert table.read_text() == "[smtp.example.net]:587 lists@example.edu:s3cret: #1\n"
    looked_up = subprocess.run(["/usr/sbin/postmap", "-q", "[smtp.example.net]:587", f"hash:{table}"],
                               capture_output=True, text=True)
    assert looked_up.stdout == "lists@example.edu:s3cret: #1\n"
    assert postfixconf.login_table_problem(config, "s3cret: #1") is None
    assert postfixconf.install_login_table(config) is False  # unchanged: not rewritten
    assert sorted(p.name for p in tmp_path.iterdir()) == ["relay-password", "sasl_passwd", "sasl_passwd.db"]
    # the environment wins over the file
    monkeypatch.setenv("LISTFILTER_RELAY_PASSWORD", "rotated")
    assert postfixconf.login_table_problem(config, "rotated") == (
        f"{table} does not hold the login from $LISTFILTER_RELAY_PASSWORD (run listfilter postfix-config)")
    assert postfixconf.install_login_table(config) is True
    looked_up = subprocess.run(["/usr/sbin/postmap", "-q", "[smtp.example.net]:587", f"hash:{table}"],
                               capture_output=True, text=True)
    assert looked_up.stdout == "lists@example.edu:rotated\n"


def test_no_login_no_table(tmp_path):
    config = with_relay({"host": "smtp.example.net", "tls": "starttls"}, tmp_path)
    assert postfixconf.login_table(config) is None
    assert postfixconf.install_login_table(config) is False
    assert list(tmp_path.iterdir()) == []
