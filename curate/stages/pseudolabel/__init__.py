"""Pseudolabel: grow the labeled train set with confident, in-distribution predictions on the unlabeled pool.

Rows, in the parent version:

- labeled train rows (``status=ok``, a label that is not a pseudo-label, ``split=train``) train every round;
- val rows (labeled, ``split=val``) compare the rounds' models row by row (a later round is kept unless it is
  significantly worse, ``rank.py``) and calibrate the OOD filter; test rows are unused;
- the pool: ``ok`` rows without a label whose split is unset or ``train`` (pseudo-labels of an earlier run go
  back into the pool: a rerun starts from the given labels). Val and test rows are never pseudo-labeled.

The loop is ``curate.stages.pseudolabel.loop`` (rounds, the classifier filter, revocation, stopping). The committed
version holds the pseudo-labels that trained the chosen round's model (the last kept round, normally the last):

| column | meaning |
| --- | --- |
| label, label_source | the predicted class and ``pseudo:<round>`` on accepted rows (``split`` set to ``train``) |
| pseudo_round | the round since which the row's pseudo-label has been accepted (null: not accepted) |
| pseudo_predicted, pseudo_confidence | the chosen round's selection: argmax class and its probability (pool rows) |
| pseudo_status | ``accepted``, ``below_threshold``, ``ood``, ``knn_disagree``, ``over_quota`` (pool rows) |
| pseudo_knn_vote | ``select = "knn"``: the majority class of the row's nearest labeled train rows in ``model``'s embeddings |
| pseudo_ood_score | feature distance to the labeled rows / the OOD threshold (> 1 = out of distribution) |
| pseudo_revoked_round | the last round that revoked an earlier pseudo-label of the row (null: never) |

Nothing is dropped: rows that were not accepted stay unlabeled with their status. Every round's model is saved to
``out`` (default: the workspace's ``models/<parent>-pseudolabel``, ``Workspace.model_dir``) as
``model_round<r>.pt`` (round 0: supervised only) and the chosen one again as ``model_best.pt``, loadable by
``curate evaluate``/``predict``/``filter``; ``state/pseudolabel.json`` holds the per-round report.

The ``pool`` option (a folder, manifest or archive) is ingested unlabeled and deduplicated first: the runner runs
the ``ingest`` and ``dedupe`` stages (``Stage.before``), each committing its version as ``curate ingest`` and
``curate dedupe`` would, and the loop builds on the deduplicated version; so a pool image that duplicates a
labeled, val or test image is excluded as a duplicate (the earlier row is kept) and never pseudo-labeled.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from curate.errors import CurateError, UsageError
from curate.stage import Context, Option, Stage, cli

if TYPE_CHECKING:
    from curate.stage import StageResult

FILTERS = ("ood", "none")
SELECTS = ("confidence", "knn")
CONSISTENCY = ("fixmatch", "none")
CONSISTENCY_FIELDS = ("consistency", "consistency_weight", "consistency_threshold", "unlabeled_ratio", "consistency_strength")
RUNTIME = ("device",)  # settings that change the speed only: left out of the cache key


@dataclass(frozen=True)
class PseudolabelConfig:
    """Settings of ``curate pseudolabel`` (defaults < curate.toml ``[pseudolabel]`` < CLI flags).

    Attributes:
        ratio: L:P labeled to pseudo-labeled rows in EVERY training batch (10:1: a batch of 128 holds 117 labeled
            and 11 pseudo-labeled rows, so pseudo-labels stay a small share of the signal however many are accepted).
        rounds: Select-and-retrain rounds after the supervised round 0.
        threshold: Confidence bar of an easy class; harder classes get a lower, per-class bar (FlexMatch).
        min_threshold: No class's bar goes below this.
        per_class_top: Instead of thresholds: the K most confident predictions per class.
        filter: ood: refuse rows far from the labeled rows in feature space; none.
        select: confidence: the confidence bars alone; knn: also require the labeled rows' kNN vote in --model's
            embedding space to agree with the predicted class (knn_disagree otherwise).
        model: The model whose embeddings the kNN vote uses (curate:RUN, torchscript:FILE, onnx:FILE, hf:PATH,
            embeddings:FILE); needs --select knn.
        knn_k: Labeled rows that vote on each pool row (--select knn).
        ood_quantile: The val rows' distance quantile that is the OOD threshold.
        ood_k: Nearest labeled rows a row's OOD distance is averaged over.
        max_pseudo: Commit at most this many pseudo-labels, shared equally among classes.
        balance: No class takes more than this times the median class's candidates.
        patience: Stop after this many rounds in a row significantly worse on val than a kept round (a paired
            bootstrap over the val rows; such a round is never committed).
        stable: Stop when less than this share of the accepted rows changed (newly accepted, revoked or
            relabeled) since the last round's selection.
        consistency: fixmatch: rounds 1+ also train on the in-distribution pool with a FixMatch consistency term (the
            strong view of a row learns the weak view's class where that is at least --consistency-threshold); none
            (the default: a round costs ~5x the CPU). Measured to pay on digits (with --augment affine --threshold 0.99),
            not on Fashion-MNIST at strength 1 (README, BENCHMARKS.md "Pseudolabel").
        consistency_weight: lambda_u, the consistency loss's weight against the labeled cross-entropy.
        consistency_threshold: tau, the weak view's confidence a pool row needs to give its strong view a target.
        unlabeled_ratio: mu, pool rows per batch row in the consistency term (a step costs about 1 + 2 mu supervised steps of CPU).
        consistency_strength: Scales the strong augmentation's magnitudes (affine, brightness/contrast/sharpness, cutout).
        arch: small-cnn | tiny-cnn | resnet-mini | resnet-mini-wide | linear.
        epochs: Epochs per round (one epoch = one pass over the labeled rows).
        min_steps: Optimizer steps per round at least; epochs grow to reach it.
        batch_size: Rows per batch.
        lr: Peak learning rate.
        augment: Train-time augmentation (see curate train --augment; affine for digits).
        image_size: Square side the model sees (default: the data's).
        device: auto (cuda, mps, cpu) | cpu | cuda | mps.
        seed: Seed of every model and batch order.
        truth: Benchmarks: hidden pool labels (Parquet/CSV: sample_id or source, and label) to report pseudo-label
            accuracy per round; never used for selection.
        out: Folder for the models (default: the workspace's models/PARENT-pseudolabel).
    """

    ratio: str = "10:1"
    rounds: int = 3
    threshold: float = 0.95
    min_threshold: float = 0.8
    per_class_top: int | None = None
    filter: str = "ood"
    select: str = "confidence"
    model: str | None = None
    knn_k: int = 10
    ood_quantile: float = 0.99
    ood_k: int = 5
    max_pseudo: int | None = None
    balance: float = 2.0
    patience: int = 1
    stable: float = 0.005
    consistency: str = "none"
    consistency_weight: float = 1.0
    consistency_threshold: float = 0.95
    unlabeled_ratio: int = 2
    consistency_strength: float = 1.0
    arch: str = "small-cnn"
    epochs: int = 10
    min_steps: int = 500
    batch_size: int = 128
    lr: float = 3e-3
    augment: str = "none"
    image_size: int | None = None
    device: str = "auto"
    seed: int = 0
    truth: str | None = field(default=None, metadata=cli(metavar="FILE"))
    out: str | None = field(default=None, metadata=cli("--out", "-o", metavar="DIR"))


def check(cfg: PseudolabelConfig) -> None:
    """Raises ``UsageError`` for impossible settings, before any work starts."""
    from curate.learn.selftrain import parse_ratio
    from curate.learn.train import check_config as check_train

    parse_ratio(cfg.ratio)
    checks = [
        (cfg.rounds >= 1, f"--rounds {cfg.rounds}: give 1 or more"),
        (0 < cfg.threshold <= 1 and 0 <= cfg.min_threshold <= cfg.threshold, "--threshold must be in (0, 1] and >= --min-threshold"),
        (cfg.per_class_top is None or cfg.per_class_top >= 1, "--per-class-top must be at least 1"),
        (cfg.filter in FILTERS, f"--filter {cfg.filter!r}: choose from {', '.join(FILTERS)}"),
        (cfg.select in SELECTS, f"--select {cfg.select!r}: choose from {', '.join(SELECTS)}"),
        (cfg.select != "knn" or bool(cfg.model), "--select knn needs --model: the embeddings the labeled rows vote in"),
        (cfg.select == "knn" or not cfg.model, "--model is used by --select knn only: add --select knn"),
        (cfg.knn_k >= 1, "--knn-k must be at least 1"),
        (0 < cfg.ood_quantile <= 1 and cfg.ood_k >= 1, "--ood-quantile must be in (0, 1] and ood_k >= 1"),
        (cfg.max_pseudo is None or cfg.max_pseudo >= 0, "--max-pseudo must be >= 0"),
        (cfg.balance >= 0 and cfg.patience >= 1 and cfg.min_steps >= 1, "balance >= 0, patience >= 1 and min_steps >= 1"),
        (0 <= cfg.stable < 1, f"--stable {cfg.stable}: give a share in [0, 1)"),
        (cfg.consistency in CONSISTENCY, f"--consistency {cfg.consistency!r}: choose from {', '.join(CONSISTENCY)}"),
        (cfg.consistency_weight >= 0 and 0 < cfg.consistency_threshold <= 1, "--consistency-weight >= 0, threshold in (0, 1]"),
        (cfg.unlabeled_ratio >= 1 and cfg.consistency_strength >= 0, "--unlabeled-ratio >= 1 and --consistency-strength >= 0"),
    ]
    for ok, message in checks:
        if not ok:
            raise UsageError(message)
    if cfg.model:
        from curate.models import parse_spec

        parse_spec(cfg.model)
    try:
        check_train(train_config(cfg))
    except CurateError as exc:
        raise UsageError(exc.message) from exc


def train_config(cfg: PseudolabelConfig) -> Any:
    """The ``curate.learn.train.TrainConfig`` of every round."""
    from curate.learn.train import TrainConfig

    # patience 0 inside a round: its length is fixed by min_steps/epochs; fit has no val loader, the last epoch is kept
    return TrainConfig(arch=cfg.arch, epochs=cfg.epochs, batch_size=cfg.batch_size, lr=cfg.lr, augment=cfg.augment,
                       device=cfg.device, seed=cfg.seed, patience=0, image_size=cfg.image_size)  # fmt: skip


def key(ctx: Context, cfg: PseudolabelConfig) -> dict[str, Any]:
    """The resolved config stored with the version (the cache key): the device is left out, the truth file's
    sha256 and the ``--model``'s digest (a changed model file is a new config) are added."""
    d = dataclasses.asdict(cfg)
    for name in RUNTIME:
        d.pop(name)
    if cfg.select == "confidence":  # today's rule: the key of a version made before --select existed still matches
        for name in ("select", "model", "knn_k"):
            d.pop(name)
    if cfg.consistency == "none":  # likewise for versions made before --consistency existed
        for name in CONSISTENCY_FIELDS:
            d.pop(name)
    if cfg.model:
        from curate.models import model_path, path_digest

        path = model_path(cfg.model, ctx.ws.root)
        if path is not None:
            d["model_digest"] = path_digest(path)
    if cfg.truth:
        from curate.blobs import file_sha256

        if not Path(cfg.truth).exists():
            raise UsageError(f"--truth {cfg.truth}: no such file")
        d["truth_sha256"] = file_sha256(cfg.truth)
    return d


def before(ctx: Context, _cfg: PseudolabelConfig) -> list[tuple[str, dict[str, Any]]]:
    """With ``pool``: ingest it unlabeled, then deduplicate (both committed by the runner; module doc).

    Raises:
        CurateError: the version to build on has no labeled train rows. Checked here, before the pool's versions
            are committed: a command that cannot run must not leave HEAD on its pool's ingest.
    """
    pool = ctx.options.get("pool")
    if not pool:
        return []
    from curate.stage import HEAD
    from curate.stages.pseudolabel.label import labeled_parent

    base = ctx.ws.head() if ctx.base in (HEAD, None) else ctx.ws.resolve(ctx.base)
    labeled_parent(None if base is None else ctx.ws.samples(base))
    return [("ingest", {"source": str(pool), "unlabeled": True}), ("dedupe", {})]


def run(ctx: Context, cfg: PseudolabelConfig) -> StageResult:
    from curate.stages.pseudolabel.label import run_pseudolabel

    out = Path(cfg.out) if cfg.out else ctx.ws.model_dir(f"{ctx.parent}-pseudolabel")
    return run_pseudolabel(ctx.ws, ctx.table(), ctx.parent, cfg, out=out, log=ctx.log, progress=ctx.progress)


def finish(ctx: Context, _cfg: PseudolabelConfig, res: dict[str, Any]) -> dict[str, Any]:
    """``pool``: the versions the pool's ingest and dedupe made, and how many new samples the ingest brought."""
    done = ctx.scratch.get("before") or {}
    if "ingest" not in done:
        return res
    ing, dd = done["ingest"], done["dedupe"]
    return {**res, "pool": {"ingest": ing["version"], "dedupe": dd["version"], "new_samples": ing["stats"].get("new_samples")}}


def summary(res: dict[str, Any]) -> str:
    """The chosen round, what it committed, val accuracy before and after."""
    st = res["stats"]
    before, after = st.get("val_accuracy_supervised"), st.get("val_accuracy_chosen")
    val = f"; val {before:.4f} -> {after:.4f}" if before is not None and after is not None else ""
    return f"{st['accepted']:,} pseudo-labels (round {st['chosen_round']} of {st['rounds_run']}){val}"


def _round_line(r: dict[str, Any], knn: bool) -> str:
    """One round of the details: what it accepted, and how its model compared on val."""
    acc = r.get("val_accuracy")
    val = f"val accuracy {acc:.4f}" if acc is not None else "no val"
    if r.get("delta_accuracy") is not None:
        val += f" ({r['delta_accuracy']:+.3f} vs round {r['vs_round']}, 90% CI [{r['delta_low']:+.3f}, {r['delta_high']:+.3f}])"
    if r["round"] == 0:
        return f"  round 0 (labeled only): {val}"
    pacc = f", pseudo-label accuracy {r['pseudo_accuracy']:.4f}" if r.get("pseudo_accuracy") is not None else ""
    conf = f", mean confidence {r['mean_confidence']:.3f}" if r.get("mean_confidence") is not None else ""
    kn = f", knn disagree {r['knn_disagree']:,}" if knn else ""
    if r.get("consistency_mask_rate") is not None:  # share of the pool rows drawn whose weak view gave a target
        conf += f", consistency targets {r['consistency_mask_rate']:.0%}"
    took = f"accepted {r['accepted_total']:,} (revoked {r['revoked']:,}, ood {r['ood']:,}{kn}; {r['selection_change']:.1%} changed)"
    verdict = "" if r.get("kept", True) else "; significantly worse: not kept"
    return f"  round {r['round']}: {took}{conf}; {val}{pacc}{verdict}"


def details(res: dict[str, Any]) -> list[str]:
    st = res["stats"]
    out = []
    if "pool" in res:
        p = res["pool"]
        out.append(f"pool: {p.get('new_samples') or 0:,} new unlabeled samples ingested ({p['ingest']}), deduplicated ({p['dedupe']})")
    out.append(f"{st['labeled_train']:,} labeled train rows, {st['val']:,} val, pool of {st['pool']:,}; {st['seconds']:.0f}s")
    if st.get("knn"):
        kn, emb = st["knn"], st["knn"]["embeddings"]
        got = f"{emb['from_file']:,} vectors read" if emb["from_file"] else f"{emb['computed']:,} embedded, {emb['cached']:,} cached"
        out.append(f"kNN agreement: the {kn['knn_k']} nearest labeled rows vote in {kn['model']['spec']}'s embeddings ({got})")
    out += [_round_line(r, bool(st.get("knn"))) for r in st["rounds"]]
    out.append(f"stopped: {st['stopped']}")
    chosen = st["chosen_round"]
    kept = f"{st['accepted']:,} pseudo-labels of round {chosen} committed"
    if not chosen:
        kept = "every pseudo-labeled round was significantly worse than the supervised one: nothing committed"
    out.append(f"{kept}; models in {st['models']}")
    out.append(f"{st['summary']['included']:,} included, {st['summary']['excluded']:,} excluded")
    return out


STAGE = Stage(
    "pseudolabel",
    PseudolabelConfig,
    run,
    doc="""Grow the labeled train set with confident predictions on the unlabeled pool, round by round.

    Round 0 trains on the labeled train rows only. Each round then predicts the pool with the latest model,
    keeps predictions that pass the classifier filter (per-class confidence bar, in distribution, class quota;
    with --select knn --model SPEC also the vote of the nearest labeled rows in that model's embeddings),
    revokes earlier pseudo-labels that no longer pass, retrains with labeled and pseudo-labeled rows mixed at
    --ratio in every batch, and compares the new model with the earlier ones on val, row by row: it is kept
    unless significantly worse (paired bootstrap). The loop stops after --rounds, when the selection stops
    changing (--stable), or after --patience rejected rounds. The version commits the pseudo-labels of the
    chosen (last kept) round (label_source=pseudo:ROUND, split=train) and every pool row's verdict
    (pseudo_status); val and test rows are never pseudo-labeled. Models: OUT/model_best.pt (the chosen round)
    and model_round0.pt (supervised only). With --consistency fixmatch, rounds 1+ also learn from the whole
    in-distribution pool: a strong augmentation of each row is trained towards its weak view's class when that is
    confident (FixMatch; about 5x the CPU per step at --unlabeled-ratio 2).

    Examples:

        curate pseudolabel --ratio 10:1
        curate pseudolabel --pool data/unlabeled --rounds 3 --threshold 0.98
        curate pseudolabel --per-class-top 500 --max-pseudo 5000 --augment affine
        curate pseudolabel --select knn --model hf:./dinov2-small --knn-k 10
        curate pseudolabel --consistency fixmatch --unlabeled-ratio 2 --augment affine
    """,
    columns={
        "pseudo_round": "the round since which the row's pseudo-label is accepted (null: not accepted)",
        "pseudo_predicted": "the chosen round's argmax class (pool rows)",
        "pseudo_confidence": "its probability (pool rows)",
        "pseudo_status": "accepted, below_threshold, ood, knn_disagree, over_quota (pool rows)",
        "pseudo_knn_vote": "--select knn: the labeled rows' kNN vote in --model's embedding space (pool rows)",
        "pseudo_ood_score": "feature distance to the labeled rows / the OOD threshold (> 1: out of distribution)",
        "pseudo_revoked_round": "the last round that revoked an earlier pseudo-label of the row (null: never)",
    },  # fmt: skip
    summary=summary,
    details=details,
    check=check,
    key=key,
    before=before,
    finish=finish,
    options=(
        Option(
            "pool",
            str,
            "Folder/manifest/archive to add as the unlabeled pool (ingested unlabeled and deduplicated first).",
            ("--pool",),
        ),
    ),  # fmt: skip
    workers=True,
)
