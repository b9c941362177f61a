"""Peak memory of one call: on CPU the growth of the peak RSS over the RSS before it (high-water
mark reset through /proc/self/clear_refs, freed heap handed back first), on CUDA the growth of
``max_memory_allocated``; and the glibc setting that keeps allocator slack out of the RSS."""

from __future__ import annotations

import ctypes
import gc
import resource

import torch

from benchmarks.common import sync


def _rss_kB() -> int:
    with open("/proc/self/status") as handle:
        for line in handle:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError("no VmRSS in /proc/self/status")


def _reset_peak_rss() -> bool:
    """Reset the kernel's RSS high-water mark (and so ru_maxrss) to the current RSS."""
    try:
        with open("/proc/self/clear_refs", "w") as handle:
            handle.write("5")
        return True
    except OSError:
        return False


def _libc():
    try:
        return ctypes.CDLL("libc.so.6")
    except OSError:
        return None


def _release_free_heap() -> None:
    """glibc ``malloc_trim(0)``: hand freed heap pages back to the OS, so that the RSS before a
    measured call is what is in use, not what earlier calls left cached (no-op elsewhere)."""
    libc = _libc()
    if libc is not None and hasattr(libc, "malloc_trim"):
        libc.malloc_trim(0)


FIXED_MMAP_ENV = {"MALLOC_MMAP_THRESHOLD_": str(64 * 1024)}
"""glibc tunable for the memory-only worker: every block ≥ 64 KiB gets its own mmap and goes back
to the OS when freed. By default glibc raises the threshold after each free of an mmapped block
(up to 32 MiB), so later blocks of a chunk's graph land in the heap and freed ones linger
there: the RSS then carries allocator slack of tens of MB that varies from run to run. Set at
process start (setting it later with mallopt leaves the earlier fragmentation in place)."""


def peak_memory_MB(run, device: torch.device) -> float:
    """Peak memory growth of ``run()`` (MiB): CPU, ru_maxrss after minus the RSS before (the
    high-water mark reset first; without /proc/self/clear_refs, ru_maxrss after minus before);
    CUDA, max_memory_allocated minus memory_allocated before."""
    gc.collect()
    if device.type == "cuda":
        sync(device)
        before = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        run()
        sync(device)
        return (torch.cuda.max_memory_allocated(device) - before) / 2**20
    _release_free_heap()
    rss_before = _rss_kB()
    reset = _reset_peak_rss()
    maxrss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    run()
    maxrss_after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return (maxrss_after - (rss_before if reset else maxrss_before)) / 1024
