"""The allocator policy applied at `import minidni` (minidni/memory.py): freed large blocks stay in the heap, so the
next step's arrays land on pages already touched, without page faults; MINIDNI_KEEP_FREED_MEMORY=0 turns it off."""
import json
import os
import subprocess
import sys

import pytest

from minidni import memory

# a step's worth of 1 MB temporaries (below the 4 MB where NumPy asks for huge pages), allocated, touched and freed
# round after round; print the minor page faults of the last rounds
PROBE = """
import json, resource, sys
import numpy as np
import minidni
def faults():
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt
def step():
    arrays = [np.ones(262_144, np.float32) for _ in range(40)]
    del arrays
step(); step()
before = faults()
for _ in range(3):
    step()
print(json.dumps({"faults": faults() - before, "policy": minidni.memory.policy()}))
"""

glibc_only = pytest.mark.skipif(memory._glibc() is None, reason="the policy is for glibc's malloc")


def probe(**env):
    out = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, check=True,
                         env={**os.environ, **env})
    return json.loads(out.stdout)


@glibc_only
def test_freed_blocks_are_reused_without_page_faults():
    kept = probe()
    assert kept["policy"]["applied"] is True
    assert kept["faults"] < 300                          # 3 x 40 MB on fresh 4 KB pages: ~30,000 faults
    off = probe(MINIDNI_KEEP_FREED_MEMORY="0")
    assert off["policy"] == {"applied": False, "why": "MINIDNI_KEEP_FREED_MEMORY=0: malloc is left as it is"}
    assert off["faults"] > 5000                          # glibc's default: the freed heap top goes back to the OS


@glibc_only
def test_malloc_env_gives_another_process_the_same_policy():
    env = {**memory.malloc_env(), "MINIDNI_KEEP_FREED_MEMORY": "0"}   # minidni does nothing; glibc reads the env
    assert probe(**env)["faults"] < 300


def test_policy_reports_what_was_done():
    p = memory.policy()
    assert set(p) == {"applied", "why"} and isinstance(p["why"], str) and p["why"]
