"""`dns-check`: what DNS says about each list domain (MX, SPF, DKIM, DMARC), the sending addresses' PTR, and the relay.

Every lookup goes through the resolver made from ``[dns]`` (:func:`listfilter.sync.dns.make_resolver`), so the
tests run this same code against an authoritative server of their own. Each finding is ok, warn or fail, with a
one-line fix; the command exits with the worst: 0 ok, 1 warn, 2 fail (docs/cli.md).
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import socket
import subprocess
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

import click

from . import cli, load_config

OK, WARN, FAIL = "ok", "warn", "fail"
EXIT = {OK: 0, WARN: 1, FAIL: 2}
SITE = "sending"  # the heading of the findings about the sending path, not about one domain


@dataclass(frozen=True)
class Finding:
    domain: str  # a list domain, or SITE
    check: str  # host, mx, spf, dkim, dmarc, ptr, relay
    status: str  # OK / WARN / FAIL
    message: str
    fix: str = ""  # one line, for warn and fail


class LookupFailed(Exception):
    """DNS did not answer (SERVFAIL, REFUSED, a timeout): not the same as "no such record"."""

    def __init__(self, message: str, timed_out: bool = False):
        super().__init__(message)
        self.timed_out = timed_out


def worst(findings: list[Finding]) -> str:
    return max((f.status for f in findings), key=EXIT.__getitem__, default=OK)


# ----------------------------------------------------------------- DNS helpers


def ask(resolver, name: str, rdtype: str) -> list:
    """The records of one type at ``name``; [] when the name or the type does not exist."""
    import dns.exception
    import dns.resolver

    try:
        return list(resolver.resolve(name, rdtype, search=False))
    except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer):
        return []
    except dns.resolver.LifetimeTimeout:
        raise LookupFailed(f"{rdtype} {name}: no answer within {resolver.lifetime:g} s", timed_out=True) from None
    except dns.resolver.NoNameservers as exc:
        from ..sync.dns import failure_text

        raise LookupFailed(f"{rdtype} {name}: {failure_text(exc)}") from None
    except (dns.exception.DNSException, UnicodeError, ValueError) as exc:
        raise LookupFailed(f"{rdtype} {name}: {exc}") from None


def addresses_of(resolver, name: str) -> list[str]:
    """A and AAAA of ``name`` (an address stands for itself)."""
    literal = _ip(name)
    if literal:
        return [literal]
    return [r.address for r in ask(resolver, name, "A")] + [r.address for r in ask(resolver, name, "AAAA")]


def texts(resolver, name: str) -> list[str]:
    from ..sync.dns import txt_strings

    return [txt_strings(r) for r in ask(resolver, name, "TXT")]


def _ip(text: str) -> str | None:
    try:
        return str(ipaddress.ip_address(text.removeprefix("ipv6:").removeprefix("IPv6:")))
    except ValueError:
        return None


def _name(text) -> str:
    return str(text).rstrip(".").lower()


# ----------------------------------------------------------------- the findings


def host_finding(hostname: str, addresses: list[str] | None, error: str | None) -> Finding:
    if error:
        return Finding(SITE, "host", FAIL, f"this host, {hostname}: lookup failed: {error}",
                       "check [dns] nameservers answer")
    if not addresses:
        return Finding(SITE, "host", FAIL, f"this host, {hostname}, has no A or AAAA record",
                       f"publish an A record for {hostname}, or set [dns] hostname to the name this host has in DNS")
    return Finding(SITE, "host", OK, f"this host is {hostname} ({', '.join(addresses)})")


def mx_finding(domain: str, resolver, expected_names: set[str], expected_addresses: set[str]) -> Finding:
    """Mail for ``domain`` must reach this host: every MX host one of the expected names or addresses."""
    want = ", ".join(sorted(expected_names) + sorted(expected_addresses))
    try:
        records = sorted(ask(resolver, domain, "MX"), key=lambda r: (r.preference, _name(r.exchange)))
        if not records:
            there = addresses_of(resolver, domain)
    except LookupFailed as exc:
        return Finding(domain, "mx", FAIL, f"lookup failed: {exc}", f"make the nameservers of {domain} answer")
    if not records:
        where = f"mail falls back to its A record ({', '.join(there)})" if there else "mail for the lists cannot be delivered"
        return Finding(domain, "mx", FAIL, f"{domain} has no MX record: {where}",
                       f"publish {domain}. MX 10 {sorted(expected_names)[0] if expected_names else want}.")
    good, other = [], []
    for r in records:
        host = _name(r.exchange)
        if host in ("", "."):  # RFC 7505 null MX: "accepts no mail"
            return Finding(domain, "mx", FAIL, f"{domain} publishes a null MX (accepts no mail)",
                           f"replace it with {domain}. MX 10 {sorted(expected_names)[0] if expected_names else want}.")
        try:
            addrs = set(addresses_of(resolver, host))
        except LookupFailed:
            addrs = set()
        shown = f"{r.preference} {host}" + (f" ({', '.join(sorted(addrs))})" if addrs else " (no address)")
        (good if host in expected_names or addrs & expected_addresses else other).append(shown)
    if not good:
        return Finding(domain, "mx", FAIL, f"MX {'; '.join(other)}: not this host ({want})",
                       f"point the MX of {domain} at {want}, or list the host in [dns] expect_mx")
    if other:
        return Finding(domain, "mx", WARN, f"MX {'; '.join(good)} is this host, but {'; '.join(other)} is not",
                       f"remove the other MX hosts, or make them forward {domain} to this host")
    return Finding(domain, "mx", OK, f"MX {'; '.join(good)}: this host")


@contextlib.contextmanager
def spf_through(resolver):
    """pyspf asks DNS through a module-level function (it takes no resolver): point it at ours meanwhile."""
    import dns.exception
    import dns.resolver
    import spf

    def lookup(name, qtype, strict=True, timeout=None):
        try:
            answer = resolver.resolve(name, qtype, search=False)
        except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer):
            return []
        except dns.exception.DNSException as exc:
            raise spf.TempError(f"DNS {exc}") from None
        out = []
        for rdata in answer:
            if qtype in ("A", "AAAA"):
                out.append(((name, qtype), rdata.address))
            elif qtype == "MX":
                out.append(((name, qtype), (rdata.preference, rdata.exchange)))
            elif qtype == "PTR":
                out.append(((name, qtype), rdata.target.to_text(True)))
            elif qtype in ("TXT", "SPF"):
                out.append(((name, qtype), rdata.strings))
        return out

    saved = spf.DNSLookup
    spf.DNSLookup = lookup
    try:
        yield spf
    finally:
        spf.DNSLookup = saved


def spf_finding(domain: str, resolver, required: list[str], also: list[str], hostname: str,
                timeout: float) -> Finding:
    """SPF (RFC 7208) for the list domain, the envelope sender of every post: pass for each sending address.

    ``required``: the addresses mail leaves from (anything but pass there is a warning or a failure);
    ``also``: this host's when a relay carries the mail, evaluated and shown, but not needed while every
    message leaves through the relay."""
    if not required:
        return Finding(domain, "spf", FAIL, "no sending address to check", "set [dns] sending_addresses")
    results: dict[str, str] = {}
    with spf_through(resolver) as spf:
        record = None
        for address in dict.fromkeys(required + also):
            q = spf.query(i=address, s=f"postmaster@{domain}", h=hostname, querytime=timeout)
            result, _code, explanation = q.check()
            results[address] = result if result != "permerror" else f"permerror ({explanation})"
            if record is None:
                with contextlib.suppress(spf.TempError, spf.PermError):
                    record = q.dns_spf(domain)
    shown = f"{record}: " if record else ""
    if all(r == "none" for r in results.values()):
        mechanisms = " ".join(f"ip{ipaddress.ip_address(a).version}:{a}" for a in required)
        return Finding(domain, "spf", FAIL, f"{domain} publishes no SPF record",
                       f'publish {domain}. TXT "v=spf1 {mechanisms} -all"')
    if any(r.startswith("temperror") for r in results.values()):
        return Finding(domain, "spf", FAIL, f"{shown}SPF lookup failed (temperror)",
                       f"make the nameservers of {domain} (and of every include:) answer")
    bad = [a for a in required if results[a] != "pass"]
    host = [a for a in also if a not in required]
    summary = ", ".join(f"{a} {results[a]}" for a in required)
    if host:
        summary += "; this host " + ", ".join(f"{a} {results[a]}" for a in host)
        if any(results[a] != "pass" for a in host):
            summary += " (not needed while mail leaves through the relay)"
    if bad:
        status = WARN if all(results[a] in ("softfail", "neutral") for a in bad) else FAIL
        mechanisms = " ".join(f"ip{ipaddress.ip_address(a).version}:{a}" for a in bad)
        return Finding(domain, "spf", status, f"{shown}{summary}",
                       f"add {mechanisms} (or an include: that covers it) to the SPF record of {domain}")
    return Finding(domain, "spf", OK, f"{shown}{summary}")


def dkim_finding(domain: str, selector: str, key_path: Path, resolver) -> Finding:
    """The DKIM record ``<selector>._domainkey.<domain>`` holds the public half of the private key at ``key_path``.

    Proven the way a receiver would: a test message is signed with the key and verified against the record."""
    import dkim
    import dkim.crypto

    name = f"{selector}._domainkey.{domain}"
    try:
        key = Path(key_path).read_bytes()
    except OSError as exc:
        return Finding(domain, "dkim", FAIL, f"{key_path}: {exc.strerror}", "check dkim_key (run as root)")
    try:
        found = texts(resolver, name)
    except LookupFailed as exc:
        return Finding(domain, "dkim", FAIL, f"lookup failed: {exc}", f"make the nameservers of {domain} answer")
    records = [t for t in found if "p=" in t.replace(" ", "")]
    publish = f"publish the TXT record opendkim-genkey wrote ({selector}.txt) at {name}"
    if not records:
        return Finding(domain, "dkim", FAIL, f"no DKIM record at {name}", publish)
    if len(records) > 1:
        return Finding(domain, "dkim", FAIL, f"{len(records)} DKIM records at {name}", f"keep one record at {name}")
    record = records[0]
    tags = {k.strip().lower(): v.strip() for k, _, v in (p.partition("=") for p in record.split(";")) if k.strip()}
    if not tags.get("p"):
        return Finding(domain, "dkim", FAIL, f"{name}: the key is revoked (empty p=)", publish)
    algorithm = b"ed25519-sha256" if tags.get("k", "rsa").lower() == "ed25519" else b"rsa-sha256"
    bits = None
    if algorithm == b"rsa-sha256":
        try:
            bits = dkim.crypto.parse_pem_private_key(key)["modulus"].bit_length()
        except Exception:
            return Finding(domain, "dkim", FAIL, f"{key_path} is not a PEM RSA private key", "point dkim_key at"
                           " the .private file opendkim-genkey wrote")
    message = (f"From: dns-check <postmaster@{domain}>\r\nTo: postmaster@{domain}\r\n"
               f"Subject: dns-check\r\n\r\nA test of the key.\r\n").encode()
    try:
        signed = dkim.sign(message, selector.encode(), domain.encode(), key, signature_algorithm=algorithm,
                           include_headers=[b"From", b"To", b"Subject"])
        # minkey=0: a short key is reported below for its size, not as a mismatch
        valid = dkim.verify(signed + message, dnsfunc=lambda _name, timeout=5: record.encode(), minkey=0)
    except Exception as exc:  # dkimpy raises its own and others' errors for a key it cannot use
        return Finding(domain, "dkim", FAIL, f"{name}: cannot sign with {key_path}: {exc}", publish)
    if not valid:
        return Finding(domain, "dkim", FAIL, f"{name} does not hold the public key of {key_path}",
                       f"{publish}, or point dkim_key at the key that record was made from")
    size = f", RSA {bits} bits" if bits else ""
    if bits is not None and bits < 1024:
        return Finding(domain, "dkim", FAIL, f"{name} matches {key_path}{size}: receivers ignore keys under 1024 bits"
                       " (RFC 8301)", "make a 2048-bit key: opendkim-genkey -b 2048")
    if bits is not None and bits < 2048:
        return Finding(domain, "dkim", WARN, f"{name} matches {key_path}{size}",
                       "make a 2048-bit key (opendkim-genkey -b 2048) at the next rotation")
    return Finding(domain, "dkim", OK, f"{name} matches {key_path}{size}")


def dmarc_finding(domain: str, resolver) -> Finding:
    """The list domain's own DMARC record, which applies to mail From its addresses: present, policy, reports."""
    from ..sync import dns as D

    policy = D.dmarc_policies([domain], resolver)[domain]
    if policy.status == D.STATUS_FAILED:
        return Finding(domain, "dmarc", FAIL, policy.detail, f"make the nameservers of {domain} answer")
    if policy.status == D.STATUS_NONE:
        return Finding(domain, "dmarc", WARN, policy.detail,
                       f'publish _dmarc.{D.organisational_domain(domain)}. TXT "v=DMARC1; p=none;'
                       f' rua=mailto:dmarc-reports@{D.organisational_domain(domain)}"')
    tags = D.parse_dmarc(policy.record or "") or {}
    where = f"_dmarc.{policy.found_at}" + (" (organisational domain)" if policy.found_at != domain else "")
    parts = [f"p={policy.applied}" + (" (its sp=)" if policy.found_at != domain and "sp" in tags else "")]
    if tags.get("pct", "100") != "100":
        parts.append(f"pct={tags['pct']}")
    unauthorised = []
    for tag, what in (("rua", "aggregate reports"), ("ruf", "failure reports")):
        uris = [u.strip() for u in tags.get(tag, "").split(",") if u.strip()]
        parts.append(f"{what} to {', '.join(uris)}" if uris else f"no {what}")
        for uri in uris:
            target = uri.partition("!")[0].removeprefix("mailto:").rpartition("@")[2].lower()
            if target and D.organisational_domain(target) != D.organisational_domain(policy.found_at):
                # RFC 7489 §7.1: another organisation's mailbox must say it accepts the reports.
                auth = f"{policy.found_at}._report._dmarc.{target}"
                try:
                    ok = any(D.parse_dmarc(t) is not None for t in texts(resolver, auth))
                except LookupFailed:
                    ok = False
                if not ok:
                    unauthorised.append((uri, auth))
    message = f"{where}: " + "; ".join(parts)
    if unauthorised:
        uri, auth = unauthorised[0]
        return Finding(domain, "dmarc", WARN, f"{message}; {uri} has not authorised them (no {auth})",
                       f'ask the report receiver to publish {auth}. TXT "v=DMARC1"')
    return Finding(domain, "dmarc", OK, message)


def ptr_finding(address: str, resolver) -> Finding:
    """Forward-confirmed reverse DNS (RFC 8601 §3 "iprev"): the PTR name of ``address`` resolves back to it."""
    import dns.reversename

    reverse = dns.reversename.from_address(address).to_text()
    try:
        names = [_name(r.target) for r in ask(resolver, reverse, "PTR")]
    except LookupFailed as exc:
        return Finding(SITE, "ptr", FAIL, f"{address}: lookup failed: {exc}",
                       f"ask whoever holds {address} to make its reverse zone answer")
    if not names:
        return Finding(SITE, "ptr", FAIL, f"{address} has no PTR record",
                       f"ask whoever holds {address} (the network's reverse zone) for a PTR naming the host")
    failed = None
    for name in names:
        try:
            forward = addresses_of(resolver, name)
        except LookupFailed as exc:
            failed, forward = exc, []
        if address in forward:
            return Finding(SITE, "ptr", OK, f"{address} -> {name} -> {address}")
    if failed is not None:
        return Finding(SITE, "ptr", FAIL, f"{address} -> {', '.join(names)}: lookup failed: {failed}",
                       f"make the nameservers of {names[0]} answer")
    return Finding(SITE, "ptr", FAIL, f"{address} -> {', '.join(names)}, which does not resolve back to {address}",
                   f"publish {names[0]}. A {address}, or correct the PTR of {address}")


@dataclass(frozen=True)
class RelayTarget:
    host: str  # as configured: a name, or an address
    port: int
    tls: str  # "may", "starttls", "implicit"
    verify: bool = False
    ca_file: Path | None = None
    username: str | None = None
    mx: bool = False  # an unbracketed Postfix relayhost: the MX of host first


def relay_finding(target: RelayTarget, addresses: list[str], hostname: str, timeout: float) -> Finding:
    """The relay accepts a connection from here and answers EHLO (and, as configured, STARTTLS and AUTH)."""
    where = f"{target.host}:{target.port}"
    if not addresses:
        return Finding(SITE, "relay", FAIL, f"{where}: the name has no address", f"check [site] relay ({target.host})")
    first = None
    for address in addresses:  # as Postfix does: the next address when one does not answer
        finding = _try_relay(target, address, hostname, timeout)
        if finding.status == OK:
            return finding
        first = first or finding
    return first


def _client(target: RelayTarget, address: str, timeout: float):
    """An smtplib client that connects to ``address`` (found through our resolver) while TLS names the host."""
    import smtplib

    class Client(smtplib.SMTP_SSL if target.tls == "implicit" else smtplib.SMTP):
        def _get_socket(self, host, port, timeout):
            sock = socket.create_connection((address, port), timeout, self.source_address)
            return self.context.wrap_socket(sock, server_hostname=self._host) if target.tls == "implicit" else sock

    if target.tls == "implicit":
        client = Client(timeout=timeout, context=_tls_context(target))
    else:
        client = Client(timeout=timeout)
    client._host = _ip(target.host) or target.host  # the name TLS sends and verifies (SNI)
    return client


def _tls_context(target: RelayTarget):
    import ssl

    if target.verify:
        return ssl.create_default_context(cafile=str(target.ca_file) if target.ca_file else None)
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE  # Postfix's "may" and unverified encryption do not check it either
    return context


def _try_relay(target: RelayTarget, address: str, hostname: str, timeout: float) -> Finding:
    import smtplib
    import ssl

    where = f"{target.host}:{target.port}" + (f" ({address})" if address != target.host else "")
    fix_connect = (f"check [site] relay, and that the relay lets this host ({hostname}) connect to port"
                   f" {target.port}")
    smtp = None
    try:
        smtp = _client(target, address, timeout)
        code, banner = smtp.connect(_ip(target.host) or target.host, target.port)
        banner = banner.decode(errors="replace").splitlines()[0] if banner else ""
        if code != 220:
            return Finding(SITE, "relay", FAIL, f"{where} greets {code} {banner}", fix_connect)
        code, _ = smtp.ehlo(hostname)
        if code != 250:
            return Finding(SITE, "relay", FAIL, f"{where}: EHLO {hostname} answered {code}",
                           f"ask the relay's administrators to accept EHLO {hostname}")
        offers = []
        if target.tls != "implicit" and smtp.has_extn("starttls"):
            try:
                smtp.starttls(context=_tls_context(target))
            except (ssl.SSLError, OSError, smtplib.SMTPException) as exc:
                status = FAIL if target.tls == "starttls" else WARN
                return Finding(SITE, "relay", status, f"{where} offers STARTTLS but TLS fails: {exc}",
                               "ask the relay's administrators to fix its certificate; with tls = \"may\""
                               " Postfix then sends in plaintext")
            smtp.ehlo(hostname)
            offers.append("STARTTLS")
        elif target.tls == "starttls":
            return Finding(SITE, "relay", FAIL, f"{where} does not offer STARTTLS",
                           'use the relay\'s submission port (587), or tls = "may" if it takes plaintext')
        elif target.tls == "implicit":
            offers.append("TLS")
        auth = smtp.esmtp_features.get("auth", "").split()
        if auth:
            offers.append("AUTH " + " ".join(auth))
        if target.username and not auth:
            return Finding(SITE, "relay", FAIL, f"{where} offers no AUTH (site.relay.username is set)",
                           "check the relay's port: logins are usually taken on 587")
        return Finding(SITE, "relay", OK, f"{where}: {banner}; EHLO {code}" + (", " + ", ".join(offers) if offers else ""))
    except (OSError, smtplib.SMTPException, ssl.SSLError) as exc:
        what = "no answer within {:g} s".format(timeout) if isinstance(exc, (socket.timeout, TimeoutError)) else str(exc)
        return Finding(SITE, "relay", FAIL, f"{where}: {what}", fix_connect)
    finally:
        if smtp is not None:
            with contextlib.suppress(Exception):
                smtp.quit()
            with contextlib.suppress(Exception):
                smtp.close()


def parse_relayhost(text: str) -> RelayTarget | None:
    """Postfix's ``relayhost`` (the first destination): ``[host]:port`` (no MX lookup) or ``host:port`` (MX)."""
    first = text.replace(",", " ").split()
    if not first:
        return None
    value = first[0]
    bracketed = value.startswith("[")
    if bracketed:
        host, _, rest = value[1:].partition("]")
        port = rest.removeprefix(":")
    else:
        host, _, port = value.partition(":")
    return RelayTarget(host=host, port=int(port) if port.isdigit() else 25, tls="may", mx=not bracketed)


def postfix_relayhost(config) -> str:
    """The relayhost Postfix has now (main.cf), for a site whose list config names none."""
    postconf = Path(config.postfix.command_directory) / "postconf"
    argv = [str(postconf)] + (["-c", str(config.postfix.config_directory)] if config.postfix.config_directory else [])
    try:
        proc = subprocess.run(argv + ["-h", "relayhost"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return ""
    return proc.stdout.strip() if proc.returncode == 0 else ""


def relay_target(config) -> RelayTarget | None:
    relay = config.site.relay
    if relay is None:
        return parse_relayhost(postfix_relayhost(config))
    # Postfix is given [host]:port (listfilter.sync.postfixconf.relayhost): no MX lookup.
    return RelayTarget(host=relay.host, port=relay.port or 25, tls=getattr(relay, "tls", "may"),
                       verify=getattr(relay, "verify", False), ca_file=getattr(relay, "ca_file", None),
                       username=getattr(relay, "username", None))


def relay_addresses(target: RelayTarget, resolver) -> list[str]:
    """Where Postfix connects for ``target``: the MX hosts' addresses (unbracketed), else the host's."""
    if target.mx and not _ip(target.host):
        exchanges = sorted(ask(resolver, target.host, "MX"), key=lambda r: r.preference)
        if exchanges:
            return [a for r in exchanges for a in addresses_of(resolver, _name(r.exchange))]
    return addresses_of(resolver, target.host)


def dkim_settings(domain_config) -> tuple[str, Path] | None:
    """(selector, private key) of a list domain that signs with DKIM (``dkim_selector``); None when it does not."""
    key = domain_config.dkim
    return None if key is None else (key.selector, Path(key.key))


def run_checks(config, resolver, domains: list[str], hostname: str) -> list[Finding]:
    """Every finding for ``domains`` (list domains of ``config``) and the sending path, in report order."""
    settings = config.dns
    timeout = settings.timeout
    findings: list[Finding] = []

    try:
        host_addresses, host_error = addresses_of(resolver, hostname), None
    except LookupFailed as exc:
        if exc.timed_out:  # the nameservers are not there: every other lookup would wait as long
            servers = ", ".join(resolver.nameservers)
            return [Finding(SITE, "dns", FAIL, f"no answer from {servers} (port {resolver.port}) within"
                                               f" {resolver.lifetime:g} s (asked for {hostname})",
                            "check [dns] nameservers and port, or the host's /etc/resolv.conf")]
        host_addresses, host_error = [], str(exc)
    findings.append(host_finding(hostname, host_addresses, host_error))

    target = relay_target(config)
    relay_addrs: list[str] = []
    relay_failed = None
    if target is not None:
        try:
            relay_addrs = relay_addresses(target, resolver)
        except LookupFailed as exc:
            relay_failed = Finding(SITE, "relay", FAIL, f"{target.host}: lookup failed: {exc}",
                                   "check [dns] nameservers answer")
    if settings.sending_addresses:
        sending = list(settings.sending_addresses)
    elif target is not None:
        sending = relay_addrs
    else:
        sending = host_addresses
    loopback = [a for a in sending if ipaddress.ip_address(a).is_loopback]
    if loopback:
        findings.append(Finding(SITE, "sending", WARN, f"sending from {', '.join(loopback)}: a loopback address",
                                "set [dns] sending_addresses to the addresses the relay sends from"))
    for address in sending:
        findings.append(ptr_finding(address, resolver))
    if relay_failed is not None:
        findings.append(relay_failed)
    elif target is not None:
        findings.append(relay_finding(target, relay_addrs, hostname, timeout))
    else:
        findings.append(Finding(SITE, "relay", OK, "no relay: this host delivers to the receivers itself"))

    expected_names = {e for e in settings.expect_mx if not _ip(e)} or ({hostname} if not settings.expect_mx else set())
    expected_addresses = {e for e in settings.expect_mx if _ip(e)}
    for name in expected_names:
        with contextlib.suppress(LookupFailed):
            expected_addresses.update(addresses_of(resolver, name))
    also = host_addresses if target is not None else []
    for domain in domains:
        findings.append(mx_finding(domain, resolver, expected_names, expected_addresses))
        findings.append(spf_finding(domain, resolver, sending, also, hostname, timeout))
        dkim = dkim_settings(config.domains[domain])
        if dkim is not None:
            findings.append(dkim_finding(domain, dkim[0], dkim[1], resolver))
        findings.append(dmarc_finding(domain, resolver))
    return findings


# ----------------------------------------------------------------- the command


@cli.command("dns-check")
@click.option("--domain", "only", metavar="DOMAIN", help="Check this list domain only (the sending path is always checked).")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_context
def dns_check(ctx, only, as_json):
    """Check the DNS of each list domain and the relay.

    MX, SPF, DKIM (when configured), DMARC; the PTR of the sending addresses;
    SMTP to the relay. Asks the nameservers in [dns] (default: the host's).

    Exit status: 0 all ok, 1 a warning, 2 a failure, 78 the config is invalid.
    """
    from ..sync.dns import make_resolver

    config = load_config(ctx)
    domains = sorted(config.domains)
    if only is not None:
        only = only.strip().rstrip(".").lower()
        if only not in config.domains:
            raise click.BadParameter(f"{only} is not a list domain (the config has {', '.join(domains)})",
                                     param_hint="--domain")
        domains = [only]
    resolver = make_resolver(config.dns)
    hostname = config.dns.hostname or socket.getfqdn().lower()
    findings = run_checks(config, resolver, domains, hostname)
    status = worst(findings)
    if as_json:
        click.echo(json.dumps({"status": status, "hostname": hostname,
                               "findings": [asdict(f) for f in findings]}, indent=2))
    else:
        _print(findings)
    sys.exit(EXIT[status])


def _print(findings: list[Finding]) -> None:
    heading = None
    for f in findings:
        if f.domain != heading:
            heading = f.domain
            click.echo(f"{heading}:")
        click.echo(f"  {f.status:4}  {f.check:7} {f.message}")
        if f.fix:
            click.echo(f"  {'':4}  {'':7} fix: {f.fix}")
    counts = {s: sum(f.status == s for f in findings) for s in (OK, WARN, FAIL)}
    click.echo(f"{counts[OK]} ok, {counts[WARN]} warn, {counts[FAIL]} fail")
