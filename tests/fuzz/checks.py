"""The checks of one fuzz case: what listfilter-deliver did, judged from outside.

Every check reads only what a Postfix administrator could see: the exit
status and the stderr line pipe(8) gets, what was handed to ``sendmail``
(argv and bytes, recorded by the stub), and the spool's event records. Header
lines are judged as Postfix splits them (:func:`tests.fuzz.views.postfix_view`),
the From as a mail client shows it (:func:`tests.fuzz.views.shown_from`).
The world around the filter is good in every case (the snapshot exists, the
spool is writable, sendmail works), so a deferral (75) is always a failure: the
same message would be deferred again on every retry.

What a post's header lines must be (the rewrite table of
listfilter/mail/headers.py, for each field name, as Postfix counts lines):

=========================================  ===============================
From, To, Subject, Date, Message-ID        exactly one (the singletons check)
List-Id, List-Post, List-Help, List-Owner, exactly one (added or replaced)
Precedence; Reply-To when the list sets it
any other List-*, Return-Path, Delivered-  none (removed)
To, X-Original-To, Errors-To, the read-
receipt requests
X-Listfilter-Loop                          one more than the original had
Sender, Reply-To, Cc, Bcc, In-Reply-To,    at least one if the original had
References (RFC 5322 §3.6 singletons)      any, never more than it had
every other field                          as many as the original had
=========================================  ===============================

A field in the output that the table does not allow is **smuggled** (the
poster made a line Postfix takes as a header); one the table requires and the
output lacks is **lost** (e.g. the list's own headers pushed into the body).
"""

from __future__ import annotations

import json
import re
from collections import namedtuple

from . import cases as C
from .views import counts, field_value, postfix_view, shown_from

#: Every check, in report order, with what it means.
CHECKS = {
    "exit": "the exit status is one of 0, 67, 75 (pipe(8) bounces anything else, a traceback's 1 included)",
    "traceback": "stderr is empty or one line starting with a DSN; stdout is empty",
    "poison": "no deferral (75): the snapshot, the spool and sendmail all work, so a retry fails the same way",
    "wrong-67": "no 'no such list' (67) for a list that exists",
    "singletons": "every message given to sendmail has exactly one From, To, Subject, Date and Message-ID,"
                  " as Postfix splits lines and as Python's parser reads them",
    "smuggled": "a post has no header line the rewrite did not mean (Postfix's view)",
    "lost": "a post has every header line the rewrite meant: the original's kept ones and the list's own",
    "from": "the From members see is a poster the list allows (a stranger's post never reaches them)",
    "body": "a post's body is the original's, byte for byte (CRLF read as LF, as sendmail does)",
    "poster-copy": "the poster is not among a post's recipients",
    "line-length": "no header line handed to sendmail is longer than 998 characters (RFC 5322 §2.1.1)",
    "envelope": "posts go once, with VERP, from -bounces, to members only; notices to the envelope sender;"
                " -owner/-request mail to the owners unchanged; nothing answers -bounces",
    "notice": "a refusal notice reads the same to Postfix and to Python, and never goes to a null sender",
    "not-delivered": "an allowed poster's well-formed post (clean corpus, SMTPUTF8, no Date, large) is delivered",
    "event": "a message to the list that ends with 0 leaves an event record in the spool",
    "cost": "well under a second of CPU and memory a small multiple of the message",
}

#: How the case ended: exit status (None if killed), the signal, the output, the cost.
Outcome = namedtuple("Outcome", "exit signal timed_out stdout stderr wall cpu rss extra_rss mode")
#: One sendmail call the stub recorded: its argv (after the program name) and the message.
Call = namedtuple("Call", "args message")

_DSN_LINE = re.compile(rb"[245]\.\d{1,3}\.\d{1,3} [^\n]*\n?")
ONCE = frozenset({"from", "to", "subject", "date", "message-id", "list-id", "list-post", "list-help", "list-owner",
                  "precedence"})
REMOVED = frozenset({"return-path", "delivered-to", "x-original-to", "disposition-notification-to",
                     "return-receipt-to", "x-confirm-reading-to", "errors-to"})
KEPT_SINGLETONS = frozenset({"sender", "reply-to", "cc", "bcc", "in-reply-to", "references"})
LOOP = "x-listfilter-loop"
REQUIRED = ("from", "to", "subject", "date", "message-id")

#: Time and memory allowed for one case (see :func:`cost_limits`).
TIME_LIMIT = 1.0
MEMORY_LIMIT_MB = 32.0


def cost_limits(size: int, mode: str) -> tuple[float, float]:
    """(CPU seconds, extra MB) allowed for a message of ``size`` bytes: a second plus 0.2 s per MB (half
    a second more for a process of its own: interpreter start-up), and 32 MB plus ten times the message.

    CPU time (the case's process and the sendmail it runs, from wait4), not wall time: the machine
    may be busy with other work, and what the class bounds is the work a message makes."""
    seconds = TIME_LIMIT + 0.2 * size / 1e6 + (0.5 if mode == "process" else 0.0)
    return seconds, MEMORY_LIMIT_MB + 10 * size / 2**20


def parse_args(args: list[str]) -> tuple[str | None, bool, list[str]]:
    """(envelope sender, VERP, recipients) from a sendmail argv."""
    sender, verp, rcpts = None, False, []
    i = 0
    while i < len(args):
        if args[i] == "-f" and i + 1 < len(args):
            sender = args[i + 1]
            i += 2
            continue
        if args[i] == "-XV":
            verp = True
        if args[i] == "--":
            rcpts = args[i + 1:]
            break
        i += 1
    return sender, verp, rcpts


def expected_range(name: str, original: int, reply_to: bool) -> tuple[int, int]:
    """How many ``name`` lines a post may have, given how many the original had (the table above)."""
    if name in ONCE or (name == "reply-to" and reply_to):
        return 1, 1
    if name.startswith("list-") or name in REMOVED:
        return 0, 0
    if name == LOOP:
        return 1, original + 1
    if name in KEPT_SINGLETONS:
        return min(original, 1), original
    return original, original


def python_names(message: bytes) -> list[str] | None:
    """The header names Python's parser reads (lower-cased), or None if it raises."""
    from email import policy
    from email.parser import BytesHeaderParser

    try:
        return [k.lower() for k in BytesHeaderParser(policy=policy.default).parsebytes(message).keys()]
    except Exception:
        return None


def _short(b: bytes | str, n: int = 120) -> str:
    text = b.decode("utf-8", "backslashreplace") if isinstance(b, bytes) else b
    return repr(text[:n]) + ("…" if len(text) > n else "")


def check_common(message: bytes, what: str) -> list[tuple[str, str]]:
    """singletons and line-length, for any message handed to sendmail."""
    out = []
    view = postfix_view(message)
    n = counts(view)
    py = python_names(message)
    bad = [f"{name}×{n.get(name, 0)}" for name in REQUIRED if n.get(name, 0) != 1]
    if py is None:
        bad.append("Python's parser raises")
    else:
        bad += [f"{name}×{py.count(name)} to Python" for name in REQUIRED if py.count(name) != 1]
    if bad:
        out.append(("singletons", f"{what}: " + ", ".join(bad)))
    long = [len(line) for f in view.fields for line in f.lines if len(line) > 998]
    if long:
        out.append(("line-length", f"{what}: {len(long)} header line(s) longer than 998, the longest {max(long)}"))
    return out


def check_post(case: C.Case, message: bytes, rcpts: list[str]) -> list[tuple[str, str]]:
    """The checks of one post handed to sendmail."""
    out = check_common(message, "post")
    original = postfix_view(case.raw, drop_unix_from=True)
    view = postfix_view(message)
    have, had = counts(view), counts(original)
    smuggled, lost = [], []
    for name in sorted((set(have) | set(had) | ONCE | {LOOP}) - set(REQUIRED)):  # the five: check_common's singletons
        lo, hi = expected_range(name, had.get(name, 0), case.reply_to)
        n = have.get(name, 0)
        if n > hi:
            smuggled.append(f"{name}×{n} (at most {hi})")
        elif n < lo:
            lost.append(f"{name}×{n} (at least {lo})")
    if smuggled:
        out.append(("smuggled", ", ".join(smuggled)))
    if lost:
        out.append(("lost", ", ".join(lost)))
    froms = [f for f in view.fields if f.name == "from"]
    allowed = {p.lower() for p in case.posters}
    shown = shown_from(field_value(froms[0])) if froms else None
    if case.variant == "stranger":
        out.append(("from", "a post from a stranger reached the members"))
    elif shown is None:
        out.append(("from", "the post has no From"))
    elif shown.ambiguous:
        out.append(("from", f"members see an ambiguous From ({shown.ambiguous}): {_short(field_value(froms[0]))}"))
    elif not set(shown.addresses) <= allowed:
        out.append(("from", f"members see {', '.join(shown.addresses)}; the list allows {', '.join(sorted(allowed))}"))
    if view.body != original.body:
        out.append(("body", f"{len(original.body)} bytes became {len(view.body)}:"
                            f" {_short(view.body[:80])} instead of {_short(original.body[:80])}"))
    claimed = b" ".join(field_value(f) for f in original.fields if f.name == "from").decode("utf-8", "replace").lower()
    posters = set(shown.addresses if shown else ()) | {p for p in allowed if p in claimed}
    copies = [r for r in rcpts if r.lower() in posters]
    if copies:
        out.append(("poster-copy", f"sent to the poster {', '.join(copies)}"))
    members = {m.lower() for m in C.MEMBERS + case.members}
    strangers = [r for r in rcpts if r.lower() not in members]
    if strangers or len(set(r.lower() for r in rcpts)) != len(rcpts):
        out.append(("envelope", f"recipients not members, or twice: {_short(', '.join(rcpts))}"))
    return out


def check_notice(case: C.Case, message: bytes, sender: str | None, rcpts: list[str]) -> list[tuple[str, str]]:
    out = check_common(message, "notice")
    if case.sender.strip("<>").upper() in ("", "MAILER-DAEMON"):
        out.append(("notice", "a refusal notice to a null sender"))
    if rcpts != [case.sender.strip("<>")]:
        out.append(("envelope", f"a notice to {_short(', '.join(rcpts))}, not the envelope sender"))
    view = postfix_view(message)
    py = python_names(message)
    if py is not None and py != [f.name for f in view.fields]:
        out.append(("notice", f"Postfix reads the headers {[f.name for f in view.fields]}, Python {py}"))
    return out


def check_case(case: C.Case, outcome: Outcome, calls: list[Call], events: list[bytes]) -> list[tuple[str, str]]:
    """Every failed check of the case, as (check, detail)."""
    out: list[tuple[str, str]] = []
    err = outcome.stderr
    if outcome.timed_out:
        out.append(("exit", f"killed after the {outcome.wall:.0f} s time limit"))
    elif outcome.signal:
        out.append(("exit", f"killed by signal {outcome.signal}"))
    elif outcome.exit not in (0, 67, 75):
        out.append(("exit", f"exit {outcome.exit}: {_short(err.strip().splitlines()[-1] if err.strip() else b'')}"))
    if outcome.exit == 75:
        out.append(("poison", _short(err.strip())))
    if outcome.exit == 67:
        out.append(("wrong-67", _short(err.strip())))
    if b"Traceback" in err or (err and not _DSN_LINE.fullmatch(err)) or outcome.stdout:
        out.append(("traceback", _short(err or outcome.stdout, 200)))
    posts, notices, forwards = [], [], []
    for call in calls:
        sender, verp, rcpts = parse_args(call.args)
        if case.variant == "request":
            forwards.append((call, sender, rcpts))  # owners' mail keeps its sender, the null one included
        elif sender is not None and sender.lower() == C.BOUNCES:
            posts.append((call, verp, rcpts))
        elif sender in ("<>", ""):
            notices.append((call, sender, rcpts))
        else:
            forwards.append((call, sender, rcpts))
    kind = case.variant
    if kind == "bounces":
        if calls:
            out.append(("envelope", f"mail to -bounces made {len(calls)} sendmail call(s)"))
    elif kind == "request":
        for call, sender, rcpts in forwards:
            if rcpts != list(C.OWNERS) or call.message != case.raw:
                out.append(("envelope", f"forwarded to {rcpts}, {len(call.message)} of {len(case.raw)} bytes"))
    else:
        if forwards:
            out.append(("envelope", f"a post was handed to sendmail from {forwards[0][1]!r}"))
        if len(posts) > 1:
            out.append(("envelope", f"posted {len(posts)} times"))
        for call, verp, rcpts in posts:
            if not verp:
                out.append(("envelope", "a post without VERP"))
            out += check_post(case, call.message, rcpts)
        if case.must_deliver and not (outcome.exit == 0 and posts):
            out.append(("not-delivered", f"exit {outcome.exit}, {len(posts)} post(s): {_short(err.strip())}"))
        if outcome.exit == 0 and not any(_is_event(e) for e in events):
            out.append(("event", "no event record in the spool"))
    for call, sender, rcpts in notices:
        out += check_notice(case, call.message, sender, rcpts)
    seconds, megabytes = cost_limits(len(case.raw), outcome.mode)
    if outcome.cpu > seconds or outcome.extra_rss > megabytes:
        out.append(("cost", f"{outcome.cpu:.2f} s CPU, {outcome.extra_rss:.0f} MB above the baseline"
                            f" (limits {seconds:.1f} s, {megabytes:.0f} MB) for {len(case.raw)} bytes"))
    seen, unique = set(), []
    for check, detail in out:
        if (check, detail) not in seen:
            seen.add((check, detail))
            unique.append((check, detail))
    return unique


def _is_event(data: bytes) -> bool:
    try:
        return isinstance(json.loads(data), dict)
    except ValueError:
        return False
