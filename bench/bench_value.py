"""Does curation pay? Raw mix vs curated vs clean originals, scored on the untouched official test set (issue 18).

For each dataset, noise kind, noise level and seed, ``value_data.build_messy`` writes a messy training manifest
(label flips, near duplicates, out-of-distribution junk with random labels, truncated PNGs; truth per file). Arms,
every one trained by the same ``curate train`` command (``--train-args``) and scored with
``curate evaluate RUN --src <official test set as a folder>`` (outside every workspace):

- ``raw``: the manifest ingested (``curate ingest`` version; corrupt files are excluded rows there already);
- ``curated`` (and any ``--variant NAME=STAGE.KEY=VALUE,...``): ``curate run pipelines/noisy-fashion-mnist.toml``
  on the same manifest (variants add ``--set``s; the fold models' probabilities are cached in the workspace, so a
  variant retrains nothing but the final model);
- ``clean``: the base images with their true labels (no flips, duplicates, junk or corrupt files).

Per curated arm, against the planted truth: ingest recall of corrupt files; dedupe recall of planted near
duplicates (pair with either side excluded) and precision (excluded rows that are a planted dup, its base, or an
exact copy of a blank junk frame); clean: flips fixed (relabeled to the truth) or excluded, junk excluded, clean
rows excluded or relabeled wrongly (``clean_lost``: share of the clean base rows). Results append to
``bench/.out/value/results.jsonl``; the table prints mean and spread over seeds and the share of the raw -> clean
gap closed.

Run (2 cores: ``nice -n 10``):
``python bench/bench_value.py --dataset fashion-mnist --kind uniform --levels 0.1,0.2,0.4 --seeds 0 --n 20000``
``python bench/bench_value.py --table`` reprints the table from results.jsonl.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import CURATE, FASHION, OUT, REPO  # noqa: E402
from value_data import KINDS, build_messy, write_test_tree  # noqa: E402

ROOT = FASHION.parent
VALUE = OUT / "value"
PIPELINE = REPO / "pipelines" / "noisy-fashion-mnist.toml"
RESULTS = VALUE / "results.jsonl"


def curate(*args: str) -> dict[str, Any]:
    """Run the CLI with ``--json``; its summary (SystemExit with stderr on failure)."""
    out = subprocess.run([CURATE, *args, "--json"], capture_output=True, text=True, env={**os.environ, "COLUMNS": "200"})
    if out.returncode:
        raise SystemExit(f"curate {' '.join(args)} failed ({out.returncode}):\n{out.stderr[-3000:]}")
    return json.loads(out.stdout)


def train_and_score(ws: Path, version: str, run: Path, test: Path, train_args: list[str], seed: int) -> float:
    """Test accuracy (0..1) of ``curate train`` on ``ws`` ``version``, scored on the folder ``test``; cached in ``run``."""
    done = run / "value_score.json"
    if done.exists():
        return json.loads(done.read_text())["accuracy"]
    if not (run / "metrics.json").exists():  # a finished training whose scoring was interrupted is not redone
        curate("train", "-w", str(ws), "-v", version, "--out", str(run), "--seed", str(seed), *train_args)
    ev = curate("evaluate", str(run), "--src", str(test), "--which", "last", "-w", str(ws))
    acc = float(_find(ev, "accuracy"))
    done.write_text(json.dumps({"accuracy": acc}))
    return acc


def _find(doc: Any, key: str) -> Any:
    """The first value of ``key`` anywhere in a nested JSON document."""
    if isinstance(doc, dict):
        if key in doc:
            return doc[key]
        doc = list(doc.values())
    for v in doc if isinstance(doc, list) else []:
        got = _find(v, key)
        if got is not None:
            return got
    return None


def truth_scores(ws: Path, truth_path: Path) -> dict[str, Any]:
    """Per-stage recall / precision of the workspace's HEAD against the planted truth (module doc)."""
    import pyarrow.parquet as pq

    from curate.workspace import Workspace

    w = Workspace(ws)
    t = w.samples(w.head()).to_pylist()
    truth = {r["file"]: r for r in pq.read_table(truth_path).to_pylist()}
    row_of: dict[str, dict[str, Any]] = {}
    for r in t:
        for src in [r["source"], *(r.get("extra_sources") or [])]:
            row_of[Path(src).name] = r
    by = {k: [f for f, v in truth.items() if v["kind"] == k] for k in ("clean", "flip", "dup", "junk", "corrupt")}

    def excl(f: str, stage: str | None = None) -> bool:
        r = row_of[f]
        return r["status"] == "excluded" and (stage is None or r["excluded_by"] == stage)

    out: dict[str, Any] = {"corrupt_recall": _share([excl(f, "ingest") for f in by["corrupt"]])}
    pair = {f for d in by["dup"] for f in (d, truth[d]["base"])}
    out["dedupe_recall"] = _share([excl(d, "dedupe") or excl(truth[d]["base"], "dedupe") for d in by["dup"]])
    dd = [f for f in truth if excl(f, "dedupe")]
    out["dedupe_excluded"] = len(dd)
    out["dedupe_precision"] = _share([f in pair or truth[f]["detail"] == "blank" for f in dd])
    seen = [f for f in by["flip"] if not excl(f, "ingest") and not excl(f, "dedupe")]
    fixed = [row_of[f]["status"] == "ok" and row_of[f]["label"] == str(truth[f]["true_label"]) for f in seen]
    out["flip_fixed"] = _share(fixed)
    out["flip_excluded"] = _share([excl(f, "clean") for f in seen])
    out["flip_recall"] = out["flip_fixed"] + out["flip_excluded"]
    out["junk_excluded"] = _share([excl(f) for f in by["junk"]])
    base = [f for f in by["clean"] if not (f in pair and excl(f, "dedupe"))]
    lost = [excl(f, "clean") for f in base]
    broken = [row_of[f]["status"] == "ok" and row_of[f]["label"] != str(truth[f]["true_label"]) for f in base]
    out["clean_lost"] = _share(lost)
    out["clean_relabeled_wrong"] = _share(broken)
    out["clean_lost_rows"] = int(sum(lost))
    acted = [f for f in truth if excl(f, "clean") or (f in row_of and row_of[f].get("label_source") == "relabel:clean")]
    out["clean_precision"] = _share([truth[f]["kind"] in ("flip", "junk") for f in acted])
    out["clean_acted"] = len(acted)
    return out


def _share(xs: list[bool]) -> float:
    return round(sum(xs) / len(xs), 4) if xs else float("nan")


def one_setting(args: argparse.Namespace, dataset: str, kind: str, level: float, seed: int) -> list[dict[str, Any]]:
    """Build one messy set, run every arm; the result rows (one per arm)."""
    name = f"{dataset}-{kind}-{int(level * 100)}-s{seed}-n{args.n}"
    src = VALUE / "sets" / name
    if not (src / "truth.parquet").exists():
        counts = build_messy(ROOT, dataset, src, n=args.n, level=level, kind=kind, seed=seed)
        print(f"built {name}: {counts}", flush=True)
    test = VALUE / f"{dataset}-test"
    write_test_tree(ROOT, dataset, test)
    tr = args.train_args.split()
    key = {"dataset": dataset, "kind": kind, "level": level, "seed": seed, "n": args.n, "train_args": args.train_args}
    rows = []
    cws = VALUE / "ws" / f"{dataset}-clean-s{seed}-n{args.n}"
    if not args.no_train:
        if not (cws / "versions").exists():
            curate("ingest", str(src / "clean.csv"), "--assign-split", "-w", str(cws))
        acc = train_and_score(cws, "HEAD", cws / "runs" / _slug(args.train_args), test, tr, seed)
        rows.append({**key, "arm": "clean", "accuracy": acc})
    ws = VALUE / "ws" / name
    for arm, sets in [("curated", args.set), *[(v.split("=", 1)[0], args.set + v.split("=", 1)[1].split(",")) for v in args.variant]]:
        overrides = [x for s in sets for x in ("--set", s)]
        curate("run", str(PIPELINE), "-w", str(ws), "--set", f"ingest.source={src / 'manifest.csv'}", *overrides)
        head = Workspace_head(ws)
        if not args.no_train and not any(r["arm"] == "raw" for r in rows):
            acc = train_and_score(ws, "1", ws / "runs" / f"raw-{_slug(args.train_args)}", test, tr, seed)
            rows.append({**key, "arm": "raw", "accuracy": acc})
        acc = None if args.no_train else train_and_score(ws, head, ws / "runs" / f"{head}-{_slug(args.train_args)}", test, tr, seed)
        rows.append({**key, "arm": arm, "sets": sets, "accuracy": acc, **truth_scores(ws, src / "truth.parquet")})
        print(json.dumps(rows[-1]), flush=True)
    with RESULTS.open("a") as fh:
        for r in rows:
            fh.write(json.dumps(r) + "\n")
    return rows


def Workspace_head(ws: Path) -> str:  # noqa: N802 - reads like the API it wraps
    from curate.workspace import Workspace

    return str(Workspace(ws).head())


def _slug(s: str) -> str:
    return "".join(c if c.isalnum() else "_" for c in s).strip("_") or "default"


def table(rows: list[dict[str, Any]]) -> None:
    """Mean and spread (over seeds) per dataset, kind, level and arm; gap closed; clean-stage truth scores."""
    groups: dict[tuple, dict[str, list[dict[str, Any]]]] = {}
    last = {(r["dataset"], r["kind"], r["level"], r["seed"], r["n"], r["train_args"], r["arm"]): r for r in rows}  # reruns: the newest
    for r in last.values():
        g = groups.setdefault((r["dataset"], r["kind"], r["level"], r["n"], r["train_args"]), {})
        g.setdefault(r["arm"], []).append(r)
    print(
        "| dataset | kind | level | seeds | raw | clean | arm | curated | gap closed | flips fixed+excl | junk excl | clean lost "
        "| dedupe R/P |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for (ds, kind, level, _n, _ta), arms in sorted(groups.items()):
        raw, clean = _ms(arms.get("raw", [])), _ms(arms.get("clean", []))
        for arm, rs in sorted(arms.items()):
            if arm in ("raw", "clean"):
                continue
            cur = _ms(rs)
            gap = (cur[0] - raw[0]) / (clean[0] - raw[0]) if clean[0] != raw[0] else float("nan")
            keys = ("flip_recall", "flip_fixed", "junk_excluded", "clean_lost", "dedupe_recall", "dedupe_precision")
            m = {k: statistics.mean(r.get(k, float("nan")) for r in rs) for k in keys}  # oracle arms: no truth scores
            print(
                f"| {ds} | {kind} | {level:.0%} | {len(rs)} | {_fmt(raw)} | {_fmt(clean)} | {arm} | {_fmt(cur)} | {gap:.0%} "
                f"| {m['flip_recall']:.1%} ({m['flip_fixed']:.1%} fixed) | {m['junk_excluded']:.1%} | {m['clean_lost']:.2%} "
                f"| {m['dedupe_recall']:.2f}/{m['dedupe_precision']:.2f} |"
            )


def _ms(rs: list[dict[str, Any]]) -> tuple[float, float]:
    xs = [100 * r["accuracy"] for r in rs if r["accuracy"] is not None]
    return (statistics.mean(xs), statistics.stdev(xs) if len(xs) > 1 else 0.0) if xs else (float("nan"), 0.0)


def _fmt(ms: tuple[float, float]) -> str:
    return f"{ms[0]:.2f} ± {ms[1]:.2f}"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", default="fashion-mnist", help="fashion-mnist | mnist (comma list)")
    p.add_argument("--kind", default="mix", help=f"noise kinds, comma list of {', '.join(KINDS)}")
    p.add_argument("--levels", default="0.1,0.2,0.4", help="label-noise levels of the base rows")
    p.add_argument("--seeds", default="0", help="comma list")
    p.add_argument("--n", type=int, default=20000, help="files per messy set")
    p.add_argument("--train-args", default="--epochs 10 --patience 0", help="the same curate train flags for every arm")
    p.add_argument("--set", action="append", default=[], help="STAGE.KEY=VALUE for the curated arm's pipeline (repeatable)")
    p.add_argument("--variant", action="append", default=[], help="NAME=STAGE.KEY=VALUE,... another curated arm")
    p.add_argument("--table", action="store_true", help="only print the table of results.jsonl")
    p.add_argument("--no-train", action="store_true", help="curated arms only, truth scores without training (calibration)")
    args = p.parse_args()
    VALUE.mkdir(parents=True, exist_ok=True)
    if not args.table:
        for ds in args.dataset.split(","):
            for kind in args.kind.split(","):
                for level in (float(x) for x in args.levels.split(",")):
                    for seed in (int(s) for s in args.seeds.split(",")):
                        one_setting(args, ds, kind, level, seed)
    table([json.loads(line) for line in RESULTS.read_text().splitlines() if line.strip()] if RESULTS.exists() else [])


if __name__ == "__main__":
    main()
