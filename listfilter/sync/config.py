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
from ..common.snapshot import LOCAL_SUBMISSION

#: Enrollment types of the default roster schema (Canvas: applicants are
#: recorded as "applied" by the course app).
DEFAULT_ENROLLMENT_TYPES = ("applied", "student", "teacher", "ta")
#: Role names that stand for several enrollment types.
DEFAULT_ROLE_ALIASES = {"instructor": ("teacher",), "staff": ("teacher", "ta")}

_LOCAL_PART = re.compile(r"^[a-z0-9](?:[a-z0-9._-]*[a-z0-9])?$")
_DOMAIN = re.compile(r"^(?=.{1,253}$)(?:[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?\.)+[a-z]{2,63}$")
#: A ``{placeholder}`` in a list's texts, and a key of a domain's ``fields``: a plain name.
_PLACEHOLDER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
#: The placeholders a domain's own fields fill in (``name``, ``course``) or that every domain has (``domain``).
DOMAIN_PLACEHOLDERS = ("name", "course", "domain")


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


#: How Postfix's smtp(8) client starts TLS with the relay: when offered, STARTTLS required, TLS from connect.
RELAY_TLS = ("may", "starttls", "implicit")
#: The relay's port when the table leaves it out: submission (RFC 6409) and submissions (RFC 8314).
RELAY_PORTS = {"starttls": 587, "implicit": 465}
#: The CAs Debian's ca-certificates package trusts, in one file (read before smtp(8) enters a chroot).
DEFAULT_CA_FILE = "/etc/ssl/certs/ca-certificates.crt"


@dataclass(frozen=True)
class Relay:
    """``[site] relay``: where Postfix hands outbound mail, and how it logs in there (docs/config.md)."""

    host: str  # a name or address, no brackets; an IPv6 address as Postfix writes it, ipv6:2001:db8::1
    port: int | None = None  # None: Postfix's default, the smtp port (25)
    tls: str = "may"  # one of RELAY_TLS
    verify: bool = False  # the certificate must chain to ca_file and name the host
    ca_file: Path | None = None
    username: str | None = None  # the SASL login; None: no login
    password_env: str = "LISTFILTER_RELAY_PASSWORD"
    password_file: Path = Path("/etc/listfilter/relay-password")
    password_map: Path = Path("/etc/postfix/listfilter_sasl_passwd")  # written by `listfilter postfix-config`

    @property
    def address(self) -> str:
        """``host:port``, or ``host`` alone for Postfix's default port."""
        return self.host if self.port is None else f"{self.host}:{self.port}"

    def password_source(self) -> str:
        """Where :meth:`resolved_password` takes the password from: ``$VARIABLE`` or the file."""
        return f"${self.password_env}" if os.environ.get(self.password_env) else str(self.password_file)

    def resolved_password(self) -> str:
        """The login's password: from the environment variable first, then the file.

        The file must belong to root (or to the user reading it) and be readable
        by its owner alone: a password others can read is refused, not used.
        """
        where = "site.relay.password_file"
        value = os.environ.get(self.password_env)
        source = f"${self.password_env}"
        if not value:
            path, source = self.password_file, str(self.password_file)
            try:
                fd = os.open(path, os.O_RDONLY)
            except FileNotFoundError:
                raise ConfigError(where, f"{path} does not exist: put the relay password there"
                                         f" (root's, mode 0600), or set ${self.password_env}") from None
            except OSError as exc:
                raise ConfigError(where, f"{path}: {exc.strerror} (run as root)") from None
            with os.fdopen(fd, "rb") as fh:
                st = os.fstat(fh.fileno())
                mode = st.st_mode & 0o7777
                if st.st_mode & 0o077:
                    raise ConfigError(where, f"{path} is mode {mode:04o}: others than its owner may read or"
                                             f" change the relay password; `chmod 600 {path}`")
                if st.st_uid not in (0, os.geteuid()):
                    raise ConfigError(where, f"{path} belongs to uid {st.st_uid}, not root;"
                                             f" `chown root {path}`")
                raw = fh.read()
            try:
                value = raw.decode("utf-8").removesuffix("\n").removesuffix("\r")
            except UnicodeDecodeError:
                raise ConfigError(where, f"{path} is not UTF-8") from None
        if not value:
            raise ConfigError(where, f"{source} is empty")
        if any(not c.isprintable() for c in value):
            raise ConfigError(where, f"{source} holds more than one line, or a control character")
        if value != value.rstrip():
            raise ConfigError(where, f"{source}: the password ends in white space, which Postfix's"
                                     " lookup tables cannot keep")
        return value


@dataclass(frozen=True)
class TrustedSenders:
    """One ``[site] authenticated_trusted`` entry: From domains believed without a DMARC pass.

    With ``networks``, only for mail whose SMTP client is in one of them (the
    campus relay's addresses, say) or, for ``"local"``, mail submitted on this
    host with sendmail; without, from any client (docs/deliverability.md).
    """

    domains: tuple[str, ...]  # lower-cased
    networks: tuple[str, ...] = ()  # ipaddress networks as text, or LOCAL_SUBMISSION; (): any client


@dataclass(frozen=True)
class Site:
    timezone: str
    state_dir: Path
    spool_dir: Path
    map_dir: Path
    transport: str
    sendmail: str
    relay: Relay | None
    owners: tuple[str, ...]
    notice_limit: int
    dmarc: str = "munge"  # every list's DMARC mitigation unless it names its own (DMARC_MODES)
    dmarc_always: tuple[str, ...] = ()  # every list's dmarc_always unless it names its own
    authserv_id: str | None = None  # this host's authserv-id ([verify]); None: [dns] hostname, else the FQDN
    authenticated_trusted: tuple[TrustedSenders, ...] = ()  # From domains believed without a DMARC pass
    redirect_all_to: str | None = None  # staging valve: every copy for every domain goes only here
    token_key_file: Path | None = None  # the key that signs confirmations and links (common.tokens); None: state_dir's
    confirm_days: int = 3  # how long a join or leave confirmation, or an owner's decision token, stays valid
    hold_days: int = 14  # every list's hold_days unless it names its own: held posts expire after this

    @property
    def snapshot_path(self) -> Path:
        return self.state_dir / SNAPSHOT_NAME

    @property
    def token_key(self) -> Path:
        from ..common.tokens import KEY_NAME

        return self.token_key_file or self.state_dir / KEY_NAME


#: Where Postfix's log lines are read from: ``log_file`` (syslog's file, or main.cf's maillog_file), or
#: the systemd journal (journalctl).
LOG_SOURCES = ("file", "journal")


@dataclass(frozen=True)
class PostfixSettings:
    config_directory: Path | None
    command_directory: Path
    map_type: str
    reload: bool
    maxproc: int  # master.cf's process limit for the pipes
    log_file: Path  # where Postfix's log lines land (syslog's file, or main.cf's maillog_file)
    log_group: str | None  # the deliver pipe's group (user=listfilter:GROUP), for reading log_file
    log_source: str = "file"  # LOG_SOURCES: Postfix's lines in log_file, or in the systemd journal
    journal_directory: Path | None = None  # journalctl --directory: a journal other than the host's

    @property
    def journal(self) -> bool:
        return self.log_source == "journal"

    @property
    def postqueue(self) -> Path:
        return self.command_directory / "postqueue"


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
class DKIMKey:
    """A list domain's DKIM key: the domain's line in OpenDKIM's KeyTable (docs/deliverability.md)."""

    selector: str  # the s= of the signature; its public key is at SELECTOR._domainkey.DOMAIN
    key: Path  # the private key file (opendkim-genkey's SELECTOR.private)


@dataclass(frozen=True)
class Domain:
    name: str
    course: str | None
    dkim: DKIMKey | None = None  # None: copies on this domain are not signed
    redirect_all_to: str | None = None  # staging valve for this domain's lists (overrides [site]'s)
    tenant_name: str | None = None  # its `name`: who the domain's lists belong to, for {name}
    owners: tuple[str, ...] = ()  # its lists' owners where a list names none; (): [site]'s
    reply_to: str | None = None  # its lists' reply_to where a list sets none: an address or a list name
    fields: dict[str, str] = field(default_factory=dict)  # more {placeholders} for its lists' texts

    def placeholders(self) -> dict[str, str]:
        """The values a list's ``{…}`` may name on this domain: only the fields it sets."""
        values = {"domain": self.name, **self.fields}
        if self.tenant_name is not None:
            values["name"] = self.tenant_name
        if self.course is not None:
            values["course"] = self.course
        return values


@dataclass(frozen=True)
class MemberQuery:
    roles: tuple[str, ...] | None  # None: every enrollment type
    active: bool
    semester: str | None  # None: the roster's current semester


#: What happens to a post from someone the list does not let post: refused with a notice, or held for the owners.
MODERATION_MODES = ("refuse", "hold")


@dataclass(frozen=True)
class OptIn:
    """``members = { optin = true, eligible = …, approval = … }``: people join and leave by themselves.

    ``eligible`` is who may join: None for anyone, else a roster query (its people, plus ``emails``).
    With ``approval`` a confirmed join also waits for an owner (docs/config.md)."""

    eligible: MemberQuery | None = None
    eligible_emails: tuple[str, ...] = ()
    approval: bool = False

    def describe(self) -> str:
        """Who may join, in words, for the notices and the CLI."""
        if self.eligible is None and not self.eligible_emails:
            return "anyone"
        parts = []
        if self.eligible is not None:
            parts.append("course " + ", ".join(self.eligible.roles) if self.eligible.roles else "everyone in the course")
        if self.eligible_emails:
            parts.append(", ".join(self.eligible_emails))
        return "; ".join(parts)


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
    """One ``[lists.NAME]`` as written: its texts, owners and reply_to may hold a domain's ``{placeholders}``,
    and :meth:`Config.for_domain` gives them as one domain serves the list (:class:`ServedList`)."""

    name: str
    local_part: str
    display_name: str
    description: str
    members_query: MemberQuery | None
    member_emails: tuple[str, ...]
    posters: Posters
    reply_to: str | None  # a full address, or a list name (same domain); None: the domain's
    subject_tag: str
    owners: tuple[str, ...]  # the list's own; (): the domain's, else [site]'s
    exclude_poster: bool
    domains: tuple[str, ...]
    title_case_subject: bool = True  # the Subject's text in Title Case (listfilter.mail.subject)
    dmarc: str = "munge"  # one of DMARC_MODES: what a post From a strict DMARC domain gets
    dmarc_always: tuple[str, ...] = ()  # lower-cased domains and addresses that get it whatever their policy
    require_authenticated: bool = False  # a post counts only with a DMARC pass here, or from a trusted sender
    optin: OptIn | None = None  # None: the members are the roster's and the config's (and extra members)
    non_member_posts: str = "refuse"  # MODERATION_MODES: a post from someone not on the list
    non_poster_posts: str = "refuse"  # MODERATION_MODES: a post from a member who may not post
    hold_days: int = 14  # a held post not decided by then expires, and its poster is told

    @property
    def holds_posts(self) -> bool:
        """Whether some posts wait for the owners (non_member_posts or non_poster_posts = "hold")."""
        return "hold" in (self.non_member_posts, self.non_poster_posts)

    @property
    def signs_tokens(self) -> bool:
        """Whether its mail carries signed tokens (common.tokens): an opt-in list's confirmations and
        links, a held post's decisions. Such a list needs the token key."""
        return self.optin is not None or self.holds_posts


@dataclass(frozen=True)
class ServedList:
    """A list as one domain serves it (docs/config.md, "Many tenants"): what every copy, notice and map
    says there. Worked out by :func:`serve` alone, so the compiled list, the -owner alias and the
    refusal notice cannot disagree."""

    display_name: str
    description: str
    subject_tag: str
    owners: tuple[str, ...]  # the list's own, else the domain's, else [site]'s; never empty
    reply_to: str | None  # a full address; None: the list sets no Reply-To


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
    accounts: dict[str, str]  # lower-cased user -> password hash (standalone login), from [web.accounts]
    accounts_file: Path  # root's file of more accounts (user:hash lines), read by the app (listfilter.admin.auth)
    secret_env: str
    secret_file: Path
    session_file: Path  # the app's own SQLite file: sign-ins and failed sign-ins
    roles_file: Path  # written by sync: the roster roles of staff (for proxy sign-on)
    page_size: int
    session_hours: int
    url: str | None = None  # the app's public https address: opt-in lists' one-click unsubscribe links point there


@dataclass(frozen=True)
class DNSSettings:
    """``[dns]``: the resolver the sync side and ``dns-check`` ask (docs/config.md), and what dns-check expects."""

    nameservers: tuple[str, ...] = ()  # IP addresses; () means the host's /etc/resolv.conf
    port: int = 53
    timeout: float = 5.0  # seconds for one lookup, retries included
    hostname: str | None = None  # this host's name (EHLO, PTR); None: the host's FQDN
    expect_mx: tuple[str, ...] = ()  # names or addresses a list domain's MX must point at; (): hostname
    sending_addresses: tuple[str, ...] = ()  # where mail leaves from; (): the relay's addresses, or this host's


#: What Postfix does with a copy while OpenDKIM does not answer (the milter's default_action).
DKIM_ACTIONS = ("tempfail", "accept")


@dataclass(frozen=True)
class DKIMSettings:
    """``[dkim]``: the OpenDKIM milter that signs the copies listfilter hands back (docs/config.md).

    The keys are per list domain (:class:`DKIMKey`, ``[domains."…"] dkim_selector``);
    what is here is shared by all of them: one milter, one pair of tables.
    """

    socket: str = "inet:127.0.0.1:8891"  # Postfix's milter address: inet:HOST:PORT or unix:/PATH
    default_action: str = "tempfail"  # one of DKIM_ACTIONS
    selector: str | None = None  # every list domain's selector unless it names its own
    key_dir: Path = Path("/etc/dkimkeys")  # a domain's key: key_dir/DOMAIN/SELECTOR.private
    table_dir: Path = Path("/etc/opendkim")  # where key.table and signing.table are installed

    @property
    def key_table(self) -> Path:
        return self.table_dir / "key.table"

    @property
    def signing_table(self) -> Path:
        return self.table_dir / "signing.table"


@dataclass(frozen=True)
class VerifySettings:
    """``[verify]``: the milters that check mail arriving by SMTP (docs/deliverability.md).

    A second OpenDKIM, verifying only (``[dkim]``'s signer stays on
    non_smtpd_milters), then OpenDMARC, on smtpd_milters; both write
    Authentication-Results under ``[site] authserv_id``, which listfilter
    reads for lists with ``require_authenticated``.
    """

    opendkim: str = "inet:127.0.0.1:8892"  # the verifying OpenDKIM's milter address
    opendmarc: str = "inet:127.0.0.1:8893"
    default_action: str = "tempfail"  # one of DKIM_ACTIONS: what smtpd does while a milter does not answer
    header_checks: Path = Path("/etc/postfix/listfilter_header_checks")  # strips forged Authentication-Results


@dataclass(frozen=True)
class StatusSettings:
    """``[status]``: the thresholds of ``listfilter status`` (docs/config.md); 0 turns a threshold off."""

    deferred_warn: int = 1  # list messages in Postfix's deferred queue
    deferred_crit: int = 100
    oldest_deferred_warn_hours: int = 4  # the oldest deferred list message's age
    oldest_deferred_crit_hours: int = 24
    held_warn: int = 1  # list messages on hold
    held_crit: int = 0
    active_warn: int = 500  # list messages in the incoming/active queues
    active_crit: int = 5000
    sync_warn_minutes: int = 30  # since the last sync ran
    sync_crit_minutes: int = 120
    snapshot_warn_days: int = 0  # since the snapshot last changed (an unchanged sync does not rewrite it)
    snapshot_crit_days: int = 0
    spool_warn: int = 100  # spool records not yet ingested
    spool_crit: int = 1000
    failed_posts_warn: int = 1  # posts with a bounced or expired member, last 24 hours
    failed_posts_crit: int = 0
    failed_notices_warn: int = 1  # owner notices that failed or were dropped, last 24 hours
    failed_notices_crit: int = 0
    suppressed_warn: int = 0  # addresses suppressed by bounce scoring
    suppressed_crit: int = 0
    dkim_key_warn_days: int = 365  # the DKIM private key file's age
    dkim_key_crit_days: int = 0


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
    dns: DNSSettings = field(default_factory=DNSSettings)
    dkim: DKIMSettings | None = None  # None: nothing is signed (no list domain has a DKIM selector)
    verify: VerifySettings | None = None  # None: inbound mail is not verified (no [verify] table)
    status: StatusSettings = field(default_factory=StatusSettings)

    @property
    def authserv_id(self) -> str:
        """This host's authserv-id: ``[site] authserv_id``, else ``[dns] hostname``, else the host's FQDN."""
        if self.site.authserv_id:
            return self.site.authserv_id
        if self.dns.hostname:
            return self.dns.hostname
        import socket

        return socket.getfqdn().lower()

    def redirect_for(self, domain: str) -> str | None:
        """The staging valve for one list domain: its ``redirect_all_to``, else [site]'s; None when off."""
        own = self.domains.get(domain)
        return (own.redirect_all_to if own is not None else None) or self.site.redirect_all_to

    def redirects(self) -> dict[str, str]:
        """Every list domain whose copies the staging valve redirects, to the address they go to."""
        return {d: to for d in sorted(self.domains) if (to := self.redirect_for(d))}

    def staging_note(self) -> str | None:
        """The staging valve in one line, for check, sync and the admin page; None when it is off."""
        redirects = self.redirects()
        if not redirects:
            return None
        by_target: dict[str, list[str]] = {}
        for domain, target in redirects.items():
            by_target.setdefault(target, []).append(domain)
        return "STAGING: redirect_all_to is on: " + "; ".join(
            f"every copy for the lists on {', '.join(ds)} goes only to {t}" for t, ds in sorted(by_target.items()))

    def for_domain(self, lst: ListConfig, domain: str) -> ServedList:
        """``lst`` as ``domain`` serves it: its texts filled in, its owners and reply_to resolved."""
        return serve(lst, self.domains[domain], self.site, self.lists)

    def reply_to_address(self, lst: ListConfig, domain: str) -> str | None:
        """The list's Reply-To on ``domain``: its own reply_to, else the domain's, as a full address."""
        return self.for_domain(lst, domain).reply_to


def serve(lst: ListConfig, domain: Domain, site: Site, lists: dict[str, ListConfig]) -> ServedList:
    """``lst`` as ``domain`` serves it; ConfigError when a placeholder, owner or reply_to does not work there.

    ``load`` calls this for every list on every domain, so a config that loads serves everywhere.
    """
    where = f"lists.{lst.name}"
    display_name = _fill(lst.display_name, f"{where}.display_name", domain)
    subject_tag = _fill(lst.subject_tag, f"{where}.subject_tag", domain)
    description = _fill(lst.description, f"{where}.description", domain)
    if lst.owners:
        owners = tuple(_address_on(domain, o, _fill(o, f"{where}.owners[{i}]", domain), f"{where}.owners[{i}]")
                       for i, o in enumerate(lst.owners))
    else:
        owners = domain.owners or site.owners
    if not owners:
        raise ConfigError(f"{where}.owners", f'no owners on domains."{domain.name}": set this, the domain\'s'
                                             " owners, or site.owners")
    if lst.reply_to is not None:
        filled = _fill(lst.reply_to, f"{where}.reply_to", domain)
        reply_to = _reply_to(domain, lst.reply_to, filled, f"{where}.reply_to", lists)
    elif domain.reply_to is not None:
        reply_to = _reply_to(domain, domain.reply_to, domain.reply_to, f"domains.{domain.name}.reply_to", lists)
    else:
        reply_to = None
    return ServedList(display_name, description, subject_tag, owners, reply_to)


def _placeholders(text: str, where: str) -> tuple[str, ...]:
    """The ``{field}`` names in ``text`` (str.format syntax, ``{{``/``}}`` literal braces).

    Only plain names: an attribute, an index, a conversion or a format spec
    would let the config reach into Python objects or depend on formatting
    rules nobody reading the TOML expects.
    """
    import string

    try:
        parts = list(string.Formatter().parse(text))
    except ValueError as exc:
        raise ConfigError(where, f'"{text}": {exc} (write {{{{ and }}}} for a literal brace)') from None
    names = []
    for _, name, spec, conversion in parts:
        if name is None:
            continue
        if not _PLACEHOLDER.match(name) or spec or conversion:
            shown = name + (f"!{conversion}" if conversion else "") + (f":{spec}" if spec else "")
            raise ConfigError(where, f'"{text}": {{{shown}}} is not a placeholder: only plain names such as'
                                     " {name}, {course}, {domain} or a domain's fields")
        names.append(name)
    return tuple(names)


def _braces(text: str) -> bool:
    """Whether ``text`` may hold placeholders; text without braces means exactly what it says."""
    return "{" in text or "}" in text


def _text(t: _Table, key: str, default: str | None) -> str | None:
    """A list's text that may use placeholders (display_name, description, subject_tag), as written."""
    value = t.string(key, default)
    if value is not None:
        _placeholders(value, t._w(key))
    return value


def _written_address(value: str, where: str) -> str:
    """A list's owner or reply_to address as written: checked now without placeholders, else on each domain."""
    if _braces(value):
        _placeholders(value, where)
        return value
    return _address(value, where)


def _fill(text: str, where: str, domain: Domain) -> str:
    """``text`` with the domain's values put in; text without placeholders comes back as it is."""
    if not _braces(text):
        return text
    values = domain.placeholders()
    for name in _placeholders(text, where):
        if name not in values:
            raise ConfigError(where, f'"{text}" uses {{{name}}}, which domains."{domain.name}" does not set')
    return text.format_map(values)


def _address_on(domain: Domain, text: str, filled: str, where: str) -> str:
    """An owner or reply_to address on ``domain``: ``text`` as written, ``filled`` with the domain's values
    put in. One without placeholders was checked when the config was read."""
    if not _braces(text):
        return text
    try:
        return _address(filled, where)
    except ConfigError as exc:
        raise ConfigError(where, f'{exc.message} (from "{text}" on domains."{domain.name}")') from None


def _reply_to(domain: Domain, text: str, filled: str, where: str, lists: dict[str, ListConfig]) -> str:
    """A reply_to on ``domain`` as a full address: an address, or a list served there."""
    if "@" in filled:
        return _address_on(domain, text, filled, where)
    target = lists.get(filled)
    if target is None:
        raise ConfigError(where, f"{filled!r} is neither an address nor a list name")
    if domain.name not in target.domains:
        raise ConfigError(where, f"list {filled!r} is not served on {domain.name}")
    return f"{target.local_part}@{domain.name}"


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
    dns_t = top.table("dns")
    dkim_t = top.table("dkim")
    verify_t = top.table("verify") if "verify" in data else None
    status_t = top.table("status")
    top.done()

    site = _site(site_t, base)
    postfix = _postfix(postfix_t, base)
    roster = _roster(roster_t, base)
    store = _store(store_t, site, base, configured="store" in data)
    web = _web(web_t, site, roster, base) if web_t is not None else None
    dns_settings = _dns(dns_t)
    dkim = _dkim(dkim_t, base)

    domains: dict[str, Domain] = {}
    for name in domains_t.keys():
        d = domains_t.table(name)
        dname = name.lower()
        if not _DOMAIN.match(dname):
            raise ConfigError(f"domains.{name}", "not a valid mail domain")
        domains[dname] = Domain(dname, d.string("course", None), _domain_dkim(d, dname, dkim, base),
                                redirect_all_to=_redirect(d, f"domains.{name}.redirect_all_to"), **_tenant(d))
        d.done()
    domains_t.done()
    if not domains:
        raise ConfigError("domains", 'at least one [domains."…"] table is required')
    if not any(d.dkim for d in domains.values()):
        if "dkim" in data:
            raise ConfigError("dkim", 'no list domain is signed: set dkim.selector, or dkim_selector in a'
                                      ' [domains."…"] table')
        dkim = None
    verify = _verify(verify_t, base, dkim) if verify_t is not None else None

    known_roles = set(roster.enrollment_types) | set(roster.role_aliases)
    lists: dict[str, ListConfig] = {}
    for name in lists_t.keys():
        lists[name] = _list(lists_t.table(name), name, site, roster, domains, known_roles, verify=verify is not None)
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
    for where, target in [("site.redirect_all_to", site.redirect_all_to)] + [
            (f"domains.{d.name}.redirect_all_to", d.redirect_all_to) for d in domains.values()]:
        if target is not None and target.lower() in seen:
            raise ConfigError(where, f"{target} is an address of lists.{seen[target.lower()]}: every copy would"
                                     " come back to the list (name a person's mailbox)")
    for d in domains.values():
        if d.reply_to is not None and "@" not in d.reply_to:  # a list name: checked even where no list uses it
            _reply_to(d, d.reply_to, d.reply_to, f"domains.{d.name}.reply_to", lists)
    for lst in lists.values():
        for dom in lst.domains:
            serve(lst, domains[dom], site, lists)  # every placeholder, owner and reply_to works on every domain
    return Config(path, site, postfix, roster, domains, lists, store, web, dns=dns_settings, dkim=dkim, verify=verify,
                  status=_status(status_t))


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
        relay=_relay(t.take("relay"), base),
        owners=tuple(_address(a, f"site.owners[{i}]") for i, a in enumerate(t.strings("owners", []))),
        notice_limit=t.integer("notice_limit", 5, minimum=0),
        dmarc=t.choice("dmarc", "munge", DMARC_MODES),
        dmarc_always=_dmarc_always(t, "site.dmarc_always", ()),
        authserv_id=_authserv_id(t.string("authserv_id", None)),
        authenticated_trusted=_trusted_senders(t.take("authenticated_trusted")),
        redirect_all_to=_redirect(t, "site.redirect_all_to"),
        token_key_file=t.path("token_key_file", str(state_dir / "token-key"), base),
        confirm_days=t.integer("confirm_days", 3, minimum=1),
        hold_days=t.integer("hold_days", 14, minimum=1),
    )
    t.done()
    return site


def _tenant(t: _Table) -> dict[str, Any]:
    """A list domain's ``name``, ``owners``, ``reply_to`` and ``fields``: what its lists fill in and fall back on.

    The domain's owners and reply_to are plain (no placeholders): they are the domain's already.
    """
    ft = t.table("fields")
    fields = {}
    for key in ft.keys():
        if not _PLACEHOLDER.match(key):
            raise ConfigError(ft._w(key), "not a placeholder name (letters, digits and _, not starting with a digit)")
        if key in DOMAIN_PLACEHOLDERS:
            raise ConfigError(ft._w(key), "{domain} is always the domain's own name" if key == "domain"
                              else f"{{{key}}} is the domain's {key}: set it beside fields, not in them")
        fields[key] = ft.string(key, None)
    ft.done()
    reply_to = t.string("reply_to", None)
    if reply_to is not None and "@" in reply_to:
        reply_to = _address(reply_to, t._w("reply_to"))
    owners = tuple(_address(a, f"{t._w('owners')}[{i}]") for i, a in enumerate(t.strings("owners", [])))
    return dict(tenant_name=t.string("name", None), owners=owners, reply_to=reply_to, fields=fields)


def _redirect(t: _Table, where: str) -> str | None:
    """``redirect_all_to``: the one address every copy goes to instead (the staging valve), or None."""
    value = t.string("redirect_all_to", None)
    return None if value is None else _address(value, where)


#: An authserv-id as the milters write it and Postfix's header_checks can match: a host name.
_AUTHSERV_ID = re.compile(r"^[a-z0-9](?:[a-z0-9.-]*[a-z0-9])?$", re.I)


def _authserv_id(value: str | None) -> str | None:
    if value is None:
        return None
    if not _AUTHSERV_ID.match(value) or ".." in value:
        raise ConfigError("site.authserv_id", f"{value!r} is not a host name (the authserv-id the milters write,"
                                              " e.g. mx.lists.example.edu)")
    return value.lower()


def _trusted_senders(value: Any) -> tuple[TrustedSenders, ...]:
    """``authenticated_trusted``: ``"example.edu"``, or ``{ domains = [...], networks = [...] }``."""
    import ipaddress

    where = "site.authenticated_trusted"
    if value is None:
        return ()
    if not isinstance(value, list):
        raise ConfigError(where, f"expected an array of domains and tables, not {_tname(value)}")

    def domain(text: Any, fld: str) -> str:
        name = text.strip().rstrip(".").lower() if isinstance(text, str) else ""
        if not _DOMAIN.match(name):
            raise ConfigError(fld, f"{text!r} is not a mail domain (the From address's domain, e.g. example.edu)")
        return name

    out = []
    for i, entry in enumerate(value):
        fld = f"{where}[{i}]"
        if isinstance(entry, str):
            out.append(TrustedSenders((domain(entry, fld),)))
            continue
        t = _Table(entry, fld)
        t.only(("domains", "networks"))
        domains = tuple(domain(d, f"{fld}.domains[{j}]") for j, d in enumerate(t.strings("domains")))
        if not domains:
            raise ConfigError(f"{fld}.domains", "name at least one domain")
        networks = []
        for j, net in enumerate(t.strings("networks", [])):
            if net.strip().lower() == LOCAL_SUBMISSION:
                networks.append(LOCAL_SUBMISSION)
                continue
            try:
                networks.append(str(ipaddress.ip_network(net.strip(), strict=False)))
            except ValueError:
                raise ConfigError(f"{fld}.networks[{j}]", f"{net!r} is not an IP address or network"
                                                          f' (or "{LOCAL_SUBMISSION}")') from None
        if "networks" in entry and not networks:
            raise ConfigError(f"{fld}.networks", "name at least one network, or leave networks out (any client)")
        t.done()
        out.append(TrustedSenders(domains, tuple(networks)))
    return tuple(out)


#: What a list does with a post From a domain whose DMARC policy is quarantine or reject
#: (docs/deliverability.md): From becomes the list's address; the post goes inside one from the list; nothing.
DMARC_MODES = ("munge", "wrap", "off")


def _dmarc_always(t: _Table, where: str, default: tuple[str, ...]) -> tuple[str, ...]:
    """``dmarc_always``: domains (``gmail.com``) and addresses, lower-cased; ``default`` when absent."""
    if t.data.get("dmarc_always") is None:
        t.take("dmarc_always")
        return default
    out: list[str] = []
    for i, value in enumerate(t.strings("dmarc_always")):
        fld = f"{where}[{i}]"
        if "@" in value:
            entry = _address(value, fld).lower()
        else:
            entry = value.strip().rstrip(".").lower()
            if not _DOMAIN.match(entry):
                raise ConfigError(fld, f"{value!r} is neither a mail domain (gmail.com) nor an address")
        if entry not in out:
            out.append(entry)
    return tuple(out)


def _relay(value: Any, base: Path) -> Relay | None:
    """``relay = "host:port"`` (no login, TLS when offered) or a table with the login (docs/config.md)."""
    where = "site.relay"
    if value is None:
        return None
    if isinstance(value, str):
        host, port = _relay_address(value, where)
        return Relay(host=host, port=port)
    if not isinstance(value, dict):
        raise ConfigError(where, f'expected "host:port" or a table, not {_tname(value)}')
    t = _Table(value, where)
    t.only(("host", "port", "tls", "verify", "ca_file", "username", "password_env", "password_file",
            "password_map"))
    host, _ = _relay_address(t.string("host", None) or "", f"{where}.host", port_allowed=False)
    tls = t.choice("tls", "may", RELAY_TLS)
    port = t.integer("port", RELAY_PORTS.get(tls), minimum=1)
    if port is not None and port > 65535:
        raise ConfigError(f"{where}.port", "must be at most 65535")
    required = tls != "may"
    verify = t.boolean("verify", required)
    if verify and not required:
        raise ConfigError(f"{where}.verify", 'needs tls = "starttls" or "implicit": with "may" Postfix sends'
                                             " in plaintext when TLS fails")
    ca_file = t.string("ca_file", None)
    if ca_file is not None and not verify:
        raise ConfigError(f"{where}.ca_file", "only used with verify = true")
    username = t.string("username", None)
    if username is not None:
        if not username or any(c in username for c in ": ") or not username.isprintable():
            raise ConfigError(f"{where}.username", f"{username!r}: a login has no colon, space or control"
                                                   " character (Postfix's table writes username:password)")
        if not required:
            raise ConfigError(f"{where}.username", 'a login needs tls = "starttls" or "implicit": with "may"'
                                                   " the password could cross the network in plaintext")
    else:
        for key in ("password_env", "password_file", "password_map"):
            if key in value:
                raise ConfigError(f"{where}.{key}", "only used with username (the relay's login)")
    relay = Relay(
        host=host,
        port=port,
        tls=tls,
        verify=verify,
        ca_file=(base / (ca_file or DEFAULT_CA_FILE)) if verify else None,
        username=username,
        password_env=t.string("password_env", Relay.password_env, pattern=r"^[A-Za-z_][A-Za-z0-9_]*$"),
        password_file=t.path("password_file", str(Relay.password_file), base),
        password_map=t.path("password_map", str(Relay.password_map), base),
    )
    t.done()
    return relay


def _relay_address(text: str, where: str, port_allowed: bool = True) -> tuple[str, int | None]:
    """``host``, ``host:port`` or ``[host]:port`` → (host, port or None)."""
    form = "host:port" if port_allowed else "a host name or address"
    value = text.strip()
    port = None
    if value.startswith("["):
        host, bracket, rest = value[1:].partition("]")
        if not bracket or (rest and not rest.startswith(":")):
            raise ConfigError(where, f"{text!r} is not {form}")
        port = rest[1:] if rest else None
    elif value.count(":") == 1:
        host, _, port = value.partition(":")
    else:
        host = value
    if port is not None and not port_allowed:
        raise ConfigError(where, f"{text!r} is not {form} (the port goes in site.relay.port)")
    if port is not None and not (port.isdigit() and 1 <= int(port) <= 65535):
        raise ConfigError(where, f"{text!r} is not {form}: {port!r} is not a port number")
    if not host or not host.isprintable() or any(c in host for c in " []/@"):
        raise ConfigError(where, f"{text!r} is not {form}")
    if ":" in host and not host.lower().startswith("ipv6:"):
        raise ConfigError(where, f"{text!r}: write an IPv6 address as [ipv6:2001:db8::1]:25, as Postfix does")
    return host, int(port) if port is not None else None


def _postfix(t: _Table, base: Path) -> PostfixSettings:
    cd = t.string("config_directory", None)
    settings = PostfixSettings(
        config_directory=(base / cd) if cd else None,
        command_directory=t.path("command_directory", "/usr/sbin", base),
        map_type=t.choice("map_type", "hash", ("hash", "btree", "cdb", "lmdb", "texthash")),
        reload=t.boolean("reload", True),
        maxproc=t.integer("maxproc", 4, minimum=1),
        log_file=t.path("log_file", "/var/log/mail.log", base),
        log_group=t.string("log_group", None),
        log_source=t.choice("log_source", "file", LOG_SOURCES),
        journal_directory=t.path("journal_directory", "", base) if "journal_directory" in t.data else None,
    )
    if settings.journal_directory is not None and not settings.journal:
        raise ConfigError("postfix.journal_directory", 'only read with log_source = "journal"')
    if settings.log_group is not None and not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_.-]{0,31}", settings.log_group):
        raise ConfigError("postfix.log_group", f"{settings.log_group!r} is not a group name")
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


#: Where the admin page's password hashes live: root's, readable by the app's group, never in version control.
DEFAULT_WEB_ACCOUNTS = "/etc/listfilter/web-accounts"
#: A werkzeug password hash (what `listfilter web passwd` makes): "scrypt:131072:8:1$salt$hex".
PASSWORD_HASH = re.compile(r"^(scrypt|pbkdf2):[^$]+\$[^$]+\$[0-9a-f]+$")


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
        if not PASSWORD_HASH.match(value):
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
        accounts_file=t.path("accounts_file", DEFAULT_WEB_ACCOUNTS, base),
        secret_env=t.string("secret_env", "LISTFILTER_WEB_SECRET"),
        secret_file=secret_path,
        # beside the secret by default: the one place the app is known to be able to write
        session_file=(base / session_file) if session_file else secret_path.parent / "web-sessions.sqlite",
        roles_file=site.state_dir / "web-roles.json",
        page_size=t.integer("page_size", 50, minimum=1),
        session_hours=t.integer("session_hours", 12, minimum=1),
        url=_public_url(t.string("url", None)),
    )
    t.done()
    # No way in (no proxy_header, no account) is not a config error: the accounts file, which
    # only root and the app may read, can hold the accounts. The app refuses to start without
    # one, and `listfilter check` says so (listfilter.admin.auth.no_way_in).
    return web


def _public_url(value: str | None) -> str | None:
    """``[web] url``: an https URL with a host and no query (RFC 8058 one-click links must be https)."""
    if value is None:
        return None
    from urllib.parse import urlsplit

    parts = urlsplit(value)
    if parts.scheme != "https" or not parts.hostname or parts.query or parts.fragment:
        raise ConfigError("web.url", f"{value!r} is not an https URL such as https://lists.example.edu"
                                     " (RFC 8058 one-click unsubscribe links must be https)")
    return value.rstrip("/")


def _dns(t: _Table) -> DNSSettings:
    import ipaddress

    def address(value: str, where: str) -> str:
        try:
            return str(ipaddress.ip_address(value.strip()))
        except ValueError:
            raise ConfigError(where, f"{value!r} is not an IP address") from None

    def host(value: str, where: str) -> str:
        name = value.strip().rstrip(".").lower()
        if not _DOMAIN.match(name):
            raise ConfigError(where, f"{value!r} is not a host name")
        return name

    nameservers = tuple(address(v, f"dns.nameservers[{i}]") for i, v in enumerate(t.strings("nameservers", [])))
    port = t.integer("port", 53, minimum=1)
    if port > 65535:
        raise ConfigError("dns.port", "must be at most 65535")
    timeout = t.take("timeout")
    if timeout is None:
        timeout = 5.0
    elif isinstance(timeout, bool) or not isinstance(timeout, (int, float)):
        raise ConfigError("dns.timeout", f"expected a number of seconds, not {_tname(timeout)}")
    elif not 0 < timeout <= 300:
        raise ConfigError("dns.timeout", "must be more than 0 and at most 300 seconds")
    hostname = t.string("hostname", None)
    expect_mx = []
    for i, v in enumerate(t.strings("expect_mx", [])):
        try:
            expect_mx.append(str(ipaddress.ip_address(v.strip())))
        except ValueError:
            expect_mx.append(host(v, f"dns.expect_mx[{i}]"))
    sending = tuple(address(v, f"dns.sending_addresses[{i}]") for i, v in enumerate(t.strings("sending_addresses", [])))
    t.done()
    return DNSSettings(
        nameservers=nameservers,
        port=port,
        timeout=float(timeout),
        hostname=host(hostname, "dns.hostname") if hostname is not None else None,
        expect_mx=tuple(expect_mx),
        sending_addresses=sending,
    )


#: A DKIM selector (RFC 6376 §3.1): one or more DNS labels.
_SELECTOR = re.compile(r"^[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?(?:\.[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?)*$", re.I)
#: The milter address forms Postfix reads (postconf(5), "milter"): the TCP one, and a unix socket's absolute path.
_MILTER_INET = re.compile(r"^inet:(\[[0-9a-f:.]+\]|[a-z0-9.-]+):(\d{1,5})$", re.I)
_MILTER_UNIX = re.compile(r"^unix:(/\S+)$")


def _status(t: _Table) -> StatusSettings:
    """``[status]``: whole numbers, 0 for "never"; a warn threshold above its crit threshold is an error."""
    from dataclasses import fields

    values = {f.name: t.integer(f.name, f.default, minimum=0) for f in fields(StatusSettings)}
    t.done()
    for name, warn in values.items():
        if "_warn" in name:
            crit_name = name.replace("_warn", "_crit")
            crit = values[crit_name]
            if warn and crit and warn > crit:
                raise ConfigError(f"status.{name}", f"{warn} is above status.{crit_name} ({crit})")
    return StatusSettings(**values)


def _dkim(t: _Table, base: Path) -> DKIMSettings:
    """``[dkim]``; every setting has a default, so a site that signs may leave the table out."""
    socket = t.string("socket", DKIMSettings.socket)
    m = _MILTER_INET.match(socket)
    if not (m and 0 < int(m.group(2)) <= 65535) and not _MILTER_UNIX.match(socket):
        raise ConfigError("dkim.socket", f"{socket!r} is not inet:HOST:PORT or unix:/PATH (where OpenDKIM listens)")
    settings = DKIMSettings(
        socket=socket,
        default_action=t.choice("default_action", DKIMSettings.default_action, DKIM_ACTIONS),
        selector=_dkim_selector(t.string("selector", None), "dkim.selector"),
        key_dir=_dkim_path(t.path("key_dir", str(DKIMSettings.key_dir), base), "dkim.key_dir"),
        table_dir=_dkim_path(t.path("table_dir", str(DKIMSettings.table_dir), base), "dkim.table_dir"),
    )
    t.done()
    return settings


def _milter_socket(value: str, where: str, what: str) -> str:
    m = _MILTER_INET.match(value)
    if not (m and 0 < int(m.group(2)) <= 65535) and not _MILTER_UNIX.match(value):
        raise ConfigError(where, f"{value!r} is not inet:HOST:PORT or unix:/PATH (where {what} listens)")
    return value


def _verify(t: _Table, base: Path, dkim: DKIMSettings | None) -> VerifySettings:
    """``[verify]``: its presence turns inbound verification on; every setting has a default."""
    settings = VerifySettings(
        opendkim=_milter_socket(t.string("opendkim", VerifySettings.opendkim), "verify.opendkim",
                                "the verifying OpenDKIM"),
        opendmarc=_milter_socket(t.string("opendmarc", VerifySettings.opendmarc), "verify.opendmarc", "OpenDMARC"),
        default_action=t.choice("default_action", VerifySettings.default_action, DKIM_ACTIONS),
        header_checks=t.path("header_checks", str(VerifySettings.header_checks), base),
    )
    t.done()
    if settings.opendkim == settings.opendmarc:
        raise ConfigError("verify.opendmarc", "the same address as verify.opendkim: each milter needs its own")
    if dkim is not None and dkim.socket in (settings.opendkim, settings.opendmarc):
        which = "opendkim" if dkim.socket == settings.opendkim else "opendmarc"
        raise ConfigError(f"verify.{which}", f"{dkim.socket} is dkim.socket, the signer's: the verifier is a second"
                                             " OpenDKIM with an address of its own")
    return settings


def _domain_dkim(t: _Table, domain: str, dkim: DKIMSettings, base: Path) -> DKIMKey | None:
    """A list domain's ``dkim_selector`` and ``dkim_key``; None when the domain is not signed."""
    selector = _dkim_selector(t.string("dkim_selector", None), t._w("dkim_selector")) or dkim.selector
    key = t.string("dkim_key", None)
    if selector is None:
        if key is not None:
            raise ConfigError(t._w("dkim_key"), "only used with dkim_selector (or dkim.selector): the key's selector")
        return None
    path = (base / key) if key is not None else dkim.key_dir / domain / f"{selector}.private"
    return DKIMKey(selector, _dkim_path(path, t._w("dkim_key")))


def _dkim_selector(value: str | None, where: str) -> str | None:
    if value is not None and not _SELECTOR.match(value):
        raise ConfigError(where, f"{value!r} is not a DKIM selector (DNS labels: letters, digits and -, e.g. lists2026)")
    return value


def _dkim_path(path: Path, where: str) -> Path:
    """An absolute path OpenDKIM can read from its tables: their fields are split at white space and ':'."""
    path = path.absolute()
    if re.search(r"[\s:#]", str(path)):
        raise ConfigError(where, f"{str(path)!r}: OpenDKIM's tables cannot hold a path with white space, ':' or '#'")
    return path


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


def _list(t: _Table, name: str, site: Site, roster: Roster, domains: dict[str, Domain], known_roles: set[str],
          verify: bool = False) -> ListConfig:
    where = f"lists.{name}"
    t.only(("address", "display_name", "description", "members", "posters", "reply_to", "subject_tag",
            "title_case_subject", "owners", "exclude_poster", "domains", "dmarc", "dmarc_always",
            "require_authenticated", "non_member_posts", "non_poster_posts", "hold_days"))
    local = t.string("address", name).lower()
    if not _LOCAL_PART.match(local):
        raise ConfigError(f"{where}.address", f"{local!r} is not a valid local part (letters, digits, . _ -)")
    for suffix in RESERVED_SUFFIXES:
        if local.endswith("-" + suffix):
            raise ConfigError(f"{where}.address", f"may not end in -{suffix} (reserved for the list's {suffix} address)")
    display = _text(t, "display_name", local)
    description = _text(t, "description", "")

    def roles_of(value: Any, fld: str) -> tuple[str, ...]:
        roles = _strings(value, fld)
        for r in roles:
            if r not in known_roles:
                raise ConfigError(fld, f"unknown role {r!r} (known: {', '.join(sorted(known_roles))})")
        return tuple(roles)

    def query_of(qt: _Table) -> MemberQuery | None:
        if not any(k in qt.data for k in ("roles", "active", "semester")):
            return None
        roles = qt.data.get("roles")
        return MemberQuery(
            roles=roles_of(qt.take("roles"), f"{qt.where}.roles") if roles is not None else None,
            active=qt.boolean("active", True),
            semester=qt.string("semester", None),
        )

    # members = { roles = [...], active = true, semester = "...", emails = [...] }
    #         | { optin = true, eligible = "anyone" | { roles, active, semester, emails }, approval = false }
    mt = t.table("members", required=True)
    optin = None
    if mt.boolean("optin", False):
        for k in ("roles", "active", "semester"):
            if k in mt.data:
                raise ConfigError(f"{where}.members.{k}", "an opt-in list's members are the people who joined:"
                                                         " say who may join with eligible = { … }")
        raw_eligible = mt.take("eligible")
        if raw_eligible is None:
            raise ConfigError(f"{where}.members.eligible", 'required with optin = true: who may join,'
                                                          ' eligible = "anyone" or eligible = { roles = [...] }')
        if raw_eligible == "anyone":
            optin = OptIn(approval=mt.boolean("approval", False))
        elif isinstance(raw_eligible, dict):
            et = _Table(raw_eligible, f"{where}.members.eligible")
            eligible_query = query_of(et)
            eligible_emails = tuple(_address(a, f"{et.where}.emails[{i}]")
                                    for i, a in enumerate(et.strings("emails", [])))
            et.done()
            if eligible_query is None and not eligible_emails:
                raise ConfigError(et.where, 'give a roster query (roles, active, semester) and/or emails,'
                                            ' or write eligible = "anyone"')
            optin = OptIn(eligible_query, eligible_emails, approval=mt.boolean("approval", False))
        else:
            raise ConfigError(f"{where}.members.eligible",
                              f'expected "anyone" or a table {{ roles = [...] }}, not {raw_eligible!r}')
        query = None
    else:
        for k in ("eligible", "approval"):
            if k in mt.data:
                raise ConfigError(f"{where}.members.{k}", "only for an opt-in list (optin = true)")
        query = query_of(mt)
    emails = tuple(_address(a, f"{where}.members.emails[{i}]") for i, a in enumerate(mt.strings("emails", [])))
    mt.done()
    if query is None and not emails and optin is None:
        raise ConfigError(f"{where}.members", "give a roster query (roles, active, semester) and/or emails,"
                                              " or optin = true")

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
    if reply_to is not None and ("@" in reply_to or _braces(reply_to)):
        reply_to = _written_address(reply_to, f"{where}.reply_to")
    # none: the domain's owners, else [site]'s; serve() says so where there are none at all
    owners = tuple(_written_address(a, f"{where}.owners[{i}]") for i, a in enumerate(t.strings("owners", [])))
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
        subject_tag=_text(t, "subject_tag", display),
        title_case_subject=t.boolean("title_case_subject", True),
        owners=owners,
        exclude_poster=t.boolean("exclude_poster", True),
        domains=list_domains,
        dmarc=t.choice("dmarc", site.dmarc, DMARC_MODES),
        dmarc_always=_dmarc_always(t, f"{where}.dmarc_always", site.dmarc_always),
        # on by default where posting is a privilege (roles, an allowlist), when the site verifies inbound mail
        require_authenticated=t.boolean("require_authenticated", verify and not posters.members),
        optin=optin,
        non_member_posts=t.choice("non_member_posts", "refuse", MODERATION_MODES),
        non_poster_posts=t.choice("non_poster_posts", "refuse", MODERATION_MODES),
        hold_days=t.integer("hold_days", site.hold_days, minimum=1),
    )
    t.done()
    if lst.require_authenticated and not verify:
        raise ConfigError(f"{where}.require_authenticated", "needs a [verify] table (the milters that check inbound"
                                                            " mail): without it every post would be refused")
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
