"""listfilter.mail.authres: reading Authentication-Results (RFC 8601), and whose count.

Real fields first: what OpenDKIM 2.11 and OpenDMARC 1.4 wrote on this
machine (tests/integration/test_authenticated_posters.py runs them), and RFC
8601's appendix B examples; then hand-written hostile and broken ones.
"""

from __future__ import annotations

import random

import pytest

from listfilter.mail import authres as A

ID = "mx.lists.example.edu"

#: As the milters wrote them, top first, for a post signed by example.edu (unfolded, as Headers.raw_all gives them).
OPENDMARC = f"{ID}; dmarc=pass (p=reject dis=none) header.from=example.edu"
OPENDMARC_SPF = f"{ID}; spf=fail smtp.mailfrom=example.edu"
OPENDKIM = (f"{ID};\tdkim=pass (2048-bit key; unprotected) header.d=example.edu header.i=@example.edu"
            " header.a=rsa-sha256 header.s=sel header.b=R/+dbaGj;\tdkim-atps=neutral")
OPENDKIM_UNSIGNED = f"{ID}; dkim=none; dkim-atps=neutral"
OPENDMARC_FAIL = f"{ID}; dmarc=fail (p=reject dis=none) header.from=example.edu"

#: RFC 8601 appendix B (and RFC 7601's comment-heavy B.7).
RFC_EXAMPLES = [
    ("example.org 1; none", ("example.org", "1", ())),
    ("example.com; spf=pass smtp.mailfrom=example.net",
     ("example.com", None, (("spf", "pass", "", (("smtp", "mailfrom", "example.net"),)),))),
    ("example.com; auth=pass (cram-md5) smtp.auth=sender@example.net; spf=pass smtp.mailfrom=example.net",
     ("example.com", None, (("auth", "pass", "", (("smtp", "auth", "sender@example.net"),)),
                            ("spf", "pass", "", (("smtp", "mailfrom", "example.net"),))))),
    ("example.com; iprev=pass policy.iprev=192.0.2.200",
     ("example.com", None, (("iprev", "pass", "", (("policy", "iprev", "192.0.2.200"),)),))),
    ("example.com; dkim=pass (good signature) header.d=mail-router.example.net;"
     " dkim=fail (bad signature) header.d=newyork.example.com",
     ("example.com", None, (("dkim", "pass", "", (("header", "d", "mail-router.example.net"),)),
                            ("dkim", "fail", "", (("header", "d", "newyork.example.com"),))))),
    ("foo.example.net (foobar) 1 (baz); dkim (Because I like it) / 1 (One yay) = (wait for it) fail"
     " policy (A dot can go here) . (like that) expired (this surprised me) = (as I wasn't expecting it) 1362471462",
     ("foo.example.net", "1", (("dkim", "fail", "", (("policy", "expired", "1362471462"),)),))),
]


@pytest.mark.parametrize("text,expected", RFC_EXAMPLES)
def test_rfc_examples(text, expected):
    field = A.parse(text)
    assert (field.authserv_id, field.version, field.results) == expected
    assert field.plain


def test_what_the_milters_wrote():
    dmarc = A.parse(OPENDMARC)
    assert dmarc.authserv_id == ID and dmarc.results == (
        A.Result("dmarc", "pass", "", (("header", "from", "example.edu"),)),)
    dkim = A.parse(OPENDKIM)
    assert [r.method for r in dkim.results] == ["dkim", "dkim-atps"]
    assert A.prop(dkim.results[0], "header", "b") == "R/+dbaGj"  # not an RFC 2045 token, but what OpenDKIM writes
    assert A.prop(dkim.results[0], "header", "i") == "@example.edu"
    assert A.parse(OPENDKIM_UNSIGNED).results[0] == A.Result("dkim", "none", "", ())
    assert A.parse(OPENDMARC_SPF).results[0].result == "fail"


@pytest.mark.parametrize("text,results", [
    # case, spacing and comments wherever CFWS may stand
    (f"{ID.upper()};DMARC=PASS HEADER.FROM=example.edu", [("dmarc", "pass", "example.edu")]),
    (f"  (comment) {ID} (another (nested \\) one)) ; dmarc = pass (p=none) header . from = example.edu ",
     [("dmarc", "pass", "example.edu")]),
    (f"{ID}; dmarc=pass header.from=example.edu;", [("dmarc", "pass", "example.edu")]),  # a trailing ';'
    (f"{ID}; dmarc/1=pass header.from=example.edu", [("dmarc", "pass", "example.edu")]),  # a method version
    (f'{ID}; dmarc=fail reason="no \\"key\\"; sorry" header.from=example.edu', [("dmarc", "fail", "example.edu")]),
    (f"{ID}; dmarc=pass header.from=example.edu(no space)", [("dmarc", "pass", "example.edu")]),
    (f"{ID}; spf=pass smtp.mailfrom=\"jane doe\"@example.edu", [("spf", "pass", None)]),
    (f"{ID}; dmarc=pass header.from=Example.EDU.", [("dmarc", "pass", "Example.EDU.")]),
    (f"{ID}; x-custom=pass; dmarc=none header.from=example.edu policy.x=y",
     [("x-custom", "pass", None), ("dmarc", "none", "example.edu")]),
])
def test_lenient_where_the_grammar_allows(text, results):
    field = A.parse(text)
    assert [(r.method, r.result, A.prop(r, "header", "from")) for r in field.results] == results


def test_reason_and_quoted_values():
    [result] = A.parse(f'{ID}; dkim=fail reason="signature (verified) ; bad" header.d="example.edu"').results
    assert result.reason == "signature (verified) ; bad"
    assert A.prop(result, "header", "d") == "example.edu"


@pytest.mark.parametrize("text", [
    "",
    "   ",
    "(only a comment)",
    ID,  # no result at all: RFC 8601 wants "; none" for that
    f"{ID} ;",
    f"{ID};",
    f"{ID}; dmarc",
    f"{ID}; dmarc=",
    f"{ID}; =pass",
    f"{ID}; dmarc=pass header",
    f"{ID}; dmarc=pass header.",
    f"{ID}; dmarc=pass header.from",
    f"{ID}; dmarc=pass header.from=",
    f"{ID}; dmarc=pass header.from=example.edu stray",
    f"{ID}; dmarc=pass (unterminated comment",
    f"{ID}; dmarc=pass ((nested) unterminated",
    f'{ID}; dmarc=pass reason="unterminated',
    f'"{ID}',
    f"{ID}; none extra",
    f"{ID}; dmarc/=pass",
    f"{ID}; dmarc=pass;; dkim=pass",
    f"{ID}; dmarc=pass header.from=a (x\\",
    f"{ID}; dmarc=pass " + "x" * (A.LENGTH_LIMIT + 1),
    f"{ID}; dmarc=pass header.from=example.edu ; dkim=pass header.d=x.example reason=late",
])
def test_unreadable(text):
    with pytest.raises(A.Unreadable):
        A.parse(text)


@pytest.mark.parametrize("text,claims", [
    (OPENDMARC, True),
    (f" (x) {ID.upper()} 1; none", True),
    (f'"{ID}"; dmarc=pass header.from=example.edu', False),  # quoted: not ours (header_checks could not strip it)
    ('"mx.lists.example\\.edu"; dmarc=pass header.from=example.edu', False),
    (f"{ID}.; dmarc=pass header.from=example.edu", False),
    (f"x{ID}; dmarc=pass header.from=example.edu", False),
    (f"{ID}x; dmarc=pass header.from=example.edu", False),
    (f"other.example; dmarc=pass header.from=example.edu ({ID})", False),
    ("(unterminated", False),
])
def test_is_ours(text, claims):
    assert A.is_ours(text, ID) is claims


# ---------------------------------------------------------------- whose result decides


def found(values, domain="example.edu"):
    return A.dmarc_result(values, ID, domain)


def test_the_milters_fields_decide():
    assert found([OPENDMARC, OPENDMARC_SPF, OPENDKIM, "other.example; dkim=pass"]) == A.Found("pass", "", "")
    assert found([OPENDMARC_FAIL, OPENDMARC_SPF, OPENDKIM_UNSIGNED]).result == "fail"
    # OpenDKIM's field above OpenDMARC's (another milter order) changes nothing
    assert found([OPENDKIM, OPENDMARC]).result == "pass"


def test_only_the_topmost_dmarc_result_of_ours_counts():
    """A sender's forgery lies below the milters' own fields: it is never read."""
    forged = f"{ID}; dmarc=pass header.from=example.edu"
    assert found([OPENDMARC_FAIL, OPENDKIM_UNSIGNED, forged]).result == "fail"
    # nor does a forgery of ours that cannot be read let one further down decide
    assert found([f"{ID}; dmarc=pass (broken", forged]).problem.startswith(
        f"the Authentication-Results from {ID} cannot be read")


def test_nobody_elses_fields_count():
    others = ["other.example; dmarc=pass header.from=example.edu",
              f'"{ID}"; dmarc=pass header.from=example.edu',
              f"{ID}.evil.example; dmarc=pass header.from=example.edu",
              f"evil.example; dmarc=pass header.from=example.edu ({ID})"]
    assert found(others) == A.Found("", f"no Authentication-Results from {ID}", "")
    assert found([]) == A.Found("", f"no Authentication-Results from {ID}", "")
    # ours without a DMARC result (OpenDKIM's alone: OpenDMARC did not run)
    assert found([OPENDKIM]).problem == f"no Authentication-Results from {ID}"


def test_the_result_must_be_for_the_from_domain():
    assert found([OPENDMARC], "other.example") == A.Found("", "", "example.edu")
    assert found([f"{ID}; dmarc=pass"]) == A.Found("", "", "(no header.from)")
    # several in one field: the From domain's
    both = f"{ID}; dmarc=pass header.from=other.example; dmarc=fail header.from=example.edu"
    assert found([both]).result == "fail"
    assert found([f"{ID}; dmarc=pass header.from=EXAMPLE.edu."]).result == "pass"


def test_an_internationalised_from_domain():
    assert found([f"{ID}; dmarc=pass header.from=xn--bcher-kva.example"], "bücher.example").result == "pass"
    assert found([f"{ID}; dmarc=pass header.from=bücher.example"], "xn--bcher-kva.example").result == "pass"


def test_random_bytes_never_raise_and_never_pass():
    """Fuzz: random fields built from the grammar's pieces are read or refused, never anything else,
    and none passes unless a dmarc=pass for the From domain in one of ours is really there."""
    rng = random.Random(8601)
    pieces = [ID, ";", " ", "(", ")", "\\", '"', "=", ".", "/", "dmarc", "pass", "fail", "header", "from",
              "example.edu", "none", "1", "\t", "reason", "@", "\u00e9", "\x00", "smtp", "mailfrom"]
    for _ in range(5000):
        text = "".join(rng.choice(pieces) for _ in range(rng.randint(0, 30)))
        try:
            field = A.parse(text)
        except A.Unreadable:
            field = None
        result = A.dmarc_result([text], ID, "example.edu")
        if result.result == "pass":
            assert field is not None and field.plain and field.authserv_id.lower() == ID.lower()
            assert any(r.method == "dmarc" and r.result == "pass" and A.prop(r, "header", "from") == "example.edu"
                       for r in field.results), text


def test_generated_fields_read_back():
    """Fuzz the other way: fields built from random results, with comments and folding white space
    at random wherever RFC 8601 allows CFWS, parse back to exactly those results."""
    rng = random.Random(7601)

    def cfws() -> str:
        return rng.choice(["", "", " ", "\t", "  ", " (a comment) ", "(c (nested) \\) x)", " ( ;=. ) "])

    methods = ["dmarc", "dkim", "spf", "iprev", "auth", "x-local", "dkim-atps"]
    results = ["pass", "fail", "none", "neutral", "temperror", "permerror", "softfail"]
    for _ in range(2000):
        want = []
        text = cfws() + rng.choice([ID, ID.upper(), "other.example"]) + cfws()
        if rng.random() < 0.2:
            text += " 1" + cfws()
        for _ in range(rng.randint(1, 4)):
            method, result = rng.choice(methods), rng.choice(results)
            props = tuple((rng.choice(["header", "smtp", "policy"]), rng.choice(["from", "d", "mailfrom", "b"]),
                           rng.choice(["example.edu", "@example.edu", "a@b.example", "R/+db=", "1.2.3.4"]))
                          for _ in range(rng.randint(0, 3)))
            text += ";" + cfws() + method + cfws() + "=" + cfws() + result
            for ptype, prop, value in props:
                text += rng.choice([" ", "\t", " (x) "]) + ptype + cfws() + "." + cfws() + prop + cfws() + "=" + \
                    rng.choice(["", " "]) + value
            want.append(A.Result(method, result, "", props))
        text += cfws()
        assert A.parse(text).results == tuple(want), text


def test_long_hostile_input_is_linear():
    import time

    start = time.perf_counter()
    for text in (f"{ID}; " + "(" * 3900 + ")" * 3900, f"{ID}; dmarc=pass " + "(" * 7900,
                 f"{ID}; " + "\\(" * 2600, '"' + "\\" * 3900):
        with pytest.raises(A.Unreadable):
            A.parse(text)
        assert A.dmarc_result([text] * 20, ID, "example.edu").problem
    many = f"{ID}; " + "; ".join(f"x{i}=pass header.from=a{i}.example" for i in range(150))
    assert len(A.parse(many).results) == 150
    assert time.perf_counter() - start < 1
