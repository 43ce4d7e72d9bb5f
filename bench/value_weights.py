"""Act softly: replay sample-weight rules for ``curate clean`` on a set's cached probabilities, and train them.

Instead of excluding a suspected label issue (and paying full price for every hard clean row lost), each checked row
gets a training weight (the ``sample_weight`` column; ``curate train`` draws a row with probability proportional to
it). The rules (``RULES``; every one excludes junk, ``ood_score`` > 0.85, as the shipped policy does):

- ``post``: the posterior that the given label is right, ``T[y,y] p(y) / sum_j T[y,j] p(j)``, with ``T`` cleanlab's
  estimated noise matrix (``P(given = i | true = j)``) and ``p`` the row's out-of-sample probabilities;
- ``rel``: ``p(y) / t_y`` clipped to [0, 1], ``t_y`` the given class's mean self-confidence (cleanlab's
  confident-joint threshold): 1 for a row as sure as its class's average;
- ``hyb``: the shipped policy's exclusions (its near-certain finds and junk) stay excluded; every other row gets
  ``rel`` as weight (the uncertain middle down-weighted);
- ``excl``: the shipped policy's exclusions, every other row weight 1: the exclude arm itself, for the replay table
  (trained, it is the exclude arm again: equal weights leave the trainer's plain shuffle);
- ``exdraw``: the sampler's control: the exclude arm's rows, every weight 1 but one row's 1 - 1e-6, so the trainer
  draws with replacement by weight (``curate.learn.data.EpochBatches``) instead of shuffling: what the weighted
  sampler itself costs or gains, with no weighting.

Replay (no training) reports, over the rows clean checked, each rule's mean weight on flips / junk / clean rows and
"soft errors" = sum of weights on wrong rows + sum of (1 - weight) on clean rows: the count of
``fold_variants.py`` (wrong rows kept + clean rows lost), read as weight mass (BENCHMARKS.md "What the shipped
default's shortfall costs": a missed wrong row and a lost clean row cost the final model about the same).

``--train RULE,...`` copies the set's workspace (``<set>-weight-<rule>``), commits the dedupe version with the
rule's exclusions and ``sample_weight`` (stage ``weight``), trains and scores it like ``bench_value.py``'s arms and
appends the row (arm ``weight-<rule>``) to ``results.jsonl``.

Run: ``python bench/value_weights.py fashion-mnist-confusable-10-s2-n10000 [--train post --train-args "..."]``
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_value import RESULTS, VALUE, _slug, train_and_score  # noqa: E402
from value_oracle import _parse  # noqa: E402
from value_policies import load  # noqa: E402

JUNK = 0.85


def posterior(d: dict) -> np.ndarray:
    """float (N,): P(given label right | out-of-sample probabilities) under cleanlab's estimated noise matrix."""
    from cleanlab.count import estimate_py_and_noise_matrices_from_probabilities

    y, p = d["labels"], d["probs"]
    _, noise, _, _ = estimate_py_and_noise_matrices_from_probabilities(y, p)
    return noise[y, y] * p[np.arange(len(y)), y] / np.maximum((noise[y, :] * p).sum(1), 1e-12)


def shipped(d: dict) -> np.ndarray:
    """bool (N,): what the shipped policy (estimate, exclude) excludes, junk included."""
    from fold_variants import shipped_exclusions

    return shipped_exclusions(d, d["probs"])


def _junk(d: dict) -> np.ndarray:
    p = d["probs"]
    return (1 - p.max(1)) / (1 - 1 / p.shape[1]) > JUNK


def _rel(d: dict) -> np.ndarray:
    y, p = d["labels"], d["probs"]
    given = p[np.arange(len(y)), y]
    thr = np.array([given[y == k].mean() if (y == k).any() else 1.0 for k in range(p.shape[1])])
    return np.clip(given / np.maximum(thr[y], 1e-12), 0, 1)


#: rule -> d -> (weight float (N,), excluded bool (N,)); an excluded row's weight is ignored
RULES: dict[str, Callable[[dict], tuple[np.ndarray, np.ndarray]]] = {
    "post": lambda d: (posterior(d), _junk(d)),
    "rel": lambda d: (_rel(d), _junk(d)),
    "hyb": lambda d: (_rel(d), shipped(d)),
    "excl": lambda d: (np.ones(len(d["labels"])), shipped(d)),
    "exdraw": lambda d: (np.r_[1 - 1e-6, np.ones(len(d["labels"]) - 1)], shipped(d)),
}


def replay(d: dict, rule: str) -> dict[str, float]:
    """Mean weights per planted kind and the soft error count of ``rule`` (module doc); excluded rows weigh 0."""
    w, excl = RULES[rule](d)
    w = np.where(excl, 0.0, np.clip(w, 0, 1))
    wrong = np.isin(d["kind"], ("flip", "junk")) | ((d["kind"] == "dup") & (d["labels"] != d["true"]))
    clean = ~wrong
    return {
        "flip_w": float(w[d["kind"] == "flip"].mean()),
        "junk_w": float(w[d["kind"] == "junk"].mean()),
        "clean_w": float(w[d["kind"] == "clean"].mean()),
        "clean_under_half": float((w[d["kind"] == "clean"] < 0.5).mean()),
        "excluded": int(excl.sum()),
        "junk_excl": float(excl[d["kind"] == "junk"].mean()),
        "clean_excl": float(excl[d["kind"] == "clean"].mean()),
        "soft_errors": float(w[wrong].sum() + (1 - w[clean]).sum()),
        # the weight mass on wrong rows relative to the whole: what the sampler feeds the model
        "wrong_mass": float(w[wrong].sum() / w.sum()),
    }


def commit_weighted(ws: Path, d: dict, rule: str) -> str:
    """Commit ``ws``'s dedupe version with ``rule``'s exclusions and ``sample_weight`` (``d``: ``load`` of the set
    ``ws`` was copied from, rows in the order of its ``clean_oof.parquet``); the new version id."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from curate.workspace import Workspace

    w, excl = RULES[rule](d)
    w = np.clip(w, 0, 1)
    wsp = Workspace(ws)
    vid = next(v for v in reversed(wsp.version_ids()) if wsp.state_path(v, "clean_oof.parquet").exists())
    ids = pq.read_table(wsp.state_path(vid, "clean_oof.parquet")).column("sample_id").to_pylist()
    by_id = {s: (float(wi), bool(e)) for s, wi, e in zip(ids, w, excl, strict=True)}
    dedupe = next(v for v in reversed(wsp.version_ids()) if v.endswith("dedupe"))
    rows = wsp.samples(dedupe).to_pylist()
    for r in rows:
        got = by_id.get(r["sample_id"])
        r["sample_weight"] = None if got is None or r["status"] != "ok" else got[0]
        if got is not None and got[1] and r["status"] == "ok":
            r.update(status="excluded", excluded_by="clean", reason="weight-rule")
    with wsp.writer():
        schema = wsp.samples(dedupe).schema.append(pa.field("sample_weight", pa.float64()))
        return wsp.commit(stage="weight", parent=dedupe, table=pa.Table.from_pylist(rows, schema=schema),
                          config={"rule": rule}, stats={"excluded": int(excl.sum())})  # fmt: skip


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("sets", nargs="+", help="set names under bench/.out/value/ws (bench_value.py ran the curated arm)")
    p.add_argument("--train", default="", help="comma list of rules to train (module doc)")
    p.add_argument("--train-args", default="--epochs 10 --patience 0")
    args = p.parse_args()
    print("| set | rule | flips mean w | junk mean w | clean mean w | clean w < 0.5 | excluded | junk excl | clean excl "
          "| soft errors | wrong mass |")  # fmt: skip
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for name in args.sets:
        d = load(VALUE / "ws" / name)
        for rule in RULES:
            s = replay(d, rule)
            print(f"| {name} | {rule} | {s['flip_w']:.3f} | {s['junk_w']:.3f} | {s['clean_w']:.3f} | {s['clean_under_half']:.2%} "
                  f"| {s['excluded']} | {s['junk_excl']:.1%} | {s['clean_excl']:.2%} | {s['soft_errors']:.0f} "
                  f"| {s['wrong_mass']:.2%} |")  # fmt: skip
        dataset, kind, level, seed = _parse(name)
        for rule in filter(None, args.train.split(",")):
            ws = VALUE / "ws" / f"{name}-weight-{rule}"
            if not ws.exists():
                shutil.copytree(VALUE / "ws" / name, ws, ignore=shutil.ignore_patterns("runs", "exports"))
            from curate.workspace import Workspace

            head = next((v for v in Workspace(ws).version_ids() if v.endswith("weight")), None) or commit_weighted(ws, d, rule)
            acc = train_and_score(ws, head, ws / "runs" / f"weight-{rule}-{_slug(args.train_args)}", VALUE / f"{dataset}-test",
                                  args.train_args.split(), seed)  # fmt: skip
            row = {"dataset": dataset, "kind": kind, "level": level, "seed": seed, "n": int(name.rsplit("-n", 1)[1]),
                   "train_args": args.train_args, "arm": f"weight-{rule}", "accuracy": acc, **replay(d, rule)}  # fmt: skip
            print(json.dumps(row), flush=True)
            with RESULTS.open("a") as fh:
                fh.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()
