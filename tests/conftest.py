"""Fixtures shared by the engine tests: run a test once per kernel backend.

The gradient-check helpers live in tests/helpers.py (import them with `from helpers import gradcheck, ...`).
"""
import pytest

from minidni.kernels import BACKENDS, use_backend


@pytest.fixture(params=BACKENDS)
def backend(request):
    """Runs the test once per kernel backend ("numba", "numpy"), restoring the previous one afterwards."""
    with use_backend(request.param):
        yield request.param
