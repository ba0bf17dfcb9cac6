"""`listfilter sync`: expected output, real postmap, atomicity, no-op re-sync, dry run, roster down."""

from __future__ import annotations

import fcntl
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from listfilter.cli import check as K
from listfilter.common import snapshot as S
from listfilter.common.errors import EX_CONFIG
from listfilter.sync import config as C

from ..cli.runner import ENV, listfilter
from ..conftest import REPO

EXPECTED = REPO / "tests" / "expected" / "example"
POSTMAP = shutil.which("postmap") or "/usr/sbin/postmap"


def state_files(state: Path) -> dict[str, tuple[int, int, bytes]]:
    """(inode, mtime_ns, content) of every file under the state directory (not the lock, not the last result)."""
    return {str(p.relative_to(state)): (p.stat().st_ino, p.stat().st_mtime_ns, p.read_bytes())
            for p in sorted(state.rglob("*")) if p.is_file() and p.name not in ("sync.lock", "last-sync.json")}


def test_example_sync_matches_expected_files(example_config):
    proc = listfilter(example_config, "sync", "-v")
    assert proc.returncode == 0, proc.stderr
    assert "sync: 8 lists, 24 memberships: updated snapshot, map domains, map recipients, map transport, map virtual" \
        in proc.stdout
    map_dir = example_config.parent / "state" / "postfix"
    for name in ("domains", "recipients", "transport", "virtual"):
        got = (map_dir / name).read_text()
        assert got == (EXPECTED / name).read_text(), name
    summary = [l for l in proc.stdout.splitlines() if l.endswith(")") and not l.startswith("sync:")]
    assert summary == (EXPECTED / "summary.txt").read_text().splitlines()


def test_snapshot_contents(example_config):
    assert listfilter(example_config, "sync").returncode == 0
    config = C.load(example_config)
    with S.Snapshot(config.site.snapshot_path) as snap:
        students = snap.get_list("Students@Lists.Example.EDU")
        assert students.display_name == "CS 199 Students"
        assert students.reply_to == "staff@lists.example.edu"
        assert students.owners == ("instructor@example.edu",)
        assert students.member_count == 6
        assert snap.may_post("students@lists.example.edu", "TA.One@example.edu")
        assert not snap.may_post("students@lists.example.edu", "alice@example.edu")
        assert snap.get_list("nobody@lists.example.edu") is None
        assert [e for e, _ in snap.members("enrolled@lists.example.edu")] == [
            "alice@example.edu", "bob@example.edu", "Carol@Example.edu"]
        # what a retry after a kill reads to ask Postfix about the batch in flight (mail/handoff.py)
        settings = snap.settings()
        assert (settings["postfix_log"], settings["postqueue"]) == ("/var/log/mail.log", "/usr/sbin/postqueue")


def test_postfix_log_and_postqueue_come_from_the_config(make_config, tmp_path):
    path = make_config(postfix='map_type = "texthash"\nreload = false\n'
                               'command_directory = "/opt/postfix/sbin"\nlog_file = "/var/log/postfix.log"',
                       roster=f'source = "csv"\ncsv = "{REPO / "docs/example/roster.csv"}"')
    assert listfilter(path, "sync").returncode == 0
    with S.Snapshot(C.load(path).site.snapshot_path) as snap:
        settings = snap.settings()
    assert (settings["postfix_log"], settings["postqueue"]) == ("/var/log/postfix.log", "/opt/postfix/sbin/postqueue")


@pytest.mark.integration
def test_maps_built_with_real_postmap(make_config, tmp_path, host_postfix_config):
    assert Path(POSTMAP).exists(), "postmap is required (apt-get install postfix)"
    path = make_config(postfix=f'map_type = "hash"\nreload = false\ncommand_directory = "{Path(POSTMAP).parent}"',
                       roster=f'source = "csv"\ncsv = "{REPO / "docs/example/roster.csv"}"')
    proc = listfilter(path, "sync")
    assert proc.returncode == 0, proc.stderr
    map_dir = tmp_path / "state" / "postfix"
    assert sorted(p.name for p in map_dir.iterdir()) == [
        "domains", "domains.db", "recipients", "recipients.db", "transport", "transport.db", "virtual", "virtual.db"]

    def q(key, table):
        r = subprocess.run([POSTMAP, "-q", key, f"hash:{map_dir / table}"], capture_output=True, text=True)
        return r.stdout.strip() if r.returncode == 0 else None

    assert q("students@lists.example.edu", "transport") == "listfilter:"
    assert q("students-bounces@lists-dev.example.edu", "transport") == "listfilter-bounce:"
    assert q("staff-request@lists.example.edu", "recipients") == "OK"
    assert q("stranger@lists.example.edu", "recipients") is None
    assert q("students-owner@lists.example.edu", "virtual") == "prof@example.edu"
    assert q("lists-dev.example.edu", "domains") == "OK"
    # an unchanged re-sync rebuilds nothing
    before = state_files(tmp_path / "state")
    proc = listfilter(path, "sync")
    assert proc.returncode == 0 and "unchanged" in proc.stdout
    assert state_files(tmp_path / "state") == before


def sync_line(stdout: str) -> tuple[int, int, str]:
    """(lists, memberships, what changed) from sync's last line, which must have exactly that form."""
    m = re.fullmatch(r"sync: (\d+) lists, (\d+) memberships: (.+?)(?:; postfix reloaded)? \(\d+\.\d\d s\)",
                     stdout.splitlines()[-1])
    assert m, stdout
    return int(m.group(1)), int(m.group(2)), m.group(3)


def _stub_postfix(tmp_path: Path) -> tuple[Path, Path]:
    """A command directory whose `postfix` records its calls; postmap is the real one."""
    bindir = tmp_path / "bin"
    bindir.mkdir()
    calls = tmp_path / "postfix-calls"
    (bindir / "postfix").write_text(f"#!/bin/sh\necho \"$*\" >> {calls}\n")
    (bindir / "postfix").chmod(0o755)
    (bindir / "postmap").symlink_to(POSTMAP)
    return bindir, calls


@pytest.mark.integration
def test_reload_only_when_a_map_changed(make_config, tmp_path, host_postfix_config):
    bindir, calls = _stub_postfix(tmp_path)
    csv = tmp_path / "roster.csv"
    shutil.copy(REPO / "docs/example/roster.csv", csv)
    path = make_config(postfix=f'map_type = "hash"\ncommand_directory = "{bindir}"',
                       roster=f'source = "csv"\ncsv = "{csv}"')
    first = listfilter(path, "sync")
    assert first.returncode == 0
    assert calls.read_text() == "status\nreload\n"
    before = state_files(tmp_path / "state")
    proc = listfilter(path, "sync")
    assert proc.returncode == 0 and "unchanged" in proc.stdout and "reloaded" not in proc.stdout
    assert calls.read_text() == "status\nreload\n"
    assert state_files(tmp_path / "state") == before
    # a roster change alters members only: new snapshot, same maps, no reload
    with csv.open("a") as fh:
        fh.write("zoe@example.edu,Zoe New,student,true,current,CS 199\n")
    proc = listfilter(path, "sync")
    # zoe is a student: one more member of students@ and enrolled@, on both domains
    assert sync_line(proc.stdout) == (8, sync_line(first.stdout)[1] + 4, "updated snapshot"), proc.stdout
    assert "map " not in proc.stdout and calls.read_text() == "status\nreload\n"
    after = state_files(tmp_path / "state")
    assert after["snapshot.sqlite"][0] != before["snapshot.sqlite"][0]  # replaced by rename
    assert {k: v for k, v in after.items() if k != "snapshot.sqlite"} == \
           {k: v for k, v in before.items() if k != "snapshot.sqlite"}
    # a new list changes the maps: reload once more
    path.write_text(path.read_text() + '\n[lists.extra]\nmembers = { emails = ["x@example.edu"] }\nposters = []\n')
    proc = listfilter(path, "sync")
    assert "map transport" in proc.stdout and "postfix reloaded" in proc.stdout
    assert calls.read_text().split() == ["status", "reload"] * 2


@pytest.mark.integration
def test_failed_reload_is_retried_by_the_next_sync(make_config, tmp_path, host_postfix_config):
    bindir, calls = _stub_postfix(tmp_path)
    (bindir / "postfix").write_text(f'#!/bin/sh\necho "$*" >> {calls}\n'
                                    f'[ "$1" = reload ] && [ -e {tmp_path / "BROKEN"} ] && exit 1\nexit 0\n')
    (tmp_path / "BROKEN").touch()
    path = make_config(postfix=f'map_type = "hash"\ncommand_directory = "{bindir}"',
                       roster=f'source = "csv"\ncsv = "{REPO / "docs/example/roster.csv"}"')
    proc = listfilter(path, "sync")
    assert proc.returncode == 1 and "postfix reload failed" in proc.stderr
    (tmp_path / "BROKEN").unlink()
    proc = listfilter(path, "sync")  # maps unchanged now, but the reload is still owed
    assert proc.returncode == 0 and "postfix reloaded" in proc.stdout, proc
    proc = listfilter(path, "sync")
    assert "reloaded" not in proc.stdout
    assert calls.read_text().split() == ["status", "reload"] * 2


@pytest.mark.integration
def test_postfix_not_running_is_a_warning(make_config, tmp_path, host_postfix_config):
    bindir, calls = _stub_postfix(tmp_path)
    (bindir / "postfix").write_text(f'#!/bin/sh\necho "$*" >> {calls}\n[ "$1" = status ] && exit 1\nexit 0\n')
    path = make_config(postfix=f'map_type = "hash"\ncommand_directory = "{bindir}"',
                       roster=f'source = "csv"\ncsv = "{REPO / "docs/example/roster.csv"}"')
    proc = listfilter(path, "sync")
    assert proc.returncode == 0
    assert proc.stderr == "listfilter: warning: Postfix is not running; it will read the new maps when it starts\n"
    assert calls.read_text() == "status\n"


def test_empty_roster_is_refused(example_config):
    assert listfilter(example_config, "sync").returncode == 0
    state = example_config.parent / "state"
    before = state_files(state)
    roster = example_config.parent / "roster.csv"
    roster.write_text(roster.read_text().splitlines()[0] + "\n")
    proc = listfilter(example_config, "sync")
    assert proc.returncode == 1
    assert "the roster returned no enrollments at all; refusing to empty every list" in proc.stderr
    assert state_files(state) == before


def test_snapshot_replaced_atomically(example_config):
    assert listfilter(example_config, "sync").returncode == 0
    config = C.load(example_config)
    reader = S.Snapshot(config.site.snapshot_path)  # a deliver process mid-message
    old_inode = config.site.snapshot_path.stat().st_ino
    roster = example_config.parent / "roster.csv"
    roster.write_text(roster.read_text() + "zoe@example.edu,Zoe New,student,true,current,CS 199\n")
    assert listfilter(example_config, "sync").returncode == 0
    assert config.site.snapshot_path.stat().st_ino != old_inode
    # the open reader still sees the complete old snapshot; a new one sees the new
    assert reader.get_list("enrolled@lists.example.edu").member_count == 3
    assert S.Snapshot(config.site.snapshot_path).get_list("enrolled@lists.example.edu").member_count == 4
    leftovers = [p.name for p in config.site.state_dir.rglob("*") if p.name.startswith(".")]
    assert leftovers == []


def test_dry_run_writes_nothing(example_config):
    state = example_config.parent / "state"
    proc = listfilter(example_config, "sync", "--dry-run")
    assert proc.returncode == 0, proc.stderr
    assert not state.exists() or not any(p.is_file() and p.name != "sync.lock" for p in state.rglob("*"))
    assert f"+++ {state.resolve() / 'postfix' / 'transport'}" in proc.stdout
    assert "+students@lists.example.edu\tlistfilter:" in proc.stdout
    assert "+students@lists.example.edu: 6 members, 2 posters (course instructor, ta)" in proc.stdout
    assert proc.stdout.rstrip().endswith("dry run: would update snapshot, domains, recipients, transport, virtual")
    # after a real sync, a dry run shows a change as a diff and still writes nothing
    assert listfilter(example_config, "sync").returncode == 0
    before = state_files(state)
    roster = example_config.parent / "roster.csv"
    roster.write_text(roster.read_text().replace("bob@example.edu,Bob Brown,student,true",
                                                 "bob@example.edu,Bob Brown,student,false"))
    proc = listfilter(example_config, "sync", "--dry-run")
    assert "-enrolled@lists.example.edu: 3 members" in proc.stdout
    assert "+enrolled@lists.example.edu: 2 members" in proc.stdout
    assert "transport" not in proc.stdout.split("dry run:")[0]  # maps unchanged: no map diff
    assert proc.stdout.rstrip().endswith("dry run: would update snapshot")
    assert state_files(state) == before


@pytest.mark.integration
def test_roster_down_leaves_snapshot_and_maps_intact(pg_dsn, make_config, tmp_path):
    path = make_config(roster=f'dsn = "{pg_dsn}"')
    proc = listfilter(path, "sync")
    assert proc.returncode == 0, proc.stderr
    before = state_files(tmp_path / "state")
    assert set(before) == {"snapshot.sqlite", "postfix/domains", "postfix/recipients", "postfix/transport",
                           "postfix/virtual"}
    path.write_text(path.read_text().replace(pg_dsn, "postgresql://postgres@127.0.0.1:1/gone?connect_timeout=2"))
    proc = listfilter(path, "sync")
    assert proc.returncode == 1
    assert proc.stderr.startswith("listfilter: roster unavailable: roster database: ")
    assert proc.stderr.rstrip().endswith("nothing was changed")
    assert len(proc.stderr.strip().splitlines()) == 1 and "Traceback" not in proc.stderr
    assert state_files(tmp_path / "state") == before
    # an invalid config likewise leaves everything as it was
    path.write_text(path.read_text() + "\n[lists.broken]\nmembers = {}\nposters = []\n")
    proc = listfilter(path, "sync")
    assert proc.returncode == EX_CONFIG and "lists.broken.members" in proc.stderr
    assert state_files(tmp_path / "state") == before


def test_overlapping_syncs_are_serialised(example_config):
    state = example_config.parent / "state"
    state.mkdir()
    fd = os.open(state / "sync.lock", os.O_RDWR | os.O_CREAT, 0o644)
    fcntl.flock(fd, fcntl.LOCK_EX)  # another sync is running
    try:
        proc = subprocess.Popen([sys.executable, "-m", "listfilter", "--config", str(example_config), "sync"],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env={**os.environ, **ENV})
        time.sleep(1.5)
        assert proc.poll() is None, "sync did not wait for the lock"
        assert not (state / "snapshot.sqlite").exists()
    finally:
        os.close(fd)
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    assert (state / "snapshot.sqlite").exists()


def test_lists_members_and_maps_commands(example_config):
    import json

    proc = listfilter(example_config, "lists", "--json")
    assert proc.returncode == 0, proc.stderr
    lists = {l["address"]: l for l in json.loads(proc.stdout)}
    assert lists["staff@lists.example.edu"]["members"] == 2
    assert lists["students@lists.example.edu"]["posters_rule"] == "course instructor, ta"
    proc = listfilter(example_config, "members", "enrolled@lists.example.edu")
    assert proc.stdout.splitlines() == ["alice@example.edu\tAlice Liddell\troster", "bob@example.edu\tBob Brown\troster",
                                        "Carol@Example.edu\tCarol Chen\troster"]
    proc = listfilter(example_config, "members", "staff", "--json")
    assert set(json.loads(proc.stdout)) == {"staff@lists.example.edu", "staff@lists-dev.example.edu"}
    proc = listfilter(example_config, "members", "nope")
    assert proc.returncode == 1 and "no list 'nope'" in proc.stderr
    proc = listfilter(example_config, "maps")
    assert "testing-request@lists.example.edu\tOK" in proc.stdout
    assert not (example_config.parent / "state" / "snapshot.sqlite").exists()


def test_check_reports_stale_state(example_config):
    import json

    proc = listfilter(example_config, "check", "--json")
    report = json.loads(proc.stdout)
    assert proc.returncode == 1 and report["ok"] is False
    checks = {c["name"]: c["ok"] for c in report["checks"]}
    host = {name: checks.pop(name, True) for name in K.HOST_CHECKS}  # this host's: tests/cli/test_check.py
    assert checks == {"config": True, "roster": True, "snapshot": False, "up to date": False}
    listfilter(example_config, "sync")
    proc = listfilter(example_config, "check")
    assert proc.returncode == (0 if all(host.values()) else 1), proc.stdout
    assert "ok       up to date: installed maps and snapshot match the roster" in proc.stdout


def test_quiet_sync_prints_nothing_on_success(example_config):
    proc = listfilter(example_config, "sync", "--quiet")
    assert proc.returncode == 0 and proc.stdout == "" and proc.stderr == ""
    assert (example_config.parent / "state" / "snapshot.sqlite").exists()


def test_sync_prunes_old_delivery_records_and_notice_counts(example_config):
    spool = example_config.parent / "state" / "spool"
    old, new = spool / "sent" / "old.json", spool / "sent" / "new.json"
    day = spool / "notices" / "2026-01-01"
    for path in (old, new, day / "abc"):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("{}")
    eight_days_ago = time.time() - 8 * 86400
    os.utime(old, (eight_days_ago, eight_days_ago))
    os.utime(day, (eight_days_ago, eight_days_ago))
    assert listfilter(example_config, "sync").returncode == 0
    assert not old.exists() and new.exists() and not day.exists()


MAIL_COMMANDS = ("listfilter-deliver", "listfilter-bounce", "listfilter-policy")


def master_programs(stdout: str) -> list[str]:
    return [w.split("=", 1)[1] for w in stdout.split() if w.startswith("argv=")]


def test_postfix_config_names_the_running_programs_siblings(example_config, tmp_path):
    """Not whatever `listfilter` is first on $PATH: the one running (argv[0]), so the process is the point."""
    venv_bin = Path(sys.executable).parent
    link_dir = tmp_path / "bin"
    link_dir.mkdir()
    for name in ("listfilter", *MAIL_COMMANDS):
        (link_dir / name).symlink_to(venv_bin / name)
    proc = subprocess.run([str(link_dir / "listfilter"), "--config", str(example_config), "postfix-config"],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    snapshot = example_config.parent.resolve() / "state" / "snapshot.sqlite"
    assert f"argv={link_dir}/listfilter-deliver --snapshot {snapshot} --spool {snapshot.parent / 'spool'} --sender" \
        in proc.stdout
    assert master_programs(proc.stdout) == [str(link_dir / n) for n in MAIL_COMMANDS]


def test_postfix_config_finds_the_mail_commands_behind_a_lone_symlink(example_config, tmp_path):
    """/usr/local/bin/listfilter linked alone: master.cf must name commands that exist."""
    venv_bin = Path(sys.executable).parent
    (tmp_path / "bin").mkdir()
    (tmp_path / "bin" / "listfilter").symlink_to(venv_bin / "listfilter")
    proc = subprocess.run([str(tmp_path / "bin" / "listfilter"), "--config", str(example_config), "postfix-config"],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    programs = master_programs(proc.stdout)
    assert [Path(p).name for p in programs] == list(MAIL_COMMANDS)
    assert all(Path(p).is_file() and os.access(p, os.X_OK) for p in programs), programs
