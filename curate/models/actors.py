"""Model inference as executor actors: one model load per worker, the same code in this process and on Ray.

A stage that runs a model over samples hands ``curate.executors.map_batches_actor`` one of the callable classes
below (``Embedder`` for ``Backend.embed``, ``Prober`` for ``Backend.predict_proba``) and a ``ModelHandle``: how
to load the model (a picklable ``load()``), plus the model the driver has already loaded. On the local executor
the class is built here and reuses that model (no second load); on Ray, pickling drops the loaded model, so each
actor loads its own, once, on a GPU when the cluster has one (``device="auto"`` resolves on the actor's node).
The batches and the results are the same tables either way.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pyarrow as pa


class ModelHandle:
    """How to load a model, and (in the process that built it) the model already loaded.

    Args:
        load: a picklable zero-argument callable that returns the model (a ``functools.partial`` of a loader).
        loaded: the model ``load`` gave in this process, if any; it never travels: a pickled handle loads anew.
    """

    def __init__(self, load: Callable[[], Any], loaded: Any = None) -> None:
        self.load = load
        self._loaded = loaded

    def get(self) -> Any:
        """The model: the one loaded here, else ``load()`` (once)."""
        if self._loaded is None:
            self._loaded = self.load()
        return self._loaded

    def __getstate__(self) -> dict[str, Any]:
        # A model (torch weights, an onnxruntime session) is not shipped: the actor loads it where it runs.
        return {"load": self.load, "_loaded": None}


def vectors_column(vectors: np.ndarray) -> pa.FixedSizeListArray:
    """float32 ``(N, D)`` -> a fixed-size list column of ``D`` float32 per row."""
    dim = int(vectors.shape[1]) if vectors.ndim == 2 else 0
    flat = pa.array(np.ascontiguousarray(vectors, np.float32).reshape(-1), pa.float32())
    return pa.FixedSizeListArray.from_arrays(flat, dim)


def column_vectors(column: pa.ChunkedArray | pa.Array) -> np.ndarray:
    """A fixed-size list column of float32 -> ``(N, D)`` float32 (the inverse of ``vectors_column``)."""
    arr = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    return np.asarray(arr.flatten().to_numpy(zero_copy_only=False), np.float32).reshape(len(arr), arr.type.list_size)


class Embedder:
    """Actor work for ``Backend.embed``: ``sample_id``/``data`` batches -> ``sample_id``, ``embedding`` (D float32).

    Args:
        model: a ``ModelHandle`` whose ``load()`` returns a ``curate.models.Backend``.
    """

    def __init__(self, model: ModelHandle) -> None:
        self.backend = model.get()

    def __call__(self, batch: pa.Table) -> pa.Table:
        vectors = self.backend.embed(batch.column("data").to_pylist())
        return pa.table({"sample_id": batch.column("sample_id"), "embedding": vectors_column(vectors)})


class Prober:
    """Actor work for ``Backend.predict_proba``: ``sample_id``/``data`` batches -> ``sample_id``, ``probs`` (K
    float32 in ``backend.classes`` order; NaN where the image does not decode) and ``error`` (null, or why it did
    not decode), in the batch's order. One bad image neither sinks its batch nor reaches the model.

    Args:
        model: a ``ModelHandle`` whose ``load()`` returns a ``curate.models.Backend`` with a head.
    """

    def __init__(self, model: ModelHandle) -> None:
        self.backend = model.get()

    def __call__(self, batch: pa.Table) -> pa.Table:
        from curate.models.proba import decode_blobs

        images, bad = decode_blobs(batch.column("data").to_pylist())
        probs = np.full((batch.num_rows, len(self.backend.classes or [])), np.nan, np.float32)
        if images:
            probs[[i for i in range(batch.num_rows) if i not in bad]] = self.backend.predict_proba(images)
        errors = pa.array([bad.get(i) for i in range(batch.num_rows)], pa.string())
        return pa.table({"sample_id": batch.column("sample_id"), "probs": vectors_column(probs), "error": errors})
