"""Calibrate what ``curate clean`` acts on, without training: score clean policies against the planted truth.

Reads, from workspaces that ``bench/bench_value.py`` ran the curated pipeline in, the fold models' cached
out-of-sample probabilities (``state/clean_oof.parquet``) and the given labels of the rows clean checked, then for
each policy (``curate.stages.clean.policy``), action and threshold computes what would happen to the planted flips, junk
and clean rows: the same shares ``bench_value.py`` reports after a real run (without the ``max_fraction`` cap).

Run: ``python bench/value_policies.py bench/.out/value/ws/fashion-mnist-uniform-20-s0-n20000 [...]``
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import OUT  # noqa: E402

#: (policy, action, issue_quality, junk_threshold); policy "all" uses the flag's outlier_threshold 0.75
#: policy "estimate": the third value is ISSUE_SHARE (the share of cleanlab's estimated count acted on)
GRID = [("all", "exclude", 0.0, 0.75)] + [
    ("confident", a, q, j) for a in ("relabel", "exclude") for q in (0.05, 0.1, 0.2, 0.5, 10.0) for j in (0.75, 0.85)
] + [("estimate", a, c, 0.85) for a in ("relabel", "exclude") for c in (0.8, 0.85, 0.9, 0.95, 1.0)]


def load(ws_path: Path) -> dict:
    """Given labels, probabilities, truth kinds and true labels of the rows the newest clean version checked."""
    import pyarrow.parquet as pq

    from curate.workspace import Workspace

    ws = Workspace(ws_path)
    vid = next(v for v in reversed(ws.version_ids()) if v.endswith("clean") and ws.state_path(v, "clean_oof.parquet").exists())
    oof = pq.read_table(ws.state_path(vid, "clean_oof.parquet"))
    table = ws.samples(vid).to_pylist()
    by_id = {r["sample_id"]: r for r in table}
    name = ws_path.name
    truth = {r["file"]: r for r in pq.read_table(OUT / "value" / "sets" / name / "truth.parquet").to_pylist()}
    ids = oof.column("sample_id").to_pylist()
    rows = [by_id[s] for s in ids]
    # the labels clean saw: given_label when clean relabeled the row, else label
    given = np.array([int(r.get("given_label") or r["label"]) for r in rows])
    files = [truth[Path(r["source"]).name] for r in rows]
    return {
        "labels": given,
        "probs": np.asarray(oof.column("probs").to_pylist(), np.float64),
        "kind": np.array([f["kind"] for f in files]),
        "true": np.array([f["true_label"] for f in files]),
    }


def score(d: dict, policy: str, action: str, quality: float, junk: float, method: str) -> dict[str, float]:
    """Shares of flips fixed / excluded, junk excluded, clean rows lost / relabeled wrong under one setting."""
    from curate.stages.clean import policy as cleanpolicy
    from curate.stages.clean.labelissues import label_issues

    found = d.get(("found", method))
    if found is None:
        found = d[("found", method)] = label_issues(d["labels"], d["probs"], method=method)
    p = d["probs"]
    ood = (1 - p.max(1)) / (1 - 1 / p.shape[1])
    if policy == "estimate":
        cleanpolicy.ISSUE_SHARE = quality  # the module constant being calibrated
    else:
        cleanpolicy.ISSUE_QUALITY = quality
    dec = cleanpolicy.decide(
        found, ood, action=action, policy=policy, relabel_threshold=0.9, outlier_threshold=junk, junk_threshold=junk
    )
    excl = dec.exclude_label | dec.exclude_outlier
    new = np.where(dec.relabel, found["suggested"], d["labels"])
    flip, junk_, clean = d["kind"] == "flip", d["kind"] == "junk", d["kind"] == "clean"
    base = flip | clean | (d["kind"] == "dup")
    return {
        "flagged": int(found["is_label_issue"].sum()),
        "flip_fixed": float((~excl & (new == d["true"]))[flip].mean()),
        "flip_excl": float(excl[flip].mean()),
        "junk_excl": float(excl[junk_].mean()),
        "clean_lost": float(excl[clean].mean()),
        "clean_wrong": float((~excl & (new != d["true"]))[clean].mean()),
        "kept_wrong": int((~excl & (new != d["true"]) & base).sum() + (~excl & junk_).sum()),
    }


def posterior_rows(d: dict, taus: tuple[float, ...] = (0.3, 0.5, 0.7), junk: float = 0.85) -> list[dict]:
    """Tried against the shipped rule (not a curate policy): exclude a row when the posterior that its given label
    is right, ``T[y,y] p(y) / sum_j T[y,j] p(j)`` with ``T`` cleanlab's estimated noise matrix
    (``P(given = i | true = j)``), is below ``tau``; 0.5 is the Bayes decision "more likely wrong than right", a
    rule with no constant fitted to a set. Junk as the confident policy (``ood_score > junk``)."""
    from cleanlab.count import estimate_py_and_noise_matrices_from_probabilities

    y, p = d["labels"], d["probs"]
    _, noise, _, _ = estimate_py_and_noise_matrices_from_probabilities(y, p)
    post = noise[y, y] * p[np.arange(len(y)), y] / np.maximum((noise[y, :] * p).sum(1), 1e-12)
    ood = (1 - p.max(1)) / (1 - 1 / p.shape[1])
    flip, junk_, clean = d["kind"] == "flip", d["kind"] == "junk", d["kind"] == "clean"
    base = flip | clean | (d["kind"] == "dup")
    out = []
    for tau in taus:
        excl = (post < tau) | (ood > junk)
        kept_wrong = int((~excl & (d["labels"] != d["true"]) & base).sum() + (~excl & junk_).sum())
        out.append({"tau": tau, "flip_excl": float(excl[flip].mean()), "junk_excl": float(excl[junk_].mean()),
                    "clean_lost": float(excl[clean].mean()), "kept_wrong": kept_wrong})  # fmt: skip
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("workspaces", nargs="+", type=Path)
    p.add_argument("--method", default="low_normalized_margin")
    args = p.parse_args()
    print(
        "| set | policy | action | issue_quality | junk_threshold | flagged | flips fixed | flips excl | junk excl "
        "| clean lost | clean relabeled wrong | wrong rows kept |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for ws in args.workspaces:
        d = load(ws)
        for policy, action, t, o in GRID:
            s = score(d, policy, action, t, o, args.method)
            print(
                f"| {ws.name} | {policy} | {action} | {t} | {o} | {s['flagged']} | {s['flip_fixed']:.1%} | {s['flip_excl']:.1%} "
                f"| {s['junk_excl']:.1%} | {s['clean_lost']:.2%} | {s['clean_wrong']:.2%} | {s['kept_wrong']} |"
            )
        for r in posterior_rows(d):
            print(
                f"| {ws.name} | posterior < {r['tau']} | exclude | - | 0.85 | - | 0.0% | {r['flip_excl']:.1%} "
                f"| {r['junk_excl']:.1%} | {r['clean_lost']:.2%} | 0.00% | {r['kept_wrong']} |"
            )


if __name__ == "__main__":
    main()
