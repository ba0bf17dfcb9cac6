"""Postfix policy service: refuse unauthorised posters at RCPT time.

``listfilter-policy --snapshot PATH`` speaks Postfix's policy delegation
protocol (SMTPD_POLICY_README) on stdin/stdout. Postfix's smtpd calls it
through ``check_policy_service`` in ``smtpd_recipient_restrictions``; spawn(8)
starts one process per smtpd connection to the service, and smtpd keeps that
connection across the SMTP sessions it serves one after another, until it has
been idle for ``smtpd_policy_service_max_idle`` (300 s) or open for
``smtpd_policy_service_max_ttl`` (1000 s), or smtpd exits. So one process
answers many sessions (tests/integration/test_policy_service.py counts them),
re-opening the snapshot when sync replaces it, until Postfix closes the stream.

For RCPT to a list address, an envelope sender that may not post gets
``action=550 5.7.1 …`` naming the list and who may post (and so does the
null sender), unless the list would hold their post for its owners
(``non_member_posts`` or ``non_poster_posts`` = ``hold``: ``deliver`` holds
it and tells them); a list post let through gets ``action=INFO …`` (below),
and everything else ``action=DUNNO``. Each refusal is one
``rejected`` event: the list, the envelope sender, the SMTP client's address
and HELO name, and the reason (no message was received, so nothing else). The sender's own MTA
tells the sender why, and listfilter has sent nothing: no backscatter.

Every verdict on a list post is in the log, so that ``listfilter trace``
reads it rather than infers it. A refusal is smtpd's ``reject:`` line and
our NOTICE ``policy: reject: …``. An acceptance is answered ``action=INFO
listfilter: <why>`` rather than DUNNO: smtpd logs ``NOQUEUE: info: RCPT from
HOST[IP]: listfilter: <why>; from=<S> to=<L> …`` and goes on as for DUNNO
(access(5), Postfix 3.0 and later; tests/integration/test_policy_service.py
shows both on a real Postfix). That line reaches Postfix's log wherever it
is (a postlogd ``maillog_file`` too, where our syslog does not), and it
carries smtpd's pid and, after the first RCPT, the queue id, so the service
logs no line of its own for it: one fact, one line. If the snapshot cannot
be read the answer is DUNNO: the after-queue check in ``deliver`` still
enforces the rule.

Standard library only, like the rest of the mail side.
"""

from __future__ import annotations

import os
import sys
import syslog
import time
from dataclasses import dataclass

from ..common import spool as SP
from ..common.addresses import parse_recipient
from ..common.events import Event, now_utc, random_id
from ..common.paths import DEFAULT_SNAPSHOT
from ..common.policyline import info_text
from ..common.snapshot import Snapshot, SnapshotError
from .command import help_requested, parse, print_help, usage
from .rules import holds

DUNNO = "DUNNO"


@dataclass(frozen=True)
class Accept:
    """A list post the policy service let through at RCPT time, and why (the INFO text smtpd logs)."""

    list_address: str
    reason: str

    def action(self) -> str:
        return f"INFO {info_text(self.reason)}"


OPTIONS = {"snapshot": DEFAULT_SNAPSHOT}
HELP = """Answer Postfix policy requests on stdin/stdout (run by spawn(8), one process per smtpd process).

  --snapshot PATH   the compiled snapshot (default /var/lib/listfilter/snapshot.sqlite)
"""


def parse_request(lines: list[str]) -> dict[str, str]:
    """``name=value`` lines (without the terminating empty line) → dict.

    Malformed lines (no ``=``) are ignored, as Postfix's own servers do; a
    value may itself contain ``=``.
    """
    request = {}
    for line in lines:
        name, eq, value = line.partition("=")
        if eq and name:
            request[name.strip()] = value
    return request


def decide(request: dict[str, str], get_list, may_post, is_member=None) -> tuple[str, Event | Accept | None]:
    """The action for one request, and its verdict on a list post: the rejection to record, the
    acceptance (answered INFO, for smtpd to log), or None (not a list post: nothing to say).

    ``get_list(address)`` returns the snapshot's list row or None;
    ``may_post(list_address, sender)`` answers from the snapshot, and so does
    ``is_member(list_address, sender)`` (None: nobody is a member). Pure apart
    from those lookups.
    """
    if request.get("request") != "smtpd_access_policy" or request.get("protocol_state", "RCPT") != "RCPT":
        return DUNNO, None
    target = parse_recipient(request.get("recipient", ""))
    if target is None or target.kind != "post":
        return DUNNO, None  # not a list, or its -bounces/-owner/-request address
    row = get_list(target.list_address)
    if row is None:
        return DUNNO, None  # unknown addresses are Postfix's relay_recipient_maps' job
    sender = request.get("sender", "").strip().strip("<>")
    if not sender:
        reason = f"<{row.address}> accepts no mail from the null sender"
    elif may_post(row.address, sender):
        # not the sender's address: smtpd's line says from=<…> itself, as it got it
        return _accepted(row, f"the sender may post (only {row.posters_rule} may)")
    elif holds(row, member := bool(is_member and is_member(row.address, sender))):
        # deliver holds it for the owners (if its From is the same): not ours to refuse
        setting = "non_poster_posts" if member else "non_member_posts"
        return _accepted(row, f"held for the owners' approval ({setting} = hold)")
    else:
        reason = f"<{sender}> may not post to <{row.address}>; only {row.posters_rule} may"
    event = Event(id=random_id(), status="rejected", list_address=row.address, created_at=now_utc(),
                  rule="policy", list_display_name=row.display_name, sender_email=sender, envelope_sender=sender,
                  client_address=request.get("client_address", ""), helo_name=request.get("helo_name", ""),
                  queue_id=request.get("queue_id", ""), error_message=reason)
    # An explicit 550 rather than REJECT, whose code (access_map_reject_code)
    # defaults to 554: "mailbox unavailable / not allowed" is what this is.
    return f"550 5.7.1 {reason}", event


def _accepted(row, reason: str) -> tuple[str, Accept]:
    accept = Accept(list_address=row.address, reason=reason)
    return accept.action(), accept


class Service:
    """One policy connection (many SMTP sessions): answers requests, re-opening the snapshot when sync replaces it."""

    def __init__(self, snapshot_path: str):
        self.path = snapshot_path
        self.snap = None
        self.stamp = None

    def snapshot(self) -> Snapshot:
        st = os.stat(self.path)
        stamp = (st.st_ino, st.st_mtime_ns)
        if self.snap is None or stamp != self.stamp:
            if self.snap is not None:
                self.snap.close()
            self.snap, self.stamp = Snapshot(self.path), stamp
        return self.snap

    def answer(self, request: dict[str, str]) -> str:
        try:
            snap = self.snapshot()
        except (SnapshotError, OSError) as exc:
            syslog.syslog(syslog.LOG_WARNING, f"policy: snapshot unavailable, answering DUNNO: {exc}")
            self.snap = None
            return DUNNO
        try:
            action, verdict = decide(request, snap.get_list, snap.may_post,
                                     lambda address, sender: snap.member(address, sender) is not None)
        except SnapshotError as exc:
            syslog.syslog(syslog.LOG_WARNING, f"policy: {exc}; answering DUNNO")
            return DUNNO
        if isinstance(verdict, Event):  # an Accept is smtpd's to log (its INFO line)
            syslog.syslog(syslog.LOG_NOTICE, f"policy: reject: from=<{verdict.sender_email}>"
                                             f" to=<{verdict.list_address}>: {verdict.error_message}")
            self.record(snap, verdict)
        return action

    def record(self, snap: Snapshot, event: Event) -> None:
        """Write the rejection as an event for the log store; never fail the answer over it."""
        from pathlib import Path

        try:
            spool_dir = Path(snap.settings()["spool_dir"])
            SP.ensure(spool_dir)
            SP.write_event(spool_dir, event)
        except Exception as exc:  # the refusal stands; only the record is lost
            syslog.syslog(syslog.LOG_ERR, f"policy: cannot record rejection: {exc}")


def serve(snapshot_path: str, stdin, stdout) -> None:
    service = Service(snapshot_path)
    lines: list[str] = []
    for raw in stdin:
        line = raw.rstrip("\r\n")
        if line:
            lines.append(line)
            continue
        if not lines:
            continue  # stray empty line
        try:
            action = service.answer(parse_request(lines))
        except Exception as exc:  # never kill the connection over one request
            syslog.syslog(syslog.LOG_ERR, f"policy: {type(exc).__name__}: {exc}; answering DUNNO")
            action = DUNNO
        lines = []
        stdout.write(f"action={action}\n\n")
        stdout.flush()


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if help_requested(argv):
        return print_help(usage("listfilter-policy", OPTIONS, (), HELP))
    syslog.openlog("listfilter", syslog.LOG_PID, syslog.LOG_MAIL)
    try:
        args = parse(argv, OPTIONS)
    except Exception as exc:  # a wrong master.cf line: say so, and let Postfix log the failed service
        print(f"4.3.5 {exc}", file=sys.stderr)
        return 75
    started = time.monotonic()
    try:
        serve(args["snapshot"], sys.stdin, sys.stdout)
    except (BrokenPipeError, KeyboardInterrupt):
        pass
    syslog.syslog(syslog.LOG_DEBUG, f"policy: connection closed after {time.monotonic() - started:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
