"""``curate clean --review-out``: the flagged rows of a clean version as a review file (HTML with thumbnails, or CSV)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import pyarrow as pa

if TYPE_CHECKING:
    from curate.workspace import Workspace


def write_clean_review(ws: Workspace, vid: str, review: list[dict[str, Any]], path: Path) -> dict[str, Any]:
    """The review file of this run (or, when the version was cached, rebuilt from its columns)."""
    from curate.review import write_review

    table = ws.samples(vid)
    if not review:
        review = review_from_columns(table)
    cols = table.column_names
    get = {c: table.column(c).to_pylist() for c in ("sample_id", "source", "label", "pack", "given_label", "split") if c in cols}
    rows = []
    for r in review:
        p = r["row"]
        given = (get.get("given_label") or [None] * table.num_rows)[p] or get["label"][p]
        rows.append({"sample_id": get["sample_id"][p], "source": get["source"][p], "label": given, "split": get["split"][p],
                     "issue": r["issue"], "score": r["score"], "suggested_label": r.get("suggested_label")})  # fmt: skip
    packs = {get["sample_id"][r["row"]]: get["pack"][r["row"]] for r in review}

    def blobs(ids: list[str]) -> dict[str, bytes]:
        return ws.blobs.get_many(ids, [packs[i] for i in ids])

    return write_review(
        path, pa.Table.from_pylist(rows), blobs=blobs, title=f"curate clean: {ws.location} version {vid}", columns=("split",)
    )


def review_from_columns(table: pa.Table) -> list[dict[str, Any]]:
    """Review rows from a committed clean version's columns (a cached run has no in-memory review)."""
    out: list[dict[str, Any]] = []
    cols = table.column_names

    def col(name: str) -> list[Any]:
        return table.column(name).to_pylist() if name in cols else [None] * table.num_rows

    for p, (li, q, sug, oo, osc, lq, lqs, why) in enumerate(
        zip(col("is_label_issue"), col("label_quality"), col("suggested_label"), col("is_outlier"), col("ood_score"),
            col("is_low_quality"), col("low_quality_score"), col("low_quality_reasons"), strict=True)
    ):  # fmt: skip
        if li:
            out.append({"row": p, "issue": "label_issue", "score": q, "suggested_label": sug})
        if oo:
            out.append({"row": p, "issue": "outlier", "score": 1 - osc})
        if lq:
            out.append({"row": p, "issue": f"low_quality: {why}", "score": lqs})
    return out
