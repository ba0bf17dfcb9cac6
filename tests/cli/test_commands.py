"""One test per `listfilter` command, in this process (click's CliRunner), and --help for every one.

The bundled example (docs/example, copied per test) is the config: a CSV
roster, texthash maps and no reload, so nothing here needs Postfix or a
database. The commands' finer behaviour is tested beside the code they
drive (tests/sync, tests/store, tests/admin).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import click
import pytest

from listfilter.cli import check as K
from listfilter.cli import cli
from listfilter.common import snapshot as S
from listfilter.common import spool as SP
from listfilter.common.errors import EX_NOUSER, EX_TEMPFAIL
from listfilter.store import migrations as MG
from listfilter.sync import config as C
from listfilter.sync import maps as M
from listfilter.sync import run as Y

from ..conftest import EXAMPLE, REPO
from ..store.test_database import event, write_event
from .runner import listfilter

STUDENTS = "students@lists.example.edu"
POST = (b"From: Instructor Ivy <instructor@example.edu>\nTo: students@lists.example.edu\n"
        b"Subject: Exam room\nMessage-ID: <cli-1@example.edu>\n\nRoom 1404.\n")


def state_files(config: C.Config) -> dict[str, bytes]:
    state = config.site.state_dir
    return {str(p.relative_to(state)): p.read_bytes() for p in sorted(state.rglob("*"))
            if p.is_file() and p.name != "sync.lock"} if state.exists() else {}


@pytest.fixture
def config(example_config) -> C.Config:
    return C.load(example_config)


@pytest.fixture
def synced(example_config, config) -> C.Config:
    assert listfilter(example_config, "sync", "--quiet").returncode == 0
    return config


# ---------------------------------------------------------------- sync side


def test_sync(example_config, config):
    ran = listfilter(example_config, "sync")
    assert ran.returncode == 0 and ran.stderr == ""
    assert re.fullmatch(r"sync: 8 lists, 24 memberships: updated snapshot, map domains, map recipients,"
                        r" map transport, map virtual \(\d+\.\d\d s\)\n", ran.stdout), ran.stdout
    with S.Snapshot(config.site.snapshot_path) as snap:
        assert snap.get_list(STUDENTS).member_count == 6
    ran = listfilter(example_config, "sync", "-v")
    lines = ran.stdout.splitlines()
    assert lines[-1].startswith("sync: 8 lists, 24 memberships: unchanged (")
    assert f"{STUDENTS}: 6 members, 2 posters (course instructor, ta)" in lines
    assert listfilter(example_config, "sync", "--quiet").stdout == ""


def test_sync_dry_run(example_config, config):
    ran = listfilter(example_config, "sync", "--dry-run")
    assert ran.returncode == 0
    assert ran.stdout.endswith("dry run: would update snapshot, domains, recipients, transport, virtual\n")
    assert state_files(config) == {}


def test_maps(example_config, config):
    ran = listfilter(example_config, "maps")
    assert ran.returncode == 0
    rendered = M.render(config, Y.plan(config).lists)
    assert ran.stdout == "".join(f"# ==> {config.site.map_dir / name} <==\n{text}\n" for name, text in rendered.items())
    assert "students@lists.example.edu\tlistfilter:" in ran.stdout
    assert state_files(config) == {}  # shows, never installs


def test_lists(example_config):
    ran = listfilter(example_config, "lists")
    assert ran.returncode == 0
    assert f"{STUDENTS}\tCS 199 Students\t6 members\tposters: course instructor, ta" in ran.stdout.splitlines()
    assert len(ran.stdout.splitlines()) == 8
    [students] = [l for l in json.loads(listfilter(example_config, "lists", "--json").stdout) if l["address"] == STUDENTS]
    assert students == {"address": STUDENTS, "name": "students", "display_name": "CS 199 Students",
                        "description": "Everyone on the course: applied, enrolled and staff", "members": 6,
                        "posters": 2, "posters_rule": "course instructor, ta", "reply_to": "staff@lists.example.edu",
                        "owners": ["instructor@example.edu"]}


def test_members(example_config):
    ran = listfilter(example_config, "members", "enrolled@lists.example.edu")
    assert ran.stdout.splitlines() == ["alice@example.edu\tAlice Liddell\troster", "bob@example.edu\tBob Brown\troster",
                                       "Carol@Example.edu\tCarol Chen\troster"]
    ran = listfilter(example_config, "members", "staff")  # a name: every domain's list
    assert [l for l in ran.stdout.splitlines() if l.startswith("#")] == [
        "# staff@lists-dev.example.edu", "# staff@lists.example.edu"]
    data = json.loads(listfilter(example_config, "members", "testing", "--json").stdout)
    assert data["testing@lists.example.edu"] == [{"email": "instructor@example.edu", "name": "", "source": "config"}]
    ran = listfilter(example_config, "members", "nope")
    assert ran.returncode == 1 and ran.stderr == "listfilter: no list 'nope' (see `listfilter lists`)\n"


def test_check(example_config, config):
    ran = listfilter(example_config, "check", "--offline")
    assert ran.returncode == 0
    assert ran.stdout == f"ok       config: {config.path}: 4 lists on 2 domains\n"
    ran = listfilter(example_config, "check")
    assert ran.returncode == 1
    assert "PROBLEM  snapshot: " in ran.stdout and "PROBLEM  up to date: out of date: snapshot, domains" in ran.stdout
    assert listfilter(example_config, "sync").returncode == 0
    ran = listfilter(example_config, "check", "--json")
    checks = {c["name"]: c["ok"] for c in json.loads(ran.stdout)["checks"]}
    host = {name: checks.pop(name, True) for name in K.HOST_CHECKS}  # this host's: tests/cli/test_check.py
    assert checks == {"config": True, "roster": True, "snapshot": True, "up to date": True}
    assert ran.returncode == (0 if all(host.values()) else 1)


def reference_like(tmp_path: Path) -> Path:
    """The example as the reference files assume it (default state_dir, hash maps), at a path of our own."""
    text = (EXAMPLE / "lists.toml").read_text()
    text = re.sub(r"(?m)^state_dir = .*\n", "", text)
    text = re.sub(r"\[postfix\]\n(?:[^\n\[]+\n)*", "", text)
    text = re.sub(r"\[roster\]\n(?:[^\n\[]+\n)*", "[roster]\n", text)
    path = tmp_path / "lists.toml"
    path.write_text(text)
    return path


def test_postfix_config_is_the_reference_files(tmp_path):
    """postfix/main.cf and postfix/master.cf are this command's output for the example (only the config path differs)."""
    path = reference_like(tmp_path)
    ran = listfilter(path, "postfix-config", "--listfilter", "/opt/listfilter/bin/listfilter")
    assert ran.returncode == 0, ran.stderr
    reference = (REPO / "postfix" / "main.cf").read_text() + "\n" + (REPO / "postfix" / "master.cf").read_text()
    assert ran.stdout == reference.replace("/etc/listfilter/lists.toml", str(path))
    assert "argv=/opt/listfilter/bin/listfilter-deliver --snapshot /var/lib/listfilter/snapshot.sqlite " in ran.stdout


# ---------------------------------------------------------------- the store


def test_db_upgrade_and_status(example_config, config):
    ran = listfilter(example_config, "db", "status")
    assert ran.returncode == 1 and ran.stderr == (f"listfilter: the store {config.store.path} does not exist:"
                                                  " run `listfilter db upgrade`\n")
    ran = listfilter(example_config, "db", "upgrade")
    assert ran.returncode == 0
    assert ran.stdout.splitlines() == [*(f"applied migration {m.version}: {m.name}" for m in MG.MIGRATIONS),
                                       f"sqlite {config.store.path}: schema version {MG.LATEST}"]
    ran = listfilter(example_config, "db", "status")
    assert ran.returncode == 0 and ran.stdout == f"sqlite {config.store.path}: schema version {MG.LATEST}\n"
    ran = listfilter(example_config, "db", "upgrade")
    assert ran.stdout == f"sqlite {config.store.path}: schema version {MG.LATEST} (already up to date)\n"


def test_log(example_config, config):
    assert listfilter(example_config, "db", "upgrade").returncode == 0
    write_event(config.site.spool_dir, event(1, subject="From the spool"))
    ran = listfilter(example_config, "log")  # moves what waits in the spool first
    assert ran.returncode == 0, ran.stderr
    assert ran.stdout.split("\t")[1:] == ["delivered", STUDENTS, "Jane Doe <prof@example.edu>",
                                          "2 (handed to Postfix, outcome not yet read)", "From the spool\n"]
    assert SP.pending_events(config.site.spool_dir) == []
    [row] = json.loads(listfilter(example_config, "log", "--json").stdout)
    assert row["id"] == event(1)["id"] and "body" not in row
    assert listfilter(example_config, "log", "--status", "failed").stdout == ""


def test_web_passwd(example_config):
    # --print: the line for the accounts file (tests/cli/test_web_passwd.py writes one)
    ran = listfilter(example_config, "web", "passwd", "Prof@Example.edu", "--stdin", "--print", input="s3cret-pass\n")
    assert ran.returncode == 0
    assert re.fullmatch(r"prof@example\.edu:scrypt:131072:8:1\$[^$]+\$[0-9a-f]+\n", ran.stdout)
    ran = listfilter(None, "web", "passwd", input="s3cret-pass\ns3cret-pass\n")  # asked twice; needs no config
    assert ran.returncode == 0 and ran.stdout.splitlines()[-1].startswith("scrypt:")
    ran = listfilter(example_config, "web", "passwd", "--stdin", input="short\n")
    assert ran.returncode == 1 and "too short" in ran.stderr


def test_web_without_a_web_table(example_config):
    ran = listfilter(example_config, "web")
    assert ran.returncode == 1 and ran.stderr == "listfilter: no [web] table in the config (docs/web.md)\n"
    ran = listfilter(example_config, "web", "--bind", "nowhere")
    assert ran.returncode == 2 and "--bind" in ran.stderr


# ---------------------------------------------------------------- the mail commands, forwarded


def test_deliver_dry_run_uses_the_configs_snapshot(example_config, synced):
    ran = listfilter(example_config, "deliver", "--dry-run", "--sender", "instructor@example.edu",
                     "--recipient", STUDENTS, input=POST)
    assert ran.returncode == 0, ran.stderr
    out = ran.stdout
    assert out.startswith("rule loop: pass\nrule duplicate: pass\nrule approved: pass\nrule held: pass\n"
                          "rule poster: pass\n")
    assert "decision: delivered: would deliver to 5 recipients\n" in out  # the poster is left out
    assert "  alice@example.edu\n" in out and "  instructor@example.edu\n" not in out
    assert "\nList-Id: \"CS 199 Students\" <students.lists.example.edu>\n" in out and out.endswith("\n\nRoom 1404.\n")
    assert SP.pending_events(synced.site.spool_dir) == []  # a dry run records nothing, sends nothing
    ran = listfilter(example_config, "deliver", "--dry-run", "--sender", "alice@example.edu",
                     "--recipient", STUDENTS, input=POST.replace(b"Instructor Ivy <instructor", b"Alice <alice"))
    assert "rule poster: refuse: alice@example.edu is not allowed to post to" in ran.stdout
    assert "decision: bounced: " in ran.stdout


def test_deliver_exit_codes_are_the_mail_commands(example_config, synced, tmp_path):
    ran = listfilter(example_config, "deliver", "--sender", "a@example.org", "--recipient",
                     "nosuch@lists.example.edu", input=POST)
    assert ran.returncode == EX_NOUSER and ran.stderr.startswith("5.1.1 ")
    ran = listfilter(example_config, "deliver", "--snapshot", str(tmp_path / "none.sqlite"),  # given: not the config's
                     "--sender", "a@example.org", "--recipient", STUDENTS, input=POST)
    assert ran.returncode == EX_TEMPFAIL and ran.stderr.startswith("4.3.0 ") and "none.sqlite" in ran.stderr


def test_policy_answers_from_the_configs_snapshot(example_config, synced):
    request = (f"request=smtpd_access_policy\nprotocol_state=RCPT\nrecipient={STUDENTS}\n"
               "sender=alice@example.edu\nclient_address=192.0.2.1\n\n")
    ran = listfilter(example_config, "policy", input=request)
    assert ran.returncode == 0
    assert ran.stdout == (f"action=550 5.7.1 <alice@example.edu> may not post to <{STUDENTS}>;"
                          " only course instructor, ta may\n\n")


# ---------------------------------------------------------------- every command documents itself


def command_paths(group: click.Group = cli, prefix: tuple[str, ...] = ()):
    for name, command in sorted(group.commands.items()):
        yield (*prefix, name)
        if isinstance(command, click.Group):
            yield from command_paths(command, (*prefix, name))


COMMANDS = list(command_paths())


def test_every_command_is_listed():
    assert {" ".join(p) for p in COMMANDS} >= {
        "sync", "maps", "lists", "members", "check", "postfix-config", "db", "db upgrade", "db status", "log",
        "web", "web passwd", "bounces", "bounces clear", "deliver", "bounce", "policy"}


@pytest.mark.parametrize("path", COMMANDS, ids=" ".join)
def test_help(path, tmp_path):
    """Every command and subcommand answers --help with its documentation, exit 0, no config needed."""
    ran = listfilter(tmp_path / "absent.toml", *path, "--help")
    assert ran.returncode == 0, ran
    command = cli
    for name in path:
        command = command.commands[name]
    assert command.help, f"`listfilter {' '.join(path)}` has no docstring"
    if path[0] in ("deliver", "bounce", "policy"):  # the mail command's own help, forwarded
        assert ran.stdout.startswith(f"usage: listfilter-{path[0]} ")
    else:
        assert ran.stdout.startswith(f"Usage: listfilter {' '.join(path)} ")
        assert command.help.split("\n")[0].strip() in " ".join(ran.stdout.split())
    assert ran.stderr == ""


def test_the_group_help():
    ran = listfilter(None, "--help")
    assert ran.returncode == 0 and "Roster-driven mailing lists on Postfix." in ran.stdout
    for name in cli.commands:
        assert re.search(rf"^  {re.escape(name)}\s", ran.stdout, re.M), name


def test_sync_on_a_host_without_the_listfilter_user_runs_undivided(example_config, monkeypatch):
    """Trying the bundled example as root on a fresh machine: no listfilter user yet, nothing to set up."""
    import os
    import pwd

    real = pwd.getpwnam

    def getpwnam(name):
        if name == "listfilter":
            raise KeyError(name)
        return real(name)

    monkeypatch.setattr(os, "geteuid", lambda: 0)
    monkeypatch.setattr(pwd, "getpwnam", getpwnam)
    ran = listfilter(example_config, "sync", env={"LISTFILTER_SYNC_USER": None})
    assert ran.returncode == 0, ran.stderr
    assert "no 'listfilter' user on this host, so sync runs entirely as root" in ran.stderr
    assert (example_config.parent / "state" / "snapshot.sqlite").is_file()
    # a user asked for by name must exist
    ran = listfilter(example_config, "sync", "--user", "listfilter", env={"LISTFILTER_SYNC_USER": None})
    assert ran.returncode == 1 and "the user 'listfilter' does not exist" in ran.stderr, ran.stderr
