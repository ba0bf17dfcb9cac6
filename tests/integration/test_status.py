"""`listfilter status` against a real Postfix: a list copy the relay defers (450) is a WARNING.

The private Postfix, the sink and the config are test_member_outcomes' ``site``
fixture (a fresh instance for this module); status reads the real ``postqueue -j``.
It runs as the unprivileged ``listfilter`` user, as docs/operations.md says it may.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from .test_member_outcomes import BEN, BUSY, site  # noqa: F401 (the fixture)

pytestmark = pytest.mark.integration


def status(s, *args, user: str | None = None) -> subprocess.CompletedProcess:
    prefix = ["setpriv", f"--reuid={user}", f"--regid={user}", "--init-groups"] if user else []
    return subprocess.run([*prefix, sys.executable, "-m", "listfilter", "--config", str(s.config_path), "status",
                           *args], capture_output=True, text=True, timeout=120)


def test_a_deferred_list_copy_is_a_warning(site):  # noqa: F811
    proc = status(site, "--json")
    assert proc.returncode == 0, proc.stdout + proc.stderr  # a quiet host first

    # the deferred copy stays deferred while status reads the queue: no retry within the test
    site.pf.set_main_cf(minimal_backoff_time="300s", maximal_backoff_time="300s")
    site.pf.reload()
    site.sink.reject[BEN] = BUSY
    site.post("Sunday's flight", "status-1@example.edu")
    site.pf.wait_log(r"to=<ben@example\.org>.*status=deferred", timeout=30)
    [entry] = site.pf.queue()
    assert entry["queue_name"] == "deferred" and entry["sender"] == "club-bounces@lists.example.edu"

    proc = status(site, "--json", user="listfilter")
    assert proc.returncode == 1, proc.stdout + proc.stderr
    out = json.loads(proc.stdout)
    items = {i["name"]: i for i in out["items"]}
    assert out["status"] == "WARNING"
    assert [n for n, i in items.items() if i["status"] != "ok"] == ["queue", "queue.lists.example.edu"]
    assert items["queue.lists.example.edu"]["values"]["deferred"] == 1
    assert items["queue"]["detail"].startswith("0 active, 1 deferred, 0 held; oldest deferred ")
    proc = status(site, user="listfilter")
    assert proc.returncode == 1 and proc.stdout.startswith("WARNING: queue 0 active, 1 deferred")
