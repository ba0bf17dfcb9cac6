"""Authentication-Results (RFC 8601): what this host's milters found, read from the post.

OpenDKIM (verifying) and OpenDMARC run as milters on the SMTP path
(docs/deliverability.md, "Posters who are who they say") and prepend
Authentication-Results fields under this host's authserv-id::

    Authentication-Results: mx.lists.example.edu; dmarc=pass (p=reject dis=none) header.from=example.edu

:func:`parse` reads one field's value by RFC 8601 §2.2's grammar: comments
(nested, with quoted-pairs) wherever CFWS may stand, quoted strings, an
optional version, ``none`` or several ``; method=result`` results each with
an optional ``reason=`` and ``ptype.property=value`` pairs. Anything else is
:class:`Unreadable`. :func:`dmarc_result` picks the result that decides.

Whose fields count (RFC 8601 §5): only those whose authserv-id is ours,
written as a plain token (a quoted or escaped form is not ours: Postfix's
header_checks could not match it to strip it); and of those, only the
topmost that carries a DMARC result. The milters insert their fields above
everything the message arrived with, so a sender's forgery lies below the
milters' own; Postfix also removes, as the message arrives, every field that
claims our authserv-id (the header_checks table ``postfix-config`` renders).
Fields from anyone else are never read.

Standard library only, no I/O: it runs once per post.
"""

from __future__ import annotations

from collections import namedtuple

#: One result: the method (``dmarc``, lower-cased, no version), its result
#: (lower-cased), the reason (or ""), and the properties as
#: ((ptype, property, value), …), ptype and property lower-cased.
Result = namedtuple("Result", "method result reason properties")

#: One field: the authserv-id as written (unquoted), whether it was a plain
#: token, the version (or None), and its results (() for ``none``).
AuthResults = namedtuple("AuthResults", "authserv_id plain version results")

#: A field longer than this is not one a milter wrote.
LENGTH_LIMIT = 8000

# RFC 2045 tspecials: a token is a run of anything else but space and controls
_TSPECIALS = frozenset('()<>@,;:\\"/[]?=')
_KEYWORD = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_")


class Unreadable(ValueError):
    """The field does not follow RFC 8601's grammar (the message says where)."""


class _Reader:
    """A cursor over one field value, with the grammar's small pieces."""

    def __init__(self, text: str):
        self.text, self.pos = text, 0

    def peek(self) -> str:
        return self.text[self.pos] if self.pos < len(self.text) else ""

    def at_end(self) -> bool:
        return self.pos >= len(self.text)

    def fail(self, what: str, at: int | None = None) -> Unreadable:
        return Unreadable(f"{what} at character {(self.pos if at is None else at) + 1}")

    def cfws(self) -> None:
        """Skip white space and comments; comments nest and hold quoted-pairs (RFC 5322 §3.2.2)."""
        text = self.text
        while self.pos < len(text):
            ch = text[self.pos]
            if ch in " \t\r\n":
                self.pos += 1
            elif ch == "(":
                depth, start = 0, self.pos
                while True:
                    if self.pos >= len(text):
                        raise self.fail("unterminated comment", start)
                    ch = text[self.pos]
                    if ch == "\\":
                        self.pos += 2
                        continue
                    self.pos += 1
                    if ch == "(":
                        depth += 1
                    elif ch == ")":
                        depth -= 1
                        if depth == 0:
                            break
            else:
                return

    def expect(self, ch: str) -> None:
        self.cfws()
        if self.peek() != ch:
            raise self.fail(f"expected {ch!r}")
        self.pos += 1

    def quoted(self) -> str:
        """A quoted-string (at its opening quote), unquoted."""
        out, start = [], self.pos
        self.pos += 1
        while True:
            if self.at_end():
                raise self.fail("unterminated quoted string", start)
            ch = self.text[self.pos]
            if ch == "\\":
                if self.pos + 1 >= len(self.text):
                    raise self.fail("unterminated quoted string", start)
                out.append(self.text[self.pos + 1])
                self.pos += 2
            elif ch == '"':
                self.pos += 1
                return "".join(out)
            else:
                out.append(ch)
                self.pos += 1

    def token(self) -> str:
        start = self.pos
        while not self.at_end() and self.text[self.pos] not in _TSPECIALS and self.text[self.pos] > " ":
            self.pos += 1
        return self.text[start:self.pos]

    def value(self) -> tuple[str, bool]:
        """RFC 2045's value: (text, written as a plain token)."""
        self.cfws()
        if self.peek() == '"':
            return self.quoted(), False
        word = self.token()
        if not word:
            raise self.fail("expected a value")
        return word, True

    def keyword(self, what: str) -> str:
        self.cfws()
        start = self.pos
        while not self.at_end() and self.text[self.pos] in _KEYWORD:
            self.pos += 1
        if self.pos == start:
            raise self.fail(f"expected {what}")
        return self.text[start:self.pos]

    def digits(self) -> str:
        start = self.pos
        while not self.at_end() and self.text[self.pos].isascii() and self.text[self.pos].isdigit():
            self.pos += 1
        return self.text[start:self.pos]

    def pvalue(self) -> str:
        """A property's value: a value, or an address or domain (``local@domain``, ``@domain``).

        Taken up to the next white space, comment or ``;``: real fields carry
        values such as ``header.b=R/+dbaGj`` that are no RFC 2045 token."""
        self.cfws()
        out = []
        if self.peek() == '"':
            out.append(self.quoted())
        start = self.pos
        while not self.at_end() and self.text[self.pos] not in ' \t\r\n;()"':
            self.pos += 1
        out.append(self.text[start:self.pos])
        value = "".join(out)
        if not value:
            raise self.fail("expected a property value")
        return value


def parse(text: str) -> AuthResults:
    """One Authentication-Results field's value; :class:`Unreadable` if it is not one."""
    if len(text) > LENGTH_LIMIT:
        raise Unreadable(f"longer than {LENGTH_LIMIT} characters")
    r = _Reader(text)
    authserv_id, plain = r.value()
    r.cfws()
    version = None
    if r.peek().isascii() and r.peek().isdigit():
        version = r.digits()
    r.cfws()
    if r.at_end():
        raise r.fail("expected ';' and a result, or '; none'")
    results: list[Result] = []
    while not r.at_end():
        r.expect(";")
        r.cfws()
        if r.at_end() and results:
            break  # a trailing ';' after the last result, as some writers leave
        method = r.keyword("a method").lower()
        r.cfws()
        if method == "none" and not results and r.peek() != "=" and r.peek() != "/":
            r.cfws()
            if not r.at_end():
                raise r.fail("nothing may follow 'none'")
            return AuthResults(authserv_id, plain, version, ())
        if r.peek() == "/":
            r.pos += 1
            r.cfws()
            if not r.digits():
                raise r.fail("expected a method version")
        r.expect("=")
        result = r.keyword("a result").lower()
        reason, props = "", []
        while True:
            r.cfws()
            if r.at_end() or r.peek() == ";":
                break
            name = r.keyword("reason= or ptype.property=").lower()
            r.cfws()
            if name == "reason" and r.peek() == "=" and not reason and not props:
                r.pos += 1
                reason = r.value()[0]
                continue
            r.expect(".")
            prop = r.keyword("a property").lower()
            r.expect("=")
            props.append((name, prop, r.pvalue()))
        results.append(Result(method, result, reason, tuple(props)))
    return AuthResults(authserv_id, plain, version, tuple(results))


def authserv_id_of(text: str) -> tuple[str, bool] | None:
    """Just the authserv-id (and whether it is a plain token), or None where even that cannot be read."""
    try:
        return _Reader(text[:LENGTH_LIMIT]).value()
    except Unreadable:
        return None


def is_ours(text: str, authserv_id: str) -> bool:
    """Does this field's value claim our authserv-id, written as a plain token?"""
    found = authserv_id_of(text)
    return found is not None and found[1] and found[0].lower() == authserv_id.lower()


def prop(result: Result, ptype: str, name: str) -> str | None:
    """The first value of ``ptype.name`` in a result, or None."""
    for t, p, v in result.properties:
        if t == ptype and p == name:
            return v
    return None


def normal_domain(domain: str) -> str:
    """A domain as compared here: lower case, no trailing dot, A-labels for an internationalised one."""
    domain = domain.strip().rstrip(".").lower()
    if not domain.isascii():
        try:
            domain = domain.encode("idna").decode("ascii")
        except UnicodeError:
            pass
    return domain


#: What :func:`dmarc_result` found: ``result`` is the DMARC result ("pass", "fail", …) for the
#: From domain, or "" when there is none; ``problem`` says why not, in words, when there is none.
Found = namedtuple("Found", "result problem other_domain")


def dmarc_result(values: list[str], authserv_id: str, from_domain: str) -> Found:
    """The DMARC result our milters gave the From domain, from the post's Authentication-Results values, top first.

    The topmost field with our authserv-id that carries a dmarc result decides
    (fields below it are not read: a sender's forgery lies there); a field of
    ours that cannot be read stops the search, unread, rather than let one
    below it decide. Within the deciding field, the dmarc result whose
    header.from is the From domain counts.
    """
    want = normal_domain(from_domain)
    for text in values:
        if not is_ours(text, authserv_id):
            continue
        try:
            field = parse(text)
        except Unreadable as exc:
            return Found("", f"the Authentication-Results from {authserv_id} cannot be read ({exc})", "")
        dmarcs = [res for res in field.results if res.method == "dmarc"]
        if not dmarcs:
            continue  # OpenDKIM's or an SPF field: the DMARC one is above or below it
        others = []
        for res in dmarcs:
            header_from = prop(res, "header", "from")
            if header_from is not None and normal_domain(header_from) == want:
                return Found(res.result, "", "")
            others.append(header_from or "")
        return Found("", "", others[0] or "(no header.from)")
    return Found("", f"no Authentication-Results from {authserv_id}", "")
