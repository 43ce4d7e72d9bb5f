"""Benchmark ``curate clean --model`` (issue 17): a k-fold linear head on frozen embeddings vs curate's own k-fold CNN.

Fashion-MNIST train is shuffled once (seed 0) and cut in two disjoint halves. A curate run trained on the first
half (``--backbone-n`` rows, ``--backbone-epochs``) stands in for a pretrained backbone. From the second half,
``--n`` rows are ingested into a fresh workspace and 10% of their labels are flipped uniformly at random
(``bench_clean._plant``). Then, from the same planted version:

- ``curate clean --find-mislabels --model curate:<backbone>``: embed every row (the run's penultimate layer),
  k logistic regressions, cleanlab;
- ``curate clean --find-mislabels``: k small CNNs trained from scratch (the default path).

Both print precision / recall / F1 of ``is_label_issue`` against the flipped rows, wall seconds and CPU seconds
(user + system of the CLI process and its children, embedding and training included; the backbone's training
is printed apart: a pretrained backbone costs the user nothing), then F1 linear / CNN and seconds CNN / linear as ratios. Embedding
seconds and head seconds of the model run are shown too (from its stats).

Run: ``.venv/bin/python bench/bench_clean_model.py [--n 30000] [--backbone-n 30000] [--folds 5] [--no-cnn]``;
a smoke run: ``--n 600 --backbone-n 600 --backbone-epochs 1 --folds 3 --cnn-epochs 1``. Workspaces and the
backbone go to ``bench/.out/clean-model/``.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import FASHION, OUT, machine  # noqa: E402
from bench_clean import _curate, _plant, _prf, _table  # noqa: E402

HALF = 30_000


def _write_idx(path: Path, array: np.ndarray) -> None:
    import struct

    path.parent.mkdir(parents=True, exist_ok=True)
    array = np.ascontiguousarray(array, np.uint8)
    path.write_bytes(bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape) + array.tobytes())


def _subset_ws(name: str, images: np.ndarray, labels: np.ndarray, root: Path = OUT / "clean-model") -> Path:
    """A fresh workspace ``root/name`` holding ``images``/``labels`` (ingested from idx files, labels "0".."9")."""
    src, ws = root / f"{name}-idx", root / name
    for p in (src, ws):
        shutil.rmtree(p, ignore_errors=True)
    _write_idx(src / "train-images-idx3-ubyte", images)
    _write_idx(src / "train-labels-idx1-ubyte", labels)
    _curate("ingest", str(src), "--format", "idx", "-w", str(ws))
    return ws


def _found(ws: Path, vid: str) -> set[str]:
    from curate.workspace import Workspace

    t = Workspace(ws).samples(vid)
    return {s for s, f in zip(t["sample_id"].to_pylist(), t["is_label_issue"].to_pylist(), strict=True) if f}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=HALF, help=f"rows to clean, from the second half (at most {HALF})")
    ap.add_argument("--backbone-n", type=int, default=HALF, help=f"rows the backbone trains on, the first half (at most {HALF})")
    ap.add_argument("--backbone-epochs", type=int, default=5)
    ap.add_argument("--folds", type=int, default=5)
    ap.add_argument("--cnn-epochs", type=int, default=None, help="epochs of the k-fold CNNs (default: clean's)")
    ap.add_argument("--no-cnn", dest="cnn", action="store_false", help="skip the k-fold CNN baseline")
    args = ap.parse_args()
    if not (0 < args.n <= HALF and 0 < args.backbone_n <= HALF):
        ap.error(f"--n and --backbone-n must be in 1..{HALF}")
    from curate.sources.idx import read_idx

    print(f"# {machine()}, load {os.getloadavg()[0]:.1f}; n={args.n:,}, backbone on {args.backbone_n:,}", flush=True)
    images = read_idx(FASHION / "train-images-idx3-ubyte.gz")
    labels = read_idx(FASHION / "train-labels-idx1-ubyte.gz")
    perm = np.random.default_rng(0).permutation(len(images))
    back, target = perm[: args.backbone_n], perm[HALF : HALF + args.n]

    ws_a = _subset_ws("backbone", images[back], labels[back])
    run = OUT / "clean-model" / "backbone-run"
    shutil.rmtree(run, ignore_errors=True)
    back_s = [0.0, 0.0]
    for cmd in (["split"], ["normalize"], ["train", "--epochs", str(args.backbone_epochs), "--out", str(run)]):
        done = _curate(*cmd, "-w", str(ws_a))
        back_s = [back_s[0] + done["wall_s"], back_s[1] + done["cpu_s"]]

    ws = _subset_ws("target", images[target], labels[target])
    truth = _plant(ws, "uniform")
    from curate.workspace import Workspace

    planted = Workspace(ws).head()
    common = ["clean", "--find-mislabels", "--folds", str(args.folds), "-w", str(ws)]
    lin = _curate(*common, "--model", f"curate:{run}")
    st = lin["stats"]
    p, r, f1 = _prf(_found(ws, lin["version"]), truth)
    detail = f"embed {st['embeddings']['seconds']:.1f}s + head {st['oof_seconds']:.1f}s"
    head = ["method", "precision", "recall", "F1", "wall s", "CPU s"]
    rows = [[f"linear head on backbone embeddings ({detail})", f"{p:.3f}", f"{r:.3f}", f"**{f1:.3f}**", f"{lin['wall_s']:.1f}",
             f"{lin['cpu_s']:.1f}"]]  # fmt: skip
    print(_table(head, rows), f"\n# backbone training: {back_s[0]:.1f}s wall, {back_s[1]:.1f} CPU-s; load {os.getloadavg()[0]:.1f}",
          flush=True)  # fmt: skip
    if args.cnn:
        _curate("checkout", planted, "-w", str(ws))
        cnn = _curate(*common, *(["--epochs", str(args.cnn_epochs)] if args.cnn_epochs else []))
        cp, cr, cf1 = _prf(_found(ws, cnn["version"]), truth)
        rows.append([f"curate's own {args.folds}-fold CNN", f"{cp:.3f}", f"{cr:.3f}", f"{cf1:.3f}", f"{cnn['wall_s']:.1f}",
                     f"{cnn['cpu_s']:.1f}"])  # fmt: skip
        print(_table(head, rows))
        print(f"F1 linear / CNN: {f1 / max(cf1, 1e-9):.2f}; CPU seconds CNN / linear: {cnn['cpu_s'] / max(lin['cpu_s'], 1e-9):.1f}x")
    print(f"# load after: {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
