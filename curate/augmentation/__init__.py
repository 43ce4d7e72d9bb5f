"""Augmentation, the library both ``curate augment`` and ``curate balance --strategy augment`` use.

- ``policies``: the albumentations policies (named and from files), recipes and ``reproduce`` (also the trainer's
  online augmentation, ``curate.learn.data``).
- ``counts``: effective samples per class of the train split and the seeded hash order every random choice follows.
- ``copies``: the offline copies machinery: new train samples, each with its parent and exact recipe.
- ``rng``: the per-copy generator pair, re-seeded in place (the streams of a fresh pair, for less CPU).
- ``png``: Pillow's PNG bytes for many small copies at once (checked against Pillow once per process).

This module stays light (no pyarrow, numpy or albumentations): stage contract modules import it for their Config.
"""

from __future__ import annotations

from dataclasses import dataclass

from curate.errors import UsageError

TARGET_WORDS = ("median", "max", "min")


@dataclass(frozen=True)
class AugmentConfig:
    """Settings of ``curate augment`` (defaults < curate.toml ``[augment]`` < CLI flags).

    Attributes:
        policy: light | medium | heavy | flip | shift | flip-shift | standard | affine, or a policy file
            (FILE.yaml / FILE.json, as albumentations' A.save writes it).
        copies: New samples per train image (default 1).
        to_balance: Instead: copies until each class reaches --target.
        target: Samples per train class: N | median | max | min (with --to-balance; default max).
        seed: Seed of every random choice (same seed, same result).
        batch_size: Train images per per-sample batch.
    """

    policy: str = "medium"
    copies: int | None = None
    to_balance: bool = False
    target: str | None = None
    seed: int = 0
    batch_size: int = 1024


def parse_target(text: str | int | None) -> str | int | None:
    """``"median"``/``"max"``/``"min"`` or a positive integer; None stays None; anything else: UsageError (exit 2)."""
    if text is None or isinstance(text, int) and not isinstance(text, bool) and text > 0:
        return text
    value = str(text).strip().lower()
    if value in TARGET_WORDS:
        return value
    if value.isdigit() and int(value) > 0:
        return int(value)
    raise UsageError(f"--target {text!r}: give a positive number of samples per class, or median, max or min")


def check_augment(cfg: AugmentConfig) -> str:
    """Validate before any work starts; returns the policy's sha256 (for the stage config). Raises UsageError."""
    from curate.augmentation.policies import check_policy

    if cfg.policy == "none":
        raise UsageError("--policy none makes no new samples; choose light, medium, heavy, another named policy or a file")
    if cfg.copies is not None and cfg.to_balance:
        raise UsageError("give --copies N or --to-balance, not both")
    if cfg.copies is not None and cfg.copies < 1:
        raise UsageError(f"--copies {cfg.copies}: must be at least 1")
    if cfg.target is not None and not cfg.to_balance:
        raise UsageError("--target only applies with --to-balance")
    parse_target(cfg.target)
    return check_policy(cfg.policy)
