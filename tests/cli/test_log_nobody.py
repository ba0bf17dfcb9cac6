"""A post delivered to nobody reads as that in `listfilter log`, from the record the real deliver wrote."""

from __future__ import annotations

from ..store.test_database import event, write_event
from .runner import listfilter

TESTING = "testing@lists.example.edu"
POST = (b"From: Instructor Ivy <instructor@example.edu>\nTo: testing@lists.example.edu\n"
        b"Subject: relay down test\nMessage-ID: <nobody-1@example.edu>\n\nTest.\n")
WHY = ("nobody was sent a copy: the poster is the list's only member, and the list sends posters no copy"
       " (exclude_poster = true)")


def test_log_says_nobody_was_sent_a_copy_and_why(example_config):
    # the example's testing@ as it was before: its one member, the poster, left out
    text = example_config.read_text()
    assert text.count("exclude_poster = false") == 1
    example_config.write_text(text.replace("exclude_poster = false", "exclude_poster = true"))
    assert listfilter(example_config, "sync", "--quiet").returncode == 0
    assert listfilter(example_config, "db", "upgrade").returncode == 0
    # no sendmail runs for nobody: the real deliver, with the config's snapshot and spool
    ran = listfilter(example_config, "deliver", "--sender", "instructor@example.edu", "--recipient", TESTING,
                     input=POST)
    assert ran.returncode == 0, ran.stderr
    ran = listfilter(example_config, "log", "--list", "testing")
    assert ran.returncode == 0, ran.stderr
    [line] = ran.stdout.splitlines()
    assert line.split("\t")[1:] == ["delivered", TESTING, "Instructor Ivy <instructor@example.edu>", f"0 ({WHY})",
                                    "relay down test"]


def test_log_of_an_older_record_delivered_to_nobody(example_config):
    # a record written before deliver said why: still not shown as a bare 0
    assert listfilter(example_config, "db", "upgrade").returncode == 0
    spool = example_config.parent / "state" / "spool"
    write_event(spool, event(1, recipients=[], recipient_count=0, error_message=""))
    write_event(spool, event(2))
    ran = listfilter(example_config, "log")
    counts = [line.split("\t")[4] for line in ran.stdout.splitlines()]
    assert sorted(counts) == ["0 (nobody was sent a copy)", "2 (handed to Postfix, outcome not yet read)"]
