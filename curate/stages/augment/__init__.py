"""Augment: offline augmentation of train rows into new samples, each reproducible from its recorded recipe.

The work is the shared augmentation library (``curate.augmentation.copies``, also the engine of ``curate balance
--strategy augment``; policies and recipes: ``curate.augmentation.policies``). The ``preview`` option only draws a
grid of originals beside their augmentations (nothing committed, no blob written).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from curate.augmentation import AugmentConfig, check_augment
from curate.errors import UsageError
from curate.stage import Context, Option, Stage

if TYPE_CHECKING:
    from curate.stage import StageResult

__all__ = ["STAGE", "AugmentConfig"]


def check(cfg: AugmentConfig) -> None:
    """Reject impossible settings (policy, copies, target) before any work starts (exit code 2)."""
    check_augment(cfg)


def key(ctx: Context, cfg: AugmentConfig) -> dict[str, Any]:
    """The recorded settings with the policy's sha256 (a policy file may change under the same name).

    Raises:
        UsageError: ``--preview`` without ``--out GRID.png``, or ``--out`` without ``--preview``; checked here, the
            first step that sees the options, before anything runs.
    """
    n, out = ctx.options.get("preview"), ctx.options.get("out")
    if n is not None and (n < 1 or out is None or not str(out).lower().endswith(".png")):
        raise UsageError("--preview N needs N >= 1 and --out GRID.png")
    if n is None and out is not None:
        raise UsageError("--out is the --preview grid; `curate augment` without --preview commits a new version")
    return {"policy": cfg.policy, "policy_sha256": check_augment(cfg), "copies": cfg.copies, "to_balance": cfg.to_balance,
            "target": cfg.target, "seed": cfg.seed}  # fmt: skip


def run(ctx: Context, cfg: AugmentConfig) -> StageResult | dict[str, Any]:
    """New augmented train samples; with ``preview`` only the grid (``{"out", "rows", "columns", "parents", "policy"}``)."""
    from curate.augmentation.copies import preview, run_augment

    if ctx.options.get("preview") is not None:
        n, out = ctx.options["preview"], str(ctx.options["out"])
        res = preview(ctx.ws, ctx.need_table(), cfg, n, out, columns=min(cfg.copies or 4, 12))
        return {**res, "policy": cfg.policy}
    return run_augment(ctx.ws, ctx.need_table(), ctx.parent, cfg, workers=ctx.n_workers(), progress=ctx.progress)


def _fmt(counts: dict[str, int]) -> str:
    return ", ".join(f"{k} {v:,}" for k, v in counts.items()) or "none"


def summary(res: dict[str, Any]) -> str:
    if "rows" in res:
        return (f"preview: {res['rows']} train images x {res['columns']} augmentations ({res['policy']}) -> {res['out']} "
                "(nothing committed)")  # fmt: skip
    st = res["stats"]
    how = f"to {st['target_count']:,} per class" if "target_count" in st else f"{st['copies']} per train image"
    return (f"{st['new_samples']:,} new train samples from {st['parents']:,} parents ({st['policy']}, {how}, seed {st['seed']}) "
            f"in {st['seconds']:.1f}s ({st['images_per_s'] or 0:,.0f} img/s)")  # fmt: skip


def details(res: dict[str, Any]) -> list[str]:
    if res.get("cached") or "stats" not in res:
        return []
    st = res["stats"]
    out = ["new per class: " + _fmt(st["new_per_class"])]
    if st["identical_rejected"]:
        out.append(f"{st['identical_rejected']:,} copies equal to an existing image were replaced by another copy")
    return out


STAGE = Stage(
    "augment",
    AugmentConfig,
    run,
    doc="""Offline augmentation of train images into new samples, each with its parent and exact recipe.

    Only included train rows are augmented; the copies are train rows (label_source augment, parent_id, recipe:
    the serialised albumentations transform, its seed and the encoding), new blobs named by the sha256 of their
    bytes. Deterministic by --seed, whatever the number of workers. A policy file is what albumentations'
    A.save writes (YAML or JSON).

    Examples:

        curate augment --policy light --copies 2
        curate augment --policy heavy --to-balance --target max
        curate augment --policy my_policy.yaml --copies 1
        curate augment --policy medium --preview 8 --out grid.png     # look first; nothing is committed
    """,
    columns={
        "parent_id": "the sample an augmented copy was made from",
        "recipe": "JSON: policy, seed, encoding and the serialised transform (reproduce gives the bytes back)",
    },  # fmt: skip
    summary=summary,
    details=details,
    check=check,
    key=key,
    cacheable=lambda ctx, _cfg: ctx.options.get("preview") is None,
    options=(
        Option("preview", int, "Only write a grid of N originals beside their augmentations (--out).", ("--preview",)),
        Option("out", str, "The --preview grid image (.png).", ("--out", "-o")),
    ),  # fmt: skip
    workers=True,
)
