"""Evaluate: score a trained run on a split of a dataset version, on every split, or on a labeled source.

The contract of ``curate evaluate`` (an output: it writes ``eval_<split>.json`` and its confusion plot into the run
folder, it commits nothing). The work is in ``curate.stages.evaluate.score``. In a pipeline the run defaults to the
one its train step made (``ctx.outputs["run"]``) and the version to the one the run was trained on.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from curate.errors import UsageError
from curate.stage import OUTPUT, Context, Stage, cli


@dataclass(frozen=True)
class EvaluateConfig:
    """Settings of ``curate evaluate`` (a pipeline's ``evaluate`` step).

    Attributes:
        run: Run folder written by `curate train` (or a model_*.pt file); in a pipeline, default the run its train
            step made.
        split: Split to score: train | train_dev | val | test, or all (every split + the bias/variance diagnosis).
        which: Checkpoint: best | last.
        version: the dataset version scored (default: the one the run was trained on; the command's ``--version``).
        src: Score a labeled folder or manifest outside the workspace instead of a split (files go to RUN/eval-NAME/).
        human_error: With --split all: the human-level error (0..1) avoidable bias is measured against.
    """

    run: str | None = field(default=None, metadata=cli(argument=True, metavar="RUN"))
    split: str = "test"
    which: str = "best"
    version: str | None = field(default=None, metadata=cli(hidden=True))
    src: str | None = None
    human_error: float | None = None


def check(cfg: EvaluateConfig) -> None:
    """Reject an unknown checkpoint choice, and ``src`` with ``version`` (exit code 2)."""
    if cfg.which not in ("best", "last"):
        raise UsageError(f"--which {cfg.which!r}: choose best or last")
    if cfg.src is not None and cfg.version is not None:
        raise UsageError("--src scores a source outside the workspace: drop --version")
    check_human_error(cfg.human_error)


def check_human_error(value: float | None) -> None:
    """A human-level error is a rate in [0, 1) (exit code 2 otherwise)."""
    if value is not None and not 0 <= value < 1:
        raise UsageError(f"--human-error {value}: give an error rate in [0, 1), e.g. 0.02 for 2%")


def run(ctx: Context, cfg: EvaluateConfig) -> dict[str, Any]:
    """Score the run; the version is ``cfg.version``, else the command's ``--version``, else the run's own (a
    pipeline's position is not used: it scores the version its run was trained on)."""
    from curate.stages.evaluate.score import evaluate_run

    version = cfg.version or (None if ctx.reuse else ctx.version())
    if cfg.src is not None and version is not None:
        raise UsageError("--src scores a source outside the workspace: drop --version")
    return evaluate_run(ctx, cfg, version)


def summary(res: dict[str, Any]) -> str:
    """One line for the pipeline table: the split's accuracy, or every split's error and the largest gap."""
    if res.get("split") == "all":
        return ", ".join(f"{s} err {e:.3f}" for s, e in res["errors"].items()) + f"; largest gap: {res['diagnosis']['largest']}"
    return f"{res['split']} acc {res['accuracy']:.3f}, macro-F1 {res['macro_f1']:.3f} ({res['n']:,} images)"


def details(res: dict[str, Any]) -> list[str]:
    """What was scored and where the report went, the scores, what was not scored (``src``), the worst errors."""
    from curate.learn.gaps import summary_line
    from curate.learn.metrics import fmt_metrics

    if res["split"] == "all":
        out = [f"evaluate {res['run']} on every split of {res['version']} -> {res['path']}"]
        return out + [fmt_metrics(name, m) for name, m in res["metrics"].items()] + [summary_line(res["diagnosis"])]
    src = res.get("source")
    what = f"{src} ({res['n']:,} labeled images)" if src else f"{res['version']} {res['split']} ({res['n']:,} images)"
    out = [f"evaluate {res['run']} on {what} -> {res['path']}", fmt_metrics(res["split"], res)]
    if src:
        sk = res["skipped"]
        unknown = sum(sk["unknown_labels"].values())
        out.append(f"not scored: {sk['errors']:,} unreadable, {sk['unlabeled']:,} unlabeled, {unknown:,} with a label the "
                   "run does not know")  # fmt: skip
    for row in res["worst"][:5]:
        out.append(f"  worst: {row['sample_id'][:40]}  true {row['true']}  predicted {row['predicted']} ({row['confidence']:.3f})")
    return out


STAGE = Stage(
    "evaluate",
    EvaluateConfig,
    run,
    kind=OUTPUT,
    doc="""Score a trained run on a split of a dataset version (default: the version it was trained on), or on a
    labeled source that is not in the workspace (--src: a held-out folder SRC/<class>/... or a labeled manifest).

    Writes eval_SPLIT.json (accuracy, macro-F1, per-class precision/recall/F1, confusion matrix, ROC AUC,
    top-k error, the worst-classified samples) and eval_confusion_SPLIT.png into the run folder; with --src,
    the same files plus predictions.parquet into RUN/eval-NAME/ (NAME: the source's folder or file name).

    Examples:

        curate evaluate models/000004-normalize-small-cnn --split test
        curate evaluate models/fm --src held-out/
        curate evaluate models/fm --split all --human-error 0.02   # train / train_dev / val / test errors, largest gap
    """,
    summary=summary,
    details=details,
    check=check,
    panel="Learning",
)
