"""The images of a workspace version as arrays for the models that judge them (clean's and pseudolabel's).

Shared learning code: clean's fold models and pseudolabel's loop both see a version's images through these two
functions, so that a stage never imports another stage for them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa

from curate.errors import CurateError
from curate.stage import no_progress

if TYPE_CHECKING:
    from curate.stage import Progress
    from curate.workspace import Workspace

GRAY_MODES = frozenset({"1", "L", "LA", "I", "I;16", "F"})


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


def load_images(
    ws: Workspace, rows: pa.Table, channels: int, size: tuple[int, int], *, progress: Progress = no_progress,
    description: str = "decode",
) -> np.ndarray:
    """Decode the blobs of ``rows`` (``sample_id``, ``pack``) to uint8 ``(N, H, W, C)`` in the order of ``rows``.

    Raises:
        CurateError: a row has no bytes in the packs, or its bytes do not decode (named by sample_id).
    """
    from curate.learn.shards import decode

    index = {sid: i for i, sid in enumerate(rows.column("sample_id").to_pylist())}
    out = np.zeros((len(index), size[0], size[1], channels), np.uint8)
    seen = 0
    with progress(description, len(index)) as advance:
        for batch in ws.blobs.iter_packs(rows.select(["sample_id", "pack"]), batch_rows=2048):
            for sid, data in zip(batch.column("sample_id").to_pylist(), batch.column("data").to_pylist(), strict=True):
                try:
                    out[index[sid]] = decode(data, channels, size)
                except Exception as exc:  # noqa: BLE001 - any decoder failure is a data error here
                    raise CurateError(f"sample {sid} cannot be decoded: {type(exc).__name__}: {exc}") from exc
            seen += batch.num_rows
            advance(batch.num_rows)
    if seen != len(index):
        raise CurateError(f"{len(index) - seen} samples have no bytes in the blob packs", hint="was `curate gc` run?")
    return out
