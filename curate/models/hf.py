"""``hf:NAME_OR_PATH``: a transformers image model (ViT, DINOv2, CLIP, ConvNeXt ...; the ``[hf]`` extra).

A local folder written by ``save_pretrained`` is loaded as it is; a Hub name is downloaded (config, weights,
preprocessor config) only when the machine is online: with ``HF_HUB_OFFLINE`` / ``TRANSFORMERS_OFFLINE`` set only
a cached copy is used, and neither a cache miss nor an unreachable Hub ever becomes a traceback.

Preprocessing is read from the folder's ``preprocessor_config.json`` (``image_mean``, ``image_std``, ``size``,
``crop_size``, ``resample``) and the model config (``image_size``, ``num_channels``), not through
``AutoImageProcessor``, so it is a plain dict to record and the same numpy path as every other backend. The
embedding is the CLS token of the last hidden state for transformers (already layer-normed), the pooled output
for convolutional nets, ``get_image_features`` for CLIP-like models. A ``*ForImageClassification`` model also
gets ``predict_proba`` with its ``id2label`` classes.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from curate.errors import CurateError
from curate.models.base import Backend, Preprocessing, check_preprocessing, embed_autocast, first_line, require

_TRUE = ("1", "true", "yes", "on")
HUB_FILES = ["*.json", "*.safetensors", "pytorch_model*.bin", "*.txt"]


def hub_offline() -> bool:
    """True when the environment forbids the Hub (``HF_HUB_OFFLINE`` or ``TRANSFORMERS_OFFLINE``)."""
    return any(os.environ.get(k, "").strip().lower() in _TRUE for k in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))


def resolve(name: str) -> Path:
    """A local model folder, or the Hub name's snapshot folder (downloaded when online, the cache when offline).

    Raises:
        CurateError: a path that is not there, a folder without ``config.json``, a Hub name while offline without a
            cached copy, or a Hub that cannot be reached (each one line naming ``hf:NAME``).
    """
    spec = f"hf:{name}"
    local = Path(name).expanduser()
    if local.is_dir():
        if not (local / "config.json").is_file():
            raise CurateError(
                f"{spec}: not a transformers model folder (no config.json)", hint="save one with model.save_pretrained(DIR)"
            )
        return local
    if local.exists() or name.startswith((".", "/", "~")) or name.count("/") > 1:
        raise CurateError(f"{spec}: no model folder there")
    hub = require("huggingface_hub", "hf", spec)
    offline = hub_offline()
    try:
        return Path(hub.snapshot_download(repo_id=name, allow_patterns=HUB_FILES, local_files_only=offline))
    except Exception as exc:  # noqa: BLE001 - offline, unreachable, unknown repo, gated: one line each
        if offline:
            raise CurateError(
                f"{spec}: not a local folder, and the Hugging Face Hub is offline (HF_HUB_OFFLINE) with no cached copy",
                hint="download it on a machine that is online (or unset HF_HUB_OFFLINE), or give a local folder",
            ) from None
        raise CurateError(f"{spec}: cannot download it from the Hugging Face Hub ({type(exc).__name__}: {first_line(exc)})") from None


def _side(value: Any) -> tuple[int, int] | None:
    """``224``, ``[224, 224]`` or ``{"height": 224, "width": 224}`` -> ``(224, 224)``; anything else None."""
    if isinstance(value, int):
        return (value, value)
    if isinstance(value, list | tuple) and len(value) == 2:
        return (int(value[0]), int(value[1]))
    if isinstance(value, dict) and "height" in value and "width" in value:
        return (int(value["height"]), int(value["width"]))
    return None


def preprocessing(folder: Path, vision_config: Any, spec: str) -> Preprocessing:
    """The input of the model from ``preprocessor_config.json`` and the config (see the module doc).

    Raises:
        CurateError: a damaged preprocessor config, or mean/std of another length than the model's channels.
    """
    channels = int(getattr(vision_config, "num_channels", 3))
    size = _side(getattr(vision_config, "image_size", None)) or (224, 224)
    proc: dict[str, Any] = {}
    proc_file = folder / "preprocessor_config.json"
    if proc_file.is_file():
        try:
            proc = json.loads(proc_file.read_text())
        except ValueError as exc:
            raise CurateError(f"{spec}: {proc_file.name} is not JSON ({exc})") from None
    # transformers' own defaults (IMAGENET_STANDARD_MEAN/STD) when the folder has no preprocessor config
    mean, std = proc.get("image_mean", [0.5] * channels), proc.get("image_std", [0.5] * channels)
    resize, edge = "bicubic" if proc.get("resample", 3) == 3 else "bilinear", None
    given = proc.get("size")
    crop = _side(proc.get("crop_size")) if proc.get("do_center_crop", "crop_size" in proc) else None
    if isinstance(given, dict) and "shortest_edge" in given:
        edge, resize = int(given["shortest_edge"]), "bicubic-crop"
        size = crop or size
    elif _side(given):
        size = crop or _side(given) or size
    pre = Preprocessing(size, channels, tuple(float(v) for v in np.ravel(mean)), tuple(float(v) for v in np.ravel(std)), resize,
                        edge, "config" if proc else "default")  # fmt: skip
    return check_preprocessing(spec, pre)


@dataclass
class HFBackend(Backend):
    model: Any = None
    pooling: str = "cls"

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "pooling": self.pooling}

    def _forward(self, x: np.ndarray, what: str) -> dict[str, np.ndarray]:
        import torch

        pv = torch.from_numpy(x).to(self.device)
        with torch.no_grad():
            if what == "probs":
                logits = self.model(pixel_values=pv).logits.float()
                return {"probs": torch.softmax(logits, 1).cpu().numpy()}
            with embed_autocast(self.device, what):
                emb = self._embed(pv)
            return {"embedding": emb.float().cpu().numpy()}

    def _embed(self, pv: Any) -> Any:
        if self.pooling == "image_features":
            out = self.model.get_image_features(pixel_values=pv)
            return out if hasattr(out, "shape") else out.pooler_output
        base = self.model.base_model if self.classes else self.model
        out = base(pixel_values=pv)
        hidden = getattr(out, "last_hidden_state", None)
        if self.pooling == "cls" and hidden is not None and hidden.ndim == 3:
            return hidden[:, 0]
        return out.pooler_output.flatten(1)


def load_hf(name: str, batch_size: int, device: str) -> HFBackend:
    spec = f"hf:{name}"
    require("transformers", "hf", spec)
    import transformers

    folder = resolve(name)
    try:
        config = transformers.AutoConfig.from_pretrained(str(folder), local_files_only=True)
        head = any(a.endswith("ForImageClassification") for a in (config.architectures or []))
        auto = transformers.AutoModelForImageClassification if head else transformers.AutoModel
        model = auto.from_pretrained(str(folder), local_files_only=True)
    except Exception as exc:  # noqa: BLE001 - a damaged or foreign folder
        raise CurateError(f"{spec}: cannot load the model ({type(exc).__name__}: {first_line(exc)})") from None
    vision = getattr(config, "vision_config", None) or config
    pre = preprocessing(folder, vision, spec)
    classes = [str(config.id2label[i]) for i in range(config.num_labels)] if head else None
    pooling = "image_features" if hasattr(model, "get_image_features") else "cls"
    return HFBackend(spec, "hf", folder, pre, classes, device, batch_size, model=model.to(device).eval(), pooling=pooling)
