"""Balance: report class imbalance per split and even out the train split's classes (val and test never).

The strategies (undersample, oversample, augment, weights), the drop rules and the report are described in
``curate.stages.balance.strategies``, which does the work; ``--strategy augment`` makes its new samples with the
shared augmentation library (``curate.augmentation.copies``), the engine of ``curate augment`` too.
Without a strategy the stage only reports (nothing committed).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from curate.augmentation import parse_target
from curate.errors import UsageError
from curate.stage import Context, Stage, cli

if TYPE_CHECKING:
    from curate.stage import StageResult

STRATEGIES = ("undersample", "oversample", "augment", "weights")
DROPS = ("random", "lowest-quality", "duplicates-first")


@dataclass(frozen=True)
class BalanceConfig:
    """Settings of ``curate balance`` (defaults < curate.toml ``[balance]`` < CLI flags).

    Attributes:
        strategy: undersample | oversample | augment | weights; none: report only.
        target: Samples per train class: N | median | max | min (default min for undersample, max otherwise;
            ignored by weights).
        drop: Undersample drops first: random | lowest-quality | duplicates-first.
        policy: The augmentation policy of --strategy augment: light | medium | heavy | flip | shift | flip-shift |
            standard | affine | FILE.yaml.
        seed: Seed of every random choice (same seed, same result).
        beta: Cui et al.'s beta for the effective number of samples in the report.
    """

    strategy: str | None = None
    target: str | None = None
    drop: str = "random"
    policy: str = "medium"
    seed: int = 0
    beta: float = field(default=0.999, metadata=cli(hidden=True))


def check(cfg: BalanceConfig) -> None:
    """Reject impossible settings before any work starts (exit code 2)."""
    if cfg.strategy is not None and cfg.strategy not in STRATEGIES:
        raise UsageError(f"--strategy {cfg.strategy!r}: choose from {', '.join(STRATEGIES)}")
    if cfg.drop not in DROPS:
        raise UsageError(f"--drop {cfg.drop!r}: choose from {', '.join(DROPS)}")
    if not 0 < cfg.beta < 1:
        raise UsageError(f"beta {cfg.beta}: must be between 0 and 1 (exclusive)")
    parse_target(cfg.target)
    if cfg.strategy == "augment":
        from curate.augmentation.policies import check_policy

        check_policy(cfg.policy)


def key(_ctx: Context, cfg: BalanceConfig) -> dict[str, Any]:
    """The recorded settings; the augment strategy adds its policy's sha256 (a policy file may change)."""
    out: dict[str, Any] = {"strategy": cfg.strategy, "target": cfg.target, "drop": cfg.drop, "seed": cfg.seed, "beta": cfg.beta}
    if cfg.strategy == "augment":
        from curate.augmentation.policies import check_policy

        out.update(policy=cfg.policy, policy_sha256=check_policy(cfg.policy))
    return out


def run(ctx: Context, cfg: BalanceConfig) -> StageResult | dict[str, Any]:
    """Balance the train split; without a strategy only ``{"version", "report"}`` of the version (nothing committed)."""
    from curate.stages.balance.strategies import imbalance_report, run_balance

    if cfg.strategy is None:
        return {"version": ctx.parent, "report": imbalance_report(ctx.need_table(), cfg.beta)}
    return run_balance(ctx.ws, ctx.need_table(), ctx.parent, cfg, workers=ctx.n_workers(), progress=ctx.progress)


def report_lines(report: dict[str, Any], indent: str = "") -> list[str]:
    """Human lines of an imbalance report: per split its totals, then its class counts."""
    out = []
    for split, r in report.items():
        eff = r["effective"].values()
        out.append(f"{indent}{split}: {r['total']:,} samples, {r['classes']} classes, max/min {r['ratio']:.2f} "
                   f"({r['max']:,} / {r['min']:,}), effective number (beta {r['beta']}) {min(eff):,.1f}-{max(eff):,.1f}")  # fmt: skip
        out.append(f"{indent}  " + ", ".join(f"{k} {v:,}" for k, v in r["counts"].items()))
        if "weighted" in r:
            out.append(f"{indent}  weighted: " + ", ".join(f"{k} {v:,.1f}" for k, v in r["weighted"].items()))
    return out


def _fmt(counts: dict[str, int]) -> str:
    return ", ".join(f"{k} {v:,}" for k, v in counts.items()) or "none"


def summary(res: dict[str, Any]) -> str:
    if "report" in res:
        ratios = ", ".join(f"{s} max/min {r['ratio']:.2f}" for s, r in res["report"].items())
        return f"balance report {res['version']} (nothing committed; --strategy to balance the train split): {ratios}"
    st = res["stats"]
    target = f" to {st['target_count']:,} per class ({st['target']})" if st["target_count"] is not None else ""
    return f"--strategy {st['strategy']}{target} in {st['seconds']:.1f}s"


def details(res: dict[str, Any]) -> list[str]:
    if "report" in res:
        return report_lines(res["report"])
    if res.get("cached"):
        return []
    st = res["stats"]
    out = []
    if "excluded_per_class" in st:
        out.append(f"excluded (reason balance, drop rule {st['drop_rule']}): " + _fmt(st["excluded_per_class"]))
    if "repeats_added_per_class" in st:
        out.append("repeats added (export writes each row `repeat` times): " + _fmt(st["repeats_added_per_class"]))
    if "augment" in st:
        out.append(f"new augmented samples ({st['augment']['images_per_s']:,.0f} img/s): " + _fmt(st["augment"]["new_per_class"]))
    if "class_weights" in st:
        out.append("class weights: " + ", ".join(f"{k} {v:.3f}" for k, v in st["class_weights"].items()))
    return [*out, "train after:", *report_lines({k: v for k, v in st["after"].items() if k == "train"}, indent="  ")]


STAGE = Stage(
    "balance",
    BalanceConfig,
    run,
    doc="""Report class imbalance per split; with --strategy, balance the train split (val and test are never touched).

    undersample excludes rows of large classes (reason balance); oversample sets a `repeat` count that export
    writes out; augment adds albumentations copies (like `curate augment --to-balance`); weights writes a
    `sample_weight` column the trainer draws batches by. --target defaults to min for undersample, max otherwise.

    Examples:

        curate balance                                   # report only: counts, max/min, effective number
        curate balance --strategy undersample --drop lowest-quality
        curate balance --strategy oversample --target median
        curate balance --strategy augment --policy light --target 5000
        curate balance --strategy weights
    """,
    columns={
        "repeat": "times export writes the row (int64, 1 = once; oversample)",
        "sample_weight": "inverse class frequency, mean 1 over train (weights; times clean_weight where set; null elsewhere)",
    },  # fmt: skip
    summary=summary,
    details=details,
    check=check,
    key=key,
    cacheable=lambda _ctx, cfg: cfg.strategy is not None,
    workers=True,
)
