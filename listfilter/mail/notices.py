"""Whether, and how, to tell a poster that the list refused their message.

Standard library only: ``listfilter-deliver`` imports this per message. The
notice's text was rendered from ``templates/notice-refused.txt.j2`` by sync
(:func:`listfilter.sync.compiler.refusal_notices`) and comes with the list's
snapshot row; only the per-message fields
(:data:`listfilter.common.snapshot.NOTICE_FIELDS`) are filled in here, so the
mail side never loads a template engine.

When a notice must not be sent
------------------------------

:func:`notice_suppressed` follows RFC 3834 §2 (automatic responses) and
RFC 5321 §6.1/§4.5.5 (never answer a null sender). No notice goes

- to a null envelope sender;
- to an address of one of *our* lists, on any of our domains (the post
  address, ``-bounces`` with or without VERP, ``-owner``, ``-request`` and
  the ``-join``/``-leave`` forms), looked up in the snapshot: a list must
  never be answered by a list;
- to a role/robot address anywhere (MAILER-DAEMON, ``*-owner``,
  ``owner-*``, ``*-request``, ``*-bounces``, VERP ``bounce-...`` senders,
  ``noreply``);
- in reply to a message that is itself automatic (``Auto-Submitted`` other
  than ``no``, ``X-Autoreply``/``X-Autorespond``) or bulk (``Precedence:
  bulk|junk|list``);
- in reply to a message that carries a loop marker (``X-Loop``, Mailman's
  ``X-BeenThere``, listfilter's own ``X-Listfilter-Loop``) or any list
  header: RFC 2369's ``List-Help``, ``-Subscribe``, ``-Unsubscribe``,
  ``-Post``, ``-Owner``, ``-Archive``, RFC 8058's ``List-Unsubscribe-Post``,
  RFC 2919's ``List-Id``, ezmlm's ``Mailing-List``, SmartList's
  ``X-Mailing-List``; or whose ``Delivered-To`` names one of our lists;
- when ``X-Auto-Response-Suppress`` says ``All``, ``AutoReply``, ``DR`` or
  ``NDR`` (Microsoft's flag; a refusal notice is a non-delivery report).

``postmaster`` is *not* suppressed: RFC 5321 requires it to reach a human,
and a notice to a human is useful.

Sending
-------

:func:`build_refusal_notice` only builds the bytes. The caller must submit
them with a **null envelope sender** (``sendmail -f '<>'`` or ``-f ''``), as
RFC 3834 §3.3 and RFC 5321 §6.1 require for automatic responses: a notice
that bounces must not produce another notice or bounce. The notice carries
``Auto-Submitted: auto-replied`` (RFC 3834 §5) and no ``Precedence`` header
(RFC 3834 §3.1.8 advises against it). The caller also rate-limits notices
(see :func:`listfilter.common.spool.claim_notice`).

Its size is bounded whatever the refused message held: the original header
block is attached up to :data:`HEADERS_LIMIT` bytes as sent, cut at a header
field (or at least a line) boundary with a line saying how much was left
out, and every per-message field is cut to :data:`FIELD_LIMIT` characters.
"""

from __future__ import annotations

import datetime
import re
from email.headerregistry import Address
from email.message import EmailMessage
from email.utils import make_msgid

from ..common.addresses import owner_address, parse_recipient
from ..common.snapshot import fill_notice
from .headers import LOOP_HEADER
from .message import decode_bytes, header_text, make_policy, parse_headers

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

#: Loop markers that list managers and filters add (procmail and Sympa's X-Loop,
#: Mailman 2's X-BeenThere, our own): a message that has been through one is
#: not a person writing.
LOOP_HEADERS = ("X-Loop", "X-BeenThere", LOOP_HEADER)
#: Headers only list mail carries: RFC 2919 List-Id, RFC 2369's six, RFC 8058's
#: List-Unsubscribe-Post, ezmlm's Mailing-List and SmartList's X-Mailing-List.
LIST_HEADERS = ("List-Id", "List-Help", "List-Subscribe", "List-Unsubscribe", "List-Post", "List-Owner",
                "List-Archive", "List-Unsubscribe-Post", "Mailing-List", "X-Mailing-List")
def _bare_address(envelope_sender: str) -> str:
    addr = envelope_sender.strip()
    if addr.startswith("<") and addr.endswith(">"):
        addr = addr[1:-1].strip()
    return addr


def our_list(address: str, is_list) -> str | None:
    """The list of ours that ``address`` is one of the addresses of, or None.

    ``is_list`` takes a lower-cased list address and says whether the
    snapshot has it (``Snapshot.get_list`` will do); the address forms are
    :mod:`listfilter.common.addresses`'s.
    """
    target = parse_recipient(address)  # -join and -leave too, whether or not the list is opt-in
    if target is None:
        return None
    return target.list_address if is_list(target.list_address) else None


def notice_suppressed(envelope_sender: str, headers, is_list=None) -> str | None:
    """Why no notice may be sent for this message, or None if one may.

    ``headers`` is the parsed header block (anything with ``in`` and
    ``get_all``); ``is_list``, if given, says whether a lower-cased address
    is one of our lists (see :func:`our_list`), so this stays a pure
    function of its arguments. Reasons (stable strings, in the order they
    are checked): ``"null sender"``, ``"list address"`` (the sender is one of
    our lists' addresses), ``"role address"``, ``"auto-submitted"``,
    ``"precedence bulk"`` (``junk``, ``list``, ``auto_reply``), ``"loop
    header"``, ``"list mail"``, ``"delivered to a list"`` (Delivered-To names
    one of our lists), ``"auto-response suppressed"``; and ``"address too
    long"`` for a sender no To line can hold (RFC 5321 §4.5.3.1.3: 256 octets
    at most for a path).
    """
    addr = _bare_address(envelope_sender or "")
    if len(addr.encode("utf-8", "surrogateescape")) > 900:
        return "address too long"
    if not addr:
        return "null sender"
    if is_list is not None and our_list(addr, is_list):
        return "list address"
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

    if any(name in headers for name in LOOP_HEADERS):
        return "loop header"
    if any(name in headers for name in LIST_HEADERS):
        return "list mail"
    if is_list is not None:
        # Postfix's local(8) and pipe(8) (flag D) add Delivered-To: a message
        # that was delivered to one of our lists before is list mail.
        for value in headers.get_all("Delivered-To") or ():
            if our_list(str(value), is_list):
                return "delivered to a list"

    for value in headers.get_all("X-Auto-Response-Suppress") or ():
        tokens = {t.strip().lower() for t in re.split(r"[,;\s]+", str(value)) if t.strip()}
        if tokens & _SUPPRESS_TOKENS:
            return "auto-response suppressed"
    return None


# --------------------------------------------------------------------------
# The notice

#: The original header block is attached up to this many bytes.
HEADERS_LIMIT = 16 * 1024
#: Each per-message field (subject, date, address, reason) is cut to this many characters.
FIELD_LIMIT = 300
#: In-Reply-To and References name at most this many of the original's message ids.
REFERENCES_LIMIT = 10
#: What :data:`listfilter.common.snapshot.NOTICE_FIELDS`'s ``poster`` says when
#: the From header named no single valid address (the reason says which way).
NO_ADDRESS = "(none: the From line does not name one address for certain)"

# A message id no longer than a folded header line can hold (RFC 5322 §2.1.1)
_MSGID = re.compile(r"<[^<>\s]{1,250}>")
_CONTROLS = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")


def _recipient(envelope_sender: str) -> Address:
    addr = _bare_address(envelope_sender)
    try:
        return Address(addr_spec=addr)
    except (ValueError, IndexError, TypeError):
        local, _, domain = addr.rpartition("@")
        return Address(username=local or addr, domain=domain if local else "")


def text_cte(text: str) -> str:
    """7bit where RFC 5322 allows it (ASCII, lines of at most 998), else quoted-printable."""
    if text.isascii() and all(len(line) <= 998 for line in text.split("\n")):
        return "7bit"
    return "quoted-printable"


def field_line(value: str | None) -> str:
    """A per-message field on one line, at most :data:`FIELD_LIMIT` characters (every notice's, and the
    held post's and the requests' answers)."""
    text = " ".join(_CONTROLS.sub(" ", value or "").split())
    return text if len(text) <= FIELD_LIMIT else text[:FIELD_LIMIT - 1] + "…"


def _cut_point(raw: bytes, limit: int) -> int:
    """Where to cut ``raw`` to at most ``limit`` bytes: after the last whole
    header field that fits, else after the last whole line, else at a UTF-8
    character boundary within the line."""
    line_end = raw.rfind(b"\n", 0, limit)
    end = line_end
    while end > 0 and raw[end + 1:end + 2] in (b" ", b"\t"):  # the next line continues this field
        end = raw.rfind(b"\n", 0, end)
    if end > 0:
        return end + 1
    if line_end >= 0:
        return line_end + 1
    cut = limit
    while cut > 0 and 0x80 <= raw[cut] < 0xC0:  # not inside a UTF-8 sequence
        cut -= 1
    return cut


def attached_headers(header_block: bytes, limit: int = HEADERS_LIMIT) -> str:
    """The original header block as the text the notice attaches: LF line
    endings, each line decoded as mail clients do, control characters as
    spaces, and at most ``limit`` bytes of it with a last line saying how
    much was left out."""
    raw = header_block.rstrip(b"\r\n")
    note = ""
    if len(raw) > limit:
        cut = _cut_point(raw, limit)
        rest = raw[cut:]
        lines = rest.count(b"\n") + 1
        note = (f"[{len(rest):,} more bytes of the original headers ({lines:,} lines)"
                f" were left out of this notice]\n")
        raw = raw[:cut].rstrip(b"\r\n")
    text = "".join(_CONTROLS.sub(" ", decode_bytes(line.removesuffix(b"\r"))) + "\n"
                   for line in raw.split(b"\n")) if raw else ""
    return text + note


def _attachment(header_block: bytes) -> str:
    """:func:`attached_headers`, cut further when quoted-printable (which
    writes a non-ASCII byte as three) would take it past :data:`HEADERS_LIMIT`
    as sent."""
    text = attached_headers(header_block)
    if text_cte(text) == "7bit":
        return text
    data = text.encode("utf-8")
    sent = len(data) + 2 * sum(1 for b in data if b >= 0x80 or b == 0x3D)  # "=XX"
    if sent <= HEADERS_LIMIT:
        return text
    return attached_headers(header_block, HEADERS_LIMIT * HEADERS_LIMIT // sent)


def _message_ids(text: str | None) -> list[str]:
    return _MSGID.findall(text[:64 * 1024]) if text else []


def text_message(row, *, sender: Address, to: list[str], subject: str, text: str, now: datetime.datetime,
                 auto: str = "auto-replied", in_reply_to: str = "", reply_to: str = "") -> bytes:
    """One of the list's own plain-text messages (an answer to a request, a held post's notices) as
    LF-terminated bytes: From ``sender`` (the list's -request or -owner address), marked
    ``Auto-Submitted`` (RFC 3834 §5); the caller sends it with the null envelope sender."""
    msg = EmailMessage(policy=make_policy("\n"))
    msg["From"] = sender
    msg["To"] = ", ".join(to)
    if reply_to:
        msg["Reply-To"] = reply_to
    msg["Subject"] = subject
    msg["Date"] = now
    msg["Message-ID"] = make_msgid(domain=row.domain)
    if in_reply_to:
        msg["In-Reply-To"] = in_reply_to
        msg["References"] = in_reply_to
    msg["Auto-Submitted"] = auto
    msg.set_content(text, cte=text_cte(text))
    return msg.as_bytes()


def build_refusal_notice(*, original_headers: bytes, lst, poster: str | None, envelope_sender: str, reason: str,
                         now: datetime.datetime, parsed=None) -> bytes:
    """The refusal notice for a refused post, as LF-terminated bytes.

    ``original_headers`` is the refused message's raw header block; ``lst``
    is the list's snapshot row; ``poster`` is the From address that was
    checked (None or "" when the From header named no single valid address);
    ``reason`` is the rule's reason in words; ``now`` must be aware;
    ``parsed`` is the header block as the caller already parsed it, if it
    did. The result is multipart/mixed: the notice text and the original
    headers (capped, see :func:`attached_headers`) as ``text/rfc822-headers``.
    Send it with a NULL envelope sender (see the module docstring); check
    :func:`notice_suppressed` first.
    """
    orig = parsed if parsed is not None else parse_headers(original_headers)
    subject = field_line(header_text(orig, "Subject"))
    orig_date = field_line(header_text(orig, "Date"))
    orig_id = _message_ids(header_text(orig, "Message-ID"))[:1]
    references = [r for r in _message_ids(header_text(orig, "References")) if r not in orig_id]

    text = fill_notice(lst.notice if orig_date else lst.notice_undated, poster=field_line(poster) or NO_ADDRESS,
                       original_subject=subject or "(no subject)", original_date=orig_date,
                       reason=field_line(reason))

    msg = EmailMessage(policy=make_policy("\n"))
    msg["From"] = Address(display_name=f"{lst.display_name} (list owner)", addr_spec=owner_address(lst.address))
    to = _recipient(envelope_sender)
    if to.addr_spec.isascii():
        msg["To"] = to
    else:
        # An SMTPUTF8 sender (RFC 6531): the address can only be written as UTF-8 (RFC 6532 §3.2),
        # never as encoded words (RFC 2047 §5), which is what the folder would make of it. Stored
        # raw, as a header the parser read, it is written back as its UTF-8 bytes.
        msg.set_raw("To", to.addr_spec.encode("utf-8", "surrogateescape").decode("ascii", "surrogateescape"))
    title = f"Your message to {lst.address} was not delivered"
    msg["Subject"] = f"{title}: {subject}" if subject else title
    msg["Date"] = now
    msg["Message-ID"] = make_msgid(domain=lst.domain)
    if orig_id:
        # RFC 5322 §3.6.4; a long References is trimmed to its last ids, as clients do
        msg["In-Reply-To"] = orig_id[0]
        msg["References"] = " ".join(references[-(REFERENCES_LIMIT - 1):] + orig_id)
    msg["Auto-Submitted"] = "auto-replied"
    msg.set_content(text, cte=text_cte(text))

    headers_text = _attachment(original_headers)
    msg.add_attachment(headers_text, subtype="rfc822-headers", cte=text_cte(headers_text),
                       disposition="inline", filename="original-headers.txt")
    return msg.as_bytes()
