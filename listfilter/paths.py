"""Where things are by default: shared by the sync side and the light mail side."""

from __future__ import annotations

import os
from pathlib import Path

DEFAULT_CONFIG = "/etc/listfilter/lists.toml"
CONFIG_ENV = "LISTFILTER_CONFIG"
DEFAULT_STATE_DIR = "/var/lib/listfilter"
SNAPSHOT_NAME = "snapshot.sqlite"


def config_path(explicit: str | os.PathLike | None = None) -> Path:
    """--config, else $LISTFILTER_CONFIG, else /etc/listfilter/lists.toml."""
    return Path(explicit or os.environ.get(CONFIG_ENV) or DEFAULT_CONFIG)
