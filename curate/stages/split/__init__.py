"""Split: stratified, group-aware, stable train/val/test assignment.

- Stratified by label: per class, the split counts follow the ratios (largest-remainder rounding, so with
  ungrouped samples every class is within one sample of its target).
- Grouped: a duplicate group (``dup_group`` from dedupe) and any user ``group_col`` lands whole in one split;
  groups are merged transitively (union-find), so no chain of duplicates can cross a split.
- Stable: rows that already have a split keep it; new rows fill each class's deficit, in an order given by a
  hash of the group key and the seed. Ingesting more data and splitting again moves nothing that was assigned.
- ``keep_existing``: the source's own split (``origin_split``, e.g. MNIST's official test set) is respected and
  val is carved out of the source's train rows.
- ``train_dev``: a ``train_dev`` split carved out of train after the assignment (a fraction of each class's train
  rows, or a total count shared out over the classes in proportion): held out of training but drawn from the
  training distribution, so that train -> train_dev error measures variance and train_dev -> val error measures
  the mismatch between training data and the data that matters. Grouped, stratified and stable like the rest.
"""


from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from curate.errors import UsageError
from curate.stage import Context, Option, Stage, cli

if TYPE_CHECKING:
    from curate.stage import StageResult

DEFAULT_RATIOS = (("train", 0.7), ("val", 0.2), ("test", 0.1))


@dataclass(frozen=True)
class SplitConfig:
    """Settings of ``curate split``.

    Attributes:
        ratios: train:val:test (70:20:10), train:val (80:20) or train=8,val=1,test=1; stored as ``((name, fraction),
            ...)`` with fractions summing to 1.
        seed: Seed of the assignment order (same seed, same splits).
        group_col: Column whose equal values must share a split (e.g. patient_id).
        keep_existing: Keep the source's own split (origin_split, e.g. MNIST test) and carve val out of its train rows.
        train_dev: Carve a train_dev split out of train: a fraction (0.05) of each class's train rows or a row count
            (500).
    """

    ratios: tuple[tuple[str, float], ...] = field(default=DEFAULT_RATIOS, metadata=cli(metavar="RATIOS"))
    seed: int = 0
    group_col: str | None = None
    keep_existing: bool = False
    train_dev: float | None = field(default=None, metadata=cli(metavar="FRACTION|COUNT"))


def parse_ratios(text: str) -> tuple[tuple[str, float], ...]:
    """``"70:20:10"`` -> train/val/test; ``"80:20"`` -> train/val; ``"train=8,test=2"`` for named splits."""
    text = text.strip()
    try:
        if "=" in text:
            pairs = [p.split("=") for p in text.split(",") if p.strip()]
            named = [(k.strip(), float(v)) for k, v in pairs]
        else:
            nums = [float(x) for x in text.split(":")]
            names = {2: ("train", "val"), 3: ("train", "val", "test")}.get(len(nums))
            if names is None:
                raise ValueError("need two or three numbers")
            named = list(zip(names, nums, strict=True))
    except ValueError as exc:
        raise UsageError(f"--ratios {text!r}: {exc}; use 70:20:10, 80:20 or train=8,val=1,test=1") from None
    total = sum(v for _, v in named)
    if total <= 0 or any(v < 0 for _, v in named) or len({k for k, _ in named}) != len(named):
        raise UsageError(f"--ratios {text!r}: fractions must be non-negative, named once, and not all zero")
    return tuple((k, v / total) for k, v in named)


def parse_train_dev(value: str | float | None) -> float | None:
    """``"0.05"`` -> a fraction of train, ``"500"`` -> a count of rows; None stays None.

    Raises:
        UsageError: not a number, <= 0, or a count that is not a whole number.
    """
    if value is None:
        return None
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise UsageError(f"--train-dev {value!r}: give a fraction such as 0.05 or a row count such as 500") from None
    if not v > 0 or (v >= 1 and v != int(v)) or v != v or v == float("inf"):
        raise UsageError(f"--train-dev {value!r}: a fraction must be in (0, 1), a count a whole number >= 1")
    return v


def prepare(values: dict[str, Any]) -> dict[str, Any]:
    """``ratios = "80:10:10"`` (or ``{train = 8, val = 1, test = 1}``) -> ``((name, fraction), ...)``; ``train_dev``
    as text or a number -> a checked fraction or count."""
    if values.get("train_dev") is not None:
        values = {**values, "train_dev": parse_train_dev(values["train_dev"])}
    ratios = values.get("ratios")
    if isinstance(ratios, dict):
        ratios = ",".join(f"{k}={v}" for k, v in ratios.items())
    if isinstance(ratios, str):
        values = {**values, "ratios": parse_ratios(ratios)}
    return values


def key(_ctx: Context, cfg: SplitConfig) -> dict[str, Any]:
    """The recorded settings; ``train_dev`` only when set, so versions split before it existed stay cached."""
    out: dict[str, Any] = {"ratios": [list(r) for r in cfg.ratios], "seed": cfg.seed, "group_col": cfg.group_col,
                           "keep_existing": cfg.keep_existing}  # fmt: skip
    if cfg.train_dev:
        out["train_dev"] = cfg.train_dev
    return out


def run(ctx: Context, cfg: SplitConfig) -> StageResult | dict[str, Any]:
    """Assign splits (``curate.stages.split.assign``); with the ``check`` option only the leakage report."""
    from curate.stages.split.assign import leakage, run_split

    if ctx.options.get("check"):
        table = ctx.need_table()
        res = {"version": ctx.parent, **leakage(table, cfg.group_col)}
        return {**res, "exit_code": 1 if res["groups_crossing"] else 0}
    return run_split(ctx.need_table(), cfg)


def summary(res: dict[str, Any]) -> str:
    if "groups_crossing" in res:
        return (f"leakage check {res['version']}: {res['groups_crossing']} of {res['groups_checked']} duplicate/user groups "
                f"cross splits ({res['rows_in_crossing_groups']} rows)")  # fmt: skip
    return ", ".join(f"{k} {v:,}" for k, v in res["stats"]["summary"]["per_split"].items())


def details(res: dict[str, Any]) -> list[str]:
    if res.get("cached") or "stats" not in res:
        return []
    st = res["stats"]
    lk = st["leakage"]
    out = [f"newly assigned {st['newly_assigned']:,}; groups crossing splits: {lk['groups_crossing']} of {lk['groups_checked']}"]
    if "train_dev" in st:
        out.append(f"train_dev: {st['train_dev']['rows']:,} rows ({st['train_dev']['moved']:,} moved from train now)")
    return out


STAGE = Stage(
    "split",
    SplitConfig,
    run,
    doc="""Assign train/val/test: stratified by label, duplicate groups whole, stable when data is added later.

    Rows that already have a split keep it; new rows fill each class up to the ratios. Every duplicate group
    (from `curate dedupe`) and every value of `--group-col` lands in one split, so nothing leaks.

    Examples:

        curate split                         # 70:20:10
        curate split --ratios 80:10:10 --seed 1 --group-col patient_id
        curate split --keep-existing         # MNIST: official test stays test; val carved out of train
        curate split --check                 # leakage report only
        curate split --train-dev 0.05        # 5% of train (per class) held out as train_dev
    """,
    columns={"split": "train, val, test (or named splits, train_dev): duplicate groups and group_col values whole"},
    summary=summary,
    details=details,
    prepare=prepare,
    key=key,
    cacheable=lambda ctx, _cfg: not ctx.options.get("check"),
    options=(Option("check", bool, "Only report duplicate groups that cross splits; commit nothing.", ("--check",), False),),
)
