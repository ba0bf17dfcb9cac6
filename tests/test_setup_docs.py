"""README's short set-up and docs/postfix.md are one procedure, so they cannot drift apart.

README.md's "Set up on a real Postfix host" is a sequence of ``sh`` blocks. Each one must be, whitespace aside, one
of docs/postfix.md's ``sh`` blocks, and in the same order. Every ``sh`` block of docs/postfix.md that the short
version leaves out is named in OPTIONAL with the reason, so a step added to docs/postfix.md either joins the short
version or says why a newcomer may skip it. The config the blocks write is parsed as listfilter would parse it, and
the addresses the test post uses are a list and one of its posters in that config, and docs/postfix.md's copy of
what `listfilter postfix-config` prints for it is what it prints.
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest
from click.testing import CliRunner

from listfilter.cli import cli
from listfilter.sync import config as C

from .conftest import REPO

README = REPO / "README.md"
POSTFIX_MD = REPO / "docs" / "postfix.md"
SRC = "/usr/local/src/listfilter"  # where both documents run the commands from

# docs/postfix.md blocks the short version leaves out: a text each block contains, and why it is optional.
OPTIONAL = {
    "listfilter postfix-config --listfilter /opt/listfilter/bin/listfilter\n":
        "only shows what the next block applies",
    "cat > /tmp/test.eml": "a dry run of the pipe; sends nothing",
    "listfilter-sync.timer": "the systemd timer, the alternative to the crontab the short version installs",
    "grep 'relay=outbound-relays.example.edu'": "looks up a relay delivery in the log",
    "postconf relay_domains relay_recipient_maps": "only for a host that already serves Mailman lists",
    "grep 'message-id=<": "traces one post through the log",
}


def sh_blocks(text: str) -> list[str]:
    """The ``sh`` fenced blocks of a Markdown text, each dedented by its fence's indentation (list items)."""
    blocks = []
    for m in re.finditer(r"^( *)```(\w*)\n(.*?)^\1```$", text, re.M | re.S):
        indent, lang, body = m.groups()
        if lang == "sh":
            blocks.append("".join(line[len(indent):] if line.startswith(indent) else line.lstrip(" ")
                                  for line in body.splitlines(True)))
    return blocks


def normal(block: str) -> str:
    """Whitespace aside: each line stripped, runs of blanks made one space, empty lines dropped."""
    return "\n".join(" ".join(line.split()) for line in block.splitlines() if line.strip()) + "\n"


def short_version() -> list[str]:
    text = README.read_text()
    m = re.search(r"^## Set up on a real Postfix host\n(.*?)(?=^## |\Z)", text, re.M | re.S)
    assert m, "README.md has no section 'Set up on a real Postfix host'"
    return [normal(b) for b in sh_blocks(m.group(1))]


SHORT = short_version()
FULL = [normal(b) for b in sh_blocks(POSTFIX_MD.read_text())]


def first_line(block: str) -> str:
    return block.splitlines()[0]


def test_the_short_version_is_a_sequence_of_commands():
    # the whole procedure, from the packages to a post in the log
    assert len(SHORT) >= 15, len(SHORT)
    assert first_line(SHORT[0]) == "apt-get update"
    assert first_line(SHORT[-1]).startswith("grep listfilter /var/log/mail.log")


def test_every_short_block_is_in_postfix_md_in_the_same_order():
    at = -1
    for block in SHORT:
        later = [i for i, full in enumerate(FULL) if full == block and i > at]
        if not later:
            where = [i for i, full in enumerate(FULL) if full == block]
            if where:
                pytest.fail(f"README.md's block `{first_line(block)}` comes after block {where[0] + 1} of"
                            f" docs/postfix.md there, but before it in README.md")
            near = [full for full in FULL if first_line(full) == first_line(block)]
            pytest.fail(f"README.md's block is not in docs/postfix.md:\n{block}"
                        + (f"\ndocs/postfix.md has instead:\n{near[0]}" if near else ""))
        at = later[0]


def test_every_postfix_md_block_is_in_the_short_version_or_optional():
    missing = [full for full in FULL if full not in SHORT and not any(key in full for key in OPTIONAL)]
    assert not missing, "docs/postfix.md blocks neither in README.md's short version nor in OPTIONAL:\n" + \
        "\n".join(missing)


@pytest.mark.parametrize("key", sorted(OPTIONAL))
def test_each_optional_block_exists_once_and_is_not_in_the_short_version(key):
    assert sum(key in full for full in FULL) == 1, f"OPTIONAL {key!r}: not exactly one docs/postfix.md block"
    assert not any(key in short for short in SHORT), f"OPTIONAL {key!r} is in README.md's short version"


def written_config() -> tuple[str, str]:
    """(path, text) of the file the short version writes with ``cat > … <<'EOF'``."""
    for block in SHORT:
        m = re.match(r"cat > (\S+) <<'EOF'\n(.*)EOF\n\Z", block, re.S)
        if m:
            return m.group(1), m.group(2)
    pytest.fail("README.md's short version writes no config")


def test_the_config_written_is_valid():
    path, text = written_config()
    assert path == "/etc/listfilter/lists.toml"
    config = C.parse(tomllib.loads(text), Path(path))
    assert config.roster.source == "postgresql"  # so the DSN in /etc/listfilter/env is what it reads
    assert config.site.state_dir == Path("/var/lib/listfilter")  # the directory step 4 creates


def test_the_test_post_goes_to_a_list_from_a_poster():
    _, text = written_config()
    config = C.parse(tomllib.loads(text), Path("/etc/listfilter/lists.toml"))
    posts = [m.groups() for b in SHORT for m in re.finditer(r"swaks --to (\S+)@(\S+) --from (\S+)", b)]
    assert posts
    for local, domain, sender in posts:
        assert domain in config.domains, domain
        lst = config.lists[local]
        assert sender in lst.posters.emails, (local, sender)


def test_files_from_the_checkout_exist():
    for block in SHORT + FULL:
        for rel in re.findall(rf"{SRC}/(\S+)", block):
            assert (REPO / rel).exists(), rel
        if f"cd {SRC}\n" in block:
            for rel in re.findall(r"^cp ((?:cron|postfix)/\S+(?: (?:cron|postfix)/\S+)*)", block, re.M):
                for f in rel.split():
                    assert (REPO / f).exists(), f


def test_postfix_md_shows_what_postfix_config_prints(tmp_path):
    _, text = written_config()
    (tmp_path / "lists.toml").write_text(text)
    result = CliRunner().invoke(cli, ["--config", str(tmp_path / "lists.toml"), "postfix-config",
                                      "--listfilter", "/opt/listfilter/bin/listfilter"])
    assert result.exit_code == 0, result.output
    printed = [line for line in result.output.splitlines() if line and not line.startswith("#")]
    m = re.search(r"Without the comments:\n\n```\n(.*?)```", POSTFIX_MD.read_text(), re.S)
    assert m, "docs/postfix.md: no 'Without the comments:' block"
    assert [line for line in m.group(1).splitlines() if line] == printed
