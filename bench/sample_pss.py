"""Sample the summed PSS and RSS of a process tree every few seconds, beside a benchmark (Linux only).

RSS counts a page shared by N processes N times (a forked worker's copy-on-write pages, a fork server's modules);
PSS charges each process 1/N of it, so the sum of PSS over a tree is the memory the tree really holds. Reading
``smaps_rollup`` walks a process's page tables (milliseconds for GBs), so this samples every ``--every`` seconds,
not every 50 ms as ``_common.run_measured`` does for RSS.

Run beside a benchmark (it ends when the root process does)::

    .venv/bin/python bench/sample_pss.py --root PID --out pss.tsv

Prints the peaks (summed PSS, summed RSS, and the processes at the PSS peak) when the root ends.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import time
from pathlib import Path


def _descendants(pid: int) -> list[int]:
    found, stack = [], [pid]
    while stack:
        p = stack.pop()
        found.append(p)
        with contextlib.suppress(OSError):  # gone meanwhile
            stack.extend(int(c) for c in Path(f"/proc/{p}/task/{p}/children").read_text().split())
    return found


def _rollup(pid: int) -> tuple[int, int]:
    """(Pss, Rss) in bytes of one process; zeros once it is gone."""
    pss = rss = 0
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                pss = int(line.split()[1]) << 10
            elif line.startswith("Rss:"):
                rss = int(line.split()[1]) << 10
    except OSError:
        pass
    return pss, rss


def _name(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")[:90]
    except OSError:
        return "?"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--root", type=int, required=True, help="pid of the benchmark (its whole tree is summed)")
    ap.add_argument("--every", type=float, default=2.0, help="seconds between samples")
    ap.add_argument("--out", type=Path, help="a TSV of every sample (unix time, summed PSS MiB, summed RSS MiB, processes)")
    args = ap.parse_args()
    peak_pss = peak_rss = 0
    at_peak: list[tuple[int, int, int, str]] = []
    log = open(args.out, "w") if args.out else None  # noqa: SIM115 - written for the whole run
    while os.path.exists(f"/proc/{args.root}"):
        rows = [(p, *_rollup(p), _name(p)) for p in _descendants(args.root)]
        pss, rss = sum(r[1] for r in rows), sum(r[2] for r in rows)
        if log:
            log.write(f"{time.time():.0f}\t{pss / 2**20:.0f}\t{rss / 2**20:.0f}\t{len(rows)}\n")
            log.flush()
        if pss > peak_pss:
            peak_pss, at_peak = pss, rows
        peak_rss = max(peak_rss, rss)
        time.sleep(args.every)
    print(f"peak summed PSS {peak_pss / 2**20:,.0f} MiB, peak summed RSS {peak_rss / 2**20:,.0f} MiB (sampled every {args.every} s)")
    for pid, pss, rss, name in at_peak:
        print(f"  at the PSS peak: pid {pid} PSS {pss / 2**20:,.0f} MiB RSS {rss / 2**20:,.0f} MiB  {name}")


if __name__ == "__main__":
    main()
