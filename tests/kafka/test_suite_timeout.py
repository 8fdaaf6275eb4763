"""The test suite cannot hang: pytest-timeout, configured in ``pyproject.toml``, fails a test
that waits forever, with its stack, and the session goes on with the next test.

Kafka tests once looped for minutes in ``KafkaConsumer.poll``; whatever hangs next must fail
one test instead of blocking CI. (No broker needed: these run an inner pytest.)
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
INNER_TIMEOUT_S = 2
# Bounds the inner pytest itself (interpreter start-up on a loaded machine included), so this
# test cannot hang either, e.g. where the timeout plugin is missing.
INNER_RUN_LIMIT_S = 90


def test_the_project_sets_a_per_test_timeout(pytestconfig: pytest.Config) -> None:
    assert float(pytestconfig.getini("timeout")) >= 60
    assert pytestconfig.getini("timeout_method") == "signal"


def test_a_hanging_test_fails_with_its_stack_and_the_session_goes_on(
    pytester: pytest.Pytester,
) -> None:
    inner = pytester.makepyfile(
        test_inner="""
        import time

        def test_sleeps_forever():
            time.sleep(3600)

        def test_runs_after_the_hang():
            pass
        """
    )
    started = time.monotonic()
    result = pytester.runpytest_subprocess(
        *("-c", str(REPO / "pyproject.toml"), "--rootdir", str(pytester.path)),
        *("-o", f"timeout={INNER_TIMEOUT_S}", "-p", "no:cacheprovider", str(inner)),
        timeout=INNER_RUN_LIMIT_S,
    )
    elapsed = time.monotonic() - started
    result.assert_outcomes(failed=1, passed=1)
    # The stack points at the line that hung, then the reason.
    result.stdout.fnmatch_lines([">*time.sleep(3600)", f"*Failed: Timeout (>{INNER_TIMEOUT_S}*"])
    assert elapsed < INNER_RUN_LIMIT_S
