"""`listfilter status`: every item, every exit code (0 OK, 1 WARNING, 2 CRITICAL, 3 UNKNOWN), --json, --prometheus.

Postfix's queue comes from a fake ``postqueue`` in ``[postfix] command_directory``
that prints ``postqueue -j`` lines of the shape the private Postfix prints
(tests/integration/test_status.py reads the real one); the rest is a real
sync of a small config into a temporary state directory and a real SQLite store.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import re
import time

import pytest
from prometheus_client.parser import text_string_to_metric_families

from listfilter.cli import status as ST
from listfilter.store import database as DB
from listfilter.sync import config as C

from ..conftest import REPO
from .runner import listfilter

DOMAIN = "lists.example.edu"
CLUB = f"club@{DOMAIN}"

#: As the private Postfix prints them (one JSON object a line); arrival_time is filled in per test.
DEFERRED = {"queue_name": "deferred", "queue_id": "4Fq2cT0Zr7z9", "arrival_time": 0, "message_size": 712,
            "forced_expire": False, "sender": "club-bounces@lists.example.edu",
            "recipients": [{"address": "ben@example.org", "delay_reason": "host 127.0.0.1[127.0.0.1] said: 450 4.2.0"
                            " <ben@example.org>: mailbox busy, try again later (in reply to RCPT TO command)"}]}
ACTIVE = {"queue_name": "active", "queue_id": "4Fq2cT1Lmnz3", "arrival_time": 0, "message_size": 512,
          "forced_expire": False, "sender": "prof@example.edu", "recipients": [{"address": CLUB}]}
HELD = {"queue_name": "hold", "queue_id": "4Fq2cT2Pqrz4", "arrival_time": 0, "message_size": 512,
        "forced_expire": False, "sender": "club-bounces+ann=example.org@lists.example.edu",
        "recipients": [{"address": "ann@example.org"}]}
OTHER = {"queue_name": "deferred", "queue_id": "4Fq2cT3Xyzz5", "arrival_time": 0, "message_size": 300,
         "forced_expire": False, "sender": "root@host.example.edu", "recipients": [{"address": "ops@example.net"}]}


@pytest.fixture
def site(tmp_path):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    queue = tmp_path / "queue.jsonl"
    queue.write_text("")
    script = bin_dir / "postqueue"
    script.write_text(f'#!/bin/sh\n[ "$1" = "-j" ] || exit 64\n[ -f "{tmp_path}/postqueue-fails" ] && '
                      f'{{ echo "postqueue: fatal: Queue report unavailable - mail system is down" >&2; exit 69; }}\n'
                      f'exec cat "{queue}"\n')
    script.chmod(0o755)
    config = tmp_path / "lists.toml"
    config.write_text(f"""
[site]
state_dir = "{tmp_path / 'state'}"
owners = ["prof@example.edu"]
[postfix]
command_directory = "{bin_dir}"
map_type = "texthash"
reload = false
[roster]
source = "csv"
csv = "{REPO / 'docs/example/roster.csv'}"
[store]
path = "{tmp_path / 'maillog.sqlite'}"
[domains."{DOMAIN}"]
course = "CS 199"
[lists.club]
members = {{ emails = ["ann@example.org", "ben@example.org"] }}
posters = ["prof@example.edu"]
""")
    assert listfilter(config, "db", "upgrade").returncode == 0
    ran = listfilter(config, "sync")
    assert ran.returncode == 0, ran.stderr
    return config, queue


def put_queue(queue, *entries, age: float = 60):
    queue.write_text("".join(json.dumps({**e, "arrival_time": int(time.time() - age)}) + "\n" for e in entries))


def status(config, *args):
    ran = listfilter(config, "status", "--json", *args)
    out = json.loads(ran.stdout)
    assert out["exit"] == ran.returncode
    return ran.returncode, {i["name"]: i for i in out["items"]}


def test_a_quiet_host_is_ok(site):
    config, queue = site
    put_queue(queue, OTHER)  # not list mail: not counted
    code, items = status(config)
    assert code == 0, [i for i in items.values() if i["status"] != "ok"]
    assert items["queue"]["detail"] == "0 active, 0 deferred, 0 held"
    assert items[f"queue.{DOMAIN}"]["status"] == "ok"
    assert items["sync"]["detail"].endswith(", ok") and items["sync"]["values"]["ok"] == 1
    assert items["spool"]["values"] == {"events": 0, "bounces": 0, "bad": 0}
    assert items["failed_posts"]["values"] == {"count": 0} and items["suppressed"]["values"] == {"count": 0}
    ran = listfilter(config, "status")
    assert ran.returncode == 0 and ran.stdout.startswith("OK: ")


def test_a_deferred_list_message_is_a_warning_with_its_age(site):
    config, queue = site
    put_queue(queue, DEFERRED, ACTIVE, HELD, OTHER, age=600)
    code, items = status(config)
    assert code == 1
    q = items["queue"]
    assert q["status"] == "warn" and q["values"]["active"] == 1 and q["values"]["deferred"] == 1
    assert q["values"]["held"] == 1 and 590 <= q["values"]["oldest_deferred_seconds"] <= 700
    assert q["detail"].startswith("1 active, 1 deferred, 1 held; oldest deferred 10 min")
    ran = listfilter(config, "status")
    assert ran.returncode == 1 and ran.stdout.startswith("WARNING: queue 1 active, 1 deferred")


def test_an_old_deferred_message_is_critical(site):
    config, queue = site
    put_queue(queue, DEFERRED, age=25 * 3600)
    code, items = status(config)
    assert code == 2 and items["queue"]["status"] == "crit"


def test_thresholds_come_from_the_status_table(site):
    config, queue = site
    config.write_text(config.read_text() + "[status]\ndeferred_warn = 0\nheld_warn = 0\nactive_warn = 0\n"
                                           "oldest_deferred_warn_hours = 0\nsync_crit_minutes = 0\n")
    put_queue(queue, DEFERRED, ACTIVE, HELD)
    assert status(config)[0] == 0


@pytest.mark.parametrize("text, field", [
    ("deferred_warn = -1", "status.deferred_warn"),
    ('spool_warn = "lots"', "status.spool_warn"),
    ("deferred_warn = 10\ndeferred_crit = 5", "status.deferred_warn"),
    ("nonsense = 1", "status.nonsense"),
])
def test_a_bad_threshold_names_its_field_and_status_says_unknown(site, text, field):
    config, _ = site
    config.write_text(config.read_text() + f"[status]\n{text}\n")
    with pytest.raises(C.ConfigError) as err:
        C.load(config)
    assert err.value.where == field
    ran = listfilter(config, "status")
    assert ran.returncode == 3 and ran.stdout.startswith("UNKNOWN: config error") and field in ran.stdout


def test_postqueue_failing_is_unknown(site, tmp_path):
    config, _ = site
    (tmp_path / "postqueue-fails").write_text("")
    code, items = status(config)
    assert code == 3
    assert "exited 69: postqueue: fatal: Queue report unavailable" in items["queue"]["detail"]


def test_a_failed_sync_is_critical_and_a_stale_one_warns(site, tmp_path):
    config, _ = site
    last = tmp_path / "state" / "last-sync.json"
    data = json.loads(last.read_text())
    assert data["ok"] is True and data["warnings"] == 0
    old = (dt.datetime.now(dt.timezone.utc) - dt.timedelta(minutes=45)).isoformat()
    last.write_text(json.dumps({**data, "at": old}))
    code, items = status(config)
    assert code == 1 and items["sync"]["status"] == "warn" and items["sync"]["detail"].startswith("last sync 45 min ago")

    last.write_text(json.dumps({**data, "warnings": 2}))
    code, items = status(config)
    assert code == 1 and items["sync"]["detail"].endswith(" ago, ok with 2 warnings")

    config.write_text(config.read_text().replace("docs/example/roster.csv", "docs/example/no-such-roster.csv"))
    assert listfilter(config, "sync").returncode != 0
    code, items = status(config)
    assert code == 2 and items["sync"]["status"] == "crit"
    assert items["sync"]["detail"].startswith("last sync 0 s ago, failed: ") and "no-such-roster.csv" in items["sync"]["detail"]


def test_a_missing_snapshot_is_critical(site, tmp_path):
    config, _ = site
    (tmp_path / "state" / "snapshot.sqlite").unlink()
    code, items = status(config)
    assert code == 2 and "is missing" in items["snapshot"]["detail"] and items["suppressed"]["status"] == "unknown"


def test_spool_backlog_and_failed_posts(site, tmp_path):
    config, _ = site
    cfg = C.load(config)
    events = cfg.site.spool_dir / "events"
    events.mkdir(parents=True, exist_ok=True)
    for n in range(3):
        (events / f"e{n}.json").write_text("{}")
    config.write_text(config.read_text() + "[status]\nspool_warn = 2\nspool_crit = 3\n")
    code, items = status(config)
    assert code == 2 and items["spool"]["values"]["events"] == 3
    for n in range(3):
        (events / f"e{n}.json").unlink()

    with DB.open_store(cfg.store) as store:
        now = store._ts(dt.datetime.now(dt.timezone.utc))
        for who, what in (("ann@example.org", "bounced"), ("ben@example.org", "expired"), ("cat@example.org", "sent")):
            store._execute("INSERT INTO deliveries (event_id, recipient, status, at, first_at, host, queue_id, relay,"
                           " dsn, reply, delay, updated_at) VALUES ('ev1', ?, ?, ?, ?, 'h', 'Q1', '', '', '', 0, ?)",
                           (who, what, now, now, now))
    code, items = status(config)
    assert code == 1 and items["failed_posts"]["values"] == {"count": 1} and items["failed_posts"]["status"] == "warn"


def test_a_store_that_cannot_be_read_is_unknown(site, tmp_path):
    config, _ = site
    (tmp_path / "maillog.sqlite").unlink()
    code, items = status(config)
    assert code == 3 and "does not exist" in items["failed_posts"]["detail"]


def test_without_a_store_table_the_mail_log_is_not_checked(site, tmp_path):
    config, _ = site
    config.write_text(re.sub(r"\[store\]\npath = .*\n", "", config.read_text()))
    assert not C.load(config).store.configured
    code, items = status(config)
    assert code == 0 and items["failed_posts"]["detail"] == "no mail log (no [store] table): not checked"


def test_an_old_dkim_key_warns(tmp_path, site):
    config, _ = site
    key = tmp_path / "keys" / DOMAIN / "s1.private"
    key.parent.mkdir(parents=True)
    key.write_text("-----BEGIN PRIVATE KEY-----\n")
    old = time.time() - 400 * 86400
    os.utime(key, (old, old))
    config.write_text(config.read_text().replace('course = "CS 199"', 'course = "CS 199"\ndkim_selector = "s1"')
                      + f'[dkim]\nkey_dir = "{tmp_path / "keys"}"\n')
    code, items = status(config)
    assert code == 1 and items[f"dkim.{DOMAIN}"]["status"] == "warn" and "400.0 days old" in items[f"dkim.{DOMAIN}"]["detail"]


def test_the_prometheus_file_parses(site, tmp_path):
    config, queue = site
    put_queue(queue, DEFERRED, ACTIVE, age=120)
    out = tmp_path / "textfile" / "listfilter.prom"
    out.parent.mkdir()
    ran = listfilter(config, "status", "--prometheus", str(out))
    assert ran.returncode == 1
    assert not [p for p in out.parent.iterdir() if p != out]  # the temp file was renamed
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
               for fam in text_string_to_metric_families(out.read_text()) for s in fam.samples}
    assert samples[("listfilter_status", ())] == 1
    assert samples[("listfilter_queue_messages", (("domain", "all"), ("queue", "deferred")))] == 1
    assert samples[("listfilter_queue_messages", (("domain", DOMAIN), ("queue", "active")))] == 1
    assert 110 <= samples[("listfilter_queue_oldest_deferred_seconds", (("domain", "all"),))] <= 200
    assert samples[("listfilter_status_item", (("item", "queue"),))] == 1
    assert samples[("listfilter_status_item", (("item", "sync"),))] == 0
    assert samples[("listfilter_sync_ok", ())] == 1


def test_list_mail_is_found_by_sender_or_recipient():
    domains = {DOMAIN}
    assert ST.list_domain_of(DEFERRED, domains) == DOMAIN
    assert ST.list_domain_of(HELD, domains) == DOMAIN  # VERP
    assert ST.list_domain_of(ACTIVE, domains) == DOMAIN
    assert ST.list_domain_of(OTHER, domains) is None
    assert ST.grade(5, 0, 0) == "ok" and ST.grade(5, 5, 0) == "warn" and ST.grade(5, 1, 5) == "crit"
    assert ST.worst([ST.Item("a", "warn", ""), ST.Item("b", "unknown", "")]) == "unknown"
    assert ST.worst([ST.Item("a", "crit", ""), ST.Item("b", "unknown", "")]) == "crit"
