"""Hostile and broken mail through a real Postfix: nothing stuck, nothing smuggled, nothing forged.

Each message goes in over SMTP (Python's smtplib as the client, so that
SMTPUTF8 can be asked for), through smtpd, the RCPT-time policy service and
pipe(8) to listfilter-deliver, and the copies come out at the sink. The
assertions are on what the sink received, split into header fields the way
Postfix splits them (lines end at LF only) and parsed by Python too, and on
the event records; no case may leave mail deferred in the queue.
"""

from __future__ import annotations

import email
import email.policy
import json
import re
import smtplib
import time

import pytest

from ..harness.postfix import PostfixInstance, ensure_user, traversable_tmpdir
from ..harness.smtpsink import SMTPSink
from ..harness.wiring import install_programs, listfilter_spool, wire

pytestmark = pytest.mark.integration

DOMAIN = "lists.example.edu"
LIST = f"students@{DOMAIN}"
POSTER = "prof@example.edu"
EAI_POSTER = "jäne@example.org"  # an SMTPUTF8 address: a non-ASCII local part
MEMBERS = {"alice@example.edu", "bob@example.edu", POSTER, EAI_POSTER}

CONFIG = """
[site]
dmarc = "off"  # no DMARC lookups: this test starts no DNS server (tests/conftest.py)
timezone = "America/Chicago"
state_dir = "{state}"
owners = ["{poster}"]
notice_limit = 1000
[postfix]
config_directory = "{config_dir}"
map_type = "hash"
[roster]
source = "csv"
csv = "{csv}"
[domains."{domain}"]
[lists.students]
display_name = "CS 199 Students"
members = {{ emails = {members} }}
posters = ["{poster}", "{eai}"]
"""

# The header fields listfilter writes itself; every other field in a copy must come from the post.
OWN = {"subject", "to", "list-id", "list-post", "list-help", "list-owner", "precedence", "x-listfilter-loop"}


class Site:
    def __init__(self, base, pf, sink, config):
        self.base, self.pf, self.sink, self.config = base, pf, sink, config

    def send(self, raw: bytes, sender: str = POSTER) -> None:
        options = ["SMTPUTF8"] if not sender.isascii() or not raw.isascii() else []
        with smtplib.SMTP("127.0.0.1", self.pf.smtpd_port, timeout=30) as smtp:
            smtp.ehlo("client.example.org")
            smtp.sendmail(sender, [LIST], raw, mail_options=options + ["BODY=8BITMIME"])

    def settle(self) -> None:
        """Postfix has nothing left to do: nothing is deferred, whatever the message was."""
        assert self.pf.wait_queue_empty(timeout=60), (self.pf.queue(), self.pf.log_tail(40))

    def events(self) -> list[dict]:
        return [json.loads(p.read_bytes()) for p in (self.base / "state" / "spool" / "events").glob("*.json")]

    def event(self, message_id: str) -> dict:
        found = [e for e in self.events() if e["message_id"] == message_id]
        assert len(found) == 1, (found, self.pf.log_tail(30))
        return found[0]

    def copies(self, message_id: str) -> list:
        return [m for m in self.sink.snapshot() if f"Message-ID: {message_id}".encode() in m.data
                or message_id.encode() in m.data.split(b"\r\n\r\n", 1)[0]]


@pytest.fixture(scope="module")
def site():
    ensure_user("listfilter")
    with traversable_tmpdir() as base, SMTPSink() as sink:
        program = install_programs(base / "bin")
        csv = base / "roster.csv"
        csv.write_text("email,name,enrollment_type,active,semester,course\n", encoding="utf-8")
        csv.chmod(0o644)
        pf = PostfixInstance(base / "postfix", relay_port=sink.port)
        config = base / "lists.toml"
        config.write_text(CONFIG.format(state=base / "state", poster=POSTER, eai=EAI_POSTER, config_dir=pf.config_dir,
                                        csv=csv, domain=DOMAIN, members=json.dumps(sorted(MEMBERS), ensure_ascii=False)),
                          encoding="utf-8")
        listfilter_spool(wire(pf, config, program))
        pf.main_cf_settings["smtputf8_enable"] = "yes"
        pf._write_config()
        pf.start()
        try:
            import subprocess
            import sys

            proc = subprocess.run([sys.executable, "-m", "listfilter", "--config", str(config), "sync"],
                                  capture_output=True, text=True, timeout=60)
            assert proc.returncode == 0, proc.stderr
            yield Site(base, pf, sink, config)
        finally:
            pf.stop()


@pytest.fixture
def fresh(site):
    site.settle()
    site.sink.clear()
    yield site


def list_copies(site: Site, msgid: str) -> list:
    """What the list sent for ``msgid`` (VERP envelope), as opposed to a notice to the poster."""
    return [m for m in site.copies(msgid) if m.mail_from.startswith("students-bounces+")]


def post(*headers: str, body: str = "Hello everyone.\n", raw_headers: bytes = b"") -> bytes:
    return ("\r\n".join(headers) + "\r\n").encode("utf-8") + raw_headers + b"\r\n" + body.encode("utf-8")


def fields(data: bytes) -> list[tuple[str, bytes]]:
    """Header fields as Postfix splits them: a line ends at LF; SP/TAB continues; name then ':'."""
    head = data.replace(b"\r\n", b"\n").split(b"\n\n", 1)[0]
    out: list[tuple[str, bytes]] = []
    for line in head.split(b"\n"):
        if line[:1] in (b" ", b"\t") and out:
            out[-1] = (out[-1][0], out[-1][1] + b"\n" + line)
        else:
            m = re.match(rb"([\x21-\x39\x3b-\x7e]+)[ \t]*:", line)
            assert m, line
            out.append((m.group(1).decode().lower(), line))
    return out


def check_copy(data: bytes, expected_from: str) -> email.message.EmailMessage:
    """One copy as members get it: one of each singleton, no line over 998, nothing smuggled."""
    names = [n for n, _ in fields(data)]
    for single in ("from", "to", "subject", "date", "message-id"):
        assert names.count(single) == 1, (single, names)
    head = data.split(b"\r\n\r\n", 1)[0]
    assert max(len(line) for line in head.split(b"\r\n")) <= 998
    assert not re.search(rb"[\x0b\x0c\x1c-\x1e]|\r(?!\n)", head)
    # as an SMTPUTF8 client reads it: raw UTF-8 in headers is text (RFC 6532)
    parsed = email.message_from_string(data.decode("utf-8", "surrogateescape"), policy=email.policy.default)
    assert [a.addr_spec.lower() for a in parsed["From"].addresses] == [expected_from]
    assert parsed.get_all("Bcc") is None
    assert parsed["List-Id"] and parsed["X-Listfilter-Loop"] == LIST
    return parsed


def test_an_smtputf8_poster_with_raw_utf8_headers_is_delivered(fresh):
    fresh.send(post("From: Jäne Doe <jäne@example.org>", f"To: {LIST}", "Subject: Grüße aus Köln",
                    "Message-ID: <eai1@example.org>", "Date: Tue, 24 Nov 2026 10:00:00 -0600",
                    "Content-Type: text/plain; charset=utf-8"), sender=EAI_POSTER)
    fresh.settle()
    copies = fresh.copies("<eai1@example.org>")
    assert sorted(r for m in copies for r in m.rcpt_tos) == sorted(MEMBERS - {EAI_POSTER})
    parsed = check_copy(copies[0].data, EAI_POSTER)
    assert str(parsed["Subject"]).endswith(": Grüße Aus Köln")
    event = fresh.event("<eai1@example.org>")
    assert event["status"] == "delivered" and event["sender_name"] == "Jäne Doe"
    assert event["sender_email"] == EAI_POSTER and event["subject"] == "Grüße aus Köln"


def test_legacy_8bit_subject_is_read_as_mail_clients_read_it(fresh):
    fresh.send(post(f"From: Pat Prof <{POSTER}>", f"To: {LIST}", "Message-ID: <legacy1@example.edu>",
                    raw_headers=b"Subject: Caf\xe9 cr\xe8me\r\n"))
    fresh.settle()
    [copy, *_] = fresh.copies("<legacy1@example.edu>")
    parsed = check_copy(copy.data, POSTER)
    assert str(parsed["Subject"]).endswith(": Café Crème")
    assert fresh.event("<legacy1@example.edu>")["subject"] == "Café crème"


@pytest.mark.parametrize("order", ["allowed first", "stranger first"])
def test_two_from_headers_are_refused_whatever_their_order(fresh, order):
    froms = [f"From: {POSTER}", "From: Stranger <stranger@example.org>"]
    if order == "stranger first":
        froms.reverse()
    msgid = f"<twofrom-{order.split()[0]}@example.edu>"
    fresh.send(post(*froms, f"To: {LIST}", "Subject: two", f"Message-ID: {msgid}"))
    fresh.settle()
    assert list_copies(fresh, msgid) == []
    event = fresh.event(msgid)
    assert event["status"] == "bounced" and "2 From headers" in event["error_message"]


@pytest.mark.parametrize("from_header", [
    f"From: {POSTER} <stranger@example.org>",            # a display name that looks like an address
    f'From: "{POSTER}" <stranger@example.org>',           # the same, quoted: the angle-addr decides
    "From: stranger@example.org (prof@example.edu)",     # an address in a comment
    f"From: friends: {POSTER};",                          # a group
    f"From: {POSTER}, stranger@example.org",             # two mailboxes
])
def test_the_from_checked_is_the_from_members_see(fresh, from_header):
    msgid = f"<from-{abs(hash(from_header))}@example.edu>"
    fresh.send(post(from_header, f"To: {LIST}", "Subject: who am I", f"Message-ID: {msgid}"))
    fresh.settle()
    assert list_copies(fresh, msgid) == []
    assert fresh.event(msgid)["status"] == "bounced"


@pytest.mark.parametrize("smuggle", [b"\x0b", b"\x0c", b"\x1c", b"\x1d", b"\x1e", b"\r"])
def test_header_injection_through_python_line_breaks_adds_nothing(fresh, smuggle):
    tag = smuggle.hex()
    msgid = f"<inject-{tag}@example.edu>"
    raw_headers = (b"Subject: hello" + smuggle + b"Bcc: victim@example.org" + smuggle + b"Reply-To: evil@example.org\r\n"
                   + b"X-Note: x" + smuggle + b"From: evil@example.org" + smuggle
                   + b"List-Unsubscribe: <mailto:evil@example.org>\r\n"
                   + b"Comments: y" + smuggle + smuggle + b"X-Listfilter-Loop: other\r\n")
    fresh.send(post(f"From: Pat Prof <{POSTER}>", f"To: {LIST}", f"Message-ID: {msgid}", raw_headers=raw_headers))
    fresh.settle()
    copies = fresh.copies(msgid)
    assert copies, fresh.pf.log_tail(30)
    for copy in copies:
        parsed = check_copy(copy.data, POSTER)
        names = {n for n, _ in fields(copy.data)}
        assert names <= OWN | {"from", "message-id", "date", "x-note", "comments", "mime-version",
                               "content-type", "content-transfer-encoding", "received"}, names
        assert parsed.get_all("Reply-To") is None and parsed.get_all("List-Unsubscribe") is None
        assert copy.mail_from.startswith("students-bounces+")
    assert sorted(r for m in copies for r in m.rcpt_tos) == sorted(MEMBERS - {POSTER})


@pytest.mark.parametrize("case, header", [
    ("bad-to", b"To: <<<>>> @@ ,,, \"unterminated"),
    ("bad-reply-to", b"Reply-To: ((((nested <x@"),
    ("empty-message-id", b"Message-ID: "),
    ("bad-rfc2231", b"Content-Type: text/plain; charset*=utf-8''%ZZ%; name*0*=x; name*5=y"),
    ("nested-comments", b"X-Comment: " + b"(" * 3000 + b"x" + b")" * 3000),
    ("8bit-non-header", b"this line is not a header \xe9\xff\xfe"),
    ("long-encoded-subject", b"Subject: " + b" ".join([b"=?utf-8?q?" + b"=C3=A9" * 10 + b"?="] * 1400)),
])
def test_headers_the_parser_rejects_never_leave_mail_deferred(fresh, case, header):
    msgid = f"<broken-{case}@example.edu>"
    fresh.send(post(f"From: Pat Prof <{POSTER}>", f"To: {LIST}", "Subject: broken",
                    f"Message-ID: {msgid}" if case != "empty-message-id" else "X-Case: empty",
                    raw_headers=header + b"\r\n"))
    started = time.monotonic()
    fresh.settle()
    assert time.monotonic() - started < 60
    copies = [m for m in fresh.sink.snapshot() if set(m.rcpt_tos) & MEMBERS]
    assert copies, fresh.pf.log_tail(30)
    for copy in copies:
        check_copy(copy.data, POSTER)


def test_a_post_without_date_goes_out_with_one(fresh):
    fresh.send(post(f"From: Pat Prof <{POSTER}>", f"To: {LIST}", "Subject: no date", "Message-ID: <nodate@example.edu>"))
    fresh.settle()
    [copy, *_] = fresh.copies("<nodate@example.edu>")
    parsed = check_copy(copy.data, POSTER)
    assert parsed["Date"].datetime is not None


def test_a_deep_mime_tree_is_delivered_intact(fresh):
    depth = 2000
    parts = "".join(f'Content-Type: multipart/mixed; boundary="b{i}"\r\n\r\n--b{i}\r\n' for i in range(depth))
    body = parts + "Content-Type: text/plain\r\n\r\nleaf\r\n" + "".join(f"--b{i}--\r\n" for i in reversed(range(depth)))
    fresh.send(post(f"From: Pat Prof <{POSTER}>", f"To: {LIST}", "Subject: deep", "Message-ID: <deep@example.edu>",
                    "MIME-Version: 1.0", 'Content-Type: multipart/mixed; boundary="top"', body="--top\r\n" + body
                    + "--top--\r\n"))
    fresh.settle()
    copies = fresh.copies("<deep@example.edu>")
    assert copies and body.encode() in copies[0].data
