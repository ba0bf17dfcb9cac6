"""Did Postfix take the batch a killed delivery had in flight? Asked on a retry only.

``deliver`` records each batch as in flight before it runs sendmail, and as
accepted once sendmail has returned (:class:`listfilter.common.spool.Delivery`).
A delivery killed in between (an out-of-memory kill, a reboot, a signal)
leaves the batch in flight, and Postfix retries the post. Before sending
that batch again, :func:`resolve` asks Postfix what it holds:

- its **queue** (``postqueue -j``, which any local user may run unless
  ``authorized_mailq_users`` says otherwise; it honours ``MAIL_CONFIG``, which
  pipe(8) passes on): a submission still in the ``maildrop`` queue has not
  reached cleanup(8) yet, so the log cannot know it. postqueue lists only
  complete maildrop files: a sendmail killed before postdrop(1) finished
  left nothing that Postfix will deliver;
- its **log**, read from where it ended before the delivery's first batch
  (from the systemd journal: from the time of the first batch, with ``journalctl``):
  every submission by sendmail leaves ``QUEUEID: uid=UID from=<SENDER>``
  (pickup(8)), ``QUEUEID: message-id=ID`` (cleanup(8)) and, once it is
  safely queued, ``QUEUEID: from=<SENDER>, size=N, nrcpt=N (queue active)``
  (qmgr(8)). A submission with this process's uid, the list's -bounces
  address and the post's Message-ID is one of this delivery's batches:
  the batches recorded as accepted account for some; one more is the
  batch in flight.

The verdict is that Postfix took it (the batch is recorded as accepted and
not sent again), that Postfix is still picking it up (defer: the next try
knows), or that it did not, or that nothing can tell (the batch goes out
again: a member may get a second copy, none is lost). Standard library only.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from ..common.errors import Defer
from ..common.words import plural

#: A batch that has been "still being picked up" for this long is sent again:
#: waiting longer would hold the rest of the post back for a Postfix that is not moving.
PENDING_LIMIT = 3600.0
#: How long after a first look a log that does not show the batch is read again.
SETTLE = 2.0
#: postqueue lists the whole queue; a queue that takes longer than this is not read.
POSTQUEUE_TIMEOUT = 60.0


class Verdict:
    """What Postfix holds of the batch in flight: ``taken``, ``pending`` (still being picked up),
    or ``absent`` (a readable log shows no such submission), and ``why``; ``queue_id`` is the
    submission's in Postfix's log, when known. None of the three: nothing can tell."""

    def __init__(self, *, taken: bool = False, pending: bool = False, absent: bool = False, why: str = "",
                 queue_id: str = ""):
        self.taken, self.pending, self.absent, self.why, self.queue_id = taken, pending, absent, why, queue_id

    def __repr__(self) -> str:
        return (f"Verdict(taken={self.taken}, pending={self.pending}, absent={self.absent}, why={self.why!r},"
                f" queue_id={self.queue_id!r})")


#: The ``postfix_log`` setting when Postfix logs to the systemd journal: ``journal``, or
#: ``journal:DIRECTORY`` for journal files elsewhere (journalctl --directory).
JOURNAL = "journal"
#: How far before the recorded time the journal is read: entries carry the time they were logged.
JOURNAL_SLACK = 5.0


def log_position(path: str | None) -> dict | None:
    """Where Postfix's log ends now (its path, inode and size; for the journal, the time); None if
    there is no such file."""
    if not path:
        return None
    if path == JOURNAL or path.startswith(JOURNAL + ":"):
        # nothing to ask the journal now: a retry reads it from this time on (no process per post)
        return {"journal": path, "since": time.time()}
    try:
        st = os.stat(path)
    except OSError:
        return None
    return {"path": path, "inode": st.st_ino, "offset": st.st_size}


def message_id_of(fields: list[bytes]) -> str:
    """The Message-ID the rewritten header ``fields`` carry, as cleanup(8) will log it ("" if none)."""
    for field in fields:
        if field[:11].lower() == b"message-id:":
            return " ".join(field[11:].decode("utf-8", "surrogateescape").split())
    return ""


def resolve(progress, settings: dict, *, sender: str, queue_id: str) -> Verdict | None:
    """Settle ``progress``'s batch in flight, if it has one; the verdict (None without one).

    Taken: the batch is recorded as accepted. Not taken: it is forgotten and
    goes out with the rest. Still being picked up: :class:`Defer`.
    """
    flight = progress.in_flight
    if flight is None:
        return None
    try:
        verdict = ask(flight, progress.batches, message_id=progress.data.get("message_id", ""), sender=sender,
                      position=progress.data.get("postfix_log"), postqueue=settings.get("postqueue"))
    except Exception as exc:  # reading Postfix must never cost the post: send the batch again
        verdict = Verdict(why=f"internal error reading Postfix's state ({type(exc).__name__}: {exc})")
    count = len(flight["recipients"])
    if verdict.taken:
        progress.record_batch(flight["recipients"], queue_id)
        _note(queue_id, f"the batch of {plural(count, 'recipient')} in flight when an earlier attempt ended is in"
                        f" Postfix's log as {verdict.queue_id} ({verdict.why}); not sent again")
    elif verdict.pending and time.time() - float(flight.get("at", 0)) < PENDING_LIMIT:
        raise Defer(f"the batch of {plural(count, 'recipient')} in flight when an earlier attempt ended is {verdict.why};"
                    " waiting for Postfix to pick it up")
    else:
        progress.abandon_batch()
        _note(queue_id, f"the batch of {plural(count, 'recipient')} in flight when an earlier attempt ended is sent again:"
                        f" {verdict.why}")
    return verdict


def ask(flight: dict, recorded: list[int], *, message_id: str, sender: str, position: dict | None,
        postqueue: str | None, uid: int | None = None) -> Verdict:
    """The verdict on ``flight`` from Postfix's queue, then its log.

    In that order: pickup(8) removes a maildrop file only after cleanup(8)
    has logged it. But the line reaches the file a moment later (through
    postlogd(8) or syslog), so a log that does not show the batch is read
    once more, :data:`SETTLE` seconds on.
    """
    uid = os.getuid() if uid is None else uid
    verdict = look(flight, recorded, message_id=message_id, sender=sender, position=position, postqueue=postqueue,
                   uid=uid)
    if verdict.absent:
        time.sleep(SETTLE)
        verdict = look(flight, recorded, message_id=message_id, sender=sender, position=position,
                       postqueue=postqueue, uid=uid)
    return verdict


def look(flight: dict, recorded: list[int], *, message_id: str, sender: str, position: dict | None,
         postqueue: str | None, uid: int) -> Verdict:
    """One look at the queue and the log (see :func:`ask`)."""
    waiting = in_maildrop(postqueue, sender, flight["recipients"])
    if waiting:
        return Verdict(pending=True, why=f"in Postfix's maildrop queue as {waiting}")
    if not message_id:
        return Verdict(why="no Message-ID was recorded for it")
    from ..common.reinjection import submissions as matching

    if position and position.get("journal"):
        found, problem = journal_lines(position)
    else:
        files, problem = log_files(position)
        found = lines(files)
    if problem:
        return Verdict(why=problem)
    attempts = matching(found, message_id=message_id, sender=sender, uid=uid)
    confirmed = [(qid, n) for qid, n in attempts if n is not None]
    if len(confirmed) > len(recorded):
        qid, nrcpt = confirmed[-1]
        return Verdict(taken=True, queue_id=qid, why=f"nrcpt={nrcpt}")
    if len(attempts) > len(recorded):
        qid = next(qid for qid, n in attempts if n is None)
        return Verdict(pending=True, queue_id=qid, why=f"in Postfix's log as {qid}, not yet queued")
    return Verdict(absent=True, why=f"Postfix's log shows {plural(len(confirmed), 'submission')} of it, all recorded")


def in_maildrop(postqueue: str | None, sender: str, recipients: list[str]) -> str:
    """The queue id of a maildrop file from ``sender`` to exactly ``recipients``, or ""."""
    if not postqueue:
        return ""
    import json
    import subprocess

    try:
        proc = subprocess.run([postqueue, "-j"], stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                              stderr=subprocess.DEVNULL, timeout=POSTQUEUE_TIMEOUT)
    except (OSError, subprocess.TimeoutExpired):
        return ""
    want = {r.lower() for r in recipients}
    for line in proc.stdout.splitlines():
        if b'"maildrop"' not in line:
            continue
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        if (entry.get("queue_name") == "maildrop" and str(entry.get("sender", "")).lower() == sender.lower()
                and {str(r.get("address", "")).lower() for r in entry.get("recipients", ())} == want):
            return str(entry.get("queue_id", "?"))
    return ""


def log_files(position: dict | None) -> tuple[list[tuple[Path, int]], str]:
    """The log files to read, each from an offset, that hold everything since ``position``;
    or a reason why they cannot be had.

    After a rotation by renaming (logrotate's default), the file with the
    recorded inode is ``<log>.1``: it is read from the offset, the new log
    from its start.
    """
    if not position:
        return [], "Postfix's log was not known when the batch went out (site setting postfix_log)"
    path = Path(position["path"])
    inode, offset = position.get("inode"), int(position.get("offset", 0))
    try:
        st = path.stat()
    except OSError as exc:
        return [], f"Postfix's log {path} cannot be read ({exc.strerror})"
    if st.st_ino == inode:
        if st.st_size < offset:
            return [], f"Postfix's log {path} was truncated since"
        files = [(path, offset)]
    else:
        rotated = path.with_name(path.name + ".1")
        try:
            if rotated.stat().st_ino != inode:
                raise FileNotFoundError
        except OSError:
            return [], f"Postfix's log {path} was rotated since, and its earlier part is not at {rotated}"
        files = [(rotated, offset), (path, 0)]
    for name, _ in files:
        try:
            open(name, "rb").close()
        except OSError as exc:
            return [], f"Postfix's log {name} cannot be read by uid {os.getuid()} ({exc.strerror})"
    return files, ""


def journal_lines(position: dict) -> tuple[list[bytes], str]:
    """The journal's mail lines since the recorded time, as syslog lines (``journalctl -o
    short-iso``); or a reason why they cannot be had. Needs the journal's group: the deliver
    pipe's ``user=listfilter:systemd-journal`` ([postfix] log_group)."""
    import subprocess

    _, _, directory = position["journal"].partition(":")
    since = float(position.get("since", 0)) - JOURNAL_SLACK
    argv = ["journalctl", "--no-pager", "-q", "-o", "short-iso", "--since", f"@{since:.0f}"]
    if directory:
        argv += ["--directory", directory]
    try:
        proc = subprocess.run(argv + ["SYSLOG_FACILITY=2"], stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, timeout=POSTQUEUE_TIMEOUT)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return [], f"the journal cannot be read ({exc})"
    if proc.returncode != 0:
        why = proc.stderr.decode("utf-8", "replace").strip().splitlines()
        return [], f"the journal cannot be read by uid {os.getuid()} ({why[-1] if why else proc.returncode})"
    return proc.stdout.splitlines(), ""


def lines(files: list[tuple[Path, int]]):
    """The complete lines of ``files``, each from its offset (a line cut by the offset is skipped)."""
    for path, offset in files:
        with open(path, "rb") as fh:
            if offset:
                fh.seek(offset - 1)
                if fh.read(1) != b"\n":
                    fh.readline()  # the rest of a line written before the offset
            for line in fh:
                if line.endswith(b"\n"):
                    yield line[:-1]


def _note(queue_id: str, text: str) -> None:
    import syslog

    from .command import log  # the one place that decides where the mail side's lines go

    log(syslog.LOG_NOTICE, f"{queue_id or 'NOQUEUE'}: {text}")
