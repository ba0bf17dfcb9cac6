"""The main.cf settings and master.cf entries that wire listfilter into Postfix.

``listfilter postfix-config`` prints them for a config; postfix/main.cf and
postfix/master.cf in the repository are the same templates rendered for the
default paths (a test keeps them in step). For a relay that wants a login it
also writes the one file main.cf cannot carry, the login table with the
password (:func:`install_login_table`). When list domains are signed
(``[dkim]``), it prints OpenDKIM's KeyTable, SigningTable and opendkim.conf
settings too (:func:`opendkim`); a site without DKIM gets none of it. When
inbound mail is verified (``[verify]``), the header_checks table and the
settings of the verifying OpenDKIM and of OpenDMARC follow (:func:`verify_files`).
"""

from __future__ import annotations

import os
from pathlib import Path

from ..common.atomic import fsync_dir
from .config import Config, Relay
from .maps import _INDEX_SUFFIX, MAP_NAMES, MapError, bounce_transport, map_reference, policy_service, run_postfix
from .templating import render


def relayhost(relay: Relay | None) -> str | None:
    """The relay as Postfix's relayhost wants it: ``[host]:port`` (the brackets: no MX lookup)."""
    if relay is None:
        return None
    return f"[{relay.host}]" + (f":{relay.port}" if relay.port is not None else "")


def sasl_passwd(relay: Relay, password: str) -> str:
    """The text of the relay's login table, one line: ``[host]:port username:password``.

    smtp(8) looks the login up under the relayhost exactly as main.cf writes it,
    brackets and port included (SASL_README, "Enabling SASL authentication in
    the Postfix SMTP client").
    """
    return f"{relayhost(relay)} {relay.username}:{password}\n"


def login_table(config: Config) -> str | None:
    """How main.cf names the relay's login table (``hash:/etc/postfix/listfilter_sasl_passwd``); None: no login."""
    relay = config.site.relay
    if relay is None or relay.username is None:
        return None
    return f"{config.postfix.map_type}:{relay.password_map}"


def login_table_problem(config: Config, password: str) -> str | None:
    """What is wrong with the installed login table for this password, or None when it is ready."""
    relay = config.site.relay
    path = relay.password_map
    try:
        mode = path.stat().st_mode
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return f"{path} does not exist (run listfilter postfix-config as root)"
    except (OSError, UnicodeDecodeError) as exc:
        return f"{path}: {getattr(exc, 'strerror', None) or exc} (run check as root)"
    if mode & 0o077:
        return f"{path} is mode {mode & 0o7777:04o}: others than root may read the relay password; `chmod 600 {path}`"
    if text != sasl_passwd(relay, password):
        return f"{path} does not hold the login from {relay.password_source()} (run listfilter postfix-config)"
    suffix = _INDEX_SUFFIX[config.postfix.map_type]
    if suffix:
        index = Path(f"{path}{suffix}")
        try:
            if index.stat().st_mtime < path.stat().st_mtime:
                return f"{index} is older than {path} (run listfilter postfix-config)"
        except FileNotFoundError:
            return f"{index} does not exist (run listfilter postfix-config)"
    return None


def install_login_table(config: Config) -> bool:
    """Write the relay's login table and its index (root's, mode 0600) when they differ; True if written.

    The password comes from the environment or the password file
    (:meth:`Relay.resolved_password`); the table is written under a temporary
    name, created 0600 before the password goes in, indexed with postmap, and
    renamed into place like the other maps (:func:`listfilter.sync.maps.install`).
    smtp(8) opens it as root before it drops privileges, so nobody else needs to read it.
    """
    if login_table(config) is None:
        return False
    relay = config.site.relay
    password = relay.resolved_password()
    if login_table_problem(config, password) is None:
        return False
    path = relay.password_map
    suffix = _INDEX_SUFFIX[config.postfix.map_type]
    tmp = path.parent / f".{path.name}.{os.getpid()}.tmp"
    index_tmp = Path(f"{tmp}{suffix}") if suffix else None
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(sasl_passwd(relay, password))
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o600)
        if index_tmp is not None:
            run_postfix(config, "postmap", f"{config.postfix.map_type}:{tmp}")
            os.chmod(index_tmp, 0o600)
            os.replace(index_tmp, f"{path}{suffix}")
        os.replace(tmp, path)
        fsync_dir(path.parent)
    except OSError as exc:
        raise MapError(f"cannot write {path}: {exc.strerror} (run listfilter postfix-config as root)") from None
    finally:
        tmp.unlink(missing_ok=True)
        if index_tmp is not None:
            index_tmp.unlink(missing_ok=True)
    return True


def mail_bindir(program: str) -> str:
    """Where the mail commands are: beside ``program``, or beside what it links to.

    A ``listfilter`` symlinked alone into /usr/local/bin has no
    ``listfilter-deliver`` beside it, and pipe(8) bounces the mail of a
    command that cannot be run (exit 127 is not a sysexits code).
    """
    here = Path(program).parent
    if not (here / "listfilter-deliver").exists():
        real = Path(program).resolve().parent
        if (real / "listfilter-deliver").exists():
            return str(real)
    return str(here)


def context(config: Config, program: str) -> dict:
    """``program`` is the ``listfilter`` command; the mail commands are its siblings."""
    return {
        "config": config,
        "config_path": str(config.path),
        "program": program,
        "bindir": mail_bindir(program),
        "snapshot": str(config.site.snapshot_path),
        "spool": str(config.site.spool_dir),  # deliver's, for a deferral while the snapshot cannot be read
        "maxproc": config.postfix.maxproc,
        "log_group": config.postfix.log_group,
        "transport": config.site.transport,
        "bounce_transport": bounce_transport(config),
        "policy_service": policy_service(config),
        "relayhost": relayhost(config.site.relay),
        "relay": config.site.relay,
        "login_table": login_table(config),
        "maps": {name: map_reference(config, name) for name in MAP_NAMES},
        "dkim": dkim_context(config),
        "verify": verify_context(config),
    }


def main_cf(config: Config, program: str) -> str:
    return render("postfix/main.cf.j2", **context(config, program))


def master_cf(config: Config, program: str) -> str:
    return render("postfix/master.cf.j2", **context(config, program))


# ---------------------------------------------------------------- DKIM

#: Postfix's queue directory on Debian, where chrooted daemons (Debian's master.cf
#: chroots cleanup) see "/": a milter socket must be inside it for them to reach it.
POSTFIX_QUEUE_DIRECTORY = "/var/spool/postfix"


def milter_address(socket: str) -> str:
    """``[dkim] socket`` as main.cf names the milter.

    A unix socket under the queue directory is written relative to it
    (``unix:opendkim/opendkim.sock``): Postfix's daemons run in the queue
    directory, chrooted or not, so the one name works both ways (postconf(5), "milter").
    """
    kind, _, rest = socket.partition(":")
    prefix = POSTFIX_QUEUE_DIRECTORY + "/"
    if kind == "unix" and rest.startswith(prefix):
        return f"unix:{rest[len(prefix):]}"
    return socket


def opendkim_socket(socket: str) -> str:
    """``[dkim] socket`` as opendkim.conf's Socket writes it: ``inet:PORT@HOST``, ``inet6:PORT@[V6]``, ``local:PATH``."""
    kind, _, rest = socket.partition(":")
    if kind == "unix":
        return f"local:{rest}"
    host, _, port = rest.rpartition(":")
    return f"inet6:{port}@{host}" if host.startswith("[") else f"inet:{port}@{host}"


def dkim_context(config: Config) -> dict | None:
    """What the DKIM templates need; None when no list domain is signed (nothing is rendered)."""
    dkim = config.dkim
    if dkim is None:
        return None
    kind, _, path = dkim.socket.partition(":")
    return {
        "milter": milter_address(dkim.socket),
        "default_action": dkim.default_action,
        "socket": opendkim_socket(dkim.socket),
        "socket_path": path if kind == "unix" else None,
        # a unix socket Postfix reaches only if cleanup(8) is not chrooted
        "outside_chroot": kind == "unix" and milter_address(dkim.socket) == dkim.socket,
        "key_table": str(dkim.key_table),
        "signing_table": str(dkim.signing_table),
        "signed": [(name, d.dkim) for name, d in sorted(config.domains.items()) if d.dkim],
        "unsigned": sorted(name for name, d in config.domains.items() if not d.dkim),
    }


def key_table(config: Config) -> str:
    """OpenDKIM's KeyTable: per signed list domain, its d=, selector and private key file."""
    return render("opendkim/key.table.j2", config_path=str(config.path), dkim=dkim_context(config))


def signing_table(config: Config) -> str:
    """OpenDKIM's SigningTable: which key signs mail whose sender (List-Post, else From) is on a list domain."""
    return render("opendkim/signing.table.j2", config_path=str(config.path), dkim=dkim_context(config))


def opendkim_conf(config: Config) -> str:
    """The opendkim.conf settings that make OpenDKIM sign listfilter's copies with those tables."""
    return render("opendkim/opendkim.conf.j2", config_path=str(config.path), dkim=dkim_context(config))


def opendkim(config: Config) -> str:
    """The three OpenDKIM files as ``postfix-config`` prints them after master.cf; "" when nothing is signed."""
    if config.dkim is None:
        return ""
    return "\n".join((key_table(config), signing_table(config), opendkim_conf(config)))


# ---------------------------------------------------------------- inbound verification

#: Where the verifying OpenDKIM's settings go: a file of its own, beside the signer's /etc/opendkim.conf.
OPENDKIM_VERIFY_CONF = "/etc/opendkim-verify.conf"


def header_check(authserv_id: str) -> str:
    """The header_checks pattern for Authentication-Results fields that name ``authserv_id``.

    A regexp: table (POSIX, case-insensitive, and ``.`` crosses the folded
    lines of one field: regexp_table(5)). It matches the id wherever it stands
    as a whole name, which is more than the authserv-id position: a field of
    someone else's that mentions us goes too, and no spelling of ours
    (comments before it, no space after the colon) stays.
    """
    name = authserv_id.replace(".", "\\.")
    return f"/^Authentication-Results:(.*[^-._a-z0-9])?{name}([^-._a-z0-9]|$)/"


def verify_context(config: Config) -> dict | None:
    """What the verification templates need; None without ``[verify]`` (nothing is rendered)."""
    verify = config.verify
    if verify is None:
        return None
    authserv_id = config.authserv_id

    def unix_path(socket: str) -> str | None:
        kind, _, path = socket.partition(":")
        return path if kind == "unix" else None

    return {
        "authserv_id": authserv_id,
        "opendkim": milter_address(verify.opendkim),
        "opendmarc": milter_address(verify.opendmarc),
        "opendkim_socket": opendkim_socket(verify.opendkim),  # libmilter's form, OpenDMARC's too
        "opendmarc_socket": opendkim_socket(verify.opendmarc),
        "opendkim_socket_path": unix_path(verify.opendkim),
        "opendmarc_socket_path": unix_path(verify.opendmarc),
        "default_action": verify.default_action,
        "header_checks": str(verify.header_checks),
        "header_check": header_check(authserv_id),
        "opendkim_conf": OPENDKIM_VERIFY_CONF,
    }


def header_checks(config: Config) -> str:
    """The header_checks table that strips Authentication-Results forged with this host's authserv-id."""
    return render("verify/header_checks.j2", config_path=str(config.path), verify=verify_context(config))


def opendkim_verify_conf(config: Config) -> str:
    """The verifying OpenDKIM's settings (its own file: the signer's opendkim.conf stays as it is)."""
    return render("verify/opendkim-verify.conf.j2", config_path=str(config.path), verify=verify_context(config),
                  dkim=config.dkim)


def opendmarc_conf(config: Config) -> str:
    """The opendmarc.conf settings: this host's authserv-id, SPF checked here, verdicts only."""
    return render("verify/opendmarc.conf.j2", config_path=str(config.path), verify=verify_context(config))


def verify_files(config: Config) -> str:
    """The three as ``postfix-config`` prints them after master.cf; "" without ``[verify]``."""
    if config.verify is None:
        return ""
    return "\n".join((header_checks(config), opendkim_verify_conf(config), opendmarc_conf(config)))
