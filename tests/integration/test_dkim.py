"""DKIM through a real OpenDKIM: the copies listfilter hands back are signed by the list domain.

A private Postfix wired as `listfilter postfix-config` renders it (its main.cf
carries the rendered non_smtpd_milters line), a real opendkim started with the
rendered KeyTable, SigningTable and opendkim.conf settings, keys made by
opendkim-genkey, and their TXT records (opendkim-genkey's own .txt files,
verbatim) served by a real authoritative DNS server (tests/harness/dns.py).
Each copy that reaches the sink is verified with dkimpy against that server.

Two list domains with a key each: the signature's domain must be the list's,
though every post's From names the poster. Mail that arrives by SMTP must not
be signed on the way in (OpenDKIM is on non_smtpd_milters, not smtpd_milters).

The same DNS server answers sync's DMARC lookups (the config's ``[dns]``):
example.edu publishes no DMARC record, so its posts keep their From;
example.com publishes ``p=reject``, so a post from there is munged, and its
From (the list's address) is then aligned with the signature's ``d=``.
"""

from __future__ import annotations

import email
import email.policy
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import dkim
import dkim.util
import pytest

from listfilter.sync import config as C
from listfilter.sync import postfixconf

from ..harness.dns import DNSServer
from ..harness.postfix import PostfixInstance, ensure_user, free_port, swaks, traversable_tmpdir
from ..harness.smtpsink import SMTPSink
from ..harness.wiring import install_programs, listfilter_spool, wire

pytestmark = pytest.mark.integration

OPENDKIM = "/usr/sbin/opendkim"
GENKEY = "/usr/sbin/opendkim-genkey"
DOMAIN, DEV = "lists.example.edu", "lists-dev.example.edu"
STUDENTS, DEVS = f"students@{DOMAIN}", f"devs@{DEV}"
MEMBERS = {"alice@example.org", "bob@example.net"}
STRICT = "dean@example.com"  # a poster whose domain publishes DMARC p=reject
#: sync's DMARC lookups, answered by the test's DNS server: a domain in no zone would be a failed lookup
DMARC_ZONES = {"example.edu": "", "example.com": '_dmarc IN TXT "v=DMARC1; p=reject"'}

LISTS = f"""
[domains."{DOMAIN}"]
course = "CS 199"

[domains."{DEV}"]
dkim_selector = "dev2026"
dkim_key = "{{keys}}/dev.private"

[lists.students]
display_name = "CS 199 Students"
members = {{{{ emails = ["alice@example.org", "bob@example.net"] }}}}
posters = ["prof@example.edu", "{STRICT}"]
reply_to = "prof@example.edu"
domains = ["{DOMAIN}"]

[lists.devs]
members = {{{{ emails = ["carol@example.com"] }}}}
posters = ["prof@example.edu"]
domains = ["{DEV}"]
"""


def genkey(directory: Path, domain: str, selector: str) -> tuple[Path, str]:
    """opendkim-genkey's private key file and its TXT record (zone-file lines), as an administrator makes them."""
    directory.mkdir(parents=True, exist_ok=True)
    subprocess.run([GENKEY, "-b", "2048", "-D", str(directory), "-d", domain, "-s", selector],
                   check=True, capture_output=True)
    return directory / f"{selector}.private", (directory / f"{selector}.txt").read_text()


def give_to_opendkim(*paths: Path) -> None:
    """docs/deliverability.md: the keys belong to the opendkim user, directories 0700, files 0600."""
    user = pwd.getpwnam("opendkim")
    for path in paths:
        os.chown(path, user.pw_uid, user.pw_gid)
        path.chmod(0o700 if path.is_dir() else 0o600)


class OpenDKIM:
    """opendkim in the foreground with the rendered settings (plus a pid file of its own)."""

    def __init__(self, conf: Path, port: int):
        self.conf, self.port, self.proc = conf, port, None
        self.log = conf.with_suffix(".log")

    def start(self) -> None:
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen([OPENDKIM, "-f", "-x", str(self.conf)], stdout=log, stderr=log)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, f"opendkim exited {self.proc.returncode}: {self.log.read_text()}"
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return
            except OSError:
                time.sleep(0.05)
        raise AssertionError(f"opendkim not listening on {self.port}: {self.log.read_text()}")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None


class Site:
    def __init__(self, base: Path, pf: PostfixInstance, sink: SMTPSink, dns: DNSServer, opendkim: OpenDKIM):
        self.base, self.pf, self.sink, self.dns, self.opendkim = base, pf, sink, dns, opendkim

    def send(self, raw: bytes, *, to: str, sender: str = "prof@example.edu") -> str:
        path = self.base / f"msg-{time.time_ns()}.eml"
        path.write_bytes(raw[:-1] if raw.endswith(b"\n") else raw)
        proc = swaks("--to", to, "--from", sender, "--data", f"@{path}", port=self.pf.smtpd_port)
        assert "<-  250" in proc.stdout and "queued as" in proc.stdout, proc.stdout + proc.stderr
        return proc.stdout

    def received(self, count: int, timeout: float = 30) -> list:
        assert self.sink.wait_for(count, timeout=timeout), self.pf.log_tail(30)
        assert self.pf.wait_queue_empty(timeout=30), (self.pf.queue(), self.pf.log_tail(30))
        got = self.sink.snapshot()
        assert len(got) == count, [m.rcpt_tos for m in got]
        return got

    @property
    def dnsfunc(self):
        return key_lookup(self.dns)


def key_lookup(dns: DNSServer):
    """dkimpy's key lookup (its ``dnsfunc``), asked of the test's DNS server, not the host's resolver."""

    def txt(name: bytes, timeout: float = 5) -> bytes:
        answer = dns.resolver(timeout=timeout).resolve(name.decode().rstrip("."), "TXT")
        return b"".join(b"".join(r.strings) for r in answer)

    return txt


@pytest.fixture(scope="module")
def site():
    for program in (OPENDKIM, GENKEY):
        assert Path(program).exists(), f"{program} missing: install Debian's opendkim and opendkim-tools (tests/run does)"
    ensure_user("listfilter")
    # OpenDKIM refuses a key below a directory others may write ("key data is not secure"), as /tmp is
    keyroot = Path(tempfile.mkdtemp(prefix="listfilter-dkim-", dir="/run"))
    try:
        with traversable_tmpdir() as base, SMTPSink() as sink:
            keyroot.chmod(0o755)
            keys = keyroot / "keys"
            main_key, main_txt = genkey(keys / DOMAIN, DOMAIN, "lists2026")  # the default path: key_dir/DOMAIN/SELECTOR.private
            dev_key, dev_txt = genkey(keyroot / "dev", DEV, "dev2026")
            dev_key = dev_key.rename(keys / "dev.private")
            give_to_opendkim(keys, keys / DOMAIN, main_key, dev_key)
            milter_port = free_port()
            program = install_programs(base / "bin")
            pf = PostfixInstance(base / "postfix", relay_port=sink.port)
            config_path = base / "lists.toml"
            (base / "roster.csv").write_text("email,name,enrollment_type,active,semester,course\n")
            config_path.write_text(f"""
[site]
timezone = "America/Chicago"
state_dir = "{base / 'state'}"
owners = ["prof@example.edu"]
[postfix]
config_directory = "{pf.config_dir}"
map_type = "hash"
[roster]
source = "csv"
csv = "{base / 'roster.csv'}"
[dkim]
socket = "inet:127.0.0.1:{milter_port}"
selector = "lists2026"
key_dir = "{keys}"
table_dir = "{base / 'opendkim'}"
{LISTS.format(keys=keys)}""")
            config = wire(pf, config_path, program)
            listfilter_spool(config)
            # OpenDKIM's files exactly as postfix-config prints them, comments and all
            tables = base / "opendkim"
            tables.mkdir()
            (tables / "key.table").write_text(postfixconf.key_table(config))
            (tables / "signing.table").write_text(postfixconf.signing_table(config))
            conf = tables / "opendkim.conf"
            conf.write_text(postfixconf.opendkim_conf(config) + f"PidFile {tables / 'opendkim.pid'}\n")
            opendkim = OpenDKIM(conf, milter_port)
            with DNSServer(base / "dns", {DOMAIN: main_txt, DEV: dev_txt, **DMARC_ZONES}) as dns:
                config_path.write_text(config_path.read_text()
                                       + f'\n[dns]\nnameservers = ["{dns.address}"]\nport = {dns.port}\n')
                try:
                    opendkim.start()
                    pf.start()
                    proc = subprocess.run([sys.executable, "-m", "listfilter", "--config", str(config_path), "sync"],
                                          capture_output=True, text=True, timeout=60)
                    assert proc.returncode == 0, proc.stderr
                    s = Site(base, pf, sink, dns, opendkim)
                    s.config_path, s.tables, s.keys, s.zones = config_path, tables, keys, {DOMAIN: main_txt, DEV: dev_txt}
                    yield s
                finally:
                    pf.stop()
                    opendkim.stop()
    finally:
        shutil.rmtree(keyroot, ignore_errors=True)


@pytest.fixture
def fresh(site):
    assert site.pf.wait_queue_empty(timeout=30), site.pf.queue()
    site.sink.clear()
    if site.opendkim.proc is None:
        site.opendkim.start()
    yield site


def post(subject: str, msgid: str, to: str, extra: str = "") -> bytes:
    return (f'From: "Pat Prof" <prof@example.edu>\nTo: {to}\nSubject: {subject}\nMessage-ID: <{msgid}>\n'
            f"Date: Tue, 24 Nov 2026 10:00:00 -0600\nMIME-Version: 1.0\n{extra}"
            "Content-Type: text/plain; charset=utf-8\n\nSee you on Monday.\n").encode()


def signatures(data: bytes) -> list[dict[bytes, bytes]]:
    """The tags of each DKIM-Signature in the message, top first."""
    parsed = email.message_from_bytes(data, policy=email.policy.compat32)
    return [dkim.util.parse_tag_value("".join(v.split()).encode()) for v in parsed.get_all("DKIM-Signature", [])]


def signed_headers(sig: dict[bytes, bytes]) -> set[str]:
    return {h.strip().lower() for h in sig[b"h"].decode().split(":")}


def test_each_copy_is_signed_by_the_list_domain(fresh):
    fresh.send(post("exam room", "d1@example.edu", STUDENTS), to=STUDENTS)
    copies = fresh.received(len(MEMBERS))
    assert {r for m in copies for r in m.rcpt_tos} == MEMBERS
    for copy in copies:
        [sig] = signatures(copy.data)
        assert sig[b"d"] == DOMAIN.encode() and sig[b"s"] == b"lists2026"
        assert (sig[b"a"], sig[b"c"]) == (b"rsa-sha256", b"relaxed/relaxed")
        assert {"from", "subject", "list-id", "to", "reply-to", "list-post", "message-id"} <= signed_headers(sig)
        assert dkim.verify(copy.data, dnsfunc=fresh.dnsfunc), copy.text[:1500]
        # the verification is real: the same copy with another Subject fails it
        forged = copy.data.replace(b"Subject: [CS 199 Students]", b"Subject: [CS 199 Student]", 1)
        assert forged != copy.data and not dkim.verify(forged, dnsfunc=fresh.dnsfunc)
        parsed = email.message_from_bytes(copy.data, policy=email.policy.default)
        assert parsed["From"].addresses[0].addr_spec == "prof@example.edu"  # the poster: not what picks the key


def test_a_munged_from_is_aligned_with_the_signature(fresh):
    """DMARC alignment (RFC 7489 §3.1.1): the From domain a receiver checks is the d= of a valid signature."""
    raw = post("exam moved", "d9@example.com", STUDENTS).replace(b'"Pat Prof" <prof@example.edu>',
                                                                  f'"Dana Dean" <{STRICT}>'.encode())
    fresh.send(raw, to=STUDENTS, sender=STRICT)
    copies = fresh.received(len(MEMBERS))
    assert {r for m in copies for r in m.rcpt_tos} == MEMBERS
    for copy in copies:
        parsed = email.message_from_bytes(copy.data, policy=email.policy.default)
        [sender] = parsed["From"].addresses
        assert (sender.display_name, sender.addr_spec) == ("Dana Dean via CS 199 Students", STUDENTS), parsed["From"]
        assert STRICT in [a.addr_spec for a in parsed["Cc"].addresses]  # the poster kept (the list has reply_to)
        [sig] = signatures(copy.data)
        assert sig[b"d"].decode() == sender.domain == DOMAIN
        assert "from" in signed_headers(sig)
        assert dkim.verify(copy.data, dnsfunc=fresh.dnsfunc), copy.text[:1500]


def test_each_list_domain_signs_with_its_own_key(fresh):
    fresh.send(post("build broken", "d2@example.edu", DEVS), to=DEVS)
    [copy] = fresh.received(1)
    [sig] = signatures(copy.data)
    assert (sig[b"d"], sig[b"s"]) == (DEV.encode(), b"dev2026")
    assert dkim.verify(copy.data, dnsfunc=fresh.dnsfunc)


def test_a_notice_from_the_list_owner_is_signed_too(fresh):
    """No List-Post in a notice: its From (the list's -owner address) picks the key."""
    fresh.send(post("let me in", "d3@example.edu", STUDENTS).replace(b'"Pat Prof" <prof@example.edu>',
                                                                   b"Alice <alice@example.org>"), to=STUDENTS)
    [notice] = fresh.received(1)
    assert notice.rcpt_tos == ["prof@example.edu"] and notice.mail_from == ""
    [sig] = signatures(notice.data)
    assert sig[b"d"] == DOMAIN.encode() and dkim.verify(notice.data, dnsfunc=fresh.dnsfunc)


def test_mail_arriving_by_smtp_is_not_signed_on_the_way_in(fresh):
    # Would be signed if OpenDKIM were on smtpd_milters: it names a list domain in List-Post and in From.
    inbound = (f"From: Someone <someone@{DOMAIN}>\nTo: x@example.org\nSubject: passing through\n"
               f"Message-ID: <d4@example.edu>\nList-Post: <mailto:{STUDENTS}>\n\nhello\n").encode()
    fresh.send(inbound, to="x@example.org", sender=f"someone@{DOMAIN}")  # relayed by smtpd alone, no pipe
    [relayed] = fresh.received(1)
    assert signatures(relayed.data) == []
    # a post with such a List-Post reaches the pipe unsigned: each copy has our one signature, made after it
    fresh.sink.clear()
    fresh.send(post("again", "d5@example.edu", STUDENTS, extra=f"List-Post: <mailto:{STUDENTS}>\n"), to=STUDENTS)
    for copy in fresh.received(len(MEMBERS)):
        [sig] = signatures(copy.data)
        assert dkim.verify(copy.data, dnsfunc=fresh.dnsfunc)


@pytest.fixture
def postfix_in_opendkim_group():
    """docs/deliverability.md's step for a unix socket: the postfix user in the opendkim group (undone after)."""
    import grp

    added = "postfix" not in grp.getgrnam("opendkim").gr_mem
    if added:
        subprocess.run(["gpasswd", "-a", "postfix", "opendkim"], check=True, capture_output=True)
    yield
    if added:
        subprocess.run(["gpasswd", "-d", "postfix", "opendkim"], check=True, capture_output=True)


def test_a_unix_socket_in_the_queue_directory(tmp_path, monkeypatch, postfix_in_opendkim_group):
    """The Debian layout: the socket inside Postfix's queue directory (a chrooted cleanup's "/"),
    named relative to it in main.cf. This instance's queue directory stands in for /var/spool/postfix."""
    keyroot = Path(tempfile.mkdtemp(prefix="listfilter-dkim-", dir="/run"))
    try:
        with traversable_tmpdir() as base, SMTPSink() as sink:
            keyroot.chmod(0o755)
            key, txt = genkey(keyroot / DOMAIN, DOMAIN, "lists2026")
            give_to_opendkim(keyroot / DOMAIN, key)
            pf = PostfixInstance(base / "postfix", relay_port=sink.port)
            monkeypatch.setattr(postfixconf, "POSTFIX_QUEUE_DIRECTORY", str(pf.queue_dir))
            sockdir = pf.queue_dir / "opendkim"
            (base / "lists.toml").write_text(f"""
[site]
owners = ["prof@example.edu"]
[dkim]
socket = "unix:{sockdir}/opendkim.sock"
table_dir = "{base}"
[domains."{DOMAIN}"]
dkim_selector = "lists2026"
dkim_key = "{key}"
[lists.students]
members = {{ emails = ["alice@example.org"] }}
posters = ["prof@example.edu"]
""")
            config = C.load(base / "lists.toml")
            [line] = [l for l in postfixconf.main_cf(config, "/usr/bin/listfilter").splitlines()
                      if l.startswith("non_smtpd_milters = ")]
            assert line == "non_smtpd_milters = { unix:opendkim/opendkim.sock, default_action=tempfail }"
            pf.set_main_cf(non_smtpd_milters=line.split(" = ", 1)[1])
            (base / "key.table").write_text(postfixconf.key_table(config))
            (base / "signing.table").write_text(postfixconf.signing_table(config))
            (base / "opendkim.conf").write_text(postfixconf.opendkim_conf(config) + f"PidFile {base}/opendkim.pid\n")
            pf.queue_dir.mkdir(parents=True, exist_ok=True)
            subprocess.run(["install", "-d", "-o", "opendkim", "-g", "opendkim", "-m", "750", str(sockdir)], check=True)
            proc = subprocess.Popen([OPENDKIM, "-f", "-x", str(base / "opendkim.conf")])
            try:
                deadline = time.monotonic() + 10
                while not (sockdir / "opendkim.sock").exists():
                    assert proc.poll() is None and time.monotonic() < deadline, "opendkim made no socket"
                    time.sleep(0.05)
                with DNSServer(base / "dns", {DOMAIN: txt}) as dns, pf:
                    raw = post("by socket", "d7@example.edu", STUDENTS, extra=f"List-Post: <mailto:{STUDENTS}>\n")
                    pf.sendmail(["-f", f"students-bounces@{DOMAIN}", "alice@example.org"], raw)
                    assert sink.wait_for(1, timeout=30), pf.log_tail(20)
                    [copy] = sink.snapshot()
                    [sig] = signatures(copy.data)
                    assert sig[b"d"] == DOMAIN.encode()
                    assert dkim.verify(copy.data, dnsfunc=key_lookup(dns))
            finally:
                proc.terminate()
                proc.wait(timeout=10)
    finally:
        shutil.rmtree(keyroot, ignore_errors=True)


def test_copies_wait_while_opendkim_is_down(fresh):
    """default_action=tempfail: no copy leaves unsigned; they stay in the maildrop queue until OpenDKIM is back."""
    fresh.opendkim.stop()
    fresh.send(post("while down", "d6@example.edu", STUDENTS), to=STUDENTS)
    fresh.pf.wait_queue(lambda q: any(e["queue_name"] == "maildrop" for e in q), timeout=30)
    fresh.pf.wait_log(rf"warning: connect to Milter service inet:127\.0\.0\.1:{fresh.opendkim.port}: Connection refused")
    fresh.pf.wait_log(r"milter-reject: CONNECT from localhost\[127\.0\.0\.1\]: 4\.7\.1 Service unavailable - try again later")
    time.sleep(3)  # pickup retries every second here: long enough for a copy to slip out unsigned
    assert fresh.sink.snapshot() == [], fresh.pf.log_tail(20)
    fresh.opendkim.start()
    for copy in fresh.received(len(MEMBERS), timeout=60):
        [sig] = signatures(copy.data)
        assert dkim.verify(copy.data, dnsfunc=fresh.dnsfunc)


def test_rotating_the_key(fresh):
    """docs/deliverability.md's rotation: a new selector's key and record beside the old, then the switch.

    Last in the file: it leaves the site signing with lists2027."""
    key, txt = genkey(fresh.keys / DOMAIN, DOMAIN, "lists2027")
    give_to_opendkim(key)
    fresh.dns.set_zone(DOMAIN, fresh.zones[DOMAIN] + "\n" + txt)  # both records published
    old_tables = {n: (fresh.tables / n).read_text() for n in ("key.table", "signing.table")}
    text = fresh.config_path.read_text()
    fresh.config_path.write_text(text.replace('selector = "lists2026"', 'selector = "lists2027"', 1))
    config = C.load(fresh.config_path)
    assert postfixconf.signing_table(config) == old_tables["signing.table"]  # only the KeyTable changes
    (fresh.tables / "key.table").write_text(postfixconf.key_table(config))
    os.kill(fresh.opendkim.proc.pid, signal.SIGUSR1)  # opendkim re-reads its configuration and tables
    time.sleep(1)
    fresh.send(post("new key", "d8@example.edu", STUDENTS), to=STUDENTS)
    for copy in fresh.received(len(MEMBERS)):
        [sig] = signatures(copy.data)
        assert (sig[b"d"], sig[b"s"]) == (DOMAIN.encode(), b"lists2027")
        assert dkim.verify(copy.data, dnsfunc=fresh.dnsfunc)
