"""Where things are by default: shared by both sides (standard library only)."""

from __future__ import annotations

import os
from pathlib import Path

DEFAULT_CONFIG = "/etc/listfilter/lists.toml"
CONFIG_ENV = "LISTFILTER_CONFIG"
DEFAULT_STATE_DIR = "/var/lib/listfilter"
SNAPSHOT_NAME = "snapshot.sqlite"
DEFAULT_SNAPSHOT = f"{DEFAULT_STATE_DIR}/{SNAPSHOT_NAME}"
#: The unprivileged user the mail side runs as (master.cf's user=), and sync drops to.
SERVICE_USER = "listfilter"


def config_path(explicit: str | os.PathLike | None = None) -> Path:
    """--config, else $LISTFILTER_CONFIG, else /etc/listfilter/lists.toml."""
    return Path(explicit or os.environ.get(CONFIG_ENV) or DEFAULT_CONFIG)


def service_uid() -> int | None:
    """The uid of :data:`SERVICE_USER`, whose submissions through sendmail are the lists' copies; None if no such user."""
    import pwd

    try:
        return pwd.getpwnam(SERVICE_USER).pw_uid
    except KeyError:
        return None
