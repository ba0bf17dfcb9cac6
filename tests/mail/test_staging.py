"""The staging valve (``redirect_all_to``): config errors, where the copies go, the header, and the
places that say it is on (check, sync, the virtual map)."""

from __future__ import annotations

import email
import email.policy

import pytest

from listfilter.common import staging as ST
from listfilter.sync import config as C

from ..cli.runner import listfilter
from ..conftest import EXAMPLE
from .test_deliver import POST, STUDENT_RECIPIENTS, Env

STAGING = "staging@example.edu"
DEV_STUDENTS = "students@lists-dev.example.edu"
#: docs/example with the valve on for the dev domain only.
DEV_VALVE = ('[domains."lists-dev.example.edu"]\ncourse = "CS 199"\n',
             f'[domains."lists-dev.example.edu"]\ncourse = "CS 199"\nredirect_all_to = "{STAGING}"\n')


def example_with(tmp_path, old: str, new: str) -> C.Config:
    src = (EXAMPLE / "lists.toml").read_text()
    assert src.count(old) == 1, old
    path = tmp_path / "lists.toml"
    path.write_text(src.replace(old, new).replace('csv = "roster.csv"', f'csv = "{EXAMPLE / "roster.csv"}"'))
    return C.load(path)


# ---------------------------------------------------------------- config


def test_the_valve_is_off_by_default():
    config = C.load(EXAMPLE / "lists.toml")
    assert config.redirects() == {} and config.staging_note() is None


def test_a_domain_valve_covers_that_domain_only(tmp_path):
    config = example_with(tmp_path, *DEV_VALVE)
    assert config.redirects() == {"lists-dev.example.edu": STAGING}
    assert config.redirect_for("lists.example.edu") is None
    assert config.staging_note() == ("STAGING: redirect_all_to is on: every copy for the lists on"
                                     f" lists-dev.example.edu goes only to {STAGING}")


def test_the_site_valve_covers_every_domain_and_a_domain_may_name_its_own(tmp_path):
    config = example_with(tmp_path, 'timezone = "America/Chicago"\n',
                          'timezone = "America/Chicago"\nredirect_all_to = "Site@Example.EDU"\n')
    assert config.redirects() == {"lists-dev.example.edu": "Site@example.edu", "lists.example.edu": "Site@example.edu"}
    src = (EXAMPLE / "lists.toml").read_text().replace(*DEV_VALVE).replace(
        'timezone = "America/Chicago"\n', 'timezone = "America/Chicago"\nredirect_all_to = "site@example.edu"\n')
    (tmp_path / "both.toml").write_text(src)
    config = C.load(tmp_path / "both.toml")  # the domain's own wins over [site]'s
    assert config.redirects() == {"lists-dev.example.edu": STAGING, "lists.example.edu": "site@example.edu"}


@pytest.mark.parametrize("where, value, words", [
    ("site", '"not an address"', "site.redirect_all_to: malformed address 'not an address'"),
    ("site", "42", "site.redirect_all_to"),
    ("domain", '"nobody@"', 'domains.lists-dev.example.edu.redirect_all_to: malformed address'),
    ("domain", '"students@lists.example.edu"',
     "domains.lists-dev.example.edu.redirect_all_to: students@lists.example.edu is an address of lists.students"),
])
def test_a_bad_redirect_names_the_file_and_the_field(tmp_path, where, value, words):
    old, new = (('timezone = "America/Chicago"\n', f'timezone = "America/Chicago"\nredirect_all_to = {value}\n')
                if where == "site" else (DEV_VALVE[0], DEV_VALVE[0] + f"redirect_all_to = {value}\n"))
    with pytest.raises(C.ConfigError) as info:
        example_with(tmp_path, old, new)
    assert str(info.value).startswith(f"{tmp_path / 'lists.toml'}: "), info.value
    assert words in str(info.value)


# ---------------------------------------------------------------- the header and the recipients


def test_redirected_sends_only_to_the_staging_address():
    assert ST.redirected(["a@x.edu", "b@y.edu"], None) == ["a@x.edu", "b@y.edu"]
    assert ST.redirected(["a@x.edu", "b@y.edu"], STAGING) == [STAGING]
    assert ST.redirected([], STAGING) == []  # nobody to send to: nothing goes to staging either


def test_the_header_names_the_real_recipients():
    assert ST.redirect_header(["a@x.edu", "b@y.edu"]) == (
        b"X-Listfilter-Redirected-Recipients: 2 recipients: a@x.edu, b@y.edu\n")
    assert ST.redirect_header(["a@x.edu"]) == b"X-Listfilter-Redirected-Recipients: 1 recipient: a@x.edu\n"


def test_the_header_is_capped_folded_and_counts_the_rest():
    many = [f"student{i:04d}@example.edu" for i in range(2000)]
    field = ST.redirect_header(many)
    lines = field.decode().split("\n")[:-1]
    assert all(len(line) <= 78 for line in lines)
    assert all(line.startswith(" ") for line in lines[1:])  # folded: one field
    value = email.message_from_bytes(field + b"\n", policy=email.policy.default)[ST.REDIRECT_HEADER]
    shown = value.split(": ", 1)[1].split(", ")
    assert value.startswith("2000 recipients: student0000@example.edu, ")
    assert len(value) < ST.REDIRECT_HEADER_CAP + 100
    assert shown[-1].endswith(f"and {2000 - len(shown) + 1} more")
    assert field.isascii()


def test_a_hostile_address_cannot_break_the_header():
    field = ST.redirect_header(["a@x.edu\nBcc: victim@example.org", "b@y.edu"])
    lines = field.split(b"\n")
    assert lines[-1] == b"" and all(line.startswith(b" ") for line in lines[1:-1])  # one field, folded
    assert b"\nBcc" not in field


# ---------------------------------------------------------------- the mail side (listfilter-deliver)


@pytest.fixture
def staged(tmp_path):
    return Env(tmp_path, edit=DEV_VALVE)


def test_a_post_on_the_dev_domain_goes_only_to_staging_naming_the_members(staged):
    proc = staged.deliver(POST.replace(b"To: students@lists.example.edu", b"To: " + DEV_STUDENTS.encode()),
                          DEV_STUDENTS)
    assert proc.returncode == 0, proc.stderr
    [(argv, msg)] = staged.sent()
    assert argv == ["-G", "-i", "-f", "students-bounces@lists-dev.example.edu", "-XV", "--", STAGING]
    parsed = email.message_from_bytes(msg, policy=email.policy.default)
    assert parsed[ST.REDIRECT_HEADER] == "5 recipients: " + ", ".join(STUDENT_RECIPIENTS)
    assert parsed["List-Id"] == '"CS 199 Students" <students.lists-dev.example.edu>'
    [event] = staged.events()  # the mail log keeps the real recipients, and says where the copy went
    assert event["status"] == "delivered" and event["recipients"] == STUDENT_RECIPIENTS
    assert event["error_message"] == f"redirected to {STAGING} (staging)"


def test_a_post_on_the_prod_domain_is_unaffected(staged):
    proc = staged.deliver(POST)
    assert proc.returncode == 0, proc.stderr
    [(argv, msg)] = staged.sent()
    assert argv[6:] == STUDENT_RECIPIENTS
    assert ST.REDIRECT_HEADER.encode() not in msg
    [event] = staged.events()
    assert event["error_message"] == ""


def test_a_refusal_notice_on_the_dev_domain_goes_to_staging(staged):
    stranger = POST.replace(b'"Jane Doe" <Instructor@example.edu>', b"Alice <alice@example.edu>")
    proc = staged.deliver(stranger, DEV_STUDENTS, "alice@example.edu")
    assert proc.returncode == 0, proc.stderr
    [(argv, notice)] = staged.sent()
    assert argv == ["-G", "-i", "-f", "<>", "--", STAGING]
    parsed = email.message_from_bytes(notice, policy=email.policy.default)
    assert parsed[ST.REDIRECT_HEADER] == "1 recipient: alice@example.edu"
    assert parsed["To"] == "alice@example.edu"  # the notice as the poster would have had it
    [event] = staged.events()
    assert event["status"] == "bounced"
    assert event["error_message"].endswith(f"notice for <alice@example.edu> redirected to {STAGING} (staging)")


def test_request_mail_on_the_dev_domain_goes_to_staging(staged):
    proc = staged.deliver(POST, "students-request@lists-dev.example.edu", "alice@example.edu")
    assert proc.returncode == 0, proc.stderr
    [(argv, msg)] = staged.sent()
    assert argv == ["-G", "-i", "-f", "alice@example.edu", "--", STAGING]
    assert msg == b"X-Listfilter-Redirected-Recipients: 1 recipient: instructor@example.edu\n" + POST


def test_the_dry_run_says_where_the_copy_would_go(staged):
    proc = staged.deliver(POST, DEV_STUDENTS, "instructor@example.edu", "--dry-run")
    assert proc.returncode == 0, proc.stderr
    assert f"staging: redirected to {STAGING} (staging): the copy goes only there".encode() in proc.stdout
    assert staged.sent() == []


# ---------------------------------------------------------------- sync, check and the maps


def test_sync_check_and_the_virtual_map_say_it_is_on(staged):
    line = f"STAGING: redirect_all_to is on: every copy for the lists on lists-dev.example.edu goes only to {STAGING}"
    for args in (("sync",), ("sync", "--quiet"), ("sync", "--dry-run")):
        ran = listfilter(staged.config, *args)
        assert ran.returncode == 0, ran.stderr
        assert f"listfilter: {line}\n" in ran.stderr, args
    ran = listfilter(staged.config, "check", "--offline")
    assert f"ok       staging: {line}\n" in ran.stdout
    virtual = (staged.config.parent / "state" / "postfix" / "virtual").read_text()
    assert f"students-owner@lists-dev.example.edu\t{STAGING}\n" in virtual
    assert "students-owner@lists.example.edu\tinstructor@example.edu\n" in virtual


def test_sync_and_check_are_quiet_about_it_when_it_is_off(tmp_path):
    env = Env(tmp_path)
    assert "STAGING" not in listfilter(env.config, "sync", "--quiet").stderr
    assert "staging" not in listfilter(env.config, "check", "--offline").stdout
