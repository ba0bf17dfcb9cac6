"""Running fuzz cases through the real ``listfilter-deliver``, in parallel, and measuring each.

Each worker process (``jobs`` of them) has its own snapshots, spool and
sendmail record directory. A case runs in one of two ways, the same code
either way:

- ``process``: ``.venv/bin/listfilter-deliver ARGV < message`` as pipe(8)
  runs it, a process of its own (the console script, its imports included);
- ``fork``: the worker, which has imported ``listfilter.mail.deliver``
  once, forks; the child points file descriptors 0, 1 and 2 at the message
  and two files, makes fresh ``sys.stdin``/``stdout``/``stderr`` on them and
  calls ``listfilter.mail.deliver.main(argv)``, ending as the console script
  would (its return value, or 1 and a traceback for an exception).

Either way the worker waits with ``wait4``, which gives the case's own peak
RSS, and kills it after ``timeout`` seconds. The snapshot is written with
the project's own writer (:func:`listfilter.common.snapshot.write`) and
holds one list, ``fuzz@lists.example.edu``, whose posters are the case's and
whose members are :data:`tests.fuzz.cases.MEMBERS` plus the posters; its
``sendmail`` is a stub that keeps each call's argv and input. The spool is
emptied before every case (the duplicate rule would otherwise hide the
second case with the same Message-ID).
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from dataclasses import asdict, dataclass
from pathlib import Path

from . import cases as C
from .checks import Call, Outcome, check_case

DELIVER = Path(sys.executable).with_name("listfilter-deliver")
SPAWNER = Path(__file__).with_name("spawner.py")
RECORD_ENV = "LISTFILTER_FUZZ_RECORD"
STUB = f"""#!/bin/sh
# sendmail(1) for the fuzz run: keeps its argv (NUL-separated) and its input, and succeeds.
d="${{{RECORD_ENV}:?}}"
printf '%s\\0' "$@" > "$d/$$.args"
exec cat > "$d/$$.msg"
"""
#: A case may use this much address space (a runaway parse fails with MemoryError instead of taking the machine).
ADDRESS_SPACE = 6 << 30


@dataclass(frozen=True)
class Options:
    seed: int = 10
    cases: int = 20_000
    processes: int = 2_000
    jobs: int = 2
    profile: C.Profile = C.FULL
    timeout: float = 30.0
    out_dir: str | None = None
    keep: int = 10  # failing cases written per (check, family), per worker


def runs_as_process(index: int, options: Options) -> bool:
    """Exactly ``options.processes`` of the cases, spread evenly, run as processes of their own."""
    n, k = options.cases, min(options.processes, options.cases)
    return (index * k) // n != ((index + 1) * k) // n


# --------------------------------------------------------------------------
# One worker


class Worker:
    """One worker's snapshots, spool and sendmail records, and the two ways it runs a case."""

    def __init__(self, root: Path, stub: Path, options: Options):
        self.options = options
        self.stub = stub
        self.dir = root / f"w{os.getpid()}"
        self.spool = self.dir / "spool"
        self.record = self.dir / "sent"
        self.snaps = self.dir / "snapshots"
        self.snaps.mkdir(parents=True)
        self._snapshots: dict[tuple, Path] = {}
        self.kept: dict[tuple[str, str], int] = {}
        self._spawner: subprocess.Popen | None = None
        _warm_up()
        self.baseline = {"process": self._process_baseline()}

    def snapshot(self, case: C.Case) -> Path:
        """The snapshot for the case's list (one per distinct posters, members and list settings)."""
        from tests.mail import compiled_list, write_snapshot

        key = (case.posters, case.members, case.display_name, case.reply_to)
        path = self._snapshots.get(key)
        if path is None:
            members = list(dict.fromkeys(C.MEMBERS + case.members))
            lst = compiled_list(C.LIST, display_name=case.display_name, reply_to=C.REPLY_TO if case.reply_to else None,
                                owners=C.OWNERS, members=members, posters=case.posters)
            path = write_snapshot(self.snaps / f"{len(self._snapshots)}.sqlite", [lst], spool=self.spool,
                                  sendmail=str(self.stub))
            self._snapshots[key] = path
        return path

    def _reset(self, case: C.Case) -> None:
        for d in (self.spool, self.record):
            shutil.rmtree(d, ignore_errors=True)
            d.mkdir()
        if case.setup:
            plant_state(self.spool, case)

    def _process_baseline(self) -> float:
        """Peak RSS (MB) of listfilter-deliver on a small clean post: what the extra memory is measured from."""
        case = C.Case(seed=0, index=0, family="baseline", name="baseline", raw=C.message(
            C.standard(random.Random(0), C.POSTERS[0])), sender=C.POSTERS[0], recipient=C.LIST,
            posters=(C.POSTERS[0],), members=(C.POSTERS[0],), display_name=C.DISPLAY_NAMES[0], reply_to=False,
            must_deliver=True)
        return max(self.execute(case, "process", baseline=0.0)[0].rss for _ in range(3))

    def execute(self, case: C.Case, mode: str, baseline: float | None = None) -> tuple[Outcome, list[Call], list[bytes]]:
        """Run one case; its outcome, the sendmail calls and the spool's event records."""
        snapshot = self.snapshot(case)
        self._reset(case)
        stdin = self.dir / "stdin"
        stdin.write_bytes(case.raw)
        out, err = self.dir / "stdout", self.dir / "stderr"
        argv = case.argv(str(snapshot))
        if mode == "process":
            status, usage, wall, timed_out, base = self._spawn(argv, stdin, out, err)
        else:
            status, usage, wall, timed_out, base = self._fork(argv, stdin, out, err)
        if baseline is not None:
            base = baseline
        elif mode == "process":
            base = self.baseline["process"]
        rss = usage.ru_maxrss / 1024
        code = os.waitstatus_to_exitcode(status)
        outcome = Outcome(exit=code if code >= 0 else None, signal=-code if code < 0 else 0, timed_out=timed_out,
                          stdout=out.read_bytes(), stderr=err.read_bytes(), wall=wall,
                          cpu=usage.ru_utime + usage.ru_stime, rss=rss,
                          extra_rss=max(0.0, rss - base), mode=mode)
        return outcome, read_calls(self.record), read_events(self.spool)

    def _env(self) -> dict[str, str]:
        return {**os.environ, RECORD_ENV: str(self.record)}

    def _wait(self, pid: int, start: float):
        """wait4 with a time limit: (status, rusage, wall seconds, timed out)."""
        killed = []

        def kill():
            killed.append(True)
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass

        timer = threading.Timer(self.options.timeout, kill)
        timer.start()
        _, status, usage = os.wait4(pid, 0)
        wall = time.perf_counter() - start
        timer.cancel()
        timer.join()
        return status, usage, wall, bool(killed)

    def _spawn(self, argv, stdin: Path, out: Path, err: Path):
        """A process of its own, started by the spawner (see tests/fuzz/spawner.py for why)."""
        if self._spawner is None:
            self._spawner = subprocess.Popen([sys.executable, "-S", "-E", str(SPAWNER)], stdin=subprocess.PIPE,
                                             stdout=subprocess.PIPE, text=True)
        request = {"argv": [str(DELIVER), *argv], "env": self._env(), "stdin": str(stdin), "stdout": str(out),
                   "stderr": str(err), "timeout": self.options.timeout, "address_space": ADDRESS_SPACE}
        self._spawner.stdin.write(json.dumps(request) + "\n")
        self._spawner.stdin.flush()
        answer = json.loads(self._spawner.stdout.readline())
        usage = _Usage(answer["maxrss"], answer["cpu"])
        return answer["status"], usage, answer["wall"], answer["timed_out"], 0.0

    def _fork(self, argv, stdin: Path, out: Path, err: Path):
        base = _current_rss_mb()
        start = time.perf_counter()
        pid = os.fork()
        if pid == 0:  # the child: never returns
            _child(argv, stdin, out, err, str(self.record))
        status, usage, wall, timed_out = self._wait(pid, start)
        return status, usage, wall, timed_out, base

    # ---------------------------------------------------------------- one case, checked

    def run(self, index: int) -> dict:
        case = C.make_case(self.options.seed, index, self.options.profile)
        mode = "process" if runs_as_process(index, self.options) else "fork"
        outcome, calls, events = self.execute(case, mode)
        failures = check_case(case, outcome, calls, events)
        if failures and self.options.out_dir:
            self._keep(case, outcome, calls, failures)
        return {"index": index, "id": case.id, "family": case.family, "name": case.name,
                "mutations": list(case.mutations), "variant": case.variant, "mode": mode, "size": len(case.raw),
                "exit": outcome.exit, "wall": outcome.wall, "cpu": outcome.cpu, "rss": outcome.rss,
                "extra_rss": outcome.extra_rss, "posted": any("-XV" in c.args for c in calls), "failures": failures}

    def _keep(self, case: C.Case, outcome: Outcome, calls: list[Call], failures) -> None:
        """Write a failing case for reproduction (a few per check and family)."""
        fresh = [(c, case.family) for c, _ in failures if self.kept.get((c, case.family), 0) < self.options.keep]
        if not fresh:
            return
        for key in fresh:
            self.kept[key] = self.kept.get(key, 0) + 1
        d = Path(self.options.out_dir) / case.id
        d.mkdir(parents=True, exist_ok=True)
        write_case(d, case, outcome, calls, failures)


class _Usage:
    """The fields of a struct rusage the spawner reports."""

    def __init__(self, maxrss_kb: int, cpu: float):
        self.ru_maxrss = maxrss_kb
        self.ru_utime, self.ru_stime = cpu, 0.0


def write_case(d: Path, case: C.Case, outcome: Outcome, calls: list[Call], failures) -> None:
    (d / "message.eml").write_bytes(case.raw)
    info = {k: v for k, v in asdict(case).items() if k != "raw"}
    info["failures"] = [list(f) for f in failures]
    info["outcome"] = {k: (v.decode("utf-8", "backslashreplace") if isinstance(v, bytes) else v)
                       for k, v in outcome._asdict().items()}
    info["reproduce"] = f"python -m bench.fuzz --seed {case.seed} --case {case.index}"
    (d / "case.json").write_text(json.dumps(info, indent=2, default=str) + "\n")
    for n, call in enumerate(calls):
        (d / f"sendmail-{n}.args").write_text("\n".join(call.args) + "\n", errors="surrogateescape")
        (d / f"sendmail-{n}.msg").write_bytes(call.message)


def _child(argv, stdin: Path, out: Path, err: Path, record: str) -> None:
    """In the forked child: listfilter-deliver's console script, on redirected descriptors."""
    code = 70
    try:
        import resource

        resource.setrlimit(resource.RLIMIT_AS, (ADDRESS_SPACE, ADDRESS_SPACE))
        for fd, path, flags in ((0, stdin, os.O_RDONLY), (1, out, os.O_WRONLY | os.O_CREAT | os.O_TRUNC),
                                (2, err, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)):
            new = os.open(path, flags, 0o600)
            os.dup2(new, fd)
            os.close(new)
        sys.stdin = io.TextIOWrapper(io.BufferedReader(io.FileIO(0, "r", closefd=False)))
        sys.stdout = io.TextIOWrapper(io.BufferedWriter(io.FileIO(1, "w", closefd=False)))
        sys.stderr = io.TextIOWrapper(io.BufferedWriter(io.FileIO(2, "w", closefd=False)), errors="backslashreplace",
                                      line_buffering=True)
        os.environ[RECORD_ENV] = record
        sys.argv = [str(DELIVER), *argv]
        from listfilter.mail.deliver import main

        try:
            result = main(argv)
            code = 0 if result is None else int(result)
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
            if isinstance(exc.code, str):
                print(exc.code, file=sys.stderr)
        except BaseException:
            traceback.print_exc()
            code = 1
    finally:
        try:
            sys.stdout.flush()
            sys.stderr.flush()
        finally:
            os._exit(code)


def _warm_up() -> None:
    """Import, in the worker, what deliver imports as it runs, so that a forked case does not pay for it."""
    import email.headerregistry  # noqa: F401
    import email.utils  # noqa: F401
    import zoneinfo

    import listfilter.common.sendmail  # noqa: F401
    import listfilter.mail.deliver  # noqa: F401
    import listfilter.mail.headers  # noqa: F401
    import listfilter.mail.notices  # noqa: F401

    zoneinfo.ZoneInfo("America/Chicago")


def _current_rss_mb() -> float:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def read_calls(record: Path) -> list[Call]:
    calls = []
    for args in sorted(record.glob("*.args"), key=lambda p: p.stat().st_mtime_ns):
        msg = args.with_suffix(".msg")
        parts = args.read_bytes().split(b"\0")[:-1]
        calls.append(Call([p.decode("utf-8", "surrogateescape") for p in parts],
                          msg.read_bytes() if msg.exists() else b""))
    return calls


def read_events(spool: Path) -> list[bytes]:
    return [p.read_bytes() for p in sorted((spool / "events").glob("*.json")) if p.is_file()]


def plant_state(spool: Path, case: C.Case) -> None:
    """Corrupt the state this case's delivery will read (the poison family's state kinds)."""
    from listfilter.common import spool as SP
    from listfilter.common.events import stable_id

    SP.ensure(spool)
    key = SP.delivery_key(case.message_key, C.LIST)
    progress = spool / SP.SENT / f"{key}.json"
    kind = case.setup
    if kind == "progress-garbage":
        progress.write_bytes(b"{not json")
    elif kind == "progress-types":
        progress.write_text(json.dumps({"message": case.message_key, "accepted": {"a": 1}, "done": False}))
    elif kind == "progress-binary":
        progress.write_bytes(b"\xff\xfe\x00\x01" * 64)
    elif kind == "lock-is-directory":
        (spool / SP.SENT / f"{key}.lock").mkdir()
    elif kind == "event-is-directory":
        (spool / SP.EVENTS / f"{stable_id(case.message_key, C.LIST)}.json").mkdir()


# --------------------------------------------------------------------------
# Many workers

_worker: Worker | None = None


def _init(root: str, stub: str, options: Options) -> None:
    global _worker
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _worker = Worker(Path(root), Path(stub), options)


def _run_one(index: int) -> dict:
    try:
        return _worker.run(index)
    except Exception:  # the harness's own failure: reported, never hidden as a pass
        return {"index": index, "id": f"{_worker.options.seed}-{index:06d}", "family": "?", "name": "harness error",
                "mutations": [], "variant": "", "mode": "", "size": 0, "exit": None, "wall": 0.0, "cpu": 0.0, "rss": 0.0,
                "extra_rss": 0.0, "posted": False, "failures": [("harness", traceback.format_exc()[-2000:])]}


def work_dirs() -> tuple[Path, Path]:
    """(stub dir, work dir): the work on tmpfs where there is one (the spool is emptied per case)."""
    stub_dir = Path(tempfile.mkdtemp(prefix="listfilter-fuzz-bin-"))
    shm = Path("/dev/shm")
    work = Path(tempfile.mkdtemp(prefix="listfilter-fuzz-", dir=shm if os.access(shm, os.W_OK) else None))
    return stub_dir, work


def run(options: Options, indices=None, progress=None) -> list[dict]:
    """Run the cases (``indices``, default all of ``options.cases``); one result dict each, in index order."""
    import multiprocessing

    if not DELIVER.is_file():
        raise FileNotFoundError(f"{DELIVER} is missing: pip install -e .")
    C.corpus.cpython_messages()  # fail early, with the install hint, if the corpus is missing
    stub_dir, work = work_dirs()
    stub = stub_dir / "sendmail"
    stub.write_text(STUB)
    stub.chmod(0o755)
    indices = list(range(options.cases)) if indices is None else list(indices)
    results = []
    try:
        ctx = multiprocessing.get_context("fork")
        with ctx.Pool(max(1, options.jobs), initializer=_init, initargs=(str(work), str(stub), options)) as pool:
            for n, result in enumerate(pool.imap_unordered(_run_one, indices, chunksize=4), start=1):
                results.append(result)
                if progress is not None:
                    progress(n, len(indices), result)
    finally:
        shutil.rmtree(work, ignore_errors=True)
        shutil.rmtree(stub_dir, ignore_errors=True)
    return sorted(results, key=lambda r: r["index"])


@contextlib.contextmanager
def worker(options: Options):
    """A worker in this process, with its own stub and work directory (removed afterwards)."""
    stub_dir, work = work_dirs()
    stub = stub_dir / "sendmail"
    stub.write_text(STUB)
    stub.chmod(0o755)
    try:
        yield Worker(work, stub, options)
    finally:
        shutil.rmtree(work, ignore_errors=True)
        shutil.rmtree(stub_dir, ignore_errors=True)


def run_single(options: Options, index: int) -> tuple[C.Case, Outcome, list[Call], list]:
    """One case in this process (for ``--case``): the case, its outcome, the calls and the failures."""
    with worker(options) as w:
        case = C.make_case(options.seed, index, options.profile)
        mode = "process" if runs_as_process(index, options) else "fork"
        outcome, calls, events = w.execute(case, mode)
        return case, outcome, calls, check_case(case, outcome, calls, events)
