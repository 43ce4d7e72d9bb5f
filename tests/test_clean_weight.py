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
from curate.stages.clean import CleanConfig, config_dict, summary
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
    assert f"{w['down_weighted']:,} rows down-weighted" in summary(res)
    _back(ws, start)


def test_weights_multiply_an_earlier_sample_weight_and_balance_multiplies_them_back(tmp_path: Path) -> None:
    from curate.stages.balance.strategies import weights as balance_weights

    table = pa.table({"sample_id": ["a", "b", "c"], "sample_weight": [2.0, None, 4.0]})
    out, stats = apply_weights(table, np.array([0, 1, 2]), np.array([0.5, 0.25, 1.5]), np.array([True, True, False]))
    assert out["clean_weight"].to_pylist() == [0.5, 0.25, 1.0]  # a row not acted on keeps 1
    assert out["sample_weight"].to_pylist() == [1.0, 0.25, 4.0]
    assert stats == {"rows": 2, "down_weighted": 1, "mean": 0.375}
    again, _ = apply_weights(out, np.array([0, 1, 2]), np.array([1.0, 0.5, 0.5]), np.array([True, True, True]))
    assert again["sample_weight"].to_pylist() == [2.0, 0.5, 2.0]  # a second weighting replaces the first, never compounds
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


def _quadrant_images(root: Path, rng: np.random.Generator, quads: list[tuple[str, int, str]]) -> list[tuple[str, int]]:
    """16x16 noise with a bright 5x5 blob in quadrant q (0 TL, 1 TR, 2 BL, 3 BR), saved under ``root/<label>/<name>``;
    the (name, quadrant) list."""
    from PIL import Image

    out = []
    for name, q, label in quads:
        im = rng.integers(0, 110, (16, 16), dtype=np.uint8)
        r, c = (q // 2) * 8 + int(rng.integers(0, 4)), (q % 2) * 8 + int(rng.integers(0, 4))
        im[r : r + 5, c : c + 5] = 230
        (root / label).mkdir(parents=True, exist_ok=True)
        Image.fromarray(im).save(root / label / name)
        out.append((name, q))
    return out


def test_train_honours_the_weights_a_weighted_model_unlearns_the_planted_flips(tmp_path: Path) -> None:
    """Class a: a blob top-left or bottom-left; class b: top-right or bottom-right. 70% of the bottom-left rows are
    labeled b (flips), so a model trained on the labels as given calls bottom-left blobs b. The planted
    out-of-sample probabilities know the truth (0.95 on the true class): with ``--action weight`` the flips weigh
    about 0.15 and the model trained on the weighted version calls bottom-left blobs a."""
    from PIL import Image

    from curate.learn.predict import load_run, predict_images
    from curate.learn.train import TrainConfig, train
    from curate.stages.split import SplitConfig
    from curate.stages.split.assign import run_split

    rng = np.random.default_rng(3)
    quads = [(f"q{q}-{i:03d}.png", q, "ab"[q % 2]) for q in (0, 1, 3) for i in range(40)]
    quads += [(f"q2-{i:03d}.png", 2, "b" if i < 28 else "a") for i in range(40)]
    rows = _quadrant_images(tmp_path / "images", rng, quads)
    ws = Workspace(tmp_path / "ws")
    ingest(ws, tmp_path / "images")
    run_stage(ws, "split", {"seed": 0}, lambda parent, _pid: run_split(parent, SplitConfig(ratios=(("train", 1.0),))))
    plain = ws.head()
    t = ws.samples()
    p_true = {n: [0.95, 0.05] if q in (0, 2) else [0.05, 0.95] for n, q in rows}
    names = [Path(s).name for s in t["source"].to_pylist()]
    pq.write_table(pa.table({"sample_id": t["sample_id"].to_pylist(), "probs": [p_true[n] for n in names]}), tmp_path / "p.parquet")
    cfg = CleanConfig(find_mislabels=True, action="weight", pred_probs=str(tmp_path / "p.parquet"))
    run_stage(ws, "clean", config_dict(cfg), lambda parent, pid: run_clean(ws, parent, pid, cfg))
    weighted = ws.head()
    w = {Path(r["source"]).name: r["sample_weight"] for r in ws.samples().to_pylist()}
    assert max(w[f"q2-{i:03d}.png"] for i in range(28)) < 0.3 < 0.9 < min(w[f"q2-{i:03d}.png"] for i in range(28, 40))

    made = _quadrant_images(tmp_path / "test", rng, [(f"t{i}.png", 2, "a") for i in range(50)])  # truly a
    test = np.stack([np.asarray(Image.open(tmp_path / "test" / "a" / n))[..., None] for n, _ in made])

    def bottom_left_as_a(version: str, out: str) -> float:
        res = train(ws, TrainConfig(version=version, epochs=12, batch_size=16, lr=3e-3, patience=0, seed=0, out=str(tmp_path / out)))
        run = load_run(res["run"], which="last", device="cpu")
        probs = predict_images(run, test)
        return float((np.asarray(run.classes)[probs.argmax(1)] == "a").mean())

    assert bottom_left_as_a(plain, "plain") < 0.5  # the flips win without weights
    assert bottom_left_as_a(weighted, "weighted") > 0.8
