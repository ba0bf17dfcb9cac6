"""Errors and exit codes: the one base class, sysexits for Postfix, one-line reports.

Every error listfilter expects is a :class:`ListfilterError` carrying its exit
code; the CLI maps them to one line on stderr in one place
(:func:`listfilter.cli.main`). The mail commands speak sysexits(3), as
Postfix's pipe(8) reads them: 0 done, 67 (EX_NOUSER) bounce, 75 (EX_TEMPFAIL)
defer and retry. Any other status, an uncaught exception's 1 included, makes
pipe(8) bounce the message: so the mail side never lets one out.

Standard library only: the mail side imports this per message.
"""

from __future__ import annotations

import sys

EX_OK = 0
EX_USAGE = 64
EX_NOUSER = 67
EX_SOFTWARE = 70
EX_TEMPFAIL = 75
EX_CONFIG = 78

#: The CLI's exit codes (docs/cli.md): a problem found, and a click usage error.
EXIT_PROBLEM = 1
EXIT_USAGE = 2
#: An invalid list config: its own code, sysexits' EX_CONFIG.
EXIT_CONFIG = EX_CONFIG


class ListfilterError(Exception):
    """An expected failure: one line for the operator and an exit code."""

    exit_code = EXIT_PROBLEM
    #: A word that goes before the message on stderr ("config error: …"), if any.
    label = ""

    def report(self) -> str:
        return f"{self.label}: {self}" if self.label else str(self)


class Defer(ListfilterError):
    """A temporary failure on the mail side: exit 75, Postfix retries."""

    exit_code = EX_TEMPFAIL
    dsn = "4.3.0"


class NoSuchList(ListfilterError):
    """The recipient is not a list here: exit 67, Postfix bounces."""

    exit_code = EX_NOUSER
    dsn = "5.1.1"


def dsn_line(dsn: str, text: str, limit: int = 500) -> str:
    """The one stderr line of a mail command: the DSN first, as pipe(8) wants
    it (it takes the status from the text only when the text starts with one),
    on one line, short enough for Postfix's log and the bounce."""
    return " ".join(f"{dsn} {text}".split())[:limit]


def report(dsn: str, text: str, stream=None) -> str:
    """Write :func:`dsn_line` to stderr (or ``stream``) and return it."""
    line = dsn_line(dsn, text)
    print(line, file=stream or sys.stderr)
    return line
