"""Dedupe: planted near duplicates in Fashion-MNIST, curate beside imagededup's PHash, same files, same run.

Part 1 (quality + time, 11,000 files): 10,000 Fashion-MNIST train images (seeded sample) written as PNG, plus
1,000 planted copies of 1,000 of them, 100 per named transform:

    reencode     same pixels saved as an RGB PNG (other bytes, other mode)
    resize_up    2x bicubic (56x56)             resize_down  Lanczos to 22x22
    jpeg90       JPEG quality 90                jpeg75       JPEG quality 75
    bright_up    PIL brightness x1.2 (clipped)  bright_down  PIL brightness x0.8
    shift1       1 px translation, zero fill    shift2       2 px translation (max |dx|,|dy| = 2)
    crop         a random 25x25 window of the 28x28 image, kept at 25x25

Both tools get the same folder. A *found pair* is two files the tool puts together (curate: the same
``dup_group``; PHash: listed as each other's duplicates). Recall per transform = planted pairs found / 100.
Two precisions, because Fashion-MNIST holds genuinely near-identical items that are not planted:
``precision (planted)`` = planted pairs / found pairs that involve a planted copy (a copy matched to anything but
its source is wrong); ``precision (all)`` = planted pairs / all found pairs (counts every pair between two
originals as wrong, although many are genuine duplicates; the count and a contact sheet of them are written).
Times: curate's whole dedupe stage (decode + signatures + search, ``--workers``) and its search alone (median
of ``--repeat``, from cached signatures); PHash's encoding and its ``find_duplicates`` search (median).
A threshold sweep (edges scored once at 0.80) shows where the default comes from.

Part 2 (``--full``): all 70,000 images (train + test) ingested from the idx files, dedupe with ``--action
flag``: wall time of the stage and of the search (median), the search alone on 10k/20k/40k/70k subsets, and
how many test images have a duplicate in train (exact bytes merged at ingest, same pixels, or near).

Part 3 (``--million``): the search alone over 1,000,000 random signatures (uniform random 32x32 thumbnails).

Setup of the peer (bench only, not a curate dependency)::

    .venv/bin/pip install imagededup --no-deps && .venv/bin/pip install PyWavelets tqdm

imagededup's package ``__init__`` imports torchvision for its CNN method; PHash never uses it, so this script
puts an inert stand-in for torchvision in ``sys.modules`` instead of installing it.

Run (from the repository root)::

    .venv/bin/python bench/bench_dedupe.py --workers 2 --repeat 3 --full --million
"""

from __future__ import annotations

import argparse
import dataclasses
import io
import json
import sys
import time
import types
from collections import defaultdict
from itertools import combinations
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import FASHION, OUT, machine, median, print_table, reset_dir  # noqa: E402

TRANSFORMS = ["reencode", "resize_up", "resize_down", "jpeg90", "jpeg75", "bright_up", "bright_down", "shift1", "shift2", "crop"]
SWEEP = [0.84, 0.86, 0.88, 0.89, 0.90, 0.91, 0.92, 0.94, 0.96]


# ----------------------------------------------------------------------------------------------- data
def load_fashion() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """All 70,000 images ``(N, 28, 28)`` uint8, labels, and the origin split (train first)."""
    from curate.sources.idx import find_idx_pairs, read_idx

    xs, ys, ss = [], [], []
    for img, lab in sorted(find_idx_pairs(FASHION), key=lambda p: not p[0].name.startswith("train")):
        x = read_idx(img)
        xs.append(x)
        ys.append(read_idx(lab))
        ss.append(np.full(len(x), "train" if img.name.startswith("train") else "test"))
    return np.concatenate(xs), np.concatenate(ys), np.concatenate(ss)


def _png(arr: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


def plant(name: str, arr: np.ndarray, rng: np.random.Generator) -> tuple[bytes, str]:
    """``(file bytes, extension)`` of the named transform of a 28x28 uint8 image."""
    from PIL import Image, ImageEnhance

    im = Image.fromarray(arr)
    buf = io.BytesIO()
    if name == "reencode":
        im.convert("RGB").save(buf, format="PNG", compress_level=1)
    elif name == "resize_up":
        im.resize((56, 56), Image.BICUBIC).save(buf, format="PNG")
    elif name == "resize_down":
        im.resize((22, 22), Image.LANCZOS).save(buf, format="PNG")
    elif name in ("jpeg90", "jpeg75"):
        im.save(buf, format="JPEG", quality=int(name[4:]))
        return buf.getvalue(), "jpg"
    elif name in ("bright_up", "bright_down"):
        ImageEnhance.Brightness(im).enhance(1.2 if name == "bright_up" else 0.8).save(buf, format="PNG")
    elif name in ("shift1", "shift2"):
        k = int(name[-1])
        while True:
            dy, dx = (int(v) for v in rng.integers(-k, k + 1, 2))
            if max(abs(dy), abs(dx)) == k:
                break
        out = np.zeros_like(arr)
        out[max(dy, 0) : 28 + min(dy, 0), max(dx, 0) : 28 + min(dx, 0)] = arr[
            max(-dy, 0) : 28 + min(-dy, 0), max(-dx, 0) : 28 + min(-dx, 0)
        ]
        return _png(out), "png"
    elif name == "crop":
        oy, ox = (int(v) for v in rng.integers(0, 4, 2))
        im.crop((ox, oy, ox + 25, oy + 25)).save(buf, format="PNG")
    else:
        raise KeyError(name)
    return buf.getvalue(), "png"


def write_planted_set(dst: Path, x: np.ndarray, n: int, per_transform: int, seed: int) -> dict[str, Any]:
    """``dst/o_<k>.png`` for n train images and ``dst/p_<j>_<transform>.<ext>`` for the copies; returns the truth."""
    rng = np.random.default_rng(seed)
    pick = np.sort(rng.choice(60_000, n, replace=False))
    src = rng.choice(n, per_transform * len(TRANSFORMS), replace=False)
    reset_dir(dst).mkdir()
    names = []
    for k, i in enumerate(pick):
        names.append(f"o_{k:05d}.png")
        (dst / names[-1]).write_bytes(_png(x[i]))
    truth = {}
    for j, s in enumerate(src):
        t = TRANSFORMS[j // per_transform]
        data, ext = plant(t, x[pick[s]], rng)
        name = f"p_{j:04d}_{t}.{ext}"
        (dst / name).write_bytes(data)
        truth[name] = (names[s], t)
    return {"originals": names, "truth": truth}


# -------------------------------------------------------------------------------------------- metrics
def metrics(pairs: set[tuple[str, str]], truth: dict[str, tuple[str, str]]) -> dict[str, Any]:
    """Recall per transform and both precisions for a set of found pairs (file names, sorted within a pair)."""
    planted = {tuple(sorted((copy, src))) for copy, (src, _) in truth.items()}
    hit = pairs & planted
    per = defaultdict(lambda: [0, 0])
    for copy, (src, t) in truth.items():
        per[t][1] += 1
        per[t][0] += tuple(sorted((copy, src))) in hit
    involving = [p for p in pairs if p[0].startswith("p_") or p[1].startswith("p_")]
    return {
        "recall": {t: per[t][0] / per[t][1] for t in TRANSFORMS},
        "recall_all": len(hit) / len(planted),
        "precision_planted": len(hit) / max(1, len(involving)),
        "precision_all": len(hit) / max(1, len(pairs)),
        "found_pairs": len(pairs),
        "pairs_with_planted": len(involving),
        "original_pairs": sum(1 for p in pairs if p[0].startswith("o_") and p[1].startswith("o_")),
    }


def group_pairs(groups: dict[Any, list[str]]) -> set[tuple[str, str]]:
    return {tuple(sorted(p)) for members in groups.values() for p in combinations(members, 2)}


# --------------------------------------------------------------------------------------------- curate
def curate_dedupe(
    ws_dir: Path, source: Path | None, workers: int, threshold: float, *, idx: bool = False
) -> tuple[Any, dict[str, Any]]:
    """Ingest ``source`` into a fresh workspace, then run the dedupe stage with --action flag (as the CLI does)."""
    from curate.pipeline import execute, run_stage
    from curate.stage import Context
    from curate.stages.dedupe import DedupeConfig
    from curate.stages.dedupe.find import run_dedupe
    from curate.stages.ingest import STAGE as INGEST
    from curate.stages.ingest import IngestConfig
    from curate.workspace import Workspace

    ws = Workspace(reset_dir(ws_dir))
    execute(INGEST, Context(ws, workers=workers), IngestConfig(source=str(source), unlabeled=not idx))
    cfg = DedupeConfig(threshold=threshold, action="flag")
    t0 = time.perf_counter()
    res = run_stage(ws, "dedupe", dataclasses.asdict(cfg), lambda p, pid: run_dedupe(ws, p, pid, cfg, workers=workers))
    res["wall"] = time.perf_counter() - t0
    return ws, res


def cached_inputs(ws: Any) -> tuple[Any, Any]:
    """``(items, signatures)`` of HEAD's ok rows from the signature cache, aligned, for search-only timing."""
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    table = ws.samples()
    ok = table.filter(pc.equal(table.column("status"), "ok"))
    sigs = pq.read_table(ws.state_path(ws.head(), "signatures.parquet"))
    sigs = sigs.take(pc.index_in(ok.column("sample_id"), sigs.column("sample_id")))
    items = ok.select(["sample_id", "label"]).append_column("order", pc.index_in(ok.column("sample_id"), table.column("sample_id")))
    return items, sigs


def cpu_seconds() -> float:
    """User + system CPU of this process and of its reaped children (PHash's worker pool)."""
    import resource

    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


def time_search(items: Any, sigs: Any, threshold: float, repeat: int, threads: int) -> tuple[float, list[float], dict[str, Any]]:
    """Median wall seconds of ``group_items`` (the whole search from cached signatures), the runs, last timings.

    The timings dict also gets ``cpu_s``: the median CPU seconds (all threads) of the runs.
    """
    from curate.stages.dedupe.groups import group_items

    runs, cpus, last = [], [], {}
    for _ in range(repeat):
        c0, t0 = cpu_seconds(), time.perf_counter()
        last = group_items(items, sigs, set(), threshold=threshold, threads=threads)
        runs.append(time.perf_counter() - t0)
        cpus.append(cpu_seconds() - c0)
    return median(runs), runs, {**last["timings"], "cpu_s": round(median(cpus), 2)}


def sweep(items: Any, sigs: Any, names: list[str], truth: dict[str, Any]) -> list[list[Any]]:
    """Scores of all candidate edges once (floor 0.80), then metrics per threshold (edges + exact pairs)."""
    from curate.stages.dedupe.search import near_pairs
    from curate.stages.dedupe.signatures import thumbs_array

    thumbs, shapes = thumbs_array(sigs)
    sizes = np.stack([sigs.column("height").to_numpy(), sigs.column("width").to_numpy()], 1).astype(np.int64)
    pairs, scores, _ = near_pairs(thumbs, shapes, sizes, 0.80)
    by_hash = defaultdict(list)
    for name, h in zip(names, sigs.column("pixel_hash").to_pylist(), strict=True):
        by_hash[h].append(name)
    exact = group_pairs(by_hash)
    rows = []
    for t in SWEEP:
        found = exact | {tuple(sorted((names[a], names[b]))) for (a, b), s in zip(pairs, scores, strict=True) if s >= t}
        m = metrics(found, truth)
        rows.append(
            [t, f"{min(m['recall'].values()):.2f}", f"{m['recall_all']:.3f}", f"{m['precision_planted']:.3f}", m["original_pairs"]]
        )
    return rows


# ---------------------------------------------------------------------------------------------- peer
def load_phash() -> Any:
    for name in ("torchvision", "torchvision.models", "torchvision.transforms", "torchvision.models.vision_transformer"):
        sys.modules.setdefault(name, _Inert(name))
    from imagededup.methods import PHash

    return PHash(verbose=False)


class _Inert(types.ModuleType):
    """Stand-in for torchvision: imagededup imports it for the CNN method, which this benchmark does not use."""

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)
        return _Anything()


class _Anything:
    def __init__(self, *a: Any, **k: Any) -> None:
        pass

    def __call__(self, *a: Any, **k: Any) -> _Anything:
        return _Anything()

    def __getattr__(self, name: str) -> _Anything:
        return _Anything()


def contact_sheet(pairs: list[tuple[str, str]], folder: Path, dst: Path, limit: int = 40) -> None:
    """Side-by-side PNG of up to ``limit`` found pairs (4x nearest-neighbour zoom), for looking, not for scoring."""
    from PIL import Image

    tiles = []
    for a, b in pairs[:limit]:
        ia = np.asarray(Image.open(folder / a).convert("L").resize((28, 28)))
        ib = np.asarray(Image.open(folder / b).convert("L").resize((28, 28)))
        tiles.append(np.concatenate([ia, np.full((28, 2), 255, np.uint8), ib], 1))
    if not tiles:
        return
    cols = 5
    while len(tiles) % cols:
        tiles.append(np.zeros_like(tiles[0]))
    grid = np.concatenate([np.concatenate([np.pad(t, 3) for t in tiles[r : r + cols]], 1) for r in range(0, len(tiles), cols)], 0)
    Image.fromarray(grid).resize((grid.shape[1] * 4, grid.shape[0] * 4), Image.NEAREST).save(dst)


# ------------------------------------------------------------------------------------------------ parts
def part_planted(args: argparse.Namespace, x: np.ndarray, report: dict[str, Any]) -> None:
    folder = OUT / "dedupe-planted"
    setup = write_planted_set(folder, x, args.n, args.per_transform, args.seed)
    truth = setup["truth"]
    n_files = len(setup["originals"]) + len(truth)
    print(f"\n## Part 1: {len(setup['originals']):,} Fashion-MNIST train images + {len(truth):,} planted copies ({folder})\n")

    ws, res = curate_dedupe(Path("/tmp/curate-bench-dedupe/planted"), folder, args.workers, args.threshold)
    table = ws.samples(columns=["source", "dup_group"]).to_pylist()
    groups: dict[str, list[str]] = defaultdict(list)
    for r in table:
        if r["dup_group"] is not None:
            groups[r["dup_group"]].append(Path(r["source"]).name)
    ours = metrics(group_pairs(groups), truth)
    items, sigs = cached_inputs(ws)
    names = [Path(s).name for s in ws.samples(columns=["source"]).column("source").to_pylist()]
    names = [names[i] for i in items.column("order").to_pylist()]
    search_med, search_runs, timings = time_search(items, sigs, args.threshold, args.repeat, args.workers)
    st = res["stats"]
    ours.update(stage_s=res["wall"], search_s=search_med, search_runs=search_runs, search_parts=timings, stage_stats=st["search"])
    originals = sorted(p for p in group_pairs(groups) if p[0].startswith("o_") and p[1].startswith("o_"))
    contact_sheet(originals, folder, OUT / "dedupe_original_pairs.png")
    report["curate"] = ours

    peers: dict[str, Any] = {}
    if not args.skip_peer:
        phash = load_phash()
        t0 = time.perf_counter()
        enc = phash.encode_images(image_dir=str(folder), num_enc_workers=args.workers)
        t_enc = time.perf_counter() - t0
        for dist in args.peer_distance:
            runs, cpus, dups = [], [], {}
            for _ in range(args.repeat):
                c0, t0 = cpu_seconds(), time.perf_counter()
                dups = phash.find_duplicates(encoding_map=enc, max_distance_threshold=dist, num_dist_workers=args.workers)
                runs.append(time.perf_counter() - t0)
                cpus.append(cpu_seconds() - c0)
            m = metrics({tuple(sorted((a, b))) for a, bs in dups.items() for b in bs}, truth)
            m.update(encode_s=t_enc, search_s=median(runs), search_runs=runs, search_cpu_s=median(cpus))
            peers[f"phash{dist}"] = m
        report["peers"] = peers

    print(f"{n_files:,} files, threshold {args.threshold}, workers {args.workers}, repeat {args.repeat}; {machine()}\n")
    head = ["method", *TRANSFORMS, "recall", "precision (planted)", "precision (all)", "original pairs", "time"]
    rows = [
        [
            f"curate dedupe ({args.threshold})",
            *(f"{ours['recall'][t]:.2f}" for t in TRANSFORMS),
            f"{ours['recall_all']:.3f}",
            f"{ours['precision_planted']:.3f}",
            f"{ours['precision_all']:.3f}",
            ours["original_pairs"],
            f"stage {ours['stage_s']:.1f} s, search {search_med:.2f} s (CPU {timings['cpu_s']:.2f} s)",
        ]
    ]
    for key, m in peers.items():
        rows.append(
            [
                f"imagededup PHash (Hamming <= {key[5:]})",
                *(f"{m['recall'][t]:.2f}" for t in TRANSFORMS),
                f"{m['recall_all']:.3f}",
                f"{m['precision_planted']:.3f}",
                f"{m['precision_all']:.3f}",
                m["original_pairs"],
                f"encode {m['encode_s']:.1f} s, search {m['search_s']:.1f} s (CPU {m['search_cpu_s']:.1f} s)",
            ]
        )
    print_table(head, rows)
    for key, m in peers.items():
        print(
            f"\nratio vs PHash({key[5:]}): search {m['search_s'] / search_med:.1f}x faster "
            f"(CPU {m['search_cpu_s'] / timings['cpu_s']:.1f}x less); recall on shift2 {ours['recall']['shift2']:.2f} vs "
            f"{m['recall']['shift2']:.2f}; precision (planted) {ours['precision_planted']:.3f} vs {m['precision_planted']:.3f}"
        )
    print(f"\ncurate search parts (last run): {timings}; original pairs contact sheet: {OUT / 'dedupe_original_pairs.png'}")
    print("\nThreshold sweep (near edges scored once, exact pairs always included):\n")
    print_table(["threshold", "min recall", "recall", "precision (planted)", "original pairs"], sweep(items, sigs, names, truth))


def part_full(args: argparse.Namespace, report: dict[str, Any]) -> None:
    print("\n## Part 2: all 70,000 Fashion-MNIST images (train + test)\n")
    ws, res = curate_dedupe(Path("/tmp/curate-bench-dedupe/full"), FASHION, args.workers, args.threshold, idx=True)
    st = res["stats"]
    items, sigs = cached_inputs(ws)
    search_med, runs, parts = time_search(items, sigs, args.threshold, args.repeat, args.workers)
    scale = []
    for n in (10_000, 20_000, 40_000, items.num_rows):
        med, _, tm = time_search(items.slice(0, n), sigs.slice(0, n), args.threshold, args.repeat, args.workers)
        scale.append([f"{n:,}", f"{med:.2f}", f"{tm['cpu_s']:.2f}", f"{tm['candidates']:,}"])
    rows = ws.samples(columns=["source", "extra_sources", "origin_split", "dup_group", "status"]).to_pylist()
    # every test image, with the group it ended up in: merged at ingest (same bytes) or via dup_group
    group_has_train: dict[str, bool] = defaultdict(bool)
    members: list[tuple[str, list[str]]] = []
    for r in rows:
        srcs = [r["source"], *(r["extra_sources"] or [])]
        key = r["dup_group"] or r["source"]
        group_has_train[key] |= any("train-images" in s for s in srcs)
        members.append((key, srcs))
    test_bytes = sum(1 for _, srcs in members if any("train-images" in s for s in srcs) for s in srcs if "t10k-images" in s)
    test_with_train = sum(1 for key, srcs in members if group_has_train[key] for s in srcs if "t10k-images" in s)
    cross = {"identical_bytes": test_bytes, "any": test_with_train, "stage_cross_split": st["cross_split"]}
    _cross_sheet(rows, OUT / "dedupe_train_test_pairs.png", args.seed)
    report["full"] = {"stage_s": res["wall"], "search_s": search_med, "search_runs": runs, "search_parts": parts, "scale": scale}
    report["full"].update(
        cross=cross, groups=st["groups"], duplicates=st["duplicates"], label_conflict_groups=st["label_conflict_groups"]
    )
    print(
        f"dedupe stage (signatures + search, workers {args.workers}): {res['wall']:.1f} s; search alone: {search_med:.2f} s "
        f"(runs {', '.join(f'{r:.2f}' for r in runs)}; parts {parts})"
    )
    print(
        f"groups {st['groups']:,}, duplicates {st['duplicates']:,} "
        f"(exact {st['exact_duplicates']:,}, near {st['near_duplicates']:,}), "
        f"label-conflict groups {st['label_conflict_groups']:,}"
    )
    print(
        f"test images with a duplicate in train: {test_with_train:,} of 10,000 ({test_with_train / 100:.2f}%), of which "
        f"{test_bytes:,} byte-identical (merged at ingest); contact sheet: {OUT / 'dedupe_train_test_pairs.png'}\n"
    )
    print_table(["images", "search wall s (median)", "search CPU s (median)", "candidate pairs"], scale)


def _cross_sheet(rows: list[dict[str, Any]], dst: Path, seed: int, limit: int = 30) -> None:
    """Contact sheet of up to ``limit`` random groups that hold a train and a test image (train left, test right)."""
    from PIL import Image

    x, _, split = load_fashion()
    offset = int((split == "train").sum())

    def pixels(source: str) -> np.ndarray:
        path, i = source.rsplit("#", 1)
        return x[int(i) + (0 if "train-images" in path else offset)]

    groups: dict[str, list[str]] = defaultdict(list)
    for r in rows:
        if r["dup_group"] is not None:
            groups[r["dup_group"]].append(r["source"])
    cross = [g for g in groups.values() if any("train-images" in s for s in g) and any("t10k-images" in s for s in g)]
    rng = np.random.default_rng(seed)
    tiles = []
    for k in rng.permutation(len(cross))[:limit]:
        a = next(s for s in cross[k] if "train-images" in s)
        b = next(s for s in cross[k] if "t10k-images" in s)
        tiles.append(np.concatenate([pixels(a), np.full((28, 2), 255, np.uint8), pixels(b)], 1))
    if tiles:
        cols = 5
        while len(tiles) % cols:
            tiles.append(np.zeros_like(tiles[0]))
        grid = np.concatenate([np.concatenate([np.pad(t, 3) for t in tiles[r : r + cols]], 1) for r in range(0, len(tiles), cols)], 0)
        Image.fromarray(grid).resize((grid.shape[1] * 3, grid.shape[0] * 3), Image.NEAREST).save(dst)


def part_million(args: argparse.Namespace, report: dict[str, Any]) -> None:
    from curate.stages.dedupe.search import near_pairs

    n = args.million_n
    print(f"\n## Part 3: search alone over {n:,} random signatures\n")
    rng = np.random.default_rng(args.seed)
    thumbs = rng.integers(0, 256, (n, 32, 32), dtype=np.uint8)
    shapes = np.full((n, 2), 32, np.int64)
    c0, t0 = cpu_seconds(), time.perf_counter()
    pairs, _, parts = near_pairs(thumbs, shapes, shapes.copy(), args.threshold, threads=args.workers)
    secs, cpu = time.perf_counter() - t0, cpu_seconds() - c0
    report["million"] = {"n": n, "search_s": secs, "cpu_s": cpu, "parts": parts, "pairs": len(pairs)}
    print(f"{n:,} random 32x32 signatures: {secs:.1f} s wall, {cpu:.1f} s CPU ({parts}); pairs found: {len(pairs)}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=10_000, help="original images in part 1")
    ap.add_argument("--per-transform", type=int, default=100, help="planted copies per transform")
    ap.add_argument("--threshold", type=float, default=None, help="curate threshold (default: the stage default)")
    ap.add_argument("--peer-distance", type=int, nargs="+", default=[4, 10], help="PHash max Hamming distances")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--repeat", type=int, default=3, help="timed repetitions of each search (median reported)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--skip-peer", action="store_true")
    ap.add_argument("--skip-planted", action="store_true")
    ap.add_argument("--full", action="store_true", help="part 2: all 70,000 images, train/test cross duplicates")
    ap.add_argument("--million", action="store_true", help="part 3: search over random signatures")
    ap.add_argument("--million-n", type=int, default=1_000_000)
    args = ap.parse_args()
    if args.threshold is None:
        from curate.stages.dedupe import DEFAULT_THRESHOLD

        args.threshold = DEFAULT_THRESHOLD
    OUT.mkdir(parents=True, exist_ok=True)
    report: dict[str, Any] = {"machine": machine(), "args": vars(args)}
    if not args.skip_planted:
        x, _, _ = load_fashion()
        part_planted(args, x[:60_000], report)
    if args.full:
        part_full(args, report)
    if args.million:
        part_million(args, report)
    (OUT / "dedupe.json").write_text(json.dumps(report, indent=2, default=str))
    print(f"\nresults: {OUT / 'dedupe.json'}")


if __name__ == "__main__":
    main()
