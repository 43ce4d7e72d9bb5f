"""The model side of ``curate clean``: images in, out-of-sample predictions and cleanlab's verdicts out.

- ``cnn_oof``: k-fold out-of-sample probabilities from curate's own networks, trained on the checked rows.
- ``load_images``: the checked rows' blobs decoded to one uint8 ``(N, H, W, C)`` array (the training geometry).
- ``OOFCache``: out-of-sample probabilities are the expensive part (k models), so they are stored in the version's
  ``state/clean_oof.parquet`` under a key of the checked (sample_id, label) pairs and every setting that changes
  the models; any later run with the same key, from any version of the workspace, reuses them.
- ``read_pred_probs``: users' own ``N x K`` probabilities (Parquet/CSV with ``sample_id``).
- ``label_issues``: cleanlab's ``find_label_issues`` and ``get_label_quality_scores`` over the probabilities.
- ``embedding_judgements``: ``--model``: a backend's frozen embeddings (cached per sample and model digest,
  ``curate.models.cache``), a k-fold linear head for the probabilities and kNN distances for outliers.
"""

from __future__ import annotations

import hashlib
import io
import json
import time
from collections.abc import Sequence
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from curate.errors import UsageError
from curate.learn.blobimages import geometry, load_images

if TYPE_CHECKING:
    from curate.stage import Progress
    from curate.workspace import Workspace

OOF_STATE = "clean_oof.parquet"
OOF_KEY_STATE = "clean_oof.json"
#: cleanlab ``filter_by`` methods; the default is chosen by bench/bench_clean.py (module doc of curate.stages.clean).
METHODS = ("low_normalized_margin", "low_self_confidence", "prune_by_noise_rate", "both", "confident_learning", "predicted_neq_given")


def oof_key(ids: Sequence[str], labels: Sequence[str], classes: Sequence[str], settings: dict[str, Any]) -> str:
    """sha256 over the checked rows (sample_id and label, in sample_id order), the class list and the model settings."""
    h = hashlib.sha256(json.dumps({"classes": list(classes), "settings": settings}, sort_keys=True).encode())
    # sorted: a stage that reorders rows (split) must not invalidate the cache; the fold assignment follows
    # the row order, so ``cnn_oof`` also trains in sample_id order
    for sid, lab in sorted(zip(ids, labels, strict=True)):
        h.update(f"{sid}\t{lab}\n".encode())
    return h.hexdigest()


def msp_score(probs: np.ndarray) -> np.ndarray:
    """0..1 outlier score ``(N,)`` from probabilities ``(N, K)``: ``1 - max probability`` scaled by its largest value
    ``1 - 1/K`` (max-softmax probability, Hendrycks & Gimpel 2017), so the scale does not depend on K."""
    return (1.0 - probs.max(1)) / max(1.0 - 1.0 / probs.shape[1], 1e-9)


MODEL_SETTINGS = ("folds", "arch", "epochs", "batch_size", "lr", "augment", "image_size", "seed")


def cnn_oof(
    ws: Workspace,
    rows: pa.Table,
    labels: np.ndarray,
    classes: list[str],
    cfg: Any,
    progress: Progress,
    *,
    train_mask: np.ndarray | None = None,
    name: str = "clean_oof",
) -> tuple[Any, Any, dict[str, Any]]:
    """Out-of-sample ``(probs, ood_z, info)`` for ``rows`` (``sample_id``, ``pack``, ``mode``, ``width``, ``height``)
    from k of curate's own networks (``cfg``: ``CleanConfig``): cached, or trained now.

    ``train_mask`` (bool, one per row of ``rows``): rows where it is False are predicted but never trained on (the
    second pass, ``curate.stages.clean.passes``); they are part of the cache key. ``name``: the state files'
    stem, so each pass keeps its own cache.
    """
    from curate.learn.predict import oof_predict
    from curate.learn.train import TrainConfig

    ids = rows.column("sample_id").to_pylist()
    channels, size = geometry(rows, cfg.image_size)
    settings = {k: getattr(cfg, k) for k in MODEL_SETTINGS} | {"channels": channels, "size": list(size)}
    if train_mask is not None:
        left_out = sorted(sid for sid, keep in zip(ids, train_mask, strict=True) if not keep)
        settings["left_out_sha256"] = hashlib.sha256("\n".join(left_out).encode()).hexdigest()
    key = oof_key(ids, [classes[i] for i in labels], classes, settings)
    cache = OOFCache(ws, name)
    hit = cache.find(key, ids)
    if hit is not None:
        return hit[0], hit[1], {"oof": "cached", "oof_version": hit[2], "state": {}}
    # train in sample_id order: the folds then do not depend on the table's row order
    order = np.argsort(np.array(ids), kind="stable")
    rows, labels, ids = rows.take(pa.array(order)), labels[order], [ids[i] for i in order]
    mask = None if train_mask is None else np.asarray(train_mask, bool)[order]
    back = np.argsort(order, kind="stable")
    images = load_images(ws, rows, channels, size, progress=progress)
    tcfg = TrainConfig(arch=cfg.arch, epochs=cfg.epochs, batch_size=cfg.batch_size, lr=cfg.lr, augment=cfg.augment, device=cfg.device)
    t0 = time.perf_counter()
    with progress(f"{cfg.folds}-fold models", cfg.folds) as advance:
        res = oof_predict(
            images, labels, classes, tcfg, folds=cfg.folds, seed=cfg.seed, ood=True, on_fold=lambda f, k: advance(1), train_mask=mask
        )
    info = {"oof": "computed", "oof_seconds": round(time.perf_counter() - t0, 1), "input": [channels, *size]}
    state = cache.state(key, ids, res.probs, res.ood_z, classes)
    return res.probs[back], res.ood_z[back], {**info, "state": state}


class OOFCache:
    """Out-of-sample results stored in version state, found again by key."""

    def __init__(self, ws: Workspace, name: str = "clean_oof") -> None:
        self.ws = ws
        self.files = (f"{name}.parquet", f"{name}.json")  # (OOF_STATE, OOF_KEY_STATE) for the first pass

    def find(self, key: str, ids: Sequence[str]) -> tuple[np.ndarray, np.ndarray, str] | None:
        """``(probs (N, K) float32, ood_z (N,) float64, version)`` for ``ids`` (in that order) from the newest
        version whose stored key is ``key``."""
        for vid in reversed(self.ws.version_ids()):
            meta = self.ws.state_path(vid, self.files[1])
            if meta.exists() and json.loads(meta.read_text()).get("key") == key:
                t = pq.read_table(self.ws.state_path(vid, self.files[0]))
                where = {sid: i for i, sid in enumerate(t.column("sample_id").to_pylist())}
                order = np.array([where[sid] for sid in ids], np.int64)
                probs = np.asarray(t.column("probs").to_pylist(), np.float32)[order]
                return probs, t.column("ood_z").to_numpy(zero_copy_only=False).astype(np.float64)[order], vid
        return None

    def state(self, key: str, ids: Sequence[str], probs: np.ndarray, ood_z: np.ndarray, classes: Sequence[str]) -> dict[str, bytes]:
        """State files to commit with the version: the probabilities/OOD scores and their key."""
        t = pa.table(
            {
                "sample_id": pa.array(list(ids), pa.string()),
                "probs": pa.array(list(probs.astype(np.float32)), pa.list_(pa.float32())),
                "ood_z": pa.array(ood_z, pa.float64()),
            }
        )
        buf = io.BytesIO()
        pq.write_table(t, buf)
        key_doc = {"key": key, "classes": list(classes), "rows": len(ids)}
        return {self.files[0]: buf.getvalue(), self.files[1]: json.dumps(key_doc, indent=2).encode()}


def read_pred_probs(path: str | Path, ids: Sequence[str], classes: Sequence[str]) -> np.ndarray:
    """Users' probabilities for the checked rows: float32 ``(N, K)`` in ``classes`` order, NaN rows where missing.

    The file (Parquet, CSV or JSONL) has ``sample_id`` and either one column per class (named ``<class>`` or
    ``p_<class>``) or a list column ``probs`` in the dataset's class order (``curate export``'s ``dataset.json``).

    Raises:
        UsageError: unreadable file, no ``sample_id``, classes missing, wrong list length, rows not summing to 1.
    """
    import pyarrow.csv as pcsv
    import pyarrow.json as pjson

    p = Path(path)
    if not p.is_file():
        raise UsageError(f"--pred-probs {p}: no such file")
    try:
        t = {".csv": pcsv.read_csv, ".jsonl": pjson.read_json, ".json": pjson.read_json}.get(p.suffix.lower(), pq.read_table)(p)
    except (pa.ArrowInvalid, OSError) as exc:
        raise UsageError(f"--pred-probs {p}: cannot read: {str(exc).splitlines()[0]}") from exc
    if "sample_id" not in t.column_names:
        raise UsageError(f"--pred-probs {p}: no sample_id column (columns: {', '.join(t.column_names[:8])})")
    if "probs" in t.column_names:
        mat = np.asarray(t.column("probs").to_pylist(), np.float64)
        if mat.ndim != 2 or mat.shape[1] != len(classes):
            raise UsageError(
                f"--pred-probs {p}: probs has {mat.shape[-1] if mat.ndim == 2 else '?'} columns, the dataset {len(classes)} classes"
            )
    else:
        cols = []
        for c in classes:
            name = c if c in t.column_names else f"p_{c}"
            if name not in t.column_names:
                raise UsageError(f"--pred-probs {p}: no column for class {c!r} (expected {c!r} or 'p_{c}', or a probs list column)")
            cols.append(t.column(name).to_numpy(zero_copy_only=False).astype(np.float64))
        mat = np.stack(cols, 1)
    if not np.isfinite(mat).all() or (mat < 0).any() or np.abs(mat.sum(1) - 1).max(initial=0) > 1e-3:
        raise UsageError(f"--pred-probs {p}: every row must be finite, non-negative and sum to 1")
    where = {sid: i for i, sid in enumerate(t.column("sample_id").to_pylist())}
    out = np.full((len(ids), len(classes)), np.nan, np.float32)
    for i, sid in enumerate(ids):
        j = where.get(sid)
        if j is not None:
            out[i] = mat[j]
    return out


def label_issues(labels: np.ndarray, probs: np.ndarray, *, method: str = "low_normalized_margin") -> dict[str, np.ndarray]:
    """cleanlab over out-of-sample probabilities.

    Args:
        labels: int ``(N,)`` given labels; probs: float ``(N, K)`` out-of-sample probabilities.
        method: cleanlab ``filter_by``.

    Returns:
        ``is_label_issue`` bool ``(N,)``; ``label_quality`` float ``(N,)`` (cleanlab self-confidence: the
        probability of the given label, 1 clean .. 0 issue); ``suggested`` int ``(N,)`` (argmax);
        ``suggested_confidence`` float ``(N,)``; ``given_threshold`` / ``suggested_threshold`` float ``(N,)``: the
        per-class thresholds of cleanlab's confident joint (mean out-of-sample probability of class k over the rows
        labeled k) of the given and of the suggested class (what "confident" means for that class; they fall as
        label noise makes the models less sure); ``estimate_rank`` float ``(N,)``: the row's place when the rows are
        ranked by ``label_quality``, worst first (0 = worst), divided by cleanlab's estimate of how many labels are
        wrong (``num_label_issues``): below 1 = among the estimated count of worst rows (inf when none are estimated).
    """
    from cleanlab.count import num_label_issues
    from cleanlab.filter import find_label_issues
    from cleanlab.rank import get_label_quality_scores

    probs = np.asarray(probs, np.float32)
    # cleanlab needs every class among the labels; classes present only in predictions are folded away by
    # renormalising over the present ones (their probability mass cannot be a given label anyway).
    present = np.unique(labels)
    remap = np.full(probs.shape[1], -1)
    remap[present] = np.arange(len(present))
    sub = probs[:, present]
    sub = sub / np.maximum(sub.sum(1, keepdims=True), 1e-12)
    lab = remap[labels]
    is_issue = np.zeros(len(labels), bool) if len(present) < 2 else np.asarray(find_label_issues(lab, sub, filter_by=method), bool)
    quality = get_label_quality_scores(lab, sub, method="self_confidence") if len(present) >= 2 else np.ones(len(labels))
    suggested = probs.argmax(1)
    n_est = int(num_label_issues(lab, sub)) if len(present) >= 2 else 0
    rank = np.empty(len(labels), np.float64)
    rank[np.argsort(quality, kind="stable")] = np.arange(len(labels))
    thresholds = np.array([probs[labels == k, k].mean() if (labels == k).any() else 1.0 for k in range(probs.shape[1])])
    return {
        "given_threshold": thresholds[labels],
        "suggested_threshold": thresholds[suggested],
        "is_label_issue": is_issue,
        "estimate_rank": rank / n_est if n_est else np.full(len(labels), np.inf),
        "label_quality": np.asarray(quality, np.float64),
        "suggested": suggested,
        "suggested_confidence": probs[np.arange(len(probs)), suggested].astype(np.float64),
    }


def embedding_judgements(
    ws: Workspace,
    table: pa.Table,
    lpos: np.ndarray,
    ok_pos: np.ndarray,
    labels: np.ndarray,
    classes: list[str],
    cfg: Any,
    progress: Progress,
) -> dict[str, Any]:
    """``clean --model``: the model's embeddings of the checked rows, a k-fold linear head (or, with ``--head
    model``, the model's own head: ``curate.stages.clean.modelhead``) and kNN outlier scores.

    Args:
        table: the version's sample table; lpos: positions of the labeled ok rows (``labels`` int ``(L,)`` are
            theirs, indices into ``classes``); ok_pos: positions of every ok row (ascending, like ``lpos``).
        cfg: ``CleanConfig`` (``model``, ``head``, ``device``, ``batch_size``, ``folds``, ``seed``, ``find_*``,
            ``pred_probs``).
        progress: the progress factory (``curate.stage.Progress``).

    Returns:
        ``probs`` float32 ``(L, K)`` out-of-sample (None when not needed), ``outlier_pos`` / ``outlier_score``
        (the ok rows and their 0..1 kNN score; None without ``find_outliers``), ``info`` (stats) and ``state``
        (the new embeddings and ``clean_model.json``: the backend's ``describe()``).
    """
    from curate.models import load_backend
    from curate.models.cache import embed_samples
    from curate.models.heads import KNN_K, knn_outliers

    # A picklable loader: on Ray each embedding actor loads the model itself (curate.models.actors).
    load = partial(load_backend, cfg.model, workspace=ws.root, device=cfg.device, batch_size=cfg.batch_size)
    backend = load()
    out: dict[str, Any] = {"probs": None, "outlier_pos": None, "outlier_score": None,
                           "info": {"oof": "not needed", "model": backend.describe()}, "state": {}}  # fmt: skip
    if cfg.find_mislabels and not cfg.pred_probs and cfg.head == "model":
        from curate.stages.clean.modelhead import head_probs

        t1 = time.perf_counter()
        rows = table.take(pa.array(lpos)).select(["sample_id", "pack"])
        out["probs"], head = head_probs(ws, rows, classes, backend, batch_size=cfg.batch_size, progress=progress)
        out["info"].update(oof="computed", **head, oof_seconds=round(time.perf_counter() - t1, 2))
    linear = cfg.find_mislabels and not cfg.pred_probs and cfg.head == "linear"
    if not (linear or cfg.find_outliers):
        out["state"] = {"clean_model.json": json.dumps({**backend.describe(), "head": cfg.head}, indent=2).encode()}
        return out
    pos = ok_pos if cfg.find_outliers else lpos
    ids = table.column("sample_id").take(pa.array(pos)).to_pylist()
    t0 = time.perf_counter()
    emb = embed_samples(ws, table.take(pa.array(pos)).select(["sample_id", "pack"]), backend, load=load, progress=progress)
    counts = {"computed": emb.computed, "cached": emb.cached, "from_file": emb.from_file, "dim": int(emb.vectors.shape[1])}
    info = out["info"]
    info["embeddings"] = {**counts, "seconds": round(time.perf_counter() - t0, 2)}
    if linear:
        at = np.searchsorted(pos, lpos)
        t1 = time.perf_counter()
        out["probs"], passes = linear_head(emb.vectors[at], labels, np.array(ids)[at], len(classes), cfg)
        info.update(oof="computed", head="linear", oof_seconds=round(time.perf_counter() - t1, 2), **passes)
    if cfg.find_outliers:
        split = table.column("split").to_pylist()
        ref = np.array([split[p] in (None, "train") for p in pos.tolist()], bool)
        out["outlier_pos"] = pos
        out["outlier_score"] = knn_outliers(emb.vectors, ref, k=KNN_K)[1]
        info["outlier_score"] = f"knn cosine, k={KNN_K}, reference: {int(ref.sum())} included train rows"
    model_doc = {**backend.describe(), "head": cfg.head, "embeddings": info["embeddings"], "rows": len(ids)}
    out["state"] = {**emb.state, "clean_model.json": json.dumps(model_doc, indent=2).encode()}
    return out


def linear_head(x: np.ndarray, labels: np.ndarray, ids: np.ndarray, n_classes: int, cfg: Any) -> tuple[np.ndarray, dict[str, Any]]:
    """k-fold out-of-sample probabilities float32 ``(N, K)`` of a logistic regression on embeddings ``x`` ``(N, D)``
    (``NOISY_LABEL_C``), and with ``cfg.passes == 2`` of a second head fitted without the rows the first one's
    verdicts act on (``curate.stages.clean.passes``; the outlier score stays the kNN one); plus stats.

    The rows are fitted in sample_id (``ids``) order, so the folds do not depend on the table's row order (as the
    CNN path does).
    """
    from curate.models.heads import NOISY_LABEL_C, oof_linear

    order = np.argsort(ids, kind="stable")
    back = np.argsort(order, kind="stable")
    probs = oof_linear(x[order], labels[order], n_classes, folds=cfg.folds, seed=cfg.seed, c=NOISY_LABEL_C).probs[back]
    if cfg.passes < 2:
        return probs, {}
    from curate.stages.clean.passes import first_pass_drops

    drops = first_pass_drops(labels, probs.astype(np.float64), cfg)
    again = oof_linear(x[order], labels[order], n_classes, folds=cfg.folds, seed=cfg.seed, c=NOISY_LABEL_C,
                       train_mask=~drops[order])  # fmt: skip
    return again.probs[back], {"pass2": {"left_out": int(drops.sum())}}
