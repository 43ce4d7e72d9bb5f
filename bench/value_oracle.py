"""The ceiling of the clean stage: what a perfect clean would buy, trained and scored like ``bench_value.py``'s arms.

For one messy set that ``bench/bench_value.py`` already ran (its workspace holds the ingest and dedupe versions), a
copy of the workspace gets the planted truth as review decisions on the dedupe version (``curate review --commit``):

- ``oracle-exclude``: every planted flip and junk row excluded (what a perfect ``--action exclude`` would do);
- ``oracle-relabel``: every flip relabeled to its true label, junk excluded (a perfect relabel).

Two more arms split the shipped default's shortfall into its two causes, using the rows the set's newest ``clean``
version excluded (``excluded_by`` clean):

- ``found-only``: only the flips and junk the default excluded (its recall, perfect precision): against the curated
  arm, what the clean rows it lost cost;
- ``oracle-plus-lost``: every flip and junk row plus the clean rows the default lost (perfect recall, its false
  positives): against ``oracle-exclude``, the same cost measured at full recall.

``policy-<variant>`` replays the shipped policy (estimate, exclude) on the probabilities ``bench/fold_variants.py``
cached as ``<variant>`` (or any ``(N, K)`` ``probs`` saved there in the order of the clean version's
``clean_oof.parquet``): the accuracy a detector with that ranking would buy, without running ``curate clean`` again.

Each arm is trained with the same ``curate train`` flags and scored on the official test set like the others, so the
table says how much of the raw -> clean gap any clean policy could close with each action: if ``oracle-exclude`` is
far from the clean arm, no detector that only excludes meets issue 18's goal. Rows append to ``results.jsonl``.

Run: ``python bench/value_oracle.py fashion-mnist-confusable-10-s2-n10000 --train-args "--epochs 10 --patience 0"``
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_value import RESULTS, VALUE, _slug, curate, train_and_score  # noqa: E402

ARMS = ("oracle-exclude", "oracle-relabel", "found-only", "oracle-plus-lost")


def clean_excluded(ws: Path) -> set[str]:
    """sample_ids the newest ``clean`` version of ``ws`` excluded."""
    from curate.workspace import Workspace

    w = Workspace(ws)
    vid = next(v for v in reversed(w.version_ids()) if v.endswith("clean"))
    return {r["sample_id"] for r in w.samples(vid).to_pylist() if r["excluded_by"] == "clean"}


def replayed(ws: Path, variant: str) -> list[str]:
    """sample_ids the shipped policy excludes given ``variant``'s cached probabilities (module doc)."""
    import numpy as np
    import pyarrow.parquet as pq
    from fold_variants import shipped_exclusions
    from value_policies import load

    from curate.workspace import Workspace

    name = ws.name.split("-policy-")[0]
    src = VALUE / "ws" / name
    w = Workspace(src)
    vid = next(v for v in reversed(w.version_ids()) if w.state_path(v, "clean_oof.parquet").exists())
    ids = pq.read_table(w.state_path(vid, "clean_oof.parquet")).column("sample_id").to_pylist()
    probs = np.load(VALUE / "folds" / name / f"{variant}.npz")["probs"].astype(np.float64)
    excl = shipped_exclusions(load(src), probs)
    return [s for s, e in zip(ids, excl, strict=True) if e]


def oracle_decisions(ws: Path, version: str, truth_path: Path, arm: str) -> int:
    """Write the planted truth as review decisions on ``version`` of ``ws``; the number of decisions."""
    import pyarrow.parquet as pq

    from curate.review import journal
    from curate.workspace import Workspace

    w = Workspace(ws)
    truth = {r["file"]: r for r in pq.read_table(truth_path).to_pylist()}
    path = w.review_journal(version)
    path.unlink(missing_ok=True)
    found = clean_excluded(ws) if arm in ("found-only", "oracle-plus-lost") else set()
    if arm.startswith("policy-"):
        for sid in replayed(ws, arm.removeprefix("policy-")):
            journal.append(path, {"sample_id": sid, "decision": "exclude", "tags": ["replay"]})
        return len(replayed(ws, arm.removeprefix("policy-")))
    n = 0
    for r in w.samples(version).to_pylist():
        t = truth.get(Path(r["source"]).name)
        if t is None or r["status"] != "ok":
            continue
        if arm == "found-only":
            if t["kind"] in ("junk", "flip") and r["sample_id"] in found:
                journal.append(path, {"sample_id": r["sample_id"], "decision": "exclude", "tags": [t["kind"]]})
                n += 1
            continue
        if arm == "oracle-plus-lost" and t["kind"] not in ("junk", "flip") and r["sample_id"] in found:
            journal.append(path, {"sample_id": r["sample_id"], "decision": "exclude", "tags": ["lost"]})
            n += 1
            continue
        if t["kind"] == "junk" or (t["kind"] == "flip" and arm != "oracle-relabel"):
            journal.append(path, {"sample_id": r["sample_id"], "decision": "exclude", "tags": [t["kind"]]})
        elif t["kind"] == "flip":
            journal.append(path, {"sample_id": r["sample_id"], "decision": "label", "label": str(t["true_label"])})
        else:
            continue
        n += 1
    return n


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("sets", nargs="+", help="set names under bench/.out/value/ws (run by bench_value.py first)")
    p.add_argument("--train-args", default="--epochs 10 --patience 0")
    p.add_argument("--arms", default=",".join(ARMS))
    args = p.parse_args()
    for name in args.sets:
        src_ws = VALUE / "ws" / name
        dataset, kind, level, seed = _parse(name)
        for arm in args.arms.split(","):
            ws = VALUE / "ws" / f"{name}-{arm}"
            if not ws.exists():
                shutil.copytree(src_ws, ws, ignore=shutil.ignore_patterns("runs", "exports"))
            from curate.workspace import Workspace

            w = Workspace(ws)
            dedupe = next(v for v in reversed(w.version_ids()) if v.endswith("dedupe"))
            n = oracle_decisions(ws, dedupe, VALUE / "sets" / name / "truth.parquet", arm)
            res = curate("review", dedupe, "--commit", "-w", str(ws))
            head = res.get("version") or str(w.head())
            acc = train_and_score(ws, head, ws / "runs" / f"{arm}-{_slug(args.train_args)}", VALUE / f"{dataset}-test",
                                  args.train_args.split(), seed)  # fmt: skip
            row = {"dataset": dataset, "kind": kind, "level": level, "seed": seed, "n": int(name.rsplit("-n", 1)[1]),
                   "train_args": args.train_args, "arm": arm, "decisions": n, "accuracy": acc}  # fmt: skip
            print(json.dumps(row), flush=True)
            with RESULTS.open("a") as fh:
                fh.write(json.dumps(row) + "\n")


def _parse(name: str) -> tuple[str, str, float, int]:
    """``fashion-mnist-confusable-10-s2-n10000`` -> (dataset, kind, level, seed)."""
    head, _n = name.rsplit("-n", 1)
    rest, seed = head.rsplit("-s", 1)
    rest, level = rest.rsplit("-", 1)
    dataset, kind = rest.rsplit("-", 1)
    return dataset, kind, int(level) / 100, int(seed)


if __name__ == "__main__":
    main()
