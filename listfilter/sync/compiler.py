"""Compiling config + roster into the snapshot's lists (sync side).

:func:`compile_lists` works out every list on every domain with its members
and posters; :func:`digest` says whether the result differs from what is
installed. The snapshot's format (tables, columns, writing) belongs to
:mod:`listfilter.common.snapshot`.

The refusal notice is rendered here, with Jinja2, once per list: the
per-message fields (poster, subject, date, reason) are left as markers that
the mail side fills in, so ``deliver`` never loads a template engine. So
are a list's other messages (:func:`list_texts`: an opt-in list's
confirmations and answers, a held post's notices), into the snapshot's ``texts`` table.
"""

from __future__ import annotations

import hashlib
import json

from ..common.snapshot import NOTICE_FIELDS, SETTINGS, CompiledList, encode_trusted, notice_marker, summary_line
from . import membership as MB
from . import roster as R

NOTICE_TEMPLATE = "notice-refused.txt.j2"


def compile_lists(config, rows, added: dict | None = None) -> list[CompiledList]:
    """Every list on every domain, computed from config and roster rows.

    ``added`` maps a list address to the members the store keeps for it
    (:data:`listfilter.sync.membership.Added`: extra members, and the joined
    members of an opt-in list), merged with the roster's."""
    with R.bulk():
        return _compile(config, list(rows), added or {})


def _compile(config, rows, added: dict) -> list[CompiledList]:
    grouped = MB.by_course(rows)
    out = []
    # Domains that serve the same course (a dev and a prod domain) share their
    # members and posters: work each out once per course.
    per_course: dict = {}
    for dname, domain in sorted(config.domains.items()):
        if domain.course not in per_course:
            course = rows if domain.course is None else grouped.get(domain.course, [])
            per_course[domain.course] = (MB.CourseIndex(course, config.roster), {})
        index, computed = per_course[domain.course]
        for lst in sorted(config.lists.values(), key=lambda l: l.local_part):
            if dname not in lst.domains:
                continue
            if lst.name not in computed:
                sources: dict[str, str] = {}
                members = index.members(lst, sources)
                allowed = index.posters(lst, members)
                eligible = index.eligible(lst.optin) if lst.optin else None
                # Member is an (email, name) named tuple: sorted by lower-cased address
                computed[lst.name] = (members, allowed, sources, eligible,
                                      tuple(m for _, m in sorted(members.items())), tuple(sorted(allowed)))
            members, allowed, sources, eligible, members_t, posters_t = computed[lst.name]
            address = f"{lst.local_part}@{dname}"
            if added.get(address):
                members, allowed, sources = MB.merge(lst, members, allowed, sources, eligible, added[address])
                members_t, posters_t = tuple(m for _, m in sorted(members.items())), tuple(sorted(allowed))
            rule = lst.posters.describe()
            served = config.for_domain(lst, dname)  # its texts, owners and reply_to on this domain
            notice, undated = refusal_notices(address, served.display_name, served.description, rule,
                                              **_contact(config, served.reply_to))
            out.append(CompiledList(
                address=address,
                name=lst.name,
                local_part=lst.local_part,
                domain=dname,
                display_name=served.display_name,
                description=served.description,
                subject_tag=served.subject_tag,
                title_case_subject=lst.title_case_subject,
                reply_to=served.reply_to,
                owners=served.owners,
                posters_rule=rule,
                exclude_poster=lst.exclude_poster,
                dmarc=lst.dmarc,
                dmarc_always=lst.dmarc_always,
                require_authenticated=lst.require_authenticated,
                redirect_to=config.redirect_for(dname),
                notice=notice,
                notice_undated=undated,
                members=members_t,
                posters=posters_t,
                sources=sources,
                optin=lst.optin is not None,
                join_rule=lst.optin.describe() if lst.optin else "",
                join_approval=bool(lst.optin and lst.optin.approval),
                non_member_posts=lst.non_member_posts,
                non_poster_posts=lst.non_poster_posts,
                hold_days=lst.hold_days,
                unsubscribe_url=unsubscribe_url(config) if lst.optin else "",
                eligible=tuple(sorted(eligible)) if eligible is not None else (),
                texts=list_texts(config, lst, dname, address),
            ))
    return out


def refusal_notices(address: str, display_name: str, description: str, posters_rule: str, *,
                    reply_to: str | None = None, reply_to_name: str = "", reply_to_posters: str = "") -> tuple[str, str]:
    """The refusal notice's text for one list, with and without the original's date.

    ``reply_to`` is the list's contact address for replies (its ``reply_to``),
    named in the notice as a place to write instead unless it is the list
    itself; ``reply_to_name`` and ``reply_to_posters`` describe it when it is
    one of our lists. The per-message fields stay markers (NOTICE_FIELDS).
    """
    from ..common.addresses import owner_address
    from .templating import render

    if reply_to and reply_to.lower() == address.lower():
        reply_to = None  # a reply-to-list list: its contact is the list that refused the post
    context = dict(list_name=display_name, list_address=address, list_description=description,
                   owner_address=owner_address(address), posters_description=posters_rule,
                   reply_to=reply_to or "", reply_to_name=reply_to_name if reply_to else "",
                   reply_to_posters=reply_to_posters if reply_to else "",
                   **{f: notice_marker(f) for f in NOTICE_FIELDS})
    return (render(NOTICE_TEMPLATE, **context),
            render(NOTICE_TEMPLATE, **{**context, "original_date": ""}))


def _contact(config, reply_to: str | None) -> dict[str, str | None]:
    """A list's reply_to address (as its domain serves it), and its name and
    posting rule when it is one of our lists (a student told to write to a
    list they may not post to should be told that too)."""
    if reply_to is None:
        return {"reply_to": None}
    local, _, domain = reply_to.lower().rpartition("@")
    for other in config.lists.values():
        if other.local_part == local and domain in other.domains:
            return {"reply_to": reply_to, "reply_to_name": config.for_domain(other, domain).display_name,
                    "reply_to_posters": other.posters.describe()}
    return {"reply_to": reply_to}


#: The messages of an opt-in list (listfilter.common.snapshot.TEXT_KINDS), sent by listfilter.mail.requests.
OPTIN_TEXTS = ("join-confirm", "leave-confirm", "join-refused", "leave-not-member", "join-pending", "join-admit",
               "request-help")


def list_texts(config, lst, domain: str, address: str) -> dict[str, str]:
    """The messages the mail side sends for one list on one domain ({kind: text}), rendered from
    ``templates/messages/<kind>.txt.j2`` with the per-message fields
    (listfilter.common.snapshot.TEXT_FIELDS) left as markers; only the kinds the list can send."""
    from ..common.snapshot import TEXT_FIELDS
    from .templating import render

    kinds = OPTIN_TEXTS if lst.optin else ()
    if lst.holds_posts:  # and the answer to an owner's reply whose token cannot be used
        kinds += HELD_TEXTS + (() if lst.optin else ("request-help",))
    if not kinds:
        return {}
    return {kind: render(f"messages/{kind}.txt.j2", **message_context(config, lst, domain, address),
                         held_url=held_url(config), **{f: notice_marker(f) for f in TEXT_FIELDS})
            for kind in kinds}


#: A list that holds posts (non_member_posts or non_poster_posts = "hold"): the held post's notices
#: to its poster and to the owners (listfilter.mail.moderation).
HELD_TEXTS = ("held-poster", "held-owners")


def held_url(config) -> str:
    """The admin app's page of held posts, "" without ``[web] url``."""
    return f"{config.web.url}/held" if config.web is not None and config.web.url else ""


def message_context(config, lst, domain: str, address: str) -> dict[str, str]:
    """What every list message's template knows of the list (also sync's welcome and goodbye)."""
    from ..common.addresses import owner_address, request_address, service_address

    served = config.for_domain(lst, domain)
    return dict(list_name=served.display_name, list_address=address, list_description=served.description,
                owner_address=owner_address(address), request_address=request_address(address),
                join_address=service_address(address, "join"), leave_address=service_address(address, "leave"),
                join_rule=lst.optin.describe() if lst.optin else "", confirm_days=str(config.site.confirm_days))


def unsubscribe_url(config) -> str:
    """The base of an opt-in list's one-click unsubscribe links (the admin app's), "" without ``[web] url``."""
    return f"{config.web.url}/unsubscribe" if config.web is not None and config.web.url else ""


def summary(lst: CompiledList) -> str:
    return summary_line(lst.address, len(lst.members), len(lst.posters), lst.posters_rule, lst)


def _postfix_log(postfix) -> str:
    """The ``postfix_log`` setting: the log file, or the journal (mail/handoff.py's JOURNAL form)."""
    if not postfix.journal:
        return str(postfix.log_file)
    return "journal" + (f":{postfix.journal_directory}" if postfix.journal_directory else "")


def site_settings(config) -> dict[str, str]:
    """What the mail side needs from [site] (snapshot.SETTINGS), carried in the
    snapshot's meta table so that `deliver` reads one file and never the config."""
    site = config.site
    values = {
        "timezone": site.timezone,
        "spool_dir": str(site.spool_dir),
        "sendmail": site.sendmail,
        "notice_limit": str(site.notice_limit),
        # for a retry after a kill: did Postfix already take the batch in flight? (mail/handoff.py)
        # ("journal[:DIRECTORY]" when Postfix logs to the systemd journal)
        "postfix_log": _postfix_log(config.postfix),
        "postqueue": str(config.postfix.postqueue),
        # whose Authentication-Results a post's From rests on (mail/rules.py, authenticated); no DNS
        # lookup for the host's name where no list needs it
        "authserv_id": config.authserv_id if config.verify else "",
        "authenticated_trusted": encode_trusted(site.authenticated_trusted),
        # the key that signs join/leave confirmations and owners' decisions (common.tokens)
        "token_key": str(site.token_key),
        "confirm_days": str(site.confirm_days),
    }
    assert tuple(values) == SETTINGS
    return values


def digest(lists: list[CompiledList], settings: dict[str, str], suppressed: dict[str, str] | None = None,
           dmarc: dict | None = None, approved=None) -> str:
    """A content hash: equal digests mean an identical snapshot.

    The members and posters (nearly all of the bytes) are hashed as text
    joined with lone surrogates, which no decoded roster, CSV or TOML string
    can contain, so the encoding is unambiguous; the other fields as JSON.
    """
    from ..common.snapshot import FORMAT

    h = hashlib.sha256(FORMAT.encode())
    h.update(json.dumps(settings, sort_keys=True).encode())
    h.update(json.dumps(sorted((suppressed or {}).items())).encode())
    h.update(json.dumps(sorted(tuple(e) for e in (dmarc or {}).values()), ensure_ascii=False).encode())
    h.update(json.dumps(sorted(tuple(a) for a in (approved or ())), ensure_ascii=False).encode())
    for lst in lists:
        fields = {k: v for k, v in lst._asdict().items() if k not in ("members", "posters")}
        h.update(json.dumps(fields, sort_keys=True, ensure_ascii=False).encode("utf-8", "surrogatepass"))
        h.update("\udcfd".join(["\udcfe".join(map("\udcff".join, lst.members)),
                                 "\udcfe".join(lst.posters), ""]).encode("utf-8", "surrogatepass"))
    return h.hexdigest()
