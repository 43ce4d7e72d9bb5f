"""Scale: ``curate ingest`` of up to 1,000,000 generated tiny images; time and peak RSS beside the bare loop.

The claim under test: ingest memory is bounded by the batch size (image bytes in flight), not the dataset size.
Only metadata grows with the row count (paths, ids, the sample table), so the script ingests several sizes
(``--sizes``) and reports peak RSS per size plus the growth per extra row. Each size runs ``curate ingest``
(CLI, ``--workers N``) and the peer, a bare loop that opens, decodes and sha256-hashes the same files with
``multiprocessing.Pool(N)``, as fresh subprocesses, ``--repeat`` times in alternating order.

Memory figures: "tree" is the largest sampled sum of RSS over the command and all its worker processes
(sampled every 50 ms; shared pages are counted once per process, so it is an upper bound); "max proc" is the
kernel's max RSS of the largest single process (``/usr/bin/time -v``). Goal: peak RSS < 2 GB at 1,000,000.
"images per CPU-s" divides by user + system CPU of the command and its workers (steadier than wall time here).

Run (from the repository root; writing 1M files takes a few minutes once, each 1M ingest a few more)::

    .venv/bin/python bench/bench_scale.py --sizes 100000,1000000 --workers 2 --repeat 2
    .venv/bin/python bench/bench_scale.py --sizes 1000000 --input manifest   # a CSV manifest of the same files

Images are ``--px`` x ``--px`` grayscale PNGs of random pixels (all distinct), in ImageFolder layout
``bench/.out/tiny-<N>/<class>/<bucket>/<i>.png`` (git-ignored; delete it when done, it holds N inodes).
"""

from __future__ import annotations

import argparse
import csv
import datetime as dt
import io
import json
import os
import shutil
import sys
import time
from multiprocessing import Pool
from pathlib import Path

import numpy as np
from _common import CURATE, OUT, fmt_runs, machine, median, print_table, reset_dir, run_measured
from bench_ingest import bare_loop

FILES_PER_DIR = 1000


def _write_chunk(args: tuple[str, int, int, int, int]) -> int:
    from PIL import Image

    root, start, stop, px, seed = args
    rng = np.random.default_rng(seed + start)
    pixels = rng.integers(0, 256, size=(stop - start, px, px), dtype=np.uint8)
    made: set[str] = set()
    for k, i in enumerate(range(start, stop)):
        folder = os.path.join(root, str(i % 10), f"{i // (10 * FILES_PER_DIR):04d}")
        if folder not in made:
            os.makedirs(folder, exist_ok=True)
            made.add(folder)
        buf = io.BytesIO()
        Image.frombytes("L", (px, px), pixels[k].tobytes()).save(buf, format="PNG")
        with open(os.path.join(folder, f"{i:07d}.png"), "wb") as fh:
            fh.write(buf.getvalue())
    return stop - start


def write_tiny_tree(root: Path, n: int, *, px: int, workers: int, seed: int = 0) -> None:
    """Write ``n`` distinct ``px`` x ``px`` PNGs below ``root`` (10 classes, 1,000 files per folder); reused if done."""
    done = root / ".done"
    if done.exists() and done.read_text() == f"{n} {px}":
        return
    reset_dir(root).mkdir()
    step = 10_000
    with Pool(workers) as pool:
        for _ in pool.imap_unordered(_write_chunk, [(str(root), s, min(s + step, n), px, seed) for s in range(0, n, step)]):
            pass
    done.write_text(f"{n} {px}")


def write_manifest(root: Path) -> Path:
    """A CSV manifest (path relative to the manifest, label) of every PNG under ``root``."""
    path = root.with_name(root.name + "-manifest.csv")
    if path.exists() and path.stat().st_mtime >= (root / ".done").stat().st_mtime:
        return path
    with open(path, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["path", "label"])
        for label in sorted(os.listdir(root)):
            if label.startswith("."):
                continue
            for bucket in sorted(os.listdir(root / label)):
                for f in sorted(os.listdir(root / label / bucket)):
                    w.writerow([os.path.relpath(root / label / bucket / f, path.parent), label])
    return path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", default="100000,1000000", help="comma-separated image counts")
    ap.add_argument("--px", type=int, default=8, help="image side in pixels")
    ap.add_argument("--input", choices=["folder", "manifest"], default="folder", help="ingest the folder or a CSV manifest")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--out", type=Path, default=OUT, help="where the generated trees go")
    ap.add_argument("--ws", type=Path, default=Path("/tmp/curate-bench-scale"), help="scratch workspace (deleted each run)")
    ap.add_argument("--skip-bare", action="store_true", help="only run curate")
    ap.add_argument("--bare", type=Path, help=argparse.SUPPRESS)  # internal: run only the bare loop, print JSON
    args = ap.parse_args()

    if args.bare:
        print(json.dumps(bare_loop(args.bare, args.workers)))
        return

    sizes = [int(s) for s in args.sizes.split(",") if s.strip()]
    results: dict[int, dict[str, dict[str, list[float]]]] = {}
    for n in sizes:
        root = args.out / f"tiny-{n}"
        t = time.perf_counter()
        write_tiny_tree(root, n, px=args.px, workers=args.workers)
        src = str(write_manifest(root)) if args.input == "manifest" else str(root)
        print(f"# {n:,} images ready in {root} ({time.perf_counter() - t:.0f}s); ingesting {src}", file=sys.stderr)
        jobs = ["curate"] if args.skip_bare else ["bare", "curate"]
        res: dict[str, dict[str, list[float]]] = {j: {"secs": [], "cpu": [], "tree": [], "proc": []} for j in jobs}
        for r in range(args.repeat):
            for job in jobs[r % len(jobs) :] + jobs[: r % len(jobs)]:
                if job == "bare":
                    run = run_measured([sys.executable, __file__, "--bare", str(root), "--workers", str(args.workers)])
                    got = int(run.result["inputs"])
                else:
                    reset_dir(args.ws)
                    run = run_measured([CURATE, "ingest", src, "-w", str(args.ws), "--workers", str(args.workers), "--json"])
                    st = run.result["stats"]
                    got = int(st["summary"]["status"].get("ok", 0))
                if got != n:
                    raise SystemExit(f"{job} at {n:,}: {got:,} images ok, expected {n:,}")
                res[job]["secs"].append(run.seconds)
                res[job]["cpu"].append(run.cpu_seconds)
                res[job]["tree"].append(run.peak_tree_rss)
                res[job]["proc"].append(run.max_single_rss)
                print(
                    f"# {n:,} run {r + 1} {job}: {run.seconds:.1f}s, tree {run.peak_tree_rss / 2**20:,.0f} MiB, "
                    f"max proc {run.max_single_rss / 2**20:,.0f} MiB",
                    file=sys.stderr,
                )
        shutil.rmtree(args.ws, ignore_errors=True)
        results[n] = res

    print(f"\ningest at scale ({args.input}, {args.px}x{args.px} PNGs), {args.workers} workers, {args.repeat} runs each, "
          f"{dt.date.today()}, {machine()}\n")
    rows = []
    for n, res in results.items():
        for job, r in res.items():
            ips = [n / s for s in r["secs"]]
            ratio = "1.00" if job == "bare" else (
                f"{median(ips) / median(n / s for s in res['bare']['secs']):.2f}" if "bare" in res else "-"
            )
            name = "bare loop: open+decode+sha256" if job == "bare" else f"curate ingest ({args.input})"
            per_cpu = [n / c for c in r["cpu"]]
            ratio_cpu = "1.00" if job == "bare" else (
                f"{median(per_cpu) / median(n / c for c in res['bare']['cpu']):.2f}" if "bare" in res else "-"
            )
            rows.append([f"{n:,}", name, fmt_runs(r["secs"], ".1f"), fmt_runs(ips), ratio, fmt_runs(per_cpu), ratio_cpu,
                         f"{median(r['tree']) / 2**20:,.0f}", f"{median(r['proc']) / 2**20:,.0f}"])
    print_table(["images", "job", "seconds", "images/s", "ratio", "images per CPU-s", "ratio CPU", "peak tree RSS MiB",
                 "max proc RSS MiB"], rows)
    if len(results) >= 2:
        lo, hi = min(results), max(results)
        for key, what in (("tree", "peak tree RSS"), ("proc", "max proc RSS")):
            grow = (median(results[hi]["curate"][key]) - median(results[lo]["curate"][key])) / (hi - lo)
            print(f"\ncurate {what} grows {grow:,.0f} bytes per extra row from {lo:,} to {hi:,} rows", end="")
        print()
    print("\nmedian (min-max); ratio = curate images/s / bare-loop images/s; goal: curate peak RSS < 2 GB = 2e9 B = 1,907 MiB")


if __name__ == "__main__":
    main()
