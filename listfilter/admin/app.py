"""The admin pages: ``/email``, the mail log for the course staff (Flask, served by waitress).

``listfilter web`` serves :func:`create_app` with waitress. Every page but the
login form needs an authenticated user who passes :func:`listfilter.auth.allowed`:

- behind a single sign-on proxy, the user's address arrives in
  ``[web] proxy_header``, believed only from the ``[web] proxies`` addresses;
- standalone, ``[web] accounts_file`` (and ``[web.accounts]``) holds password
  hashes (:class:`listfilter.admin.auth.Accounts`); ``/login`` starts a
  session kept on the server (:class:`listfilter.admin.auth.Sessions`) whose
  id travels in a signed cookie (HttpOnly, SameSite=Lax, Secure over HTTPS).

Who the proxy is, and so whether X-Forwarded-For, X-Forwarded-Proto and the
user header are believed, is decided once per request by :class:`_Forwarded`
from ``[web] proxies`` and, when set, the shared secret the proxy sends.
waitress is told to pass those headers through untouched: its own
``trusted_proxy`` names one address, where ``proxies`` holds networks.

Every POST but the one-click unsubscribe link's carries a CSRF token bound to the session. Pages contain no
JavaScript (the Content-Security-Policy forbids it): a row opens in place with
``<details>``, and a message body is shown as escaped text, never as HTML.
The app reads the store, and the spool's directory listing to say when
the log is behind; it writes only the changes an instructor makes to a list's
extra members (``/lists/<address>/members``, a POST, through
:mod:`listfilter.store.membership`), an owner's admit or deny of a join that
waits for one (``/lists/<address>/joins``, a POST, through
:func:`listfilter.store.requests.owner_decision`), an owner's decision on a held post
(``/held/<id>``, a POST, through :mod:`listfilter.store.moderation`; sync
releases an approved one), and the leave an opt-in list's one-click link asks
for (``/unsubscribe/<token>``, a POST: RFC 8058's, the one route with neither
sign-in nor CSRF token, :data:`PUBLIC_ENDPOINTS`; its signed token is the
proof). It never writes on a GET; moving the spool into the store
is sync's job (cron), so the app can run as a user of its own (docs/web.md).
Its own session file is written by sign-in and sign-out (POSTs) only.
"""

from __future__ import annotations

import email.parser
import email.policy
import hmac
import logging
import secrets
import sqlite3
import threading
import time
import zoneinfo
from datetime import timedelta
from pathlib import Path

from flask import Flask, abort, g, has_request_context, redirect, render_template, request, session, url_for
from flask.sessions import SecureCookieSessionInterface
from itsdangerous import URLSafeTimedSerializer

from ..common.events import MEANINGS, STATUSES, valid_id
from ..common.spool import pending_events
from ..common.words import plural
from ..store import database as ST
from ..store import deliveries as DV
from ..store import membership as MS
from ..store.database import CONTROL_CHARS as _CONTROL, oneline
from ..sync.config import Config, WebSettings
from ..sync.templating import template_dir
from . import auth as A

log = logging.getLogger("listfilter.web")
log.addHandler(logging.NullHandler())

#: Body text fetched for a row on the list page (the permalink shows all of it).
LIST_BODY_CHARS = 16 * 1024
#: Recipients shown for a row on the list page.
LIST_RECIPIENTS = 200
#: The /email page's ``members`` filter (:data:`listfilter.store.deliveries.MEMBER_FILTERS`), as the form names it.
MEMBER_FILTER_LABELS = {
    "deferred": "a member deferred",
    "bounced": "a member bounced",
    "expired": "a member expired",
    "not-sent": "a member not sent (deferred, bounced or expired)",
}
assert tuple(MEMBER_FILTER_LABELS) == tuple(DV.MEMBER_FILTERS)
#: Membership changes shown on a list's members page (newest first).
MEMBER_CHANGES = 50
#: Decided held posts shown under the waiting ones (newest first).
HELD_DECIDED = 50
#: Failed sign-ins per client address (the real client, behind the proxy) before a pause.
LOGIN_ATTEMPTS = 10
LOGIN_WINDOW = 300.0

#: The routes anyone may use, without a sign-in or a CSRF token: the one-click unsubscribe link's
#: (RFC 8058 §3.1: the mail client's POST carries no cookie and no form token; the link's signed token,
#: per member and list, is what proves it). Every other route stays behind the gate.
PUBLIC_ENDPOINTS = ("unsubscribe_page", "unsubscribe_post")

CSP = ("default-src 'none'; style-src 'unsafe-inline'; img-src 'self' data:; form-action 'self';"
       " frame-ancestors 'none'; base-uri 'none'")



class WebError(Exception):
    """The web app cannot start; one line for the operator."""


class _App(Flask):
    def select_jinja_autoescape(self, filename):
        # our templates are *.html.j2: escape them all (Flask only knows .html)
        return filename is None or filename.endswith((".html", ".html.j2", ".j2"))


class _Sessions(SecureCookieSessionInterface):
    """Cookies signed with the current secret (:class:`SecretKey`), Secure whenever the request came over HTTPS."""

    def __init__(self, key: SecretKey):
        self.key = key

    def get_signing_serializer(self, app):
        return URLSafeTimedSerializer(self.key.current(), salt=self.salt, serializer=self.serializer,
                                      signer_kwargs={"key_derivation": self.key_derivation,
                                                     "digest_method": self.digest_method})

    def get_cookie_secure(self, app):
        return (has_request_context() and request.is_secure) or super().get_cookie_secure(app)


class _Forwarded:
    """WSGI middleware: believe the proxy's headers only from the proxy, and say who the client is.

    A request is from the proxy when its peer is in ``[web] proxies`` and, with
    ``proxy_secret_env``, it carries the secret in :data:`auth.PROXY_SECRET_HEADER`
    (compared in constant time, then removed). From the proxy,
    X-Forwarded-Proto sets the scheme (so the cookie is Secure behind an
    HTTPS proxy) and X-Forwarded-For names the client; from anyone else those
    headers are dropped, and so is the user header.
    """

    FORWARDED = ("HTTP_X_FORWARDED_FOR", "HTTP_X_FORWARDED_PROTO", "HTTP_X_FORWARDED_HOST",
                 "HTTP_X_FORWARDED_PORT", "HTTP_X_FORWARDED_BY", "HTTP_FORWARDED")

    def __init__(self, app, web: WebSettings, secret: bytes | None):
        self.app, self.web, self.secret = app, web, secret
        self.secret_key = "HTTP_" + A.PROXY_SECRET_HEADER.upper().replace("-", "_")
        self.user_key = "HTTP_" + web.proxy_header.upper().replace("-", "_") if web.proxy_header else None

    def __call__(self, environ, start_response):
        peer = environ.get("REMOTE_ADDR")
        trusted = A.trusted_proxy(self.web, peer, environ.pop(self.secret_key, None), self.secret)
        environ["listfilter.proxy"] = trusted
        environ["listfilter.client"] = A.client_address(self.web, peer, environ.get("HTTP_X_FORWARDED_FOR"),
                                                        trusted)
        if trusted:
            proto = environ.get("HTTP_X_FORWARDED_PROTO", "").split(",")[-1].strip().lower()
            if proto in ("http", "https"):
                environ["wsgi.url_scheme"] = proto
        else:
            for key in self.FORWARDED:
                environ.pop(key, None)
            if self.user_key and environ.pop(self.user_key, None) is not None:
                log.warning("ignoring %s from %s: not the configured proxy", self.web.proxy_header, peer)
        return self.app(environ, start_response)


class SecretKey:
    """The cookie-signing secret, re-read when its file changes: rotating it signs everyone out, no restart.

    From ``$LISTFILTER_WEB_SECRET`` if set (fixed for the life of the
    process), else from the secret file, whose inode, mtime and size are
    compared on every request. The file is made at start-up (mode 0600); if
    it is deleted, no cookie is valid (an in-memory key) until the next
    sign-in, a POST, makes a new one. A GET never writes it.
    """

    def __init__(self, web: WebSettings):
        import os

        self.path = web.secret_file
        value = os.environ.get(web.secret_env, "")
        if value and len(value) < 16:
            raise WebError(f"${web.secret_env} is too short (at least 16 characters)")
        self.fixed = value.encode() if value else None
        self._stamp, self._key = None, b""
        self._lock = threading.Lock()
        if self.fixed is None:
            self.ensure()

    def current(self) -> bytes:
        if self.fixed is not None:
            return self.fixed
        try:
            st = self.path.stat()
            stamp = (st.st_ino, st.st_mtime_ns, st.st_size)
        except FileNotFoundError:
            stamp = None
        except OSError as exc:
            raise WebError(f"cannot read the session secret {self.path}: {exc.strerror}") from None
        with self._lock:
            if stamp != self._stamp or not self._key:
                key = None
                if stamp is not None:
                    try:
                        key = self.path.read_bytes().strip() or None
                    except FileNotFoundError:
                        pass
                    except OSError as exc:
                        raise WebError(f"cannot read the session secret {self.path}: {exc.strerror}") from None
                self._stamp, self._key = stamp, key or secrets.token_bytes(32)
            return self._key

    def ensure(self) -> None:
        """Make the secret file if it is missing or empty (start-up, and a sign-in's POST)."""
        if self.fixed is not None:
            return
        try:
            if self.path.read_bytes().strip():
                return
            self.path.unlink()  # empty: replace it
        except FileNotFoundError:
            pass
        except OSError as exc:
            raise WebError(f"cannot read the session secret {self.path}: {exc.strerror}") from None
        _new_secret(self.path)


def _new_secret(path: Path) -> bytes:
    import os

    key = secrets.token_hex(32).encode()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as fh:
            fh.write(key + b"\n")
    except FileExistsError:
        return path.read_bytes().strip()
    except OSError as exc:
        raise WebError(f"cannot create the session secret {path}: {exc.strerror}") from None
    return key


def body_view(text: str | None) -> dict:
    """What to show of a stored body: readable text parts, attachment names, the source.

    The store keeps the message body as received (no headers). A multipart
    body names its boundary on its first line, so its parts can be decoded;
    a single-part body is shown as it is. HTML is only ever shown as text.
    """
    if not text:
        return {"parts": [], "attachments": [], "source": text or "", "decoded": False}
    first = next((l for l in text.splitlines() if l.strip()), "")
    if first.startswith("--") and 2 < len(first.strip()) <= 200 and '"' not in first:
        boundary = first.strip()[2:]
        try:
            msg = email.parser.Parser(policy=email.policy.default).parsestr(
                f'Content-Type: multipart/mixed; boundary="{boundary}"\n\n{text}')
            parts, attachments = readable_parts(msg)
            if parts or attachments:
                return {"parts": parts, "attachments": attachments, "source": text, "decoded": True}
        except Exception:  # a body that only looks multipart: show it as it is
            pass
    return {"parts": [("text", text)], "attachments": [], "source": text, "decoded": False}


def held_view(message: bytes) -> dict:
    """What the held post page shows of a stored message: its header lines and its readable text
    parts (HTML only ever as text), the names of its attachments, and the source."""
    from email import message_from_bytes

    head = message.replace(b"\r\n", b"\n").partition(b"\n\n")[0].decode("utf-8", "replace")
    unfolded = head.replace("\n ", " ").replace("\n\t", " ")  # RFC 5322 §2.2.3
    headers = [oneline(line) for line in unfolded.split("\n") if line.strip()]
    try:
        parts, attachments = readable_parts(message_from_bytes(message, policy=email.policy.default))
    except Exception:  # a message the parser cannot take apart: its source is all there is
        parts, attachments = [], []
    source = message[:LIST_BODY_CHARS * 16].decode("utf-8", "replace")
    return {"headers": headers, "parts": parts, "attachments": attachments, "source": source}


def readable_parts(msg) -> tuple[list[tuple[str, str]], list[str]]:
    """A parsed message's text parts, as (label, text) (its HTML parts, as text, only when it has no
    plain text), and the names of the rest (attachments, other types)."""
    parts, html, attachments = [], [], []
    for part in msg.walk():
        if part.is_multipart():
            continue
        ctype = part.get_content_type()
        if part.get_filename() or part.get_content_disposition() == "attachment":
            attachments.append(oneline(part.get_filename() or ctype))
        elif ctype == "text/plain":
            parts.append(("text", part.get_content()))
        elif ctype == "text/html":
            html.append(("HTML, shown as text", part.get_content()))
        else:
            attachments.append(ctype)
    return parts or html, attachments


#: Events older than this still waiting in the spool mean sync is not ingesting them.
BACKLOG_AGE = 3600


def backlog_warning(spool_dir: Path, now: float | None = None) -> str | None:
    """A warning when events wait in the spool for longer than :data:`BACKLOG_AGE` (reads only)."""
    try:
        waiting = pending_events(spool_dir)
        oldest = min((p.stat().st_mtime for p in waiting), default=None)
    except OSError:
        return None
    if oldest is None or (now or time.time()) - oldest < BACKLOG_AGE:
        return None
    verb = "has" if len(waiting) == 1 else "have"
    return (f"{plural(len(waiting), 'event')} {verb} waited in the spool for over an hour: the log is behind."
            " Is `listfilter sync` running from cron?")


def _installed_members(config: Config, address: str) -> tuple[list[tuple[str, str, str]], str | None]:
    """(email, name, source) of the list's members in the installed snapshot, and why there are none."""
    from ..common.snapshot import Snapshot, SnapshotError

    try:
        with Snapshot(config.site.snapshot_path) as snap:
            if snap.get_list(address) is None:
                return [], "The installed snapshot has no such list yet: it appears at the next sync."
            return snap.members_with_sources(address), None
    except SnapshotError as exc:
        return [], f"The installed snapshot cannot be read ({exc}): run listfilter sync."


def _installed_counts(config: Config) -> dict[str, int]:
    """Each list's member count in the installed snapshot (none without one)."""
    from ..common.snapshot import Snapshot, SnapshotError

    try:
        with Snapshot(config.site.snapshot_path) as snap:
            return {row.address: row.member_count for row in snap.lists()}
    except SnapshotError:
        return {}


def _optin_lists(config: Config) -> dict[str, str]:
    """Every opt-in list address of the config -> its display name there."""
    return {f"{lst.local_part}@{d}": config.for_domain(lst, d).display_name
            for lst in config.lists.values() if lst.optin is not None for d in lst.domains}


def create_app(config: Config) -> Flask:
    """The Flask application for one config (checked: raises WebError if it cannot work)."""
    web = config.web
    if web is None:
        raise WebError("no [web] table in the config (docs/web.md)")
    try:
        web = A.with_accounts(web)  # the accounts file's too, re-read when it changes
    except A.AccountsFileError as exc:
        raise WebError(str(exc)) from None
    if A.no_way_in(web, web.accounts):
        raise WebError(A.no_way_in(web, web.accounts))
    try:
        proxy_secret = A.proxy_secret(web)
    except ValueError as exc:
        raise WebError(str(exc)) from None
    key = SecretKey(web)
    sessions = A.Sessions(web.session_file)
    if web.accounts:
        try:
            sessions.create()
        except OSError as exc:
            raise WebError(f"cannot create the session file {web.session_file}: {exc.strerror}") from None
        except sqlite3.Error as exc:  # a file that is not a database
            raise WebError(f"cannot use the session file {web.session_file}: {exc}") from None
    app = _App(__name__, template_folder=str(template_dir()), static_folder=None)
    app.session_interface = _Sessions(key)
    app.wsgi_app = _Forwarded(app.wsgi_app, web, proxy_secret)
    app.config.update(
        SECRET_KEY=secrets.token_bytes(32),  # not the cookie's: _Sessions signs with key.current()
        SESSION_COOKIE_NAME="listfilter_session",
        SESSION_COOKIE_HTTPONLY=True,
        SESSION_COOKIE_SAMESITE="Lax",
        PERMANENT_SESSION_LIFETIME=timedelta(hours=web.session_hours),
        # the end is fixed at sign-in (the server's session row); no request moves it
        SESSION_REFRESH_EACH_REQUEST=False,
        MAX_CONTENT_LENGTH=64 * 1024,
    )
    app.jinja_env.filters["oneline"] = oneline
    app.jinja_env.globals["meanings"] = MEANINGS  # the status legend, in the macros too
    app.jinja_env.globals["outcome_meanings"] = DV.MEANINGS  # each member's outcome (Postfix's log)
    app.jinja_env.globals["outcome_summary"] = DV.summary
    tz = zoneinfo.ZoneInfo(config.site.timezone)
    app.jinja_env.filters["localtime"] = lambda t: t.astimezone(tz).strftime("%Y-%m-%d %H:%M %Z")
    app.jinja_env.filters["isotime"] = lambda t: t.astimezone(tz).isoformat()
    roles = A.Roles(web.roles_file)

    def render(template: str, http_status: int = 200, **context):
        context.setdefault("user", getattr(g, "user", None))
        context.setdefault("via", getattr(g, "via", None))
        context.setdefault("csrf", csrf_token())
        context.setdefault("statuses", STATUSES)
        return render_template(template, **context), http_status

    def csrf_token() -> str:
        if "csrf" not in session:
            session["csrf"] = secrets.token_urlsafe(32)
        return session["csrf"]

    def problem(status: int, title: str, detail: str):
        return render("web/error.html.j2", status, title=title, detail=detail,
                      login=bool(web.accounts) and status == 401)

    @app.before_request
    def gate():
        proxy = request.environ.get("listfilter.proxy", False)
        if request.endpoint in PUBLIC_ENDPOINTS:  # the one-click link: its token is all it needs (RFC 8058)
            return None
        if request.method == "POST":
            sent = request.form.get("csrf_token", "")
            expected = session.get("csrf", "")
            if not expected or not hmac.compare_digest(sent.encode(), expected.encode()):
                return problem(400, "Bad request", "The form has expired or did not come from this site."
                                                   " Reload the page and try again.")
        g.user = g.via = None
        if web.proxy_header and proxy:  # _Forwarded removed the header from anyone else
            value = oneline(request.headers.get(web.proxy_header, "")).lower()
            if value:
                g.user, g.via = value, "proxy"
        if g.user is None and web.accounts and session.get("sid"):
            user = sessions.user_of(session["sid"])
            if user in web.accounts:
                g.user, g.via = user, "password"
        if request.endpoint in ("login", "logout"):
            return None
        if g.user is None:
            if web.accounts and request.method == "GET":
                return redirect(url_for("login", next=request.full_path.rstrip("?")))
            return problem(401, "Sign-in required", "These pages are for the course staff."
                           + (" Sign in first." if web.accounts else " Sign in through the campus single sign-on."))
        if not A.allowed(web, roles, g.user, g.via):
            log.warning("refused %s (%s): not an instructor or admin", g.user, g.via)
            return problem(403, "Not allowed", f"{g.user} is not an instructor of this course"
                                               " nor one of the site's admins.")
        try:
            g.store = ST.open_store(config.store)
            g.store.require_current()
        except ST.StoreError as exc:
            log.error("%s", exc)
            return problem(503, "Mail log unavailable", str(exc))
        g.ingest_warning = backlog_warning(config.site.spool_dir)
        return None

    staging = config.staging_note()  # the staging valve, on every page while it is on

    @app.context_processor
    def staging_banner():
        return {"staging_note": staging}

    @app.teardown_request
    def close_store(exc=None):
        store = g.pop("store", None)
        if store is not None:
            store.close()

    @app.after_request
    def headers(response):
        response.headers["Content-Security-Policy"] = CSP
        response.headers["X-Content-Type-Options"] = "nosniff"
        response.headers["Referrer-Policy"] = "same-origin"
        response.headers["X-Frame-Options"] = "DENY"
        response.headers["Cache-Control"] = "no-store"
        return response

    @app.get("/")
    def index():
        return redirect(url_for("email_list"))

    @app.get("/email")
    def email_list():
        store: ST.Store = g.store
        status = request.args.get("status", "")
        status = status if status in STATUSES else ""
        lists = dict(store.list_addresses())
        lst = request.args.get("list", "").lower()
        lst = lst if lst in lists else ""
        members = request.args.get("members", "")
        if members and members not in DV.MEMBER_FILTERS:
            return problem(400, "Bad request", f"members={oneline(members)[:40]!r} is not a filter;"
                                               f" use one of: {', '.join(DV.MEMBER_FILTERS)}.")
        try:
            page = max(1, int(request.args.get("page", "1")))
        except ValueError:
            page = 1
        filters = {"status": [status] if status else None, "lists": [lst] if lst else None,
                   "members": DV.MEMBER_FILTERS.get(members)}
        total = store.count(**filters)
        pages = max(1, -(-total // web.page_size))
        page = min(page, pages)
        entries = store.entries(**filters, limit=web.page_size, offset=(page - 1) * web.page_size,
                                body_chars=LIST_BODY_CHARS)
        args = {k: v for k, v in (("status", status), ("list", lst), ("members", members)) if v}
        return render("web/email_list.html.j2", entries=entries, total=total, page=page, pages=pages,
                      current_status=status, lst=lst, lists=lists, args=args, body_view=body_view,
                      members=members, member_filters=MEMBER_FILTER_LABELS,
                      outcomes=DV.counts(store, [e.id for e in entries]),
                      list_body_chars=LIST_BODY_CHARS, list_recipients=LIST_RECIPIENTS,
                      ingest_warning=g.ingest_warning)

    @app.get("/email/<ident>")
    def email_detail(ident):
        if not valid_id(ident):
            abort(404)
        ident = ident.lower()
        entry = g.store.get(ident)
        if entry is None:
            abort(404)
        deliveries = DV.of_event(g.store, ident)
        counts: dict[str, int] = {}
        for d in deliveries:
            counts[d.status] = counts.get(d.status, 0) + 1
        read = {d.recipient for d in deliveries}
        return render("web/email_detail.html.j2", e=entry, body=body_view(entry.body),
                      ingest_warning=g.ingest_warning, deliveries=deliveries, outcome=counts,
                      unread=[r for r in entry.recipients if r.lower() not in read]
                      if entry.status == "delivered" or deliveries else [],
                      reinjections=DV.reinjections(g.store, ident))

    @app.get("/bounces")
    def bounce_list():
        """Bounce scores and suppressed addresses, as the store has them (sync scores; this only reads)."""
        from ..store import bounces as B

        notices = {n.address: n for n in B.notices(g.store)}  # oldest first: the latest one wins
        return render("web/bounces.html.j2", scores=B.scores(g.store), notices=notices,
                      not_counted=B.records(g.store, not_counted=True, limit=100),
                      threshold=B.THRESHOLD, stale_after=B.STALE_AFTER_DAYS, ingest_warning=g.ingest_warning)

    # -- members: each list's members and their sources; extra members added and removed here

    @app.get("/lists")
    def member_lists():
        """Every list address, with its member count as installed, each linking to its members page."""
        counts = _installed_counts(config)
        return render("web/members.html.j2", lists=[(a, counts.get(a)) for a in MS.known_lists(config)],
                      address=None, ingest_warning=g.ingest_warning)

    def members_page(address: str, http_status: int = 200, error: str | None = None, form: dict | None = None):
        if address not in MS.known_lists(config):
            abort(404)
        from ..store import requests as RQ

        installed, snapshot_error = _installed_members(config, address)
        served = RQ.lists_by_address(config).get(address)
        approval = served is not None and served[0].optin is not None and served[0].optin.approval
        return render("web/members.html.j2", http_status, address=address, installed=installed,
                      approval=approval, pending=RQ.join_requests(g.store, address),
                      confirm_days=timedelta(days=config.site.confirm_days),
                      snapshot_error=snapshot_error, extras=MS.extras(g.store, address),
                      installed_keys={e.lower() for e, _, _ in installed},
                      changes=MS.changes(g.store, address, MEMBER_CHANGES), error=error, form=form or {},
                      done=request.args.get("done", "") if http_status == 200 else "",
                      who=oneline(request.args.get("who", ""))[:320], until_text=lambda u: MS.describe_until(u, tz),
                      ingest_warning=g.ingest_warning)

    @app.get("/lists/<address>/members")
    def list_members(address):
        return members_page(address.lower())

    @app.post("/lists/<address>/members")
    def change_members(address):
        """Add or remove an extra member (the form's ``action``), as the signed-in user, then show the page."""
        address = address.lower()
        if address not in MS.known_lists(config):
            abort(404)
        action = request.form.get("action", "")
        text = oneline(request.form.get("email", ""))[:320]
        name = oneline(request.form.get("name", ""))[:200]
        until = oneline(request.form.get("until", ""))[:40]
        try:
            email = MS.parse_address(text)
            if action == "add":
                MS.add(g.store, address, email, name or None, MS.parse_until(until, tz) if until else None,
                       g.user, "web", tz=tz)
            elif action == "remove":
                MS.remove(g.store, address, email, g.user, "web", config=config)
            else:
                return problem(400, "Bad request", "The form names no change to make.")
        except MS.MembershipError as exc:
            return members_page(address, 400, error=str(exc), form={"email": text, "name": name, "until": until})
        except (ST.StoreError, *g.store.refused_errors()) as exc:
            log.error("membership change by %s refused: %s", g.user, exc)
            return problem(503, "Change not saved",
                           f"The store refused the change ({oneline(exc)}). The web app's database role needs"
                           " INSERT, UPDATE and DELETE on list_members and member_changes (docs/web.md).")
        log.info("%s: %s %s on %s", g.user, action, email, address)
        return redirect(url_for("list_members", address=address, done=action, who=email))

    @app.post("/lists/<address>/joins")
    def decide_join(address):
        """Admit or deny a join that waits for an owner (the form's ``action``), as the signed-in user."""
        from datetime import datetime, timezone

        from ..store import requests as RQ

        address = address.lower()
        if address not in MS.known_lists(config):
            abort(404)
        action = request.form.get("action", "")
        if action not in RQ.JOIN_DECISIONS:
            return problem(400, "Bad request", "The form names no decision (admit or deny).")
        text = oneline(request.form.get("email", ""))[:320]
        try:
            email = MS.parse_address(text)
            result = RQ.owner_decision(config, g.store, address, email, action, g.user, "web",
                                       datetime.now(timezone.utc))
        except MS.MembershipError as exc:
            return members_page(address, 400, error=str(exc))
        except (ST.StoreError, *g.store.refused_errors()) as exc:
            log.error("join decision by %s refused: %s", g.user, exc)
            return problem(503, "Decision not saved",
                           f"The store refused the change ({oneline(exc)}). The web app's database role needs"
                           " UPDATE on join_requests and INSERT on list_members and member_changes (docs/web.md).")
        if not result.changed:
            return members_page(address, 409, error=result.message)
        log.info("%s: %s join of %s to %s", g.user, action, email, address)
        return redirect(url_for("list_members", address=address, done=action, who=email))

    # -- held posts (moderation): what waits for the owners, one post's headers and body, approve or discard

    @app.get("/held")
    def held_list():
        """The held posts of every list, and the recent decisions (sync releases an approved post)."""
        from ..store import moderation as MOD

        known = MS.known_lists(config)
        return render("web/held.html.j2", waiting=MOD.held_posts(g.store, lists=known),
                      decided=MOD.held_posts(g.store, lists=known, status=MOD.DECIDED_STATUSES, limit=HELD_DECIDED),
                      post=None, done=request.args.get("done", ""), ingest_warning=g.ingest_warning)

    def held_page(held_id: str, http_status: int = 200, error: str | None = None):
        from ..store import moderation as MOD

        if not valid_id(held_id):
            abort(404)
        post = MOD.get(g.store, held_id.lower())
        if post is None or post.list_address not in MS.known_lists(config):
            abort(404)
        return render("web/held.html.j2", http_status, post=post, view=held_view(post.message), error=error,
                      done=request.args.get("done", "") if http_status == 200 else "",
                      ingest_warning=g.ingest_warning)

    @app.get("/held/<held_id>")
    def held_detail(held_id):
        return held_page(held_id)

    @app.post("/held/<held_id>")
    def held_decide(held_id):
        """Approve or discard a held post (the form's ``action``) as the signed-in user; sync releases it."""
        from ..store import moderation as MOD

        action = request.form.get("action", "")
        if action not in MOD.DECISIONS:
            return problem(400, "Bad request", "The form names no decision (approve or discard).")
        if not valid_id(held_id):
            abort(404)
        post = MOD.get(g.store, held_id.lower())
        if post is None or post.list_address not in MS.known_lists(config):
            abort(404)
        from datetime import datetime, timezone

        try:
            result = MOD.decide(g.store, post.id, action, g.user, "web", datetime.now(timezone.utc))
        except (ST.StoreError, *g.store.refused_errors()) as exc:
            log.error("held post decision by %s refused: %s", g.user, exc)
            return problem(503, "Decision not saved",
                           f"The store refused the change ({oneline(exc)}). The web app's database role needs"
                           " UPDATE on held_posts (docs/web.md).")
        if not result.changed:
            return held_page(post.id, 409, error=result.message)
        log.info("%s: %s held post %s on %s", g.user, action, post.id, post.list_address)
        return redirect(url_for("held_detail", held_id=post.id, done=result.status))

    # -- the one-click unsubscribe link of an opt-in list's copies (RFC 8058): public, by design

    def unsubscribe_claim(token: str):
        """(claim, None) for a valid unsubscribe token of an opt-in list here, else (None, the page saying why)."""
        from ..common import tokens as TK

        def page(status: int, title: str, detail: str):
            return render_template("web/unsubscribe.html.j2", title=title, detail=detail, claim=None,
                                   list_name="", done=False, token=""), status

        try:
            claim = TK.verify(TK.load_key(config.site.token_key), token, time.time(), actions=("unsubscribe",))
        except TK.TokenKeyError as exc:
            log.error("%s (the web app's user must be able to read it: docs/web.md)", exc)
            return None, page(503, "Unavailable", "This link cannot be checked just now. Try again later.")
        except TK.TokenError:
            return None, page(400, "Link not valid", "This unsubscribe link is not valid: it was changed or"
                                                     " cut short. Use the link in a recent message of the list.")
        if claim.list_address not in _optin_lists(config):
            return None, page(404, "No such list", "This link is for a list that no longer takes"
                                                   " unsubscribe requests here.")
        return claim, None

    @app.get("/unsubscribe/<token>")
    def unsubscribe_page(token):
        """What the link would do, and a button that does it: a GET changes nothing (link scanners follow them)."""
        claim, failed = unsubscribe_claim(token)
        if failed:
            return failed
        return render_template("web/unsubscribe.html.j2", title="Unsubscribe", detail="", claim=claim,
                               list_name=_optin_lists(config)[claim.list_address], done=False, token=token)

    @app.post("/unsubscribe/<token>")
    def unsubscribe_post(token):
        """RFC 8058's one-click POST (``List-Unsubscribe=One-Click``), or the page's button: the leave, in the
        store (the joined or extra membership; the list changes at the next sync)."""
        claim, failed = unsubscribe_claim(token)
        if failed:
            return failed
        try:
            with ST.open_store(config.store) as store:
                store.require_current()
                try:
                    change = MS.leave(store, claim.list_address, claim.subject, claim.subject, "one-click",
                                      sources=("joined", "extra"))
                except store.refused_errors() as exc:  # its role lacks the GRANTs (docs/web.md)
                    raise ST.StoreError(f"the store refused the change: {oneline(exc)}") from None
        except ST.StoreError as exc:
            log.error("one-click unsubscribe of %s from %s not saved: %s", claim.subject, claim.list_address, exc)
            return render_template("web/unsubscribe.html.j2", title="Not saved", claim=None, list_name="",
                                   done=False, token="", detail="Your request could not be saved just now."
                                   " Try again later, or reply to a message of the list."), 503
        log.info("one-click unsubscribe: %s from %s%s", claim.subject, claim.list_address,
                 "" if change else " (no joined or extra membership)")
        return render_template("web/unsubscribe.html.j2", title="Unsubscribed", detail="", claim=claim,
                               list_name=_optin_lists(config)[claim.list_address], done=True, left=change is not None,
                               token="")

    @app.errorhandler(404)
    def not_found(exc):
        return problem(404, "Not found", "There is no such page or message.")

    @app.errorhandler(405)
    def not_allowed(exc):
        return problem(405, "Method not allowed", "")

    @app.errorhandler(413)
    def too_large(exc):
        return problem(413, "Request too large", "")

    @app.route("/login", methods=["GET", "POST"])
    def login():
        if not web.accounts:
            return problem(404, "Not found", "Sign in through the campus single sign-on.")
        nxt = request.values.get("next", "")
        if not (nxt.startswith("/") and not nxt.startswith("//") and "\\" not in nxt) or _CONTROL.search(nxt):
            nxt = url_for("email_list")
        if request.method == "GET":
            return render("web/login.html.j2", next=nxt, error=None, username="")
        client = request.environ.get("listfilter.client") or request.remote_addr or "?"
        username = oneline(request.form.get("username", ""))[:320]
        try:
            return sign_in(client, username, nxt)
        except sqlite3.Error as exc:  # the session file: fail closed, in one line
            log.error("sign-in unavailable: the session file %s: %s", web.session_file, exc)
            return problem(503, "Sign-in unavailable", "The sign-in records cannot be written just now.")

    def sign_in(client: str, username: str, nxt: str):
        attempt = sessions.reserve_attempt(client, LOGIN_ATTEMPTS, LOGIN_WINDOW)
        if attempt is None:
            log.warning("sign-in for %r from %s refused: too many failures", username, client)
            return render("web/login.html.j2", 429, next=nxt, username=username,
                          error="Too many failed sign-ins; wait a few minutes.")
        if not A.verify_password(web.accounts, username, request.form.get("password", "")):
            log.warning("failed sign-in for %r from %s", username, client)  # the attempt stays counted
            return render("web/login.html.j2", 401, next=nxt, username=username,
                          error="Wrong user name or password.")
        sessions.release(attempt)
        sessions.end(session.get("sid"))  # a new session: no fixation, and the old one is over
        key.ensure()
        session.clear()
        session.permanent = True
        session["sid"] = sessions.start(username.lower(), web.session_hours * 3600)
        session["csrf"] = secrets.token_urlsafe(32)
        log.info("%s signed in from %s", username.lower(), client)
        return redirect(nxt)

    @app.post("/logout")
    def logout():
        try:
            sessions.end(session.get("sid"))  # the cookie is dead on the server, whoever kept a copy
        except sqlite3.Error as exc:
            log.error("sign-out not recorded: the session file %s: %s", web.session_file, exc)
            return problem(503, "Sign-out unavailable", "The sign-in records cannot be written just now."
                                                         " Try again, or ask the site's admin to rotate the secret.")
        session.clear()
        return redirect(url_for("login") if web.accounts else url_for("email_list"))

    return app


def serve(config: Config, bind: str | None = None, *, threads: int = 4) -> None:
    """Serve the app with waitress until interrupted."""
    import waitress

    from ..sync.config import parse_bind

    if config.web is None:
        raise WebError("no [web] table in the config (docs/web.md)")
    host, port = parse_bind(bind or config.web.bind)
    with ST.open_store(config.store) as store:
        store.require_current()
    app = create_app(config)
    logging.basicConfig(level=logging.INFO, format="listfilter web: %(levelname)s %(message)s")
    try:
        web = A.with_accounts(config.web)  # as create_app read it, for the warnings below
    except A.AccountsFileError as exc:
        raise WebError(str(exc)) from None
    if web.accounts.warning:
        log.warning("%s", web.accounts.warning)
    if config.web.accounts:
        log.warning("[web.accounts] in %s: password hashes in the config, which every local user can read;"
                    " move them with `listfilter web passwd --from-config` (docs/web.md)", config.path)
    for user, stored in sorted(web.accounts.items()):
        weak = A.hash_weakness(stored)
        if weak:
            log.warning("account %s: the password hash is %s; make a new one with"
                        " `listfilter web passwd %s`", user, weak, user)
    for proxy in A.spoofable_proxies(config.web, host):
        log.warning("[web] proxies has %s, an address local users can reach this app from:"
                    " any of them can claim to be anyone (set [web] proxy_secret_env; docs/web.md)", proxy)
    # The app decides which peers' X-Forwarded-* to believe (_Forwarded):
    # waitress would otherwise drop them all, its trusted_proxy being one address.
    server = waitress.create_server(app, host=host, port=port, threads=threads, ident="listfilter",
                                    clear_untrusted_proxy_headers=False)
    log.info("serving http://%s:%s/email (store: %s)", f"[{host}]" if ":" in host else host,
             server.effective_port, config.store.describe())
    try:
        server.run()
    except KeyboardInterrupt:
        pass
    finally:
        server.close()
