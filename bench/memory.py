"""The peak resident memory of the calling process itself.

`resource.getrusage(RUSAGE_SELF).ru_maxrss` is not that in a child process: Linux keeps the
high-water mark across fork and exec, so a child started by a parent of 500 MB reports at least
500 MB however little it uses. `VmHWM` in /proc/self/status belongs to the process's own address
space, which exec replaces.
"""
from __future__ import annotations

import resource


def own_peak_bytes() -> int:
    """This process's peak resident set size since it last exec'd (ru_maxrss where /proc has none)."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024  # reported in kB
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB
