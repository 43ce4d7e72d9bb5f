"""Per-image duplicate signatures: an exact pixel hash plus a small grayscale thumbnail.

What one signature holds (``SIGNATURE_SCHEMA``, one row per sample, cached per ``sample_id`` in a version's
``state/signatures.parquet``):

- ``pixel_hash``: 16-byte BLAKE2b of the decoded pixels (after the EXIF orientation, in a canonical mode: an RGB
  image whose channels are equal counts as ``L``, an opaque RGBA image as RGB). A PNG and a lossless re-encode of
  it, or the same picture saved as palette PNG and as RGB, hash the same: these are *exact* duplicates.
- ``thumb``: the grayscale image as uint8, kept at its native resolution when a side is at most ``THUMB`` (32)
  pixels and resized (bicubic, antialiased) to ``THUMB`` on that side otherwise; at most 1 KB. Keeping small
  images at their own pixel grid is what makes a 1-2 px shift or a crop of a 28x28 image an *integer*
  translation that ``curate.stages.dedupe.verify`` can match exactly, instead of a resampled, blurred one.
- ``thumb_v``: the same thumbnail of the HSV *value* channel ``max(R, G, B)`` for colour images (null for gray
  ones): a hue rotation or a saturation change leaves it exactly as it is, while they move the luma.
- ``thumb_h``/``thumb_w`` (its shape), ``width``/``height`` (the decoded size), ``sharpness`` (variance of the
  Laplacian of the gray image at <= 256 px, for ``--keep sharpest``).

Why not a 64-bit pHash: a binarised DCT throws away exactly what separates a shifted copy from a different
garment with the same silhouette (measured in BENCHMARKS.md "Dedupe"); the thumbnail keeps it at 1 KB per image.
"""

from __future__ import annotations

import hashlib
import io
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from curate.tables import per_row

if TYPE_CHECKING:
    from curate.workspace import Workspace

THUMB = 32
SIG_VERSION = "thumb32-v3"
CACHE_NAME = "signatures.parquet"
SHARP_SIDE = 256

SIGNATURE_SCHEMA = pa.schema(
    [
        ("sample_id", pa.string()),
        ("pixel_hash", pa.binary(16)),
        ("thumb", pa.binary()),
        ("thumb_h", pa.int16()),
        ("thumb_w", pa.int16()),
        ("thumb_v", pa.binary()),
        ("width", pa.int32()),
        ("height", pa.int32()),
        ("sharpness", pa.float32()),
        ("error", pa.string()),
    ],
    metadata={b"sig_version": SIG_VERSION.encode()},
)


def canonical_pixels(im: Any) -> tuple[str, np.ndarray]:
    """The pixels of a decoded PIL image in a canonical mode: ``L``, ``RGB`` or ``RGBA``.

    Gray content stored as RGB becomes ``L``; an RGBA image whose alpha is 255 everywhere becomes ``RGB``.
    """
    if im.mode not in ("L", "RGB", "RGBA"):
        im = im.convert("RGBA" if "A" in im.mode or "transparency" in im.info else "RGB")
    arr = np.asarray(im)
    mode = im.mode
    if mode == "RGBA" and bool((arr[..., 3] == 255).all()):
        arr, mode = arr[..., :3], "RGB"
    if mode == "RGB" and bool((arr[..., 0] == arr[..., 1]).all() and (arr[..., 1] == arr[..., 2]).all()):
        arr, mode = arr[..., 0], "L"
    return mode, np.ascontiguousarray(arr)


def pixel_hash(mode: str, arr: np.ndarray) -> bytes:
    """16-byte BLAKE2b of mode, shape and pixel bytes: equal iff the decoded images are equal."""
    h = hashlib.blake2b(digest_size=16)
    h.update(f"{mode}:{arr.shape}".encode())
    h.update(arr.tobytes())
    return h.digest()


def gray_of(mode: str, arr: np.ndarray) -> np.ndarray:
    """Luma (ITU-R 601, like PIL's ``convert('L')``) as float32 in 0..255; alpha is ignored."""
    if mode == "L":
        return arr.astype(np.float32)
    rgb = arr[..., :3].astype(np.float32)
    return rgb @ np.array([0.299, 0.587, 0.114], np.float32)


def thumbnail(gray: np.ndarray) -> np.ndarray:
    """uint8 thumbnail: native pixels where a side is <= ``THUMB``, bicubic (antialiased) down to ``THUMB`` otherwise."""
    from PIL import Image

    h, w = gray.shape
    th, tw = min(h, THUMB), min(w, THUMB)
    g8 = np.clip(np.rint(gray), 0, 255).astype(np.uint8)
    if (th, tw) == (h, w):
        return g8
    im = Image.fromarray(g8, mode="L")
    factor = min(h // (4 * th), w // (4 * tw))
    if factor >= 2:  # a cheap box reduction first keeps huge photos fast; the last step stays bicubic
        im = im.reduce(factor)
    return np.asarray(im.resize((tw, th), Image.BICUBIC))


def sharpness(gray: np.ndarray) -> float:
    """Variance of the 4-neighbour Laplacian of the gray image (0..1 scale) at <= ``SHARP_SIDE`` px per side."""
    from PIL import Image

    h, w = gray.shape
    if max(h, w) > SHARP_SIDE:
        s = SHARP_SIDE / max(h, w)
        im = Image.fromarray(np.clip(gray, 0, 255).astype(np.uint8), mode="L")
        gray = np.asarray(im.resize((max(1, round(w * s)), max(1, round(h * s))), Image.BILINEAR), np.float32)
    g = gray / 255.0
    if min(g.shape) < 3:
        return 0.0
    lap = g[1:-1, :-2] + g[1:-1, 2:] + g[:-2, 1:-1] + g[2:, 1:-1] - 4 * g[1:-1, 1:-1]
    return float(lap.var())


def decode(data: bytes) -> tuple[Any, tuple[int, int]]:
    """Decode for a signature: ``(PIL image in L, RGB or RGBA, (width, height) of the full image)``, EXIF applied.

    Photo inputs are normalised here: 16-bit and 32-bit gray (``I;16``, ``I``, ``F``) are scaled to 8 bits by
    their range (Pillow's own conversion clips them to white), CMYK and palette images become RGB(A). A JPEG
    larger than ``4 * SHARP_SIDE`` is decoded with ``draft`` (DCT scaling, 1/2 to 1/8) to at least ``SHARP_SIDE``
    px, so the cost per photo stays near that of a small image; its pixel hash is then the hash of that
    reduced decode (the same file still hashes the same; a lossless PNG of that JPEG becomes a near
    duplicate at score ~1 instead of an exact one).
    """
    from PIL import Image, ImageOps

    im = Image.open(io.BytesIO(data))
    full = im.size
    if im.format == "JPEG" and max(full) > 4 * SHARP_SIDE:
        im.draft("RGB" if im.mode not in ("L",) else "L", (SHARP_SIDE, SHARP_SIDE))
    im = ImageOps.exif_transpose(im)
    if (im.width > im.height) != (full[0] > full[1]) and im.width != im.height:
        full = (full[1], full[0])  # rotated by the EXIF orientation
    if im.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        a = np.asarray(im, dtype=np.float64)
        hi = 65535.0 if im.mode.startswith("I;16") or a.max() > 255 else 255.0
        im = Image.fromarray(np.clip(np.rint(a * (255.0 / hi)), 0, 255).astype(np.uint8), "L")
    elif im.mode not in ("L", "RGB", "RGBA"):
        im = im.convert("RGBA" if "A" in im.mode or "transparency" in im.info else "RGB")
    return im, full


def signature_of(data: bytes) -> dict[str, Any]:
    """Decode ``data`` (``decode``) and return one ``SIGNATURE_SCHEMA`` row (without sample_id).

    Only the pixel hash reads every decoded pixel; the gray image, the thumbnail and the sharpness are taken
    from a box-reduced copy of at most about ``2 * SHARP_SIDE`` px per side, so their cost does not grow with
    the image.
    """
    from PIL import Image

    im, (width, height) = decode(data)
    mode, arr = canonical_pixels(im)
    factor = max(arr.shape[0], arr.shape[1]) // (2 * SHARP_SIDE)
    small = np.asarray(Image.fromarray(arr, mode).reduce(factor)) if factor >= 2 else arr
    gray = gray_of(mode, small)
    th = thumbnail(gray) if small is arr else _thumb_of_reduced(gray, arr.shape[:2])
    tv = None
    if mode != "L":
        value = small[..., :3].max(-1).astype(np.float32)
        tv = (thumbnail(value) if small is arr else _thumb_of_reduced(value, arr.shape[:2])).tobytes()
    return {
        "pixel_hash": pixel_hash(mode, arr),
        "thumb": th.tobytes(),
        "thumb_h": th.shape[0],
        "thumb_w": th.shape[1],
        "thumb_v": tv,
        "width": width,
        "height": height,
        "sharpness": sharpness(gray),
        "error": None,
    }


def _thumb_of_reduced(gray: np.ndarray, full_hw: tuple[int, int]) -> np.ndarray:
    """The thumbnail of a large image from its reduced gray copy (both sides of the original exceed ``THUMB``)."""
    from PIL import Image

    g8 = Image.fromarray(np.clip(np.rint(gray), 0, 255).astype(np.uint8), mode="L")
    th, tw = min(full_hw[0], THUMB), min(full_hw[1], THUMB)
    return np.asarray(g8.resize((tw, th), Image.BICUBIC))


def compute_signatures(batch: pa.Table) -> pa.Table:
    """Signatures for a batch of ``sample_id``/``data`` rows (same order); undecodable rows get ``error``."""
    return per_row(batch, signature_of, SIGNATURE_SCHEMA)


def thumbs_array(sigs: pa.Table, rows: np.ndarray | None = None, *, tight: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Thumbnails as a zero-padded ``(N, THUMB, THUMB)`` uint8 array plus their ``(N, 2)`` shapes (h, w).

    Args:
        rows: the rows of ``sigs`` wanted, in this order (default all).
        tight: pad only to the largest thumbnail's height and width instead of ``THUMB`` (what the search code
            reads: a thumbnail is always sliced to its own shape; at a million 8x8 images 64 MB instead of 1 GB).
    """
    rows = np.arange(sigs.num_rows) if rows is None else np.asarray(rows, np.int64)
    hs = sigs.column("thumb_h").to_numpy(zero_copy_only=False).astype(np.int64)[rows]
    ws = sigs.column("thumb_w").to_numpy(zero_copy_only=False).astype(np.int64)[rows]
    side_h, side_w = (int(hs.max(initial=1)), int(ws.max(initial=1))) if tight else (THUMB, THUMB)
    out = np.zeros((len(rows), side_h, side_w), np.uint8)
    _fill(out, sigs.column("thumb"), rows, hs, ws)
    return out, np.stack([hs, ws], 1)


def value_thumbs(sigs: pa.Table, thumbs: np.ndarray, rows: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """``(N, THUMB, THUMB)`` value-channel thumbnails (the luma ``thumbs`` where there is none) and ``(N,)`` has-value.

    ``rows``: the rows of ``sigs`` that ``thumbs`` holds (default all); the output has the shape of ``thumbs``.
    """
    rows = np.arange(sigs.num_rows) if rows is None else np.asarray(rows, np.int64)
    out = thumbs.copy()
    hs = sigs.column("thumb_h").to_numpy(zero_copy_only=False).astype(np.int64)[rows]
    ws = sigs.column("thumb_w").to_numpy(zero_copy_only=False).astype(np.int64)[rows]
    has = _fill(out, sigs.column("thumb_v"), rows, hs, ws)
    return out, has


def _fill(out: np.ndarray, col: pa.ChunkedArray, rows: np.ndarray, hs: np.ndarray, ws: np.ndarray) -> np.ndarray:
    """``out[i, :h, :w]`` = the bytes of row ``rows[i]`` of the binary column ``col`` read as an (h, w) image, for
    every non-null row, without a Python object per row; returns ``(len(rows),)`` bool: the row was not null."""
    has = np.zeros(len(rows), bool)
    order = np.argsort(rows, kind="stable")
    sorted_rows = rows[order]
    lo = 0
    for chunk in col.chunks:
        hi = lo + len(chunk)
        pos = order[np.searchsorted(sorted_rows, lo) : np.searchsorted(sorted_rows, hi)]
        if pos.size:
            local = rows[pos] - lo
            ok = ~chunk.is_null().to_numpy(zero_copy_only=False)[local]
            pos, local = pos[ok], local[ok]
            has[pos] = True
            offsets = np.frombuffer(chunk.buffers()[1], np.int32, len(chunk) + 1, chunk.offset * 4)
            data = np.frombuffer(chunk.buffers()[2], np.uint8) if chunk.buffers()[2] is not None else np.zeros(0, np.uint8)
            keys = hs[pos] * 64 + ws[pos]
            for key in np.unique(keys).tolist():
                h, w = key // 64, key % 64
                sel = np.flatnonzero(keys == key)
                for s in range(0, len(sel), 65536):  # bounded gather index (8 bytes per pixel)
                    part = sel[s : s + 65536]
                    idx = offsets[local[part]].astype(np.int64)[:, None] + np.arange(h * w)
                    out[pos[part], :h, :w] = data[idx].reshape(-1, h, w)
        lo = hi
    return has


@dataclass
class UniqueSignatures:
    """What the search needs of N signatures, as arrays: one thumbnail per distinct decoded image.

    Built once from the Arrow signatures (``of``), so the table (sample ids, encoded thumbnails) can be dropped
    before the search and only one copy of the thumbnails is held.

    Attributes:
        first: ``(U,)`` the first row of each distinct ``pixel_hash`` (in hash order); u_of: ``(N,)`` each row's
            distinct image.
        thumbs, shapes: ``thumbs_array`` of the ``first`` rows (tight padding); values, has_value:
            ``value_thumbs`` of them (values None when every image is gray).
        sizes: ``(U, 2)`` decoded (height, width); sharpness: ``(N,)`` float32 per row.
    """

    first: np.ndarray
    u_of: np.ndarray
    thumbs: np.ndarray
    shapes: np.ndarray
    values: np.ndarray | None
    has_value: np.ndarray
    sizes: np.ndarray
    sharpness: np.ndarray

    @classmethod
    def of(cls, sigs: pa.Table) -> UniqueSignatures:
        """From ``SIGNATURE_SCHEMA`` rows without errors."""
        hashes = sigs.column("pixel_hash").combine_chunks()
        raw = np.frombuffer(hashes.buffers()[1], "S16", len(hashes), hashes.offset * 16)
        _, first, u_of = np.unique(raw, return_index=True, return_inverse=True)
        thumbs, shapes = thumbs_array(sigs, first, tight=True)
        if sigs.column("thumb_v").null_count < sigs.num_rows:
            values, has_value = value_thumbs(sigs, thumbs, first)
            if not has_value.any():  # colour rows only among exact duplicates' later copies
                values = None
        else:  # all gray: no second thumbnail array
            values, has_value = None, np.zeros(len(first), bool)
        hw = np.stack([sigs.column("height").to_numpy(), sigs.column("width").to_numpy()], 1)
        sharp = sigs.column("sharpness").to_numpy(zero_copy_only=False)
        return cls(first, u_of.reshape(-1), thumbs, shapes, values, has_value, hw[first].astype(np.int64), sharp)


def cache_bytes(sigs: pa.Table) -> bytes:
    """Serialise signatures (rows without error) for ``state/signatures.parquet``."""
    sigs = sigs.filter(pc.is_null(sigs.column("error"))).cast(SIGNATURE_SCHEMA)
    buf = io.BytesIO()
    pq.write_table(sigs, buf, compression="zstd")
    return buf.getvalue()


def read_cached(ws: Workspace, vid: str, ids: Iterable[str] | pa.Array | pa.ChunkedArray) -> pa.Table:
    """Cached signatures for ``ids`` found in the ``state/`` of ``vid`` or its ancestors (newest first).

    Caches written by another signature version are ignored, so changing the algorithm never mixes signatures.
    ``ids`` may be an Arrow string array: no Python object per id is made.
    """
    want = ids if isinstance(ids, (pa.Array, pa.ChunkedArray)) else pa.array(sorted(set(ids)), pa.string())
    parts: list[pa.Table] = []
    for v in reversed(ws.lineage(vid)):
        if not len(want):
            break
        path = ws.state_path(v, CACHE_NAME)
        if not path.exists():
            continue
        meta = pq.read_schema(path).metadata or {}
        if meta.get(b"sig_version") != SIG_VERSION.encode():
            continue
        t = pq.read_table(path)
        t = t.filter(pc.is_in(t.column("sample_id"), want))
        if t.num_rows:
            parts.append(t.cast(SIGNATURE_SCHEMA))
            want = want.filter(pc.invert(pc.is_in(want, t.column("sample_id"))))
    return pa.concat_tables(parts) if parts else SIGNATURE_SCHEMA.empty_table()
