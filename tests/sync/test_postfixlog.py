"""Reading Postfix's log: real lines (tests/data/postfixlog/, see its README) parsed in both timestamp
forms, the reinjected queue ids found, and a log followed across rotation without a line lost or read twice."""

from __future__ import annotations

import datetime as dt
import itertools
import json
import os
import random
import shutil
from pathlib import Path

import pytest

from listfilter.sync.postfixlog import LogReader, parse_line, reinjected

from ..conftest import REPO

DATA = REPO / "tests" / "data" / "postfixlog"
UTC = dt.timezone.utc
TRACE_ID = "<trace-1796160284316569538@example.edu>"
CLUB = "club@lists.example.edu"


def lines_of(name: str) -> list[str]:
    return (DATA / name).read_text().splitlines()


def line_with(name: str, *needles: str) -> str:
    [line] = [ln for ln in lines_of(name) if all(n in ln for n in needles)]
    return line


@pytest.mark.parametrize("name", ["trace.log", "trace-iso.log", "mailflow.log", "mailflow-iso.log"])
def test_every_sample_line_parses(name):
    for raw in lines_of(name):
        line = parse_line(raw)
        assert line is not None, raw
        assert line.time.tzinfo is not None and line.host == "mail", raw


@pytest.mark.parametrize("traditional, iso", [("trace.log", "trace-iso.log"), ("mailflow.log", "mailflow-iso.log")])
def test_both_timestamp_forms_give_the_same_line(traditional, iso):
    for a, b in zip(lines_of(traditional), lines_of(iso), strict=True):
        pa, pb = parse_line(a, year=2026), parse_line(b)
        assert pa.time == pb.time, (a, b)  # the same instant: 21:24:44 UTC is 15:24:44-06:00
        assert (pa.program, pa.pid, pa.queue_id, pa.text, pa.fields, pa.reply) == \
               (pb.program, pb.pid, pb.queue_id, pb.text, pb.fields, pb.reply)


# (sample, words that pick one line, program, pid, queue id, fields, reply)
CASES = [
    ("trace.log", ["smtpd", "client="], "postfix-test/smtpd", 6978, "696DF20F157",
     {"client": "localhost[127.0.0.1]"}, ""),
    ("trace.log", ["cleanup", "696DF20F157"], "postfix-test/cleanup", 6983, "696DF20F157",
     {"message-id": TRACE_ID[1:-1]}, ""),
    ("trace.log", ["pickup"], "postfix-test/pickup", 6975, "81D6820F162",
     {"uid": "999", "from": "club-bounces@lists.example.edu"}, ""),
    ("trace.log", ["qmgr", "696DF20F157", "nrcpt"], "postfix-test/qmgr", 6976, "696DF20F157",
     {"from": "prof@example.edu", "size": "434", "nrcpt": "1"}, ""),
    ("trace.log", ["qmgr", "8B62420F167", "nrcpt"], "postfix-test/qmgr", 6976, "8B62420F167",
     {"from": "", "size": "2865", "nrcpt": "1"}, ""),  # the null sender: from=<>
    ("trace.log", ["pipe", "relay=listfilter,"], "postfix-test/pipe", 6984, "696DF20F157",
     {"to": CLUB, "relay": "listfilter", "delay": "0.18", "delays": "0.06/0.01/0/0.11", "dsn": "2.0.0",
      "status": "sent"}, "delivered via listfilter service"),
    ("trace.log", ["to=<ok@"], "postfix-test/smtp", 6988, "81D6820F162",
     {"to": "ok@example.org", "relay": "127.0.0.1[127.0.0.1]:43155", "delay": "0.04", "delays": "0.01/0.02/0.01/0",
      "dsn": "2.0.0", "status": "sent"}, "250 2.0.0 Ok: queued as SINK000001"),
    ("trace.log", ["to=<later@", "deferred"], "postfix-test/smtp", 6989, "81D6820F162",
     {"to": "later@example.org", "relay": "127.0.0.1[127.0.0.1]:43155", "delay": "0.04", "delays": "0.01/0.02/0/0.01",
      "dsn": "4.7.1", "status": "deferred"},
     "host 127.0.0.1[127.0.0.1] said: 451 4.7.1 Greylisted, try again later (in reply to RCPT TO command)"),
    ("trace.log", ["to=<gone@"], "postfix-test/smtp", 6988, "81D6820F162",
     {"to": "gone@example.org", "relay": "127.0.0.1[127.0.0.1]:43155", "delay": "0.03", "delays": "0.01/0.01/0/0.01",
      "dsn": "5.1.1", "status": "bounced"},
     "host 127.0.0.1[127.0.0.1] said: 550 5.1.1 No such user here (in reply to RCPT TO command)"),
    ("trace.log", ["non-delivery notification"], "postfix-test/bounce", 6990, "81D6820F162", {}, ""),
    ("trace.log", ["81D6820F162: removed"], "postfix-test/qmgr", 6976, "81D6820F162", {}, ""),
    # listfilter's own line (syslog): the decision, with the rule
    ("trace.log", ["listfilter[6985]"], "listfilter", 6985, "696DF20F157",
     {"to": CLUB, "from": "prof@example.edu", "message-id": TRACE_ID[1:-1], "status": "delivered", "rule": "accept"},
     "3 recipients"),
    ("mailflow.log", ["listfilter[7870]"], "listfilter", 7870, "4F13B20F1CA",
     {"to": "students@lists.example.edu", "from": "alice@example.edu", "status": "bounced", "rule": "poster"},
     "alice@example.edu is not allowed to post to students@lists.example.edu; notice sent to <prof@example.edu>"),
    ("mailflow.log", ["listfilter[7879]"], "listfilter", 7879, "75E1020EF07", {}, ""),  # a deferral: "4.3.0 …"
    # smtpd's refusal at RCPT time: no queue id; from= and to= come after the reply
    ("mailflow.log", ["NOQUEUE: reject"], "postfix-test/smtpd", 7772, None,
     {"from": "stranger@example.org", "to": "students@lists.example.edu", "proto": "ESMTP", "helo": "vm"}, ""),
    ("mailflow.log", ["policy: reject"], "listfilter", 7776, None,
     {"from": "stranger@example.org", "to": "students@lists.example.edu"}, ""),
    ("mailflow.log", ["75E1020EF07", "status=deferred"], "postfix-test/pipe", 7778, "75E1020EF07",
     {"to": "students@lists.example.edu", "relay": "listfilter", "delay": "0.1", "delays": "0/0/0/0.1",
      "dsn": "4.3.0", "status": "deferred"},
     "snapshot /tmp/listfilter-pf-3rpev31v/state/snapshot.sqlite is missing (run listfilter sync); will retry"),
]


@pytest.mark.parametrize("name, needles, program, pid, queue_id, fields, reply", CASES,
                         ids=[f"{c[0]}:{'+'.join(c[1])}" for c in CASES])
def test_a_real_line_parses_into_its_parts(name, needles, program, pid, queue_id, fields, reply):
    for sample in (name, name.replace(".log", "-iso.log")):
        line = parse_line(line_with(sample, *needles))
        assert (line.program, line.pid, line.queue_id) == (program, pid, queue_id)
        assert line.fields == fields
        assert line.reply == reply
        assert line.daemon == program.rpartition("/")[2]


def test_the_text_follows_the_queue_id():
    line = parse_line(line_with("mailflow.log", "listfilter[7879]"))
    assert line.text.startswith("4.3.0 snapshot ")
    line = parse_line(line_with("mailflow.log", "NOQUEUE: reject"))
    assert line.text.startswith("reject: RCPT from localhost[127.0.0.1]: 550 5.7.1 <students@lists.example.edu>:")


def test_timestamps():
    trad = parse_line(line_with("trace.log", "listfilter[6985]"), year=2026)
    assert trad.time == dt.datetime(2026, 12, 1, 21, 24, 44, tzinfo=UTC)  # no zone in the line: UTC
    chicago = dt.timezone(dt.timedelta(hours=-6))
    assert parse_line(line_with("trace.log", "listfilter[6985]"), year=2026, zone=chicago).time == \
        dt.datetime(2026, 12, 1, 21, 24, 44, tzinfo=chicago)
    iso = parse_line(line_with("trace-iso.log", "listfilter[6985]"))
    assert iso.time.utcoffset() == dt.timedelta(hours=-6)
    assert parse_line("2026-12-01T20:49:17.123456+00:00 mail postfix/smtp[1]: x").time.microsecond == 123456
    assert parse_line("2026-12-01T20:49:17Z mail postfix/smtp[1]: x").time.tzinfo == UTC


def test_a_line_without_a_year_is_the_latest_that_is_not_in_the_future():
    raw = line_with("trace.log", "listfilter[6985]")  # Dec  1
    in_january = dt.datetime(2027, 1, 10, tzinfo=UTC)
    assert parse_line(raw, now=in_january).time.year == 2026
    assert parse_line(raw, now=dt.datetime(2026, 12, 1, 12, tzinfo=UTC)).time.year == 2026  # hours ahead: a clock skew
    assert parse_line(raw, now=dt.datetime(2026, 11, 1, tzinfo=UTC)).time.year == 2025
    assert parse_line("Feb 29 10:00:00 mail postfix/smtp[1]: x", now=dt.datetime(2027, 3, 1, tzinfo=UTC)).time.year == 2024


def test_long_queue_ids():
    # no sample: the private Postfix runs without enable_long_queue_ids (the form is Postfix's
    # documentation's, in postconf(5))
    line = parse_line("Dec  1 20:49:17 mail postfix/smtpd[123]: 3Pt2mN2VXxznjll: client=x[192.0.2.1]")
    assert line.queue_id == "3Pt2mN2VXxznjll" and line.fields == {"client": "x[192.0.2.1]"}


@pytest.mark.parametrize("raw", [
    "", "hello", "Dec 32 10:00:00 mail postfix/smtp[1]: x", "Foo  1 10:00:00 mail postfix/smtp[1]: x",
    "2026-13-01T10:00:00Z mail postfix/smtp[1]: x", "Dec  1 20:49:17 mail",
    "Dec  1 20:49:17 mail postfix/smtp[1]",  # cut off
])
def test_what_is_not_a_log_line_is_none(raw):
    assert parse_line(raw) is None


def test_a_reply_that_never_closes_runs_to_the_end():
    line = parse_line("Dec  1 20:49:17 mail postfix/smtp[1]: ABCDEF123: to=<a@b>, dsn=4.4.1,"
                      " status=deferred (connect to x[192.0.2.1]:25: Connection refused (unbalanced")
    assert line.reply == "connect to x[192.0.2.1]:25: Connection refused (unbalanced"
    assert line.fields == {"to": "a@b", "dsn": "4.4.1", "status": "deferred"}


def test_words_in_a_reply_are_not_fields():
    line = parse_line("Dec  1 20:49:17 mail postfix/smtp[1]: ABCDEF123: to=<a@b>, relay=r[192.0.2.1]:25,"
                      " dsn=2.0.0, status=sent (250 2.0.0 Ok id=XYZ to=<evil@x> queued as 9F1)")
    assert line.fields["to"] == "a@b" and "id" not in line.fields


# ---------------------------------------------------------------- the reinjected queue id


@pytest.mark.parametrize("name", ["trace.log", "trace-iso.log"])
def test_the_reinjected_queue_id_is_found(name):
    lines = lines_of(name)
    assert reinjected(lines, TRACE_ID, CLUB) == ["81D6820F162"]
    assert reinjected([parse_line(ln) for ln in lines], TRACE_ID, CLUB) == ["81D6820F162"]  # LogLine objects too
    assert reinjected(lines, TRACE_ID, CLUB, uid=999) == ["81D6820F162"]
    assert reinjected(lines, TRACE_ID, CLUB, uid=1000) == []  # submitted by another user: not ours
    assert reinjected(lines, TRACE_ID, "other@lists.example.edu") == []
    assert reinjected(lines, "<t1@example.edu>", CLUB) == []


def test_a_post_deferred_by_listfilter_was_reinjected_once_on_the_retry():
    lines = lines_of("mailflow.log")
    assert reinjected(lines, "<t4@example.edu>", "students@lists.example.edu") == ["27B4220E0A4"]
    assert reinjected(lines, "<t2@example.edu>", "students@lists.example.edu") == []  # refused: not sent


def test_one_queue_id_per_batch():
    # hand-made from trace.log's three lines: a second batch, as deliver submits above its batch size
    lines = lines_of("trace.log")
    first = [ln for ln in lines if "81D6820F162: uid=" in ln or ("81D6820F162" in ln and "message-id" in ln)
             or ("81D6820F162" in ln and "nrcpt=3" in ln)][:3]
    second = [ln.replace("81D6820F162", "9A1B2C3D4E5").replace("[6975]", "[6975]") for ln in first]
    assert reinjected(first + second, TRACE_ID, CLUB) == ["81D6820F162", "9A1B2C3D4E5"]


# ---------------------------------------------------------------- following the log


SAMPLE = lines_of("trace.log") + lines_of("mailflow.log")


def write(path: Path, lines: list[str], mode: str = "a") -> None:
    with open(path, mode) as fh:
        fh.write("".join(ln + "\n" for ln in lines))


def read(reader: LogReader, n: int | None = None) -> list[str]:
    return [ln.raw for ln in itertools.islice(reader.lines(), n)]


def test_new_lines_only_and_a_line_still_being_written_waits(tmp_path):
    log = tmp_path / "mail.log"
    write(log, SAMPLE[:10])
    reader = LogReader(log)
    assert read(reader) == SAMPLE[:10]
    with open(log, "a") as fh:
        fh.write(SAMPLE[10] + "\n" + SAMPLE[11][:20])  # the second one is half written
    assert read(reader) == [SAMPLE[10]]
    with open(log, "a") as fh:
        fh.write(SAMPLE[11][20:] + "\n")
    assert read(reader) == [SAMPLE[11]]
    assert read(reader) == []


def test_the_position_is_json_and_a_new_reader_resumes_there(tmp_path):
    log = tmp_path / "mail.log"
    write(log, SAMPLE[:20])
    first = LogReader(log)
    assert read(first, 7) == SAMPLE[:7]  # stopped after seven lines
    position = json.loads(json.dumps(first.position))
    write(log, SAMPLE[20:25])
    assert read(LogReader(log, position)) == SAMPLE[7:25]


def test_rotation_by_renaming(tmp_path):
    log = tmp_path / "mail.log"
    write(log, SAMPLE[:10])
    reader = LogReader(log)
    assert read(reader, 4) == SAMPLE[:4]
    log.rename(tmp_path / "mail.log.1")
    write(tmp_path / "mail.log.1", SAMPLE[10:12])  # the writer had it open until the HUP
    write(log, SAMPLE[12:20], "w")
    assert read(reader) == SAMPLE[4:20]
    assert reader.gaps == []
    write(log, SAMPLE[20:22])
    assert read(reader) == SAMPLE[20:22]


def test_rotation_by_renaming_stopped_in_the_old_file_resumes_there(tmp_path):
    log = tmp_path / "mail.log"
    write(log, SAMPLE[:10])
    reader = LogReader(log)
    read(reader, 2)
    log.rename(tmp_path / "mail.log.1")
    write(log, SAMPLE[10:15], "w")
    assert read(reader, 3) == SAMPLE[2:5]  # still in mail.log.1
    resumed = LogReader(log, json.loads(json.dumps(reader.position)))
    assert read(resumed) == SAMPLE[5:15]


def test_a_new_file_with_nothing_in_it_yet(tmp_path):
    log = tmp_path / "mail.log"
    write(log, SAMPLE[:3])
    reader = LogReader(log)
    read(reader)
    log.rename(tmp_path / "mail.log.1")
    log.touch()
    assert read(reader) == []
    write(log, SAMPLE[3:5])
    assert read(reader) == SAMPLE[3:5]


def test_copytruncate(tmp_path):
    log = tmp_path / "mail.log"
    write(log, SAMPLE[:10])
    reader = LogReader(log)
    assert read(reader, 6) == SAMPLE[:6]
    shutil.copyfile(log, tmp_path / "mail.log.1")
    os.truncate(log, 0)
    write(log, SAMPLE[10:12])
    assert read(reader) == SAMPLE[6:12]
    assert reader.gaps == []


def test_copytruncate_then_written_past_the_old_offset(tmp_path):
    # the file is longer again than where the reader was: only what it remembers of the bytes
    # before its offset tells that these are other lines
    log = tmp_path / "mail.log"
    write(log, SAMPLE[:5])
    reader = LogReader(log)
    assert read(reader) == SAMPLE[:5]
    shutil.copyfile(log, tmp_path / "mail.log.1")
    os.truncate(log, 0)
    write(log, SAMPLE[5:30])
    assert read(reader) == SAMPLE[5:30]


def test_the_old_file_gone(tmp_path):
    log = tmp_path / "mail.log"
    write(log, SAMPLE[:5])
    reader = LogReader(log)
    read(reader, 2)
    log.rename(tmp_path / "mail.log.1.gz")  # compressed at once: its rest cannot be read
    write(log, SAMPLE[5:8], "w")
    assert read(reader) == SAMPLE[5:8]
    assert reader.gaps and "was rotated" in reader.gaps[0]


def test_at_end_reads_only_what_comes(tmp_path):
    log = tmp_path / "mail.log"
    write(log, SAMPLE[:5])
    reader = LogReader.at_end(log)
    assert read(reader) == []
    write(log, SAMPLE[5:7])
    assert read(reader) == SAMPLE[5:7]


def test_no_file_yet(tmp_path):
    reader = LogReader(tmp_path / "mail.log")
    assert read(reader) == []
    write(tmp_path / "mail.log", SAMPLE[:2])
    assert read(reader) == SAMPLE[:2]


@pytest.mark.parametrize("seed", range(40))
def test_every_line_once_whatever_happens_between_reads(tmp_path, seed):
    """Writes, reads of any length, restarts from the saved position, both kinds of rotation, in any
    order: what was read is exactly what was written, in order. A rotation waits until the reader
    has read all that went into the file the previous rotation left, and has been back to the log
    since (as a daily rotation with reads every few minutes does); more is a gap, which it reports."""
    rng = random.Random(seed)
    log = tmp_path / "mail.log"
    log.touch()
    source = iter(SAMPLE * 3)
    written, got = [], []
    reader = LogReader(log)
    read(reader)
    rotated_at = 0  # lines written when the last rotation happened
    back = True  # the reader has been back to the log since (its position is in the file at mail.log)
    rotations = 0
    for _ in range(80):
        action = rng.choice(["write", "write", "read", "read", "restart", "rename", "copytruncate"])
        if action == "write":
            batch = list(itertools.islice(source, rng.randint(1, 8)))
            write(log, batch)
            written += batch
        elif action == "read":
            got += read(reader, rng.choice([None, 1, 3, 10]))
            back = back or reader.position["inode"] == log.stat().st_ino
        elif action == "restart":
            reader = LogReader(log, json.loads(json.dumps(reader.position)))
        elif len(got) >= rotated_at and back:
            if action == "rename":
                log.rename(tmp_path / "mail.log.1")
                log.touch()
            else:  # logrotate copies into a new file (its inode may be one just freed)
                shutil.copyfile(log, tmp_path / "copy")
                os.replace(tmp_path / "copy", tmp_path / "mail.log.1")
                os.truncate(log, 0)
            rotated_at, rotations, back = len(written), rotations + 1, False
    got += read(reader)
    assert got == written
    assert reader.gaps == []
    assert rotations >= 1
