"""The per-list switches exclude_poster and title_case_subject: config → compiler → snapshot → mail side,
and a snapshot written before title_case_subject existed."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from listfilter.common import snapshot as S
from listfilter.sync import config as C

from ..cli.runner import listfilter

DELIVER = Path(sys.executable).with_name("listfilter-deliver")

LISTS = """
[domains."lists.example.edu"]
course = "CS 199"

[lists.testing]
members = { emails = ["prof@example.edu"] }
posters = ["prof@example.edu"]
exclude_poster = false
title_case_subject = false

[lists.students]
members = { roles = ["student"] }
posters = { roles = ["instructor"] }
"""


def rows(config_path: Path) -> dict[str, S.ListRow]:
    with S.Snapshot(C.load(config_path).site.snapshot_path) as snap:
        return {row.name: row for row in snap.lists()}


def test_the_example_snapshot_carries_the_switches(example_config):
    assert listfilter(example_config, "sync").returncode == 0
    got = rows(example_config)
    assert got["testing"].exclude_poster is False and got["testing"].title_case_subject is True
    assert got["students"].exclude_poster is True and got["students"].title_case_subject is True


def test_switches_reach_the_snapshot_and_a_change_rewrites_it(make_config):
    path = make_config(LISTS, roster='source = "csv"\ncsv = "roster.csv"')
    (path.parent / "roster.csv").write_text("email,name,enrollment_type,active,semester,course\n"
                                            "prof@example.edu,Pat Prof,teacher,true,current,CS 199\n"
                                            "alice@example.edu,Alice,student,true,current,CS 199\n")
    assert listfilter(path, "sync").returncode == 0
    got = rows(path)
    assert (got["testing"].exclude_poster, got["testing"].title_case_subject) == (False, False)
    assert (got["students"].exclude_poster, got["students"].title_case_subject) == (True, True)
    # flipping one switch is a new snapshot (it is in the digest)
    path.write_text(path.read_text().replace("title_case_subject = false", "title_case_subject = true"))
    proc = listfilter(path, "sync", "-v")
    assert proc.returncode == 0 and "updated snapshot" in proc.stdout, proc.stdout
    assert rows(path)["testing"].title_case_subject is True


def test_a_snapshot_from_before_the_column_is_refused_until_sync(example_config):
    assert listfilter(example_config, "sync").returncode == 0
    snapshot = C.load(example_config).site.snapshot_path
    # what the previous version wrote: format 3, no title_case_subject column
    db = sqlite3.connect(snapshot)
    db.execute("ALTER TABLE lists DROP COLUMN title_case_subject")
    db.execute("UPDATE meta SET value = '3' WHERE key = 'format'")
    db.commit()
    db.close()
    with pytest.raises(S.SnapshotError) as info:
        S.Snapshot(snapshot)
    assert str(info.value) == f"snapshot {snapshot} has format '3', expected {S.FORMAT} (run listfilter sync)"
    post = b"From: instructor@example.edu\nSubject: x\nMessage-ID: <old@example.edu>\n\nhi\n"
    proc = subprocess.run([str(DELIVER), "--snapshot", str(snapshot), "--sender", "instructor@example.edu",
                           "--recipient", "testing@lists.example.edu"], input=post, capture_output=True, timeout=60)
    assert proc.returncode == 75  # Postfix keeps the post and retries
    assert proc.stderr.decode().startswith("4.3.0 snapshot ") and "has format '3'" in proc.stderr.decode()
    # the next sync replaces it (an unreadable snapshot has no digest to match)
    assert listfilter(example_config, "sync").returncode == 0
    assert rows(example_config)["testing"].title_case_subject is True
