"""`postfix-config` and `check` for a relay that wants a login: the login table written root's and 0600,
a password file others may read refused by name and mode, and check saying whether the table is ready."""

from __future__ import annotations

import json
import re

import pytest

from ..conftest import EXAMPLE
from .runner import listfilter

PASSWORD = "s3cret: #1"


@pytest.fixture
def login_config(tmp_path, host_postfix_config):
    """The example with a relay on port 587 that wants a login; the password in a file of root's."""
    text = (EXAMPLE / "lists.toml").read_text()
    text = re.sub(r'(?m)^relay = .*\n', "", text)
    text = re.sub(r'(?m)^state_dir = .*\n', f'state_dir = "{tmp_path / "state"}"\n', text)
    text = text.replace('map_type = "texthash"', 'map_type = "hash"')
    text = text.replace('csv = "roster.csv"', f'csv = "{EXAMPLE / "roster.csv"}"')
    text = text.replace("[postfix]", f"""[site.relay]
host = "smtp.example.net"
tls = "starttls"
username = "lists@example.edu"
password_file = "{tmp_path / 'relay-password'}"
password_map = "{tmp_path / 'sasl_passwd'}"

[postfix]""")
    path = tmp_path / "lists.toml"
    path.write_text(text)
    secret = tmp_path / "relay-password"
    secret.write_text(PASSWORD + "\n")
    secret.chmod(0o600)
    return path


NO_ENV = {"LISTFILTER_RELAY_PASSWORD": None}


def relay_check(config) -> tuple[int, list[dict]]:
    ran = listfilter(config, "check", "--json", env=NO_ENV)
    return ran.returncode, [c for c in json.loads(ran.stdout)["checks"] if c["name"] == "relay login"]


def test_postfix_config_writes_the_login_table(login_config, tmp_path):
    table = tmp_path / "sasl_passwd"
    code, found = relay_check(login_config)
    assert found == [{"name": "relay login", "ok": False,
                      "detail": f"{table} does not exist (run listfilter postfix-config as root)"}]
    assert code == 1

    ran = listfilter(login_config, "postfix-config", env=NO_ENV)
    assert ran.returncode == 0, ran.stderr
    assert ran.stderr == (f"listfilter: wrote hash:{table} (mode 0600) with the relay login from"
                          f" {tmp_path / 'relay-password'}\n")
    assert f"smtp_sasl_password_maps = hash:{table}\n" in ran.stdout
    assert "relayhost = [smtp.example.net]:587\n" in ran.stdout
    assert PASSWORD not in ran.stdout
    assert table.read_text() == f"[smtp.example.net]:587 lists@example.edu:{PASSWORD}\n"
    assert {p.name: p.stat().st_mode & 0o777 for p in tmp_path.glob("sasl_passwd*")} == {
        "sasl_passwd": 0o600, "sasl_passwd.db": 0o600}

    code, found = relay_check(login_config)
    assert found == [{"name": "relay login", "ok": True,
                      "detail": f"lists@example.edu at [smtp.example.net]:587: password from"
                                f" {tmp_path / 'relay-password'}, in {table} (mode 0600)"}]
    # unchanged: written once
    assert listfilter(login_config, "postfix-config", env=NO_ENV).stderr == ""

    # a new password in the file: check sees the table is stale until postfix-config runs again
    (tmp_path / "relay-password").write_text("rotated\n")
    code, found = relay_check(login_config)
    assert found[0]["detail"] == (f"{table} does not hold the login from {tmp_path / 'relay-password'}"
                                  " (run listfilter postfix-config)")
    assert listfilter(login_config, "postfix-config", env=NO_ENV).stderr.startswith("listfilter: wrote")
    assert table.read_text() == "[smtp.example.net]:587 lists@example.edu:rotated\n"
    table.chmod(0o644)
    code, found = relay_check(login_config)
    assert found[0] == {"name": "relay login", "ok": False,
                        "detail": f"{table} is mode 0644: others than root may read the relay password;"
                                  f" `chmod 600 {table}`"}


def test_a_password_file_others_can_read_is_refused(login_config, tmp_path):
    secret = tmp_path / "relay-password"
    secret.chmod(0o644)
    ran = listfilter(login_config, "postfix-config", env=NO_ENV)
    assert ran.returncode == 78
    assert ran.stdout == ""  # nothing to paste into main.cf
    assert ran.stderr == (f"listfilter: config error: site.relay.password_file: {secret} is mode 0644: others than"
                          f" its owner may read or change the relay password; `chmod 600 {secret}`\n")
    assert not (tmp_path / "sasl_passwd").exists()
    code, found = relay_check(login_config)
    assert code == 1 and found[0]["ok"] is False and "is mode 0644" in found[0]["detail"]


def test_the_password_from_the_environment(login_config, tmp_path):
    (tmp_path / "relay-password").unlink()
    ran = listfilter(login_config, "postfix-config", env={"LISTFILTER_RELAY_PASSWORD": "from-env"})
    assert ran.returncode == 0, ran.stderr
    assert ran.stderr.endswith("with the relay login from $LISTFILTER_RELAY_PASSWORD\n")
    assert (tmp_path / "sasl_passwd").read_text() == "[smtp.example.net]:587 lists@example.edu:from-env\n"
    ran = listfilter(login_config, "postfix-config", env=NO_ENV)
    assert ran.returncode == 78
    assert ran.stderr == (f"listfilter: config error: site.relay.password_file: {tmp_path / 'relay-password'}"
                          " does not exist: put the relay password there (root's, mode 0600), or set"
                          " $LISTFILTER_RELAY_PASSWORD\n")


def test_no_login_no_relay_check(example_config):
    ran = listfilter(example_config, "check", "--json")
    assert "relay login" not in {c["name"] for c in json.loads(ran.stdout)["checks"]}
