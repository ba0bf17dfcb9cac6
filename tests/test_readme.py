"""README.md's first command runs: it syncs the bundled example and dry-runs its sample post through deliver.

The command is taken from the README's "Try it" block and run as written, in a copy of the checkout's
docs/example, with two changes: the ``python3 -m venv .venv && .venv/bin/pip install .`` that starts it is
left out (this venv is installed already) and ``.venv/bin/`` is this venv's bin directory. The copy's
config gets a ``[dns]`` table naming a closed loopback port, so sync asks no real resolver and its DMARC
lookup fails as it does on a machine without a network, which the README describes.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

from .conftest import EXAMPLE, REPO

INSTALL = ["python3 -m venv .venv", ".venv/bin/pip install ."]


def try_it_lines() -> list[str]:
    text = (REPO / "README.md").read_text()
    m = re.search(r"^## Try it\n.*?^```sh\n(.*?)^```$", text, re.M | re.S)
    assert m, "README.md has no sh block under 'Try it'"
    return [line for line in m.group(1).splitlines() if line.strip()]


def test_the_first_command_installs_syncs_and_dry_runs_the_sample_post():
    lines = try_it_lines()
    assert len(lines) <= 2, lines
    first = lines[0].split(" && ")
    assert first[:2] == INSTALL, first
    assert "sync" in first[2], first
    assert "deliver --dry-run" in lines[-1] and "docs/example/post.eml" in lines[-1], lines[-1]


def test_the_first_command_shows_the_decision_recipients_and_headers(tmp_path):
    (tmp_path / "docs").mkdir()
    shutil.copytree(EXAMPLE, tmp_path / "docs" / "example", ignore=shutil.ignore_patterns("state"))
    config = tmp_path / "docs" / "example" / "lists.toml"
    config.write_text(config.read_text() + '\n[dns]\nnameservers = ["127.0.0.1"]\nport = 9\ntimeout = 0.5\n')
    bindir = Path(sys.executable).parent
    lines = try_it_lines()
    script = "\n".join([" && ".join(lines[0].split(" && ")[len(INSTALL):]), *lines[1:]])
    script = script.replace(".venv/bin/", f"{bindir}/")
    proc = subprocess.run(["sh", "-e", "-c", script], cwd=tmp_path, capture_output=True, text=True, timeout=60,
                          env={**os.environ, "PATH": f"{bindir}{os.pathsep}{os.environ.get('PATH', '')}"})
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = proc.stdout
    assert (tmp_path / "docs" / "example" / "state" / "snapshot.sqlite").is_file()
    assert "decision: delivered: would deliver to 5 recipients" in out, out
    recipients = re.search(r"^recipients \(5\):\n((?:  \S+\n)+)", out, re.M)
    assert recipients, out
    assert recipients.group(1).split() == ["alice@example.edu", "bob@example.edu", "Carol@Example.edu",
                                           "erin@example.edu", "ta.one@example.edu"]
    message = out.split("\nmessage:\n", 1)[1]
    headers = message.split("\n\n", 1)[0]
    assert re.search(r"^Subject: \[CS 199 Students\] \d{4}-\d\d-\d\d: Office Hours This Week$", headers, re.M), headers
    assert "List-Id: \"CS 199 Students\" <students.lists.example.edu>" in headers
    # the lookup failed, so the post gets the mitigation the README shows
    assert "From: Jane Doe via CS 199 Students <students@lists.example.edu>" in headers, headers
    assert "Cc: Jane Doe <instructor@example.edu>" in headers, headers
    assert "DMARC lookups failed for 1 domain" in proc.stderr, proc.stderr
