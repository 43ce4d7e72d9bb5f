"""``curate.augmentation.png`` writes Pillow's PNG bytes, and its ``Encoder`` gives each image exactly what
``policies.encode_array`` (Pillow) gives, in order, whatever goes to the batch path and whatever does not.

Ground truth is Pillow's ``save(format="PNG")`` itself.
"""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from curate.augmentation import png
from curate.augmentation.policies import encode_array

RNG = np.random.default_rng(3)


def _pillow(image: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG")
    return buf.getvalue()


def _stacks() -> list[np.ndarray]:
    """Noise, flat, ramps, sparse edges; grayscale and RGB; one stack whose images need several IDAT chunks."""
    ramp = np.add.outer(np.arange(20), np.arange(24)).astype(np.uint8) * 9
    sparse = (RNG.random((6, 28, 28)) > 0.9).astype(np.uint8) * 255
    return [
        RNG.integers(0, 256, (7, 28, 28), dtype=np.uint8),
        np.zeros((2, 5, 5), np.uint8),
        np.stack([ramp, np.fliplr(ramp), 255 - ramp]),
        sparse,
        RNG.integers(0, 256, (4, 1, 1), dtype=np.uint8),
        RNG.integers(0, 256, (5, 16, 9, 3), dtype=np.uint8),
        np.repeat(np.stack([ramp, 255 - ramp])[..., None], 3, axis=3),
        RNG.integers(0, 256, (2, 200, 180, 3), dtype=np.uint8),  # ~108 KB each: two IDAT chunks
    ]


@pytest.fixture(autouse=True)
def _needs_pillows_layout() -> None:
    if not png.pillow_compatible():  # another Pillow or zlib: the batch path is off there, nothing to compare
        pytest.skip("this Pillow/zlib writes other PNG bytes; curate uses Pillow itself")


@pytest.mark.parametrize("index", range(len(_stacks())))
def test_encode_many_is_pillows_bytes(index: int) -> None:
    stack = _stacks()[index]
    assert png.encode_many(stack) == [_pillow(im) for im in stack]


def test_encoder_matches_pillow_in_order_across_paths_and_flushes(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(png, "STACK_BYTES", 3_000)  # a few 28x28 images at a time: flushes mid-run
    monkeypatch.setattr(png.Encoder, "SMALL", 40_000)
    images = [RNG.integers(0, 256, (28, 28), dtype=np.uint8) for _ in range(9)]
    images += [RNG.integers(0, 256, (10, 12, 3), dtype=np.uint8), RNG.integers(0, 256, (150, 100), dtype=np.uint8)]
    images += [images[0].astype(np.uint16)]  # not uint8: Pillow's own path
    jobs = [(im, {"format": "PNG"}) for im in images]
    jobs.insert(3, (images[-3], {"format": "JPEG", "quality": 95}))
    jobs.insert(6, (images[1], {"format": "PNG", "compress_level": 1}))
    enc = png.Encoder()
    for im, how in jobs:
        enc.add(im, how)
    assert enc.done() == [encode_array(im, how) for im, how in jobs]


def test_encoder_uses_pillow_alone_when_the_layout_differs(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(png, "pillow_compatible", lambda: False)
    monkeypatch.setattr(png, "encode_many", lambda stack: pytest.fail("the batch path ran"))
    images = [RNG.integers(0, 256, (28, 28), dtype=np.uint8) for _ in range(3)]
    enc = png.Encoder()
    for im in images:
        enc.add(im, {"format": "PNG"})
    assert enc.done() == [_pillow(im) for im in images]
