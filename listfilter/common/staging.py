"""The staging valve (``redirect_all_to``): where the copies really go, and the header that says
who would have received them. Pure functions, standard library only: the mail side
(:mod:`listfilter.mail.deliver`) and sync's bounce notices (:mod:`listfilter.store.bounces`) use them.
"""

from __future__ import annotations


#: The header a redirected copy carries (the staging valve, ``redirect_all_to``): who would have received it.
REDIRECT_HEADER = "X-Listfilter-Redirected-Recipients"
#: At most this many characters of addresses in it; the rest are counted ("and 40 more").
REDIRECT_HEADER_CAP = 800


def redirected(recipients: list[str], redirect_to: str | None) -> list[str]:
    """Where the copies really go: ``recipients``, or only ``redirect_to`` while the staging valve is on
    (nobody when there was nobody to send to)."""
    if not redirect_to:
        return list(recipients)
    return [redirect_to] if recipients else []


def through_valve(recipients: list[str], message: bytes, redirect_to: str | None) -> tuple[list[str], bytes]:
    """One submission through the staging valve: where it really goes, and the message (naming the real
    ``recipients`` in :data:`REDIRECT_HEADER` while the valve is on)."""
    if not redirect_to:
        return list(recipients), message
    return redirected(recipients, redirect_to), redirect_header(recipients) + message


def redirect_header(recipients: list[str]) -> bytes:
    """The :data:`REDIRECT_HEADER` field (LF-terminated, folded under 78 columns) naming the real
    recipients of a redirected copy: ``3 recipients: a@x, b@y, c@z``, the addresses capped at
    :data:`REDIRECT_HEADER_CAP` characters. Addresses are printed as they are (never a line break)."""
    from .words import plural

    shown, used = [], 0
    for addr in recipients:
        addr = "".join(c for c in addr if c.isprintable() and c != " ")
        if shown and used + len(addr) + 2 > REDIRECT_HEADER_CAP:
            break
        shown.append(addr)
        used += len(addr) + 2
    items = [f"{plural(len(recipients), 'recipient')}:"] + [a + "," for a in shown]
    items[-1] = items[-1].rstrip(",")
    if len(shown) < len(recipients):
        items[-1] += ","
        items += ["and", f"{len(recipients) - len(shown)}", "more"]  # ASCII: any header may carry it
    lines, line = [], f"{REDIRECT_HEADER}:"
    for item in items:
        if len(line) + 1 + len(item) > 78 and line.strip():
            lines.append(line)
            line = ""
        line += " " + item
    lines.append(line)
    return ("\n".join(lines) + "\n").encode("utf-8", "surrogateescape")
