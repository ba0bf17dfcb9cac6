#!/usr/bin/env python3
"""Benchmark of sync's DMARC lookups (listfilter.sync.dmarc.look_up) for many poster domains.

Serves N domains from a real Knot DNS (tests/harness/dns.py) on a loopback port: a third
with p=reject, a third with p=none, a third with no record (the organisational-domain
fallback is then asked too). The resolver is reached through a small UDP relay that holds
each answer back by --delay ms, as a recursive resolver does for names it has not cached,
and once more through a relay that never answers (DNS unreachable). Then a second sync's
view: the same domains with every answer still fresh in the installed snapshot.

    .venv/bin/python -m bench.dmarc_bench [--domains 2000] [--delay 20] [--timeout 5] [--json]

Needs Debian's knot (tests/run installs it). Everything listens on 127.0.0.1 only.
"""

from __future__ import annotations

import argparse
import json
import socket
import tempfile
import threading
import time
from pathlib import Path

from listfilter.sync import config as C
from listfilter.sync import dmarc as DM


class Relay:
    """UDP on 127.0.0.1: forwards each query to ``upstream`` and its answer back ``delay`` seconds later;
    with ``upstream`` None it answers nothing."""

    def __init__(self, upstream: tuple[str, int] | None, delay: float):
        self.upstream, self.delay = upstream, delay
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.stopped = False
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while not self.stopped:
            try:
                data, client = self.sock.recvfrom(4096)
            except OSError:
                return
            if self.upstream is not None:
                threading.Thread(target=self._forward, args=(data, client), daemon=True).start()

    def _forward(self, data: bytes, client) -> None:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as up:
            up.settimeout(5)
            up.sendto(data, self.upstream)
            try:
                answer, _ = up.recvfrom(4096)
            except OSError:
                return
        time.sleep(self.delay)
        self.sock.sendto(answer, client)

    def stop(self) -> None:
        self.stopped = True
        self.sock.close()


def zones(n: int) -> dict[str, str]:
    out = {}
    for i in range(n):
        kind = i % 3
        out[f"poster{i:05d}.example"] = ('_dmarc IN TXT "v=DMARC1; p=reject"' if kind == 0 else
                                         '_dmarc IN TXT "v=DMARC1; p=none"' if kind == 1 else "www IN A 192.0.2.1")
    return out


def run(n: int, delay_ms: float, timeout: float) -> dict:
    from tests.harness.dns import DNSServer

    domains = sorted(zones(n))
    results = {"domains": n, "delay_ms": delay_ms, "timeout_s": timeout, "workers": DM.WORKERS, "rows": []}
    with tempfile.TemporaryDirectory() as tmp, DNSServer(Path(tmp) / "dns", zones(n)) as dns:
        for name, upstream in (("answering", (dns.address, dns.port)), ("unreachable", None)):
            relay = Relay(upstream, delay_ms / 1000)
            try:
                settings = C.DNSSettings(nameservers=("127.0.0.1",), port=relay.port, timeout=timeout)
                started = time.monotonic()
                got = DM.look_up(domains, settings)
                took = time.monotonic() - started
            finally:
                relay.stop()
            statuses = {s: sum(1 for e in got.values() if e.status == s) for s in ("ok", "none", "failed")}
            results["rows"].append({"resolver": name, "seconds": round(took, 2), **statuses})
            if name == "answering":
                fresh = got
        config = C.Config(path=Path(tmp), site=None, postfix=None, roster=None, domains={})  # only .dns is read

        class Lst:  # what refresh reads of a compiled list
            dmarc, dmarc_always, posters = "munge", (), tuple(f"someone@{d}" for d in domains)

        started = time.monotonic()
        again = DM.refresh(config, [Lst], fresh)
        results["rows"].append({"resolver": "second sync, answers fresh", "seconds": round(time.monotonic() - started, 3),
                                "asked": again.asked, "reused": again.reused})
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    parser.add_argument("--domains", type=int, default=2000)
    parser.add_argument("--delay", type=float, default=20.0, help="ms each answer is held back")
    parser.add_argument("--timeout", type=float, default=5.0, help="[dns] timeout, seconds")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    result = run(args.domains, args.delay, args.timeout)
    if args.json:
        print(json.dumps(result, indent=2))
        return
    print(f"{args.domains} poster domains, {DM.WORKERS} lookups at a time, answers held back {args.delay:g} ms,"
          f" [dns] timeout {args.timeout:g} s")
    for row in result["rows"]:
        rest = ", ".join(f"{k} {v}" for k, v in row.items() if k not in ("resolver", "seconds"))
        print(f"  {row['resolver']:<28}{row['seconds']:>8.2f} s  {rest}")


if __name__ == "__main__":
    main()
