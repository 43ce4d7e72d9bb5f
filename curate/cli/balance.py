"""``curate balance`` and ``curate augment`` (albumentations is imported inside the stages only)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from curate.cli.common import DEFAULT_WS, DebugOpt, JsonOpt, WorkspaceOpt, handle_errors, say

PolicyOpt = Annotated[str | None, typer.Option(help="light | medium | heavy | flip | shift | flip-shift | standard | FILE.yaml")]
TargetOpt = Annotated[str | None, typer.Option(help="Samples per train class: N | median | max | min.")]
SeedOpt = Annotated[int | None, typer.Option(help="Seed of every random choice (same seed, same result).")]
WorkersOpt = Annotated[int | None, typer.Option("--workers", "-j", help="Processes for augmenting (default: cores).")]


def _say_report(report: dict[str, Any], indent: str = "  ") -> None:
    for split, r in report.items():
        eff = r["effective"].values()
        say(
            f"{indent}{split}: {r['total']:,} samples, {r['classes']} classes, "
            f"max/min {r['ratio']:.2f} ({r['max']:,} / {r['min']:,}), "
            f"effective number (beta {r['beta']}) {min(eff):,.1f}-{max(eff):,.1f}"
        )
        say(f"{indent}  " + ", ".join(f"{k} {v:,}" for k, v in r["counts"].items()))
        if "weighted" in r:
            say(f"{indent}  weighted: " + ", ".join(f"{k} {v:,.1f}" for k, v in r["weighted"].items()))


def balance(
    strategy: Annotated[str | None, typer.Option(help="undersample | oversample | augment | weights; none: report only.")] = None,
    target: TargetOpt = None,
    drop: Annotated[str | None, typer.Option(help="Undersample drops first: random | lowest-quality | duplicates-first.")] = None,
    policy: PolicyOpt = None,
    seed: SeedOpt = None,
    workers: WorkersOpt = None,
    workspace: WorkspaceOpt = DEFAULT_WS,
    json_out: JsonOpt = False,
    debug: DebugOpt = False,
) -> None:
    """Report class imbalance per split; with --strategy, balance the train split (val and test are never touched).

    undersample excludes rows of large classes (reason balance); oversample sets a `repeat` count that export
    writes out; augment adds albumentations copies (like `curate augment --to-balance`); weights writes a
    `sample_weight` column the trainer draws batches by. --target defaults to min for undersample, max otherwise.

    Examples:

        curate balance                                   # report only: counts, max/min, effective number
        curate balance --strategy undersample --drop lowest-quality
        curate balance --strategy oversample --target median
        curate balance --strategy augment --policy light --target 5000
        curate balance --strategy weights
    """
    from curate.config import command_config
    from curate.stages.balance import BalanceConfig, check_config
    from curate.steps import StepContext
    from curate.steps.curation import balance_step
    from curate.ui import emit_json
    from curate.workspace import Workspace

    ws = Workspace(workspace)
    cli = {"strategy": strategy, "target": target, "drop": drop, "policy": policy, "seed": seed}
    cfg = command_config(BalanceConfig, "balance", ws.root, cli)
    check_config(cfg)
    res = balance_step(ws, cfg, StepContext(workers=workers, progress=not json_out))
    if json_out:
        emit_json(res)
        return
    if cfg.strategy is None:
        say(f"balance report {res['version']} (nothing committed; --strategy to balance the train split):")
        _say_report(res["report"])
        return
    st = res["stats"]
    if res["cached"]:
        say(f"balance: same parent and settings as {res['version']}; HEAD moved there (nothing recomputed)")
        return
    target_text = f" to {st['target_count']:,} per class ({st['target']})" if st["target_count"] is not None else ""
    say(f"balance --strategy {st['strategy']}{target_text} -> {res['version']} in {st['seconds']:.1f}s")
    if "excluded_per_class" in st:
        say(f"  excluded (reason balance, drop rule {st['drop_rule']}): " + _fmt(st["excluded_per_class"]))
    if "repeats_added_per_class" in st:
        say("  repeats added (export writes each row `repeat` times): " + _fmt(st["repeats_added_per_class"]))
    if "augment" in st:
        say(f"  new augmented samples ({st['augment']['images_per_s']:,.0f} img/s): " + _fmt(st["augment"]["new_per_class"]))
    if "class_weights" in st:
        say("  class weights: " + ", ".join(f"{k} {v:.3f}" for k, v in st["class_weights"].items()))
    say("  train after:")
    _say_report({k: v for k, v in st["after"].items() if k == "train"}, indent="    ")


def _fmt(counts: dict[str, int]) -> str:
    return ", ".join(f"{k} {v:,}" for k, v in counts.items()) or "none"


def augment(
    policy: PolicyOpt = None,
    copies: Annotated[int | None, typer.Option(help="New samples per train image (default 1).")] = None,
    to_balance: Annotated[bool | None, typer.Option("--to-balance", help="Instead: copies until each class reaches --target.")] = None,
    target: TargetOpt = None,
    seed: SeedOpt = None,
    preview: Annotated[int | None, typer.Option(help="Only write a grid of N originals beside their augmentations (--out).")] = None,
    out: Annotated[Path | None, typer.Option("--out", "-o", help="The --preview grid image (.png).")] = None,
    workers: WorkersOpt = None,
    workspace: WorkspaceOpt = DEFAULT_WS,
    json_out: JsonOpt = False,
    debug: DebugOpt = False,
) -> None:
    """Offline augmentation of train images into new samples, each with its parent and exact recipe.

    Only included train rows are augmented; the copies are train rows (label_source augment, parent_id, recipe:
    the serialised albumentations transform, its seed and the encoding), new blobs named by the sha256 of their
    bytes. Deterministic by --seed, whatever the number of workers. A policy file is what albumentations'
    A.save writes (YAML or JSON).

    Examples:

        curate augment --policy light --copies 2
        curate augment --policy heavy --to-balance --target max
        curate augment --policy my_policy.yaml --copies 1
        curate augment --policy medium --preview 8 --out grid.png     # look first; nothing is committed
    """
    from curate.config import command_config
    from curate.errors import UsageError
    from curate.stages.augment import AugmentConfig, check_config
    from curate.stages.augment import preview as make_preview
    from curate.steps import StepContext
    from curate.steps.curation import augment_step
    from curate.ui import emit_json
    from curate.workspace import Workspace

    ws = Workspace(workspace)
    cli = {"policy": policy, "copies": copies, "to_balance": to_balance, "target": target, "seed": seed}
    cfg = command_config(AugmentConfig, "augment", ws.root, cli)
    check_config(cfg)
    if preview is not None:
        if preview < 1 or out is None or out.suffix.lower() != ".png":
            raise UsageError("--preview N needs N >= 1 and --out GRID.png")
        res = make_preview(ws, ws.samples(ws.resolve(None)), cfg, preview, str(out), columns=min(cfg.copies or 4, 12))
        if json_out:
            emit_json(res)
        else:
            say(f"preview: {res['rows']} train images x {res['columns']} augmentations ({cfg.policy}) -> {out} (nothing committed)")
        return
    if out is not None:
        raise UsageError("--out is the --preview grid; `curate augment` without --preview commits a new version")
    res = augment_step(ws, cfg, StepContext(workers=workers, progress=not json_out))
    if json_out:
        emit_json(res)
        return
    st = res["stats"]
    if res["cached"]:
        say(f"augment: same parent and settings as {res['version']}; HEAD moved there (nothing recomputed)")
        return
    how = f"to {st['target_count']:,} per class" if cfg.to_balance else f"{st['copies']} per train image"
    say(
        f"augment ({cfg.policy}, {how}, seed {cfg.seed}) -> {res['version']}: {st['new_samples']:,} new train samples from "
        f"{st['parents']:,} parents in {st['seconds']:.1f}s ({st['images_per_s']:,.0f} img/s)"
    )
    say("  new per class: " + _fmt(st["new_per_class"]))
    if st["identical_rejected"]:
        say(f"  {st['identical_rejected']:,} copies equal to an existing image were replaced by another copy")


def register(app: typer.Typer) -> None:
    app.command(rich_help_panel="Stages")(handle_errors(balance))
    app.command(rich_help_panel="Stages")(handle_errors(augment))
