#!/usr/bin/env python3
"""What an opt-in list's per-member copies cost: one `listfilter-deliver` of a post to 1,000 members.

A roster list hands its post to sendmail once (every member a recipient, VERP
by Postfix); an opt-in list's members each get a copy with their own
List-Unsubscribe link (RFC 8058), so deliver runs sendmail once per member,
each submission recorded in the spool's progress record before and after.
This times both, end to end (the process, its sendmails, Postfix's pickup
and cleanup), against a private Postfix whose smtp transport is deferred
(``defer_transports = smtp``): the copies are queued, never sent; the queue
is emptied between runs. Must run as root (Postfix's own directories).

    .venv/bin/python bench/optin_bench.py [--members 1000] [--runs 3] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from listfilter.common import tokens as TK  # noqa: E402
from tests.harness.postfix import PostfixInstance, free_port  # noqa: E402
from tests.mail import compiled_list, write_snapshot  # noqa: E402

DELIVER = Path(sys.executable).with_name("listfilter-deliver")
LISTS = {"roster": "students@lists.example.edu", "opt-in": "club@lists.example.edu"}


def post(to: str, message_id: str) -> bytes:
    return (f"From: Pat Prof <prof@example.edu>\nTo: {to}\nSubject: hello\nMessage-ID: {message_id}\n"
            "Date: Tue, 24 Nov 2026 10:00:00 -0600\nMIME-Version: 1.0\nContent-Type: text/plain; charset=utf-8\n\n"
            + "See you on Monday.\n" * 60).encode()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--members", type=int, default=1000)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    members = [f"m{i:05d}@example.org" for i in range(args.members)]
    results: dict[str, dict] = {}
    with tempfile.TemporaryDirectory(prefix="optin-bench-", dir="/tmp") as tmp:
        base = Path(tmp)
        os.chmod(base, 0o755)
        key = base / "token-key"
        TK.ensure_key(key)
        lists = [compiled_list(LISTS["roster"], members=members, posters=["prof@example.edu"]),
                 compiled_list(LISTS["opt-in"], members=members, posters=["prof@example.edu"], optin=True,
                               join_rule="anyone", unsubscribe_url="https://lists.example.edu/unsubscribe")]
        snapshot = write_snapshot(base / "snapshot.sqlite", lists, spool=base / "spool", sendmail="/usr/sbin/sendmail",
                                  settings={"token_key": str(key), "postfix_log": "", "postqueue": ""})
        pf = PostfixInstance(base / "postfix", relay_port=free_port(), main_cf={"defer_transports": "smtp"})
        pf.start()
        env = {**os.environ, "MAIL_CONFIG": str(pf.config_dir)}
        try:
            for kind, address in LISTS.items():
                times = []
                for run in range(args.runs):
                    raw = post(address, f"<bench-{kind}-{run}-{time.time_ns()}@example.edu>")
                    start = time.perf_counter()
                    proc = subprocess.run([str(DELIVER), "--snapshot", str(snapshot), "--sender", "prof@example.edu",
                                           "--recipient", address, "--queue-id", "BENCH"], input=raw, env=env,
                                          capture_output=True)
                    times.append(time.perf_counter() - start)
                    if proc.returncode != 0:
                        raise SystemExit(f"deliver exited {proc.returncode}: {proc.stderr.decode()}")
                    subprocess.run(["postsuper", "-c", str(pf.config_dir), "-d", "ALL"], capture_output=True)
                results[f"{kind} {args.members}"] = {"median_s": statistics.median(times), "min_s": min(times),
                                                     "max_s": max(times), "runs": args.runs}
        finally:
            pf.stop()
    if args.json:
        print(json.dumps(results, indent=2))
        return
    for name, r in results.items():
        print(f"{name:>14}: median {r['median_s']:7.2f} s (min {r['min_s']:.2f}, max {r['max_s']:.2f})")


if __name__ == "__main__":
    main()
