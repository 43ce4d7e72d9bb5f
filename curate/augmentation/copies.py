"""Offline augmentation of train rows into new samples, each reproducible from its recorded recipe.

The copies machinery of ``curate augment`` and of ``curate balance --strategy augment`` (one engine, so their
recipes are alike).

Parents are the included rows of the ``train`` split that are not themselves augmented (``label_source !=
"augment"``), so an augmented copy of a val or test image can never enter train and copies are never stacked.
``copies`` gives every parent that many copies; ``to_balance`` gives each class's parents (round robin, in a
seeded hash order) as many copies as the class lacks to reach the target (``curate.augmentation.counts``).

A new row is a new blob (``sample_id`` = sha256 of its encoded bytes, stored in a new pack) with ``parent_id``,
``recipe`` (JSON; encoding, recipe and ``reproduce``: ``curate.augmentation.policies``), ``label`` (the parent's),
``label_source = "augment"``, ``split = "train"``, ``source = "augment:<parent_id>:<copy>"`` and the decoded facts.
A copy left unchanged (every transform skipped) is redrawn in the worker (``UNCHANGED_STRIDE``); one whose bytes
still equal an existing sample is dropped and replaced by the parent's next copy index in another pass.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections import Counter, defaultdict
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import pyarrow as pa
import pyarrow.compute as pc

from curate.augmentation import AugmentConfig, check_augment, parse_target
from curate.augmentation.counts import class_counts, order_key, resolve_target
from curate.augmentation.png import Encoder
from curate.augmentation.policies import apply_transform, copy_seed, decode, encoding_for
from curate.augmentation.rng import CopyRng, pcg64_states
from curate.errors import CurateError
from curate.schema import OK, conform
from curate.stage import StageResult, no_progress

if TYPE_CHECKING:
    from curate.blobs import PackWriter
    from curate.stage import Progress
    from curate.workspace import Workspace

MAX_ROUNDS = 6  # MAX_ROUNDS: passes that redraw copies equal to an existing sample
UNCHANGED_STRIDE, UNCHANGED_TRIES = 1 << 32, 8  # unchanged copy k is redrawn as k + m * stride: never a planned index
OUT_SCHEMA = pa.schema(
    [("parent_id", pa.string()), ("copy", pa.int64()), ("sample_id", pa.string()), ("data", pa.binary()), ("width", pa.int32())]
    + [("height", pa.int32()), ("mode", pa.string()), ("format", pa.string()), ("nbytes", pa.int64()), ("recipe", pa.string())]
)


@dataclass(frozen=True)
class Job:
    """What every per-sample batch needs (picklable): the policy spec, its serialised form for files, the seed."""

    policy: str
    policy_json: str | None
    seed: int


_CACHE: dict[tuple[str, tuple[int, int] | None], tuple[Any, str]] = {}


def _transform(job: Job, size: tuple[int, int]) -> tuple[Any, str]:
    """(Compose, its serialised JSON) for a parent of ``size`` (H, W): built once per worker, policy and size."""
    key = (job.policy_json or job.policy, size if job.policy in ("shift", "flip-shift") else None)
    hit = _CACHE.get(key)
    if hit is None:
        from curate.augmentation.policies import build_policy, from_json, to_json

        compose = from_json(job.policy_json) if job.policy_json else build_policy(job.policy, size)
        hit = _CACHE[key] = (compose, to_json(compose))
    return hit


def augment_batch(batch: pa.Table, job: Job) -> pa.Table:
    """Per-sample work: every parent in ``batch`` (``sample_id``, ``data``, ``copies``: list of copy indices) -> its copies.

    Returns:
        ``OUT_SCHEMA`` rows, one per requested copy, in input order.
    """
    made: list[tuple[Any, ...]] = []  # per copy: (parent, copy, width, height, mode, format, recipe)
    blobs = Encoder()
    pids, datas, plans = (batch.column(c).to_pylist() for c in ("sample_id", "data", "copies"))
    # Every planned copy's seed, and the PCG64 state each leads to in one vector pass (``curate.augmentation.rng``);
    # a copy redrawn because it came out unchanged (a few percent) is seeded on its own.
    seeds = [copy_seed(job.seed, pid, k) for pid, ks in zip(pids, plans, strict=True) for k in ks]
    first = iter(zip(seeds, pcg64_states(seeds), strict=True))
    rng = _rng()
    for pid, data, copies in zip(pids, datas, plans, strict=True):
        image, mode, fmt = decode(data)
        compose, tjson = _transform(job, image.shape[:2])
        rng.attach(compose)
        encode = encoding_for(fmt)
        recipe = _recipe_template(pid, encode, mode, job.policy, tjson)
        for planned in copies:
            seed, state = next(first)
            k = planned
            rng.seed(seed, state)
            for m in range(1, UNCHANGED_TRIES + 1):
                pixels = apply_transform(compose, image)
                if m == UNCHANGED_TRIES or not _same_pixels(pixels, image):
                    break
                k = planned + m * UNCHANGED_STRIDE
                seed = copy_seed(job.seed, pid, k)
                rng.seed(seed)
            blobs.add(pixels, encode)
            made.append((pid, k, pixels.shape[1], pixels.shape[0], mode, encode["format"], recipe % (k, seed)))
    if not made:
        return OUT_SCHEMA.empty_table()
    rows = [
        (pid, k, hashlib.sha256(out).hexdigest(), out, w, h, mode, fmt, len(out), recipe)
        for (pid, k, w, h, mode, fmt, recipe), out in zip(made, blobs.done(), strict=True)
    ]
    columns = zip(*rows, strict=True)
    return pa.Table.from_arrays([pa.array(c, f.type) for c, f in zip(columns, OUT_SCHEMA, strict=True)], schema=OUT_SCHEMA)


_RNG: list[CopyRng] = []  # this process's generator pair, made on first use


def _rng() -> CopyRng:
    if not _RNG:
        _RNG.append(CopyRng())
    return _RNG[0]


_RECIPE_PARTS: dict[tuple[Any, ...], tuple[str, str]] = {}


def _recipe_template(pid: str, encode: dict[str, Any], mode: str, policy: str, tjson: str) -> str:
    """The recipe JSON of ``pid``'s copies, with ``%d`` for the copy index and for the seed (in that order).

    The text ``json.dumps`` gives (sorted keys, compact: ``copy`` first, ``seed`` last) with ``"transform"``
    spliced in verbatim. Everything but the parent id is the same for every parent of one encoding, mode and
    policy: it is written once (per worker) and the id, JSON-quoted, goes between.
    """
    key = (encode.get("format"), encode.get("quality"), mode, policy, tjson)
    parts = _RECIPE_PARTS.get(key)
    if parts is None:
        head = {"copy": 0, "encode": encode, "mode": mode, "parent_id": "", "policy": policy, "rng": "shared", "seed": 0}
        text = json.dumps(head, sort_keys=True, separators=(",", ":"))[len('{"copy":0,') : -len("0}")]
        # only "encode" and "mode" precede "parent_id": neither can hold the marker, so the first one is the key's
        before, after = text.split('"parent_id":""', 1)
        parts = _RECIPE_PARTS[key] = (
            '{"copy":%d,' + before.replace("%", "%%") + '"parent_id":',
            after.replace("%", "%%") + '%d,"transform":' + tjson.replace("%", "%%") + "}",
        )
    return parts[0] + json.dumps(pid).replace("%", "%%") + parts[1]


def _same_pixels(a: Any, b: Any) -> bool:
    """``np.array_equal(a, b)``; for two uint8 arrays of one shape (every copy) a byte compare, ~10x cheaper."""
    import numpy as np

    if a.dtype == b.dtype == np.uint8 and a.shape == b.shape:
        return a.tobytes() == b.tobytes()
    return bool(np.array_equal(a, b))


def parents_of(table: pa.Table) -> pa.Table:
    """Rows that may be augmented: included train rows with bytes that are not augmented copies themselves."""
    table = conform(table)
    mask = pc.and_(pc.equal(table.column("status"), OK), pc.equal(pc.fill_null(table.column("split"), ""), "train"))
    fresh = pc.and_(pc.is_valid(table.column("pack")), pc.not_equal(pc.fill_null(table.column("label_source"), ""), "augment"))
    return table.filter(pc.and_(mask, fresh))


def plan(table: pa.Table, parents: pa.Table, cfg: AugmentConfig) -> tuple[dict[str, list[int]], dict[str, Any]]:
    """Copy indices per parent id, and what the plan is (per class counts and target for ``to_balance``)."""
    ids = parents.column("sample_id").to_pylist()
    if not cfg.to_balance:
        n = cfg.copies or 1
        return {pid: list(range(n)) for pid in ids}, {"copies": n}
    counts = class_counts(table)
    if not counts:
        raise CurateError("no included, labeled train rows to balance", hint="run `curate split` first")
    target = resolve_target(counts, parse_target(cfg.target) or "max")
    by_class: dict[str, list[str]] = defaultdict(list)
    for pid, label in zip(ids, parents.column("label").to_pylist(), strict=True):
        if label is not None:
            by_class[label].append(pid)
    jobs: dict[str, list[int]] = defaultdict(list)
    need: dict[str, int] = {}
    for label, n in counts.items():
        members = sorted(by_class.get(label, []), key=lambda p: order_key(cfg.seed, p))
        need[label] = max(0, target - n)
        if need[label] and not members:
            raise CurateError(f"class {label!r} needs {need[label]} new samples but has no train rows to augment")
        for i in range(need[label]):
            jobs[members[i % len(members)]].append(i // len(members))
    return dict(jobs), {"target_count": target, "needed_per_class": need}


def run_augment(
    ws: Workspace,
    parent: pa.Table,
    parent_id: str | None,
    cfg: AugmentConfig,
    *,
    workers: int = 1,
    progress: Progress = no_progress,
) -> StageResult:
    """Add augmented copies of train rows as new samples (new blobs in a new pack); every parent row is kept as it was.

    Raises:
        CurateError: no train rows to augment, or a policy that keeps reproducing existing images.
    """
    from curate.augmentation.policies import is_policy_file, load_policy_file, to_json

    t0 = time.perf_counter()
    sha = check_augment(cfg)
    table = conform(parent)
    parents = parents_of(table)
    if parents.num_rows == 0:
        raise CurateError("no included train rows to augment", hint="run `curate split` first; only train rows are augmented")
    jobs, about = plan(table, parents, cfg)
    job = Job(cfg.policy, to_json(load_policy_file(cfg.policy)) if is_policy_file(cfg.policy) else None, cfg.seed)
    # Build the transform (and import albumentations/OpenCV) before the pool forks: workers inherit it, not rebuild it.
    _transform(job, (int(parents.column("height")[0].as_py() or 1), int(parents.column("width")[0].as_py() or 1)))
    known = set(table.column("sample_id").to_pylist())
    label_of = dict(zip(parents.column("sample_id").to_pylist(), parents.column("label").to_pylist(), strict=True))
    packs = ws.pack_writer(hashlib.sha256(f"{parent_id}|augment|{cfg}|{sha}".encode()).hexdigest()[:12])
    try:
        accepted, pack_names, rejected, produced = _copy_rounds(ws, parents, jobs, job, known, packs, cfg, workers, progress)
        packs.close()
    except BaseException:
        packs.discard()
        raise
    new = _new_rows(accepted, pack_names, label_of, with_repeat="repeat" in table.column_names)
    pids = new.column("parent_id").to_pylist()
    n = new.num_rows
    out = pa.concat_tables([table, conform(new)], promote_options="default")
    secs = time.perf_counter() - t0
    stats = {
        "policy": cfg.policy,
        "policy_sha256": sha,
        "seed": cfg.seed,
        **about,
        "parents": len(jobs),
        "new_samples": n,
        "new_per_class": dict(sorted(Counter(label_of[p] for p in pids if label_of[p] is not None).items())),
        "identical_rejected": rejected,
        "images_made": produced,
        "packs_written": len(packs.written),
        "bytes_stored": int(pc.sum(new.column("nbytes")).as_py() or 0),
        "seconds": round(secs, 3),
        "images_per_s": round(produced / secs, 1) if secs > 0 else None,
    }
    return StageResult(table=out, stats=stats)


def _copy_rounds(
    ws: Workspace,
    parents: pa.Table,
    jobs: dict[str, list[int]],
    job: Job,
    known: set[str],
    packs: PackWriter,
    cfg: AugmentConfig,
    workers: int,
    progress: Progress,
) -> tuple[list[pa.Table], list[str], int, int]:
    """Make the planned copies, storing fresh ones in ``packs``; a copy equal to a ``known`` sample is replaced by
    its parent's next copy index in another round (``MAX_ROUNDS``).

    Returns:
        (accepted copies without bytes, their pack names, copies rejected as identical, images made).
    """
    from curate.executors import map_batches

    accepted, pack_names = [], []
    next_copy = {pid: max(ks) + 1 for pid, ks in jobs.items() if ks}
    pending, rejected, produced = dict(jobs), 0, 0
    with progress("augment", sum(len(v) for v in jobs.values())) as advance:
        for _ in range(MAX_ROUNDS):
            if not pending:
                break
            todo = parents.filter(pc.is_in(parents.column("sample_id"), pa.array(sorted(pending), pa.string())))
            todo = todo.select(["sample_id", "pack"])
            todo = todo.append_column("copies", pa.array([pending[s] for s in todo.column(0).to_pylist()], pa.list_(pa.int64())))
            # ``carry`` rather than a generator that appends the column: the batches stay pack batches, which the
            # Ray executor reads on the workers
            batches = ws.blobs.iter_packs(todo, batch_rows=cfg.batch_size, carry=["copies"])
            retry: dict[str, int] = defaultdict(int)
            for out in map_batches(augment_batch, batches, job, workers=workers):
                sids = out.column("sample_id").to_pylist()
                # ``known.add`` returns None: a fresh id is recorded and kept in one pass
                keep = [sid not in known and not known.add(sid) for sid in sids]
                for pid, fresh in zip(out.column("parent_id").to_pylist(), keep, strict=True):
                    if not fresh:  # identical to an existing sample: replace it with the parent's next copy index
                        retry[pid] += 1
                mask = pa.array(keep, pa.bool_())
                pack_names += packs.add_many(
                    [s for s, fresh in zip(sids, keep, strict=True) if fresh], out.column("data").filter(mask)
                )
                produced += out.num_rows
                rejected += keep.count(False)
                accepted.append(out.drop_columns(["data"]).filter(mask))
                advance(sum(keep))
            pending = {pid: list(range(next_copy[pid], next_copy[pid] + n)) for pid, n in sorted(retry.items())}
            next_copy.update({pid: next_copy[pid] + n for pid, n in retry.items()})
        if pending:
            raise CurateError(
                f"policy {cfg.policy!r} keeps producing images identical to existing samples "
                f"({sum(len(v) for v in pending.values())} copies still missing after {MAX_ROUNDS} rounds)",
                hint="use a policy that changes the images (light, medium, heavy)",
            )
    return accepted, pack_names, rejected, produced


def _new_rows(accepted: list[pa.Table], pack_names: list[str], label_of: dict[str, Any], *, with_repeat: bool) -> pa.Table:
    """The accepted copies as sample rows (module doc), ordered by parent and copy index."""
    new = pa.concat_tables(accepted) if accepted else OUT_SCHEMA.empty_table().drop_columns(["data"])
    new = new.append_column("pack", pa.array(pack_names, pa.string()))
    new = new.sort_by([("parent_id", "ascending"), ("copy", "ascending")])
    n = new.num_rows
    pids = new.column("parent_id").to_pylist()
    copies = new.column("copy").to_pylist()
    new = new.drop_columns(["copy"])
    for name, values in (
        ("label", [label_of[p] for p in pids]),
        ("label_source", ["augment"] * n),
        ("split", ["train"] * n),
        ("status", [OK] * n),
        ("source", [f"augment:{p}:{k}" for p, k in zip(pids, copies, strict=True)]),
    ):
        new = new.append_column(name, pa.array(values, pa.string()))
    if with_repeat:
        new = new.append_column("repeat", pa.array([1] * n, pa.int64()))
    return new


def preview(
    ws: Workspace, table: pa.Table, cfg: AugmentConfig, n: int, out_path: str, *, columns: int = 4, cell: int = 96
) -> dict[str, Any]:
    """A grid PNG: ``n`` train parents (seeded hash order), each original followed by ``columns`` augmentations.

    Nothing is committed and no blob is written. Returns ``{"out", "rows", "columns", "parents"}``.
    """
    from curate.augmentation.policies import draw_grid, is_policy_file, load_policy_file, to_json

    check_augment(cfg)
    parents = parents_of(table)
    if parents.num_rows == 0:
        raise CurateError("no included train rows to preview", hint="run `curate split` first")
    ids = sorted(parents.column("sample_id").to_pylist(), key=lambda s: order_key(cfg.seed, s))[:n]
    packs = dict(zip(parents.column("sample_id").to_pylist(), parents.column("pack").to_pylist(), strict=True))
    blobs = ws.blobs.get_many(ids, [packs[s] for s in ids])
    job = Job(cfg.policy, to_json(load_policy_file(cfg.policy)) if is_policy_file(cfg.policy) else None, cfg.seed)
    batch = pa.table(
        {
            "sample_id": ids,
            "data": pa.array([blobs[s] for s in ids], pa.binary()),
            "copies": pa.array([list(range(columns))] * len(ids), pa.list_(pa.int64())),
        }
    )
    made = augment_batch(batch, job).column("data").to_pylist()
    draw_grid([[blobs[s], *made[r * columns : (r + 1) * columns]] for r, s in enumerate(ids)], out_path, cell)
    return {"out": str(out_path), "rows": len(ids), "columns": columns, "parents": ids}
