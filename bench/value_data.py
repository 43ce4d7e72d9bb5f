"""The messy training sets of ``bench/bench_value.py`` (issue 18), with their planted truth.

Not a benchmark itself. ``build_messy`` writes, from the official *train* images of one dataset (Fashion-MNIST or
MNIST), a folder ``images/`` of PNGs and ``manifest.csv`` (``path``, ``label``, ``split`` = ``train``) that
``curate ingest`` reads, plus ``truth.parquet``: one row per file with

| column | meaning |
| --- | --- |
| file | the file name (``<kind>-<n>.png``; unique, so ingest's ``source`` ends with it) |
| kind | ``clean`` (label right), ``flip`` (label wrong), ``dup`` (near duplicate of a base row), ``junk``, ``corrupt`` |
| true_label / given_label | the right class of the image (-1 for junk) and the label written in the manifest |
| base | for ``dup``: the file it was made from; else null |
| detail | the flip kind (``uniform`` / ``confusable``), the dup transform, the junk kind (``other`` / ``noise`` / ``blank``) |

The clean originals (the base images with their true labels, no dups, junk or corrupt files) go to a second
manifest ``clean.csv`` over the same files. Composition of ``n`` files: ``junk`` share of out-of-distribution
images with random labels, ``dups`` share of near duplicates, ``corrupt`` share of truncated PNGs, the rest base
images of which ``noise`` (the noise level) carry a wrong label. Noise kinds (``kind``):

- ``uniform``: a random other class; rows picked uniformly.
- ``confusable``: the class's look-alike (``CONFUSABLE``); rows picked uniformly.
- ``classdep``: a random other class, rows picked at a per-class rate between 0.25x and 1.75x the level.
- ``mix``: class-dependent rates, half of the flips to the look-alike and half uniform.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np

DATASETS = {"fashion-mnist": "mnist", "mnist": "fashion-mnist"}  # dataset -> where its foreign junk comes from
#: class -> its look-alike (Fashion-MNIST: t-shirt/shirt, pullover/coat, sandal/sneaker/boot, ...; MNIST: 4/9, 3/5, 1/7, ...)
CONFUSABLE = {
    "fashion-mnist": [6, 3, 4, 0, 2, 7, 0, 9, 2, 7],
    "mnist": [6, 7, 7, 5, 9, 3, 0, 1, 3, 4],
}
KINDS = ("uniform", "confusable", "classdep", "mix")
DUP_TRANSFORMS = ("blur", "crop", "jpeg", "brightness")
JUNK_KINDS = ("other", "noise", "blank")


def read_split(root: Path, dataset: str, split: str) -> tuple[np.ndarray, np.ndarray]:
    """uint8 ``(N, 28, 28)`` images and int ``(N,)`` labels of ``root/dataset``'s ``train`` or ``t10k`` idx files."""
    from curate.sources.idx import read_idx

    d = root / dataset
    return read_idx(d / f"{split}-images-idx3-ubyte.gz"), read_idx(d / f"{split}-labels-idx1-ubyte.gz").astype(np.int64)


def png(img: np.ndarray) -> bytes:
    """Lossless grayscale PNG bytes of a uint8 ``(H, W)`` image."""
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(img, "L").save(buf, format="PNG")
    return buf.getvalue()


def near_duplicate(img: np.ndarray, how: str, rng: np.random.Generator) -> np.ndarray:
    """A near duplicate of uint8 ``(H, W)`` ``img`` under one transform of the dedupe issue's family."""
    from PIL import Image, ImageFilter

    im = Image.fromarray(img, "L")
    if how == "blur":
        im = im.filter(ImageFilter.GaussianBlur(radius=float(rng.uniform(0.4, 0.8))))
    elif how == "crop":
        c = int(rng.integers(1, 3))
        w, h = im.size
        im = im.crop((c, c, w - c, h - c)).resize((w, h), Image.BILINEAR)
    elif how == "jpeg":
        buf = io.BytesIO()
        im.save(buf, format="JPEG", quality=int(rng.integers(70, 91)))
        im = Image.open(io.BytesIO(buf.getvalue())).convert("L")
    else:
        return np.clip(img.astype(np.float32) * float(rng.uniform(0.8, 1.2)), 0, 255).astype(np.uint8)
    return np.asarray(im, np.uint8)


def flip_labels(labels: np.ndarray, level: float, kind: str, dataset: str, rng: np.random.Generator) -> tuple[np.ndarray, list[str]]:
    """Given labels ``(N,)`` with a ``level`` share wrong under noise ``kind``, and each row's flip kind (or '')."""
    n, k = len(labels), 10
    given, how = labels.copy(), [""] * n
    if kind in ("classdep", "mix"):
        rates = level * rng.permutation(np.linspace(0.25, 1.75, k))  # mean = level
        pick = np.flatnonzero(rng.random(n) < rates[labels])
    else:
        pick = rng.choice(n, int(round(level * n)), replace=False)
    conf = np.array(CONFUSABLE[dataset])
    for i in pick.tolist():
        to_conf = kind == "confusable" or (kind == "mix" and rng.random() < 0.5)
        given[i] = conf[labels[i]] if to_conf else (labels[i] + int(rng.integers(1, k))) % k
        how[i] = "confusable" if to_conf else "uniform"
    return given, how


def junk_image(how: str, foreign: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """One out-of-distribution uint8 ``(28, 28)`` image: from the other dataset, noise, or a blank frame."""
    if how == "other":
        return foreign[int(rng.integers(len(foreign)))]
    if how == "noise":
        return rng.integers(0, 256, (28, 28), dtype=np.uint8)
    return np.full((28, 28), int(rng.integers(0, 256)), np.uint8)


def build_messy(
    root: Path, dataset: str, dst: Path, *, n: int, level: float, kind: str, seed: int,
    junk: float = 0.03, dups: float = 0.05, corrupt: float = 0.005,
) -> dict[str, int]:  # fmt: skip
    """Write the messy set of ``n`` files (module doc) to ``dst``; returns the count per kind.

    The base images are the first rows of a ``seed`` permutation of the train set, so every noise level and kind of
    one seed has the same base images (and the same ``clean.csv`` arm); the flips depend on (seed, level, kind).
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    images, labels = read_split(root, dataset, "train")
    foreign, _ = read_split(root, DATASETS[dataset], "train")
    rng = np.random.default_rng(seed)
    n_junk, n_dup, n_bad = int(junk * n), int(dups * n), max(1, int(corrupt * n))
    n_base = n - n_junk - n_dup - n_bad
    order = rng.permutation(len(images))
    base, spare = order[:n_base], order[n_base:]
    nrng = np.random.default_rng([seed, int(level * 1000), KINDS.index(kind)])
    given, how = flip_labels(labels[base], level, kind, dataset, nrng)
    (dst / "images").mkdir(parents=True, exist_ok=True)
    rows: list[dict] = []

    def put(name: str, data: bytes, kind_: str, true: int, label: int, base_: str | None = None, detail: str = "") -> None:
        (dst / "images" / name).write_bytes(data)
        rows.append({"file": name, "kind": kind_, "true_label": true, "given_label": label, "base": base_, "detail": detail})

    for j, i in enumerate(base.tolist()):
        put(f"base-{j:06d}.png", png(images[i]), "flip" if how[j] else "clean", int(labels[i]), int(given[j]), detail=how[j])
    for j in range(n_dup):
        src = int(nrng.integers(n_base))
        t = DUP_TRANSFORMS[j % len(DUP_TRANSFORMS)]
        img = near_duplicate(images[base[src]], t, nrng)
        put(f"dup-{j:06d}.png", png(img), "dup", int(labels[base[src]]), int(given[src]), f"base-{src:06d}.png", t)
    for j in range(n_junk):
        t = JUNK_KINDS[j % len(JUNK_KINDS)]
        put(f"junk-{j:06d}.png", png(junk_image(t, foreign, nrng)), "junk", -1, int(nrng.integers(10)), detail=t)
    for j in range(n_bad):
        data = png(images[spare[j]])
        lab = int(labels[spare[j]])
        put(f"corrupt-{j:06d}.png", data[: len(data) // 2], "corrupt", lab, lab, detail="truncated")
    truth = pa.Table.from_pylist(rows)
    pq.write_table(truth, dst / "truth.parquet")
    lines = [f"images/{r['file']},{r['given_label']},train" for r in rows]
    (dst / "manifest.csv").write_text("path,label,split\n" + "\n".join(lines) + "\n")
    clean = [f"images/{r['file']},{r['true_label']},train" for r in rows if r["kind"] in ("clean", "flip")]
    (dst / "clean.csv").write_text("path,label,split\n" + "\n".join(clean) + "\n")
    kinds = truth.column("kind").to_pylist()
    return {k: kinds.count(k) for k in ("clean", "flip", "dup", "junk", "corrupt")}


def write_test_tree(root: Path, dataset: str, dst: Path) -> int:
    """The official test set as an ImageFolder ``dst/<label>/t-NNNNN.png`` (outside every workspace); reused."""
    if (dst / ".done").exists():
        return int((dst / ".done").read_text())
    images, labels = read_split(root, dataset, "t10k")
    for i, (img, lab) in enumerate(zip(images, labels, strict=True)):
        (dst / str(int(lab))).mkdir(parents=True, exist_ok=True)
        (dst / str(int(lab)) / f"t-{i:05d}.png").write_bytes(png(img))
    (dst / ".done").write_text(str(len(images)))
    return len(images)
