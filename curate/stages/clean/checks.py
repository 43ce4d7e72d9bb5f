"""Clean: label errors (cleanlab on k-fold out-of-sample predictions), outliers, low-quality images.

Every decision is a column; what the stage *does* with it is ``action``:

| column | meaning |
| --- | --- |
| is_label_issue | cleanlab ``find_label_issues`` (``method``) on out-of-sample probabilities |
| label_quality | probability of the given label under a model that never saw the row (1 clean .. 0 issue) |
| suggested_label / suggested_confidence | the out-of-sample argmax class and its probability |
| ood_score / is_outlier | 0..1, higher = more atypical: (1 - max out-of-sample probability) / (1 - 1/K); flag > threshold |
| | with ``model``: the kNN cosine distance in embedding space as a 0..1 score (``curate.models.heads.knn_outliers``) |
| <check>_score / is_<check>, is_low_quality, low_quality_reasons | model-free image checks (``curate.stages.clean.quality``) |
| given_label | the label before ``relabel`` changed it (``label_source`` = ``relabel:clean``) |

Only ``ok`` rows are checked; label checks need a label. Rows of every split are checked (the cleanlab study
found 15 errors in the MNIST test set), but by default only train rows (and rows not split yet) are acted on.
Which found rows ``exclude`` / ``relabel`` act on is ``policy`` (``curate.stages.clean.policy``, where each rule
and its calibration are described): ``estimate`` (default), ``confident`` or ``all`` (the behaviour before issue 18).
``max_fraction`` caps the rows acted on per issue kind (worst first) so a
broken model cannot wipe out a dataset. ``weight`` excludes only junk (as ``estimate``) and gives every other checked
row of the ``act_on`` splits a training weight, the posterior that its label is right (``clean_weight``, multiplied
into ``sample_weight``; ``curate.stages.clean.weights``).

Default method (``low_normalized_margin``: cleanlab's estimate of the number of issues, taken in order of the
lowest normalized margin between the given label's probability and the best other class) comes from
``bench/clean_methods.py`` on Fashion-MNIST with 10% of labels flipped (the same k-fold probabilities scored by
every method; F1 uniform / asymmetric): low_normalized_margin 0.869 / 0.824, low_self_confidence 0.939 / 0.788,
both 0.856 / 0.822, prune_by_noise_rate (cleanlab's default) 0.836 / 0.820. It is the only one above 0.85 and 0.80
on both kinds of noise; ``--method low_self_confidence`` is better when flips are uniform (BENCHMARKS.md).

``model`` (a ``curate.models`` spec: ``curate:RUN``, ``torchscript:FILE``, ``onnx:FILE``, ``hf:PATH``,
``embeddings:FILE``) replaces the k CNN trainings: the probabilities come from a k-fold logistic regression on the
model's frozen embeddings, and outliers from the mean cosine distance to the 10 nearest included train rows
(leave-self-out; every ok row is scored, labeled or not), through the same ``outlier_threshold`` on a 0..1 score.
The embeddings are cached per (sample_id, model digest) in the version's state; the model's ``describe()``
(spec, digest, preprocessing) is recorded in ``state/clean_model.json`` and the stats.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from curate.errors import CurateError
from curate.schema import OK, conform, exclude
from curate.stage import StageResult, no_progress
from curate.stages.clean import CleanConfig, check_config, thresholds
from curate.stages.clean.labelissues import cnn_oof, label_issues, msp_score, read_pred_probs
from curate.stages.clean.policy import decide

if TYPE_CHECKING:
    from curate.stage import Progress
    from curate.workspace import Workspace

STAGE = "clean"


@dataclass
class CleanResult(StageResult):
    """``StageResult`` plus the review rows: ``{"row": position in table, "issue", "score" (lower = worse), ...}``."""

    review: list[dict[str, Any]] = dataclasses.field(default_factory=list)


def _column(table: pa.Table, name: str, typ: pa.DataType, positions: np.ndarray, values: list[Any] | np.ndarray) -> pa.Table:
    """Set column ``name`` to ``values`` at row ``positions`` and null elsewhere (replacing an older column)."""
    full: list[Any] = [None] * table.num_rows
    for p, v in zip(positions.tolist(), values.tolist() if isinstance(values, np.ndarray) else values, strict=True):
        full[p] = v
    arr = pa.array(full, typ)
    if name in table.column_names:
        return table.set_column(table.schema.get_field_index(name), name, arr)
    return table.append_column(name, arr)


def _act_mask(table: pa.Table, positions: np.ndarray, act_on: str) -> np.ndarray:
    """Which checked rows may be acted on: every split, or train rows and rows without a split."""
    if act_on == "all":
        return np.ones(len(positions), bool)
    split = table.column("split").to_pylist()
    return np.array([split[p] in (None, "train") for p in positions.tolist()], bool)


def _capped(flags: np.ndarray, badness: np.ndarray, allowed: np.ndarray, fraction: float, checked: int | None = None) -> np.ndarray:
    """The flagged, allowed rows, worst first, at most ``fraction`` of the ``checked`` rows (default: all rows)."""
    cand = np.flatnonzero(flags & allowed)
    keep = cand[np.argsort(-badness[cand], kind="stable")][: int(fraction * (len(flags) if checked is None else checked))]
    out = np.zeros(len(flags), bool)
    out[keep] = True
    return out


def run_clean(
    ws: Workspace,
    parent: pa.Table | None,
    parent_id: str | None,
    cfg: CleanConfig,
    *,
    workers: int = 1,
    progress: Progress = no_progress,
) -> CleanResult:
    """Check the ``ok`` rows of ``parent`` and annotate (and act on) what was found.

    Args:
        progress: the progress factory (``curate.stage.Progress``).

    Raises:
        CurateError: empty workspace, missing blobs, too few labeled rows; UsageError: bad settings or pred-probs.
    """
    from curate.schema import class_list

    check_config(cfg)
    if parent is None:
        raise CurateError("the workspace has no versions yet", hint="run `curate ingest SRC` first")
    t0 = time.perf_counter()
    table = conform(parent)
    status, lab = table.column("status").to_pylist(), table.column("label").to_pylist()
    ok_pos = np.array([i for i, s in enumerate(status) if s == OK], np.int64)
    stats: dict[str, Any] = {"checked": len(ok_pos)}
    state: dict[str, bytes] = {}
    flags: dict[str, np.ndarray] = {}  # issue -> (rows,) bool over all rows, the rows acted on
    review: list[dict[str, Any]] = []

    if cfg.find_mislabels or cfg.find_outliers:
        lpos = np.array([p for p in ok_pos.tolist() if lab[p] is not None], np.int64)
        classes = class_list([lab[p] for p in lpos.tolist()])
        if len(classes) < 2 and (cfg.find_mislabels or not cfg.model):  # kNN outliers need no labels
            raise CurateError("label checks need labeled rows of at least 2 classes", hint="ingest a labeled source")
        cidx = {c: i for i, c in enumerate(classes)}
        labels = np.array([cidx[lab[p]] for p in lpos.tolist()], np.int64)
        rows = table.take(pa.array(lpos)).select(["sample_id", "pack", "mode", "width", "height"])
        opos, oscore = lpos, None  # the rows the outlier check scores, and their score when a model gives it
        if cfg.model:
            from curate.stages.clean.labelissues import embedding_judgements

            got = embedding_judgements(ws, table, lpos, ok_pos, labels, classes, cfg, progress)
            probs, opos, oscore, info = got["probs"], got["outlier_pos"], got["outlier_score"], {**got["info"], "state": got["state"]}
        else:
            probs, oscore, info = _fold_models(ws, rows, labels, classes, cfg, progress)
        state.update(info.pop("state", {}))
        stats.update(info)
        li = out = None
        if cfg.find_mislabels:
            if cfg.pred_probs:
                probs = read_pred_probs(cfg.pred_probs, rows.column("sample_id").to_pylist(), classes)
            table, li = _mislabels(table, cfg, probs, lpos, labels, classes)
            stats["label_issues"], review = li["stats"], review + li["review"]
        if cfg.find_outliers:
            # Max-softmax-probability score (Hendrycks & Gimpel 2017) of the out-of-sample predictions, scaled to
            # 0..1 for any K. The Mahalanobis z of the features (``ood_z``, kept in the state) ranked 500 MNIST
            # digits among Fashion-MNIST at ROC AUC 0.57; this score at 0.996 (BENCHMARKS.md "Clean").
            # With a model: kNN distance in embedding space, as a 0..1 score (curate.models.heads.knn_outliers).
            score = oscore if oscore is not None else msp_score(probs)
            table, out = _outliers(table, cfg, opos, score)
            stats["outliers"] = {**out["stats"], "unlabeled_not_checked": len(ok_pos) - len(opos)}
            review += out["review"]
        table, flags, relabeled = _act(table, cfg, li, out)
        for kind, key in (("label_issue", "label_issues"), ("outlier", "outliers")):
            if key in stats:
                stats[key]["acted_on"] = int(flags[kind].sum()) + (relabeled if kind == "label_issue" else 0)
        if cfg.action == "relabel" and "label_issues" in stats:
            stats["label_issues"]["relabeled"] = relabeled
    if cfg.find_low_quality:
        table, flags["low_quality"], lq = _low_quality(ws, table, ok_pos, cfg, workers, progress)
        stats["low_quality"] = lq.pop("stats")
        review += lq["review"]
    for reason, mask in flags.items():  # empty masks unless the action and policy exclude (curate.stages.clean.policy)
        if cfg.action == "exclude" or reason != "low_quality":
            table = exclude(table, pa.array(mask), stage=STAGE, reason=reason)
    stats["seconds"] = round(time.perf_counter() - t0, 2)
    return CleanResult(table=table, stats=stats, state=state, review=review)


def _fold_models(
    ws: Workspace, rows: pa.Table, labels: np.ndarray, classes: list[str], cfg: CleanConfig, progress: Progress
) -> tuple[np.ndarray | None, np.ndarray | None, dict[str, Any]]:
    """``(probs, outlier_score or None, info)`` from curate's own k-fold models: one pass, or two with ``--passes 2``
    (``curate.stages.clean.passes``; its outlier score then covers both passes); none where ``--pred-probs`` gives
    the probabilities and no outliers are asked for."""
    if cfg.pred_probs and not cfg.find_outliers:
        return None, None, {"oof": "not needed"}
    probs, _, info = cnn_oof(ws, rows, labels, classes, cfg, progress)
    if cfg.passes < 2 or not cfg.find_mislabels or cfg.pred_probs:
        return probs, None, info
    from curate.stages.clean.passes import second_pass

    probs, oscore, more = second_pass(ws, rows, labels, classes, cfg, probs, progress)
    return probs, oscore, {**info, **more, "state": {**info.get("state", {}), **more["state"]}}


def _mislabels(
    table: pa.Table, cfg: CleanConfig, probs: np.ndarray, lpos: np.ndarray, labels: np.ndarray, classes: list[str]
) -> tuple[pa.Table, dict[str, Any]]:
    """cleanlab over out-of-sample ``probs`` (float ``(L, K)``, NaN rows: none) of the labeled rows ``lpos``: the
    label columns, then stats, review rows, the rows with probabilities (``pos``) and cleanlab's ``found``."""
    have = ~np.isnan(probs).any(1)
    found = label_issues(labels[have], probs[have], method=cfg.method)
    pos = lpos[have]
    table = _column(table, "is_label_issue", pa.bool_(), pos, found["is_label_issue"])
    table = _column(table, "label_quality", pa.float32(), pos, found["label_quality"])
    table = _column(table, "suggested_label", pa.string(), pos, [classes[k] for k in found["suggested"]])
    table = _column(table, "suggested_confidence", pa.float32(), pos, found["suggested_confidence"])
    issue = found["is_label_issue"]
    given = labels[have]
    conf = np.zeros((len(classes), len(classes)), np.int64)
    np.add.at(conf, (given[issue], found["suggested"][issue]), 1)
    pairs = sorted(((int(conf[i, j]), classes[i], classes[j]) for i, j in zip(*np.nonzero(conf), strict=True)), reverse=True)
    stats = {
        "rows_checked": int(have.sum()),
        "no_probabilities": int((~have).sum()),
        "flagged": int(issue.sum()),
        "flagged_by_split": _by_split(table, pos[issue]),
        "out_of_sample_accuracy": round(float((found["suggested"] == given).mean()), 4),
        "top_confusions": [{"given": a, "suggested": b, "rows": n} for n, a, b in pairs[:10]],
    }
    review = [
        {"row": int(pos[k]), "issue": "label_issue", "score": float(found["label_quality"][k]),
         "suggested_label": classes[found["suggested"][k]]}
        for k in np.flatnonzero(issue)
    ]  # fmt: skip
    return table, {"stats": stats, "review": review, "pos": pos, "found": found, "classes": classes, "labels": given,
                   "probs": probs[have]}  # fmt: skip


def _outliers(table: pa.Table, cfg: CleanConfig, opos: np.ndarray, score: np.ndarray) -> tuple[pa.Table, dict[str, Any]]:
    """``ood_score`` / ``is_outlier`` of the rows ``opos`` from their 0..1 ``score``: columns, then stats, review
    rows, the scored rows (``pos``), their flags and scores."""
    is_out = score > cfg.outlier_threshold
    table = _column(table, "ood_score", pa.float32(), opos, score)
    table = _column(table, "is_outlier", pa.bool_(), opos, is_out)
    stats = {"rows_checked": len(opos), "flagged": int(is_out.sum()), "flagged_by_split": _by_split(table, opos[is_out])}
    review = [{"row": int(opos[k]), "issue": "outlier", "score": float(1 - score[k])} for k in np.flatnonzero(is_out)]
    return table, {"stats": stats, "review": review, "pos": opos, "flags": is_out, "score": score}


def _act(
    table: pa.Table, cfg: CleanConfig, li: dict[str, Any] | None, out: dict[str, Any] | None
) -> tuple[pa.Table, dict[str, np.ndarray], int]:
    """Relabel (or, with ``weight``, weigh) per ``cfg.policy`` (``curate.stages.clean.policy.decide``); the masks over
    all rows of the rows to exclude (``label_issue``, ``outlier``) and the count relabeled. Only rows of ``act_on``
    splits are acted on, at most ``max_fraction`` of the checked rows per issue kind, worst first (label issues:
    lowest ``label_quality``)."""
    n = table.num_rows
    found = score = None
    if li is not None:  # cleanlab's per-row arrays spread over all rows (unchecked rows: no issue)
        # unchecked rows: no issue (an estimate_rank of 0 would put them first in line)
        found = {k: np.full(n, np.inf if k == "estimate_rank" else 0, v.dtype) for k, v in li["found"].items()}
        for k, v in li["found"].items():
            found[k][li["pos"]] = v
    if out is not None:
        score = np.zeros(n)
        score[out["pos"]] = out["score"]
    dec = decide(found, score, action=cfg.action, policy=cfg.policy, relabel_threshold=cfg.relabel_threshold,
                 outlier_threshold=cfg.outlier_threshold, junk_threshold=cfg.junk_threshold)  # fmt: skip
    allowed = _act_mask(table, np.arange(n), cfg.act_on)
    badness = 1 - found["label_quality"] if found is not None else np.zeros(n)
    cap_issue = _capped(dec.relabel | dec.exclude_label, badness, allowed, cfg.max_fraction, len(li["pos"]) if li else 0)
    score = score if score is not None else np.zeros(n)
    cap_out = _capped(dec.exclude_outlier, score, allowed, cfg.max_fraction, len(out["pos"]) if out else 0)
    relabeled = 0
    if li is not None and dec.relabel.any():
        table, relabeled = _relabel(table, li["pos"], (dec.relabel & cap_issue)[li["pos"]], li["found"], li["classes"], 0.0)
    flags = {"label_issue": dec.exclude_label & cap_issue, "outlier": cap_out}
    if cfg.action == "weight" and li is not None:  # li["stats"] is the stage's stats["label_issues"]
        table, li["stats"]["weighted"] = _weigh(table, cfg, li, flags)
    return table, flags, relabeled


def _weigh(table: pa.Table, cfg: CleanConfig, li: dict[str, Any], gone: dict[str, np.ndarray]) -> tuple[pa.Table, dict[str, Any]]:
    """``--action weight``: the posterior that each checked row's label is right as its ``clean_weight``, multiplied
    into ``sample_weight`` (``curate.stages.clean.weights``), on the ``act_on`` rows not excluded (``gone``: masks
    over all rows); the table and the weight stats."""
    from curate.stages.clean.weights import apply_weights, label_posterior

    pos = li["pos"]
    out = np.zeros(table.num_rows, bool)
    for mask in gone.values():
        out |= mask
    acted = _act_mask(table, pos, cfg.act_on) & ~out[pos]
    return apply_weights(table, pos, label_posterior(li["labels"], li["probs"]), acted)


def _by_split(table: pa.Table, positions: np.ndarray) -> dict[str, int]:
    split = table.column("split").to_pylist()
    out: dict[str, int] = {}
    for p in positions.tolist():
        key = split[p] or "unsplit"
        out[key] = out.get(key, 0) + 1
    return dict(sorted(out.items()))


def _relabel(
    table: pa.Table, pos: np.ndarray, acted: np.ndarray, found: dict[str, np.ndarray], classes: list[str], threshold: float
) -> tuple[pa.Table, int]:
    """Give acted-on label issues whose suggestion is confident the suggested label; keep the old one in ``given_label``."""
    change = acted & (found["suggested_confidence"] >= threshold)
    labels, sources = table.column("label").to_pylist(), table.column("label_source").to_pylist()
    given = table.column("given_label").to_pylist() if "given_label" in table.column_names else [None] * table.num_rows
    for k in np.flatnonzero(change).tolist():
        p = int(pos[k])
        given[p] = given[p] if given[p] is not None else labels[p]
        labels[p], sources[p] = classes[found["suggested"][k]], "relabel:clean"
    for name, values in (("label", labels), ("label_source", sources)):
        table = table.set_column(table.schema.get_field_index(name), name, pa.array(values, pa.string()))
    arr = pa.array(given, pa.string())
    if "given_label" in table.column_names:
        table = table.set_column(table.schema.get_field_index("given_label"), "given_label", arr)
    else:
        table = table.append_column("given_label", arr)
    return table, int(change.sum())


def _low_quality(
    ws: Workspace, table: pa.Table, ok_pos: np.ndarray, cfg: CleanConfig, workers: int, progress: Progress
) -> tuple[pa.Table, np.ndarray, dict[str, Any]]:
    """Model-free checks of the ok rows: columns, the acted-on mask, stats and review rows."""
    from curate.stages.clean.quality import compute_quality, flag_quality

    rows = table.take(pa.array(ok_pos))
    flagged = flag_quality(compute_quality(ws, rows, workers=workers, progress=progress), thresholds=thresholds(cfg))
    where = {sid: i for i, sid in enumerate(flagged.column("sample_id").to_pylist())}
    order = np.array([where.get(s, -1) for s in rows.column("sample_id").to_pylist()], np.int64)
    have = order >= 0
    pos, picked = ok_pos[have], flagged.take(pa.array(order[have]))
    for name in picked.column_names:
        if name != "sample_id":
            table = _column(table, name, picked.schema.field(name).type, pos, picked.column(name).to_pylist())
    is_low = np.asarray(pc.fill_null(picked.column("is_low_quality"), False).to_pylist(), bool)
    score = np.asarray(pc.fill_null(picked.column("low_quality_score"), 1.0).to_pylist(), np.float64)
    acted = _capped(is_low, 1 - score, _act_mask(table, pos, cfg.act_on), cfg.max_fraction)
    mask = np.zeros(table.num_rows, bool)
    mask[pos[acted]] = True
    reasons = picked.column("low_quality_reasons").to_pylist()
    per_check: dict[str, int] = {}
    for r, low in zip(reasons, is_low.tolist(), strict=True):
        for check in (r or "").split(",") if low else []:
            per_check[check] = per_check.get(check, 0) + 1
    review = [{"row": int(pos[k]), "issue": f"low_quality: {reasons[k]}", "score": float(score[k])} for k in np.flatnonzero(is_low)]
    stats = {
        "rows_checked": len(pos),
        "flagged": int(is_low.sum()),
        "by_check": dict(sorted(per_check.items())),
        "acted_on": int(acted.sum()),
    }
    return table, mask, {"stats": stats, "review": review}
