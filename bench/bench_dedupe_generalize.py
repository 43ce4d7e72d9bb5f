"""Dedupe on edits nobody named: leave-one-family-out calibration, Fashion-MNIST and photos, peers in the same run.

Sets (``bench/dedupe_sets.py``): Fashion-MNIST test (10,000 originals) and a photo set built from photographs
that scikit-image, scikit-learn and matplotlib ship, each with ``--per-family`` planted copies per transform
family (``curate.stages.dedupe.transforms``).

curate is scored from its own parts, in process, on every file: signatures (``compute_signatures``, the
stage's per-sample work, on ``--workers`` processes), candidate pairs with their closeness
(``index.ViewSet`` + ``index.candidate_pairs``, the stage's defaults), the aligned score of every candidate
(``verify_pairs``) and the fitted-filter score (``robust_scores``) where a gate lets it run, plus every planted
pair for the gate's calibration (each score the better of luma and value channel for colour pairs): what the
stage's cheapest-first cascade (``pairs.pair_scores``) decides on. Same pixel hash = an edge. A pair of
thresholds ``(t_aligned, t_robust)`` and a closeness gate turn the scored candidates into edges; files are
grouped by connected components, as the stage groups them.

Metrics. A *found pair* is two files in one group. Recall of a family = its copies grouped with their source.
Precision = planted pairs found / all found pairs (a pair of two originals counts as wrong, although
Fashion-MNIST holds some genuine duplicates; their count is printed).

Calibration. A threshold pair is *fitted* on a set of families: the grid point with the highest mean recall
over those families whose precision (copies of those families + all originals) is >= 0.97 on both sets.

- The gate, fitted on the same families first: the lowest closeness of their planted pairs whose fitted-filter
  score reaches the grid's lowest threshold, less ``GATE_MARGIN``; the thresholds are then fitted with it.
- Leave one family out: for each family F, fit without F, report F's recall at the fitted gate and thresholds.
- The defaults: fitted without the families ``HELD_OUT`` (never used to pick them); their recall at the
  defaults is the generalization figure.

Peers (same files, same run): imagededup PHash (``max_distance_threshold`` 10, its default) and fastdup 2.54
(its default model and ``threshold`` 0.9) where it runs. Setup: ``pip install -e '.[bench]'`` (the ``bench``
extra), fastdup with ``SENTRY_OPT_OUT=1``.

Run::

    nice -n 10 .venv/bin/python bench/bench_dedupe_generalize.py --workers 2
    nice -n 10 .venv/bin/python bench/bench_dedupe_generalize.py --scale fashion:70000,random:1000000

``--scale``: the stage's search alone (``near_pairs`` at the default thresholds, both scores) over all 70,000
Fashion-MNIST signatures and over 1,000,000 random ones, each in a fresh process: wall time, its parts, peak RSS.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import OUT, machine, print_table  # noqa: E402
from bench_dedupe import load_phash  # noqa: E402
from dedupe_sets import fashion_set, photo_set  # noqa: E402

HELD_OUT = ("webp", "sharpen", "rotate", "pair")
T_ALIGNED = [round(0.86 + 0.01 * i, 2) for i in range(11)] + [1.01]
T_ROBUST = [round(0.86 + 0.01 * i, 2) for i in range(13)] + [1.01]
MIN_PRECISION = 0.97
#: the gate sits this far below the lowest calibration pair (chosen before any run, not fitted)
GATE_MARGIN = 0.05


# --------------------------------------------------------------------------------------------- curate
def _sig_chunk(args: tuple[list[str], str]) -> Any:
    import pyarrow as pa

    from curate.stages.dedupe.signatures import compute_signatures

    names, folder = args
    return compute_signatures(pa.table({"sample_id": names, "data": [(Path(folder) / n).read_bytes() for n in names]}))


def curate_scores(folder: Path, names: list[str], workers: int) -> dict[str, Any]:
    """Signatures, candidates with their closeness, and the aligned score of every candidate (index = position).

    The fitted-filter score is filled in later, only where it is needed (``robust_where``).
    """
    from multiprocessing import Pool

    import pyarrow as pa

    from curate.stages.dedupe.index import ViewSet, candidate_pairs
    from curate.stages.dedupe.search import _one_blas_thread
    from curate.stages.dedupe.signatures import thumbs_array, value_thumbs
    from curate.stages.dedupe.verify import verify_pairs

    t0 = time.perf_counter()
    chunks = [(names[s : s + 256], str(folder)) for s in range(0, len(names), 256)]
    with Pool(workers) as pool:
        sigs = pa.concat_tables(pool.map(_sig_chunk, chunks))
    t_sig = time.perf_counter() - t0
    ok = np.array([e is None for e in sigs.column("error").to_pylist()])
    idx = np.flatnonzero(ok)
    good = sigs.filter(pa.array(ok))
    thumbs, shapes = thumbs_array(good)
    values, has_value = value_thumbs(good, thumbs)
    sizes = np.stack([good.column("height").to_numpy(), good.column("width").to_numpy()], 1).astype(np.int64)
    t1 = time.perf_counter()
    with _one_blas_thread():  # the stage's own search (near_pairs), with the aligned score of every candidate
        views = ViewSet(thumbs, shapes, values, np.flatnonzero(has_value))
        cand, close = candidate_pairs(views, np.ones(len(thumbs), bool), threads=workers)
        colour = has_value[cand].all(1)
        t2 = time.perf_counter()
        aligned = verify_pairs(thumbs, shapes, sizes, cand, threads=workers)
        aligned[colour] = np.maximum(aligned[colour], verify_pairs(values, shapes, sizes, cand[colour], threads=workers))
    t3 = time.perf_counter()
    hashes = good.column("pixel_hash").to_pylist()
    first: dict[bytes, int] = {}
    exact = [(first.setdefault(h, i), i) for i, h in enumerate(hashes) if first.get(h, i) != i]
    return {
        "cand": idx[cand],
        "local": cand,
        "close": close,
        "aligned": aligned,
        "robust": np.full(len(cand), np.nan, np.float32),
        "images": (thumbs, shapes, values, colour),
        "exact": idx[np.array(exact, np.int64).reshape(-1, 2)],
        "errors": int((~ok).sum()),
        "timings": {
            "signatures_s": round(t_sig, 2),
            "candidates_s": round(t2 - t1, 2),
            "aligned_s": round(t3 - t2, 2),
            "robust_s": 0.0,
            "candidates": int(len(cand)),
            "robust_scored": 0,
        },
    }


def robust_where(sc: dict[str, Any], want: np.ndarray, workers: int) -> None:
    """The fitted-filter score (the better of luma and value channel for colour pairs) of the candidates in ``want``."""
    from curate.stages.dedupe.robust import robust_scores
    from curate.stages.dedupe.search import _one_blas_thread

    thumbs, shapes, values, colour = sc["images"]
    todo = np.flatnonzero(want & np.isnan(sc["robust"]))
    t0 = time.perf_counter()
    with _one_blas_thread():
        r = robust_scores(thumbs, shapes, sc["local"][todo], threads=workers)
        c = colour[todo]
        r[c] = np.maximum(r[c], robust_scores(values, shapes, sc["local"][todo[c]], threads=workers))
    sc["robust"][todo] = r
    sc["timings"]["robust_s"] = round(sc["timings"]["robust_s"] + time.perf_counter() - t0, 2)
    sc["timings"]["robust_scored"] += int(len(todo))


def planted_mask(sc: dict[str, Any], truth: dict[str, Any], fams: set[str] | None = None) -> np.ndarray:
    """Candidates that are planted (copy, source) pairs, of the families ``fams`` (all when None)."""
    n = truth["n"]
    code = {min(c, s) * n + max(c, s) for c, s, f in truth["copy_idx"] if fams is None or f in fams}
    cc = sc["cand"][:, 0].astype(np.int64) * n + sc["cand"][:, 1]
    return np.isin(cc, np.array(sorted(code), np.int64))


def fit_gate(sets: list[tuple[dict[str, Any], dict[str, Any]]], fams: set[str]) -> float:
    """The closeness gate from the families ``fams``: their lowest planted pair that the fitted-filter score
    could accept (score >= the lowest threshold of the grid), less ``GATE_MARGIN``."""
    low = [sc["close"][planted_mask(sc, t, fams) & (sc["robust"] >= min(T_ROBUST))] for t, sc in sets]
    vals = np.concatenate(low)
    return float(vals.min()) - GATE_MARGIN if len(vals) else -1.0


def groups_at(sc: dict[str, Any], n: int, ta: float, tr: float, mask: np.ndarray, gate: float) -> np.ndarray:
    """Component label of each of ``n`` files (files outside ``mask`` stay alone) at thresholds (ta, tr) and the
    closeness gate (no fitted-filter score below it)."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    robust = np.where(sc["close"] >= gate, np.nan_to_num(sc["robust"], nan=-1.0), -1.0)
    e = np.concatenate([sc["cand"][(sc["aligned"] >= ta) | (robust >= tr)], sc["exact"]])
    e = e[mask[e[:, 0]] & mask[e[:, 1]]]
    g = coo_matrix((np.ones(len(e)), (e[:, 0], e[:, 1])), shape=(n, n))
    return connected_components(g, directed=False)[1]


def score_groups(comp: np.ndarray, mask: np.ndarray, truth: dict[str, Any], fams: list[str]) -> dict[str, Any]:
    """Recall per family (of the copies in ``mask``) and precision over all found pairs among ``mask``."""
    sizes = np.bincount(comp[mask])
    found = int((sizes * (sizes - 1) // 2).sum())
    hit = {f: [0, 0] for f in fams}
    for c, s, f in truth["copy_idx"]:
        if mask[c] and f in hit:
            hit[f][1] += 1
            hit[f][0] += int(comp[c] == comp[s])
    planted = sum(v[0] for v in hit.values())
    n_orig = len(truth["originals"])
    o_sizes = np.bincount(comp[:n_orig][mask[:n_orig]])
    return {
        "recall": {f: v[0] / v[1] for f, v in hit.items() if v[1]},
        "precision": planted / found if found else 1.0,
        "found_pairs": found,
        "original_pairs": int((o_sizes * (o_sizes - 1) // 2).sum()),
    }


def fit(sets: list[tuple[dict[str, Any], dict[str, Any]]], fams: set[str], gate: float) -> tuple[float, float]:
    """The (t_aligned, t_robust) with the best mean recall over ``fams`` at precision >= MIN_PRECISION on every set."""
    best: tuple[float, float, float] = (-1.0, 1.01, 1.01)
    for ta in T_ALIGNED:
        for tr in T_ROBUST:
            recalls, ok = [], True
            for truth, sc in sets:
                mask = truth["keep_mask"](fams)
                m = score_groups(groups_at(sc, truth["n"], ta, tr, mask, gate), mask, truth, sorted(fams))
                ok &= m["precision"] >= MIN_PRECISION
                recalls += list(m["recall"].values())
            if ok and np.mean(recalls) > best[0]:
                best = (float(np.mean(recalls)), ta, tr)
    return best[1], best[2]


def prepare(truth: dict[str, Any]) -> dict[str, Any]:
    """Index the truth: file list (originals first), copy indices, and a mask maker per family set."""
    names = truth["originals"] + [c[0] for c in truth["copies"]]
    pos = {n: i for i, n in enumerate(names)}
    truth["names"], truth["n"] = names, len(names)
    truth["copy_idx"] = [(pos[c], pos[s], f) for c, s, f in truth["copies"]]
    n_orig = len(truth["originals"])

    def keep_mask(fams: set[str]) -> np.ndarray:
        mask = np.zeros(len(names), bool)
        mask[:n_orig] = True
        for c, _, f in truth["copy_idx"]:
            mask[c] = f in fams
        return mask

    truth["keep_mask"] = keep_mask
    return truth


# ---------------------------------------------------------------------------------------------- peers
def pairs_score(pairs: set[tuple[int, int]], truth: dict[str, Any], fams: list[str]) -> dict[str, Any]:
    """Recall per family and precision of a peer's found pairs (file indices, i < j)."""
    planted = {(min(c, s), max(c, s)): f for c, s, f in truth["copy_idx"]}
    hit = {f: [0, 0] for f in fams}
    for p, f in planted.items():
        hit[f][1] += 1
        hit[f][0] += p in pairs
    n_orig = len(truth["originals"])
    return {
        "recall": {f: v[0] / v[1] for f, v in hit.items() if v[1]},
        "precision": sum(v[0] for v in hit.values()) / max(1, len(pairs)),
        "found_pairs": len(pairs),
        "original_pairs": sum(1 for a, b in pairs if a < n_orig and b < n_orig),
    }


def phash_pairs(folder: Path, truth: dict[str, Any]) -> tuple[set[tuple[int, int]], float]:
    """imagededup PHash at its default distance (10): pairs listed as each other's duplicates."""
    pos = {n: i for i, n in enumerate(truth["names"])}
    t0 = time.perf_counter()
    dups = load_phash().find_duplicates(image_dir=str(folder), max_distance_threshold=10)
    out = {(min(pos[a], pos[b]), max(pos[a], pos[b])) for a, bs in dups.items() for b in bs if a in pos and b in pos}
    return out, time.perf_counter() - t0


def fastdup_pairs(folder: Path, truth: dict[str, Any], work: Path, workers: int) -> tuple[set[tuple[int, int]], float] | str:
    """fastdup's similarity pairs (its default model, threshold 0.9), or why it did not run."""
    os.environ.setdefault("SENTRY_OPT_OUT", "1")
    try:
        import fastdup
    except Exception as exc:  # noqa: BLE001 - a peer that cannot load is reported, not fatal
        return f"not run: {type(exc).__name__}: {exc}"
    pos = {n: i for i, n in enumerate(truth["names"])}
    t0 = time.perf_counter()
    try:
        fd = fastdup.create(work_dir=str(work), input_dir=str(folder))
        fd.run(num_threads=workers, threshold=0.9, overwrite=True, print_summary=False, verbose=False)
        sim = fd.similarity()
    except Exception as exc:  # noqa: BLE001
        return f"failed: {type(exc).__name__}: {str(exc)[:200]}"
    a = [Path(str(p)).name for p in sim["filename_from"]]
    b = [Path(str(p)).name for p in sim["filename_to"]]
    out = {(min(pos[x], pos[y]), max(pos[x], pos[y])) for x, y in zip(a, b, strict=True) if x in pos and y in pos and x != y}
    return out, time.perf_counter() - t0


# ---------------------------------------------------------------------------------------------- scale
def _search_child(args: tuple[str, int, int]) -> dict[str, Any]:
    """In a fresh process: the stage's search (``near_pairs``, default thresholds) over ``n`` signatures.

    ``kind="fashion"``: all 70,000 Fashion-MNIST images (signatures computed first, not timed);
    ``kind="random"``: ``n`` uniform random 32x32 thumbnails. Returns wall seconds, the search's own
    timings, its CPU seconds (all threads) and the peak RSS of the process (``ru_maxrss``: inputs included).
    """
    import resource

    import pyarrow as pa

    from curate.stages.dedupe import DEFAULT_ROBUST_THRESHOLD, DEFAULT_THRESHOLD
    from curate.stages.dedupe.search import near_pairs
    from curate.stages.dedupe.signatures import compute_signatures, thumbs_array, value_thumbs

    kind, n, workers = args
    if kind == "fashion":
        from bench_dedupe import _png, load_fashion

        x = load_fashion()[0][:n]
        sigs = compute_signatures(pa.table({"sample_id": [str(i) for i in range(len(x))], "data": [_png(a) for a in x]}))
        thumbs, shapes = thumbs_array(sigs)
        values, has_value = value_thumbs(sigs, thumbs)
        sizes = np.stack([sigs.column("height").to_numpy(), sigs.column("width").to_numpy()], 1).astype(np.int64)
    else:
        thumbs = np.random.default_rng(0).integers(0, 256, (n, 32, 32), dtype=np.uint8)
        shapes = np.full((n, 2), 32, np.int64)
        values, has_value, sizes = None, None, shapes.copy()
    t0, c0 = time.perf_counter(), time.process_time()
    kw = {"robust_threshold": DEFAULT_ROBUST_THRESHOLD, "values": values, "has_value": has_value, "threads": workers}
    pairs, _, timings = near_pairs(thumbs, shapes, sizes, DEFAULT_THRESHOLD, **kw)
    return {"n": n, "kind": kind, "search_s": round(time.perf_counter() - t0, 2), "search_cpu_s": round(time.process_time() - c0, 1),
            "pairs": len(pairs), **timings,
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024, "load": os.getloadavg()}  # fmt: skip


def scale(ns: list[tuple[str, int]], workers: int) -> list[dict[str, Any]]:
    """``_search_child`` for each (kind, n), each in its own process (peak memory per run)."""
    import multiprocessing as mp

    out = []
    for kind, n in ns:
        with mp.get_context("spawn").Pool(1) as pool:
            out.append(pool.apply(_search_child, ((kind, n, workers),)))
        print(out[-1])
    return out


# ----------------------------------------------------------------------------------------------- main
def load_sets(args: argparse.Namespace) -> dict[str, tuple[Path, dict[str, Any]]]:
    root = OUT / "dedupe_generalize"
    sets = {}
    if "fashion" in args.sets:
        sets["fashion"] = (root / "fashion", fashion_set(root / "fashion", args.per_family, args.seed))
    if "photos" in args.sets:
        sets["photos"] = (root / "photos", photo_set(root / "photos", root / "wheels", args.per_family_photos, args.seed))
    return {k: (folder, prepare(t)) for k, (folder, t) in sets.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--per-family", type=int, default=60)
    ap.add_argument("--per-family-photos", type=int, default=25)
    ap.add_argument("--seed", type=int, default=16)
    ap.add_argument("--sets", default="fashion,photos")
    ap.add_argument("--no-peers", action="store_true")
    ap.add_argument("--gate", type=float, default=None, help="a fixed closeness gate instead of the fitted ones (-1: none)")
    ap.add_argument("--scale", default="", help="search timings only, e.g. fashion:70000,random:1000000")
    args = ap.parse_args()
    print(machine(), "| load average", os.getloadavg())
    if args.scale:
        runs = scale([(k, int(n)) for k, n in (x.split(":") for x in args.scale.split(","))], args.workers)
        (OUT / "bench_dedupe_scale16.json").write_text(json.dumps(runs, indent=1))
        return
    data = load_sets(args)
    scores = {k: curate_scores(folder, t["names"], args.workers) for k, (folder, t) in data.items()}
    both = [(t, scores[k]) for k, (_, t) in data.items()]
    all_fams = sorted({f for _, t in data.values() for f in t["families"]})
    for t, sc in both:  # the gate is calibrated on planted pairs only: their fitted-filter score first
        robust_where(sc, planted_mask(sc, t), args.workers)
    gate = fit_gate(both, set(all_fams) - set(HELD_OUT))
    lofo_gate = {f: fit_gate(both, set(all_fams) - {f}) for f in all_fams}
    if args.gate is not None:
        gate, lofo_gate = args.gate, dict.fromkeys(all_fams, args.gate)
    for _, sc in both:  # then wherever some gate lets the score run: what the stage computes
        robust_where(sc, sc["close"] >= min(gate, *lofo_gate.values()), args.workers)
        sc["timings"]["gated_out_at_default"] = int((sc["close"] < gate).sum())
    report: dict[str, Any] = {"machine": machine(), "held_out": HELD_OUT, "timings": {k: v["timings"] for k, v in scores.items()}}
    default = fit(both, set(all_fams) - set(HELD_OUT), gate)
    lofo = {f: fit(both, set(all_fams) - {f}, lofo_gate[f]) for f in all_fams}
    report["default_thresholds"], report["lofo_thresholds"] = default, lofo
    report["default_gate"], report["lofo_gate"] = gate, lofo_gate
    for k, (folder, t) in data.items():
        full = np.ones(t["n"], bool)
        at_default = score_groups(groups_at(scores[k], t["n"], *default, full, gate), full, t, t["families"])
        loo = {}
        for f in t["families"]:
            mask = t["keep_mask"]({f})
            loo[f] = score_groups(groups_at(scores[k], t["n"], *lofo[f], mask, lofo_gate[f]), mask, t, [f])["recall"][f]
        peers: dict[str, Any] = {}
        if not args.no_peers:
            ph, secs = phash_pairs(folder, t)
            peers["phash"] = {**pairs_score(ph, t, t["families"]), "seconds": round(secs, 1)}
            fd = fastdup_pairs(folder, t, OUT / "dedupe_generalize" / f"fastdup_{k}", args.workers)
            peers["fastdup"] = fd if isinstance(fd, str) else {**pairs_score(fd[0], t, t["families"]), "seconds": round(fd[1], 1)}
        report[k] = {"default": at_default, "lofo_recall": loo, "peers": peers, "files": t["n"], "copies": len(t["copies"])}
        _table(k, t, at_default, loo, peers)
    print("default gate (fitted without", HELD_OUT, "):", round(gate, 4))
    print("leave-one-out gates:", {f: round(g, 4) for f, g in lofo_gate.items()})
    print("default thresholds (fitted without", HELD_OUT, "):", default)
    print("leave-one-out thresholds:", lofo)
    print("timings:", report["timings"], "| load average", os.getloadavg())
    dst = OUT / "bench_dedupe_generalize.json"
    dst.write_text(json.dumps(report, indent=1, default=str))
    print("wrote", dst)


def _table(k: str, t: dict[str, Any], at_default: dict[str, Any], loo: dict[str, float], peers: dict[str, Any]) -> None:
    cols = ["family", "curate LOFO", "curate default"] + [p for p, v in peers.items() if isinstance(v, dict)]
    rows = []
    for f in t["families"]:
        row = [f + (" (held out)" if f in HELD_OUT else ""), f"{loo[f]:.2f}", f"{at_default['recall'][f]:.2f}"]
        rows.append(row + [f"{v['recall'][f]:.2f}" for v in peers.values() if isinstance(v, dict)])
    prec = [f"{v['precision']:.3f}" for v in peers.values() if isinstance(v, dict)]
    rows.append(["precision", "", f"{at_default['precision']:.3f}", *prec])
    found = [f"{v['found_pairs']} ({v['original_pairs']})" for v in peers.values() if isinstance(v, dict)]
    rows.append(["pairs found (orig-orig)", "", f"{at_default['found_pairs']} ({at_default['original_pairs']})", *found])
    print(f"\n{k}: {t['n']} files, {len(t['copies'])} planted copies")
    print_table(cols, rows)
    for p, v in peers.items():
        if isinstance(v, str):
            print(f"{p}: {v}")


if __name__ == "__main__":
    main()
