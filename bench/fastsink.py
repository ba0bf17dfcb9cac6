#!/usr/bin/env python3
"""A minimal, fast SMTP relay sink that counts what it receives.

Run as its own process by bench/compare.py (so its work never competes with
the harness for the GIL). It speaks real SMTP (RFC 5321: EHLO/HELO, MAIL,
RCPT, DATA with dot-unstuffing, RSET, NOOP, QUIT; PIPELINING and 8BITMIME
advertised, no STARTTLS), accepts every recipient and keeps, per Message-ID:

- how many times each recipient received it (so losses and duplicates show),
- when the first and the last copy arrived (``time.monotonic()``, which is
  CLOCK_MONOTONIC and so comparable with the harness's own clock),
- the envelope senders seen (to check VERP).

Nothing is stored but counters: a 10,000-recipient VERP fan-out (10,000
transactions) costs it a few hundred milliseconds of CPU.

Control: one JSON request per line on a Unix socket, one JSON answer per line::

    {"cmd": "stats", "ids": ["<id@x>", ...]}  -> {"<id@x>": {"rcpts": N, "unique": N,
                                                  "dups": N, "first": t, "last": t,
                                                  "transactions": N, "verp": N}}
    {"cmd": "totals"}                          -> {"transactions": N, "rcpts": N, "connections": N}
    {"cmd": "reset"}                           -> {"ok": true}

    python bench/fastsink.py --port PORT --control /path/to/socket
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import signal
import time

_MSGID = re.compile(rb"^message-id:[ \t]*(.*(?:\r\n[ \t].*)*)", re.I | re.M)


class Stats:
    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.per_id: dict[bytes, dict] = {}
        self.transactions = 0
        self.rcpts = 0
        self.connections = 0

    def record(self, mail_from: bytes, rcpts: list[bytes], data: bytes) -> None:
        now = time.monotonic()
        head = data.split(b"\r\n\r\n", 1)[0]
        m = _MSGID.search(head)
        key = b" ".join(m.group(1).split()) if m else b""
        entry = self.per_id.get(key)
        if entry is None:
            entry = self.per_id[key] = {"counts": {}, "first": now, "last": now, "transactions": 0, "verp": 0}
        entry["last"] = now
        entry["transactions"] += 1
        counts = entry["counts"]
        for r in rcpts:
            r = r.lower()
            counts[r] = counts.get(r, 0) + 1
        if len(rcpts) == 1 and b"+" in mail_from and rcpts[0].replace(b"@", b"=").lower() in mail_from.lower():
            entry["verp"] += 1
        self.transactions += 1
        self.rcpts += len(rcpts)

    def stats(self, ids: list[str]) -> dict:
        out = {}
        for i in ids:
            entry = self.per_id.get(i.encode())
            if entry is None:
                out[i] = {"rcpts": 0, "unique": 0, "dups": 0, "first": None, "last": None,
                          "transactions": 0, "verp": 0}
                continue
            counts = entry["counts"]
            total = sum(counts.values())
            out[i] = {"rcpts": total, "unique": len(counts), "dups": total - len(counts),
                      "first": entry["first"], "last": entry["last"],
                      "transactions": entry["transactions"], "verp": entry["verp"]}
        return out


STATS = Stats()

EHLO = (b"250-sink.bench.test\r\n250-PIPELINING\r\n250-8BITMIME\r\n250-SMTPUTF8\r\n"
        b"250-SIZE 0\r\n250 ENHANCEDSTATUSCODES\r\n")


def _addr(arg: bytes) -> bytes:
    """The address in ``FROM:<a@b> SIZE=…`` / ``TO:<a@b>``."""
    lt, gt = arg.find(b"<"), arg.find(b">")
    if lt >= 0 and gt > lt:
        return arg[lt + 1:gt]
    return arg.split(b":", 1)[-1].strip().split(b" ", 1)[0]


async def session(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    STATS.connections += 1
    write = writer.write
    write(b"220 sink.bench.test ESMTP fastsink\r\n")
    mail_from: bytes | None = None
    rcpts: list[bytes] = []
    try:
        while True:
            line = await reader.readline()
            if not line:
                break
            verb = line[:4].upper()
            if verb == b"RCPT":
                if mail_from is None:
                    write(b"503 5.5.1 need MAIL first\r\n")
                else:
                    rcpts.append(_addr(line[8:]))
                    write(b"250 2.1.5 ok\r\n")
            elif verb == b"MAIL":
                mail_from, rcpts = _addr(line[10:]), []
                write(b"250 2.1.0 ok\r\n")
            elif verb == b"DATA":
                if mail_from is None or not rcpts:
                    write(b"503 5.5.1 need RCPT first\r\n")
                    continue
                write(b"354 go ahead\r\n")
                await writer.drain()
                first = await reader.readline()
                if first in (b".\r\n", b".\n"):
                    data = b""
                else:
                    rest = await reader.readuntil(b"\r\n.\r\n")
                    data = first + rest[:-3]
                    if b"\n." in data or data.startswith(b"."):  # dot-unstuffing (RFC 5321 4.5.2)
                        data = re.sub(rb"(?m)^\.", b"", data)
                STATS.record(mail_from, rcpts, data)
                mail_from, rcpts = None, []
                write(b"250 2.0.0 ok queued\r\n")
                await writer.drain()
            elif verb in (b"EHLO",):
                write(EHLO)
            elif verb == b"HELO":
                write(b"250 sink.bench.test\r\n")
            elif verb == b"RSET":
                mail_from, rcpts = None, []
                write(b"250 2.0.0 ok\r\n")
            elif verb == b"NOOP":
                write(b"250 2.0.0 ok\r\n")
            elif verb == b"QUIT":
                write(b"221 2.0.0 bye\r\n")
                break
            else:
                write(b"502 5.5.2 command not recognised\r\n")
    except (ConnectionError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
        pass
    finally:
        try:
            await writer.drain()
            writer.close()
        except Exception:
            pass


async def control(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while line := await reader.readline():
            req = json.loads(line)
            if req["cmd"] == "stats":
                answer = STATS.stats(req["ids"])
            elif req["cmd"] == "totals":
                answer = {"transactions": STATS.transactions, "rcpts": STATS.rcpts,
                          "connections": STATS.connections}
            elif req["cmd"] == "reset":
                STATS.reset()
                answer = {"ok": True}
            else:
                answer = {"error": f"unknown command {req['cmd']!r}"}
            writer.write(json.dumps(answer).encode() + b"\n")
            await writer.drain()
    except (asyncio.CancelledError, ConnectionError):
        pass
    finally:
        writer.close()


async def main(port: int, control_path: str) -> None:
    server = await asyncio.start_server(session, "127.0.0.1", port, limit=64 * 1024 * 1024, backlog=512)
    ctl = await asyncio.start_unix_server(control, control_path)
    stop = asyncio.get_running_loop().create_future()
    for sig in (signal.SIGTERM, signal.SIGINT):
        asyncio.get_running_loop().add_signal_handler(sig, stop.set_result, None)
    print("ready", flush=True)
    async with server, ctl:
        await stop
    try:
        os.unlink(control_path)
    except FileNotFoundError:
        pass


if __name__ == "__main__":
    p = argparse.ArgumentParser(description="fast counting SMTP sink")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--control", required=True)
    a = p.parse_args()
    asyncio.run(main(a.port, a.control))
