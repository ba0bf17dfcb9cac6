"""DMARC policies for the snapshot: which domains need one, looked up within a bound, reused while fresh.

The mail side decides per post whether its From domain needs the DMARC
mitigation (:func:`listfilter.mail.rules.dmarc_mitigation`) from the
snapshot's ``dmarc`` table alone; this module fills that table. The domains
are those of every address that may post to a list whose ``dmarc`` is not
``off`` (allowlists, role holders, members of lists whose members post), bar
those the list's ``dmarc_always`` already covers. Policy discovery itself is
:func:`listfilter.sync.dns.dmarc_policies`.

Bounds, so that a sync never waits long on DNS:

- an installed entry that has not expired is reused, not asked again, so a
  sync every five minutes asks only for the answers whose TTL ran out;
- the domains are asked :data:`WORKERS` at a time, up to :data:`GROUP` of one
  organisational domain per task (they share the fallback lookup), each lookup bounded by
  ``[dns] timeout``;
- once a task has waited the whole timeout without any answer having come
  back, the resolver is taken to be unreachable and the domains not yet asked
  are marked failed at once; and the phase as a whole ends after
  :func:`budget` seconds, whatever is left marked failed.

A failed lookup is stored as failed, which the mail side treats as strict:
no answer never means no mitigation.
"""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from ..common import snapshot as S
from ..common.words import plural
from .config import DNSSettings

#: Lookups in flight at once.
WORKERS = 32
#: Subdomains of one organisational domain asked by one task, one after another.
GROUP = 8
#: The whole lookup phase ends after this many seconds, or twice ``[dns] timeout`` if that is longer.
BUDGET = 30.0


def budget(settings: DNSSettings) -> float:
    return max(BUDGET, 2 * settings.timeout)


@dataclass
class Refresh:
    """The dmarc table a sync writes, and what it took to make it."""

    entries: dict[str, S.DmarcEntry] = field(default_factory=dict)
    asked: int = 0  # domains looked up by this sync
    reused: int = 0  # installed entries kept without a lookup
    failed: dict[str, str] = field(default_factory=dict)  # domain -> what failed, for this sync's lookups
    seconds: float = 0.0

    def warning(self) -> str | None:
        """One line when lookups failed (None otherwise)."""
        if not self.failed:
            return None
        first, detail = next(iter(sorted(self.failed.items())))
        detail = detail.removeprefix("lookup failed: ")
        more = f" and {plural(len(self.failed) - 1, 'other')}" if len(self.failed) > 1 else ""
        return (f"DMARC lookups failed for {plural(len(self.failed), 'domain')} of {self.asked}"
                f" ({first}: {detail}{more}): posts From them get the list's DMARC mitigation"
                " until a lookup succeeds")


def wanted_domains(lists) -> set[str]:
    """The domains whose policy the mail side may need: posters' domains on lists with dmarc != off,
    unless that list's dmarc_always covers the poster (it gets the mitigation whatever the policy)."""
    out: set[str] = set()
    for lst in lists:
        if lst.dmarc == "off":
            continue
        for address in lst.posters:
            if not S.dmarc_always_match(lst.dmarc_always, address):
                out.add(address.rpartition("@")[2].lower())
    return out


def installed_view(config, lists) -> dict[str, S.DmarcEntry]:
    """The installed entries for the domains these lists need, as they are (no DNS): what a dry run,
    ``check`` and ``maps`` compare against, so that they say "up to date" when only TTLs ran out."""
    wanted = wanted_domains(lists)
    return {d: e for d, e in S.installed_dmarc(config.site.snapshot_path).items() if d in wanted}


def refresh(config, lists, installed: dict[str, S.DmarcEntry], *, lookup=None, now: float | None = None) -> Refresh:
    """The dmarc table for ``lists``: installed entries that have not expired, and fresh lookups for the rest.

    ``lookup(domains, dns_settings)`` returns a DmarcEntry per domain (default :func:`look_up`,
    which asks DNS). A fresh answer equal to the installed one (same policy and status) keeps the
    installed row, expiry and all, while that row is within half of :data:`~listfilter.common.snapshot.DMARC_GRACE`
    of its expiry (a failed one for as long as its lookups keep failing): a sync every five minutes then
    rewrites the snapshot only when a policy changed, or about twice an hour to push expiries on.
    """
    now = time.time() if now is None else now
    wanted = wanted_domains(lists)
    out = Refresh()
    if not wanted:
        return out
    ask = sorted(d for d in wanted if not (d in installed and now < installed[d].expires_at))
    out.reused = len(wanted) - len(ask)
    started = time.monotonic()
    fresh = (lookup or look_up)(ask, config.dns) if ask else {}
    out.seconds = time.monotonic() - started
    out.asked = len(ask)
    out.entries = {d: installed[d] for d in wanted if d not in ask}
    for domain in ask:
        new = fresh.get(domain) or failed_entry(domain, "no answer was recorded", now)
        if new.status == S.DMARC_FAILED:
            out.failed[domain] = new.detail
        old = installed.get(domain)
        same = old is not None and (old.policy, old.status) == (new.policy, new.status)
        if same and (new.status == S.DMARC_FAILED or now < old.expires_at + S.DMARC_GRACE / 2):
            new = old
        out.entries[domain] = new
    return out


def failed_entry(domain: str, detail: str, now: float) -> S.DmarcEntry:
    from .dns import FAILED_TTL

    return S.DmarcEntry(domain, None, S.DMARC_FAILED, int(now + FAILED_TTL), f"lookup failed: {detail}")


def entry_of(policy) -> S.DmarcEntry:
    """A :class:`listfilter.sync.dns.Policy` as the snapshot stores it."""
    return S.DmarcEntry(policy.domain, policy.applied, policy.status, int(policy.expires_at), policy.detail)


def look_up(domains: list[str], settings: DNSSettings, now: float | None = None) -> dict[str, S.DmarcEntry]:
    """Every domain's entry, asked through the resolver ``[dns]`` makes, within the bounds above."""
    from . import dns as D

    assert D.STATUS_FAILED == S.DMARC_FAILED and (D.STATUS_OK, D.STATUS_NONE) == S.DMARC_STATUSES[:2]
    now = time.time() if now is None else now
    try:
        D.make_resolver(settings)
    except D.ResolverError as exc:
        return {d: failed_entry(d, str(exc), now) for d in domains}
    by_org: dict[str, list[str]] = {}
    for domain in domains:
        by_org.setdefault(D.organisational_domain(domain), []).append(domain)
    # a task asks for a few subdomains of one organisational domain, which share its fallback lookup;
    # a campus with hundreds of subdomains is still asked in parallel
    groups = [g[i:i + GROUP] for g in by_org.values() for i in range(0, len(g), GROUP)]
    deadline = time.monotonic() + budget(settings)
    out: dict[str, S.DmarcEntry] = {}
    state = {"answered": False, "unreachable": False}
    lock = threading.Lock()
    local = threading.local()

    def task(group: list[str]) -> None:
        with lock:
            skip = state["unreachable"] or time.monotonic() > deadline
        if skip:
            why = (f"not asked: an earlier lookup got no answer within {settings.timeout:g} s"
                   if state["unreachable"] else f"not asked: the lookups ran past {budget(settings):g} s")
            with lock:
                out.update((d, failed_entry(d, why, now)) for d in group)
            return
        if not hasattr(local, "resolver"):
            local.resolver = D.make_resolver(settings)  # one per thread: nothing shared between lookups
        started = time.monotonic()
        policies = D.dmarc_policies(group, local.resolver, now=now)
        took = time.monotonic() - started
        with lock:
            out.update((d, entry_of(p)) for d, p in policies.items())
            if any(p.status != D.STATUS_FAILED for p in policies.values()):
                state["answered"] = True
            elif took >= 0.9 * settings.timeout and not state["answered"]:
                state["unreachable"] = True

    with ThreadPoolExecutor(max_workers=min(WORKERS, len(groups) or 1), thread_name_prefix="dmarc") as pool:
        for future in [pool.submit(task, g) for g in groups]:
            future.result()
    return {d: out.get(d) or failed_entry(d, "no answer was recorded", now) for d in domains}
