#!/usr/bin/env python3
"""How long the admin page /email takes with a large mail log.

Fills a fresh SQLite store with N rows (30 recipients and a 640-byte body
each, the four statuses in turn), signs in through Flask's test client and
times the first page, a deep page and a filtered deep page, 50 rows a page.
Prints milliseconds per page (median of the runs); asserts nothing (the tests
check what the pages show, this measures how long they take).

    .venv/bin/python bench/web_bench.py [--rows 10000] [--runs 5] [--json]
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import re
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from listfilter.admin import app as W  # noqa: E402
from listfilter.admin import auth as A  # noqa: E402
from listfilter.common import events as EV  # noqa: E402
from listfilter.store import database as ST  # noqa: E402
from listfilter.sync import config as C  # noqa: E402

PASSWORD = "correct horse battery"
T0 = dt.datetime(2026, 1, 21, 15, 0, tzinfo=dt.timezone.utc)
STATUSES = ("delivered", "bounced", "rejected", "failed")


def config(base: Path) -> C.Config:
    path = base / "lists.toml"
    path.write_text(f'[site]\nstate_dir = "{base / "state"}"\nowners = ["o@example.edu"]\n[postfix]\n[roster]\n'
                    '[domains."lists.example.edu"]\n'
                    '[lists.students]\nmembers = { emails = ["a@example.edu"] }\nposters = []\n'
                    f'[web]\npage_size = 50\n[web.accounts]\n"bench@example.edu" = "{A.hash_password(PASSWORD)}"\n')
    return C.load(path)


def fill(cfg: C.Config, rows: int) -> None:
    with ST.open_store(cfg.store, create=True) as store:
        store.upgrade()
        store.upsert([ST.entry_of(EV.Event(
            id=uuid.uuid5(uuid.NAMESPACE_URL, f"bench:{n}").hex, status=STATUSES[n % 4],
            list_address="students@lists.example.edu", created_at=(T0 + dt.timedelta(seconds=n)).isoformat(),
            list_display_name="CS 199 Students", sender_email="prof@example.edu", sender_name="Jane Doe",
            subject=f"Message {n}", message_id=f"<m{n}@example.edu>",
            recipients=tuple(f"m{k}@example.edu" for k in range(30)), recipient_count=30,
            body="Hello everyone,\n" * 40)) for n in range(rows)])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=10_000)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    pages = args.rows // 50
    urls = {"first page": "/email", f"page {pages // 2}": f"/email?page={pages // 2}",
            f"failed, page {pages // 8}": f"/email?status=failed&page={pages // 8}"}
    with tempfile.TemporaryDirectory(prefix="listfilter-web-bench-") as tmp:
        cfg = config(Path(tmp))
        fill(cfg, args.rows)
        client = W.create_app(cfg).test_client()
        page = client.get("/login").get_data(as_text=True)
        token = re.search(r'name="csrf_token" value="([^"]+)"', page).group(1)
        client.post("/login", data={"csrf_token": token, "username": "bench@example.edu", "password": PASSWORD})
        results = {}
        for label, url in urls.items():
            times = []
            for _ in range(args.runs):
                started = time.perf_counter()
                r = client.get(url)
                times.append(time.perf_counter() - started)
                if r.status_code != 200 or r.data.count(b'<details class="row"') != 50:
                    raise SystemExit(f"{url}: status {r.status_code}, not a full page")
            results[label] = {"url": url, "median_ms": statistics.median(times) * 1000}
    if args.json:
        print(json.dumps({"rows": args.rows, "pages": results}, indent=2))
        return
    print(f"/email with {args.rows} rows, 50 a page (median of {args.runs}): "
          + ", ".join(f"{label}: {r['median_ms']:.0f} ms" for label, r in results.items()))


if __name__ == "__main__":
    main()
