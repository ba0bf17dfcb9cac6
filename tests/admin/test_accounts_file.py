"""The admin page's password hashes in ``[web] accounts_file``: its format, its mode, re-read while the app runs."""

from __future__ import annotations

import os
import stat

import pytest

from listfilter.admin import app as W
from listfilter.admin import auth as A
from listfilter.sync import config as C

from ..conftest import COURSE_LISTS

PASSWORD = "correct horse battery"
HASH = A.hash_password(PASSWORD)
OTHER = A.hash_password("another good password")


def write(path, text: str, mode: int = 0o640):
    path.write_text(text)
    path.chmod(mode)
    return path


def web_config(make_config, tmp_path, web: str = "", accounts: str = ""):
    """A config whose accounts file is tmp_path/web-accounts (never the host's /etc/listfilter)."""
    extra = f"[web.accounts]\n{accounts}\n" if accounts else ""
    return C.load(make_config(COURSE_LISTS + f'[web]\naccounts_file = "{tmp_path / "web-accounts"}"\n{web}\n{extra}'))


# ---------------------------------------------------------------- the mode


@pytest.mark.parametrize("mode, refused, warned", [
    (0o640, False, False), (0o600, False, False), (0o440, False, False), (0o400, False, False),
    (0o644, False, True), (0o604, False, True),
    (0o660, True, False), (0o620, True, False), (0o602, True, False), (0o666, True, False), (0o646, True, False),
])
def test_a_file_others_may_write_is_refused_and_one_all_may_read_is_warned_about(mode, refused, warned):
    why, warning = A.mode_problem(stat.S_IFREG | mode)
    assert (why is not None, warning is not None) == (refused, warned), (why, warning)
    if refused:
        assert f"mode {mode:04o}: writable by" in why


def test_reading_the_file(tmp_path):
    path = tmp_path / "web-accounts"
    assert A.read_accounts_file(path) == ({}, None)  # no file: no accounts, no complaint
    write(path, f"# comment\n\n Prof@Example.edu : {HASH}\nta@example.edu:{OTHER}\n")
    assert A.read_accounts_file(path) == ({"prof@example.edu": HASH, "ta@example.edu": OTHER}, None)
    path.chmod(0o644)
    accounts, warning = A.read_accounts_file(path)
    assert len(accounts) == 2 and warning == (f"{path}: mode 0644: every local user can read the password hashes"
                                              f" (chmod 0640 {path})")
    path.chmod(0o660)
    with pytest.raises(A.AccountsFileError, match=r"mode 0660: writable by its group, who could add an account;"
                                                  r" not used \(chmod 0640 "):
        A.read_accounts_file(path)


@pytest.mark.parametrize("text, error", [
    ("prof@example.edu:hunter2\n", "line 1: prof@example.edu: not a password hash"),
    (f"# accounts\nprof@example.edu {HASH}\n", "line 2: expected user:hash"),
    (f"a@example.edu:{HASH}\nA@example.edu:{OTHER}\n", "line 2: a@example.edu is listed twice"),
])
def test_a_malformed_file_names_the_line(tmp_path, text, error):
    path = write(tmp_path / "web-accounts", text)
    with pytest.raises(A.AccountsFileError, match=error):
        A.read_accounts_file(path)


# ---------------------------------------------------------------- writing it


def test_a_new_file_is_roots_of_the_apps_group_mode_0640(tmp_path):
    path = tmp_path / "web-accounts"
    uid, gid, mode = A.write_accounts(path, {"Prof@Example.edu": HASH}, "root")
    st = path.stat()
    assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (uid, gid, mode) == (os.geteuid(), 0, 0o640)
    assert path.read_text() == A.ACCOUNTS_HEADER + f"prof@example.edu:{HASH}\n"
    assert os.listdir(tmp_path) == ["web-accounts"]  # no temporary file left


def test_an_update_replaces_one_line_and_keeps_the_rest(tmp_path):
    path = write(tmp_path / "web-accounts", f"# ours\nprof@example.edu:{HASH}\n# the TAs\nta@example.edu:{HASH}\n",
                 0o644)
    os.chown(path, 0, 1)  # the app's group (here: daemon's)
    A.write_accounts(path, {"TA@example.edu": OTHER, "new@example.edu": HASH}, "no-such-group")
    assert path.read_text() == (f"# ours\nprof@example.edu:{HASH}\n# the TAs\nta@example.edu:{OTHER}\n"
                                f"new@example.edu:{HASH}\n")
    st = path.stat()
    assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (0, 1, 0o640)  # the group kept; no longer 0644
    path.chmod(0o600)
    A.write_accounts(path, {"ta@example.edu": HASH}, "root")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_an_unknown_group_for_a_new_file_is_refused(tmp_path):
    with pytest.raises(A.AccountsFileError, match="no group 'no-such-group'"):
        A.write_accounts(tmp_path / "web-accounts", {"a@example.edu": HASH}, "no-such-group")
    assert not (tmp_path / "web-accounts").exists()


def test_a_file_it_cannot_read_back_is_not_rewritten(tmp_path):
    path = write(tmp_path / "web-accounts", "prof@example.edu:hunter2\n")
    with pytest.raises(A.AccountsFileError, match="not a password hash"):
        A.write_accounts(path, {"a@example.edu": HASH}, "root")
    assert path.read_text() == "prof@example.edu:hunter2\n"


# ---------------------------------------------------------------- the app


def test_the_app_signs_in_the_files_accounts_and_rereads_it(make_config, tmp_path):
    config = web_config(make_config, tmp_path, accounts=f'"old@example.edu" = "{OTHER}"')
    path = write(tmp_path / "web-accounts", f"prof@example.edu:{HASH}\n")
    web = A.with_accounts(config.web)
    assert sorted(web.accounts) == ["old@example.edu", "prof@example.edu"]  # both places count
    assert A.verify_password(web.accounts, "prof@example.edu", PASSWORD)
    assert A.allowed(web, A.Roles(tmp_path / "none.json"), "prof@example.edu", "password")
    A.write_accounts(path, {"ta@example.edu": HASH}, "root")  # `web passwd` while the app runs
    assert "ta@example.edu" in web.accounts and A.verify_password(web.accounts, "ta@example.edu", PASSWORD)
    path.chmod(0o666)  # someone opened it up: the file lends no account until it is fixed
    assert sorted(web.accounts) == ["old@example.edu"]
    path.chmod(0o640)
    assert "prof@example.edu" in web.accounts


def test_the_file_wins_over_the_config(make_config, tmp_path):
    config = web_config(make_config, tmp_path, accounts=f'"prof@example.edu" = "{OTHER}"')
    write(tmp_path / "web-accounts", f"prof@example.edu:{HASH}\n")
    web = A.with_accounts(config.web)
    assert A.verify_password(web.accounts, "prof@example.edu", PASSWORD)


def test_the_app_does_not_start_with_an_unusable_file_or_no_way_in(make_config, tmp_path):
    config = web_config(make_config, tmp_path)
    with pytest.raises(W.WebError, match=r"no way in: set proxy_header and proxies \(single sign-on\), or add an"
                                         r" account with `listfilter web passwd USER` \(it writes .*web-accounts\)"):
        W.create_app(config)
    path = write(tmp_path / "web-accounts", f"prof@example.edu:{HASH}\n", 0o660)
    with pytest.raises(W.WebError, match="mode 0660: writable by its group"):
        W.create_app(config)
    path.chmod(0o640)
    client = W.create_app(config).test_client()
    page = client.get("/login").get_data(as_text=True)
    token = page.split('name="csrf_token" value="', 1)[1].split('"', 1)[0]
    signed_in = client.post("/login", data={"csrf_token": token, "username": "prof@example.edu",
                                             "password": PASSWORD, "next": "/email"})
    assert signed_in.status_code == 302 and signed_in.headers["Location"].endswith("/email")
