"""Integration tests for the test harness itself: a real private Postfix
instance (tests/postfix_instance.py), swaks as the SMTP client and the aiosmtpd
relay sink (tests/smtpsink.py)."""

from __future__ import annotations

import os
import pwd
import time
from pathlib import Path

import pytest

try:
    from postfix_instance import PostfixInstance, ensure_user, traversable_tmpdir
    from smtpsink import SMTPSink
except ImportError:  # tests/ imported as a package
    from tests.harness.postfix import PostfixInstance, ensure_user, traversable_tmpdir
    from tests.harness.smtpsink import SMTPSink

pytestmark = pytest.mark.integration

LIST_DOMAIN = "lists.test.example"


# ---------------------------------------------------------------------------
# fixtures
# ---------------------------------------------------------------------------


@pytest.fixture
def base_dir():
    # Not tmp_path: /tmp/pytest-of-root is 0700 and the postfix and
    # listfilter users must be able to traverse the instance directory.
    with traversable_tmpdir() as d:
        yield d


@pytest.fixture
def sink():
    with SMTPSink() as s:
        yield s


@pytest.fixture
def make_instance(base_dir, sink):
    """Factory: make_instance(main_cf=..., master_cf_extra=...) -> started instance.
    Every instance is stopped at teardown, also when the test fails."""
    instances: list[PostfixInstance] = []

    def factory(prepare=None, **kwargs) -> PostfixInstance:
        pf = PostfixInstance(base_dir / f"pf{len(instances)}", relay_port=sink.port, **kwargs)
        instances.append(pf)
        if prepare is not None:
            prepare(pf)
        pf.start()
        return pf

    yield factory
    errors = []
    for pf in instances:
        try:
            pf.stop()
        except Exception as exc:  # keep stopping the others
            errors.append(exc)
    if errors:
        raise errors[0]


def wait_until(predicate, timeout=10.0, interval=0.05):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            return value
        time.sleep(interval)


# ---------------------------------------------------------------------------
# a pipe(8) transport for LIST_DOMAIN
# ---------------------------------------------------------------------------

GOOD_SCRIPT = """#!/bin/sh
# $1 = sender, $2 = recipient; store the message for the test to inspect
umask 022
out={outdir}/"$2".$$
cat > "$out.tmp" && mv "$out.tmp" "$out.eml"
"""

TEMPFAIL_SCRIPT = """#!/bin/sh
cat > /dev/null
echo "pretend the database is down" >&2
exit 75
"""

REINJECT_SCRIPT = """#!/bin/sh
# reinject to a fixed address through the instance's sendmail (MAIL_CONFIG is inherited)
exec /usr/sbin/sendmail -i -f "$1" -- forwarded@example.org
"""


def write_script(path: Path, text: str) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(text)
    tmp.chmod(0o755)
    os.replace(tmp, path)


def pipe_setup(base_dir: Path, script_text: str, listed=("announce",)):
    """Return (kwargs for make_instance, prepare callback, outdir, script path)."""
    lf = ensure_user("listfilter")
    work = base_dir / "pipe"
    outdir = work / "out"
    outdir.mkdir(parents=True)
    work.chmod(0o755)
    os.chown(outdir, lf.pw_uid, lf.pw_gid)
    script = work / "deliver.sh"
    write_script(script, script_text.format(outdir=outdir))

    maps = base_dir / "maps"
    maps.mkdir()
    maps.chmod(0o755)
    transport = maps / "transport"
    transport.write_text(f"{LIST_DOMAIN} lftest:\n")
    recipients = maps / "relay_recipients"
    recipients.write_text("".join(f"{name}@{LIST_DOMAIN} OK\n" for name in listed))

    kwargs = dict(
        main_cf={
            "relay_domains": LIST_DOMAIN,
            "transport_maps": f"hash:{transport}",
            "relay_recipient_maps": f"hash:{recipients}",
            "lftest_destination_recipient_limit": "1",
        },
        master_cf_extra=(
            "lftest unix - n n - - pipe\n"
            f"  flags=Rq user=listfilter argv={script} ${{sender}} ${{recipient}}\n"
        ),
    )

    def prepare(pf: PostfixInstance) -> None:
        pf.postmap(f"hash:{transport}")
        pf.postmap(f"hash:{recipients}")
        assert pf.postmap("-q", f"announce@{LIST_DOMAIN}", f"hash:{recipients}").strip() == "OK"

    return kwargs, prepare, outdir, script


def delivered(outdir: Path) -> list[Path]:
    return sorted(outdir.glob("*.eml"))


# ---------------------------------------------------------------------------
# tests
# ---------------------------------------------------------------------------


def test_relay_to_sink(make_instance, sink):
    pf = make_instance()
    cp = pf.swaks("--from", "alice@test.example", "--to", "someone@example.org",
                  "--header", "Subject: harness check", "--body", "hello from the harness")
    assert cp.returncode == 0, cp.stdout + cp.stderr
    assert sink.wait_for(1, timeout=10), pf.log_tail()
    assert pf.wait_queue_empty(5)
    assert sink.recipients() == ["someone@example.org"]
    [msg] = sink.messages
    assert msg.mail_from == "alice@test.example"
    assert msg.rcpt_tos == ["someone@example.org"]
    assert isinstance(msg.data, bytes)
    assert b"Subject: harness check\r\n" in msg.data
    assert b"\r\n\r\nhello from the harness\r\n" in msg.data
    assert "status=sent" in pf.maillog()


def test_sendmail_injects_into_private_instance(make_instance, sink):
    pf = make_instance()
    pf.sendmail(["-i", "-f", "bob@test.example", "--", "carol@example.org"],
                b"Subject: via sendmail\n\nbody line\n")
    assert sink.wait_for(1, timeout=10), pf.log_tail()
    [msg] = sink.messages
    assert msg.mail_from == "bob@test.example"
    assert msg.rcpt_tos == ["carol@example.org"]
    assert b"Subject: via sendmail\r\n" in msg.data
    assert b"body line" in msg.data


def test_sink_rejects_chosen_recipients(make_instance, sink):
    sink.reject["gone@example.org"] = "550 5.1.1 No such user"
    sink.reject["later@example.org"] = "450 4.2.1 Try again later"
    pf = make_instance()
    cp = pf.swaks("--from", "alice@test.example",
                  "--to", "ok@example.org,Gone@example.org,later@example.org")
    assert cp.returncode == 0, cp.stdout + cp.stderr
    assert sink.wait_for(1, timeout=10)
    # the permanent failure produces a bounce to the sender, relayed to the sink
    assert sink.wait_for(2, timeout=10), pf.log_tail()
    by_rcpt = {tuple(m.rcpt_tos): m for m in sink.snapshot()}
    assert ("ok@example.org",) in by_rcpt
    bounce = by_rcpt[("alice@test.example",)]
    assert bounce.mail_from == ""
    assert b"No such user" in bounce.data
    log = pf.wait_log(r"to=<Gone@example.org>.*status=bounced.*").group(0)
    assert "550 5.1.1 No such user" in log
    pf.wait_log(r"to=<later@example.org>.*status=deferred")
    [entry] = pf.wait_queue(lambda e: len(e) == 1)
    assert [r["address"] for r in entry["recipients"]] == ["later@example.org"]
    # the temporary failure is retried once the sink accepts it
    del sink.reject["later@example.org"]
    pf.flush()
    assert sink.wait_for(3, timeout=10), pf.log_tail()
    assert "later@example.org" in sink.recipients()
    assert pf.wait_queue_empty(5)
    assert sink.rejected.count("Gone@example.org") == 1


def test_pipe_transport_and_relay_recipient_maps(make_instance, sink, base_dir):
    kwargs, prepare, outdir, _ = pipe_setup(base_dir, GOOD_SCRIPT)
    pf = make_instance(prepare=prepare, **kwargs)

    cp = pf.swaks("--from", "alice@test.example", "--to", f"announce@{LIST_DOMAIN}",
                  "--header", "Subject: to the list", "--body", "list body")
    assert cp.returncode == 0, cp.stdout + cp.stderr
    files = wait_until(lambda: delivered(outdir), timeout=10)
    assert files, pf.log_tail()
    [f] = files
    assert f.name.startswith(f"announce@{LIST_DOMAIN}.")
    assert pwd.getpwuid(f.stat().st_uid).pw_name == "listfilter"
    text = f.read_text()
    assert text.startswith("Return-Path: <alice@test.example>\n")
    assert "Subject: to the list\n" in text and "list body" in text
    assert pf.wait_queue_empty(5)
    pf.wait_log(rf"to=<announce@{LIST_DOMAIN}>, relay=lftest.*status=sent")

    cp = pf.swaks("--from", "alice@test.example", "--to", f"nosuchlist@{LIST_DOMAIN}")
    assert cp.returncode == 24, cp.stdout + cp.stderr  # 24: all recipients rejected
    assert "<** 550 5.1.1 <nosuchlist@lists.test.example>: Recipient address rejected" in cp.stdout
    assert "User unknown in relay recipient table" in cp.stdout
    assert pf.queue() == []
    time.sleep(0.3)
    assert len(delivered(outdir)) == 1
    assert sink.messages == []


def test_pipe_tempfail_defers_then_flush_delivers(make_instance, sink, base_dir):
    kwargs, prepare, outdir, script = pipe_setup(base_dir, TEMPFAIL_SCRIPT)
    pf = make_instance(prepare=prepare, **kwargs)

    cp = pf.swaks("--from", "alice@test.example", "--to", f"announce@{LIST_DOMAIN}",
                  "--body", "deferred body")
    assert cp.returncode == 0, cp.stdout + cp.stderr
    entries = pf.wait_queue(lambda e: any(x["queue_name"] == "deferred" for x in e), timeout=10)
    [entry] = entries
    [rcpt] = entry["recipients"]
    assert rcpt["address"] == f"announce@{LIST_DOMAIN}"
    assert "pretend the database is down" in rcpt.get("delay_reason", ""), entry
    assert "status=deferred" in pf.maillog()
    assert delivered(outdir) == []

    write_script(script, GOOD_SCRIPT.format(outdir=outdir))
    pf.flush()
    files = wait_until(lambda: delivered(outdir), timeout=10)
    assert len(files) == 1, pf.log_tail()
    assert "deferred body" in files[0].read_text()
    assert pf.wait_queue_empty(5)
    assert sink.messages == []


def test_pipe_child_reinjects_with_sendmail(make_instance, sink, base_dir):
    kwargs, prepare, _, _ = pipe_setup(base_dir, REINJECT_SCRIPT)
    pf = make_instance(prepare=prepare, **kwargs)
    cp = pf.swaks("--from", "alice@test.example", "--to", f"announce@{LIST_DOMAIN}",
                  "--header", "Subject: reinjected", "--body", "round trip")
    assert cp.returncode == 0, cp.stdout + cp.stderr
    assert sink.wait_for(1, timeout=10), pf.log_tail()
    [msg] = sink.messages
    assert msg.rcpt_tos == ["forwarded@example.org"]
    assert msg.mail_from == "alice@test.example"
    assert b"Subject: reinjected" in msg.data and b"round trip" in msg.data
    assert pf.wait_queue_empty(5)
