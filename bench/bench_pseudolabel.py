"""Pseudo-labeling: ``curate pseudolabel`` with 1,000 labels against supervised-only training, same run.

The task (issue "curate pseudolabel"): MNIST (or Fashion-MNIST) with 1,000 labels, 100 per class drawn with a
fixed seed; the other 59,000 train images are the unlabeled pool; the official 10,000-image test set is held out.
Val comes out of the 1,000 labels (10 per class), so the model sees 900 labeled train images: nothing outside
the 1,000 labels is ever used for training, selection or early stopping.

Both figures come from one ``curate pseudolabel`` run: its round 0 is the supervised-only model (labeled rows
only, same architecture, same steps per round); its chosen round (the one it commits) is the pseudo-labeled one. ``curate evaluate``
scores both checkpoints on the test split. The pool's hidden labels are given with ``--truth`` only to report
the accuracy of the accepted pseudo-labels; they never enter selection.

Run (from the repository root)::

    .venv/bin/python bench/bench_pseudolabel.py --dataset mnist -- --augment affine --min-steps 1500
    .venv/bin/python bench/bench_pseudolabel.py --dataset fashion-mnist -- --augment flip-shift --min-steps 1500

Arguments after ``--`` go to ``curate pseudolabel`` unchanged.
"""

from __future__ import annotations

import argparse
import csv
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from _common import CURATE, OUT, REPO, machine, print_table, reset_dir, write_fashion_png_tree

DATASETS = {
    "mnist": REPO.parent / "shared" / "datasets" / "mnist",
    "fashion-mnist": REPO.parent / "shared" / "datasets" / "fashion-mnist",
}


def curate(*args: str) -> dict:
    """Run a curate command with --json; fail loudly with its stderr."""
    proc = subprocess.run([CURATE, *args, "--json"], capture_output=True, text=True)
    if proc.returncode != 0:
        sys.exit(f"curate {' '.join(args)} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout)


def write_inputs(
    tree: Path, work: Path, *, per_class: int, val_per_class: int, seed: int, pool_size: int | None = None
) -> dict[str, Path]:
    """Manifests: labeled (train + val + test splits) and pool (hidden labels), plus the truth file.

    ``pool_size``: a random subset of the pool this large (its own generator: the label draw is unchanged)."""
    rng = np.random.default_rng(seed)
    labeled, pool, truth = [], [], []
    for cls in sorted(p.name for p in tree.iterdir() if p.is_dir()):
        files = sorted((tree / cls).glob("*.png"))
        train = [f for f in files if f.name.startswith("train-")]
        test = [f for f in files if f.name.startswith("test-")]
        pick = set(rng.choice(len(train), per_class, replace=False).tolist())
        chosen = [train[i] for i in sorted(pick)]
        labeled += [(f, cls, "val" if k < val_per_class else "train") for k, f in enumerate(chosen)]
        labeled += [(f, cls, "test") for f in test]
        for i, f in enumerate(train):
            if i not in pick:
                pool.append(f)
                truth.append((str(f), cls))
    if pool_size is not None and pool_size < len(pool):
        keep = np.sort(np.random.default_rng([seed, 1]).choice(len(pool), pool_size, replace=False))
        pool, truth = [pool[i] for i in keep], [truth[i] for i in keep]
    paths = {"labeled": work / "labeled.csv", "pool": work / "pool.csv", "truth": work / "truth.csv"}
    with open(paths["labeled"], "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["path", "label", "split"])
        w.writerows((str(f), c, s) for f, c, s in labeled)
    with open(paths["pool"], "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["path"])
        w.writerows((str(f),) for f in pool)
    with open(paths["truth"], "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["source", "label"])
        w.writerows(truth)
    return paths


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dataset", choices=sorted(DATASETS), default="mnist")
    ap.add_argument("--per-class", type=int, default=100, help="labels per class (val included)")
    ap.add_argument("--val-per-class", type=int, default=10)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--ratio", default="10:1")
    ap.add_argument("--pool-size", type=int, default=None, help="a random subset of the pool (ingest + dedupe of 59k take ~25 min)")
    ap.add_argument("extra", nargs="*", help="more curate pseudolabel flags (after --)")
    args = ap.parse_args()

    tree = OUT / f"{args.dataset}-png"
    write_fashion_png_tree(tree, DATASETS[args.dataset])
    work = reset_dir(OUT / f"pseudolabel-{args.dataset}")
    work.mkdir(parents=True)
    paths = write_inputs(
        tree, work, per_class=args.per_class, val_per_class=args.val_per_class, seed=args.seed, pool_size=args.pool_size
    )
    ws, models = str(work / "ws"), work / "models"
    t0 = time.perf_counter()
    curate("ingest", str(paths["labeled"]), "--assign-split", "-w", ws)
    t_ing = time.perf_counter() - t0
    t1 = time.perf_counter()
    res = curate("pseudolabel", "--pool", str(paths["pool"]), "--truth", str(paths["truth"]), "--ratio", args.ratio,
                 "--seed", str(args.seed), "-o", str(models), *args.extra, "-w", ws)  # fmt: skip
    t_pl = time.perf_counter() - t1
    st = res["stats"]
    version = res["version"]
    names = ["best"] + [f"round{r['round']}" for r in st["rounds"]]
    test = {name: curate("evaluate", str(models / f"model_{name}.pt"), "--version", version, "--split", "test", "-w", ws)
            for name in names}  # fmt: skip
    err = {k: 1.0 - v["accuracy"] for k, v in test.items()}
    best = next(r for r in st["rounds"] if r["round"] == st["chosen_round"])
    print(f"# {machine()}; {args.dataset}, {args.per_class * 10} labels ({args.val_per_class * 10} of them val), ratio {args.ratio}")
    print(f"# curate pseudolabel {' '.join(args.extra)}; pool {args.pool_size or 'all'}")
    rows = []
    for r in st["rounds"]:
        pacc = r.get("pseudo_accuracy")
        test_err = err[f"round{r['round']}"]
        vs = (f"{r['delta_accuracy']:+.3f} vs {r['vs_round']} [{r['delta_low']:+.3f}, {r['delta_high']:+.3f}]"
              if r.get("delta_accuracy") is not None else "-")  # fmt: skip
        rows.append([r["round"], f"{r['accepted_total']:,}", r.get("revoked", 0), f"{r.get('selection_change', 1):.1%}" if r["round"]
                     else "-", f"{r['val_accuracy']:.4f}", vs, "yes" if r.get("kept", True) else "no",
                     f"{pacc:.4f}" if pacc is not None else "-", f"{test_err:.2%}", f"{r['seconds']:.0f}"])  # fmt: skip
    head = ["round", "accepted", "revoked", "changed", "val acc", "paired val delta [90% CI]", "kept", "pseudo-label acc",
            "test error", "s"]  # fmt: skip
    print_table(head, rows)
    print(f"stopped: {st['stopped']}")
    print()
    ratio = err["best"] / err["round0"] if err["round0"] else float("nan")
    print_table(
        ["model", "test error", "vs supervised"],
        [["supervised only (round 0)", f"{err['round0']:.2%}", "1.00x"], [f"curate pseudolabel (round {st['chosen_round']})",
          f"{err['best']:.2%}", f"{ratio:.2f}x"]],
    )  # fmt: skip
    pacc = best.get("pseudo_accuracy")
    print(f"\naccepted pseudo-labels committed: {st['accepted']:,}, accuracy {pacc if pacc is not None else float('nan'):.4f}")
    print(f"time: ingest {t_ing:.0f}s, pseudolabel (pool ingest + dedupe + {len(st['rounds'])} trainings) {t_pl:.0f}s")
    (work / "result.json").write_text(json.dumps({"test_error": err, "stats": st, "seconds": t_pl}, indent=2))


if __name__ == "__main__":
    main()
