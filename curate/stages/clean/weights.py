"""``curate clean --action weight``: act softly on suspected label errors, with a training weight per row.

Excluding a suspected label error pays full price for every hard clean row it loses, and on issue 18's planted sets
a lost clean row costs the final model about as much as a wrong row left in (BENCHMARKS.md "What the shipped
default's shortfall costs"). ``weight`` keeps every checked row except junk and gives it a weight in [0, 1]: the
posterior that its given label is right,

    w = T[y, y] p(y) / sum_j T[y, j] p(j)

with ``p`` the row's out-of-sample probabilities and ``T`` cleanlab's estimated noise matrix (``T[i, j]`` =
P(given label i | true label j), from the confident joint of the same probabilities). It is Bayes' rule with the
models' probabilities as the likelihood of the true class and the noise the data shows as the prior of mislabeling:
a row the models give its label at the class's usual confidence keeps weight near 1, a row whose label the models
all but rule out gets near 0, and the uncertain middle (where exclude loses the hard clean rows) keeps part of its
say. Junk (``ood_score`` above ``junk_threshold``) is excluded as under ``exclude``.

The weight is written to ``clean_weight`` (the checked rows; null elsewhere) and multiplied into ``sample_weight``
(null counts as 1; the factor of an earlier weighting is divided out first, so a second run replaces it).
``curate train`` draws each train row with probability proportional to ``sample_weight``
(``curate.learn.data.EpochBatches``); ``curate balance --strategy weights`` afterwards writes its class weight times
``clean_weight``, so the clean weighting survives it.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa

#: weights below this count as "down-weighted" in the stats (a row the sampler draws less than about half as often)
LOW = 0.5


def label_posterior(labels: np.ndarray, probs: np.ndarray) -> np.ndarray:
    """float ``(N,)`` in [0, 1]: the posterior that each given label is right (module doc).

    Args:
        labels: int ``(N,)`` given class indices; probs: float ``(N, K)`` out-of-sample probabilities.
    """
    from cleanlab.count import estimate_py_and_noise_matrices_from_probabilities

    labels = np.asarray(labels, np.int64)
    probs = np.asarray(probs, np.float64)
    present = np.unique(labels)
    if len(present) < 2:
        return np.ones(len(labels))
    # cleanlab needs every class among the labels (as label_issues): classes never given are folded away
    remap = np.full(probs.shape[1], -1)
    remap[present] = np.arange(len(present))
    sub = probs[:, present]
    sub = sub / np.maximum(sub.sum(1, keepdims=True), 1e-12)
    y = remap[labels]
    _, noise, _, _ = estimate_py_and_noise_matrices_from_probabilities(y, sub)
    post = noise[y, y] * sub[np.arange(len(y)), y] / np.maximum((noise[y, :] * sub).sum(1), 1e-12)
    return np.clip(post, 0.0, 1.0)


def apply_weights(table: pa.Table, pos: np.ndarray, weights: np.ndarray, acted: np.ndarray) -> tuple[pa.Table, dict[str, float | int]]:
    """Write ``clean_weight`` and multiply it into ``sample_weight`` (replacing the factor of an earlier weighting).

    Args:
        table: the version's sample table; pos: int ``(M,)`` positions of the checked rows; weights: float ``(M,)``
            their weights; acted: bool ``(M,)`` the rows that may be acted on (``act_on``; not excluded): the others
            keep weight 1 in ``clean_weight`` and their ``sample_weight``.

    Returns:
        The table and the stats: ``rows`` weighted, ``down_weighted`` (weight below ``LOW``) and their ``mean``
        weight.
    """
    n = table.num_rows
    w = np.where(acted, np.clip(weights, 0.0, 1.0), 1.0)
    clean_w: list[float | None] = [None] * n
    for p, v in zip(pos.tolist(), w.tolist(), strict=True):
        clean_w[p] = v
    old = table.column("sample_weight").to_pylist() if "sample_weight" in table.column_names else [None] * n
    prev = table.column("clean_weight").to_pylist() if "clean_weight" in table.column_names else [None] * n
    # an earlier clean --action weight's factor is divided out first: a second run replaces it, never compounds it
    base = [s if s is None or not c else float(s) / c for s, c in zip(old, prev, strict=True)]
    new = list(base)
    for p, v in zip(pos[acted].tolist(), w[acted].tolist(), strict=True):
        new[p] = (1.0 if base[p] is None else base[p]) * v
    for name, values in (("clean_weight", clean_w), ("sample_weight", new)):
        arr = pa.array(values, pa.float64())
        if name in table.column_names:
            table = table.set_column(table.schema.get_field_index(name), name, arr)
        else:
            table = table.append_column(name, arr)
    got = w[acted]
    stats = {
        "rows": int(acted.sum()),
        "down_weighted": int((got < LOW).sum()),
        "mean": round(float(got.mean()), 4) if len(got) else 1.0,
    }
    return table, stats
