"""Who may see the admin pages: password hashes, trusted proxies, sessions and roster roles.

No Flask here (``listfilter sync`` writes the roles file through this module).

Passwords are werkzeug hashes held to OWASP's current minimums
(:func:`hash_weakness`, which ``listfilter check`` applies). The proxy is a
peer in ``[web] proxies`` that, with ``proxy_secret_env``, also sends the
shared secret; only its X-Forwarded-For entry names the client
(:func:`client_address`). Sign-ins live in the app's own SQLite file
(:class:`Sessions`), which also counts failed sign-ins.

Authorisation is one rule for everyone: a user is let in if their address is
in ``[web] admins``, or if they hold one of ``[web] roles`` (default:
instructor) in the roster. The roster roles come from ``web-roles.json`` in
the state directory, which ``listfilter sync`` writes beside the snapshot from
the same roster read, so the web app never queries the roster database.
Standalone accounts are admin accounts: the file that lists them is the
grant. They live in ``[web] accounts_file`` (``user:hash`` lines, root's,
readable by the app's group only: :class:`Accounts`, written by
``listfilter web passwd``); ``[web.accounts]`` in the config, which is
world-readable and meant for version control, still works, and ``check``
says to move it.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import hmac
import ipaddress
import json
import os
import secrets
import stat
import threading
import time
from collections.abc import Mapping
from pathlib import Path

from ..common import atomic
from ..sync.config import Config, WebSettings

ROLES_FORMAT = 1


# --------------------------------------------------------------------------
# Passwords (werkzeug's hashes: "scrypt:131072:8:1$salt$hex", "pbkdf2:sha256:600000$salt$hex")

#: What ``listfilter web passwd`` makes: scrypt at OWASP's first recommended
#: setting (Password Storage Cheat Sheet: N=2^17, r=8, p=1; 128 MiB, about
#: 0.3 s here). Explicit, so that a werkzeug upgrade cannot weaken it.
NEW_HASH_METHOD = "scrypt:131072:8:1"
#: OWASP's scrypt settings of equal strength (N, r, p); a hash that meets any one of them is strong enough.
SCRYPT_MINIMUMS = ((2**17, 8, 1), (2**16, 8, 2), (2**15, 8, 3), (2**14, 8, 5), (2**13, 8, 10))
#: OWASP's PBKDF2 iteration minimums, by HMAC digest.
PBKDF2_MINIMUMS = {"sha1": 1_300_000, "sha256": 600_000, "sha512": 210_000}
#: Password checks running at once: an scrypt check holds 128 MiB while it runs.
_HASHING = threading.BoundedSemaphore(2)


def hash_password(password: str) -> str:
    from werkzeug.security import generate_password_hash

    return generate_password_hash(password, method=NEW_HASH_METHOD, salt_length=16)


def hash_weakness(stored: str) -> str | None:
    """Why a werkzeug hash is below OWASP's current minimums, or None when it meets them."""
    from werkzeug.security import DEFAULT_PBKDF2_ITERATIONS

    method, *args = stored.split("$", 1)[0].split(":")
    try:
        if method == "scrypt":
            n, r, p = map(int, args) if args else (2**15, 8, 1)  # werkzeug's defaults when unstated
            if any(n >= mn and r >= mr and p >= mp for mn, mr, mp in SCRYPT_MINIMUMS):
                return None
            return f"scrypt with N={n}, r={r}, p={p} (at least N=2^17, r=8, p=1)"
        if method == "pbkdf2":
            digest = args[0] if args else "sha256"
            iterations = int(args[1]) if len(args) > 1 else DEFAULT_PBKDF2_ITERATIONS
            minimum = PBKDF2_MINIMUMS.get(digest)
            if minimum is None:
                return f"pbkdf2 with {digest} (use sha256 or sha512)"
            if iterations >= minimum:
                return None
            return f"pbkdf2-{digest} with {iterations:,} iterations (at least {minimum:,})"
    except ValueError:
        pass
    return f"an unknown hash method {stored.split('$', 1)[0]!r}"


#: Hashes checked against when the user is unknown, by method ("scrypt:131072:8:1"),
#: so that a wrong user name costs the same time as a wrong password.
_DUMMIES: dict[str, str] = {}


def verify_password(accounts: dict[str, str], user: str, password: str) -> bool:
    from werkzeug.security import check_password_hash, generate_password_hash

    stored = accounts.get(user.strip().lower())
    with _HASHING:
        if stored is None:
            # the method of a configured hash, so that the cost is the accounts' cost
            method = min((h.split("$", 1)[0] for h in accounts.values()), default=NEW_HASH_METHOD)
            if method not in _DUMMIES:
                try:
                    _DUMMIES[method] = generate_password_hash(secrets.token_hex(16), method=method)
                except ValueError:
                    _DUMMIES[method] = hash_password(secrets.token_hex(16))
            check_password_hash(_DUMMIES[method], password)
            return False
        return check_password_hash(stored, password)


# --------------------------------------------------------------------------
# The accounts file ([web] accounts_file): root's, readable by the app's group


class AccountsFileError(Exception):
    """The accounts file cannot be used: unreadable, writable by others than root, or malformed."""


#: What a new accounts file begins with.
ACCOUNTS_HEADER = ("# listfilter web accounts: one user:hash per line; `listfilter web passwd USER` writes them.\n"
                   "# Root's, readable by the group the web app runs as, and no one else (mode 0640): docs/web.md.\n")
#: The mode ``web passwd`` gives a new file, and the most it leaves an existing one.
ACCOUNTS_MODE = 0o640


def mode_problem(mode: int) -> tuple[str | None, str | None]:
    """(why the file is refused, what to warn about) for a file mode; (None, None) when it is right.

    Whoever may write the file may give themselves an account: only its
    owner may. Whoever may read it may try passwords against the hashes
    offline: every local user should not.
    """
    perms = stat.S_IMODE(mode)
    if perms & 0o022:
        who = "its group and every local user" if perms & 0o022 == 0o022 else (
            "its group" if perms & 0o020 else "every local user")
        return f"mode {perms:04o}: writable by {who}, who could add an account", None
    if perms & 0o004:
        return None, f"mode {perms:04o}: every local user can read the password hashes"
    return None, None


def _account_line(line: str) -> tuple[str, str] | None:
    """(user, hash) of one ``user:hash`` line; None for a blank line or a comment."""
    line = line.strip()
    if not line or line.startswith("#"):
        return None
    user, _, hashed = line.partition(":")  # a hash has colons of its own; a user name has none
    return user.strip().lower(), hashed.strip()


def parse_accounts(text: str, where: str) -> dict[str, str]:
    """``user:hash`` lines (blank lines and ``#`` comments allowed) → {user: hash}; AccountsFileError names the line."""
    from ..sync.config import PASSWORD_HASH

    accounts: dict[str, str] = {}
    for n, line in enumerate(text.splitlines(), start=1):
        entry = _account_line(line)
        if entry is None:
            continue
        user, hashed = entry
        if not user or any(c.isspace() for c in user):
            raise AccountsFileError(f"{where} line {n}: expected user:hash")
        if not PASSWORD_HASH.match(hashed):
            raise AccountsFileError(f"{where} line {n}: {user}: not a password hash"
                                    f" (make one with `listfilter web passwd {user}`)")
        if user in accounts:
            raise AccountsFileError(f"{where} line {n}: {user} is listed twice")
        accounts[user] = hashed
    return accounts


def read_accounts_file(path: Path) -> tuple[dict[str, str], str | None]:
    """The accounts in ``path`` and a warning about its mode (or None); no file, no accounts.

    The mode is checked on the open file, so that it is the mode of what is read.
    """
    try:
        fh = open(path, "rb")
    except FileNotFoundError:
        return {}, None
    except OSError as exc:
        raise AccountsFileError(f"cannot read {path}: {exc.strerror} (it must be readable by the group"
                                " the web app runs as: docs/web.md)") from None
    with fh:
        st = os.fstat(fh.fileno())
        if not stat.S_ISREG(st.st_mode):
            raise AccountsFileError(f"{path} is not a file")
        refused, warning = mode_problem(st.st_mode)
        if refused:
            raise AccountsFileError(f"{path}: {refused}; not used (chmod 0640 {path})")
        try:
            text = fh.read().decode("utf-8")
        except UnicodeDecodeError as exc:
            raise AccountsFileError(f"{path}: not UTF-8 ({exc.reason})") from None
        except OSError as exc:
            raise AccountsFileError(f"cannot read {path}: {exc.strerror}") from None
    return parse_accounts(text, str(path)), (f"{path}: {warning} (chmod 0640 {path})" if warning else None)


def write_accounts(path: Path, accounts: dict[str, str], group: str) -> tuple[int, int, int]:
    """Add ``accounts`` (user → hash) to the accounts file, or replace their lines; (uid, gid, mode) it has now.

    Atomic (a temporary file, mode 0600 until it is complete, renamed over
    the file). Every other line, comments included, is kept. An existing
    file keeps its owner and group and at most mode 0640; a new one is the
    caller's (root's), of ``group``, mode 0640.
    """
    import grp

    try:
        with open(path, "rb") as fh:
            st = os.fstat(fh.fileno())
            text = fh.read().decode("utf-8")
        parse_accounts(text, str(path))  # a file it cannot read back is not rewritten
        uid, gid, mode = st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode) & ACCOUNTS_MODE
    except FileNotFoundError:
        try:
            gid = grp.getgrnam(group).gr_gid
        except KeyError:
            raise AccountsFileError(f"no group {group!r} for {path}: it is the group the web app runs as"
                                    " (useradd --user-group listfilter-web, docs/web.md), or give --group") from None
        text, uid, mode = ACCOUNTS_HEADER, os.geteuid(), ACCOUNTS_MODE
    except (OSError, UnicodeDecodeError) as exc:
        raise AccountsFileError(f"cannot read {path}: {getattr(exc, 'strerror', None) or exc}") from None
    todo = {user.lower(): hashed for user, hashed in accounts.items()}
    lines = []
    for line in text.splitlines():
        entry = _account_line(line)
        lines.append(f"{entry[0]}:{todo.pop(entry[0])}" if entry and entry[0] in todo else line)
    lines += [f"{user}:{hashed}" for user, hashed in todo.items()]
    data = ("\n".join(lines) + "\n").encode("utf-8")
    try:
        with atomic.replacing(path, mode) as tmp:
            with os.fdopen(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "wb") as out:
                out.write(data)
                os.fchown(out.fileno(), uid, gid)
        atomic.fsync_dir(path.parent)
    except OSError as exc:
        raise AccountsFileError(f"cannot write {path}: {exc.strerror}") from None
    return uid, gid, mode


class Accounts(Mapping):
    """The standalone accounts: ``[web.accounts]`` and the accounts file's (which win), re-read when the file changes.

    So ``listfilter web passwd`` takes effect at the next request, with no
    restart. A file that turns unusable while the app runs (writable by
    others, malformed, unreadable) lends no account until it is fixed, and
    the log says why once.
    """

    def __init__(self, configured: Mapping[str, str], path: Path):
        self.configured = dict(configured)
        self.path = path
        self.warning: str | None = None
        self._stamp: object = ()
        self._merged = dict(self.configured)
        self._refresh(strict=True)

    def _refresh(self, strict: bool = False) -> None:
        try:
            st = os.stat(self.path)
            stamp: object = (st.st_ino, st.st_mtime_ns, st.st_size, st.st_mode, st.st_uid, st.st_gid)
        except FileNotFoundError:
            stamp = None
        except OSError as exc:
            stamp = exc.errno
        if stamp == self._stamp:
            return
        try:
            from_file, self.warning = read_accounts_file(self.path)
        except AccountsFileError as exc:
            if strict:
                raise
            import logging

            logging.getLogger("listfilter.web").error("%s: its accounts cannot sign in until it is fixed", exc)
            from_file = {}
        self._merged = {**self.configured, **from_file}
        self._stamp = stamp

    def __getitem__(self, user: str) -> str:
        self._refresh()
        return self._merged[user]

    def __iter__(self):
        self._refresh()
        return iter(dict(self._merged))

    def __len__(self) -> int:
        self._refresh()
        return len(self._merged)


def with_accounts(web: WebSettings) -> WebSettings:
    """``web`` with every account (the file's too) in ``accounts``; AccountsFileError when the file cannot be used."""
    import dataclasses

    configured = web.accounts.configured if isinstance(web.accounts, Accounts) else web.accounts
    return dataclasses.replace(web, accounts=Accounts(configured, web.accounts_file))


def no_way_in(web: WebSettings, accounts: Mapping[str, str]) -> str | None:
    """Why nobody can sign in (no proxy sign-on, no account in the config or the file), or None."""
    if web.proxy_header or accounts:
        return None
    return (f"no way in: set proxy_header and proxies (single sign-on), or add an account with"
            f" `listfilter web passwd USER` (it writes {web.accounts_file})")


# --------------------------------------------------------------------------
# The proxy

#: The header in which the proxy sends ``[web] proxy_secret_env``'s secret.
PROXY_SECRET_HEADER = "X-Listfilter-Proxy-Secret"


def _address(text: str | None):
    """An IP address from a peer or an X-Forwarded-For entry (zone ids and IPv4-mapped forms folded), or None."""
    if not text:
        return None
    text = text.strip()
    if text.startswith("[") and "]" in text:  # "[v6]" or "[v6]:port" (RFC 7239 style)
        text = text[1:text.index("]")]
    try:
        addr = ipaddress.ip_address(text.split("%", 1)[0])
    except ValueError:
        return None
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped:
        addr = addr.ipv4_mapped
    return addr


def from_proxy(web: WebSettings, remote_addr: str | None) -> bool:
    """Whether a request's peer address is one of the configured proxies (the secret is checked apart)."""
    addr = _address(remote_addr)
    return addr is not None and _in_proxies(web, addr)


def _in_proxies(web: WebSettings, addr) -> bool:
    return any(addr in ipaddress.ip_network(p, strict=False) for p in web.proxies)


def proxy_secret(web: WebSettings) -> bytes | None:
    """The secret the proxy must send (from ``[web] proxy_secret_env``); ValueError when unset or short."""
    if not web.proxy_secret_env:
        return None
    value = os.environ.get(web.proxy_secret_env, "")
    if len(value) < 16:
        raise ValueError(f"${web.proxy_secret_env} is {'too short (at least 16 characters)' if value else 'unset'}:"
                         " [web] proxy_secret_env names the secret the proxy sends")
    return value.encode()


def trusted_proxy(web: WebSettings, remote_addr: str | None, sent_secret: str | None, secret: bytes | None) -> bool:
    """Whether a request came from the proxy: a peer in ``proxies`` that, when a secret is set, sent it."""
    if not from_proxy(web, remote_addr):
        return False
    if secret is None:
        return True
    return sent_secret is not None and hmac.compare_digest(sent_secret.encode("latin-1", "replace"), secret)


def client_address(web: WebSettings, remote_addr: str | None, forwarded_for: str | None, trusted: bool) -> str:
    """The address the request really came from, for the sign-in limit and the log.

    From anyone but the proxy, that is the peer. Through the proxy, it is the
    address the proxy appended to X-Forwarded-For (nginx's
    ``$proxy_add_x_forwarded_for``, Apache mod_proxy): the rightmost entry,
    stepping left only over entries that are proxies themselves. What the
    client wrote further left is its own claim and is never used. An entry
    that is not an IP address means the proxy did not write it: the peer.
    """
    peer = _address(remote_addr)
    fallback = str(peer) if peer is not None else (remote_addr or "?")
    if not trusted or not forwarded_for:
        return fallback
    entries = [e for e in forwarded_for.split(",") if e.strip()]
    for entry in reversed(entries):
        addr = _address(entry)
        if addr is None:
            return fallback
        if not _in_proxies(web, addr):
            return str(addr)
    return fallback


def _loopback(version: int):
    return ipaddress.ip_network("127.0.0.0/8" if version == 4 else "::1/128")


def local_addresses() -> list:
    """This host's own addresses (Linux: /proc/net/fib_trie and if_inet6), always with loopback."""
    found = [_loopback(4), _loopback(6)]
    try:
        trie = Path("/proc/net/fib_trie").read_text().splitlines()
        for before, line in zip(trie, trie[1:]):
            if "/32 host LOCAL" in line:
                found.append(ipaddress.ip_network(before.split()[-1]))
    except (OSError, ValueError, IndexError):
        pass
    try:
        for line in Path("/proc/net/if_inet6").read_text().splitlines():
            raw = line.split()[0]
            found.append(ipaddress.ip_network(":".join(raw[i:i + 4] for i in range(0, 32, 4))))
    except (OSError, ValueError, IndexError):
        pass
    return found


def spoofable_proxies(web: WebSettings, bind_host: str, local=None) -> list[str]:
    """The ``proxies`` entries that a local user could connect from, reaching the app at ``bind_host``.

    Any user of this host may open a connection from any of its addresses
    (loopback included) to a port the app listens on. If such an address is a
    trusted proxy, any local user can send the user header and be anyone.
    A shared secret (``proxy_secret_env``) closes that; a proxy on another
    host, or on an address local users cannot reach the app from, avoids it.
    """
    if web.proxy_secret_env:
        return []
    if local is None:
        local = local_addresses()
    addr = _address(bind_host)
    if addr is not None and addr.is_loopback:
        reachable_from = [_loopback(addr.version)]
    else:  # a wildcard or a host's own address: every local address may be the source
        reachable_from = local
    out = []
    for p in web.proxies:
        net = ipaddress.ip_network(p, strict=False)
        if any(net.version == r.version and net.overlaps(r) for r in reachable_from):
            out.append(p)
    return out


# --------------------------------------------------------------------------
# Sessions and failed sign-ins: the app's own small SQLite file


def now() -> float:
    """The wall clock (a function, so that tests can move it)."""
    return time.time()


class Sessions:
    """Sign-ins kept on the server, so that one can be ended before its cookie expires.

    The cookie carries a random session id; this file holds only its SHA-256,
    the user and the absolute end (sign-in time + ``session_hours``), which no
    request renews. Signing out deletes the row, so the cookie is dead even if
    someone kept a copy. The same file counts failed sign-ins per client, in a
    transaction, so the limit holds across threads and across several app
    processes on one host. Only sign-in and sign-out (POSTs) write; a page
    (GET) only reads. Rollback-journal mode, not WAL: a reader writes nothing.
    """

    def __init__(self, path: Path):
        self.path = path

    def _connect(self, readonly: bool = False):
        """A connection; read-only ones never create the file (a GET must not write)."""
        import sqlite3

        if readonly:
            conn = sqlite3.connect(f"file:{self.path}?mode=ro", uri=True, timeout=10, isolation_level=None)
        else:
            if not self.path.exists():  # deleted under a running app: a POST may make it again
                self.create()
            conn = sqlite3.connect(self.path, timeout=10, isolation_level=None)
        conn.execute("PRAGMA busy_timeout = 10000")
        return conn

    def create(self) -> None:
        """Make the file (mode 0600) and its tables; at start-up, never on a request."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.close(os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
        except FileExistsError:
            pass
        with contextlib.closing(self._connect()) as conn:
            conn.execute("PRAGMA journal_mode = DELETE")
            conn.execute("CREATE TABLE IF NOT EXISTS sessions (id_hash TEXT PRIMARY KEY, user TEXT NOT NULL,"
                         " started REAL NOT NULL, ends REAL NOT NULL)")
            conn.execute("CREATE TABLE IF NOT EXISTS failures (client TEXT NOT NULL, at REAL NOT NULL)")
            conn.execute("CREATE INDEX IF NOT EXISTS failures_client ON failures (client, at)")

    @staticmethod
    def _hash(sid: str) -> str:
        return hashlib.sha256(sid.encode()).hexdigest()

    def start(self, user: str, lifetime: float) -> str:
        """A new session for ``user``; returns the id to put in the cookie (expired rows go too)."""
        sid = secrets.token_urlsafe(32)
        t = now()
        with contextlib.closing(self._connect()) as conn:
            conn.execute("BEGIN IMMEDIATE")
            conn.execute("DELETE FROM sessions WHERE ends <= ?", (t,))
            conn.execute("INSERT INTO sessions VALUES (?, ?, ?, ?)", (self._hash(sid), user, t, t + lifetime))
            conn.execute("COMMIT")
        return sid

    def user_of(self, sid: str | None) -> str | None:
        """The user of a live session, or None (ended, expired, unknown). Reads only."""
        import sqlite3

        if not sid or not isinstance(sid, str):
            return None
        try:
            with contextlib.closing(self._connect(readonly=True)) as conn:
                row = conn.execute("SELECT user FROM sessions WHERE id_hash = ? AND ends > ?",
                                   (self._hash(sid), now())).fetchone()
        except sqlite3.Error:  # no file, or not ours: nobody is signed in
            return None
        return row[0] if row else None

    def end(self, sid: str | None) -> None:
        if sid and isinstance(sid, str):
            with contextlib.closing(self._connect()) as conn:
                conn.execute("DELETE FROM sessions WHERE id_hash = ?", (self._hash(sid),))

    def reserve_attempt(self, client: str, limit: int, window: float) -> int | None:
        """Count a sign-in attempt before its password is checked; None when ``client`` is over the limit.

        Check and record are one transaction (BEGIN IMMEDIATE takes the write
        lock first), and the attempt counts while its password is being
        checked: forty attempts at once are limited exactly like forty in a
        row. A correct password gives its attempt back (:meth:`release`).
        """
        t = now()
        with contextlib.closing(self._connect()) as conn:
            conn.execute("BEGIN IMMEDIATE")
            conn.execute("DELETE FROM failures WHERE at <= ?", (t - window,))
            (count,) = conn.execute("SELECT count(*) FROM failures WHERE client = ?", (client,)).fetchone()
            if count >= limit:
                conn.execute("COMMIT")
                return None
            attempt = conn.execute("INSERT INTO failures VALUES (?, ?)", (client, t)).lastrowid
            conn.execute("COMMIT")
        return attempt

    def release(self, attempt: int) -> None:
        with contextlib.closing(self._connect()) as conn:
            conn.execute("DELETE FROM failures WHERE rowid = ?", (attempt,))


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
