"""Sync's part of an opt-in list: its -join and -leave addresses in the maps, and its texts in the snapshot."""

from __future__ import annotations

from listfilter.common.snapshot import Snapshot, fill_notice, notice_marker
from listfilter.sync import compiler as K
from listfilter.sync import config as C
from listfilter.sync import maps as M
from listfilter.sync import run as Y

from ..conftest import COURSE_LISTS
from ..store.test_database import CSV_ROSTER

CLUB = """
[lists.club]
display_name = "Chess Club"
description = "Anyone who likes chess"
members = { optin = true, eligible = { roles = ["student"] } }
posters = ["prof@example.edu"]
"""


def test_maps_route_join_and_leave_of_opt_in_lists_only(make_config):
    config = C.load(make_config(COURSE_LISTS + CLUB, roster=CSV_ROSTER))
    maps = M.render(config, Y.plan(config, suppressed={}).lists)
    for name in ("recipients", "transport"):
        text = maps[name]
        assert "club-join@lists.example.edu" in text and "club-leave@lists-dev.example.edu" in text, name
        assert "students-join@" not in text and "students-leave@" not in text, name
    route = next(line for line in maps["transport"].splitlines() if line.startswith("club-join@lists.example.edu"))
    assert route.split()[1].startswith(config.site.transport + ":")
    assert "club-join" not in maps["virtual"]


def test_texts_are_rendered_per_list_and_domain_with_markers(make_config):
    config = C.load(make_config(COURSE_LISTS + CLUB, roster=CSV_ROSTER))
    lists = {l.address: l for l in Y.plan(config, suppressed={}).lists}
    club, students = lists["club@lists.example.edu"], lists["students@lists.example.edu"]
    assert sorted(club.texts) == sorted(K.OPTIN_TEXTS) and students.texts == {}
    confirm = club.texts["join-confirm"]
    assert notice_marker("token") in confirm and notice_marker("address") in confirm
    filled = fill_notice(confirm, token="TOKEN", address="a@example.org", reply_address="club-request@x",
                         expires="soon")
    assert "confirm TOKEN" in filled and "Chess Club <club@lists.example.edu>" in filled
    assert "\ufdd0" not in filled and "Anyone who likes chess" in filled
    assert "course student" in club.texts["join-refused"]
    assert "club-join@lists-dev.example.edu" in lists["club@lists-dev.example.edu"].texts["request-help"]


def test_the_snapshot_carries_the_texts(make_config):
    config = C.load(make_config(COURSE_LISTS + CLUB, roster=CSV_ROSTER))
    Y.run(config)
    with Snapshot(config.site.snapshot_path) as snap:
        assert "confirm" in snap.text("club@lists.example.edu", "join-confirm")
        assert snap.text("students@lists.example.edu", "join-confirm") is None
        row = snap.get_list("club@lists.example.edu")
        assert row.optin and snap.may_join(row, "alice@example.edu") and not snap.may_join(row, "x@example.org")
    assert config.site.token_key.is_file()


def test_the_summary_says_who_may_join_and_whose_posts_wait(make_config):
    held = CLUB.replace('posters = ["prof@example.edu"]', 'posters = ["prof@example.edu"]\nnon_member_posts = "hold"'
                                                          '\nnon_poster_posts = "hold"')
    config = C.load(make_config(COURSE_LISTS + held, roster=CSV_ROSTER))
    [line] = [K.summary(l) for l in Y.plan(config, suppressed={}).lists if l.address == "club@lists.example.edu"]
    assert line == ("club@lists.example.edu: 0 members, 1 poster (prof@example.edu); opt-in: course student may join;"
                    " holds posts from non-members and members who may not post")
    Y.run(config)
    assert line + "\n" in Y.installed_summary(config)  # the installed snapshot's says the same
