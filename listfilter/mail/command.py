"""What the three mail commands share: a fixed command line, syslog, and an ending Postfix understands.

``listfilter-deliver``, ``listfilter-bounce`` and ``listfilter-policy`` are
spawned by Postfix (pipe(8), spawn(8)) with the fixed argv that master.cf
gives them (``listfilter postfix-config`` prints it). :func:`parse` reads
that argv, ``--name value`` or ``--name=value``, nothing else; it costs no
imports. :func:`run` calls the command's body and makes sure it ends as
sysexits says: a :class:`~listfilter.common.errors.ListfilterError` with its
code and DSN, anything unexpected as 75 with the traceback in syslog, never
exit 1 (which pipe(8) would turn into a bounce).
"""

from __future__ import annotations

import sys
import syslog

from ..common.errors import EX_NOUSER, EX_OK, EX_TEMPFAIL, ListfilterError, report


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


def run(body, argv: list[str], queue_id: str = "") -> int:
    """Run ``body(argv)`` (which returns the log line of a success) and end as Postfix expects."""
    syslog.openlog("listfilter", syslog.LOG_PID, syslog.LOG_MAIL)
    qid = queue_id or "NOQUEUE"
    try:
        line = body(argv)
    except ListfilterError as exc:
        # only "no such list" bounces; every other expected failure (a snapshot
        # or spool problem included) may clear up: defer
        code = EX_NOUSER if exc.exit_code == EX_NOUSER else EX_TEMPFAIL
        dsn = getattr(exc, "dsn", "4.3.0")
        text = report(dsn, str(exc) + ("; will retry" if code == EX_TEMPFAIL else ""))
        syslog.syslog(syslog.LOG_WARNING if code == EX_TEMPFAIL else syslog.LOG_NOTICE, f"{qid}: {text}")
        return code
    except Exception as exc:  # never a traceback on stderr: defer, and keep the detail in syslog
        import traceback

        for tb_line in traceback.format_exc().splitlines():
            syslog.syslog(syslog.LOG_ERR, f"{qid}: {tb_line}")
        report("4.3.0", f"internal error ({type(exc).__name__}: {exc}); will retry")
        return EX_TEMPFAIL
    if line:
        syslog.syslog(syslog.LOG_INFO, f"{qid}: {line}")
    return EX_OK


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
