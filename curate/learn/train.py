"""The trainer: one config, one loop you can read top to bottom (ARCHITECTURE.md section 7).

``train(ws, cfg)`` reads the export of a version, then ``fit`` runs: for each epoch, train on shuffled (and
optionally augmented) batches, evaluate on val, write ``model_last.pt`` + ``meta_last.json`` (and
``model_best.pt`` + ``meta_best.json`` when val improved), stop early when val stops improving. A ``train_dev``
split (``curate split --train-dev``) is never trained on; it is scored each epoch next to val. At the end the best
weights are scored on train (in order, unaugmented), train_dev, val and test (``metrics.json`` with ``errors``:
1 - accuracy per split, ``curves.png``, ``confusion_<split>.png``).

Checkpoints hold only tensors and plain containers, so ``torch.load(path, weights_only=True)`` loads them.
``model_last.pt`` also holds the optimizer, schedule, grad-scaler and RNG state: a run killed at any point
and restarted with ``resume=True`` redoes the interrupted epoch and continues with exactly the losses an
uninterrupted run would have had (on CPU with a fixed seed; the batch order depends only on seed and epoch).
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable
from dataclasses import asdict, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F

from curate.errors import CurateError
from curate.learn.checkpoint import load_model, read_meta, restore, save_epoch
from curate.learn.data import TrainingData, set_epoch
from curate.learn.evaluation import amp_name, epoch_line, evaluate, score_splits
from curate.learn.nets import build, count_params
from curate.learn.runtime import CKPT_FORMAT, NanLoss, amp_dtype, load_checkpoint, make_optimizer, make_schedule, pick_device
from curate.stages.train import OPTIMIZERS, RUNTIME, SCHEDULES, TrainConfig, check_config

if TYPE_CHECKING:
    from curate.workspace import Workspace

__all__ = ["OPTIMIZERS", "RUNTIME", "SCHEDULES", "NanLoss", "TrainConfig", "check_config", "fit", "train"]


def fit(
    cfg: TrainConfig,
    data: TrainingData,
    run_dir: Path | None = None,
    *,
    log: Callable[[str], None] = lambda s: None,
    on_epoch_end: Callable[[dict[str, Any]], None] | None = None,
    progress: Any = None,
) -> dict[str, Any]:
    """Train a fresh (or resumed) model on ``data``; checkpoints go to ``run_dir`` unless it is None.

    ``progress(description, total)`` is a context manager yielding ``advance(n)`` (a bar per epoch).

    Returns:
        ``{"model", "history", "best", "meta", "stopped", "device", "seconds"}``; ``model`` holds the best
        weights (the last ones when there is no val split).

    Raises:
        NanLoss: the loss became NaN/inf (the last good epoch stays in ``model_last.pt``).
    """
    model, device, amp = _setup_model(cfg, data)
    train_loader, val_loader = data.loaders["train"], data.loaders.get("val")
    # streamed epochs end with a ragged batch per worker: an upper bound keeps the schedule from running out
    steps_per_epoch = len(train_loader) if data.mode == "memory" else math.ceil(data.rows["train"] / cfg.batch_size) + cfg.workers + 1
    opt = make_optimizer(model, cfg.optimizer, cfg.lr, cfg.weight_decay)
    sched = make_schedule(opt, cfg.schedule, cfg.lr, cfg.epochs * steps_per_epoch)
    # bf16 needs no loss scaling; fp16 (older GPUs) does. The scaler is a no-op when disabled.
    scaler = torch.amp.GradScaler(device.type, enabled=amp == torch.float16)
    meta = _run_meta(cfg, data, model)
    history: list[dict[str, Any]] = []
    best: dict[str, Any] = {}
    best_state: dict[str, torch.Tensor] | None = None
    start, bad_epochs, elapsed = 0, 0, 0.0
    last_path = run_dir / "model_last.pt" if run_dir else None
    if cfg.resume and last_path is not None and last_path.exists():
        ckpt = restore(last_path, model, {"optimizer": opt, "scheduler": sched, "scaler": scaler}, device.type == "cuda")
        history, best, bad_epochs, elapsed = ckpt["history"], ckpt["best"], ckpt["bad_epochs"], ckpt["elapsed"]
        start = len(history)
        log(f"resumed {run_dir} after epoch {start} of {cfg.epochs}, with the run's saved settings")
    t0 = time.perf_counter() - elapsed
    stopped = "epochs"
    for epoch in range(start, cfg.epochs):
        if cfg.max_minutes and history and (time.perf_counter() - t0) + history[-1]["seconds"] > cfg.max_minutes * 60:
            stopped = "time budget"
            break
        te = time.perf_counter()
        row = _train_epoch(model, (opt, sched, scaler), cfg, data, epoch, steps_per_epoch, device=device, amp=amp,
                           progress=progress, last_path=last_path)  # fmt: skip
        # --- score train_dev and val, keep the best (by val accuracy, then loss)
        val = _score_epoch(model, data, device, amp, row)
        improved = val is None or not best or val > (best["val_acc"], -best["val_loss"])
        row["seconds"] = round(time.perf_counter() - te, 3)
        history.append(row)
        if improved:
            best, bad_epochs = dict(row), 0
            best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        else:
            bad_epochs += 1
        log(epoch_line(row, cfg.epochs, improved and val_loader is not None))
        # --- checkpoint: weights, meta; last also the full training state for --resume
        if run_dir is not None:
            progress_state = {"history": history, "best": best, "bad_epochs": bad_epochs, "elapsed": time.perf_counter() - t0}
            _checkpoint(run_dir, model, (opt, sched, scaler), {**meta, "epoch": epoch + 1, "metrics": row}, progress_state, improved)
        if on_epoch_end is not None:
            on_epoch_end(row)
        if cfg.patience and bad_epochs >= cfg.patience:
            stopped = f"early stopping (no better val accuracy for {cfg.patience} epochs)"
            break
    if best_state is not None:
        model.load_state_dict(best_state)
    elif run_dir is not None and (run_dir / "model_best.pt").exists():  # resumed after the last improvement
        model.load_state_dict(load_model(run_dir / "model_best.pt")[0].state_dict())
    seconds = round(time.perf_counter() - t0, 3)
    return {"model": model, "history": history, "best": best, "meta": meta, "stopped": stopped,
            "device": str(device), "amp": amp_name(amp), "seconds": seconds}  # fmt: skip


def _run_meta(cfg: TrainConfig, data: TrainingData, model: torch.nn.Module) -> dict[str, Any]:
    """What travels inside every checkpoint: the config, classes, input shape and normalization (nanoGPT-style)."""
    return {
        "format": CKPT_FORMAT,
        "config": asdict(cfg),
        "arch": cfg.arch,
        "classes": data.classes,
        "channels": data.channels,
        "size": list(data.size),
        "normalization": {k: data.normalization[k] for k in ("mean", "std", "channels")},
        "dataset_version": data.version,
        "rows": data.rows,
        "sampler": data.sampler,  # weighted: batches drawn by sample_weight (curate balance --strategy weights)
        "consistency": data.consistency.describe() if data.consistency else None,
        "params": count_params(model),
    }


def _train_epoch(
    model: torch.nn.Module,
    optim: tuple[torch.optim.Optimizer, Any, Any],
    cfg: TrainConfig,
    data: TrainingData,
    epoch: int,
    steps_per_epoch: int,
    *,
    device: torch.device,
    amp: Any,
    progress: Any,
    last_path: Path | None,
) -> dict[str, Any]:
    """One epoch over the train loader with ``optim`` = (optimizer, scheduler, grad scaler).

    Returns:
        The epoch's row: ``epoch``, ``train_loss``, ``train_acc``, ``lr``.

    Raises:
        NanLoss: the loss stopped being finite.
    """
    opt, sched, scaler = optim
    cuda = device.type == "cuda"
    check_every = 1 if device.type == "cpu" else 25  # a NaN check syncs the GPU: not every step there
    train_loader = data.loaders["train"]
    model.train()
    set_epoch(train_loader, epoch)
    loss_sum = torch.zeros((), device=device)
    correct = torch.zeros((), device=device, dtype=torch.int64)
    seen = 0
    bar = progress(f"epoch {epoch + 1}/{cfg.epochs}", steps_per_epoch) if progress else contextlib.nullcontext(lambda n=1: None)
    with bar as advance:
        for step, (x, y, _ids) in enumerate(train_loader):
            if len(y) < 2:  # a streamed epoch's ragged last batch of one: BatchNorm cannot train on it
                continue
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            if cuda and cfg.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            with torch.autocast(device.type, dtype=amp or torch.float32, enabled=amp is not None):
                # pseudolabel's consistency term (curate.learn.consistency) runs the labeled rows with its strong views
                logits, extra = data.consistency(model, x, epoch * steps_per_epoch + step) if data.consistency else (model(x), None)
                loss = F.cross_entropy(logits.float(), y, label_smoothing=cfg.label_smoothing)
                loss = loss + extra if extra is not None else loss
            opt.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
            sched.step()
            loss_sum += loss.detach() * len(y)
            correct += (logits.argmax(1) == y).sum()
            seen += len(y)
            if step % check_every == 0 and not torch.isfinite(loss_sum):
                saved = f"{last_path} holds the last good epoch" if last_path and last_path.exists() else "nothing was saved"
                raise NanLoss(
                    f"the training loss became {float(loss.detach()):.4g} at epoch {epoch + 1}, step {step + 1} "
                    f"(lr {opt.param_groups[0]['lr']:.3g}); training stopped",
                    hint=f"lower --lr (or use --schedule onecycle), and check the images and labels; {saved}",
                )
            advance(1)
    if not torch.isfinite(loss_sum):
        raise NanLoss(f"the training loss became NaN/inf in epoch {epoch + 1}; training stopped", hint="lower --lr")
    return {
        "epoch": epoch + 1,
        "train_loss": float(loss_sum) / max(seen, 1),
        "train_acc": float(correct) / max(seen, 1),
        "lr": opt.param_groups[0]["lr"],
    }


def _checkpoint(
    run_dir: Path,
    model: torch.nn.Module,
    optim: tuple[torch.optim.Optimizer, Any, Any],
    epoch_meta: dict[str, Any],
    progress_state: dict[str, Any],
    improved: bool,
) -> None:
    """Save the epoch: weights and meta (``model_best.pt`` too when ``improved``); ``model_last.pt`` also holds
    the optimizer, schedule, scaler and RNG state plus ``progress_state`` (history, best, bad_epochs, elapsed) for
    ``--resume``."""
    opt, sched, scaler = optim
    cuda = next(model.parameters()).device.type == "cuda"
    state = {"optimizer": opt.state_dict(), "scheduler": sched.state_dict(), "scaler": scaler.state_dict(),
             "rng_cpu": torch.get_rng_state(), "rng_cuda": torch.cuda.get_rng_state() if cuda else None,
             **progress_state}  # fmt: skip
    meta = {**epoch_meta, "best": progress_state["best"], "history": progress_state["history"]}
    save_epoch(run_dir, improved, meta, model, state)


def _setup_model(cfg: TrainConfig, data: TrainingData) -> tuple[torch.nn.Module, torch.device, Any]:
    """A fresh model of ``cfg.arch`` on the auto-detected device (CUDA, then MPS, then CPU), and its AMP dtype."""
    torch.manual_seed(cfg.seed)
    device = pick_device(cfg.device)
    amp = amp_dtype(cfg.amp, device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    model = build(cfg.arch, data.channels, len(data.classes), data.size).to(device)
    if device.type == "cuda" and cfg.channels_last:
        model = model.to(memory_format=torch.channels_last)
    return model, device, amp


def _score_epoch(
    model: torch.nn.Module, data: TrainingData, device: Any, amp: Any, row: dict[str, Any]
) -> tuple[float, float] | None:
    """Score train_dev (held out, same distribution as train: its gap to train is variance) and val into ``row``.

    Returns:
        ``(val accuracy, -val loss)`` to rank epochs by, or None without a val split.
    """
    if "train_dev" in data.loaders:
        ev = evaluate(model, data.loaders["train_dev"], device, amp)
        row.update(train_dev_loss=ev["loss"], train_dev_acc=ev["acc"])
    if data.loaders.get("val") is None:
        return None
    from curate.learn.metrics import classification_metrics

    ev = evaluate(model, data.loaders["val"], device, amp)
    f1 = classification_metrics(ev["y"], ev["probs"], data.classes)["macro_f1"]
    row.update(val_loss=ev["loss"], val_acc=ev["acc"], val_macro_f1=f1)
    return ev["acc"], -ev["loss"]

def config_from_meta(saved: dict[str, Any], given: TrainConfig) -> TrainConfig:
    """The saved config of a run, with only the runtime settings (device, workers, budget) taken from ``given``."""
    names = {f.name for f in fields(TrainConfig)}
    merged = {k: v for k, v in saved.items() if k in names}
    merged.update({k: getattr(given, k) for k in RUNTIME})
    return TrainConfig(**merged)


def default_run_dir(ws: Workspace, cfg: TrainConfig, version: str) -> Path:
    """``cfg.out``, else ``<workspace>/models/<version>-<arch>``."""
    return Path(cfg.out) if cfg.out else ws.models_dir() / f"{version}-{cfg.arch}"


def train(
    ws: Workspace,
    cfg: TrainConfig,
    *,
    log: Callable[[str], None] = lambda s: None,
    progress: Any = None,
    sanity: bool = False,
    on_epoch_end: Callable[[dict[str, Any]], None] | None = None,
) -> dict[str, Any]:
    """``curate train``: read (or make) the export of ``cfg.version``, fit, and score the best model on val/test.

    With ``sanity=True`` only the one-batch overfitting check runs (nothing is written).

    Returns:
        A JSON-able summary: run folder, device, epochs run, why it stopped, best epoch, val/test metrics.

    Raises:
        CurateError: bad settings, a run folder that already holds a run (without ``resume``), NaN loss.
    """
    check_config(cfg)
    vid = ws.resolve(cfg.version)
    run_dir = default_run_dir(ws, cfg, vid)
    if not sanity:
        cfg, vid = _resume_or_refuse(run_dir, cfg, vid, log)
    device = pick_device(cfg.device)
    torch.manual_seed(cfg.seed)
    from curate.learn.data import workspace_data

    data = workspace_data(
        ws,
        vid,
        fmt=cfg.format,
        loader=cfg.loader,
        image_size=cfg.image_size,
        batch_size=cfg.batch_size,
        augment="none" if sanity else cfg.augment,
        seed=cfg.seed,
        workers=cfg.workers,
        pin=device.type == "cuda",
        progress=progress,
    )
    if sanity:
        from curate.learn.sanity import sanity_check

        return {"sanity": sanity_check(cfg, data, log=log), "version": vid, "arch": cfg.arch}
    run_dir.mkdir(parents=True, exist_ok=True)
    log(
        f"train {cfg.arch} on {vid}: {data.rows.get('train', 0):,} train / {data.rows.get('val', 0):,} val images "
        f"{data.channels}x{data.size[0]}x{data.size[1]}, {len(data.classes)} classes, {data.mode} loader"
        f"{' (weighted by sample_weight)' if data.sampler == 'weighted' else ''}, device {device}, "
        f"autocast {amp_name(amp_dtype(cfg.amp, device))}"
    )
    res = fit(cfg, data, run_dir, log=log, on_epoch_end=on_epoch_end, progress=progress)
    from curate.learn.gaps import diagnose
    from curate.learn.metrics import write_report

    # Final scores in fp32, so that `curate evaluate` and `curate predict` reproduce them exactly.
    splits = score_splits(res["model"], data, device)
    errors = {name: 1.0 - ev["acc"] for name, ev in splits.items()}
    info = {
        "config": asdict(cfg),
        "dataset_version": vid,
        "device": res["device"],
        "amp": res["amp"],
        "stopped": res["stopped"],
        "best": res["best"],
        "train_seconds": res["seconds"],
        "params": res["meta"]["params"],
        "errors": errors,  # 1 - accuracy per split: the bias / variance / mismatch ladder of the report
    }
    report = write_report(run_dir, splits, data.classes, res["history"], extra=info)
    keys = ("accuracy", "macro_f1", "roc_auc_ovr_macro", "topk_error")
    return {"run": str(run_dir), "version": vid, "arch": cfg.arch, "device": res["device"], "amp": res["amp"],
            "epochs_run": len(res["history"]), "stopped": res["stopped"], "best_epoch": res["best"].get("epoch"),
            "train_seconds": res["seconds"], "metrics": {k: {m: v[m] for m in keys} for k, v in report.items()},
            "errors": errors, "diagnosis": diagnose(errors)}  # fmt: skip


def _resume_or_refuse(run_dir: Path, cfg: TrainConfig, vid: str, log: Callable[[str], None]) -> tuple[TrainConfig, str]:
    """A run folder that holds a run is refused unless ``resume``; resuming takes the checkpoint's settings and
    dataset version, so the continued run is the same run."""
    last = run_dir / "model_last.pt"
    if last.exists() and not cfg.resume:
        raise CurateError(f"{run_dir} already holds a training run", hint="pass --resume to continue it, or --out for a new run")
    if cfg.resume and last.exists():
        saved = read_meta(load_checkpoint(last), last)
        return config_from_meta(saved["config"], cfg), saved["dataset_version"]
    if cfg.resume:
        log(f"--resume: no checkpoint in {run_dir} yet; starting a new run there")
    return cfg, vid
