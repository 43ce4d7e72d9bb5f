"""Per-copy random generators, seeded many at a time: the same streams as a fresh pair per copy, for less CPU.

A copy's recipe says: seed ``np.random.Generator(np.random.PCG64(s))`` and ``random.Random(s)`` and apply the
transform (``curate.augmentation.policies.augment_array``). Building that pair costs ~35 us (``PCG64(s)`` runs
numpy's ``SeedSequence`` hash, then allocates a bit generator, a lock and a ``Generator``), as much as a tenth of
augmenting a 28x28 image. ``CopyRng`` keeps one pair and re-seeds it in place instead:

- ``pcg64_states`` runs ``SeedSequence(s).generate_state(4, uint64)`` and PCG64's seeding step for a whole array
  of seeds with numpy vector arithmetic (uint32 wrap-around, as numpy's C code does) and gives the 128-bit
  ``(state, increment)`` each seed leads to; setting ``PCG64.state`` to it gives the generator ``PCG64(s)`` starts
  from (tests compare the draws for many seeds, 0 and 2**32 - 1 included).
- ``random.Random.seed(s)`` on the kept Python generator is the state ``random.Random(s)`` starts from (it also
  clears the cached Gaussian), without a new object.

Seeds are ``copy_seed`` values: integers in ``[0, 2**32)``, one uint32 word of entropy each (the only case
``pcg64_states`` handles; ``CopyRng.seed`` without a precomputed state falls back to ``PCG64(s)``).
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import Any

import numpy as np

# numpy's SeedSequence constants (numpy/random/bit_generator.pyx) and PCG64's default 128-bit multiplier
_INIT_A, _MULT_A, _INIT_B, _MULT_B = 0x43B0D7E5, 0x931E8875, 0x8B51F9DD, 0x58F38DED
_MIX_L, _MIX_R, _XSHIFT = 0xCA01F9DD, 0x4973F715, 16
_PCG_MULT = (2549297995355413924 << 64) + 4865540595714422341
_MASK128 = (1 << 128) - 1


def _seed_words(seeds: np.ndarray) -> list[np.ndarray]:
    """``SeedSequence(s).generate_state(8, uint32)`` for each ``s`` (uint32 array ``(N,)``) -> 8 arrays ``(N,)``."""
    u = np.uint32
    mult = [u(_INIT_A)]  # the running hash constant, shared by every hashmix call in order

    def hashmix(v: np.ndarray) -> np.ndarray:
        v = v ^ mult[0]
        mult[0] = u(mult[0] * u(_MULT_A))
        v = v * mult[0]
        return v ^ (v >> u(_XSHIFT))

    def mix(x: np.ndarray, y: np.ndarray) -> np.ndarray:
        r = u(_MIX_L) * x - u(_MIX_R) * y
        return r ^ (r >> u(_XSHIFT))

    with np.errstate(over="ignore"):  # uint32 products wrap around, as in numpy's C code
        zero = np.zeros_like(seeds)
        pool = [hashmix(seeds), hashmix(zero), hashmix(zero), hashmix(zero)]  # the entropy padded to the pool size 4
        for src in range(4):
            for dst in range(4):
                if src != dst:
                    pool[dst] = mix(pool[dst], hashmix(pool[src]))
        words, h = [], u(_INIT_B)
        for i in range(8):
            v = pool[i % 4] ^ h
            h = u(h * u(_MULT_B))
            v = v * h
            words.append(v ^ (v >> u(_XSHIFT)))
    return words


def pcg64_states(seeds: Sequence[int] | np.ndarray) -> list[tuple[int, int]]:
    """The ``(state, inc)`` of ``np.random.PCG64(s).state["state"]`` for each seed ``s`` in ``[0, 2**32)``.

    Raises:
        ValueError: a seed outside ``[0, 2**32)`` (it would not be one entropy word).
    """
    arr = np.asarray(seeds, dtype=np.int64)
    if arr.size and (arr.min() < 0 or arr.max() >= 1 << 32):
        raise ValueError("pcg64_states takes seeds in [0, 2**32)")
    w = [x.astype(np.uint64) for x in _seed_words(arr.astype(np.uint32))]
    # generate_state(4, uint64) views the 8 words as 4 little-endian uint64: low word first
    seed_hi, seed_lo, inc_hi, inc_lo = ((w[2 * i] | (w[2 * i + 1] << np.uint64(32))).tolist() for i in range(4))
    out = []
    for a, b, c, d in zip(seed_hi, seed_lo, inc_hi, inc_lo, strict=True):
        inc = ((((c << 64) | d) << 1) | 1) & _MASK128
        # pcg_setseq_128_srandom_r: state 0, step, add the seed, step (step: state * mult + inc)
        out.append((((inc + ((a << 64) | b)) * _PCG_MULT + inc) & _MASK128, inc))
    return out


class CopyRng:
    """One ``Generator(PCG64)`` and one ``random.Random``, re-seeded per copy; attached to a transform once."""

    def __init__(self) -> None:
        self.bits = np.random.PCG64(0)
        self.np = np.random.Generator(self.bits)
        self.py = random.Random(0)

    def seed(self, seed: int, state: tuple[int, int] | None = None) -> None:
        """Put both generators where ``Generator(PCG64(seed))`` and ``Random(seed)`` start.

        Args:
            seed: the copy's seed.
            state: ``pcg64_states([seed])[0]`` when already computed (the batch path); else derived here.
        """
        if state is None:
            self.bits.state = np.random.PCG64(seed).state
        else:
            self.bits.state = {"bit_generator": "PCG64", "state": {"state": state[0], "inc": state[1]}, "has_uint32": 0, "uinteger": 0}
        self.py.seed(seed)

    def attach(self, compose: Any) -> None:
        """Make every transform of ``compose`` draw from this pair (albumentations keeps the references)."""
        if getattr(compose, "py_random", None) is not self.py:
            compose.set_random_state(self.np, self.py)
