"""``listfilter-bounce``: one bounce to a list's -bounces address, from Postfix's pipe(8).

master.cf runs it with a fixed command line::

    listfilter-bounce --snapshot /var/lib/listfilter/snapshot.sqlite
        --recipient ${original_recipient} --queue-id ${queue_id}

Anyone can mail a list's -bounces address, so nothing here is taken on
trust. Posts go out in one ``sendmail -XV`` submission for every member, so
the VERP extension (``students-bounces+user=example.org@…``) names the
member whose copy came back but carries no secret. What this command
records is therefore only a claim, and sync checks it
(:mod:`listfilter.store.bounces`): the claim counts only when the member is
still a member and the report returns the Message-ID of a post the store's
mail log shows was delivered to that member, on that list, in the days
before. Here, on the mail side:

- a VERP member who is not a member of the list leaves no record (a log
  line says why): strangers cannot make spool files for made-up addresses;
- a report to the plain ``-bounces`` address (posts always carry VERP)
  counts for nobody: it is recorded, with that reason, only when it names
  members as failed, so that an operator can see it;
- the failed addresses come from RFC 3464 and RFC 6533 delivery reports
  (``message/global-delivery-status`` and ``utf-8`` addresses, which
  flufl.bounce does not read), from flufl.bounce's detectors run one by one
  (one that raises is skipped, the others still run), and last from the
  report's own text (an address beside a permanent status code);
- only permanent failures are recorded: delays, auto-replies and anything
  unreadable end with a log line;
- the Message-IDs of the returned post are taken from the returned message
  or headers (``message/rfc822``, ``text/rfc822-headers``,
  ``message/global``, ``message/global-headers``), from the report's fields,
  and from header lines quoted in its text.

What it found is written as one create-only record in the spool
(:class:`~listfilter.common.events.BounceRecord`); nothing is read back or
updated here, and nothing is ever sent in reply to a bounce.

Exit status: 0 when handled (recorded or not worth recording, the reason in
the log line), 75 when the snapshot or the spool cannot be used.
"""

from __future__ import annotations

import datetime as dt
import re
import sys
from collections import namedtuple
from pathlib import Path

from ..common import spool as SP
from ..common.addresses import parse_recipient, verp_member
from ..common.events import MESSAGE_IDS_MAX, BounceRecord, now_utc, random_id
from ..common.paths import DEFAULT_SNAPSHOT
from ..common.snapshot import Snapshot
from .command import help_requested, parse, print_help, queue_id_of, run, usage

OPTIONS = {"snapshot": DEFAULT_SNAPSHOT, "recipient": None, "queue-id": ""}
HELP = """Record one bounce sent to a list's -bounces address (the bounce on stdin).

  --snapshot PATH   the compiled snapshot (default /var/lib/listfilter/snapshot.sqlite)
  --recipient ADDR  the -bounces address (${original_recipient}), with VERP
  --queue-id ID     Postfix's queue id (${queue_id}), for the logs
"""

#: Why a report to the plain -bounces address counts for nobody (kept in its record).
NO_VERP = "sent to the plain -bounces address: posts carry VERP, so it counts for nobody"

#: The most MIME parts looked at in one report, and the most text read from one part:
#: a real report has a handful of parts and a few KiB of text.
MAX_PARTS = 200
TEXT_MAX = 256 * 1024


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if help_requested(argv):
        return print_help(usage("listfilter-bounce", OPTIONS, (), HELP))
    return run(lambda a: handle(parse(a, OPTIONS), sys.stdin.buffer.read()), argv, queue_id_of(argv))


# --------------------------------------------------------------------------
# What a report says

#: The failed addresses (lower-cased) and the returned post's Message-IDs, in the order found;
#: ``notes`` says what could not be read (a detector that raised), for the log line.
Report = namedtuple("Report", "permanent temporary message_ids notes")


def read_report(message) -> Report:
    """Everything listfilter uses from one report (a compat32 message); never raises for a detector."""
    notes: list[str] = []
    temporary, permanent = status_failures(message)
    t, p = detector_failures(message, notes)
    temporary, permanent = temporary | t, permanent | p
    if not temporary and not permanent:
        permanent = named_with_permanent_status(message)
    return Report(permanent, temporary - permanent, returned_message_ids(message), tuple(notes))


def classify(report: Report, member: str | None, members: set[str]) -> tuple[set[str], set[str]]:
    """(permanent, temporary) failures among the list's addresses, lower-cased.

    With VERP the member is known: its copy failed permanently if the report
    names any permanent failure (a forwarded address may be the one named),
    temporarily if only temporary ones. Without VERP, the named addresses
    that are members.
    """
    if member:
        member = member.lower()
        if report.permanent:
            return {member}, set()
        if report.temporary:
            return set(), {member}
        return set(), set()
    return report.permanent & members, report.temporary & members


def _address(text) -> str | None:
    """An address as reports write it (``<a@b>``, ``a@b``, bytes), lower-cased; None if it is not one."""
    if isinstance(text, bytes):
        text = text.decode("utf-8", "replace")
    text = str(text).strip().strip("<>").strip().rstrip(".").lower()
    if "@" not in text or any(c.isspace() for c in text) or len(text) > 320:
        return None
    local, _, domain = text.rpartition("@")
    return text if local and domain else None


def _walk(message):
    """The report's parts, breadth first, at most :data:`MAX_PARTS`; never recursive (nesting may be deep)."""
    queue, seen = [message], 0
    while queue and seen < MAX_PARTS:
        part = queue.pop(0)
        seen += 1
        yield part
        payload = part.get_payload()
        if isinstance(payload, list) and part.get_content_maintype() == "multipart":
            queue.extend(payload)


def _own_parts(message):
    """Parts of the report itself: not inside a returned message (``message/*``)."""
    for part in _walk(message):
        if part.get_content_maintype() != "message":
            yield part


# ---------------------------------------------------------------- RFC 3464 / RFC 6533 delivery reports

#: RFC 6533 section 3: ``\\x{HEX}`` stands for one Unicode character in a utf-8 address.
_EMBEDDED = re.compile(r"\\x\{([0-9A-Fa-f]{1,6})\}")


def _unembed(text: str) -> str:
    def char(m):
        code = int(m.group(1), 16)
        return chr(code) if code <= 0x10FFFF and not 0xD800 <= code <= 0xDFFF else "\ufffd"

    return _EMBEDDED.sub(char, text)


def _status_text(part) -> str:
    """The fields of a delivery-status part as text, UTF-8 decoded.

    The stdlib parser reads ``message/delivery-status`` as header blocks and
    ``message/global-delivery-status`` as a message; serialising the part
    gives back its bytes either way. RFC 6533 section 6.3 lets the global
    kind be base64 or quoted-printable encoded.
    """
    raw = part.as_bytes().replace(b"\r\n", b"\n")
    body = raw.split(b"\n\n", 1)[1] if b"\n\n" in raw else b""
    cte = str(part.get("content-transfer-encoding", "")).strip().lower()
    if cte == "base64":
        import base64
        import binascii

        try:
            body = base64.b64decode(b"".join(body.split()))
        except (binascii.Error, ValueError):
            return ""
    elif cte == "quoted-printable":
        import quopri

        body = quopri.decodestring(body)
    return body[:TEXT_MAX].decode("utf-8", "replace")


def status_blocks(part) -> list[dict[str, str]]:
    """The field blocks of one delivery-status part (per-message first), names lower-cased."""
    from email.parser import HeaderParser

    blocks = []
    for text in re.split(r"\n[ \t]*\n", _status_text(part).replace("\r", "")):
        if text.strip():
            fields = HeaderParser().parsestr(text.strip() + "\n")
            blocks.append({k.lower(): str(v) for k, v in fields.items()})
    return blocks


def _typed_address(value: str, *, global_kind: bool) -> str | None:
    """The address of an ``Original-Recipient``/``Final-Recipient`` value (``type; address``).

    ``utf-8`` (RFC 6533 section 3) is read in both kinds of report, since
    flufl.bounce reads only ``rfc822``; ``rfc822`` only in the global kind,
    which flufl.bounce does not look at.
    """
    kind, semi, address = value.partition(";")
    kind = kind.strip().lower()
    if not semi or (kind != "utf-8" and not (global_kind and kind == "rfc822")):
        return None
    return _address(_unembed(address) if kind == "utf-8" else address)


def status_failures(message) -> tuple[set[str], set[str]]:
    """(temporary, permanent) addresses of the report's delivery-status parts that flufl.bounce misses."""
    temporary: set[str] = set()
    permanent: set[str] = set()
    for part in _own_parts_and_status(message):
        global_kind = part.get_content_type() == "message/global-delivery-status"
        for block in status_blocks(part):  # the per-message block has no Action
            action = block.get("action", "").strip().lower()
            into = temporary if action.startswith("delayed") else (
                permanent if action.startswith(("failed", "error")) else None)
            if into is None:
                continue
            for name in ("original-recipient", "final-recipient"):
                address = _typed_address(block.get(name, ""), global_kind=global_kind)
                if address:
                    into.add(address)
    return temporary, permanent


_STATUS_TYPES = ("message/delivery-status", "message/global-delivery-status")


def _own_parts_and_status(message):
    """The report's delivery-status parts (not those of a returned message)."""
    queue, seen = [message], 0
    while queue and seen < MAX_PARTS:
        part = queue.pop(0)
        seen += 1
        if part.get_content_type() in _STATUS_TYPES:
            yield part
        elif part.get_content_maintype() == "multipart" and isinstance(part.get_payload(), list):
            queue.extend(part.get_payload())


# ---------------------------------------------------------------- flufl.bounce, one detector at a time


def _detectors():
    """flufl.bounce's detector classes, in its own order (most authoritative first); None if not exposed."""
    try:
        from flufl.bounce._scan import _DETECTORS
    except ImportError:
        return None
    return list(_DETECTORS)


def _quiet_flufl() -> None:
    """flufl.bounce logs each detector's traceback; nothing of it may reach pipe(8)'s stderr."""
    import logging

    logger = logging.getLogger("flufl.bounce")
    if not any(isinstance(h, logging.NullHandler) for h in logger.handlers):
        logger.addHandler(logging.NullHandler())
    logger.propagate = False


def detector_failures(message, notes: list[str]) -> tuple[set[str], set[str]]:
    """(temporary, permanent) as flufl.bounce's detectors find them, lower-cased.

    ``all_failures`` stops at the first detector that raises and so loses
    what the others would find (its Yale detector raises on any report
    without a From header). Here each runs alone, in flufl.bounce's order,
    and the first that finds something decides, as in ``all_failures``; one
    that raises is noted and skipped.
    """
    _quiet_flufl()
    detectors = _detectors()
    if detectors is None:  # a flufl.bounce that does not expose them: its whole scan, guarded
        from flufl.bounce import all_failures

        scans = [("flufl.bounce", all_failures)]
    else:
        scans = [(d.__name__, lambda m, d=d: d().process(m)) for d in detectors]
    for name, scan in scans:
        try:
            temporary, permanent = scan(message)
        except Exception as exc:  # a detector's bug on odd input
            notes.append(f"detector {name} raised {type(exc).__name__}")
            continue
        temporary = {a for a in map(_address, temporary) if a}
        permanent = {a for a in map(_address, permanent) if a}
        if temporary or permanent:
            return temporary, permanent
    return set(), set()


# ---------------------------------------------------------------- the report's own text

#: A permanent status: an RFC 3463 enhanced code 5.X.X, or an RFC 5321 550-554 reply.
_PERMANENT = re.compile(r"(?<![\d.])5\.\d{1,3}\.\d{1,3}(?![\d.])|(?<!\d)55[0-4](?=[ :-])")
_TEMPORARY = re.compile(r"(?<![\d.])4\.\d{1,3}\.\d{1,3}(?![\d.])|(?<!\d)4[2-5]\d(?=[ :-])")
_ADDRESS = re.compile(r"[^\s<>()\[\]\"',;:@]+@[^\s<>()\[\]\"',;:@]+\.[^\s<>()\[\]\"',;:@.]+")
#: Where a text report starts quoting the returned message (qmail, exim, Yahoo and others).
_COPY_FOLLOWS = re.compile(r"^\s*-{2,}.*\b(copy|original|returned|below|forwarded|follows|header)", re.I | re.M)


def _text_of(part) -> str:
    try:
        raw = part.get_payload(decode=True)
    except Exception:  # a broken transfer encoding: nothing readable
        return ""
    if not isinstance(raw, bytes):
        return ""
    raw = raw[:TEXT_MAX]
    charset = part.get_content_charset() or "utf-8"
    try:
        return raw.decode(charset, "replace")
    except LookupError:
        return raw.decode("utf-8", "replace")


def named_with_permanent_status(message) -> set[str]:
    """Addresses the report's own text names in a paragraph with a permanent status code.

    The last resort, for reports no detector recognises (those that lost
    their From header, which several of flufl.bounce's detectors need):
    a paragraph such as ``<a@b>: 550 5.1.1 user unknown``. A paragraph that
    also carries a temporary code is left alone, and so is the returned copy
    of the post below the report.
    """
    found: set[str] = set()
    for part in _own_parts(message):
        if part.get_content_type() != "text/plain":
            continue
        text = _text_of(part)
        cut = _COPY_FOLLOWS.search(text)
        for paragraph in re.split(r"\n[ \t]*\n", text[:cut.start()] if cut else text):
            if _PERMANENT.search(paragraph) and not _TEMPORARY.search(paragraph):
                found.update(a for a in map(_address, _ADDRESS.findall(paragraph)) if a)
    return found


# ---------------------------------------------------------------- the returned post's Message-ID

_RETURNED = ("message/rfc822", "message/global", "message/global-headers", "message/rfc822-headers")
_QUOTED_ID = re.compile(r"^[ \t>]*Message-ID:[ \t]*(?:\r?\n[ \t]+)?(<[^<>\s]{1,990}>)", re.I | re.M)
_MSG_ID = re.compile(r"<[^<>\s]{1,990}>")


def _msgid(value) -> str | None:
    """``<id@host>`` from a header value (the first one in angle brackets, else the bare value)."""
    text = str(value or "").strip()
    m = _MSG_ID.search(text)
    if m:
        return m.group(0)
    return text if text and "@" in text and len(text) <= 990 and not any(c.isspace() for c in text) else None


def returned_message_ids(message) -> tuple[str, ...]:
    """The Message-IDs of the post a report returns, most reliable first, at most :data:`MESSAGE_IDS_MAX`.

    First the returned message's or headers' own Message-ID (RFC 3462,
    RFC 6533), then any ``…Message-ID`` field of the delivery report, then
    Message-ID lines quoted in the report's text (qmail, Exchange and others
    paste the headers there). Which of them names a post is sync's to check.
    """
    from email.parser import HeaderParser

    returned: list = []  # (header values) by how reliable their source is
    fields: list = []
    quoted: list = []
    for part in _walk(message):
        if part is message:
            continue
        kind = part.get_content_type()
        if kind in _RETURNED and part.is_multipart():
            returned.extend(part.get_payload(0).get_all("Message-ID") or ())
        elif kind == "text/rfc822-headers":
            returned.extend(HeaderParser().parsestr(_text_of(part)).get_all("Message-ID") or ())
        elif kind in _STATUS_TYPES:
            fields.extend(v for block in status_blocks(part) for k, v in block.items() if k.endswith("message-id"))
        elif part.get_content_maintype() == "text":
            quoted.extend(m.group(1) for m in _QUOTED_ID.finditer(_text_of(part)))
    if not message.is_multipart():
        quoted.extend(m.group(1) for m in _QUOTED_ID.finditer(_text_of(message)))
    found: list[str] = []
    for value in (*returned, *fields, *quoted):
        m = _msgid(value)
        if m and m not in found:
            found.append(m)
    return tuple(found[:MESSAGE_IDS_MAX])


# --------------------------------------------------------------------------
# One bounce


def _short(text: str, limit: int = 120) -> str:
    return text if len(text) <= limit else text[:limit] + "…"


def handle(args: dict, raw: bytes) -> str:
    """Read one bounce and record what it says; the log line (which says why when nothing is recorded)."""
    target = parse_recipient(args["recipient"])
    if target is None:
        return f"bounce for {_short(repr(args['recipient']))} ignored: not an address"
    with Snapshot(args["snapshot"]) as snap:
        row = snap.get_list(target.list_address)
        settings = snap.settings()
        members = {e.lower() for e, _ in snap.members(target.list_address)} if row else set()
    if row is None:
        return f"bounce for {_short(args['recipient'])} ignored: no list {_short(target.list_address)}"
    member = verp_member(target.extension) if target.extension else None
    member = member.lower() if member else None
    where = f"bounce for {row.address}" + (f" from {_short(member)}" if member else "")
    if target.extension and member is None:
        return f"{where}: VERP extension {_short(target.extension)!r} names no address; not counted"
    if member and member not in members:
        return f"{where}: not counted: {_short(member)} is not a member of {row.address}"
    report, unreadable = _read(raw)
    if unreadable:
        return f"{where}: unreadable ({unreadable}); not counted"
    permanent, temporary = classify(report, member, members)
    notes = f" ({'; '.join(report.notes)})" if report.notes else ""
    if not permanent:
        if temporary:
            what = "temporary failure"
        elif member is None and report.permanent:
            what = f"names no member ({_short(', '.join(sorted(report.permanent)))})"
        else:
            what = "no failure found (auto-reply or unreadable)"
        return f"{where}: {what}; not counted{notes}"
    spool = Path(settings["spool_dir"])
    SP.ensure(spool)
    record = BounceRecord(id=random_id(), list_address=row.address, received_at=now_utc(),
                          day=_site_day(settings["timezone"]), member=member or "",
                          permanent=tuple(sorted(permanent)), temporary=tuple(sorted(temporary)),
                          queue_id=args["queue_id"] or "", message_ids=report.message_ids,
                          reason="" if member else NO_VERP)
    path = SP.write_bounce(spool, record)
    post = (f"message-id {_short(report.message_ids[0])}" if report.message_ids
            else "no Message-ID of a post in it")
    verdict = f"; {NO_VERP}" if not member else ""
    return (f"{where}: permanent failure of {_short(', '.join(sorted(permanent)), 400)} ({post})"
            f" recorded as {path.name}{verdict}{notes}")


def _read(raw: bytes) -> tuple[Report | None, str]:
    """(the report, "") or (None, why it cannot be read): a message that breaks the parser ends here, not in a retry."""
    import email

    try:
        return read_report(email.message_from_bytes(raw)), ""  # compat32: what flufl.bounce expects
    except Exception as exc:  # RecursionError on absurd nesting, or any parser bug: the same on every retry
        return None, f"{type(exc).__name__}: {_short(str(exc), 80)}"


def _site_day(timezone: str) -> str:
    import zoneinfo

    return dt.datetime.now(zoneinfo.ZoneInfo(timezone)).date().isoformat()


if __name__ == "__main__":
    sys.exit(main())
