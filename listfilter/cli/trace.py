"""`trace`: one post's way through Postfix and listfilter, read from Postfix's log and the mail log store.

The account, for each copy of the post Postfix received (its inbound queue
id): who sent it and from where; the RCPT-time verdict (smtpd's and the
policy service's refusals, and smtpd's ``info: RCPT from`` line for the
policy service's ``action=INFO`` acceptance of the list, else an accepted
recipient inferred from the delivery);
the pipe(8) delivery to listfilter (delay, status); listfilter's decision
and the rule (its syslog line, else the store's record); the queue id of
each copy listfilter handed back (one per sendmail batch, found as the mail
side finds it: :func:`listfilter.sync.postfixlog.reinjected`); and each
member's outcome, every attempt: relay, DSN, status, the relay's reply and
the "queued as" id in it.

:func:`build` and :func:`render` are pure (log lines and store rows in, the
account out); the command does the reading.
"""

from __future__ import annotations

import datetime as dt
import gzip
import json
import re
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

import click

from ..common.addresses import parse_recipient
from ..common.events import post_key, stable_id
from ..common.paths import service_uid
from ..common.policyline import INFO_TAG
from ..sync.postfixlog import LogLine, local_zone, parse_line, reinjected
from . import cli, fail, load_config

_EVENT_ID = re.compile(r"[0-9a-f]{32}|[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
_QUEUE_ID_LIKE = re.compile(r"[0-9A-Za-z][0-9A-Za-z._-]{3,}")
_QUEUED_AS = re.compile(r"\bqueued as ([0-9A-Za-z]+)")
_NOTIFICATION = re.compile(r"sender (non-delivery|delivery status|delay) notification: ([0-9A-Za-z]+)")
_REJECT = re.compile(r"^(?:milter-)?reject: (?P<stage>\S+) from (?P<client>\S+): (?P<reply>.*?); from=<")
#: How far from a refusal's record (the store's time) its log line may be.
REJECT_WINDOW = dt.timedelta(minutes=10)
#: smtpd's line for the policy service's ``action=INFO`` answer, a list post it let through
#: (access(5)): "info: RCPT from HOST[IP]: listfilter: WHY; from=<S> to=<L> proto=… helo=<…>".
#: WHY has no ";" (listfilter.common.policyline.info_text), so the first "; from=<" ends it.
_INFO = re.compile(r"^info: RCPT from (?P<client>\S+): " + re.escape(INFO_TAG) + r"(?P<why>.*?); from=<")
#: How long before smtpd's "QID: client=" line its NOQUEUE info line may be (the first RCPT
#: accepted; smtpd creates the queue file right after it).
INFO_WINDOW = dt.timedelta(minutes=5)


def classify(query: str) -> str:
    """What ``query`` names: ``event-id``, ``queue-id`` (Postfix's, or the one a relay's reply names)
    or ``message-id`` (anything with an ``@``)."""
    q = query.strip()
    if _EVENT_ID.fullmatch(q):
        return "event-id"
    if "@" in q or q.startswith("<") or not _QUEUE_ID_LIKE.fullmatch(q):
        return "message-id"
    return "queue-id"  # Postfix's, or a relay's own ("250 2.0.0 Ok: queued as …")


def message_id_form(query: str) -> str:
    """A Message-ID as Postfix's cleanup(8) logs it and the records keep it: in angle brackets."""
    q = "".join(query.split())
    return q if q.startswith("<") else f"<{q.strip('<>')}>"


# ---------------------------------------------------------------- reading


def _log_zone() -> dt.tzinfo:
    """The zone of log lines that name none: the host's, as the log follower reads them."""
    global _ZONE
    if _ZONE is None:
        _ZONE = local_zone()
    return _ZONE


_ZONE: dt.tzinfo | None = None


def raw_lines(paths: Iterable[Path]) -> Iterator[str]:
    """Every line of ``paths``, in order (``.gz`` files decompressed)."""
    for path in paths:
        opener = gzip.open if path.name.endswith(".gz") else open
        with opener(path, "rb") as fh:
            for chunk in fh:
                yield chunk.rstrip(b"\r\n").decode("utf-8", "replace")


def collect(paths: list[Path], keep: Callable[[str], bool], since: dt.datetime | None = None) -> list[LogLine]:
    """The parsed lines of ``paths`` that ``keep`` accepts (a cheap test on the raw text first)."""
    out = []
    for raw in raw_lines(paths):
        if keep(raw):
            line = parse_line(raw, zone=_log_zone())
            if line is not None and (since is None or line.time >= since):
                out.append(line)
    return out


def gather(paths: list[Path], query: str, kind: str, since: dt.datetime | None = None) -> tuple[str, list[LogLine]]:
    """The post's Message-ID and every log line that bears on it (of its queue ids, of the
    notifications Postfix sent about it, and smtpd's refusals and INFO lines for the policy
    service's acceptances at RCPT time around it: NOQUEUE lines, matched to the post by :func:`build`).

    Two or three passes over the log: what names the query, then every queue id
    found with its Message-ID (a queue id's first lines, smtpd's client= and
    pickup's uid=, come before cleanup names the Message-ID).
    """
    message_id = message_id_form(query) if kind == "message-id" else ""
    if kind == "queue-id":
        first = collect(paths, lambda r: query in r, since)
        ids = [ln.fields["message-id"] for ln in first
               if ln.queue_id == query and ln.daemon == "cleanup" and "message-id" in ln.fields]
        if not ids:  # a relay's own id: "250 2.0.0 Ok: queued as QUERY" in the reply to one of ours
            theirs = {ln.queue_id for ln in first if ln.queue_id and query in _QUEUED_AS.findall(ln.reply)}
            if theirs:
                again = collect(paths, lambda r: any(q in r for q in theirs), since)
                ids = [ln.fields["message-id"] for ln in again
                       if ln.queue_id in theirs and ln.daemon == "cleanup" and "message-id" in ln.fields]
        if not ids:
            return "", []
        message_id = f"<{ids[0]}>"
    bare = message_id[1:-1]
    named = collect(paths, lambda r: bare in r, since)
    qids = {ln.queue_id for ln in named if ln.queue_id and ln.daemon == "cleanup" and ln.fields.get("message-id") == bare}
    if not qids:
        return message_id, []
    found: list[LogLine] = []
    wanted = set(qids)
    for raw in raw_lines(paths):
        if not (any(q in raw for q in wanted) or "reject: " in raw or "info: RCPT from " in raw):
            continue
        line = parse_line(raw, zone=_log_zone())
        if line is None or (since is not None and line.time < since):
            continue
        if line.queue_id in wanted:
            found.append(line)
            n = _NOTIFICATION.search(line.text)
            if n:  # the notification's own lines follow: keep them too
                wanted.add(n.group(2))
        elif line.queue_id is None and (_REJECT.match(line.text) or line.text.startswith("policy: reject:")
                                        or _INFO.match(line.text)):
            found.append(line)
    return message_id, found


def rejections_for(paths: list[Path], entry: dict, since: dt.datetime | None = None) -> list[LogLine]:
    """The log's refusals at RCPT time of a refused post's record (its envelope sender and list, near its time)."""
    sender, lst = entry.get("envelope_sender", ""), entry.get("list_address", "")
    when = entry.get("created_at")
    out = []
    for line in collect(paths, lambda r: "reject: " in r and lst.lower() in r.lower(), since):
        if line.fields.get("to", "").lower() != lst.lower() or line.fields.get("from", "").lower() != sender.lower():
            continue
        if isinstance(when, dt.datetime) and abs(line.time - when) > REJECT_WINDOW:
            continue
        out.append(line)
    return out


# ---------------------------------------------------------------- the account (pure)


def _t(line: LogLine) -> str:
    return line.time.astimezone(dt.timezone.utc).isoformat()


def _attempt(line: LogLine) -> dict:
    f = line.fields
    return {"time": _t(line), "program": line.program, "to": f.get("to", ""), "orig_to": f.get("orig_to", ""),
            "relay": f.get("relay", ""), "delay": f.get("delay", ""), "delays": f.get("delays", ""),
            "dsn": f.get("dsn", ""), "status": f.get("status", ""), "reply": line.reply,
            "queued_as": (_QUEUED_AS.findall(line.reply) or [""])[-1]}


def _rejection(line: LogLine) -> dict:
    m = _REJECT.match(line.text)
    return {"time": _t(line), "program": line.program, "client": m.group("client") if m else "",
            "from": line.fields.get("from", ""), "to": line.fields.get("to", ""),
            "reply": m.group("reply") if m else line.text.partition(": ")[2].partition(": ")[2] or line.text,
            "text": line.text}


def _decision_from_log(line: LogLine) -> dict:
    return {"source": "log", "time": _t(line), "status": line.fields.get("status", ""),
            "rule": line.fields.get("rule", ""), "detail": line.reply, "text": line.text}


def _decision_from_store(entry: dict) -> dict:
    when = entry.get("created_at")
    when = when.astimezone(dt.timezone.utc).isoformat() if isinstance(when, dt.datetime) else str(when or "")
    return {"source": "store", "time": when,
            "status": entry.get("status", ""), "rule": entry.get("rule", ""),
            "detail": entry.get("error_message", ""), "recipient_count": entry.get("recipient_count", 0),
            "event_id": entry.get("id", "")}


def build(message_id: str, lines: list[LogLine], entries: dict[str, dict] | None = None, *,
          only_list: str | None = None, uid: int | None = None) -> dict:
    """The account of ``message_id`` from its log ``lines`` (:func:`gather`) and the store's rows
    (``entries``: event id → row as a dict). ``only_list``: the lists but this one left out."""
    entries = entries or {}
    by_qid: dict[str, list[LogLine]] = {}
    for line in lines:
        if line.queue_id:
            by_qid.setdefault(line.queue_id, []).append(line)
    rejects = [ln for ln in lines if ln.queue_id is None]
    bare = message_id[1:-1]
    with_id = [q for q, ls in by_qid.items()
               if any(ln.daemon == "cleanup" and ln.fields.get("message-id") == bare for ln in ls)]

    lists = []  # every list a copy of the post was piped to, in log order
    for q in with_id:
        for ln in by_qid[q]:
            target = parse_recipient(ln.fields.get("to", "")) if ln.daemon == "pipe" else None
            if target and target.kind == "post" and target.list_address not in lists:
                lists.append(target.list_address)
    if only_list:
        lists = [a for a in lists if a == only_list.lower()]
    handed: dict[str, list[str]] = {a: reinjected(lines, message_id, a, uid=uid) for a in lists}
    ours = {q for qs in handed.values() for q in qs}
    notices = {n.group(2) for q in ours for ln in by_qid.get(q, ()) for n in [_NOTIFICATION.search(ln.text)] if n}
    inbound = [q for q in with_id if q not in ours and q not in notices]

    posts = []
    claimed: set[str] = set()
    for q in inbound:
        ls = by_qid[q]
        post = _inbound(q, ls, rejects)
        for delivery in post["deliveries"]:
            target = parse_recipient(delivery["to"])
            if not (delivery["program"].endswith("/pipe") and target and target.kind == "post"
                    and target.list_address in handed):
                continue
            address = target.list_address
            if any(x["list"] == address for x in post["lists"]):
                continue
            decision = [_decision_from_log(ln) for ln in ls
                        if _is_listfilter(ln) and ln.fields.get("to", "").lower() == address and "status" in ln.fields]
            entry = entries.get(stable_id(post_key(message_id, q), address))
            copies = []
            pipe_times = [dt.datetime.fromisoformat(d["time"]) for d in post["deliveries"] if d["to"].lower() == address]
            for r in handed[address]:
                if r in claimed:
                    continue
                start = by_qid[r][0].time
                # a copy belongs to the first delivery to listfilter that ended at or after it went in
                if pipe_times and not any(t >= start for t in pipe_times):
                    continue
                claimed.add(r)
                copies.append(_reinjection(r, by_qid, address))
            post["lists"].append({
                "list": address,
                "policy": _policy(address, post, ls, rejects),
                "decision": decision[-1] if decision else (_decision_from_store(entry) if entry else None),
                "listfilter_lines": [{"time": _t(ln), "text": ln.text} for ln in ls if _is_listfilter(ln)],
                "event_id": entry.get("id", "") if entry else "",
                "reinjected": copies,
            })
        posts.append(post)
    return {"message_id": message_id, "posts": posts}


def _is_listfilter(line: LogLine) -> bool:
    return line.program.rpartition("/")[2].startswith("listfilter")


def _received(ls: list[LogLine]) -> LogLine | None:
    """smtpd's ``QID: client=`` line of a post received over SMTP (None: submitted locally)."""
    return next((ln for ln in ls if ln.daemon == "smtpd" and "client" in ln.fields), None)


def _inbound(qid: str, ls: list[LogLine], rejects: list[LogLine]) -> dict:
    received = _received(ls)
    picked = next((ln for ln in ls if ln.daemon == "pickup" and "uid" in ln.fields), None)
    queued = next((ln for ln in ls if ln.daemon == "qmgr" and "nrcpt" in ln.fields), None)
    first = received or picked or ls[0]
    sender = queued.fields.get("from", "") if queued else (picked.fields.get("from", "") if picked else "")
    client = received.fields.get("client", "") if received else ""
    refused = [_rejection(r) for r in rejects
               if received is not None and r.pid == received.pid and r.program == received.program
               and r.fields.get("from", "").lower() == sender.lower()
               and abs(r.time - received.time) <= dt.timedelta(minutes=5)
               and (_REJECT.match(r.text) and _REJECT.match(r.text).group("client") == client)]
    return {
        "queue_id": qid, "time": _t(first), "client": client,
        "sasl_username": received.fields.get("sasl_username", "") if received else "",
        "submitted_by_uid": picked.fields.get("uid", "") if picked else "",
        "from": sender, "size": queued.fields.get("size", "") if queued else "",
        "nrcpt": queued.fields.get("nrcpt", "") if queued else "",
        "refused_at_rcpt": refused,
        "deliveries": [_attempt(ln) for ln in ls if "status" in ln.fields and "to" in ln.fields
                       and not _is_listfilter(ln)],
        "removed": next((_t(ln) for ln in ls if ln.daemon == "qmgr" and ln.text == "removed"), ""),
        "lists": [],
    }


def _policy(address: str, post: dict, ls: list[LogLine], rejects: list[LogLine]) -> dict:
    """The RCPT-time verdict on ``address``: smtpd's INFO line for the policy service's acceptance
    when the log has it, else inferred (the post reached the list, so its RCPT was accepted)."""
    refused = [r for r in post["refused_at_rcpt"] if r["to"].lower() == address]
    line = _info_line(address, post["from"], _received(ls), ls + rejects)
    if line is None:  # refused once, then accepted (a retry by the client, or a second RCPT)?
        return {"verdict": "accepted after a refusal" if refused else "accepted", "refusals": refused,
                "source": "inferred", "time": "", "reason": "", "text": ""}
    why = _INFO.match(line.text).group("why")
    return {"verdict": f"accepted by the policy service: {why}", "refusals": refused,
            "source": "log", "time": _t(line), "reason": why, "text": line.text}


def _info_line(address: str, sender: str, received: LogLine | None, lines: list[LogLine]) -> LogLine | None:
    """smtpd's INFO line for the policy service's acceptance of this post on ``address``: same
    client, envelope sender and list; the post's own queue id when the line has one (a RCPT after
    the first accepted one), else NOQUEUE from the same smtpd process within :data:`INFO_WINDOW`
    before its ``client=`` line (the latest such: an smtpd process serves sessions one after another)."""
    if received is None:
        return None  # submitted locally: no RCPT, no policy service
    client = received.fields.get("client", "")
    mine = [ln for ln in lines if (m := _INFO.match(ln.text)) and m.group("client") == client
            and ln.fields.get("to", "").lower() == address and ln.fields.get("from", "").lower() == sender.lower()]
    queued = [ln for ln in mine if ln.queue_id == received.queue_id]
    before = [ln for ln in mine if ln.queue_id is None and ln.pid == received.pid and ln.program == received.program
              and received.time - INFO_WINDOW <= ln.time <= received.time]
    return queued[0] if queued else max(before, key=lambda ln: ln.time, default=None)


def _reinjection(qid: str, by_qid: dict[str, list[LogLine]], address: str) -> dict:
    ls = by_qid.get(qid, [])
    picked = next((ln for ln in ls if ln.daemon == "pickup"), None)
    queued = next((ln for ln in ls if ln.daemon == "qmgr" and "nrcpt" in ln.fields), None)
    members: dict[str, dict] = {}
    for ln in ls:
        if "status" in ln.fields and "to" in ln.fields:
            to = ln.fields["to"]
            m = members.setdefault(to.lower(), {"address": to, "status": "", "attempts": []})
            m["attempts"].append(_attempt(ln))
            m["status"] = ln.fields["status"]
    notices = []
    for ln in ls:
        n = _NOTIFICATION.search(ln.text)
        if n:
            notices.append({"time": _t(ln), "kind": n.group(1), "queue_id": n.group(2),
                            "deliveries": [_attempt(x) for x in by_qid.get(n.group(2), [])
                                           if "status" in x.fields and "to" in x.fields]})
    counts: dict[str, int] = {}
    for m in members.values():
        counts[m["status"]] = counts.get(m["status"], 0) + 1
    return {"queue_id": qid, "time": _t(picked or ls[0]) if ls else "",
            "from": picked.fields.get("from", "") if picked else "", "list": address,
            "uid": picked.fields.get("uid", "") if picked else "",
            "nrcpt": queued.fields.get("nrcpt", "") if queued else "",
            "size": queued.fields.get("size", "") if queued else "",
            "members": sorted(members.values(), key=lambda m: m["address"].lower()),
            "counts": counts, "notices": notices,
            "removed": next((_t(ln) for ln in ls if ln.daemon == "qmgr" and ln.text == "removed"), "")}


def build_refusal(entry: dict, rejects: list[LogLine]) -> dict:
    """The account of a post refused at RCPT time: the store's record and the log's refusals."""
    return {"message_id": entry.get("message_id", ""), "posts": [], "refused": {
        "event_id": entry.get("id", ""), "list": entry.get("list_address", ""),
        "from": entry.get("envelope_sender", ""), "client": entry.get("client_address", ""),
        "decision": _decision_from_store(entry), "log": [_rejection(r) for r in rejects]}}


# ---------------------------------------------------------------- the account as text


def _clock_in(iso: str, tz: dt.tzinfo) -> str:
    return dt.datetime.fromisoformat(iso).astimezone(tz).strftime("%Y-%m-%d %H:%M:%S") if iso else "-" * 19


def _kv(d: dict, *names: str) -> str:
    return ", ".join(f"{n}={d[n]}" for n in names if d.get(n))


def render(trace: dict, tz: dt.tzinfo = dt.timezone.utc) -> str:
    """The account as a person reads it: one event a line, times in ``tz`` (the JSON's are UTC)."""
    def _clock(iso: str) -> str:
        return _clock_in(iso, tz)

    out = [f"Message-ID {trace['message_id'] or '(none)'}  (times {tz})"]
    refused = trace.get("refused")
    if refused:
        d = refused["decision"]
        out.append(f"{_clock(d['time'])}  refused at RCPT: <{refused['from']}> to <{refused['list']}>"
                   + (f" from {refused['client']}" if refused["client"] else "")
                   + f" (rule {d['rule'] or '?'}): {d['detail']}  [event {refused['event_id']}]")
        for r in refused["log"]:
            out.append(f"{_clock(r['time'])}  {r['program']}: {r['reply']}")
        if not refused["log"]:
            out.append("  (no refusal line in the log read)")
        return "\n".join(out) + "\n"
    if not trace["posts"]:
        out.append("  not in the log read")
    for post in trace["posts"]:
        who = f"from {post['client']}" if post["client"] else f"submitted locally by uid {post['submitted_by_uid']}"
        out.append(f"{_clock(post['time'])}  received {post['queue_id']} {who}, envelope from <{post['from']}>"
                   + (f", {post['size']} bytes" if post["size"] else "")
                   + (f", {post['nrcpt']} recipient(s)" if post["nrcpt"] else "")
                   + (f", SASL user {post['sasl_username']}" if post["sasl_username"] else ""))
        for r in post["refused_at_rcpt"]:
            out.append(f"{_clock(r['time'])}  refused at RCPT: <{r['to']}>: {r['reply']}")
        for lst in post["lists"] if post["client"] else ():  # submitted locally: no RCPT
            pol = lst["policy"]
            if pol.get("source") == "log":
                out.append(f"{_clock(pol['time'])}  RCPT <{lst['list']}>: {pol['verdict']}")
            else:
                out.append(f"{'':19}  RCPT <{lst['list']}>: {pol['verdict']} (no policy line found)")
        for d in post["deliveries"]:
            out.append(f"{_clock(d['time'])}  {d['program']}: to=<{d['to']}> "
                       + _kv(d, "relay", "delay", "delays", "dsn", "status") + f" ({d['reply']})")
        for lst in post["lists"]:
            dec = lst["decision"]
            if dec is None:
                out.append(f"{'':19}  listfilter on <{lst['list']}>: no decision in the log or the store")
            else:
                where = "log" if dec["source"] == "log" else f"store, event {dec['event_id']}"
                what = dec["detail"] or (f"{dec['recipient_count']} recipients" if dec.get("recipient_count") else "")
                out.append(f"{_clock(dec['time'])}  listfilter on <{lst['list']}>: {dec['status']}"
                           + (f" ({what})" if what else "") + f", rule {dec['rule'] or '-'}  [{where}]")
            for x in lst["listfilter_lines"]:
                if not (dec and dec["source"] == "log" and x["text"] == dec.get("text")):
                    out.append(f"{_clock(x['time'])}  listfilter: {x['text']}")
            if not lst["reinjected"]:
                out.append(f"{'':19}  no copy handed back to Postfix for <{lst['list']}> in the log read")
            for copy in lst["reinjected"]:
                counts = ", ".join(f"{n} {s}" for s, n in sorted(copy["counts"].items()))
                out.append(f"{_clock(copy['time'])}  reinjected {copy['queue_id']} from <{copy['from']}>"
                           + (f", {copy['nrcpt']} recipient(s)" if copy["nrcpt"] else "")
                           + (f": {counts}" if counts else ""))
                for m in copy["members"]:
                    for i, a in enumerate(m["attempts"]):
                        head = f"    {m['address']:<32} " if i == 0 else f"    {'':<32} "
                        out.append(f"{_clock(a['time'])}  {head}{a['status']:<9} "
                                   + _kv(a, "relay", "dsn", "delay") + f" ({a['reply']})")
                for n in copy["notices"]:
                    out.append(f"{_clock(n['time'])}    {n['kind']} notification {n['queue_id']}"
                               + "".join(f"; to=<{d['to']}> {d['status']}" for d in n["deliveries"]))
                if copy["removed"]:
                    out.append(f"{_clock(copy['removed'])}    {copy['queue_id']} done (removed from the queue)")
                elif copy["members"]:
                    out.append(f"{'':19}    {copy['queue_id']} still in the queue")
        if post["removed"]:
            out.append(f"{_clock(post['removed'])}  {post['queue_id']} done (removed from the queue)")
    return "\n".join(out) + "\n"


# ---------------------------------------------------------------- the command


def log_paths(log_file: Path) -> list[Path]:
    """The log and, before it, the file its last rotation left (``<log>.1``), when there is one."""
    rotated = log_file.with_name(log_file.name + ".1")
    return [p for p in (rotated, log_file) if p.exists()] or [log_file]


def _store_entry(config, ident: str) -> tuple[dict | None, str]:
    """The store's row ``ident`` as a dict, or why there is none."""
    from ..store import database as ST

    try:
        with ST.open_store(config.store) as store:
            entry = store.get(ident)
    except Exception as exc:  # the store is optional to a trace by Message-ID or queue id
        return None, f"the mail log store cannot be read ({exc})"
    if entry is None:
        return None, f"no event {ident} in the mail log store (listfilter sync moves new events there)"
    return {k: getattr(entry, k) for k in ("id", "status", "list_address", "created_at", "rule", "message_id",
                                           "queue_id", "envelope_sender", "client_address", "recipient_count",
                                           "error_message")}, ""


def _entries_for(config, message_id: str, trace_lines: list[LogLine]) -> dict[str, dict]:
    """The store's rows for this post on every list its log shows it piped to (empty when the store is unreadable)."""
    ids = set()
    for ln in trace_lines:
        target = parse_recipient(ln.fields.get("to", "")) if ln.daemon == "pipe" else None
        if target and target.kind == "post" and ln.queue_id:
            ids.add(stable_id(post_key(message_id, ln.queue_id), target.list_address))
    out = {}
    for ident in sorted(ids):
        entry, _ = _store_entry(config, ident)
        if entry:
            out[ident] = entry
    return out


@cli.command("trace")
@click.argument("what", metavar="MESSAGE-ID|QUEUE-ID|EVENT-ID")
@click.option("--json", "as_json", is_flag=True, help="Print the account as JSON (the same facts).")
@click.option("--since", metavar="WHEN", help="Read only log lines since WHEN: 90m, 12h, 7d, 2w, today,"
                                              " 2026-01-21 or 2026-01-21T09:00 (site time zone).")
@click.option("--log", "logs", metavar="FILE", multiple=True,
              type=click.Path(dir_okay=False, allow_dash=True, path_type=Path),
              help="Read this log file (repeatable, in order; .gz too; - for standard input, such as"
                   " journalctl -o short-iso) instead of postfix.log_file and its .1 (or, with"
                   ' log_source = "journal", the journal).')
@click.pass_context
def trace_cmd(ctx, what, as_json, since, logs):
    """Follow one post through Postfix and listfilter: receipt, the pipe to listfilter, its decision,
    the copies handed back, and each member's delivery (every attempt, with the relay's reply)."""
    import zoneinfo

    from ..store import database as ST

    config = load_config(ctx)
    tz = zoneinfo.ZoneInfo(config.site.timezone)
    when = None
    if since:
        try:
            when = ST.parse_since(since, tz)
        except ValueError as exc:
            raise click.BadParameter(str(exc), param_hint="--since") from None
    paths = list(logs) or ([] if config.postfix.journal else log_paths(config.postfix.log_file))
    if not paths:  # the journal: its mail lines (since --since) into a temporary file, read like a log file
        paths = [_journal_copy(ctx, config, when)]
    if Path("-") in paths:  # read more than once: kept in a temporary file
        import shutil
        import sys
        import tempfile

        held = tempfile.NamedTemporaryFile(prefix="listfilter-trace-")
        ctx.call_on_close(held.close)
        shutil.copyfileobj(sys.stdin.buffer, held)
        held.flush()
        paths = [Path(held.name) if p == Path("-") else p for p in paths]
    for p in paths:
        try:
            open(p, "rb").close()
        except OSError as exc:
            fail(f"{p}: {exc.strerror} (Postfix's log: postfix.log_file, or --log; docs/operations.md says which"
                 " group may read it)")
    kind = classify(what)
    only_list = None
    entry = None
    if kind == "event-id":
        entry, why = _store_entry(config, what.strip())
        if entry is None:
            fail(why)
        if entry["status"] == "rejected" or not entry["message_id"]:
            trace = build_refusal(entry, rejections_for(paths, entry, when)) if entry["status"] == "rejected" else None
            if trace is None:  # a post without a Message-ID: its inbound queue id names it
                kind, what, only_list = "queue-id", entry["queue_id"], entry["list_address"]
        else:
            kind, what, only_list = "message-id", entry["message_id"], entry["list_address"]
        if entry["status"] == "rejected":
            _emit(trace, as_json, tz)
            return
    message_id, lines = gather(paths, what.strip(), kind, when)
    if not lines and kind == "queue-id":  # a Message-ID without an "@"?
        message_id, lines = gather(paths, what.strip(), "message-id", when)
    if not lines:
        fail(f"{what}: not found in {', '.join(map(str, paths))}" + (f" since {since}" if since else ""))
    trace = build(message_id, lines, _entries_for(config, message_id, lines), only_list=only_list,
                  uid=service_uid())
    trace["query"] = {"text": what, "kind": classify(what) if entry is None else "event-id"}
    _emit(trace, as_json, tz)


def _journal_copy(ctx, config, since) -> Path:
    """The journal's mail lines as a temporary log file (``[postfix] log_source = "journal"``)."""
    import tempfile

    from ..sync.postfixlog import JournalReader

    held = tempfile.NamedTemporaryFile(prefix="listfilter-trace-", mode="w", encoding="utf-8",
                                       errors="surrogateescape")
    ctx.call_on_close(held.close)
    try:
        for line in JournalReader(directory=config.postfix.journal_directory, since=since).raw_lines():
            held.write(line + "\n")
    except OSError as exc:
        fail(f"the journal cannot be read: {exc.strerror or exc} (docs/operations.md says which group may read it)")
    held.flush()
    return Path(held.name)


def _emit(trace: dict, as_json: bool, tz: dt.tzinfo) -> None:
    if as_json:
        click.echo(json.dumps(trace, indent=2, ensure_ascii=False, default=str))
    else:
        click.echo(render(trace, tz), nl=False)
