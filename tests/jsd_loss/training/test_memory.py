"""keep_freed_cpu_memory, judged by the kernel's own accounts (resident pages from
/proc/self/statm), in fresh processes so this test process's allocator is left as it is."""

import subprocess
import sys

import pytest

# allocates and writes a 256 MiB tensor, frees it, and prints how many of its 4 KiB pages the
# process still holds afterwards, and how many pages the tensor spans
_PROBE = """
import sys, torch
if sys.argv[1] == "keep":
    from jsd_loss.training import keep_freed_cpu_memory
    assert keep_freed_cpu_memory()
def resident_pages():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1])
before = resident_pages()
x = torch.empty(64 * 2**20, dtype=torch.float32)
x.fill_(1.0)
del x
print(resident_pages() - before, 64 * 2**20 * 4 // 4096)
"""


def _pages_held_after_free(mode: str):
    out = subprocess.run([sys.executable, "-c", _PROBE, mode], capture_output=True, text=True, check=True)
    held, pages = map(int, out.stdout.split())
    return held, pages


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt: Linux only")
def test_freed_memory_stays_with_the_process():
    default_held, pages = _pages_held_after_free("default")
    kept_held, _ = _pages_held_after_free("keep")
    # glibc's default: the 256 MiB block was mmapped and is unmapped when freed
    assert default_held < pages // 20
    # kept: it stays in malloc's heap, resident, for the next allocation to reuse
    assert kept_held > pages * 19 // 20
