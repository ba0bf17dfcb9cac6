"""A private, throw-away Postfix instance for integration tests.

Nothing of the host's Postfix configuration is touched except that the
instance's config directory is added to ``alternate_config_directories`` in
the default instance's main.cf (and removed again by :meth:`PostfixInstance.stop`).
If /etc/postfix/main.cf does not exist it is created from
/usr/share/postfix/main.cf.debian (or empty).

Layout under ``base_dir``::

    etc/main.cf, etc/master.cf   config_directory (MAIL_CONFIG)
    spool/                       queue_directory
    data/                        data_directory (owned by postfix)
    log/maillog                  maillog_file (written by postlogd)

Every failure raises :class:`PostfixError` carrying the command's output and
the tail of the maillog.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import pwd
import re
import shutil
import signal
import socket
import stat
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Iterable, Iterator, Mapping

__all__ = [
    "PostfixError",
    "PostfixInstance",
    "ensure_user",
    "ensure_default_main_cf",
    "make_traversable",
    "traversable_tmpdir",
    "free_port",
    "swaks",
    "SWAKS",
    "SENDMAIL",
]

POSTFIX = "/usr/sbin/postfix"
POSTCONF = "/usr/sbin/postconf"
POSTMAP = "/usr/sbin/postmap"
POSTQUEUE = "/usr/sbin/postqueue"
POSTSUPER = "/usr/sbin/postsuper"
SENDMAIL = "/usr/sbin/sendmail"
SWAKS = shutil.which("swaks") or "/usr/bin/swaks"

DEFAULT_MAIN_CF = Path("/etc/postfix/main.cf")
DEBIAN_MAIN_CF = Path("/usr/share/postfix/main.cf.debian")
_LOCK_FILE = Path("/run/listfilter-postfix-test.lock")

CMD_TIMEOUT = 60


class PostfixError(RuntimeError):
    """A Postfix command or the instance itself failed."""


# ---------------------------------------------------------------------------
# module-level helpers
# ---------------------------------------------------------------------------


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port on ``host`` that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def _run(args: list[str], *, env: Mapping[str, str] | None = None, input: bytes | None = None,
         check: bool = True, timeout: float = CMD_TIMEOUT, what: str | None = None,
         log_tail=None) -> subprocess.CompletedProcess:
    try:
        cp = subprocess.run(args, input=input, capture_output=True, env=env, timeout=timeout)
    except (OSError, subprocess.TimeoutExpired) as exc:
        tail = log_tail() if log_tail else ""
        raise PostfixError(f"{what or args[0]} failed: {exc!r}\n--- maillog tail ---\n{tail}") from exc
    if check and cp.returncode != 0:
        tail = log_tail() if log_tail else ""
        raise PostfixError(
            f"{what or ' '.join(args)} exited {cp.returncode}\n"
            f"--- stdout ---\n{cp.stdout.decode(errors='replace')}\n"
            f"--- stderr ---\n{cp.stderr.decode(errors='replace')}\n"
            f"--- maillog tail ---\n{tail}"
        )
    return cp


def ensure_user(name: str = "listfilter") -> pwd.struct_passwd:
    """Create the unprivileged system user ``name`` if missing; return its pwd entry."""
    try:
        return pwd.getpwnam(name)
    except KeyError:
        pass
    with _global_lock():
        try:
            return pwd.getpwnam(name)
        except KeyError:
            pass
        cp = subprocess.run(
            ["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", name],
            capture_output=True,
        )
        # exit 9: already exists (created concurrently by someone else)
        if cp.returncode not in (0, 9):
            raise PostfixError(f"useradd {name} exited {cp.returncode}: {cp.stderr.decode(errors='replace')}")
    return pwd.getpwnam(name)


@contextlib.contextmanager
def _global_lock() -> Iterator[None]:
    """Serialise edits of the host's main.cf between concurrent test processes."""
    fd = os.open(_LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


def ensure_default_main_cf() -> None:
    """Postfix commands refuse to run without /etc/postfix/main.cf; create it if missing."""
    if DEFAULT_MAIN_CF.exists():
        return
    with _global_lock():
        if DEFAULT_MAIN_CF.exists():
            return
        DEFAULT_MAIN_CF.parent.mkdir(parents=True, exist_ok=True)
        text = DEBIAN_MAIN_CF.read_text() if DEBIAN_MAIN_CF.exists() else ""
        tmp = DEFAULT_MAIN_CF.with_name(".main.cf.listfilter-tmp")
        tmp.write_text(text)
        tmp.chmod(0o644)
        _backdate(tmp)
        os.replace(tmp, DEFAULT_MAIN_CF)


def _backdate(path: Path, seconds: float = 2.0) -> None:
    """Set ``path``'s mtime into the past.

    Postfix programs re-read main.cf (every 300 ms, up to ~2 s) while its
    mtime is not older than the moment they started reading it -- a guard
    against half-written files.  Backdating a freshly written main.cf avoids
    a ~2 s stall on every command.
    """
    with contextlib.suppress(FileNotFoundError):
        t = time.time() - seconds
        os.utime(path, (t, t))


def _split_list(value: str) -> list[str]:
    return [v for v in re.split(r"[\s,]+", value.strip()) if v]


def _alternate_dirs() -> list[str]:
    cp = _run([POSTCONF, "-h", "alternate_config_directories"], what="postconf alternate_config_directories")
    return _split_list(cp.stdout.decode())


def register_alternate_config_dir(config_dir: Path) -> None:
    ensure_default_main_cf()
    d = str(config_dir)
    tmp_root = tempfile.gettempdir().rstrip("/") + "/"
    with _global_lock():
        current = _alternate_dirs()
        # drop leftovers of test processes that died without stop()
        dirs = [x for x in current if not x.startswith(tmp_root) or os.path.isdir(x)]
        if d not in dirs:
            dirs.append(d)
        if dirs != current:
            _run([POSTCONF, "-e", "alternate_config_directories = " + ", ".join(dirs)],
                 what="postconf -e alternate_config_directories")
            _backdate(DEFAULT_MAIN_CF)


def unregister_alternate_config_dir(config_dir: Path) -> None:
    d = str(config_dir)
    with _global_lock():
        dirs = _alternate_dirs()
        if d in dirs:
            dirs = [x for x in dirs if x != d]
            if dirs:
                _run([POSTCONF, "-e", "alternate_config_directories = " + ", ".join(dirs)],
                     what="postconf -e alternate_config_directories")
            else:
                _run([POSTCONF, "-X", "alternate_config_directories"],
                     what="postconf -X alternate_config_directories")
            _backdate(DEFAULT_MAIN_CF)


def make_traversable(path: Path, *, readable: bool = True) -> None:
    """Add o+x (and o+r for ``path`` itself if ``readable``) to ``path`` and all
    its ancestors, so the postfix user and pipe(8) users can reach it.

    Beware: pytest re-tightens /tmp/pytest-of-<user> to 0700 when another
    session starts; prefer :func:`traversable_tmpdir` for instance base dirs.
    """
    path = Path(path).resolve()
    for p in [path, *path.parents]:
        st = p.stat()
        mode = stat.S_IMODE(st.st_mode)
        want = mode | stat.S_IXOTH | stat.S_IXGRP
        if p == path and readable:
            want |= stat.S_IROTH | stat.S_IRGRP
        if want != mode:
            os.chmod(p, want)


@contextlib.contextmanager
def traversable_tmpdir(prefix: str = "listfilter-pf-", parent: str = "/tmp") -> Iterator[Path]:
    """A fresh directory under /tmp with mode 0755, removed afterwards."""
    d = Path(tempfile.mkdtemp(prefix=prefix, dir=parent))
    try:
        d.chmod(0o755)
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)


def swaks(*args: str, port: int, server: str = "127.0.0.1", timeout: float = 60,
          check: bool = False) -> subprocess.CompletedProcess:
    """Run swaks against ``server:port``; stdout/stderr are text.

    swaks prints the whole SMTP dialogue on stdout, so tests can assert e.g.
    ``"<** 550" in cp.stdout``.  swaks exits 0 on success, 24 when every
    recipient was rejected, 25 on a DATA rejection, etc.
    """
    cmd = [SWAKS, "--server", server, "--port", str(port), "--timeout", "30", *args]
    cp = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    if check and cp.returncode != 0:
        raise PostfixError(f"swaks exited {cp.returncode}\n{cp.stdout}\n{cp.stderr}")
    return cp


# ---------------------------------------------------------------------------
# master.cf
# ---------------------------------------------------------------------------

# Standard services, all unchrooted; no port-25 smtpd, no submission/smtps.
# qmgr is woken every second, not every 300 s as in a stock master.cf: a message
# that qmgr finds still locked by the delivery agent that has just deferred it
# ("skipped, still being delivered") goes back to the incoming queue for 60 s and
# is looked at again only at qmgr's next wake-up.
_MASTER_CF = """\
# Private test instance master.cf (generated by tests/postfix_instance.py)
# service type  private unpriv  chroot  wakeup  maxproc command + args
127.0.0.1:{smtpd_port} inet n - n - - smtpd
pickup    unix  n       -       n       1       1       pickup
cleanup   unix  n       -       n       -       0       cleanup
qmgr      unix  n       -       n       1       1       qmgr
tlsmgr    unix  -       -       n       1000?   1       tlsmgr
rewrite   unix  -       -       n       -       -       trivial-rewrite
bounce    unix  -       -       n       -       0       bounce
defer     unix  -       -       n       -       0       bounce
trace     unix  -       -       n       -       0       bounce
verify    unix  -       -       n       -       1       verify
flush     unix  n       -       n       1000?   0       flush
proxymap  unix  -       -       n       -       -       proxymap
proxywrite unix -       -       n       -       1       proxymap
smtp      unix  -       -       n       -       -       smtp
relay     unix  -       -       n       -       -       smtp
showq     unix  n       -       n       -       -       showq
error     unix  -       -       n       -       -       error
retry     unix  -       -       n       -       -       error
discard   unix  -       -       n       -       -       discard
local     unix  -       n       n       -       -       local
virtual   unix  -       n       n       -       -       virtual
lmtp      unix  -       -       n       -       -       lmtp
anvil     unix  -       -       n       -       1       anvil
scache    unix  -       -       n       -       1       scache
postlog   unix-dgram n  -       n       -       1       postlogd
"""


# ---------------------------------------------------------------------------
# the instance
# ---------------------------------------------------------------------------


class PostfixInstance:
    """A private Postfix instance rooted at ``base_dir``.

    ``main_cf`` overrides/extends the generated main.cf (e.g. relay_domains,
    transport_maps, relay_recipient_maps, virtual_alias_maps,
    recipient_delimiter, ``<transport>_destination_recipient_limit``);
    ``master_cf_extra`` is appended verbatim to master.cf (e.g. a pipe(8)
    service).  Use as a context manager or call start()/stop().
    """

    def __init__(self, base_dir: Path, relay_port: int, smtpd_port: int | None = None,
                 main_cf: Mapping[str, str] | None = None, master_cf_extra: str = "",
                 myhostname: str = "mail.test.example", mydomain: str = "test.example"):
        self.base_dir = Path(base_dir).resolve()
        self.relay_port = int(relay_port)
        self.smtpd_port = int(smtpd_port) if smtpd_port else free_port()
        self.config_dir = self.base_dir / "etc"
        self.queue_dir = self.base_dir / "spool"
        self.data_dir = self.base_dir / "data"
        self.log_dir = self.base_dir / "log"
        self.maillog_path = self.log_dir / "maillog"
        self.myhostname = myhostname
        self.mydomain = mydomain
        self.env: dict[str, str] = {**os.environ, "MAIL_CONFIG": str(self.config_dir)}
        self._registered = False
        self._started = False
        self._master_pid: int | None = None

        self.main_cf_settings: dict[str, str] = self._default_main_cf()
        self.main_cf_settings.update(main_cf or {})
        self.master_cf_extra = master_cf_extra
        self._write_config()

    # -- configuration -----------------------------------------------------

    def _default_main_cf(self) -> dict[str, str]:
        return {
            "compatibility_level": "3.6",
            "queue_directory": str(self.queue_dir),
            "data_directory": str(self.data_dir),
            "syslog_name": "postfix-test",
            "maillog_file": str(self.maillog_path),
            "maillog_file_prefixes": f"/var, /dev/stdout, {self.base_dir}",
            "myhostname": self.myhostname,
            "mydomain": self.mydomain,
            "myorigin": "$myhostname",
            "mydestination": "",
            "inet_interfaces": "127.0.0.1",
            "inet_protocols": "ipv4",
            "mynetworks": "127.0.0.0/8",
            "relayhost": f"[127.0.0.1]:{self.relay_port}",
            "relay_domains": "",
            "smtp_tls_security_level": "none",
            "smtpd_tls_security_level": "none",
            "smtp_sasl_auth_enable": "no",
            "smtp_dns_support_level": "disabled",
            "smtpd_relay_restrictions": "permit_mynetworks, reject_unauth_destination",
            "alias_maps": "",
            "alias_database": "",
            "local_recipient_maps": "",
            "biff": "no",
            "append_dot_mydomain": "no",
            "readme_directory": "no",
            "smtputf8_enable": "yes",
            # fast retries: deferred mail is retried within seconds
            "queue_run_delay": "1s",
            "minimal_backoff_time": "1s",
            "maximal_backoff_time": "2s",
            "delay_warning_time": "0h",
            "default_destination_rate_delay": "0",
            "in_flow_delay": "0",
            "smtp_connect_timeout": "5s",
            "smtp_helo_timeout": "10s",
            "smtpd_error_sleep_time": "0",
            "smtpd_soft_error_limit": "1000",
            "smtpd_hard_error_limit": "1000",
            "smtpd_client_connection_count_limit": "0",
            "smtpd_client_connection_rate_limit": "0",
            "anvil_rate_time_unit": "60s",
            "smtpd_banner": "$myhostname ESMTP listfilter-test",
            "message_size_limit": "20480000",
            "mailbox_size_limit": "0",
            "max_idle": "30s",
            "ipc_idle": "5s",
        }

    def _write_config(self) -> None:
        for d in (self.base_dir, self.config_dir, self.log_dir):
            d.mkdir(parents=True, exist_ok=True)
            d.chmod(0o755)
        lines = ["# Private test instance main.cf (generated by tests/postfix_instance.py)"]
        for key, value in self.main_cf_settings.items():
            lines.append(f"{key} = {value}")
        (self.config_dir / "main.cf").write_text("\n".join(lines) + "\n")
        master = _MASTER_CF.format(smtpd_port=self.smtpd_port)
        if self.master_cf_extra:
            master += "\n" + self.master_cf_extra.strip("\n") + "\n"
        (self.config_dir / "master.cf").write_text(master)
        _backdate(self.config_dir / "main.cf")
        _backdate(self.config_dir / "master.cf")

    def set_main_cf(self, **settings: str) -> None:
        """Change main.cf parameters (postconf -e); call reload() if running."""
        self.main_cf_settings.update(settings)
        self.postconf("-e", *[f"{k} = {v}" for k, v in settings.items()])
        _backdate(self.config_dir / "main.cf")

    def _prepare_dirs(self) -> None:
        postfix_pw = pwd.getpwnam(self.main_cf_settings.get("mail_owner", "postfix"))
        self.queue_dir.mkdir(parents=True, exist_ok=True)
        os.chown(self.queue_dir, 0, 0)
        self.queue_dir.chmod(0o755)
        self.data_dir.mkdir(parents=True, exist_ok=True)
        os.chown(self.data_dir, postfix_pw.pw_uid, postfix_pw.pw_gid)
        self.data_dir.chmod(0o700)
        self.maillog_path.touch(exist_ok=True)
        self.maillog_path.chmod(0o644)
        make_traversable(self.base_dir)

    # -- logging ------------------------------------------------------------

    def maillog(self) -> str:
        try:
            return self.maillog_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def log_tail(self, lines: int = 40) -> str:
        return "\n".join(self.maillog().splitlines()[-lines:])

    def log_problems(self) -> list[str]:
        """maillog lines with warning:/error:/fatal:/panic: (assert it is empty
        to catch configuration mistakes that Postfix only reports at runtime)."""
        rx = re.compile(r"\b(warning|error|fatal|panic): ")
        return [line for line in self.maillog().splitlines() if rx.search(line)]

    # -- commands -------------------------------------------------------------

    def _cmd(self, args: list[str], *, input: bytes | None = None, check: bool = True,
             timeout: float = CMD_TIMEOUT) -> subprocess.CompletedProcess:
        return _run(args, env=self.env, input=input, check=check, timeout=timeout,
                    log_tail=self.log_tail)

    def postconf(self, *args: str) -> str:
        """Run ``postconf -c CONFIG_DIR ARGS``; return stdout."""
        out = self._cmd([POSTCONF, "-c", str(self.config_dir), *args]).stdout.decode()
        if any(a.startswith("-") and set(a) & set("eX#MFP") for a in args):  # edits
            _backdate(self.config_dir / "main.cf")
            _backdate(self.config_dir / "master.cf")
        return out

    def postmap(self, *args: str) -> str:
        """Run ``postmap -c CONFIG_DIR ARGS`` (e.g. ``postmap("hash:/path/map")``); return stdout.

        Note: ``postmap -q`` exits 1 when the key is not found; that raises too.
        """
        return self._cmd([POSTMAP, "-c", str(self.config_dir), *args]).stdout.decode()

    def postsuper(self, *args: str) -> str:
        return self._cmd([POSTSUPER, "-c", str(self.config_dir), *args]).stdout.decode()

    def sendmail(self, args: Iterable[str], data: bytes, check: bool = True) -> subprocess.CompletedProcess:
        """Inject ``data`` with /usr/sbin/sendmail ARGS (MAIL_CONFIG = this instance)."""
        return self._cmd([SENDMAIL, *args], input=data, check=check)

    def swaks(self, *args: str, **kw) -> subprocess.CompletedProcess:
        """:func:`swaks` against this instance's smtpd."""
        return swaks(*args, port=self.smtpd_port, **kw)

    # -- lifecycle -------------------------------------------------------------

    def start(self, timeout: float = 20.0) -> "PostfixInstance":
        if self._started:
            raise PostfixError("instance already started")
        ensure_default_main_cf()
        self._prepare_dirs()
        register_alternate_config_dir(self.config_dir)
        self._registered = True
        try:
            # "postfix start" runs check-fatal (post-install create-missing:
            # creates the queue directories with the right owners/modes) and
            # check-warn, so a separate "postfix check" is not needed.
            self._cmd([POSTFIX, "-c", str(self.config_dir), "start"])
            self._started = True
            self._master_pid = self._read_master_pid()
            self._wait_port(timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def _read_master_pid(self) -> int | None:
        try:
            return int((self.queue_dir / "pid" / "master.pid").read_text().split()[0])
        except (FileNotFoundError, ValueError, IndexError):
            return None

    def _wait_port(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        last: Exception | None = None
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.smtpd_port), timeout=2) as s:
                    s.settimeout(5)
                    banner = s.recv(512)
                    if banner.startswith(b"220"):
                        s.sendall(b"QUIT\r\n")
                        return
                    last = PostfixError(f"unexpected banner {banner!r}")
            except OSError as exc:
                last = exc
            time.sleep(0.1)
        raise PostfixError(
            f"smtpd on 127.0.0.1:{self.smtpd_port} not ready after {timeout}s: {last!r}\n"
            f"--- maillog tail ---\n{self.log_tail()}"
        )

    def check(self) -> str:
        """``postfix -c DIR check``; returns its (warning) output."""
        cp = self._cmd([POSTFIX, "-c", str(self.config_dir), "check"])
        return (cp.stdout + cp.stderr).decode(errors="replace")

    def is_running(self) -> bool:
        pid = self._master_pid or self._read_master_pid()
        return pid is not None and _pid_alive(pid)

    def stop(self) -> None:
        """Stop the instance; kill -9 anything of it that survives."""
        try:
            if self._started or self._read_master_pid():
                self._cmd([POSTFIX, "-c", str(self.config_dir), "stop"], check=False, timeout=30)
            pid = self._master_pid or self._read_master_pid()
            if pid is not None:
                _wait_dead(pid, 5)
                if _pid_alive(pid):
                    with contextlib.suppress(ProcessLookupError, PermissionError):
                        os.killpg(pid, signal.SIGKILL)
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGKILL)
                    _wait_dead(pid, 5)
                    if _pid_alive(pid):
                        raise PostfixError(f"postfix master {pid} for {self.config_dir} survived SIGKILL")
            self._kill_leftovers()
        finally:
            self._started = False
            self._master_pid = None
            if self._registered:
                self._registered = False
                unregister_alternate_config_dir(self.config_dir)

    def _kill_leftovers(self) -> None:
        """Kill processes still running with MAIL_CONFIG=<our config dir> (daemons or
        pipe(8) children that outlived the master)."""
        needle = b"MAIL_CONFIG=" + str(self.config_dir).encode() + b"\0"
        me = os.getpid()
        for _ in range(3):
            victims = []
            for entry in os.listdir("/proc"):
                if not entry.isdigit() or int(entry) == me:
                    continue
                try:
                    with open(f"/proc/{entry}/environ", "rb") as f:
                        environ = f.read() + b"\0"
                except OSError:
                    continue
                if needle in environ:
                    victims.append(int(entry))
            if not victims:
                return
            for pid in victims:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            time.sleep(0.1)

    def reload(self) -> None:
        """``postfix reload`` (re-reads main.cf/master.cf; maps are re-read automatically)."""
        self._cmd([POSTFIX, "-c", str(self.config_dir), "reload"])

    def __enter__(self) -> "PostfixInstance":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # -- queue -------------------------------------------------------------------

    def queue(self) -> list[dict]:
        """Queue entries from ``postqueue -j`` (one dict per message: queue_id,
        queue_name ('maildrop', 'incoming', 'active', 'deferred', 'hold'),
        sender, recipients=[{address, delay_reason?}], ...)."""
        out = self._cmd([POSTQUEUE, "-c", str(self.config_dir), "-j"]).stdout.decode()
        return [json.loads(line) for line in out.splitlines() if line.strip()]

    def flush(self) -> None:
        """``postqueue -f``: retry all deferred mail now."""
        self._cmd([POSTQUEUE, "-c", str(self.config_dir), "-f"])

    def wait_queue_empty(self, timeout: float = 10.0, interval: float = 0.2) -> bool:
        deadline = time.monotonic() + timeout
        while True:
            if not self.queue():
                return True
            if time.monotonic() >= deadline:
                return False
            time.sleep(interval)

    def wait_queue(self, predicate, timeout: float = 10.0, interval: float = 0.2) -> list[dict]:
        """Poll ``queue()`` until ``predicate(entries)`` is true; return the entries
        or raise PostfixError with the log tail on timeout."""
        deadline = time.monotonic() + timeout
        while True:
            entries = self.queue()
            if predicate(entries):
                return entries
            if time.monotonic() >= deadline:
                raise PostfixError(f"queue condition not met after {timeout}s: {entries!r}\n"
                                   f"--- maillog tail ---\n{self.log_tail()}")
            time.sleep(interval)

    def wait_log(self, pattern: str, timeout: float = 10.0) -> re.Match:
        """Wait until ``pattern`` (regex) appears in the maillog."""
        rx = re.compile(pattern)
        deadline = time.monotonic() + timeout
        while True:
            m = rx.search(self.maillog())
            if m:
                return m
            if time.monotonic() >= deadline:
                raise PostfixError(f"{pattern!r} not in maillog after {timeout}s\n"
                                   f"--- maillog tail ---\n{self.log_tail()}")
            time.sleep(0.1)

    def __repr__(self) -> str:
        return f"<PostfixInstance {self.config_dir} smtpd=127.0.0.1:{self.smtpd_port} relay={self.relay_port}>"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # a zombie child of ours counts as dead
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _wait_dead(pid: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while _pid_alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
