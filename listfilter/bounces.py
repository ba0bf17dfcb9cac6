"""Bounce processing: VERP, flufl.bounce, and Mailman's scoring.

``listfilter bounce --recipient LIST-bounces+user=domain@DOMAIN`` is run by
Postfix's pipe for every message to a list's -bounces address. The VERP
extension names the member whose copy bounced; ``flufl.bounce.all_failures``
tells permanent from temporary failures (and finds the addresses in bounces
that lost the VERP address). Only permanent failures count:

- at most one point per member per day;
- the score starts again when the last counted bounce is older than 7 days;
- at 5 points the address is *suppressed*: ``deliver`` stops sending to it on
  every list, and the owners of the list it bounced from get one notice.

Temporary failures, vacation replies and anything flufl.bounce cannot read
count for nothing. Nothing is ever sent in reply to a bounce.

State is plain files under the spool (``ls`` and ``cat`` read them)::

    bounces/<address>       JSON: score, last_bounce (a date), lists, suppressed
    suppressed/<address>    exists while the address is suppressed

Exit status: 0 when handled (counted or not), 75 when the state cannot be written.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import sys
import syslog
from pathlib import Path

THRESHOLD = 5
STALE_AFTER_DAYS = 7
BOUNCES = "bounces"
SUPPRESSED = "suppressed"


def add_arguments(parser) -> None:
    parser.add_argument("--recipient", required=True, help="the -bounces address (${original_recipient})")
    parser.add_argument("--queue-id", default="", help="Postfix's queue id, for the logs")


# --------------------------------------------------------------------------
# Decisions (pure)


def score(state: dict | None, day: dt.date, *, threshold: int = THRESHOLD,
          stale_after: int = STALE_AFTER_DAYS) -> tuple[dict, bool]:
    """Count one permanent bounce on ``day``; returns (new state, newly suppressed)."""
    state = dict(state or {"score": 0, "last_bounce": None, "suppressed": False})
    last = dt.date.fromisoformat(state["last_bounce"]) if state.get("last_bounce") else None
    if last is None or day > last:  # at most one point per day
        if last is not None and (day - last).days > stale_after:
            state["score"] = 0  # an old run of bounces is forgotten
        state["score"] = state.get("score", 0) + 1
        state["last_bounce"] = day.isoformat()
    newly = not state.get("suppressed") and state["score"] >= threshold
    if newly:
        state["suppressed"] = True
        state["suppressed_on"] = day.isoformat()
    return state, newly


def classify(message, verp_member: str | None, members: set[str]) -> tuple[set[str], set[str]]:
    """(permanent, temporary) failures among the list's addresses, lower-cased.

    With VERP the member is known: its copy failed permanently if the bounce
    reports any permanent failure, temporarily if only temporary ones.
    Without VERP, the reported addresses that are members count.
    """
    temporary, permanent = _all_failures(message)
    if verp_member:
        member = verp_member.lower()
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


# --------------------------------------------------------------------------
# State (files under the spool)


def _name(address: str) -> str:
    from urllib.parse import quote

    return quote(address.lower(), safe="@+=-_.")


def read_state(spool: Path, address: str) -> dict | None:
    from .spool import read_json

    return read_json(spool / BOUNCES / _name(address))


def write_state(spool: Path, address: str, state: dict) -> None:
    from .spool import write_json

    (spool / BOUNCES).mkdir(parents=True, exist_ok=True)
    write_json(spool / BOUNCES / _name(address), {"address": address.lower(), **state})


def suppress(spool: Path, address: str, reason: str) -> None:
    from .spool import write_json

    (spool / SUPPRESSED).mkdir(parents=True, exist_ok=True)
    write_json(spool / SUPPRESSED / _name(address), {"address": address.lower(), "reason": reason})


def suppressed(spool: Path) -> frozenset[str]:
    """Every suppressed address (for deliver: one directory listing)."""
    try:
        names = os.listdir(spool / SUPPRESSED)
    except FileNotFoundError:
        return frozenset()
    if not names:
        return frozenset()
    from urllib.parse import unquote

    return frozenset(unquote(n) for n in names if not n.startswith("."))


def all_states(spool: Path) -> list[dict]:
    from .spool import read_json

    directory = spool / BOUNCES
    if not directory.is_dir():
        return []
    return [s for s in (read_json(p) for p in sorted(directory.iterdir()) if not p.name.startswith(".")) if s]


def clear(spool: Path, address: str) -> bool:
    """Lift a suppression and forget the score; True if there was anything."""
    found = False
    for path in (spool / SUPPRESSED / _name(address), spool / BOUNCES / _name(address)):
        try:
            path.unlink()
            found = True
        except FileNotFoundError:
            pass
    return found


# --------------------------------------------------------------------------
# The command


def main(args) -> int:
    from . import deliver as D

    syslog.openlog("listfilter", syslog.LOG_PID, syslog.LOG_MAIL)
    qid = args.queue_id or "NOQUEUE"
    try:
        line = handle(args, sys.stdin.buffer.read(), dt.date.today())
    except D.Defer as exc:
        return D._finish(qid, D.EX_TEMPFAIL, f"4.3.0 {exc}")
    except Exception as exc:
        import traceback

        for tb_line in traceback.format_exc().splitlines():
            syslog.syslog(syslog.LOG_ERR, f"{qid}: {tb_line}")
        return D._finish(qid, D.EX_TEMPFAIL, f"4.3.0 internal error ({type(exc).__name__}: {exc}); will retry")
    syslog.syslog(syslog.LOG_INFO, f"{qid}: {line}")
    return D.EX_OK


def handle(args, raw: bytes, today: dt.date) -> str:
    """Process one bounce; returns the log line. Raises deliver.Defer on temporary trouble."""
    import email

    from . import decisions as DC
    from . import snapshot as S
    from . import spool as SP
    from .deliver import Defer

    target = DC.parse_recipient(args.recipient)
    if target is None:
        return f"bounce for {args.recipient!r} ignored: not an address"
    try:
        with S.Snapshot(S.locate(args.config)) as snap:
            row = snap.get_list(target.list_address)
            settings = snap.settings()
            members = {e.lower() for e, _ in snap.members(target.list_address)} if row else set()
    except S.SnapshotError as exc:
        raise Defer(str(exc)) from None
    if row is None:
        return f"bounce for {args.recipient} ignored: no list {target.list_address}"
    spool = Path(settings["spool_dir"])
    member = DC.verp_member(target.extension) if target.extension else None
    message = email.message_from_bytes(raw)  # compat32: what flufl.bounce expects
    permanent, temporary = classify(message, member, members)
    if not permanent:
        what = "temporary failure" if temporary else "no failure found (auto-reply or unreadable)"
        return f"bounce for {row.address}{' from ' + member if member else ''}: {what}; not counted"
    done = []
    try:
        SP.ensure(spool)
        for address in sorted(permanent):
            state, newly = score(read_state(spool, address), today)
            lists = set(state.get("lists", [])) | {row.address}
            state["lists"] = sorted(lists)
            write_state(spool, address, state)
            done.append(f"{address} score {state['score']}")
            if newly:
                suppress(spool, address, f"{state['score']} bounces, last on {today.isoformat()}"
                                         f" from {row.address}")
                _notify_owners(row, settings, address, state)
                done[-1] += " (suppressed; owners notified)"
    except SP.SpoolError as exc:
        raise Defer(str(exc)) from None
    return f"bounce for {row.address}: " + ", ".join(done)


def _notify_owners(row, settings: dict, address: str, state: dict) -> None:
    """One notice to the list's owners, with a null sender (a bounce of it goes nowhere)."""
    from email.message import EmailMessage
    from email.utils import format_datetime, make_msgid

    from .deliver import Defer
    from .sendmail import SendError, submit
    from .templating import render

    msg = EmailMessage()
    msg["From"] = f"{row.local_part}-bounces@{row.domain}"
    msg["To"] = ", ".join(row.owners)
    msg["Subject"] = f"{address} no longer receives {row.display_name} mail (bouncing)"
    msg["Date"] = format_datetime(dt.datetime.now(dt.timezone.utc))
    msg["Message-ID"] = make_msgid(domain=row.domain)
    msg["Auto-Submitted"] = "auto-generated"
    msg.set_content(render("notice-suppressed.txt.j2", address=address, list_name=row.display_name,
                           list_address=row.address, score=state["score"], last_bounce=state["last_bounce"],
                           lists=state.get("lists", []), threshold=THRESHOLD))
    try:
        submit(settings["sendmail"], "", list(row.owners), msg.as_bytes())
    except SendError as exc:
        raise Defer(f"cannot notify the owners: {exc}") from None
