"""Model-free image quality checks (``curate.stages.clean.quality``) on planted ground truth.

Every planted image is built to trip one check (or a known few): black/white, a dark color texture, a Gaussian-blurred
copy of a sharp checkerboard, flat and near-flat images, a 4x4 and a 200x10 image, a gray image among color ones.
Ordinary random textures must trip nothing, and moving a threshold must flip exactly the flag it governs.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest
from PIL import Image, ImageFilter

from curate.errors import CurateError, UsageError
from curate.stages.clean.quality import (
    MEASUREMENT_SCHEMA,
    QUALITY_CHECKS,
    QualityThresholds,
    compute_quality,
    flag_quality,
    quality_batch,
)


def encode(arr: np.ndarray | Image.Image, fmt: str = "PNG", **kwargs: Any) -> bytes:
    im = arr if isinstance(arr, Image.Image) else Image.fromarray(arr)
    buf = io.BytesIO()
    im.save(buf, format=fmt, **kwargs)
    return buf.getvalue()


def noise(seed: int, h: int = 64, w: int = 64, channels: int = 3) -> np.ndarray:
    shape = (h, w, channels) if channels > 1 else (h, w)
    return np.random.default_rng(seed).integers(0, 256, size=shape, dtype=np.uint8)


def checker(side: int = 64, cell: int = 8) -> Image.Image:
    """A color checkerboard (red/blue cells): sharp edges, and not gray."""
    yy, xx = np.mgrid[:side, :side]
    on = ((yy // cell + xx // cell) % 2).astype(bool)
    arr = np.where(on[..., None], np.array([210, 40, 40], np.uint8), np.array([30, 40, 200], np.uint8))
    return Image.fromarray(arr.astype(np.uint8))


def batch(items: dict[str, bytes]) -> pa.Table:
    return pa.table({"sample_id": list(items), "data": pa.array(list(items.values()), pa.binary())})


def flagged(items: dict[str, bytes], **thresholds: Any) -> dict[str, dict[str, Any]]:
    """``sample_id -> row`` of ``flag_quality(quality_batch(items))``."""
    out = flag_quality(quality_batch(batch(items)), thresholds=QualityThresholds(**thresholds))
    return {row["sample_id"]: row for row in out.to_pylist()}


def ordinary(n: int = 20) -> dict[str, bytes]:
    """Color random textures, half of them lightly smoothed: what must never be flagged."""
    out = {}
    for i in range(n):
        im = Image.fromarray(noise(i))
        out[f"ok{i}"] = encode(im.filter(ImageFilter.GaussianBlur(1)) if i % 2 else im)
    return out


def planted() -> dict[str, bytes]:
    flat = np.zeros((64, 64, 3), np.uint8) + np.array([120, 80, 40], np.uint8)
    near_flat = np.clip(flat + np.random.default_rng(7).normal(0, 1.0, flat.shape), 0, 255).astype(np.uint8)
    return {
        "black": encode(np.zeros((64, 64, 3), np.uint8)),
        "white": encode(np.full((64, 64, 3), 255, np.uint8)),
        "dark_texture": encode((noise(100) * 0.14).astype(np.uint8)),
        "sharp_checker": encode(checker()),
        "blurred_checker": encode(checker().filter(ImageFilter.GaussianBlur(2))),
        "constant": encode(flat),
        "near_constant": encode(near_flat),
        "tiny": encode(noise(101, 4, 4)),
        "strip": encode(noise(102, 10, 200)),
        "wide": encode(noise(103, 64, 400)),
        "gray": encode(noise(104, channels=1)),
    }


@pytest.fixture(scope="module")
def rows() -> dict[str, dict[str, Any]]:
    return flagged({**ordinary(), **planted()})


def test_ordinary_textures_are_not_flagged(rows: dict[str, dict[str, Any]]) -> None:
    for sid, row in rows.items():
        if sid.startswith("ok"):
            assert not row["is_low_quality"], (sid, row["low_quality_reasons"])
            assert row["low_quality_reasons"] is None and row["low_quality_score"] == 1.0


@pytest.mark.parametrize(
    ("sid", "expected"),
    [
        ("dark_texture", "dark"),
        ("sharp_checker", None),
        ("blurred_checker", "blurry"),
        ("tiny", "tiny"),
        ("strip", "tiny,odd_aspect"),  # 200x10 is both elongated and 10 px short
        ("wide", "odd_aspect"),
        ("gray", "grayscale"),
    ],
)
def test_planted_issue_flags_exactly_its_check(rows: dict[str, dict[str, Any]], sid: str, expected: str | None) -> None:
    row = rows[sid]
    assert row["low_quality_reasons"] == expected
    assert row["is_low_quality"] is (expected is not None)
    if expected:
        assert 0.0 <= row["low_quality_score"] < 1.0


def test_black_white_and_flat_images(rows: dict[str, dict[str, Any]]) -> None:
    black, white = rows["black"], rows["white"]
    assert black["is_dark"] and not black["is_bright"] and black["dark_score"] == 0.0
    assert white["is_bright"] and not white["is_dark"] and white["bright_score"] == 0.0
    for sid in ("black", "white", "constant", "near_constant"):
        assert rows[sid]["is_low_information"], sid
        assert rows[sid]["low_information_score"] < 0.035
    # a flat image has no edges to be blurred: it is empty, and says so once; black is also gray among color images
    assert rows["constant"]["low_quality_reasons"] == "low_information" and rows["constant"]["blurry_score"] is None
    assert rows["black"]["low_quality_reasons"] == "dark,low_information,grayscale"
    assert rows["near_constant"]["low_quality_reasons"] == "low_information"


def test_scores_point_the_same_way(rows: dict[str, dict[str, Any]]) -> None:
    """Lower = worse: the planted image scores below the ordinary ones on its own check."""
    ok = [r for sid, r in rows.items() if sid.startswith("ok")]
    for check, sid in (("dark", "dark_texture"), ("bright", "white"), ("blurry", "blurred_checker"), ("low_information", "constant")):
        assert rows[sid][f"{check}_score"] < min(r[f"{check}_score"] for r in ok), check
    assert rows["sharp_checker"]["blurry_score"] > 2 * rows["blurred_checker"]["blurry_score"]
    assert rows["tiny"]["tiny_score"] == 4.0 and rows["strip"]["odd_aspect_score"] == pytest.approx(10 / 200)
    assert rows["gray"]["grayscale_score"] == 0.0 and min(r["grayscale_score"] for r in ok) > 0.2
    assert set(rows["ok0"]) >= {f"{c}_score" for c in QUALITY_CHECKS} | {f"is_{c}" for c in QUALITY_CHECKS}


def test_grayscale_is_a_dataset_level_decision() -> None:
    mostly_gray = {f"g{i}": encode(noise(i, channels=1)) for i in range(10)}
    mostly_gray["rgb_gray"] = encode(np.repeat(noise(50, channels=1)[..., None], 3, axis=2))  # RGB with R == G == B
    mostly_gray["color"] = encode(noise(51))
    rows = flagged(mostly_gray)
    assert not any(r["is_grayscale"] for r in rows.values())
    jpeg_gray = encode(Image.fromarray(noise(52, channels=1)).convert("RGB"), "JPEG")  # chroma planes exactly neutral
    one_gray = {**ordinary(), "rgb_gray": mostly_gray["rgb_gray"], "jpeg_gray": jpeg_gray}
    rows = flagged(one_gray)
    assert rows["rgb_gray"]["is_grayscale"] and rows["jpeg_gray"]["is_grayscale"]
    assert sum(r["is_grayscale"] for r in rows.values()) == 2


def test_blur_is_relative_to_the_picture_not_its_resolution() -> None:
    """A 1024 px image blurred by 8 px scores like the same picture at 256 px blurred by 2 px; sharp stays sharp."""
    big = checker(1024, 128)
    small = checker(256, 32)
    rows = flagged(
        {
            "big": encode(big),
            "big_blur": encode(big.filter(ImageFilter.GaussianBlur(8))),
            "small_blur": encode(small.filter(ImageFilter.GaussianBlur(2))),
            **ordinary(4),
        }
    )
    assert not rows["big"]["is_blurry"]
    assert rows["big_blur"]["is_blurry"] and rows["small_blur"]["is_blurry"]
    assert rows["big_blur"]["blurry_score"] == pytest.approx(rows["small_blur"]["blurry_score"], rel=0.2)


def test_threshold_changes_flip_flags() -> None:
    items = {**ordinary(4), **planted()}
    base = flagged(items)
    assert not flagged(items, dark=0.05)["dark_texture"]["is_dark"] and base["dark_texture"]["is_dark"]
    assert flagged(items, blurry=0.1)["blurred_checker"]["is_blurry"] is False
    assert flagged(items, blurry=0.99)["ok0"]["is_blurry"] is True
    assert flagged(items, tiny=65)["ok0"]["is_tiny"] is True and not base["ok0"]["is_tiny"]
    assert flagged(items, odd_aspect=8.0)["wide"]["is_odd_aspect"] is False  # 400/64 = 6.25
    assert flagged(items, grayscale_majority=1.0)["gray"]["is_grayscale"] is False
    assert flagged(items, low_information=0.0)["constant"]["is_low_information"] is False


@pytest.mark.parametrize("bad", [{"dark": 1.5}, {"blurry": -0.1}, {"tiny": -1}, {"odd_aspect": 0.5}, {"grayscale_majority": 2.0}])
def test_out_of_range_thresholds_are_usage_errors(bad: dict[str, float]) -> None:
    with pytest.raises(UsageError, match=next(iter(bad))):
        flag_quality(MEASUREMENT_SCHEMA.empty_table(), thresholds=QualityThresholds(**bad))


def test_corrupt_bytes_give_an_error_row_not_a_crash() -> None:
    good = encode(noise(1))
    out = quality_batch(batch({"good": good, "junk": b"not an image at all", "cut": good[: len(good) // 2], "empty": b""}))
    assert out.schema == MEASUREMENT_SCHEMA
    assert out.column("sample_id").to_pylist() == ["good", "junk", "cut", "empty"]
    errors = out.column("error").to_pylist()
    assert errors[0] is None and all(errors[1:])
    assert out.column("sharpness").to_pylist()[1:] == [None, None, None]
    flags = {r["sample_id"]: r for r in flag_quality(out).to_pylist()}
    assert flags["junk"]["dark_score"] is None and not flags["junk"]["is_low_quality"]
    assert flags["junk"]["low_quality_reasons"] is None and not flags["good"]["is_low_quality"]


def test_exif_orientation_and_large_jpeg() -> None:
    """Sizes are reported as a viewer shows them; a large JPEG (draft-decoded) measures like its PNG."""
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90: width and height swap
    big = checker(1200, 100).resize((1200, 800))
    out = quality_batch(batch({"jpg": encode(big, "JPEG", quality=92, exif=exif.tobytes()), "png": encode(big)})).to_pylist()
    assert (out[0]["width"], out[0]["height"]) == (800, 1200)
    assert (out[1]["width"], out[1]["height"]) == (1200, 800)
    assert out[0]["sharpness"] == pytest.approx(out[1]["sharpness"], abs=0.08)
    assert out[0]["brightness"] == pytest.approx(out[1]["brightness"], abs=0.02)


def test_compute_quality_end_to_end(tmp_path: Path, workspace: Any, ingest: Any, image_folder: Any) -> None:
    from tests.helpers import add_bad_files

    root = image_folder(counts={"cat": 4, "dog": 4}, size=(32, 32))
    (root / "cat" / "dark.png").write_bytes(encode((noise(200, 32, 32) * 0.14).astype(np.uint8)))
    (root / "dog" / "tiny.png").write_bytes(encode(noise(201, 6, 6)))
    add_bad_files(root)
    ingest(workspace, root, max_error_fraction=1.0)  # the two bad files stay as excluded rows
    table = workspace.samples()
    ok = table.filter(pc.equal(table.column("status"), "ok"))
    assert ok.num_rows == 10 and table.num_rows == 12

    calls: list[int] = []

    class Bar:  # the one Progress shape: Bar(description, total) -> context manager yielding advance(n)
        def __init__(self, description: str, total: int) -> None:
            assert description == "quality"
            calls.append(total)

        def __enter__(self) -> Any:
            return lambda n: calls.append(n)

        def __exit__(self, *exc: object) -> None:
            return None

    m = compute_quality(workspace, table, workers=1, progress=Bar)
    assert calls[0] == 10 and sum(calls[1:]) == 10
    assert sorted(m.column("sample_id").to_pylist()) == sorted(ok.column("sample_id").to_pylist())
    assert m.column("error").null_count == m.num_rows
    rows = {r["sample_id"]: r for r in flag_quality(m).to_pylist()}
    names = [s.rsplit("/", 1)[-1] for s in ok.column("source").to_pylist()]
    by_source = dict(zip(names, ok.column("sample_id").to_pylist(), strict=True))
    assert rows[by_source["dark.png"]]["low_quality_reasons"] == "dark"
    assert rows[by_source["tiny.png"]]["low_quality_reasons"] == "tiny"
    assert sum(r["is_low_quality"] for r in rows.values()) == 2

    # the process pool gives the same measurements, in the same order
    assert compute_quality(workspace, table, workers=2).equals(m)
    assert compute_quality(workspace, table.slice(0, 0), workers=1).num_rows == 0


def test_compute_quality_reports_missing_blobs(workspace: Any, ingest: Any, image_folder: Any) -> None:
    ingest(workspace, image_folder(counts={"cat": 2}))
    table = workspace.samples()
    ghost = table.set_column(table.schema.get_field_index("pack"), "pack", pa.array([None] * table.num_rows, pa.string()))
    with pytest.raises(CurateError, match="no bytes in the blob packs"):
        compute_quality(workspace, ghost, workers=1)
