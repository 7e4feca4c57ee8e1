"""How much peak resident memory a block of code adds (Linux ``/proc``), for benchmarks and measurements.

``with PeakRSS() as peak: work()`` then ``peak.extra_kib``: the process's peak RSS (VmHWM) during the
block minus its RSS before it. VmHWM is reset to the current RSS on entry (``/proc/self/clear_refs``,
Linux >= 4.0); where that is not allowed the old high-water mark is used and ``slack_kib`` says how
much of the block's peak it could hide.

RSS follows the tensors a block holds only if freed memory leaves the process. glibc's malloc does
not promise that: its mmap threshold grows after every large free (up to 32 MiB), so later large
tensors come from the heap, where freed chunks stay resident and fragment, and the peak then depends
on the ORDER and sizes of allocations, not on how much was alive at once. Measured on the Stage 2
step benchmark, the same call read 171-198 MiB in three fresh processes (ours: 209-219 MiB, "1.09x to
1.29x"). ``fixed_mmap_threshold()`` turns the growth off (mallopt M_MMAP_THRESHOLD): every allocation of
64 KiB or more is its own mapping, returned when freed, and the same calls read 101.0-101.2 MiB and
101.6-101.7 MiB (1.005x). Memory probes call it first.
"""

from __future__ import annotations

import ctypes
import os

M_MMAP_THRESHOLD = -3
"""mallopt parameter (glibc malloc.h)."""


def status_kib(field: str) -> int:
    """A ``kB`` field of ``/proc/self/status`` (e.g. VmRSS, VmHWM)."""
    with open("/proc/self/status") as handle:
        for line in handle:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise OSError(f"{field} not in /proc/self/status")


def rss_kib() -> int:
    """The current resident set size in KiB."""
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") // 1024


def reset_peak_rss() -> bool:
    """Reset this process's peak RSS (VmHWM) to its current RSS; False if not possible."""
    try:
        with open("/proc/self/clear_refs", "w") as handle:
            handle.write("5")
        return True
    except OSError:
        return False


class PeakRSS:
    """Context manager measuring the peak RSS a block adds (see the module docstring)."""

    def __enter__(self) -> PeakRSS:
        self.reset = reset_peak_rss()
        self.rss_before, self.peak_before = rss_kib(), status_kib("VmHWM")
        return self

    def __exit__(self, *exc: object) -> None:
        self.peak_after = status_kib("VmHWM")

    @property
    def extra_kib(self) -> int:
        return self.peak_after - (self.rss_before if self.reset else self.peak_before)

    @property
    def slack_kib(self) -> int:
        return 0 if self.reset else self.peak_before - self.rss_before

    @property
    def method(self) -> str:
        return "VmHWM reset via /proc/self/clear_refs" if self.reset else "VmHWM high-water (no reset)"


def fixed_mmap_threshold(threshold: int = 64 * 1024) -> bool:
    """Serve every allocation of ``threshold`` bytes or more by its own mapping (see the module docstring).

    Setting the threshold explicitly also disables glibc's dynamic adjustment of it. Returns False where
    that is not possible (not glibc), and the measurement then carries the allocator's noise.
    """
    try:
        return bool(ctypes.CDLL("libc.so.6").mallopt(M_MMAP_THRESHOLD, threshold))
    except (OSError, AttributeError):
        return False
