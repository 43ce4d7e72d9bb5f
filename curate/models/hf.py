"""``hf:NAME_OR_PATH``: a transformers image model (ViT, DINOv2, CLIP, ConvNeXt ...; the ``[hf]`` extra).

A local folder written by ``save_pretrained`` is loaded as it is; a Hub name is downloaded (config, weights,
preprocessor config) only when the machine is online: with ``HF_HUB_OFFLINE`` / ``TRANSFORMERS_OFFLINE`` set only
a cached copy is used, and neither a cache miss nor an unreachable Hub ever becomes a traceback.

Preprocessing is read from the folder's ``preprocessor_config.json`` (``image_mean``, ``image_std``, ``size``,
``crop_size``, ``resample``) and the model config (``image_size``, ``num_channels``), not through
``AutoImageProcessor``, so it is a plain dict to record and the same numpy path as every other backend (a
``shortest_edge`` size resizes and center-crops the way transformers' image processors do).

The embedding (``HFBackend.pooling``):

- ``cls``: the CLS token of the last hidden state for ViT, DINOv2 and their kin, whose encoders end in a layer
  norm (DINOv2's ``pooler_output`` is that very token); the pooled output for convolutional nets.
- ``pooler``: the model's ``pooler_output`` for CLIP-like vision towers (``clip_vision_model``,
  ``siglip_vision_model`` ...): their last hidden state comes *before* the final ``post_layernorm``, so its CLS
  token is not the embedding the model was trained to give.
- ``vision_pooler``: for a dual encoder (``CLIPModel``, ``SiglipModel`` ...), its vision tower's ``pooler_output``,
  not ``get_image_features``. The projection into the shared image-text space is trained for cosines against
  text, a linear map that a kNN or linear head gains nothing from and can lose rank to (projection_dim <
  hidden_size); CLIP's own linear-probe results use the features before it. The same weights saved as a
  ``CLIPVisionModel`` therefore give the same vectors.

A ``*ForImageClassification`` model also gets ``predict_proba`` with its ``id2label`` classes.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from curate.errors import CurateError
from curate.models.base import Backend, Preprocessing, check_preprocessing, embed_autocast, first_line, path_digest, require, to_device

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
        edge, resize = int(given["shortest_edge"]), f"{resize}-crop"
        size = crop or size
    elif _side(given):
        size = crop or _side(given) or size
    pre = Preprocessing(size, channels, tuple(float(v) for v in np.ravel(mean)), tuple(float(v) for v in np.ravel(std)), resize,
                        edge, "config" if proc else "default")  # fmt: skip
    return check_preprocessing(spec, pre)


@dataclass
class HFBackend(Backend):
    """A transformers model; ``pooling`` says which output is the embedding (``cls``, ``pooler``, ``vision_pooler``:
    the module doc)."""

    model: Any = None
    pooling: str = "cls"

    @property
    def digest(self) -> str:
        """The folder's digest, and for poolings other than ``cls`` a sha256 of it and the pooling: the cache key
        then names the embedding, so vectors cached by an older curate that took CLIP's CLS token before its last
        layer norm (under the folder's digest alone) are never read back as this pooling's."""
        if self._digest is None:
            folder = path_digest(self.path)
            self._digest = folder if self.pooling == "cls" else hashlib.sha256(f"{folder}\0{self.pooling}".encode()).hexdigest()
        return self._digest

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "pooling": self.pooling}

    def _forward(self, x: np.ndarray, what: str) -> dict[str, np.ndarray]:
        import torch

        pv = to_device(x, self.device)
        with torch.no_grad():
            if what == "probs":
                logits = self.model(pixel_values=pv).logits.float()
                return {"probs": torch.softmax(logits, 1).cpu().numpy()}
            with embed_autocast(self.device, what):
                emb = self._embed(pv)
            return {"embedding": emb.float().cpu().numpy()}

    def _embed(self, pv: Any) -> Any:
        if self.pooling == "vision_pooler":
            return self.model.vision_model(pixel_values=pv).pooler_output.flatten(1)
        base = self.model.base_model if self.classes else self.model
        out = base(pixel_values=pv)
        hidden = getattr(out, "last_hidden_state", None)
        if self.pooling == "cls" and hidden is not None and hidden.ndim == 3:
            return hidden[:, 0]
        return out.pooler_output.flatten(1)


def pooling_of(model: Any, config: Any) -> str:
    """Which output is the embedding of ``model`` (module doc): ``pooler`` for a CLIP-like vision model (its
    ``model_type`` ends in ``_vision_model``; checked first: transformers 4 wraps these in a ``vision_model`` too),
    ``vision_pooler`` for a model with a vision tower (``vision_model``: a dual encoder, or a classifier built on
    one), ``cls`` for the rest."""
    if str(getattr(config, "model_type", "")).endswith("_vision_model"):
        return "pooler"
    if getattr(model, "vision_model", None) is not None:
        return "vision_pooler"
    return "cls"


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
    pooling = pooling_of(model, config)
    return HFBackend(spec, "hf", folder, pre, classes, device, batch_size, model=model.to(device).eval(), pooling=pooling)
