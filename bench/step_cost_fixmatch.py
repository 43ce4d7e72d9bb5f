"""CPU seconds per optimizer step of a pseudolabel round with and without the FixMatch term (small-cnn, 28x28, batch 128).

Process CPU time (``time.process_time``, one torch thread), so other jobs on the machine inflate it less than wall time.
The supervised step is today's: albumentations ``affine`` on 128 rows, forward + backward. The FixMatch step adds
``mu x 128`` pool rows: their weak view (``affine``) forward without gradient, their strong view in the same forward and
backward as the labeled rows.

    OMP_NUM_THREADS=1 python bench/step_cost_fixmatch.py --mu 1 2 4
"""

from __future__ import annotations

import argparse
import time

import numpy as np


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--mu", type=int, nargs="+", default=[2])
    ap.add_argument("--steps", type=int, default=15)
    a = ap.parse_args()
    import torch
    import torch.nn.functional as F

    from curate.learn.consistency import ConsistencySettings, FixMatch
    from curate.learn.data import Normalizer, augmenter
    from curate.learn.nets import build
    from curate.learn.stream import augment_batch

    torch.set_num_threads(1)
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (4096, 28, 28, 1), dtype=np.uint8)
    norm = {"mean": [0.13], "std": [0.3]}
    aug, nz = augmenter("affine", (28, 28)), Normalizer(norm["mean"], norm["std"])
    model = build("small-cnn", 1, 10, (28, 28))
    opt = torch.optim.AdamW(model.parameters(), 1e-3)
    y = torch.from_numpy(rng.integers(0, 10, 128))

    def step(fm: FixMatch | None, k: int) -> None:
        x = nz(augment_batch(aug, images[(np.arange(128) + 128 * k) % 4096], k))
        logits, extra = fm(model, x, k) if fm else (model(x), None)
        loss = F.cross_entropy(logits, y) + (extra if extra is not None else 0)
        opt.zero_grad()
        loss.backward()
        opt.step()

    for mu in [0, *a.mu]:
        fm = FixMatch(images, norm, aug, ConsistencySettings(ratio=mu), flip=False, seed=0) if mu else None
        step(fm, 0)
        t = time.process_time()
        for k in range(1, a.steps + 1):
            step(fm, k)
        s = (time.process_time() - t) / a.steps
        print(f"mu {mu}: {s:.3f} CPU-s per step" + (" (supervised)" if not mu else ""), flush=True)


if __name__ == "__main__":
    main()
