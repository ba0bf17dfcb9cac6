"""A non-editable install, run from another directory, finds its templates."""

from __future__ import annotations

import os
import subprocess
import sys
import sysconfig

from ..conftest import EXAMPLE, REPO


def test_non_editable_install_renders_maps(tmp_path):
    target = tmp_path / "site"
    build = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
         "--disable-pip-version-check", "--target", str(target), str(REPO)],
        capture_output=True, text=True, cwd=tmp_path, timeout=300,
        env={**os.environ, "PIP_NO_INDEX": "1"})
    assert build.returncode == 0, build.stderr
    assert (target / "listfilter" / "templates" / "postfix" / "transport.j2").is_file()
    assert (target / "listfilter" / "templates" / "notice-refused.txt.j2").is_file()
    env = {**os.environ, "PYTHONPATH": f"{target}{os.pathsep}{sysconfig.get_paths()['purelib']}"}
    proc = subprocess.run(
        [sys.executable, "-c", "import listfilter, sys; print(listfilter.__file__); "
         "from listfilter.cli import main; main(sys.argv[1:])",
         "--config", str(EXAMPLE / "lists.toml"), "maps"],
        capture_output=True, text=True, cwd=tmp_path, env=env, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines()[0] == str(target / "listfilter" / "__init__.py")
    assert "students@lists.example.edu\tlistfilter:" in proc.stdout
