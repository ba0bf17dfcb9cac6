"""The list subject: ``[Tag] YYYY-MM-DD: Title Case Subject``. Pure, standard library only.

The text is put in Title Case unless the list sets ``title_case_subject =
false`` (docs/config.md, "The Subject", describes the rules of
:func:`title_case` as they are here: keep the two in step).
"""

from __future__ import annotations

import datetime
import re

#: Words that stay lower-case in a title (except first, or first after a colon).
SMALL_WORDS = frozenset(
    "a an and as at but by en for if in nor of off on or per so the to up v via vs yet".split()
)

_KEEP_AS_IS = re.compile(r"[@/\\_=]|://|\w\.\w", re.UNICODE)


def _cap_part(part: str, first: bool) -> str:
    """Capitalise one hyphen-free piece of a word (which has no upper-case)."""
    i = 0
    while i < len(part) and not part[i].isalnum():
        i += 1
    j = len(part)
    while j > i and not part[j - 1].isalnum():
        j -= 1
    core = part[i:j]
    if not core or not core[0].isalpha():
        return part
    if not first and core.lower() in SMALL_WORDS:
        return part
    return part[:i] + core[0].title() + core[1:] + part[j:]


def _title_word(word: str, first: bool) -> str:
    if _KEEP_AS_IS.search(word):
        return word  # addresses, URLs, paths, file.names, e.g.
    if any(c.isupper() for c in word):
        # Already capitalised/all-caps/mixed: keep, except a plain
        # "Capitalised" small word in mid-title ("Notes On The Exam").
        core = word.strip("\"'()[]{}<>,;:.!?«»“”‘’")
        if (not first and len(core) > 1 and core.lower() in SMALL_WORDS
                and core[0].isupper() and core[1:].islower()):
            return word.replace(core, core.lower(), 1)
        return word
    parts = word.split("-")
    return "-".join(_cap_part(p, first and n == 0) for n, p in enumerate(parts))


def title_case(s: str) -> str:
    """Title Case: small words lower-case (but the first word, and the first
    after a colon), all-caps and mixed-case words (CS, iPhone, HW3) unchanged,
    hyphenated words per part, URLs/addresses/file names untouched.

    Whitespace is collapsed to single spaces.
    """
    out = []
    first = True
    for word in s.split():
        out.append(_title_word(word, first))
        if any(c.isalnum() for c in word):
            first = False
        if word.endswith(":"):
            first = True
    return " ".join(out)


_REPLY_PREFIXES = ("re", "aw", "sv", "antw", "odp")
_FORWARD_PREFIXES = ("fwd", "fw", "wg")
_PREFIX = re.compile(
    r"\s*(?P<p>" + "|".join(_REPLY_PREFIXES + _FORWARD_PREFIXES) + r")"
    r"\s*(?:\[\d+\]|\(\d+\)|\^\d+)?\s*:\s*",
    re.IGNORECASE,
)
_DATE_AFTER_TAG = r"(?:\s*\d{4}-\d{2}-\d{2}\s*:?)?\s*"


def _tag_pattern(tag: str) -> re.Pattern[str]:
    words = tag.split()
    return re.compile(r"\s*\[\s*" + r"\s+".join(map(re.escape, words)) + r"\s*\]" + _DATE_AFTER_TAG,
                      re.IGNORECASE)


def new_subject(old: str | None, tag: str, day: datetime.date, *, title: bool = True) -> str:
    """``[Tag] YYYY-MM-DD: Title Case Subject`` (with ``title`` false, the
    subject's text as the poster wrote it, whitespace collapsed).

    A leading run of reply/forward prefixes (Re:, RE:, AW:, Fwd:, FW:, Re[2]:
    ...) mixed with this list's ``[Tag]`` (and the date that follows it)
    collapses to one prefix — ``Re:`` if any was a reply, else ``Fwd:`` — after
    the new tag and date.
    """
    text = " ".join((old or "").split())
    tag = " ".join(tag.split())
    tag_re = _tag_pattern(tag) if tag else None
    reply = forward = False
    while True:
        m = _PREFIX.match(text)
        if m:
            if m.group("p").lower() in _REPLY_PREFIXES:
                reply = True
            else:
                forward = True
            text = text[m.end():]
            continue
        m = tag_re.match(text) if tag_re else None
        if m and m.end() > 0:
            text = text[m.end():]
            continue
        break
    text = text.strip()
    head = f"[{tag}] {day.isoformat()}:" if tag else f"{day.isoformat()}:"
    if not text and not (reply or forward):
        return f"{head} (no subject)"
    prefix = "Re: " if reply else "Fwd: " if forward else ""
    if not text:
        text = "(no subject)"
    elif title:
        text = title_case(text)
    return f"{head} {prefix}{text}"
