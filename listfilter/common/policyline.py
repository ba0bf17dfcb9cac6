"""The line smtpd logs for the policy service's acceptance of a list post, written by the mail side
(:mod:`listfilter.mail.policy` answers ``action=INFO <text>``) and read back by ``listfilter trace``:
smtpd logs ``info: RCPT from HOST[IP]: <text>; from=<S> to=<L> …`` (access(5)). Standard library only."""

from __future__ import annotations

#: What the text of an ``action=INFO`` answer begins with, so that ``listfilter trace`` tells
#: smtpd's "info: RCPT from" line for it from one an access table of the site's own asked for.
INFO_TAG = "listfilter: "
#: At most this many characters of INFO text: one short log line, well inside smtpd's limits.
INFO_LIMIT = 200


def info_text(reason: str) -> str:
    """``reason`` as smtpd will log it: tagged, one line of printable ASCII (what Postfix's log
    writer passes unchanged: it may turn the rest into ``?``), no ``;`` (smtpd ends the text with ``; from=<…>``, where
    ``listfilter trace`` finds its end), at most :data:`INFO_LIMIT` characters."""
    text = " ".join(reason.replace(";", ",").split())  # newlines and tabs too
    return (INFO_TAG + "".join(c if " " <= c <= "~" else "?" for c in text))[:INFO_LIMIT]
