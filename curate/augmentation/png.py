"""PNG bytes for many small images at once: byte for byte what Pillow's ``save(format="PNG")`` writes, for less CPU.

Pillow encodes a 28x28 image in ~90 us on the 2-core machine, two thirds of it outside zlib (the per-image encoder
set-up and the chunk writing in Python): as much as decoding it. ``encode_many`` does the same work for a stack of
same-shape images: Pillow's per-row filter choice (libImaging/ZipEncode.c: the sum of |byte| as a signed byte for
no filter, Up, Sub and Paeth, tried in that order, the first smallest wins; Average only with ``optimize``) as numpy
arrays over the whole stack, then per image one zlib stream with Pillow's settings (level 6, window 15, memLevel 9,
``Z_FILTERED``) split into IDAT chunks of 65,536 bytes (Pillow's buffer), after the IHDR chunk, and IEND.

That is the layout of Pillow 9-13 for an ``L`` or ``RGB`` image with no ``info`` (no gamma, ICC, text or DPI
chunks); a different Pillow or zlib could write other bytes, so ``pillow_compatible`` encodes a fixed set of
images both ways once per process and callers use Pillow when anything differs.
"""

from __future__ import annotations

import functools
import io
import struct
import zlib
from collections import defaultdict
from typing import Any

import numpy as np

IDAT_BYTES = 65536  # ImageFile.MAXBLOCK: the encoder's output buffer, one IDAT chunk per buffer
STACK_BYTES = 4 << 20  # pixels filtered at once: the int16 temporaries are ~10x this
_FILTER_BYTE = np.array([0, 2, 1, 4], np.uint8)  # none, Up, Sub, Paeth: Pillow's order of trial -> PNG filter type


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(data, zlib.crc32(kind)))


def _filtered(stack: np.ndarray) -> np.ndarray:
    """``(N, H, W)`` or ``(N, H, W, 3)`` uint8 -> ``(N, H, 1 + W * C)``: each row's filter byte, then the filtered row."""
    n, h = stack.shape[:2]
    bpp = 1 if stack.ndim == 3 else stack.shape[3]
    width = stack.shape[2] * bpp
    padded = np.zeros((n, h + 1, width + bpp), np.uint8)  # a black row above and black pixels to the left
    padded[:, 1:, bpp:] = stack.reshape(n, h, width)
    x, up, left, corner = padded[:, 1:, bpp:], padded[:, :-1, bpp:], padded[:, 1:, :-bpp], padded[:, :-1, :-bpp]
    b, a, c = up.astype(np.int16), left.astype(np.int16), corner.astype(np.int16)
    pa, pb, pc = np.abs(b - c), np.abs(a - c), np.abs(a + b - 2 * c)
    paeth = x - np.where((pa <= pb) & (pa <= pc), left, np.where(pb <= pc, up, corner))
    rows = (x, x - up, x - left, paeth)  # uint8 arithmetic wraps like the C code's UINT8
    # |v| as a signed byte is min(v, 256 - v); ``0 - v`` in uint8 is 256 - v
    cost = np.stack([np.minimum(r, 0 - r).sum(axis=2, dtype=np.int32) for r in rows])
    pick = cost.argmin(axis=0)  # the first of equal sums, as the strict ``<`` in the C code
    out = np.empty((n, h, width + 1), np.uint8)
    out[:, :, 0] = _FILTER_BYTE[pick]
    pick = pick[:, :, None]
    out[:, :, 1:] = np.where(pick == 0, rows[0], np.where(pick == 1, rows[1], np.where(pick == 2, rows[2], paeth)))
    return out


def encode_many(stack: np.ndarray) -> list[bytes]:
    """PNG bytes of each image of a ``(N, H, W)`` (L) or ``(N, H, W, 3)`` (RGB) uint8 stack, as Pillow writes them."""
    h, w = stack.shape[1:3]
    head = b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 0 if stack.ndim == 3 else 2, 0, 0, 0))
    tail = _chunk(b"IEND", b"")
    per = max(1, STACK_BYTES // max(1, stack[0].nbytes))
    out: list[bytes] = []
    for start in range(0, len(stack), per):
        for rows in _filtered(stack[start : start + per]):
            z = zlib.compressobj(6, zlib.DEFLATED, 15, 9, zlib.Z_FILTERED)
            data = z.compress(rows.tobytes()) + z.flush()
            idat = [_chunk(b"IDAT", data[i : i + IDAT_BYTES]) for i in range(0, len(data), IDAT_BYTES)]
            out.append(head + b"".join(idat) + tail)
    return out


def _pillow(image: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG")
    return buf.getvalue()


@functools.cache
def pillow_compatible() -> bool:
    """Whether ``encode_many`` writes Pillow's bytes here: checked once per process on noise, flat, gradient and
    edge images, grayscale and RGB, one of them larger than an IDAT chunk."""
    rng = np.random.default_rng(0)
    gray = [rng.integers(0, 256, (h, w), dtype=np.uint8) for h, w in ((1, 1), (3, 7), (28, 28), (300, 260))]
    gray += [np.zeros((9, 9), np.uint8), np.tile(np.arange(256, dtype=np.uint8), (5, 1)), np.eye(16, dtype=np.uint8) * 255]
    rgb = [rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for h, w in ((1, 2), (16, 16))]
    rgb.append(np.repeat(np.tile(np.arange(0, 256, 8, dtype=np.uint8), (8, 1))[:, :, None], 3, axis=2))
    return all(encode_many(im[None])[0] == _pillow(im) for im in gray + rgb)


class Encoder:
    """The encoded bytes of a run of images, in order, as ``policies.encode_array`` gives them.

    Small PNGs (``L``/``RGB`` uint8, up to ``SMALL`` bytes of pixels) wait and are encoded together, by shape, with
    ``encode_many`` while ``pillow_compatible``; at most ``STACK_BYTES`` of pixels wait, so large images or many
    copies never pile up in memory. Everything else goes to Pillow at once.
    """

    SMALL = 1 << 20  # larger images: Pillow's per-image overhead is small beside zlib's work on them

    def __init__(self) -> None:
        self.data: list[bytes | None] = []
        self.waiting: list[tuple[int, np.ndarray]] = []
        self.held = 0
        self.batched = pillow_compatible()

    def add(self, pixels: np.ndarray, encode: dict[str, Any]) -> None:
        """Queue one uint8 image ``(H, W)`` or ``(H, W, 3)`` with its Pillow ``save`` arguments."""
        fits = pixels.dtype == np.uint8 and (pixels.ndim == 2 or (pixels.ndim == 3 and pixels.shape[2] == 3))
        if not (self.batched and encode == {"format": "PNG"} and fits and pixels.nbytes <= self.SMALL):
            from curate.augmentation.policies import encode_array

            self.data.append(encode_array(pixels, encode))
            return
        self.waiting.append((len(self.data), pixels))
        self.data.append(None)
        self.held += pixels.nbytes
        if self.held >= STACK_BYTES:
            self.done()

    def done(self) -> list[bytes]:
        """Encode what waits; every image's bytes so far, in the order added."""
        by_shape: dict[tuple[int, ...], list[tuple[int, np.ndarray]]] = defaultdict(list)
        for at, pixels in self.waiting:
            by_shape[pixels.shape].append((at, pixels))
        for items in by_shape.values():
            for (at, _), data in zip(items, encode_many(np.stack([p for _, p in items])), strict=True):
                self.data[at] = data
        self.waiting, self.held = [], 0
        return self.data  # type: ignore[return-value]
