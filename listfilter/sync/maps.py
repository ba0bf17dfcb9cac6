"""The Postfix lookup tables: what they contain (pure) and installing them (I/O).

Four tables, each a text source in the map directory plus its indexed file:

- ``domains``: relay_domains, the list domains;
- ``recipients``: relay_recipient_maps, every address Postfix accepts there (an opt-in list's
  -join and -leave too);
- ``transport``: transport_maps, list addresses to the pipe transport;
- ``virtual``: virtual_alias_maps, each list's -owner to its owners (to ``redirect_all_to`` instead
  while the staging valve is on for the list's domain).

Installing follows Postfix's DATABASE_README: ``postmap`` builds the index
under a temporary name, then the index and the source are renamed into place,
so Postfix never reads a half-written table.
"""

from __future__ import annotations

import difflib
import os
import subprocess
from pathlib import Path

from ..common.addresses import bounces_address, owner_address, service_addresses
from ..common.atomic import fsync_dir, replacing
from ..common.errors import ListfilterError
from .config import Config

MAP_NAMES = ("domains", "recipients", "transport", "virtual")
_INDEX_SUFFIX = {"hash": ".db", "btree": ".db", "cdb": ".cdb", "lmdb": ".lmdb", "texthash": None}


class MapError(ListfilterError):
    """postmap or postfix failed; the message is one line for the operator."""

    label = "postfix"


def render(config: Config, lists) -> dict[str, str]:
    """The text of every map for these compiled lists (pure)."""
    from .templating import render as render_template

    context = _context(config, lists)
    return {name: render_template(f"postfix/{name}.j2", **context) for name in MAP_NAMES}


def _context(config: Config, lists) -> dict:
    return {
        "config_path": str(config.path),
        "transport": config.site.transport,
        "domains": sorted({l.domain for l in lists} | set(config.domains)),
        "lists": [
            {
                "local_part": l.local_part,
                "domain": l.domain,
                # the staging valve: -owner mail goes only to redirect_all_to (a virtual alias adds no header)
                "owners": (l.redirect_to,) if l.redirect_to else l.owners,
                "owner_address": owner_address(l.address),
                "addresses": service_addresses(l.local_part, l.domain, optin=l.optin),
                "routes": [(addr, bounce_transport(config) if addr == bounces_address(l.address)
                            else config.site.transport)
                           for addr in service_addresses(l.local_part, l.domain, optin=l.optin)],
            }
            for l in lists
        ],
    }


def bounce_transport(config: Config) -> str:
    """The master.cf service that runs `listfilter bounce`."""
    return f"{config.site.transport}-bounce"


def policy_service(config: Config) -> str:
    """The master.cf service that runs `listfilter policy` under spawn(8)."""
    return f"{config.site.transport}-policy"


def map_reference(config: Config, name: str) -> str:
    """How main.cf names a table, e.g. ``hash:/var/lib/listfilter/postfix/transport``."""
    return f"{config.postfix.map_type}:{config.site.map_dir / name}"


def installed(config: Config) -> dict[str, str | None]:
    out = {}
    for name in MAP_NAMES:
        try:
            out[name] = (config.site.map_dir / name).read_text(encoding="utf-8")
        except FileNotFoundError:
            out[name] = None
    return out


def changed(config: Config, maps: dict[str, str]) -> list[str]:
    """Names of the maps whose source or index differs from what is installed."""
    current = installed(config)
    suffix = _INDEX_SUFFIX[config.postfix.map_type]
    out = []
    for name, text in maps.items():
        index_missing = suffix is not None and not (config.site.map_dir / (name + suffix)).exists()
        if current[name] != text or index_missing:
            out.append(name)
    return out


def diff(config: Config, maps: dict[str, str]) -> str:
    """A unified diff of every map against what is installed."""
    current = installed(config)
    chunks = []
    for name, text in maps.items():
        old = current[name]
        path = str(config.site.map_dir / name)
        chunks.extend(difflib.unified_diff(
            (old or "").splitlines(keepends=True), text.splitlines(keepends=True),
            fromfile=path if old is not None else "/dev/null", tofile=path))
    return "".join(chunks)


def install(config: Config, maps: dict[str, str], names: list[str]) -> None:
    """Write and index the named maps atomically: the index first, then its source."""
    directory = config.site.map_dir
    directory.mkdir(parents=True, exist_ok=True)
    suffix = _INDEX_SUFFIX[config.postfix.map_type]
    for name in names:
        with replacing(directory / name) as tmp:
            tmp.write_text(maps[name], encoding="utf-8")
            if suffix:
                index_tmp = Path(f"{tmp}{suffix}")
                try:
                    run_postfix(config, "postmap", f"{config.postfix.map_type}:{tmp}")
                    os.chmod(index_tmp, 0o644)
                    os.replace(index_tmp, directory / (name + suffix))
                finally:
                    index_tmp.unlink(missing_ok=True)
    fsync_dir(directory)


def reload(config: Config) -> str | None:
    """``postfix reload``; returns a warning instead of failing if Postfix is not running.

    ``postfix status`` tells a stopped Postfix apart from a failed reload
    (``postfix reload`` says "not running" only when stderr is a terminal).
    """
    try:
        run_postfix(config, "postfix", "status")
    except MapError:
        return "Postfix is not running; it will read the new maps when it starts"
    run_postfix(config, "postfix", "reload")
    return None


def run_postfix(config: Config, program: str, *args: str) -> str:
    argv = [str(config.postfix.command_directory / program)]
    if config.postfix.config_directory:
        argv += ["-c", str(config.postfix.config_directory)]
    argv += list(args)
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=120)
    except FileNotFoundError:
        raise MapError(f"{argv[0]} not found (is Postfix installed? see postfix.command_directory)") from None
    except subprocess.TimeoutExpired:
        raise MapError(f"{' '.join(argv)} timed out") from None
    if proc.returncode != 0:
        lines = (proc.stderr or proc.stdout).strip().splitlines()
        raise MapError(f"{' '.join(argv)} failed: {lines[-1] if lines else 'exit ' + str(proc.returncode)}")
    return proc.stdout
