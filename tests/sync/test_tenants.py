"""Many tenants: one list definition served on many domains, each filling in its own name, fields, owners
and reply_to (docs/config.md, "Many tenants").

Parsing of the domain's fields, the placeholders and their errors (each message names the list, the field,
the domain and the placeholder), the precedence of owners and reply_to, and the per-domain values reaching
the compiled lists, the refusal notice, the -owner alias and `listfilter lists`.
"""

from __future__ import annotations

import json

import pytest

from listfilter.sync import compiler as K
from listfilter.sync import config as C
from listfilter.sync import maps as M
from listfilter.sync import roster as R

from ..cli.runner import listfilter
from ..conftest import EXAMPLE, REPO

SSC, LGC, BARE = "ssc.example.org", "lgc.example.org", "bare.example.org"

DOMAINS = f"""
[domains."{SSC}"]
name = "Sky Soaring Club"
course = "SSC"
owners = ["chair@skysoaring.example"]
reply_to = "members"
fields = {{ short = "SSC", cfi = "cfi@skysoaring.example" }}

[domains."{LGC}"]
name = "Lakeside Gliding Club"
course = "LGC"
reply_to = "Office@LGC.Example"
fields = {{ short = "LGC", cfi = "Chief.Pilot@LGC.Example" }}
"""

LISTS = """
[lists.members]
display_name = "{name} Members"
description = "Everyone at {name} ({course})"
members = { roles = ["student", "ta"] }
posters = "members"

[lists.pilots]
display_name = "{name} Pilots"
subject_tag = "{short} Pilots"
owners = ["{cfi}"]
members = { roles = ["ta"] }
posters = "members"

[lists.board]
display_name = "{short} Board"
owners = ["board-owner@clubs.example"]
reply_to = "board"
members = { roles = ["ta"] }
posters = "members"
"""

SITE = """
[site]
owners = ["ops@clubs.example"]
[roster]
"""


def load_text(tmp_path, text: str) -> C.Config:
    path = tmp_path / "lists.toml"
    path.write_text(text)
    return C.load(path)


def error(tmp_path, text: str) -> str:
    with pytest.raises(C.ConfigError) as info:
        load_text(tmp_path, text)
    message = str(info.value)
    prefix = f"{tmp_path / 'lists.toml'}: "
    assert message.startswith(prefix), message
    return message.removeprefix(prefix)


@pytest.fixture
def clubs(tmp_path) -> C.Config:
    return load_text(tmp_path, SITE + DOMAINS + LISTS)


# ---------------------------------------------------------------- parsing


def test_a_domain_reads_its_name_owners_reply_to_and_fields(clubs):
    ssc, lgc = clubs.domains[SSC], clubs.domains[LGC]
    assert (ssc.tenant_name, ssc.course, ssc.owners, ssc.reply_to) == (
        "Sky Soaring Club", "SSC", ("chair@skysoaring.example",), "members")
    assert ssc.fields == {"short": "SSC", "cfi": "cfi@skysoaring.example"}
    assert lgc.reply_to == "Office@lgc.example" and lgc.owners == ()  # an address: its domain lower-cased
    assert ssc.placeholders() == {"name": "Sky Soaring Club", "course": "SSC", "domain": SSC, "short": "SSC",
                                  "cfi": "cfi@skysoaring.example"}


def test_a_domain_without_the_new_keys_is_as_before(tmp_path):
    config = load_text(tmp_path, SITE + f'[domains."{BARE}"]\n' + LISTS.split("[lists.pilots]")[0]
                       .replace("{name} Members", "Members").replace("Everyone at {name} ({course})", "Everyone"))
    bare = config.domains[BARE]
    assert (bare.tenant_name, bare.owners, bare.reply_to, bare.fields) == (None, (), None, {})
    assert bare.placeholders() == {"domain": BARE}


def test_the_list_keeps_what_was_written(clubs):
    pilots = clubs.lists["pilots"]
    assert (pilots.display_name, pilots.subject_tag, pilots.owners) == ("{name} Pilots", "{short} Pilots", ("{cfi}",))
    assert clubs.lists["members"].owners == () and clubs.lists["members"].subject_tag == "{name} Members"


# ---------------------------------------------------------------- placeholders


def test_each_domain_fills_in_its_own_texts(clubs):
    got = {(n, d): clubs.for_domain(clubs.lists[n], d) for n in clubs.lists for d in (SSC, LGC)}
    assert got["members", SSC].display_name == "Sky Soaring Club Members"
    assert got["members", LGC].display_name == "Lakeside Gliding Club Members"
    assert got["members", SSC].subject_tag == "Sky Soaring Club Members"  # the default follows display_name
    assert got["members", LGC].description == "Everyone at Lakeside Gliding Club (LGC)"
    assert (got["pilots", SSC].subject_tag, got["pilots", LGC].subject_tag) == ("SSC Pilots", "LGC Pilots")
    assert got["board", LGC].display_name == "LGC Board"


def test_domain_is_always_there_and_doubled_braces_are_literal(tmp_path):
    config = load_text(tmp_path, SITE + f'[domains."{BARE}"]\n[lists.x]\ndisplay_name = "{{{{x}}}} on {{domain}}"\n'
                                 'members = { emails = ["a@example.org"] }\nposters = []\n')
    assert config.for_domain(config.lists["x"], BARE).display_name == f"{{x}} on {BARE}"


def test_a_text_without_placeholders_is_as_written(tmp_path):
    config = load_text(tmp_path, SITE + DOMAINS + LISTS.replace("{name} Members", "Club Members  (all)"))
    served = config.for_domain(config.lists["members"], LGC)
    assert (served.display_name, served.subject_tag) == ("Club Members  (all)", "Club Members  (all)")


PLACEHOLDER_ERRORS = [
    # (domain table, list's display_name, expected message)
    ('[domains."x.example.org"]\n', "{name} Members",
     'lists.members.display_name: "{name} Members" uses {name}, which domains."x.example.org" does not set'),
    ('[domains."x.example.org"]\nname = "X"\n', "{name} ({course})",
     'lists.members.display_name: "{name} ({course})" uses {course}, which domains."x.example.org" does not set'),
    ('[domains."x.example.org"]\nfields = { short = "X" }\n', "{shrt} Members",
     'lists.members.display_name: "{shrt} Members" uses {shrt}, which domains."x.example.org" does not set'),
    ('[domains."x.example.org"]\nname = "X"\n', "{name.upper} Members",
     'lists.members.display_name: "{name.upper} Members": {name.upper} is not a placeholder: only plain names'),
    ('[domains."x.example.org"]\nname = "X"\n', "{name[0]}",
     'lists.members.display_name: "{name[0]}": {name[0]} is not a placeholder'),
    ('[domains."x.example.org"]\nname = "X"\n', "{name:>20}",
     'lists.members.display_name: "{name:>20}": {name:>20} is not a placeholder'),
    ('[domains."x.example.org"]\nname = "X"\n', "{name!r}",
     'lists.members.display_name: "{name!r}": {name!r} is not a placeholder'),
    ('[domains."x.example.org"]\n', "{} Members", 'lists.members.display_name: "{} Members": {} is not a placeholder'),
    ('[domains."x.example.org"]\n', "{0} Members", 'lists.members.display_name: "{0} Members": {0} is not a'),
    ('[domains."x.example.org"]\nname = "X"\n', "{name Members",
     "lists.members.display_name: \"{name Members\": expected '}' before end of string (write {{ and }} for a"
     " literal brace)"),
    ('[domains."x.example.org"]\n', "Members}", "lists.members.display_name: \"Members}\": Single '}'"),
]


@pytest.mark.parametrize("domain,display,expected", PLACEHOLDER_ERRORS,
                         ids=[f"{i}-{e[1]}" for i, e in enumerate(PLACEHOLDER_ERRORS)])
def test_a_placeholder_error_names_the_list_field_domain_and_placeholder(tmp_path, domain, display, expected):
    text = (SITE + domain + f'[lists.members]\ndisplay_name = "{display}"\n'
            'members = { emails = ["a@example.org"] }\nposters = []\n')
    assert error(tmp_path, text).startswith(expected)


@pytest.mark.parametrize("field", ["subject_tag", "description"])
def test_every_text_is_checked_on_every_domain(tmp_path, field):
    # fine on the first domain, not on the second: the message names the second
    text = SITE + DOMAINS.replace('reply_to = "members"\n', "") + f'[domains."{BARE}"]\n[lists.x]\n' \
        f'{field} = "{{short}} news"\nmembers = {{ emails = ["a@example.org"] }}\nposters = []\n'
    assert error(tmp_path, text) == (f'lists.x.{field}: "{{short}} news" uses {{short}}, which'
                                     f' domains."{BARE}" does not set')


def test_a_list_served_only_where_its_placeholders_are_set_loads(tmp_path):
    text = SITE + DOMAINS + f'[domains."{BARE}"]\n' + LISTS.replace('posters = "members"\n',
                                                                     f'posters = "members"\ndomains = ["{SSC}", "{LGC}"]\n')
    config = load_text(tmp_path, text)
    assert config.lists["pilots"].domains == (SSC, LGC)


DOMAIN_ERRORS = [
    ("colour = 'red'\n", f"domains.{SSC}.colour: unknown key"),
    ("name = 3\n", f"domains.{SSC}.name: expected a string, not an integer"),
    ("owners = ['chair']\n", f"domains.{SSC}.owners[0]: malformed address 'chair'"),
    ("reply_to = 'a@b@c'\n", f"domains.{SSC}.reply_to: malformed address"),
    ("reply_to = 'nolist'\n", f"domains.{SSC}.reply_to: 'nolist' is neither an address nor a list name"),
    ("fields = { short = 3 }\n", f"domains.{SSC}.fields.short: expected a string, not an integer"),
    ("fields = { 'short-name' = 'S' }\n", f"domains.{SSC}.fields.short-name: not a placeholder name"),
    ("fields = { name = 'S' }\n", f"domains.{SSC}.fields.name: {{name}} is the domain's name: set it beside fields"),
    ("fields = { domain = 'S' }\n", f"domains.{SSC}.fields.domain: {{domain}} is always the domain's own name"),
    ("fields = 'S'\n", f"domains.{SSC}.fields: expected a table, not a string"),
]


@pytest.mark.parametrize("extra,expected", DOMAIN_ERRORS, ids=[e[1].split(":")[0] + f"-{i}"
                                                              for i, e in enumerate(DOMAIN_ERRORS)])
def test_a_domain_error_names_the_field(tmp_path, extra, expected):
    text = SITE + f'[domains."{SSC}"]\n{extra}[lists.x]\nmembers = {{ emails = ["a@example.org"] }}\nposters = []\n'
    assert error(tmp_path, text).startswith(expected)


def test_a_domain_reply_to_list_must_be_served_there(tmp_path):
    text = (SITE + f'[domains."{SSC}"]\nreply_to = "board"\n[domains."{LGC}"]\n[lists.x]\n'
            'members = { emails = ["a@example.org"] }\nposters = []\n'
            f'[lists.board]\nmembers = {{ emails = ["a@example.org"] }}\nposters = []\ndomains = ["{LGC}"]\n')
    assert error(tmp_path, text) == f"domains.{SSC}.reply_to: list 'board' is not served on {SSC}"


def test_a_domain_reply_to_is_checked_where_no_list_uses_it(tmp_path):
    text = (SITE + f'[domains."{SSC}"]\nreply_to = "nolist"\n[lists.x]\nreply_to = "x@example.org"\n'
            'members = { emails = ["a@example.org"] }\nposters = []\n')
    assert error(tmp_path, text) == f"domains.{SSC}.reply_to: 'nolist' is neither an address nor a list name"


# ---------------------------------------------------------------- owners and reply_to


def test_owners_the_lists_own_else_the_domains_else_the_sites(clubs):
    owners = {(n, d): clubs.for_domain(clubs.lists[n], d).owners for n in clubs.lists for d in (SSC, LGC)}
    assert owners["board", SSC] == owners["board", LGC] == ("board-owner@clubs.example",)  # the list's own
    assert owners["pilots", SSC] == ("cfi@skysoaring.example",)  # the list's own, filled in per domain
    assert owners["pilots", LGC] == ("Chief.Pilot@lgc.example",)  # ... and checked: the domain lower-cased
    assert owners["members", SSC] == ("chair@skysoaring.example",)  # the domain's
    assert owners["members", LGC] == ("ops@clubs.example",)  # [site]'s


def test_no_owners_anywhere_is_an_error_naming_the_domain(tmp_path):
    text = SITE.replace('owners = ["ops@clubs.example"]\n', "") + DOMAINS + LISTS
    assert error(tmp_path, text) == (f'lists.members.owners: no owners on domains."{LGC}": set this, the'
                                     " domain's owners, or site.owners")


def test_an_owner_that_is_no_address_on_one_domain_is_an_error_there(tmp_path):
    text = SITE + DOMAINS.replace('cfi = "Chief.Pilot@LGC.Example"', 'cfi = "chief pilot"') + LISTS
    message = error(tmp_path, text)
    assert message.startswith("lists.pilots.owners[0]: malformed address 'chief pilot'"), message
    assert message.endswith(f' (from "{{cfi}}" on domains."{LGC}")'), message


def test_reply_to_the_lists_own_else_the_domains_else_none(clubs, tmp_path):
    reply = {(n, d): clubs.reply_to_address(clubs.lists[n], d) for n in clubs.lists for d in (SSC, LGC)}
    assert reply["board", SSC] == f"board@{SSC}" and reply["board", LGC] == f"board@{LGC}"  # the list's own
    assert reply["members", SSC] == reply["pilots", SSC] == f"members@{SSC}"  # the domain's, a list name
    assert reply["members", LGC] == reply["pilots", LGC] == "Office@lgc.example"  # the domain's, an address
    bare = load_text(tmp_path, SITE + f'[domains."{BARE}"]\n[lists.x]\nmembers = {{ emails = ["a@example.org"] }}\n'
                               "posters = []\n")
    assert bare.reply_to_address(bare.lists["x"], BARE) is None


def test_a_reply_to_with_placeholders_is_an_address_or_a_list_per_domain(tmp_path):
    text = SITE + DOMAINS + LISTS.replace('reply_to = "board"', 'reply_to = "{cfi}"')
    config = load_text(tmp_path, text)
    assert config.reply_to_address(config.lists["board"], SSC) == "cfi@skysoaring.example"
    assert config.reply_to_address(config.lists["board"], LGC) == "Chief.Pilot@lgc.example"
    bad = SITE + DOMAINS.replace('cfi = "Chief.Pilot@LGC.Example"', 'cfi = "chief"') + LISTS.replace(
        'reply_to = "board"', 'reply_to = "{cfi}"').replace('owners = ["{cfi}"]\n', "")
    assert error(tmp_path, bad) == "lists.board.reply_to: 'chief' is neither an address nor a list name"


# ---------------------------------------------------------------- downstream: compiled lists, notice, maps, CLI

ROSTER = ("email,name,enrollment_type,active,semester,course\n"
          "ann@example.org,Ann,ta,true,current,SSC\n"
          "ben@example.org,Ben,student,true,current,SSC\n"
          "cat@example.org,Cat,ta,true,current,LGC\n")


@pytest.fixture
def compiled(tmp_path):
    (tmp_path / "roster.csv").write_text(ROSTER)
    path = tmp_path / "lists.toml"
    path.write_text(SITE.replace("[roster]\n", '[roster]\ncsv = "roster.csv"\n') + DOMAINS + LISTS)
    config = C.load(path)
    return config, {l.address: l for l in K.compile_lists(config, R.load(config))}


def test_each_compiled_list_carries_its_domains_values(compiled):
    _, lists = compiled
    ssc, lgc = lists[f"pilots@{SSC}"], lists[f"pilots@{LGC}"]
    assert (ssc.display_name, ssc.subject_tag, ssc.owners, ssc.reply_to) == (
        "Sky Soaring Club Pilots", "SSC Pilots", ("cfi@skysoaring.example",), f"members@{SSC}")
    assert (lgc.display_name, lgc.subject_tag, lgc.owners, lgc.reply_to) == (
        "Lakeside Gliding Club Pilots", "LGC Pilots", ("Chief.Pilot@lgc.example",), "Office@lgc.example")
    assert [m.email for m in ssc.members] == ["ann@example.org"] and [m.email for m in lgc.members] == ["cat@example.org"]
    assert lists[f"members@{LGC}"].description == "Everyone at Lakeside Gliding Club (LGC)"


def test_the_refusal_notice_names_the_tenants_list_and_contact(compiled):
    _, lists = compiled
    notice = lists[f"pilots@{SSC}"].notice
    assert "Sky Soaring Club Pilots" in notice and "Lakeside" not in notice
    # the contact is the club's members list, named as this domain serves it
    assert f"members@{SSC}" in notice and "Sky Soaring Club Members" in notice


def test_the_owner_alias_reaches_the_tenants_owners(compiled):
    config, lists = compiled
    virtual = M.render(config, list(lists.values()))["virtual"]
    assert f"pilots-owner@{SSC}\tcfi@skysoaring.example\n" in virtual
    assert f"pilots-owner@{LGC}\tChief.Pilot@lgc.example\n" in virtual
    assert f"members-owner@{SSC}\tchair@skysoaring.example\n" in virtual
    assert f"members-owner@{LGC}\tops@clubs.example\n" in virtual


def test_listfilter_lists_shows_each_domains_values(compiled):
    config, _ = compiled
    ran = listfilter(config.path, "lists", "--json")
    assert ran.returncode == 0, ran.stderr
    got = {l["address"]: l for l in json.loads(ran.stdout)}
    assert got[f"board@{LGC}"]["display_name"] == "LGC Board" and got[f"board@{LGC}"]["reply_to"] == f"board@{LGC}"
    assert got[f"members@{SSC}"]["owners"] == ["chair@skysoaring.example"]
    plain = listfilter(config.path, "lists").stdout
    assert f"members@{SSC}\tSky Soaring Club Members\t" in plain


# ---------------------------------------------------------------- the bundled example


def test_the_clubs_example_serves_four_lists_on_every_club():
    config = C.load(EXAMPLE / "clubs.toml")
    assert len(config.domains) >= 3 and len(config.lists) >= 4
    names = set()
    for lst in config.lists.values():
        assert set(lst.domains) == set(config.domains)
        for d in config.domains:
            served = config.for_domain(lst, d)
            assert config.domains[d].tenant_name in served.display_name, (lst.name, d)
            names.add(served.display_name)
    assert len(names) == len(config.lists) * len(config.domains)  # no two lists anywhere share a name
    members = config.lists["members"]
    assert members.display_name == "{name} Members"
    assert len({config.for_domain(members, d).owners for d in config.domains}) == len(config.domains)
    assert len({config.reply_to_address(members, d) for d in config.domains}) == len(config.domains)


def test_the_documented_error_is_the_real_one(tmp_path):
    text = SITE + '[domains."x.example.org"]\n' + LISTS.split("[lists.pilots]")[0]
    line = f"listfilter: config error: lists.toml: {error(tmp_path, text)}"
    assert line in (REPO / "docs" / "config.md").read_text()
