"""Clean: label errors (cleanlab on k-fold out-of-sample predictions), outliers, low-quality images.

The contract (settings, checks, summary, the review file after the commit); the work is in ``checks`` (the
driver: columns, actions, method calibration), ``labelissues`` (out-of-sample probabilities, cleanlab, the
``--model`` head), ``quality`` (model-free image checks) and ``reviewfile`` (``--review-out``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from curate.errors import UsageError
from curate.stage import Context, Option, Stage, cli

if TYPE_CHECKING:
    from curate.stage import StageResult
    from curate.stages.clean.quality import QualityThresholds

ACTIONS = ("flag", "exclude", "relabel", "weight")
ACT_ON = ("train", "all")
HEADS = ("linear", "model")
_LQ = "Low-quality thresholds"
_MODEL = "Out-of-sample models"


@dataclass(frozen=True)
class CleanConfig:
    """Settings of ``curate clean`` (defaults < curate.toml ``[clean]`` < CLI flags); ``checks`` for semantics.

    Attributes:
        find_mislabels: Find label errors: cleanlab on k-fold out-of-sample probabilities.
        find_outliers: Find out-of-distribution samples: low max probability under the k-fold models (with --model:
            kNN distance).
        find_low_quality: Model-free checks: dark, bright, blurry, low information, tiny, odd aspect, grayscale.
        action: flag: columns only; exclude: exclude what was found; relabel: give label issues the suggested label;
            weight: exclude junk, give every other checked row the posterior that its label is right as a training
            weight (clean_weight, multiplied into sample_weight).
        policy: What exclude/relabel act on. estimate: the rows with the least likely given labels, as many as
            cleanlab estimates are mislabeled (x 0.9), and junk (ood_score above junk_threshold); relabel gives them
            a confident suggestion, else excludes them. confident: only label issues whose given label's probability
            is far below its class's confidence, and junk. all: every flagged row (the behaviour before issue 18).
        act_on: train: act on train rows and rows not split yet; all: every split.
        max_fraction: Act on at most this fraction of the checked rows per issue kind, worst first.
        method: cleanlab filter_by: low_normalized_margin, low_self_confidence, prune_by_noise_rate, both, ...
        relabel_threshold: relabel only where the suggested class has at least this probability.
        outlier_threshold: Flag outliers whose ood_score (1 - max probability, scaled 0..1) exceeds this.
        junk_threshold: Policies estimate and confident exclude (as junk) the rows whose ood_score exceeds this.
        pred_probs: Use your own probabilities (Parquet/CSV/JSONL: sample_id + one column per class, or a probs list).
        model: A model backend (curate:RUN, torchscript:FILE, onnx:FILE, hf:PATH, embeddings:FILE): label issues from
            a k-fold linear head on its frozen embeddings, outliers from kNN distance; no CNN is trained.
        head: With --model: linear (a k-fold logistic regression on its embeddings, fitted to the version's labels)
            or model (the model's own classifier head, for a model trained on other images with these classes:
            rows a curate:RUN trained on are left unjudged; curate.stages.clean.modelhead).
        folds: k of the k-fold models.
        passes: 2: train the k models again without the rows the first pass acts on and judge by these (twice the
            model time; curate.stages.clean.passes); with --model, the linear head is fitted again (seconds).
        arch: small-cnn | tiny-cnn | resnet-mini | resnet-mini-wide | linear.
        epochs: Epochs per fold model.
        batch_size: Batch size.
        lr: Learning rate of the fold models.
        augment: Augmentation of the fold models (see curate train --augment).
        image_size: Square side the models see (default: the data's size, at most 64).
        device: auto (cuda, mps, cpu) | cpu | cuda | mps.
        seed: Seed of the folds and models.
        dark: Flag when the brightest 1% is below this (0-1).
        bright: Flag when 1 - darkest 1% is below this.
        blurry: Flag when the edge-frequency score is below this.
        low_information: Flag below this information score.
        tiny: Flag when the shorter side is below this many pixels.
        odd_aspect: Flag when long/short side exceeds this.
        grayscale_majority: Flag color images of a mostly grayscale dataset above this grayscale share.
    """

    find_mislabels: bool = False
    find_outliers: bool = False
    find_low_quality: bool = False
    action: str = "flag"
    policy: str = "estimate"
    act_on: str = "train"
    max_fraction: float = 0.2
    method: str = "low_normalized_margin"
    relabel_threshold: float = 0.9
    outlier_threshold: float = 0.75
    junk_threshold: float = 0.85
    pred_probs: str | None = field(default=None, metadata=cli(metavar="PATH"))
    model: str | None = field(default=None, metadata=cli(panel=_MODEL))
    head: str = field(default="linear", metadata=cli(panel=_MODEL))
    folds: int = field(default=5, metadata=cli(panel=_MODEL))
    passes: int = field(default=1, metadata=cli(panel=_MODEL))
    arch: str = field(default="small-cnn", metadata=cli(panel=_MODEL))
    epochs: int = field(default=3, metadata=cli(panel=_MODEL))
    batch_size: int = field(default=128, metadata=cli(panel=_MODEL))
    lr: float = field(default=3e-3, metadata=cli(hidden=True))
    augment: str = field(default="none", metadata=cli(panel=_MODEL))
    image_size: int | None = field(default=None, metadata=cli(panel=_MODEL))
    device: str = field(default="auto", metadata=cli(panel=_MODEL))
    seed: int = field(default=0, metadata=cli(panel=_MODEL))
    dark: float = field(default=0.15, metadata=cli(panel=_LQ))
    bright: float = field(default=0.15, metadata=cli(panel=_LQ))
    blurry: float = field(default=0.25, metadata=cli(panel=_LQ))
    low_information: float = field(default=0.035, metadata=cli(panel=_LQ))
    tiny: int = field(default=16, metadata=cli(panel=_LQ))
    odd_aspect: float = field(default=4.0, metadata=cli(panel=_LQ))
    grayscale_majority: float = field(default=0.9, metadata=cli(hidden=True))


def thresholds(cfg: CleanConfig) -> QualityThresholds:
    """The low-quality thresholds of ``cfg``."""
    from curate.stages.clean.quality import QualityThresholds

    names = ("dark", "bright", "blurry", "low_information", "tiny", "odd_aspect", "grayscale_majority")
    return QualityThresholds(**{n: getattr(cfg, n) for n in names})


def config_dict(cfg: CleanConfig, workspace: Path | None = None) -> dict[str, Any]:
    """The resolved config (stored in version.json); a ``--pred-probs`` file is identified by its sha256 too, and a
    ``--model`` on disk by its digest (a retrained run at the same path is another model: no stale cache hit)."""
    import dataclasses

    out = dataclasses.asdict(cfg)
    if cfg.pred_probs and Path(cfg.pred_probs).is_file():
        from curate.blobs import file_sha256

        out["pred_probs_sha256"] = file_sha256(cfg.pred_probs)
    if cfg.model:
        from curate.models import model_path, path_digest

        path = model_path(cfg.model, workspace)
        if path is not None:
            out["model_digest"] = path_digest(path)
    return out


def check_config(cfg: CleanConfig) -> None:
    """Raises ``UsageError`` for settings outside their range (before any work)."""
    from curate.learn.nets import ARCHS
    from curate.stages.clean.labelissues import METHODS

    if not (cfg.find_mislabels or cfg.find_outliers or cfg.find_low_quality):
        raise UsageError("nothing to check: pass --find-mislabels, --find-outliers and/or --find-low-quality")
    from curate.stages.clean.policy import POLICIES

    choices = (("action", cfg.action, ACTIONS), ("policy", cfg.policy, POLICIES), ("act-on", cfg.act_on, ACT_ON))
    for name, value, allowed in (*choices, ("method", cfg.method, METHODS)):
        if value not in allowed:
            raise UsageError(f"--{name} must be one of {', '.join(allowed)}, not {value!r}")
    if cfg.arch not in ARCHS:
        raise UsageError(f"--arch must be one of {', '.join(ARCHS)}, not {cfg.arch!r}")
    if not 0 < cfg.max_fraction <= 1 or not 0 < cfg.relabel_threshold <= 1:
        raise UsageError("--max-fraction and --relabel-threshold must be in (0, 1]")
    if cfg.folds < 2 or cfg.epochs < 1 or cfg.batch_size < 1:
        raise UsageError("--folds must be >= 2, --epochs and --batch-size >= 1")
    if cfg.passes not in (1, 2):
        raise UsageError(f"--passes must be 1 or 2, not {cfg.passes}")
    if cfg.pred_probs and not Path(cfg.pred_probs).is_file():
        raise UsageError(f"--pred-probs {cfg.pred_probs}: no such file")
    if cfg.model:
        from curate.models import parse_spec

        parse_spec(cfg.model)
        if cfg.pred_probs and not cfg.find_outliers:
            raise UsageError("--model and --pred-probs both give the label probabilities: pass one (or add --find-outliers)")
    if cfg.head not in HEADS:
        raise UsageError(f"--head must be one of {', '.join(HEADS)}, not {cfg.head!r}")
    if cfg.head == "model" and not cfg.model:
        raise UsageError("--head model judges with a model's own classifier: give it with --model")
    if not 0 < cfg.junk_threshold <= 1:
        raise UsageError("--junk-threshold must be in (0, 1]")
    if not 0 < cfg.outlier_threshold <= 1:
        raise UsageError("--outlier-threshold must be in (0, 1]")
    thresholds(cfg).check()


def run(ctx: Context, cfg: CleanConfig) -> StageResult:
    """Check, annotate and act (``curate.stages.clean.checks``); the review rows wait in ``ctx.scratch``."""
    from curate.stages.clean.checks import run_clean

    res = run_clean(ctx.ws, ctx.need_table(), ctx.parent, cfg, workers=ctx.n_workers(), progress=ctx.progress)
    ctx.scratch["review"] = res.review
    # what the command's lines say about the run (the version's config has it too, but the lines see the result)
    res.stats["action"], res.stats["policy"] = cfg.action, cfg.policy
    if res.stats.get("oof") == "computed":
        res.stats["oof_models"] = {"folds": cfg.folds, "epochs": cfg.epochs, "arch": cfg.arch, "passes": cfg.passes}
    return res


def finish(ctx: Context, cfg: CleanConfig, res: dict[str, Any]) -> dict[str, Any]:
    """``--review-out``: the review file of this run (or, on a cache hit, rebuilt from the version's columns)."""
    out = ctx.options.get("review_out")
    if out:
        from curate.stages.clean.reviewfile import write_clean_review

        res["review"] = write_clean_review(ctx.ws, res["version"], ctx.scratch.get("review", []), Path(out))
    return res


def summary(res: dict[str, Any]) -> str:
    st = res["stats"]
    kinds = ("label_issues", "outliers", "low_quality")
    out = ", ".join(f"{st[k]['flagged']:,} {k.replace('_', ' ')} ({st[k].get('acted_on', 0):,} acted on)" for k in kinds if k in st)
    weighted = st.get("label_issues", {}).get("weighted")
    return out + (f", {weighted['down_weighted']:,} rows down-weighted" if weighted else "")


def _model_line(st: dict[str, Any]) -> str:
    model = f"out-of-sample probabilities {st.get('oof', 'n/a')}"
    runs = st.get("oof_models") or {}
    if "model" in st:
        emb = st.get("embeddings")
        got = f"{emb['computed']:,} embedded, {emb['cached']:,} cached" if emb else "no embeddings needed"
        got = f"{emb['from_file']:,} vectors read" if emb and emb["from_file"] else got
        model = f"model {st['model']['spec']}: {got}"
        if st.get("oof") == "computed" and st.get("head") == "model":
            skipped = f", {st['in_sample']:,} rows it trained on not judged" if st.get("in_sample") else ""
            model += f"; its own head {st['oof_seconds']:.1f}s{skipped}"
        elif st.get("oof") == "computed":
            model += f"; {runs.get('folds', '?')}-fold linear head {st['oof_seconds']:.1f}s"
    elif st.get("oof") == "computed":
        fit = f"{runs.get('folds', '?')} folds x {runs.get('epochs', '?')} epochs {runs.get('arch', '?')}"
        model += f" ({fit}, {st['oof_seconds']:.0f}s)"
    elif st.get("oof") == "cached":
        model += f" (from version {st['oof_version']})"
    return f"{st['checked']:,} samples checked; {model}; {st['seconds']:.1f}s"


def details(res: dict[str, Any]) -> list[str]:
    """What each check found and what was done (a cache hit repeats the version's findings), the review file."""
    if "stats" not in res:
        return []
    st = res["stats"]
    action = st.get("action", "flag")
    out = [] if res.get("cached") else [_model_line(st)]
    verb = {"flag": "flagged only", "exclude": "excluded", "relabel": "relabeled", "weight": "weighted"}[action]
    if "label_issues" in st:
        li = st["label_issues"]
        by = ", ".join(f"{k} {v:,}" for k, v in li["flagged_by_split"].items()) or "none"
        acted = f"{li.get('relabeled', li['acted_on']):,} {verb}" if action != "flag" else "flagged only"
        if "weighted" in li:
            from curate.stages.clean.weights import LOW

            w = li["weighted"]
            acted = f"{w['rows']:,} rows weighted (mean {w['mean']:.2f}), {w['down_weighted']:,} below {LOW}"
        out.append(f"label issues: {li['flagged']:,} of {li['rows_checked']:,} ({by}); {acted}; "
                   f"out-of-sample accuracy {li['out_of_sample_accuracy']:.1%}")  # fmt: skip
        if li["top_confusions"]:
            out.append("most common: " + ", ".join(f"{c['given']}->{c['suggested']} {c['rows']}" for c in li["top_confusions"][:5]))
    for key, name in (("outliers", "outliers"), ("low_quality", "low quality")):
        if key in st:
            o = st[key]
            checks = f" ({', '.join(f'{k} {v}' for k, v in o['by_check'].items()) or 'none'})" if "by_check" in o else ""
            # policies estimate and confident exclude junk (outliers) under relabel too
            junk = action == "weight" or (action == "relabel" and st.get("policy", "all") in ("estimate", "confident"))
            junk = junk and key == "outliers"
            done = f"{o['acted_on']:,} excluded" if action == "exclude" or junk else "flagged only"
            out.append(f"{name}: {o['flagged']:,} of {o['rows_checked']:,}{checks}; {done}")
    if "review" in res:
        out.append(f"review: {res['review']['rows']:,} rows -> {res['review']['path']}")
    return out


STAGE = Stage(
    "clean",
    CleanConfig,
    run,
    doc="""Find label errors, outliers and low-quality images; flag, exclude or relabel them.

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
        curate clean --find-mislabels --find-outliers --action weight
        curate clean --find-outliers --find-low-quality --action exclude
        curate clean --find-mislabels --pred-probs my_probs.parquet
        curate clean --find-mislabels --find-outliers --model hf:./dinov2-small
    """,
    columns={
        "is_label_issue": "cleanlab find_label_issues (method) on out-of-sample probabilities",
        "label_quality": "probability of the given label under a model that never saw the row (1 clean .. 0 issue)",
        "suggested_label": "the out-of-sample argmax class",
        "suggested_confidence": "the out-of-sample probability of suggested_label",
        "ood_score": "0..1, higher = more atypical",
        "is_outlier": "ood_score above outlier_threshold",
        "is_low_quality": "a model-free image check failed (also <check>_score / is_<check> per check)",
        "low_quality_score": "0..1, lower = worse (to sort the flagged rows)",
        "low_quality_reasons": "which checks failed",
        "given_label": "the label before relabel changed it (label_source = relabel:clean)",
        "clean_weight": "--action weight: the posterior that the given label is right (0..1), the row's training weight",
        "sample_weight": "--action weight: the training weight, clean_weight times any earlier sample_weight",
    },
    summary=summary,
    details=details,
    check=check_config,
    key=lambda ctx, cfg: config_dict(cfg, ctx.ws.root),
    finish=finish,
    options=(Option("review_out", str | None, "Write the flagged samples, worst first: issues.html (with thumbnails) or "
                    "issues.csv.", ("--review-out",)),),  # fmt: skip
    workers=True,
)
