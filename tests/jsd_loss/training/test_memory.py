"""keep_freed_cpu_memory, judged by the kernel's count of page faults (getrusage), in fresh
processes so this test process's allocator is left as it is."""

import subprocess
import sys

import pytest

# allocates, writes and frees a 256 MiB tensor twice; prints the minor page faults of the
# second round and the number of 4 KiB pages the tensor spans
_PROBE = """
import resource, sys, torch
if sys.argv[1] == "keep":
    from jsd_loss.training import keep_freed_cpu_memory
    assert keep_freed_cpu_memory()
def faults():
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(2):
    before = faults()
    x = torch.empty(64 * 2**20, dtype=torch.float32)
    x.fill_(1.0)
    del x
print(faults() - before, 64 * 2**20 * 4 // 4096)
"""


def _second_round_faults(mode: str):
    out = subprocess.run([sys.executable, "-c", _PROBE, mode], capture_output=True, text=True, check=True)
    faults, pages = map(int, out.stdout.split())
    return faults, pages


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt: Linux only")
def test_freed_memory_is_reused_without_page_faults():
    default_faults, pages = _second_round_faults("default")
    kept_faults, _ = _second_round_faults("keep")
    # glibc's default: the 256 MiB block is mmapped afresh and every page faults in again
    assert default_faults > pages // 2
    # kept: the second tensor reuses the first one's pages
    assert kept_faults < pages // 20
