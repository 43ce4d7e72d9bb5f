"""The fast paths of ``curate augment`` give what the recipe says: the per-copy generators seeded in place are the
streams of a fresh ``Generator(PCG64(s))`` / ``Random(s)`` pair, the cached recipe text is the ``json.dumps`` text,
and albumentations imports without torch or huggingface_hub and leaves both importable.

Ground truth is numpy, ``random`` and ``json`` themselves.
"""

from __future__ import annotations

import json
import random
import subprocess
import sys

import numpy as np
import pytest

from curate.augmentation.copies import _recipe_template
from curate.augmentation.rng import CopyRng, pcg64_states

SEEDS = [0, 1, 2, 255, 65_536, 123_456_789, 2**31, 2**32 - 1, *random.Random(5).sample(range(2**32), 300)]


def test_pcg64_states_are_numpys_for_every_seed() -> None:
    want = [(st["state"]["state"], st["state"]["inc"]) for st in (np.random.PCG64(s).state for s in SEEDS)]
    assert pcg64_states(SEEDS) == want
    assert pcg64_states(np.array(SEEDS[:5], dtype=np.uint64)) == want[:5]
    assert pcg64_states([]) == []


@pytest.mark.parametrize("bad", [-1, 2**32])
def test_pcg64_states_refuses_a_seed_wider_than_one_word(bad: int) -> None:
    with pytest.raises(ValueError, match="2\\*\\*32"):
        pcg64_states([3, bad])


def _draws(g: np.random.Generator, r: random.Random) -> tuple:
    """Draws that touch every piece of state: 64-bit, buffered 32-bit integers, normals, Python floats, gauss."""
    return (
        g.random(3).tolist(),
        g.integers(0, 10, size=3, dtype=np.uint32).tolist(),  # an odd count leaves half a word buffered
        g.normal(size=2).tolist(),
        [r.random() for _ in range(3)],
        r.gauss(0, 1),  # leaves a cached second normal
        r.uniform(-1, 1),
    )


def test_copy_rng_reseeded_in_place_draws_like_a_fresh_pair() -> None:
    rng = CopyRng()
    states = pcg64_states(SEEDS[:40])
    for i, (seed, state) in enumerate(zip(SEEDS[:40], states, strict=True)):
        # with the batch's precomputed state, and without it (the path of a redrawn copy)
        rng.seed(seed, state if i % 2 else None)
        assert _draws(rng.np, rng.py) == _draws(np.random.Generator(np.random.PCG64(seed)), random.Random(seed))


def test_copy_rng_attaches_to_every_transform_once() -> None:
    from curate.augmentation.policies import apply_transform, augment_array, build_policy

    image = np.random.default_rng(0).integers(0, 256, size=(20, 20), dtype=np.uint8)
    fast, reference = build_policy("heavy"), build_policy("heavy")
    rng = CopyRng()
    rng.attach(fast)
    assert all(t.py_random is rng.py and t.random_generator is rng.np for t in fast.transforms)
    for seed in SEEDS[:25]:
        rng.seed(seed)
        rng.attach(fast)  # a no-op once attached: the transforms hold the pair that was re-seeded
        assert np.array_equal(apply_transform(fast, image), augment_array(reference, seed, image))


@pytest.mark.parametrize(
    ("pid", "encode", "mode", "policy"),
    [
        ("ab" * 32, {"format": "PNG"}, "L", "medium"),
        ("cd" * 32, {"format": "JPEG", "quality": 95}, "RGB", "heavy"),
        ('odd "id" 100%', {"format": "PNG"}, "RGB", "my 50% policy.yaml"),
    ],
)
def test_recipe_template_is_the_json_dumps_text(pid: str, encode: dict, mode: str, policy: str) -> None:
    tjson = json.dumps({"transform": {"p": 0.5, "name": "Affine 10%", "list": [1, 2.5]}}, sort_keys=True, separators=(",", ":"))
    for copy, seed in ((0, 0), (3, 4_000_000_000), (2**32 + 1, 17)):
        record = {"copy": copy, "encode": encode, "mode": mode, "parent_id": pid, "policy": policy, "rng": "shared"}
        want = json.dumps({**record, "seed": seed, "transform": json.loads(tjson)}, sort_keys=True, separators=(",", ":"))
        assert _recipe_template(pid, encode, mode, policy, tjson) % (copy, seed) == want


def test_albumentations_imports_without_torch_or_the_hub_and_leaves_them_importable() -> None:
    code = (
        "import sys, importlib.util\n"
        "from curate.augmentation.policies import albumentations, build_policy\n"
        "A = albumentations(); assert build_policy('medium') is not None\n"
        "print(sorted(m for m in ('torch', 'huggingface_hub') if m in sys.modules))\n"
        "print(sorted(k for k, v in sys.modules.items() if v is None and k.split('.')[0] in ('albumentations', 'huggingface_hub')))\n"
        "if importlib.util.find_spec('huggingface_hub'):\n"
        "    import huggingface_hub\n"
        "print('ok')\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split("\n")
    assert out[:3] == ["[]", "[]", "ok"]
