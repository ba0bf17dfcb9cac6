"""Handing mail to Postfix with its sendmail(1) command: the posts and notices of the mail
side, the owner notices of sync. Standard library only."""

from __future__ import annotations

import subprocess

from .errors import Defer


class SendError(Defer):
    """sendmail failed; the message is one line (the mail side defers: exit 75)."""


def submit(sendmail: str, sender: str, recipients: list[str], message, *, verp: bool = False,
           timeout: float = 600) -> None:
    """One submission: ``sendmail -G -i -f SENDER [-XV] -- RECIPIENT…``.

    ``-G`` marks it a relayed (not local) submission, so Postfix does not
    rewrite its headers; ``-i`` keeps lines with a single dot; ``-XV`` makes
    each recipient's copy return to ``SENDER-local+user=domain@…`` (VERP).
    An empty sender submits with the null sender ``<>``. ``message`` is bytes, or
    an open file that sendmail reads from its start as its standard input (it
    outlives a caller killed mid-write; a pipe would end the message there).
    """
    argv = [sendmail, "-G", "-i", "-f", sender or "<>"]
    if verp:
        argv.append("-XV")
    argv += ["--", *recipients]
    try:
        if isinstance(message, bytes):
            feed = {"input": message}
        else:
            message.seek(0)
            feed = {"stdin": message}
        proc = subprocess.run(argv, **feed, stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=timeout)
    except FileNotFoundError:
        raise SendError(f"{sendmail} not found") from None
    except PermissionError:
        raise SendError(f"{sendmail} is not executable") from None
    except subprocess.TimeoutExpired:
        raise SendError(f"{sendmail} did not finish within {timeout:.0f} s") from None
    if proc.returncode != 0:
        text = (proc.stderr or proc.stdout).decode("utf-8", "replace").strip().splitlines()
        raise SendError(f"{sendmail} exited {proc.returncode}: {text[-1] if text else 'no message'}")
