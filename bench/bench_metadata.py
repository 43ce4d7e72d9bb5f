"""Metadata at scale: where the sample table stops scaling. Generated rows, no pixels.

The claim under test: the driver's metadata work (commit a version, split it, plan the export) stays under 12 GB
and a few minutes at 10,000,000 rows. Each size runs in a fresh process (``--child``) that:

1. **generate**: builds a sample table of N rows in Arrow without Python objects per row: ``sample_id`` (64 hex),
   ``source`` (``/data/<class>/<i>.jpg``), ``label`` (``--classes`` classes), ``status`` ok, ``width``/``height``,
   ``nbytes``, ``pack``, ``format``, ``mode``: the columns ingest writes;
2. **commit**: ``Workspace.commit`` of it (conform, validate, Parquet parts of 1M rows, zstd, atomic rename);
3. **split**: ``curate split`` as the runner runs it (read the parent back, stratified assignment, leakage check,
   commit the child);
4. **index**: the export's plan without pixels: per split, the included rows sorted by ``sample_id``, cut into
   shards (``--shard-rows``) with ``curate.stages.export.write``'s own cutting; ``index.json`` written with one
   entry per shard (file, split, rows, bytes);
5. with ``--baseline N`` for sizes up to N: **baseline split**, the per-row Python assignment split used before it
   was vectorized (kept as ``tests/split_reference.py``), on the same parent table, and whether its ``split``
   column equals the one committed in step 3 (the baseline runs last: its Python lists would inflate the peaks of
   the other phases).

Per phase: seconds and the peak RSS of the process during that phase (sampled every 20 ms from /proc); at the
end the kernel's max RSS. Run from the repository root, under ``nice`` on a shared machine::

    nice -n 10 .venv/bin/python bench/bench_metadata.py --sizes 1000000,10000000
"""

from __future__ import annotations

import argparse
import binascii
import json
import os
import resource
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from _common import OUT, machine, print_table, reset_dir

PAGE = os.sysconf("SC_PAGE_SIZE")


def rss() -> int:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * PAGE


@contextmanager
def phase(name: str, results: dict[str, Any]) -> Iterator[None]:
    """Time the block and sample this process's RSS every 20 ms; record ``{seconds, peak_gb}`` under ``name``."""
    peak = [rss()]
    stop = threading.Event()

    def sample() -> None:
        while not stop.wait(0.02):
            peak[0] = max(peak[0], rss())

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    t0 = time.perf_counter()
    try:
        yield
    finally:
        secs = time.perf_counter() - t0
        stop.set()
        thread.join()
        results[name] = {"seconds": round(secs, 2), "peak_gb": round(max(peak[0], rss()) / 2**30, 2)}


def fixed_strings(data: bytes, width: int, n: int) -> pa.Array:
    """``n`` strings of ``width`` bytes each from one buffer: an Arrow string array without Python objects."""
    offsets = np.arange(0, (n + 1) * width, width, dtype=np.int64)
    return pa.LargeStringArray.from_buffers(n, pa.py_buffer(offsets), pa.py_buffer(data)).cast(pa.string())


def const(value: str, n: int) -> pa.Array:
    """``n`` copies of ``value`` as a plain string column (a one-entry dictionary, decoded)."""
    return pa.DictionaryArray.from_arrays(pa.array(np.zeros(n, np.int8)), pa.array([value])).cast(pa.string())


def generate(n: int, classes: int, seed: int = 0) -> pa.Table:
    """A sample table of ``n`` ingested rows (module doc), built column by column in Arrow."""
    rng = np.random.default_rng(seed)
    ids = fixed_strings(binascii.hexlify(rng.bytes(32 * n)), 64, n)
    idx = np.arange(n, dtype=np.int64)
    label_idx = rng.integers(0, classes, n)
    names = pa.array([f"c{k:04d}" for k in range(classes)], pa.string())
    label = names.take(pa.array(label_idx))
    source = pc.binary_join_element_wise("/data/", label, "/", pc.cast(pa.array(idx), pa.string()), ".jpg", "")
    pack = pc.binary_join_element_wise("pack-", pc.cast(pa.array(idx // 50_000), pa.string()), "")
    return pa.table(
        {
            "sample_id": ids,
            "source": source,
            "label": label,
            "label_source": const("folder", n),
            "status": const("ok", n),
            "width": pa.array(rng.integers(64, 1024, n), pa.int32()),
            "height": pa.array(rng.integers(64, 1024, n), pa.int32()),
            "mode": const("RGB", n),
            "format": const("JPEG", n),
            "nbytes": pa.array(rng.integers(5_000, 200_000, n), pa.int64()),
            "pack": pack,
        }
    )


def export_index(ws: Any, vid: str, shard_rows: int, out: Path) -> int:
    """The export's plan for version ``vid`` without pixels: ``index.json`` entries per shard; returns the count."""
    from curate.schema import included
    from curate.stages.export.write import _expand_repeats, _shards, _split_key, shard_name

    inc = included(ws.samples(vid))
    splits = pc.fill_null(inc.column("split"), "all")
    entries: list[dict[str, Any]] = []
    for split in sorted(pc.unique(splits).to_pylist(), key=_split_key):
        part = _expand_repeats(inc.filter(pc.equal(splits, split)).sort_by("sample_id"), split)
        sizes = pc.fill_null(part.column("nbytes"), 0).to_numpy()
        for k, (lo, hi) in enumerate(_shards(sizes.tolist(), shard_rows, None, 4)):
            entries.append({"file": shard_name("parquet", split, k), "split": split, "format": "parquet", "rows": hi - lo,
                            "bytes": int(sizes[lo:hi].sum()), "first": part.column("sample_id")[lo].as_py()})  # fmt: skip
        del part
    out.write_text(json.dumps(entries, indent=1) + "\n")
    return len(entries)


def child(n: int, classes: int, shard_rows: int, root: Path, baseline: int = 0) -> dict[str, Any]:
    from curate.pipeline import run_stage
    from curate.schema import conform
    from curate.stage import StageResult
    from curate.stages.split import SplitConfig
    from curate.stages.split.assign import run_split
    from curate.workspace import Workspace

    res: dict[str, Any] = {"rows": n}
    with phase("generate", res):
        table = generate(n, classes)
    res["table_gb"] = round(table.nbytes / 2**30, 2)
    ws = Workspace(reset_dir(root / "ws"))
    with phase("commit", res):
        held = [StageResult(table=conform(table), stats={})]  # the only reference: dropped once committed
        del table
        first = run_stage(ws, "ingest", {"generated": n}, lambda parent, pid: held.pop(), parent=None)
    with phase("split", res):
        split = run_stage(ws, "split", {"seed": 0}, lambda parent, pid: run_split(parent, SplitConfig()))
    with phase("index", res):
        res["shards"] = export_index(ws, split["version"], shard_rows, root / "index.json")
    if n <= baseline:
        sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
        import split_reference

        parent = ws.samples(first["version"])
        with phase("baseline_split", res):
            old, _ = split_reference.assign_splits(parent, SplitConfig())
        res["baseline_equal"] = old == ws.samples(split["version"], columns=["split"]).column("split").to_pylist()
    res["versions"] = [first["version"], split["version"]]
    res["max_rss_gb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2)
    res["disk_mb"] = round(sum(p.stat().st_size for p in (root / "ws").rglob("*") if p.is_file()) / 2**20, 1)
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="1000000,10000000", help="comma-separated row counts")
    ap.add_argument("--classes", type=int, default=1000)
    ap.add_argument("--shard-rows", type=int, default=10_000)
    ap.add_argument("--out", type=Path, default=OUT / "metadata")
    ap.add_argument("--baseline", type=int, default=0, help="also time the previous per-row split up to this many rows")
    ap.add_argument("--child", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args.classes, args.shard_rows, args.out, args.baseline)))
        return
    print(machine())
    rows = []
    for n in [int(s) for s in args.sizes.split(",")]:
        load = os.getloadavg()
        cmd = [sys.executable, __file__, "--child", str(n), "--classes", str(args.classes), "--shard-rows",
               str(args.shard_rows), "--out", str(args.out / str(n)), "--baseline", str(args.baseline)]  # fmt: skip
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
        wall = time.perf_counter() - t0
        if proc.returncode:
            print(f"{n:,} rows failed (exit {proc.returncode}): {proc.stderr.strip().splitlines()[-1:]}")
            continue
        r = json.loads(proc.stdout.strip().splitlines()[-1])
        load_end = os.getloadavg()
        cells = [f"{r[p]['seconds']:.1f} s / {r[p]['peak_gb']:.2f}" for p in ("generate", "commit", "split", "index")]
        base = r.get("baseline_split")
        cells.append(f"{base['seconds']:.1f} s / {base['peak_gb']:.2f}, same: {r['baseline_equal']}" if base else "-")
        rows.append([f"{n:,}", *cells, f"{r['max_rss_gb']:.2f}", f"{wall:.0f} s", f"{r['table_gb']:.2f}", f"{r['disk_mb']:.0f}",
                     r["shards"], f"{load[0]:.1f}-{load_end[0]:.1f}"])  # fmt: skip
        print(json.dumps(r))
    print_table(["rows", "generate", "commit", "split", "index", "baseline split", "max RSS GB", "wall", "table GB",
                 "disk MB", "shards", "load"], rows)  # fmt: skip


if __name__ == "__main__":
    main()
