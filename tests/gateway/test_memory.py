"""The gateway's malloc settings (`accord.gateway.memory`): taken on glibc, in a process of
its own (they are process-wide)."""

from __future__ import annotations

import platform
import subprocess
import sys

import pytest

SCRIPT = """
import ctypes, resource
from accord.gateway.memory import keep_freed_memory
assert keep_freed_memory()
# freed heap is kept: allocating and freeing the same large buffers again faults no pages in
bufs = [bytearray(300_000) for _ in range(8)]
del bufs
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(50):
    bufs = [bytearray(300_000) for _ in range(8)]
    del bufs
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="glibc's mallopt only")
def test_freed_buffers_are_reused_without_page_faults() -> None:
    done = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0, done.stderr
    # 400 buffers of 300 kB: by default each is a fresh mapping (about 73 faults each)
    assert int(done.stdout) < 100
