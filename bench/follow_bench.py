"""The log follower's speed (docs/operations.md, "The log follower"): lines a second, and parsing alone.

``.venv/bin/python -m bench.follow_bench [POSTS MEMBERS OTHER]`` writes a Postfix log in the
traditional syslog form: POSTS posts to a list of MEMBERS members each (pickup, cleanup, qmgr, one
smtp line per member, removed) and OTHER messages that are not a list's (smtpd, cleanup, qmgr, smtp,
removed); puts the posts in an SQLite store; and times one :func:`listfilter.sync.follow.follow`
over all of it, then :class:`listfilter.sync.postfixlog.LogReader` alone. Default: 20 1000 40000.
"""

from __future__ import annotations

import datetime as dt
import sys
import tempfile
import time
from pathlib import Path

from listfilter.common.events import stable_id
from listfilter.store import database as ST
from listfilter.sync import config as C
from listfilter.sync import follow as FO
from listfilter.sync.postfixlog import LogReader

REPO = Path(__file__).resolve().parent.parent
LIST = "club@lists.example.edu"
BOUNCES = "club-bounces@lists.example.edu"


def write_log(path: Path, posts: int, members: int, other: int) -> list[ST.Entry]:
    stamp = "Dec 01 10:00:00 mail"
    lines, entries, q = [], [], 0x100000
    for p in range(posts):
        q += 1
        qid, mid = f"{q:X}0", f"<post{p}@example.edu>"
        lines += [f"{stamp} postfix/pickup[1]: {qid}: uid=999 from=<{BOUNCES}>\n",
                  f"{stamp} postfix/cleanup[2]: {qid}: message-id={mid}\n",
                  f"{stamp} postfix/qmgr[3]: {qid}: from=<{BOUNCES}>, size=900, nrcpt={members} (queue active)\n"]
        lines += [f"{stamp} postfix/smtp[4]: {qid}: to=<m{m}@example.org>, relay=relay.example.edu[192.0.2.1]:25,"
                  f" delay=0.5, delays=0.1/0/0.2/0.2, dsn=2.0.0, status=sent (250 2.0.0 Ok: queued as ABC{m})\n"
                  for m in range(members)]
        lines.append(f"{stamp} postfix/qmgr[3]: {qid}: removed\n")
        entries.append(ST.Entry(id=stable_id(mid, LIST), status="delivered", list_address=LIST,
                                created_at=dt.datetime(2026, 12, 1, 10, tzinfo=dt.timezone.utc), message_id=mid,
                                recipient_count=members))
    for o in range(other):
        q += 1
        qid = f"{q:X}0"
        lines += [f"{stamp} postfix/smtpd[5]: {qid}: client=host.example.net[198.51.100.1]\n",
                  f"{stamp} postfix/cleanup[2]: {qid}: message-id=<o{o}@example.net>\n",
                  f"{stamp} postfix/qmgr[3]: {qid}: from=<x{o}@example.net>, size=900, nrcpt=1 (queue active)\n",
                  f"{stamp} postfix/smtp[4]: {qid}: to=<y{o}@example.com>, relay=mx.example.com[203.0.113.5]:25,"
                  " delay=0.5, delays=0.1/0/0.2/0.2, dsn=2.0.0, status=sent (250 2.0.0 Ok)\n",
                  f"{stamp} postfix/qmgr[3]: {qid}: removed\n"]
    path.write_text("".join(lines))
    return entries


def main(argv: list[str]) -> None:
    posts, members, other = (int(a) for a in (argv or ["20", "1000", "40000"]))
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp)
        (base / "lists.toml").write_text(f"""
[site]
timezone = "UTC"
state_dir = "{base / 'state'}"
owners = ["prof@example.edu"]
dmarc = "off"
[postfix]
map_type = "texthash"
reload = false
log_file = "{base / 'maillog'}"
[roster]
source = "csv"
csv = "{REPO / 'docs/example/roster.csv'}"
[domains."lists.example.edu"]
course = "CS 199"
[lists.club]
members = {{ emails = ["a@example.org"] }}
posters = ["prof@example.edu"]
""")
        config = C.load(base / "lists.toml")
        entries = write_log(base / "maillog", posts, members, other)
        with ST.open_store(config.store, create=True) as store:
            store.upgrade()
            store.upsert(entries)
            start = time.perf_counter()
            result = FO.follow(config, store, uid=999, max_lines=10**9, max_seconds=1e9)
            took = time.perf_counter() - start
        size = (base / "maillog").stat().st_size
        print(f"log: {result.lines} lines, {size / 1e6:.1f} MB; {result.outcomes}")
        print(f"follow: {took:.2f} s, {result.lines / took:,.0f} lines/s")
        start = time.perf_counter()
        n = sum(1 for _ in LogReader(base / "maillog").lines())
        took = time.perf_counter() - start
        print(f"parsing alone: {took:.2f} s, {n / took:,.0f} lines/s")


if __name__ == "__main__":
    main(sys.argv[1:])
