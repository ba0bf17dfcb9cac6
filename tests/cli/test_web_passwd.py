"""`listfilter web passwd` writes the accounts file; `listfilter check` says where the hashes are and how safe."""

from __future__ import annotations

import stat

from listfilter.admin import auth as A
from listfilter.sync import config as C

from ..conftest import COURSE_LISTS
from .runner import listfilter

PASSWORD = "s3cret-pass"
HASH = A.hash_password("correct horse battery")


def config_with(make_config, tmp_path, web: str = "", accounts: str = ""):
    extra = f"[web.accounts]\n{accounts}\n" if accounts else ""
    return make_config(COURSE_LISTS + f'[web]\naccounts_file = "{tmp_path / "web-accounts"}"\n{web}\n{extra}')


def test_passwd_writes_the_accounts_file(make_config, tmp_path):
    path = config_with(make_config, tmp_path)
    ran = listfilter(path, "web", "passwd", "Prof@Example.edu", "--stdin", "--group", "root", input=PASSWORD + "\n")
    accounts = tmp_path / "web-accounts"
    assert ran.returncode == 0, ran.stderr
    assert ran.stdout == f"prof@example.edu: password hash written to {accounts} (root:root, mode 0640)\n"
    st = accounts.stat()
    assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (0, 0, 0o640)
    first = A.read_accounts_file(accounts)[0]["prof@example.edu"]
    assert first.startswith("scrypt:131072:8:1$")
    # again: the line is replaced, not added
    assert listfilter(path, "web", "passwd", "prof@example.edu", "--stdin", input="another-pass\n").returncode == 0
    again = A.read_accounts_file(accounts)[0]
    assert list(again) == ["prof@example.edu"] and again["prof@example.edu"] != first
    assert A.verify_password(A.with_accounts(C.load(path).web).accounts, "prof@example.edu", "another-pass")


def test_passwd_prints_without_a_user_or_with_print(make_config, tmp_path):
    path = config_with(make_config, tmp_path)
    ran = listfilter(path, "web", "passwd", "--stdin", input=PASSWORD + "\n")
    assert ran.returncode == 0 and ran.stdout.startswith("scrypt:131072:8:1$") and ran.stdout.count("\n") == 1
    ran = listfilter(path, "web", "passwd", "P@example.edu", "--print", "--stdin", input=PASSWORD + "\n")
    assert ran.returncode == 0 and ran.stdout.startswith("p@example.edu:scrypt:131072:8:1$")
    assert not (tmp_path / "web-accounts").exists()


def test_passwd_from_config_copies_the_hashes_and_check_tells_to_do_it(make_config, tmp_path):
    path = config_with(make_config, tmp_path, accounts=f'"prof@example.edu" = "{HASH}"\n"ta@example.edu" = "{HASH}"')
    ran = listfilter(path, "check", "--offline")
    assert ran.returncode == 0, ran.stdout  # a warning, not a problem: the accounts keep working
    assert (f"ok       web accounts: warning: 2 password hashes in [web.accounts] of {path}, which every local"
            " user can read and which is meant for version control: run `listfilter web passwd --from-config`"
            f" to copy them to {tmp_path / 'web-accounts'}, then delete [web.accounts] from {path}\n") in ran.stdout
    ran = listfilter(path, "web", "passwd", "--from-config", "--group", "root")
    assert ran.returncode == 0, ran.stderr
    assert ran.stdout.splitlines()[-1] == (f"now delete [web.accounts] from {path}: the accounts file's hashes"
                                           " are the ones used")
    assert A.read_accounts_file(tmp_path / "web-accounts")[0] == {"prof@example.edu": HASH, "ta@example.edu": HASH}
    path.write_text(path.read_text().split("[web.accounts]")[0])  # what the administrator does next
    ran = listfilter(path, "check", "--offline")
    assert ran.returncode == 0 and "warning" not in ran.stdout, ran.stdout
    assert "ok       web accounts: 2 accounts, every hash meets OWASP's minimums" in ran.stdout


def test_check_refuses_a_writable_file_and_warns_of_a_readable_one(make_config, tmp_path):
    path = config_with(make_config, tmp_path)
    accounts = tmp_path / "web-accounts"
    accounts.write_text(f"prof@example.edu:{HASH}\n")
    accounts.chmod(0o664)
    ran = listfilter(path, "check", "--offline")
    assert ran.returncode == 1
    assert (f"PROBLEM  web accounts: {accounts}: mode 0664: writable by its group, who could add an account;"
            f" not used (chmod 0640 {accounts})") in ran.stdout
    assert "PROBLEM  web: no way in" in ran.stdout  # and so nobody can sign in
    accounts.chmod(0o644)
    ran = listfilter(path, "check", "--offline")
    assert ran.returncode == 0, ran.stdout
    assert (f"ok       web accounts: warning: {accounts}: mode 0644: every local user can read the password"
            f" hashes (chmod 0640 {accounts})") in ran.stdout


def test_check_reports_no_way_in(make_config, tmp_path):
    ran = listfilter(config_with(make_config, tmp_path), "check", "--offline")
    assert ran.returncode == 1
    assert (f"PROBLEM  web: no way in: set proxy_header and proxies (single sign-on), or add an account with"
            f" `listfilter web passwd USER` (it writes {tmp_path / 'web-accounts'})") in ran.stdout
