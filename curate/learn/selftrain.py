"""The model side of ``curate pseudolabel``: mixed labeled/pseudo-labeled batches, one training round, and the
feature-space out-of-distribution check.

The ratio ``L:P`` is a property of every training batch, not of the committed set: a batch of ``B`` rows holds
``floor(B * P / (L + P))`` pseudo-labeled rows and the rest labeled, so with 10:1 the model sees at most one
pseudo-labeled sample per ten labeled ones however many pseudo-labels were accepted. An epoch is one pass over
the labeled rows; the pseudo-labeled rows are drawn from a reshuffled cycle, so over several epochs every
accepted row is seen before any is seen twice. Tiny labeled sets get longer epochs (at most ``MAX_EPOCHS`` a round).
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import numpy as np
import torch
from torch.utils.data import Sampler

from curate.errors import UsageError
from curate.learn.consistency import ConsistencySettings
from curate.learn.data import DecodedSplit, MemoryBatches, Normalizer, TrainingData, augmenter, eval_loader, make_loader
from curate.learn.train import TrainConfig, evaluate, fit

MAX_EPOCHS = 30  # per round: each epoch ends with a val pass, which must stay a small share of the work


def parse_ratio(text: str) -> tuple[float, float]:
    """``"10:1"`` -> ``(10.0, 1.0)``.

    Raises:
        UsageError: not two positive numbers separated by a colon (``0`` pseudo is allowed: supervised only).
    """
    parts = str(text).split(":")
    try:
        lab, pseudo = (float(p) for p in parts)
    except ValueError:
        raise UsageError(f"--ratio {text!r}: give LABELED:PSEUDO, e.g. 10:1") from None
    if lab <= 0 or pseudo < 0:
        raise UsageError(f"--ratio {text!r}: the labeled part must be > 0 and the pseudo part >= 0")
    return lab, pseudo


def batch_shares(batch_size: int, ratio: tuple[float, float], n_pseudo: int) -> tuple[int, int]:
    """``(labeled, pseudo)`` rows per batch: pseudo = floor(B * P / (L + P)), 0 without pseudo-labeled rows."""
    lab, pseudo = ratio
    k = int(batch_size * pseudo / (lab + pseudo)) if n_pseudo else 0
    return batch_size - k, k


class MixedBatches(Sampler):
    """Yields ``(batch_seed, indices)``; indices ``< n_lab`` are labeled rows, the rest pseudo-labeled rows.

    Deterministic for (seed, epoch). Both kinds are read from an endless sequence of permutations (cycle ``c``
    shuffled with ``(seed, kind, c)``), so every row is seen once before any is seen twice, also across epochs.
    ``steps`` per epoch defaults to one pass over the labeled rows; longer epochs keep tiny labeled sets from
    spending more time on per-epoch validation than on training.
    """

    def __init__(
        self, n_lab: int, n_pseudo: int, lab_per_batch: int, pseudo_per_batch: int, *, seed: int = 0, steps: int | None = None
    ) -> None:
        self.n_lab, self.n_pseudo, self.lb, self.pb, self.seed, self.epoch = n_lab, n_pseudo, lab_per_batch, pseudo_per_batch, seed, 0
        self.steps = steps or max(1, n_lab // lab_per_batch)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.steps

    def _cycle(self, kind: int, n: int, start: int, count: int) -> np.ndarray:
        out = np.empty(count, np.int64)
        done = 0
        while done < count:
            cycle, offset = divmod(start + done, n)
            perm = np.random.default_rng([self.seed, kind, cycle]).permutation(n)
            take = min(count - done, n - offset)
            out[done : done + take] = perm[offset : offset + take]
            done += take
        return out

    def __iter__(self) -> Any:
        steps = len(self)
        lab = self._cycle(3, self.n_lab, self.epoch * steps * self.lb, steps * self.lb)
        pseudo = self._cycle(7, self.n_pseudo, self.epoch * steps * self.pb, steps * self.pb) + self.n_lab if self.pb else None
        for b in range(steps):
            idx = lab[b * self.lb : (b + 1) * self.lb]
            if pseudo is not None:
                idx = np.concatenate([idx, pseudo[b * self.pb : (b + 1) * self.pb]])
            yield (self.seed * 1_000_003 + self.epoch * 10_007 + b) % (2**31), idx.tolist()


def train_round(
    labeled: DecodedSplit,
    pseudo: DecodedSplit | None,
    val: DecodedSplit | None,
    classes: list[str],
    cfg: TrainConfig,
    *,
    ratio: tuple[float, float],
    normalization: dict[str, Any],
    min_steps: int = 500,
    unlabeled: np.ndarray | None = None,
    consistency: ConsistencySettings | None = None,
    progress: Any = None,
) -> dict[str, Any]:
    """Train a fresh model on ``labeled`` plus ``pseudo`` mixed at ``ratio`` in every batch, then score it on val.

    The round's model is the last epoch's (the schedule has annealed), not the best val epoch: the val set of a
    1,000-label task holds about 100 rows, too few to pick an epoch by (1 row = 1 %; on MNIST it picked epochs
    9 and 16 of 30). Val ranks the rounds only, all trained with the same step budget.

    Args:
        labeled / pseudo / val: decoded rows (``pseudo`` labels are the accepted predictions; None or empty: none).
        cfg: trainer settings (arch, epochs, batch size, lr, augment, device, seed); no checkpoints are written.
        normalization: mean/std of the labeled train rows (the same for every round, stored in the checkpoint).
        min_steps: small labeled sets get more epochs until the round makes at least this many optimizer steps
            (1,000 labels at batch 128 are 8 steps an epoch).
        unlabeled / consistency: uint8 ``(N, H, W, C)`` pool rows and the settings of a FixMatch consistency term
            over them (``curate.learn.consistency``; each step adds ``mu x B`` of them); either None: no term.

    Returns:
        ``curate.learn.train.fit``'s result (``best`` holds the final ``val_acc``/``val_loss`` when there is val)
        plus ``steps``, ``lab_per_batch`` and ``pseudo_per_batch``.
    """
    n_pseudo = len(pseudo) if pseudo is not None else 0
    lb, pb = batch_shares(cfg.batch_size, ratio, n_pseudo)
    parts = [labeled] + ([pseudo] if n_pseudo else [])
    both = DecodedSplit(
        np.concatenate([p.images for p in parts]), np.concatenate([p.labels for p in parts]), [s for p in parts for s in p.sample_ids]
    )
    # at least min_steps optimizer steps: more epochs, but at most MAX_EPOCHS; past that, longer epochs
    steps = max(1, len(labeled) // lb)
    epochs = max(cfg.epochs, min(MAX_EPOCHS, -(-min_steps // steps)))
    steps = max(steps, -(-min_steps // epochs))
    sampler = MixedBatches(len(labeled), n_pseudo, lb, pb, seed=cfg.seed, steps=steps)
    cfg = replace(cfg, epochs=epochs, out=None, resume=False)
    size = (labeled.images.shape[1], labeled.images.shape[2])
    norm = Normalizer(normalization["mean"], normalization["std"])
    loaders = {"train": make_loader(MemoryBatches(both, norm, augmenter(cfg.augment, size)), sampler=sampler, workers=0, pin=False)}
    rows = {"train": len(labeled), "pseudo": n_pseudo}
    data = TrainingData(classes, labeled.images.shape[3], size, normalization, None, loaders, rows)
    if consistency is not None and unlabeled is not None and len(unlabeled):
        from curate.learn.consistency import FixMatch, policy_flips

        weak = augmenter(cfg.augment, size)
        data.consistency = FixMatch(unlabeled, normalization, weak, consistency, flip=policy_flips(cfg.augment), seed=cfg.seed)
    res = fit(cfg, data, progress=progress)  # no val loader: fit keeps the last epoch
    if val is not None and len(val):
        ev = evaluate(res["model"], eval_loader(val, normalization), next(res["model"].parameters()).device)
        res["best"] = {**res["best"], "val_acc": ev["acc"], "val_loss": ev["loss"]}
    fm = data.consistency
    masked = round(fm.masked / fm.seen, 6) if fm is not None and fm.seen else None  # share of pool rows that gave a target
    return {**res, "steps": cfg.epochs * steps, "epochs": cfg.epochs, "lab_per_batch": lb, "pseudo_per_batch": pb,
            "consistency_mask_rate": masked}  # fmt: skip


@torch.no_grad()
def knn_distance(query: np.ndarray, ref: np.ndarray, *, k: int = 5, exclude_self: bool = False, chunk: int = 4096) -> np.ndarray:
    """Mean cosine distance of each ``query`` row to its ``k`` nearest ``ref`` rows (float64 ``(N,)``).

    Both are ``(N, D)`` / ``(M, D)`` penultimate features; they are L2-normalized here, so the distance is
    ``1 - cosine similarity`` (deep nearest neighbours, Sun et al. 2022: no class-Gaussian assumption, which is
    what made the Mahalanobis score fail on digits among clothes, see curate.stages.clean). ``exclude_self``:
    ``query`` is ``ref`` and each row's own match is skipped (leave-one-out).
    """
    q = torch.nn.functional.normalize(torch.from_numpy(np.asarray(query, np.float32)), dim=1)
    r = torch.nn.functional.normalize(torch.from_numpy(np.asarray(ref, np.float32)), dim=1)
    kk = min(k + int(exclude_self), r.shape[0])
    out = np.empty(q.shape[0], np.float64)
    for i in range(0, q.shape[0], chunk):
        sim = q[i : i + chunk] @ r.T
        top = sim.topk(kk, dim=1).values
        if exclude_self:
            top = top[:, 1:]
        out[i : i + chunk] = (1.0 - top).mean(1).double().numpy()
    return out
