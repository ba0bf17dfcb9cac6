"""DKIM settings ([dkim], [domains."…"] dkim_selector / dkim_key) and what postfix-config renders from them.

The real signing (OpenDKIM in a private Postfix, verified with dkimpy) is
tests/integration/test_dkim.py; here are the config's errors and the text.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from listfilter.sync import config as C
from listfilter.sync import postfixconf as P

from ..cli.runner import listfilter

PROGRAM = "/opt/listfilter/bin/listfilter"

LISTS = """
{dkim}
[domains."lists.example.edu"]
course = "CS 199"
{main}

[domains."lists-dev.example.edu"]
{dev}

[lists.students]
members = {{ emails = ["a@example.edu"] }}
posters = ["prof@example.edu"]
"""


def write(make_config, dkim: str = "", main: str = "", dev: str = "") -> Path:
    return make_config(LISTS.format(dkim=dkim, main=main, dev=dev))


def settings(text: str) -> dict[str, str]:
    return dict(l.split(" = ", 1) for l in text.splitlines() if " = " in l and not l.startswith("#"))


def test_no_dkim_renders_nothing_new(make_config):
    config = C.load(write(make_config))
    assert config.dkim is None and all(d.dkim is None for d in config.domains.values())
    assert "milter" not in P.main_cf(config, PROGRAM)
    assert P.opendkim(config) == ""


def test_site_selector_signs_every_domain_with_the_default_key_paths(make_config):
    config = C.load(write(make_config, dkim='[dkim]\nselector = "lists2026"'))
    assert config.dkim == C.DKIMSettings(selector="lists2026")
    assert config.domains["lists.example.edu"].dkim == C.DKIMKey(
        "lists2026", Path("/etc/dkimkeys/lists.example.edu/lists2026.private"))
    assert config.domains["lists-dev.example.edu"].dkim.key == Path("/etc/dkimkeys/lists-dev.example.edu/lists2026.private")


def test_a_domain_names_its_own_selector_and_key(make_config, tmp_path):
    path = write(make_config, main='dkim_selector = "cs2026"\ndkim_key = "keys/cs.private"')
    config = C.load(path)
    assert config.dkim == C.DKIMSettings()  # the table is optional: its defaults
    assert config.domains["lists.example.edu"].dkim == C.DKIMKey("cs2026", tmp_path / "keys" / "cs.private")
    assert config.domains["lists-dev.example.edu"].dkim is None  # no selector: not signed
    assert "# lists-dev.example.edu: not signed (no dkim_selector)\n" in P.signing_table(config)


@pytest.mark.parametrize("dkim, main, where, message", [
    ('[dkim]\nsocket = "localhost:8891"', "", "dkim.socket", "is not inet:HOST:PORT or unix:/PATH"),
    ('[dkim]\nsocket = "inet:127.0.0.1:70000"', "", "dkim.socket", "is not inet:HOST:PORT"),
    ('[dkim]\nsocket = "unix:opendkim.sock"', "", "dkim.socket", "is not inet:HOST:PORT or unix:/PATH"),
    ('[dkim]\ndefault_action = "reject"', "", "dkim.default_action", "is not one of: tempfail, accept"),
    ('[dkim]\nselector = "2026_spring"', "", "dkim.selector", "is not a DKIM selector"),
    ('[dkim]\nselector = "s"\nkeydir = "/k"', "", "dkim.keydir", "unknown key"),
    ('[dkim]\nselector = "s"\nkey_dir = "/etc/dkim keys"', "", "dkim.key_dir", "white space, ':' or '#'"),
    ("[dkim]", "", "dkim", "no list domain is signed"),
    ("", 'dkim_selector = "-lists"', "domains.lists.example.edu.dkim_selector", "is not a DKIM selector"),
    ("", 'dkim_selector = 2026', "domains.lists.example.edu.dkim_selector", "expected a string"),
    ("", 'dkim_key = "/etc/dkimkeys/x.private"', "domains.lists.example.edu.dkim_key", "only used with dkim_selector"),
    ("", 'dkim_selector = "s"\ndkim_key = "/keys/a:b.private"', "domains.lists.example.edu.dkim_key",
     "white space, ':' or '#'"),
])
def test_errors_name_the_file_and_the_field(make_config, dkim, main, where, message):
    path = write(make_config, dkim=dkim, main=main)
    with pytest.raises(C.ConfigError) as caught:
        C.load(path)
    assert caught.value.where == where
    assert message in caught.value.message
    assert str(caught.value).startswith(f"{path}: {where}: ")


def test_main_cf_puts_the_milter_on_the_sendmail_path_only(make_config):
    config = C.load(write(make_config, dkim='[dkim]\nselector = "lists2026"'))
    main = P.main_cf(config, PROGRAM)
    assert settings(main)["non_smtpd_milters"] == "{ inet:127.0.0.1:8891, default_action=tempfail }"
    assert "smtpd_milters" not in settings(main) and "milter_default_action" not in settings(main)
    # everything a site without DKIM gets comes first, unchanged
    plain = P.main_cf(C.load(write(make_config)), PROGRAM)
    assert main.startswith(plain)


@pytest.mark.parametrize("socket, milter, opendkim", [
    ("inet:127.0.0.1:8891", "inet:127.0.0.1:8891", "inet:8891@127.0.0.1"),
    ("inet:localhost:12301", "inet:localhost:12301", "inet:12301@localhost"),
    ("inet:[::1]:8891", "inet:[::1]:8891", "inet6:8891@[::1]"),
    # Debian chroots cleanup in the queue directory: the socket is named relative to it
    ("unix:/var/spool/postfix/opendkim/opendkim.sock", "unix:opendkim/opendkim.sock",
     "local:/var/spool/postfix/opendkim/opendkim.sock"),
    ("unix:/run/opendkim/opendkim.sock", "unix:/run/opendkim/opendkim.sock", "local:/run/opendkim/opendkim.sock"),
])
def test_socket_forms(make_config, socket, milter, opendkim):
    config = C.load(write(make_config, dkim=f'[dkim]\nselector = "s1"\nsocket = "{socket}"\ndefault_action = "accept"'))
    main = P.main_cf(config, PROGRAM)
    assert settings(main)["non_smtpd_milters"] == f"{{ {milter}, default_action=accept }}"
    assert ("cleanup reaches it only" in main) == (socket == "unix:/run/opendkim/opendkim.sock")
    conf = P.opendkim_conf(config)
    assert f"\nSocket                  {opendkim}\n" in conf
    assert ("UMask                   007" in conf) == socket.startswith("unix:")


def test_key_and_signing_tables(make_config, tmp_path):
    config = C.load(write(make_config, dkim=f'[dkim]\nselector = "lists2026"\ntable_dir = "{tmp_path}/od"',
                          dev='dkim_selector = "dev1"\ndkim_key = "/srv/dev1.private"'))
    lines = [l for l in P.key_table(config).splitlines() if not l.startswith("#")]
    assert lines == ["lists-dev.example.edu lists-dev.example.edu:dev1:/srv/dev1.private",
                     "lists.example.edu lists.example.edu:lists2026:/etc/dkimkeys/lists.example.edu/lists2026.private"]
    lines = [l for l in P.signing_table(config).splitlines() if not l.startswith("#")]
    assert lines == ["lists-dev.example.edu lists-dev.example.edu", "lists.example.edu lists.example.edu"]
    conf = P.opendkim_conf(config)
    assert f"KeyTable                file:{tmp_path}/od/key.table\n" in conf
    assert f"SigningTable            file:{tmp_path}/od/signing.table\n" in conf
    assert "SenderHeaders           List-Post,From\n" in conf and "Mode                    s\n" in conf


def test_postfix_config_prints_the_opendkim_files_after_master_cf(make_config):
    path = write(make_config, dkim='[dkim]\nselector = "lists2026"')
    ran = listfilter(path, "postfix-config", "--listfilter", PROGRAM)
    assert ran.returncode == 0, ran.stderr
    config = C.load(path)
    assert ran.stdout == (P.main_cf(config, PROGRAM) + "\n" + P.master_cf(config, PROGRAM) + "\n"
                          + P.opendkim(config))
    heads = [l for l in ran.stdout.splitlines() if l.startswith("# ---- ")]
    assert [h.split(":")[0] for h in heads] == ["# ---- main.cf", "# ---- master.cf", "# ---- /etc/opendkim/key.table",
                                                "# ---- /etc/opendkim/signing.table", "# ---- opendkim.conf"]
