"""Ingest throughput: ``curate ingest`` of Fashion-MNIST (idx files and a PNG ImageFolder tree) beside a bare loop.

The peer is a plain Python loop that only opens, fully decodes (Pillow ``load()``) and sha256-hashes the same
70,000 PNG files with ``multiprocessing.Pool(N)``; curate runs with ``--workers N`` and does more (``verify()`` plus
a second open to decode, EXIF, duplicate merge, blob packs, the sample table, the version commit). Every job runs
as a fresh subprocess, in rotating order, ``--repeat`` times. Columns:

- images/s: 70,000 / wall time of the whole command (interpreter start and imports included), median (min-max);
  ratio = curate median / bare-loop median; ratio of best = best curate run / best bare-loop run.
- images per CPU-s: 70,000 / (user + system CPU of the command and its worker processes, from ``time -v``). On
  a shared, busy machine this is much steadier than wall time; the ratio is one of CPU cost.
- peak RSS: largest sampled sum of RSS over the command and its workers.

``--with-verify-peer`` adds a diagnostic peer: the bare loop plus the checks curate must make on every file
(``verify()``, reopen + ``load()``, ``getexif()``), which shows how much of the gap those checks alone cost.

Run (from the repository root)::

    .venv/bin/python bench/bench_ingest.py --workers 2 --repeat 5 --with-verify-peer

The PNG tree is written once to ``bench/.out/fashion-png`` (git-ignored) and reused; workspaces go to /tmp.
"""
from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import io
import json
import os
import sys
import time
from multiprocessing import Pool
from pathlib import Path

from _common import (
    CURATE,
    FASHION,
    OUT,
    fmt_runs,
    list_files,
    machine,
    median,
    print_table,
    reset_dir,
    run_measured,
    write_fashion_png_tree,
)


def _open_decode_hash(path: str) -> tuple[str, int]:
    from PIL import Image

    with open(path, "rb") as fh:
        data = fh.read()
    digest = hashlib.sha256(data).hexdigest()
    with Image.open(io.BytesIO(data)) as im:
        im.load()
        pixels = im.width * im.height
    return digest, pixels


def _open_verify_decode_hash(path: str) -> tuple[str, int]:
    """The diagnostic peer: the bare loop plus the checks curate must make (verify, reopen + decode, EXIF)."""
    from PIL import Image

    with open(path, "rb") as fh:
        data = fh.read()
    digest = hashlib.sha256(data).hexdigest()
    with Image.open(io.BytesIO(data)) as im:
        im.verify()
    with Image.open(io.BytesIO(data)) as im:
        im.load()
        im.getexif()
        pixels = im.width * im.height
    return digest, pixels


def bare_loop(root: Path, workers: int, *, checks: bool = False) -> dict[str, float]:
    """The peer: list the files, then open + fully decode + sha256 each one in a pool of ``workers`` processes."""
    t0 = time.perf_counter()
    paths = list_files(root)
    with Pool(workers) as pool:
        out = pool.map(_open_verify_decode_hash if checks else _open_decode_hash, paths, chunksize=256)
    secs = time.perf_counter() - t0
    return {"inputs": len(out), "unique": len({d for d, _ in out}), "seconds": secs}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", type=Path, default=FASHION, help="folder with the Fashion-MNIST idx .gz files")
    ap.add_argument("--png-dir", type=Path, default=OUT / "fashion-png", help="where the PNG ImageFolder tree is written")
    ap.add_argument("--ws", type=Path, default=Path("/tmp/curate-bench-ingest"), help="scratch workspace (deleted each run)")
    ap.add_argument("--workers", type=int, default=2, help="processes for curate (--workers) and the bare loop (Pool)")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--inputs", default="idx,png", help="comma-separated: idx, png")
    ap.add_argument("--with-verify-peer", action="store_true", help="also run the bare loop with curate's checks (diagnostic)")
    ap.add_argument(
        "--before",
        type=Path,
        help="also run curate from this copy of the code (a folder holding curate/, put on PYTHONPATH), interleaved",
    )
    ap.add_argument("--bare", type=Path, help=argparse.SUPPRESS)  # internal: run only the bare loop, print JSON
    ap.add_argument("--checks", action="store_true", help=argparse.SUPPRESS)  # internal: the bare loop also verifies
    args = ap.parse_args()

    if args.bare:
        print(json.dumps(bare_loop(args.bare, args.workers, checks=args.checks)))
        return

    t = time.perf_counter()
    n_png = write_fashion_png_tree(args.png_dir, args.data, workers=args.workers)
    print(f"# PNG tree: {n_png:,} files in {args.png_dir} ({time.perf_counter() - t:.1f}s to prepare)", file=sys.stderr)
    inputs = [s.strip() for s in args.inputs.split(",") if s.strip()]
    src = {"idx": str(args.data), "png": str(args.png_dir)}
    jobs = ["bare", *(["verify"] if args.with_verify_peer else []), *inputs]
    if args.before:
        jobs += [f"{i}-before" for i in inputs]
        src.update({f"{i}-before": src[i] for i in inputs})
        env_before = {**os.environ, "PYTHONPATH": str(args.before.resolve())}
    wall: dict[str, list[float]] = {j: [] for j in jobs}
    cpu: dict[str, list[float]] = {j: [] for j in jobs}
    rss: dict[str, list[int]] = {j: [] for j in jobs}
    counts: dict[str, int] = {}
    for r in range(args.repeat):
        order = jobs[r % len(jobs) :] + jobs[: r % len(jobs)]  # rotate so no job always runs first / warm
        for job in order:
            if job in ("bare", "verify"):
                cmd = [sys.executable, __file__, "--bare", str(args.png_dir), "--workers", str(args.workers)]
                run = run_measured([*cmd, "--checks"] if job == "verify" else cmd)
                counts[job], inner = int(run.result["inputs"]), run.result["seconds"]
            else:
                reset_dir(args.ws)
                cmd = [CURATE, "ingest", src[job], "-w", str(args.ws), "--workers", str(args.workers), "--json"]
                run = run_measured(cmd, env=env_before if job.endswith("-before") else None)
                st = run.result["stats"]
                if st["summary"]["status"].get("ok") != st["inputs"]:
                    raise SystemExit(f"curate ingest {job}: not every input is ok: {st['summary']['status']}")
                counts[job], inner = int(st["inputs"]), st["seconds_total"]
            wall[job].append(run.seconds)
            cpu[job].append(run.cpu_seconds)
            rss[job].append(run.peak_tree_rss)
            print(
                f"# run {r + 1} {job}: {counts[job]:,} inputs, {run.seconds:.2f}s wall ({inner:.2f}s in-process), "
                f"{run.cpu_seconds:.2f} CPU-s",
                file=sys.stderr,
            )
    reset_dir(args.ws)

    print(f"\ningest, {args.workers} workers, {args.repeat} runs each, {dt.date.today()}, {machine()}\n")
    names = {
        "bare": "bare loop: open+decode+sha256 (PNG tree)",
        "verify": "bare loop + curate's checks (verify, reopen, EXIF)",
        "idx": "curate ingest idx (+PNG encode)",
        "png": "curate ingest PNG tree",
        "idx-before": "curate ingest idx, code before (--before)",
        "png-before": "curate ingest PNG tree, code before (--before)",
    }
    base_ips = [counts["bare"] / s for s in wall["bare"]]
    base_cpu = [counts["bare"] / s for s in cpu["bare"]]
    rows = []
    for job in jobs:
        ips = [counts[job] / s for s in wall[job]]
        per_cpu = [counts[job] / s for s in cpu[job]]
        rows.append(
            [
                names[job],
                fmt_runs(ips),
                f"{median(ips) / median(base_ips):.2f}",
                f"{max(ips) / max(base_ips):.2f}",
                fmt_runs(per_cpu),
                f"{median(per_cpu) / median(base_cpu):.2f}",
                f"{median(rss[job]) / 2**20:,.0f}",
            ]
        )
    print_table(
        ["job", "images/s (wall)", "ratio", "ratio of best", "images per CPU-s", "ratio CPU", "peak RSS MiB"],
        rows,
    )
    print(
        "\nimages/s: end-to-end wall time of the whole command, median (min-max); ratio = median / bare-loop median, "
        "ratio of best = best run / best bare-loop run (goal >= 0.80, issue 19). images per CPU-s: user+system CPU of the command "
        "and its worker processes; steadier than wall time on a shared machine. Peak RSS: sum over the process tree."
    )

if __name__ == "__main__":
    main()
