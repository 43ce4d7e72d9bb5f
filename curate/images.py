"""Decoding checks for one image: every byte string that enters a workspace passes through here.

Pillow's decompression-bomb guard is on (over ``max_pixels`` is an error, not a warning), the file is
verified (for PNG every chunk's CRC, as Pillow's ``verify()`` does) and then fully decoded (truncated data shows
up only there), and
width/height are reported after the EXIF orientation is applied, since that is what a viewer and the trainer
see.
"""

from __future__ import annotations

import contextlib
import io
import struct
import warnings
import zlib
from collections.abc import Iterator
from dataclasses import dataclass

DEFAULT_MAX_PIXELS = 1 << 26  # 67 MP: larger than any training image, far below a decompression bomb
DEFAULT_MAX_BYTES = 64 << 20
_ORIENTATION_TAG = 0x0112
_CHUNK_HEAD = struct.Struct(">I4s")  # a PNG chunk's length and type
_CRC = struct.Struct(">I")
_MAGIC = (b"\x89PNG", b"\xff\xd8\xff", b"GIF87a", b"GIF89a", b"BM", b"II*\x00", b"MM\x00*", b"\x00\x00\x01\x00")


def looks_like_image(data: bytes) -> bool:
    """True when the leading bytes are a known image signature (PNG, JPEG, GIF, BMP, TIFF, ICO, WebP)."""
    return data.startswith(_MAGIC) or (data[:4] == b"RIFF" and data[8:12] == b"WEBP")


@dataclass(frozen=True)
class ImageCheck:
    """What ``inspect_image`` learned.

    ``reason`` is None for a good image, else one of ``empty``, ``not_an_image``, ``truncated``, ``corrupt``,
    ``too_large``; ``error`` is the human-readable detail.
    """

    reason: str | None = None
    error: str | None = None
    width: int | None = None
    height: int | None = None
    mode: str | None = None
    format: str | None = None
    exif_orientation: int | None = None


def png_integrity(data: bytes) -> tuple[str, str] | None:
    """Check every PNG chunk's length and CRC up to IEND: what Pillow's ``verify()`` checks, without it.

    ``verify()`` leaves the image unusable, so using it costs a second ``Image.open`` per file; PNG is the only
    format where Pillow's ``verify()`` checks anything. Returns ``(reason, error)`` or None when intact.
    """
    view = memoryview(data)
    pos, n = 8, len(data)
    while pos + 8 <= n:
        length, kind = _CHUNK_HEAD.unpack_from(data, pos)
        end = pos + 12 + length
        if end > n:
            return "truncated", f"truncated PNG file (chunk at byte {pos} needs {end - n} more bytes)"
        if zlib.crc32(view[pos + 4 : end - 4]) != _CRC.unpack_from(data, end - 4)[0]:
            return "corrupt", f"broken PNG file (bad checksum in {kind.decode('latin-1')!r} chunk at byte {pos})"
        if kind == b"IEND":
            return None
        pos = end
    return "truncated", "truncated PNG file (no IEND chunk)"


@contextlib.contextmanager
def bomb_guard(max_pixels: int = DEFAULT_MAX_PIXELS) -> Iterator[None]:
    """Within: Pillow refuses more than ``max_pixels`` (its bomb warning is an error), for ``inspect_guarded``.

    Entering costs a few microseconds (a warnings filter, Pillow's global limit): a batch enters once for all of
    its images instead of once per image. Not thread-safe (neither global is): one guard per process at a time.
    """
    from PIL import Image

    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        old = Image.MAX_IMAGE_PIXELS
        Image.MAX_IMAGE_PIXELS = max_pixels
        try:
            yield
        finally:
            Image.MAX_IMAGE_PIXELS = old


def inspect_image(data: bytes, *, max_pixels: int = DEFAULT_MAX_PIXELS, max_bytes: int = DEFAULT_MAX_BYTES) -> ImageCheck:
    """Decode ``data`` fully and report its facts or the reason it is unusable.

    Args:
        data: the original file bytes.
        max_pixels: width*height above this is ``too_large`` (decompression-bomb guard).
        max_bytes: files above this size are ``too_large`` without being decoded.

    Returns:
        An ``ImageCheck``; never raises for bad data.
    """
    with bomb_guard(max_pixels):
        return inspect_guarded(data, max_pixels=max_pixels, max_bytes=max_bytes)


def inspect_guarded(data: bytes, *, max_pixels: int, max_bytes: int) -> ImageCheck:
    """``inspect_image`` for a caller inside ``bomb_guard(max_pixels)`` (same ``max_pixels``): many images, one guard."""
    from PIL import Image, ImageOps

    if not data:
        return ImageCheck("empty", "file is empty (0 bytes)")
    if len(data) > max_bytes:
        return ImageCheck("too_large", f"{len(data)} bytes > max_bytes {max_bytes}")
    try:
        with Image.open(io.BytesIO(data)) as im:
            fmt = im.format
            if im.width * im.height > max_pixels:
                return ImageCheck("too_large", f"{im.width}x{im.height} pixels > max_pixels {max_pixels}")
            if fmt == "PNG":
                bad = png_integrity(data)
                if bad is not None:
                    return ImageCheck(*bad)
            im.load()
            orientation = int(im.getexif().get(_ORIENTATION_TAG, 1) or 1)
            if orientation != 1:
                im = ImageOps.exif_transpose(im)
            return ImageCheck(width=im.width, height=im.height, mode=im.mode, format=fmt, exif_orientation=orientation)
    except Exception as exc:  # noqa: BLE001 - any decoder failure on hostile bytes is a data error
        return decode_failure(exc, data)


def decode_failure(exc: Exception, data: bytes) -> ImageCheck:
    """The reason (``too_large``, ``corrupt``, ``not_an_image``, ``truncated``) for Pillow failing on ``data`` with
    ``exc``: what ingest records, and what ``curate predict`` reports for a file it cannot read."""
    from PIL import Image, UnidentifiedImageError

    if isinstance(exc, (Image.DecompressionBombError, Image.DecompressionBombWarning)):
        return ImageCheck("too_large", f"decompression bomb: {exc}")
    if isinstance(exc, UnidentifiedImageError):
        if looks_like_image(data):
            return ImageCheck("corrupt", "image signature present but the file cannot be parsed")
        return ImageCheck("not_an_image", "not a recognised image format")
    if isinstance(exc, (OSError, SyntaxError, ValueError, EOFError)):
        msg = str(exc) or type(exc).__name__
        low = msg.lower()
        truncated = "truncated" in low or "end of file" in low or isinstance(exc, EOFError) or "broken data" in low
        return ImageCheck("truncated" if truncated else "corrupt", msg[:200])
    return ImageCheck("corrupt", f"{type(exc).__name__}: {str(exc)[:200]}")


def decode_rgb_or_l(data: bytes):  # noqa: ANN201 - returns PIL.Image.Image; PIL is imported lazily
    """Open, apply EXIF orientation, and return a PIL image in ``L``, ``RGB`` or ``RGBA`` mode."""
    from PIL import Image, ImageOps

    im = Image.open(io.BytesIO(data))
    im = ImageOps.exif_transpose(im)
    if im.mode not in ("L", "RGB", "RGBA"):
        im = im.convert("RGBA" if "A" in im.mode or "transparency" in im.info else "RGB")
    return im
