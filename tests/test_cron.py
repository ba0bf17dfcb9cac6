"""cron/: the crontab line and the systemd service run `listfilter sync` with and without /etc/listfilter/env.

Each file is run the way its runner would: the crontab's command under
/bin/sh (dash on Debian, and dash itself wherever it is installed), with the
variables the crontab sets and the ones cron gives every job; the service's
ExecStart with its Environment= and EnvironmentFile= as systemd reads them.
The env file's path and the program's are swapped for temporary ones: the
program is a stub that records its arguments and its environment.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest

from .conftest import REPO

CRON = REPO / "cron"
ENV_FILE = "/etc/listfilter/env"
PROGRAM = "/opt/listfilter/bin/listfilter"
#: The env file as the comments in cron/ describe it: plain assignments, no `export`.
ENV_TEXT = """\
# the roster's DSN, and the store's
LISTFILTER_ROSTER_DSN=postgresql://listfilter@db.example.edu/course
LISTFILTER_STORE_DSN=postgresql://listfilter@db.example.edu/maillog
"""
DSNS = {"LISTFILTER_ROSTER_DSN": "postgresql://listfilter@db.example.edu/course",
        "LISTFILTER_STORE_DSN": "postgresql://listfilter@db.example.edu/maillog"}
#: The line cron/listfilter.cron had: dash ends the whole command at `.` of a missing file, and only the
#: roster's DSN was exported.
OLD_LINE = (f"*/5 * * * * root . {ENV_FILE} 2>/dev/null; export LISTFILTER_ROSTER_DSN;"
            f" {PROGRAM} sync --quiet")


def shells() -> list[str]:
    """/bin/sh, which cron runs every command with, and dash if /bin/sh is another shell."""
    found = {os.path.realpath("/bin/sh"): "/bin/sh"}
    dash = shutil.which("dash")
    if dash:
        found.setdefault(os.path.realpath(dash), dash)
    return list(found.values())


@pytest.fixture
def stub(tmp_path) -> Path:
    """A stand-in for listfilter: writes its argv and its environment to files beside it."""
    path = tmp_path / "listfilter"
    path.write_text(f"#!/bin/sh\nprintf '%s\\n' \"$@\" > {tmp_path}/argv\nexec /usr/bin/env > {tmp_path}/environ\n")
    path.chmod(0o755)
    return path


def ran(stub: Path) -> tuple[list[str], dict[str, str]] | None:
    """What the stub recorded: (argv, environment), or None if it never ran."""
    if not (stub.parent / "environ").exists():
        return None
    argv = (stub.parent / "argv").read_text().splitlines()
    environ = dict(line.split("=", 1) for line in (stub.parent / "environ").read_text().splitlines() if "=" in line)
    return argv, environ


def substitute(text: str, env_file: Path, stub: Path) -> str:
    assert ENV_FILE in text and PROGRAM in text
    return text.replace(ENV_FILE, str(env_file)).replace(PROGRAM, str(stub))


# ---------------------------------------------------------------- cron


def crontab(text: str) -> tuple[dict[str, str], str]:
    """A /etc/cron.d file with one job: its variable lines, and the job's command."""
    variables, jobs = {}, []
    for line in text.splitlines():
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        if re.match(r"[A-Za-z_][A-Za-z0-9_]*\s*=", line):
            name, value = line.split("=", 1)
            variables[name.strip()] = value.strip()
        else:
            jobs.append(line)
    assert len(jobs) == 1, jobs
    fields = jobs[0].split(None, 6)  # minute hour day month weekday user command
    assert len(fields) == 7, jobs[0]
    assert fields[5] == "root", jobs[0]
    return variables, fields[6]


def run_cron(shell: str, text: str, env_file: Path, stub: Path) -> subprocess.CompletedProcess:
    variables, command = crontab(substitute(text, env_file, stub))
    # cron turns an unescaped % in the command into a newline and feeds the rest to stdin
    assert "%" not in command.replace("\\%", ""), command
    # what Debian's cron gives every job, then the crontab's own variables
    env = {"SHELL": "/bin/sh", "PATH": "/usr/bin:/bin", "HOME": "/root", "LOGNAME": "root", **variables}
    return subprocess.run([shell, "-c", command], env=env, capture_output=True, text=True, timeout=30)


def test_bin_sh_is_tried_as_dash():
    """The missing-file abort is dash's (and POSIX's): the tests must run the line under dash."""
    assert any(os.path.basename(os.path.realpath(s)) == "dash" for s in shells()), \
        "dash is not installed (apt-get install dash): the crontab line cannot be tried as Debian runs it"


@pytest.mark.parametrize("shell", shells())
def test_cron_line_with_the_env_file(shell, tmp_path, stub):
    env_file = tmp_path / "env"
    env_file.write_text(ENV_TEXT)
    env_file.chmod(0o600)
    proc = run_cron(shell, (CRON / "listfilter.cron").read_text(), env_file, stub)
    assert proc.returncode == 0 and proc.stderr == "", proc.stderr
    argv, environ = ran(stub)
    assert argv == ["sync", "--quiet"]
    assert environ["LISTFILTER_CONFIG"] == "/etc/listfilter/lists.toml"
    assert {name: environ.get(name) for name in DSNS} == DSNS  # every variable of the file is exported
    assert environ["MAILTO"] == "root"


@pytest.mark.parametrize("shell", shells())
def test_cron_line_without_the_env_file(shell, tmp_path, stub):
    proc = run_cron(shell, (CRON / "listfilter.cron").read_text(), tmp_path / "env", stub)
    assert ran(stub) is not None, f"{shell}: the program never ran: {proc.stderr}"
    argv, environ = ran(stub)
    assert proc.returncode == 0 and proc.stderr == "", proc.stderr
    assert argv == ["sync", "--quiet"]
    assert environ["LISTFILTER_CONFIG"] == "/etc/listfilter/lists.toml"
    assert not set(DSNS) & set(environ)


def test_the_old_line_fails_these_tests(tmp_path, stub):
    """The tests above catch the line this file replaced: without the env file dash never runs the program,
    and with it the store's DSN is not exported."""
    dash = shutil.which("dash")
    if dash is None:
        pytest.skip("dash is not installed")
    proc = run_cron(dash, OLD_LINE, tmp_path / "env", stub)
    assert ran(stub) is None and proc.returncode != 0, proc.stderr
    env_file = tmp_path / "env"
    env_file.write_text(ENV_TEXT)
    run_cron(dash, OLD_LINE, env_file, stub)
    _, environ = ran(stub)
    assert "LISTFILTER_ROSTER_DSN" in environ and "LISTFILTER_STORE_DSN" not in environ


# ---------------------------------------------------------------- systemd

SERVICE = CRON / "listfilter-sync.service"
TIMER = CRON / "listfilter-sync.timer"
#: systemd's PATH for system services (systemd.exec(5), "Environment variables in spawned processes").
SYSTEMD_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin"


def unit(text: str) -> dict[str, list[str]]:
    """The [Service] section's settings, each key with its values in order."""
    section, out = None, {}
    for line in text.splitlines():
        line = line.strip()
        if not line or line[0] in "#;":
            continue
        if line.startswith("["):
            section = line
        elif section == "[Service]":
            key, value = line.split("=", 1)
            out.setdefault(key.strip(), []).append(value.strip())
    return out


def environment_file(path: Path) -> dict[str, str]:
    """KEY=VALUE lines as systemd reads an EnvironmentFile= (comments with # or ;, quotes removed)."""
    out = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if not line or line[0] in "#;":
            continue
        key, value = line.split("=", 1)
        out[key.strip()] = " ".join(shlex.split(value))
    return out


def run_service(text: str, env_file: Path, stub: Path) -> subprocess.CompletedProcess:
    """ExecStart= with the environment systemd would give it; a missing EnvironmentFile= without `-` fails
    the unit, as systemd does."""
    settings = unit(substitute(text, env_file, stub))
    env = {"PATH": SYSTEMD_PATH}
    for value in settings.get("Environment", []):
        for assignment in shlex.split(value):
            key, val = assignment.split("=", 1)
            env[key] = val
    for value in settings.get("EnvironmentFile", []):
        optional, path = value.startswith("-"), Path(value.removeprefix("-"))
        if path.exists():
            env.update(environment_file(path))
        elif not optional:
            return subprocess.CompletedProcess([], 1, "", f"Failed to load environment files: {path}")
    (start,) = settings["ExecStart"]
    return subprocess.run(shlex.split(start), env=env, capture_output=True, text=True, timeout=30)


def test_the_env_file_is_optional_to_systemd():
    files = unit(SERVICE.read_text())["EnvironmentFile"]
    assert files == [f"-{ENV_FILE}"]  # `-`: a missing file is no error (systemd.exec(5))


@pytest.mark.parametrize("present", [True, False])
def test_service_with_and_without_the_env_file(present, tmp_path, stub):
    env_file = tmp_path / "env"
    if present:
        env_file.write_text(ENV_TEXT)
    proc = run_service(SERVICE.read_text(), env_file, stub)
    assert proc.returncode == 0 and proc.stderr == "", proc.stderr
    argv, environ = ran(stub)
    assert argv == ["sync", "--quiet"]
    assert environ["LISTFILTER_CONFIG"] == "/etc/listfilter/lists.toml"
    assert {name: environ.get(name) for name in DSNS} == (DSNS if present else dict.fromkeys(DSNS))


def test_the_emulation_catches_a_required_env_file(tmp_path, stub):
    text = SERVICE.read_text().replace(f"EnvironmentFile=-{ENV_FILE}", f"EnvironmentFile={ENV_FILE}")
    assert run_service(text, tmp_path / "env", stub).returncode != 0
    assert ran(stub) is None


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed")
def test_systemd_analyze_verify(tmp_path, stub):
    """systemd's own reading of both units; it warns (and still exits 0) on a setting it ignores."""
    for source in (SERVICE, TIMER):
        text = source.read_text()
        (tmp_path / source.name).write_text(substitute(text, tmp_path / "env", stub) if source == SERVICE else text)
    proc = subprocess.run(["systemd-analyze", "verify", str(tmp_path / SERVICE.name), str(tmp_path / TIMER.name)],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and proc.stdout + proc.stderr == "", proc.stdout + proc.stderr
