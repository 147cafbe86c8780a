"""Fixtures shared by the engine tests: run a test once per kernel backend.

The gradient-check helpers live in tests/helpers.py (import them with `from helpers import gradcheck, ...`).
"""
import os

import pytest
from hypothesis import settings

from minidni.kernels import BACKENDS, use_backend

# CI (CI=true) draws the same hypothesis examples every run, so a landing never hangs on a lucky draw; a developer's
# run explores new examples each time (and keeps the failing ones in .hypothesis/).
settings.register_profile("ci", derandomize=True, database=None)
if os.environ.get("CI"):
    settings.load_profile("ci")


@pytest.fixture(params=BACKENDS)
def backend(request):
    """Runs the test once per kernel backend ("numba", "numpy"), restoring the previous one afterwards."""
    with use_backend(request.param):
        yield request.param


@pytest.fixture(autouse=True)
def _the_backend_is_left_as_found(request):
    """Every test leaves the global kernel backend as it found it: a test that switches it with set_backend and does
    not switch it back changes what every later test runs on (use `with use_backend(...)`, or the `backend` fixture)."""
    from minidni import kernels

    before = kernels.get_backend()
    yield
    after = kernels.get_backend()
    if after != before:
        kernels.set_backend(before)
        pytest.fail(f"{request.node.nodeid} left the kernel backend at {after!r} (it found {before!r}); restore it, "
                    "e.g. with `with use_backend(...)`", pytrace=False)
