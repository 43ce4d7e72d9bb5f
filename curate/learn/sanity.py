"""The first debugging step of any training setup: overfit one small batch (``curate train --sanity``)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from curate.errors import CurateError
from curate.learn.data import TrainingData
from curate.learn.nets import build
from curate.learn.runtime import NanLoss, make_optimizer, pick_device
from curate.learn.train import TrainConfig


def sanity_check(
    cfg: TrainConfig,
    data: TrainingData,
    *,
    steps: int = 60,
    rows: int = 32,
    shuffle_labels: bool = False,
    log: Callable[[str], None] = lambda s: None,
) -> dict[str, Any]:
    """Overfit one small train batch: the loss must fall below a quarter of its start within ``steps`` steps.

    The first debugging step of any training setup: if a net cannot memorize 32 images, the labels, the
    learning rate or the input pipeline is broken. ``shuffle_labels`` permutes the labels at every step (a
    negative control: nothing can be learned).

    Raises:
        CurateError: the loss did not fall enough (or became NaN).
    """
    torch.manual_seed(cfg.seed)
    device = pick_device(cfg.device)
    x, y, _ = next(iter(data.loaders["train"]))
    x, y = x[:rows].to(device), y[:rows].to(device)
    model = build(cfg.arch, data.channels, len(data.classes), data.size).to(device)
    opt = make_optimizer(model, cfg.optimizer, cfg.lr, 0.0)
    g = torch.Generator().manual_seed(cfg.seed)
    losses = []
    model.train()
    for _ in range(steps):
        target = y[torch.randperm(len(y), generator=g).to(device)] if shuffle_labels else y
        loss = F.cross_entropy(model(x), target)
        if not torch.isfinite(loss):
            raise NanLoss(f"sanity check: the loss became {float(loss):.4g} after {len(losses)} steps", hint="lower --lr")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    first, last = losses[0], float(np.mean(losses[-5:]))
    model.eval()
    with torch.no_grad():
        acc = float((model(x).argmax(1) == y).float().mean())
    res = {"passed": last < 0.25 * first, "rows": len(y), "steps": steps, "loss_first": first, "loss_last": last, "batch_acc": acc}
    log(f"sanity: loss on one batch of {len(y)}: {first:.4f} -> {last:.4f} in {steps} steps (batch accuracy {acc:.2f})")
    if not res["passed"]:
        raise CurateError(
            f"sanity check FAILED: the loss on one batch of {len(y)} went from {first:.4f} to {last:.4f} in {steps} "
            "steps (it must fall below a quarter)",
            hint="check that labels match images, the --lr (not 0, not huge) and the normalization",
        )
    return res
