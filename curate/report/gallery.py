"""Galleries of the report: which samples to show (sampled or worst first) and their embedded thumbnails.

A gallery item is a plain dict ``{"sample_id", "pack", "caption": [str, ...]}``; ``fill_thumbnails`` adds ``uri``
(a ``data:`` URI), ``w`` and ``h``, or ``missing`` (why there is no picture). Items are collected for every section
first and thumbnailed in one pass, so each blob pack is read once however many sections show its images.

Sampling is deterministic: rows are ordered by ``sha256("{seed}:{sample_id}")``, a key that does not depend on the
order of the table, so the same workspace and seed always give the same page.
"""

from __future__ import annotations

import hashlib
import heapq
from collections import defaultdict
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

import pyarrow as pa
import pyarrow.compute as pc

if TYPE_CHECKING:
    from curate.workspace import Workspace

#: Longest side of a thumbnail in px: a few KB each, so hundreds of them keep the page far below its size budget.
THUMB = 96
#: Members of one duplicate group shown side by side; the rest are counted.
GROUP_MEMBERS = 8

Item = dict[str, Any]


def seeded_key(seed: int, sample_id: str) -> bytes:
    """The sort key of a sample in a seeded random order (independent of row order)."""
    return hashlib.sha256(f"{seed}:{sample_id}".encode()).digest()


def sample_table(table: pa.Table, n: int, seed: int) -> pa.Table:
    """At most ``n`` rows of ``table`` in the seeded random order (only ``sample_id`` is read into Python)."""
    ids = table.column("sample_id").to_pylist()
    pick = heapq.nsmallest(max(n, 0), range(len(ids)), key=lambda i: seeded_key(seed, ids[i]))
    return table.take(pa.array(pick, pa.int64()))


def worst_table(table: pa.Table, column: str, n: int, *, descending: bool = False) -> pa.Table:
    """The ``n`` rows with the lowest (or highest) ``column``, nulls last, ties by ``sample_id``."""
    order = [(column, "descending" if descending else "ascending"), ("sample_id", "ascending")]
    idx = pc.sort_indices(table, sort_keys=order)  # nulls sort last by default
    return table.take(idx[: max(n, 0)])


def rows_of(table: pa.Table, columns: Iterable[str]) -> list[dict[str, Any]]:
    """The rows of ``table`` as dicts of the given columns (absent columns read as None)."""
    names = [c for c in columns if c in table.column_names]
    cols = {c: table.column(c).to_pylist() for c in names}
    missing = [c for c in columns if c not in table.column_names]
    return [{**{c: cols[c][i] for c in names}, **dict.fromkeys(missing)} for i in range(table.num_rows)]


def item(row: dict[str, Any], *caption: Any) -> Item:
    """A gallery item for ``row`` (``sample_id``, ``pack``) with caption lines (None and '' lines dropped)."""
    return {"sample_id": row["sample_id"], "pack": row.get("pack"), "caption": [str(c) for c in caption if c not in (None, "")]}


def short_source(source: str | None, keep: int = 40) -> str:
    """The tail of a path or URL, short enough for a caption."""
    if not source:
        return ""
    tail = source.rstrip("/").rsplit("/", 1)[-1] or source
    return tail if len(tail) <= keep else "..." + tail[-(keep - 3) :]


def fill_thumbnails(
    ws: Workspace, items: Iterable[Item], *, thumb: int = THUMB, advance: Callable[[int], None] | None = None
) -> dict[str, int]:
    """Give every item its thumbnail (``uri``, ``w``, ``h``) or a ``missing`` reason, reading each pack once.

    Args:
        ws: the workspace (its ``blobs`` store holds the original bytes).
        items: gallery items; the same sample in several sections is decoded once.
        thumb: the thumbnail box in px.
        advance: called with the number of samples done after each pack (a progress bar).

    Returns:
        ``{"images": thumbnails made, "failed": samples without a picture}``.
    """
    from curate.review.file import thumbnail_uri

    items = list(items)
    by_pack: dict[str, set[str]] = defaultdict(set)
    for it in items:
        if it.get("pack"):
            by_pack[it["pack"]].add(it["sample_id"])
    made: dict[str, tuple[str, int, int] | str] = {}
    for pack in sorted(by_pack):
        ids = by_pack[pack]
        try:
            got = ws.blobs.read_pack(pack, ids)
            blobs = dict(zip(got.column("sample_id").to_pylist(), got.column("data").to_pylist(), strict=True))
        except Exception:  # noqa: BLE001 - a missing or broken pack costs its thumbnails, not the report
            blobs = {}
        for sid in sorted(ids):
            data = blobs.get(sid)
            if data is None:
                made[sid] = "image bytes not found"
                continue
            try:
                made[sid] = thumbnail_uri(data, thumb)
            except Exception:  # noqa: BLE001 - corrupt files are exactly what the excluded gallery shows
                made[sid] = "cannot be decoded"
        if advance:
            advance(len(ids))
    images = failed = 0
    for it in items:
        got = made.get(it["sample_id"], "no image bytes stored")
        if isinstance(got, tuple):
            it["uri"], it["w"], it["h"] = got
            images += 1
        else:
            it["missing"] = got
            failed += 1
    return {"images": images, "failed": failed}
