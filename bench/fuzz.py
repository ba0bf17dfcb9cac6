#!/usr/bin/env python3
"""The fuzz run of the mail side: hostile and broken mail through the real ``listfilter-deliver``.

Builds the cases (CPython's email test corpus, our own pathological forms of
every class of hostile mail (docs/fuzz.md), and mutations of both: tests/fuzz/cases.py), runs
each through ``listfilter-deliver`` with a recording sendmail, checks what
happened (tests/fuzz/checks.py) and prints the figures: failures by check and
by family, the worst CPU and wall time and the peak RSS. Failing cases go to
``--out`` (a few per check and family, each with its message, its
``case.json`` and what sendmail was given), and every failing case id to
``failures.tsv`` there. docs/fuzz.md has the figures of a full run.

    .venv/bin/python -m bench.fuzz [--cases 20000] [--processes 2000] [--seed 10] [--jobs 2]
    .venv/bin/python -m bench.fuzz --seed 10 --case 1234     # one case, in detail (same --profile as its run)

Exit status 0 when every case passed every check, 1 otherwise.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path

from tests.fuzz import cases as C
from tests.fuzz import corpus, runner
from tests.fuzz.report import summary
from tests.fuzz.views import postfix_view

REPO = Path(__file__).resolve().parent.parent


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.fuzz", description=__doc__.split("\n\n")[0])
    p.add_argument("--cases", type=int, default=20_000, help="how many cases (default 20000)")
    p.add_argument("--processes", type=int, default=2_000,
                   help="how many of them run as a listfilter-deliver process of their own (default 2000)")
    p.add_argument("--seed", type=int, default=10, help="the run's seed: the same seed makes the same cases")
    p.add_argument("--jobs", type=int, default=2, help="worker processes (default 2)")
    p.add_argument("--profile", choices=("full", "ci"), default="full",
                   help="full: bodies up to message_size_limit; ci: up to 1 MB (default full)")
    p.add_argument("--timeout", type=float, default=30.0, help="seconds before a case is killed (default 30)")
    p.add_argument("--out", default=None, help="where failing cases go (default build/fuzz/seed-SEED)")
    p.add_argument("--json", default=None, help="also write every case's result to this file")
    p.add_argument("--case", type=int, default=None, help="run this one case index and show it in detail")
    return p.parse_args(argv)


def show_case(options: runner.Options, index: int) -> int:
    case, outcome, calls, failures = runner.run_single(options, index)
    print(f"case {case.id}: {case.name}")
    print(f"family {case.family}, variant {case.variant}, mutations {list(case.mutations) or 'none'},"
          f" {len(case.raw)} bytes, must deliver: {case.must_deliver}")
    print(f"envelope: --sender {case.sender!r} --recipient {case.recipient!r}; the list allows {list(case.posters)}")
    head = case.raw[:4000]
    print("message (as given, up to 4000 bytes):")
    print("  " + repr(head)[2:-1].replace("\\n", "\\n\n  "))
    print(f"outcome: exit {outcome.exit}{f', signal {outcome.signal}' if outcome.signal else ''},"
          f" {outcome.cpu:.3f} s CPU, {outcome.wall:.3f} s wall, peak RSS {outcome.rss:.0f} MB ({outcome.mode})")
    print(f"stderr: {outcome.stderr!r}")
    for n, call in enumerate(calls):
        print(f"sendmail call {n}: {call.args[:6]} … {len(call.args) - 6} more")
        view = postfix_view(call.message)
        for f in view.fields:
            print("  header " + " / ".join(repr(line)[2:-1] for line in f.lines)[:300])
        print(f"  body: {len(view.body)} bytes {view.body[:120]!r}")
    if failures:
        print("failed:")
        for check, detail in failures:
            print(f"  {check}: {detail}")
    else:
        print("passed every check")
    return 1 if failures else 0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    profile = C.FULL if args.profile == "full" else C.CI
    out = Path(args.out) if args.out else REPO / "build" / "fuzz" / f"seed-{args.seed}"
    options = runner.Options(seed=args.seed, cases=args.cases, processes=args.processes, jobs=args.jobs,
                             profile=profile, timeout=args.timeout, out_dir=str(out))
    if args.case is not None:
        return show_case(options, args.case)
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    start = time.monotonic()
    step = max(1, args.cases // 20)

    def progress(n, total, result):
        if n % step == 0 or n == total:
            print(f"  {n}/{total} cases, {time.monotonic() - start:.0f} s", file=sys.stderr, flush=True)

    results = runner.run(options, progress=progress)
    elapsed = time.monotonic() - start
    text = summary(results, seed=args.seed, jobs=args.jobs, profile=profile.name, elapsed=elapsed,
                   corpus=len(corpus.cpython_messages()))
    print(text)
    with open(out / "failures.tsv", "w") as fh:
        fh.write("case\tfamily\tchecks\tname\n")
        for r in results:
            if r["failures"]:
                checks = ",".join(sorted({c for c, _ in r["failures"]}))
                fh.write(f"{r['id']}\t{r['family']}\t{checks}\t{r['name']}\n")
    (out / "summary.md").write_text(text)
    if args.json:
        Path(args.json).write_text(json.dumps(results, default=str) + "\n")
    kept = sum(1 for p in out.iterdir() if p.is_dir())
    print(f"failing cases: {out / 'failures.tsv'}; {kept} of them written out in full under {out}{os.sep}")
    return 1 if any(r["failures"] for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
