"""Balance and augment on an imbalanced Fashion-MNIST: test macro-F1 per strategy, and augmentation throughput.

1. ``prepare`` (once, reused): ``curate ingest`` of the official idx files (origin split from the file names); the
   train images of classes 0-4 are cut to 10% (600 of 6,000 each, the first by sha256(sample_id): a fixed, content-
   based choice) with a bench-only stage that excludes the rest (reason ``bench_imbalance``, so nothing is deleted);
   ``curate split --keep-existing --ratios 90:10`` (the official 10k test set stays test, val comes out of train, so
   val is imbalanced like train); ``curate normalize``. That version is BASE: train 540 x 5 + 5,400 x 5 = 29,700.
2. ``train``: for each strategy, ``curate checkout BASE``, ``curate balance --strategy S`` (none for plain), then
   ``curate train --version V --arch small-cnn --epochs E --patience 0 --seed 0``: the same net, epochs, seed and
   settings everywhere. Test macro-F1 and accuracy of the best-val checkpoint come from the run's metrics.json, plus
   the mean recall of the cut classes 0-4.
3. ``throughput``: images/s of ``curate augment --policy medium --copies 1`` on BASE (every train image once; the
   command as a subprocess, with ``-j 1`` and ``-j 2``; a new seed per repeat so the stage cache never answers)
   beside albumentations in a bare loop over the same images in this process: (a) decode + the same Compose +
   PNG encode, what any offline augmentation has to do, (a') the same with a fresh generator pair per image (the
   price of per-copy seeds), and (b) the Compose alone on pre-decoded arrays. curate's
   figure is the stage's own images/s (read packs, decode, augment, encode, sha256, write packs) and the wall time
   of the whole command (interpreter start, imports, committing the version). Medians of ``--repeats`` rounds,
   in rotating order.

Run (from the repository root)::

    nice -n 15 .venv/bin/python bench/bench_balance.py --epochs 3 --repeats 3
    # throughput only, on the first 5,000 train images, -j 1, beside the code in DIR (a shorter run for a busy machine)
    nice -n 15 .venv/bin/python bench/bench_balance.py --skip-train --workers 1 --limit 5000 --before DIR

Workspaces live in ``bench/.out/balance/``.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from _common import CURATE, FASHION, OUT, machine, median, print_table

ROOT = OUT / "balance"
WS = ROOT / "ws"
CUT = ("0", "1", "2", "3", "4")
STRATEGIES = ("plain", "undersample", "oversample", "augment", "weights")


def sh(args: list[str], env: dict[str, str] | None = None) -> dict[str, Any]:
    """Run a curate command (``--json`` appended), echo it, return its parsed output, wall seconds and CPU seconds
    (user + system of the command and the workers it reaped)."""
    print("$ " + " ".join(["curate", *args[1:]]), flush=True)
    r0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    out = subprocess.run([*args, "--json"], check=True, capture_output=True, text=True, env=env).stdout
    wall = time.perf_counter() - t0
    r1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (r1.ru_utime - r0.ru_utime) + (r1.ru_stime - r0.ru_stime)
    return {"wall": wall, "cpu": cpu, **(json.loads(out) if out.strip() else {})}


def load() -> str:
    return f"{os.getloadavg()[0]:.1f}"


def prepare() -> str:
    """Build BASE once; returns its version id."""
    done = ROOT / "BASE"
    if done.exists():
        return done.read_text().strip()
    import pyarrow as pa

    from curate.pipeline import run_stage
    from curate.schema import exclude
    from curate.stages import StageResult
    from curate.workspace import Workspace

    ROOT.mkdir(parents=True, exist_ok=True)
    w = ["-w", str(WS)]
    sh([CURATE, "ingest", str(FASHION), *w])
    ws = Workspace(WS)

    def cut(parent: pa.Table, _pid: str | None) -> StageResult:
        rows = parent.select(["sample_id", "label", "origin_split"]).to_pylist()
        drop: set[str] = set()
        for c in CUT:
            ids = sorted(
                (r["sample_id"] for r in rows if r["label"] == c and r["origin_split"] == "train"),
                key=lambda s: hashlib.sha256(s.encode()).digest(),
            )
            drop.update(ids[len(ids) // 10 :])  # keep 10%
        mask = [r["sample_id"] in drop for r in rows]
        return StageResult(table=exclude(parent, mask, stage="imbalance", reason="bench_imbalance"), stats={"cut": len(drop)})

    print("$ (library) exclude 90% of the train images of classes 0-4, reason bench_imbalance", flush=True)
    run_stage(ws, "imbalance", {"classes": list(CUT), "keep": 0.1}, cut)
    sh([CURATE, "split", "--keep-existing", "--ratios", "90:10", *w])
    base = sh([CURATE, "normalize", *w])["version"]
    done.write_text(base + "\n")
    return base


def subset(base: str, n: int) -> str:
    """A version of BASE whose only train parents are the first ``n`` (in table order); the other train rows are
    excluded with reason ``bench_subset``. Built once per ``n``; returns its version id."""
    done = ROOT / f"BASE-{n}"
    if done.exists():
        return done.read_text().strip()
    import pyarrow as pa

    from curate.augmentation.copies import parents_of
    from curate.pipeline import run_stage
    from curate.schema import exclude
    from curate.stages import StageResult
    from curate.workspace import Workspace

    ws = Workspace(WS)
    sh([CURATE, "checkout", base, "-w", str(WS)])
    keep = set(parents_of(ws.samples(base)).column("sample_id").to_pylist()[:n])

    def cut(parent: pa.Table, _pid: str | None) -> StageResult:
        train = [s == "train" for s in parent.column("split").to_pylist()]
        mask = [t and sid not in keep for t, sid in zip(train, parent.column("sample_id").to_pylist(), strict=True)]
        return StageResult(table=exclude(parent, mask, stage="subset", reason="bench_subset"), stats={"kept": len(keep)})

    vid = run_stage(ws, "subset", {"n": n}, cut)["version"]
    done.write_text(vid + "\n")
    return vid


def train_all(base: str, epochs: int, only: list[str]) -> list[dict[str, Any]]:
    w = ["-w", str(WS)]
    rows = []
    for strategy in only:
        sh([CURATE, "checkout", base, *w])
        bal: dict[str, Any] = {}
        if strategy != "plain":
            bal = sh([CURATE, "balance", "--strategy", strategy, "--policy", "medium", "--seed", "0", *w])
        vid = bal.get("version", base)
        run = ROOT / "runs" / f"{strategy}-e{epochs}-{time.strftime('%H%M%S')}"
        load0 = load()
        res = sh(
            [
                CURATE,
                "train",
                "--version",
                vid,
                "--arch",
                "small-cnn",
                "--epochs",
                str(epochs),
                "--patience",
                "0",
                "--seed",
                "0",
                "--out",
                str(run),
                *w,
            ]
        )
        metrics = json.loads((run / "metrics.json").read_text())
        test = metrics["splits"]["test"]
        meta = json.loads((run / "meta_last.json").read_text())
        rows.append(
            {
                "strategy": strategy,
                "version": vid,
                "train_rows": meta["rows"]["train"],
                "sampler": meta.get("sampler", "shuffle"),
                "balance_s": round(bal.get("wall", 0.0), 1),
                "train_s": round(res["train_seconds"], 1),
                "test_macro_f1": round(test["macro_f1"], 4),
                "test_acc": round(test["accuracy"], 4),
                "recall_cut_classes": round(sum(test["per_class"][c]["recall"] for c in CUT) / len(CUT), 4),
                "recall_other_classes": round(sum(v["recall"] for k, v in test["per_class"].items() if k not in CUT) / 5, 4),
                "best_epoch": res["best_epoch"],
                "load": f"{load0}-{load()}",
            }
        )
        print(json.dumps(rows[-1]), flush=True)
    sh([CURATE, "checkout", base, *w])
    return rows


def throughput(base: str, repeats: int, before: str | None = None, variants: tuple[str, ...] = ("j1", "j2")) -> dict[str, Any]:
    import numpy as np
    from PIL import Image

    from curate.augmentation.copies import parents_of
    from curate.augmentation.policies import build_policy
    from curate.workspace import Workspace

    ws = Workspace(WS)
    parents = parents_of(ws.samples(base))
    blobs = list(ws.blobs.get_many(parents.column("sample_id").to_pylist(), parents.column("pack").to_pylist()).values())
    n = len(blobs)
    aug = build_policy("medium")
    aug.set_random_seed(0)
    arrays = [np.asarray(Image.open(io.BytesIO(b)).convert("L")) for b in blobs]

    def bare_full() -> tuple[float, float]:
        """(images/s, images per CPU-s) of the bare loop."""
        t0, c0 = time.perf_counter(), time.process_time()
        for data in blobs:
            out = aug(image=np.asarray(Image.open(io.BytesIO(data)).convert("L")))["image"]
            buf = io.BytesIO()
            Image.fromarray(out).save(buf, format="PNG")
        return n / (time.perf_counter() - t0), n / (time.process_time() - c0)

    def bare_reseed() -> float:
        """The bare loop plus what curate's determinism needs: a fresh generator pair per image (seeded by its index)."""
        import random

        t0 = time.perf_counter()
        for i, data in enumerate(blobs):
            aug.set_random_state(np.random.default_rng(i), random.Random(i))
            out = aug(image=np.asarray(Image.open(io.BytesIO(data)).convert("L")))["image"]
            buf = io.BytesIO()
            Image.fromarray(out).save(buf, format="PNG")
        return n / (time.perf_counter() - t0)

    def bare_aug() -> float:
        t0 = time.perf_counter()
        for im in arrays:
            aug(image=im)
        return n / (time.perf_counter() - t0)

    # A seed never used before in this workspace: the same parent and settings would be answered from the stage cache.
    seed = iter(range(int(time.time()) * 100, int(time.time()) * 100 + 100))

    def curate(workers: int, env: dict[str, str] | None = None) -> tuple[float, float, float]:
        """(the stage's images/s, the command's images/s, the command's images per CPU-s)."""
        sh([CURATE, "checkout", base, "-w", str(WS)])
        res = sh(
            [CURATE, "augment", "--policy", "medium", "--copies", "1", "--seed", str(next(seed)), "-j", str(workers), "-w", str(WS)],
            env=env,
        )
        if res["cached"]:
            raise RuntimeError("curate augment answered from its cache; the measurement is void")
        st = res["stats"]
        return st["images_per_s"], st["images_made"] / res["wall"], st["images_made"] / res["cpu"]

    order = ["bare", *variants, *([f"{v}b" for v in variants] if before else [])]  # j1b, j2b: the code in ``before``
    keys = ["bare_full", "bare_full_cpu", "bare_reseed", "bare_aug"]
    keys += [f"{j}_{kind}" for j in order[1:] for kind in ("stage", "wall", "cpu")]
    got: dict[str, list[float]] = {k: [] for k in keys}
    loads = [load()]
    env_before = {**os.environ, "PYTHONPATH": before} if before else None
    for r in range(repeats):
        for what in order[r % len(order) :] + order[: r % len(order)]:
            if what == "bare":
                wall, cpu = bare_full()
                got["bare_full"].append(wall)
                got["bare_full_cpu"].append(cpu)
                got["bare_reseed"].append(bare_reseed())
                got["bare_aug"].append(bare_aug())
            else:
                stage, wall, cpu = curate(int(what[1]), env_before if what.endswith("b") else None)
                got[f"{what}_stage"].append(stage)
                got[f"{what}_wall"].append(wall)
                got[f"{what}_cpu"].append(cpu)
            loads.append(load())
    sh([CURATE, "checkout", base, "-w", str(WS)])
    return {
        "images": n,
        "runs": {k: [round(v) for v in vs] for k, vs in got.items()},
        "median": {k: round(median(vs)) for k, vs in got.items()},
        "load": loads,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--repeats", type=int, default=3, help="rounds of the throughput comparison")
    ap.add_argument("--strategies", default=",".join(STRATEGIES), help="comma-separated subset of " + ",".join(STRATEGIES))
    ap.add_argument("--skip-train", action="store_true")
    ap.add_argument("--skip-throughput", action="store_true")
    ap.add_argument("--before", type=Path, help="throughput: also run curate from this copy of the code (holding curate/)")
    ap.add_argument("--limit", type=int, help="throughput: only the first N train images of BASE (a bench-only version)")
    ap.add_argument("--workers", default="1,2", help="throughput: the -j values of curate augment to run (comma-separated)")
    args = ap.parse_args()
    print(f"# {machine()}; load average {load()} at start", flush=True)
    t0 = time.perf_counter()
    base = prepare()
    result: dict[str, Any] = {"base": base}
    if not args.skip_throughput:
        variants = tuple(f"j{j}" for j in args.workers.split(","))
        tbase = subset(base, args.limit) if args.limit else base
        result["throughput"] = tp = throughput(tbase, args.repeats, str(args.before.resolve()) if args.before else None, variants)
        m = tp["median"]
        print(f"\nAugmentation throughput, {tp['images']:,} Fashion-MNIST train images, policy medium (images/s, medians):")
        rows = [
            ["albumentations bare loop: decode + augment + PNG encode, 1 process", m["bare_full"], tp["runs"]["bare_full"], "1.00"],
            ["  the same, images per CPU-s", m["bare_full_cpu"], tp["runs"]["bare_full_cpu"], "1.00"],
            [
                "the same + a fresh generator pair per image (per-copy seeds)",
                m["bare_reseed"],
                tp["runs"]["bare_reseed"],
                f"{m['bare_reseed'] / m['bare_full']:.2f}",
            ],
            ["albumentations bare loop: augment only (pre-decoded arrays)", m["bare_aug"], tp["runs"]["bare_aug"], "-"],
        ]
        for j in ("j1", "j2", "j1b", "j2b"):
            if f"{j}_stage" not in m:
                continue
            what = f"curate augment -j {j[1]}" + (", code before (--before)" if j.endswith("b") else "")
            for kind, label, peer in (("stage", "the stage's images/s", "bare_full"), ("wall", "whole command", "bare_full"),
                                      ("cpu", "whole command, images per CPU-s", "bare_full_cpu")):  # fmt: skip
                rows.append([f"{what}, {label}", m[f"{j}_{kind}"], tp["runs"][f"{j}_{kind}"], f"{m[f'{j}_{kind}'] / m[peer]:.2f}"])
        print_table(["what", "images/s", "runs", "vs bare loop (decode+augment+encode)"], rows)
        print(f"load averages: {' '.join(tp['load'])}")
    if not args.skip_train:
        result["train"] = rows = train_all(base, args.epochs, args.strategies.split(","))
        print(
            f"\nImbalanced Fashion-MNIST (classes 0-4 keep 10% of train), small-cnn, {args.epochs} epochs, seed 0, official test set:"
        )
        print_table(
            ["strategy", "train rows", "test macro-F1", "test acc", "recall 0-4", "recall 5-9", "train s", "load"],
            [
                [
                    r["strategy"],
                    f"{r['train_rows']:,}",
                    r["test_macro_f1"],
                    r["test_acc"],
                    r["recall_cut_classes"],
                    r["recall_other_classes"],
                    r["train_s"],
                    r["load"],
                ]
                for r in rows
            ],
        )
    result["seconds"] = round(time.perf_counter() - t0, 1)
    (ROOT / f"result-{time.strftime('%Y%m%d-%H%M%S')}.json").write_text(json.dumps(result, indent=2) + "\n")
    print(f"\ntotal {result['seconds']:.0f}s; load average {load()} at end", file=sys.stderr)


if __name__ == "__main__":
    main()
