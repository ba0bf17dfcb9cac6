"""The tree shows the two paths: what each side may import, read from the source with ast.

- ``listfilter.common`` imports only the standard library (and itself);
- ``listfilter.mail`` (what Postfix runs per message) imports only the
  standard library, ``common`` and itself — and flufl.bounce in ``mail/bounce.py``;
- ``sync``, ``store``, ``admin`` and ``cli`` never import ``mail``.

Every import counts, the ones inside functions too. A subprocess check of
``-X importtime`` backs it up for the per-message commands as they really run.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

from .conftest import REPO

PACKAGE = REPO / "listfilter"
HEAVY = ("psycopg", "jinja2", "dns", "dkim", "spf", "publicsuffixlist", "flufl", "click", "flask", "werkzeug", "waitress")


def imports_of(path: Path, package: str) -> list[tuple[int, str]]:
    """(line, absolute module name) of every import in a module of ``package``."""
    out = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                name = ".".join(base + ([node.module] if node.module else []))
                if not node.module:  # from . import x, y: each is a module of that package
                    out += [(node.lineno, f"{name}.{alias.name}") for alias in node.names]
                    continue
            else:
                name = node.module
            out.append((node.lineno, name))
    return out


def package_of(path: Path, root: Path) -> str:
    rel = path.relative_to(root.parent).with_suffix("")
    parts = list(rel.parts)
    return ".".join(parts if parts[-1] == "__init__" else parts[:-1]).removesuffix(".__init__")


def violations(root: Path) -> list[str]:
    """Every import that breaks the layout rules, as ``file:line: message``."""
    stdlib = sys.stdlib_module_names
    found = []
    for path in sorted(root.rglob("*.py")):
        rel = path.relative_to(root)
        side = rel.parts[0] if len(rel.parts) > 1 else ""
        for line, name in imports_of(path, package_of(path, root)):
            top = name.split(".")[0]
            where = f"{root.name}/{rel}:{line}"
            if side in ("common", "mail"):
                allowed = {"listfilter.common"} | ({"listfilter.mail"} if side == "mail" else set())
                ours = top == "listfilter" and any(name == a or name.startswith(a + ".") for a in allowed)
                bounce = side == "mail" and rel.name == "bounce.py" and top == "flufl"
                if not (top in stdlib or top == "__future__" or ours or bounce):
                    found.append(f"{where}: {side}/ imports {name}")
            elif side in ("sync", "store", "admin", "cli"):
                if name == "listfilter.mail" or name.startswith("listfilter.mail."):
                    found.append(f"{where}: {side}/ imports the mail side ({name})")
    return found


def test_the_tree_keeps_its_sides():
    assert violations(PACKAGE) == []


@pytest.mark.parametrize("module, source, expected", [
    ("mail/deliver.py", "import click\n", "mail/ imports click"),
    ("mail/rules.py", "def f():\n    import psycopg\n", "mail/ imports psycopg"),
    ("mail/deliver.py", "from ..sync import config\n", "mail/ imports listfilter.sync"),
    ("mail/policy.py", "from flufl.bounce import all_failures\n", "mail/ imports flufl.bounce"),
    ("common/spool.py", "from ..mail import rules\n", "common/ imports listfilter.mail"),
    ("common/events.py", "import jinja2\n", "common/ imports jinja2"),
    ("cli/sync.py", "from ..mail import deliver\n", "cli/ imports the mail side"),
    ("store/ingest.py", "from listfilter.mail.rules import CHAIN\n", "store/ imports the mail side"),
    ("admin/app.py", "from .. import mail\n", "admin/ imports the mail side"),
])
def test_the_layout_check_catches(tmp_path, module, source, expected):
    """The check fails for each kind of wrong import (a copy of the package with one added)."""
    import shutil

    copy = tmp_path / "listfilter"
    shutil.copytree(PACKAGE, copy, ignore=shutil.ignore_patterns("__pycache__"))
    (copy / module).write_text((copy / module).read_text() + "\n" + source)
    found = violations(copy)
    assert len(found) == 1 and expected in found[0], found


def test_flufl_bounce_is_allowed_in_the_bounce_pipe_only():
    assert any(name.startswith("flufl") for _, name in imports_of(PACKAGE / "mail" / "bounce.py",
                                                                     "listfilter.mail"))


@pytest.mark.parametrize("module", ["listfilter.mail.deliver", "listfilter.mail.policy"])
def test_per_message_commands_load_nothing_heavy(module):
    """As they really run (``-X importtime``): nothing heavy on the per-message path."""
    proc = subprocess.run([sys.executable, "-X", "importtime", "-m", module, "--help"],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr[-2000:]
    loaded = {line.rsplit("|", 1)[-1].strip().split(".")[0] for line in proc.stderr.splitlines() if "|" in line}
    assert not loaded & set(HEAVY), loaded & set(HEAVY)
    assert "tomllib" not in loaded  # the snapshot's path is on the command line: no config is parsed
