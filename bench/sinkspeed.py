#!/usr/bin/env python3
"""Which relay sink can keep up: the tests' aiosmtpd sink or bench/fastsink.py.

Each sink runs in a process of its own; four client processes send single-
recipient transactions (what Postfix's VERP fan-out sends) over persistent
SMTP connections. Prints transactions per second and the sink's CPU time per
transaction. bench/compare.py uses the faster one; docs/performance.md quotes
this.

    .venv/bin/python -m bench.sinkspeed [--transactions 4000]     (from the top of the checkout)
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import smtplib
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from tests.harness.postfix import free_port

REPO = Path(__file__).resolve().parent.parent
MSG = b"From: a@example.org\r\nTo: b@example.org\r\nSubject: x\r\nMessage-ID: <x@y>\r\n\r\n" + b"body line\r\n" * 40

# run with the checkout as the working directory, so that tests.harness imports as a package
AIOSMTPD = """
import sys
from tests.harness.smtpsink import SMTPSink
with SMTPSink(port={port}) as sink:
    print("ready", flush=True)
    sys.stdin.read()
"""


def client(port: int, n: int) -> None:
    with smtplib.SMTP("127.0.0.1", port) as smtp:
        for i in range(n):
            smtp.sendmail(f"list-bounces+u{i}=example.org@lists.example", [f"u{i}@example.org"], MSG)


def cpu_of(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as fh:
        f = fh.read().rsplit(")", 1)[1].split()
    return (int(f[11]) + int(f[12])) / os.sysconf("SC_CLK_TCK")


def measure(name: str, argv: list[str], port: int, total: int, clients: int = 4) -> None:
    proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, cwd=REPO)
    assert proc.stdout.readline().strip() == b"ready"
    try:
        cpu0, t0 = cpu_of(proc.pid), time.perf_counter()
        with mp.Pool(clients) as pool:
            pool.starmap(client, [(port, total // clients)] * clients)
        wall, cpu = time.perf_counter() - t0, cpu_of(proc.pid) - cpu0
        print(f"{name:<10} {total / wall:8.0f} transactions/s   sink CPU {cpu / total * 1e6:6.0f} µs per transaction")
    finally:
        proc.stdin.close()
        proc.terminate()
        proc.wait(10)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--transactions", type=int, default=4000)
    args = p.parse_args()
    port = free_port()
    measure("aiosmtpd", [sys.executable, "-c", AIOSMTPD.format(port=port)], port, args.transactions)
    port = free_port()
    with tempfile.TemporaryDirectory() as tmp:
        measure("fastsink", [sys.executable, str(REPO / "bench" / "fastsink.py"), "--port", str(port),
                             "--control", f"{tmp}/ctl"], port, args.transactions)


if __name__ == "__main__":
    main()
