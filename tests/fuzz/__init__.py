"""The fuzz harness of the mail side: cases, the judge's readers, the checks, the runner.

``python -m bench.fuzz`` is the full run (docs/fuzz.md); tests/fuzz/test_fuzz.py
runs a subset of the same cases in CI.
"""
