"""The main.cf settings and master.cf entries that wire listfilter into Postfix.

``listfilter postfix-config`` prints them for a config; postfix/main.cf and
postfix/master.cf in the repository are the same templates rendered for the
default paths (a test keeps them in step).
"""

from __future__ import annotations

from .config import Config
from .maps import MAP_NAMES, bounce_transport, map_reference, policy_service
from .templating import render


def relayhost(relay: str | None) -> str | None:
    """``host:port`` as Postfix's relayhost wants it: ``[host]:port`` (no MX lookup)."""
    if not relay or relay.startswith("["):
        return relay
    host, sep, port = relay.rpartition(":")
    return f"[{host}]:{port}" if sep and port.isdigit() else f"[{relay}]"


def mail_bindir(program: str) -> str:
    """Where the mail commands are: beside ``program``, or beside what it links to.

    A ``listfilter`` symlinked alone into /usr/local/bin has no
    ``listfilter-deliver`` beside it, and pipe(8) bounces the mail of a
    command that cannot be run (exit 127 is not a sysexits code).
    """
    from pathlib import Path

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
        "maxproc": config.postfix.maxproc,
        "transport": config.site.transport,
        "bounce_transport": bounce_transport(config),
        "policy_service": policy_service(config),
        "relayhost": relayhost(config.site.relay),
        "maps": {name: map_reference(config, name) for name in MAP_NAMES},
    }


def main_cf(config: Config, program: str) -> str:
    return render("postfix/main.cf.j2", **context(config, program))


def master_cf(config: Config, program: str) -> str:
    return render("postfix/master.cf.j2", **context(config, program))
