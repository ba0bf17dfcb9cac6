"""How a count reads in a message: ``1 member``, ``2 members``, never ``1 members``.

Both sides print counts (the mail side in its log lines, the CLI in its
summaries), so the rule lives here, standard library only.
"""

from __future__ import annotations


def plural(n: int, noun: str, nouns: str | None = None) -> str:
    """``n`` and the noun, singular for exactly 1 (``plural(1, "list")`` is ``1 list``).

    The plural is ``nouns`` when given, else the regular English one:
    ``address`` → ``addresses``, ``body`` → ``bodies``, ``row`` → ``rows``.
    """
    if n == 1:
        return f"{n} {noun}"
    if nouns is None:
        if noun.endswith(("s", "x", "z", "ch", "sh")):
            nouns = noun + "es"
        elif noun.endswith("y") and noun[-2:-1] not in ("a", "e", "i", "o", "u"):
            nouns = noun[:-1] + "ies"
        else:
            nouns = noun + "s"
    return f"{n} {nouns}"
