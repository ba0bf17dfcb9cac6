"""Tests of listfilter.mail, and the helpers they share: a list's snapshot row, a snapshot file."""

from __future__ import annotations

from pathlib import Path

from listfilter.common.snapshot import CompiledList, ListRow

STUDENTS = "students@lists.example.edu"
#: The site settings a snapshot carries (listfilter.common.snapshot.SETTINGS), for tests that write one.
SETTINGS = {"timezone": "America/Chicago", "sendmail": "/usr/sbin/sendmail", "notice_limit": "2"}


def compiled_list(address: str = STUDENTS, *, display_name: str = "CS 199 Students", subject_tag: str | None = None,
                  reply_to: str | None = None, description: str = "", owners=("prof@example.edu",),
                  posters_rule: str = "course instructor, ta", exclude_poster: bool = True,
                  members=(), posters=()) -> CompiledList:
    """A list as sync compiles it, with its refusal notice rendered by sync's own code.

    ``members`` are (email, name) pairs or bare addresses; ``subject_tag``
    defaults to the display name, as in the config.
    """
    from listfilter.sync.compiler import refusal_notices

    local, _, domain = address.rpartition("@")
    notice, undated = refusal_notices(address, display_name, description, posters_rule)
    pairs = tuple((m, "") if isinstance(m, str) else tuple(m) for m in members)
    return CompiledList(
        address=address, name=local, local_part=local, domain=domain, display_name=display_name,
        description=description, subject_tag=display_name if subject_tag is None else subject_tag,
        reply_to=reply_to, owners=tuple(owners), posters_rule=posters_rule, exclude_poster=exclude_poster,
        notice=notice, notice_undated=undated,
        members=tuple(sorted(pairs, key=lambda p: p[0].lower())), posters=tuple(sorted(p.lower() for p in posters)))


def list_row(address: str = STUDENTS, **fields) -> ListRow:
    """The snapshot row of a list (what the mail side reads), built as :func:`compiled_list`."""
    lst = compiled_list(address, **fields)
    return ListRow(*lst[:-2], member_count=len(lst.members))


def write_snapshot(path: Path, lists: list[CompiledList], *, spool: Path, sendmail: str | None = None,
                   suppressed: dict[str, str] | None = None) -> Path:
    """Install a snapshot at ``path`` holding ``lists``, as sync would."""
    from listfilter.common import snapshot

    settings = {**SETTINGS, "spool_dir": str(spool), **({"sendmail": sendmail} if sendmail else {})}
    snapshot.write(path, lists, {**settings, "digest": "test"}, suppressed)
    return path
