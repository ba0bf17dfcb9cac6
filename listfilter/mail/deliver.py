"""``listfilter-deliver``: one list message from Postfix's pipe(8), on stdin.

master.cf runs it with a fixed command line::

    listfilter-deliver --snapshot /var/lib/listfilter/snapshot.sqlite
        --sender ${sender} --recipient ${original_recipient} --queue-id ${queue_id}

It reads the message once, looks the list up in the snapshot, gathers the
facts the rules need (:mod:`listfilter.mail.rules`), runs the chain, and
acts: rewrites the headers and hands the post to ``sendmail`` with VERP,
sends the poster a refusal notice, or drops a loop or a duplicate. Every
outcome is one event in the spool and one syslog line naming the rule.
Standard library only: it runs once per message.

Exit status (sysexits, as pipe(8) reads it): 0 delivered, discarded, or
refused and notified; 67 no such list (Postfix bounces); 75 anything
temporary or unexpected (Postfix defers and retries). stderr gets one line
that begins with the DSN.
"""

from __future__ import annotations

import datetime as dt
import sys
from pathlib import Path

from ..common import spool as SP
from ..common.addresses import bounces_address, parse_recipient, verp_member
from ..common.errors import Defer, ListfilterError, NoSuchList
from ..common.events import Event, now_utc, stable_id
from ..common.paths import DEFAULT_SNAPSHOT
from ..common.snapshot import Snapshot
from . import rules as R
from .command import help_requested, parse, print_help, queue_id_of, run, usage
from .message import Headers, header_text, poster_of, render, split_message

OPTIONS = {"snapshot": DEFAULT_SNAPSHOT, "sender": None, "recipient": None, "queue-id": ""}
FLAGS = ("dry-run",)
HELP = """Filter one list message from Postfix's pipe (the message on stdin).

  --snapshot PATH   the compiled snapshot (default /var/lib/listfilter/snapshot.sqlite)
  --sender ADDR     the envelope sender (${sender}; empty for bounces)
  --recipient ADDR  the list address (${original_recipient})
  --queue-id ID     Postfix's queue id (${queue_id}), for the logs
  --dry-run         print each rule's verdict, the recipients and the message; send nothing
"""

#: Bodies kept in event records for the admin page are capped at this size.
BODY_CAP = 256 * 1024


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if help_requested(argv):
        return print_help(usage("listfilter-deliver", OPTIONS, FLAGS, HELP))
    return run(lambda a: deliver(parse(a, OPTIONS, FLAGS), sys.stdin.buffer.read()), argv, queue_id_of(argv))


def deliver(args: dict, raw: bytes) -> str:
    """Deliver one message; the log line. Raises Defer or NoSuchList."""
    target = parse_recipient(args["recipient"])
    if target is None:
        raise NoSuchList(f"{args['recipient']!r} is not a list address")
    with Snapshot(args["snapshot"]) as snap:
        row = snap.get_list(target.list_address)
        if row is None:
            raise NoSuchList(f"<{args['recipient']}>: no such list here")
        if target.kind == "bounces":  # the transport map sends these to listfilter-bounce
            member = verp_member(target.extension) if target.extension else None
            return (f"bounce for {row.address}{' from member ' + member if member else ''} received;"
                    " nothing sent")
        job = Job(args, raw, snap, row)
        if target.kind in ("owner", "request"):
            return job.to_owners(target.kind)
        return job.post()


class Job:
    """One message to one list: the parsed message, the list's row, the settings."""

    def __init__(self, args: dict, raw: bytes, snap: Snapshot, row):
        self.dry = bool(args["dry_run"])
        self.queue_id = args["queue_id"] or ""
        self.sender = (args["sender"] or "").strip().strip("<>")
        if self.sender.upper() == "MAILER-DAEMON":
            self.sender = ""
        self.raw = raw
        self.event = None
        self.snap = snap
        self.row = row
        self.settings = snap.settings()
        self.spool = Path(self.settings["spool_dir"])
        fields, self.body = split_message(raw)
        self.headers = Headers(fields)  # the one parse of the message
        self.header_bytes = b"".join(f.raw for f in fields)
        if not self.dry:
            SP.ensure(self.spool)

    # ------------------------------------------------------------ a post

    def post(self) -> str:
        """Decide and act on a post; a message that cannot be handled ends now, not in retries."""
        try:
            return self._post()
        except ListfilterError:  # a snapshot, spool or sendmail problem: the world may change
            raise
        except Exception as exc:  # the message itself: it would fail the same way on every retry
            return self._unhandled(exc)

    def _post(self) -> str:
        poster = poster_of(self.headers)
        from_name, from_addr, self.from_problem = poster
        message_id = (header_text(self.headers, "Message-ID") or "").strip()
        message_key = message_id or f"queue:{self.queue_id}"
        self.new_message_id = not message_id
        if not message_id:
            # Postfix's sendmail does not tell us the queue id it assigns, so the
            # Message-ID is what traces the reinjected copy (cleanup logs it):
            # a post without one gets its own (set when it is sent).
            from email.utils import make_msgid

            message_id = make_msgid(domain=self.row.domain)
        self.event = Event(
            id=stable_id(message_key, self.row.address), status="", list_address=self.row.address, created_at="",
            list_display_name=self.row.display_name, sender_email=from_addr or self.sender,
            sender_name=from_name, envelope_sender=self.sender, subject=header_text(self.headers, "Subject") or "",
            message_id=message_id, queue_id=self.queue_id)
        progress = SP.Delivery(self.spool, message_key, self.row.address)
        if self.dry:
            progress.load()
            return self._decide_and_act(progress, from_addr)
        with progress:
            if progress.set_aside:
                import syslog

                syslog.syslog(syslog.LOG_WARNING, f"{self.queue_id or 'NOQUEUE'}: {progress.set_aside}")
            return self._decide_and_act(progress, from_addr)

    def _decide_and_act(self, progress: SP.Delivery, from_addr: str | None) -> str:
        facts = R.Post(
            headers=self.headers, list_row=self.row, from_address=from_addr,
            may_post=bool(from_addr) and self.snap.may_post(self.row.address, from_addr),
            delivered_recently=progress.done and progress.recent(SP.DUPLICATE_WINDOW_DAYS),
            message_id=self.event.message_id, from_problem=self.from_problem)
        decision, trail = R.decide(facts)
        if self.dry:
            for name, verdict in trail:
                sys.stdout.write(f"rule {name}: {verdict.action + ': ' + verdict.reason if verdict else 'pass'}\n")
        if decision.action == R.DISCARD:
            if decision.rule == "duplicate":
                # the delivery's own record stands; a second one would replace it
                if self.dry:
                    return self._dry(f"discarded: {decision.reason}", [], None)
                return f"{decision.rule}: {decision.reason} (rule {decision.rule})"
            # a loop's echo gets a record of its own, beside the first delivery's
            self.event = self.event._replace(id=stable_id(f"{self.event.message_id} (loop)", self.row.address))
            return self._record("discarded", decision, f"{decision.rule}: {decision.reason}")
        if decision.action == R.REFUSE:
            return self._refuse(decision, from_addr)
        return self._send(progress, from_addr, decision)

    def _send(self, progress: SP.Delivery, from_addr: str | None, decision) -> str:
        """Hand the post to sendmail in batches, each recorded as in flight before it goes and as
        accepted after; a batch a killed attempt left in flight is settled first (:mod:`.handoff`)."""
        from .handoff import log_position, message_id_of, resolve
        from .headers import rewrite_headers
        from ..common.sendmail import submit

        if self.new_message_id and progress.data.get("message_id"):
            # a retry goes out with the Message-ID its earlier batches carried
            self.event = self.event._replace(message_id=progress.data["message_id"])
        recipients = R.recipients([e for e, _ in self.snap.members(self.row.address)], poster=from_addr,
                                  exclude_poster=self.row.exclude_poster, list_address=self.row.address,
                                  suppressed=self.snap.suppressed())
        fields = rewrite_headers(self.headers, self.row, dt.datetime.now(self._tz()),
                                 message_id=self.event.message_id if self.new_message_id else None)
        rewritten = render(fields, self.body)
        if self.dry:
            return self._dry(f"delivered: would deliver to {len(recipients)} recipients", recipients, rewritten)
        bounces = bounces_address(self.row.address)
        resolve(progress, self.settings, sender=bounces, queue_id=self.queue_id)
        already = progress.accepted
        todo = [r for r in recipients if r.lower() not in already]
        parts = R.batches(todo)
        sent = len(recipients) - len(todo)
        stdin = progress.message_file(rewritten) if parts else None
        where = log_position(self.settings.get("postfix_log")) if parts and not progress.batches else None
        for n, batch in enumerate(parts, start=1):
            progress.begin_batch(batch, message_id=message_id_of(fields), log_position=where)
            try:
                submit(self.settings["sendmail"], bounces, batch, stdin, verp=True)
            except Exception as exc:  # SendError, or anything else: record, then defer
                error = f"sendmail failed after {sent} of {len(recipients)} recipients: {exc}"
                self._record("failed", decision, error, recipients, error=f"{error}; Postfix will retry")
                raise Defer(error) from None
            sent += len(batch)
            if n < len(parts):  # the last batch is covered by finish()
                progress.record_batch(batch, self.queue_id)
        progress.finish(queue_id=self.queue_id, recipients=len(recipients))
        who = f"{len(recipients)} recipients" if recipients else "0 recipients: nobody left to send to"
        return self._record("delivered", decision, f"to=<{self.row.address}>, from=<{from_addr}>,"
                            f" message-id={self.event.message_id}, status=delivered ({who})", recipients)

    def _refuse(self, decision, from_addr: str | None) -> str:
        from .notices import build_refusal_notice, notice_suppressed
        from ..common.sendmail import SendError, submit

        why_not = notice_suppressed(self.sender, self.headers, self.snap.get_list)
        now = dt.datetime.now(self._tz())
        slot = None
        if why_not is None and not self.dry:
            limit = int(self.settings["notice_limit"])
            slot = SP.claim_notice(self.spool, self.sender, now.date().isoformat(), limit)
            if slot is None:
                why_not = f"notice limit reached ({limit} today)"
        notice = None
        if why_not is None:
            notice = build_refusal_notice(original_headers=self.header_bytes, lst=self.row,
                                          poster=from_addr, envelope_sender=self.sender,
                                          reason=decision.reason, now=now, parsed=self.headers)
        note = f"notice sent to <{self.sender}>" if notice is not None else f"no notice ({why_not})"
        summary = f"to=<{self.row.address}>, from=<{from_addr or ''}>, status=bounced ({decision.reason}; {note})"
        if self.dry:
            return self._dry(f"bounced: {summary}", [], notice)
        if notice is not None:
            try:
                submit(self.settings["sendmail"], "", [self.sender], notice)
            except SendError as exc:
                SP.release_notice(slot)
                raise Defer(f"cannot send the refusal notice: {exc}") from None
        return self._record("bounced", decision, summary, error=f"{decision.reason}; {note}")

    def _unhandled(self, exc: Exception) -> str:
        """Discard a message that breaks the handling, with its record and the traceback in syslog."""
        import syslog
        import traceback

        qid = self.queue_id or "NOQUEUE"
        for line in traceback.format_exc().splitlines():
            syslog.syslog(syslog.LOG_ERR, f"{qid}: {line}")
        reason = f"the message could not be handled ({type(exc).__name__}: {exc})"[:500]
        decision = R.Decision("unhandled", R.DISCARD, reason)
        if self.event is None:
            self.event = Event(id=stable_id(f"queue:{self.queue_id}", self.row.address), status="",
                               list_address=self.row.address, created_at="", envelope_sender=self.sender,
                               queue_id=self.queue_id, list_display_name=self.row.display_name)
        return self._record("discarded", decision, f"to=<{self.row.address}>, status=discarded ({reason})")

    # ------------------------------------------------------------ -owner, -request

    def to_owners(self, kind: str) -> str:
        """Mail to -owner or -request goes to the list's owners, unchanged."""
        from ..common.sendmail import SendError, submit

        owners = list(self.row.owners)
        if self.dry:
            return self._dry(f"delivered: would forward to the owners of {self.row.address}", owners, None)
        try:
            submit(self.settings["sendmail"], self.sender, owners, self.raw)
        except SendError as exc:
            raise Defer(str(exc)) from None
        return f"{kind} mail for {self.row.address} forwarded to {len(owners)} owner(s)"

    # ------------------------------------------------------------ helpers

    def _tz(self):
        import zoneinfo

        return zoneinfo.ZoneInfo(self.settings["timezone"])

    def _record(self, status: str, decision, summary: str, recipients=(), error: str = "") -> str:
        """Write the outcome as one event in the spool; the log line."""
        line = f"{summary} (rule {decision.rule})"
        if self.dry:
            return self._dry(f"{status}: {summary}", list(recipients), None)
        event = self.event._replace(status=status, rule=decision.rule, created_at=now_utc(),
                                    recipients=tuple(recipients), recipient_count=len(recipients),
                                    error_message=error or (decision.reason if status == "discarded" else ""),
                                    body=self._body_text())
        SP.write_event(self.spool, event)
        return line

    def _body_text(self) -> str:
        """The body for the log, capped: a single text part decoded (transfer
        encoding and charset, as the parsed headers say); anything else as it came."""
        raw = self.body[:BODY_CAP]
        try:
            if self.headers.get_content_maintype() == "text":
                from email.message import Message

                # what email's text content manager does, without importing it per message
                part = Message()
                part["Content-Transfer-Encoding"] = str(self.headers.get("Content-Transfer-Encoding", "7bit"))
                part.set_payload(raw.decode("ascii", "surrogateescape"))
                return part.get_payload(decode=True).decode(self.headers.get_content_charset() or "us-ascii",
                                                            "replace")
        except Exception:  # an unknown charset or an undecodable body is logged as it came
            pass
        return raw.decode("utf-8", "replace")

    def _dry(self, decision: str, recipients: list[str], message: bytes | None) -> str:
        out = sys.stdout
        out.write(f"decision: {decision}\n")
        out.write(f"recipients ({len(recipients)}):\n")
        for r in recipients:
            out.write(f"  {r}\n")
        if message is not None:
            out.write("message:\n")
            out.flush()
            sys.stdout.buffer.write(message)
            if not message.endswith(b"\n"):
                sys.stdout.buffer.write(b"\n")
        out.flush()
        return ""


if __name__ == "__main__":
    sys.exit(main())
