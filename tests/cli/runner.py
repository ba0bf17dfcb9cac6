"""Running ``listfilter`` in this process with click's CliRunner, the way the tests read it.

A subprocess costs an interpreter start and the imports for every call; the
tests that need the process boundary (the exit codes Postfix or cron see, a
second process waiting on a lock, argv[0]) still use one, with :data:`ENV`.

Run as root (tests/run), ``listfilter sync`` divides itself and does its work
as the ``listfilter`` user, who cannot enter pytest's private temporary
directories; these tests are about what sync does, so they keep it in one
process (``--user root`` by its environment variable). The divided sync is
tested on its own, in directories that user can reach.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from click.testing import CliRunner

from listfilter.cli import cli
from listfilter.cli.sync import SYNC_USER_ENV

#: What every command here runs with (a test's ``env`` comes on top).
ENV = {SYNC_USER_ENV: "root"}


@dataclass
class Ran:
    """What a command did: the fields of a CompletedProcess that the tests read."""

    returncode: int
    stdout: str
    stderr: str


def listfilter(config: Path | None, *args: str, input: str | bytes | None = None,
               env: dict[str, str | None] | None = None) -> Ran:
    """``listfilter [--config CONFIG] ARGS…``; ``env`` adds to (None: removes from) the environment.

    An exception that escapes the command fails the test with its traceback:
    the CLI's contract is one line on stderr and an exit status, never that.
    """
    argv = (["--config", str(config)] if config is not None else []) + list(args)
    result = CliRunner().invoke(cli, argv, input=input, env={**ENV, **(env or {})}, prog_name="listfilter")
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    return Ran(result.exit_code, result.stdout, result.stderr)
