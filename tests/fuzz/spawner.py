"""Starts ``listfilter-deliver`` processes for a fuzz worker and measures each one.

Run as ``python -S -E spawner.py`` by :class:`tests.fuzz.runner.Worker`: one
request per line on stdin (JSON: argv, env, the stdin/stdout/stderr paths, the
time limit, the address-space limit), one answer per line on stdout (the wait
status, the peak RSS in KB, the CPU and wall time, whether it was killed for time).

Why a process of its own: Linux carries a process's peak RSS across
``exec`` and starts a forked child's at its parent's current RSS, so a
``listfilter-deliver`` started by a worker that holds a 10 MB case would be
charged the worker's memory. This process stays a few MB (standard library
only, no site packages), below any Python program it starts.
"""

import json
import os
import resource
import signal
import sys
import threading
import time


def run(req: dict) -> dict:
    start = time.perf_counter()
    pid = os.fork()
    if pid == 0:
        try:
            limit = req["address_space"]
            resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
            for fd, path, flags in ((0, req["stdin"], os.O_RDONLY),
                                    (1, req["stdout"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC),
                                    (2, req["stderr"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC)):
                new = os.open(path, flags, 0o600)
                os.dup2(new, fd)
                os.close(new)
            os.execve(req["argv"][0], req["argv"], req["env"])
        finally:
            os._exit(127)
    killed = []

    def kill():
        killed.append(True)
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass

    timer = threading.Timer(req["timeout"], kill)
    timer.start()
    _, status, usage = os.wait4(pid, 0)
    wall = time.perf_counter() - start
    timer.cancel()
    timer.join()
    return {"status": status, "maxrss": usage.ru_maxrss, "cpu": usage.ru_utime + usage.ru_stime, "wall": wall,
            "timed_out": bool(killed)}


def main() -> None:
    for line in sys.stdin:
        sys.stdout.write(json.dumps(run(json.loads(line))) + "\n")
        sys.stdout.flush()


if __name__ == "__main__":
    main()
