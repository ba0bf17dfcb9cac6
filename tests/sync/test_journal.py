"""Postfix's lines from the systemd journal (listfilter.sync.postfixlog.JournalReader), read by the real
journalctl from a real journal file (written by systemd-journal-remote: tests.harness.journal)."""

from __future__ import annotations

import datetime as dt

import pytest

from listfilter.sync import postfixlog as PL

from ..harness.journal import Journal

T0 = dt.datetime(2026, 12, 2, 6, 0, 0, 123456, tzinfo=dt.timezone.utc)


def entry(n: int, message: str, ident: str = "postfix/smtp", pid: str | None = "4711"):
    return (T0 + dt.timedelta(seconds=n), "mx.lists.example.edu", ident, pid, message)


def test_journal_line_is_the_syslog_line_it_was():
    e = {"__REALTIME_TIMESTAMP": "1796191200123456", "_HOSTNAME": "mx", "SYSLOG_IDENTIFIER": "postfix/qmgr",
         "SYSLOG_PID": "12", "MESSAGE": "4AB0002F: removed"}
    line = PL.journal_line(e)
    assert line == "2026-12-02T06:00:00.123456+00:00 mx postfix/qmgr[12]: 4AB0002F: removed"
    parsed = PL.parse_line(line)
    assert parsed.queue_id == "4AB0002F" and parsed.daemon == "qmgr" and parsed.time == T0
    # a message journald kept as bytes (not UTF-8), a message with a line break, no message at all
    assert PL.journal_line({**e, "MESSAGE": list(b"caf\xe9")}).endswith(": caf\ufffd")
    assert PL.journal_line({**e, "MESSAGE": "one\ntwo"}).endswith(": one two")
    assert PL.journal_line({k: v for k, v in e.items() if k != "MESSAGE"}) is None


def test_the_reader_resumes_at_its_cursor_and_reads_only_the_mail_facility(tmp_path):
    journal = Journal(tmp_path / "journal")
    journal.append([entry(0, "1A2B3C4D: to=<ann@example.org>, relay=r[1.2.3.4]:25, delay=1, dsn=2.0.0,"
                             " status=sent (250 2.0.0 Ok: queued as 77)"),
                    entry(1, "1A2B3C4D: removed", "postfix/qmgr")])
    journal.append([entry(2, "session opened for user root", "sshd")], facility=4)  # authpriv: not ours
    reader = PL.JournalReader(directory=journal.directory)
    got = list(reader.lines())
    assert [(ln.daemon, ln.queue_id, ln.fields.get("status")) for ln in got] == [
        ("smtp", "1A2B3C4D", "sent"), ("qmgr", "1A2B3C4D", None)]
    assert got[0].reply == "250 2.0.0 Ok: queued as 77" and got[0].host == "mx.lists.example.edu"
    position = reader.position
    assert position["journal"] is True and position["cursor"].startswith("s=")

    assert list(PL.JournalReader(position, directory=journal.directory).lines()) == []  # nothing new
    journal.append([entry(3, "5E6F7A8B: to=<ben@example.org>, relay=r[1.2.3.4]:25, delay=2, dsn=4.2.0,"
                             " status=deferred (450 4.2.0 busy)")])
    again = PL.JournalReader(position, directory=journal.directory)
    assert [(ln.queue_id, ln.fields["status"]) for ln in again.lines()] == [("5E6F7A8B", "deferred")]
    assert again.position["cursor"] != position["cursor"]


def test_a_capped_read_goes_on_where_it_stopped(tmp_path):
    journal = Journal(tmp_path / "journal")
    journal.append([entry(n, f"{0xA00000 + n:X}: removed", "postfix/qmgr") for n in range(10)])
    reader = PL.JournalReader(directory=journal.directory)
    first = [ln.queue_id for _, ln in zip(range(4), reader.lines())]
    rest = [ln.queue_id for ln in PL.JournalReader(reader.position, directory=journal.directory).lines()]
    assert first + rest == [f"{0xA00000 + n:X}" for n in range(10)]


def test_a_file_position_or_a_journal_that_cannot_be_read(tmp_path):
    journal = Journal(tmp_path / "journal")
    journal.append([entry(0, "ABCDEF12: removed", "postfix/qmgr")])
    reader = PL.JournalReader({"path": "/var/log/mail.log", "inode": 1, "offset": 9}, directory=journal.directory)
    assert [ln.queue_id for ln in reader.lines()] == ["ABCDEF12"]
    assert reader.gaps == ["the position was in /var/log/mail.log, not in the journal: reading the journal"
                           " from its start"]
    with pytest.raises(OSError):
        list(PL.JournalReader(journalctl=str(tmp_path / "no-journalctl")).lines())
