"""Report sections on what the checks found and what the stages learned: label issues, outliers and other
flags, the normalization histogram, pseudo-label rounds. Same section/block shapes as ``curate.report.collect``.

Columns read (each section is omitted, with a hint, when its columns or state are absent):

- label issues (``curate clean --find-mislabels``): ``is_label_issue``, ``label_quality`` (1 clean .. 0 issue; worst
  first), ``suggested_label``, ``suggested_confidence``, ``given_label`` (the label before a relabel; else ``label``).
- outliers (``--find-outliers``): ``is_outlier``, ``ood_score`` (0..1, higher = more atypical; worst first);
  low quality (``--find-low-quality``): ``is_low_quality``, ``low_quality_score`` (lower = worse),
  ``low_quality_reasons``; the classifier filter: ``is_filtered``, ``filter_score``, ``filter_predicted``.
- normalization: ``state/normalization.json`` of the newest normalize version (``mean``, ``std``, ``histogram``:
  channels x 256 pixel counts). Without a stored histogram one is estimated from a seeded sample of train images.
- pseudo-labels: ``state/pseudolabel.json`` of the newest pseudolabel version, ``{"chosen_round", "stopped",
  "rounds": [{"round", "accepted": {class: n}, "accepted_total", "revoked", "selection_change", "mean_confidence",
  "val_accuracy", "vs_round", "delta_accuracy", "delta_low", "delta_high", "kept", "pseudo_accuracy"}]}`` (fields a
  stage version did not write show empty), and the rows whose ``label_source`` starts with ``pseudo:``.
"""

from __future__ import annotations

import json
from collections import Counter
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from curate.report.collect import Context, Section, omitted, section
from curate.report.gallery import item, rows_of, sample_table, short_source, worst_table
from curate.schema import OK

#: Train images decoded when normalization.json holds no histogram (each shrunk to at most 256 px a side).
HIST_SAMPLE = 200


def _num(value: Any, fmt: str = ".3f") -> str:
    return "" if value is None else format(value, fmt) if isinstance(value, int | float) else str(value)


def _cellnum(value: Any) -> float | str:
    """A table cell: the number (the renderer rounds it to 4 significant digits) or '' when missing."""
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else ""


def _flagged_rows(ctx: Context, flag: str, score: str) -> pa.Table:
    """Rows where the boolean column ``flag`` is true (nulls: false), with ``score`` present (nulls when absent)."""
    t = ctx.table.filter(pc.fill_null(ctx.table.column(flag), False))
    return t if score in t.column_names else t.append_column(score, pa.nulls(t.num_rows, pa.float64()))


def label_issues(ctx: Context) -> Section:
    """Flagged label issues, worst (lowest label quality) first: given vs suggested label."""
    sid, title = "label-issues", "Label issues"
    if not ctx.col("is_label_issue"):
        return omitted(sid, title, "no label check ran (`curate clean --find-mislabels`)")
    flagged_rows = _flagged_rows(ctx, "is_label_issue", "label_quality")
    if flagged_rows.num_rows == 0:
        return omitted(sid, title, "the label check flagged no sample")
    cols = ("sample_id", "pack", "label", "given_label", "suggested_label", "suggested_confidence", "label_quality", "split")
    shown = rows_of(worst_table(flagged_rows, "label_quality", ctx.max_gallery), (*cols, "status", "source"))
    for r in shown:
        r["given"] = r["given_label"] or r["label"]
    items = [
        item(r, f"given: {r['given']}", f"suggested: {r['suggested_label']}", f"quality {_num(r['label_quality'], '.4f')}")
        for r in shown
    ]
    given = flagged_rows.column("label")
    if "given_label" in flagged_rows.column_names:  # relabeled rows carry the label they were given there
        given = pc.coalesce(flagged_rows.column("given_label"), given)
    suggested = flagged_rows.column("suggested_label") if "suggested_label" in flagged_rows.column_names else given
    pairs = Counter(zip(map(str, given.to_pylist()), map(str, suggested.to_pylist()), strict=True))
    sources = pc.fill_null(flagged_rows.column("label_source"), "") if "label_source" in flagged_rows.column_names else None
    relabeled = pc.sum(pc.starts_with(sources, "relabel")).as_py() or 0 if sources is not None else 0
    excluded = pc.sum(pc.not_equal(flagged_rows.column("status"), OK)).as_py() or 0
    table = [
        [
            i + 1,
            r["given"],
            r["suggested_label"],
            _cellnum(r["label_quality"]),
            _cellnum(r["suggested_confidence"]),
            r["split"],
            r["status"],
            short_source(r["source"]),
        ]
        for i, r in enumerate(shown)
    ]
    blocks = [
        {"kind": "gallery", "items": items, "title": f"the {len(shown)} worst of {flagged_rows.num_rows:,}"},
        {
            "kind": "table",
            "head": ["#", "given", "suggested", "label quality", "confidence", "split", "status", "source"],
            "rows": table,
        },
        {
            "kind": "table",
            "head": ["given", "suggested", "rows"],
            "rows": [[g, x, n] for (g, x), n in pairs.most_common(10)],
            "caption": "most common given -> suggested pairs",
        },
    ]
    intro = (
        f"{flagged_rows.num_rows:,} samples whose given label is unlikely under out-of-sample predictions, worst first; "
        f"{relabeled:,} relabeled, {excluded:,} excluded."
    )
    return section(sid, title, intro, blocks)


def flagged(ctx: Context) -> Section:
    """Outliers (worst first), low-quality images and what the classifier filter rejected."""
    sid, title = "outliers", "Outliers and other flags"
    kinds = [
        ("is_outlier", "ood_score", True, "outliers (out-of-distribution score, highest first)", "ood"),
        ("is_low_quality", "low_quality_score", False, "low quality (lowest score first)", "score"),
        ("is_filtered", "filter_score", False, "rejected by the classifier filter (lowest score first)", "score"),
    ]
    present = [k for k in kinds if ctx.col(k[0])]
    if not present:
        return omitted(sid, title, "no outlier or quality check ran (`curate clean --find-outliers --find-low-quality`)")
    blocks: list[dict[str, Any]] = []
    counts = []
    for flag, score, desc, label, short in present:
        rows = _flagged_rows(ctx, flag, score)
        counts.append(f"{label.split(' (')[0]} {rows.num_rows:,}")
        if rows.num_rows == 0:
            continue
        cols = ("sample_id", "pack", "label", "status", score, "low_quality_reasons", "filter_predicted")
        shown = rows_of(worst_table(rows, score, ctx.max_gallery, descending=desc), cols)
        items = [
            item(
                r,
                r["label"],
                f"{short} {_num(r[score])}",
                r["low_quality_reasons"] or r["filter_predicted"],
                "excluded" if r["status"] != OK else "",
            )
            for r in shown
        ]
        blocks.append({"kind": "gallery", "title": f"{label}: {len(shown)} of {rows.num_rows:,}", "items": items})
    return section(sid, title, "Flagged samples: " + ", ".join(counts) + ".", blocks)


def _estimate_histogram(ctx: Context, vid: str, channels: int, split: str) -> tuple[list[list[int]], int]:
    """Pixel histogram (channels x 256) of a seeded sample of the included ``split`` rows of ``vid``."""
    from PIL import Image

    from curate.images import decode_rgb_or_l

    t = ctx.ws.samples(vid, columns=["sample_id", "pack", "status", "split"])
    mask = pc.and_(pc.equal(t.column("status"), OK), pc.equal(pc.fill_null(t.column("split"), ""), split))
    pool = t.filter(pc.fill_null(pc.and_(mask, pc.is_valid(t.column("pack"))), False))
    rows = rows_of(sample_table(pool, HIST_SAMPLE, ctx.seed), ("sample_id", "pack"))
    blobs = ctx.ws.blobs.get_many([r["sample_id"] for r in rows], [r["pack"] for r in rows])
    hist = [[0] * 256 for _ in range(channels)]
    used = 0
    for r in rows:
        try:
            im = decode_rgb_or_l(blobs[r["sample_id"]]).convert("L" if channels == 1 else "RGB")
        except Exception:  # noqa: BLE001 - an undecodable image is skipped; the estimate says how many it used
            continue
        im.thumbnail((256, 256), Image.BILINEAR)  # the histogram's shape survives, the cost does not
        counts = im.histogram()
        for ch in range(channels):
            hist[ch] = [a + b for a, b in zip(hist[ch], counts[ch * 256 : (ch + 1) * 256], strict=True)]
        used += 1
    return hist, used


def _stage_state(ctx: Context, stage: str, name: str, sid: str, title: str) -> tuple[str, dict[str, Any]] | Section:
    """``(version, parsed JSON)`` of ``state/<name>`` of the newest ``stage`` version in the lineage, or the omitted
    section that says why there is none (no such stage, or a missing or unreadable file)."""
    vid = ctx.latest(stage)
    if vid is None:
        return omitted(sid, title, f"no {stage} stage in the lineage (`curate {stage}`)")
    path = ctx.ws.state_path(vid, name)
    try:
        doc = json.loads(path.read_text())
    except (OSError, ValueError):
        doc = None
    if not isinstance(doc, dict):
        return omitted(sid, title, f"{path} is missing or unreadable")
    return vid, doc


def normalization(ctx: Context) -> Section:
    """Per-channel mean/std of the train split and the pixel-value histogram."""
    from curate.report import plots

    sid, title = "normalization", "Normalization"
    found = _stage_state(ctx, "normalize", "normalization.json", sid, title)
    if not isinstance(found, tuple):
        return found
    vid, norm = found
    channels, split = int(norm.get("channels") or 1), str(norm.get("split") or "train")
    hist, note = norm.get("histogram"), "exact, over every pixel"
    if not hist:
        hist, used = _estimate_histogram(ctx, vid, channels, split)
        note = f"estimated from {used} sampled {split} images (no histogram stored)"
    pairs = [
        ("version", vid),
        ("split", split),
        ("channels", channels),
        ("images", norm.get("images", "?")),
        ("mean (0..1)", ", ".join(f"{v:.4f}" for v in norm.get("mean", []))),
        ("std (0..1)", ", ".join(f"{v:.4f}" for v in norm.get("std", []))),
        ("histogram", note),
    ]
    blocks: list[dict[str, Any]] = [{"kind": "kv", "pairs": pairs}]
    if any(sum(h) for h in hist):
        blocks.append({"kind": "plot", "uri": plots.histogram(hist, norm.get("mean"), norm.get("std")), "alt": "pixel histogram"})
    return section(sid, title, "Statistics from included train rows only; every export and checkpoint carries them.", blocks)


def _round(i: int, r: dict[str, Any]) -> dict[str, Any]:
    """One round of pseudolabel.json with every field of the documented type (None where it is not), so a file
    written by an older or newer pseudolabel stage renders instead of failing."""

    def num(v: Any) -> float | None:
        return float(v) if isinstance(v, int | float) and not isinstance(v, bool) else None

    acc = r.get("accepted") if isinstance(r.get("accepted"), dict) else {}
    acc = {str(k): int(v) for k, v in acc.items() if num(v) is not None}
    total = num(r.get("accepted_total"))
    return {
        "round": int(r["round"]) if num(r.get("round")) is not None else i + 1,
        "accepted": acc,
        "accepted_total": int(total) if total is not None else sum(acc.values()),
        "revoked": int(num(r.get("revoked")) or 0),
        **{k: num(r.get(k)) for k in _ROUND_NUMBERS},
        "kept": r.get("kept") if isinstance(r.get("kept"), bool) else None,
    }


_ROUND_NUMBERS = ("selection_change", "mean_confidence", "val_accuracy", "vs_round", "delta_accuracy", "delta_low",
                  "delta_high", "pseudo_accuracy")  # fmt: skip


def _round_cells(r: dict[str, Any]) -> list[Any]:
    """One row of the rounds table: what the round accepted, how its model compared on val, whether it was kept."""
    acc = r.get("accepted") or {}
    top = ", ".join(f"{k} {v}" for k, v in sorted(acc.items(), key=lambda kv: (-kv[1], kv[0]))[:8])
    vs = ""
    if r.get("delta_accuracy") is not None:
        ci = f"[{_num(r.get('delta_low'), '+.3f')}, {_num(r.get('delta_high'), '+.3f')}]"
        vs = f"{r['delta_accuracy']:+.3f} vs round {int(r['vs_round'] or 0)} {ci}"
    kept = {True: "yes", False: "no (significantly worse)", None: ""}[r.get("kept")]
    change = _num(r.get("selection_change"), ".1%") if r.get("round") else ""
    return [r.get("round"), r.get("accepted_total"), r.get("revoked"), change, _num(r.get("mean_confidence")),
            _num(r.get("val_accuracy")), vs, kept, _num(r.get("pseudo_accuracy")), top + (" ..." if len(acc) > 8 else "")]  # fmt: skip


def pseudolabels(ctx: Context) -> Section:
    """Pseudo-label rounds (accepted per class, revoked, accuracies) and a sample of pseudo-labeled images."""
    from curate.report import plots

    sid, title = "pseudolabel", "Pseudo-label rounds"
    found = _stage_state(ctx, "pseudolabel", "pseudolabel.json", sid, title)
    if not isinstance(found, tuple):
        return found
    vid, doc = found
    rounds = doc.get("rounds") or []
    rounds = [_round(i, r) for i, r in enumerate(rounds if isinstance(rounds, list) else []) if isinstance(r, dict)]
    if not rounds:
        return omitted(sid, title, f"{vid} recorded no rounds")
    table = [_round_cells(r) for r in rounds]
    head = ["round", "accepted", "revoked", "selection changed", "mean confidence", "val accuracy",
            "paired val accuracy delta [90% CI]", "kept", "pseudo-label accuracy", "accepted per class"]  # fmt: skip
    blocks: list[dict[str, Any]] = [
        {"kind": "table", "head": head, "rows": table},
        {"kind": "plot", "uri": plots.pseudo_rounds(rounds), "alt": "pseudo-label rounds"},
    ]
    if ctx.col("label_source"):
        mask = pc.starts_with(pc.fill_null(ctx.table.column("label_source"), ""), "pseudo:")
        pseudo = ctx.table.filter(mask)
        shown = rows_of(sample_table(pseudo, ctx.max_gallery, ctx.seed), ("sample_id", "pack", "label", "label_source"))
        if shown:
            items = [item(r, r["label"], r["label_source"]) for r in shown]
            blocks.append({"kind": "gallery", "title": f"pseudo-labeled samples: {len(shown)} of {pseudo.num_rows:,}", "items": items})
    chosen, stopped = doc.get("chosen_round", doc.get("best_round")), doc.get("stopped")
    intro = f"{len(rounds)} rounds of {vid}" + (f"; round {chosen} committed" if chosen is not None else "")
    intro += (f"; stopped: {stopped}" if stopped else "") + ". Val and test never get pseudo-labels."
    return section(sid, title, intro, blocks)
