"""A real systemd journal for the tests: syslog lines written as journal entries by systemd-journal-remote.

No journald runs in the test machine, but journalctl reads journal files in
any directory (``--directory``). :class:`Journal` turns log lines (a private
Postfix's maillog_file, or lines a test writes) into entries in journald's
export format, with the fields journald gives a syslog message
(``SYSLOG_FACILITY``, ``SYSLOG_IDENTIFIER``, ``SYSLOG_PID``, ``_HOSTNAME``,
``__REALTIME_TIMESTAMP``), and appends them to one journal file with
``systemd-journal-remote``, which is what journald itself writes.
"""

from __future__ import annotations

import datetime as dt
import shutil
import subprocess
from pathlib import Path

import pytest

PROGRAM = Path("/lib/systemd/systemd-journal-remote")
BOOT_ID = "0123456789abcdef0123456789abcdef"


def require() -> None:
    if not PROGRAM.exists() or not shutil.which("journalctl"):
        pytest.fail("systemd-journal-remote and journalctl are required (apt-get install systemd-journal-remote)")


class Journal:
    """One journal directory; :meth:`append` adds entries (mail facility unless told otherwise)."""

    def __init__(self, directory: Path):
        require()
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.file = self.directory / "system.journal"
        self.count = 0

    def append_lines(self, lines: list[str], facility: int = 2) -> int:
        """Syslog lines (``<time> host ident[pid]: message``) as entries; the number written."""
        from listfilter.sync.postfixlog import parse_line

        entries = []
        for line in lines:
            parsed = parse_line(line)
            if parsed is None:
                continue
            # the message is what follows the tag: a timestamp holds no ": "
            entries.append((parsed.time, parsed.host, parsed.program, str(parsed.pid) if parsed.pid else None,
                            line.rstrip("\n").split(": ", 1)[1]))
        return self.append(entries, facility)

    def append(self, entries: list[tuple[dt.datetime, str, str, str | None, str]], facility: int = 2) -> int:
        """(time, host, identifier, pid, message) entries; the number written."""
        chunks = []
        for when, host, ident, pid, message in entries:
            self.count += 1
            fields = {"__REALTIME_TIMESTAMP": str(int(when.timestamp() * 1_000_000)),
                      "__MONOTONIC_TIMESTAMP": str(self.count), "_BOOT_ID": BOOT_ID, "_HOSTNAME": host,
                      "_TRANSPORT": "syslog", "SYSLOG_FACILITY": str(facility), "SYSLOG_IDENTIFIER": ident,
                      "PRIORITY": "6", "MESSAGE": message}
            if pid:
                fields["SYSLOG_PID"] = pid
            chunks.append("".join(f"{k}={v}\n" for k, v in fields.items()) + "\n")
        if not chunks:
            return 0
        export = self.directory.parent / f"{self.directory.name}.export"
        export.write_text("".join(chunks), encoding="utf-8")
        proc = subprocess.run([str(PROGRAM), f"--output={self.file}", str(export)], capture_output=True,
                              text=True, timeout=60)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        export.unlink()
        return len(chunks)
