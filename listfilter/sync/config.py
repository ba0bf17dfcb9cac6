"""The list config: one TOML file, validated into frozen dataclasses.

Sync side only: the mail side reads what it needs from the snapshot, never
this file. Errors never come out as tracebacks: every problem is a
:class:`ConfigError` that names the file and the field
(``lists.students.posters``), and the CLI turns it into one line and exit
status 78 (EX_CONFIG).
"""

from __future__ import annotations

import os
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..common.addresses import RESERVED_SUFFIXES, service_addresses
from ..common.errors import EXIT_CONFIG, ListfilterError
from ..common.paths import DEFAULT_STATE_DIR, SNAPSHOT_NAME, config_path

#: Enrollment types of the default roster schema (Canvas: applicants are
#: recorded as "applied" by the course app).
DEFAULT_ENROLLMENT_TYPES = ("applied", "student", "teacher", "ta")
#: Role names that stand for several enrollment types.
DEFAULT_ROLE_ALIASES = {"instructor": ("teacher",), "staff": ("teacher", "ta")}

_LOCAL_PART = re.compile(r"^[a-z0-9](?:[a-z0-9._-]*[a-z0-9])?$")
_DOMAIN = re.compile(r"^(?=.{1,253}$)(?:[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?\.)+[a-z]{2,63}$")


class ConfigError(ListfilterError):
    """A problem in the list config, located by file and field."""

    exit_code = EXIT_CONFIG
    label = "config error"

    def __init__(self, where: str, message: str, path: Path | str | None = None):
        self.where = where
        self.message = message
        self.path = path
        super().__init__(str(self))

    def __str__(self) -> str:
        prefix = f"{self.path}: " if self.path else ""
        return f"{prefix}{self.where}: {self.message}" if self.where else f"{prefix}{self.message}"


@dataclass(frozen=True)
class Site:
    timezone: str
    state_dir: Path
    spool_dir: Path
    map_dir: Path
    transport: str
    sendmail: str
    relay: str | None
    owners: tuple[str, ...]
    notice_limit: int

    @property
    def snapshot_path(self) -> Path:
        return self.state_dir / SNAPSHOT_NAME


@dataclass(frozen=True)
class PostfixSettings:
    config_directory: Path | None
    command_directory: Path
    map_type: str
    reload: bool
    maxproc: int  # master.cf's process limit for the pipes


@dataclass(frozen=True)
class Roster:
    source: str  # "postgresql" or "csv"
    dsn_env: str
    dsn: str | None
    query: str | None
    csv: Path | None
    current_semester: str
    enrollment_types: tuple[str, ...]
    role_aliases: dict[str, tuple[str, ...]]

    def expand_roles(self, roles: tuple[str, ...]) -> frozenset[str]:
        """Enrollment types that a list of role names stands for."""
        out: set[str] = set()
        for role in roles:
            out.update(self.role_aliases.get(role, (role,)))
        return frozenset(out)

    def resolved_dsn(self) -> str | None:
        """The DSN: from the environment variable first, then the file."""
        return os.environ.get(self.dsn_env) or self.dsn


@dataclass(frozen=True)
class Domain:
    name: str
    course: str | None


@dataclass(frozen=True)
class MemberQuery:
    roles: tuple[str, ...] | None  # None: every enrollment type
    active: bool
    semester: str | None  # None: the roster's current semester


@dataclass(frozen=True)
class Posters:
    emails: tuple[str, ...] = ()
    members: bool = False
    roles: tuple[str, ...] = ()

    def describe(self) -> str:
        """Who may post, in words, for notices and the CLI."""
        parts = []
        if self.roles:
            parts.append("course " + ", ".join(self.roles))
        if self.members:
            parts.append("list members")
        if self.emails:
            parts.append(", ".join(self.emails))
        return "; ".join(parts) if parts else "nobody"


@dataclass(frozen=True)
class ListConfig:
    name: str
    local_part: str
    display_name: str
    description: str
    members_query: MemberQuery | None
    member_emails: tuple[str, ...]
    posters: Posters
    reply_to: str | None  # a full address, or a list name (same domain)
    subject_tag: str
    owners: tuple[str, ...]
    exclude_poster: bool
    domains: tuple[str, ...]


@dataclass(frozen=True)
class StoreSettings:
    """``[store]``: where the mail log lives (docs/store.md)."""

    backend: str  # "sqlite" or "postgresql"
    path: Path  # the SQLite file
    dsn_env: str
    dsn: str | None
    retention_days: int  # 0: keep rows forever
    body_retention_days: int  # 0: keep bodies as long as their rows
    store_bodies: bool
    body_max_bytes: int
    configured: bool = False  # the config has a [store] table

    def resolved_dsn(self) -> str | None:
        """The DSN: from the environment variable first, then the file."""
        return os.environ.get(self.dsn_env) or self.dsn

    def describe(self) -> str:
        """Where the store is, without any password (see :func:`mask_dsn`)."""
        if self.backend == "sqlite":
            return f"sqlite {self.path}"
        dsn = self.resolved_dsn()
        return "postgresql " + (mask_dsn(dsn) if dsn else f"${self.dsn_env} (unset)")

    def redact(self, text: str) -> str:
        """``text`` (a libpq error, which may quote part of the DSN) with the DSN's secrets masked."""
        dsn = self.resolved_dsn()
        return _redact(text, _dsn_secrets(dsn)) if dsn else text


#: libpq connection keywords whose value is a secret (libpq's "connection parameter key words").
SECRET_DSN_KEYS = frozenset({"password", "sslpassword"})
_URI_PREFIXES = ("postgresql://", "postgres://")


def mask_dsn(dsn: str) -> str:
    """A libpq connection string with every password replaced by ``***``.

    Both of libpq's forms (PostgreSQL manual, "Connection Strings"): the URI
    ``postgresql://user:password@host/db?password=…`` and ``key=value`` pairs,
    where a value may be single-quoted with backslash escapes. Where the text
    is ambiguous the mask takes more, never less: the URI's user information
    runs to the *last* ``@``, query keys are compared percent-decoded (libpq
    decodes them), and a ``key=value`` string that libpq could not parse is
    masked from the first token it could not read.
    """
    return _mask(dsn)[0]


def _mask(dsn: str) -> tuple[str, list[str]]:
    """(the masked DSN, the secret texts it hid)."""
    text = dsn.strip()
    if text.lower().startswith(_URI_PREFIXES):
        return _mask_uri(text)
    return _mask_pairs(text)


def _mask_uri(text: str) -> tuple[str, list[str]]:
    from urllib.parse import unquote

    scheme, _, rest = text.partition("://")
    secrets: list[str] = []

    def query_value(m: re.Match) -> str:
        if unquote(m.group(2)).strip().lower() in SECRET_DSN_KEYS:
            secrets.append(m.group(3))
            return f"{m.group(1)}{m.group(2)}=***"
        return m.group(0)

    # any ?key=value or &key=value, wherever it appears (a password may hold a literal ?)
    rest = re.sub(r"([?&])([^&=?]*)=([^&]*)", query_value, rest)
    at = rest.rfind("@")
    if at >= 0:
        userinfo, host = rest[:at], rest[at + 1:]
        user, colon, password = userinfo.partition(":")
        if colon:
            secrets.append(password)
            rest = f"{user}:***@{host}"
    return f"{scheme}://{rest}", secrets


def _mask_pairs(text: str) -> tuple[str, list[str]]:
    """libpq's ``key = value`` tokenizer (conninfo_parse), rebuilt with the secret values masked."""
    out: list[str] = []
    secrets: list[str] = []
    i, n = 0, len(text)
    while True:
        while i < n and text[i].isspace():
            i += 1
        if i >= n:
            return " ".join(out), secrets
        start = i
        while i < n and text[i] != "=" and not text[i].isspace():
            i += 1
        key = text[start:i]
        while i < n and text[i].isspace():
            i += 1
        if not key or i >= n or text[i] != "=":
            break  # not key=value: libpq refuses it; show none of it
        i += 1
        while i < n and text[i].isspace():
            i += 1
        vstart = i
        if i < n and text[i] == "'":
            i += 1
            while i < n and text[i] != "'":
                i += 2 if text[i] == "\\" else 1
            if i >= n:
                break  # unterminated quote
            i += 1
        else:
            while i < n and not text[i].isspace():
                i += 2 if text[i] == "\\" else 1
        value = text[vstart:i]
        if key.lower() in SECRET_DSN_KEYS:
            secrets.append(value)
            out.append(f"{key}=***")
        else:
            out.append(f"{key}={value}")
    secrets.append(text[start:])
    out.append("***")
    return " ".join(out), secrets


def _dsn_secrets(dsn: str) -> list[str]:
    """The secret texts of a DSN, with their quoted and percent-decoded forms."""
    from urllib.parse import unquote

    found = []
    for value in _mask(dsn)[1]:
        for form in (value, value.strip("'"), unquote(value), value.strip("'").replace("\\", "")):
            if form and form not in found:
                found.append(form)
    return found


def _redact(text: str, secrets: list[str]) -> str:
    """Mask each secret, and each piece of it that libpq might quote alone (split where libpq splits)."""
    pieces = set()
    for value in secrets:
        pieces.add(value)
        pieces.update(p for p in re.split(r"[\s'\"@/:?&=,%]+", value) if len(p) >= 3)
    for piece in sorted(pieces, key=len, reverse=True):
        text = text.replace(piece, "***")
    return text


@dataclass(frozen=True)
class WebSettings:
    """``[web]``: the admin pages (docs/web.md)."""

    bind: str
    admins: tuple[str, ...]  # lower-cased addresses, always allowed
    roles: tuple[str, ...]  # roster roles allowed in (proxy sign-on)
    proxy_header: str | None  # e.g. X-Remote-User; None: no proxy sign-on
    proxies: tuple[str, ...]  # addresses/networks whose proxy_header and X-Forwarded-* are believed
    proxy_secret_env: str | None  # the variable holding the secret the proxy sends; None: no secret
    accounts: dict[str, str]  # lower-cased user -> password hash (standalone login)
    secret_env: str
    secret_file: Path
    session_file: Path  # the app's own SQLite file: sign-ins and failed sign-ins
    roles_file: Path  # written by sync: the roster roles of staff (for proxy sign-on)
    page_size: int
    session_hours: int


@dataclass(frozen=True)
class Config:
    path: Path
    site: Site
    postfix: PostfixSettings
    roster: Roster
    domains: dict[str, Domain]
    lists: dict[str, ListConfig] = field(default_factory=dict)
    store: StoreSettings | None = None
    web: WebSettings | None = None  # None: no [web] table

    def reply_to_address(self, lst: ListConfig, domain: str) -> str | None:
        if lst.reply_to is None:
            return None
        if "@" in lst.reply_to:
            return lst.reply_to
        return f"{self.lists[lst.reply_to].local_part}@{domain}"


# --------------------------------------------------------------------------
# Loading


def load(path: str | os.PathLike | None = None) -> Config:
    """Read and validate the config file; raise ConfigError on any problem."""
    p = config_path(path)
    try:
        raw = p.read_bytes()
    except FileNotFoundError:
        raise ConfigError("", "config file not found", p) from None
    except OSError as exc:
        raise ConfigError("", f"cannot read config file: {exc.strerror}", p) from None
    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise ConfigError("", f"not UTF-8 (byte {exc.start})", p) from None
    except tomllib.TOMLDecodeError as exc:
        m = re.search(r"\(at line (\d+), column (\d+)\)", str(exc))
        msg = re.sub(r"\s*\(at line \d+, column \d+\)", "", str(exc))
        loc = f"{p}:{m.group(1)}:{m.group(2)}" if m else str(p)
        raise ConfigError("", f"TOML syntax error: {msg}", loc) from None
    try:
        return parse(data, p.resolve())
    except ConfigError as exc:
        exc.path = p
        raise


def parse(data: dict[str, Any], path: Path) -> Config:
    """Validate an already-decoded TOML document."""
    base = path.parent
    top = _Table(data, "")
    site_t = top.table("site")
    postfix_t = top.table("postfix")
    roster_t = top.table("roster")
    domains_t = top.table("domains")
    lists_t = top.table("lists")
    store_t = top.table("store")
    web_t = top.table("web") if "web" in data else None
    top.done()

    site = _site(site_t, base)
    postfix = _postfix(postfix_t, base)
    roster = _roster(roster_t, base)
    store = _store(store_t, site, base, configured="store" in data)
    web = _web(web_t, site, roster, base) if web_t is not None else None

    domains: dict[str, Domain] = {}
    for name in domains_t.keys():
        d = domains_t.table(name)
        dname = name.lower()
        if not _DOMAIN.match(dname):
            raise ConfigError(f"domains.{name}", "not a valid mail domain")
        domains[dname] = Domain(dname, d.string("course", None))
        d.done()
    domains_t.done()
    if not domains:
        raise ConfigError("domains", 'at least one [domains."…"] table is required')

    known_roles = set(roster.enrollment_types) | set(roster.role_aliases)
    lists: dict[str, ListConfig] = {}
    for name in lists_t.keys():
        lists[name] = _list(lists_t.table(name), name, site, roster, domains, known_roles)
    lists_t.done()

    seen: dict[str, str] = {}
    for lst in lists.values():
        for dom in lst.domains:
            for addr in service_addresses(lst.local_part, dom):
                other = seen.get(addr)
                if other is not None:
                    raise ConfigError(
                        f"lists.{lst.name}.address",
                        f"{addr} is already used by lists.{other}",
                    )
                seen[addr] = lst.name
    for lst in lists.values():
        if lst.reply_to is not None and "@" not in lst.reply_to:
            target = lists.get(lst.reply_to)
            if target is None:
                raise ConfigError(
                    f"lists.{lst.name}.reply_to",
                    f"{lst.reply_to!r} is neither an address nor a list name",
                )
            missing = set(lst.domains) - set(target.domains)
            if missing:
                raise ConfigError(
                    f"lists.{lst.name}.reply_to",
                    f"list {lst.reply_to!r} is not served on {', '.join(sorted(missing))}",
                )
    return Config(path, site, postfix, roster, domains, lists, store, web)


# --------------------------------------------------------------------------
# Sections


def _site(t: _Table, base: Path) -> Site:
    tz = t.string("timezone", "UTC")
    try:
        import zoneinfo

        zoneinfo.ZoneInfo(tz)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        raise ConfigError("site.timezone", f"unknown time zone {tz!r} (use an IANA name such as America/Chicago)") from None
    state_dir = t.path("state_dir", DEFAULT_STATE_DIR, base)
    site = Site(
        timezone=tz,
        state_dir=state_dir,
        spool_dir=t.path("spool_dir", str(state_dir / "spool"), base),
        map_dir=t.path("map_dir", str(state_dir / "postfix"), base),
        transport=t.string("transport", "listfilter", pattern=r"^[a-z][a-z0-9_-]*$"),
        sendmail=t.string("sendmail", "/usr/sbin/sendmail"),
        relay=t.string("relay", None),
        owners=tuple(_address(a, f"site.owners[{i}]") for i, a in enumerate(t.strings("owners", []))),
        notice_limit=t.integer("notice_limit", 5, minimum=0),
    )
    t.done()
    return site


def _postfix(t: _Table, base: Path) -> PostfixSettings:
    cd = t.string("config_directory", None)
    settings = PostfixSettings(
        config_directory=(base / cd) if cd else None,
        command_directory=t.path("command_directory", "/usr/sbin", base),
        map_type=t.choice("map_type", "hash", ("hash", "btree", "cdb", "lmdb", "texthash")),
        reload=t.boolean("reload", True),
        maxproc=t.integer("maxproc", 4, minimum=1),
    )
    t.done()
    return settings


def _roster(t: _Table, base: Path) -> Roster:
    types = tuple(t.strings("enrollment_types", list(DEFAULT_ENROLLMENT_TYPES)))
    aliases_t = t.table("role_aliases")
    aliases = dict(DEFAULT_ROLE_ALIASES)
    for name in aliases_t.keys():
        aliases[name] = tuple(aliases_t.strings(name))
    aliases_t.done()
    for name, targets in aliases.items():
        for target in targets:
            if target not in types:
                raise ConfigError(
                    f"roster.role_aliases.{name}",
                    f"unknown enrollment type {target!r} (known: {', '.join(types)})",
                )
    csv_path = t.string("csv", None)
    dsn = t.string("dsn", None)
    source = t.choice("source", "csv" if csv_path else "postgresql", ("postgresql", "csv"))
    roster = Roster(
        source=source,
        dsn_env=t.string("dsn_env", "LISTFILTER_ROSTER_DSN"),
        dsn=dsn,
        query=t.string("query", None),
        csv=(base / csv_path) if csv_path else None,
        current_semester=t.string("current_semester", "current"),
        enrollment_types=types,
        role_aliases=aliases,
    )
    t.done()
    if source == "csv" and roster.csv is None:
        raise ConfigError("roster.csv", 'required when source = "csv"')
    if source == "postgresql" and roster.csv is not None:
        raise ConfigError("roster.csv", 'only used with source = "csv"')
    return roster


def _store(t: _Table, site: Site, base: Path, configured: bool) -> StoreSettings:
    dsn = t.string("dsn", None)
    backend = t.choice("backend", "postgresql" if dsn else "sqlite", ("sqlite", "postgresql"))
    path = t.string("path", None)
    retention = t.integer("retention_days", 365, minimum=0)
    store = StoreSettings(
        backend=backend,
        path=(base / path) if path else site.state_dir / "maillog" / "maillog.sqlite",
        dsn_env=t.string("dsn_env", "LISTFILTER_STORE_DSN"),
        dsn=dsn,
        retention_days=retention,
        body_retention_days=t.integer("body_retention_days", 0, minimum=0),
        store_bodies=t.boolean("store_bodies", True),
        body_max_bytes=t.integer("body_max_bytes", 64 * 1024, minimum=0),
        configured=configured,
    )
    t.done()
    if backend == "sqlite" and dsn:
        raise ConfigError("store.dsn", 'only used with backend = "postgresql"')
    if backend == "postgresql" and path:
        raise ConfigError("store.path", 'only used with backend = "sqlite"')
    if retention and store.body_retention_days > retention:
        raise ConfigError("store.body_retention_days", f"longer than retention_days ({retention}): rows go first")
    return store


def _web(t: _Table, site: Site, roster: Roster, base: Path) -> WebSettings:
    import ipaddress

    bind = t.string("bind", "127.0.0.1:8080")
    try:
        parse_bind(bind)
    except ValueError as exc:
        raise ConfigError("web.bind", str(exc)) from None
    known_roles = set(roster.enrollment_types) | set(roster.role_aliases)
    roles = tuple(t.strings("roles", ["instructor"]))
    for i, r in enumerate(roles):
        if r not in known_roles:
            raise ConfigError(f"web.roles[{i}]", f"unknown role {r!r} (known: {', '.join(sorted(known_roles))})")
    header = t.string("proxy_header", None, pattern=r"^[A-Za-z0-9-]+$")
    proxies = tuple(t.strings("proxies", []))
    for i, p in enumerate(proxies):
        try:
            ipaddress.ip_network(p, strict=False)
        except ValueError:
            raise ConfigError(f"web.proxies[{i}]", f"{p!r} is not an IP address or network") from None
    if header and not proxies:
        raise ConfigError("web.proxies", "required with proxy_header: the addresses of the proxy that sets it")
    if proxies and not header:
        raise ConfigError("web.proxy_header", "required with proxies: the header that carries the user's email")
    proxy_secret_env = t.string("proxy_secret_env", None, pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")
    if proxy_secret_env and not proxies:
        raise ConfigError("web.proxy_secret_env", "only used with proxies: the secret those proxies send")
    accounts_t = t.table("accounts")
    accounts = {}
    for user in accounts_t.keys():
        value = accounts_t.string(user, None)
        if not re.match(r"^(scrypt|pbkdf2):[^$]+\$[^$]+\$[0-9a-f]+$", value):
            raise ConfigError(f"web.accounts.{user}", "not a password hash (make one with `listfilter web passwd`)")
        accounts[user.lower()] = value
    accounts_t.done()
    secret_file = t.string("secret_file", None)
    secret_path = (base / secret_file) if secret_file else site.state_dir / "maillog" / "web-secret"
    session_file = t.string("session_file", None)
    web = WebSettings(
        bind=bind,
        admins=tuple(_address(a, f"web.admins[{i}]").lower() for i, a in enumerate(t.strings("admins", []))),
        roles=roles,
        proxy_header=header,
        proxies=proxies,
        proxy_secret_env=proxy_secret_env,
        accounts=accounts,
        secret_env=t.string("secret_env", "LISTFILTER_WEB_SECRET"),
        secret_file=secret_path,
        # beside the secret by default: the one place the app is known to be able to write
        session_file=(base / session_file) if session_file else secret_path.parent / "web-sessions.sqlite",
        roles_file=site.state_dir / "web-roles.json",
        page_size=t.integer("page_size", 50, minimum=1),
        session_hours=t.integer("session_hours", 12, minimum=1),
    )
    t.done()
    if not header and not accounts:
        raise ConfigError("web", "no way in: set proxy_header and proxies (single sign-on), or [web.accounts]")
    return web


def parse_bind(value: str) -> tuple[str, int]:
    """``HOST:PORT``, ``[v6]:PORT`` or ``PORT`` → (host, port); ValueError if malformed."""
    host, sep, port = value.rpartition(":")
    if not sep:
        host, port = "127.0.0.1", value
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"{value!r} is not HOST:PORT")
    return host, int(port)


def _list(t: _Table, name: str, site: Site, roster: Roster, domains: dict[str, Domain], known_roles: set[str]) -> ListConfig:
    where = f"lists.{name}"
    t.only(("address", "display_name", "description", "members", "posters", "reply_to", "subject_tag",
            "owners", "exclude_poster", "domains"))
    local = t.string("address", name).lower()
    if not _LOCAL_PART.match(local):
        raise ConfigError(f"{where}.address", f"{local!r} is not a valid local part (letters, digits, . _ -)")
    for suffix in RESERVED_SUFFIXES:
        if local.endswith("-" + suffix):
            raise ConfigError(f"{where}.address", f"may not end in -{suffix} (reserved for the list's {suffix} address)")
    display = t.string("display_name", local)
    description = t.string("description", "")

    def roles_of(value: Any, fld: str) -> tuple[str, ...]:
        roles = _strings(value, fld)
        for r in roles:
            if r not in known_roles:
                raise ConfigError(fld, f"unknown role {r!r} (known: {', '.join(sorted(known_roles))})")
        return tuple(roles)

    # members = { roles = [...], active = true, semester = "...", emails = [...] }
    mt = t.table("members", required=True)
    has_query = any(k in mt.data for k in ("roles", "active", "semester"))
    query = None
    if has_query:
        roles = mt.data.get("roles")
        query = MemberQuery(
            roles=roles_of(mt.take("roles"), f"{where}.members.roles") if roles is not None else None,
            active=mt.boolean("active", True),
            semester=mt.string("semester", None),
        )
    emails = tuple(_address(a, f"{where}.members.emails[{i}]") for i, a in enumerate(mt.strings("emails", [])))
    mt.done()
    if query is None and not emails:
        raise ConfigError(f"{where}.members", "give a roster query (roles, active, semester) and/or emails")

    # posters = "members" | [addresses] | { emails, members, roles }
    raw = t.take("posters", required=True)
    pwhere = f"{where}.posters"
    if raw == "members":
        posters = Posters(members=True)
    elif isinstance(raw, str):
        raise ConfigError(pwhere, f'expected "members", a list of addresses or a table, not {raw!r}')
    elif isinstance(raw, list):
        posters = Posters(emails=tuple(_address(a, f"{pwhere}[{i}]") for i, a in enumerate(_strings(raw, pwhere))))
    elif isinstance(raw, dict):
        pt = _Table(raw, pwhere)
        posters = Posters(
            emails=tuple(_address(a, f"{pwhere}.emails[{i}]") for i, a in enumerate(pt.strings("emails", []))),
            members=pt.boolean("members", False),
            roles=roles_of(pt.take("roles"), f"{pwhere}.roles") if "roles" in raw else (),
        )
        pt.done()
    else:
        raise ConfigError(pwhere, f"expected \"members\", a list of addresses or a table, not {_tname(raw)}")

    reply_to = t.string("reply_to", None)
    if reply_to is not None and "@" in reply_to:
        reply_to = _address(reply_to, f"{where}.reply_to")
    owners = tuple(_address(a, f"{where}.owners[{i}]") for i, a in enumerate(t.strings("owners", []))) or site.owners
    if not owners:
        raise ConfigError(f"{where}.owners", "no owners: set this, or site.owners for every list")
    list_domains = tuple(d.lower() for d in t.strings("domains", list(domains)))
    for d in list_domains:
        if d not in domains:
            raise ConfigError(f"{where}.domains", f"{d!r} is not one of the [domains] tables")
    lst = ListConfig(
        name=name,
        local_part=local,
        display_name=display,
        description=description,
        members_query=query,
        member_emails=emails,
        posters=posters,
        reply_to=reply_to,
        subject_tag=t.string("subject_tag", display),
        owners=owners,
        exclude_poster=t.boolean("exclude_poster", True),
        domains=list_domains,
    )
    t.done()
    return lst


# --------------------------------------------------------------------------
# Typed access to one TOML table, reporting unknown keys and wrong types


class _Table:
    def __init__(self, data: Any, where: str):
        if not isinstance(data, dict):
            raise ConfigError(where, f"expected a table, not {_tname(data)}")
        self.data = data
        self.where = where
        self.used: set[str] = set()

    def _w(self, key: str) -> str:
        return f"{self.where}.{key}" if self.where else key

    def keys(self) -> list[str]:
        return list(self.data)

    def take(self, key: str, required: bool = False) -> Any:
        self.used.add(key)
        if key not in self.data:
            if required:
                raise ConfigError(self._w(key), "required")
            return None
        return self.data[key]

    def table(self, key: str, required: bool = False) -> _Table:
        value = self.take(key, required)
        return _Table({} if value is None else value, self._w(key))

    def string(self, key: str, default: str | None, pattern: str | None = None) -> str | None:
        value = self.take(key)
        if value is None:
            return default
        if not isinstance(value, str):
            raise ConfigError(self._w(key), f"expected a string, not {_tname(value)}")
        if pattern and not re.match(pattern, value):
            raise ConfigError(self._w(key), f"invalid value {value!r}")
        return value

    def choice(self, key: str, default: str, choices: tuple[str, ...]) -> str:
        value = self.string(key, default)
        if value not in choices:
            raise ConfigError(self._w(key), f"{value!r} is not one of: {', '.join(choices)}")
        return value

    def path(self, key: str, default: str, base: Path) -> Path:
        return base / self.string(key, default)

    def boolean(self, key: str, default: bool) -> bool:
        value = self.take(key)
        if value is None:
            return default
        if not isinstance(value, bool):
            raise ConfigError(self._w(key), f"expected true or false, not {_tname(value)}")
        return value

    def integer(self, key: str, default: int, minimum: int | None = None) -> int:
        value = self.take(key)
        if value is None:
            return default
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(self._w(key), f"expected an integer, not {_tname(value)}")
        if minimum is not None and value < minimum:
            raise ConfigError(self._w(key), f"must be at least {minimum}")
        return value

    def strings(self, key: str, default: list[str] | None = None) -> list[str]:
        value = self.take(key)
        if value is None:
            if default is None:
                raise ConfigError(self._w(key), "required")
            return default
        return _strings(value, self._w(key))

    def only(self, known: tuple[str, ...]) -> None:
        """Report an unknown key before any other problem (a typo explains the rest)."""
        for k in self.data:
            if k not in known:
                raise ConfigError(self._w(k), "unknown key")

    def done(self) -> None:
        unknown = [k for k in self.data if k not in self.used]
        if unknown:
            raise ConfigError(self._w(unknown[0]), "unknown key")


def _strings(value: Any, where: str) -> list[str]:
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ConfigError(where, f"expected a list of strings, not {_tname(value)}")
    return value


def _tname(value: Any) -> str:
    return {
        str: "a string", int: "an integer", float: "a number", bool: "a boolean",
        list: "an array", dict: "a table",
    }.get(type(value), type(value).__name__)


def _address(value: str, where: str) -> str:
    """Validate one addr-spec; return it with the domain lower-cased.

    The local part may be non-ASCII (RFC 6531, SMTPUTF8: a student's address
    can be ``jäne@example.org``); it is checked as if its non-ASCII
    characters were letters. The domain is ASCII (an IDN in its A-label form).
    """
    from email.errors import HeaderParseError
    from email.headerregistry import Address

    text = value.strip()
    local, at, domain = text.rpartition("@")
    ascii_form = "".join(c if c.isascii() else "a" for c in local) + at + domain
    try:
        Address(addr_spec=ascii_form)
        addr = Address(username=local, domain=domain) if not local.isascii() else Address(addr_spec=text)
    except (HeaderParseError, ValueError, IndexError, TypeError) as exc:
        raise ConfigError(where, f"malformed address {value!r}: {exc}") from None
    if not local.isascii() and (not local.isprintable() or len(local.encode()) > 64):
        raise ConfigError(where, f"malformed address {value!r}")
    if not addr.username or not _DOMAIN.match(addr.domain.lower()):
        raise ConfigError(where, f"malformed address {value!r}: needs local-part@domain")
    return f"{addr.username}@{addr.domain.lower()}"
