#!/usr/bin/env python3
"""Side-by-side benchmark: listfilter vs Postfix's own delivery vs Mailman 3 and mlmmj.

One command, as root, from the top of the checkout (docs/performance.md
explains every figure); ``bench`` and ``tests`` are imported as packages::

    .venv/bin/python -m bench.compare [--runs 5] [--json results.json] [--only P1,P2,...]

It builds everything it measures in a throw-away directory under /tmp:

- a private Postfix instance on loopback (tests/harness/postfix.py: its own
  config and queue directories; the host's Postfix configuration is never
  used — only its ``alternate_config_directories`` gets our directory for the
  run, as every test does, and the harness checks afterwards that main.cf and
  master.cf are byte for byte what they were);
- a fast counting SMTP sink as the relayhost (bench/fastsink.py, its own
  process);
- listfilter installed from a wheel into a fresh virtualenv (production-like
  startup), its roster in a PostgreSQL database on 127.0.0.1:5432 that it
  creates and drops;
- the same membership built five ways: (a) one virtual_alias_maps entry,
  (a') a trivial pipe running ``sendmail -G -i -XV -f list-bounces@… --
  members…``, (b) listfilter (sync, then its pipe filter and RCPT-time policy
  service), (c) mlmmj from Debian's package wired as its README.postfix says,
  (d) Mailman 3 from Debian's ``mailman3`` package (``mailman start`` as
  ``list``, LMTP on port 8024, outgoing SMTP into the private Postfix).

mlmmj and mailman3 are installed with apt-get when missing. A system that
cannot be set up is reported as ``unavailable: <reason>``; nothing is
estimated. Scenarios: P1/P1b the filter process alone, P2 one post
through Postfix, P3 500 posts to 10 lists at once, P4 sync of 50,000 roster
rows, P5 listfilter against Mailman 3 and mlmmj, P6 a burst: 200 posts
released at once with master.cf's ``maxproc`` at 4 and at 100 (how many
``listfilter-deliver`` processes run at once, their memory, the time to
drain). Runs alternate the systems (rotating their order every round) so
machine drift hits all of them alike.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import pwd
import shutil
import signal
import smtplib
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

from tests.harness.postfix import (
    POSTMAP, PostfixInstance, ensure_user, free_port, make_traversable, register_alternate_config_dir,
)

REPO = Path(__file__).resolve().parent.parent

HOST_POSTFIX = Path("/etc/postfix")
PG_ADMIN_DSN = os.environ.get("LISTFILTER_BENCH_PG", "postgresql://postgres@127.0.0.1:5432/postgres")
POSTER = "prof@poster.example.org"
MEMBER_DOMAIN = "members.example.org"
SIZES = (2, 1000, 10_000)
P3_LISTS, P3_POSTS = 10, 500
SYSTEMS = ("a", "a'", "listfilter", "mlmmj", "mailman")
LABEL = {"a": "(a) virtual alias", "a'": "(a') sendmail -XV pipe", "listfilter": "(b) listfilter",
         "mlmmj": "(c) mlmmj", "mailman": "(d) Mailman 3"}


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def member(i: int) -> str:
    return f"user{i:05d}@{MEMBER_DOMAIN}"


def p3_member(k: int, j: int) -> str:
    return f"p3l{k}u{j:03d}@{MEMBER_DOMAIN}"


def run(argv, *, check=True, input=None, env=None, timeout=600, user=None, cwd=None):
    if user:
        argv = ["runuser", "-u", user, "--", *argv]
    cp = subprocess.run(argv, input=input, capture_output=True, env=env, timeout=timeout, cwd=cwd)
    if check and cp.returncode != 0:
        raise RuntimeError(f"{' '.join(map(str, argv))} exited {cp.returncode}:\n"
                           f"{cp.stdout.decode(errors='replace')[-2000:]}\n{cp.stderr.decode(errors='replace')[-2000:]}")
    return cp


# ---------------------------------------------------------------------------
# processes: CPU and memory of a system, from /proc


def _proc_table() -> dict[int, tuple[int, str, float, int]]:
    """pid -> (ppid, comm, cpu seconds incl. reaped children, rss bytes)."""
    tick = os.sysconf("SC_CLK_TCK")
    page = os.sysconf("SC_PAGE_SIZE")
    out = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as fh:
                raw = fh.read()
        except OSError:
            continue
        rp = raw.rindex(b")")
        comm = raw[raw.index(b"(") + 1:rp].decode(errors="replace")
        f = raw[rp + 2:].split()
        cpu = (int(f[11]) + int(f[12]) + int(f[13]) + int(f[14])) / tick
        out[int(entry)] = (int(f[1]), comm, cpu, int(f[21]) * page)
    return out


def _cmdline(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as fh:
            return fh.read().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


class Accounting:
    """Which processes belong to Postfix and to each list system.

    The Postfix tree is the private master and its descendants; a system's
    own processes are the children of its pipe(8)/spawn(8) services in that
    tree (their ``-n SERVICE`` argument names them), or Mailman's master and
    its runners, or any process whose name starts with ``mlmmj-``. CPU is
    user+system time including reaped children (a pipe daemon's cutime holds
    its finished filter processes), so a delta between two snapshots counts
    short-lived processes too.
    """

    SERVICES = {"listfilter": ("listfilter", "listfilter-bounce", "listfilter-policy"),
                "a'": ("fanout",), "mlmmj": ("mlmmj",)}

    def __init__(self, master_pid: int, mailman_pid_file: Path | None):
        self.master_pid = master_pid
        self.mailman_pid_file = mailman_pid_file
        self._service_pids: dict[int, str] = {}

    def _mailman_root(self) -> int | None:
        if self.mailman_pid_file is None:
            return None
        try:
            return int(self.mailman_pid_file.read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return None

    def snapshot(self) -> dict[str, tuple[float, int]]:
        """{"postfix": (cpu, rss), "<system>": (cpu, rss), ...} for the processes alive now."""
        table = _proc_table()
        children: dict[int, list[int]] = {}
        for pid, (ppid, *_rest) in table.items():
            children.setdefault(ppid, []).append(pid)
        out: dict[str, list[float]] = {s: [0.0, 0] for s in ("postfix", *SYSTEMS)}

        def walk(pid: int, owner: str) -> None:
            ppid, comm, cpu, rss = table[pid]
            if owner == "postfix" and comm in ("pipe", "spawn"):
                svc = self._service_pids.get(pid)
                if svc is None:
                    cmd = _cmdline(pid).split()
                    name = cmd[cmd.index("-n") + 1] if "-n" in cmd else ""
                    svc = next((s for s, names in self.SERVICES.items() if name in names), "postfix")
                    self._service_pids[pid] = svc
                if svc != "postfix":
                    # the daemon itself is Postfix; what it ran (cutime) is the system's
                    own = table[pid]
                    out["postfix"][1] += rss
                    try:
                        with open(f"/proc/{pid}/stat", "rb") as fh:
                            f = fh.read().rsplit(b")", 1)[1].split()
                        tick = os.sysconf("SC_CLK_TCK")
                        out["postfix"][0] += (int(f[11]) + int(f[12])) / tick  # utime, stime
                        out[svc][0] += (int(f[13]) + int(f[14])) / tick  # cutime, cstime
                    except (OSError, IndexError):
                        out["postfix"][0] += own[2]
                    for c in children.get(pid, ()):
                        walk(c, svc)
                    return
            if comm.startswith("mlmmj-"):
                owner = "mlmmj"
            out[owner][0] += cpu
            out[owner][1] += rss
            for c in children.get(pid, ()):
                walk(c, owner)

        if self.master_pid in table:
            walk(self.master_pid, "postfix")
        root = self._mailman_root()
        if root in table:
            walk(root, "mailman")
        # mlmmj-process/mlmmj-send may outlive and leave mlmmj-receive's tree
        for pid, (ppid, comm, cpu, rss) in table.items():
            if comm.startswith("mlmmj-") and not self._in_tree(pid, table):
                out["mlmmj"][0] += cpu
                out["mlmmj"][1] += rss
        return {k: (v[0], int(v[1])) for k, v in out.items()}

    def _in_tree(self, pid: int, table) -> bool:
        seen = 0
        while pid in table and seen < 64:
            if pid == self.master_pid:
                return True
            pid = table[pid][0]
            seen += 1
        return False


class MemorySampler:
    """Peak resident memory (sum over a group's processes) while it runs.

    Sampled every 2 ms, plus the time a scan of /proc takes.
    """

    def __init__(self, acct: Accounting, interval: float = 0.002):
        self.acct, self.interval = acct, interval
        self.peak: dict[str, int] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def _loop(self) -> None:
        while not self._stop.is_set():
            for k, (_, rss) in self.acct.snapshot().items():
                if rss > self.peak.get(k, 0):
                    self.peak[k] = rss
            self._stop.wait(self.interval)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


# ---------------------------------------------------------------------------
# the sink


class Sink:
    """bench/fastsink.py in its own process, driven over a Unix socket."""

    def __init__(self, base: Path):
        self.port = free_port()
        self.control = base / "sink.sock"
        self.proc = subprocess.Popen([sys.executable, str(REPO / "bench" / "fastsink.py"), "--port", str(self.port),
                                      "--control", str(self.control)], stdout=subprocess.PIPE)
        if self.proc.stdout.readline().strip() != b"ready":
            raise RuntimeError("the sink did not start")
        self.sock = socket.socket(socket.AF_UNIX)
        self.sock.connect(str(self.control))
        self.file = self.sock.makefile("rwb")

    def _ask(self, req: dict) -> dict:
        self.file.write(json.dumps(req).encode() + b"\n")
        self.file.flush()
        return json.loads(self.file.readline())

    def stats(self, ids: list[str]) -> dict:
        return self._ask({"cmd": "stats", "ids": ids})

    def reset(self) -> None:
        self._ask({"cmd": "reset"})

    def stop(self) -> None:
        with contextlib.suppress(Exception):
            self.sock.close()
        if self.proc.poll() is None:
            self.proc.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(10)
        if self.proc.poll() is None:
            self.proc.kill()


# ---------------------------------------------------------------------------
# PostgreSQL rosters

ROSTER_SQL = """
CREATE TABLE users (id serial PRIMARY KEY, email text NOT NULL UNIQUE, name text NOT NULL DEFAULT '',
                    role text NOT NULL DEFAULT 'student');
CREATE TABLE enrollments (id serial PRIMARY KEY, user_id integer NOT NULL REFERENCES users(id),
                          course text NOT NULL, enrollment_type text NOT NULL,
                          active boolean NOT NULL DEFAULT true, semester text NOT NULL DEFAULT 'current');
"""


class Roster:
    """A PostgreSQL database of our own, dropped at the end."""

    def __init__(self, tag: str):
        import psycopg

        self.psycopg = psycopg
        self.name = f"lfbench_{tag}_{uuid.uuid4().hex[:8]}"
        with psycopg.connect(PG_ADMIN_DSN, autocommit=True, connect_timeout=5) as admin:
            admin.execute(f'CREATE DATABASE "{self.name}"')
        self.dsn = PG_ADMIN_DSN.rsplit("/", 1)[0] + "/" + self.name
        with self.connect() as conn:
            conn.execute(ROSTER_SQL)

    def connect(self):
        return self.psycopg.connect(self.dsn, autocommit=True)

    def load(self, users: list[tuple[str, str]], enrollments: list[tuple[int, str, str, bool, str]]) -> None:
        """users: (email, name), ids 1..n in order; enrollments: (user index from 1, course, type, active, semester)."""
        with self.connect() as conn, conn.cursor() as cur:
            with cur.copy("COPY users (id, email, name) FROM STDIN") as cp:
                for i, (email, name) in enumerate(users, start=1):
                    cp.write_row((i, email, name))
            with cur.copy("COPY enrollments (user_id, course, enrollment_type, active, semester) FROM STDIN") as cp:
                for row in enrollments:
                    cp.write_row(row)
            cur.execute("SELECT setval('users_id_seq', (SELECT max(id) FROM users))")
            cur.execute("ANALYZE")

    def drop(self) -> None:
        with contextlib.suppress(Exception):
            with self.psycopg.connect(PG_ADMIN_DSN, autocommit=True, connect_timeout=5) as admin:
                admin.execute(f'DROP DATABASE IF EXISTS "{self.name}" WITH (FORCE)')


# ---------------------------------------------------------------------------
# installing what we compare


def apt_install(packages: list[str]) -> str | None:
    """Install Debian packages that are missing; returns an error line or None."""
    missing = [p for p in packages
               if b"install ok installed" not in run(["dpkg-query", "-W", "-f=${Status}", p], check=False).stdout]
    if not missing:
        return None
    log(f"apt-get install {' '.join(missing)}")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    if "postfix" in missing:
        run(["debconf-set-selections"], input=b"postfix postfix/main_mailer_type select No configuration\n")
    cp = run(["apt-get", "update", "-qq"], check=False, env=env)
    cp = run(["apt-get", "install", "-y", "-q", "--no-install-recommends", *missing], check=False, env=env,
             timeout=1800)
    if cp.returncode != 0:
        lines = (cp.stderr or cp.stdout).decode(errors="replace").strip().splitlines()
        return f"apt-get install {' '.join(missing)} failed: {lines[-1] if lines else cp.returncode}"
    return None


def production_install(base: Path) -> Path:
    """listfilter from a wheel (with its dependencies) in a fresh virtualenv; returns its bin/."""
    wheels = base / "wheels"
    run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation", "-w", str(wheels),
         str(REPO)])
    venv = base / "venv"
    run([sys.executable, "-m", "venv", str(venv)])
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    run([str(venv / "bin" / "pip"), "install", "--quiet", "--disable-pip-version-check",
         *map(str, wheels.glob("*.whl"))], env=env, timeout=1200)
    # pipe(8) runs the filter as "listfilter": it must reach the interpreter
    real = Path(os.path.realpath(venv / "bin" / "python"))
    make_traversable(real.parent.parent / "lib", readable=False)
    make_traversable(venv, readable=True)
    return venv / "bin"


# ---------------------------------------------------------------------------
# the bench site: Postfix + every system


def message(list_address: str, msgid: str, body_lines: int = 40) -> bytes:
    body = "".join(f"Line {i} of a short course announcement, like the ones a list carries.\n"
                   for i in range(body_lines))
    return (f'From: "Pat Prof" <{POSTER}>\nTo: {list_address}\nSubject: benchmark post {msgid[:8]}\n'
            f"Message-ID: <{msgid}>\nDate: {time.strftime('%a, %d %b %Y %H:%M:%S -0000', time.gmtime())}\n"
            f"MIME-Version: 1.0\nContent-Type: text/plain; charset=utf-8\n\n{body}").encode()


class Site:
    def __init__(self, base: Path, bindir: Path, args):
        self.base, self.bindir, self.args = base, bindir, args
        self.unavailable: dict[str, str] = {}
        self.lists: dict[tuple[str, str], str] = {}  # (system, list key) -> address
        self.rosters: list[Roster] = []
        self.mailman_cfg: Path | None = None
        self.mailman_started = False
        self.pf: PostfixInstance | None = None
        self.sink: Sink | None = None

    # -- addresses -----------------------------------------------------------

    @staticmethod
    def keys() -> list[tuple[str, list[str]]]:
        """(list key, members) for every list each system gets."""
        out = [(f"n{n}", [member(i) for i in range(n)]) for n in SIZES]
        out += [(f"p3-{k}", [p3_member(k, j) for j in range(p3_members())]) for k in range(P3_LISTS)]
        return out

    def address(self, system: str, key: str) -> str:
        # listfilter's lists come from the roster: each P2/P5 size is a course on
        # its own domain; P3's ten lists share one domain (like (a')'s), told
        # apart by enrollment type
        lf = f"{key}@p3.lf.bench.test" if key.startswith("p3-") else f"posts@{key}.lf.bench.test"
        return {"a": f"{key}@va.bench.test", "a'": f"{key}@pipe.bench.test", "listfilter": lf,
                "mlmmj": f"{key}@mlmmj.bench.test", "mailman": f"{key}@mm.bench.test"}[system]

    def port(self, system: str) -> int:
        return self.lf_port if system == "listfilter" else self.pf.smtpd_port

    # -- set-up --------------------------------------------------------------

    def setup(self) -> None:
        b = self.base
        self.sink = Sink(b)
        self.lf_port = free_port()
        ensure_user("listfilter")
        pf = self.pf = PostfixInstance(b / "postfix", relay_port=self.sink.port)
        if pf.config_dir.resolve() == HOST_POSTFIX or HOST_POSTFIX in pf.config_dir.resolve().parents:
            raise SystemExit("refusing: the private Postfix would use the host's configuration directory")
        maps = b / "maps"
        maps.mkdir()
        virtual, transport, recipients = [], [], []
        domains = ["pipe.bench.test", "mm.bench.test"]
        (b / "fanout").mkdir()
        for key, members in self.keys():
            virtual.append(f"{key}@va.bench.test\t{', '.join(members)}")
            transport.append(f"{key}@pipe.bench.test\tfanout:")
            recipients.append(f"{key}@pipe.bench.test\tOK")
            (b / "fanout" / key).write_text("\n".join(members) + "\n")
        fanout = b / "bin" / "fanout"
        fanout.parent.mkdir()
        # (a'): nothing but Postfix's own VERP fan-out of the message on stdin
        fanout.write_text("#!/bin/sh\n"
                          f'exec /usr/sbin/sendmail -G -i -XV -f "$1-bounces@pipe.bench.test" -- $(cat "{b}/fanout/$1")\n')
        fanout.chmod(0o755)
        lf_config = self.setup_listfilter_config()
        from listfilter.sync import config as C, postfixconf

        config = C.load(lf_config)
        settings = {}
        for line in postfixconf.main_cf(config, str(self.bindir / "listfilter")).splitlines():
            if " = " in line and not line.startswith("#"):
                k, v = line.split(" = ", 1)
                settings[k] = v
        settings.pop("relayhost", None)
        lf_restrictions = settings.pop("smtpd_recipient_restrictions")
        mlmmj_ok = self.setup_mlmmj_files(virtual, transport) if "mlmmj" in self.args.systems else False
        mm_ok = self.setup_mailman_files(transport, recipients) if "mailman" in self.args.systems else False
        (maps / "virtual").write_text("\n".join(virtual) + "\n")
        (maps / "transport").write_text("\n".join(transport) + "\n")
        (maps / "recipients").write_text("\n".join(recipients) + "\n")
        (maps / "domains").write_text("".join(f"{d}\tOK\n" for d in domains))
        pf.main_cf_settings.update({
            **settings,
            "relay_domains": f"hash:{maps}/domains, {settings['relay_domains']}",
            "relay_recipient_maps": f"hash:{maps}/recipients, {settings['relay_recipient_maps']}",
            "transport_maps": f"hash:{maps}/transport, {settings['transport_maps']}",
            "virtual_alias_maps": f"hash:{maps}/virtual, {settings['virtual_alias_maps']}",
            "virtual_alias_domains": "va.bench.test, mlmmj.bench.test",
            # (a) at 10,000 members: Postfix refuses expansions above this (default 1,000)
            "virtual_alias_expansion_limit": "100000",
            "lf_recipient_restrictions": lf_restrictions,
            "smtp_tls_security_level": "none",
            "fanout_destination_recipient_limit": "1",
            "mlmmj_destination_recipient_limit": "1",
            "propagate_unmatched_extensions": "canonical, virtual",
            # steady state: daemons are neither retired nor reused away mid-benchmark
            "max_idle": "3600s",
            "max_use": "1000000",
        })
        pf.master_cf_extra = "\n".join([
            # listfilter's own smtpd: its RCPT-time policy check, as deployed
            f"127.0.0.1:{self.lf_port} inet n - n - - smtpd -o smtpd_recipient_restrictions=$lf_recipient_restrictions",
            postfixconf.master_cf(config, str(self.bindir / "listfilter")),
            "fanout unix - n n - - pipe",
            f"  flags=q user=listfilter argv={fanout} ${{user}}",
            "mlmmj unix - n n - - pipe",
            f"  flags=ORhu user=mlmmj argv=/usr/bin/mlmmj-receive -F -L {b}/mlmmj/$nexthop",
        ])
        pf._write_config()
        register_alternate_config_dir(pf.config_dir)
        pf._registered = True  # stop() unregisters it again
        for name in ("virtual", "transport", "recipients", "domains"):
            run([POSTMAP, "-c", str(pf.config_dir), f"hash:{maps / name}"])
        self.lf_config = lf_config
        self.lf_sync(lf_config)
        pf.start()
        for key, _ in self.keys():
            for s in ("a", "a'", "listfilter"):
                self.lists[(s, key)] = self.address(s, key)
        if mlmmj_ok:
            for key, _ in self.keys():
                self.lists[("mlmmj", key)] = self.address("mlmmj", key)
        if mm_ok:
            self.start_mailman()
        self.acct = Accounting(pf._master_pid or pf._read_master_pid(),
                               self.mailman_pidfile if self.mailman_started else None)

    def setup_listfilter_config(self) -> Path:
        b = self.base
        roster = Roster("lists")
        self.rosters.append(roster)
        users = [(POSTER, "Pat Prof")]
        enroll = []
        courses = [(f"n{n}", "student", [member(i) for i in range(n)]) for n in SIZES]
        courses += [("p3", f"p3t{k}", [p3_member(k, j) for j in range(p3_members())]) for k in range(P3_LISTS)]
        index = {}
        for course, etype, members in courses:
            if etype in ("student", "p3t0"):
                enroll.append((1, course, "teacher", True, "current"))
            for m in members:
                if m not in index:
                    users.append((m, ""))
                    index[m] = len(users)
                enroll.append((index[m], course, etype, True, "current"))
        roster.load(users, enroll)
        state = b / "lf" / "state"
        (state / "spool").mkdir(parents=True)
        os.chown(state / "spool", pwd.getpwnam("listfilter").pw_uid, -1)
        sized = [f"n{n}.lf.bench.test" for n in SIZES]
        domains = "\n".join(f'[domains."{d}"]\ncourse = "{d.split(".")[0]}"\n' for d in sized + ["p3.lf.bench.test"])
        p3_lists = "\n".join(f'[lists."p3-{k}"]\ndisplay_name = "Bench P3 {k}"\ndomains = ["p3.lf.bench.test"]\n'
                             f'members = {{ roles = ["p3t{k}"] }}\nposters = {{ roles = ["teacher"] }}\n'
                             for k in range(P3_LISTS))
        types = ", ".join(f'"{t}"' for t in ["applied", "student", "teacher", "ta"] + [f"p3t{k}" for k in range(P3_LISTS)])
        path = b / "lf" / "lists.toml"
        path.write_text(f"""[site]
timezone = "America/Chicago"
state_dir = "{state}"
sendmail = "/usr/sbin/sendmail"
owners = ["{POSTER}"]
[postfix]
config_directory = "{b / 'postfix' / 'etc'}"
map_type = "hash"
[roster]
dsn = "{roster.dsn}"
enrollment_types = [{types}]

{domains}
[lists.posts]
display_name = "Bench Posts"
domains = [{", ".join(f'"{d}"' for d in sized)}]
members = {{ roles = ["student"] }}
posters = {{ roles = ["teacher"] }}

{p3_lists}
""")
        return path

    def lf_sync(self, config: Path, env=None) -> subprocess.CompletedProcess:
        return run([str(self.bindir / "listfilter"), "--config", str(config), "sync"], env=env)

    # -- mlmmj ---------------------------------------------------------------

    def setup_mlmmj_files(self, virtual: list[str], transport: list[str]) -> bool:
        err = apt_install(["mlmmj"])
        if err:
            self.unavailable["mlmmj"] = err
            return False
        try:
            ensure_mlmmj_user()
            spool = self.base / "mlmmj"
            spool.mkdir()
            for key, members in self.keys():
                run(["mlmmj-make-ml", "-L", key, "-s", str(spool)],
                    input=f"mlmmj.bench.test\n{POSTER}\n\n".encode())
                listdir = spool / key
                control = listdir / "control"
                (control / "smtpport").write_text(f"{self.pf.smtpd_port}\n")
                (control / "relayhost").write_text("127.0.0.1\n")
                # subscribers as mlmmj-sub stores them: subscribers.d/<first letter>
                by_letter: dict[str, list[str]] = {}
                for m in members:
                    by_letter.setdefault(m[0], []).append(m)
                for letter, addrs in by_letter.items():
                    (listdir / "subscribers.d" / letter).write_text("\n".join(addrs) + "\n")
                virtual.append(f"{key}@mlmmj.bench.test\tmlmmj.bench.test--{key}@localhost.mlmmj")
                transport.append(f"mlmmj.bench.test--{key}@localhost.mlmmj\tmlmmj:{key}")
            run(["chown", "-R", "mlmmj:", str(spool)])
            count = run(["mlmmj-list", "-L", str(spool / "n1000"), "-c"], user="mlmmj").stdout.decode().strip()
            if count != "1000":
                raise RuntimeError(f"mlmmj-list counts {count!r} subscribers on n1000, expected 1000")
            return True
        except Exception as exc:  # noqa: BLE001 - reported as unavailable with the reason
            self.unavailable["mlmmj"] = f"set-up failed: {str(exc).splitlines()[0]}"
            return False

    # -- Mailman 3 -----------------------------------------------------------

    def setup_mailman_files(self, transport: list[str], recipients: list[str]) -> bool:
        err = apt_install(["mailman3"])
        if err:
            self.unavailable["mailman"] = err
            return False
        home = self.base / "mailman"
        home.mkdir()
        self.lmtp_port = 8024 if port_free(8024) else free_port()
        rest_port = free_port()
        self.mailman_cfg = home / "mailman.cfg"
        self.mailman_pidfile = home / "var" / "master.pid"
        self.mailman_cfg.write_text(f"""[mailman]
site_owner: owner@bench.test
layout: bench
[paths.bench]
var_dir: {home}/var
queue_dir: $var_dir/queue
bin_dir: /usr/lib/mailman3/bin
list_data_dir: $var_dir/lists
log_dir: $var_dir/logs
lock_dir: $var_dir/locks
data_dir: $var_dir/data
cache_dir: $var_dir/cache
etc_dir: {home}
ext_dir: $var_dir/ext
messages_dir: $var_dir/messages
archive_dir: $var_dir/archives
template_dir: $var_dir/templates
pid_file: $var_dir/master.pid
lock_file: $lock_dir/master.lck
[database]
class: mailman.database.sqlite.SQLiteDatabase
url: sqlite:///$DATA_DIR/mailman.db
[webservice]
hostname: 127.0.0.1
port: {rest_port}
[mta]
# Postfix's routing to the LMTP port is written by the benchmark itself
incoming: mailman.mta.null.NullMTA
outgoing: mailman.mta.deliver.deliver
lmtp_host: 127.0.0.1
lmtp_port: {self.lmtp_port}
smtp_host: 127.0.0.1
smtp_port: {self.pf.smtpd_port}
""")
        (home / "benchhelper.py").write_text(
            "from mailman.config import config\n"
            "from mailman.interfaces.action import Action\n\n"
            "def open_list(mlist):\n"
            "    # the poster is not subscribed (as with every other system): accept, do not hold\n"
            "    mlist.default_nonmember_action = Action.accept\n"
            "    mlist.send_welcome_message = False\n"
            "    config.db.commit()\n")
        run(["chown", "-R", "list:", str(home)])
        suffixes = ("", "-bounces", "-confirm", "-join", "-leave", "-owner", "-request", "-subscribe",
                    "-unsubscribe")
        for key, _ in self.keys():
            for s in suffixes:
                transport.append(f"{key}{s}@mm.bench.test\tlmtp:[127.0.0.1]:{self.lmtp_port}")
                recipients.append(f"{key}{s}@mm.bench.test\tOK")
        return True

    def mailman(self, *args: str, timeout: float = 600, check: bool = True):
        env = {"PATH": "/usr/bin:/bin", "HOME": str(self.base / "mailman"), "LANG": "C.UTF-8",
               "PYTHONPATH": str(self.base / "mailman")}
        return run(["env", *(f"{k}={v}" for k, v in env.items()), "mailman", "-C", str(self.mailman_cfg), *args],
                   user="list", timeout=timeout, check=check, cwd=str(self.base / "mailman"))

    def start_mailman(self) -> None:
        try:
            self.mailman_started = True  # from here on, stop() stops it
            # "mailman start" forks the master, which keeps any inherited pipe open: log to a file
            out = self.base / "mailman" / "start.log"
            with open(out, "wb") as fh:
                env = {"PATH": "/usr/bin:/bin", "HOME": str(self.base / "mailman"), "LANG": "C.UTF-8",
                       "PYTHONPATH": str(self.base / "mailman")}
                proc = subprocess.run(["runuser", "-u", "list", "--", "env", *(f"{k}={v}" for k, v in env.items()),
                                       "mailman", "-C", str(self.mailman_cfg), "start"],
                                      stdout=fh, stderr=fh, stdin=subprocess.DEVNULL, timeout=120,
                                      cwd=str(self.base / "mailman"))
            if proc.returncode != 0:
                raise RuntimeError(f"mailman start exited {proc.returncode}: {out.read_text()[-500:]}")
            deadline = time.monotonic() + 120
            while not port_open(self.lmtp_port):
                if time.monotonic() > deadline:
                    raise RuntimeError(f"Mailman's LMTP runner is not listening on {self.lmtp_port} after 120 s")
                time.sleep(0.5)
            for key, members in self.keys():
                self.mailman("create", "-q", f"{key}@mm.bench.test")
                path = self.base / "mailman" / f"{key}.members"
                path.write_text("\n".join(members) + "\n")
                os.chown(path, pwd.getpwnam("list").pw_uid, -1)
                self.mailman("addmembers", "--no-welcome-msg", str(path), f"{key}@mm.bench.test")
                self.lists[("mailman", key)] = self.address("mailman", key)
            self.mailman("shell", "-l", "^.*@mm\\.bench\\.test", "-r", "benchhelper.open_list")
        except Exception as exc:  # noqa: BLE001
            self.unavailable["mailman"] = f"set-up failed: {str(exc).strip().splitlines()[0]}"
            for key, _ in self.keys():
                self.lists.pop(("mailman", key), None)

    def mailman_idle(self) -> bool:
        queue = self.base / "mailman" / "var" / "queue"
        return not any(p.is_file() for d in ("in", "pipeline", "out", "virgin", "retry") for p in (queue / d).glob("*"))

    # -- tear-down -----------------------------------------------------------

    def stop(self) -> None:
        if self.mailman_started or self.mailman_cfg is not None:
            with contextlib.suppress(Exception):
                self.mailman("stop", timeout=60, check=False)
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline and pid_alive(read_pid(self.mailman_pidfile)):
                time.sleep(0.5)
            kill_user_processes("list", str(self.base))
        if self.pf is not None:
            with contextlib.suppress(Exception):
                self.pf.stop()
        kill_user_processes("mlmmj", str(self.base))
        if self.sink is not None:
            self.sink.stop()
        for r in self.rosters:
            r.drop()

    # -- one post, measured ----------------------------------------------------

    def post(self, system: str, key: str, expected: int, *, timeout: float, sample_memory: bool = False) -> dict:
        msgid = f"{uuid.uuid4().hex}@bench.test"
        address = self.lists[(system, key)]
        raw = message(address, msgid)
        before = self.acct.snapshot()
        sampler = MemorySampler(self.acct) if sample_memory else contextlib.nullcontext()
        with sampler:
            t0 = time.monotonic()
            with smtplib.SMTP("127.0.0.1", self.port(system), timeout=60) as smtp:
                smtp.sendmail(POSTER, [address], raw)
            got = self.wait_sink([msgid], expected, t0 + timeout)
            self.wait_idle(system, time.monotonic() + 60)
        after = self.acct.snapshot()
        row = {
            "time_s": (got["last"] - t0) if got["complete"] else None,
            "delivered": got["unique"], "expected": expected, "duplicates": got["dups"],
            "transactions": got["transactions"],
            "cpu_system_s": after[system][0] - before[system][0] if system != "a" else 0.0,
            "cpu_postfix_s": after["postfix"][0] - before["postfix"][0],
        }
        row["cpu_total_s"] = row["cpu_system_s"] + row["cpu_postfix_s"]
        if sample_memory:
            row["rss_system_mb"] = sampler.peak.get(system, 0) / 2**20 if system != "a" else 0.0
            row["rss_postfix_mb"] = sampler.peak.get("postfix", 0) / 2**20
        return row

    def wait_sink(self, ids: list[str], expected_each: int, deadline: float) -> dict:
        ids = [f"<{i}>" for i in ids]
        while True:
            stats = self.sink.stats(ids)
            unique = sum(s["unique"] for s in stats.values())
            if unique >= expected_each * len(ids) or time.monotonic() > deadline:
                break
            time.sleep(0.02)
        lasts = [s["last"] for s in stats.values() if s["last"] is not None]
        firsts = [s["first"] for s in stats.values() if s["first"] is not None]
        return {"complete": unique >= expected_each * len(ids), "unique": unique,
                "dups": sum(s["dups"] for s in stats.values()),
                "transactions": sum(s["transactions"] for s in stats.values()),
                "last": max(lasts) if lasts else None, "first": min(firsts) if firsts else None}

    def wait_idle(self, system: str, deadline: float) -> None:
        while time.monotonic() < deadline:
            busy = bool(self.pf.queue())
            if system == "mailman" and not busy:
                busy = not self.mailman_idle()
            if not busy:
                return
            time.sleep(0.05)


def p3_members() -> int:
    return ARGS.p3_members


def port_free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
            return True
        except OSError:
            return False


def port_open(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(1)
        return s.connect_ex(("127.0.0.1", port)) == 0


def read_pid(path: Path | None) -> int | None:
    try:
        return int(path.read_text().split()[0])
    except (OSError, ValueError, IndexError, AttributeError):
        return None


def pid_alive(pid: int | None) -> bool:
    if not pid:
        return False
    try:
        os.kill(pid, 0)
        return True
    except ProcessLookupError:
        return False


def kill_user_processes(user: str, marker: str) -> None:
    """Kill what we started as ``user`` (its command line or environment names our directory)."""
    try:
        uid = pwd.getpwnam(user).pw_uid
    except KeyError:
        return
    me = os.getpid()
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == me:
            continue
        try:
            if os.stat(f"/proc/{entry}").st_uid != uid:
                continue
            text = _cmdline(int(entry))
            with open(f"/proc/{entry}/environ", "rb") as fh:
                text += fh.read().decode(errors="replace")
        except OSError:
            continue
        if marker in text:
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(entry), 9)


def ensure_mlmmj_user() -> None:
    try:
        pwd.getpwnam("mlmmj")
    except KeyError:
        run(["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", "mlmmj"])


# ---------------------------------------------------------------------------
# scenarios


def rounds(systems: list[str], runs: int):
    """(round, system) pairs; each round rotates the order so drift hits every system alike."""
    for r in range(runs):
        k = r % len(systems)
        for s in systems[k:] + systems[:k]:
            yield r, s


def median(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def scenario_fanout(site: Site, size: int, systems: list[str], runs: int) -> dict:
    key = f"n{size}"
    timeout = max(120.0, size * 0.25)
    results: dict[str, list[dict]] = {s: [] for s in systems}
    log(f"P2/P5 {size} members: warm-up")
    for s in systems:
        site.post(s, key, size, timeout=timeout)
    for r, s in rounds(systems, runs):
        row = site.post(s, key, size, timeout=timeout)
        log(f"  {size:>6} {LABEL[s]:<24} run {r + 1}: "
            f"{row['time_s'] if row['time_s'] is None else round(row['time_s'], 3)} s, "
            f"{row['delivered']}/{size} delivered, {row['duplicates']} dup, cpu {row['cpu_total_s']:.2f} s")
        results[s].append(row)
    log(f"P2/P5 {size} members: memory-sampled runs")
    mem = {s: site.post(s, key, size, timeout=timeout, sample_memory=True) for s in systems}
    out = {}
    for s in systems:
        rows = results[s]
        out[s] = {
            "time_s": median(r["time_s"] for r in rows),
            # CPU is read in clock ticks (10 ms): the mean over the runs resolves less than that
            "cpu_total_s": statistics.fmean(r["cpu_total_s"] for r in rows),
            "cpu_system_s": statistics.fmean(r["cpu_system_s"] for r in rows),
            "rss_system_mb": mem[s]["rss_system_mb"],
            "rss_postfix_mb": mem[s]["rss_postfix_mb"],
            "delivered": min(r["delivered"] for r in rows), "expected": size,
            "duplicates": sum(r["duplicates"] for r in rows),
            "incomplete_runs": sum(r["time_s"] is None for r in rows),
            "transactions": median(r["transactions"] for r in rows),
            "runs": len(rows),
        }
    return out


def scenario_p3(site: Site, systems: list[str], runs: int) -> dict:
    m = p3_members()
    expected_each = m
    results: dict[str, list[dict]] = {s: [] for s in systems}

    def inject(system: str) -> dict:
        per_list = P3_POSTS // P3_LISTS
        ids = [[f"{uuid.uuid4().hex}@bench.test" for _ in range(per_list)] for _ in range(P3_LISTS)]
        msgs = [[message(site.lists[(system, f"p3-{k}")], i, body_lines=10) for i in ids[k]] for k in range(P3_LISTS)]
        errors = []

        def worker(k: int) -> None:
            try:
                with smtplib.SMTP("127.0.0.1", site.port(system), timeout=120) as smtp:
                    for raw in msgs[k]:
                        smtp.sendmail(POSTER, [site.lists[(system, f"p3-{k}")]], raw)
            except Exception as exc:  # noqa: BLE001
                errors.append(f"list {k}: {exc}")

        threads = [threading.Thread(target=worker, args=(k,)) for k in range(P3_LISTS)]
        before = site.acct.snapshot()
        t0 = time.monotonic()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        injected = time.monotonic() - t0
        flat = [i for group in ids for i in group]
        got = site.wait_sink(flat, expected_each, t0 + ARGS.p3_timeout)
        site.wait_idle(system, time.monotonic() + 120)
        time.sleep(1.0)  # late duplicates would show now
        got2 = site.wait_sink(flat, expected_each, 0)
        after = site.acct.snapshot()
        elapsed = (got["last"] - t0) if got["complete"] else None
        return {"time_s": elapsed, "inject_s": injected, "delivered": got2["unique"],
                "expected": expected_each * len(flat), "duplicates": got2["dups"],
                "lost": expected_each * len(flat) - got2["unique"],
                "posts_per_s": (len(flat) / elapsed) if elapsed else None, "errors": errors,
                "cpu_total_s": (after[system][0] - before[system][0] if system != "a" else 0)
                + after["postfix"][0] - before["postfix"][0]}

    for r, s in rounds(systems, runs):
        row = inject(s)
        log(f"  P3 {LABEL[s]:<24} run {r + 1}: {row['time_s'] and round(row['time_s'], 2)} s, "
            f"{row['delivered']}/{row['expected']} delivered, {row['duplicates']} dup"
            + (f", errors: {row['errors'][:2]}" if row["errors"] else ""))
        results[s].append(row)
    out = {}
    for s in systems:
        rows = results[s]
        out[s] = {"time_s": median(r["time_s"] for r in rows), "posts_per_s": median(r["posts_per_s"] for r in rows),
                  "cpu_total_s": median(r["cpu_total_s"] for r in rows),
                  "delivered": min(r["delivered"] for r in rows), "expected": rows[0]["expected"],
                  "lost": max(r["lost"] for r in rows), "duplicates": max(r["duplicates"] for r in rows),
                  "runs": len(rows), "errors": [e for r in rows for e in r["errors"]][:5]}
    return out


def scenario_p4(site: Site, runs: int) -> dict:
    """listfilter sync: 50,000 roster rows, 200 lists over 50 domains; then unchanged and one-change re-syncs."""
    b = site.base / "p4"
    b.mkdir()
    roster = Roster("p4")
    site.rosters.append(roster)
    n_domains, rows_wanted = 50, 50_000
    users = [(f"person{i:05d}@campus.example.edu", f"Person {i}") for i in range(25_000)]
    enroll = []
    kinds = ["student"] * 85 + ["applied"] * 8 + ["ta"] * 5 + ["teacher"] * 2
    for u in range(len(users)):
        for c in (u % n_domains, (u * 7 + 3) % n_domains):
            if len(enroll) >= rows_wanted:
                break
            enroll.append((u + 1, f"C{c:02d}", kinds[(u + c) % len(kinds)], (u % 23) != 0, "current"))
    assert len(enroll) == rows_wanted, len(enroll)
    roster.load(users, enroll)
    domains = "\n".join(f'[domains."c{c:02d}.p4.bench.test"]\ncourse = "C{c:02d}"\n' for c in range(n_domains))
    config = b / "lists.toml"
    config.write_text(f"""[site]
timezone = "America/Chicago"
state_dir = "{b / 'state'}"
owners = ["{POSTER}"]
[postfix]
config_directory = "{site.pf.config_dir}"
map_type = "hash"
[roster]
dsn = "{roster.dsn}"

{domains}
[lists.students]
display_name = "Course Students"
members = {{ roles = ["applied", "student", "teacher", "ta"] }}
posters = {{ roles = ["instructor", "ta"] }}
reply_to = "staff"
[lists.enrolled]
display_name = "Course Enrolled"
members = {{ roles = ["student"] }}
posters = {{ roles = ["instructor"] }}
[lists.staff]
display_name = "Course Staff"
members = {{ roles = ["staff"] }}
posters = "members"
[lists.testing]
display_name = "Course Testing"
members = {{ emails = ["{POSTER}"] }}
posters = ["{POSTER}"]
""")
    cmd = [str(site.bindir / "listfilter"), "--config", str(config), "sync"]
    state = b / "state"
    mapdir = state / "postfix"

    def map_stamps():
        return {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in mapdir.glob("*")} if mapdir.exists() else {}

    def reloads() -> int:
        return site.pf.maillog().count("reload -- version")

    def timed_rss() -> tuple[float, float, str]:
        # GNU time (a small C program) reports the sync's own peak RSS; a child
        # forked straight from this large process would report ours
        with tempfile.NamedTemporaryFile(dir=b) as rss_file:
            start = time.perf_counter()
            proc = subprocess.run(["/usr/bin/time", "-o", rss_file.name, "-f", "%M", *cmd], capture_output=True)
            wall = time.perf_counter() - start
            rss_kb = int(Path(rss_file.name).read_text().split()[-1])
        out = proc.stdout + proc.stderr
        if proc.returncode != 0:
            raise RuntimeError(f"listfilter sync exited {proc.returncode}: {out.decode(errors='replace')[-1500:]}")
        return wall, rss_kb / 1024, out.decode(errors="replace")

    res = {"full": [], "unchanged": [], "changed": []}
    notes = []
    flip = False
    for r in range(runs):
        shutil.rmtree(state, ignore_errors=True)
        wall, rss, _ = timed_rss()
        res["full"].append((wall, rss))
        stamps, nreload = map_stamps(), reloads()
        snap = (state / "snapshot.sqlite").stat()
        wall, rss, _ = timed_rss()
        res["unchanged"].append((wall, rss))
        if map_stamps() != stamps:
            notes.append(f"run {r + 1}: the unchanged re-sync rewrote a map (postmap ran)")
        time.sleep(0.3)
        if reloads() != nreload:
            notes.append(f"run {r + 1}: the unchanged re-sync reloaded Postfix")
        if (state / "snapshot.sqlite").stat().st_ino != snap.st_ino:
            notes.append(f"run {r + 1}: the unchanged re-sync rewrote the snapshot")
        flip = not flip
        with roster.connect() as conn:
            conn.execute("UPDATE enrollments SET active = %s WHERE id = 17", (not flip,))
        wall, rss, _ = timed_rss()
        res["changed"].append((wall, rss))
        log(f"  P4 run {r + 1}: full {res['full'][-1][0]:.2f} s, unchanged {res['unchanged'][-1][0]:.2f} s,"
            f" one change {res['changed'][-1][0]:.2f} s")
    with roster.connect() as conn:
        n_rows = conn.execute("SELECT count(*) FROM enrollments").fetchone()[0]
    import sqlite3

    with contextlib.closing(sqlite3.connect(state / "snapshot.sqlite")) as db:
        n_lists = db.execute("SELECT count(*) FROM lists").fetchone()[0]
    out = {k: {"time_s": median(w for w, _ in v), "peak_rss_mb": max(r for _, r in v), "runs": len(v)}
           for k, v in res.items()}
    out["roster_rows"], out["lists"], out["domains"] = n_rows, n_lists, n_domains
    out["notes"] = notes
    out["unchanged_clean"] = not notes
    return out


def filter_processes(name: str = "listfilter-deliver") -> tuple[int, int]:
    """(how many, total RSS bytes) of the ``name`` processes pipe(8) is running now.

    Only those whose parent is a pipe daemon: a filter's own child between
    fork and exec (its sendmail) still shows the filter's command line.
    """
    table = _proc_table()
    count = rss = 0
    for pid, (ppid, comm, _cpu, size) in table.items():
        # comm is the script's name cut to 15 characters (or the interpreter's); the command line says which
        if not (name.startswith(comm) or comm.startswith("python")) or table.get(ppid, (0, ""))[1] != "pipe":
            continue
        if name in _cmdline(pid):
            count += 1
            rss += size
    return count, rss


class ProcessSampler:
    """The peak number of filter processes running at once, and their peak total RSS, sampled every 5 ms."""

    def __init__(self, interval: float = 0.005):
        self.interval = interval
        self.peak_count = self.peak_rss = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def _loop(self) -> None:
        while not self._stop.is_set():
            count, rss = filter_processes()
            self.peak_count = max(self.peak_count, count)
            self.peak_rss = max(self.peak_rss, rss)
            self._stop.wait(self.interval)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


def scenario_p6(site: Site, runs: int, posts: int, maxprocs: list[int]) -> dict:
    """A burst: ``posts`` posts to P3's ten lists, held in the queue, then released at once.

    While they are injected, smtpd puts every message on hold (the HOLD
    action of access(5)); ``postsuper -H ALL`` and ``postqueue -f`` then
    release them together. For each ``maxproc`` of the listfilter pipe
    (master.cf, set with ``postconf -F``): the peak number of
    listfilter-deliver processes at once (sampled from /proc), their peak
    total RSS, and the time from the release until the sink has every copy.
    """
    from listfilter.sync import config as C

    pf = site.pf
    config = C.load(site.lf_config)
    field = f"{config.site.transport}/unix/process_limit"  # master.cf's maxproc column, as postconf -F names it
    members = p3_members()
    timeout = ARGS.p6_timeout
    results: dict[int, list[dict]] = {m: [] for m in maxprocs}

    def burst(maxproc: int) -> dict:
        pf.postconf("-F", "-e", f"{field}={maxproc}")
        pf.set_main_cf(smtpd_data_restrictions="check_client_access static:HOLD")
        pf.reload()
        ids = [f"{uuid.uuid4().hex}@bench.test" for _ in range(posts)]
        per_list: dict[int, list[bytes]] = {k: [] for k in range(P3_LISTS)}
        for i, msgid in enumerate(ids):
            k = i % P3_LISTS
            per_list[k].append(message(site.lists[("listfilter", f"p3-{k}")], msgid, body_lines=10))
        errors: list[str] = []

        def worker(k: int) -> None:
            try:
                with smtplib.SMTP("127.0.0.1", site.port("listfilter"), timeout=120) as smtp:
                    for raw in per_list[k]:
                        smtp.sendmail(POSTER, [site.lists[("listfilter", f"p3-{k}")]], raw)
            except Exception as exc:  # noqa: BLE001 - reported
                errors.append(f"list {k}: {exc}")

        threads = [threading.Thread(target=worker, args=(k,)) for k in range(P3_LISTS)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        held = pf.wait_queue(lambda q: sum(e["queue_name"] == "hold" for e in q) >= posts, timeout=120)
        pf.postconf("-X", "smtpd_data_restrictions")
        pf.reload()
        with ProcessSampler() as sampler:
            t0 = time.monotonic()
            pf.postsuper("-H", "ALL")
            pf.flush()
            got = site.wait_sink(ids, members, t0 + timeout)
            site.wait_idle("listfilter", time.monotonic() + 120)
        time.sleep(0.5)  # late duplicates would show now
        final = site.wait_sink(ids, members, 0)
        return {"maxproc": maxproc, "held": len(held), "drain_s": (got["last"] - t0) if got["complete"] else None,
                "peak_processes": sampler.peak_count, "peak_rss_mb": sampler.peak_rss / 2**20,
                "delivered": final["unique"], "expected": members * posts, "duplicates": final["dups"],
                "errors": errors}

    try:
        for r, m in rounds([str(m) for m in maxprocs], runs):
            row = burst(int(m))
            log(f"  P6 maxproc {m:>4} run {r + 1}: drained in {row['drain_s'] and round(row['drain_s'], 2)} s,"
                f" {row['peak_processes']} listfilter-deliver at once, {row['peak_rss_mb']:.0f} MB,"
                f" {row['delivered']}/{row['expected']} delivered, {row['duplicates']} dup"
                + (f", errors: {row['errors'][:2]}" if row["errors"] else ""))
            results[int(m)].append(row)
    finally:
        pf.postconf("-X", "smtpd_data_restrictions")
        pf.postconf("-F", "-e", f"{field}={config.postfix.maxproc}")
        pf.reload()
    out = {"posts": posts, "lists": P3_LISTS, "members": members, "maxprocs": {}}
    for m, rows in results.items():
        out["maxprocs"][str(m)] = {
            "drain_s": median(r["drain_s"] for r in rows),
            "peak_processes": max(r["peak_processes"] for r in rows),
            "peak_rss_mb": max(r["peak_rss_mb"] for r in rows),
            "delivered": min(r["delivered"] for r in rows), "expected": rows[0]["expected"],
            "duplicates": max(r["duplicates"] for r in rows), "runs": len(rows),
            "errors": [e for r in rows for e in r["errors"]][:5],
        }
    return out


# ---------------------------------------------------------------------------
# report


def fmt_s(v):
    return "-" if v is None else (f"{v * 1000:.0f} ms" if v < 1 else f"{v:.2f} s")


def fmt_ratio(a, b):
    return "-" if a is None or b in (None, 0) else f"{a / b:.2f}x"


DIV_A, DIV_AP = "÷ (a)", "÷ (a')"


def report(results: dict, site_unavailable: dict[str, str]) -> str:
    lines = []
    add = lines.append
    if "P1" in results:
        p1 = results["P1"]
        add("P1/P1b: `listfilter deliver` alone (sendmail stubbed), wall median ÷ `python3 -c pass`")
        add(f"  {'':<28}{'median':>10}{'ratio':>9}{'peak RSS':>11}  goal")
        for r in p1["rows"]:
            goal = f"{r['goal']} ({'met' if r['met'] else 'MISSED'})" if "goal" in r else ""
            add(f"  {r['scenario']:<28}{r['median_s'] * 1000:>8.1f}ms{r['ratio']:>8.2f}x{r['peak_rss_mb']:>8.1f} MB  {goal}")
        add("")
    if "fanout" in results:
        add("P2/P5: one post through Postfix — time until the sink has every copy (median), CPU of the whole path")
        add("       (Postfix + the system's own processes, mean), peak resident memory of the system's own processes")
        add(f"  {'members':>7}  {'system':<24}{'time':>9}{DIV_A:>8}{DIV_AP:>8}{'CPU':>9}{'sys RSS':>10}"
            f"{'Postfix RSS':>13}{'delivered':>11}{'dup':>5}")
        for size, rows in results["fanout"].items():
            base_a = rows.get("a", {}).get("time_s")
            base_ap = rows.get("a'", {}).get("time_s")
            for s in SYSTEMS:
                if s not in rows:
                    if s in site_unavailable:
                        add(f"  {size:>7}  {LABEL[s]:<24}unavailable: {site_unavailable[s]}")
                    continue
                r = rows[s]
                add(f"  {size:>7}  {LABEL[s]:<24}{fmt_s(r['time_s']):>9}{fmt_ratio(r['time_s'], base_a):>8}"
                    f"{fmt_ratio(r['time_s'], base_ap):>8}{fmt_s(r['cpu_total_s']):>9}"
                    f"{r['rss_system_mb']:>7.1f} MB{r['rss_postfix_mb']:>10.1f} MB"
                    f"{r['delivered']:>6}/{r['expected']:<5}{r['duplicates']:>4}")
        add("")
    if "P3" in results:
        p3 = results["P3"]
        base = p3.get("a'", {}).get("posts_per_s")
        add(f"P3: {P3_POSTS} posts to {P3_LISTS} lists ({p3_members()} members each) injected at once over "
            f"{P3_LISTS} SMTP connections")
        add(f"  {'system':<24}{'time':>9}{'posts/s':>9}{DIV_AP:>8}{'CPU':>9}  delivered / lost / duplicated")
        for s in SYSTEMS:
            if s not in p3:
                if s in site_unavailable:
                    add(f"  {LABEL[s]:<24}unavailable: {site_unavailable[s]}")
                continue
            r = p3[s]
            pps = r["posts_per_s"]
            add(f"  {LABEL[s]:<24}{fmt_s(r['time_s']):>9}{(f'{pps:.1f}' if pps else '-'):>9}"
                f"{fmt_ratio(pps, base):>8}{fmt_s(r['cpu_total_s']):>9}  {r['delivered']} / {r['lost']} / {r['duplicates']}")
        add("")
    if "P4" in results:
        p4 = results["P4"]
        add(f"P4: listfilter sync, {p4['roster_rows']} roster rows, {p4['lists']} lists over {p4['domains']} domains")
        for k, label in (("full", "first sync (empty state)"), ("changed", "one roster row changed"),
                         ("unchanged", "unchanged re-sync")):
            add(f"  {label:<28}{fmt_s(p4[k]['time_s']):>9}{p4[k]['peak_rss_mb']:>8.1f} MB peak RSS")
        add(f"  unchanged re-sync wrote nothing, ran no postmap and no reload: {'yes' if p4['unchanged_clean'] else 'NO'}")
        for n in p4["notes"]:
            add(f"    {n}")
        add("")
    if "P6" in results:
        p6 = results["P6"]
        add(f"P6: a burst of {p6['posts']} posts to {p6['lists']} lists ({p6['members']} members each), held in the"
            " queue and released at once")
        add(f"  {'maxproc':>7}{'drain':>9}{'deliver at once':>17}{'their RSS':>11}  delivered / duplicated")
        for m, r in p6["maxprocs"].items():
            add(f"  {m:>7}{fmt_s(r['drain_s']):>9}{r['peak_processes']:>17}{r['peak_rss_mb']:>8.0f} MB"
                f"  {r['delivered']}/{r['expected']} / {r['duplicates']}")
        add("")
    if "goals" in results:
        add("Goals")
        for g in results["goals"]:
            add(f"  {g['id']:<4}{g['what']:<64}{g['value']:<40}{'met' if g['met'] else 'MISSED'}")
    return "\n".join(lines)


def goals(results: dict) -> list[dict]:
    out = []
    if "P1" in results:
        for r in results["P1"]["rows"]:
            if "goal" in r:
                out.append({"id": "P1" if "500" in r["scenario"] else "P1b",
                            "what": f"{r['scenario']}: {r['goal']}",
                            "value": f"{r['ratio']:.2f}x, {r['peak_rss_mb']:.1f} MB", "met": r["met"]})
    if "fanout" in results:
        for size in ("1000", "10000"):
            rows = results["fanout"].get(size)
            if not rows or "listfilter" not in rows or "a'" not in rows:
                continue
            lf, ap = rows["listfilter"]["time_s"], rows["a'"]["time_s"]
            if lf and ap:
                out.append({"id": "P2", "what": f"{size} members: listfilter ÷ (a') <= 1.25x",
                            "value": f"{lf / ap:.2f}x", "met": lf / ap <= 1.25})
    if "P3" in results and "listfilter" in results["P3"] and "a'" in results["P3"]:
        lf, ap = results["P3"]["listfilter"], results["P3"]["a'"]
        ok = lf["lost"] == 0 and lf["duplicates"] == 0 and lf["delivered"] == lf["expected"]
        out.append({"id": "P3", "what": "delivered / lost / duplicated = all / 0 / 0",
                    "value": f"{lf['delivered']} / {lf['lost']} / {lf['duplicates']}", "met": ok})
        if lf["posts_per_s"] and ap["posts_per_s"]:
            r = lf["posts_per_s"] / ap["posts_per_s"]
            out.append({"id": "P3", "what": "throughput ÷ (a') >= 0.5x", "value": f"{r:.2f}x", "met": r >= 0.5})
    if "P4" in results:
        p4 = results["P4"]
        out.append({"id": "P4", "what": "sync of 50,000 rows, 200 lists <= 2 s (first / one change)",
                    "value": f"{fmt_s(p4['full']['time_s'])} / {fmt_s(p4['changed']['time_s'])}",
                    "met": max(p4["full"]["time_s"], p4["changed"]["time_s"]) <= 2.0})
        out.append({"id": "P4", "what": "unchanged re-sync <= 0.5 s, no postmap, no reload",
                    "value": fmt_s(p4["unchanged"]["time_s"]),
                    "met": p4["unchanged"]["time_s"] <= 0.5 and p4["unchanged_clean"]})
    if "P6" in results:
        for m, r in results["P6"]["maxprocs"].items():
            ok = r["peak_processes"] <= int(m) and r["delivered"] == r["expected"] and r["duplicates"] == 0
            out.append({"id": "P6", "what": f"maxproc {m}: at most {m} filters at once, all delivered once",
                        "value": f"{r['peak_processes']} at once, {r['delivered']}/{r['expected']}", "met": ok})
    if "fanout" in results:
        for size in ("1000", "2"):
            rows = results["fanout"].get(size, {})
            lf = rows.get("listfilter")
            for peer in ("mailman", "mlmmj"):
                if lf is None or peer not in rows:
                    continue
                p = rows[peer]
                figs = [("time", lf["time_s"], p["time_s"]), ("CPU", lf["cpu_total_s"], p["cpu_total_s"]),
                        ("memory", lf["rss_system_mb"], p["rss_system_mb"])]
                ok = all(a is not None and b is not None and a < b for _, a, b in figs)
                value = ", ".join(f"{n} {fmt_ratio(a, b)}" for n, a, b in figs)
                out.append({"id": "P5", "what": f"{size} members: ahead of {LABEL[peer]} on every figure",
                            "value": value, "met": ok})
    return out


# ---------------------------------------------------------------------------


def host_postfix_fingerprint() -> dict[str, str | None]:
    out = {}
    for name in ("main.cf", "master.cf"):
        p = HOST_POSTFIX / name
        out[name] = hashlib.sha256(p.read_bytes()).hexdigest() if p.exists() else None
    return out


ARGS = None


def main() -> int:
    global ARGS
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--runs", type=int, default=5, help="timed runs per system and scenario (default 5)")
    p.add_argument("--p1-runs", type=int, default=21, help="runs for P1/P1b (default 21)")
    p.add_argument("--only", default="P1,P2,P3,P4,P5,P6", help="scenarios to run, comma-separated")
    p.add_argument("--systems", default=",".join(SYSTEMS), help="systems to compare, comma-separated")
    p.add_argument("--sizes", default=",".join(map(str, SIZES)), help="list sizes for P2/P5")
    p.add_argument("--slow-at-10000", default="mailman",
                   help="which of mlmmj,mailman also run at 10,000 members (mlmmj takes ~8 minutes a post)")
    p.add_argument("--p3-members", type=int, default=20, help="members of each of P3's 10 lists")
    p.add_argument("--p3-systems", default="a,a',listfilter,mailman,mlmmj")
    p.add_argument("--p3-timeout", type=float, default=900)
    p.add_argument("--p6-posts", type=int, default=200, help="posts in P6's burst (default 200)")
    p.add_argument("--p6-maxprocs", default="4,100", help="master.cf maxproc values P6 compares (default 4,100)")
    p.add_argument("--p6-timeout", type=float, default=900)
    p.add_argument("--json", metavar="PATH", help="also write the results as JSON here")
    p.add_argument("--keep", action="store_true", help="keep the work directory (everything is still stopped)")
    args = ARGS = p.parse_args()
    # a kill (or a closed terminal) still stops everything we started
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, lambda signum, frame: sys.exit(128 + signum))
    args.systems = [s for s in args.systems.split(",") if s]
    only = {s.strip().upper() for s in args.only.split(",")}
    if os.geteuid() != 0:
        raise SystemExit("bench/compare.py runs as root (it starts Postfix, Mailman and mlmmj as their users)")
    err = apt_install(["postfix", "time"])
    if err:
        raise SystemExit(err)
    fingerprint = host_postfix_fingerprint()
    base = Path(tempfile.mkdtemp(prefix="lf-bench-", dir="/tmp"))
    base.chmod(0o755)
    results: dict = {"machine": {"cpus": os.cpu_count(), "python": sys.version.split()[0]},
                     "runs": args.runs, "started": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    site = None
    try:
        if "P1" in only:
            log("P1/P1b: the filter alone")
            # its own small process: a child forked from this (large) one would
            # report this process's memory as its peak RSS
            out = run([sys.executable, "-m", "bench.deliver_bench", "--runs", str(args.p1_runs), "--json"],
                      cwd=REPO).stdout
            results["P1"] = json.loads(out)
        log("installing listfilter from a wheel into a fresh virtualenv")
        bindir = production_install(base)
        site = Site(base, bindir, args)
        log("setting up Postfix, the sink, the roster and the systems")
        site.setup()
        for s, why in site.unavailable.items():
            log(f"{LABEL[s]}: unavailable: {why}")
        avail = [s for s in args.systems if s not in site.unavailable and
                 (s, "n2") in site.lists]
        if only & {"P2", "P5"}:
            results["fanout"] = {}
            for size in [int(x) for x in args.sizes.split(",")]:
                systems = [s for s in avail if size < 10_000 or s in ("a", "a'", "listfilter")
                           or s in args.slow_at_10000.split(",")]
                results["fanout"][str(size)] = scenario_fanout(site, size, systems, args.runs)
        if "P3" in only:
            systems = [s for s in avail if s in args.p3_systems.split(",")]
            log(f"P3: {P3_POSTS} posts to {P3_LISTS} lists")
            results["P3"] = scenario_p3(site, systems, max(1, min(args.runs, 3)))
        if "P4" in only:
            log("P4: sync of 50,000 roster rows")
            results["P4"] = scenario_p4(site, args.runs)
        if "P6" in only and "listfilter" in avail:
            log(f"P6: a burst of {args.p6_posts} posts, maxproc {args.p6_maxprocs}")
            results["P6"] = scenario_p6(site, max(1, min(args.runs, 3)), args.p6_posts,
                                        [int(m) for m in args.p6_maxprocs.split(",")])
        results["unavailable"] = dict(site.unavailable)
        results["goals"] = goals(results)
    finally:
        if site is not None:
            log("stopping Mailman, Postfix and the sink; dropping the roster databases")
            site.stop()
        if not args.keep:
            shutil.rmtree(base, ignore_errors=True)
        after = host_postfix_fingerprint()
        host_changed = after != fingerprint
        if host_changed:
            log(f"WARNING: the host's Postfix configuration changed during the run: {fingerprint} -> {after}")
    results["finished"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    text = report(results, results.get("unavailable", {}))
    print(text)
    print()
    print(json.dumps(results, indent=1, default=str))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1, default=str) + "\n")
    return 1 if host_changed else 0


if __name__ == "__main__":
    sys.exit(main())
