"""The fuzz harness in CI: 1,200 cases of the full run's generator through the real ``listfilter-deliver``.

docs/fuzz.md describes the cases and the checks; ``python -m bench.fuzz`` is
the full run (20,000 cases, 2,000 of them as processes of their own). This is
a deterministic subset of it (seed 10, the CI profile: bodies up to 1 MB
instead of 10 MB): 36 cases run as ``.venv/bin/listfilter-deliver``
processes, the rest are forked from the workers, which call
``listfilter.mail.deliver.main(argv)`` on redirected descriptors. Each check
is a test of its own, so a failure names the class; its message lists the
smallest failing case of each family, and
``python -m bench.fuzz --seed 10 --profile ci --case INDEX`` shows one in detail.
"""

from __future__ import annotations

import os

import pytest

from . import corpus, runner
from .cases import CI, FAMILIES, MUTATIONS, make_case
from .checks import CHECKS
from .report import explain, failing

SUBSET = runner.Options(seed=10, cases=1200, processes=36, jobs=min(4, max(2, os.cpu_count() or 2)), profile=CI,
                        timeout=20.0)


@pytest.fixture(scope="module")
def results():
    try:
        corpus.cpython_messages()
    except FileNotFoundError as exc:
        pytest.fail(str(exc))
    return runner.run(SUBSET)


@pytest.mark.parametrize("check", [*CHECKS, "harness"])
def test_every_case_passes(results, check):
    assert len(failing(results, check)) == 0, explain(check, results)


def test_the_subset_is_what_ci_promises(results):
    """1,200 cases, a few dozen as processes, every family, mutation and variant among them."""
    assert len(results) == SUBSET.cases
    assert sum(r["mode"] == "process" for r in results) == SUBSET.processes
    assert {r["family"] for r in results} == set(FAMILIES)
    assert {m for r in results for m in r["mutations"]} == set(MUTATIONS)
    assert {r["variant"] for r in results} == {"poster", "stranger", "request", "bounces"}
    assert sum(r["posted"] for r in results) > 300  # the checks of what members receive had work to do


def test_cases_are_deterministic():
    """The same (seed, index) makes the same case; another seed another one."""
    same = [make_case(10, i, CI) for i in range(40)]
    assert same == [make_case(10, i, CI) for i in range(40)]
    other = [make_case(11, i, CI) for i in range(40)]
    assert sum(a.raw != b.raw for a, b in zip(same, other)) > 30


def test_the_corpus_is_cpythons_and_ours():
    messages = corpus.cpython_messages()
    names = [m.name for m in messages]
    assert sum(n.startswith("cpython data/msg_") for n in names) >= 40
    assert sum(".py:" in n for n in names) >= 100  # the messages written inline in CPython's tests
    assert len(corpus.own_seeds()) >= 15


def test_a_forked_case_ends_as_its_own_process_does():
    """The fork mode runs the same code as listfilter-deliver: the same exits, stderr and sendmail calls."""
    from .checks import check_case, parse_args
    from .views import postfix_view

    def summary(outcome, calls, events, case):
        checks = sorted({c for c, _ in check_case(case, outcome, calls, events)} - {"cost"})
        return (outcome.exit, outcome.stderr.split(b"/spool/")[0], [parse_args(c.args)[::2] for c in calls],
                [[f.name for f in postfix_view(c.message).fields] for c in calls], checks)

    with runner.worker(SUBSET) as w:
        for index in range(0, 1200, 50):
            case = make_case(SUBSET.seed, index, SUBSET.profile)
            forked = summary(*w.execute(case, "fork"), case)
            spawned = summary(*w.execute(case, "process"), case)
            assert forked == spawned, (case.id, case.name)
