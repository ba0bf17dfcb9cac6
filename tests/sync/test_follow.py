"""The log follower over a saved Postfix log: both timestamp forms, rotation mid-read, restarts, and
lines that are not a list's copies.

The log is real: tests/integration/test_member_outcomes.py's private Postfix, a post to club@ whose
relay accepted ann, deferred ben three times before accepting him, and refused cat (uid 999 was the
``listfilter`` user there). The store is SQLite here; tests/store/test_deliveries.py runs the
store's side on both backends, and one test below shares a PostgreSQL store between two hosts.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import re
from pathlib import Path

import pytest

from listfilter.store import database as ST
from listfilter.store import deliveries as DV
from listfilter.store import ingest as IN
from listfilter.sync import config as C
from listfilter.sync import follow as FO
from listfilter.sync import run as Y
from listfilter.sync.postfixlog import parse_line

from ..conftest import REPO
from ..store.test_database import CSV_ROSTER, entry_from, event, write_event

SAMPLE = REPO / "tests" / "data" / "maillog" / "member-outcomes.log"
UID = 999
CLUB = "club@lists.example.edu"
ANN, BEN, CAT = "ann@example.org", "ben@example.org", "cat@example.org"
MSGID = "<outcomes-1@example.edu>"
COPY = "A2E6120F125"  # the reinjected copy's queue id in the sample
INBOUND = "7CBA520F11B"
LISTS = f"""
[domains."lists.example.edu"]
course = "CS 199"

[lists.club]
members = {{ emails = ["{ANN}", "{BEN}", "{CAT}"] }}
posters = ["prof@example.edu"]
"""
FINAL = {ANN: "sent", BEN: "sent", CAT: "bounced"}


def sample_lines() -> list[str]:
    return SAMPLE.read_text().splitlines(keepends=True)


def iso(lines: list[str]) -> list[str]:
    """The same lines as rsyslog's RSYSLOG_FileFormat writes them: ISO 8601, microseconds, a zone."""
    out = []
    for i, line in enumerate(lines):
        when = parse_line(line).time
        out.append(when.astimezone(dt.timezone(dt.timedelta(hours=-6))).isoformat(timespec="microseconds")
                   .replace(".000000", f".{i:06d}") + line[15:])
    return out


@pytest.fixture
def site(make_config, tmp_path, store_toml):
    config = C.load(make_config(LISTS + "\n[store]\n" + store_toml, roster=CSV_ROSTER,
                                postfix=f'map_type = "texthash"\nreload = false\nlog_file = "{tmp_path / "maillog"}"'))
    with ST.open_store(config.store, create=True) as s:
        s.upgrade()
    return config


@pytest.fixture(params=["sqlite"])
def backend(request):
    return request.param


@pytest.fixture
def store_toml(request, backend):
    if backend == "postgresql":
        return f'backend = "postgresql"\ndsn = "{request.getfixturevalue("pg_dsn")}"\n'
    return ""


def post(n: int = 1, message_id: str = MSGID, **fields) -> ST.Entry:
    return entry_from(event(n, list_address=CLUB, message_id=message_id, recipients=[ANN, BEN, CAT],
                            recipient_count=3, queue_id=INBOUND, **fields))


def seed(config: C.Config, *entries: ST.Entry) -> None:
    with ST.open_store(config.store) as s:
        s.upsert(list(entries or [post()]))


def follow(config: C.Config, **kw) -> FO.FollowResult:
    with ST.open_store(config.store) as s:
        return FO.follow(config, s, uid=UID, **kw)


def outcomes(config: C.Config, n: int = 1) -> dict[str, DV.Delivery]:
    with ST.open_store(config.store) as s:
        return {d.recipient: d for d in DV.of_event(s, event(n)["id"])}


def statuses(config: C.Config, n: int = 1) -> dict[str, str]:
    return {r: d.status for r, d in outcomes(config, n).items()}


def write(config: C.Config, lines: list[str], mode: str = "a") -> None:
    with open(config.postfix.log_file, mode) as fh:
        fh.writelines(lines)


def state(config: C.Config) -> dict:
    return json.loads(FO.position_path(config).read_text())


# ---------------------------------------------------------------- the whole log


def test_the_saved_log_gives_each_members_outcome(site):
    seed(site)
    write(site, sample_lines())
    result = follow(site)
    assert result.lines == len(sample_lines()) and not result.capped and result.behind == 0
    assert result.outcomes == {"sent": 2, "deferred": 3, "bounced": 1} and result.copies == 1
    got = outcomes(site)
    assert {r: d.status for r, d in got.items()} == FINAL
    assert got[BEN].first_at < got[BEN].at and got[BEN].dsn == "2.0.0"  # deferred three times, sent on the fourth try
    assert got[CAT].dsn == "5.1.1" and got[CAT].reply == (
        "host 127.0.0.1[127.0.0.1] said: 550 5.1.1 <cat@example.org>: no such user <b>here</b>"
        " (in reply to RCPT TO command)")
    assert {d.queue_id for d in got.values()} == {COPY} and {d.host for d in got.values()} == {"mail"}
    assert got[ANN].relay.startswith("127.0.0.1[127.0.0.1]:") and got[ANN].delay == "0.02"
    with ST.open_store(site.store) as s:
        [r] = DV.reinjections(s, event(1)["id"])
        assert (r.host, r.queue_id) == ("mail", COPY) and r.removed_at is not None
    # the position: a plain file, at the log's end, nothing left open
    saved = state(site)
    assert saved["log"]["offset"] == os.path.getsize(site.postfix.log_file) and saved["open"] == []
    assert saved["log"]["inode"] == os.stat(site.postfix.log_file).st_ino
    # nothing new: nothing read again
    again = follow(site)
    assert again.lines == 0 and again.outcomes == {} and statuses(site) == FINAL


def test_iso_timestamps_give_the_same_outcomes(site):
    seed(site)
    write(site, iso(sample_lines()))
    assert follow(site).lines == len(sample_lines())
    got = outcomes(site)
    assert {r: d.status for r, d in got.items()} == FINAL
    traditional = {r: parse_line(l) for l in sample_lines() for r in [ANN, CAT] if f"to=<{r}>" in l}
    for r, line in traditional.items():
        assert got[r].at == line.time.replace(microsecond=0)  # the store keeps whole seconds


def test_the_inbound_copy_and_other_mail_are_not_members(site):
    seed(site)
    forged = [  # another local user submits a "copy" of the post from the -bounces address
        "Dec 01 21:24:50 mail postfix-test/pickup[6751]: AAAA11111111: uid=1234 from=<club-bounces@lists.example.edu>\n",
        f"Dec 01 21:24:50 mail postfix-test/cleanup[6739]: AAAA11111111: message-id={MSGID}\n",
        "Dec 01 21:24:50 mail postfix-test/qmgr[6732]: AAAA11111111: from=<club-bounces@lists.example.edu>, size=853,"
        " nrcpt=1 (queue active)\n",
        "Dec 01 21:24:50 mail postfix-test/smtp[6743]: AAAA11111111: to=<zed@example.org>, relay=127.0.0.1[127.0.0.1]:1,"
        " delay=0.02, delays=0/0.01/0/0, dsn=2.0.0, status=sent (250 2.0.0 Message accepted for delivery)\n",
    ]
    write(site, sample_lines() + forged)
    follow(site)
    got = statuses(site)
    assert got == FINAL  # not club@ (the pipe to listfilter), not zed
    with ST.open_store(site.store) as s:
        assert [r.queue_id for r in DV.reinjections(s, event(1)["id"])] == [COPY]


# ---------------------------------------------------------------- a bit at a time


def test_line_by_line_each_line_once(site):
    """Every split of the log between two syncs: carried-over copies, then the store's reinjections."""
    seed(site)
    lines = sample_lines()
    read = 0
    seen: list[dict[str, str]] = []
    for line in lines:
        write(site, [line])
        read += follow(site).lines
        seen.append(statuses(site))
    assert read == len(lines)  # never a line twice
    assert statuses(site) == FINAL
    assert any(s == {ANN: "sent", BEN: "deferred", CAT: "bounced"} for s in seen)  # before the retry
    assert state(site)["open"] == []


def test_capped_runs_resume_where_they_stopped(site):
    seed(site)
    write(site, sample_lines())
    results = []
    for _ in range(10):
        results.append(follow(site, max_lines=7))
        if not results[-1].capped:
            break
    assert sum(r.lines for r in results) == len(sample_lines())
    assert all(r.capped == "7 lines" and r.behind > 0 for r in results[:-1]) and len(results) == 6
    assert statuses(site) == FINAL


def test_a_half_line_waits_for_its_end(site):
    seed(site)
    lines = sample_lines()
    cut = next(i for i, l in enumerate(lines) if f"to=<{CAT}>" in l)
    write(site, lines[:cut] + [lines[cut][:40]])
    follow(site)
    assert CAT not in statuses(site)
    write(site, [lines[cut][40:]] + lines[cut + 1:])
    assert follow(site).lines == len(lines) - cut
    assert statuses(site) == FINAL


def test_rotation_mid_read(site):
    """logrotate renames the log while the follower is in the middle of it: the rest is read from
    <log>.1, then the new file from its start; no line twice, none lost."""
    seed(site)
    lines = sample_lines()
    half = len(lines) // 2
    log = Path(site.postfix.log_file)
    write(site, lines[:half])
    first = follow(site, max_lines=half // 2)
    assert first.capped
    log.rename(log.with_name(log.name + ".1"))
    write(site, lines[half:], "w")
    second = follow(site)
    assert first.lines + second.lines == len(lines) and second.gaps == []
    assert statuses(site) == FINAL
    assert state(site)["log"]["inode"] == log.stat().st_ino


def test_copytruncate_rotation(site):
    seed(site)
    lines = sample_lines()
    half = len(lines) // 2
    log = Path(site.postfix.log_file)
    write(site, lines[:half])
    first = follow(site, max_lines=3)
    log.with_name(log.name + ".1").write_bytes(log.read_bytes())  # copy, then truncate
    write(site, lines[half:], "w")
    second = follow(site)
    assert first.lines + second.lines == len(lines)
    assert statuses(site) == FINAL


def test_a_restart_after_a_crash_before_the_position_counts_nothing_twice(site, monkeypatch):
    """The store commits, then the process dies before the position file is replaced: the next run
    reads the same lines again, and each member still has one row."""
    seed(site)
    write(site, sample_lines())

    def crash(path, data):
        raise KeyboardInterrupt

    monkeypatch.setattr(FO, "_save", crash)
    with pytest.raises(KeyboardInterrupt):
        follow(site)
    assert statuses(site) == FINAL and not FO.position_path(site).exists()
    monkeypatch.undo()
    assert follow(site).lines == len(sample_lines())  # read again from the start
    with ST.open_store(site.store) as s:
        assert s._q("SELECT count(*) FROM deliveries")[0][0] == 3
        assert s._q("SELECT count(*) FROM reinjections")[0][0] == 1
    assert statuses(site) == FINAL and follow(site).lines == 0


def test_a_store_that_fails_keeps_the_position(site, monkeypatch):
    seed(site)
    write(site, sample_lines())

    def down(self, store, now=None):
        raise ST.StoreError("the store is down")

    monkeypatch.setattr(DV.Writer, "commit", down)
    with pytest.raises(ST.StoreError):
        follow(site)
    assert not FO.position_path(site).exists()
    monkeypatch.undo()
    assert follow(site).lines == len(sample_lines()) and statuses(site) == FINAL


# ---------------------------------------------------------------- the post, the queue id


def test_a_copy_read_before_its_post_is_in_the_store_waits(site):
    write(site, sample_lines())
    result = follow(site)
    assert result.pending == 1 and result.outcomes == {}
    [kept] = state(site)["open"]
    assert kept["queue_id"] == COPY and kept["message_id"] == MSGID[1:-1] and len(kept["ops"]) == 7
    seed(site)  # the next sync's ingest brings it
    later = follow(site)
    assert later.lines == 0 and later.copies == 1 and statuses(site) == FINAL and state(site)["open"] == []


def test_a_copy_of_no_known_post_is_given_up_after_an_hour(site):
    write(site, sample_lines())
    follow(site)
    assert len(state(site)["open"]) == 1
    write(site, ["Dec 01 22:30:00 mail postfix-test/qmgr[6732]: ABCDEF123456: removed\n"])
    result = follow(site)
    assert result.dropped == 1 and state(site)["open"] == []


def test_a_post_without_a_message_id_of_its_own(site):
    """deliver gives it one; the event records that one, and cleanup logs it."""
    seed(site, post(message_id="<made.by.deliver@lists.example.edu>"))
    write(site, [l.replace(MSGID, "<made.by.deliver@lists.example.edu>") for l in sample_lines()])
    follow(site)
    assert statuses(site) == FINAL


def test_expired_members(site):
    seed(site)
    lines = [l for l in sample_lines() if not re.search(rf"{COPY}: (to=<ben@example.org>.*status=sent|removed)", l)]
    lines.append(f"Dec 01 21:59:40 mail postfix-test/qmgr[6732]: {COPY}: from=<club-bounces@lists.example.edu>,"
                 " status=expired, returned to sender\n")
    write(site, lines)
    follow(site, max_lines=len(lines) - 1)  # the expiry on its own, in the next run: found by its queue id
    assert statuses(site)[BEN] == "deferred"
    assert follow(site).outcomes == {"expired": 1}
    got = outcomes(site)
    assert got[BEN].status == "expired" and "mailbox busy" in got[BEN].reply
    assert got[ANN].status == "sent" and got[CAT].status == "bounced"


def test_a_queue_id_used_again_is_another_message(site):
    seed(site)
    write(site, sample_lines())
    follow(site)
    # the same short queue id, later given to mail from someone else
    write(site, [
        f"Dec 01 21:30:00 mail postfix-test/smtpd[6734]: {COPY}: client=localhost[127.0.0.1]\n",
        f"Dec 01 21:30:00 mail postfix-test/cleanup[6739]: {COPY}: message-id=<other@example.org>\n",
        f"Dec 01 21:30:00 mail postfix-test/qmgr[6732]: {COPY}: from=<x@example.org>, size=1, nrcpt=1 (queue active)\n",
    ])
    follow(site)
    write(site, [f"Dec 01 21:31:00 mail postfix-test/smtp[6743]: {COPY}: to=<zed@example.org>, relay=none,"
                 " delay=60, delays=60/0/0/0, dsn=4.4.1, status=deferred (connect to x: Connection refused)\n"])
    follow(site)
    assert statuses(site) == FINAL  # zed's deferral is the other message's, not the post's


@pytest.mark.parametrize("backend", ["sqlite", pytest.param("postgresql", marks=pytest.mark.integration)])
def test_two_hosts_sharing_a_store_count_each_member_once(site, tmp_path, backend):
    """Another host, with its own state directory (and so its own position), reads the same lines
    into the same store: each member still has one row."""
    seed(site)
    write(site, sample_lines())
    follow(site)
    text = site.path.read_text().replace(str(tmp_path / "state"), str(tmp_path / "other"))
    if backend == "sqlite":
        text = text.replace("[store]\n", f'[store]\npath = "{site.store.path}"\n')
    (tmp_path / "other.toml").write_text(text)
    other = C.load(tmp_path / "other.toml")
    assert FO.position_path(other) != FO.position_path(site) and other.store.describe() == site.store.describe()
    assert follow(other).outcomes == {"sent": 2, "deferred": 3, "bounced": 1}
    with ST.open_store(site.store) as s:
        assert s._q("SELECT count(*) FROM deliveries")[0][0] == 3
        assert s._q("SELECT count(*) FROM reinjections")[0][0] == 1
    assert statuses(site) == FINAL


# ---------------------------------------------------------------- as sync runs it


def test_sync_runs_the_follower_after_the_ingest(site):
    """The post's event waits in the spool; one sync moves it into the store, then reads the log."""
    write_event(site.site.spool_dir, post().as_json(body=True) | {"recipients": [ANN, BEN, CAT]})
    write(site, sample_lines())
    result = Y.run(site)
    assert result.warnings == []
    assert (f"postfix log: {len(sample_lines())} lines read, 6 member outcomes (2 sent, 3 deferred, 1 bounced),"
            " 1 reinjected copy matched") in result.notes
    assert statuses(site) == FINAL
    assert not [n for n in Y.run(site).notes if n.startswith("postfix log")]  # nothing new, nothing to say


def test_a_log_that_cannot_be_read_is_a_warning_not_a_failure(site, monkeypatch):
    def denied(config, store, **kw):
        raise PermissionError(13, "Permission denied", str(config.postfix.log_file))

    monkeypatch.setattr(FO, "follow", denied)
    notes, warnings = [], []
    with ST.open_store(site.store) as s:
        assert IN._follow(site, s, notes, warnings) == ""
    assert warnings == [f"postfix log {site.postfix.log_file} not read: {site.postfix.log_file}: Permission denied"
                        " (members' outcomes not recorded; docs/operations.md)"]


def test_a_missing_log_is_left_to_check(site):
    """No log file (not set up yet, or a journal-only host): sync says nothing, `listfilter check` does."""
    with ST.open_store(site.store) as s:
        notes, warnings = [], []
        assert IN._follow(site, s, notes, warnings) == ""
        assert FO.follow(site, s).missing
    assert warnings == [] and notes == []


def test_an_unreadable_position_file_says_what_to_do(site):
    write(site, sample_lines())
    FO.position_path(site).parent.mkdir(parents=True, exist_ok=True)
    FO.position_path(site).write_text("{not json")
    with ST.open_store(site.store) as s:
        notes, warnings = [], []
        IN._follow(site, s, notes, warnings)
    assert "log-position.json is unreadable" in warnings[0] and "remove it" in warnings[0]


def test_a_position_file_not_of_its_own_making_is_refused(site):
    write(site, sample_lines())
    FO.position_path(site).parent.mkdir(parents=True, exist_ok=True)
    for text in ('{"log": {"path": 3}}', '["a list"]', '{"log": null, "open": [{"host": "mail"}]}'):
        FO.position_path(site).write_text(text)
        with ST.open_store(site.store) as s:
            notes, warnings = [], []
            IN._follow(site, s, notes, warnings)
        assert len(warnings) == 1 and "remove it to read the log again" in warnings[0], warnings
