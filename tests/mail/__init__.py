"""Tests of listfilter.mail, and the helpers they share: a list's snapshot row, a snapshot file."""

from __future__ import annotations

from pathlib import Path

from listfilter.common.snapshot import CompiledList, ListRow

STUDENTS = "students@lists.example.edu"
#: The site settings a snapshot carries (listfilter.common.snapshot.SETTINGS), for tests that write one.
SETTINGS = {"timezone": "America/Chicago", "sendmail": "/usr/sbin/sendmail", "notice_limit": "2",
            "postfix_log": "/var/log/mail.log", "postqueue": "/usr/sbin/postqueue",
            "authserv_id": "mx.lists.example.edu", "authenticated_trusted": "[]",
            "token_key": "/nonexistent/token-key", "confirm_days": "3"}


def compiled_list(address: str = STUDENTS, *, display_name: str = "CS 199 Students", subject_tag: str | None = None,
                  reply_to: str | None = None, description: str = "", owners=("prof@example.edu",),
                  posters_rule: str = "course instructor, ta", exclude_poster: bool = True,
                  title_case_subject: bool = True, dmarc: str = "off", dmarc_always=(),
                  require_authenticated: bool = False, redirect_to: str | None = None, members=(),
                  posters=(), **more) -> CompiledList:
    """A list as sync compiles it, with its refusal notice rendered by sync's own code.

    ``members`` are (email, name) pairs or bare addresses; ``subject_tag``
    defaults to the display name, as in the config; ``more`` sets the other fields
    (optin, non_member_posts, sources, texts, …). ``dmarc`` is ``"off"``
    unless a test says otherwise (the config's default is munge): a snapshot
    written here has no dmarc rows, which would munge every post.
    """
    from listfilter.sync.compiler import refusal_notices

    local, _, domain = address.rpartition("@")
    notice, undated = refusal_notices(address, display_name, description, posters_rule)
    pairs = tuple((m, "") if isinstance(m, str) else tuple(m) for m in members)
    return CompiledList(
        address=address, name=local, local_part=local, domain=domain, display_name=display_name,
        description=description, subject_tag=display_name if subject_tag is None else subject_tag,
        reply_to=reply_to, owners=tuple(owners), posters_rule=posters_rule, exclude_poster=exclude_poster,
        title_case_subject=title_case_subject, dmarc=dmarc, dmarc_always=tuple(dmarc_always),
        require_authenticated=require_authenticated, redirect_to=redirect_to, notice=notice, notice_undated=undated,
        members=tuple(sorted(pairs, key=lambda p: p[0].lower())), posters=tuple(sorted(p.lower() for p in posters)),
        **more)


def list_row(address: str = STUDENTS, **fields) -> ListRow:
    """The snapshot row of a list (what the mail side reads), built as :func:`compiled_list`."""
    lst = compiled_list(address, **fields)
    return ListRow(**{f: getattr(lst, f) for f in ListRow._fields[:-1]}, member_count=len(lst.members))


def write_snapshot(path: Path, lists: list[CompiledList], *, spool: Path, sendmail: str | None = None,
                   suppressed: dict[str, str] | None = None, dmarc=None, approved=None,
                   settings: dict[str, str] | None = None) -> Path:
    """Install a snapshot at ``path`` holding ``lists``, as sync would."""
    from listfilter.common import snapshot

    settings = {**SETTINGS, "spool_dir": str(spool), **({"sendmail": sendmail} if sendmail else {}), **(settings or {})}
    snapshot.write(path, lists, {**settings, "digest": "test"}, suppressed, dmarc=dmarc, approved=approved)
    return path


# --------------------------------------------------------------------------
# Hostile headers: shared by test_message.py and test_headers.py

#: Characters that Python's ``str.splitlines()`` breaks a line at and Postfix
#: does not (cleanup(8) ends a line at LF only): the C0 ones and a bare CR, and
#: the UTF-8 forms of NEL, LINE SEPARATOR and PARAGRAPH SEPARATOR (what a
#: client sees once it decodes an SMTPUTF8 header as UTF-8).
PYTHON_ONLY_BREAKS = {
    "VT": b"\x0b", "FF": b"\x0c", "FS": b"\x1c", "GS": b"\x1d", "RS": b"\x1e", "bare CR": b"\r",
    "NEL": "\u0085".encode(), "LS": "\u2028".encode(), "PS": "\u2029".encode(),
}
#: What a poster would smuggle in: a Bcc, a second From, a Reply-To, another
#: list's header, our own loop marker, and an "empty line" that would push the
#: list's own headers into the body.
SMUGGLED = (b"Bcc: victim@example.org", b"From: instructor@example.edu", b"Reply-To: evil@example.org",
            b"List-Unsubscribe: <mailto:leave@example.org>", b"X-Listfilter-Loop: students@lists.example.edu", b"")

_SMUGGLING_BASE = (b"From: Jane Doe <jane@example.edu>", b"To: students@lists.example.edu", b"Subject: Hello",
                   b"Date: Wed, 21 Jan 2026 10:00:00 -0600", b"Message-ID: <m1@example.edu>")
#: Where the poster puts it: (field replaced or added, how the payload goes in).
SMUGGLING_PLACES = {
    "Subject": ("Subject", lambda p: b"Subject: Hello" + p),
    "From display name": ("From", lambda p: b"From: Jane" + p + b" <jane@example.edu>"),
    "X- header": ("X-Note", lambda p: b"X-Note: a" + p),
    "continuation line": ("X-Note", lambda p: b"X-Note: a\n b" + p),
}


def smuggling_message(place: str, sep: bytes) -> tuple[bytes, list[str], bytes]:
    """(raw message, the field names it really has, its body) with :data:`SMUGGLED` joined by ``sep`` in ``place``."""
    name, build = SMUGGLING_PLACES[place]
    payload = sep + sep.join(SMUGGLED) + sep
    lines = [line for line in _SMUGGLING_BASE if not line.startswith(name.encode() + b":")]
    lines.append(build(payload))
    body = b"Hello." + payload + b"\n"
    return b"\n".join(lines) + b"\n\n" + body, [line.split(b":")[0].decode() for line in lines], body


#: Header lines the standard library's parser rejects or chokes on: each used to defer the message.
STDLIB_REJECTS = [
    b"To: <<<>>>",
    b'To: a@b, ,,, @@@ "unterminated',
    b"To: :;:;:;",
    b"To: " + b"(" * 3000,
    b"To: " + b"(" * 1500 + b"x" + b")" * 1500,
    b"Reply-To: =?utf-8?q?broken",
    b"Reply-To: a@\xff\xfe",
    b'Reply-To: "\\',
    b"Reply-To: <>",
    b"Cc: @,@,@",
    b"Sender: <>",
    b"Message-ID:",
    b"Message-ID: <>",
    b"Message-ID: <@>",
    b"Message-ID: " + b"<" * 1000,
    b"In-Reply-To: <<",
    b"References: " + b"<a@b> " * 5000,
    b"Date: not a date",
    b"Date: Wed, 99 Foo 2026 99:99:99 +9999",
    b"Content-Type: text/plain; charset*=utf-8''%ZZ",
    b"Content-Type: text/plain; charset*0*=utf-8''a; charset*2=b",
    b"Content-Type: multipart/mixed; boundary*0=a; boundary*1*=%XX",
    b"Content-Type: text/plain; name*=\xff\xfe''x",
    b"Content-Type: text/plain; charset*=unknown-8bit''%E9%FF",
    b"Content-Type: text/plain; charset*=''",
    b'Content-Type: text/plain; charset="',
    b"Content-Disposition: attachment; filename*=utf-8''%E9%",
    b"Content-Type: text/plain; name*=\"utf-8''",  # the stdlib's parser raises IndexError
    b"Content-Disposition: attachment; filename*=\"utf-8''",
    b"Content-Transfer-Encoding: =?utf-8?q?",
    b"Subject: =?utf-8?q?",
    b"Subject: =?utf-8?b?!!!?=",
    b"Subject: =?bogus?x?abc?=",
    b"Subject: =?unknown-8bit?q?caf=E9?=",
    b"Resent-From: \"",
    b"Disposition-Notification-To: <<",
    b"X-Binary: \x00\x01\xff\xfe\x80",
    b"J\xfcrgen was here",  # a non-header line with 8-bit bytes in the header block
    b"\xff\xfe\x00garbage",
    b"Caf\xc3\xa9 : not a header",
]
