"""``curate clean``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from curate.cli_common import DEFAULT_WS, DebugOpt, JsonOpt, WorkspaceOpt, handle_errors, say

_LQ = "Low-quality thresholds"
_MODEL = "Out-of-sample models"


def clean(
    find_mislabels: Annotated[
        bool, typer.Option("--find-mislabels", help="Find label errors: cleanlab on k-fold out-of-sample probabilities.")
    ] = False,
    find_outliers: Annotated[
        bool,
        typer.Option(
            "--find-outliers",
            help="Find out-of-distribution samples: low max probability under the k-fold models (with --model: kNN distance).",
        ),
    ] = False,
    find_low_quality: Annotated[
        bool,
        typer.Option(
            "--find-low-quality", help="Model-free checks: dark, bright, blurry, low information, tiny, odd aspect, grayscale."
        ),
    ] = False,
    action: Annotated[
        str | None,
        typer.Option(
            help="flag: columns only (default); exclude: exclude what was found; relabel: give label issues the suggested label."
        ),
    ] = None,
    policy: Annotated[
        str | None,
        typer.Option(
            help="What exclude/relabel act on. confident (default): relabel (or exclude) label issues whose suggestion is "
            "sure (--relabel-threshold) and exclude junk (outliers whose label is also an issue), flag the rest; "
            "all: every flagged row (the behaviour before issue 18)."
        ),
    ] = None,
    act_on: Annotated[
        str | None, typer.Option(help="train: act on train rows and rows not split yet (default); all: every split.")
    ] = None,
    max_fraction: Annotated[
        float | None, typer.Option(help="Act on at most this fraction of the checked rows per issue kind, worst first (default 0.2).")
    ] = None,
    relabel_threshold: Annotated[
        float | None, typer.Option(help="relabel only where the suggested class has at least this probability (default 0.9).")
    ] = None,
    method: Annotated[
        str | None,
        typer.Option(help="cleanlab filter_by: low_normalized_margin (default), low_self_confidence, prune_by_noise_rate, both, ..."),
    ] = None,
    outlier_threshold: Annotated[
        float | None, typer.Option(help="Flag outliers whose ood_score (1 - max probability, scaled 0..1) exceeds this (0.75).")
    ] = None,
    pred_probs: Annotated[
        Path | None,
        typer.Option(help="Use your own probabilities (Parquet/CSV/JSONL: sample_id + one column per class, or a probs list)."),
    ] = None,
    model: Annotated[
        str | None,
        typer.Option(
            help="A model backend (curate:RUN, torchscript:FILE, onnx:FILE, hf:PATH, embeddings:FILE): label issues from a "
            "k-fold linear head on its frozen embeddings, outliers from kNN distance; no CNN is trained.",
            rich_help_panel=_MODEL,
        ),
    ] = None,
    folds: Annotated[int | None, typer.Option(help="k of the k-fold models (default 5).", rich_help_panel=_MODEL)] = None,
    arch: Annotated[
        str | None, typer.Option(help="small-cnn (default) | resnet-mini | resnet-mini-wide | linear.", rich_help_panel=_MODEL)
    ] = None,
    epochs: Annotated[int | None, typer.Option(help="Epochs per fold model (default 3).", rich_help_panel=_MODEL)] = None,
    batch_size: Annotated[int | None, typer.Option(help="Batch size (default 128).", rich_help_panel=_MODEL)] = None,
    augment: Annotated[
        str | None, typer.Option(help="Augmentation of the fold models (see curate train --augment).", rich_help_panel=_MODEL)
    ] = None,
    image_size: Annotated[
        int | None, typer.Option(help="Square side the models see (default: the data's size, at most 64).", rich_help_panel=_MODEL)
    ] = None,
    device: Annotated[str | None, typer.Option(help="auto (cuda, mps, cpu) | cpu | cuda | mps.", rich_help_panel=_MODEL)] = None,
    seed: Annotated[int | None, typer.Option(help="Seed of the folds and models (default 0).", rich_help_panel=_MODEL)] = None,
    dark: Annotated[
        float | None, typer.Option(help="Flag when the brightest 1% is below this (0-1, default 0.15).", rich_help_panel=_LQ)
    ] = None,
    bright: Annotated[
        float | None, typer.Option(help="Flag when 1 - darkest 1% is below this (default 0.15).", rich_help_panel=_LQ)
    ] = None,
    blurry: Annotated[
        float | None, typer.Option(help="Flag when the edge-frequency score is below this (default 0.25).", rich_help_panel=_LQ)
    ] = None,
    low_information: Annotated[
        float | None, typer.Option(help="Flag below this information score (default 0.035).", rich_help_panel=_LQ)
    ] = None,
    tiny: Annotated[
        int | None, typer.Option(help="Flag when the shorter side is below this many pixels (default 16).", rich_help_panel=_LQ)
    ] = None,
    odd_aspect: Annotated[
        float | None, typer.Option(help="Flag when long/short side exceeds this (default 4).", rich_help_panel=_LQ)
    ] = None,
    review_out: Annotated[
        Path | None, typer.Option(help="Write the flagged samples, worst first: issues.html (with thumbnails) or issues.csv.")
    ] = None,
    workers: Annotated[int | None, typer.Option("--workers", "-j", help="Processes for the image checks (default: cores).")] = None,
    workspace: WorkspaceOpt = DEFAULT_WS,
    json_out: JsonOpt = False,
    debug: DebugOpt = False,
) -> None:
    """Find label errors, outliers and low-quality images; flag, exclude or relabel them.

    Label errors: every labeled sample is predicted by a model trained on the other k-1 folds (curate's own
    networks, trained here; with --model, a logistic regression on that model's frozen embeddings), then cleanlab
    finds the samples whose given label is unlikely. Columns: is_label_issue, label_quality (1 clean .. 0 issue),
    suggested_label, suggested_confidence. The out-of-sample probabilities (or the model's embeddings) are
    cached: changing only --action, --method or thresholds reuses them. Rows of every split are
    checked; only train rows (and rows not split yet) are acted on unless --act-on all.

    Examples:

        curate clean --find-mislabels
        curate clean --find-mislabels --action exclude --review-out issues.html
        curate clean --find-mislabels --action relabel --relabel-threshold 0.95
        curate clean --find-outliers --find-low-quality --action exclude
        curate clean --find-mislabels --pred-probs my_probs.parquet
        curate clean --find-mislabels --find-outliers --model hf:./dinov2-small
    """
    from curate.config import command_config
    from curate.stages.clean import CleanConfig, check_config
    from curate.steps import StepContext
    from curate.steps.curation import clean_step
    from curate.ui import emit_json
    from curate.workspace import Workspace

    ws = Workspace(workspace)
    cli = {
        "find_mislabels": find_mislabels or None, "find_outliers": find_outliers or None, "find_low_quality": find_low_quality or None,
        "action": action, "policy": policy, "act_on": act_on, "max_fraction": max_fraction, "relabel_threshold": relabel_threshold,
        "method": method, "outlier_threshold": outlier_threshold,
        "pred_probs": str(pred_probs) if pred_probs else None, "model": model, "folds": folds, "arch": arch, "epochs": epochs,
        "batch_size": batch_size, "augment": augment, "image_size": image_size, "device": device, "seed": seed,
        "dark": dark, "bright": bright,
        "blurry": blurry, "low_information": low_information, "tiny": tiny, "odd_aspect": odd_aspect,
    }  # fmt: skip
    cfg = command_config(CleanConfig, "clean", ws.root, cli)
    check_config(cfg)
    options = {"review_out": str(review_out)} if review_out is not None else {}
    res = clean_step(ws, cfg, StepContext(workers=workers, progress=not json_out, options=options))
    if json_out:
        emit_json(res)
        return
    _summary(res, cfg)


def _summary(res: dict[str, Any], cfg: Any) -> None:
    st = res["stats"]
    if res["cached"]:
        say(f"clean: same parent and settings as {res['version']}; HEAD moved there (nothing recomputed)")
    else:
        model = f"out-of-sample probabilities {st.get('oof', 'n/a')}"
        if "model" in st:
            emb = st["embeddings"]
            got = f"{emb['computed']:,} embedded, {emb['cached']:,} cached"
            got = f"{emb['from_file']:,} vectors read" if emb["from_file"] else got
            model = f"model {st['model']['spec']}: {got}"
            if st.get("oof") == "computed":
                model += f"; {cfg.folds}-fold linear head {st['oof_seconds']:.1f}s"
        elif st.get("oof") == "computed":
            model += f" ({cfg.folds} folds x {cfg.epochs} epochs {cfg.arch}, {st['oof_seconds']:.0f}s)"
        elif st.get("oof") == "cached":
            model += f" (from version {st['oof_version']})"
        say(f"clean: {st['checked']:,} samples checked; {model}; {st['seconds']:.1f}s")
    verb = {"flag": "flagged only", "exclude": "excluded", "relabel": "relabeled"}[cfg.action]
    if "label_issues" in st:
        li = st["label_issues"]
        by = ", ".join(f"{k} {v:,}" for k, v in li["flagged_by_split"].items()) or "none"
        acted = f"{li.get('relabeled', li['acted_on']):,} {verb}" if cfg.action != "flag" else "flagged only"
        acc = li["out_of_sample_accuracy"]
        say(f"  label issues: {li['flagged']:,} of {li['rows_checked']:,} ({by}); {acted}; out-of-sample accuracy {acc:.1%}")
        if li["top_confusions"]:
            say("  most common: " + ", ".join(f"{c['given']}->{c['suggested']} {c['rows']}" for c in li["top_confusions"][:5]))
    for key, name in (("outliers", "outliers"), ("low_quality", "low quality")):
        if key in st:
            o = st[key]
            checks = f" ({', '.join(f'{k} {v}' for k, v in o['by_check'].items()) or 'none'})" if "by_check" in o else ""
            acts = cfg.action == "exclude" or (cfg.action == "relabel" and key == "outliers" and cfg.policy == "confident")  # junk
            done = f"{o['acted_on']:,} excluded" if acts else "flagged only"
            say(f"  {name}: {o['flagged']:,} of {o['rows_checked']:,}{checks}; {done}")
    if "review" in res:
        rv = res["review"]
        say(f"  review: {rv['rows']:,} rows -> {rv['path']}")
    say(f"  version {res['version']} (HEAD): {st['summary']['included']:,} included, {st['summary']['excluded']:,} excluded")


def register(app: typer.Typer) -> None:
    app.command(rich_help_panel="Stages")(handle_errors(clean))
