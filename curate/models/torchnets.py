"""Backends that run torch: a curate training run (``curate:RUN``) and a TorchScript file (``torchscript:FILE``).

A curate run scores exactly as ``curate predict`` does (same checkpoint loader, decoder and normalization);
its embedding is the input of the net's last linear layer. A TorchScript file written by ``curate export-model``
carries ``curate.json`` in its extra files (classes, size, channels, normalization, outputs); one without it is
refused, since its input size and normalization would be guesses.
"""

from __future__ import annotations

import json
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from curate.errors import CurateError
from curate.models.base import Backend, Preprocessing, check_preprocessing, embed_autocast, first_line, to_device

META_KEY = "curate.json"  # the TorchScript extra file / ONNX metadata key that holds curate's metadata
OUTPUTS = ("probs", "logits", "embedding")


def resolve_run(name: str, workspace: Path | None) -> Path:
    """``RUN`` of ``curate:RUN`` -> a run folder or checkpoint: the path itself, else ``<workspace>/models/RUN``.

    Raises:
        CurateError: neither exists (both places named).
    """
    direct = Path(name).expanduser()
    if direct.exists():
        return direct
    from curate.workspace import Workspace

    in_ws = Workspace(workspace).models_dir() / name if workspace is not None else None
    if in_ws is not None and in_ws.exists():
        return in_ws
    where = f" nor {in_ws}" if in_ws is not None else ""
    raise CurateError(f"curate:{name}: no run folder or checkpoint at {direct}{where}", hint="give a folder written by `curate train`")


def penultimate_split(model: Any) -> tuple[Any, Any]:
    """A copy of ``model`` whose last ``nn.Linear`` is an identity (it returns the embedding), and that linear layer.

    Every net in ``curate.learn.nets`` ends with its last linear layer, so ``fc(body(x)) == model(x)``.
    """
    import copy

    import torch

    body = copy.deepcopy(model)
    name, last = [(n, m) for n, m in body.named_modules() if isinstance(m, torch.nn.Linear)][-1]
    body.set_submodule(name, torch.nn.Identity())
    return body, last


def split_net(model: Any) -> Any:
    """``model`` -> a module whose ``forward(x)`` returns ``(probs (B, K), embedding (B, D))``: what exports carry."""
    import torch

    class ProbsAndEmbedding(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.body, self.fc = penultimate_split(model)

        def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            emb = self.body(x)
            return torch.softmax(self.fc(emb).float(), 1), emb

    return ProbsAndEmbedding().eval()


def run_metadata(meta: dict[str, Any], source: str) -> dict[str, Any]:
    """The metadata an exported run carries (``curate.json``): classes, input and normalization, outputs, lineage."""
    return {
        "format": 1,
        "classes": list(meta["classes"]),
        "channels": int(meta["channels"]),
        "size": [int(v) for v in meta["size"]],
        "normalization": {"mean": list(meta["normalization"]["mean"]), "std": list(meta["normalization"]["std"])},
        "input": "float32 (N, C, H, W) = (pixel / 255 - mean) / std, resized bilinear to size",
        "outputs": ["probs", "embedding"],
        "arch": meta.get("arch"),
        "dataset_version": meta.get("version") or meta.get("dataset_version"),
        "source": source,
    }


def preprocessing_from(meta: dict[str, Any], label: str, source: str) -> Preprocessing:
    """``curate.json`` / a checkpoint meta -> a checked ``Preprocessing``.

    Raises:
        CurateError: a field is missing or of the wrong type (``label`` names the model).
    """
    try:
        norm = meta["normalization"]
        pre = Preprocessing(
            size=(int(meta["size"][0]), int(meta["size"][1])),
            channels=int(meta["channels"]),
            mean=tuple(float(v) for v in norm["mean"]),
            std=tuple(float(v) for v in norm["std"]),
            source=source,
        )
    except (KeyError, TypeError, ValueError, IndexError) as exc:
        why = f"no {exc.args[0]}" if isinstance(exc, KeyError) else first_line(exc)
        raise CurateError(f"{label}: its metadata has no usable size, channels and normalization ({why})") from None
    return check_preprocessing(label, pre)


@dataclass
class CurateRunBackend(Backend):
    """``curate:RUN``: a checkpoint written by ``curate train``; ``dataset_version`` is the version it trained on."""

    net: Any = None
    dataset_version: str | None = None

    def _forward(self, x: np.ndarray, what: str) -> dict[str, np.ndarray]:
        import torch

        with torch.no_grad(), embed_autocast(self.device, what):
            probs, emb = self.net(to_device(x, self.device))
        return {"probs": probs.float().cpu().numpy(), "embedding": emb.float().cpu().numpy()}


def load_curate(name: str, workspace: Path | None, batch_size: int, device: str = "auto") -> CurateRunBackend:
    from curate.learn.predict import load_run

    run = load_run(resolve_run(name, workspace), device=device)
    pre = preprocessing_from(run.meta, f"curate:{name}", "checkpoint")
    return CurateRunBackend(
        f"curate:{name}",
        "curate",
        run.path,
        pre,
        run.classes,
        str(run.device),
        batch_size,
        net=split_net(run.model),
        dataset_version=run.meta.get("dataset_version"),
    )


@dataclass
class TorchScriptBackend(Backend):
    """``torchscript:FILE``: a scripted or traced module plus its ``curate.json``."""

    module: Any = None
    outputs: tuple[str, ...] = ("embedding",)

    def _forward(self, x: np.ndarray, what: str) -> dict[str, np.ndarray]:
        import torch

        # The probabilities pass runs in float32 (embed_autocast is a no-op for it), so an exported run scores what
        # `curate predict` and the ONNX export score, to 1e-4; only embeddings (heads, cosines) take the AMP speed-up.
        with torch.no_grad(), embed_autocast(self.device, what):
            res = self.module(to_device(x, self.device))
        res = res if isinstance(res, tuple | list) else (res,)
        return named_outputs(self.spec, self.outputs, [r.float().cpu().numpy() for r in res])


def named_outputs(spec: str, names: tuple[str, ...], values: list[np.ndarray]) -> dict[str, np.ndarray]:
    """Pair a model's outputs with the names its metadata gives; logits become probabilities (softmax)."""
    if len(values) < len(names):
        raise CurateError(f"{spec}: the model returns {len(values)} outputs, its metadata names {len(names)} ({', '.join(names)})")
    out = dict(zip(names, values, strict=False))
    if "logits" in out and "probs" not in out:
        z = out["logits"] - out["logits"].max(1, keepdims=True)
        out["probs"] = np.exp(z) / np.exp(z).sum(1, keepdims=True)
    out.setdefault("embedding", out.get("logits", values[0]))
    return out


def parse_meta(raw: str | bytes | None, label: str) -> dict[str, Any] | None:
    """A ``curate.json`` string -> dict, None when absent. Raises a one-line CurateError when it is no JSON object."""
    if not raw:
        return None
    try:
        meta = json.loads(raw)
    except ValueError as exc:
        raise CurateError(f"{label}: its {META_KEY} metadata is not JSON ({exc})") from None
    if not isinstance(meta, dict):
        raise CurateError(f"{label}: its {META_KEY} metadata is not a JSON object")
    return meta


def head_of(meta: dict[str, Any], label: str) -> tuple[list[str] | None, tuple[str, ...]]:
    """``(classes, output names)`` from metadata; without ``outputs``, one output: logits with classes, else embedding."""
    classes = meta.get("classes")
    if classes is not None and not (isinstance(classes, list) and classes and all(isinstance(c, str) for c in classes)):
        raise CurateError(f"{label}: classes in its metadata must be a list of names")
    outputs = tuple(meta.get("outputs") or (("logits",) if classes else ("embedding",)))
    unknown = [o for o in outputs if o not in OUTPUTS]
    if unknown:
        raise CurateError(f"{label}: unknown output {unknown[0]!r} in its metadata (known: {', '.join(OUTPUTS)})")
    return classes, outputs


def load_torchscript(path: Path, batch_size: int, device: str) -> TorchScriptBackend:
    import torch

    spec = f"torchscript:{path}"
    if not path.is_file():
        raise CurateError(f"{spec}: no such file")
    extra = {META_KEY: ""}
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # torch.jit is deprecated in favour of torch.export
            module = torch.jit.load(str(path), map_location=device, _extra_files=extra)
    except Exception as exc:  # noqa: BLE001 - a file that is not TorchScript
        raise CurateError(f"{spec}: not a TorchScript file ({first_line(exc)})") from None
    meta = parse_meta(extra[META_KEY], spec)
    if meta is None:
        raise CurateError(
            f"{spec}: has no {META_KEY} in its extra files, so its input size, channels and normalization are unknown",
            hint="export it with `curate export-model` or save it with _extra_files={'curate.json': ...}",
        )
    classes, outputs = head_of(meta, spec)
    pre = preprocessing_from(meta, spec, "metadata")
    return TorchScriptBackend(spec, "torchscript", path, pre, classes, device, batch_size, module=module.eval(), outputs=outputs)
