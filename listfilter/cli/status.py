"""`status`: the host's health in one look, with a Nagios plugin's exit codes.

Each item is ok, warn, crit or unknown (it could not be measured) with a
one-line detail; the command exits with the worst: 0 OK, 1 WARNING,
2 CRITICAL, 3 UNKNOWN (a crit outranks an unknown, an unknown a warn). The
items: Postfix's queue for list mail (``postqueue -j``: active, deferred,
held, the oldest deferred list message, and per list domain), the last sync
(``<state_dir>/last-sync.json``, written by :mod:`listfilter.sync.run`) and
the snapshot's age, the spool backlog, posts with failed members and owner
notices that failed in the last day, the suppressed addresses, the DKIM keys'
age. Thresholds: ``[status]`` (:class:`listfilter.sync.config.StatusSettings`).

:func:`queue_counts` and :func:`grade` are pure; :func:`collect` does the reading.
It needs no root: postqueue -j is open to every local user by default, the
rest is read only (docs/operations.md, "listfilter status").
"""

from __future__ import annotations

import datetime as dt
import json
import subprocess
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import click

from ..common.addresses import parse_recipient
from . import cli

OK, WARN, CRIT, UNKNOWN = "ok", "warn", "crit", "unknown"
EXIT = {OK: 0, WARN: 1, CRIT: 2, UNKNOWN: 3}
LABEL = {OK: "OK", WARN: "WARNING", CRIT: "CRITICAL", UNKNOWN: "UNKNOWN"}
_RANK = {OK: 0, WARN: 1, UNKNOWN: 2, CRIT: 3}
ACTIVE_QUEUES = ("maildrop", "incoming", "active")
DAY = 86400.0


@dataclass
class Item:
    name: str  # queue, queue.DOMAIN, sync, snapshot, spool, failed_posts, failed_notices, suppressed, dkim.DOMAIN
    status: str  # OK / WARN / CRIT / UNKNOWN
    detail: str  # one line
    values: dict[str, float] = field(default_factory=dict)  # the figures, for --json and --prometheus


def worst(items: list[Item]) -> str:
    return max((i.status for i in items), key=_RANK.__getitem__, default=OK)


def grade(value: float, warn: float, crit: float) -> str:
    """crit at or above ``crit``, warn at or above ``warn``; a threshold of 0 is off."""
    if crit and value >= crit:
        return CRIT
    if warn and value >= warn:
        return WARN
    return OK


def _worse(*statuses: str) -> str:
    return max(statuses, key=_RANK.__getitem__)


def _age(seconds: float) -> str:
    seconds = max(0, int(seconds))
    if seconds < 120:
        return f"{seconds} s"
    if seconds < 7200:
        return f"{seconds // 60} min"
    if seconds < 2 * 86400:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} days"


# ----------------------------------------------------------------- the queue


@dataclass
class QueueCounts:
    active: int = 0
    deferred: int = 0
    held: int = 0
    oldest_deferred: float | None = None  # arrival_time (Unix seconds) of the oldest deferred list message


def list_domain_of(entry: dict, domains: set[str]) -> str | None:
    """The list domain a ``postqueue -j`` entry belongs to, or None when it is not list mail.

    List mail: the sender is a list's -bounces address (a copy listfilter
    handed back, VERP or not), or a recipient is on a list domain (a post on
    its way to listfilter).
    """
    sender = (entry.get("sender") or "").lower()
    target = parse_recipient(sender) if "@" in sender else None
    if target is not None and target.kind == "bounces" and target.list_address.rpartition("@")[2] in domains:
        return target.list_address.rpartition("@")[2]
    for r in entry.get("recipients") or ():
        domain = str(r.get("address", "")).lower().rpartition("@")[2]
        if domain in domains:
            return domain
    return None


def queue_counts(entries: list[dict], domains: set[str]) -> dict[str, QueueCounts]:
    """{list domain: counts} for the list mail among ``postqueue -j``'s entries (every list domain present)."""
    out = {d: QueueCounts() for d in sorted(domains)}
    for e in entries:
        domain = list_domain_of(e, domains)
        if domain is None:
            continue
        c = out[domain]
        queue = e.get("queue_name")
        if queue == "deferred":
            c.deferred += 1
            arrival = e.get("arrival_time")
            if isinstance(arrival, (int, float)) and (c.oldest_deferred is None or arrival < c.oldest_deferred):
                c.oldest_deferred = float(arrival)
        elif queue == "hold":
            c.held += 1
        elif queue in ACTIVE_QUEUES:
            c.active += 1
    return out


def parse_postqueue(text: str) -> list[dict]:
    """``postqueue -j``'s output: one JSON object a line."""
    out = []
    for n, line in enumerate(text.splitlines(), 1):
        if line.strip():
            try:
                entry = json.loads(line)
            except ValueError as exc:
                raise ValueError(f"line {n} is not JSON ({exc})") from None
            if not isinstance(entry, dict):
                raise ValueError(f"line {n} is not a JSON object")
            out.append(entry)
    return out


def queue_items(counts: dict[str, QueueCounts], thresholds, now: float) -> list[Item]:
    t = thresholds
    total = QueueCounts()
    items = []
    for domain, c in counts.items():
        total.active += c.active
        total.deferred += c.deferred
        total.held += c.held
        if c.oldest_deferred is not None and (total.oldest_deferred is None or c.oldest_deferred < total.oldest_deferred):
            total.oldest_deferred = c.oldest_deferred
        items.append(_queue_item(f"queue.{domain}", c, t, now))
    return [_queue_item("queue", total, t, now)] + items


def _queue_item(name: str, c: QueueCounts, t, now: float) -> Item:
    oldest = now - c.oldest_deferred if c.oldest_deferred is not None else 0.0
    status = _worse(grade(c.active, t.active_warn, t.active_crit), grade(c.deferred, t.deferred_warn, t.deferred_crit),
                    grade(c.held, t.held_warn, t.held_crit),
                    grade(oldest, t.oldest_deferred_warn_hours * 3600, t.oldest_deferred_crit_hours * 3600))
    detail = f"{c.active} active, {c.deferred} deferred, {c.held} held"
    if c.oldest_deferred is not None:
        detail += f"; oldest deferred {_age(oldest)}"
    return Item(name, status, detail, {"active": c.active, "deferred": c.deferred, "held": c.held,
                                       "oldest_deferred_seconds": round(oldest)})


def postqueue_command(config) -> list[str]:
    cmd = [str(config.postfix.postqueue)]
    if config.postfix.config_directory:
        cmd += ["-c", str(config.postfix.config_directory)]
    return cmd + ["-j"]


def read_queue(config) -> list[dict]:
    cmd = postqueue_command(config)
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise RuntimeError(f"{cmd[0]}: {exc}") from None
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} exited {proc.returncode}: "
                           f"{(proc.stderr.strip().splitlines() or [''])[-1]}")
    try:
        return parse_postqueue(proc.stdout)
    except ValueError as exc:
        raise RuntimeError(f"{' '.join(cmd)}: {exc}") from None


# ----------------------------------------------------------------- the rest


def sync_item(state_dir: Path, t, now: float) -> Item:
    from ..sync.run import LAST_SYNC

    path = state_dir / LAST_SYNC
    try:
        data = json.loads(path.read_text())
        at = dt.datetime.fromisoformat(data["at"]).timestamp()
        ok, warnings, error = bool(data["ok"]), int(data.get("warnings", 0)), str(data.get("error", ""))
    except FileNotFoundError:
        return Item("sync", CRIT, f"{path} is missing: sync has not run since it started recording")
    except (OSError, ValueError, KeyError, TypeError) as exc:
        return Item("sync", UNKNOWN, f"{path}: {exc}")
    age = now - at
    status = grade(age, t.sync_warn_minutes * 60, t.sync_crit_minutes * 60)
    if not ok:
        status, result = CRIT, f"failed: {error}"
    elif warnings:
        status, result = _worse(status, WARN), f"ok with {warnings} warning{'s' if warnings != 1 else ''}"
    else:
        result = "ok"
    return Item("sync", status, f"last sync {_age(age)} ago, {result}",
                {"age_seconds": round(age), "ok": int(ok), "warnings": warnings, "timestamp": round(at)})


def snapshot_items(config, t, now: float) -> tuple[list[Item], set[str], dict[str, str] | None]:
    """The snapshot's item, the list domains in it, and its suppressed addresses (None if unreadable)."""
    from ..common import snapshot as S

    try:
        with S.Snapshot(config.site.snapshot_path) as snap:
            generated = snap.meta.get("generated_at", "")
            domains = {l.address.rpartition("@")[2] for l in snap.lists()}
            suppressed = snap.suppressed_with_reasons()
    except S.SnapshotError as exc:
        return [Item("snapshot", CRIT, str(exc))], {d for d in config.domains}, None
    try:
        age = now - dt.datetime.fromisoformat(generated).timestamp()
    except ValueError:
        return [Item("snapshot", UNKNOWN, f"snapshot's generated_at is {generated!r}")], domains, suppressed
    status = grade(age, t.snapshot_warn_days * DAY, t.snapshot_crit_days * DAY)
    return ([Item("snapshot", status, f"written {_age(age)} ago ({generated}), {len(domains)} list domains",
                  {"age_seconds": round(age)})], domains, suppressed)


def spool_item(config, t) -> Item:
    from ..common import spool

    d = config.site.spool_dir
    try:
        if not d.exists():  # nothing was ever delivered: nothing waits
            return Item("spool", OK, f"{d} does not exist yet: nothing waiting", {"events": 0, "bounces": 0, "bad": 0})
        events, bounces = len(spool.waiting(d, spool.EVENTS)), len(spool.pending_bounces(d))
        bad = len(spool.bad_events(d))
    except OSError as exc:
        return Item("spool", UNKNOWN, f"{d}: {exc.strerror or exc}")
    n = events + bounces
    status = _worse(grade(n, t.spool_warn, t.spool_crit), WARN if bad else OK)
    detail = f"{events} events and {bounces} bounce records not yet ingested"
    if bad:
        detail += f"; {bad} set aside in {d / spool.EVENTS / spool.BAD}"
    return Item("spool", status, detail, {"events": events, "bounces": bounces, "bad": bad})


def store_items(config, t, now: float) -> list[Item]:
    """Posts with a bounced or expired member and owner notices that failed, in the last 24 hours."""
    from ..store import database as ST

    since = dt.datetime.fromtimestamp(now - DAY, dt.timezone.utc)
    if not config.store.configured and config.store.backend == "sqlite" and not config.store.path.exists():
        return [Item(name, OK, "no mail log (no [store] table): not checked") for name in ("failed_posts", "failed_notices")]
    try:
        with ST.open_store(config.store) as store:
            ts = store._ts(since)
            posts = store._q("SELECT count(DISTINCT event_id) FROM deliveries"
                             " WHERE status IN ('bounced', 'expired') AND at >= ?", (ts,))[0][0] \
                if store._has_table("deliveries") else 0
            notices = store._q("SELECT count(*) FROM bounce_notices WHERE created_at >= ?"
                               " AND (status = 'dropped' OR (status = 'owed' AND attempts > 0))", (ts,))[0][0] \
                if store._has_table("bounce_notices") else 0
    except Exception as exc:  # StoreError, or the driver's own error on a query
        text = exc.report() if hasattr(exc, "report") else f"{type(exc).__name__}: {exc}"
        return [Item("failed_posts", UNKNOWN, f"mail log: {text}"),
                Item("failed_notices", UNKNOWN, f"mail log: {text}")]
    return [Item("failed_posts", grade(posts, t.failed_posts_warn, t.failed_posts_crit),
                 f"{posts} posts with a bounced or expired member in the last 24 h", {"count": posts}),
            Item("failed_notices", grade(notices, t.failed_notices_warn, t.failed_notices_crit),
                 f"{notices} owner notices failed or dropped in the last 24 h", {"count": notices})]


def suppressed_item(suppressed: dict[str, str] | None, t) -> Item:
    if suppressed is None:
        return Item("suppressed", UNKNOWN, "the snapshot is unreadable")
    n = len(suppressed)
    return Item("suppressed", grade(n, t.suppressed_warn, t.suppressed_crit),
                f"{n} addresses suppressed (no list sends to them)", {"count": n})


def dkim_items(config, t, now: float) -> list[Item]:
    if config.dkim is None:
        return []
    out = []
    for name, domain in sorted(config.domains.items()):
        if domain.dkim is None:
            continue
        key = domain.dkim.key
        try:
            age = now - key.stat().st_mtime
        except OSError as exc:
            out.append(Item(f"dkim.{name}", UNKNOWN, f"{key}: {exc.strerror or exc}"))
            continue
        out.append(Item(f"dkim.{name}", grade(age, t.dkim_key_warn_days * DAY, t.dkim_key_crit_days * DAY),
                        f"key {key} ({domain.dkim.selector}) is {_age(age)} old", {"age_seconds": round(age)}))
    return out


def collect(config, now: float | None = None) -> list[Item]:
    now = time.time() if now is None else now
    t = config.status
    snap, domains, suppressed = snapshot_items(config, t, now)
    try:
        q = queue_items(queue_counts(read_queue(config), domains), t, now)
    except RuntimeError as exc:
        q = [Item("queue", UNKNOWN, str(exc))]
    return [*q, sync_item(config.site.state_dir, t, now), *snap, spool_item(config, t),
            *store_items(config, t, now), suppressed_item(suppressed, t), *dkim_items(config, t, now)]


# ----------------------------------------------------------------- output


def write_prometheus(path: Path, items: list[Item], overall: str) -> None:
    """The node_exporter textfile format, through a private registry; write_to_textfile renames a temp file."""
    from prometheus_client import CollectorRegistry, Gauge, write_to_textfile

    registry = CollectorRegistry()
    Gauge("listfilter_status", "Overall status: 0 OK, 1 WARNING, 2 CRITICAL, 3 UNKNOWN",
          registry=registry).set(EXIT[overall])
    item_status = Gauge("listfilter_status_item", "Each item: 0 ok, 1 warn, 2 crit, 3 unknown", ["item"],
                        registry=registry)
    queue = Gauge("listfilter_queue_messages", "List messages in Postfix's queue", ["domain", "queue"],
                  registry=registry)
    oldest = Gauge("listfilter_queue_oldest_deferred_seconds", "Age of the oldest deferred list message",
                   ["domain"], registry=registry)
    gauges = {}
    for item in items:
        item_status.labels(item.name).set(EXIT[item.status])
        if item.name == "queue" or item.name.startswith("queue."):
            domain = item.name.partition(".")[2] or "all"
            for q in ("active", "deferred", "held"):
                if q in item.values:
                    queue.labels(domain, q).set(item.values[q])
            if "oldest_deferred_seconds" in item.values:
                oldest.labels(domain).set(item.values["oldest_deferred_seconds"])
            continue
        base, _, domain = item.name.partition(".")
        for key, value in item.values.items():
            metric = f"listfilter_{base}_{key}"
            if metric not in gauges:
                gauges[metric] = Gauge(metric, f"listfilter status: {base} {key.replace('_', ' ')}",
                                       ["domain"] if domain else [], registry=registry)
            (gauges[metric].labels(domain) if domain else gauges[metric]).set(value)
    write_to_textfile(str(path), registry)


@cli.command("status")
@click.option("--json", "as_json", is_flag=True, help="Print the items as JSON (the same facts).")
@click.option("--prometheus", "prometheus", metavar="FILE", type=click.Path(dir_okay=False, path_type=Path),
              help="Also write the figures to FILE in node_exporter's textfile format (atomically).")
@click.pass_context
def status_command(ctx, as_json, prometheus):
    """The host's health: exit 0 OK, 1 WARNING, 2 CRITICAL, 3 UNKNOWN (a Nagios plugin's codes)."""
    from ..common.errors import ListfilterError
    from . import load_config

    try:
        config = load_config(ctx)
    except ListfilterError as exc:
        click.echo(f"UNKNOWN: {exc.report()}")
        ctx.exit(EXIT[UNKNOWN])
    items = collect(config)
    overall = worst(items)
    if prometheus is not None:
        try:
            write_prometheus(prometheus, items, overall)
        except OSError as exc:
            click.echo(f"listfilter: {prometheus}: {exc.strerror or exc}", err=True)
            overall = _worse(overall, UNKNOWN)
    if as_json:
        click.echo(json.dumps({"status": LABEL[overall], "exit": EXIT[overall],
                               "items": [asdict(i) for i in items]}, indent=2))
    else:
        bad = [i for i in items if i.status != OK]
        click.echo(f"{LABEL[overall]}: " + ("; ".join(f"{i.name} {i.detail}" for i in bad) if bad else
                                             f"{len(items)} checks ok"))
        for i in items:
            click.echo(f"{i.status:8} {i.name:22} {i.detail}")
    ctx.exit(EXIT[overall])

