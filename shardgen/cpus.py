"""How many CPU cores this process may use: the default worker count everywhere.

:func:`usable_cpus` takes the smallest of: the cores the process is allowed to run on
(``sched_getaffinity``, e.g. under ``taskset`` or a Slurm allocation), and the CPU
quota of its control group rounded up (``cpu.max`` in cgroup v2, ``cpu.cfs_quota_us``
/ ``cpu.cfs_period_us`` in v1; what ``docker run --cpus`` and Kubernetes CPU limits
set), walking up the group's parents. Where neither is available it is
``os.cpu_count()``.
"""

from __future__ import annotations

import math
import os

__all__ = ["usable_cpus", "cgroup_cpu_limit"]


def usable_cpus() -> int:
    """Cores this process may use (at least 1)."""
    try:
        n = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        n = os.cpu_count() or 1
    limit = cgroup_cpu_limit()
    if limit is not None:
        n = min(n, max(1, math.ceil(limit)))
    return max(1, n)


def cgroup_cpu_limit(proc_cgroup: str = "/proc/self/cgroup", fs_root: str = "/sys/fs/cgroup") -> float | None:
    """The CPU quota of this process's control group in cores (e.g. 2.5), or None for no limit.

    Args:
        proc_cgroup: the file naming the process's groups.
        fs_root: where the cgroup filesystems are mounted.
    """
    try:
        with open(proc_cgroup) as f:
            lines = f.read().splitlines()
    except OSError:
        return None
    limits: list[float] = []
    for line in lines:
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        hid, controllers, path = parts
        if hid == "0" and not controllers:  # cgroup v2 (also mounted at unified/ on hybrid systems)
            for root in (fs_root, os.path.join(fs_root, "unified")):
                limits += _walk(root, path, _read_v2)
        elif "cpu" in controllers.split(","):
            limits += _walk(os.path.join(fs_root, "cpu"), path, _read_v1)
            limits += _walk(os.path.join(fs_root, "cpu,cpuacct"), path, _read_v1)
    return min(limits) if limits else None


def _walk(root: str, path: str, read) -> list[float]:
    """Quotas (cores) found in the group ``path`` under ``root`` and its parents."""
    out: list[float] = []
    rel = path.strip("/")
    while True:
        q = read(os.path.join(root, rel) if rel else root)
        if q is not None:
            out.append(q)
        if not rel:
            return out
        rel = rel.rpartition("/")[0]


def _read_v2(folder: str) -> float | None:
    try:
        with open(os.path.join(folder, "cpu.max")) as f:
            quota, _, period = f.read().strip().partition(" ")
        return int(quota) / int(period or 100000) if quota != "max" else None
    except (OSError, ValueError, ZeroDivisionError):
        return None


def _read_v1(folder: str) -> float | None:
    try:
        with open(os.path.join(folder, "cpu.cfs_quota_us")) as f:
            quota = int(f.read().strip())
        with open(os.path.join(folder, "cpu.cfs_period_us")) as f:
            period = int(f.read().strip())
        return quota / period if quota > 0 and period > 0 else None
    except (OSError, ValueError):
        return None
