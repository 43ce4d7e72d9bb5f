"""Reading curate's export folders without curate's workspace code: shard files, rows, and decoding.

An export (``<workspace>/exports/<version>/``) holds ``parquet/{split}-NNNNNN.parquet`` (columns ``sample_id``,
``image{bytes,path}``, ``label`` int, ...) and/or ``webdataset/{split}-NNNNNN.tar`` (``<key>.<ext>``,
``<key>.cls``, ``<key>.json``), ``index.json`` and ``dataset.json`` (see ``curate.stages.export.write``).
"""

from __future__ import annotations

import json
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow.parquet as pq

from curate.errors import CurateError

if TYPE_CHECKING:
    from curate.workspace import Workspace

MAX_AUTO_SIDE = 128


def decode(data: bytes, channels: int, size: tuple[int, int] | None) -> np.ndarray:
    """Image bytes -> uint8 ``(H, W, channels)`` at ``size = (H, W)`` (EXIF applied, alpha dropped, bilinear resize;
    ``size`` None keeps the image's own size)."""
    from PIL import Image

    from curate.images import decode_rgb_or_l

    im = decode_rgb_or_l(data).convert("L" if channels == 1 else "RGB")
    if size is not None and (im.height, im.width) != tuple(size):
        im = im.resize((size[1], size[0]), Image.BILINEAR)
    arr = np.asarray(im, dtype=np.uint8)
    return arr[:, :, None] if arr.ndim == 2 else arr


@dataclass
class ExportInfo:
    """An export folder and its ``dataset.json`` card."""

    root: Path
    card: dict[str, Any]

    @property
    def classes(self) -> list[str]:
        return list(self.card["classes"])

    def files(self, split: str, fmt: str) -> list[Path]:
        """Shard files of ``split`` in ``fmt`` (``parquet`` or ``webdataset``), in index order."""
        return [self.root / r["file"] for r in read_index(self.root) if r["split"] == split and r["format"] == fmt]


def read_index(root: Path) -> list[dict[str, Any]]:
    """The ``index.json`` entries of an export folder (``file`` relative to ``root``, ``split``, ``format``, ``rows``,
    ``bytes``, ``sha256``).

    Raises:
        CurateError: no index (an export of an older curate: export the version again) or a damaged one.
    """
    from curate.stages.export.write import INDEX

    try:
        index = json.loads((root / INDEX).read_text())
    except FileNotFoundError:
        raise CurateError(f"{root}: no {INDEX} (an export of an older curate?)", hint="run `curate export` again") from None
    except ValueError as exc:
        raise CurateError(f"{root / INDEX}: damaged ({exc})") from None
    return list(index)


def open_export(ws: Workspace, version: str | None, fmt: str = "parquet") -> ExportInfo:
    """The export of ``version`` (HEAD by default) holding ``fmt`` shards; exports it first when missing."""
    from curate.stages.export import FORMATS, ExportConfig
    from curate.stages.export.write import export_version

    if fmt not in FORMATS:
        raise CurateError(f"unknown shard format {fmt!r}; choose from {', '.join(FORMATS)}", exit_code=2)
    vid = ws.resolve(version)
    root = ws.export_dir(vid)
    card_path = root / "dataset.json"
    card = json.loads(card_path.read_text()) if card_path.exists() else None
    if card is None or fmt not in card.get("formats", []) or not (root / "index.json").exists():
        formats = tuple(dict.fromkeys([*(card or {}).get("formats", []), fmt]))
        with ws.writer():
            export_version(ws, vid, ExportConfig(formats=formats, out=str(root)))  # local: a bucket workspace too
        card = json.loads(card_path.read_text())
    return ExportInfo(root, card)


def iter_records(files: list[Path], fmt: str, columns: tuple[str, ...] = ()) -> Iterator[dict[str, Any]]:
    """Stream ``{"sample_id", "data", "label", *columns}`` rows from shards, one row group / tar member set at a time."""
    for path in files:
        if fmt == "parquet":
            pf = pq.ParquetFile(path)
            cols = ["sample_id", "image", "label", *[c for c in columns if c in pf.schema_arrow.names]]
            for batch in pf.iter_batches(columns=cols, batch_size=1000):
                for row in batch.to_pylist():
                    row["data"] = row.pop("image")["bytes"]
                    yield row
            continue
        with tarfile.open(path, "r|") as tf:  # streaming: members arrive grouped by key (sorted at export)
            cur: dict[str, Any] = {}
            for member in tf:
                key, _, ext = member.name.partition(".")
                fh = tf.extractfile(member)
                body = fh.read() if fh else b""
                if cur and cur["sample_id"] != key:
                    yield _tar_row(cur, columns)
                    cur = {}
                cur["sample_id"] = key
                cur[ext] = body
            if cur:
                yield _tar_row(cur, columns)


def _tar_row(parts: dict[str, Any], columns: tuple[str, ...]) -> dict[str, Any]:
    meta = json.loads(parts.get("json", b"{}"))
    data = next((v for k, v in parts.items() if k not in ("sample_id", "json", "cls")), b"")
    return {"sample_id": parts["sample_id"], "data": data, "label": int(parts.get("cls", b"-1")), **{c: meta.get(c) for c in columns}}


def image_geometry(info: ExportInfo, split: str, fmt: str, image_size: int | None) -> tuple[int, tuple[int, int]]:
    """``(channels, (H, W))`` for training: channels from the normalization (else the modes), the size shared by
    every train image, or ``image_size`` / the median side capped at ``MAX_AUTO_SIDE`` when sizes differ."""
    sizes, modes = [], set()
    for f in info.files(split, fmt) if fmt == "parquet" else []:
        t = pq.read_table(f, columns=[c for c in ("width", "height", "mode") if c in pq.read_schema(f).names])
        if "width" in t.column_names:
            sizes += list(zip(t.column("height").to_pylist(), t.column("width").to_pylist(), strict=True))
        if "mode" in t.column_names:
            modes.update(t.column("mode").to_pylist())
    norm = info.card.get("normalization") or {}
    channels = int(norm.get("channels") or (1 if modes and modes <= {"1", "L", "LA", "I", "I;16", "F"} else 3))
    if image_size:
        return channels, (image_size, image_size)
    if not sizes:  # webdataset only: look at the first image
        first = next(iter_records(info.files(split, fmt), fmt), None)
        if first is None:
            raise CurateError(f"{info.root}: split {split!r} has no rows")
        arr = decode(first["data"], channels, None)
        return channels, (arr.shape[0], arr.shape[1])
    if len(set(sizes)) == 1:
        return channels, sizes[0]
    side = min(MAX_AUTO_SIDE, int(np.median([max(s) for s in sizes])))
    return channels, (side, side)


def read_bytes(images: list[bytes], channels: int, size: tuple[int, int]) -> np.ndarray:
    """Decode a list of image bytes to uint8 ``(N, H, W, C)``; undecodable bytes raise CurateError."""
    out = np.zeros((len(images), size[0], size[1], channels), np.uint8)
    for k, data in enumerate(images):
        try:
            out[k] = decode(data, channels, size)
        except Exception as exc:  # noqa: BLE001 - any decoder failure is a data error here
            raise CurateError(f"image {k} cannot be decoded: {type(exc).__name__}: {exc}") from exc
    return out
