"""The FixMatch consistency term of ``curate pseudolabel`` (``curate.learn.consistency``) against known truth.

The task: 16x16 noise with a brighter 8x5 block near the left edge (class ``left``) or the right edge (``right``),
at a random height; 16 labeled rows, an unlabeled pool of 400, 400 test rows. The strong views (affine up to 20%
shift, 30 degrees, cutout) keep the block on its side, so the term's targets are right where the weak view is
confident. Fast: tiny nets, 100 steps, arrays only (no workspace).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from curate.learn.consistency import ConsistencySettings, FixMatch, policy_flips, strong_augment
from curate.learn.data import DecodedSplit, eval_loader, fit_normalization
from curate.learn.selftrain import train_round
from curate.learn.train import TrainConfig, evaluate

pytestmark = pytest.mark.timeout(120)


def halves(rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
    """uint8 ``(n, 16, 16, 1)`` images and int labels ``(n,)`` (0: block on the left, 1: on the right)."""
    y = rng.integers(0, 2, n)
    x = rng.integers(0, 160, (n, 16, 16)).astype(np.int64)
    for i in range(n):
        r0, c0 = rng.integers(2, 7), rng.integers(2, 4)
        c0 = c0 if y[i] == 0 else 16 - c0 - 5
        x[i, r0 : r0 + 8, c0 : c0 + 5] += 70
    return np.clip(x, 0, 255).astype(np.uint8)[..., None], y.astype(np.int64)


@pytest.fixture(scope="module")
def task() -> dict:
    rng = np.random.default_rng(0)
    (xl, yl), (xp, _), (xt, yt) = halves(rng, 16), halves(rng, 400), halves(rng, 400)
    return {"lab": DecodedSplit(xl, yl, [str(i) for i in range(len(yl))]), "pool": xp, "test": (xt, yt), "norm": fit_normalization(xl)}


def _fit(task: dict, cons: ConsistencySettings | None) -> tuple[dict, float]:
    cfg = TrainConfig(arch="tiny-cnn", batch_size=16, augment="none", device="cpu", seed=0, patience=0, epochs=1)
    res = train_round(task["lab"], None, None, ["left", "right"], cfg, ratio=(10.0, 1.0), normalization=task["norm"],
                      min_steps=100, unlabeled=task["pool"], consistency=cons)  # fmt: skip
    xt, yt = task["test"]
    ev = evaluate(res["model"].eval(), eval_loader(DecodedSplit(xt, yt, [""] * len(yt)), task["norm"]), torch.device("cpu"))
    return res, ev["acc"]


def test_strong_views_are_deterministic_in_range_and_mirror_only_when_asked() -> None:
    x = torch.rand(8, 1, 16, 16)
    a = strong_augment(x, torch.Generator().manual_seed(3))
    b = strong_augment(x, torch.Generator().manual_seed(3))
    c = strong_augment(x, torch.Generator().manual_seed(4))
    assert a.shape == x.shape and torch.equal(a, b) and not torch.equal(a, c)
    assert float(a.min()) >= 0 and float(a.max()) <= 1
    # strength 0: no affine, no jitter, only the (zero-sized) cutout: the image comes back
    assert torch.allclose(strong_augment(x, torch.Generator().manual_seed(3), strength=0.0), x, atol=1e-5)
    assert policy_flips("flip-shift") and policy_flips("medium") and not policy_flips("affine") and not policy_flips("none")


def test_unlabeled_rows_cycle_through_the_pool_before_repeating() -> None:
    fm = FixMatch(np.zeros((10, 4, 4, 1), np.uint8), {"mean": [0.0], "std": [1.0]}, None, ConsistencySettings(), flip=False, seed=1)
    seen = np.concatenate([fm._rows(step, 4) for step in range(5)])  # 20 draws = two full cycles
    assert sorted(seen[:10].tolist()) == list(range(10)) and sorted(seen[10:].tolist()) == list(range(10))
    assert np.array_equal(fm._rows(2, 4), fm._rows(2, 4))


def test_consistency_round_is_deterministic_learns_the_task_and_is_no_worse(task: dict) -> None:
    cons = ConsistencySettings(weight=1.0, threshold=0.95, ratio=2)
    res, acc = _fit(task, cons)
    again, acc2 = _fit(task, cons)
    _, acc_sup = _fit(task, None)
    for k, v in res["model"].state_dict().items():
        assert torch.equal(v, again["model"].state_dict()[k]), k
    assert acc == acc2
    # the weak views grow confident on most pool rows, and those targets teach the task
    assert 0.5 < res["consistency_mask_rate"] <= 1.0
    assert acc >= 0.95 and acc >= acc_sup - 0.01
    assert res["meta"]["consistency"] == {"mode": "fixmatch", "weight": 1.0, "threshold": 0.95, "ratio": 2, "strength": 1.0,
                                          "pool_rows": 400, "flip": False}  # fmt: skip


def test_stage_checks_the_consistency_options_and_keeps_old_cache_keys() -> None:
    from curate.errors import UsageError
    from curate.stages.pseudolabel import PseudolabelConfig, check, key
    from curate.stages.pseudolabel.label import consistency_settings

    check(PseudolabelConfig(consistency="fixmatch", unlabeled_ratio=3))
    for bad in ({"consistency": "mixmatch"}, {"unlabeled_ratio": 0}, {"consistency_threshold": 0.0}, {"consistency_weight": -1.0}):
        with pytest.raises(UsageError):
            check(PseudolabelConfig(**bad))
    assert "consistency_weight" not in key(None, PseudolabelConfig())  # a version made before the option still matches
    assert key(None, PseudolabelConfig(consistency="fixmatch"))["unlabeled_ratio"] == 2
    assert consistency_settings(PseudolabelConfig()) is None
    assert consistency_settings(PseudolabelConfig(consistency="fixmatch", unlabeled_ratio=3)).ratio == 3


def test_the_loop_runs_the_term_in_rounds_after_the_supervised_one(task: dict) -> None:
    from curate.stages.pseudolabel.loop import LoopSettings, run_loop

    rng = np.random.default_rng(5)
    val = DecodedSplit(*halves(rng, 40), [f"v{i}" for i in range(40)])
    cfg = TrainConfig(arch="tiny-cnn", batch_size=16, augment="none", device="cpu", seed=0, patience=0, epochs=1)
    settings = LoopSettings(rounds=1, threshold=0.9, min_steps=40, consistency=ConsistencySettings(ratio=1))
    res = run_loop(task["lab"], val, task["pool"], ["left", "right"], cfg, settings, normalization=task["norm"])
    r0, r1 = res.rounds
    assert "consistency_mask_rate" not in r0 and 0 < r1["consistency_mask_rate"] <= 1
    assert res.models["round0"]["meta"]["consistency"] is None
    meta = res.models["round1"]["meta"]["consistency"]
    assert meta["ratio"] == 1 and meta["pool_rows"] == len(task["pool"]) - r1["ood"]  # the OOD rows are left out
