"""``curate clean --action weight`` (issue 18): a training weight per row instead of exclusion, against planted truth.

The rows and their planted out-of-sample probabilities are ``tests/test_clean_policy.py``'s (400 tiny images in four
classes: clean rows, hard clean rows that lean to a look-alike class, 8% flips, 3% junk). A second, learnable set
checks that ``curate train`` honours the weights: a model trained on it is better with them than without.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from curate.pipeline import run_stage
from curate.stages.clean import CleanConfig, config_dict
from curate.stages.clean.checks import run_clean
from curate.stages.clean.policy import decide
from curate.stages.clean.weights import apply_weights, label_posterior
from curate.workspace import Workspace
from tests.conftest import ingest
from tests.test_clean_policy import FAST, _back, make_dataset


def _clean(ws: Workspace, pred_probs: str, **kw: object) -> dict:
    cfg = CleanConfig(**{**FAST, "pred_probs": pred_probs, **kw})
    return run_stage(ws, "clean", config_dict(cfg), lambda parent, pid: run_clean(ws, parent, pid, cfg))


def _planted(root: Path, truth_probs: tuple[dict, list]) -> tuple[Workspace, str]:
    """Ingest ``root/images`` and write the planted probabilities as a ``--pred-probs`` file."""
    _truth, probs = truth_probs
    ws = Workspace(root / "ws")
    ingest(ws, root / "images")
    t = ws.samples()
    by_name = dict(probs)
    names = [Path(s).name for s in t["source"].to_pylist()]
    pq.write_table(pa.table({"sample_id": t["sample_id"].to_pylist(), "probs": [by_name[n] for n in names]}), root / "p.parquet")
    return ws, str(root / "p.parquet")


def test_weight_action_excludes_junk_and_weighs_flips_below_clean_rows(tmp_path: Path) -> None:
    truth, probs = planted = make_dataset(tmp_path)
    ws, path = _planted(tmp_path, planted)
    start = ws.head()
    res = _clean(ws, path, action="weight")
    rows = {Path(r["source"]).name: r for r in ws.samples().to_pylist()}
    assert all(rows[n]["status"] == "excluded" and rows[n]["reason"] == "outlier" for n in truth["junk"])
    kept = [r for r in rows.values() if r["status"] == "ok"]
    assert all(r["label_source"] != "relabel:clean" for r in kept)  # weight never changes a label
    assert all(r["clean_weight"] == pytest.approx(r["sample_weight"]) and 0 <= r["clean_weight"] <= 1 for r in kept)

    def mean(kind: str) -> float:
        return float(np.mean([rows[n]["clean_weight"] for n in truth[kind]]))

    assert mean("flipped") < 0.2 < 0.8 < mean("clean"), (mean("flipped"), mean("clean"))
    assert mean("flipped") < mean("hard") < mean("clean")  # the hard clean rows keep part of their say
    assert sum(rows[n]["status"] == "excluded" for n in {**truth["clean"], **truth["hard"]}) == 0
    w = res["stats"]["label_issues"]["weighted"]
    assert w["rows"] == len(kept) and w["down_weighted"] >= 0.9 * len(truth["flipped"])
    assert "rows down-weighted" in __import__("curate.stages.clean", fromlist=["summary"]).summary(res)
    _back(ws, start)


def test_weights_multiply_an_earlier_sample_weight_and_balance_multiplies_them_back(tmp_path: Path) -> None:
    from curate.stages.balance.strategies import weights as balance_weights

    table = pa.table({"sample_id": ["a", "b", "c"], "sample_weight": [2.0, None, 4.0]})
    out, stats = apply_weights(table, np.array([0, 1, 2]), np.array([0.5, 0.25, 1.5]), np.array([True, True, False]))
    assert out["clean_weight"].to_pylist() == [0.5, 0.25, 1.0]  # a row not acted on keeps 1
    assert out["sample_weight"].to_pylist() == [1.0, 0.25, 4.0]
    assert stats == {"rows": 2, "down_weighted": 1, "mean": 0.375}
    rows = pa.table({"sample_id": ["a", "b", "c", "d"], "label": ["x", "x", "x", "y"], "split": ["train"] * 4,
                     "status": ["ok"] * 4, "clean_weight": [0.5, None, 1.0, 0.2]})  # fmt: skip
    got, _ = balance_weights(rows)
    assert got["sample_weight"].to_pylist() == pytest.approx([4 / 6 * 0.5, 4 / 6, 4 / 6, 2.0 * 0.2])


def test_posterior_follows_the_noise_matrix() -> None:
    rng = np.random.default_rng(0)
    true = rng.integers(0, 3, 600)
    labels = true.copy()
    flip = rng.random(600) < 0.15
    labels[flip] = (true[flip] + 1) % 3
    probs = np.full((600, 3), 0.05)
    probs[np.arange(600), true] = 0.9
    post = label_posterior(labels, probs)
    assert post[flip].max() < 0.5 < post[~flip].min()
    assert label_posterior(np.zeros(4, np.int64), np.full((4, 2), 0.5)).tolist() == [1.0] * 4  # one class: no evidence


def test_decide_weight_excludes_junk_only() -> None:
    found = {"is_label_issue": np.array([1, 0, 0], bool), "label_quality": np.array([0.01, 0.3, 0.9]),
             "given_threshold": np.full(3, 0.6), "suggested_confidence": np.array([0.9, 0.3, 0.9]),
             "suggested_threshold": np.full(3, 0.6), "estimate_rank": np.array([0.0, 0.5, 2.0])}  # fmt: skip
    for policy in ("estimate", "confident", "all"):
        d = decide(found, np.array([0.1, 0.95, 0.1]), action="weight", policy=policy, relabel_threshold=0.9,
                   outlier_threshold=0.75, junk_threshold=0.85)  # fmt: skip
        assert d.exclude_outlier.tolist() == [0, 1, 0] and not d.exclude_label.any() and not d.relabel.any()
