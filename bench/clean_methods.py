"""Which cleanlab method to default to: out-of-sample probabilities from curate's k-fold models on Fashion-MNIST
train with 10% planted label flips, then every ``find_label_issues`` method scored against the flipped set.

Two steps, so the expensive one runs once per noise kind:

    .venv/bin/python bench/clean_methods.py probs uniform base3 '{"epochs": 3}'   # k-fold models -> .npz
    .venv/bin/python bench/clean_methods.py probs asym base3 '{"epochs": 3}'
    .venv/bin/python bench/clean_methods.py score bench/.out/clean/oof_*.npz      # precision/recall/F1 per method

``probs`` calls ``curate.learn.predict.oof_probs`` (what ``curate clean`` trains) on the raw arrays, with the
TrainConfig fields given as JSON (plus ``folds``); ``score`` prints one line per method.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import FASHION, OUT  # noqa: E402

ASYM = np.array([6, 3, 4, 1, 2, 7, 0, 9, 5, 8])  # class k is flipped to ASYM[k]


def probs(kind: str, tag: str, settings: dict) -> None:
    from curate.learn.predict import oof_probs
    from curate.learn.train import TrainConfig
    from curate.sources.idx import read_idx

    x = read_idx(FASHION / "train-images-idx3-ubyte.gz")[..., None]
    y = read_idx(FASHION / "train-labels-idx1-ubyte.gz").astype(np.int64)
    folds = settings.pop("folds", 5)
    rng = np.random.default_rng(0)
    flip = rng.choice(len(y), len(y) // 10, replace=False)
    noisy = y.copy()
    noisy[flip] = ASYM[y[flip]] if kind == "asym" else (y[flip] + rng.integers(1, 10, len(flip))) % 10
    t0 = time.time()
    p = oof_probs(x, noisy, [str(i) for i in range(10)], TrainConfig(**settings), folds=folds, seed=0)
    secs = time.time() - t0
    (OUT / "clean").mkdir(parents=True, exist_ok=True)
    np.savez(OUT / "clean" / f"oof_{kind}_{tag}.npz", p=p, noisy=noisy, y=y, flip=flip, seconds=secs)
    print(tag, kind, f"{secs:.0f}s", "out-of-sample accuracy vs true labels", round(float((p.argmax(1) == y).mean()), 4))


def score(files: list[str]) -> None:
    from cleanlab.filter import find_label_issues

    for f in files:
        d = np.load(f)
        truth = np.zeros(len(d["noisy"]), bool)
        truth[d["flip"]] = True
        print(f"{f}: k-fold models {float(d['seconds']):.0f}s")
        for method in ("low_self_confidence", "prune_by_noise_rate", "both", "confident_learning", "low_normalized_margin"):
            m = find_label_issues(d["noisy"], d["p"], filter_by=method)
            tp = (m & truth).sum()
            p, r = tp / max(m.sum(), 1), tp / truth.sum()
            print(f"  {method:22s} flagged {m.sum():5d}  precision {p:.3f}  recall {r:.3f}  F1 {2 * p * r / (p + r):.3f}")


if __name__ == "__main__":
    if sys.argv[1] == "probs":
        probs(sys.argv[2], sys.argv[3], json.loads(sys.argv[4]) if len(sys.argv) > 4 else {})
    else:
        score(sys.argv[2:])
