"""`listfilter check` reports records that wait in the spool, or that ingest set aside, for both kinds."""

from __future__ import annotations

import os
import time

import pytest

from listfilter.common import spool as SP

from .runner import listfilter


@pytest.mark.parametrize("area, what", [(SP.EVENTS, "event"), (SP.BOUNCES, "bounce record")])
def test_an_hour_old_record_in_the_spool_is_a_problem(example_config, area, what):
    assert listfilter(example_config, "sync").returncode == 0
    assert listfilter(example_config, "db", "upgrade").returncode == 0
    spool = example_config.parent / "state" / "spool"
    record = spool / area / "0123456789abcdef0123456789abcdef.json"
    record.parent.mkdir(parents=True, exist_ok=True)
    record.write_text("{}")
    ran = listfilter(example_config, "check")
    assert f"ok       spool: 1 {what}(s) wait in {spool / area}, oldest 0 min" in ran.stdout, ran.stdout
    old = time.time() - 7200
    os.utime(record, (old, old))
    ran = listfilter(example_config, "check")
    assert ran.returncode == 1
    assert f"PROBLEM  spool: 1 {what}(s) wait in {spool / area}, oldest 120 min (is sync running?)" in ran.stdout


@pytest.mark.parametrize("area, what", [(SP.EVENTS, "event"), (SP.BOUNCES, "bounce record")])
def test_a_record_set_aside_is_a_problem(example_config, area, what):
    assert listfilter(example_config, "sync").returncode == 0
    assert listfilter(example_config, "db", "upgrade").returncode == 0
    bad = example_config.parent / "state" / "spool" / area / SP.BAD
    bad.mkdir(parents=True, exist_ok=True)
    (bad / "x.json").write_text("junk")
    ran = listfilter(example_config, "check")
    assert ran.returncode == 1
    assert f"PROBLEM  spool: 1 malformed {what} file(s) in {bad}" in ran.stdout, ran.stdout
