"""The documentation is tested against the code (as sqlite-utils does).

Every ``listfilter`` command and subcommand, and every program Postfix runs,
has ``--help`` that exits 0 and a section in docs/cli.md that names each of
its options. Relative links in README.md and docs/ point at files that exist.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from listfilter.cli import cli

from .conftest import REPO

CLI_DOC = (REPO / "docs" / "cli.md").read_text()
MAIL_PROGRAMS = {"listfilter-deliver": "listfilter.mail.deliver", "listfilter-bounce": "listfilter.mail.bounce",
                 "listfilter-policy": "listfilter.mail.policy"}


def commands(cmd: click.Command = cli, path: tuple[str, ...] = ()):
    yield path, cmd
    if isinstance(cmd, click.Group):
        for name, sub in sorted(cmd.commands.items()):
            yield from commands(sub, path + (name,))


COMMANDS = list(commands())


def documented(option: str, text: str) -> bool:
    """The option is named in backquotes, alone or with its value: `--since WHEN`."""
    return re.search(rf"`{re.escape(option)}(?: [^`]*)?`", text) is not None


def section(title: str) -> str:
    """The text under ``### `title` `` up to the next heading."""
    m = re.search(rf"^#+ `{re.escape(title)}`\n(.*?)(?=^#|\Z)", CLI_DOC, re.M | re.S)
    assert m, f"docs/cli.md has no section for `{title}`"
    return m.group(1)


@pytest.mark.parametrize("path, cmd", COMMANDS, ids=[" ".join(p) or "listfilter" for p, _ in COMMANDS])
def test_every_command_has_help_and_is_documented(path, cmd):
    result = CliRunner().invoke(cli, [*path, "--help"])
    assert result.exit_code == 0, result.output
    text = section(" ".join(("listfilter",) + path))
    for param in cmd.params:
        if isinstance(param, click.Option) and not param.hidden and param.name not in ("help", "version"):
            assert any(documented(opt, text) for opt in param.opts), \
                f"docs/cli.md: `listfilter {' '.join(path)}` {param.opts}"


@pytest.mark.parametrize("program", sorted(MAIL_PROGRAMS))
def test_every_mail_program_has_help_and_is_documented(program):
    mod = __import__(MAIL_PROGRAMS[program], fromlist=["OPTIONS"])
    proc = subprocess.run([sys.executable, "-m", MAIL_PROGRAMS[program], "--help"], capture_output=True, text=True,
                          timeout=30)
    assert proc.returncode == 0 and proc.stdout.startswith(f"usage: {program}"), proc.stderr
    text = section(program)
    for option in [*mod.OPTIONS, *getattr(mod, "FLAGS", ())]:
        assert documented(f"--{option}", text) and f"--{option}" in proc.stdout, option


def test_the_doc_documents_no_command_that_is_gone():
    known = {" ".join(("listfilter",) + p) for p, _ in COMMANDS} | set(MAIL_PROGRAMS)
    titles = re.findall(r"^#+ `([^`]+)`$", CLI_DOC, re.M)
    assert set(titles) <= known, set(titles) - known


@pytest.mark.parametrize("doc", sorted([REPO / "README.md", *(REPO / "docs").glob("*.md")]), ids=lambda p: p.name)
def test_relative_links_resolve(doc: Path):
    for target in re.findall(r"\]\(([^)#:\s]+)(?:#[^)]*)?\)", doc.read_text()):
        assert (doc.parent / target).exists(), f"{doc.name}: broken link {target}"


@pytest.mark.parametrize("example", sorted((REPO / "docs" / "example").glob("*.toml")), ids=lambda p: p.name)
def test_every_bundled_example_config_loads(example: Path):
    from listfilter.sync import config as C

    assert C.load(example).lists
