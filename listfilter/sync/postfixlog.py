"""Reading Postfix's log: one line parsed (:func:`parse_line`), a log followed across rotation (:class:`LogReader`).

The three forms a mail log line comes in:

- rsyslog's traditional form, ``Dec  1 20:49:17 host postfix/smtp[123]: …``,
  and Postfix's own ``maillog_file`` (postlogd(8)), ``Dec 01 20:49:17 host …``:
  no year and no zone. The year is the one that puts the line at most a day
  ahead of now (a December line read in January is last year's); the time is
  taken as UTC unless the caller names the zone the writer used (``zone=``);
- ISO 8601 with a zone, as rsyslog's ``RSYSLOG_FileFormat`` and journalctl's
  ``-o short-iso`` / ``short-iso-precise`` write it:
  ``2026-12-01T20:49:17.123456+00:00 host postfix/smtp[123]: …``.

A line that is none of these, or is cut off, is ``None``: a log is other
programs' too. This is the sync side's reader (the CLI, the log follower);
the mail side never imports it (:mod:`listfilter.common.postfixlog` has the
one matching the mail side shares with it).
"""

from __future__ import annotations

import datetime as dt
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from ..common.addresses import bounces_address
from ..common.reinjection import submissions

#: The zone of a line whose timestamp names none, unless the caller says otherwise.
NO_ZONE = dt.timezone.utc

_MONTHS = {m: i for i, m in enumerate(("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct",
                                       "Nov", "Dec"), start=1)}
_TRADITIONAL = re.compile(r"(?P<mon>[A-Z][a-z]{2}) +(?P<day>\d{1,2}) (?P<h>\d\d):(?P<m>\d\d):(?P<s>\d\d)(?:\.(?P<f>\d+))? ")
_ISO = re.compile(r"(?P<date>\d{4}-\d\d-\d\d)[T ](?P<h>\d\d):(?P<m>\d\d):(?P<s>\d\d)(?:[.,](?P<f>\d+))?"
                  r"(?P<zone>Z|[+-]\d\d:?\d\d)? ")
_REST = re.compile(r"(?P<host>\S+) (?P<program>[^\s\[:]+)(?:\[(?P<pid>\d+)\])?: (?P<text>.*)")
#: Postfix's queue ids: short (hexadecimal, 6 or more digits) and long (enable_long_queue_ids:
#: ten digits of the time in base 52, "z", the inode in base 51), then ": ".
_QUEUE_ID = re.compile(r"(?P<qid>[0-9A-F]{6,}|[0-9A-Za-z]{10}z[0-9A-Za-z]+|NOQUEUE): ")
#: name=value, the value in <> (possibly empty) or up to a space, comma or semicolon.
_FIELD = re.compile(r"(?:^|(?<=[\s,;]))(?P<name>[a-z][a-z0-9_-]*)=(?:<(?P<angle>[^>]*)>|(?P<plain>[^\s,;]*))")
_STATUS = re.compile(r"\bstatus=(\S+) \(")
_RULE = re.compile(r"\(rule ([^()\s]+)\)\s*$")


@dataclass(frozen=True)
class LogLine:
    """One parsed log line. ``time`` is aware (:data:`NO_ZONE` when the line names no zone);
    ``queue_id`` is None for a line without one (and for Postfix's ``NOQUEUE``); ``text`` follows
    the queue id; ``fields`` are its ``name=value`` pairs, values without ``<>`` (a later one
    wins, as in smtpd's reject lines, whose ``from=`` and ``to=`` come last); ``reply`` is the
    parenthesised text after ``status=…``."""

    time: dt.datetime
    host: str
    program: str
    pid: int | None
    queue_id: str | None
    text: str
    fields: dict[str, str] = field(default_factory=dict)
    reply: str = ""
    raw: str = field(default="", compare=False, repr=False)

    @property
    def daemon(self) -> str:
        """The program's last part: ``smtp`` for ``postfix/smtp`` or ``postfix-out/smtp``."""
        return self.program.rpartition("/")[2]


def parse_line(line: str, *, year: int | None = None, zone: dt.tzinfo | None = None,
               now: dt.datetime | None = None) -> LogLine | None:
    """``line`` parsed (trailing line break allowed), or None if it is not a syslog-style line.

    ``year`` is for traditional timestamps (which have none); without it, the
    year that puts the line no more than a day after ``now``. ``zone`` is the
    zone of a timestamp that names none (default :data:`NO_ZONE`).
    """
    line = line.rstrip("\r\n")
    when, rest = _timestamp(line, year=year, zone=zone or NO_ZONE, now=now)
    if when is None:
        return None
    m = _REST.fullmatch(rest)
    if not m:
        return None
    text = m.group("text")
    queue_id = None
    q = _QUEUE_ID.match(text)
    if q:
        queue_id = None if q.group("qid") == "NOQUEUE" else q.group("qid")
        text = text[q.end():]
    fields, reply = _fields(text)
    pid = m.group("pid")
    return LogLine(time=when, host=m.group("host"), program=m.group("program"), pid=int(pid) if pid else None,
                   queue_id=queue_id, text=text, fields=fields, reply=reply, raw=line)


def _timestamp(line: str, *, year: int | None, zone: dt.tzinfo, now: dt.datetime | None):
    m = _ISO.match(line)
    if m:
        try:
            date = dt.date.fromisoformat(m.group("date"))
            tz = _zone(m.group("zone")) if m.group("zone") else zone
            when = dt.datetime(date.year, date.month, date.day, int(m.group("h")), int(m.group("m")),
                               int(m.group("s")), _micro(m.group("f")), tzinfo=tz)
        except ValueError:
            return None, ""
        return when, line[m.end():]
    m = _TRADITIONAL.match(line)
    if not m or m.group("mon") not in _MONTHS:
        return None, ""
    month, day = _MONTHS[m.group("mon")], int(m.group("day"))
    clock = (int(m.group("h")), int(m.group("m")), int(m.group("s")), _micro(m.group("f")))
    try:
        if year is not None:
            when = dt.datetime(year, month, day, *clock, tzinfo=zone)
        else:
            ref = (now or dt.datetime.now(dt.timezone.utc)).astimezone(zone)
            when = None
            for y in range(ref.year + 1, ref.year - 8, -1):  # the latest not more than a day ahead (Feb 29: up to 8 back)
                try:
                    candidate = dt.datetime(y, month, day, *clock, tzinfo=zone)
                except ValueError:  # Feb 29 in a year without one
                    continue
                if candidate <= ref + dt.timedelta(days=1):
                    when = candidate
                    break
            if when is None:
                return None, ""
    except ValueError:
        return None, ""
    return when, line[m.end():]


def _micro(digits: str | None) -> int:
    return int((digits or "0")[:6].ljust(6, "0"))


def local_zone() -> dt.tzinfo:
    """The zone of a log line that names none: syslog and postlogd write the host's local time."""
    import zoneinfo

    name = os.environ.get("TZ", "").lstrip(":")
    try:
        if name:
            return zoneinfo.ZoneInfo(name)
        with open("/etc/localtime", "rb") as fh:
            return zoneinfo.ZoneInfo.from_file(fh)
    except (OSError, ValueError, zoneinfo.ZoneInfoNotFoundError):
        return dt.timezone.utc


def _zone(text: str) -> dt.tzinfo:
    if text == "Z":
        return dt.timezone.utc
    sign = -1 if text[0] == "-" else 1
    digits = text[1:].replace(":", "")
    return dt.timezone(sign * dt.timedelta(hours=int(digits[:2]), minutes=int(digits[2:])))


def _fields(text: str) -> tuple[dict[str, str], str]:
    """The ``name=value`` fields of ``text`` and the reply after ``status=…`` (balanced parentheses;
    to the end of the line when they never close). The reply's own text is not searched for
    fields: a relay's answer may say anything."""
    reply = ""
    searched = text
    s = _STATUS.search(text)
    if s:
        start = s.end()
        depth, end = 1, len(text)
        for i in range(start, len(text)):
            if text[i] == "(":
                depth += 1
            elif text[i] == ")":
                depth -= 1
                if depth == 0:
                    end = i
                    break
        reply = text[start:end].strip()
        searched = text[:s.end() - 1] + text[end + 1:]
    fields = {}
    for f in _FIELD.finditer(searched):
        fields[f.group("name")] = f.group("angle") if f.group("angle") is not None else f.group("plain")
    r = _RULE.search(searched)
    if r:
        fields.setdefault("rule", r.group(1))
    return fields, reply


def reinjected(lines, message_id: str, list_address: str, *, uid: int | None = None) -> list[str]:
    """The queue ids Postfix gave the copies of the post ``message_id`` that ``deliver`` handed back
    for ``list_address`` (one per sendmail batch, and one more per retry that sent again), in log order.

    ``lines`` are :class:`LogLine` objects or the log's text lines; ``uid``
    is the ``listfilter`` user's (None: any user's submissions from the
    list's -bounces address count). The matching is the mail side's own
    (:func:`listfilter.common.reinjection.submissions`).
    """
    raw = ((line.raw if isinstance(line, LogLine) else line).encode("utf-8", "surrogateescape") for line in lines)
    return [qid for qid, _ in submissions(raw, message_id=message_id, sender=bounces_address(list_address), uid=uid)]


class LogReader:
    """A log file followed from a position, across rotation; each complete line once.

    ``position`` is ``{"path", "inode", "offset"}`` (JSON-able; keep it between
    runs). None: from the file's start. After :meth:`lines` (or part of it),
    :attr:`position` is just past the last line handed out; a line still
    being written (no line break yet) is left for the next run.

    Rotation, as logrotate does it:

    - by renaming (the default): the file at ``path`` has another inode. The
      rest of the old file is read from ``<path>.1`` (found by its inode),
      then the new file from its start;
    - ``copytruncate``: same inode, now shorter than the offset. The rest of
      the old contents is read from ``<path>.1`` if it is the copy (it is at
      least as long and holds, just before the offset, the bytes the position
      remembers), then the file from its start.

    When the old file's rest cannot be found (rotated twice, compressed,
    removed), :attr:`gaps` says so and reading goes on in the new file.
    Undecodable bytes become U+FFFD.
    """

    #: How many bytes before the offset the position keeps to recognise a copytruncate copy:
    #: a whole line, usually, with its timestamp and process id.
    MARK = 256

    def __init__(self, path: Path, position: dict | None = None, *, year: int | None = None,
                 zone: dt.tzinfo | None = None):
        self.path = Path(path)
        self.year, self.zone = year, zone
        self.gaps: list[str] = []
        if position and Path(position.get("path", self.path)) != self.path:
            self.gaps.append(f"the position was in {position['path']}, not {self.path}: reading {self.path}"
                             " from its start")
            position = None
        self.position: dict = dict(position) if position else {"path": str(self.path), "inode": None, "offset": 0}

    @classmethod
    def at_end(cls, path: Path, **kwargs) -> LogReader:
        """A reader that hands out only lines written from now on."""
        reader = cls(path, **kwargs)
        try:
            st = os.stat(path)
        except OSError:
            return reader
        reader.position = {"path": str(path), "inode": st.st_ino, "offset": st.st_size,
                           "mark": _mark(Path(path), st.st_size, cls.MARK) or "", "old": reader._seen()}
        return reader

    def raw_lines(self) -> Iterator[str]:
        """Each new complete line (without its line break), parsed or not."""
        files, old = self._files()
        for path, start, inode in files:
            if path != self.path:  # <path>.1: what it was read to is kept as "old", for lines written to it late
                yield from self._read(path, start, inode, self.position.get("old"))
                old = {k: self.position[k] for k in ("inode", "offset", "mark")}
            else:
                yield from self._read(path, start, inode, old)

    def lines(self) -> Iterator[LogLine]:
        """Each new complete line that parses (:func:`parse_line`)."""
        for raw in self.raw_lines():
            parsed = parse_line(raw, year=self.year, zone=self.zone)
            if parsed is not None:
                yield parsed

    @property
    def _rotated(self) -> Path:
        return self.path.with_name(self.path.name + ".1")

    def _seen(self) -> dict | None:
        """``<path>.1`` as it is now, as though read to its end: nothing in it is for this reader."""
        try:
            st = self._rotated.stat()
        except OSError:
            return None
        return {"inode": st.st_ino, "offset": st.st_size, "mark": _mark(self._rotated, st.st_size, self.MARK) or ""}

    def _files(self) -> tuple[list[tuple[Path, int, int]], dict | None]:
        """(file, offset, inode) to read, in order; and what to remember of ``<path>.1`` when it is not read."""
        try:
            st = self.path.stat()
        except FileNotFoundError:
            return [], self.position.get("old")
        inode, offset = self.position.get("inode"), int(self.position.get("offset") or 0)
        mark = self.position.get("mark")
        rotated = self._rotated
        try:
            old = rotated.stat()
        except OSError:
            old = None
        if inode is None:
            return [(self.path, 0, st.st_ino)], self._seen()
        known = self.position.get("old")
        # <path>.1 is the file this reader last read there (its inode, and the same bytes before where it stopped)
        read_before = (old is not None and known is not None and old.st_ino == known["inode"]
                       and old.st_size >= int(known["offset"])
                       and _mark(rotated, int(known["offset"]), self.MARK) == (known["mark"] or ""))
        # a <path>.1 this reader has not seen, holding before its offset the bytes it read last: a copy
        # (copytruncate) made since, whatever the file holds now
        copied = (st.st_ino == inode and old is not None and not read_before and "old" in self.position
                  and old.st_size >= offset and _mark(rotated, offset, self.MARK) == (mark or ""))
        if copied:
            return [(rotated, offset, old.st_ino), (self.path, 0, st.st_ino)], None
        if st.st_ino == inode and st.st_size >= offset and (not mark or _mark(self.path, offset, self.MARK) == mark):
            files = []
            if read_before and old.st_size > int(known["offset"]):  # written to after it was renamed
                files.append((rotated, int(known["offset"]), old.st_ino))
            return files + [(self.path, offset, st.st_ino)], known if read_before else self._seen()
        if st.st_ino == inode:  # copytruncate (and perhaps written again since): the copy holds the rest
            if old is not None and old.st_size >= offset and mark is not None and _mark(rotated, offset,
                                                                                         self.MARK) == (mark or ""):
                return [(rotated, offset, old.st_ino), (self.path, 0, st.st_ino)], None
            self.gaps.append(f"{self.path} was truncated and its earlier part is not at {rotated}:"
                             " lines written in between are not read")
            return [(self.path, 0, st.st_ino)], self._seen()
        if old is not None and old.st_ino == inode:  # renamed
            return [(rotated, offset, old.st_ino), (self.path, 0, st.st_ino)], None
        self.gaps.append(f"{self.path} was rotated and its earlier part is not at {rotated}:"
                         " lines written in between are not read")
        return [(self.path, 0, st.st_ino)], self._seen()

    def _read(self, path: Path, start: int, inode: int, old: dict | None) -> Iterator[str]:
        """The complete lines of ``path`` from ``start``; the position follows each one handed out.

        The position always names :attr:`path` with the inode of the file read:
        while reading ``<path>.1`` that is the old file's, which the next run
        finds there again.
        """
        try:
            fh = open(path, "rb")
        except FileNotFoundError:
            return
        here = (self.position.get("inode"), int(self.position.get("offset") or 0))
        mark = self.position.get("mark") if here == (inode, start) else (_mark(path, start, self.MARK) or "")
        with fh:
            fh.seek(start)
            offset = start
            for chunk in fh:
                if not chunk.endswith(b"\n"):
                    break  # still being written: the next run reads it whole
                offset += len(chunk)
                mark = _tail(mark, chunk, self.MARK)
                self.position = {"path": str(self.path), "inode": inode, "offset": offset, "mark": mark, "old": old}
                yield chunk[:-1].decode("utf-8", "replace").rstrip("\r")
        # nothing new (a new file not yet written to): remember where it is all the same
        self.position = {"path": str(self.path), "inode": inode, "offset": offset, "mark": mark or "", "old": old}


def _tail(mark: str | None, chunk: bytes, size: int) -> str:
    """The last ``size`` bytes read so far (as Latin-1 text, to stay JSON-able)."""
    return ((mark or "") + chunk[-size:].decode("latin-1"))[-size:]


def _mark(path: Path, offset: int, size: int) -> str | None:
    """The ``size`` bytes of ``path`` before ``offset``, as :func:`_tail` keeps them; None if unreadable."""
    try:
        with open(path, "rb") as fh:
            fh.seek(max(0, offset - size))
            return fh.read(min(size, offset)).decode("latin-1")
    except OSError:
        return None


#: ``[postfix] log_source`` when Postfix logs to the systemd journal (its syslog() lines, through journald).
JOURNAL = "journal"
#: Only the mail facility's entries (syslog's LOG_MAIL, 2): Postfix's, and listfilter's own.
JOURNAL_MATCH = "SYSLOG_FACILITY=2"


class JournalReader:
    """Postfix's lines in the systemd journal, read with ``journalctl -o json`` from a cursor.

    Each entry carries its own cursor, so :attr:`position` (``{"journal":
    True, "cursor": …}``) is exactly past the last line handed out, however
    many of them the caller takes: a capped read goes on where it stopped,
    and journald's own rotation and vacuuming need nothing from the reader
    (a cursor whose entry was vacuumed seeks to the next one that is left).
    Without a cursor, reading starts at the journal's oldest entry.

    Each entry becomes the syslog line it was (``<ISO time> host
    ident[pid]: message``, the time from ``__REALTIME_TIMESTAMP``, in UTC)
    and goes through :func:`parse_line`, so both sources give the same
    :class:`LogLine`. ``directory`` reads a journal directory instead of the
    host's (``journalctl --directory``); ``since`` starts a read without a
    cursor at that time; ``journalctl`` is the program.
    Reading needs the journal's group (``systemd-journal`` or ``adm``).
    """

    def __init__(self, position: dict | None = None, *, directory: Path | None = None,
                 journalctl: str = "journalctl", since: dt.datetime | None = None):
        self.directory, self.journalctl, self.since = directory, journalctl, since
        self.gaps: list[str] = []
        if position and not position.get("journal"):
            self.gaps.append(f"the position was in {position.get('path', 'a log file')}, not in the journal:"
                             " reading the journal from its start")
            position = None
        self.position: dict = dict(position) if position else {"journal": True, "cursor": None}

    def command(self) -> list[str]:
        argv = [self.journalctl, "--no-pager", "-o", "json", "--output-fields",
                "__CURSOR,__REALTIME_TIMESTAMP,_HOSTNAME,SYSLOG_IDENTIFIER,SYSLOG_PID,_PID,MESSAGE"]
        if self.directory is not None:
            argv += ["--directory", str(self.directory)]
        if self.position.get("cursor"):
            argv += ["--after-cursor", self.position["cursor"]]
        elif self.since is not None:
            argv += ["--since", self.since.astimezone(dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")]
        return argv + [JOURNAL_MATCH]

    def raw_lines(self) -> Iterator[str]:
        """Each new entry as a syslog line; OSError when journalctl cannot run or read the journal."""
        import json
        import subprocess

        proc = subprocess.Popen(self.command(), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE)
        complete = False
        try:
            for raw in proc.stdout:
                try:
                    entry = json.loads(raw)
                except ValueError:
                    continue
                line = journal_line(entry)
                cursor = entry.get("__CURSOR")
                if cursor:
                    self.position = {"journal": True, "cursor": cursor}
                if line is not None:
                    yield line
            complete = True
        finally:
            if proc.poll() is None:
                proc.kill()
            stderr = proc.stderr.read().decode("utf-8", "replace").strip() if complete else ""
            proc.wait()
            proc.stdout.close()
            proc.stderr.close()
        if complete and proc.returncode != 0:
            raise OSError(f"journalctl failed (exit {proc.returncode}): {stderr.splitlines()[-1] if stderr else ''}")

    def lines(self) -> Iterator[LogLine]:
        for raw in self.raw_lines():
            parsed = parse_line(raw)
            if parsed is not None:
                yield parsed


def journal_line(entry: dict) -> str | None:
    """One journal entry (``journalctl -o json``) as the syslog line it was, or None without a message."""
    message = entry.get("MESSAGE")
    if isinstance(message, list):  # a message that is not valid UTF-8: its bytes
        message = bytes(message).decode("utf-8", "replace")
    if not isinstance(message, str):
        return None
    try:
        when = dt.datetime.fromtimestamp(int(entry["__REALTIME_TIMESTAMP"]) / 1e6, dt.timezone.utc)
    except (KeyError, ValueError, TypeError, OverflowError):
        return None
    ident = entry.get("SYSLOG_IDENTIFIER") or "unknown"
    pid = entry.get("SYSLOG_PID") or entry.get("_PID")
    host = entry.get("_HOSTNAME") or "localhost"
    tag = f"{ident}[{pid}]" if pid else ident
    return f"{when.isoformat(timespec='microseconds')} {host} {tag}: {' '.join(message.splitlines())}"
