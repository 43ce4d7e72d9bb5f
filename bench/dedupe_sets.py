"""Benchmark sets for ``bench_dedupe_generalize.py``: Fashion-MNIST and a photo set, each with planted copies.

A set is a folder of files plus its truth: ``originals`` (distinct images) and ``copies`` (file, source file,
family), one copy per source, made with ``curate.stages.dedupe.transforms`` (each family a random strength).

**Fashion-MNIST**: the 10,000 test images as gray PNG, and ``per_family`` copies per family that changes a gray
image (hue, saturation and grayscale do not), sources drawn without replacement.

**Photos** (no photo dataset on this machine, so built from what packages ship):

- photographs bundled in the scikit-image 0.26 wheel (``skimage/data``; the wheel is downloaded with ``pip
  download`` and read as a zip, not installed): astronaut, brick, camera, cell, chelsea, clock_motion, coffee,
  coins, grass, gravel, hubble_deep_field, ihc, moon, motorcycle_left, motorcycle_right (a stereo pair:
  distinct but similar), page, retina, rocket, text; scikit-learn's ``china.jpg`` and ``flower.jpg``;
  matplotlib's ``grace_hopper.jpg`` (22 photographs, 300-640 px);
- distinct images: each photo whole, its four quarters and its nine ninths (a 2x2 and a 3x3 grid; windows of
  one grid do not overlap), each resized to a long side drawn log-uniformly in 200-2000 px: 14 per photo;
- procedural distractors: smooth random scenes (blurred blobs and rectangles, colour), 300-900 px;
- storage mixed like a real folder: mostly JPEG q90, some PNG, 10 % RGBA PNG with a soft alpha edge, 10 %
  CMYK JPEG, 10 % 16-bit gray PNG (``I;16``);
- ``per_family`` copies for every family (colour ones included), saved as PNG or JPEG q95.
"""

from __future__ import annotations

import io
import sys
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import FASHION, reset_dir  # noqa: E402

SKIMAGE_PHOTOS = [
    "astronaut.png", "brick.png", "camera.png", "cell.png", "chelsea.png", "clock_motion.png", "coffee.png",
    "coins.png", "grass.png", "gravel.png", "hubble_deep_field.jpg", "ihc.png", "moon.png", "motorcycle_left.png",
    "motorcycle_right.png", "page.png", "retina.jpg", "rocket.jpg", "text.png",
]  # fmt: skip


def _save(im: Any, fmt: str = "PNG", **kw: Any) -> bytes:
    buf = io.BytesIO()
    im.save(buf, format=fmt, **kw)
    return buf.getvalue()


def fashion_set(dst: Path, per_family: int, seed: int) -> dict[str, Any]:
    """Fashion-MNIST test images plus planted copies in ``dst`` (written afresh); returns the truth."""
    from PIL import Image

    from curate.sources.idx import read_idx
    from curate.stages.dedupe.transforms import FAMILIES, families

    x = read_idx(FASHION / "t10k-images-idx3-ubyte.gz")
    rng = np.random.default_rng(seed)
    fams = families(gray=True)
    reset_dir(dst).mkdir(parents=True)
    originals = []
    for i, a in enumerate(x):
        originals.append(f"o_{i:05d}.png")
        (dst / originals[-1]).write_bytes(_save(Image.fromarray(a)))
    src = rng.choice(len(x), per_family * len(fams), replace=False)
    copies = []
    for j, s in enumerate(src):
        fam = fams[j // per_family]
        name = f"p_{j:04d}_{fam}.png"
        (dst / name).write_bytes(_save(FAMILIES[fam](Image.fromarray(x[s]), rng)))
        copies.append((name, originals[s], fam))
    return {"originals": originals, "copies": copies, "families": fams}


def photo_sources(cache: Path) -> list[tuple[str, Any]]:
    """``(name, PIL RGB image)`` of the photographs listed above (downloads the scikit-image wheel once)."""
    import glob
    import subprocess

    from PIL import Image

    cache.mkdir(parents=True, exist_ok=True)
    wheels = glob.glob(str(cache / "scikit_image-*.whl"))
    if not wheels:
        cmd = [sys.executable, "-m", "pip", "download", "scikit-image==0.26.0", "--no-deps", "-q", "-d", str(cache)]
        subprocess.run(cmd, check=True)
        wheels = glob.glob(str(cache / "scikit_image-*.whl"))
    out = []
    with zipfile.ZipFile(wheels[0]) as zf:
        for name in SKIMAGE_PHOTOS:
            out.append((name.split(".")[0], Image.open(io.BytesIO(zf.read(f"skimage/data/{name}"))).convert("RGB")))
    import matplotlib
    import sklearn

    extra = [
        Path(sklearn.__file__).parent / "datasets" / "images" / "china.jpg",
        Path(sklearn.__file__).parent / "datasets" / "images" / "flower.jpg",
        Path(matplotlib.get_data_path()) / "sample_data" / "grace_hopper.jpg",
    ]
    out += [(p.stem, Image.open(p).convert("RGB")) for p in extra]
    return out


def _windows(w: int, h: int) -> list[tuple[int, int, int, int]]:
    """The whole image, its 2x2 grid and its 3x3 grid (PIL boxes)."""
    boxes = [(0, 0, w, h)]
    for k in (2, 3):
        xs, ys = np.linspace(0, w, k + 1).round().astype(int), np.linspace(0, h, k + 1).round().astype(int)
        boxes += [(int(xs[i]), int(ys[j]), int(xs[i + 1]), int(ys[j + 1])) for j in range(k) for i in range(k)]
    return boxes


def _scene(rng: np.random.Generator) -> Any:
    """A procedural colour distractor: smooth blobs plus rectangles, 300-900 px."""
    from PIL import Image

    h, w = (int(v) for v in rng.integers(300, 900, 2))
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    img = np.zeros((h, w, 3), np.float32) + rng.uniform(30, 200, 3)
    for _ in range(8):
        cy, cx, s = rng.uniform(0, h), rng.uniform(0, w), rng.uniform(0.03, 0.2) * max(h, w)
        img += rng.uniform(-90, 90, 3) * np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * s * s))[..., None]
    for _ in range(4):
        y0, x0 = int(rng.integers(0, h - 40)), int(rng.integers(0, w - 40))
        img[y0 : y0 + int(rng.integers(20, h // 3)), x0 : x0 + int(rng.integers(20, w // 3))] += rng.uniform(-60, 60, 3)
    return Image.fromarray(np.clip(img, 0, 255).astype(np.uint8))


def _store(im: Any, rng: np.random.Generator) -> tuple[bytes, str]:
    """File bytes of an original in a random storage: JPEG, PNG, RGBA PNG, CMYK JPEG or 16-bit gray PNG."""
    from PIL import Image

    r = rng.random()
    if r < 0.1:
        rgba = im.convert("RGBA")
        w, h = im.size
        yy, xx = np.mgrid[0:h, 0:w]
        edge = np.minimum.reduce([yy, xx, h - 1 - yy, w - 1 - xx]).astype(np.float32)
        rgba.putalpha(Image.fromarray(np.clip(edge / (0.05 * min(h, w)) * 255, 0, 255).astype(np.uint8)))
        return _save(rgba), "png"
    if r < 0.2:
        return _save(im.convert("CMYK"), "JPEG", quality=92), "jpg"
    if r < 0.3:
        g16 = (np.asarray(im.convert("L")).astype(np.uint16) * 257).astype(np.uint16)
        return _save(Image.fromarray(g16)), "png"  # uint16 -> mode I;16
    if r < 0.45:
        return _save(im), "png"
    return _save(im, "JPEG", quality=90), "jpg"


def photo_set(dst: Path, cache: Path, per_family: int, seed: int, distractors: int = 100) -> dict[str, Any]:
    """The photo set in ``dst`` (written afresh); returns the truth and what it was built from."""
    from PIL import Image

    from curate.stages.dedupe.transforms import FAMILIES, families

    rng = np.random.default_rng(seed)
    reset_dir(dst).mkdir(parents=True)
    originals: list[str] = []
    images: list[Any] = []
    sources = photo_sources(cache)
    for name, photo in sources:
        for k, box in enumerate(_windows(*photo.size)):
            win = photo.crop(box)
            side = float(np.exp(rng.uniform(np.log(200), np.log(2000))))
            f = side / max(win.size)
            images.append(win.resize((max(16, round(win.width * f)), max(16, round(win.height * f))), Image.BICUBIC))
            originals.append(f"o_{name}_{k:02d}")
    for k in range(distractors):
        images.append(_scene(rng))
        originals.append(f"o_scene_{k:03d}")
    for i, (name, im) in enumerate(zip(originals, images, strict=True)):
        data, ext = _store(im, rng)
        originals[i] = f"{name}.{ext}"
        (dst / originals[i]).write_bytes(data)
    fams = families(gray=False)
    src = rng.choice(len(originals), min(len(originals), per_family * len(fams)), replace=False)
    copies = []
    for j, s in enumerate(src):
        fam = fams[j % len(fams)]
        im = Image.open(dst / originals[s])
        im = im.convert("RGBA" if im.mode == "RGBA" else "RGB") if im.mode not in ("I;16", "L") else _gray8(im)
        out = FAMILIES[fam](im, rng)
        jpg = rng.random() < 0.5 and out.mode in ("RGB", "L")
        name = f"p_{j:04d}_{fam}.{'jpg' if jpg else 'png'}"
        (dst / name).write_bytes(_save(out, "JPEG", quality=95) if jpg else _save(out))
        copies.append((name, originals[s], fam))
    return {"originals": originals, "copies": copies, "families": fams, "sources": [n for n, _ in sources]}


def _gray8(im: Any) -> Any:
    """An 8-bit ``L`` image of a 16-bit gray one."""
    from PIL import Image

    a = np.asarray(im, dtype=np.float64)
    return Image.fromarray(np.clip(np.rint(a / (257.0 if a.max() > 255 else 1.0)), 0, 255).astype(np.uint8), "L")
