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
