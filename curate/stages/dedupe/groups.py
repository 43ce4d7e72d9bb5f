"""Duplicate groups from signatures: exact groups, near edges, components, representatives, table columns.

Driver-side work of ``curate.stages.dedupe`` over small arrays (one signature per image); the pixel-level
parts are in ``curate.stages.dedupe.search`` / ``curate.stages.dedupe.verify``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from curate.schema import exclude
from curate.stages.dedupe.signatures import UniqueSignatures

DUP_COLUMNS: dict[str, pa.DataType] = {
    "dup_group": pa.string(),
    "is_duplicate": pa.bool_(),
    "dup_of": pa.string(),
    "dup_score": pa.float32(),
    "dup_kind": pa.string(),
    "dup_label_conflict": pa.bool_(),
}


def group_items(
    items: pa.Table,
    sigs: pa.Table,
    ref_ids: set[str],
    *,
    threshold: float,
    robust_threshold: float = 2.0,
    flip: bool = False,
    keep: str = "first",
    exact_only: bool = False,
    k: int = 4,
    nprobe: int = 4,
    threads: int = 1,
    semantic: Any = None,
) -> dict[str, Any]:
    """Exact groups by pixel hash, near edges between their representatives, connected components, representatives.

    Args:
        items: ``sample_id``, ``label``, ``order`` (row in the sample table; -1 for reference rows outside it).
        sigs: ``curate.stages.dedupe.signatures.SIGNATURE_SCHEMA`` rows aligned with ``items`` (no errors), or
            their ``UniqueSignatures`` (what the stage passes, so that the Arrow table is gone during the search).
        ref_ids: ``--against`` reference sample_ids (always preferred as representative, never compared
            with each other).
        semantic: a ``curate.stages.dedupe.semantic.Semantic`` (embedding pairs over item indices, unit vectors),
            or None. Its pairs join the components; a member linked to its representative only through them is
            kind ``semantic``, its score the cosine to the representative.

    Returns:
        dict with per-item arrays ``comp`` (component id), ``rep`` (item index of the representative), ``score``,
        ``kind``, plus ``edges`` (the pairs found, ``Edges``) and ``timings``.
    """
    from curate.stages.dedupe.search import near_pairs

    t0 = time.perf_counter()
    m = items.num_rows
    ids = items.column("sample_id").combine_chunks()
    is_ref = pc.is_in(ids, pa.array(sorted(ref_ids), pa.string())).to_numpy(zero_copy_only=False) if ref_ids else np.zeros(m, bool)
    sig = sigs if isinstance(sigs, UniqueSignatures) else UniqueSignatures.of(sigs)
    first, u_of, thumbs, shapes, sizes = sig.first, sig.u_of, sig.thumbs, sig.shapes, sig.sizes
    values, has_value = sig.values, sig.has_value
    nu = len(first)
    query_u = np.zeros(nu, bool)
    np.logical_or.at(query_u, u_of, ~is_ref)
    timings: dict[str, Any] = {}
    pairs, scores = np.empty((0, 2), np.int64), np.empty(0, np.float32)
    if not exact_only and nu > 1:
        kw = {"robust_threshold": robust_threshold, "values": values, "has_value": has_value, "k": k, "nprobe": nprobe, "flip": flip}
        pairs, scores, timings = near_pairs(thumbs, shapes, sizes, threshold, query=query_u, threads=threads, **kw)
    comp_pix = _components(nu, pairs)
    sem_u = np.empty((0, 2), np.int64)
    if semantic is not None and len(semantic.pairs):
        sem_u = u_of[semantic.pairs]
        sem_u = sem_u[sem_u[:, 0] != sem_u[:, 1]]  # both sides of one exact group: nothing to add
    comp_u = _components(nu, np.concatenate([pairs, sem_u])) if len(sem_u) else comp_pix
    comp = comp_u[u_of]
    order = items.column("order").to_numpy()
    if keep == "largest":
        metric = -(sizes[:, 0] * sizes[:, 1])[u_of].astype(np.float64)
    elif keep == "sharpest":
        metric = -sig.sharpness.astype(np.float64)
    else:
        metric = np.zeros(m)
    rank = np.lexsort((np.where(order < 0, np.iinfo(np.int64).max, order), metric, ~is_ref, comp))
    first_of_comp = np.ones(m, bool)
    first_of_comp[1:] = comp[rank][1:] != comp[rank][:-1]
    rep_of_comp = np.full(comp.max() + 1 if m else 0, -1)
    rep_of_comp[comp[rank][first_of_comp]] = rank[first_of_comp]
    rep = rep_of_comp[comp]
    views = (thumbs, shapes, sizes, (values, has_value))
    score, kind = _members(u_of, rep, comp_pix, views, (threshold, robust_threshold), flip, semantic)
    edges = Edges(ids, first, pairs, scores, semantic)
    timings["group_s"] = round(time.perf_counter() - t0 - sum(v for k, v in timings.items() if k.endswith("_s")), 3)
    return {"comp": comp, "rep": rep, "score": score, "kind": kind, "is_ref": is_ref, "edges": edges, "timings": timings}


def _members(
    u_of: np.ndarray, rep: np.ndarray, comp_pix: np.ndarray, views: tuple[Any, ...], t: tuple[float, float], flip: bool,
    semantic: Any,
) -> tuple[np.ndarray, np.ndarray]:
    """``dup_score`` and ``dup_kind`` of every item against its representative: ``exact`` (same pixels, 1.0),
    ``near`` (linked by pixel pairs: the pixel score), ``semantic`` (linked only through embedding pairs: the cosine)."""
    same = u_of == u_of[rep]
    sem = ~same & (comp_pix[u_of] != comp_pix[u_of[rep]])
    score = np.where(same, 1.0, np.nan).astype(np.float32)
    kind = np.where(same, "exact", np.where(sem, "semantic", "near")).astype(object)
    need = np.flatnonzero(~same & ~sem)
    if need.size:  # near members: score against the representative itself (it may be linked through others)
        thumbs, shapes, sizes, values = views
        score[need] = _rep_scores(thumbs, shapes, sizes, np.stack([u_of[need], u_of[rep[need]]], 1), values, t, flip)
    if sem.any():
        i = np.flatnonzero(sem)
        score[i] = np.einsum("ij,ij->i", semantic.vectors[i], semantic.vectors[rep[i]])
    return score, kind


#: pairs per piece of ``Edges.parquet``: Parquet's default row group, so the file is the one a single write gives
EDGE_ROWS = 1 << 20


@dataclass
class Edges:
    """The pairs found (``dup_pairs.parquet``: ``a``, ``b``, ``score``, ``signal`` (``pixel`` or ``semantic``)).

    Kept as index arrays; the sample ids are looked up a piece at a time when written, so a million images with
    millions of pairs never hold two string columns of them (~70 bytes per pair and side).
    """

    ids: pa.Array
    first: np.ndarray
    pairs: np.ndarray
    scores: np.ndarray
    semantic: Any

    @property
    def num_rows(self) -> int:
        return len(self.pairs) + (len(self.semantic.pairs) if self._has_semantic else 0)

    @property
    def _has_semantic(self) -> bool:
        return self.semantic is not None and len(self.semantic.pairs) > 0

    def _piece(self, lo: int, hi: int) -> pa.Table:
        """Rows ``lo:hi`` of the table (pixel pairs first, then the semantic ones)."""
        n_pix = len(self.pairs)
        a, b = self.first[self.pairs[lo:hi, 0]], self.first[self.pairs[lo:hi, 1]]
        sc, sig = [self.scores[lo:hi]], ["pixel"] * len(a)
        if self._has_semantic and hi > n_pix:
            sp = self.semantic.pairs[max(lo - n_pix, 0) : hi - n_pix]
            a, b = np.concatenate([a, sp[:, 0]]), np.concatenate([b, sp[:, 1]])
            sc.append(self.semantic.scores[max(lo - n_pix, 0) : hi - n_pix])
            sig += ["semantic"] * len(sp)
        return pa.table({"a": self.ids.take(pa.array(a, pa.int64())).cast(pa.string()),
                         "b": self.ids.take(pa.array(b, pa.int64())).cast(pa.string()),
                         "score": pa.array(np.concatenate(sc).astype(np.float32), pa.float32()),
                         "signal": pa.array(sig, pa.string())})  # fmt: skip

    def table(self) -> pa.Table:
        """The whole table."""
        return self._piece(0, self.num_rows)

    def parquet(self) -> bytes:
        """zstd Parquet of ``table()``, written ``EDGE_ROWS`` rows at a time."""
        import io

        import pyarrow.parquet as pq

        buf = io.BytesIO()
        with pq.ParquetWriter(buf, self._piece(0, 0).schema, compression="zstd") as w:
            for lo in range(0, max(self.num_rows, 1), EDGE_ROWS):
                w.write_table(self._piece(lo, min(lo + EDGE_ROWS, self.num_rows)))
        return buf.getvalue()


def _rep_scores(
    thumbs: np.ndarray,
    shapes: np.ndarray,
    sizes: np.ndarray,
    pairs: np.ndarray,
    values: tuple[np.ndarray | None, np.ndarray],
    t: tuple[float, float],
    flip: bool,
) -> np.ndarray:
    """``dup_score`` of members against their representative: the best score computed (and of the mirror image)."""
    from curate.stages.dedupe.pairs import mirrored, pair_scores

    score, _, _ = pair_scores(thumbs, shapes, sizes, pairs, *t, values=values[0], has_value=values[1])
    if flip:
        n = len(thumbs)
        two = np.concatenate
        mp = np.stack([pairs[:, 0], pairs[:, 1] + n], 1)
        m_score, _, _ = pair_scores(
            two([thumbs, mirrored(thumbs, shapes)]), two([shapes, shapes]), two([sizes, sizes]), mp, *t,
            values=None if values[0] is None else two([values[0], mirrored(values[0], shapes)]),
            has_value=two([values[1], values[1]]),
        )  # fmt: skip
        score = np.maximum(score, m_score)
    return score


def _components(n: int, pairs: np.ndarray) -> np.ndarray:
    """Connected-component label (0..C-1) of each of ``n`` nodes given undirected ``pairs`` (union-find)."""
    parent = np.arange(n)

    def find(x: int) -> int:
        root = x
        while parent[root] != root:
            root = parent[root]
        while parent[x] != root:
            parent[x], x = root, parent[x]
        return root

    for a, b in pairs.tolist():
        ra, rb = find(a), find(b)
        if ra != rb:
            parent[max(ra, rb)] = min(ra, rb)
    roots = np.array([find(i) for i in range(n)]) if len(pairs) else parent
    return np.unique(roots, return_inverse=True)[1]


def annotate(
    table: pa.Table, items: pa.Table, res: dict[str, Any], *, exclude_duplicates: bool, stage: str
) -> tuple[pa.Table, dict[str, Any]]:
    """Write the ``dup_*`` columns for the rows that took part, exclude or flag duplicates; returns (table, stats).

    Column at a time (Arrow ``take`` over the old column followed by the new values), no Python object per row.
    """
    n = table.num_rows
    ids = items.column("sample_id").combine_chunks()
    order = items.column("order").to_numpy()
    comp, rep, score, kind, is_ref = res["comp"], res["rep"], res["score"], res["kind"], res["is_ref"]
    size = np.bincount(comp) if len(comp) else np.zeros(0, int)
    grouped = size[comp] > 1
    conflict = _conflicts(comp, grouped, items.column("label"))
    dup = grouped & (rep != np.arange(len(rep))) & ~is_ref
    inside = np.flatnonzero(order >= 0)
    src = np.arange(n)  # row -> its old value (< n) or the new value of the item (n + position in ``inside``)
    src[order[inside]] = n + np.arange(len(inside))
    rep_ids = ids.take(pa.array(rep[inside]))
    new = {
        "dup_group": pc.if_else(pa.array(grouped[inside]), rep_ids, pa.scalar(None, pa.string())),
        "is_duplicate": pa.array(dup[inside]),
        "dup_of": pc.if_else(pa.array(dup[inside]), rep_ids, pa.scalar(None, pa.string())),
        "dup_score": pa.array(score[inside].astype(np.float32), mask=~dup[inside]),
        "dup_kind": pa.array(kind[inside].astype(str), pa.string(), mask=~dup[inside]),
        "dup_label_conflict": pa.array(grouped[inside] & conflict[comp[inside]]),
    }
    take = pa.array(src)
    for name, typ in DUP_COLUMNS.items():
        old = table.column(name).cast(typ).combine_chunks() if name in table.column_names else pa.nulls(n, typ)
        arr = pa.concat_arrays([old, new[name].cast(typ)]).take(take)
        if name in table.column_names:
            table = table.set_column(table.schema.get_field_index(name), name, arr)
        else:
            table = table.append_column(name, arr)
    dups = np.zeros(n, bool)
    dups[order[inside]] = dup[inside]
    semantic = _row_kind_is(order, inside, kind, n, dups)
    if exclude_duplicates:  # a pair only a model saw gets its own reason: the user may want those back
        table = exclude(table, pa.array(dups & ~semantic), stage=stage, reason="duplicate")
        table = exclude(table, pa.array(semantic), stage=stage, reason="semantic_duplicate")
    kinds = kind[inside][dup[inside]].astype(str)
    stats = {
        "groups": int((size > 1).sum()),
        "largest_group": int(size.max()) if len(size) else 0,
        "duplicates": int(dups.sum()),
        "exact_duplicates": int((kinds == "exact").sum()),
        "near_duplicates": int((kinds == "near").sum()),
        "semantic_duplicates": int((kinds == "semantic").sum()),
        "label_conflict_groups": int(conflict.sum()),
        "label_conflict_rows": int(pc.sum(table.column("dup_label_conflict").cast(pa.int64())).as_py() or 0),
        "excluded": int(dups.sum()) if exclude_duplicates else 0,
        "near_pairs": res["edges"].num_rows,
        "cross_split": _cross_split(table, items, comp, grouped),
    }
    return table, stats


def _row_kind_is(order: np.ndarray, inside: np.ndarray, kind: np.ndarray, n: int, dups: np.ndarray) -> np.ndarray:
    """``(n,)`` bool: the row is a duplicate of kind ``semantic``."""
    out = np.zeros(n, bool)
    out[order[inside]] = kind[inside].astype(str) == "semantic"
    return out & dups


def _conflicts(comp: np.ndarray, grouped: np.ndarray, labels: pa.ChunkedArray) -> np.ndarray:
    """``(C,)`` bool: the component's grouped members carry more than one distinct non-null label."""
    n_comp = int(comp.max()) + 1 if len(comp) else 0
    codes = pc.dictionary_encode(labels.combine_chunks())
    idx = codes.indices.fill_null(0).to_numpy(zero_copy_only=False).astype(np.int64)
    valid = grouped & ~codes.is_null().to_numpy(zero_copy_only=False)
    pairs = np.unique(comp[valid].astype(np.int64) * (len(codes.dictionary) + 1) + idx[valid])
    per_comp = np.bincount(pairs // (len(codes.dictionary) + 1), minlength=n_comp)
    return per_comp > 1


def _cross_split(table: pa.Table, items: pa.Table, comp: np.ndarray, grouped: np.ndarray) -> dict[str, Any]:
    """Rows whose duplicate group also holds a row of another split (``split``, else ``origin_split``): leakage."""
    col = "split" if table.column("split").null_count < table.num_rows else "origin_split"
    order = items.column("order").to_numpy()
    split_of = table.column(col).take(pa.array(np.maximum(order, 0)))
    split_of = pc.if_else(pa.array(order >= 0), split_of, pa.scalar(None, pa.string()))
    codes = pc.dictionary_encode(split_of.combine_chunks() if isinstance(split_of, pa.ChunkedArray) else split_of)
    idx = codes.indices.fill_null(0).to_numpy(zero_copy_only=False).astype(np.int64)
    valid = np.flatnonzero(grouped & ~codes.is_null().to_numpy(zero_copy_only=False))
    k = len(codes.dictionary) + 1
    pairs = np.unique(comp[valid].astype(np.int64) * k + idx[valid])
    n_splits = np.bincount(pairs // k, minlength=int(comp.max()) + 1 if len(comp) else 0)
    spans = valid[n_splits[comp[valid]] > 1]
    names = codes.dictionary.to_pylist()
    out: dict[str, int] = {}
    if spans.size:  # keyed in the order the rows come (as the stats always were)
        u, first, counts = np.unique(idx[spans], return_index=True, return_counts=True)
        for j in np.argsort(first, kind="stable"):
            out[names[int(u[j])]] = int(counts[j])
    return {"column": col, "groups_spanning": int((n_splits > 1).sum()), "rows_with_dup_in_other_split": out}
