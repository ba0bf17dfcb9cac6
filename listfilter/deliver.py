"""Deliver one list message from Postfix's pipe (message on stdin).

Spawned by pipe(8) once per message, so it imports only the standard library
and listfilter's light modules: the config, the snapshot reader, the spool,
the rewrite and the decisions. Jinja2 is loaded only to render a refusal
notice.

Exit status (sysexits, as pipe(8) reads it): 0 delivered, or refused and
notified; 67 no such list (Postfix bounces); 75 anything temporary or
unexpected (Postfix defers and retries). One line goes to stderr, which
Postfix logs and quotes in any bounce; the detail goes to syslog.
"""

from __future__ import annotations

import datetime as dt
import os
import sys
import syslog
from pathlib import Path

EX_OK = 0
EX_NOUSER = 67
EX_TEMPFAIL = 75

#: A (Message-ID, list) pair delivered this recently is not delivered again.
DUPLICATE_WINDOW_DAYS = 7
#: Bodies kept in event records for the admin page are capped at this size.
BODY_CAP = 256 * 1024


class Defer(Exception):
    """A temporary failure: exit 75 with this one line."""


class NoSuchList(Exception):
    """The recipient is not a list: exit 67 with this one line."""


def add_arguments(parser) -> None:
    parser.add_argument("--sender", required=True, help="the envelope sender (${sender}; empty for bounces)")
    parser.add_argument("--recipient", required=True, help="the list address (${original_recipient})")
    parser.add_argument("--queue-id", default="", help="Postfix's queue id (${queue_id}), for the logs")
    parser.add_argument("--dry-run", action="store_true",
                        help="print the decision, the recipients and the rewritten message; send nothing")


class Outcome:
    """What happened to one message: status delivered | bounced | failed | discarded."""

    def __init__(self, status: str, summary: str, recipients: list[str] | None = None, error: str = ""):
        self.status = status
        self.summary = summary
        self.recipients = recipients or []
        self.error = error


def main(args) -> int:
    """Entry point from the launcher; never raises, never exits 1."""
    syslog.openlog("listfilter", syslog.LOG_PID, syslog.LOG_MAIL)
    qid = args.queue_id or "NOQUEUE"
    try:
        raw = sys.stdin.buffer.read()
        outcome = Delivery(args, raw).run()
    except NoSuchList as exc:
        return _finish(qid, EX_NOUSER, f"5.1.1 {exc}")
    except Defer as exc:
        return _finish(qid, EX_TEMPFAIL, f"4.3.0 {exc}")
    except Exception as exc:  # never a traceback: defer, and keep the detail in syslog
        import traceback

        for line in traceback.format_exc().splitlines():
            syslog.syslog(syslog.LOG_ERR, f"{qid}: {line}")
        return _finish(qid, EX_TEMPFAIL, f"4.3.0 internal error ({type(exc).__name__}: {exc}); will retry")
    syslog.syslog(syslog.LOG_INFO, f"{qid}: {outcome.summary}")
    return EX_OK


def _finish(qid: str, code: int, line: str) -> int:
    line = " ".join(line.split())[:500]
    syslog.syslog(syslog.LOG_WARNING if code == EX_TEMPFAIL else syslog.LOG_NOTICE, f"{qid}: {line}")
    print(f"listfilter: {line}", file=sys.stderr)
    return code


class Delivery:
    """One message to one list address: load state, decide, act."""

    def __init__(self, args, raw: bytes):
        self.args = args
        self.raw = raw
        self.queue_id = args.queue_id or ""
        self.sender = (args.sender or "").strip().strip("<>")
        if self.sender.upper() == "MAILER-DAEMON":
            self.sender = ""

    # ------------------------------------------------------------ the steps

    def run(self) -> Outcome:
        from . import decisions as D
        from . import rewrite as W
        from . import snapshot as S

        target = D.parse_recipient(self.args.recipient)
        if target is None:
            raise NoSuchList(f"{self.args.recipient!r} is not a list address")
        try:
            snap = S.Snapshot(S.locate(self.args.config))
            self.settings = snap.settings()
        except S.SnapshotError as exc:
            raise Defer(str(exc)) from None
        self.spool_dir = Path(self.settings["spool_dir"])
        with snap:
            row = snap.get_list(target.list_address)
            if row is None:
                raise NoSuchList(f"<{self.args.recipient}>: no such list here")
            self.row = row
            self.info = W.ListInfo(address=row.address, display_name=row.display_name,
                                   subject_tag=row.subject_tag, reply_to=row.reply_to,
                                   description=row.description)
            self.header_bytes, self.body = W.split_message(self.raw)
            self.headers = W.parse_headers(self.header_bytes)
            if not self.args.dry_run:
                self._ensure_spool()
            if target.kind == "bounces":
                return self._bounce(target)
            if target.kind in ("owner", "request"):
                return self._to_owners(target.kind)
            return self._post(snap)

    def _ensure_spool(self) -> None:
        from . import spool

        try:
            spool.ensure(self.spool_dir)
        except spool.SpoolError as exc:
            raise Defer(str(exc)) from None

    def _post(self, snap) -> Outcome:
        from . import decisions as D
        from . import rewrite as W
        from . import spool

        from_name, from_addr = self._from()
        message_id = (W.header_text(self.headers, "Message-ID") or "").strip()
        self.message_key = message_id or f"queue:{self.queue_id}"
        if not message_id:
            # Postfix's sendmail does not tell us the queue id it assigns, so the
            # Message-ID is what traces the reinjected copy (cleanup logs it):
            # give a message without one its own.
            from email.utils import make_msgid

            message_id = make_msgid(domain=self.row.domain)
            self.headers["Message-ID"] = message_id
        self.event_base = {
            "list_address": self.row.address, "list_display_name": self.row.display_name,
            "sender_email": from_addr or self.sender, "sender_name": from_name,
            "envelope_sender": self.sender, "subject": W.header_text(self.headers, "Subject") or "",
            "message_id": message_id, "queue_id": self.queue_id,
        }
        dry = self.args.dry_run

        if W.is_loop(self.headers, self.info):
            # recorded under its own id: the echo must not overwrite the first delivery's record
            self.message_key += " (loop)"
            return self._record(Outcome("failed", f"loop: message already carries {self.row.address}'s"
                                                  " List-Id; not sent again", error="mail loop detected"))

        progress = spool.Progress(self.spool_dir, self.message_key, self.row.address)
        if progress.done and progress.recent(DUPLICATE_WINDOW_DAYS):
            outcome = Outcome("discarded", f"duplicate: {message_id or self.queue_id} was already delivered to"
                                           f" {self.row.address}; not sent again")
            if dry:
                self._print_dry_run(outcome, None)
            return outcome

        check = D.check_poster(from_addr, self.row.address,
                               bool(from_addr) and snap.may_post(self.row.address, from_addr))
        if not check.allowed:
            return self._refuse(check.reason, from_addr)

        from .bounces import suppressed

        members = [e for e, _ in snap.members(self.row.address)]
        recipients = D.recipients(members, poster=from_addr, exclude_poster=self.row.exclude_poster,
                                  list_address=self.row.address, suppressed=suppressed(self.spool_dir))
        now = dt.datetime.now(self._tz())
        rewritten = W.render(W.rewrite_headers(self.headers, self.info, now), self.body)
        if dry:
            outcome = Outcome("delivered", f"would deliver to {len(recipients)} recipients", recipients)
            self._print_dry_run(outcome, rewritten)
            return outcome

        already = progress.accepted
        todo = [r for r in recipients if r.lower() not in already]
        from .sendmail import submit

        parts = D.batches(todo)
        sent = len(recipients) - len(todo)
        for n, batch in enumerate(parts, start=1):
            try:
                submit(self.settings["sendmail"], self.info.bounces_address, batch, rewritten, verp=True)
            except Exception as exc:  # SendError, or anything else: record, then defer
                error = f"sendmail failed after {sent} of {len(recipients)} recipients: {exc}"
                self._record(Outcome("failed", error, recipients, error=f"{error}; Postfix will retry"))
                raise Defer(f"{error}; will retry") from None
            sent += len(batch)
            if n < len(parts):  # the last batch is covered by finish()
                progress.record_batch(batch, self.queue_id)
        progress.finish(queue_id=self.queue_id, recipients=len(recipients))
        return self._record(Outcome(
            "delivered", f"to=<{self.row.address}>, from=<{from_addr}>, message-id={message_id or '-'},"
                         f" status=delivered ({len(recipients)} recipients)", recipients))

    def _refuse(self, reason: str, from_addr: str | None) -> Outcome:
        from . import notices as N
        from . import spool

        suppressed = N.notice_suppressed(self.sender, self.headers)
        day = dt.datetime.now(self._tz()).date().isoformat()
        if suppressed is None and not self.args.dry_run:
            sent = spool.notices_sent_today(self.spool_dir, self.sender, day)
            if sent >= int(self.settings["notice_limit"]):
                suppressed = f"notice limit reached ({sent} today)"
        if suppressed is None:
            notice = N.build_refusal_notice(
                original_headers=self.header_bytes, lst=self.info, poster=from_addr or self.sender,
                envelope_sender=self.sender, reason=reason, posters_description=self.row.posters_rule,
                now=dt.datetime.now(self._tz()))
            note = f"notice sent to <{self.sender}>"
        else:
            notice = None
            note = f"no notice ({suppressed})"
        outcome = Outcome("bounced", f"to=<{self.row.address}>, from=<{from_addr or ''}>, status=bounced"
                                     f" ({reason}; {note})", error=f"{reason}; {note}")
        if self.args.dry_run:
            self._print_dry_run(outcome, notice)
            return outcome
        if notice is not None:
            from .sendmail import SendError, submit

            try:
                submit(self.settings["sendmail"], "", [self.sender], notice)
            except SendError as exc:
                raise Defer(f"cannot send the refusal notice: {exc}") from None
            spool.record_notice(self.spool_dir, self.sender, day, self.row.address)
        return self._record(outcome)

    def _bounce(self, target) -> Outcome:
        """A DSN to -bounces: acknowledged; bounce scoring reads these later."""
        from . import decisions as D

        member = D.verp_member(target.extension) if target.extension else None
        return Outcome("discarded", f"bounce for {self.row.address}"
                                    f"{' from member ' + member if member else ''} received; nothing sent")

    def _to_owners(self, kind: str) -> Outcome:
        """Mail to -owner or -request goes to the list's owners, unchanged."""
        if self.args.dry_run:
            outcome = Outcome("delivered", f"would forward to the owners of {self.row.address}",
                              list(self.row.owners))
            print(outcome.summary)
            return outcome
        from .sendmail import SendError, submit

        try:
            submit(self.settings["sendmail"], self.sender, list(self.row.owners), self.raw)
        except SendError as exc:
            raise Defer(str(exc)) from None
        return Outcome("delivered", f"{kind} mail for {self.row.address} forwarded to {len(self.row.owners)}"
                                    " owner(s)", list(self.row.owners))

    # ------------------------------------------------------------ helpers

    def _from(self) -> tuple[str, str | None]:
        """(display name, address) of the From header; address None if unusable."""
        from email.errors import HeaderParseError

        try:
            header = self.headers["From"]
            addresses = header.addresses if header is not None else ()
        except (HeaderParseError, ValueError, IndexError, TypeError, AttributeError):
            addresses = ()
        if len(addresses) != 1 or not addresses[0].username or not addresses[0].domain:
            return "", None
        a = addresses[0]
        return a.display_name, a.addr_spec

    def _tz(self):
        import zoneinfo

        return zoneinfo.ZoneInfo(self.settings["timezone"])

    def _record(self, outcome: Outcome) -> Outcome:
        """Write the outcome as one event record in the spool (atomically)."""
        from . import spool

        if self.args.dry_run:
            self._print_dry_run(outcome, None)
            return outcome
        event = {
            "id": spool.event_id(self.message_key, self.row.address),
            "status": outcome.status,
            **self.event_base,
            "recipients": outcome.recipients,
            "recipient_count": len(outcome.recipients),
            "error_message": outcome.error,
            "created_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            "body": self._body_text(),
        }
        try:
            spool.write_event(self.spool_dir, event)
        except spool.SpoolError as exc:
            raise Defer(str(exc)) from None
        return outcome

    def _body_text(self) -> str:
        """The body for the log, capped: a single text part decoded (transfer
        encoding and charset, as its headers say); anything else as it came."""
        raw = self.body[:BODY_CAP]
        try:
            if self.headers.get_content_maintype() == "text":
                from email.parser import BytesParser

                from . import rewrite as W

                part = BytesParser(policy=W.make_policy()).parsebytes(W.render(self.headers, raw))
                return part.get_content()
        except Exception:  # an undecodable body is logged as it came
            pass
        return raw.decode("utf-8", "replace")

    def _print_dry_run(self, outcome: Outcome, message: bytes | None) -> None:
        out = sys.stdout
        out.write(f"decision: {outcome.status}: {outcome.summary}\n")
        out.write(f"recipients ({len(outcome.recipients)}):\n")
        for r in outcome.recipients:
            out.write(f"  {r}\n")
        if message is not None:
            out.write("message:\n")
            out.flush()
            sys.stdout.buffer.write(message)
            if not message.endswith(b"\n"):
                sys.stdout.buffer.write(b"\n")
        out.flush()
