"""Counts in messages read as English: one owner of the rule (listfilter.common.words)."""

import pytest

from listfilter.common.words import plural


@pytest.mark.parametrize("n, noun, expected", [
    (0, "member", "0 members"),
    (1, "member", "1 member"),
    (2, "member", "2 members"),
    (1, "suppressed address", "1 suppressed address"),
    (3, "suppressed address", "3 suppressed addresses"),
    (2, "body", "2 bodies"),
    (2, "day", "2 days"),
    (1, "malformed event file", "1 malformed event file"),
])
def test_plural(n, noun, expected):
    assert plural(n, noun) == expected


def test_an_irregular_plural_is_given():
    assert plural(2, "person", "people") == "2 people"
    assert plural(1, "person", "people") == "1 person"
