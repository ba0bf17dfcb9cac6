"""Extra members and joined members, kept in the store (``list_members``), and every change to them.

Sync side only (the mail side sees them in the snapshot, never here). The
roster stays the source of truth: these rows only add people it does not
hold, per list address.

- An *extra* member (source ``extra``) is someone an instructor added with
  ``listfilter members add`` or the admin page: a guest speaker, a TA from
  another department. It may carry an ``until``: the membership ends then,
  and the next sync removes the row (:func:`expire`).
- A *joined* member (source ``joined``) is someone who joined an opt-in list
  by confirming a request (:func:`join`, :func:`leave`, called by the opt-in
  work, :mod:`listfilter.store.requests`).

Every change is one ``member_changes`` row written in the same transaction as
the change itself: when, which list and address, what (:data:`ACTIONS`), which
source, who (``actor``: the Unix user running the CLI, the admin page's
signed-in user, or ``sync``), how (:data:`VIA`), a detail in words, and the
message it owes the person (``notice``) until sync has sent it.

Changes reach the lists at the next sync: :mod:`listfilter.store.membersync`
reads :func:`added` and the compiler merges it with the roster
(:func:`listfilter.sync.membership.merge`).
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from ..common.errors import ListfilterError
from .migrations import MEMBER_SOURCES

_UTC = dt.timezone.utc

#: What a member_changes row records: an extra member added, changed (name, until) or removed, or
#: expired at its ``until``; an opt-in list joined or left, or a join an owner denied.
ACTIONS = ("add", "update", "remove", "expire", "join", "leave", "deny")
#: How a change was made: the CLI, the admin page, sync itself, or the opt-in work's ways
#: (a mail reply, a one-click link; :data:`listfilter.common.events.REQUEST_VIA`).
VIA = ("cli", "web", "sync", "mail", "one-click")
#: The actor of a change sync makes on its own (an expiry).
SYNC_ACTOR = "sync"


class MembershipError(ListfilterError):
    """A membership change that cannot be made (unknown list, malformed address, past date, not a member)."""


@dataclass(frozen=True)
class Kept:
    """One ``list_members`` row: a member the store keeps for a list."""

    list_address: str
    email: str
    name: str
    source: str  # MEMBER_SOURCES
    until: dt.datetime | None  # aware, UTC; the membership ends at this instant (None: no end)
    added_by: str
    added_at: dt.datetime  # aware, UTC

    def as_json(self) -> dict:
        return {"list": self.list_address, "email": self.email, "name": self.name, "source": self.source,
                "until": self.until.isoformat() if self.until else None, "added_by": self.added_by,
                "added_at": self.added_at.isoformat()}


@dataclass(frozen=True)
class Change:
    """One ``member_changes`` row."""

    id: int
    at: dt.datetime  # aware, UTC
    list_address: str
    email: str
    action: str  # ACTIONS
    source: str
    actor: str
    via: str
    detail: str = ""
    notice: str = ""  # the message owed ("welcome", "goodbye"), "" for none
    notified_at: dt.datetime | None = None

    def as_json(self) -> dict:
        return {"id": self.id, "at": self.at.isoformat(), "list": self.list_address, "email": self.email,
                "action": self.action, "source": self.source, "actor": self.actor, "via": self.via,
                "detail": self.detail, "notice": self.notice,
                "notified_at": self.notified_at.isoformat() if self.notified_at else None}


# --------------------------------------------------------------------------
# Reading what a person typed (the CLI and the admin page)


def list_address(config, text: str) -> str:
    """The list address ``text`` names, lower-cased; MembershipError naming the known ones otherwise."""
    known = known_lists(config)
    wanted = text.strip().lower()
    if wanted in known:
        return wanted
    named = [a for a in known if a.partition("@")[0] == wanted]
    if named:
        raise MembershipError(f"{text!r} is a list name: give one of its addresses ({', '.join(named)})")
    raise MembershipError(f"no list {text!r} in {config.path}; the lists are: {', '.join(known) or '(none)'}")


def known_lists(config) -> list[str]:
    """Every list address of the config, sorted."""
    return sorted(f"{l.local_part}@{d}" for l in config.lists.values() for d in l.domains)


def parse_address(text: str) -> str:
    """One addr-spec (the config's rules: listfilter.sync.config), its domain lower-cased."""
    from ..sync.config import ConfigError, _address

    try:
        return _address(text, "address")
    except ConfigError as exc:
        raise MembershipError(exc.message) from None


def parse_until(text: str, tz: dt.tzinfo, now: dt.datetime | None = None) -> dt.datetime:
    """When a membership ends, as an aware UTC time: a date (``2026-05-15``, in the site's time zone)
    ends at the end of that day; a time (``2026-05-15T14:00``, the site's zone unless it names one)
    at that time. A time already past is an error."""
    now = now or dt.datetime.now(_UTC)
    value = text.strip()
    try:
        if len(value) == 10:
            day = dt.date.fromisoformat(value)
            when = dt.datetime.combine(day + dt.timedelta(days=1), dt.time(), tzinfo=tz)
        else:
            when = dt.datetime.fromisoformat(value)
            if when.tzinfo is None:
                when = when.replace(tzinfo=tz)
    except ValueError:
        raise MembershipError(f"--until {text!r}: use a date (2026-05-15) or a time (2026-05-15T14:00)") from None
    when = when.astimezone(_UTC)
    if when <= now:
        raise MembershipError(f"--until {text!r} is in the past")
    return when


def describe_until(until: dt.datetime | None, tz: dt.tzinfo) -> str:
    """An ``until`` in words, in the site's time zone: ``the end of 2026-05-15``, or the time it names."""
    if until is None:
        return "no end date"
    local = until.astimezone(tz)
    if local.time() == dt.time():
        return f"the end of {(local.date() - dt.timedelta(days=1)).isoformat()}"
    return local.strftime("%Y-%m-%d %H:%M %Z")


def installed_source(config, address: str, email: str) -> str | None:
    """Where the installed snapshot says ``email`` is a member of ``address`` from (None: not a member)."""
    from ..common.snapshot import Snapshot, SnapshotError

    try:
        with Snapshot(config.site.snapshot_path) as snap:
            row = snap.member(address, email)
    except SnapshotError:
        return None
    return row[2] if row else None


# --------------------------------------------------------------------------
# Extra members


def add(store, list_address: str, email: str, name: str | None, until: dt.datetime | None, actor: str, via: str,
        *, now: dt.datetime | None = None, tz: dt.tzinfo = _UTC) -> Change | None:
    """Make ``email`` an extra member of the list until ``until`` (None: no end), in one transaction.

    Adding someone who is already an extra member sets their ``until`` to
    this one and, when ``name`` is given, their name; the change is recorded
    (``update``). Returns the change recorded, or None when nothing changed.
    The detail recorded words ``until`` in ``tz`` (the site's time zone).
    """
    now = now or dt.datetime.now(_UTC)
    key = email.lower()
    with store.transaction():
        [old] = _kept(store, "WHERE list_address = ? AND email_key = ? AND source = 'extra'",
                      (list_address, key)) or [None]
        if old is None:
            store._execute("INSERT INTO list_members (list_address, email_key, email, name, source, until, added_by,"
                           " added_at) VALUES (?, ?, ?, ?, 'extra', ?, ?, ?)",
                           (list_address, key, email, name or "", _ts_or_null(store, until), actor, store._ts(now)))
            return _record(store, now, list_address, email, "add", "extra", actor, via, _until_detail(until, tz))
        name = old.name if name is None else name
        said = []
        if name != old.name:
            said.append(f"name {old.name!r} -> {name!r}")
        if until != old.until:
            said.append(f"{_until_detail(old.until, tz)} -> {_until_detail(until, tz)}")
        if email != old.email:
            said.append(f"spelled {email}")
        if not said:
            return None
        store._execute("UPDATE list_members SET email = ?, name = ?, until = ? WHERE list_address = ?"
                       " AND email_key = ? AND source = 'extra'",
                       (email, name, _ts_or_null(store, until), list_address, key))
        return _record(store, now, list_address, email, "update", "extra", actor, via, "; ".join(said))


def remove(store, list_address: str, email: str, actor: str, via: str, *, config=None,
           now: dt.datetime | None = None) -> Change:
    """End ``email``'s extra membership of the list (one transaction), and record it.

    MembershipError if they are not an extra member; with ``config``, the
    message says where the installed snapshot has them from instead (the
    roster: change the roster; the config: its ``members.emails``).
    """
    now = now or dt.datetime.now(_UTC)
    with store.transaction():
        [old] = _kept(store, "WHERE list_address = ? AND email_key = ? AND source = 'extra'",
                      (list_address, email.lower())) or [None]
        if old is None:
            raise MembershipError(_not_extra(config, list_address, email))
        store._execute("DELETE FROM list_members WHERE list_address = ? AND email_key = ? AND source = 'extra'",
                       (list_address, email.lower()))
        return _record(store, now, list_address, old.email, "remove", "extra", actor, via, "")


def _not_extra(config, address: str, email: str) -> str:
    source = installed_source(config, address, email) if config is not None else None
    why = {
        "roster": "the roster holds them: change the roster (they leave the list at the sync after it does)",
        "config": f"the config names them: remove them from members.emails of the list in {getattr(config, 'path', '')}",
        "joined": "they joined it themselves: they leave by writing to the list's -leave address",
    }.get(source or "")
    return f"{email} is not an extra member of {address}" + (f"; {why}" if why else "")


def extras(store, list_address: str | None = None) -> list[Kept]:
    """The extra members (of one list, or all), by list and address."""
    return rows(store, list_address, ("extra",))


def rows(store, list_address: str | None = None, sources: tuple[str, ...] = MEMBER_SOURCES) -> list[Kept]:
    """The members the store keeps with one of ``sources`` (of one list, or all), by list and address."""
    where = f"WHERE source IN ({', '.join('?' for _ in sources)})"
    params: list = list(sources)
    if list_address is not None:
        where += " AND list_address = ?"
        params.append(list_address.lower())
    return _kept(store, where + " ORDER BY list_address, email_key, source", params)


def changes(store, list_address: str | None = None, limit: int = 50) -> list[Change]:
    """The newest ``limit`` changes (of one list, or all), newest first."""
    where, params = ("WHERE list_address = ?", [list_address.lower()]) if list_address else ("", [])
    got = store._q(f"SELECT {', '.join(_CHANGE_COLUMNS)} FROM member_changes {where} ORDER BY at DESC, id DESC"
                   " LIMIT ?", [*params, int(limit)])
    return [_change(store, r) for r in got]


# --------------------------------------------------------------------------
# Joined members (the opt-in work calls these)


def join(store, list_address: str, email: str, name: str, actor: str, via: str, notice: str = "welcome", *,
         now: dt.datetime | None = None) -> Change | None:
    """Make ``email`` a joined member of the opt-in list (one transaction); the change owes ``notice``.

    Returns the change, or None if they had joined already (nothing is
    written, so a confirmation used twice sends one welcome)."""
    now = now or dt.datetime.now(_UTC)
    key = email.lower()
    with store.transaction():
        if _kept(store, "WHERE list_address = ? AND email_key = ? AND source = 'joined'", (list_address, key)):
            return None
        store._execute("INSERT INTO list_members (list_address, email_key, email, name, source, until, added_by,"
                       " added_at) VALUES (?, ?, ?, ?, 'joined', NULL, ?, ?)",
                       (list_address, key, email, name or "", actor, store._ts(now)))
        return _record(store, now, list_address, email, "join", "joined", actor, via, "", notice)


def leave(store, list_address: str, email: str, actor: str, via: str, notice: str = "goodbye", *,
          sources: tuple[str, ...] = ("joined",), now: dt.datetime | None = None) -> Change | None:
    """End ``email``'s membership of ``sources`` (one transaction); the change owes ``notice``.

    By default only a joined membership ends; ``sources=("joined", "extra")``
    ends an extra one too (a one-click unsubscribe). Returns the change, or
    None if they held none of those."""
    now = now or dt.datetime.now(_UTC)
    key = email.lower()
    with store.transaction():
        old = _kept(store, f"WHERE list_address = ? AND email_key = ? AND source IN ({', '.join('?' for _ in sources)})"
                    " ORDER BY source DESC", (list_address, key, *sources))
        if not old:
            return None
        store._execute(f"DELETE FROM list_members WHERE list_address = ? AND email_key = ?"
                       f" AND source IN ({', '.join('?' for _ in sources)})", (list_address, key, *sources))
        return _record(store, now, list_address, old[0].email, "leave", "+".join(k.source for k in old), actor, via,
                       "", notice)


def denied(store, list_address: str, email: str, actor: str, via: str, notice: str = "denied", *,
           now: dt.datetime | None = None) -> Change:
    """Record that an owner denied ``email``'s join of the opt-in list; the change owes ``notice``
    (:func:`listfilter.store.requests.decide_join` calls it). No membership changes: they had none."""
    now = now or dt.datetime.now(_UTC)
    with store.transaction():
        return _record(store, now, list_address, email, "deny", "joined", actor, via, "join request denied", notice)


def owed(store, notices: tuple[str, ...] = ("welcome", "goodbye")) -> list[Change]:
    """The changes whose message (one of ``notices``) sync has not sent yet, oldest first."""
    got = store._q(f"SELECT {', '.join(_CHANGE_COLUMNS)} FROM member_changes WHERE notice IN"
                   f" ({', '.join('?' for _ in notices)}) AND notified_at IS NULL ORDER BY at, id", notices)
    return [_change(store, r) for r in got]


def notified(store, change_id: int, now: dt.datetime) -> None:
    """Record that a change's message was sent (it is never sent again)."""
    store._execute("UPDATE member_changes SET notified_at = ? WHERE id = ?", (store._ts(now), int(change_id)))


# --------------------------------------------------------------------------
# At sync (listfilter.store.membersync)


def added(store, now) -> dict[str, list[tuple[str, str, str]]]:
    """list address -> (email, name, source) of every unexpired extra member and every joined member."""
    out: dict[str, list[tuple[str, str, str]]] = {}
    for address, email, name, source in store._q(
            "SELECT list_address, email, name, source FROM list_members WHERE source = 'joined'"
            " OR until IS NULL OR until > ? ORDER BY list_address, email_key, source", (store._ts(now),)):
        out.setdefault(address, []).append((email, name, source))
    return out


def expire(config, store, now) -> tuple[list[str], list[str]]:
    """Remove extra members past their ``until`` (each a member_changes row): (notes, warnings)."""
    import zoneinfo

    tz = zoneinfo.ZoneInfo(config.site.timezone)
    notes = []
    with store.transaction():
        due = _kept(store, "WHERE source = 'extra' AND until IS NOT NULL AND until <= ?"
                           " ORDER BY list_address, email_key", (store._ts(now),))
        for k in due:
            store._execute("DELETE FROM list_members WHERE list_address = ? AND email_key = ? AND source = 'extra'",
                           (k.list_address, k.email.lower()))
            _record(store, now, k.list_address, k.email, "expire", "extra", SYNC_ACTOR, "sync",
                    _until_detail(k.until, tz))  # an end the adder chose: nobody is mailed about it
            notes.append(f"members: {k.email}'s extra membership of {k.list_address} expired")
    return notes, []


# --------------------------------------------------------------------------
# Rows


_KEPT_COLUMNS = ("list_address", "email", "name", "source", "until", "added_by", "added_at")
_CHANGE_COLUMNS = ("id", "at", "list_address", "email", "action", "source", "actor", "via", "detail", "notice",
                   "notified_at")


def _kept(store, where: str, params) -> list[Kept]:
    got = store._q(f"SELECT {', '.join(_KEPT_COLUMNS)} FROM list_members {where}", params)
    return [Kept(a, e, n or "", s, store._from_ts(u) if u is not None else None, b or "", store._from_ts(t))
            for a, e, n, s, u, b, t in got]


def _change(store, r) -> Change:
    d = dict(zip(_CHANGE_COLUMNS, r))
    d["at"] = store._from_ts(d["at"])
    d["notified_at"] = store._from_ts(d["notified_at"]) if d["notified_at"] is not None else None
    return Change(**d)


def _record(store, now, list_address, email, action, source, actor, via, detail, notice="") -> Change:
    assert action in ACTIONS, action
    values = (store._ts(now), list_address, email, action, source, actor, via, detail, notice)
    store._execute("INSERT INTO member_changes (at, list_address, email, action, source, actor, via, detail, notice)"
                   " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)", values)
    [ident] = store._q("SELECT max(id) FROM member_changes WHERE list_address = ? AND email = ? AND at = ?",
                       (list_address, email, store._ts(now)))[0]
    return Change(ident, now, list_address, email, action, source, actor, via, detail, notice)


def _ts_or_null(store, when: dt.datetime | None):
    return store._ts(when) if when is not None else None


def _until_detail(until: dt.datetime | None, tz: dt.tzinfo) -> str:
    return f"until {describe_until(until, tz)}" if until is not None else "no end date"
