"""DNS on the sync side: the one resolver made from ``[dns]``, and DMARC policy discovery.

The mail side never asks DNS (docs/DESIGN: a post must not wait on the
network); sync looks DMARC policies up here and hands them over in the
snapshot, and ``listfilter dns-check`` asks through the same resolver.

Policy discovery follows RFC 7489 §6.6.3: the TXT records at
``_dmarc.<domain>``; when there is no DMARC record there, those at
``_dmarc.<organisational domain>``, the domain one label below its public
suffix (the Public Suffix List, RFC 7489 §3.2). A lookup that fails
(SERVFAIL, REFUSED, a timeout) is reported as ``failed``, never as "no
policy": the caller treats a failed domain as strict.
"""

from __future__ import annotations

import functools
import time
from dataclasses import dataclass
from typing import Iterable

import dns.exception
import dns.name
import dns.rdatatype
import dns.resolver

from ..common.errors import ListfilterError
from .config import DNSSettings

__all__ = ["Policy", "ResolverError", "make_resolver", "dmarc_policies", "organisational_domain", "parse_dmarc", "failure_text",
           "txt_strings", "STATUS_OK", "STATUS_NONE", "STATUS_FAILED"]

STATUS_OK = "ok"  # a DMARC record was found (at the domain or its organisational domain)
STATUS_NONE = "none"  # the domain publishes no DMARC record: receivers apply no DMARC policy
STATUS_FAILED = "failed"  # the lookup failed: treat as strict

#: Bounds on how long an answer is kept, whatever its TTL: a TTL of 0 would
#: make every policy stale at once, and a week-long one would hide a change.
MIN_TTL = 60
MAX_TTL = 86400
#: How long a failed lookup stands before it is retried (it is treated as strict meanwhile).
FAILED_TTL = 300
#: The negative-caching TTL when an NXDOMAIN/NODATA answer carries no SOA (RFC 2308 §5).
NEGATIVE_TTL = 3600
POLICIES = ("none", "quarantine", "reject")


class ResolverError(ListfilterError):
    """No resolver could be made from ``[dns]`` and the host's resolv.conf."""


@dataclass(frozen=True)
class Policy:
    """The DMARC policy a receiver applies to mail From ``domain``."""

    domain: str
    policy: str | None  # p= of the record found: none / quarantine / reject; None: no record or failed
    subdomain_policy: str | None  # sp= (p= when absent); what applies to subdomains of the record's domain
    expires_at: float  # Unix time: look it up again after this (from the answer's TTL)
    status: str  # STATUS_OK / STATUS_NONE / STATUS_FAILED
    detail: str  # one line: where the record was found, or why there is none, or what failed
    found_at: str | None = None  # the domain whose _dmarc record applies (domain or its organisational domain)
    record: str | None = None  # that record's text

    @property
    def applied(self) -> str | None:
        """The policy a receiver applies to this domain: sp= when the record is the organisational domain's."""
        if self.status != STATUS_OK:
            return None
        return self.policy if self.found_at == self.domain else self.subdomain_policy

    @property
    def strict(self) -> bool:
        """Whether a post From this domain needs the mitigation: quarantine, reject, or unknown (failed)."""
        return self.status == STATUS_FAILED or self.applied in ("quarantine", "reject")


def make_resolver(settings: DNSSettings) -> dns.resolver.Resolver:
    """The dnspython resolver for ``[dns]``: its nameservers, or the host's /etc/resolv.conf when none are set."""
    try:
        resolver = dns.resolver.Resolver(configure=not settings.nameservers)
    except dns.resolver.NoResolverConfiguration as exc:
        raise ResolverError(f"no nameservers: set [dns] nameservers in the config, or fix /etc/resolv.conf ({exc})") from None
    if settings.nameservers:
        resolver.nameservers = list(settings.nameservers)
    resolver.port = settings.port
    resolver.timeout = settings.timeout
    resolver.lifetime = settings.timeout
    resolver.cache = None  # every sync asks afresh; TTLs are carried in the snapshot instead
    return resolver


@functools.lru_cache(maxsize=1)
def _psl():
    from publicsuffixlist import PublicSuffixList

    return PublicSuffixList()


def organisational_domain(domain: str) -> str:
    """The registrable domain (RFC 7489 §3.2): ``lists.cs.example.edu`` -> ``example.edu``.

    A domain that is itself a public suffix (or unknown to the list) is its own organisational domain."""
    domain = _normal(domain)
    return _psl().privatesuffix(domain) or domain


def txt_strings(rdata) -> str:
    """One TXT record's text: its character-strings joined (RFC 7208 §3.3, RFC 7489 §6.6.3), as text."""
    return b"".join(rdata.strings).decode("utf-8", errors="replace")


def parse_dmarc(text: str) -> dict[str, str] | None:
    """The tags of a DMARC record (lower-cased names), or None when ``text`` is not one (no leading v=DMARC1)."""
    tags: dict[str, str] = {}
    for i, part in enumerate(text.split(";")):
        name, eq, value = part.partition("=")
        name, value = name.strip().lower(), value.strip()
        if i == 0:
            if name != "v" or not eq or value.upper() != "DMARC1":
                return None
        if name and eq and name not in tags:
            tags[name] = value
    return tags


def dmarc_policies(domains: Iterable[str], resolver: dns.resolver.Resolver, now: float | None = None) -> dict[str, Policy]:
    """Look up the DMARC policy of every domain in ``domains``; keys are the lower-cased domains."""
    now = time.time() if now is None else now
    lookups: dict[str, _Lookup] = {}  # _dmarc.<name> answers, shared by domains with one organisational domain

    def lookup(name: str) -> _Lookup:
        if name not in lookups:
            lookups[name] = _lookup_dmarc(name, resolver)
        return lookups[name]

    out: dict[str, Policy] = {}
    for raw in domains:
        domain = _normal(raw)
        if domain in out:
            continue
        out[domain] = _policy(domain, lookup, now)
    return out


# --------------------------------------------------------------------------


@dataclass(frozen=True)
class _Lookup:
    records: tuple[str, ...]  # the DMARC records found (v=DMARC1 …), usually one
    ttl: int
    error: str | None  # a failed lookup: what failed


def _normal(domain: str) -> str:
    text = domain.strip().rstrip(".").lower()
    if not text.isascii():
        try:
            text = text.encode("idna").decode("ascii")
        except UnicodeError:
            pass  # the lookup reports it
    return text


def _lookup_dmarc(name: str, resolver: dns.resolver.Resolver) -> _Lookup:
    qname = f"_dmarc.{name}"
    try:
        answer = resolver.resolve(qname, "TXT", search=False)
    except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer) as exc:
        return _Lookup((), _negative_ttl(exc), None)
    except dns.resolver.LifetimeTimeout:
        return _Lookup((), FAILED_TTL, f"{qname}: no answer within {resolver.lifetime:g} s")
    except dns.resolver.NoNameservers as exc:
        return _Lookup((), FAILED_TTL, f"{qname}: {failure_text(exc)}")
    except (dns.exception.DNSException, UnicodeError, ValueError) as exc:
        return _Lookup((), FAILED_TTL, f"{qname}: {exc}")
    records = tuple(t for t in (txt_strings(r) for r in answer) if parse_dmarc(t) is not None)
    return _Lookup(records, answer.rrset.ttl if answer.rrset is not None else NEGATIVE_TTL, None)


def _policy(domain: str, lookup, now: float) -> Policy:
    def expires(ttl: int) -> float:
        return now + min(max(ttl, MIN_TTL), MAX_TTL)

    first = lookup(domain)
    found_at, result = domain, first
    if first.error is None and not first.records:
        org = organisational_domain(domain)
        if org != domain:
            found_at, result = org, lookup(org)
    if result.error is not None:
        return Policy(domain, None, None, now + FAILED_TTL, STATUS_FAILED, f"lookup failed: {result.error}")
    ttl = min(first.ttl, result.ttl)
    if not result.records:
        where = f"_dmarc.{domain}" + (f" nor _dmarc.{found_at}" if found_at != domain else "")
        return Policy(domain, None, None, expires(ttl), STATUS_NONE, f"no DMARC record at {where}")
    if len(result.records) > 1:
        # RFC 7489 §6.6.3 step 5: more than one record, no DMARC processing at all.
        return Policy(domain, None, None, expires(ttl), STATUS_NONE,
                      f"{len(result.records)} DMARC records at _dmarc.{found_at}: receivers apply none")
    tags = parse_dmarc(result.records[0])
    p = tags.get("p", "").lower()
    sp = tags.get("sp", "").lower() or p
    if p not in POLICIES or sp not in POLICIES:
        # RFC 7489 §6.6.3 step 6: an invalid p= or sp= reads as p=none when rua= is there, else no DMARC.
        if "rua" in tags:
            return Policy(domain, "none", "none", expires(ttl), STATUS_OK,
                          f"_dmarc.{found_at}: invalid p= or sp= with rua=: read as p=none", found_at, result.records[0])
        return Policy(domain, None, None, expires(ttl), STATUS_NONE, f"_dmarc.{found_at}: invalid p= or sp=: ignored")
    where = f"_dmarc.{found_at}" + (" (organisational domain)" if found_at != domain else "")
    return Policy(domain, p, sp, expires(ttl), STATUS_OK, f"{where}: p={p}" + (f" sp={sp}" if "sp" in tags else ""),
                  found_at, result.records[0])


def _negative_ttl(exc: dns.exception.DNSException) -> int:
    """RFC 2308 §5: a negative answer is kept for the smaller of its SOA's TTL and the SOA MINIMUM."""
    responses = []
    if isinstance(exc, dns.resolver.NXDOMAIN):
        responses = list(exc.responses().values())
    elif exc.kwargs.get("response") is not None:
        responses = [exc.kwargs["response"]]
    for response in responses:
        for rrset in response.authority:
            if rrset.rdtype == dns.rdatatype.SOA:
                return min(rrset.ttl, rrset[0].minimum)
    return NEGATIVE_TTL


def failure_text(exc: dns.resolver.NoNameservers) -> str:
    """'127.0.0.1 answered SERVFAIL' rather than dnspython's whole sentence."""
    parts = []
    for err in exc.kwargs.get("errors") or []:
        # dnspython 2: (server, tcp, port, error, response), the server as "Do53:127.0.0.1@53"
        server, error = str(err[0]).removeprefix("Do53:"), err[3] if len(err) > 3 else err[-1]
        parts.append(f"{server} answered {error}")
    return "; ".join(parts) or str(exc)
