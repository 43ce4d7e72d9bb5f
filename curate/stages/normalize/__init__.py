"""Normalize: per-channel mean and std over the included train rows only, plus a pixel histogram.

Pixels are integers 0..255, so the per-channel sums and sums of squares are exact in int64 and partial results
from any number of workers merge by addition; mean and std come out as float64 at the end (scale 0..1, the
scale the trainer feeds the network). Val and test rows never contribute. The result goes to the version's
``state/normalization.json`` and from there into every export's ``dataset.json`` and every checkpoint.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from curate.errors import UsageError
from curate.stage import Context, Stage

if TYPE_CHECKING:
    from curate.stage import StageResult


@dataclass(frozen=True)
class NormalizeConfig:
    """Settings of ``curate normalize``.

    Attributes:
        split: Split whose included rows define the statistics.
        channels: 1 or 3; 0 decides from the data (1 when every image of the split is grayscale, else 3).
    """

    split: str = "train"
    channels: int = 0


def check(cfg: NormalizeConfig) -> None:
    """Reject a channel count normalize cannot produce (exit code 2)."""
    if cfg.channels not in (0, 1, 3):
        raise UsageError(f"--channels {cfg.channels}: use 1, 3 or 0 (auto)")


def run(ctx: Context, cfg: NormalizeConfig) -> StageResult:
    from curate.stages.normalize.pixels import run_normalize

    return run_normalize(ctx.ws, ctx.need_table(), cfg, workers=ctx.n_workers(), progress=ctx.progress)


def summary(res: dict[str, Any]) -> str:
    norm = res["stats"]["normalization"]
    fmt = ", ".join
    return (f"{norm['images']:,} {norm['split']} images, {norm['channels']} channel(s); "
            f"mean [{fmt(f'{m:.4f}' for m in norm['mean'])}] std [{fmt(f'{s:.4f}' for s in norm['std'])}]")  # fmt: skip


STAGE = Stage(
    "normalize",
    NormalizeConfig,
    run,
    doc="""Per-channel mean/std (and a pixel histogram) from the included train rows only.

    Stored in the version state; every later export's dataset.json and every checkpoint carries it.

    Example:  curate normalize
    """,
    summary=summary,
    check=check,
    workers=True,
)
