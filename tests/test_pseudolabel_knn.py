"""``curate pseudolabel --select knn --model SPEC``: kNN agreement in a model's embedding space against known truth.

The task: 16x16 grayscale noise with a bright 4x4 patch in one quadrant (class = quadrant), 8 labeled train rows
per class, and a pool of 48 honest images plus 12 *decoys*: images that show the patch of quadrant q but whose
true class is q+1 (a shortcut in the pixels: what a small net trained from scratch confidently believes, and a
pretrained backbone would not). An ``embeddings:`` file plays the backbone: every image sits at its *true*
class's centre plus noise. So the truth is known row by row:

- the confidence bars alone accept decoys (confidently wrong pseudo-labels);
- with the agreement rule the labeled rows' kNN vote (always the true class here) vetoes every one of them,
  while the honest rows the bars accepted stay accepted.
"""

from __future__ import annotations

import csv
import hashlib
import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from helpers import assert_one_error_line
from typer.testing import CliRunner

from curate.cli import app
from curate.stages.pseudolabel.select import ACCEPTED, DISAGREE, select_pseudo
from curate.workspace import Workspace
from tests.test_pseudolabel import _blob, _save

CLASSES = ("q0", "q1", "q2", "q3")
N_LAB, N_HONEST, N_DECOY, DIM = 8, 48, 12, 8
FAST = ["--rounds", "1", "--min-steps", "80", "--batch-size", "32", "--threshold", "0.9", "--ratio", "1:1", "--seed", "0",
        "--filter", "none", "--balance", "0"]  # fmt: skip
pytestmark = pytest.mark.timeout(600)


def _patch(rng: np.random.Generator, q: int) -> np.ndarray:
    """A high-contrast patch: the supervised model is confident from 8 labels per class."""
    return _blob(rng, q, noise=100, contrast=140)


def _saved(path: Path, im: np.ndarray) -> str:
    _save(path, im)
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def task(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """The labeled manifest, the pool (ingested unlabeled), the truth, the embeddings file; HEAD = the pool's ingest."""
    root = tmp_path_factory.mktemp("plknn")
    rng = np.random.default_rng(4)
    rows, truth, decoys = [], {}, set()
    for k in range(4 * N_LAB):
        q = k % 4
        sid = _saved(root / "labeled" / f"{k:03d}.png", _patch(rng, q))
        rows.append({"path": f"{k:03d}.png", "label": CLASSES[q], "split": "train"})
        truth[sid] = q
    with open(root / "labeled" / "manifest.csv", "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=["path", "label", "split"])
        w.writeheader()
        w.writerows(rows)
    for k in range(N_HONEST + N_DECOY):
        q = k % 4
        decoy = k >= N_HONEST
        sid = _saved(root / "pool" / f"p{k:03d}.png", _patch(rng, q))
        truth[sid] = (q + 1) % 4 if decoy else q
        if decoy:
            decoys.add(sid)
    centres = rng.normal(0, 1, (4, DIM)) * 3
    ids = sorted(truth)
    vectors = [(centres[truth[s]] + rng.normal(0, 0.5, DIM)).astype(np.float32).tolist() for s in ids]
    emb = root / "emb.parquet"
    pq.write_table(pa.table({"sample_id": ids, "embedding": vectors}), emb)
    with open(root / "truth.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["sample_id", "label"])
        w.writerows([s, CLASSES[q]] for s, q in truth.items())
    ws = root / "ws"
    run = CliRunner().invoke
    for args in (["ingest", str(root / "labeled" / "manifest.csv"), "--assign-split"], ["ingest", str(root / "pool"), "--unlabeled"]):
        r = run(app, [*args, "-w", str(ws), "--json"])
        assert r.exit_code == 0, r.output
    return {"root": root, "ws": Workspace(ws), "truth": truth, "decoys": decoys, "emb": emb, "base": Workspace(ws).head()}


def _pseudolabel(task: dict, *args: object) -> dict:
    ws = task["ws"]
    with ws.writer():
        ws.set_head(task["base"])
    argv = ["pseudolabel", *FAST, "--truth", str(task["root"] / "truth.csv"), "-o", str(task["root"] / "models"), *map(str, args)]
    r = CliRunner().invoke(app, [*argv, "-w", str(ws.root), "--json"])
    assert r.exit_code == 0, r.output
    return json.loads(r.stdout)


def _pool(task: dict, res: dict) -> list[dict]:
    t = task["ws"].samples(res["version"]).to_pylist()
    return [r for r in t if r["pseudo_status"] is not None]


def test_knn_agreement_vetoes_the_confidently_wrong_pseudo_labels(task: dict) -> None:
    truth, decoys = task["truth"], task["decoys"]
    plain = _pseudolabel(task)
    knn = _pseudolabel(task, "--select", "knn", "--model", f"embeddings:{task['emb']}", "--knn-k", 5)
    assert plain["stats"]["chosen_round"] == knn["stats"]["chosen_round"] == 1  # no val: the one round is kept
    by_plain = {r["sample_id"]: r for r in _pool(task, plain)}
    by_knn = {r["sample_id"]: r for r in _pool(task, knn)}
    assert set(by_plain) == set(by_knn) and len(by_knn) == N_HONEST + N_DECOY

    def wrong(rows: dict) -> set[str]:
        return {s for s, r in rows.items() if r["pseudo_status"] == ACCEPTED and CLASSES.index(r["pseudo_predicted"]) != truth[s]}

    # the bars alone take most decoys, confidently and wrongly; the agreement rule takes none and says why
    assert wrong(by_plain) <= decoys and len(wrong(by_plain)) >= N_DECOY // 2, len(wrong(by_plain))
    assert wrong(by_knn) == set()
    assert all(by_knn[s]["pseudo_status"] == DISAGREE for s in wrong(by_plain))
    assert all(by_knn[s]["pseudo_knn_vote"] == CLASSES[truth[s]] for s in by_knn)
    # and keeps the honest rows the bars accepted (same round-0 model: same predictions)
    honest = {s for s, r in by_plain.items() if r["pseudo_status"] == ACCEPTED and s not in decoys}
    assert len(honest) >= N_HONEST // 2 and all(by_knn[s]["pseudo_status"] == ACCEPTED for s in honest)
    r1p, r1k = plain["stats"]["rounds"][1], knn["stats"]["rounds"][1]
    assert r1p["pseudo_accuracy"] < 1.0 and r1k["pseudo_accuracy"] == 1.0
    assert r1k["knn_disagree"] >= len(wrong(by_plain)) and r1p["knn_disagree"] == 0
    st = knn["stats"]["knn"]
    digest = hashlib.sha256(task["emb"].read_bytes()).hexdigest()
    assert st["model"]["digest"] == digest and st["knn_k"] == 5 and st["embeddings"]["from_file"] == len(truth)
    cfg = json.loads(task["ws"].path(knn["version"]).joinpath("version.json").read_text())["config"]
    assert cfg["model_digest"] == digest and cfg["select"] == "knn"


def test_select_pseudo_vote_is_a_veto_after_the_bars() -> None:
    """Units: a vote that disagrees turns a row that clears its bar into knn_disagree; below the bar stays below."""
    probs = np.array([[0.97, 0.03], [0.96, 0.04], [0.6, 0.4], [0.02, 0.98]])
    sel = select_pseudo(probs, threshold=0.9, min_threshold=0.8, balance=0, vote=np.array([0, 1, 1, 1]))
    assert sel.accepted.tolist() == [True, False, False, True]
    assert sel.status.tolist() == [ACCEPTED, DISAGREE, "below_threshold", ACCEPTED]


def test_bad_settings_and_models_fail_in_one_line_and_commit_nothing(task: dict, tmp_path: Path) -> None:
    ws = task["ws"]
    with ws.writer():
        ws.set_head(task["base"])
    before = ws.version_ids()
    short = tmp_path / "short.parquet"
    pq.write_table(pq.read_table(task["emb"]).slice(3), short)
    notes = tmp_path / "notes.onnx"
    notes.write_text("not a model\n")
    cases = [
        (["--select", "knn"], 2, "--select knn needs --model"),
        (["--model", f"embeddings:{task['emb']}"], 2, "--model is used by --select knn only"),
        (["--select", "knn", "--model", "clip:vit"], 2, "expected KIND:WHAT"),
        (["--select", "knn", "--model", f"embeddings:{short}"], 1, f"embeddings:{short}: 3 of "),
        (["--select", "knn", "--model", f"onnx:{notes}"], 1, f"onnx:{notes}: "),
    ]
    for args, code, text in cases:
        r = CliRunner().invoke(app, ["pseudolabel", *FAST, *args, "-o", str(tmp_path / "m"), "-w", str(ws.root)])
        msg = assert_one_error_line(r.stderr)
        assert r.exit_code == code and text in msg, (args, r.exit_code, msg)
    assert ws.version_ids() == before and ws.head() == task["base"]
