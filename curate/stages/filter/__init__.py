"""Filter: score samples with a trained classifier and exclude those unlikely to belong to the task.

The contract (settings, checks, the cache key with the model's identity, summary); the work is in ``classify``
(scoring pack by pack, the columns, the score semantics), ``scoring`` (loading the run, the task classes,
the batched forward pass) and ``backend`` (``--model KIND:WHAT``: any model backend, with a linear head on its
embeddings when it has no classes).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from curate.errors import UsageError
from curate.stage import Context, Stage, cli

if TYPE_CHECKING:
    from curate.stage import StageResult
    from curate.stages.filter.backend import Judge
    from curate.stages.filter.scoring import Target

REASON = "classifier_filter"
ACTIONS = ("exclude", "flag")
SPLITS = ("train", "train_dev", "val", "test", "none")  # "none": rows without a split yet
DEVICES = ("auto", "cpu", "cuda", "mps")
CHECKPOINTS = ("best", "last")


@dataclass(frozen=True)
class FilterConfig:
    """Settings of ``curate filter`` (defaults < curate.toml ``[filter]`` < CLI flags).

    Attributes:
        model: Run folder written by `curate train` (or a model_*.pt file), or a model backend: curate:RUN,
            torchscript:FILE, onnx:FILE, hf:PATH, embeddings:FILE. A model without classes (embeddings only) gets a
            linear head fitted on the version's labeled train rows. Required.
        classes: Comma-separated model classes that belong to the task; filter_score = the sum of their
            probabilities. Default: the model classes that occur as labels of the version's included rows; when
            that is every model class (no 'other' class), filter_score = the max probability.
        min_prob: Rows with filter_score below this are filtered (0-1].
        action: exclude: filtered rows excluded, reason classifier_filter; flag: columns only.
        splits: Splits whose included rows are scored: train,val,test,none (no split yet), or all.
        which: Checkpoint of the run: best (else last) | last.
        batch_size: Images decoded and scored per batch (bounds memory).
        device: auto (cuda, then mps, then cpu) | cpu | cuda | mps.
        folds: Linear head on embeddings: labeled train rows are scored by k-fold models that never saw them.
        seed: Linear head on embeddings: seed of the folds.
    """

    model: str | None = field(default=None, metadata=cli("--model", "-m"))
    classes: tuple[str, ...] | None = field(default=None, metadata=cli(metavar="A,B"))
    min_prob: float = 0.5
    action: str = "exclude"
    splits: tuple[str, ...] = field(default=("all",), metadata=cli(metavar="SPLITS"))
    which: str = "best"
    batch_size: int = 256
    device: str = "auto"
    folds: int = 5
    seed: int = 0


def check_config(cfg: FilterConfig) -> None:
    """Raises ``UsageError`` for missing or out-of-range settings (before any work starts)."""
    if not cfg.model:
        raise UsageError("--model is required: a run folder written by `curate train`, or KIND:WHAT (onnx:model.onnx, ...)")
    if re.match(r"[A-Za-z][\w-]*:", cfg.model) and not Path(cfg.model).exists():
        from curate.models import parse_spec

        parse_spec(cfg.model)  # a KIND:WHAT with an unknown kind: one line listing the kinds (exit 2)
    if cfg.action not in ACTIONS:
        raise UsageError(f"--action must be one of {', '.join(ACTIONS)}, not {cfg.action!r}")
    if not 0.0 < cfg.min_prob <= 1.0:
        raise UsageError(f"--min-prob must be in (0, 1], not {cfg.min_prob}")
    if cfg.which not in CHECKPOINTS:
        raise UsageError(f"--which must be one of {', '.join(CHECKPOINTS)}, not {cfg.which!r}")
    if cfg.device not in DEVICES:
        raise UsageError(f"--device must be one of {', '.join(DEVICES)}, not {cfg.device!r}")
    if cfg.batch_size < 1 or cfg.folds < 2:
        raise UsageError("--batch-size must be at least 1 and --folds at least 2")
    splits = tuple(cfg.splits)
    if not splits:
        raise UsageError("--splits needs at least one split, or all")
    bad = [s for s in splits if s not in (*SPLITS, "all")]
    if bad:
        raise UsageError(f"--splits: unknown split(s) {', '.join(bad)}; choose from {', '.join(SPLITS)} or all")
    if "all" in splits and len(splits) > 1:
        raise UsageError("--splits all cannot be combined with named splits")
    if cfg.classes is not None and not cfg.classes:
        raise UsageError("--classes needs at least one class name")


def prepare(values: dict[str, Any]) -> dict[str, Any]:
    """``classes`` / ``splits`` given as text (``"a, b"``) -> tuples of names."""
    out = dict(values)
    for name in ("classes", "splits"):
        if isinstance(out.get(name), str):
            out[name] = tuple(v.strip() for v in out[name].split(",") if v.strip())
    return out


def config_dict(cfg: FilterConfig, run: Any, target: Target, checkpoint_sha: str | None = None) -> dict[str, Any]:
    """The resolved config stored in version.json and hashed by the runner for caching.

    Holds what decides the result: the checkpoint's sha256 (a retrained model at the same path is a new
    config), the resolved task classes and score mode, the threshold, action and splits. The batch size and
    device are left out: they change the speed and at most the float rounding of a score (batched convolutions
    round differently), so a result computed with other values of them is reused.
    """
    import dataclasses

    from curate.blobs import file_sha256

    d = dataclasses.asdict(cfg)
    for runtime in ("batch_size", "device", "folds", "seed"):  # folds and seed shape a linear head only
        d.pop(runtime)
    d["model"] = str(cfg.model)
    d["classes"] = list(target.classes)
    d["splits"] = list(cfg.splits)
    d.update(
        {
            "checkpoint": str(run.path),
            "checkpoint_sha256": checkpoint_sha or file_sha256(run.path),
            "model_classes": list(run.classes),
            "score": target.mode,
            "classes_from": target.source,
        }
    )
    return d


def key(ctx: Context, cfg: FilterConfig) -> dict[str, Any]:
    """Load the model and resolve the task classes on the chosen version first: both are part of the settings (and
    so of the cache key). The loaded model waits in ``ctx.scratch`` for ``run``."""
    from curate.blobs import file_sha256
    from curate.stages.filter.backend import is_backend_spec, load_judge
    from curate.stages.filter.scoring import load_model, resolve_target

    table = ctx.data if ctx.data is not None else ctx.ws.samples(ctx.ws.resolve(ctx.version()), columns=["status", "label", "split"])
    if is_backend_spec(cfg.model):
        judge = load_judge(ctx.ws, table, cfg)
        ctx.scratch.update(run=judge)
        return backend_config_dict(cfg, judge, resolve_target(cfg, judge.classes, table))
    loaded = load_model(cfg, ctx.ws.root)
    sha = file_sha256(loaded.path)
    target = resolve_target(cfg, loaded.classes, table)
    ctx.scratch.update(run=loaded, checkpoint_sha=sha)
    return config_dict(cfg, loaded, target, sha)


def backend_config_dict(cfg: FilterConfig, judge: Judge, target: Target) -> dict[str, Any]:
    """``config_dict`` for a model backend: the model's digest (a changed file is a new config), its kind, the head
    (the model's own, or linear on its embeddings) and the resolved classes; batch size and device left out."""
    import dataclasses

    d = dataclasses.asdict(cfg)
    for runtime in ("batch_size", "device", "which"):
        d.pop(runtime)
    if judge.head != "linear":  # folds and seed only shape a linear head
        d.pop("folds")
        d.pop("seed")
    d.update(classes=list(target.classes), splits=list(cfg.splits), model_digest=judge.backend.digest,
             model_kind=judge.backend.kind, head=judge.head, model_classes=list(judge.classes), score=target.mode,
             classes_from=target.source)  # fmt: skip
    return d


def run(ctx: Context, cfg: FilterConfig) -> StageResult:
    """Score and filter (``curate.stages.filter.classify``) with the run ``key`` loaded."""
    from curate.stages.filter.classify import run_filter

    return run_filter(ctx.ws, ctx.need_table(), ctx.parent, cfg, run=ctx.scratch.get("run"),
                      checkpoint_sha=ctx.scratch.get("checkpoint_sha"), progress=ctx.progress)  # fmt: skip


def summary(res: dict[str, Any]) -> str:
    st = res["stats"]
    return f"{st['filtered']:,} filtered"


def _per(counts: dict[str, int]) -> str:
    return ", ".join(f"{k} {v:,}" for k, v in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))) or "none"


def details(res: dict[str, Any]) -> list[str]:
    """What was scored and filtered, per split and predicted class; then the new HEAD's counts."""
    if "stats" not in res:
        return []
    st = res["stats"]
    if res.get("cached"):
        return [f"same parent, model and settings as {res['version']}; HEAD moved there (nothing recomputed)"]
    verb = "excluded" if st["action"] == "exclude" else "flagged"
    model = st["backend"]["spec"] if "backend" in st else st["checkpoint"]
    out = [f"filter {res['parent']} with {model} ({st['device']}): {st['scored']:,} scored, {st['filtered']:,} with "
           f"score < {st['min_prob']} {verb}; score = {st['score_description']}; {st['seconds']:.1f}s"]  # fmt: skip
    if "head_fit" in st:
        emb, fit = st["embeddings"], st["head_fit"]
        got = f"{emb['from_file']:,} vectors read" if emb["from_file"] else f"{emb['computed']:,} embedded, {emb['cached']:,} cached"
        out.append(f"linear head on its embeddings ({got}): fitted on {fit['rows']:,} labeled train rows, "
                   f"{fit['scored_out_of_sample']:,} of them scored by {fit['folds']}-fold models that never saw them")  # fmt: skip
    if st["filtered"]:
        out.append(f"filtered per split: {_per(st['filtered_per_split'])}")
        out.append(f"filtered per predicted class: {_per(st['filtered_per_predicted'])}")
    if st["decode_errors"]:
        out.append(f"{st['decode_errors']:,} images could not be decoded and were not scored")
    out.append(f"version {res['version']} (HEAD): {st['summary']['included']:,} included, {st['summary']['excluded']:,} excluded")
    return out


STAGE = Stage(
    "filter",
    FilterConfig,
    run,
    doc="""Score every included sample with a trained classifier and exclude those unlikely to belong to the task.

    The usual clean-up for web data: train a classifier (classes relevant/irrelevant, or the task classes plus
    an "other" class) with `curate train`, then drop what it does not believe belongs. Adds filter_score (the
    probability mass on --classes), filter_predicted (the argmax class), filter_confidence (its probability) and
    is_filtered (filter_score < --min-prob). Filtered rows are excluded (stage filter, reason classifier_filter)
    unless --action flag; rows already excluded are not scored and keep their reason; every row stays in the
    table. Without --classes the task classes are the model classes found among the version's labels; if that
    is all of them the score falls back to the max probability (a model unsure between the task classes).
    Uses the GPU when there is one. --version filters another version: the result is its child and becomes
    HEAD. The checkpoint's sha256 is part of the stage settings, so a retrained model is never a cached no-op.
    --model also takes a model backend (torchscript:, onnx:, hf:, embeddings:, curate:); one without classes
    gets a linear head on its embeddings, fitted on the version's labeled train rows (those scored out of sample,
    --folds), the embeddings cached per sample and model digest.

    Examples:

        curate filter --model models/web-relevance --classes relevant --min-prob 0.5
        curate filter -m models/fm-plus-other --classes shirt,shoe,bag --min-prob 0.7 --action flag
        curate filter -m models/fm --splits train --device cpu      # max probability (no "other" class)
        curate filter -m hf:./dinov2-small --classes shirt,shoe     # linear head on a backbone's embeddings
    """,
    columns={
        "filter_score": "probability mass on the task classes (or the max probability), 0..1",
        "filter_predicted": "the model's most probable class (argmax)",
        "filter_confidence": "the probability of filter_predicted",
        "is_filtered": "filter_score < min_prob",
    },
    summary=summary,
    details=details,
    check=check_config,
    prepare=prepare,
    key=key,
    reads_version=True,
)
