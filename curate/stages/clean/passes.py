"""A second pass of ``curate clean``'s k-fold models, trained without the rows the first pass would act on.

Fold models trained on noisy labels partly learn the noise: a flipped shirt among the training rows of a fold pulls
the model towards calling shirts by the wrong name, so the flips of the held-out fold look less wrong than they are.
Co-teaching and the small-loss trick (Han et al. 2018) and cleanlab's own advice to retrain after pruning rest on
the same observation. The second pass retrains the k models on the rows the first pass keeps and predicts every row
again (the left-out ones too, out-of-sample as before); cleanlab's verdicts are then taken from these
probabilities. Rows the first pass calls junk stay junk (the outlier score is the larger of the two passes'): a
model that never saw the digits among the garments maps them confidently onto a garment class.

Measured on issue 18's planted sets (BENCHMARKS.md "The clean stage's ceiling, and a second pass of the fold
models"): on the calibration set the share of flips found at a 2% clean-row loss went from 49% to 66%, where the same
models trained twice as long fell to 35% (they learn more of the noise). On a held-out set the model trained on the
curated rows gained only 0.18 points over one pass, so ``passes = 1`` stays the default.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    import pyarrow as pa

    from curate.stage import Progress
    from curate.workspace import Workspace


def first_pass_drops(labels: np.ndarray, probs: np.ndarray, cfg: Any) -> np.ndarray:
    """bool ``(N,)``: the rows the configured policy would exclude or relabel, judged on the first pass's ``probs``.

    Args:
        labels: int ``(N,)`` given class indices; probs: float ``(N, K)`` out-of-sample probabilities (rows of NaN:
            no prediction, never dropped).
        cfg: the ``CleanConfig`` (policy, method and thresholds; the action is taken as ``exclude``).
    """
    from curate.stages.clean.labelissues import label_issues, msp_score
    from curate.stages.clean.policy import decide

    have = ~np.isnan(probs).any(1)
    found = label_issues(labels[have], probs[have], method=cfg.method)
    dec = decide(
        found, msp_score(probs[have]), action="exclude", policy=cfg.policy, relabel_threshold=cfg.relabel_threshold,
        outlier_threshold=cfg.outlier_threshold, junk_threshold=cfg.junk_threshold,
    )  # fmt: skip
    drops = np.zeros(len(labels), bool)
    drops[np.flatnonzero(have)] = dec.exclude_label | dec.exclude_outlier | dec.relabel
    return drops


def second_pass(
    ws: Workspace, rows: pa.Table, labels: np.ndarray, classes: list[str], cfg: Any, probs: np.ndarray, progress: Progress
) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """The second pass over the same rows.

    Args:
        rows / labels / classes: as ``curate.stages.clean.labelissues.cnn_oof``; probs: the first pass's ``(N, K)``.

    Returns:
        ``(probs, outlier_score, info)``: the second pass's probabilities ``(N, K)``, the 0..1 outlier score ``(N,)``
        (the larger of the two passes' scaled ``1 - max probability``) and info for the stats (``left_out``: rows
        not trained on; ``state``: the pass's cache files).
    """
    from curate.stages.clean.labelissues import cnn_oof, msp_score

    drops = first_pass_drops(labels, probs, cfg)
    probs2, _, info = cnn_oof(ws, rows, labels, classes, cfg, progress, train_mask=~drops, name="clean_oof_pass2")
    score = np.maximum(msp_score(probs), msp_score(probs2))
    stats = {"left_out": int(drops.sum()), "oof": info.get("oof"), "oof_seconds": info.get("oof_seconds")}
    return probs2, score, {"pass2": stats, "state": info.get("state", {})}
