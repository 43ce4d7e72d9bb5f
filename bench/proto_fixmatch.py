"""Prototype of issue 18's consistency term on arrays: ``curate pseudolabel``'s loop (``run_loop``) without a workspace.

MNIST or Fashion-MNIST from the idx ``.gz`` files in ``/work/shared/datasets``: ``--per-class`` labels per class
drawn with ``--draw`` (numpy ``default_rng(draw)``, per class, from the official train set), a tenth of them (at
least 1 per class) held out as val; the other train images are the unlabeled pool; the official 10,000-image test
set scores every round's model. Round 0 is supervised only; rounds 1+ add the accepted pseudo-labels at
``--ratio`` and, with ``--consistency fixmatch``, the FixMatch term over the in-distribution pool. The pool's
labels only report the accuracy of the accepted pseudo-labels. One JSON line per run goes to ``--out``.

    OMP_NUM_THREADS=1 python bench/proto_fixmatch.py --dataset mnist --per-class 100 --consistency fixmatch
"""

from __future__ import annotations

import argparse
import gzip
import json
import time
from pathlib import Path

import numpy as np

DATA = Path("/work/shared/datasets")


def load_idx(path: Path) -> np.ndarray:
    """An idx file (``.gz``) as a numpy array: images ``(N, H, W)`` uint8 or labels ``(N,)``."""
    with gzip.open(path) as fh:
        raw = fh.read()
    ndim = raw[3]
    dims = [int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    return np.frombuffer(raw, np.uint8, offset=4 + 4 * ndim).reshape(dims)


def split(dataset: str, per_class: int, draw: int) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """``train`` / ``val`` (from the drawn labels), ``pool`` (the rest of train, labels = hidden truth), ``test``."""
    d = DATA / dataset
    x, y = load_idx(d / "train-images-idx3-ubyte.gz")[..., None], load_idx(d / "train-labels-idx1-ubyte.gz").astype(np.int64)
    xt, yt = load_idx(d / "t10k-images-idx3-ubyte.gz")[..., None], load_idx(d / "t10k-labels-idx1-ubyte.gz").astype(np.int64)
    rng = np.random.default_rng(draw)
    n_val = max(1, per_class // 10)
    tr, va = [], []
    for c in range(10):
        pick = rng.choice(np.flatnonzero(y == c), per_class, replace=False)
        va += pick[:n_val].tolist()
        tr += pick[n_val:].tolist()
    pool = np.setdiff1d(np.arange(len(y)), np.array(tr + va))
    return {"train": (x[tr], y[tr]), "val": (x[va], y[va]), "pool": (x[pool], y[pool]), "test": (xt, yt)}


def test_error(res: dict, xt: np.ndarray, yt: np.ndarray, normalization: dict) -> float:
    """1 - accuracy of a round's model on the official test set."""
    from curate.learn.data import DecodedSplit, eval_loader
    from curate.learn.train import evaluate

    model = res["model"].eval()
    ev = evaluate(model, eval_loader(DecodedSplit(xt, yt, [""] * len(yt)), normalization), next(model.parameters()).device)
    return 1.0 - ev["acc"]


def _twin_rounds(variants: dict[str, object]) -> list[tuple[str, dict]]:
    """Wrap ``train_round`` so that a round with the consistency term also trains one twin per ``variants`` entry
    (name -> ``ConsistencySettings``, or None for no term) on the same rows, seed and steps; returns the list the
    twins' ``(name, fit result)`` pairs are appended to, in round order."""
    import curate.learn.selftrain as st

    twins: list[tuple[str, dict]] = []
    inner = st.train_round

    def both(*args, **kw):  # noqa: ANN002, ANN003, ANN202
        if kw.get("consistency") is not None and kw.get("unlabeled") is not None:
            for name, cons in variants.items():
                extra = {"consistency": None, "unlabeled": None} if cons is None else {"consistency": cons}
                twins.append((name, inner(*args, **{**kw, **extra})))
        return inner(*args, **kw)

    st.train_round = both
    return twins


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dataset", default="mnist", choices=("mnist", "fashion-mnist"))
    ap.add_argument("--per-class", type=int, default=100)
    ap.add_argument("--draw", type=int, default=0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--augment", default=None, help="default: affine (mnist), flip-shift (fashion)")
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--min-steps", type=int, default=500)
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--threshold", type=float, default=0.99)
    ap.add_argument("--ratio", default="10:1")
    ap.add_argument("--consistency", default="fixmatch", choices=("fixmatch", "none"))
    ap.add_argument("--weight", type=float, default=1.0)
    ap.add_argument("--tau", type=float, default=0.95)
    ap.add_argument("--mu", type=int, default=2)
    ap.add_argument("--strength", type=float, default=1.0)
    ap.add_argument(
        "--also-without",
        action="store_true",
        help="each consistency round also trains its twin without the term on the same selection (one process)",
    )
    ap.add_argument(
        "--also-strength",
        type=float,
        nargs="*",
        default=[],
        help="each consistency round also trains a twin with the term at these strengths (same selection)",
    )
    ap.add_argument("--pool-size", type=int, default=None)
    ap.add_argument("--tag", default="")
    ap.add_argument("--out", default=str(Path(__file__).with_suffix(".jsonl")))
    a = ap.parse_args()

    import torch

    from curate.learn.consistency import ConsistencySettings
    from curate.learn.data import DecodedSplit, fit_normalization
    from curate.learn.selftrain import parse_ratio
    from curate.learn.train import TrainConfig
    from curate.stages.pseudolabel.loop import LoopSettings, run_loop

    torch.set_num_threads(1)
    t0 = time.perf_counter()
    parts = split(a.dataset, a.per_class, a.draw)
    aug = a.augment or ("affine" if a.dataset == "mnist" else "flip-shift")
    lab = DecodedSplit(*parts["train"], [f"t{i}" for i in range(len(parts["train"][1]))])
    val = DecodedSplit(*parts["val"], [f"v{i}" for i in range(len(parts["val"][1]))])
    pool, truth = parts["pool"]
    if a.pool_size:  # smoke runs: a seeded subset
        keep = np.sort(np.random.default_rng([a.draw, 1]).choice(len(pool), a.pool_size, replace=False))
        pool, truth = pool[keep], truth[keep]
    norm = fit_normalization(lab.images)
    cons = ConsistencySettings(a.weight, a.tau, a.mu, a.strength) if a.consistency == "fixmatch" else None
    settings = LoopSettings(ratio=parse_ratio(a.ratio), rounds=a.rounds, threshold=a.threshold, min_steps=a.min_steps,
                            patience=a.rounds + 1, stable=0.0, consistency=cons)  # fmt: skip
    cfg = TrainConfig(arch="small-cnn", batch_size=a.batch_size, augment=aug, device="cpu", seed=a.seed, patience=0)
    variants: dict[str, object] = {"without consistency": None} if a.also_without else {}
    for st in a.also_strength:
        variants[f"consistency at strength {st:g}"] = ConsistencySettings(a.weight, a.tau, a.mu, st)
    twins = _twin_rounds(variants) if variants and cons is not None else []
    res = run_loop(lab, val, pool, [str(c) for c in range(10)], cfg, settings, normalization=norm, truth=truth, log=print)
    xt, yt = parts["test"]
    rows = []
    for r in res.rounds:
        fit = res.models[f"round{r['round']}"]
        err = test_error(fit, xt, yt, norm)
        keep = ("round", "accepted_total", "revoked", "selection_change", "pseudo_accuracy", "val_accuracy", "kept", "steps",
                "consistency_mask_rate", "seconds")  # fmt: skip
        rows.append({**{k: r.get(k) for k in keep}, "test_error": round(err, 5)})
        print(f"round {r['round']}: test error {err:.4%}  {rows[-1]}")
    for k, (name, twin) in enumerate(twins):
        label = f"{k // len(variants) + 1} {name}"
        err = test_error(twin, xt, yt, norm)
        rows.append({"round": label, "val_accuracy": twin["best"].get("val_acc"), "test_error": round(err, 5),
                     "consistency_mask_rate": twin.get("consistency_mask_rate")})  # fmt: skip
        print(f"round {label} (same selection): test error {err:.4%}")
    rec = {"args": vars(a), "augment": aug, "labeled": len(lab), "val": len(val), "pool": len(pool), "chosen": res.chosen_round,
           "rounds": rows, "wall_s": round(time.perf_counter() - t0, 1)}  # fmt: skip
    with open(a.out, "a") as fh:
        fh.write(json.dumps(rec) + "\n")


if __name__ == "__main__":
    main()
