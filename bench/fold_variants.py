"""Which fold models make ``curate clean`` judge better: out-of-sample probabilities from variants of the k-fold
models, scored against the planted truth of ``bench/bench_value.py``'s sets, without training any arm.

For one set's workspace (the rows the newest clean version checked, their given labels and the truth), each
variant (``NAME=key=value,...`` over ``curate.learn.train.TrainConfig`` fields, plus ``folds`` and ``ensemble``:
that many seeds averaged) computes k-fold probabilities with ``curate.learn.predict.oof_predict`` and is scored with
``value_policies.score`` under the shipped policy, plus threshold-free figures (AUROC of the given label's
probability, flips vs clean rows). Probabilities are cached under ``bench/.out/value/folds/<set>/<variant>.npz``.

Run: ``python bench/fold_variants.py bench/.out/value/ws/<set> --variant base=epochs=3 --variant e6=epochs=6``
(``ws=``: the probabilities the workspace's clean step cached; ``r2=from=ws``: a second pass that trains without
the rows the shipped policy excluded after ``ws``)
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import OUT  # noqa: E402
from value_policies import load, score  # noqa: E402


def parse(spec: str) -> tuple[str, dict[str, object]]:
    """``NAME=k=v,k=v`` -> (NAME, {k: v}) with ints/floats converted."""
    name, _, rest = spec.partition("=")
    out: dict[str, object] = {}
    for kv in filter(None, rest.split(",")):
        k, _, v = kv.partition("=")
        for cast in (int, float):
            try:
                out[k] = cast(v)
                break
            except ValueError:
                continue
        else:
            out[k] = v
    return name, out


def images_of(ws_path: Path, ids: list[str]) -> np.ndarray:
    """uint8 (N, H, W, C) of ``ids`` from the workspace's blobs, in that order."""
    import pyarrow as pa

    from curate.learn.blobimages import geometry, load_images
    from curate.workspace import Workspace

    ws = Workspace(ws_path)
    table = ws.samples(ws.head())
    where = {s: i for i, s in enumerate(table.column("sample_id").to_pylist())}
    rows = table.take(pa.array([where[s] for s in ids]))
    channels, size = geometry(rows, None)
    return load_images(ws, rows, channels, size)


def oof(images: np.ndarray, labels: np.ndarray, classes: list[str], opts: dict[str, object], seed: int,
        train_mask: np.ndarray | None = None) -> np.ndarray:  # fmt: skip
    """Mean of ``ensemble`` k-fold probability sets (seeds ``seed``, ``seed + 100``, ...)."""
    from curate.learn.predict import oof_predict
    from curate.learn.train import TrainConfig

    opts = dict(opts)
    folds, ensemble = int(opts.pop("folds", 5)), int(opts.pop("ensemble", 1))
    base = {"arch": "small-cnn", "epochs": 3, "batch_size": 128, "lr": 3e-3, "augment": "none", "device": "auto"}
    cfg = replace(TrainConfig(), **(base | opts))
    runs = [
        oof_predict(images, labels, classes, cfg, folds=folds, seed=seed + 100 * e, train_mask=train_mask).probs
        for e in range(ensemble)
    ]
    return np.mean(runs, axis=0)


def shipped_exclusions(d: dict, probs: np.ndarray) -> np.ndarray:
    """bool (N,): the rows the shipped clean policy (estimate, exclude, junk 0.85) would exclude given ``probs``."""
    from curate.stages.clean import policy as cleanpolicy
    from curate.stages.clean.labelissues import label_issues

    found = label_issues(d["labels"], probs, method="low_normalized_margin")
    ood = (1 - probs.max(1)) / (1 - 1 / probs.shape[1])
    dec = cleanpolicy.decide(found, ood, action="exclude", policy="estimate", relabel_threshold=0.9,
                             outlier_threshold=0.85, junk_threshold=0.85)  # fmt: skip
    return dec.exclude_label | dec.exclude_outlier


def recall_at_loss(d: dict, budget: float = 0.02) -> float:
    """Share of flips ranked worse (lower p(given label)) than the row at which ``budget`` of the clean rows are lost."""
    p_given = d["probs"][np.arange(len(d["labels"])), d["labels"]]
    clean, flip = p_given[d["kind"] == "clean"], p_given[d["kind"] == "flip"]
    cut = np.quantile(clean, budget)
    return float((flip < cut).mean())


def fewest_errors(d: dict) -> int:
    """The fewest (wrong rows kept + clean rows excluded) over every cut of the rows ranked by p(given label).

    ``bench/value_oracle.py``'s split arms measured a missed flip and a lost clean row costing the final model about
    the same (BENCHMARKS.md "What the shipped default's shortfall costs"), so this count is the ranking's own figure
    of merit: what the best threshold could reach with these probabilities.
    """
    p_given = d["probs"][np.arange(len(d["labels"])), d["labels"]]
    order = np.argsort(p_given, kind="stable")
    bad = np.isin(d["kind"], ("flip", "junk"))[order]
    clean = (d["kind"] == "clean")[order]
    total = bad.sum() - np.cumsum(bad) + np.cumsum(clean)
    return int(min(bad.sum(), total.min()))


def auroc(d: dict) -> float:
    """AUROC of 1 - p(given label) for flipped vs clean rows (threshold-free: how well the probabilities rank)."""
    from sklearn.metrics import roc_auc_score

    keep = np.isin(d["kind"], ("flip", "clean"))
    p_given = d["probs"][np.arange(len(d["labels"])), d["labels"]]
    return float(roc_auc_score(d["kind"][keep] == "flip", 1 - p_given[keep]))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("workspace", type=Path)
    p.add_argument("--variant", action="append", required=True, help="NAME=key=value,... (TrainConfig fields, folds, ensemble)")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    import pyarrow.parquet as pq

    from curate.workspace import Workspace

    d = load(args.workspace)
    ws = Workspace(args.workspace)
    vid = next(v for v in reversed(ws.version_ids()) if ws.state_path(v, "clean_oof.parquet").exists())
    ids = pq.read_table(ws.state_path(vid, "clean_oof.parquet")).column("sample_id").to_pylist()
    classes = [str(i) for i in range(d["probs"].shape[1])]  # the value sets' labels are the class indices
    images = None
    print(
        "| variant | seconds | AUROC flip vs clean | flip recall at 2% clean lost | shipped policy: flips excl | junk excl "
        "| clean lost | wrong kept | errors (wrong kept + clean lost) | fewest errors at any cut |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for spec in args.variant:
        name, opts = parse(spec)
        cache = OUT / "value" / "folds" / args.workspace.name / f"{name}.npz"
        t0 = time.perf_counter()
        prev = opts.pop("from", None)  # a second pass: train without the rows the named variant's pass excluded
        if cache.exists():
            probs = np.load(cache)["probs"]
        elif name == "ws":  # the fold probabilities the pipeline's clean step cached in the workspace
            probs = d["probs"]
            cache.parent.mkdir(parents=True, exist_ok=True)
            np.savez(cache, probs=probs)
        else:
            images = images_of(args.workspace, ids) if images is None else images
            mask = None
            if prev is not None:
                first = np.load(OUT / "value" / "folds" / args.workspace.name / f"{prev}.npz")["probs"].astype(np.float64)
                mask = ~shipped_exclusions(d, first)
            probs = oof(images, d["labels"], classes, opts, args.seed, mask)
            cache.parent.mkdir(parents=True, exist_ok=True)
            np.savez(cache, probs=probs)
        dv = {**{k: v for k, v in d.items() if not isinstance(k, tuple)}, "probs": probs.astype(np.float64)}
        s1 = score(dv, "estimate", "exclude", 0.9, 0.85, "low_normalized_margin")
        print(
            f"| {name} | {time.perf_counter() - t0:.0f} | {auroc(dv):.4f} | {recall_at_loss(dv):.1%} | {s1['flip_excl']:.1%} "
            f"| {s1['junk_excl']:.1%} | {s1['clean_lost']:.2%} | {s1['kept_wrong']} "
            f"| {s1['kept_wrong'] + round(s1['clean_lost'] * (d['kind'] == 'clean').sum())} | {fewest_errors(dv)} |",
            flush=True,
        )


if __name__ == "__main__":
    main()
