"""Embeddings of a workspace's samples, cached per (sample_id, model digest) in version state.

Embedding is the slow part of every judgement on frozen embeddings (a ViT on a CPU does tens of images a second;
the linear head after it takes seconds for 60k rows), so a run stores what it embedded in its version's
``state/embeddings-<digest[:16]>.parquet`` (``sample_id`` + ``embedding``, the full digest in the schema
metadata) and later runs with the same model read them back from *any* version of the workspace, newest first:
a rerun of ``clean`` with other thresholds is a sibling of the first run, not its child, so the lineage alone
would miss it. Only newly embedded rows are stored, like dedupe's signatures. ``embeddings:FILE`` is not cached:
its vectors are already a file.
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from curate import executors
from curate.errors import CurateError
from curate.models import load_backend
from curate.models.actors import Embedder, ModelHandle, column_vectors
from curate.models.base import Backend

if TYPE_CHECKING:
    from curate.workspace import Workspace

BATCH_ROWS = 1024  # blobs read (and held) per embed call: bounded memory, full model batches


def cache_name(digest: str) -> str:
    """The state file of a model's embeddings: ``embeddings-<first 16 hex of its digest>.parquet``."""
    return f"embeddings-{digest[:16]}.parquet"


@dataclass
class Embedded:
    """What ``embed_samples`` returns.

    Attributes:
        vectors: float32 ``(N, D)`` in the order of the rows given.
        state: state files for the new version (the newly embedded rows), name -> bytes; empty when nothing is new.
        computed / cached / from_file: rows embedded now / read from the workspace / read from an ``embeddings:`` file.
    """

    vectors: np.ndarray
    state: dict[str, bytes] = field(default_factory=dict)
    computed: int = 0
    cached: int = 0
    from_file: int = 0


def read_cached(ws: Workspace, digest: str, ids: Sequence[str]) -> dict[str, np.ndarray]:
    """``sample_id -> float32 (D,)`` for the ``ids`` any version stores for the model ``digest`` (newest first)."""
    want = set(ids)
    found: dict[str, np.ndarray] = {}
    name = cache_name(digest)
    for vid in reversed(ws.version_ids()):
        if not want:
            break
        path = ws.state_path(vid, name)
        if not path.exists() or (pq.read_schema(path).metadata or {}).get(b"model_digest") != digest.encode():
            continue
        t = pq.read_table(path)
        t = t.filter(pc.is_in(t.column("sample_id"), pa.array(sorted(want), pa.string())))
        if not t.num_rows:
            continue
        vec = t.column("embedding").combine_chunks()
        mat = np.asarray(vec.flatten().to_numpy(zero_copy_only=False), np.float32).reshape(t.num_rows, -1)
        for sid, row in zip(t.column("sample_id").to_pylist(), mat, strict=True):
            found[sid] = row
        want -= set(found)
    return found


def cache_bytes(backend: Backend, ids: Sequence[str], vectors: np.ndarray) -> bytes:
    """Serialise newly embedded rows: ``sample_id``, ``embedding`` (fixed-size float32 list), the digest in the metadata."""
    dim = int(vectors.shape[1]) if vectors.ndim == 2 else 0
    flat = pa.array(np.ascontiguousarray(vectors, np.float32).reshape(-1))
    table = pa.table({"sample_id": pa.array(list(ids), pa.string()), "embedding": pa.FixedSizeListArray.from_arrays(flat, dim)})
    table = table.replace_schema_metadata({"model_digest": backend.digest, "spec": backend.spec, "dim": str(dim)})
    buf = io.BytesIO()
    pq.write_table(table, buf, compression="zstd")
    return buf.getvalue()


def embed_samples(
    ws: Workspace,
    rows: pa.Table,
    backend: Backend,
    *,
    load: Callable[[], Backend] | None = None,
    progress: Callable[..., Any] | None = None,
) -> Embedded:
    """Embeddings of ``rows`` (``sample_id``, ``pack``): cached ones read back, the rest embedded from their blobs.

    The embedding runs as executor actors (``curate.models.actors.Embedder``): in this process with ``backend``
    on the local executor, on Ray one model load per actor (a GPU each when the cluster has them), results in order.

    Args:
        backend: the model, loaded here (its digest keys the cache).
        load: a picklable zero-argument callable loading the same model where an actor runs (a
            ``functools.partial`` of ``load_backend``); None: ``load_backend(backend.spec, ...)`` with its batch
            size and device ``auto``.
        progress: optional ``progress(description, total)`` -> context manager yielding ``advance(n)``.

    Raises:
        CurateError: an ``embeddings:`` file lacks some of the ids (the file and the count named), the model rejects
            the images (the model named), or rows have no bytes in the blob packs.
    """
    ids = rows.column("sample_id").to_pylist()
    if backend.kind == "embeddings":
        vectors = backend.embed_ids(ids)  # type: ignore[attr-defined]
        return Embedded(np.asarray(vectors, np.float32), from_file=len(ids))
    cached = read_cached(ws, backend.digest, ids)
    todo = rows.filter(pa.array([sid not in cached for sid in ids], pa.bool_())).select(["sample_id", "pack"])
    new: dict[str, np.ndarray] = {}
    bar = progress(f"embed ({backend.spec})", todo.num_rows) if progress and todo.num_rows else contextlib.nullcontext(None)
    handle = ModelHandle(load or partial(load_backend, backend.spec, workspace=ws.root, batch_size=backend.batch_size), backend)
    with bar as advance:
        batches = ws.blobs.iter_packs(todo, batch_rows=BATCH_ROWS)
        for out in executors.map_batches_actor(Embedder, batches, handle, workers=None):
            new.update(zip(out.column("sample_id").to_pylist(), column_vectors(out.column("embedding")), strict=True))
            if advance:
                advance(out.num_rows)
    if len(new) != todo.num_rows:
        raise CurateError(f"{todo.num_rows - len(new)} samples have no bytes in the blob packs", hint="was `curate gc` run?")
    dims = {len(v) for v in (*cached.values(), *new.values())}
    if len(dims) > 1:
        raise CurateError(f"{backend.spec}: embeddings of different lengths {sorted(dims)} for one model digest")
    dim = dims.pop() if dims else 0
    vectors = np.stack([cached[s] if s in cached else new[s] for s in ids]) if ids else np.zeros((0, dim), np.float32)
    state = {}
    if new:
        order = [s for s in ids if s in new]  # the rows' order: the same rows give the same bytes
        state[cache_name(backend.digest)] = cache_bytes(backend, order, np.stack([new[s] for s in order]))
    return Embedded(vectors.astype(np.float32, copy=False), state, computed=len(new), cached=len(cached))
