"""curate clean against planted ground truth: flipped labels, junk images, a black image.

The data: four classes of 16x16 grayscale images, a bright 5x5 blob in one quadrant under dim noise (class =
quadrant), 60 per class. 12 images are saved under a wrong class folder (flipped labels, known), 6 junk images
(diagonal stripes, no blob) are filed under the classes, and one black image under ``q0``. The k-fold models
are trained once per module; later runs reuse the cached out-of-sample probabilities.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow.compute as pc
import pytest
from helpers import assert_one_error_line
from typer.testing import CliRunner

from curate.cli import app
from curate.pipeline import run_stage
from curate.stages.clean import CleanConfig, config_dict
from curate.stages.clean.checks import run_clean
from curate.workspace import Workspace
from tests.conftest import ingest

PER_CLASS, FLIPS, JUNK = 60, 12, 6
FAST = {"folds": 4, "epochs": 3}


def _blob(rng: np.random.Generator, quadrant: int) -> np.ndarray:
    im = rng.integers(0, 90, (16, 16), dtype=np.uint8)
    r, c = (quadrant // 2) * 8 + rng.integers(0, 4), (quadrant % 2) * 8 + rng.integers(0, 4)
    im[r : r + 5, c : c + 5] = rng.integers(180, 256)
    return im


def _stripes(rng: np.random.Generator) -> np.ndarray:
    yy, xx = np.mgrid[:16, :16]
    im = np.where((xx + yy + rng.integers(0, 4)) % 4 < 2, 255, 0).astype(np.uint8)
    return im ^ rng.integers(0, 16, im.shape, dtype=np.uint8)  # every junk image distinct (no dedupe merge)


def make_dataset(root: Path) -> dict[str, dict[str, str]]:
    """Write the tree; returns ``{"flipped": {file name: true class}, "junk": {...}, "dark": {...}}``."""
    from PIL import Image

    rng = np.random.default_rng(7)
    truth: dict[str, dict[str, str]] = {"flipped": {}, "junk": {}, "dark": {}}
    flip_at = set(rng.choice(4 * PER_CLASS, FLIPS, replace=False).tolist())
    for k in range(4 * PER_CLASS):
        q = k % 4
        folder = q
        name = f"img{k:04d}.png"
        if k in flip_at:
            folder = (q + 1 + int(rng.integers(0, 3))) % 4
            truth["flipped"][name] = f"q{q}"
        path = root / f"q{folder}" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(_blob(rng, q)).save(path)
    for j in range(JUNK):
        name = f"junk{j}.png"
        Image.fromarray(_stripes(rng)).save(root / f"q{j % 4}" / name)
        truth["junk"][name] = f"q{j % 4}"
    Image.fromarray(np.zeros((16, 16), np.uint8)).save(root / "q0" / "black.png")
    truth["dark"]["black.png"] = "q0"
    return truth


@pytest.fixture(scope="module")
def cleaned(tmp_path_factory: pytest.TempPathFactory) -> tuple[Workspace, dict[str, dict[str, str]]]:
    """A workspace after ingest + ``clean --find-mislabels --find-outliers`` (flag), and the truth."""
    root = tmp_path_factory.mktemp("clean")
    truth = make_dataset(root / "images")
    ws = Workspace(root / "ws")
    ingest(ws, root / "images")
    _clean(ws, find_mislabels=True, find_outliers=True)
    return ws, truth


def _clean(ws: Workspace, **kw: object) -> dict:
    cfg = CleanConfig(**{**FAST, **kw})
    return run_stage(ws, "clean", config_dict(cfg), lambda parent, pid: run_clean(ws, parent, pid, cfg))


def _back(ws: Workspace, vid: str) -> None:
    """Move HEAD back so the next test starts from the flagged version."""
    with ws.writer():
        ws.set_head(vid)


def _names(table, mask_col: str) -> set[str]:  # noqa: ANN001
    t = table.filter(pc.fill_null(table.column(mask_col), False))
    return {Path(s).name for s in t.column("source").to_pylist()}


def test_label_issues_recover_flipped_labels(cleaned) -> None:  # noqa: ANN001
    ws, truth = cleaned
    t = ws.samples()
    found = _names(t, "is_label_issue")
    flipped = set(truth["flipped"])
    recall = len(found & flipped) / len(flipped)
    precision = len(found & flipped) / max(len(found), 1)
    assert recall >= 0.8, (recall, sorted(found))
    assert precision >= 0.6, (precision, sorted(found - flipped))
    # the suggestion is the true class for the flipped rows that were found
    rows = {
        Path(s).name: (sug, q)
        for s, sug, q in zip(t["source"].to_pylist(), t["suggested_label"].to_pylist(), t["label_quality"].to_pylist(), strict=True)
    }
    right = sum(rows[n][0] == truth["flipped"][n] for n in found & flipped)
    assert right >= 0.8 * len(found & flipped)
    # label_quality ranks flipped rows low: their median is far below the clean rows' median
    fq = np.median([rows[n][1] for n in flipped])
    cq = np.median([q for n, (_, q) in rows.items() if n not in flipped and q is not None])
    assert fq < 0.3 < cq
    assert ws.stats(ws.head())["label_issues"]["flagged"] == len(found)
    assert t.num_rows == 4 * PER_CLASS + JUNK + 1 and pc.sum(pc.equal(t["status"], "excluded")).as_py() == 0  # flag only


def test_outliers_rank_junk_first(cleaned) -> None:  # noqa: ANN001
    ws, truth = cleaned
    t = ws.samples()
    names = [Path(s).name for s in t["source"].to_pylist()]
    score = np.array(t["ood_score"].to_pylist(), float)
    junk = np.array([n in truth["junk"] or n in truth["dark"] for n in names])
    # ROC AUC of ood_score for the planted junk (rank statistic)
    ranks = score.argsort().argsort()
    auc = (ranks[junk].sum() - junk.sum() * (junk.sum() - 1) / 2) / (junk.sum() * (~junk).sum())
    # 0.85 measured: stripes light every quadrant, so a blob-quadrant model is sometimes confident on them
    # (Fashion-MNIST + 500 MNIST digits: 0.996, BENCHMARKS.md); a score with no signal would sit near 0.5
    assert auc >= 0.75, auc
    flagged = _names(t, "is_outlier")
    odd = set(truth["junk"]) | set(truth["dark"]) | set(truth["flipped"])
    assert len(flagged & odd) >= 0.5 * len(flagged), sorted(flagged - odd)


def test_exclude_keeps_every_row_and_reuses_probabilities(cleaned) -> None:  # noqa: ANN001
    ws, truth = cleaned
    flagged = _names(ws.samples(), "is_label_issue")
    res = _clean(ws, find_mislabels=True, action="exclude", policy="all")  # every flagged row (before issue 18)
    assert res["stats"]["oof"] == "cached"  # only the action changed: no model trained
    t = ws.samples()
    assert t.num_rows == 4 * PER_CLASS + JUNK + 1
    ex = t.filter(pc.equal(t["status"], "excluded"))
    assert set(ex["reason"].to_pylist()) == {"label_issue"} and set(ex["excluded_by"].to_pylist()) == {"clean"}
    assert {Path(s).name for s in ex["source"].to_pylist()} == flagged
    _back(ws, ws.resolve("HEAD~1"))


def test_relabel_changes_only_confident_rows_and_keeps_the_given_label(cleaned) -> None:  # noqa: ANN001
    ws, truth = cleaned
    before = {Path(s).name: lab for s, lab in zip(ws.samples()["source"].to_pylist(), ws.samples()["label"].to_pylist(), strict=True)}
    res = _clean(ws, find_mislabels=True, action="relabel", relabel_threshold=0.8)
    t = ws.samples()
    changed = t.filter(pc.equal(t["label_source"], "relabel:clean"))
    assert changed.num_rows == res["stats"]["label_issues"]["relabeled"] >= 0.6 * FLIPS
    assert all(c >= 0.8 for c in changed["suggested_confidence"].to_pylist())
    for s, lab, given in zip(
        changed["source"].to_pylist(), changed["label"].to_pylist(), changed["given_label"].to_pylist(), strict=True
    ):
        assert given == before[Path(s).name] != lab
    # real images (not the planted junk, which has no true class) are relabeled to their true class
    real = [(Path(s).name, lab) for s, lab in zip(changed["source"].to_pylist(), changed["label"].to_pylist(), strict=True)]
    real = [(n, lab) for n, lab in real if n not in truth["junk"] and n not in truth["dark"]]
    assert real and sum(truth["flipped"].get(n) == lab for n, lab in real) >= 0.9 * len(real)
    assert pc.sum(pc.equal(t["status"], "excluded")).as_py() == 0
    _back(ws, ws.resolve("HEAD~1"))


def test_only_train_rows_are_acted_on_by_default(cleaned, tmp_path) -> None:  # noqa: ANN001
    ws, _ = cleaned
    import dataclasses

    from curate.stages.split import SplitConfig
    from curate.stages.split.assign import run_split

    head = ws.head()
    scfg = SplitConfig(ratios=(("train", 0.5), ("val", 0.25), ("test", 0.25)))
    run_stage(ws, "split", dataclasses.asdict(scfg), lambda parent, pid: run_split(parent, scfg))
    _clean(ws, find_mislabels=True, action="exclude", policy="all")
    t = ws.samples()
    issue = pc.fill_null(t["is_label_issue"], False)
    for split in ("val", "test"):
        rows = t.filter(pc.and_(issue, pc.equal(t["split"], split)))
        assert rows.num_rows > 0 or split == "test"
        assert set(rows["status"].to_pylist()) <= {"ok"}
    tr = t.filter(pc.and_(issue, pc.equal(t["split"], "train")))
    assert tr.num_rows > 0 and set(tr["status"].to_pylist()) == {"excluded"}
    _back(ws, ws.resolve("HEAD~1"))  # the split version: same checked rows, so the probabilities are reused
    res = _clean(ws, find_mislabels=True, action="exclude", policy="all", act_on="all", max_fraction=0.02)
    assert res["stats"]["oof"] == "cached"
    t = ws.samples()
    assert pc.sum(pc.equal(t["reason"], "label_issue")).as_py() <= tr.num_rows + int(0.02 * t.num_rows) + 1
    _back(ws, head)


def test_pred_probs_file_replaces_training(cleaned, tmp_path) -> None:  # noqa: ANN001
    ws, truth = cleaned
    t = ws.samples()
    rows = []
    for sid, src in zip(t["sample_id"].to_pylist(), t["source"].to_pylist(), strict=True):
        name = Path(src).name
        true = truth["flipped"].get(name) or (Path(src).parent.name)
        rows.append({"sample_id": sid, **{f"p_q{k}": (0.97 if f"q{k}" == true else 0.01) for k in range(4)}})
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = tmp_path / "probs.parquet"
    pq.write_table(pa.Table.from_pylist(rows), path)
    res = _clean(ws, find_mislabels=True, pred_probs=str(path))
    assert res["stats"]["oof"] == "not needed"
    assert _names(ws.samples(), "is_label_issue") == set(truth["flipped"])
    _back(ws, ws.resolve("HEAD~1"))
    pq.write_table(pa.Table.from_pylist([{k: v for k, v in r.items() if k != "p_q3"} for r in rows]), path)
    out = CliRunner().invoke(app, ["clean", "-w", str(ws.root), "--find-mislabels", "--pred-probs", str(path)])
    assert out.exit_code == 2 and "no column for class 'q3'" in assert_one_error_line(out.stderr)


def test_low_quality_flags_the_black_image_and_excludes_with_reason(cleaned, tmp_path) -> None:  # noqa: ANN001
    ws, truth = cleaned
    res = _clean(ws, find_low_quality=True, action="exclude")
    t = ws.samples()
    assert _names(t, "is_dark") == set(truth["dark"])
    ex = t.filter(pc.equal(t["reason"], "low_quality"))
    assert {Path(s).name for s in ex["source"].to_pylist()} == _names(t, "is_low_quality") >= set(truth["dark"])
    assert res["stats"]["low_quality"]["by_check"].get("dark") == 1
    _back(ws, ws.resolve("HEAD~1"))


def test_cli_json_review_files_and_usage_errors(cleaned, tmp_path) -> None:  # noqa: ANN001
    ws, truth = cleaned
    runner = CliRunner()
    args = ["clean", "-w", str(ws.root), "--find-mislabels", "--folds", "4", "--epochs", "3"]
    out = runner.invoke(app, [*args, "--json", "--review-out", str(tmp_path / "r.csv")])
    assert out.exit_code == 0, out.output
    doc = json.loads(out.stdout)
    assert doc["stage"] == "clean" and doc["review"]["rows"] == doc["stats"]["label_issues"]["flagged"]
    csv = (tmp_path / "r.csv").read_text().splitlines()
    assert len(csv) == doc["review"]["rows"] + 1 and "suggested_label" in csv[0]
    out = runner.invoke(app, [*args, "--review-out", str(tmp_path / "r.html")])
    assert out.exit_code == 0, out.output
    html = (tmp_path / "r.html").read_text()
    assert html.count("data:image/") >= len(truth["flipped"]) * 0.8 and "label issues" in out.output
    out = runner.invoke(app, ["clean", "-w", str(ws.root)])
    assert out.exit_code == 2 and "nothing to check" in assert_one_error_line(out.stderr)
    out = runner.invoke(app, [*args, "--action", "delete"])
    assert out.exit_code == 2 and "--action must be one of" in assert_one_error_line(out.stderr)


def test_second_pass_retrains_without_the_first_pass_drops_and_caches(cleaned) -> None:  # noqa: ANN001
    import pyarrow.parquet as pq

    from curate.stages.clean.passes import first_pass_drops

    ws, truth = cleaned
    start = ws.head()
    res = _clean(ws, find_mislabels=True, find_outliers=True, action="exclude", passes=2)
    st = res["stats"]
    assert st["oof"] == "cached"  # the first pass is the fixture's models
    # the left-out rows are the ones the shipped policy acts on after the first pass
    t = ws.samples(start)
    oof = ws.state_path(ws.head(), "clean_oof_pass2.parquet")
    assert oof.exists() and st["pass2"]["oof"] == "computed"
    assert 0 < st["pass2"]["left_out"] <= len(_names(t, "is_label_issue")) + JUNK + 1
    probs2 = np.asarray(pq.read_table(oof).column("probs").to_pylist())
    assert np.isfinite(probs2).all() and np.allclose(probs2.sum(1), 1, atol=1e-4)  # left-out rows predicted too
    # judged by the second pass, the planted flips are still found, and excluded rows keep their reason
    out = ws.samples()
    flipped = set(truth["flipped"])
    assert len(_names(out, "is_label_issue") & flipped) >= 0.8 * len(flipped)
    ex = out.filter(pc.equal(out["status"], "excluded"))
    assert set(ex["reason"].to_pylist()) <= {"label_issue", "outlier"} and ex.num_rows > 0
    # the same settings again: both passes come from the cache
    _back(ws, start)
    again = _clean(ws, find_mislabels=True, find_outliers=True, action="exclude", passes=2)
    assert again["cached"] or again["stats"]["pass2"]["oof"] == "cached"
    no_probs = np.array([[np.nan, np.nan], [0.1, 0.9]])  # a row without probabilities is never left out
    assert not first_pass_drops(np.array([0, 1]), no_probs, CleanConfig(**FAST))[0]
    _back(ws, start)
