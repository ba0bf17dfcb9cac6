"""The fuzz harness's judge on its own: Postfix's view of lines, the From a client shows, each check failing.

A faithful rewrite of one post passes every check; each defect the fuzz run
looks for, put into that rewrite by hand, fails exactly the check meant to
catch it. So a fuzz run with no failures means the defects were absent, not
that the checks were blind.
"""

from __future__ import annotations

import pytest

from . import cases as C
from .checks import Call, Outcome, check_case
from .views import postfix_view, shown_from

# ---------------------------------------------------------------- how Postfix splits lines


def test_only_lf_ends_a_line():
    view = postfix_view(b"Subject: a\vBcc: x\fy\x1cz\rReply-To: m\nTo: t\n\nbody\n")
    assert [f.name for f in view.fields] == ["subject", "to"]
    assert view.body == b"body\n" and view.ended == "blank"


def test_crlf_is_read_as_lf_and_a_bare_cr_is_kept():
    view = postfix_view(b"A: 1\r\nB: 2\r\n\r\nx\ry\r\n")
    assert [f.lines for f in view.fields] == [[b"A: 1"], [b"B: 2"]]
    assert view.body == b"x\ry\n"


@pytest.mark.parametrize("line, header", [
    (b"Subject : obsolete space before the colon", "subject"),
    (b"X-Odd!#$%: printable ASCII name", "x-odd!#$%"),
    (b": no name", None),
    (b"Subj\xe9ct: 8-bit name", None),
    (b"\x0bBcc: control first", None),
    (b"From someone Tue Nov 24", None),
])
def test_what_postfix_takes_as_a_header_line(line, header):
    view = postfix_view(b"A: 1\n" + line + b"\nB: 2\n\nbody")
    if header:
        assert [f.name for f in view.fields] == ["a", header, "b"] and view.body == b"body"
    else:
        assert [f.name for f in view.fields] == ["a"] and view.body == line + b"\nB: 2\n\nbody"
        assert view.ended == "line"


def test_continuation_lines_and_a_leading_one():
    view = postfix_view(b"A: 1\n b\n\tc\n\nbody")
    assert view.fields[0].lines == [b"A: 1", b" b", b"\tc"]
    assert postfix_view(b" lead\nA: 1\n\nbody").fields == []  # nothing to continue: the body starts


def test_a_unix_from_line_is_dropped_only_when_asked():
    assert postfix_view(b"From x\nA: 1\n\nb", drop_unix_from=True).fields[0].name == "a"
    assert postfix_view(b"From x\nA: 1\n\nb").fields == []


# ---------------------------------------------------------------- the From a client shows


@pytest.mark.parametrize("value, shown", [
    (b'"Pat" <Pat@Example.edu>', ("pat@example.edu",)),
    (b"instructor@example.edu <mallory@evil.example>", ("mallory@evil.example",)),
    (b'"instructor@example.edu" <mallory@evil.example>', ("mallory@evil.example",)),
    (b"mallory@evil.example (instructor@example.edu)", ("mallory@evil.example",)),
    (b"a@example.edu, b@example.edu", ("a@example.edu", "b@example.edu")),
    ("Zoë <zoë@example.edu>".encode(), ("zoë@example.edu",)),
    (b"Jos\xe9 <jos\xe9@example.edu>", ("josé@example.edu",)),  # legacy bytes: the fallback a client uses
    (b"(((deep))) pat@example.edu", ("pat@example.edu",)),
])
def test_shown_from(value, shown):
    assert shown_from(value) == (shown, "")


@pytest.mark.parametrize("value", [b"instructor@example.edu: mallory@evil.example;", b"<a@b.c> <d@e.f>",
                                   b"a@b.c d@e.f", b'"unterminated <a@b.c>', b"Pat <a@b.c", b"just a name"])
def test_an_ambiguous_from(value):
    assert shown_from(value).ambiguous


# ---------------------------------------------------------------- each check can fail

POSTER = "instructor@example.edu"
ORIGINAL = (b'From: "Pat" <instructor@example.edu>\nTo: someone@example.edu\nSubject: notes\n'
            b"Date: Tue, 24 Nov 2026 08:00:00 -0600\nMessage-ID: <n1@example.edu>\nReply-To: pat@example.edu\n"
            b"Return-Path: <x@y>\nList-Id: <other.example.org>\nPrecedence: bulk\nX-Mailer: Mutt\n\nBody\n")
FAITHFUL = (b'From: "Pat" <instructor@example.edu>\nTo: "Fuzz" <fuzz@lists.example.edu>\n'
            b"Subject: [Fuzz] 2026-11-24: Notes\nDate: Tue, 24 Nov 2026 08:00:00 -0600\n"
            b"Message-ID: <n1@example.edu>\nReply-To: pat@example.edu\nX-Mailer: Mutt\n"
            b'List-Id: "Fuzz" <fuzz.lists.example.edu>\nList-Post: <mailto:fuzz@lists.example.edu>\n'
            b"List-Help: <mailto:fuzz-request@lists.example.edu?subject=help>\n"
            b"List-Owner: <mailto:fuzz-owner@lists.example.edu>\nPrecedence: list\n"
            b"X-Listfilter-Loop: fuzz@lists.example.edu\n\nBody\n")
RECIPIENTS = ["alice@example.edu", "Bob@Example.ORG"]


def judge(message=FAITHFUL, recipients=RECIPIENTS, *, exit=0, stderr=b"", variant="poster", raw=ORIGINAL,
          cpu=0.01, extra_rss=1.0, calls=None, must_deliver=True):
    case = C.Case(seed=0, index=0, family="test", name="test", raw=raw, sender=POSTER, recipient=C.LIST,
                  posters=(POSTER,) if variant == "poster" else (C.NOBODY,), members=(POSTER,),
                  display_name="Fuzz", reply_to=False, must_deliver=must_deliver, variant=variant)
    outcome = Outcome(exit=exit, signal=0, timed_out=False, stdout=b"", stderr=stderr, wall=cpu, cpu=cpu, rss=30.0,
                      extra_rss=extra_rss, mode="fork")
    if calls is None:
        calls = [Call(["-G", "-i", "-f", C.BOUNCES, "-XV", "--", *recipients], message)] if message else []
    return sorted({check for check, _ in check_case(case, outcome, calls, [b'{"status": "delivered"}'])})


def test_a_faithful_rewrite_passes():
    assert judge() == []


@pytest.mark.parametrize("defect, check", [
    (lambda m: m.replace(b"X-Mailer: Mutt\n", b"X-Mailer: Mutt\nBcc: mallory@evil.example\n"), "smuggled"),
    (lambda m: m.replace(b"X-Mailer: Mutt\n", b"X-Mailer: Mutt\nReply-To: mallory@evil.example\n"), "smuggled"),
    (lambda m: m.replace(b"Precedence: list\n", b"Precedence: list\nList-Unsubscribe: <mailto:m@e>\n"), "smuggled"),
    (lambda m: m.replace(b"X-Mailer: Mutt\n", b"X-Mailer: Mutt\nReturn-Path: <x@y>\n"), "smuggled"),
    (lambda m: m.replace(b"X-Mailer: Mutt\n", b"X-Mailer: Mutt\n: stray\n"), "lost"),  # the list's headers in the body
    (lambda m: m.replace(b"X-Listfilter-Loop: fuzz@lists.example.edu\n", b""), "lost"),
    (lambda m: m.replace(b"X-Mailer: Mutt\n", b""), "lost"),
    (lambda m: m.replace(b"Date: Tue", b"Date: Mon, 1 Jan 2024\nDate: Tue"), "singletons"),
    (lambda m: m.replace(b"X-Mailer: Mutt", b"X-Mailer: Mutt\rDate: Mon, 1 Jan 2024"), "singletons"),  # to Python
    (lambda m: m.replace(b"Message-ID: <n1@example.edu>\n", b""), "singletons"),
    (lambda m: m.replace(b'"Pat" <instructor@example.edu>', b"instructor@example.edu <mallory@evil.example>"),
     "from"),
    (lambda m: m.replace(b'"Pat" <instructor@example.edu>', b"instructor@example.edu: mallory@evil.example;"),
     "from"),
    (lambda m: m.replace(b"\n\nBody\n", b"\n\nBody\r\n\xff"), "body"),
    (lambda m: m.replace(b"X-Mailer: Mutt", b"X-Mailer: " + b"x" * 1000), "line-length"),
])
def test_each_defect_fails_its_check(defect, check):
    assert check in judge(defect(FAITHFUL))


def test_crlf_in_the_output_is_not_a_body_change():
    assert judge(FAITHFUL.replace(b"\n", b"\r\n")) == []


@pytest.mark.parametrize("kwargs, check", [
    ({"recipients": RECIPIENTS + [POSTER]}, "poster-copy"),
    ({"recipients": RECIPIENTS + ["stranger@example.org"]}, "envelope"),
    ({"variant": "stranger", "must_deliver": False}, "from"),
    ({"exit": 1, "stderr": b"Traceback (most recent call last):\n  ...\nKeyError: 'x'\n", "message": None},
     "exit"),
    ({"exit": 1, "stderr": b"Traceback (most recent call last):\n  ...\nKeyError: 'x'\n", "message": None},
     "traceback"),
    ({"exit": 75, "stderr": b"4.3.0 internal error (ValueError: x); will retry\n", "message": None}, "poison"),
    ({"exit": 75, "stderr": b"4.3.0 internal error (ValueError: x); will retry\n", "message": None},
     "not-delivered"),
    ({"exit": 67, "stderr": b"5.1.1 no such list\n", "message": None}, "wrong-67"),
    ({"stderr": b"two\nlines\n"}, "traceback"),
    ({"cpu": 3.0}, "cost"),
    ({"extra_rss": 400.0}, "cost"),
])
def test_each_bad_ending_fails_its_check(kwargs, check):
    assert check in judge(**kwargs)


def test_a_notice_to_a_null_sender_and_one_read_differently():
    notice = (b"From: fuzz-owner@lists.example.edu\nTo: instructor@example.edu\nSubject: refused\rBcc: x@y\n"
              b"Date: Tue, 24 Nov 2026 08:00:00 -0600\nMessage-ID: <r@x>\n\ntext\n")
    calls = [Call(["-G", "-i", "-f", "<>", "--", POSTER], notice)]
    assert "notice" in judge(calls=calls, must_deliver=False)
