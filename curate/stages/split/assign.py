"""The work of ``curate split`` (the contract, settings and semantics: ``curate.stages.split``)."""

from __future__ import annotations

import hashlib
import time
from collections import defaultdict
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from curate.errors import UsageError
from curate.schema import OK, conform
from curate.stage import StageResult
from curate.stages.split import SplitConfig, arrays


def _targets(n: int, ratios: list[tuple[str, float]]) -> dict[str, int]:
    """Largest-remainder apportionment of ``n`` items to the splits (sums to exactly ``n``)."""
    raw = [(name, n * frac) for name, frac in ratios]
    out = {name: int(v) for name, v in raw}
    rest = n - sum(out.values())
    order = [r[0] for r in ratios]
    for name, _ in sorted(raw, key=lambda x: (-(x[1] - int(x[1])), order.index(x[0])))[:rest]:
        out[name] += 1
    return out


def groups_of(table: pa.Table, group_col: str | None = None) -> list[int]:
    """Group index per row: rows sharing ``dup_group`` or ``group_col`` (transitively) share an index (the
    smallest row index of the group)."""
    return arrays.roots(table, group_col).tolist()


def leakage(table: pa.Table, group_col: str | None = None) -> dict[str, Any]:
    """Groups (duplicate clusters / user groups) whose included rows sit in more than one split.

    Returns:
        ``{"groups_checked", "groups_crossing", "rows_in_crossing_groups", "examples": [sample_ids...]}``.
    """
    cols = [c for c in dict.fromkeys(("sample_id", "split", "dup_group", group_col)) if c and c in table.column_names]
    ok = table.select(cols).filter(pc.equal(table.column("status"), OK))
    root = arrays.roots(ok, group_col)
    split, _ = arrays.codes(ok.column("split"))
    size = np.bincount(root, minlength=ok.num_rows)
    low = np.full(ok.num_rows, np.iinfo(np.int64).max)
    high = np.full(ok.num_rows, np.iinfo(np.int64).min)
    np.minimum.at(low, root, split)
    np.maximum.at(high, root, split)
    crossing = np.flatnonzero((size > 1) & (low != high))  # ascending root: the order groups first appear in
    examples = []
    for g in crossing[:5].tolist():
        rows = np.flatnonzero(root == g)[:5]
        examples.append(ok.column("sample_id").take(pa.array(rows)).to_pylist())
    return {
        "groups_checked": int((size > 1).sum()),
        "groups_crossing": len(crossing),
        "rows_in_crossing_groups": int(size[crossing].sum()),
        "examples": examples,
    }


def _order_key(seed: int, key: str) -> bytes:
    return hashlib.sha256(f"{seed}:{key}".encode()).digest()


def split_array(codes: np.ndarray, names: list[str]) -> pa.Array:
    """The ``split`` column for split codes (positions in ``names``; -1 is null)."""
    idx = pa.array(codes.astype(np.int32), mask=codes < 0)
    return pa.DictionaryArray.from_arrays(idx, pa.array(names, pa.string())).cast(pa.string())


def assign_splits(table: pa.Table, cfg: SplitConfig) -> tuple[list[str | None], dict[str, Any]]:
    """Compute the ``split`` column for every row (``assign_codes`` as a list of names)."""
    codes, names, counters = assign_codes(table, cfg)
    return split_array(codes, names).to_pylist(), counters


def assign_codes(table: pa.Table, cfg: SplitConfig) -> tuple[np.ndarray, list[str], dict[str, Any]]:
    """The split of every row as codes into a list of split names (-1: none), and counters for stats.

    Excluded rows get a split too (so re-including one later cannot leak), but only included rows count
    towards the per-class targets.
    """
    ratios = list(cfg.ratios)
    n = table.num_rows
    names = [k for k, _ in ratios]
    out = arrays.codes_in(table.column("split"), names)
    ok = pc.fill_null(pc.equal(table.column("status"), OK), False).to_numpy(zero_copy_only=False)
    kept_existing = 0
    if cfg.keep_existing:
        origin = arrays.codes_in(table.column("origin_split"), names)
        take = (out < 0) & (origin >= 0) & (origin != (names.index("train") if "train" in names else -2))
        out[take] = origin[take]
        kept_existing = int(take.sum())
    root = arrays.roots(table, cfg.group_col)
    # A group with any assigned member goes where that member is (the earliest decision wins).
    assigned = np.flatnonzero(out >= 0)
    first = np.full(n, n, np.int64)
    np.minimum.at(first, root[assigned], assigned)
    at = first[root]
    has = at < n
    out[has] = out[at[has]]
    pending = np.flatnonzero(~has)
    if cfg.keep_existing:
        # Carve the remaining splits out of the source's train rows: the fixed origin splits drop out.
        fixed_names = {names[c] for c in np.unique(out[out >= 0]).tolist()} - {"train"}
        ratios = [(k, v) for k, v in ratios if k not in fixed_names] or [("train", 1.0)]
        total = sum(v for _, v in ratios)
        ratios = [(k, v / total) for k, v in ratios]
        names.extend(k for k, _ in ratios if k not in names)
    if len(pending):
        out[pending] = _place(table, cfg, ratios, names, out, ok, root, pending)
    return out, names, {"kept_existing": kept_existing, "newly_assigned": len(pending)}


def _place(table: pa.Table, cfg: SplitConfig, ratios: list[tuple[str, float]], names: list[str], out: np.ndarray,
           ok: np.ndarray, root: np.ndarray, pending: np.ndarray) -> np.ndarray:  # fmt: skip
    """Split codes of the ``pending`` rows (whole groups with no split yet).

    Per class: targets over all rows of the class (assigned + pending), deficits filled unit by unit (a unit is a
    group) in the order of a hash of the seed and the unit's smallest ``sample_id``. Only included rows count
    towards the ratios; a unit of excluded rows only is placed by its hash alone.
    """
    order = np.array([names.index(k) for k, _ in ratios], np.int64)
    units, first, inv, members = np.unique(root[pending], return_index=True, return_inverse=True, return_counts=True)
    ids = table.column("sample_id")
    digest = arrays.order_keys(cfg.seed, ids.take(pa.array(pending[first])).combine_chunks())
    if (members > 1).any():  # a group's key is its smallest sample_id
        rows = np.flatnonzero(members[inv] > 1)
        low = pa.table({"u": inv[rows], "id": ids.take(pa.array(pending[rows]))}).group_by("u").aggregate([("id", "min")])
        digest[low.column("u").to_numpy()] = arrays.order_keys(cfg.seed, low.column("id_min").combine_chunks())
    live = np.bincount(inv, weights=ok[pending], minlength=len(units)).astype(np.int64)
    code = np.full(len(units), -1, np.int64)
    dead = np.flatnonzero(live == 0)
    acc, bounds = 0.0, []
    for _, frac in ratios:  # the same float sums as a running total
        acc += frac
        bounds.append(acc)
    u = digest[dead, 0].astype(np.float64) / 2.0**64
    code[dead] = order[np.minimum(np.searchsorted(np.array(bounds), u, side="right"), len(order) - 1)]
    label, values = arrays.codes(table.column("label"))
    cls = _majority(inv, label[pending], ok[pending], values, len(units))
    have = np.bincount((label[ok & (out >= 0)] + 1) * len(names) + out[ok & (out >= 0)], minlength=(len(values) + 1) * len(names))
    have = have.reshape(len(values) + 1, len(names))[:, order]
    alive = np.flatnonzero(live > 0)
    alive = alive[arrays.digest_order(digest[alive], cls[alive])]
    cuts = np.flatnonzero(np.diff(cls[alive])) + 1
    for group in np.split(alive, cuts) if len(alive) else []:
        held = have[cls[group[0]] + 1]
        target = _targets(int(held.sum() + live[group].sum()), ratios)
        deficit = np.array([target[k] for k, _ in ratios], np.int64) - held
        code[group] = order[arrays.fill(deficit, live[group])]
    return code[inv]


def _majority(unit: np.ndarray, label: np.ndarray, ok: np.ndarray, values: list[Any], n_units: int) -> np.ndarray:
    """Per unit, the label code most of its included rows carry (ties: a label over none, then the larger
    ``str``); -1 for a unit whose included rows have no label or that has none."""
    width = len(values) + 1
    key, votes = np.unique(unit[ok] * width + label[ok] + 1, return_counts=True)
    u, lab = key // width, key % width - 1
    rank = np.empty(width, np.int64)
    rank[np.argsort([str(v) for v in values], kind="stable") + 1] = np.arange(len(values))
    rank[0] = -1
    pick = np.lexsort((rank[lab + 1], lab >= 0, votes, u))
    last = pick[np.r_[np.flatnonzero(np.diff(u[pick])), len(pick) - 1]] if len(pick) else pick
    out = np.full(n_units, -1, np.int64)
    out[u[last]] = lab[last]
    return out


def _units_by_class(members: list[list[int]], labels: list[Any], ok: list[bool]) -> dict[Any, list[list[int]]]:
    """Units (groups of row indices) keyed by the majority label of their included rows (units with none left out)."""
    by_class: dict[Any, list[list[int]]] = defaultdict(list)
    for m in members:
        votes: dict[Any, int] = defaultdict(int)
        for i in m:
            if ok[i]:
                votes[labels[i]] += 1
        if votes:
            by_class[max(votes, key=lambda k: (votes[k], k is not None, str(k)))].append(m)
    return by_class


def carve_train_dev(table: pa.Table, splits: list[str | None], cfg: SplitConfig) -> tuple[list[str | None], dict[str, Any]]:
    """Move whole groups from ``train`` to ``train_dev`` until each class holds its share of train_dev rows.

    A class's target is ``round(fraction x its train + train_dev rows)`` (largest remainder over the classes for a
    count). Rows already in ``train_dev`` stay (stable when data is added); groups are taken in the order of a hash
    of the seed and their smallest ``sample_id``, a group only when it brings the class closer to its target, so a
    big duplicate group does not overshoot. Excluded-only groups stay in train.

    Returns:
        The new split list and ``{"train_dev": {"requested", "rows", "moved"}}``.
    """
    ids = table.column("sample_id").to_pylist()
    labels = table.column("label").to_pylist()
    ok = [s == OK for s in table.column("status").to_pylist()]
    members: dict[int, list[int]] = defaultdict(list)
    for i, g in enumerate(groups_of(table, cfg.group_col)):
        members[g].append(i)
    pool = [m for m in members.values() if splits[m[0]] in ("train", "train_dev")]
    # unlabeled rows are the pseudo-label pool, not something an error can be measured on: they stay in train
    by_class = {c: u for c, u in _units_by_class(pool, labels, ok).items() if c is not None}
    size = {id(m): sum(ok[i] for i in m) for units in by_class.values() for m in units}
    total = {c: sum(size[id(m)] for m in units) for c, units in by_class.items()}
    have = {c: sum(size[id(m)] for m in units if splits[m[0]] == "train_dev") for c, units in by_class.items()}
    frac = float(cfg.train_dev or 0)
    if frac >= 1:
        n_rows = sum(total.values())
        if frac >= n_rows:
            raise UsageError(f"--train-dev {int(frac)}: train has only {n_rows} included rows", hint="give fewer rows or a fraction")
        shares = _targets(int(frac), [(str(c), total[c] / n_rows) for c in sorted(total, key=str)])
        target = {c: shares[str(c)] for c in total}
    else:
        target = {c: int(total[c] * frac + 0.5) for c in total}
    out, moved = list(splits), 0
    for c, units in by_class.items():
        deficit = target[c] - have[c]
        for m in sorted(units, key=lambda m: _order_key(cfg.seed, "train_dev:" + min(ids[i] for i in m))):
            n = size[id(m)]
            if out[m[0]] != "train" or deficit <= 0 or n >= 2 * deficit:
                continue
            for i in m:
                out[i] = "train_dev"
            deficit -= n
            moved += n
    rows = sum(1 for i, s in enumerate(out) if s == "train_dev" and ok[i])
    return out, {"train_dev": {"requested": cfg.train_dev, "rows": rows, "moved": moved}}


def run_split(parent: pa.Table, cfg: SplitConfig) -> StageResult:
    """Assign ``split`` to every row of ``parent`` and report the leakage check (must be 0 groups crossing)."""
    t0 = time.perf_counter()
    table = conform(parent)
    if cfg.group_col and cfg.group_col not in table.column_names:
        raise UsageError(f"--group-col {cfg.group_col!r} is not a column of this version",
                         hint=f"columns: {', '.join(table.column_names)}")
    codes, names, counters = assign_codes(table, cfg)
    column = split_array(codes, names)
    if cfg.train_dev:
        if any(k == "train_dev" for k, _ in cfg.ratios):
            raise UsageError("--train-dev with a train_dev ratio: give one or the other")
        splits, more = carve_train_dev(table, column.to_pylist(), cfg)
        column = pa.array(splits, pa.string())
        counters.update(more)
    table = table.set_column(table.schema.get_field_index("split"), "split", column)
    check = leakage(table, cfg.group_col)
    stats = {**counters, "leakage": check, "seconds": round(time.perf_counter() - t0, 3)}
    return StageResult(table=table, stats=stats)
