"""``curate export-model``: a trained run as a TorchScript or ONNX file that loads without curate.

The exported graph takes float32 ``(N, C, H, W)`` normalized pixels (``(pixel / 255 - mean) / std``) with a
dynamic batch axis and returns ``probs`` ``(N, K)`` (softmax included) and ``embedding`` ``(N, D)`` (the input of
the last linear layer). Everything needed to feed it travels in the file as one JSON document, ``curate.json``
(``curate.models.torchnets.run_metadata``: classes, channels, size, normalization, outputs, arch, dataset
version): a TorchScript extra file, or an ONNX ``metadata_props`` entry. Each export is run once against the
checkpoint before it is kept, and the largest probability difference is reported.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from curate.errors import CurateError
from curate.models.base import first_line, require
from curate.models.torchnets import META_KEY, run_metadata, split_net

FORMATS = {"onnx": ".onnx", "torchscript": ".pt"}
TOLERANCE = 1e-4  # largest |probability difference| between the export and the checkpoint that is accepted


def default_out(run_path: Path, fmt: str) -> Path:
    """``<run>/export/model_<which><ext>`` next to the checkpoint it came from."""
    return run_path.parent / "export" / f"{run_path.stem}{FORMATS[fmt]}"


def export_run(run: str, fmt: str, out: Path | None = None, *, workspace: Path | None = None, which: str = "best") -> dict[str, Any]:
    """Export a run (a folder, a checkpoint, or a name under ``<workspace>/models``) to ``out``.

    Returns:
        ``{"run", "checkpoint", "format", "out", "bytes", "classes", "metadata", "max_abs_diff"}``; ``max_abs_diff``
        is the largest probability difference between the file and the checkpoint on a random batch.

    Raises:
        CurateError: an unknown format (exit 2), a missing or damaged run, the ``[onnx]`` extra not installed, or
            an export whose probabilities differ from the checkpoint's by more than ``TOLERANCE``.
    """
    import torch

    from curate.learn.predict import load_run
    from curate.models.torchnets import resolve_run

    if fmt not in FORMATS:
        raise CurateError(f"--format {fmt!r}: choose from {', '.join(FORMATS)}", exit_code=2)
    loaded = load_run(resolve_run(run, workspace), which, device="cpu")
    meta = run_metadata(loaded.meta, f"{loaded.path.parent.name}/{loaded.path.name}")
    net = split_net(loaded.model)
    out = Path(out) if out is not None else default_out(loaded.path, fmt)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")
    example = torch.zeros(2, meta["channels"], *meta["size"])  # batch 2: an example batch of 1 would be specialised
    try:
        if fmt == "torchscript":
            _torchscript(net, example, meta, tmp)
        else:
            _onnx(net, example, meta, tmp, f"curate:{run}")
        diff = _check(net, tmp, fmt, meta)
        if diff > TOLERANCE:
            raise CurateError(f"{out}: the exported model differs from {loaded.path} by {diff:.2e} in probability")
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
    return {"run": str(run), "checkpoint": str(loaded.path), "format": fmt, "out": str(out), "bytes": out.stat().st_size,
            "classes": meta["classes"], "metadata": meta, "max_abs_diff": diff}  # fmt: skip


def _torchscript(net: Any, example: Any, meta: dict[str, Any], path: Path) -> None:
    import torch

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.jit's deprecation notices; the file it writes is what users load
        traced = torch.jit.trace(net, example)
        torch.jit.save(traced, str(path), _extra_files={META_KEY: json.dumps(meta)})


def _onnx(net: Any, example: Any, meta: dict[str, Any], path: Path, spec: str) -> None:
    """torch's exporter (``dynamo=True``, the maintained one; it needs onnx and onnxscript) with a dynamic batch axis."""
    import torch

    require("onnxscript", "onnx", spec)
    require("onnx", "onnx", spec)
    quiet = logging.getLogger("torch.onnx")
    level = quiet.level
    quiet.setLevel(logging.ERROR)  # "torchvision is not installed" and the like: not the user's concern
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            program = torch.onnx.export(
                net, (example,), input_names=["pixels"], output_names=["probs", "embedding"],
                dynamic_shapes=({0: torch.export.Dim("batch")},), dynamo=True, verbose=False,
            )  # fmt: skip
    except Exception as exc:  # noqa: BLE001 - an exporter failure names the run and the cause
        raise CurateError(f"{spec}: ONNX export failed ({type(exc).__name__}: {first_line(exc)})") from exc
    finally:
        quiet.setLevel(level)
    program.model.metadata_props[META_KEY] = json.dumps(meta)
    program.save(str(path))


def _check(net: Any, path: Path, fmt: str, meta: dict[str, Any]) -> float:
    """Largest |probability difference| between the written file and ``net`` on 3 random images (an odd batch)."""
    import torch

    x = torch.from_numpy(np.random.default_rng(0).standard_normal((3, meta["channels"], *meta["size"]), np.float32))
    with torch.no_grad():
        want = net(x)[0].numpy()
    if fmt == "torchscript":
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            got = torch.jit.load(str(path))(x)[0].detach().numpy()
    else:
        ort = require("onnxruntime", "onnx", f"onnx:{path}")
        got = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(["probs"], {"pixels": x.numpy()})[0]
    return float(np.abs(got - want).max())
