"""DMARC on the sync side: ``dmarc`` and ``dmarc_always`` in the config, which domains are looked up,
the snapshot's dmarc table, reuse of fresh answers, and the bounds on the lookups.

No DNS here: the lookups are given (or a fake resolver answers, as in test_dns.py);
tests/integration/test_dmarc_mailflow.py runs the same sync against a real Knot DNS.
"""

from __future__ import annotations

import textwrap
import threading
import time
from pathlib import Path

import dns.resolver
import pytest

from listfilter.common import snapshot as S
from listfilter.sync import config as C
from listfilter.sync import dmarc as DM
from listfilter.sync import dns as D
from listfilter.sync import run as Y

from .test_dns import FakeResolver, servfail

REAL_LOOK_UP = DM.look_up  # before tests/conftest.py's no_dmarc_dns replaces it
NOW = 2_000_000_000.0


def write(tmp_path: Path, lists: str, site: str = "") -> Path:
    path = tmp_path / "lists.toml"
    path.write_text(textwrap.dedent(f"""\
        [site]
        owners = ["prof@example.edu"]
        state_dir = "{tmp_path / 'state'}"
        {site}
        [postfix]
        map_type = "texthash"
        reload = false
        [roster]
        source = "csv"
        csv = "{tmp_path / 'roster.csv'}"
        [domains."lists.example.edu"]
        """) + textwrap.dedent(lists))
    (tmp_path / "roster.csv").write_text("email,name,enrollment_type,active,semester,course\n"
                                         "prof@example.edu,Pat Prof,teacher,true,current,\n"
                                         "jane@example.org,Jane Doe,student,true,current,\n"
                                         "sam@gmail.com,Sam,student,true,current,\n")
    return path


LISTS = """
[lists.students]
members = { roles = ["student", "teacher"] }
posters = { roles = ["instructor"] }
[lists.talk]
members = { roles = ["student", "teacher"] }
posters = "members"
dmarc = "wrap"
dmarc_always = ["gmail.com"]
[lists.quiet]
members = { emails = ["prof@example.edu"] }
posters = ["someone@example.net"]
dmarc = "off"
"""


# ---------------------------------------------------------------- config


def test_defaults_and_overrides(tmp_path):
    config = C.load(write(tmp_path, LISTS))
    assert (config.site.dmarc, config.site.dmarc_always) == ("munge", ())
    modes = {n: (l.dmarc, l.dmarc_always) for n, l in config.lists.items()}
    assert modes == {"students": ("munge", ()), "talk": ("wrap", ("gmail.com",)), "quiet": ("off", ())}


def test_site_wide_defaults_and_a_list_that_replaces_them(tmp_path):
    config = C.load(write(tmp_path, LISTS, site='dmarc = "wrap"\ndmarc_always = ["Gmail.com", "Boss@Example.EDU", "gmail.com"]'))
    assert (config.site.dmarc, config.site.dmarc_always) == ("wrap", ("gmail.com", "boss@example.edu"))
    assert (config.lists["students"].dmarc, config.lists["students"].dmarc_always) == ("wrap", ("gmail.com", "boss@example.edu"))
    assert config.lists["talk"].dmarc_always == ("gmail.com",)  # its own list replaces the site's
    empty = C.load(write(tmp_path, LISTS.replace('dmarc = "off"', 'dmarc_always = []'), site='dmarc_always = ["gmail.com"]'))
    assert empty.lists["quiet"].dmarc_always == ()


@pytest.mark.parametrize("site, lists, message", [
    ('dmarc = "rewrite"', "", "site.dmarc: 'rewrite' is not one of: munge, wrap, off"),
    ("dmarc = true", "", "site.dmarc: expected a string, not a boolean"),
    ('dmarc_always = ["not a domain"]', "", "site.dmarc_always[0]: 'not a domain' is neither a mail domain"),
    ("", 'dmarc = "Munge"', "lists.students.dmarc: 'Munge' is not one of: munge, wrap, off"),
    ("", 'dmarc_always = ["gmail.com", "jane@"]', "lists.students.dmarc_always[1]: malformed address 'jane@'"),
    ("", "dmarc_always = [3]", "lists.students.dmarc_always: expected a list of strings"),
])
def test_errors_name_the_file_the_list_and_the_field(tmp_path, site, lists, message):
    text = LISTS.replace('posters = { roles = ["instructor"] }', 'posters = { roles = ["instructor"] }\n' + lists, 1)
    path = write(tmp_path, text, site=site)
    with pytest.raises(C.ConfigError) as info:
        C.load(path)
    assert str(info.value) == f"{path}: {message}" or str(info.value).startswith(f"{path}: {message}")


# ---------------------------------------------------------------- which domains, and the table


def compiled(tmp_path, lists=LISTS, site=""):
    config = C.load(write(tmp_path, lists, site=site))
    return config, Y.plan(config, suppressed={}).lists


def test_the_domains_of_every_poster_on_a_list_that_mitigates(tmp_path):
    _, lists = compiled(tmp_path)
    # students: the instructor; talk: every member, but gmail.com is in its dmarc_always; quiet is off
    assert DM.wanted_domains(lists) == {"example.edu", "example.org"}


def test_no_list_mitigates_no_lookup(tmp_path):
    config, lists = compiled(tmp_path, site='dmarc = "off"', lists=LISTS.replace('dmarc = "wrap"', ""))
    assert DM.wanted_domains(lists) == set()
    asked = []
    r = DM.refresh(config, lists, {}, lookup=lambda d, s: asked.append(d) or {})
    assert (r.entries, asked, r.warning()) == ({}, [], None)


def entry(domain, policy="none", status="ok", expires=NOW + 600, detail="x"):
    return S.DmarcEntry(domain, policy, status, int(expires), detail)


def test_fresh_entries_are_reused_and_expired_ones_asked_again(tmp_path):
    config, lists = compiled(tmp_path)
    installed = {"example.edu": entry("example.edu", "reject"), "example.org": entry("example.org", expires=NOW - 1),
                 "gone.example": entry("gone.example")}
    asked = []

    def lookup(domains, settings):
        asked.extend(domains)
        return {d: entry(d, "quarantine", expires=NOW + 900) for d in domains}

    r = DM.refresh(config, lists, installed, lookup=lookup, now=NOW)
    assert asked == ["example.org"] and (r.asked, r.reused) == (1, 1)
    assert r.entries == {"example.edu": installed["example.edu"],
                         "example.org": entry("example.org", "quarantine", expires=NOW + 900)}


def test_an_unchanged_answer_keeps_the_installed_row_for_half_the_grace(tmp_path):
    """So that a sync every 5 minutes does not rewrite the snapshot for every TTL that ran out."""
    config, lists = compiled(tmp_path)
    old = {d: entry(d, "none", expires=NOW - 60) for d in ("example.edu", "example.org")}
    fresh = lambda domains, settings: {d: entry(d, "none", expires=NOW + 300, detail="new") for d in domains}  # noqa: E731
    assert DM.refresh(config, lists, old, lookup=fresh, now=NOW).entries == old
    later = NOW - 60 + S.DMARC_GRACE / 2 + 1
    assert DM.refresh(config, lists, old, lookup=fresh, now=later).entries["example.org"].detail == "new"
    # a changed policy replaces the row at once
    changed = lambda domains, settings: {d: entry(d, "reject", expires=NOW + 300) for d in domains}  # noqa: E731
    assert DM.refresh(config, lists, old, lookup=changed, now=NOW).entries["example.org"].policy == "reject"


def test_a_failed_lookup_is_stored_as_failed_and_said_once(tmp_path):
    config, lists = compiled(tmp_path)
    good = {"example.edu": entry("example.edu", "reject")}

    def lookup(domains, settings):
        return {d: DM.failed_entry(d, "_dmarc.example.org: 127.0.0.1 answered SERVFAIL", NOW) for d in domains}

    r = DM.refresh(config, lists, {**good, "example.org": entry("example.org", expires=NOW - 1)}, lookup=lookup, now=NOW)
    assert r.entries["example.org"].status == "failed" and r.entries["example.org"].policy is None
    assert r.warning() == ("DMARC lookups failed for 1 domain of 1 (example.org: _dmarc.example.org: 127.0.0.1"
                           " answered SERVFAIL): posts From them get the list's DMARC mitigation until a lookup succeeds")
    # a domain the lookup did not answer for at all is failed too, never left out
    r = DM.refresh(config, lists, good, lookup=lambda d, s: {}, now=NOW)
    assert r.entries["example.org"].status == "failed"


# ---------------------------------------------------------------- the snapshot


def test_the_table_in_the_snapshot_and_the_list_rows(tmp_path):
    config, lists = compiled(tmp_path)
    entries = {"example.org": entry("example.org", "reject", detail="_dmarc.example.org: p=reject"),
               "example.edu": DM.failed_entry("example.edu", "timeout", NOW)}
    S.write(tmp_path / "snap.sqlite", lists, {"digest": "d"}, dmarc=entries)
    with S.Snapshot(tmp_path / "snap.sqlite") as snap:
        assert snap.dmarc("Example.ORG") == entries["example.org"]
        assert snap.dmarc("gmail.com") is None
        assert snap.dmarc_entries() == entries
        talk = snap.get_list("talk@lists.example.edu")
        assert (talk.dmarc, talk.dmarc_always) == ("wrap", ("gmail.com",))
    assert S.installed_dmarc(tmp_path / "nothing.sqlite") == {}


def test_sync_writes_the_table_and_an_unchanged_resync_writes_nothing(tmp_path, monkeypatch):
    config = C.load(write(tmp_path, LISTS))
    calls = []

    def lookup(domains, settings):
        calls.append(list(domains))
        return {d: entry(d, "reject" if d == "example.org" else "none", expires=time.time() + 600) for d in domains}

    monkeypatch.setattr(DM, "look_up", lookup)
    first = Y.run(config)
    assert first.plan.snapshot_changed and first.warnings == [] and calls == [["example.edu", "example.org"]]
    with S.Snapshot(config.site.snapshot_path) as snap:
        assert {d: e.policy for d, e in snap.dmarc_entries().items()} == {"example.edu": "none", "example.org": "reject"}
    mtime = config.site.snapshot_path.stat().st_mtime_ns
    again = Y.run(config)
    assert not again.plan.snapshot_changed and calls == [["example.edu", "example.org"]]  # nothing asked
    assert config.site.snapshot_path.stat().st_mtime_ns == mtime
    assert not Y.plan(config).snapshot_changed  # what a dry run and `check` see


def test_a_sync_whose_lookups_fail_warns_once_and_marks_them_failed(tmp_path, monkeypatch):
    config = C.load(write(tmp_path, LISTS))
    monkeypatch.setattr(DM, "look_up", lambda domains, settings: {
        d: DM.failed_entry(d, f"_dmarc.{d}: no answer within 5 s", time.time()) for d in domains})
    result = Y.run(config)
    assert [w for w in result.warnings if "DMARC" in w] == [
        "DMARC lookups failed for 2 domains of 2 (example.edu: _dmarc.example.edu: no answer within 5 s and 1 other):"
        " posts From them get the list's DMARC mitigation until a lookup succeeds"]
    with S.Snapshot(config.site.snapshot_path) as snap:
        assert {e.status for e in snap.dmarc_entries().values()} == {"failed"}


# ---------------------------------------------------------------- the lookups, bounded


def settings(timeout=2.0):
    return C.DNSSettings(nameservers=("127.0.0.1",), port=53, timeout=timeout)


def with_resolver(monkeypatch, resolver):
    monkeypatch.setattr(D, "make_resolver", lambda s: resolver)


def test_look_up_asks_each_domain_once_through_dmarc_policies(monkeypatch):
    r = FakeResolver({"_dmarc.example.org": (["v=DMARC1; p=reject"], 900), "_dmarc.example.edu": ["v=DMARC1; p=none"],
                      "_dmarc.broken.example": servfail("_dmarc.broken.example")})
    with_resolver(monkeypatch, r)
    got = REAL_LOOK_UP(["example.org", "cs.example.edu", "example.edu", "broken.example"], settings(), now=NOW)
    assert got["example.org"] == S.DmarcEntry("example.org", "reject", "ok", int(NOW + 900), "_dmarc.example.org: p=reject")
    assert (got["cs.example.edu"].policy, got["cs.example.edu"].status) == ("none", "ok")
    assert (got["broken.example"].status, got["broken.example"].policy) == ("failed", None)
    assert got["broken.example"].detail == "lookup failed: _dmarc.broken.example: 192.0.2.53@53 answered SERVFAIL"
    # cs.example.edu and example.edu share one task: the organisational domain is asked once
    assert sorted(r.asked).count("_dmarc.example.edu") == 1


class SilentResolver:
    """A resolver that never answers: each lookup waits its lifetime, then times out."""

    def __init__(self, lifetime: float):
        self.lifetime = lifetime
        self.asked = 0
        self.lock = threading.Lock()

    def resolve(self, qname, rdtype, search=True):
        with self.lock:
            self.asked += 1
        time.sleep(self.lifetime)
        raise dns.resolver.LifetimeTimeout(timeout=self.lifetime, errors=[])


def test_an_unreachable_resolver_costs_one_timeout_not_one_per_domain(monkeypatch):
    silent = SilentResolver(0.3)
    with_resolver(monkeypatch, silent)
    domains = [f"d{i}.example{i}.org" for i in range(500)]
    started = time.monotonic()
    got = REAL_LOOK_UP(domains, settings(timeout=0.3), now=NOW)
    took = time.monotonic() - started
    assert took < 1.5, took  # 500 × 0.3 s one after another would be 150 s; 16 waves of 32, 5 s
    assert {e.status for e in got.values()} == {"failed"} and len(got) == 500
    assert silent.asked <= DM.WORKERS * 2
    assert "not asked: an earlier lookup got no answer within 0.3 s" in {e.detail.removeprefix("lookup failed: ")
                                                                         for e in got.values()}


def test_no_resolver_at_all_fails_every_domain_at_once(monkeypatch):
    def no_resolver(s):
        raise D.ResolverError("no nameservers: set [dns] nameservers in the config, or fix /etc/resolv.conf")

    monkeypatch.setattr(D, "make_resolver", no_resolver)
    got = REAL_LOOK_UP(["example.org"], settings(), now=NOW)
    assert got["example.org"].status == "failed" and "no nameservers" in got["example.org"].detail


def test_the_whole_phase_ends_at_its_budget(monkeypatch):
    """A resolver that answers, but slowly: what is left when the budget runs out is failed, not waited for."""

    class Slow(FakeResolver):
        def resolve(self, qname, rdtype, search=True):
            time.sleep(0.05)
            return super().resolve(qname, rdtype, search)

    with_resolver(monkeypatch, Slow({}))
    monkeypatch.setattr(DM, "BUDGET", 0.3)
    started = time.monotonic()
    got = REAL_LOOK_UP([f"d{i}.test" for i in range(2000)], settings(timeout=0.1), now=NOW)
    assert time.monotonic() - started < 2.0
    statuses = [e.status for e in got.values()]
    assert statuses.count("none") > 0 and statuses.count("failed") > 0
    assert "not asked: the lookups ran past 0.3 s" in {e.detail.removeprefix("lookup failed: ") for e in got.values()}
