"""What every model backend shares: the interface, image -> pixel conversion, normalization, batching, digests.

A backend turns images (PIL images or encoded bytes) into float32 ``(N, D)`` embeddings and, when it has a
classification head, float32 ``(N, K)`` probabilities. Subclasses only say how one normalized batch runs
(``_forward``); the batching, the decoding at the model's size and channels, and the one-line errors live here.
"""

from __future__ import annotations

import abc
import hashlib
import os
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from curate.errors import CurateError

Progress = Callable[[int], None]
ImageLike = Any  # PIL.Image.Image or encoded bytes; PIL is imported lazily


@dataclass(frozen=True)
class Preprocessing:
    """How images become the model's input: what a version records next to the model digest.

    Attributes:
        size: ``(H, W)`` of the model's input.
        channels: 1 (``L``) or 3 (``RGB``).
        mean, std: per channel, in [0, 1] pixel units: the input is ``(pixel / 255 - mean) / std``.
        resize: ``bilinear`` or ``bicubic`` (straight to ``size``), or ``bicubic-crop`` / ``bilinear-crop`` (shortest
            edge to ``resize_edge``, the other side ``int(resize_edge * long / short)``, then a center crop to
            ``size``: what transformers' image processors do).
        resize_edge: the shortest edge before the crop (``*-crop`` only).
        source: where the numbers come from: ``checkpoint``, ``metadata``, ``config``, ``default``.
    """

    size: tuple[int, int]
    channels: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    resize: str = "bilinear"
    resize_edge: int | None = None
    source: str = "metadata"

    def as_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (lists, not tuples) for a version's state."""
        return {"size": list(self.size), "channels": self.channels, "mean": list(self.mean), "std": list(self.std),
                "resize": self.resize, "resize_edge": self.resize_edge, "source": self.source}  # fmt: skip


def check_preprocessing(label: str, pre: Preprocessing) -> Preprocessing:
    """Raise a one-line CurateError naming ``label`` when ``pre`` describes no usable input."""
    if pre.channels not in (1, 3):
        raise CurateError(f"{label}: channels {pre.channels} must be 1 or 3")
    if len(pre.size) != 2 or not all(isinstance(v, int) and 1 <= v <= 4096 for v in pre.size):
        raise CurateError(f"{label}: input size {list(pre.size)} must be [H, W] with sides of 1 to 4096 pixels")
    if len(pre.mean) != pre.channels or len(pre.std) != pre.channels or min(pre.std) <= 0:
        raise CurateError(f"{label}: mean/std must have one value per channel ({pre.channels}) and std > 0")
    return pre


@dataclass
class Backend(abc.ABC):
    """One model behind ``embed`` / ``predict_proba``. Subclasses set the fields and implement ``_forward``.

    Attributes:
        spec: the spec string it was loaded from (``onnx:model.onnx``), used in every error message.
        kind: ``curate``, ``torchscript``, ``onnx``, ``hf`` or ``embeddings``.
        path: the file or folder the digest is taken over.
        preprocessing: None for precomputed embeddings.
        classes: class names in output order, None without a classification head.
        device: where it runs (``cuda``, ``mps``, ``cpu``; onnxruntime's provider for ONNX).
        batch_size: images per forward pass.
    """

    spec: str
    kind: str
    path: Path
    preprocessing: Preprocessing | None
    classes: list[str] | None = None
    device: str = "cpu"
    batch_size: int = 64
    _digest: str | None = field(default=None, repr=False)

    @property
    def digest(self) -> str:
        """sha256 of the model's file, or of a folder's files (relative names and contents): the cache key."""
        if self._digest is None:
            self._digest = path_digest(self.path)
        return self._digest

    def describe(self) -> dict[str, Any]:
        """What a version's state records about the model: spec, kind, digest, preprocessing, classes, device."""
        pre = self.preprocessing.as_dict() if self.preprocessing else None
        return {"spec": self.spec, "kind": self.kind, "digest": self.digest, "preprocessing": pre, "classes": self.classes,
                "device": self.device}  # fmt: skip

    def embed(self, images: Sequence[ImageLike], *, progress: Progress | None = None) -> np.ndarray:
        """Images -> float32 ``(N, D)`` embeddings, in input order, computed ``batch_size`` at a time.

        Args:
            images: PIL images or encoded image bytes (PNG, JPEG, ...).
            progress: called with the number of images after each batch.
        """
        return self._batched(images, "embedding", progress)

    def predict_proba(self, images: Sequence[ImageLike], *, progress: Progress | None = None) -> np.ndarray:
        """Images -> float32 ``(N, K)`` class probabilities (rows sum to 1, columns in ``classes`` order).

        Raises:
            CurateError: the model has no classification head, or its head's width is not its number of classes.
        """
        if not self.classes:
            raise CurateError(f"{self.spec}: the model has no classification head (no classes): only embed() works")
        probs = self._batched(images, "probs", progress)
        if len(probs) and probs.shape[1] != len(self.classes):
            # caught here, not where a stage indexes the columns by class: a wrong width would misname every class
            raise CurateError(f"{self.spec}: the model gives {probs.shape[1]} probabilities per image, its metadata names "
                              f"{len(self.classes)} classes")  # fmt: skip
        return probs

    @abc.abstractmethod
    def _forward(self, x: np.ndarray, what: str) -> dict[str, np.ndarray]:
        """float32 ``(B, C, H, W)`` normalized input -> a dict holding ``what``: ``"embedding"`` ``(B, D)`` or
        ``"probs"`` ``(B, K)`` (a backend may return both when they come from one pass)."""

    def _batched(self, images: Sequence[ImageLike], what: str, progress: Progress | None) -> np.ndarray:
        out: list[np.ndarray] = []
        for i in range(0, len(images), self.batch_size):
            chunk = images[i : i + self.batch_size]
            x = self.normalize(self.pixels(chunk, offset=i))
            try:
                res = self._forward(x, what)[what]
            except CurateError:
                raise
            except Exception as exc:  # noqa: BLE001 - a graph that rejects the input is a user error naming the model
                raise CurateError(f"{self.spec}: the model rejects {describe_input(x)} input ({first_line(exc)})") from exc
            out.append(np.asarray(res, np.float32).reshape(len(chunk), -1))
            if progress:
                progress(len(chunk))
        if out:
            return np.concatenate(out)
        return np.zeros((0, len(self.classes or []) if what == "probs" else 0), np.float32)

    def pixels(self, images: Sequence[ImageLike], offset: int = 0) -> np.ndarray:
        """Images -> uint8 ``(N, H, W, C)`` at the model's size and channels (see ``Preprocessing.resize``)."""
        pre = self._pre()
        out = np.zeros((len(images), pre.size[0], pre.size[1], pre.channels), np.uint8)
        for k, img in enumerate(images):
            try:
                out[k] = to_array(img, pre)
            except CurateError:
                raise
            except Exception as exc:  # noqa: BLE001 - any decoder failure is a data error
                raise CurateError(f"image {offset + k} cannot be decoded for {self.spec}: {first_line(exc)}") from exc
        return out

    def normalize(self, pixels: np.ndarray) -> np.ndarray:
        """uint8 ``(N, H, W, C)`` -> float32 ``(N, C, H, W)``: ``pixel * 1/(255 std) - mean/std``, the trainer's formula
        (``curate.learn.data.Normalizer``), so curate runs score exactly as ``curate predict`` does."""
        pre = self._pre()
        scale = np.array([1.0 / (255.0 * max(s, 1e-6)) for s in pre.std], np.float32).reshape(1, -1, 1, 1)
        shift = np.array([-m / max(s, 1e-6) for m, s in zip(pre.mean, pre.std, strict=True)], np.float32).reshape(1, -1, 1, 1)
        x = pixels.transpose(0, 3, 1, 2).astype(np.float32)
        return np.ascontiguousarray(x * scale + shift)

    def _pre(self) -> Preprocessing:
        if self.preprocessing is None:
            raise CurateError(f"{self.spec}: precomputed embeddings: there is no model to run on pixels")
        return self.preprocessing


def embed_autocast(device: str, what: str) -> Any:
    """Autocast for an embedding pass on CUDA (bf16 where the GPU computes it, else fp16); elsewhere a no-op context.

    Probabilities stay float32 on every device, so a curate run scores exactly as ``curate predict`` does; the
    embeddings feed linear heads and cosines, which a half-precision forward barely moves and which it speeds up.
    """
    import contextlib

    if what != "embedding" or not device.startswith("cuda"):
        return contextlib.nullcontext()
    import torch

    from curate.learn.runtime import amp_dtype

    return torch.autocast(device_type="cuda", dtype=amp_dtype(True, torch.device(device)))


def to_device(x: np.ndarray, device: str, *, cuda: bool | None = None) -> Any:
    """A normalized float32 batch -> a torch tensor on ``device``, what every torch backend's ``_forward`` feeds.

    On CUDA the batch is copied into page-locked (pinned) host memory and sent with ``non_blocking=True``: the copy
    is a DMA that overlaps with the host, and the forward pass that follows runs on the same stream, so it waits
    for it. Elsewhere it is ``torch.from_numpy`` (no copy on the CPU; a plain copy to MPS).

    Args:
        x: float32 ``(B, C, H, W)``, C-contiguous (``Backend.normalize`` gives that).
        device: ``cuda``, ``cuda:1``, ``mps``, ``cpu``.
        cuda: whether ``device`` is a CUDA device; None decides from its name (a test sets it to reach the CUDA
            branch on a machine without a GPU).
    """
    import torch

    t = torch.from_numpy(x)
    if not (str(device).startswith("cuda") if cuda is None else cuda):
        return t if str(device) == "cpu" else t.to(device)
    return t.pin_memory().to(device, non_blocking=True)


def to_array(img: ImageLike, pre: Preprocessing) -> np.ndarray:
    """One PIL image or encoded bytes -> uint8 ``(H, W, C)`` per ``pre`` (bytes: EXIF orientation applied)."""
    from PIL import Image

    from curate.images import decode_rgb_or_l

    if isinstance(img, bytes | bytearray | memoryview):
        im = decode_rgb_or_l(bytes(img))
    elif isinstance(img, Image.Image):
        im = img
    else:
        raise CurateError(f"an image must be a PIL image or encoded bytes, not {type(img).__name__}")
    im = im.convert("L" if pre.channels == 1 else "RGB")
    h, w = pre.size
    resample = Image.BICUBIC if pre.resize.startswith("bicubic") else Image.BILINEAR
    if pre.resize.endswith("-crop") and pre.resize_edge:
        # transformers' get_resize_output_image_size: the long side truncated, not rounded (39x22 -> 56, not 57)
        edge, short, long = pre.resize_edge, min(im.width, im.height), max(im.width, im.height)
        new_w, new_h = (edge, int(edge * long / short)) if im.width <= im.height else (int(edge * long / short), edge)
        im = im.resize((max(w, new_w), max(h, new_h)), resample)
        left, top = (im.width - w) // 2, (im.height - h) // 2
        im = im.crop((left, top, left + w, top + h))
    elif (im.height, im.width) != (h, w):
        im = im.resize((w, h), resample)
    arr = np.asarray(im, np.uint8)
    return arr[:, :, None] if arr.ndim == 2 else arr


def path_digest(path: Path) -> str:
    """sha256 of a file's bytes (what ``sha256sum`` prints), or of a folder's regular files: their sorted relative
    names, sizes and contents (names starting with ``.`` are skipped: download caches and locks are no part of a model)."""
    h = hashlib.sha256()
    if path.is_file():
        _hash_file(h, path)
        return h.hexdigest()
    files = []
    for root, dirs, names in os.walk(path):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        files += [(os.path.relpath(os.path.join(root, n), path), Path(root, n)) for n in names if not n.startswith(".")]
    for rel, file in sorted(files):
        h.update(f"{rel}\0{file.stat().st_size}\0".encode())
        _hash_file(h, file)
    return h.hexdigest()


def _hash_file(h: Any, path: Path) -> None:
    with open(path, "rb") as fh:
        while block := fh.read(1 << 20):
            h.update(block)


def describe_input(x: np.ndarray) -> str:
    """``1x16x16`` for a ``(B, 1, 16, 16)`` batch: what the error message shows."""
    return "x".join(str(v) for v in x.shape[1:])


def first_line(exc: BaseException) -> str:
    """The line of an exception that says what went wrong, at most 200 characters: the first non-empty line, or for
    TorchScript's pages (a header, a Python trace, then ``RuntimeError: ...``) the last ``...Error:`` line."""
    lines = [ln.strip() for ln in str(exc).strip().splitlines() if ln.strip()]
    if not lines:
        return type(exc).__name__
    causes = [ln for ln in lines[1:] if re.match(r"^[A-Za-z_.]*Error: ", ln)]
    return (causes[-1].split(": ", 1)[1] if causes else lines[0])[:200]


def require(module: str, extra: str, spec: str) -> Any:
    """Import an optional dependency or raise a one-line CurateError naming the extra that brings it."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError:
        raise CurateError(f"{spec}: needs {module}, which is not installed", hint=f"pip install 'curate[{extra}]'") from None
