"""What the three mail commands share: a fixed command line, syslog, and an ending Postfix understands.

``listfilter-deliver``, ``listfilter-bounce`` and ``listfilter-policy`` are
spawned by Postfix (pipe(8), spawn(8)) with the fixed argv that master.cf
gives them (``listfilter postfix-config`` prints it). :func:`parse` reads
that argv, ``--name value`` or ``--name=value``, nothing else; it costs no
imports. :func:`run` calls the command's body and makes sure it ends as
sysexits says: a :class:`~listfilter.common.errors.ListfilterError` with its
code and DSN, anything unexpected as 75 with the traceback in syslog, never
exit 1 (which pipe(8) would turn into a bounce). Every log line goes through
:func:`log`, which a dry run turns away from syslog.
"""

from __future__ import annotations

import sys
import syslog

from ..common.errors import EX_NOUSER, EX_OK, EX_TEMPFAIL, ListfilterError, dsn_line


class UsageError(ListfilterError):
    """A wrong command line: the master.cf entry is the administrator's to fix, so defer."""

    exit_code = EX_TEMPFAIL
    dsn = "4.3.5"


def parse(argv: list[str], options: dict[str, str | None], flags: tuple[str, ...] = ()) -> dict[str, object]:
    """``--name value`` pairs into a dict keyed ``name`` (dashes as underscores).

    ``options`` maps each option to its default; a default of None makes it
    required. ``flags`` take no value. Raises UsageError.
    """
    values: dict[str, object] = {name: default for name, default in options.items()}
    values.update({flag: False for flag in flags})
    given: set[str] = set()
    i = 0
    while i < len(argv):
        arg = argv[i]
        name, eq, value = arg[2:].partition("=") if arg.startswith("--") else ("", "", "")
        if name in flags and not eq:
            values[name] = True
        elif name in options:
            if not eq:
                if i + 1 >= len(argv):
                    raise UsageError(f"option --{name} needs a value")
                i += 1
                value = argv[i]
            values[name] = value
            given.add(name)
        else:
            raise UsageError(f"unexpected argument {arg!r}")
        i += 1
    missing = [f"--{n}" for n, d in options.items() if d is None and n not in given]
    if missing:
        raise UsageError(f"missing {', '.join(missing)}")
    return {k.replace("-", "_"): v for k, v in values.items()}


def usage(prog: str, options: dict[str, str | None], flags: tuple[str, ...], help_text: str) -> str:
    parts = [f"--{n} VALUE" if d is None else f"[--{n} VALUE]" for n, d in options.items()]
    parts += [f"[--{f}]" for f in flags]
    return f"usage: {prog} {' '.join(parts)}\n\n{help_text.strip()}\n"


#: Whether :func:`log` writes to syslog; :func:`run` turns it off for a dry run.
_to_syslog = True


def log(priority: int, line: str) -> None:
    """One log line: to syslog (facility mail), or in a dry run to stderr, so that a test run
    never shows up in the mail log that tracing a real post reads."""
    if _to_syslog:
        syslog.syslog(priority, line)
    else:
        print(line, file=sys.stderr)


def run(body, argv: list[str], queue_id: str = "", dry_run: bool = False) -> int:
    """Run ``body(argv)`` (which returns the log line of a success) and end as Postfix expects.

    A dry run (``--dry-run``, typed by a person) writes no syslog line at all:
    what the real run would log goes to stderr, an error's line once.
    """
    global _to_syslog

    _to_syslog = not dry_run
    if _to_syslog:
        syslog.openlog("listfilter", syslog.LOG_PID, syslog.LOG_MAIL)
    qid = queue_id or "NOQUEUE"
    try:
        line = body(argv)
    except ListfilterError as exc:
        code, text = ending(exc)
        print(text, file=sys.stderr)
        if _to_syslog:
            log(syslog.LOG_WARNING if code == EX_TEMPFAIL else syslog.LOG_NOTICE, f"{qid}: {text}")
        return code
    except Exception as exc:  # never a traceback on stderr (but in a dry run): defer, the detail in syslog
        import traceback

        for tb_line in traceback.format_exc().splitlines():
            log(syslog.LOG_ERR, f"{qid}: {tb_line}")
        print(ending(exc)[1], file=sys.stderr)
        return EX_TEMPFAIL
    if line:
        log(syslog.LOG_INFO, f"{qid}: {line}")
    return EX_OK


def ending(exc: BaseException) -> tuple[int, str]:
    """How a failure ends: the exit code and the one stderr line pipe(8) gets (the DSN first).

    Only "no such list" bounces; every other expected failure (a snapshot or
    spool problem included) may clear up, and anything unexpected may too: defer.
    """
    if isinstance(exc, ListfilterError):
        code = EX_NOUSER if exc.exit_code == EX_NOUSER else EX_TEMPFAIL
        text = str(exc) + ("; will retry" if code == EX_TEMPFAIL else "")
        return code, dsn_line(getattr(exc, "dsn", "4.3.0"), text)
    return EX_TEMPFAIL, dsn_line("4.3.0", f"internal error ({type(exc).__name__}: {exc}); will retry")


def queue_id_of(argv: list[str]) -> str:
    """The --queue-id value, for log lines written before the argv is parsed."""
    for i, arg in enumerate(argv):
        if arg.startswith("--queue-id="):
            return arg.partition("=")[2]
        if arg == "--queue-id" and i + 1 < len(argv):
            return argv[i + 1]
    return ""


def help_requested(argv: list[str]) -> bool:
    return "--help" in argv or "-h" in argv


def print_help(text: str) -> int:
    sys.stdout.write(text)
    return EX_OK
