"""What the trainer chooses and stores: device, precision, optimizer and schedule, checkpoint files.

Checkpoints are written atomically (tmp + rename) and hold only tensors and plain containers (numbers,
strings, lists, dicts), so ``torch.load(path, weights_only=True)`` reads them: no pickled code runs on load.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch

from curate.errors import CurateError

CKPT_FORMAT = 1


def pick_device(name: str) -> torch.device:
    """``auto``: cuda, then mps, then cpu. An explicit device that is not there is an error."""
    mps = getattr(torch.backends, "mps", None)
    has = {"cuda": torch.cuda.is_available(), "mps": mps is not None and mps.is_available()}
    if name == "auto":
        name = "cuda" if has["cuda"] else "mps" if has["mps"] else "cpu"
    if name != "cpu" and not has.get(name):
        raise CurateError(f"--device {name}: not available on this machine", hint="use --device auto or cpu")
    return torch.device(name)


def cpu_has_bf16() -> bool:
    """True when the CPU computes bf16 natively (AVX512-BF16 or AMX): bf16 autocast then trains ~1.8x faster."""
    try:
        return bool(torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())
    except AttributeError:  # pragma: no cover - older torch
        return False


def amp_dtype(enabled: bool, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for training (bf16 on CUDA and on CPUs with native bf16, else fp16 on CUDA), or None: fp32."""
    if not enabled:
        return None
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if device.type == "cpu" and cpu_has_bf16():
        return torch.bfloat16
    return None


def make_optimizer(model: torch.nn.Module, name: str, lr: float, weight_decay: float | None) -> torch.optim.Optimizer:
    """AdamW or SGD (momentum 0.9, Nesterov) with weight decay on weights only (not on BatchNorm and biases).

    ``weight_decay`` None: 0.05 for AdamW (decoupled, scaled by the lr), 5e-4 for SGD.
    """
    decay = [p for p in model.parameters() if p.ndim > 1]
    rest = [p for p in model.parameters() if p.ndim <= 1]
    wd = weight_decay if weight_decay is not None else (5e-4 if name == "sgd" else 0.05)
    groups = [{"params": decay, "weight_decay": wd}, {"params": rest, "weight_decay": 0.0}]
    if name == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=0.9, nesterov=True)
    return torch.optim.AdamW(groups, lr=lr)


def make_schedule(opt: torch.optim.Optimizer, name: str, lr: float, total_steps: int) -> torch.optim.lr_scheduler.LRScheduler:
    """A per-step schedule over ``total_steps``: onecycle (warm up to ``lr`` over 25%, anneal), cosine (to 0),
    step (x0.1 at 1/2 and 3/4) or constant."""
    total = max(total_steps, 1)
    if name == "onecycle":
        # At least 5: with 4, the warm-up phase ends at step 0.25 * 4 - 1 = 0 and OneCycleLR divides by zero (a run
        # of 3 steps, e.g. 600 rows for 1 epoch, crashed); runs that short never reach the extra steps anyway.
        return torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=max(total + 1, 5), pct_start=0.25)
    if name == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=total)
    if name == "step":
        return torch.optim.lr_scheduler.MultiStepLR(opt, milestones=[total // 2, total * 3 // 4], gamma=0.1)
    return torch.optim.lr_scheduler.ConstantLR(opt, factor=1.0, total_iters=0)


class NanLoss(CurateError):
    """The training loss became NaN or infinite."""


def save_checkpoint(path: Path, obj: dict[str, Any]) -> None:
    """Atomic write (tmp + rename): a kill never leaves a half-written checkpoint."""
    tmp = path.with_name(f".{path.name}.tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def write_json(path: Path, obj: Any) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(obj, indent=2, default=str) + "\n")
    os.replace(tmp, path)


def load_checkpoint(path: Path) -> dict[str, Any]:
    """``torch.load(weights_only=True)`` with a clear error for a missing or foreign file."""
    if not path.exists():
        raise CurateError(f"{path}: no checkpoint there", hint="give a run folder written by `curate train`")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - a damaged or foreign file is a user error
        # torch's unpickling errors span many lines; the CLI promises one
        why = (str(exc).strip().splitlines() or [""])[0][:200]
        raise CurateError(f"{path}: not a loadable curate checkpoint ({type(exc).__name__}: {why})") from exc
    if not isinstance(ckpt, dict) or ckpt.get("format") != CKPT_FORMAT:
        raise CurateError(f"{path}: not a curate checkpoint (format {CKPT_FORMAT} expected)")
    return ckpt
