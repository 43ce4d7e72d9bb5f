"""Array building blocks of the split assignment: whole columns at a time, no Python object per row.

The assignment (``assign.py``) was a loop over rows and groups in Python: 15 minutes for 10M rows
(BENCHMARKS.md, "Metadata at 10M rows"). These helpers compute the same things over NumPy arrays: dictionary
codes of a column, the group of every row (connected components over ``dup_group`` and a user column), the
seeded order key of every unit, and the greedy per-class fill, in runs of one-row units at a time.
"""

from __future__ import annotations

import hashlib
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

#: sample_ids hashed per batch: bounds the Python strings alive at once (10M ids are ~1 GB as str objects).
HASH_BATCH = 1 << 20


def codes(col: pa.ChunkedArray | pa.Array) -> tuple[np.ndarray, list[Any]]:
    """``(code per row, the distinct values)``: codes index the values; a null is -1."""
    arr = col.combine_chunks() if isinstance(col, pa.ChunkedArray) else col
    if pa.types.is_null(arr.type) or len(arr) == 0:
        return np.full(len(arr), -1, np.int64), []
    enc = pc.dictionary_encode(arr)
    idx = pc.fill_null(enc.indices, -1).to_numpy(zero_copy_only=False).astype(np.int64)
    return idx, enc.dictionary.to_pylist()


def codes_in(col: pa.ChunkedArray, names: list[str]) -> np.ndarray:
    """Codes of a string column as positions in ``names`` (values not there are appended to it); null is -1."""
    idx, values = codes(col)
    lookup = np.empty(len(values) + 1, np.int64)
    lookup[-1] = -1  # idx -1 (null) reads the last entry
    for j, v in enumerate(values):
        if v not in names:
            names.append(v)
        lookup[j] = names.index(v)
    return lookup[idx]


def roots(table: pa.Table, group_col: str | None) -> np.ndarray:
    """The group of every row: the smallest row index of its connected component, where rows sharing a non-null
    ``dup_group`` or ``group_col`` value are connected (transitively). Label propagation to a fixed point: each
    row takes the smallest label among the rows sharing a value with it; pointer jumping shortens chains."""
    n = table.num_rows
    root = np.arange(n, dtype=np.int64)
    links = []
    for name in dict.fromkeys(c for c in ("dup_group", group_col) if c and c in table.column_names):
        idx, _ = codes(table.column(name))
        rows = np.flatnonzero(idx >= 0)
        if len(rows):
            links.append((idx[rows], rows))
    changed = bool(links)
    while changed:
        changed = False
        for idx, rows in links:
            low = np.full(int(idx.max()) + 1, n, np.int64)
            np.minimum.at(low, idx, root[rows])
            new = low[idx]
            if (new != root[rows]).any():
                changed = True
                root[rows] = new
        while True:
            nxt = root[root]
            if np.array_equal(nxt, root):
                break
            root = nxt
    return root


def order_keys(seed: int, keys: pa.Array, prefix: str = "") -> np.ndarray:
    """sha256 of ``f"{seed}:{prefix}{key}"`` per key as four big-endian uint64 columns, shape (N, 4): sorting the
    rows lexicographically is sorting the digests (the order the assignment uses)."""
    out = np.empty((len(keys), 4), np.uint64)
    head = f"{seed}:{prefix}"
    for start in range(0, len(keys), HASH_BATCH):
        chunk = keys.slice(start, HASH_BATCH).to_pylist()
        digests = b"".join(hashlib.sha256(f"{head}{k}".encode()).digest() for k in chunk)
        out[start : start + len(chunk)] = np.frombuffer(digests, dtype=">u8").reshape(-1, 4)
    return out


def digest_order(keys: np.ndarray, first: np.ndarray) -> np.ndarray:
    """Row order by ``first``, then by the digests ``keys`` (N, 4).

    Two stable sorts on the first 64 bits and on ``first`` (a five-key lexsort took seconds per million rows);
    the full digests decide only where those 64 bits tie within a value of ``first`` (never seen, but exact).
    """
    order = np.argsort(keys[:, 0], kind="stable")
    order = order[np.argsort(first[order], kind="stable")]
    same = (np.diff(first[order]) == 0) & (np.diff(keys[order, 0]) == 0)
    if same.any():
        return np.lexsort((keys[:, 3], keys[:, 2], keys[:, 1], keys[:, 0], first))
    return order


def fill(deficit: np.ndarray, sizes: np.ndarray) -> np.ndarray:
    """The greedy fill, unit by unit in the given order: the split furthest below its target takes the unit
    (ties: the earlier split) and its deficit drops by the unit's size. Returns the split position per unit.

    A run of r one-row units is done at once: split k's deficits as it takes units are d_k, d_k - 1, ...; taking
    the largest current deficit each time merges those sequences in order of (deficit descending, k ascending), so
    the run's picks are the first r entries of that order.
    """
    deficit = deficit.astype(np.int64).copy()
    k = len(deficit)
    picks = np.empty(len(sizes), np.int64)
    big = np.flatnonzero(sizes != 1)
    start = 0
    for stop in [*big.tolist(), len(sizes)]:
        r = stop - start
        if r:
            vals = (deficit[:, None] - np.arange(r)[None, :]).ravel()
            split = np.repeat(np.arange(k), r)
            run = split[np.lexsort((split, -vals))[:r]]
            picks[start:stop] = run
            deficit -= np.bincount(run, minlength=k)
        if stop < len(sizes):
            best = int(np.argmax(deficit))  # the first of equal maxima: the earlier split
            picks[stop] = best
            deficit[best] -= sizes[stop]
        start = stop + 1
    return picks
