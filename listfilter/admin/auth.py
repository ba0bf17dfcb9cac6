"""Who may see the admin pages: password hashes, trusted proxies and roster roles.

No Flask here (``listfilter sync`` writes the roles file through this module).

Authorisation is one rule for everyone: a user is let in if their address is
in ``[web] admins``, or if they hold one of ``[web] roles`` (default:
instructor) in the roster. The roster roles come from ``web-roles.json`` in
the state directory, which ``listfilter sync`` writes beside the snapshot from
the same roster read, so the web app never queries the roster database.
Accounts in ``[web.accounts]`` (standalone login) are admin accounts: the
config that lists them is the grant.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import json
import secrets
from pathlib import Path

from ..common import atomic
from ..sync.config import Config, WebSettings

ROLES_FORMAT = 1


# --------------------------------------------------------------------------
# Passwords (werkzeug's scrypt hashes: "scrypt:32768:8:1$salt$hex")


def hash_password(password: str) -> str:
    from werkzeug.security import generate_password_hash

    return generate_password_hash(password, method="scrypt")


#: Checked against when the user is unknown, so that a wrong user name costs
#: the same time as a wrong password.
_DUMMY = None


def verify_password(accounts: dict[str, str], user: str, password: str) -> bool:
    from werkzeug.security import check_password_hash

    global _DUMMY
    stored = accounts.get(user.strip().lower())
    if stored is None:
        if _DUMMY is None:
            _DUMMY = hash_password(secrets.token_hex(16))
        check_password_hash(_DUMMY, password)
        return False
    return check_password_hash(stored, password)


# --------------------------------------------------------------------------
# The proxy


def from_proxy(web: WebSettings, remote_addr: str | None) -> bool:
    """Whether a request's peer is one of the configured proxies."""
    if not remote_addr or not web.proxies:
        return False
    try:
        addr = ipaddress.ip_address(remote_addr.split("%", 1)[0])
    except ValueError:
        return False
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped:
        addr = addr.ipv4_mapped
    return any(addr in ipaddress.ip_network(p, strict=False) for p in web.proxies)


# --------------------------------------------------------------------------
# Roster roles


def compute_roles(config: Config, rows) -> dict[str, list[str]]:
    """Lower-cased address -> roles held, for people holding any of [web] roles (every domain's course)."""
    from ..sync import membership as R

    wanted = set(config.web.roles) if config.web else set()
    out: dict[str, set[str]] = {}
    for domain in config.domains.values():
        course = R.course_rows(rows, domain)
        for person, roles in R.roles_by_person(course, config.roster).items():
            if roles & wanted:
                out.setdefault(person, set()).update(roles)
    return {k: sorted(v) for k, v in sorted(out.items())}


def write_roles(config: Config, rows) -> bool:
    """Write web-roles.json atomically if its content changed; return whether it did."""
    path = config.web.roles_file
    people = compute_roles(config, rows)
    try:
        current = json.loads(path.read_text(encoding="utf-8"))
        if current.get("format") == ROLES_FORMAT and current.get("people") == people \
                and current.get("roles") == list(config.web.roles):
            return False
    except (OSError, ValueError, AttributeError):
        pass
    data = {"format": ROLES_FORMAT, "roles": list(config.web.roles), "people": people,
            "generated_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")}
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic.write_bytes(path, json.dumps(data, indent=1).encode(), 0o644)
    return True


class Roles:
    """The roles file, re-read when it changes."""

    def __init__(self, path: Path):
        self.path = path
        self._stamp = None
        self._people: dict[str, set[str]] = {}

    def of(self, email: str) -> set[str]:
        try:
            st = self.path.stat()
            stamp = (st.st_ino, st.st_mtime_ns, st.st_size)
        except OSError:
            self._stamp, self._people = None, {}
            return set()
        if stamp != self._stamp:
            try:
                data = json.loads(self.path.read_text(encoding="utf-8"))
                people = {k.lower(): set(v) for k, v in data.get("people", {}).items()}
            except (OSError, ValueError, AttributeError, TypeError):
                people = {}
            self._stamp, self._people = stamp, people
        return self._people.get(email.lower(), set())


def allowed(web: WebSettings, roles: Roles, user: str, via: str) -> bool:
    """May this authenticated user see the pages? ``via`` is "password" or "proxy"."""
    user = user.strip().lower()
    if via == "password" and user in web.accounts:
        return True
    if user in web.admins:
        return True
    return bool(roles.of(user) & set(web.roles))
