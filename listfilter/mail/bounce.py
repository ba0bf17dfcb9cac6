"""``listfilter-bounce``: one bounce to a list's -bounces address, from Postfix's pipe(8).

master.cf runs it with a fixed command line::

    listfilter-bounce --snapshot /var/lib/listfilter/snapshot.sqlite
        --recipient ${original_recipient} --queue-id ${queue_id}

The VERP extension (``students-bounces+user=example.org@…``) names the member
whose copy bounced; ``flufl.bounce.all_failures`` tells permanent from
temporary failures, and finds the addresses in bounces that lost the VERP
address. What it found is written as one create-only record in the spool
(:class:`~listfilter.common.events.BounceRecord`); nothing is read back or
updated here. Sync scores the records in the store, one owner for the
arithmetic (:mod:`listfilter.store.bounces`), and the snapshot then carries
the suppressed addresses that ``deliver`` skips. Nothing is ever sent in
reply to a bounce.

Exit status: 0 when handled (recorded or not worth recording), 75 when the
snapshot or the spool cannot be used.
"""

from __future__ import annotations

import datetime as dt
import sys
import syslog
from pathlib import Path

from ..common import spool as SP
from ..common.addresses import parse_recipient, verp_member
from ..common.events import BounceRecord, now_utc, random_id
from ..common.paths import DEFAULT_SNAPSHOT
from ..common.snapshot import Snapshot
from .command import help_requested, parse, print_help, queue_id_of, run, usage

OPTIONS = {"snapshot": DEFAULT_SNAPSHOT, "recipient": None, "queue-id": ""}
HELP = """Record one bounce sent to a list's -bounces address (the bounce on stdin).

  --snapshot PATH   the compiled snapshot (default /var/lib/listfilter/snapshot.sqlite)
  --recipient ADDR  the -bounces address (${original_recipient}), with VERP
  --queue-id ID     Postfix's queue id (${queue_id}), for the logs
"""


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if help_requested(argv):
        return print_help(usage("listfilter-bounce", OPTIONS, (), HELP))
    return run(lambda a: handle(parse(a, OPTIONS), sys.stdin.buffer.read()), argv, queue_id_of(argv))


def classify(message, member: str | None, members: set[str]) -> tuple[set[str], set[str]]:
    """(permanent, temporary) failures among the list's addresses, lower-cased.

    With VERP the member is known: its copy failed permanently if the bounce
    reports any permanent failure, temporarily if only temporary ones.
    Without VERP, the reported addresses that are members count.
    """
    temporary, permanent = _all_failures(message)
    if member:
        member = member.lower()
        if permanent:
            return {member}, set()
        if temporary:
            return set(), {member}
        return set(), set()
    return permanent & members, temporary & members


def _all_failures(message) -> tuple[set[str], set[str]]:
    """flufl.bounce's (temporary, permanent) sets as lower-cased str; never raises."""
    from flufl.bounce import all_failures

    try:
        temporary, permanent = all_failures(message)
    except Exception as exc:  # flufl.bounce can raise on odd input
        syslog.syslog(syslog.LOG_WARNING, f"bounce: flufl.bounce failed ({type(exc).__name__}: {exc})")
        return set(), set()

    def norm(items) -> set[str]:
        out = set()
        for item in items:
            text = item.decode("utf-8", "replace") if isinstance(item, bytes) else str(item)
            text = text.strip().strip("<>").lower()
            if "@" in text:
                out.add(text)
        return out

    return norm(temporary), norm(permanent)


def handle(args: dict, raw: bytes) -> str:
    """Read one bounce and record what it says; the log line."""
    import email

    target = parse_recipient(args["recipient"])
    if target is None:
        return f"bounce for {args['recipient']!r} ignored: not an address"
    with Snapshot(args["snapshot"]) as snap:
        row = snap.get_list(target.list_address)
        settings = snap.settings()
        members = {e.lower() for e, _ in snap.members(target.list_address)} if row else set()
    if row is None:
        return f"bounce for {args['recipient']} ignored: no list {target.list_address}"
    member = verp_member(target.extension) if target.extension else None
    message = email.message_from_bytes(raw)  # compat32: what flufl.bounce expects
    permanent, temporary = classify(message, member, members)
    where = f"bounce for {row.address}{' from ' + member if member else ''}"
    if not permanent:
        what = "temporary failure" if temporary else "no failure found (auto-reply or unreadable)"
        return f"{where}: {what}; not counted"
    import zoneinfo

    spool = Path(settings["spool_dir"])
    SP.ensure(spool)
    record = BounceRecord(id=random_id(), list_address=row.address, received_at=now_utc(),
                          day=dt.datetime.now(zoneinfo.ZoneInfo(settings["timezone"])).date().isoformat(),
                          member=(member or "").lower(), permanent=tuple(sorted(permanent)),
                          temporary=tuple(sorted(temporary)), queue_id=args["queue_id"] or "")
    path = SP.write_bounce(spool, record)
    return f"{where}: permanent failure of {', '.join(sorted(permanent))} recorded as {path.name}"


if __name__ == "__main__":
    sys.exit(main())
