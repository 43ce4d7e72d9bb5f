"""Scale, local vs Ray: ingest + dedupe + split + export of N generated tiny images with each executor.

Each run is a fresh subprocess that runs the four commands in one process through the CLI app (as ``curate run``
does), with ``--executor local`` (a process pool of ``--workers``) or ``--executor ray`` (a local Ray with
``--workers`` CPUs, started inside the run and counted in it). The parent measures wall time and the peak RSS of
the whole process tree (Ray's GCS, raylet and workers included: they are children of the run; shared pages and
Ray's shared-memory object store are counted once per process that maps them, so it is an upper bound), and the
child reports where the time went: per command its wall time, and the stage's own figures from ``--json``
(ingest and dedupe per-sample work, the near-duplicate search, commit).

Run (from the repository root; the images are the ones bench_scale.py writes, reused when present)::

    .venv/bin/python bench/bench_scale_pipeline.py --sizes 100000 --workers 2 --repeat 1
    .venv/bin/python bench/bench_scale_pipeline.py --sizes 1000000 --executors local,ray

Images are ``--px`` x ``--px`` grayscale PNGs of random pixels (all distinct) in ``bench/.out/tiny-<N>/``. Before
each run every file is read once, untimed (``warm``), so every run starts with the tree in the page cache.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any

from _common import OUT, machine, median, print_table, reset_dir, run_measured
from bench_scale import write_tiny_tree

STEPS = ("ingest", "dedupe", "split", "export")


def child(executor: str, src: str, ws: str, workers: int) -> dict[str, Any]:
    """Run the four commands in this process with ``executor``; per-step wall seconds and stage figures."""
    from typer.testing import CliRunner

    from curate import executors
    from curate.cli import app

    t0 = time.perf_counter()
    executors.configure(executor, workers=workers)
    ray_start = None
    if executor == "ray":  # started here, so its cost is visible on its own line, not hidden in ingest
        from curate.executors.ray import start

        start(executors.current())
        ray_start = time.perf_counter() - t0
    runner = CliRunner()
    w = ["-w", ws]
    args = {
        "ingest": ["ingest", src, "--workers", str(workers)],
        "dedupe": ["dedupe", "--workers", str(workers)],
        "split": ["split"],
        "export": ["export", "--format", "parquet"],
    }
    out: dict[str, Any] = {"ray_start_s": ray_start, "steps": {}}
    for step in STEPS:
        t = time.perf_counter()
        res = runner.invoke(app, [*args[step], *w, "--json"], catch_exceptions=False)
        if res.exit_code != 0:
            raise SystemExit(f"{step} failed: {res.output[-2000:]}")
        payload = json.loads(res.stdout)
        stats = payload.get("stats", payload)
        out["steps"][step] = {"wall_s": round(time.perf_counter() - t, 2), "stats": _figures(step, stats)}
        if step == "ingest":
            out["ok"] = int(stats["summary"]["status"].get("ok", 0))
    out["total_s"] = round(time.perf_counter() - t0, 2)
    return out


def warm(root: Path) -> float:
    """Read every file under ``root`` once (untimed), so each run starts with the tree in the page cache.

    Without it the first reader of a million tiny files pays the disk, the next one does not: at 100,000 images a
    cold ingest took 56 s and a warm one 10 s here, which would decide a comparison by run order.
    """
    t = time.perf_counter()
    for dirpath, _, files in os.walk(root):
        for f in files:
            with open(os.path.join(dirpath, f), "rb") as fh:
                fh.read()
    return time.perf_counter() - t


def _figures(step: str, st: dict[str, Any]) -> dict[str, Any]:
    keep = {"ingest": ["seconds"], "dedupe": ["seconds", "seconds_signatures", "search"], "split": ["seconds"], "export": ["seconds"]}
    return {k: st[k] for k in keep[step] if k in st}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", default="100000", help="comma-separated image counts")
    ap.add_argument("--executors", default="local,ray")
    ap.add_argument("--px", type=int, default=8, help="image side in pixels")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--repeat", type=int, default=1)
    ap.add_argument("--out", type=Path, default=OUT, help="where the generated trees go")
    ap.add_argument("--ws", type=Path, default=Path("/tmp/curate-bench-scale-pipeline"), help="scratch workspace")
    ap.add_argument("--child", nargs=3, metavar=("EXECUTOR", "SRC", "WS"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(child(*args.child, args.workers)))
        return

    sizes = [int(s) for s in args.sizes.split(",") if s.strip()]
    names = [e.strip() for e in args.executors.split(",") if e.strip()]
    results: dict[tuple[int, str], list[Any]] = {}
    loads: list[float] = []
    for n in sizes:
        root = args.out / f"tiny-{n}"
        t = time.perf_counter()
        write_tiny_tree(root, n, px=args.px, workers=args.workers)
        print(f"# {n:,} images ready in {root} ({time.perf_counter() - t:.0f}s)", file=sys.stderr)
        for r in range(args.repeat):
            for name in names[r % len(names) :] + names[: r % len(names)]:
                reset_dir(args.ws)
                print(f"# page cache warmed in {warm(root):.0f}s", file=sys.stderr)
                loads.append(os.getloadavg()[0])
                cmd = [sys.executable, __file__, "--child", name, str(root), str(args.ws), "--workers", str(args.workers)]
                run = run_measured(cmd)
                loads.append(os.getloadavg()[0])
                if run.result.get("ok") != n:
                    got = run.result.get("ok")
                    raise SystemExit(f"{name} at {n:,}: {got} images ok, expected {n:,} (an incomplete tree? delete {root})")
                results.setdefault((n, name), []).append(run)
                print(f"# {n:,} {name} run {r + 1}: {run.seconds:.1f}s, tree {run.peak_tree_rss / 2**20:,.0f} MiB, "
                      f"steps {json.dumps(run.result['steps'])}", file=sys.stderr)
        shutil.rmtree(args.ws, ignore_errors=True)

    print(f"\ningest + dedupe + split + export, {args.px}x{args.px} PNGs, {args.workers} workers / Ray CPUs, {args.repeat} run(s) "
          f"each, {dt.date.today()}, {machine()}, load average {min(loads):.1f}-{max(loads):.1f}\n")
    rows = []
    for (n, name), runs in results.items():
        secs = median(r.seconds for r in runs)
        base = results.get((n, "local"))
        ratio = f"{secs / median(r.seconds for r in base):.2f}" if base else "-"
        rows.append([name, f"{n:,}", f"{secs:.1f}", f"{median(r.peak_tree_rss for r in runs) / 2**20:,.0f}",
                     f"{median(r.max_single_rss for r in runs) / 2**20:,.0f}", f"{n / secs:,.0f}", ratio])
    print_table(["executor", "images", "wall s", "peak tree RSS MiB", "max proc RSS MiB", "images/s", "wall ratio ray/local"], rows)
    print("\nwhere the time goes (seconds, median; stage = the stage's own figure, the rest of the command is reading the")
    print("parent version, building and committing the new one):\n")
    rows = []
    for (n, name), runs in results.items():
        start = [r.result["ray_start_s"] for r in runs if r.result.get("ray_start_s") is not None]
        cells = [name, f"{n:,}", f"{median(start):.1f}" if start else "-"]
        for step in STEPS:
            wall = median(r.result["steps"][step]["wall_s"] for r in runs)
            stage = median(r.result["steps"][step]["stats"].get("seconds", 0) for r in runs)
            cells.append(f"{wall:.1f} ({stage:.1f})")
        sig = median(r.result["steps"]["dedupe"]["stats"].get("seconds_signatures", 0) for r in runs)
        rest = median(r.seconds - r.result["total_s"] for r in runs)
        cells += [f"{sig:.1f}", f"{rest:.1f}"]
        rows.append(cells)
    print_table(["executor", "images", "Ray start", *(f"{s} (stage)" for s in STEPS), "dedupe signatures",
                 "interpreter, imports, exit"], rows)


if __name__ == "__main__":
    main()
