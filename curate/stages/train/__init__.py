"""Train: fit a classifier on a version's export shards (exported first when missing), score it on every split.

The contract of ``curate train`` (an output: it writes a run folder, it commits no version). The trainer is one
readable file, ``curate.learn.train`` (torch is imported there, never here: ``curate --help`` stays instant). A run
folder holds ``model_last.pt`` / ``model_best.pt`` with ``meta_*.json``, then ``metrics.json``, ``curves.png`` and
``confusion_<split>.png``; without ``out`` it is ``<workspace>/models/<version>-<arch>`` (``ws.models_dir()``).

In a pipeline (``ctx.reuse``) the run goes to ``<workspace>/models/<version>-<arch>-<settings hash>`` unless ``out``
is set; a finished run of the same version and settings is returned as it is, an unfinished one is resumed
(``curate.stages.train.runs``).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from curate.errors import CurateError
from curate.stage import OUTPUT, Context, Option, Stage, cli

OPTIMIZERS = ("adamw", "sgd")
SCHEDULES = ("onecycle", "cosine", "step", "constant")
RUNTIME = ("device", "workers", "max_minutes", "resume", "out")  # settings a resumed run may change


@dataclass
class TrainConfig:
    """Everything that decides a training run (stored in every checkpoint and ``meta_*.json``).

    Attributes:
        version: the dataset version (default HEAD; the command's ``--version``).
        arch: small-cnn | tiny-cnn | resnet-mini | resnet-mini-wide | linear.
        epochs: Epochs; the onecycle/cosine schedule spans all of them.
        batch_size: Samples per step.
        lr: Learning rate, the peak for onecycle.
        optimizer: adamw | sgd (momentum 0.9, nesterov).
        weight_decay: Not on biases/BatchNorm; default 0.05 adamw, 5e-4 sgd.
        schedule: onecycle | cosine | step (x0.1 at 1/2 and 3/4) | constant.
        label_smoothing: Label smoothing of the training loss, 0 = off.
        augment: Train-only augmentation: none | flip | shift | flip-shift | standard | light | medium | heavy.
        patience: Early stopping: epochs without a better val accuracy, 0 = off.
        seed: Seed of init, batch order and augmentation; CPU runs are deterministic.
        device: auto (cuda, then mps, then cpu) | cpu | cuda | mps.
        amp: Mixed precision on CUDA (bf16, else fp16 + loss scaling) and on CPUs with native bf16.
        channels_last: channels-last memory format on CUDA (ignored elsewhere).
        workers: DataLoader worker processes.
        loader: auto | memory (decode shards once) | stream (decode on the fly).
        format: Shards to read: parquet | webdataset.
        image_size: Resize to this square side (default: the data's size).
        max_minutes: Wall-clock budget: no epoch starts that would end after it.
        out: Run folder (default WORKSPACE/models/VERSION-ARCH).
        resume: Continue the run in --out from its last checkpoint.
    """

    version: str | None = field(default=None, metadata=cli(hidden=True))
    arch: str = "small-cnn"
    epochs: int = 10
    batch_size: int = 128
    lr: float = 3e-3
    optimizer: str = "adamw"
    weight_decay: float | None = None
    schedule: str = "onecycle"
    label_smoothing: float = 0.0
    augment: str = "none"
    patience: int = 5
    seed: int = 0
    device: str = "auto"
    amp: bool = True
    channels_last: bool = field(default=True, metadata=cli(hidden=True))
    workers: int = field(default=0, metadata=cli("--workers", "-j"))
    loader: str = "auto"
    format: str = "parquet"
    image_size: int | None = None
    max_minutes: float | None = None
    out: str | None = field(default=None, metadata=cli("--out", "-o"))
    resume: bool = False


def check_config(cfg: TrainConfig) -> None:
    """Reject impossible settings before any work starts (exit code 2)."""
    from curate.learn.data import AUGMENT_POLICIES
    from curate.learn.nets import ARCHS

    bad = [
        (cfg.arch in ARCHS, f"--arch {cfg.arch!r}: choose from {', '.join(ARCHS)}"),
        (cfg.optimizer in OPTIMIZERS, f"--optimizer {cfg.optimizer!r}: choose from {', '.join(OPTIMIZERS)}"),
        (cfg.schedule in SCHEDULES, f"--schedule {cfg.schedule!r}: choose from {', '.join(SCHEDULES)}"),
        (cfg.augment in AUGMENT_POLICIES, f"--augment {cfg.augment!r}: choose from {', '.join(AUGMENT_POLICIES)}"),
        (cfg.device in ("auto", "cpu", "cuda", "mps"), f"--device {cfg.device!r}: choose auto, cpu, cuda or mps"),
        (cfg.epochs >= 1 and cfg.batch_size >= 1, "--epochs and --batch-size must be at least 1"),
        (cfg.lr >= 0 and 0 <= cfg.label_smoothing < 1, "--lr must be >= 0 and --label-smoothing in [0, 1)"),
    ]
    for ok, message in bad:
        if not ok:
            raise CurateError(message, exit_code=2)


def run(ctx: Context, cfg: TrainConfig) -> dict[str, Any]:
    """Train on the chosen version: the command's ``--version`` or the pipeline's position, else ``cfg.version``."""
    from curate.learn.train import train
    from curate.stages.train.runs import reuse_or_resume

    if ctx.version() is not None:
        cfg = dataclasses.replace(cfg, version=ctx.version())
    if ctx.reuse:
        cfg, done = reuse_or_resume(ctx.ws, cfg)
        if done is not None:
            return done
    try:
        res = train(ctx.ws, cfg, log=ctx.log, sanity=bool(ctx.options.get("sanity")), progress=ctx.progress)
    except KeyboardInterrupt:
        if ctx.reuse:
            raise
        msg = "interrupted: model_last.pt holds the last finished epoch; continue with --resume (same --out)"
        raise CurateError(msg, exit_code=130) from None
    return {**res, "cached": False} if ctx.reuse else res


def summary(res: dict[str, Any]) -> str:
    """The pipeline table's line; the sanity check's verdict."""
    if "sanity" in res:
        return "sanity check passed: the loss fell below a quarter of its start on one batch"
    scores = ", ".join(f"{s} acc {m['accuracy']:.3f}" for s, m in res["metrics"].items())
    return f"{res['arch']}, {res['epochs_run']} epochs{', ' + scores if scores else ''} -> {res['run']}"


def details(res: dict[str, Any]) -> list[str]:
    """How the run went, every split's scores and the largest error gap."""
    if "sanity" in res:
        return []
    from curate.learn.metrics import fmt_metrics

    out = [f"trained {res['arch']} on {res['version']} ({res['device']}): {res['epochs_run']} epochs in "
           f"{res['train_seconds']:.0f}s, stopped by {res['stopped']}; best epoch {res['best_epoch']} -> {res['run']}"]  # fmt: skip
    out += [fmt_metrics(split, m) for split, m in res["metrics"].items()]
    if res.get("diagnosis"):
        from curate.learn.gaps import summary_line

        out.append(summary_line(res["diagnosis"]))
    return out


STAGE = Stage(
    "train",
    TrainConfig,
    run,
    kind=OUTPUT,
    doc="""Train a classifier on a version's export shards (exported first if needed) and score it on val/test.

    Uses the version's train-only normalization; writes model_last.pt / model_best.pt with meta_*.json
    (config, classes, normalization, dataset version, metrics) each epoch, then metrics.json, curves.png and
    confusion_SPLIT.png into the run folder. Ctrl-C or a kill loses at most the current epoch: --resume.

    Examples:

        curate train --sanity
        curate train --arch small-cnn --epochs 12 --augment flip --label-smoothing 0.1
        curate train --out models/fm --resume
    """,
    summary=summary,
    details=details,
    check=check_config,
    options=(Option("sanity", bool, "Only overfit one small batch; fail if the loss does not fall.", ("--sanity",), False),),
    panel="Learning",
)
