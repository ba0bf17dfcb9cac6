"""The admin pages' fixtures (a seeded site, its app and a test client), shared by this directory's tests."""

from .test_app import app, client, site  # noqa: F401 (fixtures)
