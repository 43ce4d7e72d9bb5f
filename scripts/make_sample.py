"""Build data/sample/: a small, deliberately messy demo set cut from Fashion-MNIST (MIT, Zalando SE).

400 training images (40 per class) as PNG in ImageFolder layout, plus planted problems whose ground truth is
written to data/sample/TRUTH.json: exact duplicates (one under another class), near duplicates, flipped
labels, a corrupt file, a truncated file, an empty file and a text file. With the MNIST folder as a third argument
it also writes the unlabeled pool of the demo's pseudolabel step, data/sample/pool/: 300 other Fashion-MNIST
training images (30 per class, none of them in images/) and 13 out-of-distribution frames (10 MNIST digits, 2 noise
frames, 1 blank frame), shuffled under neutral names; their truth (a class, or "ood") is TRUTH.json's "pool" and
data/sample/pool_truth.csv (sample_id = the sha256 of the file, label), the form `curate pseudolabel --truth`
reads. Run once; the output is committed.

    python scripts/make_sample.py ../shared/datasets/fashion-mnist data/sample ../shared/datasets/mnist
"""

from __future__ import annotations

import csv
import gzip
import hashlib
import io
import json
import shutil
import sys
from pathlib import Path

import numpy as np
from PIL import Image

NAMES = ["tshirt", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag", "boot"]


POOL_PER_CLASS = 30


def load(folder: Path) -> tuple[np.ndarray, np.ndarray]:
    with gzip.open(folder / "train-images-idx3-ubyte.gz") as fh:
        x = np.frombuffer(fh.read()[16:], np.uint8).reshape(-1, 28, 28)
    with gzip.open(folder / "train-labels-idx1-ubyte.gz") as fh:
        y = np.frombuffer(fh.read()[8:], np.uint8)
    return x, y


def png(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


def make_pool(x: np.ndarray, y: np.ndarray, digits: tuple[np.ndarray, np.ndarray], root: Path) -> dict[str, str]:
    """Write root/pool/ and return its truth, ``{"pool/uNNN.png": class name or "ood"}`` (module doc).

    The Fashion-MNIST images are the next ``POOL_PER_CLASS`` of each class after the 40 that images/ takes.
    """
    pool = root / "pool"
    shutil.rmtree(pool, ignore_errors=True)
    pool.mkdir(parents=True)
    rng = np.random.default_rng(1)
    items = [(x[i], NAMES[c]) for c in range(10) for i in np.flatnonzero(y == c)[40 : 40 + POOL_PER_CLASS]]
    dx, dy = digits
    items += [(dx[int(np.flatnonzero(dy == d)[0])], "ood") for d in range(10)]
    items += [(rng.integers(0, 256, (28, 28)).astype(np.uint8), "ood") for _ in range(2)]
    items.append((np.zeros((28, 28), np.uint8), "ood"))
    truth = {}
    for k, j in enumerate(rng.permutation(len(items))):
        arr, label = items[int(j)]
        (pool / f"u{k:03d}.png").write_bytes(png(arr))
        truth[f"pool/u{k:03d}.png"] = label
    with open(root / "pool_truth.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["sample_id", "label"])
        w.writerows([hashlib.sha256((root / rel).read_bytes()).hexdigest(), lab] for rel, lab in truth.items())
    return truth


def main(src: str, out: str, mnist: str | None = None) -> None:
    x, y = load(Path(src))
    root = Path(out)
    images = root / "images"
    shutil.rmtree(images, ignore_errors=True)
    rng = np.random.default_rng(0)
    truth: dict = {"flipped": [], "exact_duplicates": [], "near_duplicates": [], "bad_files": {}}
    picked = {c: np.flatnonzero(y == c)[:40] for c in range(10)}
    flip = {int(picked[c][0]): (c + 1) % 10 for c in range(0, 10, 2)}  # 5 flipped labels
    for c, idxs in picked.items():
        for i in idxs:
            label = flip.get(int(i), c)
            path = images / NAMES[label] / f"fm{i:05d}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(png(x[i]))
            if int(i) in flip:
                truth["flipped"].append({"file": str(path.relative_to(root)), "true": NAMES[c], "given": NAMES[label]})
    # exact duplicates: same bytes, two under the same class and one filed under another class
    for k, c in enumerate((1, 7, 8)):
        i = int(picked[c][5])
        dst_class = NAMES[c] if k < 2 else NAMES[(c + 3) % 10]
        dst = images / dst_class / f"copy_of_fm{i:05d}.png"
        shutil.copyfile(images / NAMES[c] / f"fm{i:05d}.png", dst)
        truth["exact_duplicates"].append([f"images/{NAMES[c]}/fm{i:05d}.png", str(dst.relative_to(root))])
    # near duplicates: a brightness shift and one pixel of noise, same class
    for c in (3, 9):
        i = int(picked[c][7])
        arr = np.clip(x[i].astype(int) + 6 + rng.integers(0, 2, x[i].shape), 0, 255).astype(np.uint8)
        dst = images / NAMES[c] / f"near_fm{i:05d}.png"
        dst.write_bytes(png(arr))
        truth["near_duplicates"].append([f"images/{NAMES[c]}/fm{i:05d}.png", str(dst.relative_to(root))])
    good = png(x[int(picked[8][1])])
    bad = {
        "images/coat/corrupt.png": b"\x89PNG\r\n\x1a\n" + bytes(rng.integers(0, 256, 200, dtype=np.uint8)),
        "images/dress/truncated.png": good[: len(good) // 2],
        "images/shirt/empty.png": b"",
        "images/sneaker/notes.txt": b"photographer: unknown\n",
    }
    reasons = {"corrupt.png": "corrupt", "truncated.png": "truncated", "empty.png": "empty", "notes.txt": "not_an_image"}
    for rel, data in bad.items():
        (root / rel).write_bytes(data)
        truth["bad_files"][rel] = reasons[Path(rel).name]
    if mnist:
        truth["pool"] = make_pool(x, y, load(Path(mnist)), root)
    (root / "TRUTH.json").write_text(json.dumps(truth, indent=2) + "\n")
    print(f"wrote {sum(1 for _ in images.rglob('*.*'))} files under {images}")


if __name__ == "__main__":
    main(*sys.argv[1:4])
