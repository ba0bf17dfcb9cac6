"""``listfilter-deliver``: one list message from Postfix's pipe(8), on stdin.

master.cf runs it with a fixed command line::

    listfilter-deliver --snapshot /var/lib/listfilter/snapshot.sqlite --spool /var/lib/listfilter/spool
        --sender ${sender} --recipient ${original_recipient} --queue-id ${queue_id}

It reads the message once, looks the list up in the snapshot, gathers the
facts the rules need (:mod:`listfilter.mail.rules`), runs the chain, and
acts: rewrites the headers and hands the post to ``sendmail`` with VERP,
sends the poster a refusal notice, holds it for the owners
(:mod:`listfilter.mail.moderation`), or drops a loop, a duplicate or a second
copy of a post already held. Every
outcome is one event in the spool and one syslog line naming the rule.
Mail to -owner goes to the owners; mail to an opt-in list's -join and
-leave, and to any list's -request, is a command or a confirmation
(:mod:`listfilter.mail.requests`). Standard library only: it runs once per message.

Exit status (sysexits, as pipe(8) reads it): 0 delivered, discarded, or
refused and notified; 67 no such list (Postfix bounces); 75 anything
temporary or unexpected (Postfix defers and retries). stderr gets one line
that begins with the DSN. A post that ends in 75 also leaves a ``deferred``
event with that line (:class:`Deferral`), wherever the spool can be written:
the snapshot's spool, or while the snapshot cannot be read, ``--spool``.
"""

from __future__ import annotations

import datetime as dt
import sys
from pathlib import Path

from ..common import spool as SP
from ..common import staging as ST
from ..common.addresses import bounces_address, parse_recipient, verp_member
from ..common.errors import Defer, ListfilterError, NoSuchList
from ..common.events import Event, now_utc, post_key, stable_id
from ..common.paths import DEFAULT_SNAPSHOT
from ..common.snapshot import APPROVED_HEADER, Snapshot, decode_trusted
from ..common.words import plural
from . import rules as R
from .command import ending, help_requested, log, parse, print_help, queue_id_of, run, usage
from .message import Headers, header_text, poster_of, render, split_message

OPTIONS = {"snapshot": DEFAULT_SNAPSHOT, "spool": "", "sender": None, "recipient": None, "queue-id": "",
           "client-address": ""}
FLAGS = ("dry-run",)
HELP = """Filter one list message from Postfix's pipe (the message on stdin).

  --snapshot PATH   the compiled snapshot (default /var/lib/listfilter/snapshot.sqlite)
  --spool PATH      where to record a deferral while the snapshot cannot be read
                    (default: spool/ beside the snapshot); otherwise the snapshot names the spool
  --sender ADDR     the envelope sender (${sender}; empty for bounces)
  --recipient ADDR  the list address (${original_recipient})
  --queue-id ID     Postfix's queue id (${queue_id}), for the logs
  --client-address IP
                    the SMTP client Postfix received it from (${client_address}; empty for
                    sendmail), matched against [site] authenticated_trusted networks
  --dry-run         print each rule's verdict, the recipients and the message; send nothing
"""

#: Bodies kept in event records for the admin page are capped at this size.
BODY_CAP = 256 * 1024


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if help_requested(argv):
        return print_help(usage("listfilter-deliver", OPTIONS, FLAGS, HELP))
    return run(lambda a: deliver(parse(a, OPTIONS, FLAGS), sys.stdin.buffer.read()), argv, queue_id_of(argv),
               dry_run="--dry-run" in argv)


def deliver(args: dict, raw: bytes) -> str:
    """Deliver one message; the log line. Raises Defer or NoSuchList; a post's deferral is recorded first."""
    target = parse_recipient(args["recipient"])
    if target is None:
        raise NoSuchList(f"{args['recipient']!r} is not a list address")
    deferral = Deferral(args, raw, target.list_address)
    try:
        with Snapshot(args["snapshot"]) as snap:
            deferral.spool = Path(snap.settings()["spool_dir"])
            row = snap.get_list(target.list_address)
            if row is None:
                raise NoSuchList(f"<{args['recipient']}>: no such list here")
            if target.kind == "bounces":  # the transport map sends these to listfilter-bounce
                member = verp_member(target.extension) if target.extension else None
                return (f"bounce for {row.address}{' from member ' + member if member else ''} received;"
                        " nothing sent")
            if target.kind in ("join", "leave") and not row.optin:  # the maps have no such address
                raise NoSuchList(f"<{args['recipient']}>: {row.address} is not an opt-in list")
            deferral.row = row
            deferral.job = job = Job(args, raw, snap, row)
            if target.kind == "owner":
                return job.to_owners(target.kind)
            if target.kind in ("join", "leave", "request"):  # commands and confirmations
                from .requests import handle

                return handle(job, target.kind)
            return job.post()
    except NoSuchList:
        raise
    except Exception as exc:  # Postfix will defer it (command.run): say so in the mail log too
        # (-owner and -request mail has no rows, delivered or not; a dry run records nothing)
        if target.kind == "post" and not args["dry_run"]:
            deferral.record(exc)
        raise


def envelope_sender(value: str | None) -> str:
    """``${sender}`` as the records keep it: no brackets, "" for the null sender."""
    sender = (value or "").strip().strip("<>")
    return "" if sender.upper() == "MAILER-DAEMON" else sender


class Deferral:
    """The ``deferred`` event of a post that ends in exit 75, as much of it as is known.

    Its id is the post's (:func:`post_key`), so a retry's outcome replaces it
    and every further deferral updates it: one row per (message, list),
    however often Postfix retries. The spool is the snapshot's; while the
    snapshot cannot be read, ``--spool`` (default: ``spool`` beside the
    snapshot), and then only if that directory exists (its subdirectories
    are made as usual; the spool itself never at a guessed path). When no
    spool can be written, syslog has the only record.
    """

    def __init__(self, args: dict, raw: bytes, list_address: str):
        self.args, self.raw, self.list_address = args, raw, list_address
        self.spool = Path(args["spool"] or Path(args["snapshot"]).parent / "spool")
        self.row = None
        self.job: Job | None = None

    def record(self, exc: BaseException) -> None:
        import syslog

        queue_id = self.args["queue_id"] or ""
        try:
            event = self._event()._replace(status="deferred", rule="", created_at=now_utc(),
                                           error_message=ending(exc)[1])
            if not self.spool.is_dir():  # nothing is made at a path only guessed
                raise SP.SpoolError(f"spool {self.spool} does not exist")
            SP.ensure(self.spool)
            SP.write_event(self.spool, event)
        except Exception as err:  # the deferral stands; only its record is lost
            log(syslog.LOG_ERR, f"{queue_id or 'NOQUEUE'}: cannot record the deferral in {self.spool}: {err}")

    def _event(self) -> Event:
        job = self.job
        if job is not None and job.event is not None:  # the post was read: everything but the outcome
            return job.event._replace(recipients=tuple(job.handed), recipient_count=len(job.handed),
                                      body=job._body_text())
        queue_id = self.args["queue_id"] or ""
        sender = envelope_sender(self.args["sender"])
        address = self.row.address if self.row is not None else self.list_address
        name = self.row.display_name if self.row is not None else ""
        try:
            fields, body = split_message(self.raw)
            headers = Headers(fields)
            from_name, from_addr, _ = poster_of(headers)
            message_id = (header_text(headers, "Message-ID") or "").strip()
        except Exception:  # a message the post would discard as unhandled: its queue id names it
            return Event(id=stable_id(post_key("", queue_id), address), status="", list_address=address,
                         created_at="", list_display_name=name, envelope_sender=sender, queue_id=queue_id)
        return Event(id=stable_id(post_key(message_id, queue_id), address), status="", list_address=address,
                     created_at="", list_display_name=name, sender_email=from_addr or sender, sender_name=from_name,
                     envelope_sender=sender, subject=header_text(headers, "Subject") or "", message_id=message_id,
                     queue_id=queue_id, body=body_text(headers, body))


class Job:
    """One message to one list: the parsed message, the list's row, the settings."""

    def __init__(self, args: dict, raw: bytes, snap: Snapshot, row):
        self.dry = bool(args["dry_run"])
        self.queue_id = args["queue_id"] or ""
        self.client_address = (args.get("client_address") or "").strip()
        self.sender = envelope_sender(args["sender"])
        self.raw = raw
        self.event = None
        self.handed: list[str] = []  # the recipients sendmail has taken so far
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
        message_key = post_key(message_id, self.queue_id)
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
            progress.load(readonly=True)  # a dry run moves nothing in the spool
            return self._decide_and_act(progress, from_addr)
        with progress:
            if progress.set_aside:
                import syslog

                log(syslog.LOG_WARNING, f"{self.queue_id or 'NOQUEUE'}: {progress.set_aside}")
            return self._decide_and_act(progress, from_addr)

    def _decide_and_act(self, progress: SP.Delivery, from_addr: str | None) -> str:
        may_post = bool(from_addr) and self.snap.may_post(self.row.address, from_addr)
        held_id = (header_text(self.headers, APPROVED_HEADER) or "").strip()
        facts = R.Post(
            headers=self.headers, list_row=self.row, from_address=from_addr, may_post=may_post,
            delivered_recently=progress.done and progress.recent(SP.DUPLICATE_WINDOW_DAYS),
            message_id=self.event.message_id, from_problem=self.from_problem,
            authserv_id=self.settings["authserv_id"], trusted=decode_trusted(self.settings["authenticated_trusted"]),
            client_address=self.client_address,
            is_member=bool(from_addr) and not may_post and self.snap.member(self.row.address, from_addr) is not None,
            post_key=progress.data["message"],
            approved_key=self.snap.approved(self.row.address, held_id) if held_id else None,
            held_as=progress.held)
        decision, trail = R.decide(facts)
        if self.dry:
            for name, verdict in trail:
                sys.stdout.write(f"rule {name}: {verdict.action + ': ' + verdict.reason if verdict else 'pass'}\n")
        if decision.action == R.DISCARD:
            if decision.rule in ("duplicate", "held"):
                # the delivery's own record (or the held one) stands; a second one would replace it
                if self.dry:
                    return self._dry(f"discarded: {decision.reason}", [], None)
                return f"{decision.rule}: {decision.reason} (rule {decision.rule})"
            # a loop's echo gets a record of its own, beside the first delivery's
            self.event = self.event._replace(id=stable_id(f"{self.event.message_id} (loop)", self.row.address))
            return self._record("discarded", decision, f"{decision.rule}: {decision.reason}")
        if decision.action == R.REFUSE:
            return self._refuse(decision, from_addr)
        if decision.action == R.HOLD:
            from .moderation import hold

            return hold(self, decision, progress)
        return self._send(progress, from_addr, decision)

    def _send(self, progress: SP.Delivery, from_addr: str | None, decision) -> str:
        """Hand the post to sendmail in batches, each recorded as in flight before it goes and as
        accepted after; a batch a killed attempt left in flight is settled first (:mod:`.handoff`)."""
        from .handoff import log_position, message_id_of, resolve
        from .headers import rewrite_headers, unsubscribe_fields, wrap_message
        from ..common.sendmail import submit

        if self.new_message_id and progress.data.get("message_id"):
            # a retry goes out with the Message-ID its earlier batches carried
            self.event = self.event._replace(message_id=progress.data["message_id"])
        members = [e for e, _ in self.snap.members(self.row.address)]
        who_gets_it = dict(poster=from_addr, exclude_poster=self.row.exclude_poster, list_address=self.row.address,
                           suppressed=self.snap.suppressed())
        recipients = R.recipients(members, **who_gets_it)
        # an accepted post that reaches no one says so, and why, wherever "delivered" is shown
        nobody = "" if recipients else f"nobody was sent a copy: {R.nobody_reason(members, **who_gets_it)}"
        mitigation, dmarc_note = self._dmarc(from_addr)
        now, new_id = dt.datetime.now(self._tz()), self.event.message_id if self.new_message_id else None
        body = self.body
        if mitigation is not None and mitigation.mode == "wrap":
            fields, body = wrap_message(self.headers, self.body, self.row, now, message_id=new_id,
                                        poster=(self.event.sender_name, from_addr))
        else:
            fields = rewrite_headers(self.headers, self.row, now, message_id=new_id,
                                     munge=(self.event.sender_name, from_addr) if mitigation else None)
        staging = self.row.redirect_to  # the staging valve: every copy goes only there, naming the real ones
        # an opt-in list's members each get a copy of their own, with their own unsubscribe link (RFC 8058);
        # the staging valve's one copy, and a dry run's, name no member's and carry only the mailto
        per_member = self.row.optin and not staging
        rewritten = render(fields + (unsubscribe_fields(self.row) if self.row.optin else []), body)
        copies_to = ST.redirected(recipients, staging)
        if staging:
            rewritten = ST.redirect_header(recipients) + rewritten
        redirect_note = f"redirected to {staging} (staging)" if staging and recipients else ""
        if self.dry:
            if dmarc_note:
                sys.stdout.write(f"dmarc: {dmarc_note}\n")
            if redirect_note:
                sys.stdout.write(f"staging: {redirect_note}: the copy goes only there\n")
            return self._dry(f"delivered: would deliver to {plural(len(recipients), 'recipient')}"
                             + (f" ({nobody})" if nobody else "") + (f", {redirect_note}" if redirect_note else ""),
                             recipients, rewritten)
        bounces = bounces_address(self.row.address)
        resolve(progress, self.settings, sender=bounces, queue_id=self.queue_id)
        already = progress.accepted
        todo = [r for r in copies_to if r.lower() not in already]
        # one batch per member when each copy differs: the progress record then says, member by member,
        # who Postfix took, and a retry after a kill settles at most the one in flight (handoff.resolve)
        parts = [[r] for r in todo] if per_member else R.batches(todo)
        sent = len(copies_to) - len(todo)
        self.handed = [r for r in copies_to if r.lower() in already]
        stdin = progress.message_file(rewritten) if parts and not per_member else None
        key = self._unsubscribe_key() if parts and per_member else None
        where = log_position(self.settings.get("postfix_log")) if parts and not progress.batches else None
        for n, batch in enumerate(parts, start=1):
            if per_member:
                stdin = progress.message_file(render(fields + unsubscribe_fields(self.row, self._unsubscribe_token(
                    key, batch[0])), body))
            progress.begin_batch(batch, message_id=message_id_of(fields), log_position=where)
            try:
                submit(self.settings["sendmail"], bounces, batch, stdin, verp=True)
            except Exception as exc:  # SendError, or anything else: record, then defer
                error = f"sendmail failed after {sent} of {plural(len(copies_to), 'recipient')}: {exc}"
                raise Defer(error) from None  # recorded as deferred (Deferral), with self.handed
            sent += len(batch)
            self.handed.extend(batch)
            if n < len(parts):  # the last batch is covered by finish()
                progress.record_batch(batch, self.queue_id)
        progress.finish(queue_id=self.queue_id, recipients=len(copies_to))
        who = plural(len(recipients), "recipient") if recipients else f"0 recipients, {nobody}"
        # the event keeps the real recipients; the note says where the copy really went
        return self._record("delivered", decision, f"to=<{self.row.address}>, from=<{from_addr}>,"
                            f" message-id={self.event.message_id}, status=delivered ({who})"
                            + (f", {redirect_note}" if redirect_note else "")
                            + (f", dmarc={mitigation.mode} ({mitigation.reason})" if mitigation else ""),
                            recipients, error="; ".join(t for t in (redirect_note, nobody, dmarc_note) if t))

    def _unsubscribe_key(self) -> bytes | None:
        """The token key, when the list's copies carry one-click links (missing: Defer, the world may change)."""
        from ..common.tokens import load_key

        return load_key(self.settings["token_key"]) if self.row.unsubscribe_url else None

    def _unsubscribe_token(self, key: bytes | None, member: str) -> str | None:
        """A member's one-click token for this list: it never expires (RFC 8058 links live in old mail)."""
        from ..common.tokens import make

        return make(key, "unsubscribe", self.row.address, member.lower(), 0) if key is not None else None

    def _dmarc(self, from_addr: str | None):
        """The DMARC mitigation this post gets (rules.dmarc_mitigation, from the snapshot's dmarc table),
        and the words the mail log keeps about it ("" when none)."""
        import time

        entry = None
        if from_addr and self.row.dmarc != "off":
            entry = self.snap.dmarc(from_addr.rpartition("@")[2])
        mitigation = R.dmarc_mitigation(self.row, from_addr, entry, time.time())
        if mitigation is None:
            return None, ""
        what = ("From: rewritten to the list's address" if mitigation.mode == "munge"
                else "sent inside a message from the list")
        return mitigation, f"{what} (dmarc = {mitigation.mode}): {mitigation.reason}"

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
        if notice is not None and self.row.redirect_to:  # the staging valve: the poster is named, not mailed
            notice = ST.redirect_header([self.sender]) + notice
            note = f"notice for <{self.sender}> redirected to {self.row.redirect_to} (staging)"
        summary = f"to=<{self.row.address}>, from=<{from_addr or ''}>, status=bounced ({decision.reason}; {note})"
        if self.dry:
            return self._dry(f"bounced: {summary}", [], notice)
        if notice is not None:
            try:
                submit(self.settings["sendmail"], "", ST.redirected([self.sender], self.row.redirect_to), notice)
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
            log(syslog.LOG_ERR, f"{qid}: {line}")  # a dry run's go to stderr
        reason = f"the message could not be handled ({type(exc).__name__}: {exc})"[:500]
        decision = R.Decision("unhandled", R.DISCARD, reason)
        if self.event is None:
            self.event = Event(id=stable_id(post_key("", self.queue_id), self.row.address), status="",
                               list_address=self.row.address, created_at="", envelope_sender=self.sender,
                               queue_id=self.queue_id, list_display_name=self.row.display_name)
        return self._record("discarded", decision, f"to=<{self.row.address}>, status=discarded ({reason})")

    # ------------------------------------------------------------ -owner, -request

    def to_owners(self, kind: str) -> str:
        """Mail to -owner or -request goes to the list's owners, unchanged."""
        from ..common.sendmail import SendError, submit

        owners = list(self.row.owners)
        staging = self.row.redirect_to
        note = f", redirected to {staging} (staging)" if staging and owners else ""
        if self.dry:
            return self._dry(f"delivered: would forward to the owners of {self.row.address}{note}", owners, None)
        try:
            submit(self.settings["sendmail"], self.sender, *ST.through_valve(owners, self.raw, staging))
        except SendError as exc:
            raise Defer(str(exc)) from None
        return f"{kind} mail for {self.row.address} forwarded to {plural(len(owners), 'owner')}{note}"

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
        return body_text(self.headers, self.body)

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


def body_text(headers: Headers, body: bytes) -> str:
    """The body for the log, capped: a single text part decoded (transfer
    encoding and charset, as the parsed headers say); anything else as it came."""
    raw = body[:BODY_CAP]
    try:
        if headers.get_content_maintype() == "text":
            from email.message import Message

            # what email's text content manager does, without importing it per message
            part = Message()
            part["Content-Transfer-Encoding"] = str(headers.get("Content-Transfer-Encoding", "7bit"))
            part.set_payload(raw.decode("ascii", "surrogateescape"))
            return part.get_payload(decode=True).decode(headers.get_content_charset() or "us-ascii", "replace")
    except Exception:  # an unknown charset or an undecodable body is logged as it came
        pass
    return raw.decode("utf-8", "replace")


if __name__ == "__main__":
    sys.exit(main())
