"""Many tenants through a real Postfix: 50 club domains × the same 4 lists (200 lists), defined once.

The config is generated: every club has its own name, course (its rows of a CSV roster) and fields, half
of them their own owners; reply_to is a list name on the even clubs and an address on the odd ones. The
real `listfilter sync` compiles it; the snapshot and the virtual map carry each club's values. Then one
SMTP transaction with 200 RCPTs posts to every list, and one session sends mail to every -owner address:
at the sink, each list's copies carry their own club's subject tag, List-Id and Reply-To and reach that
club's members only, and each -owner message reaches that club's owners only.

One private Postfix (as in test_mailflow.py), a CSV roster (as in test_poster_copy.py), an SMTP sink.
"""

from __future__ import annotations

import email
import email.policy
import json
import smtplib
import subprocess
import sys
from dataclasses import dataclass

import pytest

from listfilter.common import snapshot as S

from ..harness.postfix import PostfixInstance, ensure_user, traversable_tmpdir
from ..harness.smtpsink import SMTPSink
from ..harness.wiring import install_programs, listfilter_spool, wire

pytestmark = pytest.mark.integration

CLUBS = 50
POSTER = "platform@news.example"  # may post to every list on every club (an address in each list's posters)
STRANGER = "someone@example.net"
SITE_OWNER = "ops@platform.example"
LISTS = ("members", "announce", "board", "pilots")

LIST_TABLES = f"""
[lists.members]
display_name = "{{name}} Members"
members = {{ roles = ["everyone"] }}
posters = {{ members = true, emails = ["{POSTER}"] }}

[lists.announce]
display_name = "{{name}} Announcements"
subject_tag = "{{short}}"
members = {{ roles = ["everyone"] }}
posters = {{ roles = ["board"], emails = ["{POSTER}"] }}

[lists.board]
display_name = "{{name}} Board"
subject_tag = "{{short}} Board"
reply_to = "board"
members = {{ roles = ["board"] }}
posters = {{ members = true, emails = ["{POSTER}"] }}

[lists.pilots]
display_name = "{{name}} Pilots"
subject_tag = "{{short}} Pilots"
owners = ["{{chief}}"]
members = {{ roles = ["pilot"] }}
posters = {{ members = true, emails = ["{POSTER}"] }}
"""


@dataclass(frozen=True)
class Club:
    """One tenant, and what each of its lists should be: worked out here, independently of listfilter."""

    n: int

    @property
    def domain(self) -> str:
        return f"club{self.n:02d}.example.org"

    @property
    def name(self) -> str:
        return f"Club {self.n:02d} Gliders"

    @property
    def short(self) -> str:
        return f"C{self.n:02d}"

    @property
    def pilot(self) -> str:
        return f"pilot{self.n:02d}@members.example"

    @property
    def chair(self) -> str:
        return f"board{self.n:02d}@members.example"

    @property
    def chief(self) -> str:
        return f"chief{self.n:02d}@owners.example"

    def table(self) -> str:
        own = f'owners = ["chair{self.n:02d}@owners.example"]\nreply_to = "members"\n' if self.n % 2 == 0 \
            else f'reply_to = "office{self.n:02d}@owners.example"\n'
        return (f'[domains."{self.domain}"]\nname = "{self.name}"\ncourse = "{self.short}"\n{own}'
                f'fields = {{ short = "{self.short}", chief = "{self.chief}" }}\n')

    def roster(self) -> str:
        return (f"{self.pilot},Pat {self.n:02d},pilot,true,current,{self.short}\n"
                f"{self.chair},Bea {self.n:02d},board,true,current,{self.short}\n")

    def display_name(self, lst: str) -> str:
        return f"{self.name} {'Announcements' if lst == 'announce' else lst.capitalize()}"

    def subject_tag(self, lst: str) -> str:
        return {"members": self.display_name(lst), "announce": self.short, "board": f"{self.short} Board",
                "pilots": f"{self.short} Pilots"}[lst]

    def members(self, lst: str) -> list[str]:
        return {"board": [self.chair], "pilots": [self.pilot]}.get(lst, sorted([self.chair, self.pilot]))

    def owners(self, lst: str) -> list[str]:
        if lst == "pilots":
            return [self.chief]  # the list's own, filled in
        return [f"chair{self.n:02d}@owners.example"] if self.n % 2 == 0 else [SITE_OWNER]  # the domain's, or [site]'s

    def reply_to(self, lst: str) -> str:
        if lst == "board":
            return f"board@{self.domain}"  # the list's own
        return f"members@{self.domain}" if self.n % 2 == 0 else f"office{self.n:02d}@owners.example"


ALL = [Club(n) for n in range(CLUBS)]
BY_DOMAIN = {c.domain: c for c in ALL}
ADDRESSES = [f"{lst}@{c.domain}" for c in ALL for lst in LISTS]


@pytest.fixture(scope="module")
def site():
    ensure_user("listfilter")
    with traversable_tmpdir() as base, SMTPSink() as sink:
        program = install_programs(base / "bin")
        (base / "roster.csv").write_text("email,name,enrollment_type,active,semester,course\n"
                                         + "".join(c.roster() for c in ALL))
        pf = PostfixInstance(base / "postfix", relay_port=sink.port)
        config = base / "lists.toml"
        config.write_text(f"""
[site]
dmarc = "off"  # no DMARC lookups: this test starts no DNS server (tests/conftest.py)
timezone = "America/Chicago"
state_dir = "{base / 'state'}"
owners = ["{SITE_OWNER}"]
[postfix]
config_directory = "{pf.config_dir}"
map_type = "hash"
[roster]
source = "csv"
csv = "{base / 'roster.csv'}"
enrollment_types = ["member", "pilot", "board"]
[roster.role_aliases]
everyone = ["member", "pilot", "board"]
instructor = ["board"]
staff = ["board"]
{"".join(c.table() for c in ALL)}
{LIST_TABLES}""")
        listfilter_spool(wire(pf, config, program))
        pf.start()
        try:
            proc = subprocess.run([sys.executable, "-m", "listfilter", "--config", str(config), "sync"],
                                  capture_output=True, text=True, timeout=120)
            assert proc.returncode == 0, proc.stderr
            yield base, pf, sink
        finally:
            pf.stop()


def test_sync_compiles_200_lists_each_with_its_clubs_values(site):
    base, _, _ = site
    with S.Snapshot(base / "state" / "snapshot.sqlite") as snap:
        rows = {r.address: r for r in snap.lists()}
        members = {a: [e for e, _ in snap.members(a)] for a in ADDRESSES}
    assert sorted(rows) == sorted(ADDRESSES)
    for address, row in rows.items():
        lst, club = row.name, BY_DOMAIN[row.domain]
        got = (row.display_name, row.subject_tag, list(row.owners), row.reply_to, members[address])
        assert got == (club.display_name(lst), club.subject_tag(lst), club.owners(lst), club.reply_to(lst),
                       club.members(lst)), address
    virtual = (base / "state" / "postfix" / "virtual").read_text()
    for c in ALL:
        for lst in LISTS:
            assert f"{lst}-owner@{c.domain}\t{', '.join(c.owners(lst))}\n" in virtual


def test_one_post_to_all_200_lists_reaches_each_clubs_members_with_its_tag(site):
    base, pf, sink = site
    assert pf.wait_queue_empty(timeout=30), pf.queue()
    sink.clear()
    message = (f"From: Platform News <{POSTER}>\nTo: every club\nSubject: field day on saturday\n"
               "Message-ID: <tenants-1@news.example>\n\nBring a hat.\n").encode()
    with smtplib.SMTP("127.0.0.1", pf.smtpd_port, timeout=60) as smtp:
        smtp.ehlo("news.example")
        refused = smtp.sendmail(POSTER, ADDRESSES, message)  # one transaction, 200 RCPTs
    assert refused == {}
    copies = sum(len(c.members(lst)) for c in ALL for lst in LISTS)
    assert sink.wait_for(copies, timeout=120), (sink.recipient_count, pf.log_tail(30))
    assert pf.wait_queue_empty(timeout=60), (pf.queue(), pf.log_tail(30))

    reached: dict[str, list[str]] = {a: [] for a in ADDRESSES}
    for m in sink.snapshot():
        msg = email.message_from_bytes(m.data, policy=email.policy.default)
        local, domain = m.mail_from.partition("-bounces+")[0], m.mail_from.rpartition("@")[2]  # VERP
        address, club = f"{local}@{domain}", BY_DOMAIN[domain]
        assert msg["List-Id"] == f'"{club.display_name(local)}" <{local}.{domain}>', m.mail_from
        assert msg["Subject"].startswith(f"[{club.subject_tag(local)}] "), (address, msg["Subject"])
        assert msg["Subject"].endswith(": Field Day on Saturday"), msg["Subject"]  # Title Case
        assert msg["Reply-To"] == club.reply_to(local), address
        [to] = msg["To"].addresses
        assert (to.display_name, to.addr_spec) == (club.display_name(local), address)
        reached[address] += m.rcpt_tos
    for address, rcpts in reached.items():
        lst, _, domain = address.partition("@")
        assert sorted(rcpts) == BY_DOMAIN[domain].members(lst), address  # that club's members, once each

    # the mail log's records (the admin page's) name each list as its club serves it
    events = [json.loads(p.read_text()) for p in (base / "state" / "spool" / "events").glob("*.json")]
    names = {e["list_address"]: e["list_display_name"] for e in events if e["message_id"] == "<tenants-1@news.example>"}
    assert names == {a: BY_DOMAIN[a.partition("@")[2]].display_name(a.partition("@")[0]) for a in ADDRESSES}


def test_owner_mail_on_every_list_reaches_its_clubs_owners(site):
    _, pf, sink = site
    assert pf.wait_queue_empty(timeout=30), pf.queue()
    sink.clear()
    with smtplib.SMTP("127.0.0.1", pf.smtpd_port, timeout=60) as smtp:
        smtp.ehlo("example.net")
        for address in ADDRESSES:
            owner = address.replace("@", "-owner@")
            smtp.sendmail(STRANGER, [owner], (f"From: {STRANGER}\nTo: {owner}\nSubject: for {owner}\n"
                                              f"Message-ID: <{owner}>\n\nA question.\n").encode())
    expected = {a.replace("@", "-owner@"): BY_DOMAIN[a.partition("@")[2]].owners(a.partition("@")[0])
                for a in ADDRESSES}
    assert sink.wait_for(sum(map(len, expected.values())), timeout=120), (sink.recipient_count, pf.log_tail(30))
    assert pf.wait_queue_empty(timeout=60), (pf.queue(), pf.log_tail(30))
    got: dict[str, list[str]] = {}
    for m in sink.snapshot():
        subject = email.message_from_bytes(m.data, policy=email.policy.default)["Subject"]
        got.setdefault(subject.removeprefix("for "), []).extend(m.rcpt_tos)
    assert {k: sorted(v) for k, v in got.items()} == expected
