"""Decoding checks for one image: every byte string that enters a workspace passes through here.

Pillow's decompression-bomb guard is on (over ``max_pixels`` is an error, not a warning), the file is
``verify()``-ed (structure and checksums) and then fully decoded (truncated data shows up only there), and
width/height are reported after the EXIF orientation is applied, since that is what a viewer and the trainer
see.
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass

DEFAULT_MAX_PIXELS = 1 << 26  # 67 MP: larger than any training image, far below a decompression bomb
DEFAULT_MAX_BYTES = 64 << 20
_ORIENTATION_TAG = 0x0112
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


def inspect_image(data: bytes, *, max_pixels: int = DEFAULT_MAX_PIXELS, max_bytes: int = DEFAULT_MAX_BYTES) -> ImageCheck:
    """Decode ``data`` fully and report its facts or the reason it is unusable.

    Args:
        data: the original file bytes.
        max_pixels: width*height above this is ``too_large`` (decompression-bomb guard).
        max_bytes: files above this size are ``too_large`` without being decoded.

    Returns:
        An ``ImageCheck``; never raises for bad data.
    """
    from PIL import Image, ImageOps, UnidentifiedImageError

    if not data:
        return ImageCheck("empty", "file is empty (0 bytes)")
    if len(data) > max_bytes:
        return ImageCheck("too_large", f"{len(data)} bytes > max_bytes {max_bytes}")
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        old = Image.MAX_IMAGE_PIXELS
        Image.MAX_IMAGE_PIXELS = max_pixels
        try:
            with Image.open(io.BytesIO(data)) as im:
                fmt = im.format
                if im.width * im.height > max_pixels:
                    return ImageCheck("too_large", f"{im.width}x{im.height} pixels > max_pixels {max_pixels}")
                im.verify()
            with Image.open(io.BytesIO(data)) as im:
                im.load()
                orientation = int(im.getexif().get(_ORIENTATION_TAG, 1) or 1)
                if orientation != 1:
                    im = ImageOps.exif_transpose(im)
                return ImageCheck(width=im.width, height=im.height, mode=im.mode, format=fmt, exif_orientation=orientation)
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
            return ImageCheck("too_large", f"decompression bomb: {exc}")
        except UnidentifiedImageError:
            if looks_like_image(data):
                return ImageCheck("corrupt", "image signature present but the file cannot be parsed")
            return ImageCheck("not_an_image", "not a recognised image format")
        except (OSError, SyntaxError, ValueError, EOFError) as exc:
            msg = str(exc) or type(exc).__name__
            low = msg.lower()
            truncated = "truncated" in low or "end of file" in low or isinstance(exc, EOFError) or "broken data" in low
            return ImageCheck("truncated" if truncated else "corrupt", msg[:200])
        except Exception as exc:  # noqa: BLE001 - any decoder failure on hostile bytes is a data error
            return ImageCheck("corrupt", f"{type(exc).__name__}: {str(exc)[:200]}")
        finally:
            Image.MAX_IMAGE_PIXELS = old


def decode_rgb_or_l(data: bytes):  # noqa: ANN201 - returns PIL.Image.Image; PIL is imported lazily
    """Open, apply EXIF orientation, and return a PIL image in ``L``, ``RGB`` or ``RGBA`` mode."""
    from PIL import Image, ImageOps

    im = Image.open(io.BytesIO(data))
    im = ImageOps.exif_transpose(im)
    if im.mode not in ("L", "RGB", "RGBA"):
        im = im.convert("RGBA" if "A" in im.mode or "transparency" in im.info else "RGB")
    return im
