"""Scoring a model on the splits of a ``TrainingData``: ``evaluate`` (one loader), ``score_splits`` (every split, the
train split in order and unaugmented, as the final scores of ``curate train``), and the trainer's log-line helpers."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from curate.learn.data import SPLITS, TrainingData


@torch.no_grad()
def evaluate(model: torch.nn.Module, loader: Any, device: torch.device, amp: torch.dtype | None = None) -> dict[str, Any]:
    """Run ``model`` over a loader in eval mode (under autocast to ``amp`` when given, else fp32).

    Returns:
        ``{"ids": N sample ids, "y": int64 (N,), "probs": float32 (N, K), "loss": mean NLL, "acc": accuracy}``.
    """
    model.eval()
    ids: list[str] = []
    ys, probs = [], []
    for x, y, batch_ids in loader:
        with torch.autocast(device.type, dtype=amp or torch.float32, enabled=amp is not None):
            logits = model(x.to(device, non_blocking=True))
        probs.append(torch.softmax(logits.float(), 1).cpu())
        ys.append(y)
        ids += batch_ids
    p = torch.cat(probs).numpy() if probs else np.zeros((0, 0), np.float32)
    y = torch.cat(ys).numpy() if ys else np.zeros(0, np.int64)
    nll = float(-np.log(np.clip(p[np.arange(len(y)), y], 1e-12, None)).mean()) if len(y) else float("nan")
    return {"ids": ids, "y": y, "probs": p, "loss": nll, "acc": float((p.argmax(1) == y).mean()) if len(y) else float("nan")}


def score_splits(model: torch.nn.Module, data: TrainingData, device: torch.device) -> dict[str, dict[str, Any]]:
    """``evaluate`` (fp32) on every split of ``data`` in ``SPLITS`` order: ``train`` (fixed order, no augmentation:
    the training error measured the way the held-out errors are), ``train_dev``, ``val``, ``test``."""
    return {name: evaluate(model, data.loader(name, scoring=True), device) for name in SPLITS if name in data.loaders}


def amp_name(dtype: torch.dtype | None) -> str:
    """``bfloat16`` / ``float16``, or ``off`` for fp32 (what the log line and ``amp`` in the result say)."""
    return str(dtype).replace("torch.", "") if dtype is not None else "off"


def epoch_line(row: dict[str, Any], epochs: int, star: bool) -> str:
    """The log line of one epoch (``*``: val improved)."""
    dev = f"  train_dev loss {row['train_dev_loss']:.4f} acc {row['train_dev_acc']:.4f}" if "train_dev_loss" in row else ""
    val = f"  val loss {row['val_loss']:.4f} acc {row['val_acc']:.4f}" if "val_loss" in row else ""
    return (
        f"epoch {row['epoch']}/{epochs}  train loss {row['train_loss']:.4f} acc {row['train_acc']:.4f}{dev}{val}"
        f"  {row['seconds']:.1f}s{'  *' if star else ''}"
    )
