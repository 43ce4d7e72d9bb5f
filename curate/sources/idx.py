"""MNIST-style idx files: ``*-images-idx3-ubyte[.gz]`` with ``*-labels-idx1-ubyte[.gz]``.

Images are uint8 arrays; each becomes a lossless grayscale PNG (encoded in the worker, not here), so an idx
dataset is stored and exported like any other image set. The train/test origin is taken from the file name
(``train`` / ``t10k`` or ``test``) unless ``--split-name`` says otherwise.
"""

from __future__ import annotations

import gzip
import struct
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from curate.errors import CurateError
from curate.sources import Source, SourceOptions


def find_idx_pairs(folder: Path) -> list[tuple[Path, Path | None]]:
    """``(images, labels or None)`` pairs in ``folder`` (non-recursive), sorted by name."""
    pairs = []
    for img in sorted(folder.glob("*idx3-ubyte*")):
        if img.name.endswith((".gz", "ubyte")):
            # ``train-images-idx3-ubyte`` and the dotted ``train-images.idx3-ubyte`` (Kaggle copies) both
            # pair with the same name spelled ``labels``/``idx1``; the labels may or may not be gzipped.
            lab_name = img.name.replace("images", "labels", 1).replace("idx3", "idx1")
            base = lab_name.removesuffix(".gz")
            lab = next((c for c in (folder / lab_name, folder / base, folder / f"{base}.gz") if c.exists()), None)
            pairs.append((img, lab))
    return pairs


def read_idx(path: Path) -> np.ndarray:
    """Read an idx file (optionally gzipped) into an array of its stored dtype and shape.

    Raises:
        CurateError: not an idx file, an unsupported dtype, or fewer bytes than the header promises.
    """
    opener = gzip.open if path.name.endswith(".gz") else open
    try:
        with opener(path, "rb") as fh:
            raw = fh.read()
    except (OSError, EOFError) as exc:
        raise CurateError(f"{path}: cannot read idx file ({exc})") from exc
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0:
        raise CurateError(f"{path}: not an idx file (bad magic number)")
    dtypes = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
    if raw[2] not in dtypes:
        raise CurateError(f"{path}: unsupported idx element type 0x{raw[2]:02x}")
    ndim = raw[3]
    shape = struct.unpack(f">{ndim}I", raw[4 : 4 + 4 * ndim])
    dtype = np.dtype(dtypes[raw[2]])
    need = int(np.prod(shape)) * dtype.itemsize
    body = raw[4 + 4 * ndim :]
    if len(body) < need:
        raise CurateError(f"{path}: truncated idx file ({len(body)} of {need} data bytes)")
    return np.frombuffer(body[:need], dtype=dtype).reshape(shape)


def _origin(name: str) -> str | None:
    low = name.lower()
    if low.startswith("train"):
        return "train"
    if low.startswith(("t10k", "test")):
        return "test"
    return None


class IdxSource(Source):
    """All image/label pairs in a folder, or the one pair named by an images file."""

    def __init__(self, path: Path, opts: SourceOptions) -> None:
        self.opts = opts
        if path.is_dir():
            self.pairs = find_idx_pairs(path)
        else:
            self.pairs = [p for p in find_idx_pairs(path.parent) if p[0] == path] or [(path, None)]
        if not self.pairs:
            raise CurateError(f"{path}: no *-images-idx3-ubyte[.gz] files found")
        self.total = 0
        for img, _ in self.pairs:
            with (gzip.open if img.name.endswith(".gz") else open)(img, "rb") as fh:
                head = fh.read(8)
            if len(head) < 8:
                raise CurateError(f"{img}: truncated idx header")
            self.total += struct.unpack(">I", head[4:8])[0]

    def items(self) -> Iterator[dict]:
        names = self.opts.class_names
        for img_path, lab_path in self.pairs:
            images = read_idx(img_path)
            if images.ndim != 3 or images.dtype != np.uint8:
                raise CurateError(f"{img_path}: expected uint8 images of shape (N, H, W), got {images.dtype} {images.shape}")
            labels = None
            if lab_path is not None and not self.opts.unlabeled:
                labels = read_idx(lab_path)
                if labels.shape != (images.shape[0],):
                    raise CurateError(f"{lab_path}: {labels.shape[0]} labels for {images.shape[0]} images in {img_path.name}")
                if names is not None and labels.size and int(labels.max()) >= len(names):
                    raise CurateError(f"{lab_path}: label id {int(labels.max())} but only {len(names)} --class-names")
            split = self.opts.split_name or _origin(img_path.name)
            h, w = images.shape[1:]
            enc = f"L:{h}x{w}"
            for i in range(images.shape[0]):
                label = None
                if labels is not None:
                    k = int(labels[i])
                    label = names[k] if names is not None else str(k)
                yield {
                    "source": f"{img_path}#{i}",
                    "label": label,
                    "origin_split": split,
                    "data": images[i].tobytes(),
                    "encode": enc,
                }
