"""Postfix policy service: refuse unauthorised posters at RCPT time.

``listfilter policy`` speaks Postfix's policy delegation protocol
(SMTPD_POLICY_README) on stdin/stdout. spawn(8) starts it per SMTP client
connection and it answers requests until Postfix closes the stream. Postfix's
smtpd calls it through ``check_policy_service`` in
``smtpd_recipient_restrictions``.

For RCPT to a list address, an envelope sender that may not post gets
``action=550 5.7.1 …`` naming the list and who may post (and so does the
null sender); everything else gets ``action=DUNNO``. The sender's own MTA
tells the sender why, and listfilter has sent nothing: no backscatter. If the
snapshot cannot be read the answer is DUNNO: the after-queue check in
``deliver`` still enforces the rule.

Standard library only, like the rest of the mail side.
"""

from __future__ import annotations

import os
import sys
import syslog
import time

DUNNO = "DUNNO"


def add_arguments(parser) -> None:
    """No options: requests arrive on stdin."""


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


def decide(request: dict[str, str], get_list, may_post) -> tuple[str, dict | None]:
    """The action for one request, and the rejection to record (or None).

    ``get_list(address)`` returns the snapshot's list row or None;
    ``may_post(list_address, sender)`` answers from the snapshot. Pure apart
    from those two lookups.
    """
    from .decisions import parse_recipient

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
        return DUNNO, None
    else:
        reason = f"<{sender}> may not post to <{row.address}>; only {row.posters_rule} may"
    event = {
        "status": "rejected",
        "list_address": row.address,
        "list_display_name": row.display_name,
        "sender_email": sender,
        "sender_name": "",
        "envelope_sender": sender,
        "subject": "",
        "message_id": "",
        "queue_id": request.get("queue_id", ""),
        "client_address": request.get("client_address", ""),
        "recipients": [],
        "recipient_count": 0,
        "error_message": reason,
        "body": "",
    }
    # An explicit 550 rather than REJECT, whose code (access_map_reject_code)
    # defaults to 554: "mailbox unavailable / not allowed" is what this is.
    return f"550 5.7.1 {reason}", event


class Service:
    """One policy connection: answers requests, re-opening the snapshot when sync replaces it."""

    def __init__(self, config: str | None):
        self.config = config
        self.snap = None
        self.stamp = None

    def snapshot(self):
        from . import snapshot as S

        path = S.locate(self.config)
        st = os.stat(path)
        stamp = (st.st_ino, st.st_mtime_ns)
        if self.snap is None or stamp != self.stamp:
            if self.snap is not None:
                self.snap.close()
            self.snap, self.stamp = S.Snapshot(path), stamp
        return self.snap

    def answer(self, request: dict[str, str]) -> str:
        from . import snapshot as S

        try:
            snap = self.snapshot()
        except (S.SnapshotError, OSError) as exc:
            syslog.syslog(syslog.LOG_WARNING, f"policy: snapshot unavailable, answering DUNNO: {exc}")
            self.snap = None
            return DUNNO
        try:
            action, event = decide(request, snap.get_list, snap.may_post)
        except S.SnapshotError as exc:
            syslog.syslog(syslog.LOG_WARNING, f"policy: {exc}; answering DUNNO")
            return DUNNO
        if event is not None:
            syslog.syslog(syslog.LOG_NOTICE, f"policy: reject: from=<{event['sender_email']}>"
                                             f" to=<{event['list_address']}>: {event['error_message']}")
            self.record(snap, event)
        return action

    def record(self, snap, event: dict) -> None:
        """Write the rejection as an event for the log store; never fail the answer over it."""
        import datetime as dt
        import uuid
        from pathlib import Path

        from . import spool

        event["id"] = str(uuid.uuid4())
        event["created_at"] = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
        try:
            spool_dir = Path(snap.settings()["spool_dir"])
            spool.ensure(spool_dir)
            spool.write_event(spool_dir, event)
        except Exception as exc:  # the REJECT stands; only the record is lost
            syslog.syslog(syslog.LOG_ERR, f"policy: cannot record rejection: {exc}")


def serve(config: str | None, stdin, stdout) -> None:
    service = Service(config)
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


def main(args) -> int:
    syslog.openlog("listfilter", syslog.LOG_PID, syslog.LOG_MAIL)
    started = time.monotonic()
    try:
        serve(args.config, sys.stdin, sys.stdout)
    except (BrokenPipeError, KeyboardInterrupt):
        pass
    syslog.syslog(syslog.LOG_DEBUG, f"policy: connection closed after {time.monotonic() - started:.1f} s")
    return 0
