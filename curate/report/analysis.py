"""Two error-analysis sections of the report: bias / variance / data mismatch of a run, and errors counted by cause.

- ``bias_variance``: the error ladder human-level -> train -> train-dev -> dev (val) -> test of the run's
  ``metrics.json`` (``errors``, written by ``curate train``; older runs: 1 - accuracy of the splits they scored),
  each rung with its gap to the one above, the largest of avoidable bias / variance / data mismatch highlighted
  with the usual next steps (``curate.learn.gaps``).
- ``causes``: rows tagged with causes (``curate.review.tags``: a ``--tags`` CSV and the version's ``review_tags``) counted
  per cause and per class, the top cause highlighted: the cause to fix first.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from curate.report.collect import Context, Section, omitted, section

#: Beyond this many classes the cause table names the top classes of each cause instead of a column per class.
MAX_CLASS_COLUMNS = 12
LEVELS = {"human": "human-level", "train": "train", "train_dev": "train-dev", "val": "dev (val)", "test": "test"}


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.2f}%"


def run_errors(info: dict[str, Any]) -> dict[str, float | None]:
    """split -> error of a run's ``metrics.json`` (``errors``, else 1 - the accuracy of each scored split)."""
    if info.get("errors"):
        return dict(info["errors"])
    splits = info.get("splits") or {}
    return {s: 1.0 - m["accuracy"] for s, m in splits.items() if isinstance(m.get("accuracy"), int | float)}


def bias_variance(ctx: Context, folder: Path | None, human_error: float | None, why: str = "") -> Section:
    """The error ladder of the run in ``folder`` with its gaps; the largest competing gap is highlighted."""
    from curate.learn.gaps import diagnose
    from curate.report.training import run_info

    sid, title = "bias-variance", "Bias, variance, data mismatch"
    if folder is None:
        return omitted(sid, title, why or "no training run (`curate train`)")
    errors = run_errors(run_info(folder) or {})
    if errors.get("train") is None:
        return omitted(sid, title, f"run {folder} has no training error in metrics.json (train it again with this curate)")
    diag = diagnose(errors, human_error)
    gap_into = {g["to"]: g for g in diag["gaps"] if g["value"] is not None}
    rows, mark = [], []
    for rung, err in diag["errors"].items():
        if err is None:
            continue
        g = gap_into.get(rung)
        if g is not None and g["name"] == diag["largest"]:
            mark.append(len(rows))
        gap_text = f"{g['name']} ({LEVELS[g['from']]} -> {LEVELS[rung]})" if g else ""
        rows.append([LEVELS[rung], _pct(err), gap_text, _pct(g["value"]) if g else "", g["advice"] if g else ""])
    blocks: list[dict[str, Any]] = [
        {"kind": "table", "head": ["level", "error", "gap", "gap size", "usual next steps"], "rows": rows, "mark": mark,
         "caption": "error = 1 - accuracy; each gap is the error added from the level above"},  # fmt: skip
    ]
    if diag["largest"]:
        g = next(g for g in diag["gaps"] if g["name"] == diag["largest"])
        lead = f"Largest gap: {g['name']} ({LEVELS[g['from']]} -> {LEVELS[g['to']]}, +{_pct(g['value'])}). Next: {g['advice']}."
    else:
        lead = "No gap stands out: every known gap is zero or negative."
    blocks.append({"kind": "text", "text": lead})
    intro = f"Run {folder}." + "".join(f" Note: {n}." for n in diag["notes"])
    return {**section(sid, title, intro, blocks), "diagnosis": diag}


def causes(ctx: Context, tags: dict[str, list[str]], source: str) -> Section:
    """Tagged rows counted per cause and per class (``tags``: sample_id -> causes; ``source`` says where they came from)."""
    from curate.review.tags import cause_counts

    sid, title = "causes", "Error analysis by cause"
    if not tags:
        return omitted(sid, title, "no tagged rows (`curate report --tags FILE` with sample_id or source and cause columns)")
    labels = dict(zip(ctx.table.column("sample_id").to_pylist(), ctx.table.column("label").to_pylist(), strict=True))
    counts = cause_counts(tags, labels)
    classes = counts["classes"]
    wide = len(classes) <= MAX_CLASS_COLUMNS
    head = ["cause", "rows", "share of tagged"] + (classes if wide else ["classes (most rows first)"])
    rows: list[list[Any]] = []
    for r in counts["causes"]:
        per = r["per_class"]
        most = sorted(per.items(), key=lambda kv: (-kv[1], kv[0]))[:5]
        tail = [per.get(c, 0) for c in classes] if wide else [", ".join(f"{c} {n}" for c, n in most)]
        rows.append([r["cause"], r["rows"], _pct(r["share"]), *tail])
    if wide:
        totals = [sum(1 for s in tags if (labels.get(s) or "(unlabeled)") == c) for c in classes]
        rows.append(["all tagged rows", counts["tagged"], "100.00%", *totals])
    top = counts["causes"][0]
    ties = [r["cause"] for r in counts["causes"][1:] if r["rows"] == top["rows"]]
    lead = (
        f"Top cause: {top['cause']}{' (tied with ' + ', '.join(ties) + ')' if ties else ''}: {top['rows']} of "
        f"{counts['tagged']} tagged rows ({_pct(top['share'])}). Fixing it removes the largest share of these errors: start there."
    )
    blocks = [
        {"kind": "table", "head": head, "rows": rows, "mark": list(range(1 + len(ties))),
         "caption": "a row with several causes counts under each; per class: the rows' labels in this version"},  # fmt: skip
        {"kind": "text", "text": lead},
    ]
    return {**section(sid, title, f"{counts['tagged']} tagged rows, from {source}.", blocks), "counts": counts}
