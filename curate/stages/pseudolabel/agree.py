"""``pseudolabel --select knn --model SPEC``: the labeled rows' kNN vote on every pool row in a model's embedding space.

The vote is a second opinion independent of the self-trained classifier: the majority class of a pool row's
``knn_k`` nearest labeled train rows by cosine similarity of a backend's frozen embeddings (``curate.models``:
a pretrained backbone, an export, or vectors computed elsewhere). The selection then accepts a prediction only
where the vote agrees (``curate.stages.pseudolabel.select``). The embeddings are cached per (sample_id, model
digest) in the version's state, like ``clean --model``'s.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa

if TYPE_CHECKING:
    from curate.stage import Progress
    from curate.stages.pseudolabel import PseudolabelConfig
    from curate.workspace import Workspace


@dataclass
class Votes:
    """What ``knn_votes`` returns.

    Attributes:
        vote: int64 ``(P,)`` the voted class index of each pool row.
        share: float64 ``(P,)`` the fraction of the k neighbours that voted for it.
        state: state files for the new version (newly embedded rows).
        info: stats: the model's ``describe()``, embedding counts, k.
    """

    vote: np.ndarray
    share: np.ndarray
    state: dict[str, bytes] = field(default_factory=dict)
    info: dict[str, Any] = field(default_factory=dict)


def knn_votes(
    ws: Workspace, table: pa.Table, lab_pos: np.ndarray, lab_y: np.ndarray, pool_pos: np.ndarray, n_classes: int,
    cfg: PseudolabelConfig, progress: Progress,
) -> Votes:  # fmt: skip
    """Embed the labeled train rows and the pool (table positions, ascending) with ``cfg.model`` and vote.

    Args:
        lab_y: int ``(L,)`` class indices of the ``lab_pos`` rows.

    Raises:
        CurateError: the model cannot be loaded or rejects the images, an embeddings file lacks some rows (one line
            naming the model or file).
    """
    from curate.models import load_backend
    from curate.models.cache import embed_samples
    from curate.models.heads import knn_vote

    backend = load_backend(str(cfg.model), workspace=ws.root, device=cfg.device, batch_size=cfg.batch_size)
    pos = np.union1d(lab_pos, pool_pos)
    t0 = time.perf_counter()
    emb = embed_samples(ws, table.take(pa.array(pos, pa.int64())).select(["sample_id", "pack"]), backend, progress=progress)
    x = emb.vectors
    vote, share = knn_vote(x[np.searchsorted(pos, pool_pos)], x[np.searchsorted(pos, lab_pos)], lab_y, n_classes, k=cfg.knn_k)
    counts = {"computed": emb.computed, "cached": emb.cached, "from_file": emb.from_file, "dim": int(x.shape[1])}
    info = {"model": backend.describe(), "embeddings": {**counts, "seconds": round(time.perf_counter() - t0, 2)}, "knn_k": cfg.knn_k}
    return Votes(vote, share, emb.state, info)
