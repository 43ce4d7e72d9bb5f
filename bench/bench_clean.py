"""Benchmark ``curate clean`` on real data with known ground truth (issue 5), beside the usual recipes.

Tasks (``--task``, default all):

- ``flips``: Fashion-MNIST train (60,000) with 10% of labels flipped, uniformly at random (``uniform``) and each
  class to one fixed other class (``asym``), or to its look-alike (``confusable``: t-shirt -> shirt, pullover ->
  coat, ..., ``value_data.CONFUSABLE``; issue 18's second kind). Precision / recall / F1 of ``is_label_issue``
  against the flipped set and the wall time of ``curate clean --find-mislabels`` (the CLI, k-fold models included), beside cleanlab
  with 5-fold LogisticRegression probabilities on pixels (``--peer``, the usual recipe).
- ``mnist-test``: MNIST test set (10,000): how many of the 15 human-verified label errors (cleanlab label-errors
  study) are among curate's 100 lowest ``label_quality`` rows, beside the same count from the study's own
  published out-of-sample probabilities.
- ``ood``: Fashion-MNIST train plus 500 MNIST digits with random Fashion-MNIST labels: ROC AUC of ``ood_score``
  for the digits, beside cleanlab's ``OutOfDistribution`` (kNN on pixels).

Run: ``.venv/bin/python bench/bench_clean.py [--task flips|mnist-test|ood] [--no-peer] [-- extra clean flags]``.
Workspaces go to ``bench/.out/clean/``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import CURATE, FASHION, OUT, machine  # noqa: E402
from value_data import CONFUSABLE  # noqa: E402

MNIST = FASHION.parent / "mnist"
ERRORS = FASHION.parent / "label-errors" / "verified_label_errors_mnist_cifar10.csv"
ASYM = [6, 3, 4, 1, 2, 7, 0, 9, 5, 8]  # class k is flipped to ASYM[k] (a permutation without fixed points)


def _curate(*args: str) -> dict:
    """Run ``curate ARGS --json``; its JSON plus ``wall_s`` and ``cpu_s`` (user + system seconds of the process and
    its children: under load, the figure that does not count the time other work held the cores)."""
    import resource

    t0 = time.perf_counter()
    r0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    out = subprocess.run([CURATE, *args, "--json"], capture_output=True, text=True)
    r1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    if out.returncode:
        raise SystemExit(f"curate {' '.join(args)} failed:\n{out.stderr}")
    doc = json.loads(out.stdout)
    doc["wall_s"] = time.perf_counter() - t0
    doc["cpu_s"] = (r1.ru_utime + r1.ru_stime) - (r0.ru_utime + r0.ru_stime)
    return doc


def _idx_ws(name: str, images: Path) -> Path:
    """A fresh workspace with one idx file ingested (labels "0".."9")."""
    import shutil

    ws = OUT / "clean" / name
    shutil.rmtree(ws, ignore_errors=True)
    _curate("ingest", str(images), "--format", "idx", "-w", str(ws))
    return ws


def _plant(ws: Path, kind: str, seed: int = 0) -> set[str]:
    """Flip 10% of the ok rows' labels in a new version (stage ``plant_noise``); returns the flipped sample_ids."""
    import pyarrow as pa
    import pyarrow.compute as pc

    from curate.pipeline import run_stage
    from curate.stages import StageResult
    from curate.workspace import Workspace

    w = Workspace(ws)
    flipped: set[str] = set()

    def body(parent, pid):  # noqa: ANN001, ANN202
        rng = np.random.default_rng(seed)
        ok = np.flatnonzero(pc.equal(parent["status"], "ok").to_numpy(zero_copy_only=False))
        pick = rng.choice(ok, len(ok) // 10, replace=False)
        labels = parent["label"].to_pylist()
        ids = parent["sample_id"].to_pylist()
        for p in pick.tolist():
            k = int(labels[p])
            labels[p] = str(
                ASYM[k]
                if kind == "asym"
                else CONFUSABLE["fashion-mnist"][k]
                if kind == "confusable"
                else (k + int(rng.integers(1, 10))) % 10
            )
            flipped.add(ids[p])
        t = parent.set_column(parent.schema.get_field_index("label"), "label", pa.array(labels, pa.string()))
        return StageResult(table=t, stats={"flipped": len(pick)})

    run_stage(w, "plant_noise", {"kind": kind, "seed": seed}, body, cacheable=False)
    return flipped


def _prf(found: set[str], truth: set[str]) -> tuple[float, float, float]:
    tp = len(found & truth)
    p, r = tp / max(len(found), 1), tp / max(len(truth), 1)
    return p, r, 2 * p * r / max(p + r, 1e-9)


def _peer_logreg(ws: Path, truth: set[str]) -> tuple[tuple[float, float, float], float]:
    """cleanlab find_label_issues on 5-fold LogisticRegression probabilities from raw pixels."""
    from cleanlab.filter import find_label_issues
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import cross_val_predict

    from curate.learn.blobimages import load_images
    from curate.workspace import Workspace

    w = Workspace(ws)
    t = w.samples()
    t = t.filter(t["status"].to_numpy(zero_copy_only=False) == "ok")
    x = load_images(w, t, 1, (28, 28)).reshape(t.num_rows, -1).astype(np.float32) / 255
    y = np.array([int(v) for v in t["label"].to_pylist()])
    t0 = time.perf_counter()
    probs = cross_val_predict(LogisticRegression(max_iter=200), x, y, cv=5, method="predict_proba", n_jobs=1)
    issues = find_label_issues(y, probs)
    secs = time.perf_counter() - t0
    ids = np.array(t["sample_id"].to_pylist())
    return _prf(set(ids[issues].tolist()), truth), secs


def flips(args: argparse.Namespace) -> list[list[str]]:
    rows = []
    for kind in args.kinds.split(","):
        ws = _idx_ws(f"flips-{kind}", FASHION / "train-images-idx3-ubyte.gz")
        truth = _plant(ws, kind)
        res = _curate("clean", "--find-mislabels", "-w", str(ws), *args.extra)
        from curate.workspace import Workspace

        t = Workspace(ws).samples()
        found = {s for s, f in zip(t["sample_id"].to_pylist(), t["is_label_issue"].to_pylist(), strict=True) if f}
        p, r, f1 = _prf(found, truth)
        rows.append([f"curate clean ({kind})", f"{p:.3f}", f"{r:.3f}", f"**{f1:.3f}**", f"{res['wall_s']:.0f}"])
        if args.peer:
            (pp, pr, pf), secs = _peer_logreg(ws, truth)
            rows.append([f"cleanlab + 5-fold LogisticRegression ({kind})", f"{pp:.3f}", f"{pr:.3f}", f"{pf:.3f}", f"{secs:.0f}"])
        print(rows[-2 if args.peer else -1], rows[-1], flush=True)
    return rows


def mnist_test(args: argparse.Namespace) -> list[list[str]]:
    import csv

    ws = _idx_ws("mnist-test", MNIST / "t10k-images-idx3-ubyte.gz")
    res = _curate("clean", "--find-mislabels", "-w", str(ws), *args.extra)
    from curate.workspace import Workspace

    t = Workspace(ws).samples()
    errors = {int(r["test_index"]) for r in csv.DictReader(ERRORS.open()) if r["dataset"] == "mnist"}
    index_of: dict[str, set[int]] = {}
    for sid, src, extra in zip(t["sample_id"].to_pylist(), t["source"].to_pylist(), t["extra_sources"].to_pylist(), strict=True):
        index_of[sid] = {int(s.rsplit("#", 1)[1]) for s in [src, *(extra or [])]}
    q = np.array([v if v is not None else 2.0 for v in t["label_quality"].to_pylist()])
    top = [t["sample_id"][int(i)].as_py() for i in np.argsort(q, kind="stable")[:100]]
    hit = len({i for sid in top for i in index_of[sid]} & errors)
    flagged = sum(bool(v) for v in t["is_label_issue"].to_pylist())
    pyx = np.load(FASHION.parent / "label-errors" / "mnist_test_set_pyx.npy")
    given = np.load(FASHION.parent / "label-errors" / "mnist_test_set_original_labels.npy").astype(int)
    study_top = set(np.argsort(pyx[np.arange(len(given)), given], kind="stable")[:100].tolist())
    return [
        ["curate clean (own 5-fold models)", f"**{hit}** / 15", str(flagged), f"{res['wall_s']:.0f}"],
        ["study's published probabilities, same ranking", f"{len(study_top & errors)} / 15", "-", "-"],
    ]


def ood(args: argparse.Namespace) -> list[list[str]]:
    from PIL import Image

    from curate.sources.idx import read_idx

    ws = _idx_ws("ood", FASHION / "train-images-idx3-ubyte.gz")
    digits = read_idx(MNIST / "train-images-idx3-ubyte.gz")
    rng = np.random.default_rng(0)
    junk = OUT / "clean" / "ood-digits"
    for i in rng.choice(len(digits), 500, replace=False).tolist():
        p = junk / str(int(rng.integers(0, 10))) / f"digit{i}.png"
        p.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(digits[i]).save(p)
    _curate("ingest", str(junk), "-w", str(ws))
    res = _curate("clean", "--find-outliers", "-w", str(ws), *args.extra)
    from sklearn.metrics import roc_auc_score

    from curate.workspace import Workspace

    t = Workspace(ws).samples()
    t = t.filter(t["status"].to_numpy(zero_copy_only=False) == "ok")
    is_digit = np.array(["ood-digits" in s for s in t["source"].to_pylist()])
    auc = roc_auc_score(is_digit, np.array(t["ood_score"].to_pylist(), float))
    flagged = np.array([bool(v) for v in t["is_outlier"].to_pylist()])
    rows = [["curate clean --find-outliers (Mahalanobis on k-fold CNN features)", f"**{auc:.4f}**",
             f"{(flagged & is_digit).sum()} / {flagged.sum()}", f"{res['wall_s']:.0f}"]]  # fmt: skip
    if args.peer:
        from cleanlab.outlier import OutOfDistribution

        from curate.learn.blobimages import load_images

        x = load_images(Workspace(ws), t, 1, (28, 28)).reshape(t.num_rows, -1).astype(np.float32) / 255
        t0 = time.perf_counter()
        scores = OutOfDistribution().fit_score(features=x)  # lower = more atypical
        rows.append(["cleanlab OutOfDistribution (kNN on pixels)", f"{roc_auc_score(is_digit, -scores):.4f}", "-",
                     f"{time.perf_counter() - t0:.0f}"])  # fmt: skip
    return rows


def _table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in rows])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--task", choices=("flips", "mnist-test", "ood", "all"), default="all")
    ap.add_argument("--kinds", default="uniform,confusable,asym", help="flip kinds for --task flips")
    ap.add_argument("--no-peer", dest="peer", action="store_false", help="skip the peer recipes")
    ap.add_argument("extra", nargs="*", help="extra `curate clean` flags (after --)")
    args = ap.parse_args()
    print(f"# {machine()}, load {os.getloadavg()[0]:.1f}; clean flags: {' '.join(args.extra) or '(defaults)'}", flush=True)
    if args.task in ("flips", "all"):
        print(_table(["method", "precision", "recall", "F1", "seconds"], flips(args)), flush=True)
    if args.task in ("mnist-test", "all"):
        print(_table(["probabilities", "verified errors in top 100", "flagged", "seconds"], mnist_test(args)), flush=True)
    if args.task in ("ood", "all"):
        print(_table(["method", "ROC AUC (digits)", "flagged digits / flagged", "seconds"], ood(args)), flush=True)
    print(f"# load after: {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
