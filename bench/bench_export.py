"""Export throughput: ``curate export`` (Parquet, WebDataset) of Fashion-MNIST beside plain pyarrow / tarfile writes.

A workspace with the 70,000 Fashion-MNIST images is ingested once (untimed). Then, ``--repeat`` times in
alternating order and each as a fresh subprocess:

- curate: ``curate export -w WS --format parquet|webdataset --shard-size 10000 --out DIR --json``
  (reads the blob packs, writes shards, ``index.json`` with each shard's sha256, ``dataset.json``);
- peer: plain pyarrow: read the same version's sample table and blob packs, join on ``sample_id``, sort, and
  write the same image bytes in 10,000-row shards with ``pyarrow.parquet.write_table`` (columns sample_id, image,
  label) or with ``tarfile`` (``<key>.png``, ``<key>.cls``, ``<key>.json`` per sample, USTAR, integer mtime,
  like curate's members).

MB/s is image bytes (the same 35 MB of PNG bytes for both) per second, so the ratio is a ratio of times;
"in-process" is the time each reports for its own work, "end-to-end" the whole command with interpreter start.
CPU-s (user + system of the whole command, from ``time -v``) is steadier than wall time on a shared machine.
File sizes on disk are shown too.

Run (from the repository root)::

    .venv/bin/python bench/bench_export.py --repeat 3
    .venv/bin/python bench/bench_export.py --repeat 1 --hf-check   # also load the Parquet shards with HF `datasets`

``--hf-check`` needs Hugging Face ``datasets`` installed; it is not a curate dependency.
"""

from __future__ import annotations

import argparse
import datetime as dt
import io
import json
import os
import sys
import tarfile
import time
from pathlib import Path

from _common import CURATE, FASHION, fmt_runs, machine, median, print_table, reset_dir, run_measured

SHARD_ROWS = 10_000
MTIME = 1_700_000_000


def prepare(ws: Path, data: Path, workers: int) -> None:
    """Ingest Fashion-MNIST into ``ws`` unless a finished workspace is already there."""
    if (ws / "HEAD").exists():
        return
    reset_dir(ws)
    run_measured([CURATE, "ingest", str(data), "-w", str(ws), "--workers", str(workers), "--json"])


def peer_export(ws: Path, out: Path, fmt: str) -> dict[str, float]:
    """The plain pyarrow / tarfile writer: same rows, same image bytes, same shard size."""
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    t0 = time.perf_counter()
    head = (ws / "HEAD").read_text().strip()
    samples = pq.read_table(ws / "versions" / head / "samples")
    meta_cols = ["sample_id", "source", "label", "width", "height", "mode", "format", "nbytes", "origin_split"]
    samples = samples.filter(pc.equal(samples.column("status"), "ok")).select(meta_cols)
    blobs = pq.read_table(sorted((ws / "blobs").glob("pack-*.parquet")))
    rows = samples.join(blobs, "sample_id", join_type="inner").sort_by("sample_id")
    classes = sorted({x for x in rows.column("label").to_pylist() if x is not None}, key=int)
    index = {c: i for i, c in enumerate(classes)}
    labels = pa.array([index[x] for x in rows.column("label").to_pylist()], pa.int64())
    image_bytes = pc.sum(pc.binary_length(rows.column("data"))).as_py()
    out.mkdir(parents=True, exist_ok=True)
    for k, start in enumerate(range(0, rows.num_rows, SHARD_ROWS)):
        part = rows.slice(start, SHARD_ROWS)
        labs = labels.slice(start, SHARD_ROWS)
        if fmt == "parquet":
            table = pa.table({"sample_id": part.column("sample_id"), "image": part.column("data"), "label": labs})
            pq.write_table(table, out / f"all-{k:06d}.parquet", compression="snappy", row_group_size=1000)
            continue
        metas = part.select([c for c in meta_cols if c != "label"]).to_pylist()
        with tarfile.open(out / f"all-{k:06d}.tar", "w", format=tarfile.USTAR_FORMAT) as tf:
            for meta, data, lab in zip(metas, part.column("data").to_pylist(), labs.to_pylist(), strict=True):
                key = meta["sample_id"]
                members = {f"{key}.cls": str(lab).encode(), f"{key}.json": json.dumps({**meta, "label": lab}).encode(),
                           f"{key}.png": data}
                for name in sorted(members):
                    info = tarfile.TarInfo(name)
                    info.size, info.mtime, info.mode = len(members[name]), MTIME, 0o644
                    tf.addfile(info, io.BytesIO(members[name]))
    secs = time.perf_counter() - t0
    return {"seconds": secs, "image_bytes": image_bytes, "file_bytes": sum(p.stat().st_size for p in out.iterdir()),
            "rows": rows.num_rows}


def hf_check(folder: Path) -> None:
    """Load the exported Parquet shards with Hugging Face ``datasets`` and print what it sees."""
    os.environ.setdefault("HF_HOME", "/tmp/curate-bench-hf")
    from datasets import load_dataset  # not a curate dependency: installed only for this check

    files = sorted(str(p) for p in (folder / "parquet").glob("*.parquet"))
    ds = load_dataset("parquet", data_files=files, split="train")
    row = ds[0]
    print(f"\nHF datasets load_dataset('parquet', data_files=<{len(files)} shards>): {ds.num_rows:,} rows")
    print(f"features: {ds.features}")
    print(f"row 0: image={type(row['image']).__name__} {getattr(row['image'], 'size', None)}, label={row['label']} "
          f"({ds.features['label'].int2str(row['label']) if hasattr(ds.features['label'], 'int2str') else '-'})")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", type=Path, default=FASHION, help="folder with the Fashion-MNIST idx .gz files")
    ap.add_argument("--ws", type=Path, default=Path("/tmp/curate-bench-export-ws"), help="workspace (ingested once, kept)")
    ap.add_argument("--out", type=Path, default=Path("/tmp/curate-bench-export-out"), help="scratch output folder")
    ap.add_argument("--formats", default="parquet,webdataset")
    ap.add_argument("--workers", type=int, default=2, help="for the one-time ingest")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--hf-check", action="store_true", help="load the curate Parquet shards with HF datasets at the end")
    ap.add_argument("--peer", choices=["parquet", "webdataset"], help=argparse.SUPPRESS)  # internal: run the peer, print JSON
    args = ap.parse_args()

    if args.peer:
        print(json.dumps(peer_export(args.ws, args.out, args.peer)))
        return

    prepare(args.ws, args.data, args.workers)
    formats = [f.strip() for f in args.formats.split(",") if f.strip()]
    jobs = [(who, fmt) for fmt in formats for who in ("peer", "curate")]
    res: dict[tuple[str, str], dict[str, list[float]]] = {j: {"wall": [], "inner": [], "cpu": [], "img": [], "file": []} for j in jobs}
    for r in range(args.repeat):
        for who, fmt in jobs[r % len(jobs) :] + jobs[: r % len(jobs)]:
            out = reset_dir(args.out / f"{who}-{fmt}")
            if who == "peer":
                run = run_measured([sys.executable, __file__, "--peer", fmt, "--ws", str(args.ws), "--out", str(out)])
                inner, img, files = run.result["seconds"], run.result["image_bytes"], run.result["file_bytes"]
            else:
                cmd = [CURATE, "export", "-w", str(args.ws), "--format", fmt, "--shard-size", str(SHARD_ROWS)]
                run = run_measured([*cmd, "--out", str(out), "--json"])
                inner, files = run.result["seconds"], run.result["bytes"]
                img = res[("peer", fmt)]["img"][-1] if res[("peer", fmt)]["img"] else None
            m = res[(who, fmt)]
            m["wall"].append(run.seconds)
            m["inner"].append(inner)
            m["cpu"].append(run.cpu_seconds)
            m["file"].append(files)
            if img is not None:
                m["img"].append(img)
            print(f"# run {r + 1} {who} {fmt}: {run.seconds:.2f}s end-to-end, {inner:.2f}s in-process, {files / 1e6:.1f} MB written",
                  file=sys.stderr)

    img_bytes = median(res[("peer", formats[0])]["img"])  # identical for every job: the same PNG bytes
    print(f"\nexport of {img_bytes / 1e6:.1f} MB of image bytes (70,000 PNGs), {SHARD_ROWS:,}-row shards, {args.repeat} runs each, "
          f"{dt.date.today()}, {machine()}\n")
    rows = []
    for fmt in formats:
        peer, cur = res[("peer", fmt)], res[("curate", fmt)]
        for who, m in (("peer", peer), ("curate", cur)):
            name = {"peer": f"plain {'pyarrow.parquet' if fmt == 'parquet' else 'tarfile'}", "curate": "curate export"}[who]
            rows.append([
                fmt,
                name,
                fmt_runs([img_bytes / 1e6 / s for s in m["inner"]], ".1f"),
                fmt_runs([img_bytes / 1e6 / s for s in m["wall"]], ".1f"),
                "1.00" if who == "peer" else f"{median(peer['inner']) / median(cur['inner']):.2f}",
                "1.00" if who == "peer" else f"{median(peer['wall']) / median(cur['wall']):.2f}",
                fmt_runs(m["cpu"], ".2f"),
                "1.00" if who == "peer" else f"{median(peer['cpu']) / median(cur['cpu']):.2f}",
                f"{median(m['file']) / 1e6:.1f}",
            ])
    print_table(
        ["format", "writer", "image MB/s in-process", "image MB/s end-to-end", "ratio in-proc", "ratio e2e", "CPU-s", "ratio CPU",
         "MB on disk"],
        rows,
    )
    print("\nMB/s: median (min-max) of image bytes per second; ratio = curate MB/s / plain-writer MB/s. CPU-s: user+system "
          "CPU of the whole command (interpreter start included); ratio CPU = peer CPU-s / curate CPU-s.")
    if args.hf_check:
        out = reset_dir(args.out / "hf")
        run_measured([CURATE, "export", "-w", str(args.ws), "--format", "parquet", "--out", str(out), "--json"])
        hf_check(out)


if __name__ == "__main__":
    main()
