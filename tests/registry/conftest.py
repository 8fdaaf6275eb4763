"""Fixtures that run registry tests on every backend (see registry_backends.py)."""

from __future__ import annotations

from pathlib import Path

import pytest
from registry_backends import BACKENDS, Backend, make_backend


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Backend:
    return make_backend(request.param, tmp_path)


@pytest.fixture(params=["path", "file-uri"])
def uri_backend(request: pytest.FixtureRequest, tmp_path: Path) -> Backend:
    """Backends a subprocess can open by URI."""
    return make_backend(request.param, tmp_path)
