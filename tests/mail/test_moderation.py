"""listfilter.mail.moderation: a held post through ``listfilter-deliver`` (sendmail faked), the policy
service's exemption, the approved rule's header, and an owner's decision by reply.

tests/store/test_moderation.py takes the held posts on from the spool; tests/integration/test_moderation.py
runs the whole round through a real Postfix.
"""

from __future__ import annotations

import email
import email.policy
import json
import time

import pytest

from listfilter.common import spool as SP
from listfilter.common import tokens as TK
from listfilter.common.events import request_from_json, stable_id
from listfilter.common.snapshot import Snapshot
from listfilter.mail import moderation as MOD
from listfilter.mail import policy as PO
from listfilter.mail.headers import rewrite_headers
from listfilter.mail.message import parse_headers, render

from . import list_row
from .test_deliver import DELIVER, Env

STUDENTS = "students@lists.example.edu"
HOLD = ('reply_to = "staff"\n\n[lists.enrolled]', 'reply_to = "staff"\nnon_member_posts = "hold"\n\n[lists.enrolled]')
STRANGER = (b"From: Stranger <stranger@example.org>\n"
            b"To: students@lists.example.edu\n"
            b"Subject: a question about the course\n"
            b"Message-ID: <held-1@example.org>\n"
            b"Date: Tue, 24 Nov 2026 08:00:00 +0000\n"
            b"\n"
            b"Hello, is there room for one more?\n"
            b"Thanks\n")


@pytest.fixture
def env(tmp_path):
    assert DELIVER.is_file(), f"{DELIVER} is missing: pip install -e ."
    return Env(tmp_path, edit=HOLD)


def parsed(message: bytes):
    return email.message_from_bytes(message, policy=email.policy.default)


def held_records(env) -> list[tuple[dict, bytes]]:
    out = []
    for path in SP.pending_held(env.spool):
        out.append((json.loads(path.read_text()), path.with_suffix(".eml").read_bytes()))
    return out


def token_key(env) -> bytes:
    with Snapshot(env.snapshot) as snap:
        return TK.load_key(snap.settings()["token_key"])


# ---------------------------------------------------------------- holding


def test_a_non_member_post_is_held_and_both_told(env):
    proc = env.deliver(STRANGER, sender="stranger@example.org")
    assert proc.returncode == 0, proc.stderr
    (owners_argv, owners_msg), (poster_argv, poster_msg) = env.sent()
    # nothing to the members: one notice to the owners, one to the poster, both from the null sender
    assert owners_argv == ["-G", "-i", "-f", "<>", "--", "instructor@example.edu"]
    assert poster_argv == ["-G", "-i", "-f", "<>", "--", "stranger@example.org"]

    [(meta, kept)] = held_records(env)
    held_id = meta["id"]
    assert kept == STRANGER
    assert (meta["list"], meta["post_key"], meta["envelope_sender"], meta["sender_email"], meta["hold_days"],
            meta["no_notice"]) == (STUDENTS, "<held-1@example.org>", "stranger@example.org", "stranger@example.org", 14, "")
    assert meta["event_id"] == stable_id("<held-1@example.org>", STUDENTS)

    owners = parsed(owners_msg)
    assert owners["Auto-Submitted"] == "auto-generated"
    assert owners["Reply-To"] == "students-request@lists.example.edu"
    text = owners.get_body(("plain",)).get_content()
    assert "stranger@example.org" in text and "a question about the course" in text
    assert "    Hello, is there room for one more?" in text  # the first lines of the body
    key, now = token_key(env), time.time()
    approve, discard = TK.find(text)[:2]
    assert TK.verify(key, approve, now) == TK.Claim("approve", STUDENTS, held_id, TK.verify(key, approve, now).expires)
    assert TK.verify(key, discard, now).action == "discard" and TK.verify(key, discard, now).subject == held_id
    assert 13.9 * 86400 < TK.verify(key, approve, now).expires - now <= 14 * 86400  # hold_days
    assert f"approve {approve}" in text and f"discard {discard}" in text
    assert TK.find(str(owners["Subject"])) == [approve]  # a reply to the notice approves

    poster = parsed(poster_msg)
    assert poster["Auto-Submitted"] == "auto-replied" and poster["In-Reply-To"] == "<held-1@example.org>"
    assert "is being held for the list's owners" in poster.get_body(("plain",)).get_content()
    assert TK.find(poster_msg.decode()) == []  # the poster never sees a token

    [event] = env.events()
    assert (event["id"], event["status"], event["rule"]) == (meta["event_id"], "held", "poster")
    assert event["recipients"] == [] and f"held as {held_id}" in event["error_message"]


def test_a_member_who_may_not_post_is_refused_unless_non_poster_posts_holds(env, tmp_path):
    alice = STRANGER.replace(b"Stranger <stranger@example.org>", b"alice@example.edu")
    assert env.deliver(alice, sender="alice@example.edu").returncode == 0
    [event] = env.events()
    assert event["status"] == "bounced"  # a member: non_poster_posts is still "refuse"
    (tmp_path / "b").mkdir()
    other = Env(tmp_path / "b", edit=(HOLD[0], HOLD[0].replace('"staff"', '"staff"\nnon_poster_posts = "hold"')))
    assert other.deliver(alice, sender="alice@example.edu").returncode == 0
    assert [e["status"] for e in other.events()] == ["held"]
    assert "a member who may not post" in held_records(other)[0][0]["reason"]


def test_no_notice_to_an_automatic_poster_but_the_owners_are_told(env):
    auto = STRANGER.replace(b"Date:", b"Auto-Submitted: auto-replied\nDate:")
    assert env.deliver(auto, sender="stranger@example.org").returncode == 0
    [(argv, _)] = env.sent()
    assert argv[-1] == "instructor@example.edu"
    [event] = env.events()
    assert event["status"] == "held" and "no notice to the poster (auto-submitted)" in event["error_message"]
    [(meta, _)] = held_records(env)
    assert meta["no_notice"] == "auto-submitted"  # nor an expiry notice, later


def test_the_days_limit_does_not_rule_out_the_expiry_notice(env):
    for n in range(3):  # notice_limit = 2
        assert env.deliver(STRANGER.replace(b"held-1", f"held-l{n}".encode()), sender="stranger@example.org") \
            .returncode == 0
    assert [m["no_notice"] for m, _ in sorted(held_records(env), key=lambda r: r[0]["message_id"])] == ["", "", ""]
    assert sum("notice limit reached" in e["error_message"] for e in env.events()) == 1


def test_a_post_without_message_id_is_kept_with_the_one_it_is_given(env):
    bare = STRANGER.replace(b"Message-ID: <held-1@example.org>\n", b"")
    assert env.deliver(bare, sender="stranger@example.org").returncode == 0
    [(meta, kept)] = held_records(env)
    assert kept.startswith(f"Message-ID: {meta['message_id']}\n".encode()) and kept.endswith(bare)
    assert meta["post_key"] == meta["message_id"] and meta["message_id"].endswith("@lists.example.edu>")
    [event] = env.events()
    assert event["id"] == stable_id(meta["message_id"], STUDENTS)  # its release's delivery replaces this row


def test_a_notice_that_cannot_be_sent_defers_and_keeps_nothing(env):
    (env.calls / "FAIL").touch()
    proc = env.deliver(STRANGER, sender="stranger@example.org")
    assert proc.returncode == 75
    assert proc.stderr.decode().startswith("4.3.0 cannot send the held post's notices: ")
    assert held_records(env) == []
    (env.calls / "FAIL").unlink()
    assert env.deliver(STRANGER, sender="stranger@example.org").returncode == 0
    assert len(held_records(env)) == 1 and [e["status"] for e in env.events()] == ["held"]


def test_the_same_message_again_is_held_once(env):
    """A resend, or Postfix's retry: the delivery's progress record names the held id, so the second copy
    is discarded with no notices, and its log line says which held post it is."""
    assert env.deliver(STRANGER, sender="stranger@example.org").returncode == 0
    [(meta, _)] = held_records(env)
    events, sent = env.events(), env.sent()
    again = env.deliver(STRANGER, sender="stranger@example.org")
    assert again.returncode == 0 and again.stderr == b""
    assert env.sent() == sent and held_records(env) == [(meta, STRANGER)]
    assert env.events() == events  # the held row stands: no record written over it
    assert env.log_line(STRANGER, sender="stranger@example.org") == (
        f"held: <held-1@example.org> to {STUDENTS} is already held as {meta['id']} for the owners; not held"
        " again (rule held)")
    proc = env.deliver(STRANGER, STUDENTS, "stranger@example.org", "--dry-run")
    assert f"rule held: discard: <held-1@example.org> to {STUDENTS} is already held as {meta['id']}" \
        in proc.stdout.decode()


def test_the_held_mark_is_the_last_step(env, monkeypatch):
    """The held event cannot be written (exit 75): the post is not marked held, so Postfix's retry holds it
    anew and records it; a second held copy, never a held post without its mail log row."""
    from listfilter.common.errors import Defer

    def full(spool, event):
        raise SP.SpoolError("spool full")

    with monkeypatch.context() as m:
        m.setattr(SP, "write_event", full)
        with pytest.raises(Defer):
            env.log_line(STRANGER, sender="stranger@example.org")
    assert len(held_records(env)) == 1 and env.events() == []
    assert env.log_line(STRANGER, sender="stranger@example.org").endswith("(rule poster)")
    assert len(held_records(env)) == 2 and [e["status"] for e in env.events()] == ["held"]
    assert "already held as" in env.log_line(STRANGER, sender="stranger@example.org")


def test_dry_run_holds_nothing(env):
    proc = env.deliver(STRANGER, "students@lists.example.edu", "stranger@example.org", "--dry-run")
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout.decode()
    assert "rule approved: pass" in out and "rule poster: hold: stranger@example.org is not a member" in out
    assert "decision: held: " in out
    assert env.sent() == [] and held_records(env) == [] and env.events() == []


# ---------------------------------------------------------------- the approved post, and a forged header


def test_only_the_approved_post_itself_gets_through(env, tmp_path):
    from . import write_snapshot
    from .test_deliver import compiled_list

    assert env.deliver(STRANGER, sender="stranger@example.org").returncode == 0
    [(meta, kept)] = held_records(env)
    # the snapshot sync writes once an owner approved it
    with Snapshot(env.snapshot) as snap:
        settings = snap.settings()
        texts = {k: snap.text(STUDENTS, k) for k in ("held-poster", "held-owners")}
    lst = compiled_list(STUDENTS, owners=("instructor@example.edu",), members=("alice@example.edu", "bob@example.edu"),
                        non_member_posts="hold", texts=texts)
    write_snapshot(env.snapshot, [lst], spool=env.spool, sendmail=settings["sendmail"],
                   settings={"token_key": settings["token_key"]}, approved=[(STUDENTS, meta["id"], meta["post_key"])])
    before = len(env.sent())

    forged = b"X-Listfilter-Approved: " + b"0" * 32 + b"\n" + kept  # an id nobody approved
    assert env.deliver(forged, sender="stranger@example.org").returncode == 0
    assert len(env.sent()) == before and len(held_records(env)) == 1  # the same message: already held, once
    other = (b"X-Listfilter-Approved: " + meta["id"].encode() + b"\n"
             + kept.replace(b"<held-1@example.org>", b"<other@example.org>"))  # the id on another message
    assert env.deliver(other, sender="stranger@example.org").returncode == 0
    # held, as a post of its own: the owners told, and the poster (the day's second notice, notice_limit 2)
    assert [argv[-1] for argv, _ in env.sent()[before:]] == ["instructor@example.edu", "stranger@example.org"]
    assert {e["status"] for e in env.events()} == {"held"} and len(held_records(env)) == 2

    release = b"X-Listfilter-Approved: " + meta["id"].encode() + b"\n" + kept
    assert env.deliver(release, sender="stranger@example.org").returncode == 0
    argv, copy = env.sent()[-1]
    assert "-XV" in argv and argv[-2:] == ["alice@example.edu", "bob@example.edu"]
    assert b"X-Listfilter-Approved" not in copy  # the rewrite removes it
    delivered = [e for e in env.events() if e["id"] == meta["event_id"]]
    assert [(e["status"], e["rule"]) for e in delivered] == [("delivered", "approved")]
    # a second copy of the released post is a duplicate
    assert env.deliver(release, sender="stranger@example.org").returncode == 0
    assert env.sent()[-1] == (argv, copy) and len(env.sent()) == before + 3


def test_the_rewrite_removes_a_posters_approved_header():
    raw = b"From: a@example.edu\nX-Listfilter-Approved: abc\nSubject: x\n"
    import datetime as dt

    out = render(rewrite_headers(parse_headers(raw), list_row(), dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc)),
                 b"body\n")
    assert b"X-Listfilter-Approved" not in out and b"From: a@example.edu" in out


# ---------------------------------------------------------------- the policy service


@pytest.mark.parametrize("members,posters,sender,action", [
    ("refuse", "refuse", "stranger@example.org", "550"),
    ("hold", "refuse", "stranger@example.org", "INFO"),  # let through, and smtpd logs why
    ("hold", "refuse", "alice@example.edu", "550"),  # a member: non_poster_posts decides
    ("refuse", "hold", "alice@example.edu", "INFO"),
    ("refuse", "hold", "stranger@example.org", "550"),
    ("hold", "hold", "", "550"),  # the null sender is refused whatever the list holds
])
def test_policy_does_not_refuse_what_the_list_would_hold(members, posters, sender, action):
    row = list_row(non_member_posts=members, non_poster_posts=posters)
    request = {"request": "smtpd_access_policy", "protocol_state": "RCPT", "recipient": STUDENTS, "sender": sender}
    got, event = PO.decide(request, lambda a: row, lambda a, s: False, lambda a, s: s == "alice@example.edu")
    assert got.split()[0] == action and isinstance(event, PO.Accept) == (action == "INFO")


# ---------------------------------------------------------------- an owner's reply


class _Job:
    def __init__(self, spool, dry=False):
        self.spool, self.dry = spool, dry


def test_decide_by_reply_leaves_a_request_for_sync(tmp_path):
    SP.ensure(tmp_path)
    claim = TK.Claim("approve", STUDENTS, "0123456789abcdef0123456789abcdef", 0)
    line = MOD.decide_by_reply(_Job(tmp_path), claim, "instructor@example.edu")
    assert line == ("approve of held post 0123456789abcdef0123456789abcdef on students@lists.example.edu by"
                    " <instructor@example.edu> recorded; sync applies it")
    [path] = SP.pending_requests(tmp_path)
    record = request_from_json(path.read_bytes())
    assert (record.action, record.list_address, record.subject, record.by, record.via) == (
        "approve", STUDENTS, claim.subject, "instructor@example.edu", "mail")
    MOD.decide_by_reply(_Job(tmp_path / "dry", dry=True), claim, "x@example.edu")
    assert not (tmp_path / "dry").exists()


def test_excerpt_shows_plain_text_never_html():
    html = (b"From: a@example.org\nMIME-Version: 1.0\nContent-Type: multipart/alternative; boundary=b\n\n"
            b"--b\nContent-Type: text/html\n\n<p>only <b>html</b></p>\n--b--\n")
    fields = parse_headers(html.split(b"\n\n")[0] + b"\n")
    assert MOD.excerpt(fields, html) == "    (no plain-text part: see the admin page)"
    mixed = html.replace(b"--b\nContent-Type: text/html", b"--b\nContent-Type: text/plain\n\nplain words\n"
                                                        b"--b\nContent-Type: text/html")
    assert MOD.excerpt(fields, mixed) == "    plain words"
    long = b"From: a@example.org\n\n" + b"".join(b"line %d\n" % i for i in range(40))
    text = MOD.excerpt(parse_headers(b"From: a@example.org\n"), long)
    assert text.splitlines()[0] == "    line 0" and text.splitlines()[-1] == "    [...]"
    assert len(text.splitlines()) == MOD.EXCERPT_LINES + 1


def test_an_owners_reply_with_a_token_that_cannot_be_used_is_answered(env):
    """A list that holds posts but is not opt-in answers an unusable approve/discard code too: with the
    list's help text, which names no join or leave, saying why nothing changed."""
    assert env.deliver(STRANGER, sender="stranger@example.org").returncode == 0
    (_, owners_msg), _ = env.sent()
    approve = TK.find(parsed(owners_msg).get_body(("plain",)).get_content())[0]
    payload, mac = approve.split(".")
    forged = payload + "." + ("A" if mac[0] != "A" else "B") + mac[1:]
    reply = (b"From: Instructor <instructor@example.edu>\nTo: students-request@lists.example.edu\n"
             b"Subject: Re: approve " + forged.encode() + b"\nMessage-ID: <r1@example.edu>\n\nok\n")
    proc = env.deliver(reply, "students-request@lists.example.edu", "instructor@example.edu")
    assert proc.returncode == 0, proc.stderr
    [(argv, answer)] = env.sent()[2:]
    assert argv[-1] == "instructor@example.edu"
    text = parsed(answer).get_body(("plain",)).get_content()
    assert "cannot be used: the token's signature does not match" in text
    assert "stays held until an owner decides or it expires" in text
    assert "To join" not in text and "nobody joins or leaves it by mail" in text
    assert SP.pending_requests(env.spool) == []  # nothing decided
