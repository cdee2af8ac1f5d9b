"""Peak memory of the training phase: CUDA allocator peak, or the process's peak RSS on CPU."""

import resource
from pathlib import Path

import torch


def reset_peak_memory(device: torch.device) -> None:
    """Start the peak-memory window now (after checkpoint loading's own peak)."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        return
    try:  # Linux: writing 5 resets the process's RSS high-water mark (VmHWM)
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass


def peak_memory_gib(device: torch.device) -> float:
    """Peak since :func:`reset_peak_memory`, in GiB (RSS on CPU)."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    try:
        status = Path("/proc/self/status").read_text()
        return int(status.split("VmHWM:")[1].split()[0]) / 2**20  # kB -> GiB
    except (OSError, IndexError, ValueError):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB -> GiB
