"""curate dedupe on edits nobody named: a copy under every transform family is found, look-alikes are not, and
photo inputs (RGB, alpha, CMYK, 16-bit, very large, corrupt) are handled.

Test images are colour scenes (blurred blobs, hard-edged rectangles and a fine texture, 96x128): structure at every
scale, like a photo. A *look-alike* is the same scene with one object (about 10 % of the picture) somewhere else: the same
place, another photo; it must not be grouped with its scene.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import numpy as np
import pytest

H, W = 96, 128


def scene(seed: int, h: int = H, w: int = W, *, variant: int = 0) -> np.ndarray:
    """A deterministic RGB uint8 scene; ``variant`` > 0 moves one rectangle (a look-alike of variant 0)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32) / max(h, w) * 128
    img = np.zeros((h, w, 3), np.float32) + rng.uniform(40, 160, 3)
    for _ in range(6):
        cy, cx, s = rng.uniform(0, 96), rng.uniform(0, 128), rng.uniform(6, 24)
        img += rng.uniform(-90, 90, 3) * np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * s * s))[..., None]
    # every rectangle is lighter or darker than its surround (30-70 grey levels) plus a colour cast
    lum = [rng.choice([-1, 1]) * rng.uniform(30, 70) for _ in range(4)]
    rects = [(*rng.uniform((0, 0, 10, 10), (80, 110, 30, 30)), lum[k] + rng.uniform(-30, 30, 3)) for k in range(4)]
    # rects[0] is the object (30x40 px, about 10 % of the picture, inside the frame); a look-alike has it half a
    # frame away: the same place, another photo
    oy, ox = rng.uniform(0, 66), rng.uniform(0, 88)
    if variant:
        oy, ox = (oy + 33 + 11 * variant) % 66, (ox + 44 + 7 * variant) % 88
    rects[0] = (oy, ox, 30, 40, np.sign(lum[0]) * 60 + rng.uniform(-20, 20, 3))  # a clearly visible object
    for y0, x0, rh, rw, col in rects:
        img[(yy >= y0) & (yy < y0 + rh) & (xx >= x0) & (xx < x0 + rw)] += col
    tex = rng.normal(0, 10, (h // 4 + 1, w // 4 + 1, 3)).repeat(4, 0).repeat(4, 1)[:h, :w]
    return np.clip(img + tex, 0, 255).astype(np.uint8)


def png(im: Any) -> bytes:
    buf = io.BytesIO()
    im.save(buf, format="PNG")
    return buf.getvalue()


def found_pairs(datas: list[bytes], **cfg: Any) -> set[tuple[int, int]]:
    """Pairs of input positions that dedupe (the stage's default settings unless ``cfg``) puts in one group."""
    import pyarrow as pa

    from curate.stages.dedupe import DEFAULT_ROBUST_THRESHOLD, DEFAULT_THRESHOLD
    from curate.stages.dedupe.groups import group_items
    from curate.stages.dedupe.signatures import compute_signatures

    ids = [f"id{i:04d}" for i in range(len(datas))]
    sigs = compute_signatures(pa.table({"sample_id": ids, "data": datas}))
    assert sigs.column("error").null_count == len(datas), sigs.column("error").to_pylist()
    items = pa.table({"sample_id": ids, "label": [None] * len(ids), "order": list(range(len(ids)))}, pa.schema(
        [("sample_id", pa.string()), ("label", pa.string()), ("order", pa.int64())]))  # fmt: skip
    kw = {"threshold": DEFAULT_THRESHOLD, "robust_threshold": DEFAULT_ROBUST_THRESHOLD, **cfg}
    res = group_items(items, sigs, set(), **kw)
    comp = res["comp"]
    return {(i, j) for i in range(len(ids)) for j in range(i + 1, len(ids)) if comp[i] == comp[j]}


def test_a_copy_under_every_family_is_found_and_look_alikes_are_not() -> None:
    from PIL import Image

    from curate.stages.dedupe.transforms import FAMILIES

    rng = np.random.default_rng(16)
    fams = list(FAMILIES)
    sources = [Image.fromarray(scene(s)) for s in range(len(fams))]
    look_alikes = [Image.fromarray(scene(s, variant=1 + s % 3)) for s in range(len(fams))]
    copies = [FAMILIES[f](sources[i], rng) for i, f in enumerate(fams)]
    datas = [png(im) for im in sources + look_alikes + copies]
    pairs = found_pairs(datas)
    n = len(fams)
    planted = {(i, 2 * n + i) for i in range(n)}
    missed = [fams[i] for i, j in sorted(planted) if (i, j) not in pairs]
    assert not missed, f"copies not grouped with their source: {missed}"
    wrong = sorted(pairs - planted - {(n + i, 2 * n + i) for i in range(n)})
    assert not wrong, f"grouped but not copies: {wrong}"
    assert all((i, n + i) not in pairs for i in range(n)), "a look-alike was grouped with its scene"


def test_the_closeness_gate_keeps_every_familys_planted_decision() -> None:
    """The fitted-filter score skipped below ``ROBUST_GATE`` changes no decision on planted copies of any family."""
    import pyarrow as pa
    from PIL import Image

    from curate.stages.dedupe import DEFAULT_ROBUST_THRESHOLD, DEFAULT_THRESHOLD
    from curate.stages.dedupe.index import ViewSet, candidate_pairs
    from curate.stages.dedupe.pairs import pair_scores
    from curate.stages.dedupe.signatures import compute_signatures, thumbs_array, value_thumbs
    from curate.stages.dedupe.transforms import FAMILIES

    rng = np.random.default_rng(7)
    fams = list(FAMILIES)
    sources = [Image.fromarray(scene(100 + s)) for s in range(len(fams))]
    others = [Image.fromarray(scene(100 + s, variant=1)) for s in range(len(fams))]
    copies = [FAMILIES[f](sources[i], rng) for i, f in enumerate(fams)]
    datas = [png(im) for im in sources + others + copies]
    sigs = compute_signatures(pa.table({"sample_id": [str(i) for i in range(len(datas))], "data": datas}))
    thumbs, shapes = thumbs_array(sigs)
    values, has_value = value_thumbs(sigs, thumbs)
    sizes = np.stack([sigs.column("height").to_numpy(), sigs.column("width").to_numpy()], 1).astype(np.int64)
    cand, close = candidate_pairs(ViewSet(thumbs, shapes, values, np.flatnonzero(has_value)), np.ones(len(datas), bool))
    n = len(fams)
    where = {(int(a), int(b)): i for i, (a, b) in enumerate(cand)}
    planted = [where.get((i, 2 * n + i), -1) for i in range(n)]
    assert min(planted) >= 0, [f for f, p in zip(fams, planted, strict=True) if p < 0]  # every copy is a candidate
    t = (DEFAULT_THRESHOLD, DEFAULT_ROBUST_THRESHOLD)
    kw = {"values": values, "has_value": has_value}
    _, gated, n_gated = pair_scores(thumbs, shapes, sizes, cand, *t, closeness=close, **kw)
    _, full, n_full = pair_scores(thumbs, shapes, sizes, cand, *t, **kw)
    changed = [f for f, p in zip(fams, planted, strict=True) if gated[p] != full[p]]
    assert not changed, f"the gate changed the decision on planted copies: {changed}"
    assert full[planted].sum() >= n - 1 and n_gated <= n_full
    # a gate above every pair's closeness turns the fitted-filter score off: the families it alone finds are lost
    _, off, n_off = pair_scores(thumbs, shapes, sizes, cand, *t, closeness=close, gate=2.0, **kw)
    assert n_off == 0 and not off[planted].all()


def test_pairs_that_share_their_original_score_as_they_would_alone() -> None:
    """``robust_scores`` computes an original's rotations, integral images and shrunk templates once for all the
    pairs of a chunk that share it: every pair scores as it does on its own, copies high and look-alikes low."""
    import pyarrow as pa
    from PIL import Image

    from curate.stages.dedupe import DEFAULT_ROBUST_THRESHOLD
    from curate.stages.dedupe.robust import robust_scores
    from curate.stages.dedupe.signatures import compute_signatures, thumbs_array
    from curate.stages.dedupe.transforms import FAMILIES

    rng = np.random.default_rng(3)
    fams = ["blur", "crop", "rotate", "border", "gamma"]
    sources = [Image.fromarray(scene(200 + s)) for s in range(2)]
    images = sources + [FAMILIES[f](sources[k], rng) for k in range(2) for f in fams]
    images += [Image.fromarray(scene(200 + k, variant=2)) for k in range(2)]
    sigs = compute_signatures(pa.table({"sample_id": [str(i) for i in range(len(images))], "data": [png(im) for im in images]}))
    thumbs, shapes = thumbs_array(sigs)
    copies = [(k, 2 + k * len(fams) + j) for k in range(2) for j in range(len(fams))]
    alikes = [(0, len(images) - 2), (1, len(images) - 1), (0, 1)]
    pairs = np.array(copies + alikes)
    together = robust_scores(thumbs, shapes, pairs)
    alone = np.concatenate([robust_scores(thumbs, shapes, pairs[i : i + 1]) for i in range(len(pairs))])
    np.testing.assert_allclose(together, alone, atol=1e-5)
    assert (together[: len(copies)] >= DEFAULT_ROBUST_THRESHOLD).sum() >= len(copies) - 1, together
    assert (together[len(copies) :] < DEFAULT_ROBUST_THRESHOLD).all(), together


@pytest.mark.xfail(strict=True, reason="signatures are luma and HSV value: an object recoloured at equal luma is invisible")
def test_an_object_recoloured_at_equal_luma_is_not_a_duplicate() -> None:
    from PIL import Image

    a = scene(5)
    b = a.copy()
    patch = b[30:60, 40:80].astype(np.float32)
    lum = patch @ np.array([0.299, 0.587, 0.114], np.float32)
    b[30:60, 40:80] = np.clip(lum[..., None] + (lum[..., None] - patch), 0, 255).astype(np.uint8)  # chroma inverted
    assert found_pairs([png(Image.fromarray(a)), png(Image.fromarray(b))]) == set()


def test_flip_is_a_duplicate_only_when_asked() -> None:
    from PIL import Image

    from curate.stages.dedupe.transforms import flip

    src = Image.fromarray(scene(3))
    datas = [png(src), png(flip(src, np.random.default_rng(0))), png(Image.fromarray(scene(4)))]
    assert found_pairs(datas) == set()
    assert found_pairs(datas, flip=True) == {(0, 1)}


def test_transforms_change_the_image_and_keep_its_mode_family() -> None:
    from PIL import Image

    from curate.stages.dedupe.transforms import COLOUR_ONLY, FAMILIES, families

    rng = np.random.default_rng(0)
    rgb, gray = Image.fromarray(scene(1)), Image.fromarray(scene(1)).convert("L")
    for name, fn in FAMILIES.items():
        out = fn(rgb, rng)
        assert out.mode in ("RGB", "L"), name
        if name not in ("scale", "border"):  # these may change the size
            assert out.size == rgb.size, name
        changed = out.size != rgb.size or out.mode != rgb.mode or not np.array_equal(np.asarray(out), np.asarray(rgb))
        assert changed, name
    assert set(families(gray=False)) - set(families(gray=True)) == set(COLOUR_ONLY)
    assert np.array_equal(np.asarray(FAMILIES["hue"](gray, rng)), np.asarray(gray))


def _photo_files(root: Path) -> dict[str, bytes]:
    """One picture stored as RGB PNG, RGBA PNG, CMYK JPEG, 16-bit gray PNG, a 6000x4500 JPEG; plus other scenes."""
    from PIL import Image

    big = Image.fromarray(scene(7)).resize((6000, 4500), Image.BICUBIC)
    alpha = Image.fromarray(scene(8)).convert("RGBA")
    alpha.putalpha(Image.fromarray(np.tile(np.linspace(60, 255, W).astype(np.uint8), (H, 1))))
    g16 = np.asarray(Image.fromarray(scene(9)).convert("L")).astype(np.uint16) * 257

    def enc(im: Any, fmt: str, **kw: Any) -> bytes:
        buf = io.BytesIO()
        im.save(buf, format=fmt, **kw)
        return buf.getvalue()

    files = {
        "big.jpg": enc(big, "JPEG", quality=90),
        "big_thumb.png": enc(big.resize((400, 300), Image.LANCZOS), "PNG"),
        "alpha.png": enc(alpha, "PNG"),
        "alpha_copy.jpg": enc(alpha.convert("RGB"), "JPEG", quality=80),
        "g16.png": enc(Image.fromarray(g16), "PNG"),
        "g16_8bit.jpg": enc(Image.fromarray(scene(9)).convert("L"), "JPEG", quality=85),
        "cmyk.jpg": enc(Image.fromarray(scene(10)).convert("CMYK"), "JPEG", quality=92),
        "cmyk_rgb.png": enc(Image.fromarray(scene(10)), "PNG"),
        "corrupt.png": enc(Image.fromarray(scene(11)), "PNG")[:300],
    }
    files.update({f"other{s}.png": enc(Image.fromarray(scene(s)), "PNG") for s in range(20, 26)})
    (root / "c").mkdir(parents=True)
    for name, data in files.items():
        (root / "c" / name).write_bytes(data)
    return files


def test_photo_modes_sizes_and_a_corrupt_file(workspace: Any, ingest: Any, tmp_path: Path) -> None:
    from test_dedupe import rows, run

    _photo_files(tmp_path / "imgs")
    ingest(workspace, tmp_path / "imgs")
    res = run(workspace, action="flag")
    r = rows(workspace)
    assert r["corrupt.png"]["status"] != "ok" and r["corrupt.png"]["reason"], r["corrupt.png"]
    assert r["corrupt.png"].get("dup_group") is None
    same = [("big.jpg", "big_thumb.png"), ("alpha.png", "alpha_copy.jpg"), ("g16.png", "g16_8bit.jpg"), ("cmyk.jpg", "cmyk_rgb.png")]
    for a, b in same:
        assert r[a]["dup_group"] is not None and r[a]["dup_group"] == r[b]["dup_group"], (a, b)
    groups = {v["dup_group"] for v in r.values() if v.get("dup_group")}
    assert len(groups) == 4 and res["stats"]["duplicates"] == 4
    assert all(r[f"other{s}.png"]["dup_group"] is None for s in range(20, 26))
    assert res["stats"]["signature_errors"] == 0


def test_signatures_of_photo_inputs() -> None:
    from PIL import Image

    from curate.stages.dedupe.signatures import SHARP_SIDE, decode, signature_of

    files = _photo_files_in_memory()
    im, full = decode(files["big.jpg"])
    assert full == (6000, 4500) and max(im.size) <= 4 * SHARP_SIDE  # JPEG draft: the decode is reduced
    sig = signature_of(files["big.jpg"])
    assert (sig["width"], sig["height"]) == (6000, 4500) and (sig["thumb_h"], sig["thumb_w"]) == (32, 32)
    g = decode(files["g16.png"])[0]
    assert g.mode == "L" and 40 < np.asarray(g).mean() < 220  # scaled from 16 bits, not clipped to white
    assert decode(files["cmyk.jpg"])[0].mode == "RGB"
    with pytest.raises(Exception, match="(?i)decompression|bomb|exceeds"):
        bomb = io.BytesIO()
        Image.new("1", (20000, 20000)).save(bomb, format="PNG")
        signature_of(bomb.getvalue())


def _photo_files_in_memory() -> dict[str, bytes]:
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        return _photo_files(Path(d))
