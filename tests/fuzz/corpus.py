"""The real messages the fuzz cases start from: CPython's email test corpus, and our own seeds.

CPython's ``Lib/test/test_email`` is the email package's own regression
corpus: the message files in ``data/msg_*.txt`` and the messages written
inline in its test modules (RFC 2047 and RFC 2231 edge cases, broken MIME,
defects). Debian installs it with ``libpython3.11-testsuite`` under
``/usr/lib/python3.11/test/test_email`` (tests/run installs the package as
root); an interpreter built with its test suite (pyenv) has the same files.
Inline messages are the string literals of those modules that begin with two
header lines, dedented as the tests use them.

``tests/data/fuzz/*.eml`` are our own small pathological seeds, one or more
per class of hostile mail (see its README).
"""

from __future__ import annotations

import ast
import functools
import re
import sys
import sysconfig
import textwrap
from collections import namedtuple
from pathlib import Path

#: One starting message: where it came from (for the report) and its bytes.
Seed = namedtuple("Seed", "name raw")

SEEDS = Path(__file__).resolve().parent.parent / "data" / "fuzz"
DEBIAN = Path(f"/usr/lib/python3.{sys.version_info.minor}/test/test_email")
_HEADER_LINE = re.compile(rb"[!-9;-~]+:")
INSTALL_HINT = f"apt-get install libpython3.{sys.version_info.minor}-testsuite"


def cpython_test_dir() -> Path | None:
    """CPython's test_email directory: Debian's package first, then the running interpreter's own."""
    for d in (DEBIAN, Path(sysconfig.get_path("stdlib")) / "test" / "test_email"):
        if (d / "data" / "msg_01.txt").is_file():
            return d
    return None


def _looks_like_message(b: bytes) -> bool:
    lines = b.split(b"\n", 2)
    return len(lines) >= 2 and all(_HEADER_LINE.match(line) for line in lines[:2])


def _inline_messages(path: Path) -> list[tuple[int, bytes]]:
    """(line, bytes) of the string literals in a test module that are messages."""
    out = []
    for node in ast.walk(ast.parse(path.read_bytes(), str(path))):
        if isinstance(node, ast.Constant) and isinstance(node.value, (str, bytes)):
            value = node.value
            b = value.encode("utf-8", "surrogateescape") if isinstance(value, str) else value
            b = textwrap.dedent(b.decode("latin-1")).encode("latin-1").lstrip(b"\n")
            if _looks_like_message(b):
                out.append((node.lineno, b))
    return out


@functools.lru_cache(maxsize=None)
def cpython_messages() -> tuple[Seed, ...]:
    """Every message of CPython's email test corpus, in a fixed order, without duplicates.

    Raises FileNotFoundError (with the install hint) when the corpus is not installed.
    """
    base = cpython_test_dir()
    if base is None:
        raise FileNotFoundError(f"CPython's email test corpus is not installed ({INSTALL_HINT})")
    seen: set[bytes] = set()
    out = []
    for path in sorted((base / "data").glob("msg_*.txt")):
        raw = path.read_bytes()
        if raw not in seen:
            seen.add(raw)
            out.append(Seed(f"cpython data/{path.name}", raw))
    for path in sorted(base.glob("test_*.py")):
        for line, raw in _inline_messages(path):
            if raw not in seen:
                seen.add(raw)
                out.append(Seed(f"cpython {path.name}:{line}", raw))
    return tuple(out)


@functools.lru_cache(maxsize=None)
def own_seeds() -> tuple[Seed, ...]:
    """tests/data/fuzz/*.eml, in name order."""
    return tuple(Seed(f"seed {p.name}", p.read_bytes()) for p in sorted(SEEDS.glob("*.eml")))
