"""A public family of near-duplicate transforms: what a copy of an image goes through before it is collected again.

Each family is a function ``(PIL.Image, numpy.random.Generator) -> PIL.Image`` that draws its own strength from
``rng`` (so one call is one random member of the family) and returns a new image; the input is not changed.
``FAMILIES`` maps names to functions; ``COLOUR_ONLY`` are the families that change nothing on a gray image
(hue, saturation, grayscale: a benchmark on gray data skips them). ``flip`` is not a member: whether a mirrored
copy is a duplicate is a setting (``curate dedupe --flip-is-duplicate``), not a fact.

Used by ``bench/bench_dedupe_generalize.py`` (leave-one-family-out calibration) and ``tests/test_dedupe*.py``.
Strengths (the issue 16 list):

| family | what it does |
| --- | --- |
| scale | resize by 0.5-2x (kept at the new size: a thumbnail or an upscale) |
| crop | cut 5-20% of the area (a random window), resized back to the original size |
| rotate | rotate by 1-5 degrees either way, same size, corners filled with the edge colour |
| blur | Gaussian blur, radius 0.5-1.2 px |
| sharpen | unsharp mask, radius 1-2 px, 80-200 % |
| jpeg | JPEG quality 15-95 |
| webp | WebP quality 20-90 (lossy) |
| gamma | gamma 0.7-1.45 |
| brightness | brightness x0.75-1.3 |
| contrast | contrast x0.7-1.4 |
| hue | hue rotated by 0.04-0.15 of a turn (colour images) |
| saturation | saturation x0.4-1.7 (colour images) |
| grayscale | converted to gray (colour images) |
| watermark | a short text in a corner band, 40-80 % opaque |
| border | a flat border of 3-10 % per side, kept bigger or resized back to the original size |
| pair | two different families above, one after the other |
"""

from __future__ import annotations

import io
from collections.abc import Callable
from typing import Any

import numpy as np

Transform = Callable[[Any, np.random.Generator], Any]


def _u(rng: np.random.Generator, lo: float, hi: float) -> float:
    return float(rng.uniform(lo, hi))


def scale(im: Any, rng: np.random.Generator) -> Any:
    """Down- or up-scale by a factor in 0.5-2 (log-uniform, at least 10 % away from 1), kept at the new size."""
    from PIL import Image

    f = 1.0
    while abs(np.log(f)) < np.log(1.1):
        f = float(np.exp(rng.uniform(np.log(0.5), np.log(2.0))))
    w, h = im.size
    return im.resize((max(8, round(w * f)), max(8, round(h * f))), Image.BICUBIC if f > 1 else Image.LANCZOS)


def crop(im: Any, rng: np.random.Generator) -> Any:
    """A random window holding 80-95 % of the area (aspect kept), resized back to the original size."""
    from PIL import Image

    w, h = im.size
    side = float(np.sqrt(1 - rng.uniform(0.05, 0.20)))
    cw, ch = max(4, round(w * side)), max(4, round(h * side))
    x0, y0 = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
    return im.crop((x0, y0, x0 + cw, y0 + ch)).resize((w, h), Image.BICUBIC)


def _edge_fill(im: Any) -> Any:
    """The median colour of the border pixels (a plausible fill for rotated corners and borders)."""
    a = np.asarray(im)
    edge = np.concatenate([a[0], a[-1], a[:, 0], a[:, -1]])
    med = np.median(edge, axis=0)
    return int(med) if np.ndim(med) == 0 else tuple(int(v) for v in med)


def rotate(im: Any, rng: np.random.Generator) -> Any:
    """Rotate by 1-5 degrees either way about the centre, same size, corners filled with the edge colour."""
    from PIL import Image

    deg = _u(rng, 1, 5) * (1 if rng.random() < 0.5 else -1)
    return im.rotate(deg, resample=Image.BICUBIC, fillcolor=_edge_fill(im))


def blur(im: Any, rng: np.random.Generator) -> Any:
    """Gaussian blur of radius 0.5-1.2 px."""
    from PIL import ImageFilter

    return im.filter(ImageFilter.GaussianBlur(_u(rng, 0.5, 1.2)))


def sharpen(im: Any, rng: np.random.Generator) -> Any:
    """Unsharp mask: radius 1-2 px, 80-200 %, threshold 0-2."""
    from PIL import ImageFilter

    return im.filter(ImageFilter.UnsharpMask(_u(rng, 1, 2), int(rng.integers(80, 201)), int(rng.integers(0, 3))))


def _reencode(im: Any, fmt: str, quality: int) -> Any:
    from PIL import Image

    mode = "RGB" if im.mode not in ("L", "RGB") else im.mode
    buf = io.BytesIO()
    im.convert(mode).save(buf, format=fmt, quality=quality)
    out = Image.open(io.BytesIO(buf.getvalue()))
    out.load()
    return out.convert(mode)


def jpeg(im: Any, rng: np.random.Generator) -> Any:
    """JPEG at quality 15-95, decoded again."""
    return _reencode(im, "JPEG", int(rng.integers(15, 96)))


def webp(im: Any, rng: np.random.Generator) -> Any:
    """Lossy WebP at quality 20-90, decoded again."""
    return _reencode(im, "WEBP", int(rng.integers(20, 91)))


def _per_channel(im: Any, fn: Callable[[np.ndarray], np.ndarray]) -> Any:
    """Apply ``fn`` to float pixels 0..1 of the colour channels (alpha untouched); result clipped, uint8."""
    from PIL import Image

    a = np.asarray(im).astype(np.float32) / 255
    if im.mode in ("RGBA", "LA"):
        a[..., :-1] = fn(a[..., :-1])
    else:
        a = fn(a)
    return Image.fromarray(np.clip(np.rint(a * 255), 0, 255).astype(np.uint8), im.mode)


def gamma(im: Any, rng: np.random.Generator) -> Any:
    """Gamma 0.7-1.45 (at least 0.1 away from 1)."""
    g = 1.0
    while abs(g - 1) < 0.1:
        g = _u(rng, 0.7, 1.45)
    return _per_channel(im, lambda x: x**g)


def brightness(im: Any, rng: np.random.Generator) -> Any:
    """Multiply by 0.75-1.3 (at least 8 % away from 1); highlights clip."""
    f = 1.0
    while abs(f - 1) < 0.08:
        f = _u(rng, 0.75, 1.3)
    return _per_channel(im, lambda x: x * f)


def contrast(im: Any, rng: np.random.Generator) -> Any:
    """Contrast about the mean grey x0.7-1.4 (PIL ``ImageEnhance.Contrast``)."""
    from PIL import ImageEnhance

    f = 1.0
    while abs(f - 1) < 0.1:
        f = _u(rng, 0.7, 1.4)
    return ImageEnhance.Contrast(im).enhance(f)


def _hsv(im: Any, fn: Callable[[np.ndarray], np.ndarray]) -> Any:
    """Apply ``fn`` to the (h, w, 3) uint8 HSV pixels of a colour image; gray images are returned unchanged."""
    from PIL import Image

    if im.mode not in ("RGB", "RGBA"):
        return im.copy()
    hsv = np.asarray(im.convert("RGB").convert("HSV")).copy()
    out = Image.fromarray(fn(hsv), "HSV").convert("RGB")
    if im.mode == "RGBA":
        out.putalpha(im.getchannel("A"))
    return out


def hue(im: Any, rng: np.random.Generator) -> Any:
    """Rotate the hue by 0.04-0.15 of a turn either way (colour images)."""
    d = int(round(255 * _u(rng, 0.04, 0.15))) * (1 if rng.random() < 0.5 else -1)

    def fn(hsv: np.ndarray) -> np.ndarray:
        hsv[..., 0] = (hsv[..., 0].astype(np.int16) + d) % 256
        return hsv

    return _hsv(im, fn)


def saturation(im: Any, rng: np.random.Generator) -> Any:
    """Scale the saturation by 0.4-1.7 (colour images)."""
    f = _u(rng, 0.4, 1.7)

    def fn(hsv: np.ndarray) -> np.ndarray:
        hsv[..., 1] = np.clip(hsv[..., 1] * f, 0, 255).astype(np.uint8)
        return hsv

    return _hsv(im, fn)


def grayscale(im: Any, rng: np.random.Generator) -> Any:  # noqa: ARG001 - the family signature
    """Converted to gray (``L``)."""
    return im.convert("L")


def watermark(im: Any, rng: np.random.Generator) -> Any:
    """A short text ("(c) 2024", "sample", ...) in the top or bottom band, 40-80 % opaque, about 1/12 of the height."""
    from PIL import Image, ImageDraw, ImageFont

    base = im.convert("RGBA")
    w, h = base.size
    size = max(6, round(h / 12))
    try:
        font: Any = ImageFont.load_default(size)
    except TypeError:  # pragma: no cover - Pillow < 10.1 has one bitmap size
        font = ImageFont.load_default()
    text = str(rng.choice(["(c) 2024", "sample", "stock", "curate", "draft"]))
    layer = Image.new("RGBA", base.size, (0, 0, 0, 0))
    draw = ImageDraw.Draw(layer)
    tw = draw.textlength(text, font=font)
    x = _u(rng, 0, max(1.0, w - tw))
    y = _u(rng, 0, h * 0.06) if rng.random() < 0.5 else h - size - _u(rng, size * 0.2, h * 0.06 + size * 0.2)
    level = 255 if rng.random() < 0.5 else 0
    draw.text((x, y), text, fill=(level, level, level, int(255 * _u(rng, 0.4, 0.8))), font=font)
    out = Image.alpha_composite(base, layer)
    return out if im.mode == "RGBA" else out.convert(im.mode if im.mode in ("L", "RGB") else "RGB")


def border(im: Any, rng: np.random.Generator) -> Any:
    """A flat border (black, white or the edge colour) of 3-10 % per side; half the time resized back."""
    from PIL import Image, ImageOps

    w, h = im.size
    pad = max(1, round(max(w, h) * _u(rng, 0.03, 0.10)))
    choice = int(rng.integers(3))
    one = 0 if choice == 0 else (255 if choice == 1 else None)
    fill = _edge_fill(im) if one is None else (one if im.mode == "L" else (one,) * len(im.getbands()))
    out = ImageOps.expand(im, border=pad, fill=fill)
    return out.resize((w, h), Image.LANCZOS) if rng.random() < 0.5 else out


def flip(im: Any, rng: np.random.Generator) -> Any:  # noqa: ARG001 - the family signature
    """Horizontal mirror (a duplicate only with ``--flip-is-duplicate``; not in ``FAMILIES``)."""
    from PIL import Image

    return im.transpose(Image.Transpose.FLIP_LEFT_RIGHT)


SINGLE: dict[str, Transform] = {
    "scale": scale,
    "crop": crop,
    "rotate": rotate,
    "blur": blur,
    "sharpen": sharpen,
    "jpeg": jpeg,
    "webp": webp,
    "gamma": gamma,
    "brightness": brightness,
    "contrast": contrast,
    "hue": hue,
    "saturation": saturation,
    "grayscale": grayscale,
    "watermark": watermark,
    "border": border,
}
COLOUR_ONLY = ("hue", "saturation", "grayscale")


def pair(im: Any, rng: np.random.Generator, *, gray: bool | None = None) -> Any:
    """Two different single families, one after the other (on gray images, not the colour-only ones)."""
    gray = im.mode in ("L", "LA", "I;16", "I") if gray is None else gray
    names = [n for n in SINGLE if not (gray and n in COLOUR_ONLY)]
    a, b = rng.choice(len(names), 2, replace=False)
    return SINGLE[names[int(b)]](SINGLE[names[int(a)]](im, rng), rng)


FAMILIES: dict[str, Transform] = {**SINGLE, "pair": pair}


def families(gray: bool) -> list[str]:
    """The family names that change something on a gray (``gray=True``) or a colour image."""
    return [n for n in FAMILIES if not (gray and n in COLOUR_ONLY)]
