"""Benchmark embedding throughput (images/s) of every ``curate.models`` backend beside a bare peer loop (issue 17).

The same encoded images go through each backend's ``embed`` (decode, resize to the model's input, normalize,
forward, in ``--batch`` images per pass), and, in the same run, through a *peer*: the bare runtime on the
already preprocessed float32 tensors, batch by batch (``torch.no_grad`` forward of the same module, or a fresh
``onnxruntime.InferenceSession`` of the same file with its default options). The ratio curate / peer is what
curate's wrapper costs over the runtime itself: decoding and resizing are inside curate's figure, not the peer's
(``prep`` shows that part alone).

Backends (Fashion-MNIST test images as PNG, 28x28 gray):

- ``curate:RUN``: a small-cnn run (``--run``, else trained here for 1 epoch on 2,000 Fashion-MNIST train rows:
  throughput does not depend on how well it is trained), plus its ``curate export-model`` TorchScript and ONNX files;
- ``hf:`` a ViT-Tiny/16 and a ViT-Small/16 (224 px, 3 channels) built from a config with random weights and
  saved with ``save_pretrained`` (nothing downloaded); they see the 28 px images resized to 224;
- ``embeddings:FILE``: 384-d vectors looked up by the sha256 of each image's bytes: the floor (no model runs).

The device is picked like curate picks it (CUDA, then MPS, then the CPU). On CUDA the torch peers also run
under AMP (bf16 where supported, else fp16), a second line each; curate's ``curate:`` and ``hf:`` backends embed
under AMP on CUDA (``curate.models.base.embed_autocast``), so their ratio is taken against the AMP peer there,
TorchScript's and ONNX's against the float32 one.
Wall images/s is load-sensitive; images per CPU-second (process time of this process, all threads) less so.

Run: ``OMP_NUM_THREADS=1 nice -n 10 .venv/bin/python bench/bench_embed.py [--n 2048] [--n-vit 128] [--batch 64]
[--threads 1] [--run RUN]``. Models go to ``bench/.out/embed/``.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import io
import json
import os
import shutil
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import FASHION, OUT, machine  # noqa: E402

DIR = OUT / "embed"
VITS = {"vit-tiny": (192, 3), "vit-small": (384, 6)}  # hidden size, heads (12 layers, patch 16, 224 px: ViT-Ti/S)


def _png(a: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(a).save(buf, format="PNG")
    return buf.getvalue()


def _train_run() -> Path:
    """A small-cnn trained 1 epoch on 2,000 Fashion-MNIST train rows (its weights do not change its speed)."""
    from bench_clean import _curate
    from bench_clean_model import _subset_ws

    from curate.sources.idx import read_idx

    x, y = read_idx(FASHION / "train-images-idx3-ubyte.gz")[:2000], read_idx(FASHION / "train-labels-idx1-ubyte.gz")[:2000]
    ws = _subset_ws("ws", x, y, DIR)
    run = DIR / "run"
    shutil.rmtree(run, ignore_errors=True)
    for cmd in (["split"], ["normalize"], ["train", "--epochs", "1", "--out", str(run)]):
        _curate(*cmd, "-w", str(ws))
    return run


def _vit(name: str) -> Path:
    """A ViT with random weights (seed 0), saved like a Hub folder with a preprocessor config."""
    import torch
    import transformers

    folder = DIR / name
    if (folder / "config.json").is_file():
        return folder
    hidden, heads = VITS[name]
    cfg = transformers.ViTConfig(image_size=224, patch_size=16, num_channels=3, hidden_size=hidden, num_hidden_layers=12,
                                 num_attention_heads=heads, intermediate_size=4 * hidden)  # fmt: skip
    torch.manual_seed(0)
    transformers.ViTModel(cfg).eval().save_pretrained(folder)
    proc = {"image_mean": [0.5] * 3, "image_std": [0.5] * 3, "size": {"height": 224, "width": 224}, "resample": 2}
    (folder / "preprocessor_config.json").write_text(json.dumps(proc))
    return folder


def _embeddings_file(images: list[bytes]) -> Path:
    import pyarrow as pa
    import pyarrow.parquet as pq

    ids = [hashlib.sha256(b).hexdigest() for b in images]
    vec = np.random.default_rng(0).standard_normal((len(ids), 384)).astype(np.float32)
    path = DIR / "embeddings.parquet"
    emb = pa.FixedSizeListArray.from_arrays(pa.array(vec.reshape(-1)), 384)
    pq.write_table(pa.table({"sample_id": ids, "embedding": emb}), path)
    return path


def _timed(fn: Callable[[], Any], repeat: int) -> tuple[float, float]:
    """(best wall seconds, CPU seconds of that run) over ``repeat`` runs."""
    best = (float("inf"), 0.0)
    for _ in range(repeat):
        w0, c0 = time.perf_counter(), time.process_time()
        fn()
        best = min(best, (time.perf_counter() - w0, time.process_time() - c0))
    return best


def _torch_peer(module: Callable[[Any], Any], x: np.ndarray, batch: int, device: str, amp: Any = None) -> Callable[[], None]:
    import torch

    def loop() -> None:
        ctx = torch.autocast(device_type="cuda", dtype=amp) if amp is not None else contextlib.nullcontext()
        with torch.no_grad(), ctx:
            for i in range(0, len(x), batch):
                module(torch.from_numpy(x[i : i + batch]).to(device))
        if device == "cuda":
            torch.cuda.synchronize()

    return loop


def _peers(backend: Any, x: np.ndarray, batch: int) -> dict[str, Callable[[], None]]:
    """The bare runtime loops for ``backend`` on preprocessed ``x``: ``{"fp32": loop}`` (+ ``"amp"`` on CUDA)."""
    if backend.kind == "onnx":
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.log_severity_level = 3
        sess = ort.InferenceSession(str(backend.path), sess_options=opts, providers=backend.session.get_providers())
        name = sess.get_inputs()[0].name
        return {"fp32": lambda: [sess.run(None, {name: x[i : i + batch]}) for i in range(0, len(x), batch)]}
    if backend.kind == "hf":
        model = backend.model
        module: Callable[[Any], Any] = lambda t: model(pixel_values=t).last_hidden_state[:, 0]  # noqa: E731
    else:
        module = backend.net if backend.kind == "curate" else backend.module
    out = {"fp32": _torch_peer(module, x, batch, backend.device)}
    if backend.device == "cuda":
        from curate.learn.runtime import amp_dtype, pick_device

        out["amp"] = _torch_peer(module, x, batch, "cuda", amp_dtype(True, pick_device("cuda")))
    return out


def measure(spec: str, images: list[bytes], batch: int, repeat: int) -> list[list[str]]:
    """Table rows for one backend: curate's embed, its preprocessing alone, and the peer(s), images/s and ratios."""
    from curate.models import load_backend

    backend = load_backend(spec, batch_size=batch)
    n = len(images)
    backend.embed(images[:batch])  # warm-up: lazy inits, allocator, onnxruntime's first-run planning
    wall, cpu = _timed(lambda: backend.embed(images), repeat)
    name = f"`{backend.kind}:` {Path(spec.split(':', 1)[1]).name}"
    rows = [[name, backend.device, f"{n / wall:,.0f}", f"{n / max(cpu, 1e-9):,.0f}", "", ""]]
    if backend.preprocessing is None:
        rows[0][4] = "(lookup by sha256: the floor)"
        return rows
    x = backend.normalize(backend.pixels(images))
    p_wall, _ = _timed(lambda: backend.normalize(backend.pixels(images)), repeat)
    same = "amp" if backend.device == "cuda" and backend.kind in ("curate", "hf") else "fp32"  # curate's own precision
    for name, loop in _peers(backend, x, batch).items():
        loop()  # warm-up
        pw, pc = _timed(loop, repeat)
        rows.append([f"  peer ({name}, preprocessed tensors)", backend.device, f"{n / pw:,.0f}", f"{n / max(pc, 1e-9):,.0f}",
                     f"prep {p_wall / n * 1e3:.2f} ms/img", f"**{pw / wall:.2f}**" if name == same else ""])  # fmt: skip
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=2048, help="images for the small nets and the embeddings file")
    ap.add_argument("--n-vit", type=int, default=128, help="images for the ViTs (224 px: far slower)")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--threads", type=int, default=1, help="torch intra-op threads (onnxruntime keeps its default)")
    ap.add_argument("--repeat", type=int, default=2, help="timed runs per side; the best is kept")
    ap.add_argument("--run", type=Path, default=None, help="a curate run to use (default: train one here)")
    args = ap.parse_args()
    import torch

    from curate.learn.runtime import pick_device
    from curate.models.export import export_run
    from curate.sources.idx import read_idx

    torch.set_num_threads(args.threads)
    DIR.mkdir(parents=True, exist_ok=True)
    dev = pick_device("auto")
    print(f"# {machine()}, load {os.getloadavg()[0]:.2f}; device {dev}; batch {args.batch}; torch threads {args.threads}, "
          f"onnxruntime default threads; n {args.n} (ViTs {args.n_vit})", flush=True)  # fmt: skip
    images = [_png(a) for a in read_idx(FASHION / "t10k-images-idx3-ubyte.gz")[: max(args.n, args.n_vit)]]
    run = args.run or _train_run()
    files = {fmt: export_run(str(run), fmt, DIR / f"model.{ext}")["out"] for fmt, ext in (("onnx", "onnx"), ("torchscript", "pt"))}
    plan = [(f"curate:{run}", args.n), (f"torchscript:{files['torchscript']}", args.n), (f"onnx:{files['onnx']}", args.n),
            (f"hf:{_vit('vit-tiny')}", args.n_vit), (f"hf:{_vit('vit-small')}", args.n_vit),
            (f"embeddings:{_embeddings_file(images[: args.n])}", args.n)]  # fmt: skip
    rows = []
    for spec, n in plan:
        rows += measure(spec, images[:n], args.batch, args.repeat)
        print(f"#   {spec.split(':')[0]} done, load {os.getloadavg()[0]:.2f}", flush=True)
    head = ["backend", "device", "images/s", "images per CPU-s", "note", "curate / peer images/s"]
    print("| " + " | ".join(head) + " |\n" + "| --- " * len(head) + "|")
    print("\n".join("| " + " | ".join(r) + " |" for r in rows))
    print(f"# load after: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
