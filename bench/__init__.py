"""Benchmarks (docs/performance.md): run each as a module from the top of the checkout, e.g.
``.venv/bin/python -m bench.compare``, so that ``bench`` and ``tests.harness`` import as packages."""
