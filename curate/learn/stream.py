"""The streaming loader: batches decoded on the fly from export shards, for data larger than memory.

Split out of ``curate.learn.data`` (which picks between this and the in-memory loader); the batch format and the
randomness rules are the ones its module docstring states.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch.utils.data import IterableDataset, get_worker_info

from curate.learn.shards import decode, iter_records

if TYPE_CHECKING:
    from curate.learn.data import Normalizer


def augment_batch(aug: Any, images: np.ndarray, seed: int) -> np.ndarray:
    """``images`` uint8 ``(B, H, W, C)`` through an albumentations pipeline seeded with ``seed``: same shape back."""
    aug.set_random_seed(seed)
    out = np.empty_like(images)
    for k in range(len(images)):
        im = aug(image=images[k])["image"]
        out[k] = im if im.ndim == 3 else im[:, :, None]
    return out



class StreamBatches(IterableDataset):
    """Batches ``(x, y, ids)`` decoded on the fly from shards.

    Shards are dealt to DataLoader workers round-robin; rows are shuffled within ``buffer`` rows.
    """

    def __init__(
        self,
        files: list[Path],
        fmt: str,
        channels: int,
        size: tuple[int, int],
        norm: Normalizer,
        batch_size: int,
        *,
        shuffle: bool,
        aug: Any = None,
        seed: int = 0,
        buffer: int = 8192,
    ) -> None:
        self.files, self.fmt, self.channels, self.size, self.norm = files, fmt, channels, size, norm
        self.batch_size, self.shuffle, self.aug, self.seed, self.buffer, self.epoch = batch_size, shuffle, aug, seed, buffer, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor, list[str]]]:
        wi = get_worker_info()
        wid, nw = (wi.id, wi.num_workers) if wi else (0, 1)
        rng = np.random.default_rng([self.seed, self.epoch, wid])
        files = list(self.files)
        if self.shuffle:  # one order for all workers (seeded without the worker id), so they split the shards
            np.random.default_rng([self.seed, self.epoch]).shuffle(files)
        mine = files[wid::nw]
        buf: list[tuple[np.ndarray, int, str]] = []
        batch: list[tuple[np.ndarray, int, str]] = []

        def emit(rows: list[tuple[np.ndarray, int, str]]) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
            images = np.stack([r[0] for r in rows])
            if self.aug is not None:
                images = augment_batch(self.aug, images, int(rng.integers(2**31)))
            return self.norm(images), torch.tensor([r[1] for r in rows], dtype=torch.int64), [r[2] for r in rows]

        for row in iter_records(mine, self.fmt):
            if row["label"] < 0:
                continue
            buf.append((decode(row["data"], self.channels, self.size), row["label"], row["sample_id"]))
            if len(buf) < (self.buffer if self.shuffle else 1):
                continue
            pick = int(rng.integers(len(buf))) if self.shuffle else 0
            buf[pick], buf[-1] = buf[-1], buf[pick]
            batch.append(buf.pop())
            if len(batch) == self.batch_size:
                yield emit(batch)
                batch = []
        if self.shuffle:
            rng.shuffle(buf)  # type: ignore[arg-type]
        for row in buf:
            batch.append(row)
            if len(batch) == self.batch_size:
                yield emit(batch)
                batch = []
        if batch:
            yield emit(batch)
