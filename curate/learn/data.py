"""From curate's export shards to torch batches.

Two loaders, one batch format (``x`` float ``(B, C, H, W)`` normalized with the version's train-only
mean/std, ``y`` int64 ``(B,)`` class indices (-1 unlabeled), ``ids``: the B sample ids):

- **memory** (the default when the decoded split fits ``cache_bytes``): each split's shards are read and
  decoded once into a uint8 array ``(N, H, W, C)``; batches are fancy-indexed from it. Decoding a 28x28 PNG
  costs about as much as a training step of a small CNN on it, so decoding every epoch would halve the speed
  on a 2-core machine; decoding once makes the shard loader as fast as in-memory tensors (bench/bench_train.py).
- **stream**: an ``IterableDataset`` that reads Parquet row groups or WebDataset tar members shard by shard
  (shards spread over DataLoader workers), shuffles within a buffer and decodes on the fly: for data larger
  than memory.

Randomness is a pure function of ``(seed, epoch, batch)``: the epoch's order comes from a generator seeded
with ``seed + epoch`` and each batch's augmentation from its own seed, so a resumed run sees the same batches
as an uninterrupted one, whatever the number of workers.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from curate.augmentation.policies import POLICIES as AUGMENT_POLICIES
from curate.errors import CurateError
from curate.learn.shards import decode, image_geometry, iter_records, open_export
from curate.learn.stream import StreamBatches, augment_batch

if TYPE_CHECKING:
    from curate.workspace import Workspace

DEFAULT_CACHE_BYTES = 4 << 30
SPLITS = ("train", "train_dev", "val", "test")  # the splits a training run reads; train_dev is scored, never trained on


def augmenter(policy: str, size: tuple[int, int]) -> Any:
    """The albumentations pipeline of a policy (None for ``none``), applied to uint8 ``(H, W, C)`` train images.

    The policies are those of ``curate augment`` (one definition: ``curate.augmentation.policies``): ``flip``; ``shift``
    (translate up to 1/14 of the side, 2 px at 28, zero padding); ``flip-shift``; ``standard`` (flip, shift/scale/
    rotate, brightness/contrast); ``light``, ``medium``, ``heavy``.

    Raises:
        CurateError: unknown policy (exit code 2).
    """
    if policy not in AUGMENT_POLICIES:
        raise CurateError(f"unknown --augment {policy!r}; choose from {', '.join(AUGMENT_POLICIES)}", exit_code=2)
    from curate.augmentation.policies import build_policy

    return build_policy(policy, size)


# ------------------------------------------------------------------------------------------- in memory
@dataclass
class DecodedSplit:
    """A decoded split: ``images`` uint8 ``(N, H, W, C)``, ``labels`` int64 ``(N,)``, ``sample_ids`` (N strings), and
    ``weights`` float64 ``(N,)`` from the ``sample_weight`` column (``curate balance --strategy weights``, ``curate clean
    --action weight``; null = 1.0),
    None when the shards have no such column or every weight is equal."""

    images: np.ndarray
    labels: np.ndarray
    sample_ids: list[str]
    weights: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.labels)

    def labeled(self) -> DecodedSplit:
        """The rows with a class (label >= 0)."""
        keep = self.labels >= 0
        if keep.all():
            return self
        ids = [s for s, k in zip(self.sample_ids, keep, strict=True) if k]
        return DecodedSplit(self.images[keep], self.labels[keep], ids, None if self.weights is None else self.weights[keep])


def load_split(
    files: list[Path], fmt: str, channels: int, size: tuple[int, int], *, advance: Callable[[int], None] | None = None
) -> DecodedSplit:
    """Read and decode every row of the given shards into memory (see ``DecodedSplit``)."""
    images, labels, ids, weights = [], [], [], []
    for row in iter_records(files, fmt, ("sample_weight",)):
        images.append(decode(row["data"], channels, size))
        labels.append(row["label"])
        ids.append(row["sample_id"])
        weights.append(1.0 if row.get("sample_weight") is None else float(row["sample_weight"]))
        if advance and len(ids) % 1000 == 0:
            advance(1000)
    if advance:
        advance(len(ids) % 1000)
    arr = np.stack(images) if images else np.zeros((0, size[0], size[1], channels), np.uint8)
    w = np.asarray(weights, np.float64)
    return DecodedSplit(arr, np.asarray(labels, np.int64), ids, w if len(w) and np.ptp(w) > 0 else None)


class Normalizer:
    """uint8 ``(B, H, W, C)`` -> float ``(B, C, H, W)`` as ``(x / 255 - mean) / std`` per channel."""

    def __init__(self, mean: list[float], std: list[float]) -> None:
        self.scale = torch.tensor([1.0 / (255.0 * max(s, 1e-6)) for s in std]).view(1, -1, 1, 1)
        self.shift = torch.tensor([-m / max(s, 1e-6) for m, s in zip(mean, std, strict=True)]).view(1, -1, 1, 1)

    def __call__(self, batch: np.ndarray) -> torch.Tensor:
        x = torch.from_numpy(np.ascontiguousarray(batch)).permute(0, 3, 1, 2).float()
        return (x * self.scale + self.shift).contiguous()


class EpochBatches(Sampler):
    """Yields ``(batch_seed, row_indices)`` per batch; the order is a function of ``seed`` and the epoch only.

    With ``weights`` (float ``(n,)``, from ``sample_weight``) a shuffled epoch is ``n`` draws with replacement, row i
    with probability ``weights[i] / weights.sum()`` (what torch's WeightedRandomSampler does), from a numpy generator
    seeded with ``(seed, epoch)``: still a function of seed and epoch only, so ``--resume`` sees the same batches.
    """

    def __init__(
        self, n: int, batch_size: int, *, shuffle: bool, seed: int = 0, drop_last: bool = False, weights: np.ndarray | None = None
    ) -> None:
        self.n, self.batch_size, self.shuffle, self.seed, self.drop_last, self.epoch = n, batch_size, shuffle, seed, drop_last, 0
        self.p = None if weights is None else np.asarray(weights, np.float64) / np.sum(weights)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.n // self.batch_size if self.drop_last else -(-self.n // self.batch_size)

    def __iter__(self) -> Iterator[tuple[int, list[int]]]:
        if self.shuffle and self.p is not None:
            order = np.random.default_rng([self.seed, self.epoch]).choice(self.n, size=self.n, replace=True, p=self.p).tolist()
        elif self.shuffle:
            g = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
            order = torch.randperm(self.n, generator=g).tolist()
        else:
            order = list(range(self.n))
        for b in range(len(self)):
            yield (self.seed * 1_000_003 + self.epoch * 10_007 + b) % (2**31), order[b * self.batch_size : (b + 1) * self.batch_size]


class MemoryBatches(Dataset):
    """Map-style dataset over a ``DecodedSplit`` whose items are whole batches ``(x, y, ids)`` (see module doc)."""

    def __init__(self, split: DecodedSplit, norm: Normalizer, aug: Any = None) -> None:
        self.split, self.norm, self.aug = split, norm, aug

    def __len__(self) -> int:
        return len(self.split)

    def __getitem__(self, item: tuple[int, list[int]]) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
        seed, idx = item
        index = np.asarray(idx)
        images = self.split.images[index]
        if self.aug is not None:
            images = augment_batch(self.aug, images, seed)
        return self.norm(images), torch.from_numpy(self.split.labels[index]), [self.split.sample_ids[k] for k in idx]


def make_loader(dataset: Dataset, *, sampler: EpochBatches | None, workers: int, pin: bool) -> DataLoader:
    """A DataLoader over a batch-producing dataset (batch_size=None: the dataset/sampler already batch).

    Workers persist across epochs only with a sampler (the epoch lives in the main process); a streaming
    dataset is re-sent to fresh workers each epoch so they see its new epoch number.
    """
    return DataLoader(
        dataset,
        batch_size=None,
        sampler=sampler,
        num_workers=workers,
        pin_memory=pin,
        persistent_workers=workers > 0 and sampler is not None,
        prefetch_factor=4 if workers > 0 else None,
    )


def eval_loader(split: DecodedSplit, normalization: dict[str, Any], batch_size: int = 512) -> DataLoader:
    """Batches ``(x, y, ids)`` of a decoded split in order, normalized with ``normalization`` (mean/std)."""
    norm = Normalizer(normalization["mean"], normalization["std"])
    return make_loader(MemoryBatches(split, norm), sampler=EpochBatches(len(split), batch_size, shuffle=False), workers=0, pin=False)


def set_epoch(loader: DataLoader, epoch: int) -> None:
    """Tell a loader's sampler or streaming dataset which epoch it is serving (the order depends on it)."""
    for obj in (loader.sampler, loader.dataset):
        if hasattr(obj, "set_epoch"):
            obj.set_epoch(epoch)


def fit_normalization(images: np.ndarray) -> dict[str, Any]:
    """Per-channel mean/std on the 0..1 scale of uint8 ``(N, H, W, C)`` train images (same math as ``curate normalize``)."""
    flat = images.reshape(-1, images.shape[-1]).astype(np.int64)
    n = flat.shape[0]
    mean = flat.sum(0) / n
    var = (flat * flat).sum(0) / n - mean**2
    return {"mean": (mean / 255).tolist(), "std": (np.sqrt(np.maximum(var, 0)) / 255).tolist(), "channels": images.shape[-1]}


# ------------------------------------------------------------------------------------------- assembly
@dataclass
class TrainingData:
    """Loaders for the splits present (``train`` always; ``train_dev``/``val``/``test`` when the version has them)
    plus the facts a checkpoint must carry to reproduce the input: classes, channels, size ``(H, W)``, normalization.

    ``scoring``: the train split again, in a fixed order and without augmentation, for measuring the training
    error the way the other splits are measured (``loader("train", scoring=True)``)."""

    classes: list[str]
    channels: int
    size: tuple[int, int]
    normalization: dict[str, Any]
    version: str | None
    loaders: dict[str, DataLoader]
    rows: dict[str, int]
    mode: str = "memory"
    sampler: str = "shuffle"  # shuffle | weighted (sample_weight draws with replacement)
    scoring: DataLoader | None = None
    consistency: Any = None  # curate.learn.consistency.FixMatch: an unlabeled loss term the trainer adds each step

    def loader(self, name: str, *, scoring: bool = False) -> DataLoader:
        """The loader of split ``name``; with ``scoring`` the train split comes in order, unaugmented."""
        return self.scoring if scoring and name == "train" and self.scoring is not None else self.loaders[name]


def memory_data(
    splits: dict[str, DecodedSplit],
    classes: list[str],
    normalization: dict[str, Any] | None,
    *,
    batch_size: int,
    augment: str = "none",
    seed: int = 0,
    workers: int = 0,
    pin: bool = False,
    version: str | None = None,
) -> TrainingData:
    """``TrainingData`` over decoded splits (the train split is shuffled, augmented and drops a ragged last batch).

    ``normalization`` None: fit on the train split (train rows only, like ``curate normalize``).
    """
    train = splits["train"]
    norm_stats = normalization or {**fit_normalization(train.images), "source": "computed from the train shards by curate train"}
    norm = Normalizer(norm_stats["mean"], norm_stats["std"])
    size = (train.images.shape[1], train.images.shape[2])
    aug = augmenter(augment, size)
    loaders = {}
    for name, split in splits.items():
        is_train = name == "train"
        sampler = EpochBatches(
            len(split),
            batch_size,
            shuffle=is_train,
            seed=seed,
            drop_last=is_train and len(split) > batch_size,
            weights=split.weights if is_train else None,
        )
        ds = MemoryBatches(split, norm, aug if is_train else None)
        loaders[name] = make_loader(ds, sampler=sampler, workers=workers if is_train else 0, pin=pin)
    rows = {k: len(v) for k, v in splits.items()}
    weighted = "weighted" if train.weights is not None else "shuffle"
    scoring = make_loader(MemoryBatches(train, norm), sampler=EpochBatches(len(train), 512, shuffle=False), workers=0, pin=pin)
    return TrainingData(classes, train.images.shape[3], size, norm_stats, version, loaders, rows, sampler=weighted, scoring=scoring)


def workspace_data(
    ws: Workspace,
    version: str | None,
    *,
    fmt: str = "parquet",
    loader: str = "auto",
    image_size: int | None = None,
    batch_size: int = 128,
    augment: str = "none",
    seed: int = 0,
    workers: int = 0,
    pin: bool = False,
    cache_bytes: int = DEFAULT_CACHE_BYTES,
    progress: Callable[..., Any] | None = None,
) -> TrainingData:
    """``TrainingData`` from the export of a workspace version (exported first when missing).

    Args:
        loader: ``memory`` (decode once), ``stream`` (decode on the fly) or ``auto`` (memory when the decoded
            splits fit ``cache_bytes``).
        progress: ``progress(description, total)`` context manager yielding ``advance(n)`` (decoding).

    Raises:
        CurateError: no train split, no labeled classes, or streaming without stored normalization.
    """
    import contextlib

    info = open_export(ws, version, fmt)
    rows = {s: n for s, n in info.card["splits"].items() if s in SPLITS}
    if not rows.get("train"):
        raise CurateError(f"version {info.card['version']} has no train split", hint="run `curate split` and `curate normalize` first")
    if not info.classes:
        raise CurateError(f"version {info.card['version']} has no labeled samples to train on")
    channels, size = image_geometry(info, "train", fmt, image_size)
    norm = info.card.get("normalization")
    if norm and int(norm.get("channels", channels)) != channels:
        norm = None
    need = sum(rows.values()) * size[0] * size[1] * channels
    mode = loader if loader != "auto" else ("memory" if need <= cache_bytes else "stream")
    if mode == "memory":
        splits = {}
        for name in rows:
            with progress(f"decode {name}", rows[name]) if progress else contextlib.nullcontext(None) as advance:
                split = load_split(info.files(name, fmt), fmt, channels, size, advance=advance)
            splits[name] = split.labeled()
        data = memory_data(
            splits,
            info.classes,
            norm,
            batch_size=batch_size,
            augment=augment,
            seed=seed,
            workers=workers,
            pin=pin,
            version=info.card["version"],
        )
        return data
    if mode != "stream":
        raise CurateError(f"unknown --loader {loader!r}; choose auto, memory or stream", exit_code=2)
    return _stream_data(info, rows, fmt, channels, size, norm, batch_size=batch_size, augment=augment, seed=seed,
                        workers=workers, pin=pin)  # fmt: skip


def _stream_data(
    info: Any, rows: dict[str, int], fmt: str, channels: int, size: tuple[int, int], norm: dict[str, Any] | None, *,
    batch_size: int, augment: str, seed: int, workers: int, pin: bool,
) -> TrainingData:
    """``TrainingData`` that decodes the shards on the fly (``loader = stream``): needs the stored normalization,
    and refuses sample weights (the weighted sampler draws from a decoded split in memory)."""
    if not norm:
        raise CurateError("streaming needs the normalization stored in the version", hint="run `curate normalize` first")
    if "sample_weight" in info.card.get("columns", []):
        raise CurateError(
            "this version has sample weights (balance --strategy weights, clean --action weight): they need --loader memory",
            hint="the weighted sampler draws from the decoded split in memory",
            exit_code=2,
        )
    normalizer = Normalizer(norm["mean"], norm["std"])
    aug = augmenter(augment, size)
    loaders = {}
    for name in rows:
        ds = StreamBatches(
            info.files(name, fmt),
            fmt,
            channels,
            size,
            normalizer,
            batch_size,
            shuffle=name == "train",
            aug=aug if name == "train" else None,
            seed=seed,
        )
        loaders[name] = make_loader(ds, sampler=None, workers=workers, pin=pin)
    plain = StreamBatches(info.files("train", fmt), fmt, channels, size, normalizer, 512, shuffle=False, aug=None, seed=seed)
    scoring = make_loader(plain, sampler=None, workers=workers, pin=pin)
    return TrainingData(info.classes, channels, size, norm, info.card["version"], loaders, rows, mode="stream", scoring=scoring)
