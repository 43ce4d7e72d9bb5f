"""Augmentation policies: one definition for ``curate augment`` (offline, new samples) and ``curate train --augment`` (online).

A policy is an albumentations ``Compose`` applied to uint8 images ``(H, W)`` (grayscale) or ``(H, W, 3)`` (RGB):

| name | transforms | meant for |
| --- | --- | --- |
| ``none`` | nothing (the trainer only) | |
| ``flip`` | horizontal flip (p 0.5) | trainer |
| ``shift`` | zero-pad by 1/14 of the side, random crop back (at most 2 px at 28 px) | trainer |
| ``flip-shift`` | both | trainer |
| ``standard`` | flip; affine (shift 7%, scale 0.9-1.1, rotate 10 deg, p 0.7); brightness/contrast 0.15 (p 0.5) | trainer |
| ``light`` | flip; affine (shift 6%, scale 0.95-1.05, rotate 5 deg, p 0.75) | both |
| ``medium`` | flip; affine (shift 8%, scale 0.9-1.1, rotate 12 deg, p 0.8); brightness/contrast 0.2 (p 0.5); noise (p 0.2) | both |
| ``heavy`` | flip; affine (shift 12%, scale 0.8-1.2, rotate 20, shear 10, p 0.9); contrast 0.3; noise; 1-3 holes | both |

``shift`` and ``flip-shift`` depend on the image size (the pad); every other named policy is size-free, so one
serialised transform serves images of any size. A policy file (``.yaml``/``.yml``/``.json``) is what
``A.save(compose, path, data_format=...)`` writes; ``save_policy`` writes one, and loading it gives back a Compose
whose ``A.to_dict`` equals the saved one (the round trip the tests check). Every named policy flips horizontally:
right for clothes and natural images, wrong for digits and text (write a policy file without the flip there).

Recipes (``curate augment`` records one per new sample in the ``recipe`` column).
Encoding: lossless PNG, except JPEG parents, which stay JPEG (quality 95): a JPEG original already carries its
compression artefacts, and PNG copies of it would be several times larger and differ from their class's
originals in file format, a cue a model can learn. Alpha is dropped (the trainer drops it too).

The recipe (``reproduce(recipe, parent_bytes)`` gives the augmented bytes back, byte for byte)::

    {"copy": k, "encode": {"format": "PNG"} | {"format": "JPEG", "quality": 95}, "mode": "L" | "RGB",
     "parent_id": ..., "policy": "medium", "rng": "shared", "seed": s, "transform": A.to_dict(compose)}

Decode the parent (EXIF orientation applied) to ``mode``; ``compose = A.from_dict(transform)``;
``compose.set_random_state(np.random.default_rng(s), random.Random(s))`` (one generator pair shared by every
transform: 3.5x cheaper to seed than ``set_random_seed``, which builds a pair per transform); apply; encode with
Pillow. ``s`` is the first 4 bytes of ``sha256(f"{seed}:{parent_id}:{copy}")``, so a copy depends on the global
seed, its parent and its index only, never on the batch, the worker or the number of workers. Byte identity holds
for the same albumentations, OpenCV, Pillow and zlib/libjpeg builds.
"""

from __future__ import annotations

import hashlib
import io
import json
import warnings
from pathlib import Path
from typing import Any

from curate.errors import UsageError

TRAINER_POLICIES = ("none", "flip", "shift", "flip-shift", "standard", "affine")
OFFLINE_POLICIES = ("light", "medium", "heavy")
#: Every named policy, in the order help texts list them.
POLICIES = (*TRAINER_POLICIES, *OFFLINE_POLICIES)
#: The named policies with a horizontal flip (``_named_ops``): kept here beside them, read by code that must not
#: mirror where the policy does not (the strong views of ``curate.learn.consistency``).
MIRRORING_POLICIES = ("flip", "flip-shift", "standard", "light", "medium", "heavy")
POLICY_SUFFIXES = (".yaml", ".yml", ".json")
JPEG_QUALITY = 95


def albumentations() -> Any:
    """The ``albumentations`` module, imported without torch and huggingface_hub unless they are loaded already.

    ``import albumentations`` also imports its PyTorch integration (``ToTensorV2``, which imports torch) and its
    Hugging Face hub mixin (huggingface_hub and its HTTP stack) when those packages are installed, each inside a
    ``try``/``suppress(ImportError)``. curate uses neither, and they cost ~3 CPU-s per process on the 2-core
    machine: as much as augmenting 5,000 small images. While albumentations imports, each of the two that is not
    loaded yet is marked absent (a ``None`` entry in ``sys.modules`` makes its import raise ImportError, which
    albumentations skips); the marks are removed afterwards, so a later ``import torch`` or ``huggingface_hub``
    works as usual. What this process lacks is ``A.ToTensorV2`` (import it from ``albumentations.pytorch``) and
    albumentations' hub methods.
    """
    import sys

    if "albumentations" in sys.modules:
        return sys.modules["albumentations"]
    optional = (("albumentations.pytorch", "torch"), ("huggingface_hub", "huggingface_hub"))  # (module, what it loads)
    skip = [name for name, loads in optional if loads not in sys.modules]
    try:
        for name in skip:
            sys.modules[name] = None  # type: ignore[assignment]
        import albumentations as A
    finally:
        for name in skip:
            if name in sys.modules and sys.modules[name] is None:
                del sys.modules[name]
    return A


def _named_ops(name: str, size: tuple[int, int] | None) -> list[Any]:
    """The transforms of a named policy (``size`` = (H, W) is needed by ``shift``/``flip-shift`` only)."""
    A = albumentations()
    import cv2

    const = cv2.BORDER_CONSTANT  # zero padding: reflected borders invent structure that is not in the image
    if name in ("shift", "flip-shift"):
        if size is None:
            raise UsageError(f"policy {name!r} needs the image size")
        pad = max(1, round(min(size) / 14))
        shift = [A.PadIfNeeded(size[0] + 2 * pad, size[1] + 2 * pad, border_mode=const, fill=0), A.RandomCrop(size[0], size[1])]
        return shift if name == "shift" else [A.HorizontalFlip(), *shift]
    if name == "flip":
        return [A.HorizontalFlip()]
    if name == "standard":
        return [
            A.HorizontalFlip(),
            A.Affine(translate_percent=(-0.07, 0.07), scale=(0.9, 1.1), rotate=(-10, 10), border_mode=const, p=0.7),
            A.RandomBrightnessContrast(0.15, 0.15, p=0.5),
        ]
    if name == "affine":  # no flip: for classes a mirror image changes (digits, letters, signs)
        return [A.Affine(translate_percent=(-0.1, 0.1), scale=(0.9, 1.1), rotate=(-15, 15), shear=(-8, 8), border_mode=const, p=0.9)]
    if name == "light":
        return [
            A.HorizontalFlip(),
            A.Affine(translate_percent=(-0.06, 0.06), scale=(0.95, 1.05), rotate=(-5, 5), border_mode=const, p=0.75),
        ]
    if name == "medium":
        return [
            A.HorizontalFlip(),
            A.Affine(translate_percent=(-0.08, 0.08), scale=(0.9, 1.1), rotate=(-12, 12), border_mode=const, p=0.8),
            A.RandomBrightnessContrast(0.2, 0.2, p=0.5),
            A.GaussNoise(std_range=(0.02, 0.05), p=0.2),
        ]
    if name == "heavy":
        return [
            A.HorizontalFlip(),
            A.Affine(translate_percent=(-0.12, 0.12), scale=(0.8, 1.2), rotate=(-20, 20), shear=(-10, 10), border_mode=const, p=0.9),
            A.RandomBrightnessContrast(0.3, 0.3, p=0.7),
            A.GaussNoise(std_range=(0.03, 0.1), p=0.4),
            A.CoarseDropout(num_holes_range=(1, 3), hole_height_range=(0.1, 0.25), hole_width_range=(0.1, 0.25), fill=0, p=0.5),
        ]
    raise UsageError(f"unknown policy {name!r}; choose from {', '.join(POLICIES)} or give a policy file (.yaml/.json)")


def build_policy(name: str, size: tuple[int, int] | None = None) -> Any:
    """The ``A.Compose`` of a named policy (None for ``none``), seeded 0 (callers reseed per batch or sample).

    Raises:
        UsageError: unknown name (exit code 2).
    """
    if name not in POLICIES:
        raise UsageError(f"unknown policy {name!r}; choose from {', '.join(POLICIES)} or give a policy file (.yaml/.json)")
    if name == "none":
        return None
    A = albumentations()

    return A.Compose(_named_ops(name, size), seed=0)


def is_policy_file(spec: str) -> bool:
    return spec.lower().endswith(POLICY_SUFFIXES)


def load_policy_file(path: str | Path) -> Any:
    """Load a policy file written by ``A.save`` / ``save_policy`` (YAML or JSON); a bare transform is wrapped in a Compose.

    Raises:
        UsageError: missing file, unparsable file or unknown transform (one line, exit code 2).
    """
    A = albumentations()

    path = Path(path)
    if not path.is_file():
        raise UsageError(f"policy file {path} does not exist; named policies: {', '.join(POLICIES)}")
    fmt = "json" if path.suffix.lower() == ".json" else "yaml"
    try:
        with warnings.catch_warnings():  # albumentations warns about missing keys before failing: one error line is enough
            warnings.simplefilter("ignore")
            loaded = A.load(str(path), data_format=fmt)
    except Exception as exc:  # noqa: BLE001 - yaml/json/albumentations raise many kinds; all mean "bad policy file"
        raise UsageError(f"policy file {path}: cannot load it ({type(exc).__name__}: {str(exc).splitlines()[0][:200]})") from None
    if not isinstance(loaded, A.Compose):
        loaded = A.Compose([loaded])
    loaded.set_random_seed(0)
    return loaded


def save_policy(compose: Any, path: str | Path) -> Path:
    """Write ``compose`` as a policy file (YAML unless the name ends in ``.json``) that ``load_policy_file`` reads back."""
    A = albumentations()

    path = Path(path)
    A.save(compose, str(path), data_format="json" if path.suffix.lower() == ".json" else "yaml")
    return path


def resolve_policy(spec: str, size: tuple[int, int] | None = None) -> Any:
    """A named policy or a policy file -> ``A.Compose`` (None for ``none``)."""
    return load_policy_file(spec) if is_policy_file(spec) else build_policy(spec, size)


def to_json(compose: Any) -> str:
    """The exact serialised transform (``A.to_dict``) as canonical JSON (sorted keys, no spaces)."""
    A = albumentations()

    return json.dumps(A.to_dict(compose), sort_keys=True, separators=(",", ":"))


def from_json(text: str | dict[str, Any]) -> Any:
    """Inverse of ``to_json``: an ``A.Compose`` equal to the one serialised."""
    A = albumentations()

    return A.from_dict(json.loads(text) if isinstance(text, str) else text)


def check_policy(spec: str) -> str:
    """Validate a policy spec before any work starts; returns the sha256 of its serialised form (for caching).

    Size-dependent named policies are hashed by name (their transform is built per image size).

    Raises:
        UsageError: unknown name or bad file (exit code 2).
    """
    if not is_policy_file(spec):
        if spec not in POLICIES:
            raise UsageError(f"unknown policy {spec!r}; choose from {', '.join(POLICIES)} or give a policy file (.yaml/.json)")
        return hashlib.sha256(spec.encode()).hexdigest()
    return hashlib.sha256(to_json(load_policy_file(spec)).encode()).hexdigest()


# ------------------------------------------------------------------------------------------- recipes
def copy_seed(seed: int, parent_id: str, copy: int) -> int:
    """The seed of one copy: a function of the global seed, the parent and the copy index only."""
    return int.from_bytes(hashlib.sha256(f"{seed}:{parent_id}:{copy}".encode()).digest()[:4], "big")


def decode(data: bytes, mode: str | None = None) -> tuple[Any, str, str]:
    """Parent bytes -> (uint8 array ``(H, W)`` for L or ``(H, W, 3)`` for RGB, mode, source format); EXIF orientation applied."""
    import numpy as np
    from PIL import Image

    im = Image.open(io.BytesIO(data))
    # A PNG without EXIF has no orientation to apply: skip exif_transpose, a fifth of the decode time of a small PNG.
    if not (data[:4] == b"\x89PNG" and b"eXIf" not in data and b"exif" not in data and im.mode in ("L", "RGB")):
        from curate.images import decode_rgb_or_l

        im = decode_rgb_or_l(data)
    fmt = "JPEG" if data[:3] == b"\xff\xd8\xff" else "other"  # by magic bytes: EXIF transposing drops ``im.format``
    mode = mode or ("L" if im.mode == "L" else "RGB")
    # convert() to the mode it already has is a copy: a third of the decode time of a 28x28 PNG
    return np.asarray(im if im.mode == mode else im.convert(mode), dtype=np.uint8), mode, fmt


def encoding_for(source_format: str) -> dict[str, Any]:
    """PNG (lossless) for everything but JPEG parents, which stay JPEG at ``JPEG_QUALITY``."""
    return {"format": "JPEG", "quality": JPEG_QUALITY} if source_format == "JPEG" else {"format": "PNG"}


def augment_array(compose: Any, seed: int, image: Any) -> Any:
    """Apply ``compose`` to a decoded uint8 image with one generator pair seeded ``seed``, shared by every transform."""
    import random

    import numpy as np

    # ``default_rng(seed)`` is ``Generator(PCG64(seed))`` (numpy's definition); built directly it skips the
    # argument dispatch, ~15% of the cost of seeding a copy.
    compose.set_random_state(np.random.Generator(np.random.PCG64(seed)), random.Random(seed))
    return apply_transform(compose, image)


def apply_transform(compose: Any, image: Any) -> Any:
    """``compose`` on a uint8 image with the generators it holds; a grayscale ``(H, W)`` image comes back ``(H, W)``."""
    out = compose(image=image)["image"]
    return out[:, :, 0] if out.ndim == 3 and image.ndim == 2 else out


def encode_array(image: Any, encode: dict[str, Any]) -> bytes:
    """uint8 ``(H, W)`` (L) or ``(H, W, 3)`` (RGB) -> bytes, Pillow ``save(**encode)``."""
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(image).save(buf, **encode)
    return buf.getvalue()


def reproduce(recipe: str | dict[str, Any], parent_bytes: bytes) -> bytes:
    """The exact bytes of an augmented sample from its ``recipe`` column and its parent's bytes (see module doc)."""
    r = json.loads(recipe) if isinstance(recipe, str) else recipe
    image, _, _ = decode(parent_bytes, r["mode"])
    return encode_array(augment_array(from_json(r["transform"]), r["seed"], image), r["encode"])


def draw_grid(rows: list[list[bytes]], out_path: str, cell: int = 96) -> None:
    """A PNG grid of encoded images, one row per list (the original first, set apart by a wider gap).

    Cells are ``cell`` px squares; images are scaled to fit with nearest-neighbour, so small ones stay crisp.
    """
    from PIL import Image

    width = max(len(r) for r in rows)
    grid = Image.new("RGB", (width * (cell + 2) + 2, len(rows) * (cell + 2)), (255, 255, 255))
    for r, row in enumerate(rows):
        for c, data in enumerate(row):
            im = Image.open(io.BytesIO(data)).convert("RGB")
            scale = cell / max(im.size)
            im = im.resize((max(1, round(im.width * scale)), max(1, round(im.height * scale))), Image.NEAREST)
            grid.paste(im, (c * (cell + 2) + (4 if c else 0), r * (cell + 2)))
    grid.save(out_path, format="PNG")
