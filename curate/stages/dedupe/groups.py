"""Duplicate groups from signatures: exact groups, near edges, components, representatives, table columns.

Driver-side work of ``curate.stages.dedupe`` over small arrays (one signature per image); the pixel-level
parts are in ``curate.stages.dedupe.search`` / ``curate.stages.dedupe.verify``.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import pyarrow as pa

from curate.schema import exclude
from curate.stages.dedupe.signatures import thumbs_array, value_thumbs

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
        sigs: ``curate.stages.dedupe.signatures.SIGNATURE_SCHEMA`` rows aligned with ``items`` (no errors).
        ref_ids: ``--against`` reference sample_ids (always preferred as representative, never compared
            with each other).
        semantic: a ``curate.stages.dedupe.semantic.Semantic`` (embedding pairs over item indices, unit vectors),
            or None. Its pairs join the components; a member linked to its representative only through them is
            kind ``semantic``, its score the cosine to the representative.

    Returns:
        dict with per-item arrays ``comp`` (component id), ``rep`` (item index of the representative), ``score``,
        ``kind``, plus ``edges`` (a pa.Table of near pairs) and ``timings``.
    """
    from curate.stages.dedupe.search import near_pairs

    t0 = time.perf_counter()
    m = items.num_rows
    ids = items.column("sample_id").to_pylist()
    is_ref = np.array([i in ref_ids for i in ids], bool)
    hashes = sigs.column("pixel_hash").to_pylist()
    _, first, u_of = np.unique(np.array(hashes, dtype=object).astype("S16"), return_index=True, return_inverse=True)
    nu = len(first)
    firsts = sigs.take(pa.array(first))
    thumbs, shapes = thumbs_array(firsts)
    if firsts.column("thumb_v").null_count < nu:
        values, has_value = value_thumbs(firsts, thumbs)
    else:  # all gray: no second (N, 32, 32) array (1 GB at a million images)
        values, has_value = None, np.zeros(nu, bool)
    sizes = np.stack([sigs.column("height").to_numpy(), sigs.column("width").to_numpy()], 1)[first].astype(np.int64)
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
        metric = -sigs.column("sharpness").to_numpy(zero_copy_only=False).astype(np.float64)
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
    edges = _edges(ids, first, pairs, scores, semantic)
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


def _edges(ids: list[str], first: np.ndarray, pairs: np.ndarray, scores: np.ndarray, semantic: Any) -> pa.Table:
    """The pairs found (``dup_pairs.parquet``): ``a``, ``b``, ``score``, ``signal`` (``pixel`` or ``semantic``)."""
    a = [ids[first[i]] for i in pairs[:, 0]]
    b = [ids[first[j]] for j in pairs[:, 1]]
    sc, signal = [scores], ["pixel"] * len(pairs)
    if semantic is not None and len(semantic.pairs):
        a += [ids[i] for i in semantic.pairs[:, 0]]
        b += [ids[j] for j in semantic.pairs[:, 1]]
        sc.append(semantic.scores)
        signal += ["semantic"] * len(semantic.pairs)
    score = np.concatenate(sc).astype(np.float32)
    return pa.table({"a": pa.array(a, pa.string()), "b": pa.array(b, pa.string()), "score": pa.array(score, pa.float32()),
                     "signal": pa.array(signal, pa.string())})  # fmt: skip


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
    """Write the ``dup_*`` columns for the rows that took part, exclude or flag duplicates; returns (table, stats)."""
    n = table.num_rows
    ids = items.column("sample_id").to_pylist()
    labels = items.column("label").to_pylist()
    order = items.column("order").to_numpy()
    comp, rep, score, kind, is_ref = res["comp"], res["rep"], res["score"], res["kind"], res["is_ref"]
    size = np.bincount(comp) if len(comp) else np.zeros(0, int)
    grouped = size[comp] > 1
    conflict_comp: set[int] = set()
    seen: dict[int, str] = {}
    for c, lab in zip(comp[grouped].tolist(), [lab for lab, g in zip(labels, grouped, strict=True) if g], strict=True):
        if lab is not None and seen.setdefault(c, lab) != lab:
            conflict_comp.add(c)
    cols: dict[str, list[Any]] = {}
    for name, typ in DUP_COLUMNS.items():
        cols[name] = table.column(name).cast(typ).to_pylist() if name in table.column_names else [None] * n
    dup_mask = [False] * n
    for i in np.flatnonzero(order >= 0).tolist():
        row = int(order[i])
        g = bool(grouped[i])
        dup = g and int(rep[i]) != i and not is_ref[i]
        dup_mask[row] = dup
        cols["dup_group"][row] = ids[rep[i]] if g else None
        cols["is_duplicate"][row] = dup
        cols["dup_of"][row] = ids[rep[i]] if dup else None
        cols["dup_score"][row] = float(score[i]) if dup else None
        cols["dup_kind"][row] = str(kind[i]) if dup else None
        cols["dup_label_conflict"][row] = g and int(comp[i]) in conflict_comp
    for name, typ in DUP_COLUMNS.items():
        arr = pa.array(cols[name], typ)
        if name in table.column_names:
            table = table.set_column(table.schema.get_field_index(name), name, arr)
        else:
            table = table.append_column(name, arr)
    dups = np.array(dup_mask, bool)
    semantic = dups & (np.array(cols["dup_kind"], object) == "semantic")
    if exclude_duplicates:  # a pair only a model saw gets its own reason: the user may want those back
        table = exclude(table, pa.array(dups & ~semantic), stage=stage, reason="duplicate")
        table = exclude(table, pa.array(semantic), stage=stage, reason="semantic_duplicate")
    kinds = [str(k) for k, d in zip(kind, order, strict=True) if d >= 0 and dup_mask[int(d)]]
    stats = {
        "groups": int((size > 1).sum()),
        "largest_group": int(size.max()) if len(size) else 0,
        "duplicates": int(dups.sum()),
        "exact_duplicates": kinds.count("exact"),
        "near_duplicates": kinds.count("near"),
        "semantic_duplicates": kinds.count("semantic"),
        "label_conflict_groups": len(conflict_comp),
        "label_conflict_rows": int(sum(1 for v in cols["dup_label_conflict"] if v)),
        "excluded": int(dups.sum()) if exclude_duplicates else 0,
        "near_pairs": res["edges"].num_rows,
        "cross_split": _cross_split(table, items, comp, grouped),
    }
    return table, stats


def _cross_split(table: pa.Table, items: pa.Table, comp: np.ndarray, grouped: np.ndarray) -> dict[str, Any]:
    """Rows whose duplicate group also holds a row of another split (``split``, else ``origin_split``): leakage."""
    col = "split" if table.column("split").null_count < table.num_rows else "origin_split"
    order = items.column("order").to_numpy()
    values = table.column(col).to_pylist()
    split_of = [values[o] if o >= 0 else None for o in order.tolist()]
    splits_in: dict[int, set[str]] = {}
    for c, s, g in zip(comp.tolist(), split_of, grouped.tolist(), strict=True):
        if g and s is not None:
            splits_in.setdefault(c, set()).add(s)
    out: dict[str, int] = {}
    for c, s, g in zip(comp.tolist(), split_of, grouped.tolist(), strict=True):
        if g and s is not None and len(splits_in[c]) > 1:
            out[s] = out.get(s, 0) + 1
    return {"column": col, "groups_spanning": sum(1 for v in splits_in.values() if len(v) > 1), "rows_with_dup_in_other_split": out}
