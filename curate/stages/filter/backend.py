"""``filter --model KIND:WHAT``: scoring with any model backend (``curate.models``) instead of a run folder.

Two ways a backend defines the task's probabilities:

- **its own head** (``head = "model"``): a backend with classes (a TorchScript/ONNX export with classes in its
  metadata, a transformers model with a classification head) scores every selected row with
  ``predict_proba``, like a run folder does;
- **a linear head on its embeddings** (``head = "linear"``): a backend without classes (``hf:`` without a head,
  ``embeddings:FILE``) has no notion of the task, so the task is defined by the version's labeled rows: the
  included (``ok``) labeled rows of split ``train`` (or not split yet) are the *fit rows*, their labels the
  classes, and a logistic regression on the frozen embeddings (``curate.models.heads``) gives the probabilities.
  A selected row that is a fit row is scored out of sample (k-fold: by a model that never saw it, else every
  labeled row would pass on memory); any other row by one model fitted on all fit rows.

Embeddings are cached per (sample_id, model digest) in the version's state (``curate.models.cache``), so a rerun
with another threshold embeds nothing. Probabilities come back in the order of the rows asked for, NaN where an
image cannot be decoded (its error recorded): the same contract as the run-folder path in ``classify``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from curate.errors import CurateError
from curate.schema import OK

if TYPE_CHECKING:
    from curate.models import Backend
    from curate.stage import Progress
    from curate.stages.filter import FilterConfig
    from curate.workspace import Workspace

HEAD_MODEL, HEAD_LINEAR = "model", "linear"


def is_backend_spec(model: str | None) -> bool:
    """True for ``KIND:WHAT`` with a backend kind other than ``curate`` (a ``curate:RUN`` is scored as a run
    folder, exactly as before); False for a plain run folder or checkpoint path."""
    from curate.models import KINDS

    kind, sep, _ = str(model or "").partition(":")
    return bool(sep) and kind in KINDS and kind != "curate"


def fit_mask(table: pa.Table) -> np.ndarray:
    """bool ``(N,)``: the rows that define the task for a linear head: ``ok``, labeled, split ``train`` or none."""
    ok = pc.fill_null(pc.equal(table.column("status"), OK), False)
    labeled = pc.is_valid(table.column("label"))
    train = pc.fill_null(pc.equal(table.column("split"), "train"), True)
    return np.asarray(pc.and_(pc.and_(ok, labeled), train).to_numpy(zero_copy_only=False), bool)


@dataclass
class Judge:
    """A loaded backend and how it scores: what ``key`` resolves and ``run`` uses.

    Attributes:
        backend: the loaded model.
        head: ``model`` (its own classes) or ``linear`` (fitted on the version's labeled train rows).
        classes: the class names in probability order (the model's, or the fit rows' sorted labels).
    """

    backend: Backend
    head: str
    classes: list[str] = field(default_factory=list)

    def describe(self) -> dict[str, Any]:
        """What the version's stats and config record: the backend's ``describe()``, the head and its classes."""
        return {**self.backend.describe(), "head": self.head, "head_classes": list(self.classes)}


def load_judge(ws: Workspace, table: pa.Table, cfg: FilterConfig) -> Judge:
    """Load ``cfg.model`` and decide its head (module doc).

    Raises:
        CurateError: the model cannot be loaded (one line naming it); an embeddings-only model and fewer than 2
            classes among the version's labeled train rows.
    """
    from curate.models import load_backend

    backend = load_backend(str(cfg.model), workspace=ws.root, device=cfg.device, batch_size=cfg.batch_size)
    if backend.classes:
        return Judge(backend, HEAD_MODEL, list(backend.classes))
    mask = fit_mask(table)
    labels = table.column("label").filter(pa.array(mask)).to_pylist()
    classes = sorted(set(labels))
    if len(classes) < 2:
        raise CurateError(
            f"{backend.spec} has no classification head, and the version's labeled train rows have {len(classes)} class(es): "
            "a linear head on its embeddings needs at least 2",
            hint="label and split the task's rows first, or give a model with classes",
        )
    return Judge(backend, HEAD_LINEAR, classes)


def score_rows(
    ws: Workspace, table: pa.Table, sel_idx: np.ndarray, judge: Judge, cfg: FilterConfig, progress: Progress
) -> tuple[np.ndarray, dict[str, str], dict[str, bytes], dict[str, Any]]:
    """Probabilities of the table rows ``sel_idx`` (module doc).

    Returns:
        ``(probs, errors, state, info)``: float32 ``(len(sel_idx), K)`` in ``judge.classes`` order (NaN rows: not
        decodable), sample_id -> decode error, state files (new cached embeddings), stats for the version.
    """
    if judge.head == HEAD_MODEL:
        from curate.models.proba import predict_samples

        rows = table.take(pa.array(sel_idx, pa.int64()))
        probs, errors = predict_samples(ws, rows, judge.backend, batch_size=cfg.batch_size, progress=progress,
                                        label=f"filter ({judge.backend.spec})")  # fmt: skip
        return probs, errors, {}, {}
    return _score_with_linear(ws, table, sel_idx, judge, cfg, progress)


def _score_with_linear(
    ws: Workspace, table: pa.Table, sel_idx: np.ndarray, judge: Judge, cfg: FilterConfig, progress: Progress
) -> tuple[np.ndarray, dict[str, str], dict[str, bytes], dict[str, Any]]:
    """Embed the fit rows and the selected rows (cached), fit the head, score out of sample where it applies."""
    from curate.models.cache import embed_samples
    from curate.models.heads import linear_scores

    fit_idx = np.flatnonzero(fit_mask(table))
    union = np.union1d(fit_idx, sel_idx)
    t0 = time.perf_counter()
    emb = embed_samples(ws, table.take(pa.array(union, pa.int64())).select(["sample_id", "pack"]), judge.backend, progress=progress)
    t_embed = time.perf_counter() - t0
    ids = np.array(table.column("sample_id").to_pylist(), dtype=object)
    x_fit = emb.vectors[np.searchsorted(union, fit_idx)]
    index = {c: i for i, c in enumerate(judge.classes)}
    labels = table.column("label").to_pylist()
    y_fit = np.array([index[labels[i]] for i in fit_idx], np.int64)
    # fit in sample_id order: the folds then do not depend on the table's row order (as clean does)
    order = np.argsort(ids[fit_idx], kind="stable")
    others = np.setdiff1d(sel_idx, fit_idx)
    t1 = time.perf_counter()
    fit_probs, other_probs = linear_scores(x_fit[order], y_fit[order], emb.vectors[np.searchsorted(union, others)],
                                           len(judge.classes), folds=cfg.folds, seed=cfg.seed)  # fmt: skip
    by_row = np.zeros((len(table), len(judge.classes)), np.float32)
    by_row[fit_idx[order]] = fit_probs
    by_row[others] = other_probs
    emb_info = {"computed": emb.computed, "cached": emb.cached, "from_file": emb.from_file, "dim": int(emb.vectors.shape[1])}
    fit_info = {"rows": len(fit_idx), "folds": cfg.folds, "scored_out_of_sample": int(np.isin(sel_idx, fit_idx).sum())}
    info = {
        "embeddings": {**emb_info, "seconds": round(t_embed, 2)},
        "head_fit": {**fit_info, "seconds": round(time.perf_counter() - t1, 2)},
    }
    return by_row[sel_idx], {}, emb.state, info
