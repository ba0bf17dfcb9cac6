"""listfilter wired into a private Postfix instance, the way docs/postfix.md does it on a host.

The integration tests that send mail through Postfix share these steps: the
programs in a bin directory the ``listfilter`` user can run, main.cf and
master.cf exactly as ``listfilter postfix-config`` renders them (but the
relayhost, which is the test's sink), and a spool the pipes can write.
"""

from __future__ import annotations

import os
import pwd
import sys
from contextlib import contextmanager
from pathlib import Path

from listfilter.sync import config as C
from listfilter.sync import postfixconf

from .postfix import PostfixInstance

PROGRAMS = ("listfilter", "listfilter-deliver", "listfilter-bounce", "listfilter-policy")


def install_programs(bindir: Path) -> Path:
    """Links to this virtualenv's listfilter programs in ``bindir``; the path of ``listfilter``."""
    bindir.mkdir(parents=True, exist_ok=True)
    for name in PROGRAMS:
        (bindir / name).symlink_to(Path(sys.executable).parent / name)
    return bindir / "listfilter"


def wire(pf: PostfixInstance, config_path: Path, program: Path) -> C.Config:
    """Give ``pf`` the main.cf settings and master.cf services that postfix-config renders for the config."""
    config = C.load(config_path)
    settings = {}
    for line in postfixconf.main_cf(config, str(program)).splitlines():
        if " = " in line and not line.startswith("#"):
            key, value = line.split(" = ", 1)
            settings[key] = value
    settings.pop("relayhost", None)  # the sink is the relay
    settings["smtp_tls_security_level"] = "none"
    pf.main_cf_settings.update(settings)
    pf.master_cf_extra = postfixconf.master_cf(config, str(program))
    pf._write_config()
    return config


def listfilter_spool(config: C.Config) -> Path:
    """The config's spool, made and given to the listfilter user (the pipes run as that user)."""
    spool = config.site.spool_dir
    spool.mkdir(parents=True, exist_ok=True)
    os.chown(spool, pwd.getpwnam("listfilter").pw_uid, -1)
    return spool


#: The store backends an integration test can run its flow on.
STORE_BACKENDS = ("sqlite", "postgresql")


@contextmanager
def store_table(backend: str, base: Path):
    """The config's ``[store]`` table for ``backend``: a SQLite file under ``base``, or a PostgreSQL
    database of its own (created, and dropped on exit)."""
    if backend == "sqlite":
        yield f'[store]\nbackend = "sqlite"\npath = "{base / "state" / "maillog.sqlite"}"\n'
        return
    from ..conftest import roster_database

    with roster_database(rows=[]) as dsn:
        yield f'[store]\nbackend = "postgresql"\ndsn = "{dsn}"\n'
