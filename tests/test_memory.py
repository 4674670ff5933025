"""utils/memory.py: large blocks on mmap while a store grows, reused from the heap after it."""
from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

from contentiqa.utils.memory import _libc_mallopt

# In a fresh interpreter: mallopt settings are process-wide and would outlive this test.
_PROBE = textwrap.dedent("""
    import resource
    import torch
    from contentiqa.utils.memory import growing_store

    def faults(n=20):
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        for _ in range(n):
            t = torch.ones(6 * 1024 * 1024)  # 24 MiB, written: an activation-sized temporary
            del t
        return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before

    with growing_store() as told:
        inside = faults()
    after = faults()
    print(told, inside, after)
""")


@pytest.mark.skipif(_libc_mallopt() is None, reason="no glibc: its mmap threshold does not exist here")
def test_large_temporaries_are_mapped_while_a_store_grows_and_reused_after():
    out = subprocess.run([sys.executable, "-c", _PROBE], capture_output=True, text=True, check=True).stdout.split()
    told, inside, after = out[0] == "True", int(out[1]), int(out[2])
    assert told
    # Inside: every temporary is a fresh mapping, faulted in page by page. After: the heap's
    # freed block comes back, so most do not fault again.
    assert after * 2 < inside, (inside, after)
