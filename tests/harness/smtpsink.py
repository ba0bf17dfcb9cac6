"""An in-process SMTP relay sink for integration tests.

The private Postfix instance started by the tests relays (``relayhost``) to
this sink, which records every transaction.  Recipients can be rejected at
RCPT time to simulate bounces::

    with SMTPSink() as sink:
        sink.reject["gone@example.org"] = "550 5.1.1 No such user"
        ...  # make Postfix deliver something to 127.0.0.1:sink.port
        assert sink.wait_for(3, timeout=10)
        assert sorted(sink.recipients()) == [...]

By default STARTTLS is never advertised (no TLS context is given to
aiosmtpd), so Postfix talks plain SMTP to it. A relay provider's submission
port is ``SMTPSink(tls_context=ctx, logins={"user": "password"})``: STARTTLS
required before anything else, then AUTH PLAIN or LOGIN before MAIL (530
otherwise, 535 for a wrong password); ``implicit_tls=True`` speaks TLS from
connect instead (port 465). Each message records the login and the TLS version.
"""

from __future__ import annotations

import logging
import socket
import ssl
import threading
import time
from dataclasses import dataclass, field

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult

__all__ = ["SMTPSink", "ReceivedMessage", "free_port"]

# aiosmtpd logs every command at INFO/DEBUG; with thousands of recipients that
# is slow and drowns pytest's captured log output.
logging.getLogger("mail.log").setLevel(logging.WARNING)


def free_port(host: str = "127.0.0.1") -> int:
    """Return a TCP port on ``host`` that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


@dataclass
class ReceivedMessage:
    """One SMTP transaction accepted by the sink."""

    mail_from: str  # "" for the null sender (bounces)
    rcpt_tos: list[str]
    data: bytes  # message content exactly as received (dot-unstuffed, CRLF)
    mail_options: list[str] = field(default_factory=list)
    peer: object = None
    received_at: float = field(default_factory=time.time)
    login: str | None = None  # the AUTH user the client logged in as
    tls_version: str | None = None  # e.g. "TLSv1.3"; None: plaintext
    queue_id: str | None = None  # the id the sink's reply named ("queued as …"), with queued_as on

    @property
    def text(self) -> str:
        return self.data.decode("utf-8", errors="replace")


class _Handler:
    def __init__(self, sink: "SMTPSink"):
        self.sink = sink

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        reply = self.sink.reject.get(address.lower())
        if reply:
            with self.sink._cond:
                self.sink.rejected.append(address)
            return reply
        envelope.rcpt_tos.append(address)
        envelope.rcpt_options.extend(rcpt_options)
        return "250 2.1.5 OK"

    async def handle_DATA(self, server, session, envelope):
        data = envelope.original_content
        if data is None:  # pragma: no cover - only with decode_data=True
            data = envelope.content
        if isinstance(data, str):  # pragma: no cover
            data = data.encode("utf-8", "surrogateescape")
        mail_from = envelope.mail_from or ""
        if mail_from == "<>":  # aiosmtpd keeps the brackets of the null sender
            mail_from = ""
        tls = server.transport.get_extra_info("ssl_object") if server.transport else None
        msg = ReceivedMessage(
            mail_from=mail_from,
            rcpt_tos=list(envelope.rcpt_tos),
            data=bytes(data),
            mail_options=list(envelope.mail_options or []),
            peer=session.peer,
            login=session.auth_data.login.decode() if session.auth_data else None,
            tls_version=tls.version() if tls else None,
        )
        if self.sink.queued_as:
            with self.sink._cond:
                self.sink._queued += 1
                msg.queue_id = f"SINK{self.sink._queued:06d}"
            self.sink._record(msg)
            return f"250 2.0.0 Ok: queued as {msg.queue_id}"
        self.sink._record(msg)
        return "250 2.0.0 Message accepted for delivery"


class SMTPSink:
    """Threaded aiosmtpd server on 127.0.0.1 that records what it receives.

    Attributes:
        host, port: where it listens (port chosen automatically if not given).
        messages: list of :class:`ReceivedMessage` (append-only, guarded by a lock;
            iterate over ``snapshot()`` if the sink is still receiving).
        reject: ``{lowercased address: "550 5.1.1 No such user"}``; a matching
            RCPT gets that reply instead of 250 (use a 4xx code for temporary).
        rejected: addresses refused because of ``reject`` (every attempt).
        logins: ``{user: password}`` that AUTH accepts; with any, MAIL needs AUTH first.
        auth_attempts: ``(mechanism, user, accepted)`` for every AUTH, in order.
        queued_as: answer DATA as a relay does, "250 2.0.0 Ok: queued as SINK000001", and record
            the id as the message's ``queue_id`` (off: "Message accepted for delivery").
    """

    def __init__(self, port: int | None = None, host: str = "127.0.0.1", *,
                 tls_context: ssl.SSLContext | None = None, implicit_tls: bool = False,
                 logins: dict[str, str] | None = None):
        self.host = host
        self.tls_context = tls_context
        self.implicit_tls = implicit_tls
        self.logins = dict(logins or {})
        self.auth_attempts: list[tuple[str, str, bool]] = []
        self._fixed_port = port
        self.port: int = port or 0
        self.messages: list[ReceivedMessage] = []
        self.rejected: list[str] = []
        self.reject: dict[str, str] = {}
        self.queued_as = False
        self._queued = 0
        self._cond = threading.Condition()
        self._rcpt_count = 0
        self._controller: Controller | None = None

    # -- lifecycle ---------------------------------------------------------

    def start(self) -> "SMTPSink":
        if self._controller is not None:
            raise RuntimeError("SMTPSink already started")
        attempts = 1 if self._fixed_port else 5
        last_error: Exception | None = None
        for _ in range(attempts):
            port = self._fixed_port or free_port(self.host)
            secure: dict = {}
            if self.tls_context is not None:
                secure = ({"ssl_context": self.tls_context} if self.implicit_tls
                          else {"tls_context": self.tls_context, "require_starttls": True})
            if self.logins:
                # under implicit TLS aiosmtpd cannot tell the connection is encrypted (it is),
                # and warns "Requiring AUTH while not requiring TLS" for each connection
                secure.update(authenticator=self._authenticate, auth_required=True,
                              auth_require_tls=not self.implicit_tls)
            controller = Controller(
                _Handler(self),
                hostname=self.host,
                port=port,
                server_hostname="sink.test.example",
                ready_timeout=10.0,
                enable_SMTPUTF8=True,
                decode_data=False,
                data_size_limit=None,
                **secure,
            )
            try:
                controller.start()
            except Exception as exc:  # port taken between free_port() and bind
                last_error = exc
                continue
            self._controller = controller
            self.port = port
            return self
        raise RuntimeError(f"SMTPSink could not listen on {self.host}: {last_error!r}")

    def stop(self) -> None:
        controller, self._controller = self._controller, None
        if controller is not None:
            controller.stop()

    def __enter__(self) -> "SMTPSink":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def _authenticate(self, server, session, envelope, mechanism, auth_data) -> AuthResult:
        user = auth_data.login.decode("utf-8", "replace")
        accepted = self.logins.get(user) == auth_data.password.decode("utf-8", "replace")
        with self._cond:
            self.auth_attempts.append((mechanism, user, accepted))
        # handled=False: aiosmtpd itself answers a refusal, with 535 5.7.8
        return AuthResult(success=accepted, handled=False, auth_data=auth_data)

    # -- recording ---------------------------------------------------------

    def _record(self, msg: ReceivedMessage) -> None:
        with self._cond:
            self.messages.append(msg)
            self._rcpt_count += len(msg.rcpt_tos)
            self._cond.notify_all()

    def snapshot(self) -> list[ReceivedMessage]:
        """A copy of ``messages`` taken under the lock."""
        with self._cond:
            return list(self.messages)

    def recipients(self) -> list[str]:
        """Every accepted RCPT address, across all transactions, in order."""
        with self._cond:
            return [r for m in self.messages for r in m.rcpt_tos]

    @property
    def recipient_count(self) -> int:
        with self._cond:
            return self._rcpt_count

    def messages_for(self, address: str) -> list[ReceivedMessage]:
        address = address.lower()
        with self._cond:
            return [m for m in self.messages if address in (r.lower() for r in m.rcpt_tos)]

    def wait_for(self, count: int, timeout: float = 10.0) -> bool:
        """Wait until at least ``count`` recipients were accepted in completed
        transactions; return False on timeout."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while self._rcpt_count < count:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._cond.wait(remaining)
            return True

    def clear(self) -> None:
        with self._cond:
            self.messages.clear()
            self.rejected.clear()
            self.auth_attempts.clear()
            self._rcpt_count = 0

    def __repr__(self) -> str:
        return f"<SMTPSink {self.host}:{self.port} messages={len(self.messages)} rcpts={self._rcpt_count}>"
