"""FixMatch-style consistency regularisation for ``curate pseudolabel`` (Sohn et al. 2020), in plain torch.

Each training step also draws ``mu x B`` unlabeled pool rows. A **weak** view (the round's own ``--augment``
policy, as the labeled rows get) is predicted without gradient; where the top probability is at least ``tau`` it
becomes a hard target for the **strong** view of the same row (``strong_augment``: random affine, brightness,
contrast and sharpness jitter, cutout), and the loss adds ``lambda_u`` times the cross-entropy of the strong view
to that target, averaged over all ``mu x B`` rows (masked rows count as 0, so the term grows as the model grows
confident). The labeled batch and the strong views go through the net in one forward pass so BatchNorm sees
both. Every draw (rows, views) is a function of the seed and the global step, so a round is deterministic.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    import torch

MODES = ("fixmatch", "none")


def policy_flips(policy: str) -> bool:
    """Whether the strong view may mirror: the weak ``--augment`` policy does (a policy file: assumed not)."""
    from curate.augmentation.policies import MIRRORING_POLICIES

    return policy in MIRRORING_POLICIES


@dataclass(frozen=True)
class ConsistencySettings:
    """The consistency term's knobs.

    Attributes:
        weight: ``lambda_u``, the weight of the unlabeled loss against the labeled cross-entropy.
        threshold: ``tau``, the weak view's top probability a row needs to give a target.
        ratio: ``mu``, unlabeled rows per labeled-batch row (the unlabeled batch is ``mu x B``).
        strength: scales every strong-augmentation magnitude (1.0: the ranges in ``strong_augment``).
    """

    weight: float = 1.0
    threshold: float = 0.95
    ratio: int = 2
    strength: float = 1.0


def _blur(x: torch.Tensor) -> torch.Tensor:
    """3x3 smoothing per channel (PIL's sharpness kernel: centre 5, the others 1, over 13), borders replicated."""
    import torch
    import torch.nn.functional as F

    k = torch.ones(3, 3, dtype=x.dtype, device=x.device)
    k[1, 1] = 5.0
    k = (k / k.sum()).expand(x.shape[1], 1, 3, 3)
    return F.conv2d(F.pad(x, (1, 1, 1, 1), mode="replicate"), k, groups=x.shape[1])


def strong_augment(x: torch.Tensor, gen: torch.Generator, *, flip: bool = False, strength: float = 1.0) -> torch.Tensor:
    """A strong view of each image of ``x`` (float ``(B, C, H, W)`` in ``[0, 1]``), same shape back.

    Per image, every magnitude drawn uniformly (times ``strength``): rotation up to 30 degrees, scale 0.75-1.25,
    shear up to 0.3, translation up to 20% of the side (zero fill: the background of digits and clothes); a
    brightness factor 0.6-1.4, a contrast factor 0.6-1.4 around the image mean and a sharpness factor 0.1-1.9
    (blend with a blurred copy); then one cutout square of 25-50% of the side filled with 0.5 (gray, as FixMatch).
    ``flip``: also mirror half of the images (for classes a mirror keeps: clothes, not digits).
    """
    import torch
    import torch.nn.functional as F

    b, _c, h, w = x.shape
    s = float(strength)

    def u(lo: float, hi: float, shape: tuple[int, ...] = (b,)) -> torch.Tensor:
        return (torch.rand(shape, generator=gen) * (hi - lo) + lo).to(x.device)

    rot, scale, shear = u(-30, 30) * s * math.pi / 180, 1 + u(-0.25, 0.25) * s, u(-0.3, 0.3) * s
    shift = u(-0.4, 0.4, (b, 2)) * s  # in affine_grid's [-1, 1] coordinates: 0.4 = 20% of the side
    cos, sin = torch.cos(rot) / scale, torch.sin(rot) / scale
    mirror = torch.where(u(0, 1) < 0.5, -1.0, 1.0) if flip else torch.ones(b, device=x.device)
    theta = torch.stack(
        [torch.stack([cos * mirror, -sin + shear, shift[:, 0]], 1), torch.stack([sin * mirror, cos, shift[:, 1]], 1)], 1
    )
    grid = F.affine_grid(theta.to(x.dtype), list(x.shape), align_corners=False)
    out = F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    view = (b, 1, 1, 1)
    out = out * (1 + u(-0.4, 0.4) * s).view(view)
    mean = out.mean((1, 2, 3), keepdim=True)
    out = (out - mean) * (1 + u(-0.4, 0.4) * s).view(view) + mean
    blur = _blur(out)
    out = (blur + (out - blur) * (1 + u(-0.9, 0.9) * s).view(view)).clamp(0, 1)
    # cutout: one square per image (ones outside it, 0 inside), filled with gray
    side = (u(0.25, 0.5) * min(s, 2.0) * min(h, w)).round()
    cy, cx = u(0, 1) * h, u(0, 1) * w
    ys = torch.arange(h, device=x.device, dtype=x.dtype).view(1, h, 1)
    xs = torch.arange(w, device=x.device, dtype=x.dtype).view(1, 1, w)
    half = (side / 2).view(b, 1, 1)
    hole = ((ys - cy.view(b, 1, 1)).abs() < half) & ((xs - cx.view(b, 1, 1)).abs() < half)
    return torch.where(hole.unsqueeze(1), torch.full_like(out, 0.5), out)


class FixMatch:
    """The consistency term over an unlabeled pool; the trainer calls it once per step (module doc).

    Args:
        pool: uint8 ``(N, H, W, C)`` unlabeled rows (the stage passes the pool minus the rows the OOD filter refused).
        normalization: ``{"mean": [...], "std": [...]}`` of the labeled rows (the same the labeled batch gets).
        weak: the albumentations pipeline of the round's ``--augment`` (None: the weak view is the image itself).
        settings: ``ConsistencySettings``.
        flip: the strong view may mirror (the weak policy flips).
        seed: the round's seed; with the global step it fixes every draw.
    """

    def __init__(self, pool: np.ndarray, normalization: dict[str, Any], weak: Any, settings: ConsistencySettings, *,
                 flip: bool, seed: int) -> None:  # fmt: skip
        from curate.learn.data import Normalizer

        self.pool, self.weak, self.s, self.flip, self.seed = pool, weak, settings, flip, seed
        self.norm = Normalizer(normalization["mean"], normalization["std"])
        self.masked = self.seen = 0  # rows whose weak view passed tau, rows drawn (reported per round)

    def describe(self) -> dict[str, Any]:
        """What travels in the checkpoint's meta: the mode, settings and pool size."""
        return {"mode": "fixmatch", **asdict(self.s), "pool_rows": len(self.pool), "flip": self.flip}

    def _rows(self, step: int, count: int) -> np.ndarray:
        """Pool indices for global ``step``: consecutive slices of per-cycle permutations (all rows before repeats)."""
        n, out, done, start = len(self.pool), np.empty(count, np.int64), 0, step * count
        while done < count:
            cycle, offset = divmod(start + done, n)
            take = min(count - done, n - offset)
            out[done : done + take] = np.random.default_rng([self.seed, 11, cycle]).permutation(n)[offset : offset + take]
            done += take
        return out

    def views(self, step: int, count: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Normalized weak and strong views ``(count, C, H, W)`` of the pool rows of global ``step``."""
        import torch

        from curate.learn.stream import augment_batch

        images = self.pool[self._rows(step, count)]
        seed = (self.seed * 1_000_003 + step * 7_919 + 17) % (2**31)
        weak = augment_batch(self.weak, images, seed) if self.weak is not None else images
        gen = torch.Generator().manual_seed(seed)
        raw = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float() / 255.0
        strong = strong_augment(raw, gen, flip=self.flip, strength=self.s.strength)
        # back to the uint8 scale the Normalizer expects (it divides by 255)
        strong_u8 = (strong * 255.0).round().permute(0, 2, 3, 1).numpy()
        return self.norm(weak), self.norm(strong_u8)

    def __call__(self, model: torch.nn.Module, x: torch.Tensor, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The labeled batch's logits ``(B, K)`` and ``lambda_u`` times the masked strong-view loss (a scalar)."""
        import torch
        import torch.nn.functional as F

        weak, strong = (v.to(x.device) for v in self.views(step, self.s.ratio * len(x)))
        with torch.no_grad():
            conf, target = model(weak).float().softmax(1).max(1)
        mask = (conf >= self.s.threshold).float()
        logits = model(torch.cat([x, strong]))
        loss = (F.cross_entropy(logits[len(x) :].float(), target, reduction="none") * mask).mean()
        self.masked += int(mask.sum())
        self.seen += len(mask)
        return logits[: len(x)], self.s.weight * loss
