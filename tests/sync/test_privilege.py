"""sync's privilege split (listfilter.sync.privilege): dropping to the service user, the pipe, what root prepares.

The tests run as root (the drop needs it) and fork real children; a whole
divided sync against a real Postfix is in tests/integration/test_privilege.py.
"""

from __future__ import annotations

import fcntl
import io
import json
import os
import signal
import stat
import textwrap
from pathlib import Path

import pytest

from listfilter.common.errors import EX_CONFIG, ListfilterError
from listfilter.common.snapshot import SnapshotError
from listfilter.sync import config as C
from listfilter.sync import maps as M
from listfilter.sync import privilege as P
from listfilter.sync import roster as R
from listfilter.sync import run as Y

from ..conftest import REPO
from ..harness.postfix import ensure_user, traversable_tmpdir

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="dropping privileges needs root")


@pytest.fixture(scope="module")
def acct() -> P.Account:
    ensure_user("listfilter")
    return P.account("listfilter")


@pytest.fixture
def shared():
    """A directory the user can reach (pytest's tmp_path is root's alone, mode 0700)."""
    with traversable_tmpdir(prefix="listfilter-priv-") as d:
        yield d


# ---------------------------------------------------------------- the drop


def ids() -> dict:
    """What the child is, as the kernel sees it."""
    try:
        os.setuid(0)
        regained = True
    except PermissionError:
        regained = False
    return {"resuid": list(os.getresuid()), "resgid": list(os.getresgid()), "groups": sorted(os.getgroups()),
            "regained": regained, "umask": os.umask(0o027), "cwd": os.getcwd(), "home": os.environ["HOME"],
            "user": os.environ["USER"]}


def test_the_child_is_the_user_for_good(acct):
    got = P.call(acct, lambda ask: ids())
    assert got["resuid"] == [acct.uid] * 3 and got["resgid"] == [acct.gid] * 3
    assert got["groups"] == sorted(set(os.getgrouplist(acct.name, acct.gid)))  # root's groups are gone
    assert 0 not in got["groups"]
    assert not got["regained"]
    assert got["umask"] == P.CHILD_UMASK and got["cwd"] == "/"
    assert (got["home"], got["user"]) == (acct.home, acct.name)
    assert os.geteuid() == 0  # the parent stays root


def test_drop_checks_instead_of_trusting_setuid(acct, monkeypatch):
    monkeypatch.setattr(os, "setuid", lambda uid: None)  # a setuid that silently does nothing
    with pytest.raises(P.ChildError) as err:
        P.call(acct, lambda ask: ids())
    assert err.value.report().startswith(f"privileges: dropping to {acct.name} failed: uids (0, 0, 0)")
    assert err.value.exit_code == 1


def test_drop_checks_the_supplementary_groups(acct, monkeypatch):
    monkeypatch.setattr(os, "initgroups", lambda name, gid: None)  # root's groups would stay
    with pytest.raises(P.ChildError) as err:
        P.call(acct, lambda ask: ids())
    assert "failed: groups" in err.value.report()


def test_the_environment_reaches_the_child(acct, monkeypatch):
    """The roster DSN comes from the environment (cron's env file): the child reads the roster."""
    monkeypatch.setenv("LISTFILTER_ROSTER_DSN", "postgresql://listfilter:s3cret@db.example.edu/course")
    got = P.call(acct, lambda ask: os.environ.get("LISTFILTER_ROSTER_DSN"))
    assert got == "postgresql://listfilter:s3cret@db.example.edu/course"


def test_the_child_does_not_keep_the_lock(acct, tmp_path):
    """With the lock's descriptor the child could release root's lock (flock is per open file)."""
    fd = os.open(tmp_path / "sync.lock", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)

        def probe(ask):
            try:
                os.fstat(fd)
                return "open"
            except OSError:
                return "closed"

        assert P.call(acct, probe) == "open"  # without close=, fork hands it over
        assert P.call(acct, probe, close=(fd,)) == "closed"
        os.fstat(fd)  # still the parent's
    finally:
        os.close(fd)


def test_account_of_a_missing_user_is_one_clear_line():
    with pytest.raises(P.PrivilegeError) as err:
        P.account("no-such-user-lf")
    assert err.value.report() == (
        "privileges: the user 'no-such-user-lf' does not exist: create it (useradd --system --no-create-home"
        " --shell /usr/sbin/nologin no-such-user-lf), the mail side runs as it; or run sync with --user root")
    assert err.value.exit_code == 1


def test_who_divides(acct):
    assert P.drops("listfilter")
    assert not P.drops(None)
    assert not P.drops("root")  # --user root: all of it in one process


# ---------------------------------------------------------------- the pipe


def test_a_result_comes_back_as_json(acct):
    assert P.call(acct, lambda ask: {"lists": [["a@x", 3]], "ok": True}) == {"lists": [["a@x", 3]], "ok": True}


@pytest.mark.parametrize("error", [
    R.RosterError("cannot read roster /srv/roster.csv: Permission denied"),  # report() adds to the line
    C.ConfigError("roster.query", "not a SELECT", "/etc/listfilter/lists.toml"),
    SnapshotError("snapshot /var/lib/listfilter/snapshot.sqlite is missing"),
    M.MapError("postmap failed: fatal: bad input"),
], ids=lambda e: type(e).__name__)
def test_errors_come_back_as_the_same_line_and_status(acct, error):
    def fail(ask):
        raise error

    with pytest.raises(ListfilterError) as err:
        P.call(acct, fail)
    assert err.value.report() == error.report()
    assert err.value.exit_code == error.exit_code
    assert type(err.value) is P.ChildError and err.value.kind == type(error).__name__


def test_a_config_error_keeps_ex_config(acct):
    def fail(ask):
        raise C.ConfigError("lists.x", "unknown key")

    with pytest.raises(ListfilterError) as err:
        P.call(acct, fail)
    assert err.value.exit_code == EX_CONFIG == 78


def test_an_unexpected_exception_is_one_line_and_exit_1(acct, capfd):
    with pytest.raises(P.ChildError) as err:
        P.call(acct, lambda ask: 1 // 0)
    assert err.value.report() == "internal error (ZeroDivisionError: integer division or modulo by zero)"
    assert err.value.exit_code == 1
    assert "Traceback" in capfd.readouterr().err  # the child's stderr keeps the traceback


def test_the_child_asks_and_root_answers(acct):
    seen = []

    def serve(request):
        seen.append((os.geteuid(), request))
        return {"twice": request["n"] * 2}

    def work(ask):
        return [ask({"n": 1})["twice"], ask({"n": 5})["twice"], os.geteuid()]

    assert P.call(acct, work, serve) == [2, 10, acct.uid]
    assert seen == [(0, {"n": 1}), (0, {"n": 5})]  # served by root


def test_a_failure_of_root_stops_the_child_and_is_raised_here(acct, shared):
    os.chmod(shared, 0o777)
    marker = shared / "went-on"
    problem = M.MapError("/usr/sbin/postmap hash:/x failed: fatal: open database")

    def serve(request):
        raise problem

    def work(ask):
        try:
            ask({"maps": {}})
        finally:
            marker.write_text("the child carried on")
        return "done"

    with pytest.raises(M.MapError) as err:
        P.call(acct, work, serve)
    assert err.value is problem
    assert marker.read_text() == "the child carried on"  # it could write here...
    marker.unlink()

    def work_on(ask):
        ask({"maps": {}})
        marker.write_text("the child carried on")

    with pytest.raises(M.MapError):
        P.call(acct, work_on, serve)
    assert not marker.exists()  # ... but never got past ask()


def test_a_child_that_ends_without_a_result(acct):
    with pytest.raises(P.PrivilegeError, match=r"ended \(status 3\) without a result"):
        P.call(acct, lambda ask: os._exit(3))
    with pytest.raises(P.PrivilegeError, match=r"ended \(signal 9\) without a result"):
        P.call(acct, lambda ask: os.kill(os.getpid(), signal.SIGKILL))


def test_root_does_not_take_garbage_from_the_child():
    with pytest.raises(P.PrivilegeError, match="unreadable message"):
        P._serve(io.StringIO("{not json\n"), io.StringIO(), None)
    with pytest.raises(P.PrivilegeError, match="unreadable message"):
        P._serve(io.StringIO("[1, 2]\n"), io.StringIO(), None)
    with pytest.raises(P.PrivilegeError, match="asked for something"):
        P._serve(io.StringIO('{"ask": {}}\n'), io.StringIO(), None)
    bad = P.error_from({"message": "x"})
    assert bad.report().startswith("privileges: unreadable error") and bad.exit_code == 1
    assert P.error_from({"kind": "X", "message": "m", "report": "m", "exit_code": 0}).exit_code == 1


@pytest.mark.parametrize("request_", [
    {"maps": {"transport": "x"}},  # not every table
    {"maps": {**{n: "" for n in M.MAP_NAMES}, "aliases": "root: evil@example.org"}},  # one of someone else's
    {"maps": {**{n: "" for n in M.MAP_NAMES}, "virtual": ["not", "text"]}},
    {"maps": {**{n: "" for n in M.MAP_NAMES}, "virtual": "a\0b"}},
    ["maps"],
])
def test_root_installs_only_listfilters_tables(request_):
    with pytest.raises(P.PrivilegeError, match="tables that are not listfilter's"):
        P._maps_of(request_)
    assert P._maps_of({"maps": {n: f"{n} text\n" for n in M.MAP_NAMES}})["domains"] == "domains text\n"


def test_the_report_round_trip_keeps_what_sync_prints(make_config):
    config = C.load(make_config(roster=f'source = "csv"\ncsv = "{REPO / "docs/example/roster.csv"}"'))
    p = Y.plan(config, suppressed={"gone@example.edu": "bounced"})
    result = Y.Result(p, warnings=["w"], notes=["n"])
    back = P.result_of(json.loads(json.dumps(P.report_of(result))),
                       {"maps": p.maps, "maps_changed": ["virtual"], "reloaded": True})
    assert back.summary == Y.snapshot_summary(p.lists)  # what -v prints, one line per list
    assert (back.list_count, back.memberships) == (len(p.lists), sum(len(l.members) for l in p.lists)) == (8, 24)
    assert back.plan.lists == []  # the members stay in the child
    assert (back.plan.digest, back.plan.snapshot_changed, back.plan.suppressed) == (p.digest, True, p.suppressed)
    assert (back.plan.maps_changed, back.reloaded, back.warnings, back.notes) == (["virtual"], True, ["w"], ["n"])
    with pytest.raises(P.PrivilegeError, match="unreadable result"):
        P.result_of({"summary": 3}, {})


# ---------------------------------------------------------------- what root prepares


def site(tmp_path: Path, extra: str = "", postfix: str = "") -> C.Config:
    path = tmp_path / "lists.toml"
    path.write_text(textwrap.dedent(f"""\
        [site]
        timezone = "UTC"
        state_dir = "{tmp_path / 'state'}"
        owners = ["prof@example.edu"]
        {extra}
        [postfix]
        {postfix}
        [domains."lists.example.edu"]
        [lists.testing]
        members = {{ emails = ["prof@example.edu"] }}
        posters = ["prof@example.edu"]
        """))
    return C.load(path)


def owner(path: Path) -> tuple[int, int, int]:
    st = path.lstat()
    return st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)


def test_prepare_makes_a_new_state_directory(acct, tmp_path):
    config = site(tmp_path)
    notes, warnings = P.prepare(config, acct)
    assert owner(config.site.state_dir) == (0, acct.gid, 0o1775)
    assert owner(config.site.map_dir) == (0, 0, 0o755)
    assert notes == [f"state directory {config.site.state_dir}: owned by root, group listfilter, mode 1775"
                     " (created), so that listfilter can write it"]
    assert warnings == []
    assert P.prepare(config, acct) == ([], [])  # once


def test_prepare_takes_over_what_a_root_only_sync_left(acct, tmp_path):
    config = site(tmp_path, 'spool_dir = "' + str(tmp_path / "state" / "spool") + '"')
    state = config.site.state_dir
    (state / "postfix").mkdir(parents=True)
    state.chmod(0o755)
    config.site.snapshot_path.write_bytes(b"old snapshot")
    (state / "spool").mkdir()
    notes, warnings = P.prepare(config, acct)
    assert owner(state) == (0, acct.gid, 0o1775)
    assert owner(config.site.snapshot_path)[:2] == (acct.uid, acct.gid)
    assert owner(state / "postfix")[:2] == (0, 0)
    assert f"{config.site.snapshot_path}: given to listfilter (written by root before)" in notes
    assert warnings == [f"the spool {state / 'spool'} is owned by uid 0, not listfilter, who works it:"
                        f" chown -R listfilter: {state / 'spool'}"]


def test_prepare_never_gives_away_through_a_symlink(acct, tmp_path):
    config = site(tmp_path)
    config.site.state_dir.mkdir()
    (tmp_path / "shadow").write_text("root's secret")
    config.site.snapshot_path.symlink_to(tmp_path / "shadow")  # what the user could leave there
    P.prepare(config, acct)
    assert owner(tmp_path / "shadow")[:2] == (0, 0)
    assert owner(config.site.snapshot_path)[:2] == (0, 0)


def test_the_user_cannot_swap_roots_tables_in_the_state_directory(acct, shared):
    """The reason for the sticky bit: without it, the directory's group could rename postfix/ away."""
    config = site(shared)
    P.prepare(config, acct)

    def swap(ask):
        try:
            (config.site.state_dir / "mine").write_text("the user may create files here")
            os.rename(config.site.map_dir, config.site.state_dir / "old")
            return "renamed"
        except PermissionError:
            return "refused"

    assert P.call(acct, swap) == "refused"
    assert owner(config.site.state_dir / "mine")[0] == acct.uid and config.site.map_dir.is_dir()


@pytest.mark.parametrize("spoil", ["owner", "group-writable", "symlink", "parent"])
def test_root_writes_tables_only_where_only_root_can(acct, tmp_path, spoil):
    config = site(tmp_path)
    P.prepare(config, acct)
    map_dir = config.site.map_dir
    if spoil == "owner":
        os.chown(map_dir, acct.uid, acct.gid)
    elif spoil == "group-writable":
        map_dir.chmod(0o775)
    elif spoil == "symlink":
        map_dir.rmdir()
        (tmp_path / "real").mkdir()
        map_dir.symlink_to(tmp_path / "real")
    else:
        config.site.state_dir.chmod(0o775)  # group-writable without the sticky bit
    with pytest.raises(M.MapError, match=f"table directory {map_dir}"):
        P.check_map_dir(config)


def test_the_lock_is_never_taken_through_a_symlink(tmp_path):
    config = site(tmp_path)
    config.site.state_dir.mkdir()
    (config.site.state_dir / "sync.lock").symlink_to(tmp_path / "target")
    with pytest.raises(ListfilterError, match="cannot open the lock"):
        with Y.lock(config):
            pass
    assert not (tmp_path / "target").exists()


def test_the_reload_marker_is_never_made_through_a_symlink(tmp_path):
    """Root makes reload-pending in a directory the user may create names in."""
    bindir = tmp_path / "bin"
    bindir.mkdir()
    (bindir / "postfix").write_text("#!/bin/sh\nexit 0\n")
    (bindir / "postfix").chmod(0o755)
    config = site(tmp_path, postfix=f'map_type = "texthash"\ncommand_directory = "{bindir}"')
    config.site.state_dir.mkdir()
    (config.site.state_dir / "reload-pending").symlink_to(tmp_path / "nologin")
    maps = {n: "" for n in M.MAP_NAMES}
    with pytest.raises(OSError):
        Y.apply(config, Y.Plan(lists=[], digest="", snapshot_changed=False, maps=maps, maps_changed=["domains"]))
    assert not (tmp_path / "nologin").exists()
