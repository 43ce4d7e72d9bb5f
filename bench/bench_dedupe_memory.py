"""Where `curate dedupe`'s memory goes: the driver's RSS per phase, on a copy of an ingested workspace.

Runs ``curate dedupe`` in this process (through the CLI app, as ``bench_scale_pipeline.py`` does) on a fresh copy
of ``--base`` (a workspace whose HEAD is an ingest), samples this process's RSS every ``--interval`` seconds and
attributes each sample to the innermost phase running then (the stage's functions, wrapped for the run: reading
the parent, the signatures, the thumbnail arrays, the index, the verification, the annotation, the commit). Per
phase it prints the RSS at entry, the largest RSS while it ran and the RSS at exit (MiB), and at the end the
kernel's VmHWM and the duplicate figures, plus a digest of the committed table so that two code versions can be
compared on the same input.

Run (from the repository root; the base workspace from ``curate ingest bench/.out/tiny-200000 -w ...``)::

    nice -n 15 env OMP_NUM_THREADS=1 .venv/bin/python bench/bench_dedupe_memory.py --base bench/.out/ws200k-base
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import json
import shutil
import sys
import threading
import time
from pathlib import Path
from typing import Any

# (module, attribute, phase name): the functions whose time is a phase (those a code version lacks are skipped)
PHASES = [
    ("curate.workspace", "Workspace.samples", "read parent"),
    ("curate.stages.dedupe.find", "_signatures", "signatures"),
    ("curate.stages.dedupe.find", "group_items", "group_items"),
    ("curate.stages.dedupe.groups", "thumbs_array", "thumbnails"),  # before: the (N, 32, 32) arrays from the table
    ("curate.stages.dedupe.groups", "value_thumbs", "thumbnails"),
    ("curate.stages.dedupe.signatures", "UniqueSignatures.of", "thumbnails"),  # after: one tight array
    ("curate.stages.dedupe.index", "build", "index build"),
    ("curate.stages.dedupe.index", "knn", "knn"),
    ("curate.stages.dedupe.pairs", "pair_scores", "pair_scores"),
    ("curate.stages.dedupe.groups", "_members", "members"),
    ("curate.stages.dedupe.groups", "_edges", "edges"),
    ("curate.stages.dedupe.find", "annotate", "annotate"),
    ("curate.stages.dedupe.find", "cache_bytes", "cache_bytes"),
    ("curate.pipeline", "summarize", "summarize"),
    ("curate.workspace", "Workspace.commit", "commit"),
]


def rss() -> int:
    """This process's resident set size in bytes (``/proc/self/statm``)."""
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * 4096


def hwm() -> int:
    """The kernel's high-water mark of this process's RSS in bytes (``VmHWM``)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM"):
            return int(line.split()[1]) * 1024
    return 0


class Phases:
    """Per-phase RSS: at entry, the largest sample while innermost or nested, at exit."""

    def __init__(self) -> None:
        self.stack: list[str] = []
        self.rows: dict[str, dict[str, float]] = {}
        self.order: list[str] = []

    def wrap(self, fn: Any, name: str) -> Any:
        @functools.wraps(fn)
        def inner(*a: Any, **k: Any) -> Any:
            row = self.rows.setdefault(name, {"enter": rss(), "peak": 0, "exit": 0, "s": 0.0, "calls": 0})
            if name not in self.order:
                self.order.append(name)
            row["calls"] += 1
            self.stack.append(name)
            t = time.perf_counter()
            try:
                return fn(*a, **k)
            finally:
                self.stack.pop()
                row["s"] += time.perf_counter() - t
                row["exit"] = rss()
                row["peak"] = max(row["peak"], row["exit"])

        return inner

    def sample(self) -> None:
        now = rss()
        for name in self.stack:  # a phase's peak includes the phases inside it
            self.rows[name]["peak"] = max(self.rows[name]["peak"], now)


def install(ph: Phases) -> None:
    """Wrap the functions of ``PHASES`` in place (for this process only)."""
    import importlib

    for mod, attr, name in PHASES:
        m = importlib.import_module(mod)
        owner: Any = m
        parts = attr.split(".")
        for p in parts[:-1]:
            owner = getattr(owner, p, None)
        if owner is not None and hasattr(owner, parts[-1]):
            setattr(owner, parts[-1], ph.wrap(getattr(owner, parts[-1]), name))


def table_digest(ws_path: Path) -> str:
    """sha256 of the HEAD table's dup columns and status, sorted by sample_id (equal iff the decisions are)."""
    import pyarrow as pa

    from curate.workspace import Workspace

    ws = Workspace(ws_path)
    t = ws.samples(ws.head())
    cols = ["sample_id", "status", "dup_group", "is_duplicate", "dup_of", "dup_score", "dup_kind", "dup_label_conflict"]
    t = t.select([c for c in cols if c in t.column_names]).sort_by("sample_id")
    h = hashlib.sha256()
    for b in t.to_batches():
        sink = pa.BufferOutputStream()
        with pa.ipc.new_stream(sink, b.schema) as w:
            w.write_batch(b)
        h.update(sink.getvalue().to_pybytes())
    return h.hexdigest()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--base", type=Path, required=True, help="an ingested workspace (copied, never changed)")
    ap.add_argument("--ws", type=Path, default=Path("/tmp/curate-bench-dedupe-memory"), help="scratch copy")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--interval", type=float, default=0.01)
    ap.add_argument("--keep", action="store_true", help="keep the scratch workspace (to compare its tables)")
    args = ap.parse_args()

    shutil.rmtree(args.ws, ignore_errors=True)
    shutil.copytree(args.base, args.ws)
    from typer.testing import CliRunner

    from curate.cli import app

    ph = Phases()
    install(ph)
    stop = threading.Event()
    overall = [0]

    def sampler() -> None:
        while not stop.is_set():
            overall[0] = max(overall[0], rss())
            ph.sample()
            stop.wait(args.interval)

    start = rss()
    th = threading.Thread(target=sampler, daemon=True)
    th.start()
    t0 = time.perf_counter()
    res = CliRunner().invoke(app, ["dedupe", "-w", str(args.ws), "--workers", str(args.workers), "--json"], catch_exceptions=False)
    secs = time.perf_counter() - t0
    stop.set()
    th.join()
    if res.exit_code != 0:
        raise SystemExit(res.output[-2000:])
    st = json.loads(res.stdout)["stats"]
    mib = 2**20
    print(f"{'phase':<14} {'calls':>5} {'s':>8} {'enter MiB':>10} {'peak MiB':>9} {'exit MiB':>9}")
    for name in ph.order:
        r = ph.rows[name]
        enter, peak, leave = (r[k] / mib for k in ("enter", "peak", "exit"))
        print(f"{name:<14} {r['calls']:>5} {r['s']:>8.1f} {enter:>10,.0f} {peak:>9,.0f} {leave:>9,.0f}")
    print(f"\nRSS before the command {start / mib:,.0f} MiB, sampled peak {overall[0] / mib:,.0f} MiB, VmHWM {hwm() / mib:,.0f} MiB, "
          f"{secs:.1f} s")  # fmt: skip
    print(f"participants {st['participants']:,}, groups {st['groups']:,}, duplicates {st['duplicates']:,}, "
          f"near pairs {st['near_pairs']:,}, search {json.dumps(st['search'])}")  # fmt: skip
    import curate

    print(f"digest of the dup columns: {table_digest(args.ws)} (curate from {Path(curate.__file__).parent})")
    if not args.keep:
        shutil.rmtree(args.ws, ignore_errors=True)
    sys.stdout.flush()


if __name__ == "__main__":
    main()
