"""Resident memory of this process, read from /proc/self/status (Linux), for the benchmarks that report peaks.
VmHWM is the process's own high-water mark: `resource.getrusage(...).ru_maxrss` would count, in a forked worker,
the driver's resident size at the fork. `reset_peak` sets VmHWM to the current size so the next peak is the work's."""

from __future__ import annotations


def rss_mb(field: str = "VmRSS") -> float:
    """VmRSS (now) or VmHWM (high-water mark since the last reset) of this process, in MiB."""
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(field + ":")) / 1024  # kB


def reset_peak() -> None:
    """Set VmHWM to the current resident size (Linux >= 4.0)."""
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
