"""``clean --model M --head model``: label judgements from a model's own classifier head, not a head fitted here.

A linear head on frozen embeddings is fitted to the version's labels, so it learns their errors too: on issue 18's
Fashion-MNIST set with 10% look-alike flips, a linear head on a model's embeddings ranked the flips no better than
curate's own k-fold CNNs (AUROC 0.966 against 0.958), while the same model's own head, trained on 20,000 other,
correctly labeled images, ranked them at 0.992, and excluding what it found closed 77% of the raw -> clean
accuracy gap (61% on a held-out set; BENCHMARKS.md "What the shipped default's shortfall costs"). A classifier that never saw the rows
is out-of-sample by construction, so its probabilities go to cleanlab as they are; no fold models are trained.

Out-of-sample is the user's promise for a foreign model. For ``curate:RUN`` it is checked: when the run's training
version is in this workspace, the checked rows that were among its train rows get no verdict (NaN probabilities,
counted as ``in_sample``); a model that trained on all of them is an error.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa

from curate.errors import CurateError, UsageError

if TYPE_CHECKING:
    from curate.models.base import Backend
    from curate.stage import Progress
    from curate.workspace import Workspace


def head_probs(
    ws: Workspace, rows: pa.Table, classes: list[str], backend: Backend, *, batch_size: int, progress: Progress
) -> tuple[np.ndarray, dict[str, Any]]:
    """The model head's probabilities over the version's ``classes`` for ``rows`` (``sample_id``, ``pack``).

    Args:
        classes: the version's class names; every one must be among the model's (extra model classes are dropped
            and each row renormalized over the version's).

    Returns:
        ``(probs, info)``: float32 ``(N, len(classes))``, NaN rows for images that do not decode and for rows the
        model trained on; ``info`` counts them (``decode_errors``, ``in_sample``).

    Raises:
        UsageError: the model has no classifier head, or lacks one of the version's classes.
        CurateError: a ``curate:`` run that trained on every checked row.
    """
    from curate.models.proba import predict_samples

    if not backend.classes:
        raise UsageError(f"{backend.spec} has no classifier head (no classes in its metadata): use --head linear")
    missing = [c for c in classes if c not in backend.classes]
    if missing:
        shown = ", ".join(repr(c) for c in missing[:5])
        have = ", ".join(backend.classes[:10])
        raise UsageError(f"{backend.spec}: its head has no class {shown} of this version (its classes: {have})")
    seen = trained_on(ws, backend, rows.column("sample_id").to_pylist())
    if seen.all():
        raise CurateError(
            f"{backend.spec} was trained on all {len(seen):,} rows it would judge: its probabilities are not out-of-sample",
            hint="use --head linear (a k-fold head on its embeddings), or a run trained on other images",
        )
    todo = np.flatnonzero(~seen)
    raw, errors = predict_samples(ws, rows.take(pa.array(todo, pa.int64())), backend, batch_size=batch_size,
                                  progress=progress, label=f"clean ({backend.spec}, its head)")  # fmt: skip
    cols = raw[:, [backend.classes.index(c) for c in classes]]
    probs = np.full((rows.num_rows, len(classes)), np.nan, np.float32)
    probs[todo] = cols / np.maximum(cols.sum(1, keepdims=True), 1e-12)
    info = {"head": "model", "in_sample": int(seen.sum()), "decode_errors": len(errors),
            "mass_on_other_classes": round(float(np.nanmean(1 - cols.sum(1))), 4) if len(todo) else 0.0}  # fmt: skip
    return probs, info


def trained_on(ws: Workspace, backend: Backend, ids: list[str]) -> np.ndarray:
    """bool ``(len(ids),)``: the rows a ``curate:`` run's training version (when it is in ``ws``) had in its train
    split; all False for other backends and for runs trained elsewhere.

    A checkpoint names its version by id only, so a run from another workspace whose version id also exists here
    is checked against this workspace's version of that id; sample_ids are content hashes, so only rows with the
    very same bytes can be withheld by mistake.
    """
    version = getattr(backend, "dataset_version", None)
    if backend.kind != "curate" or not version or version not in ws.version_ids():
        return np.zeros(len(ids), bool)
    import pyarrow.compute as pc

    from curate.schema import OK

    t = ws.samples(version).select(["sample_id", "split", "status"])
    train = pc.and_(pc.equal(t.column("status"), OK), pc.equal(pc.fill_null(t.column("split"), "train"), "train"))
    used = set(t.filter(train).column("sample_id").to_pylist())
    return np.array([s in used for s in ids], bool)
