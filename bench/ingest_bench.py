#!/usr/bin/env python3
"""How fast sync moves the spool's event records into the mail log store.

Writes N event records (20 recipients each, the shape `listfilter-deliver`
writes) into a fresh spool, then times one ingest into a fresh store: SQLite
in a temporary directory, and PostgreSQL when a server answers at
$LISTFILTER_BENCH_PG (a database of its own, dropped afterwards). Prints
events per second; asserts nothing (the tests check what ingest does, this
measures how long it takes).

    .venv/bin/python bench/ingest_bench.py [--events 2000] [--runs 3] [--json]
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from listfilter.common import events as EV  # noqa: E402
from listfilter.common import spool as SP  # noqa: E402
from listfilter.store import database as ST  # noqa: E402
from listfilter.store import ingest as IN  # noqa: E402
from listfilter.sync import config as C  # noqa: E402

PG_ADMIN_DSN = os.environ.get("LISTFILTER_BENCH_PG", "postgresql://postgres@127.0.0.1:5432/postgres")
T0 = dt.datetime(2026, 1, 21, 15, 0, tzinfo=dt.timezone.utc)


def config(base: Path, store: str) -> C.Config:
    path = base / "lists.toml"
    path.write_text(f'[site]\nstate_dir = "{base / "state"}"\nowners = ["o@example.edu"]\n[postfix]\n[roster]\n'
                    f'[store]\n{store}\n[domains."lists.example.edu"]\n'
                    '[lists.students]\nmembers = { emails = ["a@example.edu"] }\nposters = []\n')
    return C.load(path)


def fill_spool(spool: Path, n: int) -> None:
    SP.ensure(spool)
    for i in range(n):
        SP.write_event(spool, EV.Event(
            id=uuid.uuid5(uuid.NAMESPACE_URL, f"bench:{i}").hex, status="delivered",
            list_address="students@lists.example.edu", created_at=(T0 + dt.timedelta(seconds=i)).isoformat(),
            rule="poster", list_display_name="CS 199 Students", sender_email="prof@example.edu",
            sender_name="Jane Doe", envelope_sender="prof@example.edu", subject=f"Message {i}",
            message_id=f"<m{i}@example.edu>", queue_id=f"4AB{i:05d}",
            recipients=tuple(f"member{k}@example.edu" for k in range(20)), recipient_count=20,
            body="Hello everyone,\n" * 40))


def one_run(store_toml: str, n: int) -> float:
    with tempfile.TemporaryDirectory(prefix="listfilter-ingest-bench-") as tmp:
        cfg = config(Path(tmp), store_toml)
        fill_spool(cfg.site.spool_dir, n)
        with ST.open_store(cfg.store, create=True) as store:
            store.upgrade()
            if store.dialect == "postgresql":
                store._execute("TRUNCATE mail_logs")
            started = time.perf_counter()
            result = IN.ingest(store, cfg.site.spool_dir)
            elapsed = time.perf_counter() - started
            if result.ingested != n or store.count() != n:
                raise SystemExit(f"ingested {result.ingested} of {n} events")
    return elapsed


def postgresql_database():
    """A fresh database on the benchmark server, or None if none answers."""
    try:
        import psycopg
        from psycopg import sql

        admin = psycopg.connect(PG_ADMIN_DSN, autocommit=True, connect_timeout=5)
    except Exception as exc:  # no server: SQLite only
        print(f"PostgreSQL skipped ({PG_ADMIN_DSN}: {type(exc).__name__})", file=sys.stderr)
        return None, None
    name = f"listfilter_bench_{uuid.uuid4().hex[:12]}"
    with admin:
        admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))

    def drop():
        with psycopg.connect(PG_ADMIN_DSN, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))

    return PG_ADMIN_DSN.rsplit("/", 1)[0] + "/" + name, drop


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=2000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    backends = {"sqlite": ""}
    dsn, drop = postgresql_database()
    if dsn:
        backends["postgresql"] = f'backend = "postgresql"\ndsn = "{dsn}"'
    results = {}
    try:
        for name, store_toml in backends.items():
            times = [one_run(store_toml, args.events) for _ in range(args.runs)]
            median = statistics.median(times)
            results[name] = {"events": args.events, "runs": times, "median_s": median,
                             "events_per_s": args.events / median}
    finally:
        if drop:
            drop()
    if args.json:
        print(json.dumps(results, indent=2))
        return
    for name, r in results.items():
        print(f"ingest {name}: {r['events']} events in {r['median_s']:.2f} s (median of {len(r['runs'])})"
              f" = {r['events_per_s']:.0f} events/s")


if __name__ == "__main__":
    main()
