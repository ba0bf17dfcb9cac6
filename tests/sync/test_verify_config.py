"""Posters who are who they say: [verify], [site] authserv_id and authenticated_trusted, require_authenticated,
what sync compiles from them and what postfix-config renders.

The real milters (OpenDKIM verifying, OpenDMARC) in a private Postfix are
tests/integration/test_authenticated_posters.py; here are the config's
defaults and errors, the snapshot's fields and the rendered text, with
Postfix's own regexp engine (postmap -q) run on the header_checks table.
"""

from __future__ import annotations

import subprocess
import tomllib
from pathlib import Path

import pytest

from listfilter.common import snapshot as S
from listfilter.sync import compiler
from listfilter.sync import config as C
from listfilter.sync import postfixconf as P

from ..conftest import EXAMPLE

PROGRAM = "/opt/listfilter/bin/listfilter"
ID = "mx.lists.example.edu"

LISTS = """
[site]
owners = ["prof@example.edu"]
{site}
{verify}
[domains."lists.example.edu"]
[lists.students]
members = {{ emails = ["a@example.edu"] }}
posters = {{ roles = ["instructor"] }}
{students}
[lists.staff]
members = {{ emails = ["b@example.edu"] }}
posters = ["prof@example.edu"]
[lists.club]
members = {{ emails = ["c@example.edu"] }}
posters = "members"
[lists.mixed]
members = {{ emails = ["d@example.edu"] }}
posters = {{ roles = ["ta"], members = true }}
"""


def parse(site: str = "", verify: str = "[verify]", students: str = "") -> C.Config:
    data = tomllib.loads(LISTS.format(site=site, verify=verify, students=students))
    return C.parse(data, Path("/etc/listfilter/lists.toml"))


def required(config: C.Config) -> dict[str, bool]:
    return {name: lst.require_authenticated for name, lst in config.lists.items()}


def test_off_everywhere_without_verify():
    config = parse(verify="")
    assert config.verify is None
    assert set(required(config).values()) == {False}
    assert compiler.site_settings(config)["authserv_id"] == ""  # no lookup of the host's name for nothing


def test_with_verify_on_where_posting_is_a_privilege():
    """Roles and allowlists: on; a list whose members may post: off."""
    config = parse()
    assert required(config) == {"students": True, "staff": True, "club": False, "mixed": False}
    assert config.verify == C.VerifySettings()
    assert required(parse(students="require_authenticated = false"))["students"] is False


def test_require_authenticated_needs_verify():
    with pytest.raises(C.ConfigError, match=r"lists\.students\.require_authenticated: needs a \[verify\] table"):
        parse(verify="", students="require_authenticated = true")
    with pytest.raises(C.ConfigError, match="lists.students.require_authenticated: expected true or false"):
        parse(students='require_authenticated = "yes"')


def test_authserv_id_defaults_to_the_host_name(monkeypatch):
    import socket

    monkeypatch.setattr(socket, "getfqdn", lambda: "Host.Example.EDU")
    assert parse().authserv_id == "host.example.edu"
    assert parse(site='[dns]\nhostname = "mx.example.edu"').authserv_id == "mx.example.edu"
    assert parse(site=f'authserv_id = "{ID.upper()}"').authserv_id == ID


@pytest.mark.parametrize("value", ['"lists example"', '"a;b"', '"\\"quoted\\""', '"a..b"', '"-x.example"', "3"])
def test_authserv_id_errors(value):
    with pytest.raises(C.ConfigError, match="site.authserv_id: "):
        parse(site=f"authserv_id = {value}")


def test_trusted_senders():
    config = parse(site='authenticated_trusted = ["CS.Example.EDU.", { domains = ["example.edu"],'
                        ' networks = ["192.0.2.7", "2001:db8::/32", "Local"] }]')
    assert config.site.authenticated_trusted == (
        C.TrustedSenders(("cs.example.edu",)),
        C.TrustedSenders(("example.edu",), ("192.0.2.7/32", "2001:db8::/32", "local")))


@pytest.mark.parametrize("value,error", [
    ('"example.edu"', "site.authenticated_trusted: expected an array"),
    ('["not a domain"]', r"site.authenticated_trusted\[0\]: 'not a domain' is not a mail domain"),
    ("[3]", r"site.authenticated_trusted\[0\]: expected a table, not an integer"),
    ('[{ networks = ["192.0.2.1"] }]', r"site.authenticated_trusted\[0\].domains: required"),
    ("[{ domains = [] }]", r"site.authenticated_trusted\[0\].domains: name at least one domain"),
    ('[{ domains = ["example.edu"], networks = ["192.0.2.300"] }]',
     r"site.authenticated_trusted\[0\].networks\[0\]: '192.0.2.300' is not an IP address or network"),
    ('[{ domains = ["example.edu"], networks = [] }]', r"site.authenticated_trusted\[0\].networks: name at least"),
    ('[{ domains = ["example.edu"], network = ["192.0.2.1"] }]', r"site.authenticated_trusted\[0\].network: unknown"),
])
def test_trusted_sender_errors(value, error):
    with pytest.raises(C.ConfigError, match=error):
        parse(site=f"authenticated_trusted = {value}")


@pytest.mark.parametrize("verify,error", [
    ('[verify]\nopendkim = "127.0.0.1:8892"', "verify.opendkim: '127.0.0.1:8892' is not inet:HOST:PORT"),
    ('[verify]\nopendmarc = "inet:127.0.0.1:8892"', "verify.opendmarc: the same address as verify.opendkim"),
    ('[verify]\ndefault_action = "reject"', "verify.default_action: 'reject' is not one of: tempfail, accept"),
    ('[verify]\nsocket = "inet:127.0.0.1:1"', "verify.socket: unknown key"),
    ('[dkim]\nselector = "s1"\n[verify]\nopendkim = "inet:127.0.0.1:8891"',
     "verify.opendkim: inet:127.0.0.1:8891 is dkim.socket, the signer's"),
])
def test_verify_errors(verify, error):
    with pytest.raises(C.ConfigError, match=error):
        parse(verify=verify)


def test_the_snapshot_carries_the_list_switch_and_the_site_settings(tmp_path):
    config = parse(site=f'authserv_id = "{ID}"\nauthenticated_trusted = [{{ domains = ["example.edu"],'
                        ' networks = ["192.0.2.0/24"] }]')
    lists = compiler.compile_lists(config, [])
    settings = compiler.site_settings(config)
    S.write(tmp_path / "snapshot.sqlite", lists, {**settings, "digest": "x"})
    with S.Snapshot(tmp_path / "snapshot.sqlite") as snap:
        assert {r.name: r.require_authenticated for r in snap.lists()} == required(config)
        meta = snap.settings()
        assert meta["authserv_id"] == ID
        assert S.decode_trusted(meta["authenticated_trusted"]) == (S.Trusted(("example.edu",), ("192.0.2.0/24",)),)
    # a change of either changes the digest: sync writes a new snapshot
    other = parse(site='authserv_id = "mx2.lists.example.edu"')
    assert compiler.digest(lists, settings) != compiler.digest(lists, compiler.site_settings(other))
    assert compiler.digest(lists, settings) != compiler.digest(compiler.compile_lists(parse(students=(
        "require_authenticated = false")), []), settings)


# ---------------------------------------------------------------- postfix-config


def settings_of(text: str) -> dict[str, str]:
    return dict(l.split(" = ", 1) for l in text.splitlines() if " = " in l and not l.startswith("#"))


def test_main_cf_renders_the_milters_and_the_header_checks():
    main = settings_of(P.main_cf(parse(site=f'authserv_id = "{ID}"'), PROGRAM))
    assert main["smtpd_milters"] == ("{ inet:127.0.0.1:8892, default_action=tempfail },"
                                     " { inet:127.0.0.1:8893, default_action=tempfail }")
    assert main["header_checks"] == "regexp:/etc/postfix/listfilter_header_checks"
    assert "non_smtpd_milters" not in main  # the signer's; nothing here without [dkim]
    unix = parse(verify='[verify]\nopendkim = "unix:/var/spool/postfix/opendkim-verify/sock"\n'
                        'opendmarc = "unix:/run/opendmarc/opendmarc.sock"\ndefault_action = "accept"')
    assert settings_of(P.main_cf(unix, PROGRAM))["smtpd_milters"] == (
        "{ unix:opendkim-verify/sock, default_action=accept }, { unix:/run/opendmarc/opendmarc.sock,"
        " default_action=accept }")
    assert "Socket                  local:/var/spool/postfix/opendkim-verify/sock\n" in P.opendkim_verify_conf(unix)
    assert "Socket                  local:/run/opendmarc/opendmarc.sock\n" in P.opendmarc_conf(unix)


def test_without_verify_nothing_changes():
    """A site that does not verify gets exactly the reference files (test_postfixconf keeps them)."""
    data = tomllib.loads((EXAMPLE / "lists.toml").read_text())
    del data["site"]["state_dir"], data["postfix"]
    data["roster"] = {}
    config = C.parse(data, Path("/etc/listfilter/lists.toml"))
    assert config.verify is None and P.verify_files(config) == ""
    text = P.main_cf(config, PROGRAM) + P.master_cf(config, PROGRAM)
    assert "smtpd_milters" not in text and "header_checks" not in text and "client_address" not in text


def test_the_deliver_pipe_passes_the_client_address():
    from listfilter.mail import command, deliver

    words = next(l.split() for l in P.master_cf(parse(), PROGRAM).splitlines() if "argv=" in l and "-deliver" in l)
    assert words[-2:] == ["--client-address", "${client_address}"]
    at = next(i for i, w in enumerate(words) if w.startswith("argv="))
    filled = {"${sender}": "prof@example.edu", "${original_recipient}": "students@lists.example.edu",
              "${queue_id}": "4ABC", "${client_address}": "192.0.2.7"}
    args = command.parse([filled.get(w, w) for w in words[at + 1:]], deliver.OPTIONS, deliver.FLAGS)
    assert args["client_address"] == "192.0.2.7"
    empty = [("" if w == "${client_address}" else filled.get(w, w)) for w in words[at + 1:]]  # sendmail's mail
    assert command.parse(empty, deliver.OPTIONS, deliver.FLAGS)["client_address"] == ""


def test_the_milters_settings():
    config = parse(site=f'authserv_id = "{ID}"')
    dkim = P.opendkim_verify_conf(config)
    conf = dict(l.split(None, 1) for l in dkim.splitlines() if l and not l.startswith("#"))
    assert conf == {"Mode": "v", "Socket": "inet:8892@127.0.0.1", "AuthservID": ID, "AlwaysAddARHeader": "yes",
                    "UserID": "opendkim", "PidFile": "/run/opendkim/opendkim-verify.pid", "Syslog": "yes"}
    dmarc = dict(l.split(None, 1) for l in P.opendmarc_conf(config).splitlines() if l and not l.startswith("#"))
    assert dmarc["AuthservID"] == dmarc["TrustedAuthservIDs"] == ID
    assert (dmarc["SPFSelfValidate"], dmarc["SPFIgnoreResults"], dmarc["RejectFailures"]) == ("true", "true", "false")
    assert dmarc["Socket"] == "inet:8893@127.0.0.1"


#: (field as it arrives, does header_checks remove it?)
HEADER_CASES = [
    (f"Authentication-Results: {ID}; dmarc=pass header.from=example.edu", True),
    (f"Authentication-Results:{ID};dmarc=pass", True),
    (f"authentication-results: {ID.upper()}; dmarc=pass", True),
    (f"Authentication-Results: (we are them) {ID} 1; dmarc=pass", True),
    (f'Authentication-Results: "{ID}"; dmarc=pass', True),
    (f"Authentication-Results:\n\t{ID};\n\tdmarc=pass header.from=example.edu", True),  # folded
    (f"Authentication-Results: other.example; dkim=pass ({ID} was here)", True),  # mentions us: goes too
    ("Authentication-Results: other.example; dmarc=pass header.from=example.edu", False),
    (f"Authentication-Results: x{ID}; dmarc=pass", False),
    (f"Authentication-Results: {ID}.evil.example; dmarc=pass", False),
    (f"Authentication-Results: evil-{ID}; dmarc=pass", False),
    (f"X-Authentication-Results: {ID}; dmarc=pass", False),
    (f"ARC-Authentication-Results: i=1; {ID}; dmarc=pass", False),
]


def test_header_checks_with_postfix_own_regexp_engine(tmp_path, host_postfix_config):
    """postmap -q runs the pattern as cleanup(8) does; a removed field is one listfilter would trust
    (authres.is_ours) or one that merely mentions us, and every field listfilter would trust is removed."""
    from listfilter.mail.authres import is_ours

    table = tmp_path / "header_checks"
    table.write_text(P.header_checks(parse(site=f'authserv_id = "{ID}"')))
    for field, removed in HEADER_CASES:
        proc = subprocess.run(["/usr/sbin/postmap", "-q", field, f"regexp:{table}"], capture_output=True, text=True)
        assert (proc.stdout.strip() == "IGNORE") is removed, (field, proc)
        name, _, value = field.partition(":")
        if name.lower() == "authentication-results" and is_ours(value.replace("\n", ""), ID):
            assert removed, field
