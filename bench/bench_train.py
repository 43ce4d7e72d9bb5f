"""Training on curate's shards: test accuracy and wall time on Fashion-MNIST / MNIST, and the input pipeline.

1. ``prepare``: ``curate ingest <idx folder>`` (origin split from the file names) into a fresh workspace, ``curate split
   --keep-existing --ratios 90:10`` (the official 10k test set stays test; val is carved out of train),
   ``curate normalize`` (train rows only), ``curate export --format parquet``. Reused when already there.
2. ``train``: ``curate train ...`` as a subprocess (the exact command is printed), wall time measured around
   it; test accuracy read from the run's ``metrics.json`` (the best-val checkpoint scored on the held-out test).
3. ``pipeline``: training samples/s of one model (fp32, or bf16 autocast with ``--pipeline-bf16``) fed (a) by curate's shard loader
   (``curate.learn.data``, memory mode: shards decoded once, then batches indexed from the uint8 cache and
   normalized per batch), (b) by plain in-memory float tensors read straight from the idx files (the
   reference; once as plain (B, C, H, W) batches and once viewed with the strides curate's batches have,
   which separates the loader from a memory-layout effect), and (c) by curate's stream loader (PNG decode
   every step). Same model, same process; each round times one window of
   ``--pipeline-steps`` steps per source, in rotating order; the ratio is the median of the per-round ratios.
   Samples per CPU-second of the process are reported beside samples per wall second: on a shared machine
   they are far less sensitive to what other processes do.

Run (from the repository root)::

    .venv/bin/python bench/bench_train.py --dataset fashion-mnist --pipeline-steps 0 -- \
        --arch small-cnn --epochs 10 --augment flip --label-smoothing 0.1 --max-minutes 15
    .venv/bin/python bench/bench_train.py --dataset fashion-mnist --skip-train --pipeline-steps 40 --pipeline-rounds 9

Everything after ``--`` goes to ``curate train``. Workspaces live in ``bench/.out/train-<dataset>/``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from _common import CURATE, OUT, REPO, machine

DATASETS = REPO.parent / "shared" / "datasets"


def sh(args: list[str], env: dict[str, str]) -> float:
    print("$ " + " ".join(args), flush=True)
    t0 = time.perf_counter()
    subprocess.run(args, check=True, env=env)
    return time.perf_counter() - t0


def prepare(dataset: str, root: Path, env: dict[str, str]) -> float:
    """Build the workspace once (ingest, split, normalize, export); returns the seconds it took (0 when reused)."""
    done = root / ".prepared"
    if done.exists():
        return 0.0
    ws = ["--workspace", str(root / "ws")]
    # origin_split (train/test) comes from the idx file names; --assign-split would also fix `split` = train for
    # every train row, leaving `split --keep-existing` nothing to carve val from.
    secs = sh([CURATE, "ingest", str(DATASETS / dataset), *ws], env)
    secs += sh([CURATE, "split", "--keep-existing", "--ratios", "90:10", *ws], env)
    secs += sh([CURATE, "normalize", *ws], env)
    secs += sh([CURATE, "export", "--format", "parquet", *ws], env)
    done.write_text(f"{secs:.1f}\n")
    return secs


def run_train(root: Path, extra: list[str], env: dict[str, str]) -> dict:
    run = root / "runs" / time.strftime("%Y%m%d-%H%M%S")
    args = [CURATE, "train", "--workspace", str(root / "ws"), "--out", str(run), *extra]
    secs = sh(args, env)
    metrics = json.loads((run / "metrics.json").read_text())
    test = metrics["splits"]["test"]
    return {
        "command": " ".join(["curate", *args[1:]]),
        "wall_s": round(secs, 1),
        "train_s": metrics["train_seconds"],
        "epochs": len(metrics["history"]),
        "best_epoch": metrics["best"]["epoch"],
        "stopped": metrics["stopped"],
        "test_acc": test["accuracy"],
        "test_macro_f1": test["macro_f1"],
        "val_acc": metrics["splits"]["val"]["accuracy"],
        "run": str(run),
    }


def pipeline(dataset: str, root: Path, arch: str, steps: int, batch_size: int, rounds: int, bf16: bool = False) -> dict:
    """Samples/s of training steps fed by curate's loaders vs in-memory tensors (same model and process)."""
    import numpy as np
    import torch
    import torch.nn.functional as F

    from curate.learn.data import workspace_data
    from curate.learn.nets import build
    from curate.sources.idx import read_idx
    from curate.workspace import Workspace

    ws = Workspace(root / "ws")
    t0 = time.perf_counter()
    data = workspace_data(ws, None, batch_size=batch_size, seed=0)
    decode_s = time.perf_counter() - t0
    stream = workspace_data(ws, None, batch_size=batch_size, seed=0, loader="stream")
    norm = data.normalization
    src = DATASETS / dataset
    x_all = torch.from_numpy(read_idx(src / "train-images-idx3-ubyte.gz").copy()).float().div_(255).unsqueeze(1)
    x_all = (x_all - norm["mean"][0]) / norm["std"][0]
    y_all = torch.from_numpy(read_idx(src / "train-labels-idx1-ubyte.gz").astype(np.int64))
    torch.manual_seed(0)
    model = build(arch, 1, 10, (28, 28))
    opt = torch.optim.AdamW(model.parameters(), 1e-3)
    model.train()

    def step(x: torch.Tensor, y: torch.Tensor) -> None:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):  # what `curate train` does on a bf16 CPU
            loss = F.cross_entropy(model(x).float(), y)
        opt.zero_grad()
        loss.backward()
        opt.step()

    def timed(batches: Any, n: int) -> tuple[float, float]:
        """(samples per wall second, samples per CPU second of this process) over ``n`` training steps."""
        t, c = time.perf_counter(), time.process_time()
        for _ in range(n):
            x, y = next(batches)
            step(x, y)
        return n * batch_size / (time.perf_counter() - t), n * batch_size / (time.process_time() - c)

    def curate_strides(x: torch.Tensor) -> torch.Tensor:
        """A zero-copy view with the strides of curate's (B, H, W, 1) -> (B, 1, H, W) batches (C=1 only)."""
        return x.as_strided(x.shape, (x.shape[2] * x.shape[3], 1, x.shape[3], 1))

    def from_tensors(same_layout: bool) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Random batches of the float tensors; ``same_layout``: viewed with the strides curate's loader hands out
        (with C=1 both NCHW and NHWC; oneDNN then picks channels-last kernels, faster on this CPU)."""
        g = torch.Generator().manual_seed(0)
        while True:
            for idx in torch.randperm(len(y_all), generator=g).split(batch_size):
                if len(idx) == batch_size:
                    yield (curate_strides(x_all[idx]) if same_layout else x_all[idx]), y_all[idx]

    def from_loader(loaders: dict) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        while True:  # epochs back to back, as in training
            for x, y, _ids in loaders["train"]:
                yield x, y

    sources = {
        "curate_memory": from_loader(data.loaders),
        "tensors": from_tensors(False),
        "tensors_same_layout": from_tensors(True),
        "curate_stream": from_loader(stream.loaders),
    }
    strides = {k: list(next(it)[0].stride()) for k, it in sources.items()}
    for it in sources.values():  # warm up every path (and fill the stream's shuffle buffer)
        timed(it, 3)
    wall: dict[str, list[float]] = {k: [] for k in sources}
    cpu: dict[str, list[float]] = {k: [] for k in sources}
    names = list(sources)
    for r in range(rounds):
        for k in names[r % len(names) :] + names[: r % len(names)]:  # rotate the order: no path always runs first
            w, c = timed(sources[k], steps)
            wall[k].append(w)
            cpu[k].append(c)

    def ratio(rates: dict[str, list[float]], a: str, b: str) -> float:
        return round(float(np.median([x / y for x, y in zip(rates[a], rates[b], strict=True)])), 3)

    return {
        "arch": arch,
        "autocast": "bf16" if bf16 else "fp32",
        "batch_size": batch_size,
        "steps_per_window": steps,
        "rounds": rounds,
        "decode_once_s": round(decode_s, 1),
        "batch_strides": strides,
        "samples_per_s_median": {k: round(float(np.median(v))) for k, v in wall.items()},
        "samples_per_cpu_s_median": {k: round(float(np.median(v))) for k, v in cpu.items()},
        "wall_all": {k: [round(x) for x in v] for k, v in wall.items()},
        "ratio_memory_vs_tensors": {"wall": ratio(wall, "curate_memory", "tensors"), "cpu": ratio(cpu, "curate_memory", "tensors")},
        "ratio_stream_vs_tensors": {"wall": ratio(wall, "curate_stream", "tensors"), "cpu": ratio(cpu, "curate_stream", "tensors")},
        "ratio_memory_vs_same_layout_tensors": {
            "wall": ratio(wall, "curate_memory", "tensors_same_layout"),
            "cpu": ratio(cpu, "curate_memory", "tensors_same_layout"),
        },
        "ratio_stream_vs_same_layout_tensors": {
            "wall": ratio(wall, "curate_stream", "tensors_same_layout"),
            "cpu": ratio(cpu, "curate_stream", "tensors_same_layout"),
        },
    }


def main() -> None:
    argv = sys.argv[1:]
    extra = argv[argv.index("--") + 1 :] if "--" in argv else []
    argv = argv[: argv.index("--")] if "--" in argv else argv
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dataset", default="fashion-mnist", choices=["fashion-mnist", "mnist"])
    ap.add_argument("--skip-train", action="store_true", help="only prepare and run the pipeline comparison")
    ap.add_argument("--pipeline-steps", type=int, default=40, help="training steps per timed window (0: skip)")
    ap.add_argument("--pipeline-rounds", type=int, default=9)
    ap.add_argument("--pipeline-arch", default="small-cnn")
    ap.add_argument("--batch-size", type=int, default=128, help="batch size of the pipeline comparison")
    ap.add_argument("--pipeline-bf16", action="store_true", help="train steps under bf16 autocast (as curate train on a bf16 CPU)")
    args = ap.parse_args(argv)
    root = OUT / f"train-{args.dataset}"
    root.mkdir(parents=True, exist_ok=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith("CURATE_")}
    print(f"# {machine()}; torch threads {os.cpu_count()}; load average {os.getloadavg()[0]:.1f} at start", flush=True)
    result: dict = {"dataset": args.dataset, "machine": machine(), "prepare_s": round(prepare(args.dataset, root, env), 1)}
    if not args.skip_train:
        result["train"] = run_train(root, extra, env)
    if args.pipeline_steps:
        result["pipeline"] = pipeline(
            args.dataset, root, args.pipeline_arch, args.pipeline_steps, args.batch_size, args.pipeline_rounds, args.pipeline_bf16
        )
    result["load_average_end"] = round(os.getloadavg()[0], 1)
    print(json.dumps(result, indent=2))
    with open(root / "results.jsonl", "a") as fh:
        fh.write(json.dumps({"time": time.strftime("%Y-%m-%d %H:%M:%S"), **result}) + "\n")


if __name__ == "__main__":
    main()
