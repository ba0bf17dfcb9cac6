"""Which queue ids Postfix gave a post that ``deliver`` handed back to it: found in Postfix's log.

Postfix's sendmail(1) does not say what queue id the submission got. Every
submission by sendmail leaves, in Postfix's log (after the syslog prefix):

- ``QUEUEID: uid=UID from=<SENDER>`` (pickup(8)),
- ``QUEUEID: message-id=ID`` (cleanup(8)), and once it is safely queued
- ``QUEUEID: from=<SENDER>, size=N, nrcpt=N (queue active)`` (qmgr(8)).

A submission from the list's -bounces address, with the post's Message-ID
(and the ``listfilter`` user's uid, where the reader knows it), is one of
the post's batches. One owner for this matching: the mail side asks it after
a killed delivery (:mod:`listfilter.mail.handoff`), the sync side to trace a
post and follow its members (:func:`listfilter.sync.postfixlog.reinjected`).
Standard library only.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

#: The log lines a submission leaves, after the syslog prefix (compiled when first asked).
LINE = rb"/(pickup|cleanup|qmgr)\[\d+\]: ([0-9A-Za-z]+): (.*?)\r?$"
PICKUP = rb"uid=(\d+) from=<(.*)>$"
QMGR = rb"from=<(.*)>, size=\d+, nrcpt=(\d+) "


def is_ours(pickup_uid: str | bytes, pickup_from: str | bytes, *, uid: int | None, senders) -> bool:
    """The rule, from pickup(8)'s ``uid=UID from=<SENDER>``: submitted by ``uid`` (None: any user)
    from one of ``senders`` (lower-cased -bounces addresses, as str or bytes like the line). A copy
    that also carries the post's Message-ID (cleanup's line) is one of the post's copies."""
    return (uid is None or int(pickup_uid) == uid) and pickup_from.lower() in senders


def submissions(lines: Iterable[bytes], *, message_id: str, sender: str, uid: int | None) -> list:
    """``(queue id, nrcpt or None)`` of every submission of the post from ``sender`` (by ``uid``;
    None: any user), in log order; nrcpt is None until qmgr has logged the message as queued.

    Only lines that name the Message-ID or the sender, and qmgr's lines of
    the queue ids found so far, are parsed: the log of a busy host is mostly
    other mail.
    """
    want_id = "".join(message_id.split()).encode("utf-8", "surrogateescape")
    senders = {sender.encode("utf-8", "surrogateescape"), sender.lower().encode("utf-8", "surrogateescape")}
    ours: dict[bytes, bool] = {}  # queue id -> submitted by this uid from the -bounces address
    with_id: set[bytes] = set()
    nrcpt: dict[bytes, int] = {}
    line_re, pickup_re, qmgr_re = re.compile(LINE), re.compile(PICKUP), re.compile(QMGR)
    for line in lines:
        if not (want_id in line or any(s in line for s in senders)
                or (with_id and b"nrcpt=" in line and any(q + b": " in line for q in with_id))):
            continue
        m = line_re.search(line)
        if not m:
            continue
        daemon, qid, text = m.groups()
        if daemon == b"pickup":
            p = pickup_re.match(text)
            if p and is_ours(p.group(1), p.group(2), uid=uid, senders=senders):
                ours[qid] = True
        elif daemon == b"cleanup":
            if text.startswith(b"message-id=") and b"".join(text[11:].split()) == want_id:
                with_id.add(qid)
        else:
            q = qmgr_re.match(text)
            if q:
                nrcpt.setdefault(qid, int(q.group(2)))
    return [(qid.decode("ascii"), nrcpt.get(qid)) for qid in ours if qid in with_id]
