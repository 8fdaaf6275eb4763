"""Suite-wide pytest setup: the ``pytester`` fixture, for tests that run an inner pytest
(``tests/kafka/test_suite_timeout.py`` checks that a hanging test fails instead of hanging the
session)."""

pytest_plugins = ["pytester"]
