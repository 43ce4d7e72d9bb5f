"""curate.images.inspect_image: every byte string is fully decoded and gets the right reason when it is bad."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from curate.images import decode_rgb_or_l, inspect_image, looks_like_image


def _png_chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def bomb_png(width: int = 100_000, height: int = 100_000) -> bytes:
    """A few hundred bytes of PNG whose header claims ``width`` x ``height`` pixels (a decompression bomb)."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", ihdr)
        + _png_chunk(b"IDAT", zlib.compress(b"\x00" * 1024))
        + _png_chunk(b"IEND", b"")
    )


def test_good_png_reports_its_facts(png_bytes):
    check = inspect_image(png_bytes(1, (24, 10)))
    assert check.reason is None and check.error is None
    assert (check.width, check.height, check.mode, check.format, check.exif_orientation) == (24, 10, "RGB", "PNG", 1)


def test_good_grayscale_and_other_formats():
    assert inspect_image(_encode(Image.new("L", (7, 5)), "PNG")).mode == "L"
    for fmt in ("GIF", "BMP", "WEBP", "TIFF"):
        check = inspect_image(_encode(Image.new("RGB", (9, 4), (10, 200, 30)), fmt))
        assert check.reason is None, (fmt, check)
        assert (check.width, check.height, check.format) == (9, 4, fmt)


def _encode(im: Image.Image, fmt: str) -> bytes:
    buf = io.BytesIO()
    im.save(buf, format=fmt)
    return buf.getvalue()


def test_decoded_pixels_match_the_known_array(png_bytes, image_array):
    im = decode_rgb_or_l(png_bytes(5, (12, 8)))
    assert np.array_equal(np.asarray(im), image_array(5, (12, 8)))


def test_empty():
    check = inspect_image(b"")
    assert check.reason == "empty"
    assert check.width is None


@pytest.mark.parametrize("data", [b"hello, world\n", b"%PDF-1.4\n...", b"\x00" * 64, b"name,label\na.png,cat\n"])
def test_not_an_image(data):
    assert inspect_image(data).reason == "not_an_image"


def test_half_png_is_truncated(png_bytes):
    data = png_bytes(1, (64, 64))
    check = inspect_image(data[: len(data) // 2])
    assert check.reason == "truncated", check
    assert check.width is None


def test_half_jpeg_is_truncated(jpeg_bytes):
    data = jpeg_bytes(1, (64, 64))
    check = inspect_image(data[: len(data) // 2])
    assert check.reason == "truncated", check


def test_no_cut_of_the_pixel_data_passes_as_ok(png_bytes, jpeg_bytes):
    # Cutting a file anywhere before its last pixel byte must never give an "ok" image.
    for data, tail in ((png_bytes(2, (32, 32)), 12), (jpeg_bytes(2, (32, 32)), 0)):  # a PNG's last 12 bytes are IEND
        for cut in range(1, len(data) - tail, 7):
            assert inspect_image(data[:cut]).reason in ("truncated", "corrupt", "not_an_image"), cut


def test_corrupt_png_bytes_in_the_middle(png_bytes):
    data = bytearray(png_bytes(1, (64, 64)))
    data[100:120] = b"\xff" * 20
    check = inspect_image(bytes(data))
    assert check.reason == "corrupt", check
    assert check.error


@pytest.mark.parametrize(
    "data", [b"\x89PNG\r\n\x1a\n" + b"\x00" * 100, b"\xff\xd8\xff" + bytes(range(256)) * 4, b"GIF89a" + b"\x01" * 50]
)
def test_image_signature_with_garbage_is_corrupt(data):
    assert looks_like_image(data)
    assert inspect_image(data).reason == "corrupt"


def test_too_many_bytes(png_bytes):
    data = png_bytes(1)
    check = inspect_image(data, max_bytes=len(data) - 1)
    assert check.reason == "too_large"
    assert str(len(data)) in check.error
    assert inspect_image(data, max_bytes=len(data)).reason is None


def test_too_many_pixels_5000x5000():
    data = _encode(Image.new("L", (5000, 5000)), "PNG")  # ~25 KB on disk, 25 MP
    assert len(data) < 100_000
    check = inspect_image(data, max_pixels=1_000_000)
    assert check.reason == "too_large", check
    assert check.width is None


def test_pixels_just_over_the_limit_are_too_large():
    data = _encode(Image.new("L", (1001, 1000)), "PNG")
    assert inspect_image(data, max_pixels=1_000_000).reason == "too_large"
    assert inspect_image(data, max_pixels=1_001_000).reason is None


def test_decompression_bomb_header_is_too_large_with_default_limits():
    data = bomb_png()
    assert len(data) < 1000
    check = inspect_image(data)
    assert check.reason == "too_large", check
    assert "bomb" in check.error


def test_global_pillow_limit_is_restored():
    before = Image.MAX_IMAGE_PIXELS
    inspect_image(bomb_png(), max_pixels=123)
    inspect_image(b"junk", max_pixels=456)
    assert before == Image.MAX_IMAGE_PIXELS


def test_exif_orientation_6_swaps_width_and_height(jpeg_bytes):
    check = inspect_image(jpeg_bytes(3, (40, 20), exif_orientation=6))
    assert check.reason is None
    assert (check.width, check.height, check.exif_orientation) == (20, 40, 6)
    im = decode_rgb_or_l(jpeg_bytes(3, (40, 20), exif_orientation=6))
    assert im.size == (20, 40)


def test_exif_orientation_3_keeps_size(jpeg_bytes):
    check = inspect_image(jpeg_bytes(3, (40, 20), exif_orientation=3))
    assert (check.width, check.height, check.exif_orientation) == (40, 20, 3)


def test_no_exif_is_orientation_1(jpeg_bytes):
    check = inspect_image(jpeg_bytes(3, (40, 20)))
    assert (check.width, check.height, check.exif_orientation, check.format) == (40, 20, 1, "JPEG")


def test_png_chunk_checksums_are_verified() -> None:
    """A flipped CRC is corrupt, a PNG without its IEND chunk is truncated (what Pillow's verify() reports)."""
    from curate.images import inspect_image, png_integrity
    from tests.conftest import png_bytes

    good = png_bytes(seed=3, size=(20, 20))
    assert png_integrity(good) is None and inspect_image(good).reason is None
    idat = good.index(b"IDAT")
    length = int.from_bytes(good[idat - 4 : idat], "big")
    crc_at = idat + 4 + length
    bad_crc = good[:crc_at] + bytes([good[crc_at] ^ 0xFF]) + good[crc_at + 1 :]
    check = inspect_image(bad_crc)
    assert check.reason == "corrupt" and "IDAT" in check.error
    assert inspect_image(good[:-12]).reason == "truncated"
