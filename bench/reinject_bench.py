#!/usr/bin/env python3
"""The reinjected copy's queue id, two ways, timed per post for 500 and 10,000 members (docs/operations.md).

- ``sendmail``: what deliver does (``sendmail -G -i -f LIST-bounces -XV -- MEMBER…``), then
  the queue id found in Postfix's log (pickup's ``uid= from=<LIST-bounces@…>`` and cleanup's
  ``message-id=`` lines, :func:`listfilter.sync.postfixlog.reinjected`), read from where the
  log ended before the submission, polled every 10 ms until the line is there;
- ``smtp``: an SMTP transaction with a dedicated local smtpd (FILTER_README's reinjection
  service: 127.0.0.1 only, XVERP allowed), whose reply to DATA names the queue id
  ("250 2.0.0 Ok: queued as …"): with Python's smtplib (one RCPT round trip each), and
  with every RCPT pipelined (RFC 2920) in one write.

A private Postfix (tests/harness/postfix.py) whose smtp transport is deferred
(``defer_transports = smtp``): the copies are queued and logged, never sent. The queue is
emptied between runs. Must run as root (Postfix's own directories).

    .venv/bin/python bench/reinject_bench.py [--runs 5] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import smtplib
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from listfilter.common.sendmail import submit  # noqa: E402
from listfilter.sync.postfixlog import reinjected  # noqa: E402
from tests.harness.postfix import PostfixInstance, free_port  # noqa: E402

SIZES = (500, 10_000)
LIST = "students@lists.example.edu"
BOUNCES = "students-bounces@lists.example.edu"
REINJECT = """
127.0.0.1:{port} inet n - n - - smtpd
  -o syslog_name=postfix-test/reinject
  -o content_filter=
  -o receive_override_options=no_unknown_recipient_checks,no_header_body_checks,no_milters
  -o smtpd_helo_restrictions=
  -o smtpd_client_restrictions=
  -o smtpd_sender_restrictions=
  -o smtpd_relay_restrictions=
  -o smtpd_recipient_restrictions=permit_mynetworks,reject
  -o mynetworks=127.0.0.0/8
  -o smtpd_authorized_verp_clients=127.0.0.0/8
  -o smtpd_recipient_limit=20000
  -o smtpd_client_connection_count_limit=0
  -o smtpd_client_connection_rate_limit=0
"""


def message(message_id: str) -> bytes:
    return (f"From: Pat Prof <prof@example.edu>\r\nTo: CS 199 <{LIST}>\r\nSubject: [CS 199] hello\r\n"
            f"Message-ID: {message_id}\r\nList-Id: <students.lists.example.edu>\r\nPrecedence: list\r\n"
            "MIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n"
            + "See you on Monday.\r\n" * 60).encode()


def members(n: int) -> list[str]:
    return [f"m{i:05d}@example.org" for i in range(n)]


def by_sendmail(pf: PostfixInstance, n: int, message_id: str) -> tuple[float, float, str]:
    """(seconds until the queue id is known, of which sendmail's own, the queue id)."""
    log = pf.maillog_path
    start_offset = log.stat().st_size
    os.environ["MAIL_CONFIG"] = str(pf.config_dir)
    start = time.perf_counter()
    submit("/usr/sbin/sendmail", BOUNCES, members(n), message(message_id), verp=True)
    sent = time.perf_counter()
    while True:
        with open(log, "rb") as fh:
            fh.seek(start_offset)
            lines = fh.read().decode("utf-8", "replace").splitlines()
        found = reinjected(lines, message_id, LIST)
        if found:
            return time.perf_counter() - start, sent - start, found[0]
        if time.perf_counter() - start > 120:
            raise SystemExit(f"{message_id}: not in the log after 120 s")
        time.sleep(0.01)


def by_smtp(port: int, n: int, message_id: str) -> tuple[float, float, str]:
    start = time.perf_counter()
    with smtplib.SMTP("127.0.0.1", port, timeout=120) as s:
        s.ehlo("localhost")
        code, reply = s.mail(BOUNCES, ["XVERP"])
        if code != 250:
            raise SystemExit(f"MAIL FROM: {code} {reply!r}")
        for rcpt in members(n):
            code, reply = s.rcpt(rcpt)
            if code != 250:
                raise SystemExit(f"RCPT TO:<{rcpt}>: {code} {reply!r}")
        code, reply = s.data(message(message_id))
    took = time.perf_counter() - start
    text = reply.decode()
    if code != 250 or "queued as " not in text:
        raise SystemExit(f"DATA: {code} {text}")
    return took, took, text.rsplit("queued as ", 1)[1].strip()


def by_pipelined_smtp(port: int, n: int, message_id: str) -> tuple[float, float, str]:
    """The same transaction with the RCPTs pipelined (RFC 2920): one write, then every reply."""
    import socket

    start = time.perf_counter()
    with socket.create_connection(("127.0.0.1", port), timeout=120) as sock:
        f = sock.makefile("rb")

        def reply() -> tuple[int, str]:
            lines = []
            while True:
                line = f.readline().decode()
                lines.append(line[4:].strip())
                if line[3:4] != "-":
                    return int(line[:3]), " ".join(lines)

        reply()
        sock.sendall(b"EHLO localhost\r\n")
        reply()
        sock.sendall(f"MAIL FROM:<{BOUNCES}> XVERP\r\n".encode()
                     + b"".join(f"RCPT TO:<{r}>\r\n".encode() for r in members(n)) + b"DATA\r\n")
        for what in ["MAIL", *(["RCPT"] * n), "DATA"]:
            code, text = reply()
            if code not in (250, 354):
                raise SystemExit(f"{what}: {code} {text}")
        body = message(message_id).replace(b"\r\n.", b"\r\n..")
        sock.sendall(body + b".\r\n")
        code, text = reply()
        sock.sendall(b"QUIT\r\n")
    took = time.perf_counter() - start
    if code != 250 or "queued as " not in text:
        raise SystemExit(f"DATA: {code} {text}")
    return took, took, text.rsplit("queued as ", 1)[1].strip()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    port = free_port()
    results: dict[str, dict] = {}
    with tempfile.TemporaryDirectory(prefix="reinject-bench-", dir="/tmp") as tmp:
        os.chmod(tmp, 0o755)
        pf = PostfixInstance(Path(tmp) / "postfix", relay_port=free_port(),
                             main_cf={"defer_transports": "smtp", "smtpd_recipient_limit": "20000"},
                             master_cf_extra=REINJECT.format(port=port))
        pf.start()
        try:
            for n in SIZES:
                for way in ("sendmail", "smtp", "smtp pipelined"):
                    times, own = [], []
                    for run in range(args.runs):
                        mid = f"<bench-{way}-{n}-{run}-{time.time_ns()}@example.edu>"
                        how = {"sendmail": lambda: by_sendmail(pf, n, mid), "smtp": lambda: by_smtp(port, n, mid),
                               "smtp pipelined": lambda: by_pipelined_smtp(port, n, mid)}[way]
                        t, o, qid = how()
                        times.append(t)
                        own.append(o)
                        subprocess.run(["postsuper", "-c", str(pf.config_dir), "-d", qid],
                                       capture_output=True, check=False)
                    results[f"{way} {n}"] = {"median_s": statistics.median(times), "min_s": min(times),
                                             "max_s": max(times), "submission_median_s": statistics.median(own),
                                             "runs": args.runs}
        finally:
            pf.stop()
    if args.json:
        print(json.dumps(results, indent=2))
        return
    for name, r in results.items():
        print(f"{name:>22}: median {r['median_s'] * 1000:8.1f} ms (min {r['min_s'] * 1000:.1f}, max"
              f" {r['max_s'] * 1000:.1f}); the submission itself {r['submission_median_s'] * 1000:.1f} ms")


if __name__ == "__main__":
    main()
