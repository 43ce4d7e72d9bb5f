"""``curate pseudolabel``: the semi-supervised loop with the classifier filter."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from curate.cli.common import DEFAULT_WS, DebugOpt, JsonOpt, WorkspaceOpt, handle_errors, say

_FILTER = "Classifier filter"
_MODEL = "Model"


def pseudolabel(
    pool: Annotated[
        Path | None,
        typer.Option(help="Folder/manifest/archive to add as the unlabeled pool (ingested unlabeled and deduplicated first)."),
    ] = None,
    ratio: Annotated[
        str | None,
        typer.Option(
            help="L:P labeled to pseudo-labeled rows in EVERY training batch (default 10:1: a batch of 128 holds 117 labeled "
            "and 11 pseudo-labeled rows, so pseudo-labels stay a small share of the signal however many are accepted)."
        ),
    ] = None,
    rounds: Annotated[int | None, typer.Option(help="Select-and-retrain rounds after the supervised round 0 (default 3).")] = None,
    threshold: Annotated[
        float | None,
        typer.Option(
            help="Confidence bar of an easy class (default 0.95); harder classes get a lower, per-class bar.", rich_help_panel=_FILTER
        ),
    ] = None,
    min_threshold: Annotated[
        float | None, typer.Option(help="No class's bar goes below this (default 0.8).", rich_help_panel=_FILTER)
    ] = None,
    per_class_top: Annotated[
        int | None, typer.Option(help="Instead of thresholds: the K most confident predictions per class.", rich_help_panel=_FILTER)
    ] = None,
    filter_: Annotated[
        str | None,
        typer.Option(
            "--filter", help="ood: refuse rows far from the labeled rows in feature space (default); none.", rich_help_panel=_FILTER
        ),
    ] = None,
    max_pseudo: Annotated[
        int | None, typer.Option(help="Commit at most this many pseudo-labels, shared equally among classes.", rich_help_panel=_FILTER)
    ] = None,
    balance: Annotated[
        float | None,
        typer.Option(help="No class takes more than this times the median class's candidates (default 2).", rich_help_panel=_FILTER),
    ] = None,
    patience: Annotated[int | None, typer.Option(help="Stop after this many rounds worse than the best on val (default 1).")] = None,
    arch: Annotated[
        str | None, typer.Option(help="small-cnn (default) | resnet-mini | resnet-mini-wide | linear.", rich_help_panel=_MODEL)
    ] = None,
    epochs: Annotated[
        int | None, typer.Option(help="Epochs per round (one epoch = one pass over the labeled rows).", rich_help_panel=_MODEL)
    ] = None,
    min_steps: Annotated[
        int | None,
        typer.Option(help="Optimizer steps per round at least; epochs grow to reach it (default 500).", rich_help_panel=_MODEL),
    ] = None,
    batch_size: Annotated[int | None, typer.Option(help="Rows per batch (default 128).", rich_help_panel=_MODEL)] = None,
    lr: Annotated[float | None, typer.Option(help="Peak learning rate (default 3e-3).", rich_help_panel=_MODEL)] = None,
    augment: Annotated[
        str | None,
        typer.Option(help="Train-time augmentation (see curate train --augment; affine for digits).", rich_help_panel=_MODEL),
    ] = None,
    image_size: Annotated[
        int | None, typer.Option(help="Square side the model sees (default: the data's).", rich_help_panel=_MODEL)
    ] = None,
    device: Annotated[str | None, typer.Option(help="auto (cuda, mps, cpu) | cpu | cuda | mps.", rich_help_panel=_MODEL)] = None,
    seed: Annotated[int | None, typer.Option(help="Seed of every model and batch order (default 0).")] = None,
    truth: Annotated[
        Path | None, typer.Option(help="Benchmarks: hidden pool labels (sample_id or source, label) to report pseudo-label accuracy.")
    ] = None,
    out: Annotated[Path | None, typer.Option("--out", "-o", help="Folder for the models (default models/PARENT-pseudolabel).")] = None,
    workers: Annotated[int | None, typer.Option("--workers", "-j", help="Processes for ingesting --pool (default: cores).")] = None,
    workspace: WorkspaceOpt = DEFAULT_WS,
    json_out: JsonOpt = False,
    debug: DebugOpt = False,
) -> None:
    """Grow the labeled train set with confident predictions on the unlabeled pool, round by round.

    Round 0 trains on the labeled train rows only. Each round then predicts the pool with the best model so far,
    keeps predictions that pass the classifier filter (per-class confidence bar, in distribution, class quota),
    revokes earlier pseudo-labels that no longer pass, retrains with labeled and pseudo-labeled rows mixed at
    --ratio in every batch, and scores val; it stops when val gets worse. The version keeps the pseudo-labels of
    the best round (label_source=pseudo:ROUND, split=train) and every pool row's verdict (pseudo_status);
    val and test rows are never pseudo-labeled. Models: OUT/model_best.pt and model_round0.pt (supervised only).

    Examples:

        curate pseudolabel --ratio 10:1
        curate pseudolabel --pool data/unlabeled --rounds 3 --threshold 0.98
        curate pseudolabel --per-class-top 500 --max-pseudo 5000 --augment affine
    """
    from curate.config import command_config
    from curate.stages.pseudolabel import PseudolabelConfig, check_config
    from curate.steps import StepContext
    from curate.steps.selftraining import pseudolabel_step
    from curate.ui import emit_json
    from curate.workspace import Workspace

    ws = Workspace(workspace)
    cli = {
        "ratio": ratio, "rounds": rounds, "threshold": threshold, "min_threshold": min_threshold, "per_class_top": per_class_top,
        "filter": filter_, "max_pseudo": max_pseudo, "balance": balance, "patience": patience, "arch": arch, "epochs": epochs,
        "min_steps": min_steps, "batch_size": batch_size, "lr": lr, "augment": augment, "image_size": image_size, "device": device,
        "seed": seed, "truth": str(truth) if truth else None, "out": str(out) if out else None,
    }  # fmt: skip
    cfg = command_config(PseudolabelConfig, "pseudolabel", ws.root, cli)
    check_config(cfg)
    options = {"pool": str(pool)} if pool is not None else {}
    log = (lambda s: None) if json_out else say
    res = pseudolabel_step(ws, cfg, StepContext(workers=workers, progress=not json_out, log=log, options=options))
    if json_out:
        emit_json(res)
        return
    _summary(res)


def _summary(res: dict[str, Any]) -> None:
    st = res["stats"]
    if "pool" in res:
        p = res["pool"]
        say(f"pool: {p.get('new_samples') or 0:,} new unlabeled samples ingested ({p['ingest']}), deduplicated ({p['dedupe']})")
    if res["cached"]:
        say(f"pseudolabel: same parent and settings as {res['version']}; HEAD moved there (nothing recomputed)")
    say(f"pseudolabel: {st['labeled_train']:,} labeled train rows, {st['val']:,} val, pool of {st['pool']:,}; {st['seconds']:.0f}s")
    for r in st["rounds"]:
        acc = r.get("val_accuracy")
        val = f"val accuracy {acc:.4f}" if acc is not None else "no val"
        if r["round"] == 0:
            say(f"  round 0 (labeled only): {val}")
            continue
        pacc = f", pseudo-label accuracy {r['pseudo_accuracy']:.4f}" if r.get("pseudo_accuracy") is not None else ""
        conf = f", mean confidence {r['mean_confidence']:.3f}" if r.get("mean_confidence") is not None else ""
        say(f"  round {r['round']}: accepted {r['accepted_total']:,} (revoked {r['revoked']:,}, ood {r['ood']:,}){conf}; {val}{pacc}")
    best = st["best_round"]
    kept = (
        f"{st['accepted']:,} pseudo-labels of round {best} committed"
        if best
        else "no round beat the supervised model: nothing committed"
    )
    say(f"  {kept}; models in {st['models']}")
    say(f"  version {res['version']} (HEAD): {st['summary']['included']:,} included, {st['summary']['excluded']:,} excluded")


def register(app: typer.Typer) -> None:
    app.command(rich_help_panel="Stages")(handle_errors(pseudolabel))
