"""Dedupe: find exact and near-duplicate images, group them, keep one representative per group.

The contract (settings, checks, summary); the work is in ``find`` (the driver, with the threshold calibration),
``signatures`` (per-sample decode, pixel hash, luma and value thumbnails), ``search`` (descriptor ANN index),
``pairs`` (extra views, the decision), ``verify`` (aligned pair scores), ``robust`` (fitted-filter pair scores)
``semantic`` (``--model``: embedding pairs, an extra signal) and ``groups`` (connected components,
representatives, columns); ``transforms`` is the public family of near-duplicate edits the benchmark and the
tests plant.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from curate.errors import UsageError
from curate.stage import Context, Stage, cli

if TYPE_CHECKING:
    from curate.stage import StageResult

#: Both fitted together on planted copies of 12 transform families, with webp, sharpen, rotate and their pairs held
#: out (``bench/bench_dedupe_generalize.py``, BENCHMARKS.md "Dedupe: edits nobody named"); the aligned score alone
#: was 0.90 (issue 3, ``bench/bench_dedupe.py``), the fitted-filter score now takes the heavier edits.
DEFAULT_THRESHOLD = 0.92
DEFAULT_ROBUST_THRESHOLD = 0.94
#: The whitened embedding cosine of ``--model`` (``curate.stages.dedupe.semantic``): fitted on 9 transform families of
#: the Fashion-MNIST set (webp, sharpen, rotate and pair held out, as for the pixel thresholds) with a curate
#: small-cnn trained on 10,000 disjoint Fashion-MNIST train rows: the lowest cosine whose added pairs are >= 90 %
#: planted copies (``bench/bench_dedupe_semantic.py``; BENCHMARKS.md "Dedupe: a semantic signal from a model").
DEFAULT_SEMANTIC_THRESHOLD = 0.985
ACTIONS = ("exclude", "flag")
_MODEL = "Semantic signal (a model)"
KEEPS = ("first", "largest", "sharpest")


@dataclass(frozen=True)
class DedupeConfig:
    """Settings of ``curate dedupe`` (defaults < curate.toml ``[dedupe]`` < CLI flags).

    Attributes:
        threshold: Aligned near-duplicate score needed (0-1, higher = stricter). Default calibrated on planted copies.
        robust_threshold: Fitted-filter score (blur, sharpen, gamma, re-crops, borders) that also makes a pair
            a duplicate (0-1; 1 turns it off). Default calibrated with transform families held out.
        flip_is_duplicate: A left-right mirror image counts as a duplicate.
        action: exclude: mark duplicates excluded (reason duplicate); flag: columns only.
        keep: Representative kept per group: first | largest | sharpest.
        against: Check rows not in this reference against it: a VERSION of this workspace, a workspace folder, or
            FOLDER@VERSION. Reference rows are never marked duplicate.
        exact_only: Only identical decoded pixels; skip the near search.
        k: Nearest descriptor views fetched per view (candidate pairs to verify).
        nprobe: IVF lists scanned per query (the index is exact up to 4,096 descriptor vectors).
        batch_size: Samples per per-sample batch.
        model: Also pair images whose embeddings under this model (curate:RUN, torchscript:FILE, onnx:FILE, hf:PATH,
            embeddings:FILE) have a cosine of at least --semantic-threshold: an extra signal beside the pixel
            signatures (dup_kind semantic, reason semantic_duplicate). Off by default.
        semantic_threshold: Whitened embedding cosine (0-1) that makes a pair with --model. Default calibrated
            with transform families held out, on a model trained on other data; a new model may need its own.
        device: Where --model runs: auto (cuda, then mps, then cpu), cpu, cuda or mps.
        model_batch_size: Images per forward pass of --model.
    """

    threshold: float = DEFAULT_THRESHOLD
    robust_threshold: float = DEFAULT_ROBUST_THRESHOLD
    flip_is_duplicate: bool = False
    action: str = "exclude"
    keep: str = "first"
    against: str | None = None
    exact_only: bool = False
    k: int = field(default=4, metadata=cli(hidden=True))
    nprobe: int = field(default=4, metadata=cli(hidden=True))
    batch_size: int = field(default=512, metadata=cli(hidden=True))
    model: str | None = field(default=None, metadata=cli(panel=_MODEL))
    semantic_threshold: float = field(default=DEFAULT_SEMANTIC_THRESHOLD, metadata=cli(panel=_MODEL))
    device: str = field(default="auto", metadata=cli(panel=_MODEL))
    model_batch_size: int = field(default=64, metadata=cli(hidden=True))


def check_config(cfg: DedupeConfig) -> None:
    """Raises ``UsageError`` for values outside their range."""
    if cfg.action not in ACTIONS:
        raise UsageError(f"--action must be one of {', '.join(ACTIONS)}, not {cfg.action!r}")
    if cfg.keep not in KEEPS:
        raise UsageError(f"--keep must be one of {', '.join(KEEPS)}, not {cfg.keep!r}")
    if not 0.0 < cfg.threshold <= 1.0:
        raise UsageError(f"--threshold must be in (0, 1], not {cfg.threshold}")
    if not 0.0 < cfg.robust_threshold <= 1.0:
        raise UsageError(f"--robust-threshold must be in (0, 1], not {cfg.robust_threshold}")
    if cfg.k < 1 or cfg.nprobe < 1 or cfg.batch_size < 1 or cfg.model_batch_size < 1:
        raise UsageError("k, nprobe, batch_size and model_batch_size must be positive")
    if not 0.0 < cfg.semantic_threshold <= 1.0:
        raise UsageError(f"--semantic-threshold must be in (0, 1], not {cfg.semantic_threshold}")
    if cfg.model:
        from curate.models import parse_spec

        parse_spec(cfg.model)
        if cfg.exact_only:
            raise UsageError("--exact-only skips every near signal, the model's too: drop one of --exact-only and --model")


def config_key(cfg: DedupeConfig, workspace: Path | None = None) -> dict[str, Any]:
    """The recorded settings (the version's cache key); a ``--model`` on disk is identified by its digest too, so a
    retrained run at the same path is another model (no stale reuse)."""
    import dataclasses

    out = dataclasses.asdict(cfg)
    if cfg.model:
        from curate.models import model_path, path_digest

        path = model_path(cfg.model, workspace)
        if path is not None:
            out["model_digest"] = path_digest(path)
    return out


def run(ctx: Context, cfg: DedupeConfig) -> StageResult:
    """Find and annotate duplicates (``curate.stages.dedupe.find``)."""
    from curate.stages.dedupe.find import run_dedupe

    return run_dedupe(ctx.ws, ctx.need_table(), ctx.parent, cfg, workers=ctx.n_workers(), progress=ctx.progress)


def summary(res: dict[str, Any]) -> str:
    st = res["stats"]
    return f"{st['duplicates']:,} duplicates"


def details(res: dict[str, Any]) -> list[str]:
    """The groups, the signature cache, label conflicts and groups spanning splits (a fresh run only)."""
    if res.get("cached") or "stats" not in res:
        return []
    st = res["stats"]
    verb = "excluded" if st.get("action", "exclude") == "exclude" else "flagged"
    sem = f", {st.get('semantic_duplicates', 0):,} semantic" if st.get("semantic") else ""
    out = [
        f"{st['participants']:,} samples, {st['groups']:,} groups -> {st['duplicates']:,} duplicates {verb} "
        f"({st['exact_duplicates']:,} exact, {st['near_duplicates']:,} near{sem}; largest group {st['largest_group']}), "
        f"{st['seconds']:.1f}s",
        f"signatures: {st['signatures_computed']:,} computed, {st['signatures_cached']:,} cached, {st['signature_errors']:,} failed",
    ]
    sem = st.get("semantic")
    if sem:
        emb = sem["embeddings"]
        out.append(f"semantic ({sem['model']['spec']}): {sem['pairs']:,} pairs at whitened cosine >= {sem['threshold']}; "
                   f"embeddings {emb['computed']:,} computed, "
                   f"{emb['cached']:,} cached, {emb['from_file']:,} from a file ({emb['seconds']:.1f}s)")  # fmt: skip
    if st["label_conflict_groups"]:
        out.append(f"label conflicts: {st['label_conflict_groups']:,} groups ({st['label_conflict_rows']:,} rows) "
                   "carry different labels")
    cross = st["cross_split"]
    if cross["groups_spanning"]:
        per = ", ".join(f"{s} {n:,}" for s, n in sorted(cross["rows_with_dup_in_other_split"].items()))
        out.append(f"across {cross['column']}: {cross['groups_spanning']:,} groups span several splits ({per} rows)")
    return out


STAGE = Stage(
    "dedupe",
    DedupeConfig,
    run,
    doc="""Find exact and near-duplicate images and keep one per group.

    Exact duplicates have the same decoded pixels (a PNG and its lossless re-encode); near duplicates survive
    re-encoding, resizing, JPEG, brightness and contrast, 1-2 px shifts and small crops, and (a second,
    fitted-filter score) blur, sharpening, gamma, re-crops resized back and borders. Each group gets one
    representative (--keep); the others get is_duplicate=true and dup_of, and are excluded (reason duplicate)
    unless --action flag. With --model, pairs whose embeddings under that model are close (cosine) join the
    groups as an extra signal (dup_kind semantic, reason semantic_duplicate; embeddings cached per sample and
    model). Groups whose labels disagree are flagged dup_label_conflict. Signatures are cached per sample, so
    re-running or checking new data with --against only decodes what is new.

    Examples:

        curate dedupe
        curate dedupe --threshold 0.95 --action flag
        curate dedupe --keep largest
        curate dedupe --against 2                 # new rows vs version 2 of this workspace
        curate dedupe --against ../train-ws       # vs HEAD of another workspace
        curate dedupe --model hf:./dinov2-small --semantic-threshold 0.95
    """,
    columns={
        "dup_group": "sample_id of the group's representative; null when the image has no duplicate",
        "is_duplicate": "true for every member but the representative (never for --against reference rows)",
        "dup_of": "the representative a duplicate was matched to",
        "dup_score": "similarity to the representative: 1.0 same pixels, else the verification score",
        "dup_kind": "exact (same decoded pixels), near (pixel signatures) or semantic (only --model's embeddings link it)",
        "dup_label_conflict": "the group's members carry more than one distinct label (a label-noise signal)",
    },
    summary=summary,
    details=details,
    check=check_config,
    # another workspace may change under the same reference, so only an in-workspace run is reused
    cacheable=lambda _ctx, cfg: cfg.against is None,
    key=lambda ctx, cfg: config_key(cfg, ctx.ws.root),
    workers=True,
)
