"""Smoke test of the lessons: every lessons/*.py runs as a plain script, from the repository root, and exits 0.

A lesson asserts its own checks (gradients against finite differences, kernels against the reference), so a lesson
that runs clean also teaches correct numbers. New lessons are picked up by the glob.
"""
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
LESSONS = sorted((ROOT / "lessons").glob("*.py"))
TIMEOUT_S = 120  # a lesson should finish in seconds at its default size; this only catches a hang


@pytest.mark.parametrize("lesson", LESSONS, ids=[p.name for p in LESSONS])
def test_lesson_runs(lesson):
    env = {**os.environ, "MPLBACKEND": "Agg"}  # plots render off-screen
    proc = subprocess.run([sys.executable, str(lesson)], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=TIMEOUT_S)
    assert proc.returncode == 0, (
        f"{lesson.name} exited with code {proc.returncode}.\n"
        f"--- stdout (last 3000 chars) ---\n{proc.stdout[-3000:]}\n"
        f"--- stderr (last 3000 chars) ---\n{proc.stderr[-3000:]}"
    )
