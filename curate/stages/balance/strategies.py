"""The work of ``curate balance``: report class imbalance per split and even out the train split's classes.

Only included (``status == "ok"``), labeled rows of the ``train`` split are counted and touched; val and test are
never resampled, excluded rows are never counted. A class's count is its *effective* count: the sum of ``repeat``
(1 when the column is absent or null), i.e. how many samples of it the train shards hold.

Strategies (``--target``: a number, ``median`` (rounded down), ``max`` or ``min``; default ``min`` for undersample,
``max`` for oversample/augment). Classes above the target are only ever cut, classes below only ever raised:

| strategy | what it does |
| --- | --- |
| undersample | excludes rows of classes above the target (``excluded_by``/``reason`` = ``balance``) down to the target |
| oversample | raises ``repeat`` (int64, 1 = once; export writes a row that often) until a class sums to the target |
| augment | new albumentations samples (``curate.augmentation.copies``) until each class holds the target |
| weights | ``sample_weight`` (float64) = N / (K * n_class) on included labeled train rows (times ``clean_weight``), null elsewhere |

Which rows undersampling drops (``--drop``): ``random`` (a seeded hash order), ``lowest-quality`` (lowest
``label_quality`` first, 0..1 with 1 = clean, written by ``curate clean``; nulls last; random order without the
column), ``duplicates-first`` (rows flagged ``is_duplicate``, which ``curate dedupe --action flag`` leaves included,
first; without that column, every ``dup_group`` member after the group's first; then the rest; random order
without dedupe's columns). Ties follow the seeded hash order: a run is a pure function of the table and the seed.

Weights are inverse class frequency with mean 1 over the train samples, so every class carries the same total weight;
the trainer draws batches with replacement in proportion to them (``curate.learn.data``). Where ``curate clean
--action weight`` gave rows a ``clean_weight`` (the posterior that the label is right), the class weight is
multiplied by it rather than replacing it (the class weight comes from counts, so a rerun does not compound it).
The report also gives Cui et al.'s (CVPR 2019) effective number of samples, ``(1 - beta**n) / (1 - beta)``,
``beta`` = 0.999 by default.
"""

from __future__ import annotations

import time
from collections import defaultdict
from typing import TYPE_CHECKING, Any

import pyarrow as pa

from curate.augmentation import parse_target
from curate.augmentation.counts import class_counts, order_key, repeats, resolve_target, train_mask
from curate.errors import CurateError, UsageError
from curate.schema import conform, exclude
from curate.stage import StageResult, no_progress
from curate.stages.balance import BalanceConfig, check

if TYPE_CHECKING:
    from curate.stage import Progress
    from curate.workspace import Workspace

STAGE = "balance"


def effective_number(n: int, beta: float) -> float:
    """Cui et al. (2019): the expected volume of ``n`` samples, ``(1 - beta**n) / (1 - beta)``."""
    return (1.0 - beta**n) / (1.0 - beta)


def imbalance_report(table: pa.Table, beta: float = 0.999) -> dict[str, Any]:
    """Per split: class counts, max/min ratio and effective numbers (and weighted totals when ``sample_weight`` exists).

    Returns:
        ``{split: {"counts", "total", "classes", "max", "min", "ratio", "effective", "beta"[, "weighted"]}}``.
    """
    table = conform(table)
    out: dict[str, Any] = {}
    order = {"train": 0, "train_dev": 1, "val": 2, "test": 3}
    weights = table.column("sample_weight").to_pylist() if "sample_weight" in table.column_names else None
    for split in sorted({s for s in table.column("split").to_pylist() if s is not None}, key=lambda s: (order.get(s, 4), s)):
        counts = class_counts(table, split)
        if not counts:
            continue
        hi, lo = max(counts.values()), min(counts.values())
        row: dict[str, Any] = {"counts": counts, "total": sum(counts.values()), "classes": len(counts), "max": hi, "min": lo}
        row.update(ratio=round(hi / lo, 3), effective={k: round(effective_number(v, beta), 1) for k, v in counts.items()}, beta=beta)
        mask = train_mask(table, split).to_pylist()
        if weights is not None and any(w is not None for w, m in zip(weights, mask, strict=True) if m):
            mass: dict[str, float] = defaultdict(float)
            for m, label, w, r in zip(mask, table.column("label").to_pylist(), weights, repeats(table), strict=True):
                if m:
                    mass[label] += (1.0 if w is None else w) * r
            row["weighted"] = {k: round(v, 3) for k, v in sorted(mass.items())}
        out[split] = row
    return out


def _drop_order(table: pa.Table, idx: list[int], how: str, seed: int) -> tuple[list[int], str]:
    """Candidate row indices of one class in the order undersampling excludes them, and the rule actually used."""
    ids = table.column("sample_id").to_pylist()
    names = table.column_names
    if how == "lowest-quality" and "label_quality" in names:
        q = table.column("label_quality").to_pylist()
        return sorted(idx, key=lambda i: (q[i] is None, q[i] if q[i] is not None else 0.0, order_key(seed, ids[i]))), how
    if how == "duplicates-first" and ("is_duplicate" in names or "dup_group" in names):
        by_hash = sorted(idx, key=lambda i: order_key(seed, ids[i]))
        if "is_duplicate" in names:
            dup = table.column("is_duplicate").to_pylist()
            first = [i for i in by_hash if dup[i]]
        else:  # groups without dedupe's flag: every member after the first (in the seeded order) is a duplicate
            group, seen, first = table.column("dup_group").to_pylist(), set(), []
            for i in by_hash:
                if group[i] is not None and group[i] in seen:
                    first.append(i)
                seen.add(group[i])
        taken = set(first)
        return first + [i for i in by_hash if i not in taken], how
    used = "random" if how == "random" else f"random (no {'label_quality' if how == 'lowest-quality' else 'dedupe'} columns)"
    return sorted(idx, key=lambda i: order_key(seed, ids[i])), used


def _by_class(table: pa.Table) -> dict[str, list[int]]:
    rows: dict[str, list[int]] = defaultdict(list)
    for i, (m, label) in enumerate(zip(train_mask(table).to_pylist(), table.column("label").to_pylist(), strict=True)):
        if m:
            rows[label].append(i)
    return dict(sorted(rows.items()))


def undersample(table: pa.Table, target: int, cfg: BalanceConfig) -> tuple[pa.Table, dict[str, Any]]:
    """Exclude (reason ``balance``) rows of train classes above ``target`` until each holds exactly ``target``.

    Raises:
        UsageError: the train split holds repeated rows (oversampled): cutting them would not give exact counts.
    """
    if any(r > 1 for r, m in zip(repeats(table), train_mask(table).to_pylist(), strict=True) if m):
        raise UsageError(
            "this version's train split is oversampled (repeat > 1); undersample the version before it",
            hint="`curate log` lists the versions; `curate checkout VERSION` moves HEAD there",
        )
    drop = [False] * table.num_rows
    removed: dict[str, int] = {}
    used = cfg.drop
    for label, idx in _by_class(table).items():
        extra = len(idx) - target
        if extra > 0:
            order, used = _drop_order(table, idx, cfg.drop, cfg.seed)
            for i in order[:extra]:
                drop[i] = True
            removed[label] = extra
    return exclude(table, drop, stage=STAGE, reason="balance"), {"excluded_per_class": removed, "drop_rule": used}


def oversample(table: pa.Table, target: int, cfg: BalanceConfig) -> tuple[pa.Table, dict[str, Any]]:
    """Raise ``repeat`` of rows of train classes below ``target`` until each class's sum of repeats is exactly ``target``.

    Every row of a class gets the same number of extra repeats and the remainder goes one each to rows in the
    seeded hash order, so no row is repeated more than one time more than another of its class.
    """
    ids = table.column("sample_id").to_pylist()
    rep = repeats(table)
    added: dict[str, int] = {}
    for label, idx in _by_class(table).items():
        missing = target - sum(rep[i] for i in idx)
        if missing <= 0:
            continue
        base, rest = divmod(missing, len(idx))
        for n, i in enumerate(sorted(idx, key=lambda i: order_key(cfg.seed, ids[i]))):
            rep[i] += base + (n < rest)
        added[label] = missing
    return _put(table, "repeat", pa.array(rep, pa.int64())), {"repeats_added_per_class": added}


def weights(table: pa.Table) -> tuple[pa.Table, dict[str, Any]]:
    """``sample_weight`` = N / (K * n_class) on included labeled train rows (null elsewhere): equal mass per class."""
    counts = class_counts(table)
    total, k = sum(counts.values()), len(counts)
    per_class = {label: total / (k * n) for label, n in counts.items()}
    mask = train_mask(table).to_pylist()
    # clean --action weight's per-row weight survives: multiplied in, not overwritten
    soft = table.column("clean_weight").to_pylist() if "clean_weight" in table.column_names else [None] * table.num_rows
    labels = table.column("label").to_pylist()
    w = [per_class[label] * (1.0 if c is None else c) if m else None for m, label, c in zip(mask, labels, soft, strict=True)]
    return _put(table, "sample_weight", pa.array(w, pa.float64())), {"class_weights": {k: round(v, 6) for k, v in per_class.items()}}


def _put(table: pa.Table, name: str, col: pa.Array) -> pa.Table:
    """Replace or add column ``name``."""
    if name in table.column_names:
        return table.set_column(table.schema.get_field_index(name), name, col)
    return table.append_column(name, col)


def run_balance(
    ws: Workspace,
    parent: pa.Table,
    parent_id: str | None,
    cfg: BalanceConfig,
    *,
    workers: int = 1,
    progress: Progress = no_progress,
) -> StageResult:
    """Apply ``cfg.strategy`` to the train split of ``parent`` (every row kept; see the module doc).

    Raises:
        CurateError: no included labeled train rows (run ``curate split`` first), or a bad setting.
    """
    t0 = time.perf_counter()
    check(cfg)
    table = conform(parent)
    counts = class_counts(table)
    if not counts:
        raise CurateError("no included, labeled train rows to balance", hint="run `curate split` first")
    before = imbalance_report(table, cfg.beta)
    target_spec = parse_target(cfg.target) or ("min" if cfg.strategy == "undersample" else "max")
    target = resolve_target(counts, target_spec)
    stats: dict[str, Any] = {"strategy": cfg.strategy, "target": target_spec, "target_count": target, "seed": cfg.seed}
    state: dict[str, bytes] = {}
    if cfg.strategy == "undersample":
        table, extra = undersample(table, target, cfg)
    elif cfg.strategy == "oversample":
        table, extra = oversample(table, target, cfg)
    elif cfg.strategy == "weights":
        stats["target_count"] = None  # weights equalise the class mass; a sample count means nothing here
        table, extra = weights(table)
    else:
        # One augmentation engine: the same code as `curate augment --to-balance`, so recipes are alike.
        from curate.augmentation import AugmentConfig
        from curate.augmentation.copies import run_augment

        res = run_augment(
            ws,
            table,
            parent_id,
            AugmentConfig(policy=cfg.policy, to_balance=True, target=str(target), seed=cfg.seed),
            workers=workers,
            progress=progress,
        )
        table, extra, state = res.table, {"augment": res.stats}, res.state
    stats.update(extra, before=before, after=imbalance_report(table, cfg.beta), seconds=round(time.perf_counter() - t0, 3))
    return StageResult(table=table, stats=stats, state=state)
