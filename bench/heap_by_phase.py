#!/usr/bin/env python3
"""Where the resident set goes in a grpo step: glibc's heap after each phase (Linux, glibc >= 2.33).

Usage:
    python bench/heap_by_phase.py [--small-mmap-in update,reference] -- BENCH_GRPO_ARGS...

Runs bench/bench_grpo.py with its arguments (e.g. `.peers/models/25m --max-steps 4 --prompts-per-step 1
--max-new-tokens 128`) and prints, at the end of each phase (and sub-phase, e.g. update/forward) of each step, the resident set, its
high-water mark since the step began, and from `mallinfo2` the main heap's size, how much of it is free
(freed memory glibc keeps: resident, but holding nothing) and how much is in mmapped chunks.
`--small-mmap-in` lowers glibc's mmap threshold to 1 MiB during the named phases (mallopt
M_MMAP_THRESHOLD, back to 32 MiB after), so that their large allocations are returned to the system
when freed. docs/performance.md ("Why 25M misses 0.8x memory") has what it showed on the 25M model.
"""

import argparse
import ctypes
import sys
from pathlib import Path

M_MMAP_THRESHOLD = -3
MIB = 2**20


class MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks",
                                                       "fsmblks", "uordblks", "fordblks", "keepcost")]


def _status_mib(field: str) -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    return 0.0


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--small-mmap-in", default="", help="comma-separated phases (generate, reference, update, ...)")
    args, rest = p.parse_known_args()
    if rest[:1] == ["--"]:
        rest = rest[1:]
    libc = ctypes.CDLL("libc.so.6")
    libc.mallinfo2.restype = MallInfo2
    small = set(filter(None, args.small_mmap_in.split(",")))

    from grpo.train.metrics import Timers

    def start(name):
        if name in small:
            libc.mallopt(M_MMAP_THRESHOLD, 1 * MIB)

    def end(name):
        if name in small:
            libc.mallopt(M_MMAP_THRESHOLD, 32 * MIB)
        m = libc.mallinfo2()
        print(f"{name:16s} rss {_status_mib('VmRSS'):6.0f} hwm {_status_mib('VmHWM'):6.0f} heap {m.arena / MIB:5.0f} "
              f"free in heap {m.fordblks / MIB:5.0f} mmapped {m.hblkhd / MIB:5.0f} MiB", flush=True)

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import bench_grpo

    sys.argv = ["bench_grpo.py", *rest]
    bench_grpo.main(Timers(on_start=start, on_end=end))


if __name__ == "__main__":
    main()
