"""listfilter.mail.subject: Title Case and the list subject ``[Tag] YYYY-MM-DD: Title``."""

from __future__ import annotations

import datetime

import pytest

from listfilter.mail.subject import new_subject, title_case

DAY = datetime.date(2026, 1, 22)
TAG = "CS 199 Students"


# --------------------------------------------------------------------------
# title_case

TITLES = [
    ("hello there", "Hello There"),
    ("the end of the world", "The End of the World"),
    ("notes on the exam: the answers", "Notes on the Exam: The Answers"),
    ("Notes On The Exam", "Notes on the Exam"),
    ("a tale of two cities", "A Tale of Two Cities"),
    ("CS 199 HW3 is due", "CS 199 HW3 Is Due"),
    ("my new iPhone and the URL", "My New iPhone and the URL"),
    ("URGENT: read this", "URGENT: Read This"),
    ("state-of-the-art e-mail", "State-of-the-Art E-Mail"),
    ("über die prüfung", "Über Die Prüfung"),
    ("élan vital à paris", "Élan Vital À Paris"),
    ("ölçme ve değerlendirme", "Ölçme Ve Değerlendirme"),
    ("試験の日程について", "試験の日程について"),
    ("exam 試験 schedule", "Exam 試験 Schedule"),
    ("office hours: 3rd floor", "Office Hours: 3rd Floor"),
    ('"quoted words" (and parens)', '"Quoted Words" (and Parens)'),
    ("see https://example.edu/syllabus for details",
     "See https://example.edu/syllabus for Details"),
    ("mail prof@example.edu about hw_3 and notes.pdf",
     "Mail prof@example.edu About hw_3 and notes.pdf"),
    ("python vs java", "Python vs Java"),
    ("  lots   of\twhite\n space  ", "Lots of White Space"),
    ("meet up at 5 via zoom", "Meet up at 5 via Zoom"),
    ("to be or not to be", "To Be or Not to Be"),
    ("", ""),
]


@pytest.mark.parametrize("text,expected", TITLES)
def test_title_case(text, expected):
    assert title_case(text) == expected


# --------------------------------------------------------------------------
# new_subject

SUBJECTS = [
    ("Hello There", "[CS 199 Students] 2026-01-22: Hello There"),
    ("hello there", "[CS 199 Students] 2026-01-22: Hello There"),
    ("Re: [CS 199 Students] 2026-01-21: Hello There",
     "[CS 199 Students] 2026-01-22: Re: Hello There"),
    ("RE: Re: [CS 199 Students] 2026-01-21: hello there",
     "[CS 199 Students] 2026-01-22: Re: Hello There"),
    ("[CS 199 Students] 2026-01-21: Re: Hello There",
     "[CS 199 Students] 2026-01-22: Re: Hello There"),
    ("Re: [CS 199 Students] 2026-01-21: Re: Hello There",
     "[CS 199 Students] 2026-01-22: Re: Hello There"),
    ("Fwd: Re: homework", "[CS 199 Students] 2026-01-22: Re: Homework"),
    ("Fwd: FW: Fw: homework", "[CS 199 Students] 2026-01-22: Fwd: Homework"),
    ("fwd:re:homework", "[CS 199 Students] 2026-01-22: Re: Homework"),
    ("Re[2]: homework", "[CS 199 Students] 2026-01-22: Re: Homework"),
    ("Re [3] : homework", "[CS 199 Students] 2026-01-22: Re: Homework"),
    ("AW: Re: Frage zur Übung", "[CS 199 Students] 2026-01-22: Re: Frage Zur Übung"),
    ("WG: Unterlagen", "[CS 199 Students] 2026-01-22: Fwd: Unterlagen"),
    ("Fwd: [CS 199 Students] 2026-01-20: Exam room",
     "[CS 199 Students] 2026-01-22: Fwd: Exam Room"),
    ("Re: [cs 199 students] 2026-01-21: case of the tag",
     "[CS 199 Students] 2026-01-22: Re: Case of the Tag"),
    ("Re: [CS 199 Students] no date here",
     "[CS 199 Students] 2026-01-22: Re: No Date Here"),
    ("Re: [CS 199\n  Students] 2026-01-21:\n hello",
     "[CS 199 Students] 2026-01-22: Re: Hello"),
    ("[CS 225 Students] 2026-01-21: other list",
     "[CS 199 Students] 2026-01-22: [CS 225 Students] 2026-01-21: Other List"),
    ("Question about [CS 199 Students]",
     "[CS 199 Students] 2026-01-22: Question About [CS 199 Students]"),
    ("Regarding the exam", "[CS 199 Students] 2026-01-22: Regarding the Exam"),
    ("Return of the quiz", "[CS 199 Students] 2026-01-22: Return of the Quiz"),
    ("Fwdx: thing", "[CS 199 Students] 2026-01-22: Fwdx: Thing"),
    ("", "[CS 199 Students] 2026-01-22: (no subject)"),
    ("   ", "[CS 199 Students] 2026-01-22: (no subject)"),
    (None, "[CS 199 Students] 2026-01-22: (no subject)"),
    ("Re:", "[CS 199 Students] 2026-01-22: Re: (no subject)"),
    ("Re: [CS 199 Students] 2026-01-21:", "[CS 199 Students] 2026-01-22: Re: (no subject)"),
    ("Re:   lots\t of\r\n  space", "[CS 199 Students] 2026-01-22: Re: Lots of Space"),
    ("試験の日程について", "[CS 199 Students] 2026-01-22: 試験の日程について"),
    ("Re: 試験の日程について", "[CS 199 Students] 2026-01-22: Re: 試験の日程について"),
]


@pytest.mark.parametrize("old,expected", SUBJECTS)
def test_new_subject(old, expected):
    assert new_subject(old, TAG, DAY) == expected


def test_new_subject_is_idempotent_on_its_own_output():
    once = new_subject("Re: hello there", TAG, DAY)
    assert new_subject(once, TAG, DAY) == once


def test_new_subject_uses_given_day_and_tag():
    assert new_subject("x", "Staff", datetime.date(2025, 12, 31)) == "[Staff] 2025-12-31: X"


def test_new_subject_without_a_tag():
    assert new_subject("re: hello", "", DAY) == "2026-01-22: Re: Hello"
    assert new_subject(None, "  ", DAY) == "2026-01-22: (no subject)"


def test_a_tag_with_regex_characters_is_matched_literally():
    tag = "C++ (Lab) [2]"
    once = new_subject("Re: question", tag, DAY)
    assert once == "[C++ (Lab) [2]] 2026-01-22: Re: Question"
    assert new_subject("Re: " + once, tag, DAY) == once
    assert new_subject("[C Lab 2] x", tag, DAY) == "[C++ (Lab) [2]] 2026-01-22: [C Lab 2] X"


# --------------------------------------------------------------------------
# title_case_subject = false: the text as written; tag, date, prefixes and spacing as ever

UNTITLED = [
    ("relay down test", "[CS 199 Students] 2026-01-22: relay down test"),
    ("Re: [CS 199 Students] 2026-01-21: relay down test", "[CS 199 Students] 2026-01-22: Re: relay down test"),
    ("FW: re:  the   iPhone\tnotes", "[CS 199 Students] 2026-01-22: Re: the iPhone notes"),
    ("Notes On The Exam", "[CS 199 Students] 2026-01-22: Notes On The Exam"),
    ("Re:", "[CS 199 Students] 2026-01-22: Re: (no subject)"),
    (None, "[CS 199 Students] 2026-01-22: (no subject)"),
]


@pytest.mark.parametrize("old,expected", UNTITLED)
def test_new_subject_without_title_case(old, expected):
    assert new_subject(old, TAG, DAY, title=False) == expected


def test_title_case_is_the_default():
    assert new_subject("relay down test", TAG, DAY) == "[CS 199 Students] 2026-01-22: Relay Down Test"
    assert new_subject("relay down test", TAG, DAY, title=True) == new_subject("relay down test", TAG, DAY)


# The rules docs/config.md ("The Subject") gives, each example as it states it.
DOCUMENTED = [
    ("mail prof@example.edu about hw_3 and notes.pdf", "Mail prof@example.edu About hw_3 and notes.pdf"),
    ("see e.g. version 3.5", "See e.g. Version 3.5"),
    ("CS URGENT iPhone HW3", "CS URGENT iPhone HW3"),
    ("Notes On The Exam", "Notes on the Exam"),
    ("notes On A table", "Notes on A Table"),
    ("notes THE end", "Notes THE End"),
    ('"quoted (and', '"Quoted (and'),
    ("3rd 試験 don't", "3rd 試験 Don't"),
    ("notes on the exam: the answers", "Notes on the Exam: The Answers"),
    ("— the end", "— The End"),
    ("state-of-the-art e-mail", "State-of-the-Art E-Mail"),
]


@pytest.mark.parametrize("text,expected", DOCUMENTED)
def test_title_case_as_documented(text, expected):
    assert title_case(text) == expected
