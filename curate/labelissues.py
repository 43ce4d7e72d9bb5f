"""The model side of ``curate clean``: images in, out-of-sample predictions and cleanlab's verdicts out.

- ``load_images``: the checked rows' blobs decoded to one uint8 ``(N, H, W, C)`` array (the training geometry).
- ``OOFCache``: out-of-sample probabilities are the expensive part (k models), so they are stored in the version's
  ``state/clean_oof.parquet`` under a key of the checked (sample_id, label) pairs and every setting that changes
  the models; any later run with the same key, from any version of the workspace, reuses them.
- ``read_pred_probs``: users' own ``N x K`` probabilities (Parquet/CSV with ``sample_id``).
- ``label_issues``: cleanlab's ``find_label_issues`` and ``get_label_quality_scores`` over the probabilities.
"""

from __future__ import annotations

import hashlib
import io
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from curate.errors import CurateError, UsageError

OOF_STATE = "clean_oof.parquet"
OOF_KEY_STATE = "clean_oof.json"
GRAY_MODES = frozenset({"1", "L", "LA", "I", "I;16", "F"})
#: cleanlab ``filter_by`` methods; the default is chosen by bench/bench_clean.py (module doc of curate.stages.clean).
METHODS = ("low_normalized_margin", "low_self_confidence", "prune_by_noise_rate", "both", "confident_learning", "predicted_neq_given")


def geometry(rows: pa.Table, image_size: int | None, max_side: int = 64) -> tuple[int, tuple[int, int]]:
    """``(channels, (H, W))`` the checking models see: 1 channel when every image is grayscale, else 3; the
    shared size when all images have one, else ``image_size`` or the median longer side capped at ``max_side``
    (the models only need to tell classes apart, and cost grows with the pixel count)."""
    modes = set(rows.column("mode").to_pylist())
    channels = 1 if modes and modes <= GRAY_MODES else 3
    if image_size:
        return channels, (image_size, image_size)
    hw = set(zip(rows.column("height").to_pylist(), rows.column("width").to_pylist(), strict=True))
    if len(hw) == 1:
        h, w = next(iter(hw))
        if max(h, w) <= max_side:
            return channels, (int(h), int(w))
    side = min(max_side, int(np.median([max(h, w) for h, w in hw])))
    return channels, (side, side)


def load_images(ws: Any, rows: pa.Table, channels: int, size: tuple[int, int], *, progress: Any = None) -> np.ndarray:
    """Decode the blobs of ``rows`` (``sample_id``, ``pack``) to uint8 ``(N, H, W, C)`` in the order of ``rows``.

    Raises:
        CurateError: a row has no bytes in the packs, or its bytes do not decode (named by sample_id).
    """
    import contextlib

    from curate.learn.shards import decode

    index = {sid: i for i, sid in enumerate(rows.column("sample_id").to_pylist())}
    out = np.zeros((len(index), size[0], size[1], channels), np.uint8)
    seen = 0
    with progress(len(index)) if progress else contextlib.nullcontext(None) as advance:
        for batch in ws.blobs.iter_packs(rows.select(["sample_id", "pack"]), batch_rows=2048):
            for sid, data in zip(batch.column("sample_id").to_pylist(), batch.column("data").to_pylist(), strict=True):
                try:
                    out[index[sid]] = decode(data, channels, size)
                except Exception as exc:  # noqa: BLE001 - any decoder failure is a data error here
                    raise CurateError(f"sample {sid} cannot be decoded: {type(exc).__name__}: {exc}") from exc
            seen += batch.num_rows
            if advance:
                advance(batch.num_rows)
    if seen != len(index):
        raise CurateError(f"{len(index) - seen} samples have no bytes in the blob packs", hint="was `curate gc` run?")
    return out


def oof_key(ids: Sequence[str], labels: Sequence[str], classes: Sequence[str], settings: dict[str, Any]) -> str:
    """sha256 over the checked rows (sample_id and label, in sample_id order), the class list and the model settings."""
    h = hashlib.sha256(json.dumps({"classes": list(classes), "settings": settings}, sort_keys=True).encode())
    # sorted: a stage that reorders rows (split) must not invalidate the cache; the fold assignment follows
    # the row order, so ``_oof`` also trains in sample_id order
    for sid, lab in sorted(zip(ids, labels, strict=True)):
        h.update(f"{sid}\t{lab}\n".encode())
    return h.hexdigest()


class OOFCache:
    """Out-of-sample results stored in version state, found again by key."""

    def __init__(self, ws: Any) -> None:
        self.ws = ws

    def find(self, key: str, ids: Sequence[str]) -> tuple[np.ndarray, np.ndarray, str] | None:
        """``(probs (N, K) float32, ood_z (N,) float64, version)`` for ``ids`` (in that order) from the newest
        version whose stored key is ``key``."""
        for vid in reversed(self.ws.version_ids()):
            meta = self.ws.state_path(vid, OOF_KEY_STATE)
            if meta.exists() and json.loads(meta.read_text()).get("key") == key:
                t = pq.read_table(self.ws.state_path(vid, OOF_STATE))
                where = {sid: i for i, sid in enumerate(t.column("sample_id").to_pylist())}
                order = np.array([where[sid] for sid in ids], np.int64)
                probs = np.asarray(t.column("probs").to_pylist(), np.float32)[order]
                return probs, t.column("ood_z").to_numpy(zero_copy_only=False).astype(np.float64)[order], vid
        return None

    @staticmethod
    def state(key: str, ids: Sequence[str], probs: np.ndarray, ood_z: np.ndarray, classes: Sequence[str]) -> dict[str, bytes]:
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
        return {OOF_STATE: buf.getvalue(), OOF_KEY_STATE: json.dumps(key_doc, indent=2).encode()}


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
        ``suggested_confidence`` float ``(N,)``.
    """
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
    return {
        "is_label_issue": is_issue,
        "label_quality": np.asarray(quality, np.float64),
        "suggested": suggested,
        "suggested_confidence": probs[np.arange(len(probs)), suggested].astype(np.float64),
    }
