"""Whether, and how, to tell a poster that the list refused their message.

Standard library only: ``listfilter-deliver`` imports this per message. The
notice's text was rendered from ``templates/notice-refused.txt.j2`` by sync
(:func:`listfilter.sync.compiler.refusal_notices`) and comes with the list's
snapshot row; only the per-message fields are filled in here.

When a notice must not be sent
------------------------------

:func:`notice_suppressed` follows RFC 3834 §2 (automatic responses) and
RFC 5321 §6.1/§4.5.5 (never answer a null sender): no notice goes to a null
envelope sender, to a role/robot address (MAILER-DAEMON, list service
addresses such as ``*-owner``, ``owner-*``, ``*-request``, ``*-bounces``,
``*-bounces+...``, VERP ``bounce-...`` senders, ``noreply``), in reply to a
message that is itself automatic (``Auto-Submitted`` other than ``no``,
``X-Autoreply``/``X-Autorespond``), bulk (``Precedence: bulk|junk|list``),
list mail (``List-Id``, ``List-Post`` or ``List-Unsubscribe``), or marked
``X-Auto-Response-Suppress: All|AutoReply|DR|NDR`` (Microsoft's flag; a
refusal notice is a non-delivery report). ``postmaster`` is *not* suppressed:
RFC 5321 requires it to reach a human, and a notice to a human is useful.

Sending
-------

:func:`build_refusal_notice` only builds the bytes. The caller must submit
them with a **null envelope sender** (``sendmail -f '<>'`` or ``-f ''``), as
RFC 3834 §3.3 and RFC 5321 §6.1 require for automatic responses: a notice
that bounces must not produce another notice or bounce. The notice carries
``Auto-Submitted: auto-replied`` (RFC 3834 §5) and no ``Precedence`` header
(RFC 3834 §3.1.8 advises against it). The caller also rate-limits notices
(see :func:`listfilter.common.spool.claim_notice`).
"""

from __future__ import annotations

import datetime
import re
from email.headerregistry import Address
from email.message import EmailMessage
from email.utils import make_msgid

from ..common.addresses import owner_address
from ..common.snapshot import fill_notice
from .message import header_text, make_policy, parse_headers

# --------------------------------------------------------------------------
# Suppression

#: Local parts of robots and services (compared case-insensitively).
_ROLE_LOCAL_PARTS = frozenset({
    "mailer-daemon", "mailer_daemon", "listserv", "majordomo", "majordom",
    "noreply", "no-reply", "no_reply", "donotreply", "do-not-reply", "do_not_reply",
})
_ROLE_PATTERN = re.compile(
    r"""(?:-owner$ | ^owner- | -request$ | -bounces(?:\+.*)?$ | -bounce(?:\+.*)?$
         | ^bounces?[-+=.])""",
    re.IGNORECASE | re.VERBOSE,
)
_BULK_PRECEDENCE = frozenset({"bulk", "junk", "list", "auto_reply"})
_SUPPRESS_TOKENS = frozenset({"all", "autoreply", "dr", "ndr"})
_COMMENT = re.compile(r"\([^()]*\)")


def _bare_address(envelope_sender: str) -> str:
    addr = envelope_sender.strip()
    if addr.startswith("<") and addr.endswith(">"):
        addr = addr[1:-1].strip()
    return addr


def notice_suppressed(envelope_sender: str, headers: EmailMessage) -> str | None:
    """Why no notice may be sent for this message, or None if one may.

    Reasons (stable strings): ``"null sender"``, ``"role address"``,
    ``"auto-submitted"``, ``"precedence bulk"`` (``junk``, ``list``,
    ``auto_reply``), ``"list mail"``, ``"auto-response suppressed"``.
    """
    addr = _bare_address(envelope_sender or "")
    if not addr:
        return "null sender"
    local = addr.rpartition("@")[0] if "@" in addr else addr
    if local.strip('"').lower() in _ROLE_LOCAL_PARTS or _ROLE_PATTERN.search(local.strip('"')):
        return "role address"

    for value in headers.get_all("Auto-Submitted") or ():
        # RFC 3834 §5: keyword, then optional parameters; comments may appear.
        keyword = _COMMENT.sub(" ", str(value)).split(";", 1)[0].strip().lower()
        if keyword != "no":
            return "auto-submitted"
    for name in ("X-Autoreply", "X-Autorespond", "X-Autoresponder"):
        if name in headers:
            return "auto-submitted"

    for value in headers.get_all("Precedence") or ():
        word = str(value).strip().lower()
        if word in _BULK_PRECEDENCE:
            return f"precedence {word}"

    for name in ("List-Id", "List-Post", "List-Unsubscribe"):
        if name in headers:
            return "list mail"

    for value in headers.get_all("X-Auto-Response-Suppress") or ():
        tokens = {t.strip().lower() for t in re.split(r"[,;\s]+", str(value)) if t.strip()}
        if tokens & _SUPPRESS_TOKENS:
            return "auto-response suppressed"
    return None


# --------------------------------------------------------------------------
# The notice

_MSGID = re.compile(r"<[^<>\s]+>")


def _recipient(envelope_sender: str) -> Address:
    addr = _bare_address(envelope_sender)
    try:
        return Address(addr_spec=addr)
    except (ValueError, IndexError, TypeError):
        local, _, domain = addr.rpartition("@")
        return Address(username=local or addr, domain=domain if local else "")


def _text_cte(text: str) -> str:
    return "7bit" if text.isascii() else "quoted-printable"


def build_refusal_notice(*, original_headers: bytes, lst, poster: str, envelope_sender: str, reason: str,
                         now: datetime.datetime, parsed: EmailMessage | None = None) -> bytes:
    """The refusal notice for a refused post, as LF-terminated bytes.

    ``original_headers`` is the refused message's header block (as from
    :func:`listfilter.mail.message.split_message`); ``lst`` is the list's
    snapshot row; ``now`` must be aware. The result is multipart/mixed: the
    notice text and the original headers as ``text/rfc822-headers``. Send it with a NULL envelope
    sender (see the module docstring); check :func:`notice_suppressed` first.
    ``parsed`` is the header block as the caller already parsed it, if it did.
    """
    orig = parsed if parsed is not None else parse_headers(original_headers)
    subject = header_text(orig, "Subject") or ""
    orig_date = header_text(orig, "Date") or ""
    orig_id = _MSGID.findall(header_text(orig, "Message-ID") or "")
    references = _MSGID.findall(header_text(orig, "References") or "")

    text = fill_notice(lst.notice if orig_date else lst.notice_undated, poster=poster,
                       original_subject=subject or "(no subject)", original_date=orig_date, reason=reason)

    msg = EmailMessage(policy=make_policy("\n"))
    msg["From"] = Address(display_name=f"{lst.display_name} (list owner)", addr_spec=owner_address(lst.address))
    msg["To"] = _recipient(envelope_sender)
    title = f"Your message to {lst.address} was not delivered"
    msg["Subject"] = f"{title}: {subject}" if subject else title
    msg["Date"] = now
    msg["Message-ID"] = make_msgid(domain=lst.domain)
    if orig_id:
        msg["In-Reply-To"] = orig_id[0]
        msg["References"] = " ".join([r for r in references if r != orig_id[0]] + [orig_id[0]])
    msg["Auto-Submitted"] = "auto-replied"
    msg.set_content(text, cte=_text_cte(text))

    raw = original_headers.rstrip(b"\r\n")
    try:
        headers_text = raw.decode("ascii")
    except UnicodeDecodeError:
        headers_text = raw.decode("utf-8", "replace")
    headers_text = "\n".join(re.split(r"\r?\n", headers_text)) + "\n"
    msg.add_attachment(headers_text, subtype="rfc822-headers", cte=_text_cte(headers_text),
                       disposition="inline", filename="original-headers.txt")
    return msg.as_bytes()
