"""Use a trained run: load it, predict probabilities for images, and k-fold out-of-sample probabilities.

``predict_table`` is the API other stages reuse (``clean`` for label errors, ``pseudolabel`` for confident
predictions): a pyarrow table with ``sample_id`` and the image bytes in, a table with the predicted class,
its probability and the full probability vector out. ``oof_probs`` trains one model per fold on in-memory
images and predicts the held-out fold, so every sample gets probabilities from a model that never saw it.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import torch

from curate.errors import CurateError
from curate.images import DEFAULT_MAX_BYTES, DEFAULT_MAX_PIXELS, bomb_guard, decode_failure
from curate.learn.checkpoint import load_model
from curate.learn.data import Normalizer
from curate.learn.runtime import pick_device
from curate.learn.shards import decode, read_bytes
from curate.learn.train import TrainConfig
from curate.sources.readfile import read_path


@dataclass
class LoadedRun:
    """A model in eval mode plus its ``meta`` (classes, channels, size, normalization, config, dataset version)."""

    model: torch.nn.Module
    meta: dict[str, Any]
    device: torch.device
    path: Path

    @property
    def classes(self) -> list[str]:
        return list(self.meta["classes"])

    @property
    def size(self) -> tuple[int, int]:
        return (int(self.meta["size"][0]), int(self.meta["size"][1]))


def load_run(run: str | Path, which: str = "best", device: str = "auto") -> LoadedRun:
    """Load ``<run>/model_<which>.pt`` (falls back to ``model_last.pt``) with ``torch.load(weights_only=True)``.

    Raises:
        CurateError: no checkpoint in ``run``, not a curate checkpoint, or a damaged one (``curate.learn.checkpoint``).
    """
    run = Path(run)
    path = run / f"model_{which}.pt" if run.is_dir() else run
    if run.is_dir() and not path.exists():
        path = run / "model_last.pt"
    model, meta = load_model(path)
    dev = pick_device(device)
    model.to(dev).eval()
    return LoadedRun(model, meta, dev, path)


@torch.no_grad()
def predict_images(run: LoadedRun, images: np.ndarray, batch_size: int = 512) -> np.ndarray:
    """uint8 ``(N, H, W, C)`` images at the run's size -> float32 ``(N, K)`` probabilities."""
    norm = Normalizer(run.meta["normalization"]["mean"], run.meta["normalization"]["std"])
    out = []
    for i in range(0, len(images), batch_size):
        logits = run.model(norm(images[i : i + batch_size]).to(run.device))
        out.append(torch.softmax(logits.float(), 1).cpu().numpy())
    return np.concatenate(out) if out else np.zeros((0, len(run.classes)), np.float32)


def predict_bytes(run: LoadedRun, images: list[bytes], batch_size: int = 512) -> np.ndarray:
    """Original image bytes -> float32 ``(N, K)`` probabilities (decoded, resized and normalized like training)."""
    probs = []
    for i in range(0, len(images), batch_size):
        arr = read_bytes(images[i : i + batch_size], int(run.meta["channels"]), run.size)
        probs.append(predict_images(run, arr, batch_size))
    return np.concatenate(probs) if probs else np.zeros((0, len(run.classes)), np.float32)


def predict_table(run: LoadedRun, table: pa.Table, *, bytes_column: str | None = None, batch_size: int = 512) -> pa.Table:
    """Predict every row of ``table`` (``sample_id`` plus image bytes in ``data``, or an export's ``image`` struct).

    Returns:
        Columns ``sample_id``, ``predicted`` (class name), ``confidence`` (its probability), ``probs``
        (list<float32> of length K, in ``run.classes`` order).
    """
    col = bytes_column or ("data" if "data" in table.column_names else "image")
    if col not in table.column_names:
        raise CurateError(f"the table has no image bytes column ({col!r})")
    values = table.column(col).to_pylist()
    blobs = [v["bytes"] if isinstance(v, dict) else v for v in values]
    probs = predict_bytes(run, blobs, batch_size)
    pred = probs.argmax(1) if len(probs) else np.zeros(0, np.int64)
    ids = table.column("sample_id") if "sample_id" in table.column_names else pa.array([None] * table.num_rows, pa.string())
    return pa.table(
        {
            "sample_id": ids,
            "predicted": [run.classes[k] for k in pred],
            "confidence": pa.array(probs[np.arange(len(pred)), pred] if len(pred) else [], pa.float32()),
            "probs": pa.array(list(probs), pa.list_(pa.float32())),
        }
    )


def _decode_item(item: dict[str, Any], channels: int, size: tuple[int, int]) -> np.ndarray:
    """One source item -> uint8 ``(H, W, C)`` at the run's size.

    Raises:
        CurateError: no local bytes (an unsafe archive member, a URL) or undecodable bytes (the reason).
    """
    if item.get("pre_reason"):
        raise CurateError(f"{item['pre_reason']}: {item.get('pre_error') or 'not read'}")
    if item.get("encode"):  # raw idx pixels "L:HxW"
        from PIL import Image

        h, w = (int(v) for v in item["encode"].split(":")[1].split("x"))
        im = Image.frombytes("L", (w, h), item["data"]).convert("L" if channels == 1 else "RGB").resize((size[1], size[0]))
        arr = np.asarray(im, np.uint8)
        return arr[:, :, None] if arr.ndim == 2 else arr
    if item.get("data") is None and not item.get("path"):
        raise CurateError(f"unsupported_url: predict reads local files only ({item.get('url') or item['source']})")
    data = item.get("data")
    if data is None:
        # ingest's reader: a named pipe in the folder must not block the command forever, a device not read on
        data, reason, error = read_path(item["path"], DEFAULT_MAX_BYTES)
        if data is None:
            raise CurateError(f"{reason}: {error}")
    if not data:
        raise CurateError("empty: file is empty (0 bytes)")
    try:
        with bomb_guard(DEFAULT_MAX_PIXELS):  # as ingest: more pixels than that is an error, not a warning
            return decode(data, channels, size)
    except Exception as exc:  # noqa: BLE001 - any decoder failure on a user's file is that file's error
        bad = decode_failure(exc, data)
        raise CurateError(f"{bad.reason}: {bad.error}") from None


def prediction_schema(classes: list[str]) -> pa.Schema:
    """Columns of ``predict_source``: ``source``, ``label``, ``predicted``, ``confidence``, ``p_<class>``..., ``error``."""
    fields = [("source", pa.string()), ("label", pa.string()), ("predicted", pa.string()), ("confidence", pa.float64())]
    return pa.schema(fields + [(f"p_{c}", pa.float64()) for c in classes] + [("error", pa.string())])


def predict_source(run: LoadedRun, src: str, *, batch_size: int = 512, progress: Any = None) -> pa.Table:
    """Predict a folder, manifest (csv/parquet/jsonl), idx file or archive (anything ``curate ingest`` reads).

    Returns:
        ``prediction_schema(run.classes)``: one row per input in source order; ``label`` is the given label
        (null without one). A file that cannot be read or decoded keeps its row with null predictions and the
        reason in ``error`` (null on every predicted row), so one bad file never stops the rest.
    """
    import contextlib

    from curate.sources import SourceOptions, open_source

    source = open_source(src, "auto", SourceOptions())
    rows: list[dict[str, Any]] = []
    pending: list[tuple[int, np.ndarray]] = []
    classes, ch, size = run.classes, int(run.meta["channels"]), run.size

    def flush() -> None:
        if not pending:
            return
        probs = predict_images(run, np.stack([a for _, a in pending]), batch_size)
        for (at, _), p in zip(pending, probs, strict=True):
            k = int(p.argmax())
            rows[at].update(
                predicted=classes[k], confidence=float(p[k]), **{f"p_{c}": float(v) for c, v in zip(classes, p, strict=True)}
            )
        pending.clear()

    with progress(source.total) if progress else contextlib.nullcontext(None) as advance:
        for item in source.items():
            rows.append({"source": item["source"], "label": item.get("label")})
            try:
                pending.append((len(rows) - 1, _decode_item(item, ch, size)))
            except (CurateError, OSError, TypeError, ValueError) as exc:
                rows[-1]["error"] = str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__
            if len(pending) >= batch_size:
                flush()
            if advance:
                advance(1)
        flush()
    return pa.Table.from_pylist(rows, schema=prediction_schema(classes))


def labeled_scores(run: LoadedRun, table: pa.Table) -> dict[str, Any] | None:
    """The rows of a ``predict_source`` table that were predicted and carry one of the run's classes as label.

    Returns:
        None when no row has such a label, else ``{"ids" (sources), "y" int64 (N,), "probs" float32 (N, K),
        "unlabeled" (predicted rows without a label), "unknown_labels" (label -> rows whose label is no class of the run),
        "errors" (rows not predicted)}``; ``ids``/``y``/``probs`` are what ``curate.learn.metrics.write_report`` scores.
    """
    index = {c: i for i, c in enumerate(run.classes)}
    ids: list[str] = []
    y: list[int] = []
    probs: list[list[float]] = []
    unknown: dict[str, int] = {}
    unlabeled = errors = 0
    cols = [f"p_{c}" for c in run.classes]
    for row in table.select(["source", "label", "error", *cols]).to_pylist():
        if row["error"] is not None:
            errors += 1
        elif row["label"] is None:
            unlabeled += 1
        elif row["label"] not in index:
            unknown[row["label"]] = unknown.get(row["label"], 0) + 1
        else:
            ids.append(row["source"])
            y.append(index[row["label"]])
            probs.append([row[c] for c in cols])
    if not y:
        return None
    return {"ids": ids, "y": np.asarray(y, np.int64), "probs": np.asarray(probs, np.float32), "unlabeled": unlabeled,
            "unknown_labels": unknown, "errors": errors}  # fmt: skip


@torch.no_grad()
def predict_with_features(run: LoadedRun, images: np.ndarray, batch_size: int = 512) -> tuple[np.ndarray, np.ndarray]:
    """uint8 ``(N, H, W, C)`` -> ``(probs (N, K) float32, features (N, D) float32)``.

    The features are the input of the network's last linear layer (the penultimate representation of every
    arch in ``curate.learn.nets``), caught with a forward hook so the nets need no second forward method.
    """
    last = [m for m in run.model.modules() if isinstance(m, torch.nn.Linear)][-1]
    caught: list[torch.Tensor] = []
    handle = last.register_forward_hook(lambda _m, inp, _out: caught.append(inp[0].detach().float().cpu()))
    try:
        probs = predict_images(run, images, batch_size)
    finally:
        handle.remove()
    feats = torch.cat(caught).numpy() if caught else np.zeros((0, last.in_features), np.float32)
    return probs, feats


@dataclass
class OOF:
    """Out-of-sample predictions: every row scored by a fold model that never trained on it.

    Attributes:
        probs: float32 ``(N, K)`` class probabilities.
        ood_z: float64 ``(N,)`` robust z of the log Mahalanobis distance of the row's features to the class
            distributions of its fold model's training rows (``curate.learn.ood``); None unless asked for.
        fold: int ``(N,)`` the fold each row was held out in.
    """

    probs: np.ndarray
    ood_z: np.ndarray | None
    fold: np.ndarray


def oof_predict(
    images: np.ndarray,
    labels: np.ndarray,
    classes: list[str],
    cfg: TrainConfig | None = None,
    *,
    folds: int = 5,
    seed: int = 0,
    ood: bool = False,
    on_fold: Any = None,
    min_steps: int = 300,
    train_mask: np.ndarray | None = None,
) -> OOF:
    """k-fold out-of-sample probabilities (and optionally OOD z-scores) from curate's own networks.

    Args:
        images: uint8 ``(N, H, W, C)``.
        labels: int ``(N,)`` class indices into ``classes``.
        cfg: training settings (epochs, arch, lr ...); checkpoints are not written, no val split is used.
        folds: k (stratified by label, deterministic for ``seed``).
        ood: also score every held-out row's features against its fold model's training rows.
        on_fold: optional ``on_fold(fold_index, folds)`` called after each fold (progress).
        min_steps: on small sets the batch shrinks (to 1/8 of a fold's training rows, at least 16) and the epochs
            grow until each fold model makes at least this many optimizer steps.
        train_mask: bool ``(N,)``; rows where it is False are predicted out-of-sample like the others but never
            trained on (a second pass that leaves out rows an earlier pass judged wrong). None: all rows train.

    Raises:
        CurateError: fewer rows of some class than ``folds`` (stratification impossible) or under 2 classes.
    """
    from sklearn.model_selection import StratifiedKFold

    from curate.learn.data import DecodedSplit, memory_data
    from curate.learn.ood import fit_gaussians, mahalanobis, robust_z
    from curate.learn.train import fit

    cfg = replace(cfg or TrainConfig(epochs=5), patience=0, out=None, resume=False, seed=seed)
    labels = np.asarray(labels, np.int64)
    # Small sets: smaller batches and more epochs, so every fold model gets at least ``min_steps`` updates
    # (3 epochs of 300 images at batch 128 would be 6 steps: a model that has learned nothing flags everything).
    n_train = len(labels) * (folds - 1) // folds
    batch = max(16, min(cfg.batch_size, n_train // 8))
    steps = max(1, n_train // batch)
    cfg = replace(cfg, batch_size=batch, epochs=max(cfg.epochs, -(-min_steps // steps)))
    counts = np.bincount(labels, minlength=len(classes))
    present = counts[counts > 0]
    if len(present) < 2:
        raise CurateError("out-of-sample predictions need at least 2 classes with labeled rows")
    if present.min() < folds:
        small = classes[int(np.flatnonzero(counts == present.min())[0])]
        raise CurateError(f"class {small!r} has {present.min()} labeled rows, fewer than --folds {folds}", hint="lower --folds")
    probs = np.zeros((len(labels), len(classes)), np.float32)
    ood_z = np.zeros(len(labels), np.float64) if ood else None
    fold_of = np.zeros(len(labels), np.int64)
    ids = [str(i) for i in range(len(labels))]
    splitter = StratifiedKFold(folds, shuffle=True, random_state=seed)
    for f, (train_idx, hold_idx) in enumerate(splitter.split(np.zeros(len(labels)), labels)):
        if train_mask is not None:
            train_idx = train_idx[np.asarray(train_mask, bool)[train_idx]]
        part = DecodedSplit(images[train_idx], labels[train_idx], [ids[i] for i in train_idx])
        data = memory_data({"train": part}, classes, None, batch_size=cfg.batch_size, augment=cfg.augment, seed=seed + f)
        res = fit(replace(cfg, seed=seed + f), data)
        run = LoadedRun(res["model"].eval(), {**res["meta"], "normalization": data.normalization}, pick_device(cfg.device), Path("."))
        fold_of[hold_idx] = f
        if ood_z is None:
            probs[hold_idx] = predict_images(run, images[hold_idx])
        else:
            _, train_feats = predict_with_features(run, images[train_idx])
            probs[hold_idx], hold_feats = predict_with_features(run, images[hold_idx])
            means, precision = fit_gaussians(train_feats, labels[train_idx], len(classes))
            ood_z[hold_idx] = robust_z(mahalanobis(hold_feats, means, precision))
        if on_fold:
            on_fold(f, folds)
    return OOF(probs, ood_z, fold_of)


def oof_probs(
    images: np.ndarray, labels: np.ndarray, classes: list[str], cfg: TrainConfig | None = None, *, folds: int = 5, seed: int = 0
) -> np.ndarray:
    """k-fold out-of-sample probabilities, float32 ``(N, K)``: ``oof_predict(...).probs``."""
    return oof_predict(images, labels, classes, cfg, folds=folds, seed=seed).probs
