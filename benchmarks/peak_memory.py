"""How much peak resident memory a block of code adds (Linux ``/proc``), for benchmarks and measurements.

``with PeakRSS() as peak: work()`` then ``peak.extra_kib``: the process's peak RSS (VmHWM) during the
block minus its RSS before it. VmHWM is reset to the current RSS on entry (``/proc/self/clear_refs``,
Linux >= 4.0); where that is not allowed the old high-water mark is used and ``slack_kib`` says how
much of the block's peak it could hide.
"""

from __future__ import annotations

import os


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
