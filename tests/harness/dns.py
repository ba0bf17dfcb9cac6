"""A real authoritative DNS server (Knot DNS, Debian's ``knot``) for tests.

It listens on 127.0.0.1 and a free port (UDP and TCP) and serves zone files
written under ``base``; nothing of the host's DNS configuration is touched::

    with DNSServer(tmp_path / "dns", {"example.edu": '_dmarc IN TXT "v=DMARC1; p=reject"'}) as dns:
        answer = dns.resolver().resolve("_dmarc.example.edu", "TXT")
        dns.set_zone("example.edu", "@ IN MX 10 mx.example.edu.\\nmx IN A 192.0.2.25")

A zone is given as zone-file lines relative to its origin, without ``$ORIGIN``,
SOA or NS: the harness adds those (``$TTL 300``, an SOA whose serial grows with
every :meth:`DNSServer.set_zone`, and ``NS ns.harness.invalid.``). A name in no
zone is answered REFUSED (dnspython's resolver then raises NoNameservers);
:meth:`DNSServer.set_servfail` makes a zone answer SERVFAIL.

Knot was chosen over NSD because it answers its first query about 60 ms after
it is started (NSD: 200 ms), and because ``knotc`` reloads one zone, or the
whole zone list, over a unix socket with no keys to set up. Every change is
confirmed by asking the server for the zone's SOA serial, so a zone is being
served when :meth:`set_zone` returns.

Under ``base``: ``knot.conf``, ``<origin>.zone`` per zone, ``knot.sock``,
``knot.log`` (its tail is in every :class:`DNSError`), and Knot's own timer
database.
"""

from __future__ import annotations

import contextlib
import shutil
import socket
import subprocess
import time
from pathlib import Path

import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.query
import dns.rcode
import dns.rdatatype
import dns.resolver

__all__ = ["DNSServer", "DNSError", "KNOTD", "KNOTC", "free_dns_port"]

KNOTD = shutil.which("knotd") or "/usr/sbin/knotd"
KNOTC = shutil.which("knotc") or "/usr/sbin/knotc"
START_TIMEOUT = 10.0
CHANGE_TIMEOUT = 10.0


class DNSError(RuntimeError):
    """The server did not start, or a zone change was not served in time."""


def free_dns_port(host: str = "127.0.0.1") -> int:
    """A port free for both UDP and TCP on ``host`` a moment ago."""
    for _ in range(50):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
            udp.bind((host, 0))
            port = udp.getsockname()[1]
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as tcp:
                try:
                    tcp.bind((host, port))
                except OSError:
                    continue
                return port
    raise DNSError(f"no port free for both UDP and TCP on {host}")


def _die_with_parent() -> None:
    """In the child: have Linux stop knotd when the test process dies without calling stop() (prctl(2))."""
    import ctypes
    import signal

    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def _origin(origin: str) -> str:
    """``Example.EDU.`` -> ``example.edu`` (the key of a zone here)."""
    text = origin.strip().rstrip(".").lower()
    if not text:
        raise ValueError("a zone origin must not be empty (the root zone is not served)")
    return text


class DNSServer:
    """Knot DNS serving ``zones`` on 127.0.0.1:``port``."""

    def __init__(self, base: Path, zones: dict[str, str] | None = None):
        self.base = Path(base)
        self.address = "127.0.0.1"
        self.port = 0
        self._zones: dict[str, str] = {_origin(o): r for o, r in (zones or {}).items()}
        self._servfail: set[str] = set()
        self._serial = 0
        self._proc: subprocess.Popen | None = None

    # -- paths ---------------------------------------------------------------

    @property
    def conf_path(self) -> Path:
        return self.base / "knot.conf"

    @property
    def socket_path(self) -> Path:
        return self.base / "knot.sock"

    @property
    def log_path(self) -> Path:
        return self.base / "knot.log"

    def zone_path(self, origin: str) -> Path:
        return self.base / f"{_origin(origin)}.zone"

    # -- life cycle ----------------------------------------------------------

    def start(self) -> "DNSServer":
        if self._proc is not None:
            return self
        if not Path(KNOTD).exists():
            raise DNSError(f"{KNOTD} not found: install Debian's knot package (tests/run does, as root)")
        self.base.mkdir(parents=True, exist_ok=True)
        self.port = free_dns_port(self.address)
        for origin, records in self._zones.items():
            self._write_zone(origin, records)
        self._write_conf()
        with open(self.base / "knotd.stderr", "wb") as stderr:
            self._proc = subprocess.Popen(
                [KNOTD, "--config", str(self.conf_path)],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=stderr,
                preexec_fn=_die_with_parent,
            )
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            if self._proc.poll() is not None:
                code = self._proc.returncode
                self._proc = None
                raise DNSError(f"knotd exited with {code} while starting{self._log_tail()}")
            if self._answers() and all(self._serving(o) for o in self._zones):
                return self
            if time.monotonic() > deadline:
                self.stop()
                raise DNSError(f"knotd did not serve its zones within {START_TIMEOUT:.0f} s{self._log_tail()}")
            time.sleep(0.01)

    def stop(self) -> None:
        proc, self._proc = self._proc, None
        if proc is None:
            return
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    def __enter__(self) -> "DNSServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # -- zones ---------------------------------------------------------------

    @property
    def zones(self) -> dict[str, str]:
        """The zones as given (origin -> records), a copy."""
        return dict(self._zones)

    def set_zone(self, origin: str, records: str) -> None:
        """Serve ``records`` as zone ``origin`` (new or replaced); served when this returns."""
        origin = _origin(origin)
        new = origin not in self._zones or origin in self._servfail
        self._zones[origin] = records
        self._servfail.discard(origin)
        if self._proc is None:
            return
        serial = self._write_zone(origin, records)
        if new:
            self._write_conf()
            self._knotc("reload")
        else:
            self._knotc("--blocking", "zone-reload", origin + ".")
        self._wait(lambda: self._serving(origin, serial), f"zone {origin} serial {serial}")

    def set_servfail(self, origin: str) -> None:
        """Make every query in zone ``origin`` answer SERVFAIL (a zone the server cannot load).

        Knot keeps serving the last good copy when a reload fails, so the zone is
        taken out of the configuration first and then put back with a file that
        does not parse."""
        origin = _origin(origin)
        self._zones.pop(origin, None)
        self._servfail.add(origin)
        if self._proc is None:
            return
        self._write_conf(skip=origin)
        self._knotc("reload")
        self._wait(lambda: self._rcode(origin, "SOA") == dns.rcode.REFUSED, f"zone {origin} removed")
        self.zone_path(origin).write_text("this is not a zone file\n")
        self._write_conf()
        self._knotc("reload")
        self._wait(lambda: self._rcode(origin, "SOA") == dns.rcode.SERVFAIL, f"zone {origin} failing")

    def resolver(self, timeout: float = 2.0) -> dns.resolver.Resolver:
        """A dnspython stub resolver that asks this server only (no /etc/resolv.conf)."""
        if self._proc is None:
            raise DNSError("the DNS server is not running")
        resolver = dns.resolver.Resolver(configure=False)
        resolver.nameservers = [self.address]
        resolver.port = self.port
        resolver.timeout = timeout
        resolver.lifetime = timeout
        return resolver

    # -- internals -----------------------------------------------------------

    def _write_zone(self, origin: str, records: str) -> int:
        self._serial += 1
        text = (
            f"$ORIGIN {origin}.\n"
            "$TTL 300\n"
            f"@ IN SOA ns.harness.invalid. hostmaster.harness.invalid. {self._serial} 3600 600 86400 60\n"
            "@ IN NS ns.harness.invalid.\n"
            f"{records.strip()}\n"
        )
        tmp = self.zone_path(origin).with_suffix(".tmp")
        tmp.write_text(text)
        tmp.replace(self.zone_path(origin))
        return self._serial

    def _write_conf(self, skip: str | None = None) -> None:
        origins = sorted((set(self._zones) | self._servfail) - {skip})
        lines = [
            "server:",
            f'    rundir: "{self.base}"',
            f"    listen: {self.address}@{self.port}",
            "log:",
            f'  - target: "{self.log_path}"',
            "    any: info",
            "database:",
            f'    storage: "{self.base}"',
            "template:",
            "  - id: default",
            f'    storage: "{self.base}"',
            '    file: "%s.zone"',
            # Serve exactly the files written here: never write back, keep no journal.
            "    zonefile-sync: -1",
            "    zonefile-load: whole",
            "    journal-content: none",
            "control:",
            f'    listen: "{self.socket_path}"',
        ]
        if origins:
            lines.append("zone:")
            lines += [f"  - domain: {o}." for o in origins]
        tmp = self.conf_path.with_suffix(".tmp")
        tmp.write_text("\n".join(lines) + "\n")
        tmp.replace(self.conf_path)

    def _knotc(self, *args: str) -> None:
        proc = subprocess.run(
            [KNOTC, "--config", str(self.conf_path), "--socket", str(self.socket_path), *args],
            capture_output=True,
            text=True,
            timeout=CHANGE_TIMEOUT,
        )
        if proc.returncode != 0:
            raise DNSError(f"knotc {' '.join(args)} failed: {proc.stdout}{proc.stderr}{self._log_tail()}")

    def _query(self, name: str, rdtype: str, timeout: float = 0.2) -> dns.message.Message | None:
        query = dns.message.make_query(name, rdtype)
        query.flags &= ~dns.flags.RD
        try:
            return dns.query.udp(query, self.address, port=self.port, timeout=timeout)
        except (OSError, dns.exception.Timeout):
            return None

    def _answers(self) -> bool:
        # A short wait: a query sent before knotd has bound its socket is lost, not refused.
        return self._query("harness.invalid.", "SOA", timeout=0.02) is not None

    def _rcode(self, origin: str, rdtype: str) -> int | None:
        response = self._query(origin + ".", rdtype)
        return None if response is None else response.rcode()

    def _serving(self, origin: str, serial: int | None = None) -> bool:
        response = self._query(origin + ".", "SOA")
        if response is None or response.rcode() != dns.rcode.NOERROR:
            return False
        for rrset in response.answer:
            if rrset.rdtype == dns.rdatatype.SOA:
                return serial is None or rrset[0].serial == serial
        return False

    def _wait(self, done, what: str) -> None:
        deadline = time.monotonic() + CHANGE_TIMEOUT
        while not done():
            if self._proc is None or self._proc.poll() is not None:
                raise DNSError(f"knotd is not running (waiting for {what}){self._log_tail()}")
            if time.monotonic() > deadline:
                raise DNSError(f"{what} not served within {CHANGE_TIMEOUT:.0f} s{self._log_tail()}")
            time.sleep(0.01)

    def _log_tail(self, lines: int = 20) -> str:
        text = ""
        for path in (self.log_path, self.base / "knotd.stderr"):
            try:
                text += path.read_text(errors="replace")
            except OSError:
                pass
        tail = text.splitlines()[-lines:]
        return ("\n" + "\n".join(tail)) if tail else ""
