"""The split assignment as it was before it was vectorized (curate 0.1, per-row Python), kept verbatim as the
reference ``tests/test_split_vectorized.py`` compares ``curate.stages.split.assign`` against.
"""

from __future__ import annotations

import hashlib
from collections import defaultdict
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from curate.schema import OK
from curate.stages.split import SplitConfig
from curate.stages.split.assign import _targets  # the apportionment did not change: the reference shares it


class _UnionFind:
    def __init__(self, n: int) -> None:
        self.parent = list(range(n))

    def find(self, i: int) -> int:
        while self.parent[i] != i:
            self.parent[i] = self.parent[self.parent[i]]
            i = self.parent[i]
        return i

    def union(self, a: int, b: int) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[max(ra, rb)] = min(ra, rb)


def groups_of(table: pa.Table, group_col: str | None = None) -> list[int]:
    """Group index per row: rows sharing ``dup_group`` or ``group_col`` (transitively) share an index."""
    n = table.num_rows
    uf = _UnionFind(n)
    for col in ("dup_group", group_col):
        if col and col in table.column_names:
            first: dict[Any, int] = {}
            for i, v in enumerate(table.column(col).to_pylist()):
                if v is None:
                    continue
                if v in first:
                    uf.union(first[v], i)
                else:
                    first[v] = i
    return [uf.find(i) for i in range(n)]


def leakage(table: pa.Table, group_col: str | None = None) -> dict[str, Any]:
    """Groups (duplicate clusters / user groups) whose included rows sit in more than one split.

    Returns:
        ``{"groups_checked", "groups_crossing", "rows_in_crossing_groups", "examples": [sample_ids...]}``.
    """
    ok = table.filter(pc.equal(table.column("status"), OK))
    gid = groups_of(ok, group_col)
    splits = ok.column("split").to_pylist()
    ids = ok.column("sample_id").to_pylist()
    members: dict[int, list[int]] = defaultdict(list)
    for i, g in enumerate(gid):
        members[g].append(i)
    multi = [m for m in members.values() if len(m) > 1]
    crossing = [m for m in multi if len({splits[i] for i in m}) > 1]
    return {
        "groups_checked": len(multi),
        "groups_crossing": len(crossing),
        "rows_in_crossing_groups": sum(len(m) for m in crossing),
        "examples": [[ids[i] for i in m][:5] for m in crossing[:5]],
    }


def _order_key(seed: int, key: str) -> bytes:
    return hashlib.sha256(f"{seed}:{key}".encode()).digest()


def assign_splits(table: pa.Table, cfg: SplitConfig) -> tuple[list[str | None], dict[str, Any]]:
    """Compute the ``split`` column for every row.

    Excluded rows get a split too (so re-including one later cannot leak), but only included rows count
    towards the per-class targets. Returns the new split list and a few counters for stats.
    """
    ratios = list(cfg.ratios)
    n = table.num_rows
    labels = table.column("label").to_pylist()
    ids = table.column("sample_id").to_pylist()
    current = table.column("split").to_pylist()
    origin = table.column("origin_split").to_pylist()
    ok = [s == OK for s in table.column("status").to_pylist()]
    gid = groups_of(table, cfg.group_col)
    members: dict[int, list[int]] = defaultdict(list)
    for i, g in enumerate(gid):
        members[g].append(i)
    out = list(current)
    kept_existing = 0
    if cfg.keep_existing:
        for i in range(n):
            if out[i] is None and origin[i] is not None and origin[i] != "train":
                out[i] = origin[i]
                kept_existing += 1
    # A group with any assigned member goes where that member is (the earliest decision wins).
    pending: list[list[int]] = []
    for m in members.values():
        fixed = next((out[i] for i in m if out[i] is not None), None)
        if fixed is not None:
            for i in m:
                out[i] = fixed
        else:
            pending.append(m)
    if cfg.keep_existing:
        # Carve the remaining splits out of the source's train rows: the fixed origin splits drop out.
        fixed_names = {s for s in out if s is not None} - {"train"}
        ratios = [(k, v) for k, v in ratios if k not in fixed_names] or [("train", 1.0)]
        total = sum(v for _, v in ratios)
        ratios = [(k, v / total) for k, v in ratios]
    # Per class: targets over all rows of the class (assigned + pending), fill deficits in hashed order.
    # Only included rows count towards the ratios; a unit of excluded rows only is placed by its hash.
    order = [k for k, _ in ratios]
    by_class: dict[str | None, list[list[int]]] = defaultdict(list)
    for m in pending:
        live = [i for i in m if ok[i]]
        if not live:
            u = int.from_bytes(_order_key(cfg.seed, min(ids[i] for i in m))[:8], "big") / 2**64
            acc, pick = 0.0, order[-1]
            for k, frac in ratios:
                acc += frac
                if u < acc:
                    pick = k
                    break
            for i in m:
                out[i] = pick
            continue
        votes: dict[str | None, int] = defaultdict(int)
        for i in live:
            votes[labels[i]] += 1
        by_class[max(votes, key=lambda k: (votes[k], k is not None, str(k)))].append(m)
    have: dict[str | None, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    for i in range(n):
        if out[i] is not None and ok[i]:
            have[labels[i]][out[i]] += 1
    for label, units in by_class.items():
        size = {id(m): sum(ok[i] for i in m) for m in units}
        in_scope = sum(c for s, c in have[label].items() if s in order) + sum(size.values())
        target = _targets(in_scope, ratios)
        deficit = {k: target[k] - have[label].get(k, 0) for k in order}
        units.sort(key=lambda m: _order_key(cfg.seed, min(ids[i] for i in m)))
        for m in units:
            # The split furthest below its target takes the unit; ties go to the earlier split in the ratios.
            best = max(order, key=lambda k: (deficit[k], -order.index(k)))
            deficit[best] -= size[id(m)]
            for i in m:
                out[i] = best
    return out, {"kept_existing": kept_existing, "newly_assigned": sum(len(m) for m in pending)}
