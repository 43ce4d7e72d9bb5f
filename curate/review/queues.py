"""The review desk's queues: which rows of a version a person looks at, worst first, from columns stages wrote.

| queue | rows | score (lower = worse, shown first) | suggestion |
| --- | --- | --- | --- |
| label_issues | ``is_label_issue`` (``curate clean --find-mislabels``) | ``label_quality`` | ``suggested_label`` |
| outliers | ``is_outlier`` (``--find-outliers``) | ``1 - ood_score`` | none |
| low_quality | ``is_low_quality`` (``--find-low-quality``) | ``low_quality_score`` | none |
| duplicates | ``is_duplicate`` (``curate dedupe``), its ``dup_group`` beside it | conflicts first | the representative's label |
| errors:RUN | a training run's most confident mistakes (``metrics.json`` ``splits.*.worst``) | ``p_true`` | the predicted class |

The first three come from the same selection as clean's review file (``curate.stages.clean.reviewfile``), so the desk and
the file always agree on what was flagged.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pyarrow as pa

from curate.errors import CurateError, UsageError

QUEUES = ("label_issues", "outliers", "duplicates", "low_quality")
_ISSUE = {"label_issues": "label_issue", "outliers": "outlier", "low_quality": "low_quality"}
_NEEDS = {"label_issues": "is_label_issue", "outliers": "is_outlier", "low_quality": "is_low_quality", "duplicates": "dup_group"}
_HINTS = {
    "label_issues": "run `curate clean --find-mislabels` first",
    "outliers": "run `curate clean --find-outliers` first",
    "low_quality": "run `curate clean --find-low-quality` first",
    "duplicates": "run `curate dedupe` first",
}
_FIELDS = ("sample_id", "source", "label", "split", "status", "reason", "pack")


def check_queue(queue: str) -> str:
    """Return ``queue`` when it names a queue (``errors:RUN`` needs a run folder after the colon).

    Raises:
        UsageError: an unknown queue name.
    """
    if queue in QUEUES or (queue.startswith("errors:") and queue[len("errors:") :].strip()):
        return queue
    raise UsageError(f"unknown review queue {queue!r}; use one of {', '.join(QUEUES)} or errors:RUN (a `curate train` run folder)")


def _rows(table: pa.Table) -> list[dict[str, Any]]:
    cols = {c: table.column(c).to_pylist() if c in table.column_names else [None] * table.num_rows for c in _FIELDS}
    return [{c: cols[c][i] for c in _FIELDS} for i in range(table.num_rows)]


def select(table: pa.Table, queue: str, *, vid: str = "", limit: int = 500) -> list[dict[str, Any]]:
    """The queue's rows of ``table``, worst first, at most ``limit``.

    Returns:
        Items ``{"sample_id", "source", "label" (the given label), "split", "status", "reason", "pack",
        "suggested_label" (or None), "score" (float or None), "issue", "group": [member rows] (duplicates only)}``.

    Raises:
        CurateError: the version lacks the columns of the queue (the hint names the command that writes them), or
            the run of ``errors:RUN`` cannot be read.
    """
    check_queue(queue)
    if queue.startswith("errors:"):
        items = _errors(table, Path(queue[len("errors:") :].strip()), vid)
    else:
        if _NEEDS[queue] not in table.column_names:
            raise CurateError(f"version {vid}: no {_NEEDS[queue]} column for the {queue} queue", hint=_HINTS[queue])
        items = _duplicates(table) if queue == "duplicates" else _flagged(table, _ISSUE[queue])
    # stable: equal scores keep the table order; rows without a score last
    items.sort(key=lambda it: (it["score"] is None or it["score"] != it["score"], it["score"] or 0.0))
    return items[:limit]


def _flagged(table: pa.Table, issue: str) -> list[dict[str, Any]]:
    from curate.stages.clean.reviewfile import review_from_columns

    rows = _rows(table)
    given = table.column("given_label").to_pylist() if "given_label" in table.column_names else [None] * table.num_rows
    out = []
    for r in review_from_columns(table):
        if not str(r["issue"]).startswith(issue):
            continue
        row = dict(rows[r["row"]])
        # clean's relabel moved the original to given_label: the reviewer judges the label that was given
        row["label"] = given[r["row"]] or row["label"]
        row.update(suggested_label=r.get("suggested_label"), score=r["score"], issue=r["issue"], group=[])
        out.append(row)
    return out


def _duplicates(table: pa.Table) -> list[dict[str, Any]]:
    rows = _rows(table)
    cols = table.column_names
    group = table.column("dup_group").to_pylist()
    is_dup = table.column("is_duplicate").to_pylist() if "is_duplicate" in cols else [None] * len(rows)
    score = table.column("dup_score").to_pylist() if "dup_score" in cols else [None] * len(rows)
    kind = table.column("dup_kind").to_pylist() if "dup_kind" in cols else [None] * len(rows)
    members: dict[str, list[int]] = {}
    for i, g in enumerate(group):
        if g is not None:
            members.setdefault(g, []).append(i)
    out = []
    for i, g in enumerate(group):
        if g is None or not is_dup[i]:
            continue
        others = [rows[j] | {"representative": rows[j]["sample_id"] == g} for j in members[g] if j != i]
        rep_label = next((m["label"] for m in others if m["representative"]), None)
        conflict = any(m["label"] != rows[i]["label"] for m in others)
        sim = score[i] if score[i] is not None else 0.0
        out.append(
            rows[i]
            | {
                "suggested_label": rep_label if rep_label != rows[i]["label"] else None,
                # label conflicts first (below 0), then the most certain duplicates
                "score": (-1.0 if conflict else 0.0) - float(sim) / 10,
                "issue": f"duplicate ({kind[i] or 'near'}{', label conflict' if conflict else ''})",
                "group": others,
            }
        )
    return out


def _errors(table: pa.Table, run: Path, vid: str) -> list[dict[str, Any]]:
    from curate.report.training import run_info

    if not run.is_dir():
        raise CurateError(f"training run {run} does not exist", hint="pass the folder `curate train --out` wrote: --queue errors:RUN")
    info = run_info(run)
    if info is None:
        raise CurateError(f"{run} is not a training run (no metrics.json or meta_*.json)")
    worst = [w for s in (info.get("splits") or {}).values() for w in (s.get("worst") or [])]
    if not worst:
        raise CurateError(f"{run}: metrics.json lists no worst errors", hint="train to the end (`curate train`) to score val/test")
    pos = {sid: i for i, sid in enumerate(table.column("sample_id").to_pylist())}
    rows = _rows(table)
    out, seen = [], set()
    for w in worst:
        p = pos.get(w["sample_id"])
        if p is None or w["sample_id"] in seen:
            continue  # trained on another version: only its rows that this version has
        seen.add(w["sample_id"])
        out.append(rows[p] | {"suggested_label": w["predicted"], "score": float(w["p_true"]), "issue": "error", "group": []})
    if not out:
        trained = info.get("dataset_version")
        raise CurateError(f"{run}: none of its worst errors is in version {vid}", hint=f"it was trained on {trained}")
    return out
