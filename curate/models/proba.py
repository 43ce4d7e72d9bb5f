"""A backend's own classifier head over a workspace's samples: ``predict_proba``, pack by pack, in batches.

Shared by ``filter --model`` (``head = "model"``) and ``clean --model --head model``. Probabilities come back in
the order of the rows asked for, NaN where an image cannot be decoded (its error recorded per sample), so one bad
image neither sinks its batch nor passes for a model that rejects its input. The forward passes run as executor
actors (``curate.models.actors.Prober``): in this process with the stage's model on the local executor, one model
load per actor (a GPU each when the cluster has them) under ``--executor ray``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from functools import partial
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa

from curate.errors import CurateError

if TYPE_CHECKING:
    from curate.models.base import Backend
    from curate.stage import Progress
    from curate.workspace import Workspace


def rebatch(batches: Iterable[pa.Table], rows: int) -> Iterator[pa.Table]:
    """Join the small filtered pieces ``iter_packs`` yields into batches of about ``rows`` (full GPU batches)."""
    buf: list[pa.Table] = []
    n = 0
    for t in batches:
        buf.append(t)
        n += t.num_rows
        if n >= rows:
            yield pa.concat_tables(buf)
            buf, n = [], 0
    if buf:
        yield pa.concat_tables(buf)


def decode_blobs(blobs: list[bytes]) -> tuple[list[Any], dict[int, str]]:
    """Encoded images -> PIL images (in order, the bad ones left out), and ``{position: error}`` for those that do
    not decode."""
    from curate.images import decode_rgb_or_l
    from curate.models.base import first_line

    images, errors = [], {}
    for i, data in enumerate(blobs):
        try:
            im = decode_rgb_or_l(data)
            im.load()
            images.append(im)
        except Exception as exc:  # noqa: BLE001 - any decoder failure is the image's, recorded per row
            errors[i] = f"cannot decode: {first_line(exc)}"
    return images, errors


def predict_samples(
    ws: Workspace,
    rows: pa.Table,
    backend: Backend,
    *,
    batch_size: int,
    progress: Progress,
    label: str,
    load: Callable[[], Backend] | None = None,
) -> tuple[np.ndarray, dict[str, str]]:
    """``backend.predict_proba`` of ``rows`` (``sample_id``, ``pack``), as ``Prober`` actors.

    Args:
        backend: the model, loaded here (the local executor's actor uses it).
        load: a picklable zero-argument callable loading the same model where a Ray actor runs; None:
            ``load_backend(backend.spec, ...)`` with its batch size and device ``auto`` (the actor's GPU if any).

    Returns:
        ``(probs, errors)``: float32 ``(len(rows), K)`` in ``backend.classes`` order (NaN rows: not decodable) and
        sample_id -> decode error.

    Raises:
        CurateError: a row has no bytes in the blob packs.
    """
    from curate import executors
    from curate.models import load_backend
    from curate.models.actors import ModelHandle, Prober, column_vectors

    ids = rows.column("sample_id").to_pylist()
    position = {sid: i for i, sid in enumerate(ids)}
    probs = np.full((len(ids), len(backend.classes or [])), np.nan, np.float32)
    errors: dict[str, str] = {}
    seen = np.zeros(len(ids), bool)
    handle = ModelHandle(load or partial(load_backend, backend.spec, workspace=ws.root, batch_size=backend.batch_size), backend)
    with progress(label, len(ids)) as advance:
        # rebatched in the driver (full model batches), so the local and Ray executors see the very same batches
        batches = rebatch(ws.blobs.iter_packs(rows.select(["sample_id", "pack"]), batch_rows=batch_size), batch_size)
        for out in executors.map_batches_actor(Prober, batches, handle, workers=None):
            bids = out.column("sample_id").to_pylist()
            at = [position[s] for s in bids]
            probs[at] = column_vectors(out.column("probs"))
            errors.update({s: e for s, e in zip(bids, out.column("error").to_pylist(), strict=True) if e is not None})
            seen[at] = True
            advance(len(bids))
    if not seen.all():
        missing = [s for s, ok in zip(ids, seen, strict=True) if not ok]
        raise CurateError(f"{len(missing)} samples have no bytes in the blob packs (e.g. {missing[0]})", hint="was `curate gc` run?")
    return probs, errors
