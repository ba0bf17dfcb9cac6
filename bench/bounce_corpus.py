#!/usr/bin/env python3
"""flufl.bounce's corpus through the real ``listfilter-bounce``, and what a bounce costs sync to check.

Runs every sample of tests/data/bounces/flufl (flufl.bounce 6.0.0's own
corpus, with the addresses its tests expect: FLUFL_EXPECTED in
tests/mail/test_bounce.py) through the console script, to the VERP address
of each expected address and to the plain -bounces address, once as it is
and once with the top-level From header removed. Prints how many permanent
failures were attributed, how many delays and auto-replies were recorded
(none should be), and how many reports return the post's Message-ID (what
sync checks against the mail log) or a header block at all (where any keyed
header a post carried would come back). Then times
:func:`listfilter.store.bounces.verify` against an SQLite mail log of
--posts delivered posts. Asserts nothing; the tests check the thresholds.

    .venv/bin/python bench/bounce_corpus.py [--posts 10000] [--json]
"""

from __future__ import annotations

import argparse
import datetime as dt
import email
import json
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from listfilter.mail import bounce as MB  # noqa: E402
from tests.mail.test_bounce import FLUFL, FLUFL_EXPECTED, corpus_cases, figures, run_corpus  # noqa: E402


def returned_headers(path: Path) -> tuple[bool, bool]:
    """(the report returns a header block of the post, the report names a Message-ID of it)."""
    message = email.message_from_bytes(path.read_bytes())
    block = False
    for part in MB._walk(message):
        kind = part.get_content_type()
        if kind in MB._RETURNED and part.is_multipart() and part.get_payload(0).keys():
            block = True
        elif kind == "text/rfc822-headers" and MB._text_of(part).strip():
            block = True
    return block, bool(MB.returned_message_ids(message))


def corpus() -> dict:
    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        for strip in (False, True):
            start = time.monotonic()
            cases = corpus_cases(strip)
            outcomes = run_corpus(Path(tmp) / f"run-{strip}", cases)
            got = figures(outcomes)
            got["runs"] = (len(outcomes), 0)
            got["seconds"] = (round(time.monotonic() - start, 1), 0)
            got["not clean (exit or stderr)"] = (sum(o.returncode != 0 or bool(o.stderr) for o in outcomes), 0)
            got["missed"] = sorted({o.case.file for o in outcomes if o.case.kind == "permanent" and not o.attributed})
            out["without From" if strip else "with From"] = got
    blocks = [returned_headers(FLUFL / name) for name in sorted(FLUFL_EXPECTED)]
    out["returned"] = {"samples": len(blocks), "header block": sum(b for b, _ in blocks),
                       "header block with Message-ID": sum(b and m for b, m in blocks),
                       "Message-ID found anywhere": sum(m for _, m in blocks)}
    return out


def store_lookup(posts: int, members: int = 50) -> dict:
    """Mean time of one verify() over a mail log of ``posts`` delivered posts (SQLite)."""
    from listfilter.common import events as EV
    from listfilter.store import bounces as B
    from listfilter.store import database as ST
    from listfilter.sync.config import StoreSettings

    now = dt.datetime.now(dt.timezone.utc)
    with tempfile.TemporaryDirectory() as tmp:
        settings = StoreSettings(backend="sqlite", path=Path(tmp) / "log.sqlite", dsn_env="", dsn=None,
                                 retention_days=0, body_retention_days=0, store_bodies=False, body_max_bytes=0)
        with ST.open_store(settings, create=True) as store:
            store.upgrade()
            recipients = [f"m{i}@example.edu" for i in range(members)]
            store.upsert([ST.Entry(id=f"{n:032x}", status="delivered", list_address="students@lists.example.edu",
                                   created_at=now - dt.timedelta(minutes=n), message_id=f"<post{n}@example.edu>",
                                   recipients=recipients, recipient_count=members) for n in range(posts)])
            records = [EV.BounceRecord(id=EV.random_id(), list_address="students@lists.example.edu",
                                       received_at=now.isoformat(), day=now.date().isoformat(),
                                       member="m7@example.edu", permanent=("m7@example.edu",),
                                       message_ids=(f"<post{n * 7 % posts}@example.edu>",)) for n in range(500)]
            start = time.perf_counter()
            ok = sum(B.verify(store, r)[0] == "" for r in records)
            took = time.perf_counter() - start
    return {"posts in the log": posts, "lookups": len(records), "matched": ok,
            "ms per lookup": round(1000 * took / len(records), 3)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--posts", type=int, default=10000)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    result = {"corpus": corpus(), "store": store_lookup(args.posts)}
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    for form, got in result["corpus"].items():
        if form == "returned":
            print("returned post:", ", ".join(f"{k} {v}" for k, v in got.items()))
            continue
        print(f"{form}:")
        for name, value in got.items():
            if isinstance(value, tuple):
                hits, of = value
                print(f"  {name}: {hits}" + (f" of {of} ({100 * hits / of:.1f} %)" if of else ""))
            else:
                print(f"  {name}: {', '.join(value) or 'none'}")
    print("store:", ", ".join(f"{k} {v}" for k, v in result["store"].items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
