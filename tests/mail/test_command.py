"""listfilter.mail.command: the fixed argv of the mail commands, and the exit codes Postfix reads."""

from __future__ import annotations

import pytest

from listfilter.common.errors import EXIT_CONFIG, Defer, ListfilterError, NoSuchList
from listfilter.mail import command as C

OPTIONS = {"snapshot": "/var/lib/listfilter/snapshot.sqlite", "sender": None, "recipient": None, "queue-id": ""}
FLAGS = ("dry-run",)


# ---------------------------------------------------------------- parse


def test_parse_required_and_defaults():
    assert C.parse(["--sender", "a@example.edu", "--recipient", "l@example.edu"], OPTIONS, FLAGS) == {
        "snapshot": "/var/lib/listfilter/snapshot.sqlite", "sender": "a@example.edu", "recipient": "l@example.edu",
        "queue_id": "", "dry_run": False}  # dashes become underscores


def test_parse_equals_form_flags_and_empty_values():
    got = C.parse(["--snapshot=/tmp/s.sqlite", "--sender", "", "--recipient=l@example.edu", "--dry-run",
                   "--queue-id=4A=B"], OPTIONS, FLAGS)
    assert got == {"snapshot": "/tmp/s.sqlite", "sender": "", "recipient": "l@example.edu", "queue_id": "4A=B",
                   "dry_run": True}  # an empty ${sender} (a bounce) is a value


def test_parse_a_value_may_look_like_an_option():
    got = C.parse(["--sender", "--recipient", "--recipient", "l@example.edu"], OPTIONS, FLAGS)
    assert got["sender"] == "--recipient" and got["recipient"] == "l@example.edu"


def test_parse_last_one_wins():
    got = C.parse(["--sender", "a@x", "--recipient", "l@x", "--sender", "b@x"], OPTIONS)
    assert got["sender"] == "b@x"


BAD_ARGV = [
    ([], "missing --sender, --recipient"),
    (["--sender", "a@x"], "missing --recipient"),
    (["--sender", "a@x", "--recipient"], "option --recipient needs a value"),
    (["--sender", "a@x", "--recipient", "l@x", "--bogus", "1"], "unexpected argument '--bogus'"),
    (["--sender", "a@x", "--recipient", "l@x", "stray"], "unexpected argument 'stray'"),
    (["--sender", "a@x", "--recipient", "l@x", "-f", "x"], "unexpected argument '-f'"),
    (["--sender", "a@x", "--recipient", "l@x", "--dry-run=yes"], "unexpected argument '--dry-run=yes'"),
    (["--sender", "a@x", "--recipient", "l@x", "--"], "unexpected argument '--'"),
]


@pytest.mark.parametrize("argv,message", BAD_ARGV)
def test_parse_usage_errors(argv, message):
    with pytest.raises(C.UsageError) as info:
        C.parse(argv, OPTIONS, FLAGS)
    assert str(info.value) == message
    # a wrong master.cf line is the administrator's to fix: defer, don't bounce the mail
    assert info.value.exit_code == 75 and info.value.dsn == "4.3.5"


def test_usage_and_help():
    text = C.usage("listfilter-deliver", OPTIONS, FLAGS, "\nHelp text.\n")
    assert text.startswith("usage: listfilter-deliver [--snapshot VALUE] --sender VALUE --recipient VALUE"
                           " [--queue-id VALUE] [--dry-run]\n\nHelp text.\n")
    assert C.help_requested(["--sender", "x", "--help"]) and C.help_requested(["-h"])
    assert not C.help_requested(["--sender", "x"])


@pytest.mark.parametrize("argv,queue_id", [
    (["--sender", "a", "--queue-id", "4ABC"], "4ABC"),
    (["--queue-id=4ABC"], "4ABC"),
    (["--queue-id"], ""),
    ([], ""),
])
def test_queue_id_of(argv, queue_id):
    assert C.queue_id_of(argv) == queue_id


# ---------------------------------------------------------------- run


@pytest.fixture
def logged(monkeypatch):
    """What run() sends to syslog: (priority, text) pairs."""
    lines = []
    monkeypatch.setattr(C.syslog, "openlog", lambda *a, **k: None)
    monkeypatch.setattr(C.syslog, "syslog", lambda priority, text: lines.append((priority, text)))
    return lines


def fail_with(exc: BaseException):
    def body(argv):
        raise exc

    return body


def test_run_success(logged, capsys):
    assert C.run(lambda argv: f"done {argv}", ["x"], "4ABC") == 0
    assert capsys.readouterr() == ("", "")
    assert logged == [(C.syslog.LOG_INFO, "4ABC: done ['x']")]


def test_run_success_without_a_line_logs_nothing(logged):
    assert C.run(lambda argv: "", [], "") == 0
    assert logged == []


RESULTS = [
    # the exception, the exit code, the stderr line
    (Defer("spool is full"), 75, "4.3.0 spool is full; will retry\n"),
    (NoSuchList("<x@lists.example.edu>: no such list here"), 67, "5.1.1 <x@lists.example.edu>: no such list here\n"),
    (C.UsageError("missing --recipient"), 75, "4.3.5 missing --recipient; will retry\n"),
    # any other expected failure may clear up: defer, never an exit code pipe(8) would bounce on
    (ListfilterError("something odd"), 75, "4.3.0 something odd; will retry\n"),
    (type("ConfigLike", (ListfilterError,), {"exit_code": EXIT_CONFIG})("bad config"), 75,
     "4.3.0 bad config; will retry\n"),
    (Defer("two\nlines   and  spaces"), 75, "4.3.0 two lines and spaces; will retry\n"),
]


@pytest.mark.parametrize("exc,code,line", RESULTS)
def test_run_expected_failures(exc, code, line, logged, capsys):
    assert C.run(fail_with(exc), [], "4ABC") == code
    out, err = capsys.readouterr()
    assert (out, err) == ("", line)  # one line, and it begins with the DSN
    [(priority, text)] = logged
    assert text == "4ABC: " + line.strip()
    assert priority == (C.syslog.LOG_NOTICE if code == 67 else C.syslog.LOG_WARNING)


def test_run_unexpected_exception_defers_without_a_traceback(logged, capsys):
    assert C.run(fail_with(RuntimeError("boom")), [], "") == 75
    out, err = capsys.readouterr()
    assert err == "4.3.0 internal error (RuntimeError: boom); will retry\n" and out == ""
    # the traceback goes to syslog, line by line, under NOQUEUE
    assert logged[0] == (C.syslog.LOG_ERR, "NOQUEUE: Traceback (most recent call last):")
    assert logged[-1] == (C.syslog.LOG_ERR, "NOQUEUE: RuntimeError: boom")


def test_run_a_very_long_message_is_cut(logged, capsys):
    assert C.run(fail_with(Defer("x" * 2000)), [], "") == 75
    err = capsys.readouterr().err
    assert err.startswith("4.3.0 xxx") and len(err) == 501  # 500 characters and the newline


def test_a_dry_run_logs_nothing_to_syslog(logged, capsys, monkeypatch):
    """What a real run would log goes to stderr instead (an error's line once); syslog is never opened."""
    opened = []
    monkeypatch.setattr(C.syslog, "openlog", lambda *a, **k: opened.append(a))
    assert C.run(lambda argv: "bounce for l@x received; nothing sent", [], "4ABC", dry_run=True) == 0
    assert capsys.readouterr() == ("", "4ABC: bounce for l@x received; nothing sent\n")
    assert C.run(fail_with(Defer("spool is full")), [], "4ABC", dry_run=True) == 75
    assert capsys.readouterr() == ("", "4.3.0 spool is full; will retry\n")
    assert C.run(fail_with(RuntimeError("boom")), [], "", dry_run=True) == 75
    err = capsys.readouterr().err
    assert "NOQUEUE: RuntimeError: boom\n" in err and err.endswith("4.3.0 internal error (RuntimeError: boom); will retry\n")
    assert logged == [] and opened == []
    C.run(lambda argv: "delivered", [], "4ABC")  # the next real run logs again
    assert logged == [(C.syslog.LOG_INFO, "4ABC: delivered")] and opened
