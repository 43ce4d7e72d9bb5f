"""Checkpoint files of a training run: the per-epoch save, the ``--resume`` restore, and a checked load.

A checkpoint is untrusted input (a run folder may come from anywhere): ``torch.load(weights_only=True)`` runs no
code, and before any network is built its ``meta_json`` is checked (architecture, classes, channels, a side of at
most ``MAX_SIDE`` pixels, the normalization) and the shapes of its weights are compared with those of the network
the meta describes, built on torch's ``meta`` device (no memory is allocated). So a file without meta, with weights
of other shapes or with a meta claiming 10^6 x 10^6 images is a one-line ``CurateError`` naming the file, never
an ``internal error`` or a terabyte allocation.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from curate.errors import CurateError
from curate.learn.nets import ARCHS, build
from curate.learn.runtime import CKPT_FORMAT, load_checkpoint, save_checkpoint, write_json

MAX_SIDE = 4096  # largest image side a checkpoint may declare (the nets are for thumbnails-to-photos sizes)


def read_meta(ckpt: dict[str, Any], path: Path) -> dict[str, Any]:
    """The checked ``meta_json`` of a loaded checkpoint.

    Returns:
        The meta dict: ``arch``, ``classes`` (non-empty list of str), ``channels`` (1 or 3), ``size`` ([H, W]),
        ``normalization`` (``mean``/``std`` with one float per channel) and whatever else the trainer stored.

    Raises:
        CurateError: no meta, or a meta that describes no network curate can build (names the field).
    """
    raw = ckpt.get("meta_json")
    if not isinstance(raw, str):
        raise CurateError(f"{path}: damaged checkpoint: it has no meta (meta_json)", hint="use a checkpoint written by `curate train`")
    try:
        meta = json.loads(raw)
    except ValueError as exc:
        raise CurateError(f"{path}: damaged checkpoint: its meta is not JSON ({exc})") from None
    if not isinstance(meta, dict):
        raise CurateError(f"{path}: damaged checkpoint: its meta is not a JSON object")
    size, norm, classes = meta.get("size"), meta.get("normalization"), meta.get("classes")
    ch = meta.get("channels")
    checks = [
        (meta.get("arch") in ARCHS, f"arch {meta.get('arch')!r} is not one of {', '.join(ARCHS)}"),
        (isinstance(classes, list) and bool(classes) and all(isinstance(c, str) for c in classes), "classes must be a list of names"),
        (ch in (1, 3) and not isinstance(ch, bool), f"channels {ch!r} must be 1 or 3"),
        (
            isinstance(size, list) and len(size) == 2 and all(isinstance(v, int) and 1 <= v <= MAX_SIDE for v in size),
            f"size {size!r} must be [H, W] with sides of 1 to {MAX_SIDE} pixels",
        ),
        (
            isinstance(norm, dict) and all(isinstance(norm.get(k), list) and len(norm[k]) == ch for k in ("mean", "std")),
            "normalization must hold mean and std with one value per channel",
        ),
    ]
    for ok, why in checks:
        if not ok:
            raise CurateError(f"{path}: damaged checkpoint: {why}", hint="use a checkpoint written by `curate train`")
    return meta


def check_weights(path: Path, meta: dict[str, Any], state: Any) -> None:
    """Compare the tensors of ``state`` with the network ``meta`` describes, without allocating it.

    Raises:
        CurateError: not a dict of tensors, a missing or extra tensor, or a tensor of another shape (named).
    """
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CurateError(f"{path}: damaged checkpoint: its weights are not a dict of tensors")
    with torch.device("meta"):  # shapes only: a 10^6 x 10^6 size must not allocate anything
        expected = build(meta["arch"], int(meta["channels"]), len(meta["classes"]), (int(meta["size"][0]), int(meta["size"][1])))
    want = {k: tuple(v.shape) for k, v in expected.state_dict().items()}
    missing, extra = sorted(set(want) - set(state)), sorted(set(state) - set(want))
    if missing or extra:
        what = f"missing {missing[0]}" if missing else f"unexpected {extra[0]}"
        raise CurateError(f"{path}: damaged checkpoint: weights do not match {meta['arch']} ({what})")
    for key, shape in want.items():
        if tuple(state[key].shape) != shape:
            raise CurateError(
                f"{path}: damaged checkpoint: {key} has shape {list(state[key].shape)}, "
                f"{meta['arch']} for {meta['channels']}x{meta['size'][0]}x{meta['size'][1]} images and "
                f"{len(meta['classes'])} classes needs {list(shape)}"
            )


def load_model(path: Path) -> tuple[torch.nn.Module, dict[str, Any]]:
    """Load a checkpoint's network (on the CPU, in eval mode) and its checked meta.

    Raises:
        CurateError: a missing, foreign or damaged file (see ``read_meta`` and ``check_weights``).
    """
    ckpt = load_checkpoint(path)
    meta = read_meta(ckpt, path)
    check_weights(path, meta, ckpt.get("model"))
    model = build(meta["arch"], int(meta["channels"]), len(meta["classes"]), (int(meta["size"][0]), int(meta["size"][1])))
    model.load_state_dict(ckpt["model"])
    return model.eval(), meta


def save_epoch(run_dir: Path, improved: bool, epoch_meta: dict[str, Any], model: torch.nn.Module, state: dict[str, Any]) -> None:
    """Write ``model_best.pt`` + ``meta_best.json`` (when val improved) and ``model_last.pt`` + ``meta_last.json``.

    ``state`` is the rest of the training state that ``model_last.pt`` carries for ``--resume``: ``optimizer``,
    ``scheduler``, ``scaler``, ``rng_cpu``, ``rng_cuda``, ``history``, ``best``, ``bad_epochs``, ``elapsed``.
    """
    meta_json = json.dumps(epoch_meta)
    if improved:
        save_checkpoint(run_dir / "model_best.pt", {"format": CKPT_FORMAT, "model": model.state_dict(), "meta_json": meta_json})
        write_json(run_dir / "meta_best.json", epoch_meta)
    save_checkpoint(run_dir / "model_last.pt", {"format": CKPT_FORMAT, "model": model.state_dict(), **state, "meta_json": meta_json})
    write_json(run_dir / "meta_last.json", epoch_meta)


def restore(path: Path, model: torch.nn.Module, parts: dict[str, Any], cuda: bool) -> dict[str, Any]:
    """Load ``model_last.pt`` into ``model`` and the ``parts`` (``optimizer``, ``scheduler``, ``scaler``: objects with
    ``load_state_dict``) and set the RNG state; returns the checkpoint (``history``, ``best``, ``bad_epochs``, ``elapsed``).

    Raises:
        CurateError: the file is damaged (checked like ``load_model``) or lacks part of the training state.
    """
    ckpt = load_checkpoint(path)
    check_weights(path, read_meta(ckpt, path), ckpt.get("model"))
    need = [*parts, "rng_cpu", "history", "best", "bad_epochs", "elapsed"]
    missing = [k for k in need if k not in ckpt]
    if missing:
        raise CurateError(f"{path}: cannot resume: the checkpoint has no {missing[0]}", hint="start a new run (another --out)")
    model.load_state_dict(ckpt["model"])
    for name, obj in parts.items():
        obj.load_state_dict(ckpt[name])
    torch.set_rng_state(ckpt["rng_cpu"])
    if cuda and ckpt.get("rng_cuda") is not None:
        torch.cuda.set_rng_state(ckpt["rng_cuda"])
    return ckpt
