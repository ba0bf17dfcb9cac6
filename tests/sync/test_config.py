"""Config validation: every error class names the file and the field; the CLI exits 78 (EX_CONFIG)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from listfilter.common.errors import EX_CONFIG
from listfilter.sync import config as C

from ..cli.runner import listfilter
from ..conftest import EXAMPLE

MINIMAL = """
[domains."lists.example.edu"]
course = "CS 199"
[lists.testing]
members = { emails = ["someone@example.edu"] }
posters = ["someone@example.edu"]
"""


def load_text(tmp_path, text: str) -> C.Config:
    path = tmp_path / "lists.toml"
    path.write_text(text)
    return C.load(path)


def test_example_config_is_valid():
    config = C.load(EXAMPLE / "lists.toml")
    assert set(config.lists) == {"testing", "students", "enrolled", "staff"}
    assert set(config.domains) == {"lists.example.edu", "lists-dev.example.edu"}
    students = config.lists["students"]
    assert students.members_query.roles == ("applied", "student", "teacher", "ta")
    assert students.posters.roles == ("instructor", "ta")
    assert config.reply_to_address(students, "lists.example.edu") == "staff@lists.example.edu"
    assert config.reply_to_address(students, "lists-dev.example.edu") == "staff@lists-dev.example.edu"
    assert config.site.timezone == "America/Chicago"
    # relative paths resolve against the config file's directory
    assert config.site.state_dir == (EXAMPLE / "state").resolve()
    assert config.roster.csv == (EXAMPLE / "roster.csv").resolve()


def test_defaults(tmp_path):
    config = load_text(tmp_path, "[site]\nowners = ['o@example.edu']\n" + MINIMAL)
    lst = config.lists["testing"]
    assert lst.local_part == "testing"
    assert lst.display_name == "testing" and lst.subject_tag == "testing"
    assert lst.exclude_poster is True
    assert lst.title_case_subject is True  # the customer's "Subject In Title Case"
    assert lst.owners == () and config.for_domain(lst, "lists.example.edu").owners == ("o@example.edu",)
    assert config.site.state_dir.as_posix() == "/var/lib/listfilter"
    assert config.site.snapshot_path.as_posix() == "/var/lib/listfilter/snapshot.sqlite"
    assert config.site.sendmail == "/usr/sbin/sendmail"
    assert config.postfix.map_type == "hash"
    assert config.roster.source == "postgresql"
    assert config.roster.current_semester == "current"


def test_member_query_and_poster_forms(tmp_path):
    config = load_text(tmp_path, """
[site]
owners = ["o@example.edu"]
[domains."a.example.edu"]
[lists.one]
members = { active = false, semester = "2025-fall" }
posters = "members"
[lists.two]
members = { roles = ["ta"], emails = ["X@Example.EDU"] }
posters = { emails = ["p@example.edu"], members = true, roles = ["staff"] }
""")
    one, two = config.lists["one"], config.lists["two"]
    assert one.members_query == C.MemberQuery(roles=None, active=False, semester="2025-fall")
    assert one.posters == C.Posters(members=True)
    assert two.member_emails == ("X@example.edu",)
    assert two.posters == C.Posters(emails=("p@example.edu",), members=True, roles=("staff",))
    assert two.posters.describe() == "course staff; list members; p@example.edu"


ERRORS = [
    # (config text, expected fragment of the message)
    ("[site]\ntimezone = 'Mars/Olympus'\n" + MINIMAL, "site.timezone: unknown time zone 'Mars/Olympus'"),
    ("[site]\ncolour = 'red'\n" + MINIMAL, "site.colour: unknown key"),
    ("[sites]\n" + MINIMAL, "sites: unknown key"),
    ("[site]\nnotice_limit = 'five'\n" + MINIMAL, "site.notice_limit: expected an integer, not a string"),
    ("[postfix]\nmap_type = 'dbm'\n" + MINIMAL, "postfix.map_type: 'dbm' is not one of"),
    ("[roster]\nsource = 'csv'\n" + MINIMAL, "roster.csv: required when source = \"csv\""),
    ("[roster.role_aliases]\nboss = ['dean']\n" + MINIMAL, "roster.role_aliases.boss: unknown enrollment type 'dean'"),
    ("[lists.x]\nmembers = { emails = ['a@example.edu'] }\nposters = []\n", "domains: at least one"),
    ('[domains."not a domain"]\n' + MINIMAL.split("\n", 3)[3], "domains.not a domain: not a valid mail domain"),
    (MINIMAL + "display_name = 3\n", "lists.testing.display_name: expected a string, not an integer"),
    (MINIMAL + "colour = 'red'\n", "lists.testing.colour: unknown key"),
    (MINIMAL + "exclude_poster = 'yes'\n", "lists.testing.exclude_poster: expected true or false, not a string"),
    (MINIMAL + "title_case_subject = 0\n", "lists.testing.title_case_subject: expected true or false, not an integer"),
    (MINIMAL + "title_case = false\n", "lists.testing.title_case: unknown key"),
    (MINIMAL.replace("someone@example.edu\"] }", "someone@\"] }"),
     "lists.testing.members.emails[0]: malformed address 'someone@'"),
    (MINIMAL.replace('posters = ["someone@example.edu"]', 'posters = ["some one@example.edu"]'),
     "lists.testing.posters[0]: malformed address 'some one@example.edu'"),
    (MINIMAL.replace('posters = ["someone@example.edu"]', 'posters = { emails = ["nodomain"] }'),
     "lists.testing.posters.emails[0]: malformed address 'nodomain'"),
    (MINIMAL.replace('posters = ["someone@example.edu"]', 'posters = { roles = ["professor"] }'),
     "lists.testing.posters.roles: unknown role 'professor'"),
    (MINIMAL.replace('{ emails = ["someone@example.edu"] }', '{ roles = ["students"] }'),
     "lists.testing.members.roles: unknown role 'students'"),
    (MINIMAL.replace('posters = ["someone@example.edu"]', 'posters = "everyone"'),
     "lists.testing.posters: expected \"members\", a list of addresses or a table, not 'everyone'"),
    (MINIMAL.replace('posters = ["someone@example.edu"]', 'posters = { members = true, anyone = true }'),
     "lists.testing.posters.anyone: unknown key"),
    (MINIMAL.replace('posters = ["someone@example.edu"]\n', ''), "lists.testing.posters: required"),
    (MINIMAL.replace('members = { emails = ["someone@example.edu"] }\n', ''), "lists.testing.members: required"),
    (MINIMAL.replace('{ emails = ["someone@example.edu"] }', '{}'), "lists.testing.members: give a roster query"),
    (MINIMAL + "owners = ['boss']\n", "lists.testing.owners[0]: malformed address 'boss'"),
    (MINIMAL + "reply_to = 'nolist'\n", "lists.testing.reply_to: 'nolist' is neither an address nor a list name"),
    (MINIMAL + "reply_to = 'a@b@c'\n", "lists.testing.reply_to: malformed address"),
    (MINIMAL + "address = 'Test Ing'\n", "lists.testing.address: 'test ing' is not a valid local part"),
    (MINIMAL + "address = 'testing-owner'\n", "lists.testing.address: may not end in -owner"),
    (MINIMAL + "domains = ['other.example.edu']\n", "lists.testing.domains: 'other.example.edu' is not one of"),
    (MINIMAL + "[lists.other]\naddress = 'Testing'\nmembers = { emails = ['a@example.edu'] }\nposters = []\n",
     "lists.other.address: testing@lists.example.edu is already used by lists.testing"),
    (MINIMAL + "[lists.testing-bounces]\nmembers = { emails = ['a@example.edu'] }\nposters = []\n",
     "lists.testing-bounces.address: may not end in -bounces"),
    (MINIMAL + "owners = ['o@example.edu']\n[lists.other]\nmembers = { emails = ['a@example.edu'] }\nposters = []\n",
     "lists.other.owners: no owners"),
]


@pytest.mark.parametrize("text,expected", ERRORS, ids=[e[1].split(":")[0] + f"-{i}" for i, e in enumerate(ERRORS)])
def test_errors_name_the_field(tmp_path, text, expected):
    if "owners" not in text and "[site]" not in text:
        text = "[site]\nowners = ['o@example.edu']\n" + text
    elif "[site]" in text and "owners" not in text.split("[site]", 1)[1].split("[", 1)[0]:
        text = text.replace("[site]\n", "[site]\nowners = ['o@example.edu']\n", 1)
    with pytest.raises(C.ConfigError) as info:
        load_text(tmp_path, text)
    message = str(info.value)
    assert message.startswith(str(tmp_path / "lists.toml") + ": "), message
    assert expected in message


def test_toml_syntax_error_names_file_line_and_column(tmp_path):
    with pytest.raises(C.ConfigError) as info:
        load_text(tmp_path, "[site]\ntimezone = \n")
    assert str(info.value).startswith(f"{tmp_path / 'lists.toml'}:2:12: TOML syntax error: ")


def test_missing_file(tmp_path):
    with pytest.raises(C.ConfigError, match="config file not found"):
        C.load(tmp_path / "nope.toml")


@pytest.mark.parametrize("command", [["check", "--offline"], ["sync"], ["sync", "--dry-run"], ["lists"],
                                     ["members", "staff"], ["maps"], ["postfix-config"], ["db", "status"],
                                     ["log"], ["deliver", "--sender", "a@b", "--recipient", "l@d"]])
def test_cli_bad_config_exits_78_with_one_line(tmp_path, command):
    path = tmp_path / "lists.toml"
    path.write_text(MINIMAL + "posters_typo = 1\n")
    ran = listfilter(path, *command)
    assert ran.returncode == EX_CONFIG == 78, ran
    lines = [l for l in ran.stdout.splitlines() + ran.stderr.splitlines() if l.strip()]
    assert any("lists.testing.posters_typo: unknown key" in l for l in lines), lines
    if command[0] != "check":  # check reports it among its checks, on stdout
        assert ran.stderr == f"listfilter: config error: {path}: lists.testing.posters_typo: unknown key\n"


def test_a_usage_error_stays_exit_2(tmp_path):
    path = tmp_path / "lists.toml"
    path.write_text("[site]\nowners = ['o@example.edu']\n" + MINIMAL)
    ran = listfilter(path, "log", "--limit", "0")
    assert ran.returncode == 2 and "--limit" in ran.stderr
    assert listfilter(path, "no-such-command").returncode == 2


def test_the_installed_command_exits_78_without_a_traceback(tmp_path):
    """What cron and the operator see: the console script's own exit status and stderr."""
    path = tmp_path / "lists.toml"
    path.write_text(MINIMAL + "posters_typo = 1\n")
    program = shutil.which("listfilter", path=str(Path(sys.executable).parent))
    proc = subprocess.run([program, "--config", str(path), "sync"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 78, proc
    assert proc.stdout == ""
    assert proc.stderr == f"listfilter: config error: {path}: lists.testing.posters_typo: unknown key\n"


def test_config_from_environment(tmp_path):
    path = tmp_path / "lists.toml"
    path.write_text("[site]\nowners = ['o@example.edu']\n" + MINIMAL)
    ran = listfilter(None, "check", "--offline", "--json", env={"LISTFILTER_CONFIG": str(path)})
    assert ran.returncode == 0, ran.stderr
    report = json.loads(ran.stdout)
    assert report["ok"] is True
    assert report["checks"][0]["detail"].startswith(str(path))


def test_the_example_testing_list_reaches_its_poster():
    # its one member is its one poster: with exclude_poster on, every test post would reach nobody
    testing = C.load(EXAMPLE / "lists.toml").lists["testing"]
    assert testing.member_emails == ("instructor@example.edu",)
    assert testing.posters.emails == testing.member_emails
    assert testing.exclude_poster is False
    assert all(lst.exclude_poster for name, lst in C.load(EXAMPLE / "lists.toml").lists.items() if name != "testing")


def test_title_case_subject_and_exclude_poster_per_list(tmp_path):
    config = load_text(tmp_path, "[site]\nowners = ['o@example.edu']\n" + MINIMAL
                       + "title_case_subject = false\nexclude_poster = false\n")
    lst = config.lists["testing"]
    assert lst.title_case_subject is False and lst.exclude_poster is False


# ---------------------------------------------------------------- [site] relay

RELAY_ERRORS = [
    # (the value of site.relay, expected message)
    ('"relay.example.edu:smtp"', "site.relay: 'relay.example.edu:smtp' is not host:port: 'smtp' is not a port number"),
    ('"relay.example.edu:70000"', "site.relay: 'relay.example.edu:70000' is not host:port"),
    ('"2001:db8::25"', "site.relay: '2001:db8::25': write an IPv6 address as [ipv6:2001:db8::1]:25"),
    ('"[relay.example.edu"', "site.relay: '[relay.example.edu' is not host:port"),
    ("25", 'site.relay: expected "host:port" or a table, not an integer'),
    ("{ port = 587 }", "site.relay.host: '' is not a host name or address"),
    ('{ host = "smtp.example.net:587" }',
     "site.relay.host: 'smtp.example.net:587' is not a host name or address (the port goes in site.relay.port)"),
    ('{ host = "smtp.example.net", tls = "ssl" }', "site.relay.tls: 'ssl' is not one of: may, starttls, implicit"),
    ('{ host = "smtp.example.net", tls = "starttls", port = 0 }', "site.relay.port: must be at least 1"),
    ('{ host = "smtp.example.net", tls = "starttls", password = "x" }', "site.relay.password: unknown key"),
    ('{ host = "smtp.example.net", username = "u" }',
     'site.relay.username: a login needs tls = "starttls" or "implicit": with "may" the password could cross'),
    ('{ host = "smtp.example.net", verify = true }', 'site.relay.verify: needs tls = "starttls" or "implicit"'),
    ('{ host = "smtp.example.net", tls = "starttls", verify = false, ca_file = "ca.pem" }',
     "site.relay.ca_file: only used with verify = true"),
    ('{ host = "smtp.example.net", tls = "starttls", username = "a:b" }', "site.relay.username: 'a:b': a login has no colon"),
    ('{ host = "smtp.example.net", tls = "starttls", password_file = "/etc/p" }',
     "site.relay.password_file: only used with username"),
    ('{ host = "smtp.example.net", tls = "starttls", username = "u", password_env = "1X" }',
     "site.relay.password_env: invalid value '1X'"),
]


@pytest.mark.parametrize("relay, expected", RELAY_ERRORS)
def test_relay_errors_name_the_field(tmp_path, relay, expected):
    with pytest.raises(C.ConfigError) as info:
        load_text(tmp_path, f"[site]\nrelay = {relay}\nowners = ['o@example.edu']\n" + MINIMAL)
    assert expected in str(info.value)
    assert str(info.value).startswith(str(tmp_path / "lists.toml"))


def test_relay_forms(tmp_path):
    def relay(text: str) -> C.Relay | None:
        return load_text(tmp_path, f"[site]\nowners = ['o@example.edu']\n{text}\n" + MINIMAL).site.relay

    assert relay("") is None
    assert relay('relay = "outbound-relays.example.edu:25"') == C.Relay("outbound-relays.example.edu", 25)
    assert relay('relay = "[relay.example.edu]"').address == "relay.example.edu"
    login = relay('[site.relay]\nhost = "smtp.example.net"\ntls = "starttls"\nusername = "lists@example.edu"'
                  '\npassword_file = "secret/relay"')
    assert login == C.Relay(host="smtp.example.net", port=587, tls="starttls", verify=True,
                            ca_file=Path("/etc/ssl/certs/ca-certificates.crt"), username="lists@example.edu",
                            password_file=tmp_path / "secret" / "relay")
    assert login.address == "smtp.example.net:587"
    assert relay('relay = { host = "smtp.example.net", tls = "implicit", verify = false }') == C.Relay(
        host="smtp.example.net", port=465, tls="implicit", verify=False)


def test_relay_password_from_the_environment_or_a_private_file(tmp_path, monkeypatch):
    import os

    monkeypatch.delenv("LISTFILTER_RELAY_PASSWORD", raising=False)
    secret = tmp_path / "relay-password"
    relay = C.Relay("smtp.example.net", 587, "starttls", True, None, "u", password_file=secret)

    def refused() -> str:
        with pytest.raises(C.ConfigError) as info:
            relay.resolved_password()
        assert info.value.where == "site.relay.password_file"
        return info.value.message

    assert refused() == (f"{secret} does not exist: put the relay password there (root's, mode 0600),"
                         " or set $LISTFILTER_RELAY_PASSWORD")
    secret.write_text("pa:ss word#1\n")
    for mode in (0o644, 0o640, 0o604, 0o620):
        secret.chmod(mode)
        assert refused() == (f"{secret} is mode {mode:04o}: others than its owner may read or change the relay"
                             f" password; `chmod 600 {secret}`")
    secret.chmod(0o600)
    assert relay.resolved_password() == "pa:ss word#1" and relay.password_source() == str(secret)
    secret.chmod(0o400)
    assert relay.resolved_password() == "pa:ss word#1"
    if os.geteuid() == 0:
        os.chown(secret, 12345, -1)
        assert refused() == f"{secret} belongs to uid 12345, not root; `chown root {secret}`"
        os.chown(secret, 0, -1)
    for text, why in (("", "is empty"), ("a\nb\n", "holds more than one line"), ("trailing \n", "ends in white space")):
        secret.chmod(0o600)
        secret.write_text(text)
        assert why in refused()
    # the environment first: the file is not even opened
    monkeypatch.setenv("LISTFILTER_RELAY_PASSWORD", "from-env")
    secret.chmod(0o666)
    assert relay.resolved_password() == "from-env" and relay.password_source() == "$LISTFILTER_RELAY_PASSWORD"
