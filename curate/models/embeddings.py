"""``embeddings:FILE``: embeddings computed elsewhere, a Parquet file with ``sample_id`` and one vector column.

A sample's id is the sha256 of its original bytes (curate's identity everywhere), so ``embed`` finds the row of
each image from its bytes; ``embed_ids`` takes the ids directly. The vector column is ``embedding`` (or
``vector``, ``emb``, ``features``, or the only list column): a list or fixed-size list of numbers, one length for
every row. Nothing here needs torch.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from curate.errors import CurateError
from curate.models.base import Backend, ImageLike, Progress, first_line

VECTOR_COLUMNS = ("embedding", "vector", "emb", "features")


@dataclass
class EmbeddingsBackend(Backend):
    """Precomputed vectors: ``index`` maps sample_id -> row of ``vectors`` (float32 ``(M, D)``)."""

    vectors: np.ndarray = field(default_factory=lambda: np.zeros((0, 0), np.float32))
    index: dict[str, int] = field(default_factory=dict)

    @property
    def dim(self) -> int:
        return int(self.vectors.shape[1])

    def embed(self, images: Sequence[ImageLike], *, progress: Progress | None = None) -> np.ndarray:
        """Encoded image bytes -> their rows, float32 ``(N, D)`` (the sample_id is the sha256 of the bytes).

        Raises:
            CurateError: an image is given as a PIL image (it has no identity), or ids are missing from the file.
        """
        ids = []
        for k, img in enumerate(images):
            if not isinstance(img, bytes | bytearray | memoryview):
                raise CurateError(
                    f"{self.spec}: image {k} is a {type(img).__name__}; precomputed embeddings are found by the sha256 of its bytes"
                )
            ids.append(hashlib.sha256(bytes(img)).hexdigest())
        return self.embed_ids(ids, progress=progress)

    def _forward(self, x: np.ndarray, what: str) -> dict[str, np.ndarray]:
        raise CurateError(f"{self.spec}: precomputed embeddings are looked up by sample_id; there is no network to run on pixels")

    def embed_ids(self, sample_ids: Sequence[str], *, progress: Progress | None = None) -> np.ndarray:
        """sample_ids -> float32 ``(N, D)`` rows in the given order.

        Raises:
            CurateError: some ids are not in the file (the count and the first one are named).
        """
        missing = [s for s in sample_ids if s not in self.index]
        if missing:
            raise CurateError(
                f"{self.spec}: {len(missing):,} of {len(sample_ids):,} sample_ids have no embedding (first: {missing[0]})"
            )
        out = self.vectors[[self.index[s] for s in sample_ids]] if sample_ids else np.zeros((0, self.dim), np.float32)
        if progress:
            progress(len(sample_ids))
        return out

    def predict_proba(self, images: Sequence[ImageLike], *, progress: Progress | None = None) -> np.ndarray:
        raise CurateError(f"{self.spec}: precomputed embeddings have no classification head: only embed() works")


def pick_column(spec: str, schema: object) -> str:
    """The vector column: a known name, else the only list column."""
    import pyarrow as pa

    lists = [
        f.name for f in schema if pa.types.is_list(f.type) or pa.types.is_fixed_size_list(f.type) or pa.types.is_large_list(f.type)
    ]
    for name in VECTOR_COLUMNS:
        if name in lists:
            return name
    if len(lists) == 1:
        return lists[0]
    have = ", ".join(f.name for f in schema)
    raise CurateError(
        f"{spec}: no vector column (a list column named {' / '.join(VECTOR_COLUMNS)}, or the only list column); it has {have}"
    )


def load_embeddings(path: Path, expect_dim: int | None = None) -> EmbeddingsBackend:
    """Read and check the whole file (ids unique, one vector length, finite numbers).

    Args:
        expect_dim: the dimension the caller needs (for example the one recorded with a cache); None: any.

    Raises:
        CurateError: not Parquet, no ``sample_id`` or vector column, duplicate ids, rows of different lengths,
            a length other than ``expect_dim``, null or non-finite values.
    """
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    spec = f"embeddings:{path}"
    if not path.is_file():
        raise CurateError(f"{spec}: no such file")
    try:
        table = pq.read_table(path)
    except (pa.ArrowException, OSError) as exc:
        raise CurateError(f"{spec}: not a readable Parquet file ({first_line(exc)})") from None
    if "sample_id" not in table.column_names:
        raise CurateError(f"{spec}: no sample_id column (it has {', '.join(table.column_names)})")
    col = pick_column(spec, table.schema)
    vec = table.column(col).combine_chunks()
    if vec.null_count:
        raise CurateError(f"{spec}: {vec.null_count:,} rows have no {col}")
    lengths = pc.list_value_length(vec).to_numpy(zero_copy_only=False)
    dims = sorted(set(lengths.tolist()))
    if len(dims) > 1 or (dims and dims[0] == 0):
        raise CurateError(f"{spec}: the {col} vectors must all have one length >= 1, found lengths {', '.join(map(str, dims[:5]))}")
    dim = dims[0] if dims else 0
    if expect_dim is not None and dim != expect_dim:
        raise CurateError(f"{spec}: vectors of dimension {dim}, {expect_dim} expected")
    flat = vec.flatten()
    if not (pa.types.is_floating(flat.type) or pa.types.is_integer(flat.type)):
        raise CurateError(f"{spec}: {col} holds {flat.type}, not numbers")
    if flat.null_count:
        raise CurateError(f"{spec}: {col} holds null numbers")
    vectors = np.asarray(flat.to_numpy(zero_copy_only=False), np.float32).reshape(len(vec), dim)
    if not np.isfinite(vectors).all():
        raise CurateError(f"{spec}: {col} holds NaN or infinite numbers")
    ids = [str(s) for s in table.column("sample_id").to_pylist()]
    index = {s: i for i, s in enumerate(ids)}
    if len(index) != len(ids):
        raise CurateError(f"{spec}: {len(ids) - len(index):,} duplicate sample_ids")
    return EmbeddingsBackend(spec, "embeddings", path, None, None, "cpu", len(ids) or 1, vectors=vectors, index=index)
