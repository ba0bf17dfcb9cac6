"""`listfilter check`: records that wait in the spool or that ingest set aside; a stopped Postfix; no syslog.

The Postfix and syslog checks read the host. Here they read what the config
and the test name: a Postfix config directory of the test's own (its
master.pid with a live or a dead process), a socket bound in a temporary
directory instead of /dev/log, and a private Postfix instance
(tests/harness/postfix.py) started and stopped.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from listfilter.cli import check as K
from listfilter.common import spool as SP

from ..conftest import EXAMPLE, REPO
from ..harness.postfix import (PostfixInstance, ensure_user, free_port, register_alternate_config_dir,
                               traversable_tmpdir, unregister_alternate_config_dir)
from .runner import listfilter


@pytest.mark.parametrize("area, what", [(SP.EVENTS, "event"), (SP.BOUNCES, "bounce record")])
def test_an_hour_old_record_in_the_spool_is_a_problem(example_config, area, what):
    assert listfilter(example_config, "sync").returncode == 0
    assert listfilter(example_config, "db", "upgrade").returncode == 0
    spool = example_config.parent / "state" / "spool"
    record = spool / area / "0123456789abcdef0123456789abcdef.json"
    record.parent.mkdir(parents=True, exist_ok=True)
    record.write_text("{}")
    ran = listfilter(example_config, "check")
    assert f"ok       spool: 1 {what} waiting in {spool / area}, oldest 0 min" in ran.stdout, ran.stdout
    old = time.time() - 7200
    os.utime(record, (old, old))
    ran = listfilter(example_config, "check")
    assert ran.returncode == 1
    assert f"PROBLEM  spool: 1 {what} waiting in {spool / area}, oldest 120 min (is sync running?)" in ran.stdout


@pytest.mark.parametrize("area, what", [(SP.EVENTS, "event"), (SP.BOUNCES, "bounce record")])
def test_a_record_set_aside_is_a_problem(example_config, area, what):
    assert listfilter(example_config, "sync").returncode == 0
    assert listfilter(example_config, "db", "upgrade").returncode == 0
    bad = example_config.parent / "state" / "spool" / area / SP.BAD
    bad.mkdir(parents=True, exist_ok=True)
    (bad / "x.json").write_text("junk")
    ran = listfilter(example_config, "check")
    assert ran.returncode == 1
    assert f"PROBLEM  spool: 1 malformed {what} file in {bad}" in ran.stdout, ran.stdout


# ---------------------------------------------------------------- Postfix and syslog

CSV_ROSTER = f'source = "csv"\ncsv = "{EXAMPLE / "roster.csv"}"'
STOPPED = ("start it with `service postfix start` (or `systemctl start postfix`), not `postfix start`,"
           " which skips Debian's chroot set-up (hosts, resolv.conf)")
INSTALL_SYSLOG = "install one (apt-get install rsyslog), or run systemd-journald, which provides {}"


@pytest.fixture
def short_dir():
    """A directory under /tmp: a socket's path must fit in 108 bytes, and pytest's tmp_path may not."""
    with tempfile.TemporaryDirectory(prefix="lf-check-", dir="/tmp") as d:
        yield Path(d)


@pytest.fixture
def syslog_socket(short_dir, monkeypatch):
    """A datagram socket bound in a temporary directory, standing in for a syslog daemon's /dev/log."""
    path = short_dir / "log"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(str(path))
        monkeypatch.setattr(K, "SYSLOG_SOCKET", path)
        yield path


@contextlib.contextmanager
def master_process(directory: Path):
    """A live process called ``master``, as Postfix's is: sleep(1) run through a link of that name."""
    exe = directory / "master"
    exe.symlink_to(shutil.which("sleep"))
    proc = subprocess.Popen([str(exe), "600"])
    try:
        deadline = time.monotonic() + 10
        while Path(f"/proc/{proc.pid}/comm").read_text() != "master\n":  # until the child has exec'd
            assert time.monotonic() < deadline
            time.sleep(0.01)
        yield proc.pid
    finally:
        proc.kill()
        proc.wait()


def fake_postfix(base: Path, *main_cf: str) -> tuple[Path, Path]:
    """A Postfix config directory of our own, its queue directory under ``base``: (config_directory, master.pid)."""
    etc = base / "etc"
    etc.mkdir()
    (etc / "main.cf").write_text("\n".join([f"queue_directory = {base / 'spool'}", *main_cf]) + "\n")
    (etc / "master.cf").write_text("")  # postconf warns, and takes a second, without one
    pid_dir = base / "spool" / "pid"
    pid_dir.mkdir(parents=True)
    return etc, pid_dir / "master.pid"


def host_config(make_config, postfix: str) -> Path:
    return make_config(postfix=f'map_type = "texthash"\nreload = false\n{postfix}', roster=CSV_ROSTER)


def host_lines(stdout: str) -> list[str]:
    return [line for line in stdout.splitlines() if line.split(":")[0].split()[-1] in ("postfix", "syslog")]


def test_master_pid_file(tmp_path):
    pid_file = tmp_path / "master.pid"
    assert K.master_running(pid_file) == (False, f"no {pid_file}")
    with master_process(tmp_path) as pid:
        pid_file.write_text(f"{pid:32d}\n")  # as master(8) writes it
        assert K.master_running(pid_file) == (True, f"master process {pid}")
    # `postfix stop` leaves the file behind
    assert K.master_running(pid_file) == (False, f"master process {pid} of {pid_file} has ended")
    pid_file.write_text(f"{os.getpid()}\n")  # the old pid, now another program's
    running, detail = K.master_running(pid_file)
    assert running is False and detail.startswith(f"{pid_file} names process {os.getpid()}, which is "), detail
    assert detail.endswith(", not Postfix's master")
    pid_file.write_text("")
    assert K.master_running(pid_file) == (False, f"{pid_file} holds no process id")


def test_syslog_socket(short_dir):
    path = short_dir / "log"
    assert K.syslog_unreachable(path) == f"{path} does not exist"
    path.write_text("")
    assert K.syslog_unreachable(path) == f"{path} is not a socket"
    path.unlink()
    for kind in (socket.SOCK_DGRAM, socket.SOCK_STREAM):  # rsyslog and journald listen on a datagram socket
        with socket.socket(socket.AF_UNIX, kind) as sock:
            sock.bind(str(path))
            if kind == socket.SOCK_STREAM:
                sock.listen()
            assert K.syslog_unreachable(path) is None, kind
            link = short_dir / "dev-log"  # journald's /dev/log is a link to /run/systemd/journal/dev-log
            link.symlink_to(path)
            assert K.syslog_unreachable(link) is None
            link.unlink()
        # the daemon gone, its socket file left behind
        assert K.syslog_unreachable(path) == f"nothing listens on {path} (Connection refused)"
        path.unlink()


def test_a_stopped_postfix_and_no_syslog_are_problems(make_config, short_dir, monkeypatch):
    monkeypatch.setattr(K, "SYSLOG_SOCKET", short_dir / "log")
    etc, pid_file = fake_postfix(short_dir)
    ran = listfilter(host_config(make_config, f'config_directory = "{etc}"'), "check")
    assert ran.returncode == 1
    assert host_lines(ran.stdout) == [
        f"PROBLEM  postfix: not running (no {pid_file}): {STOPPED}",
        f"PROBLEM  syslog: {short_dir / 'log'} does not exist: no syslog daemon: Postfix's and listfilter's log"
        f" lines are lost, no message can be traced; {INSTALL_SYSLOG.format(short_dir / 'log')}"], ran.stdout


def test_a_running_postfix_and_syslog_are_ok(make_config, short_dir, syslog_socket):
    etc, pid_file = fake_postfix(short_dir)
    (short_dir / "mail.log").write_text("")
    (short_dir / "mail.log").chmod(0o644)
    path = host_config(make_config, f'config_directory = "{etc}"\nlog_file = "{short_dir / "mail.log"}"')
    assert listfilter(path, "sync").returncode == 0
    with master_process(short_dir) as pid:
        pid_file.write_text(f"{pid:32d}\n")
        ran = listfilter(path, "check")
        assert host_lines(ran.stdout) == [f"ok       postfix: running (master process {pid})",
                                          f"ok       syslog: {syslog_socket} accepts log lines"], ran.stdout
        assert ran.returncode == 0, ran.stdout  # and so every line is ok
    ran = listfilter(path, "check")
    assert ran.returncode == 1
    assert f"PROBLEM  postfix: not running (master process {pid} of {pid_file} has ended): {STOPPED}" in ran.stdout


def test_postfix_logging_to_a_file_still_leaves_listfilter_without_syslog(make_config, short_dir, monkeypatch):
    monkeypatch.setattr(K, "SYSLOG_SOCKET", short_dir / "log")
    etc, _ = fake_postfix(short_dir, "maillog_file = /var/log/postfix.log")
    ran = listfilter(host_config(make_config, f'config_directory = "{etc}"'), "check")
    assert (f"PROBLEM  syslog: {short_dir / 'log'} does not exist: Postfix logs to /var/log/postfix.log itself"
            f" (maillog_file), but listfilter's own lines need a syslog daemon;"
            f" {INSTALL_SYSLOG.format(short_dir / 'log')}") in ran.stdout, ran.stdout


def test_postfix_logging_to_a_file_and_syslog(make_config, short_dir, syslog_socket):
    etc, _ = fake_postfix(short_dir, "maillog_file = /var/log/postfix.log")
    ran = listfilter(host_config(make_config, f'config_directory = "{etc}"'), "check")
    assert (f"ok       syslog: {syslog_socket} accepts log lines; Postfix logs to /var/log/postfix.log itself"
            " (maillog_file)") in ran.stdout, ran.stdout


def log_line(stdout: str) -> str:
    [line] = [line for line in stdout.splitlines() if "postfix log:" in line]
    return line


def test_the_log_the_mail_side_reads_is_postfixs_and_readable(make_config, short_dir, syslog_socket):
    """[postfix] log_file: what a retry after a killed delivery reads to learn what Postfix took."""
    ensure_user("listfilter")
    log = short_dir / "mail.log"
    etc, _ = fake_postfix(short_dir)
    path = host_config(make_config, f'config_directory = "{etc}"\nlog_file = "{log}"')
    assert log_line(listfilter(path, "check").stdout) == (
        f"PROBLEM  postfix log: {log}: No such file or directory (is syslog writing the mail facility there?"
        " Otherwise set postfix.log_file)")
    log.write_text("")
    log.chmod(0o640)  # root:root 0640, as Debian's root:adm
    assert log_line(listfilter(path, "check").stdout) == (
        f"PROBLEM  postfix log: {log} is not readable by deliver (listfilter:listfilter): a retry after a killed"
        ' delivery cannot tell what Postfix took (set postfix.log_group = "root" and update master.cf from'
        " listfilter postfix-config)")
    # pipe(8) gives deliver one group: being a member of the log's group is not enough
    subprocess.run(["usermod", "-a", "-G", "root", "listfilter"], check=True)
    try:
        assert "PROBLEM  postfix log" in log_line(listfilter(path, "check").stdout)
    finally:
        subprocess.run(["gpasswd", "-d", "listfilter", "root"], check=True, capture_output=True)
    grouped = make_config(postfix=f'map_type = "texthash"\nreload = false\nconfig_directory = "{etc}"\n'
                                  f'log_file = "{log}"\nlog_group = "root"', roster=CSV_ROSTER, name="grouped.toml")
    assert log_line(listfilter(grouped, "check").stdout) == (
        f"ok       postfix log: {log} is readable by deliver (listfilter:root)")
    log.chmod(0o644)
    assert log_line(listfilter(path, "check").stdout) == (
        f"ok       postfix log: {log} is readable by deliver (listfilter:listfilter)")
    # Postfix logging to a file of its own, and the config not saying so
    (short_dir / "other").mkdir()
    etc2, _ = fake_postfix(short_dir / "other", f"maillog_file = {short_dir / 'postfix.log'}")
    path = host_config(make_config, f'config_directory = "{etc2}"\nlog_file = "{log}"')
    assert log_line(listfilter(path, "check").stdout) == (
        f"PROBLEM  postfix log: Postfix logs to {short_dir / 'postfix.log'} (maillog_file), but postfix.log_file is"
        f' {log}: set log_file = "{short_dir / "postfix.log"}"')


def test_postfix_not_installed(make_config, tmp_path):
    ran = listfilter(host_config(make_config, f'command_directory = "{tmp_path}"'), "check")
    assert ran.returncode == 1
    assert (f"PROBLEM  postfix: not installed: {tmp_path / 'postconf'} not found (apt-get install postfix,"
            " or set postfix.command_directory)") in ran.stdout, ran.stdout


def test_postfix_without_main_cf(make_config, tmp_path):
    ran = listfilter(host_config(make_config, f'config_directory = "{tmp_path / "nowhere"}"'), "check")
    assert ran.returncode == 1
    assert (f"PROBLEM  postfix: cannot read main.cf: /usr/sbin/postconf -c {tmp_path / 'nowhere'} queue_directory"
            f" process_id_directory maillog_file failed: /usr/sbin/postconf: fatal: open"
            f" {tmp_path / 'nowhere'}/main.cf: No such file or directory") in ran.stdout, ran.stdout


@pytest.mark.integration
@pytest.mark.skipif(os.geteuid() != 0, reason="Postfix's master runs as root")
def test_a_private_postfix_running_then_stopped(syslog_socket):
    """The real thing: a private instance, seen by root (master.pid) and by the listfilter user (postqueue)."""
    ensure_user("listfilter")
    with traversable_tmpdir(prefix="listfilter-check-") as base:
        pf = PostfixInstance(base / "postfix", relay_port=free_port())
        config = base / "lists.toml"
        text = (EXAMPLE / "lists.toml").read_text()
        text = text.replace('state_dir = "state"', f'state_dir = "{base / "state"}"')
        text = text.replace("[postfix]\n", f'[postfix]\nconfig_directory = "{pf.config_dir}"\n')
        config.write_text(text.replace('csv = "roster.csv"', f'csv = "{EXAMPLE / "roster.csv"}"'))
        config.chmod(0o644)

        def as_listfilter() -> str:
            proc = subprocess.run(["runuser", "-u", "listfilter", "--", sys.executable, "-m", "listfilter",
                                   "--config", str(config), "check"], cwd=REPO, capture_output=True, text=True,
                                  env={**os.environ, "PYTHONPATH": str(REPO)}, timeout=120)
            assert proc.stderr == "", proc.stderr
            return next(line for line in proc.stdout.splitlines() if line.split(":")[0].endswith(" postfix"))

        pf.start()
        try:
            pid = int((pf.queue_dir / "pid" / "master.pid").read_text())
            ran = listfilter(config, "check")
            assert host_lines(ran.stdout) == [
                f"ok       postfix: running (master process {pid})",
                f"ok       syslog: {syslog_socket} accepts log lines; Postfix logs to {pf.maillog_path} itself"
                " (maillog_file)"], ran.stdout
            assert as_listfilter() == "ok       postfix: running (/usr/sbin/postqueue reached its showq service)"
        finally:
            pf.stop()
        ran = listfilter(config, "check")
        assert (f"PROBLEM  postfix: not running (master process {pid} of {pf.queue_dir}/pid/master.pid has ended):"
                f" {STOPPED}") in ran.stdout, ran.stdout
        # postqueue takes -c DIR from a user only for a directory main.cf names; stop() took it out
        register_alternate_config_dir(pf.config_dir)
        try:
            assert as_listfilter() == f"PROBLEM  postfix: not running (/usr/sbin/postqueue: mail system is down): {STOPPED}"
        finally:
            unregister_alternate_config_dir(pf.config_dir)


def test_milter_unreachable(short_dir):
    path = short_dir / "milter"
    assert K.milter_unreachable(f"unix:{path}") == f"unix:{path}: No such file or directory"
    port = free_port()
    assert K.milter_unreachable(f"inet:127.0.0.1:{port}") == f"inet:127.0.0.1:{port}: Connection refused"
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as unix, socket.create_server(("127.0.0.1", port)):
        unix.bind(str(path))
        unix.listen()
        assert K.milter_unreachable(f"unix:{path}") is None
        assert K.milter_unreachable(f"inet:127.0.0.1:{port}") is None
        assert K.milter_unreachable(f"inet:[127.0.0.1]:{port}") is None
    assert K.milter_unreachable(f"unix:{path}") == f"unix:{path}: Connection refused"  # the socket file left behind


def verify_lines(stdout: str) -> list[str]:
    return [line for line in stdout.splitlines() if line.split(":")[0].endswith("verify milters")]


def test_unreachable_inbound_milters_are_a_problem_for_lists_that_require_authentication(make_config, short_dir):
    from ..conftest import COURSE_LISTS

    path, port = short_dir / "opendkim", free_port()
    verify = f'[verify]\nopendkim = "unix:{path}"\nopendmarc = "inet:127.0.0.1:{port}"\n'
    config = make_config(COURSE_LISTS + verify, roster=CSV_ROSTER)
    ran = listfilter(config, "check")
    assert verify_lines(ran.stdout) == [
        f"PROBLEM  verify milters: OpenDKIM at unix:{path}: No such file or directory; OpenDMARC at"
        f" inet:127.0.0.1:{port}: Connection refused: smtpd defers every post (verify.default_action = tempfail)"
        " to enrolled, students, testing (require_authenticated); start the milters (docs/deliverability.md)"], ran.stdout
    assert ran.returncode == 1
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as unix, socket.create_server(("127.0.0.1", port)):
        unix.bind(str(path))
        unix.listen()
        ran = listfilter(config, "check")
    assert verify_lines(ran.stdout) == [f"ok       verify milters: OpenDKIM at unix:{path}, OpenDMARC at"
                                        f" inet:127.0.0.1:{port} accept connections"], ran.stdout
    # without [verify] no list requires it, and there is no line
    assert verify_lines(listfilter(make_config(COURSE_LISTS, roster=CSV_ROSTER), "check").stdout) == []


OPTIN_LIST = """
[domains."lists.example.edu"]
course = "CS 199"

[lists.jobs]
members = { optin = true, eligible = "anyone" }
posters = ["prof@example.edu"]
"""


def key_line(stdout: str) -> str:
    [line] = [line for line in stdout.splitlines() if "token key:" in line]
    return line


def test_the_token_key_exists_is_private_and_deliver_reads_it(make_config, tmp_path):
    """Lists that confirm joins or hold posts need the key: deliver (pipe(8): its user and own group) reads it."""
    ensure_user("listfilter")
    path = make_config(OPTIN_LIST, roster=CSV_ROSTER)
    key = tmp_path / "state" / "token-key"
    assert key_line(listfilter(path, "check").stdout) == (
        f"PROBLEM  token key: {key}: No such file or directory: confirmations and held-post decisions defer until"
        " `listfilter sync` makes it")
    key.parent.mkdir(parents=True, exist_ok=True)
    key.write_text("00" * 32 + "\n")
    key.chmod(0o644)
    assert "is readable by every local user (mode 0644)" in key_line(listfilter(path, "check").stdout)
    key.chmod(0o640)  # root:root
    assert key_line(listfilter(path, "check").stdout).startswith(
        f"PROBLEM  token key: {key} is not readable by deliver (listfilter)")
    shutil.chown(key, "listfilter")
    assert key_line(listfilter(path, "check").stdout) == (
        f"ok       token key: {key}: readable by deliver, for 1 list with confirmations or held posts")
    roster_only = make_config(roster=CSV_ROSTER, name="roster-only.toml")
    assert "token key" not in listfilter(roster_only, "check").stdout  # no list needs one
