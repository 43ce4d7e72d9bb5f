"""curate filter (the classifier filter) against known ground truth.

A tiny classifier is trained once per module on three classes of 16x16 grayscale images: ``a`` and ``b`` (a
bright 5x5 blob in the top-left or bottom-right quadrant, under dim noise) and ``other`` (bright full-range
noise, no blob: the junk a web crawl drags in). A second "web" workspace holds fresh images scraped under the
labels ``a`` and ``b``, with junk hidden in both folders (file names ``junk_*``), one undecodable file, and a
few rows excluded by an earlier stage. Filtering it with ``--classes a,b`` must exclude the junk (recall floor)
and keep the real images (precision floor), keep every row, and leave already-excluded rows alone.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
import torch
from helpers import assert_one_error_line
from typer.testing import CliRunner

from curate.cli import app
from curate.errors import CurateError, UsageError
from curate.pipeline import run_stage
from curate.schema import exclude
from curate.stages import StageResult
from curate.stages.filter import REASON, FilterConfig
from curate.stages.filter.classify import run_filter
from curate.stages.filter.scoring import MODE_CLASSES, MODE_MAX, Scorer, load_model, resolve_target, score_probs
from curate.workspace import Workspace
from tests.conftest import ingest

CLASSES = ["a", "b", "other"]
N_REAL, N_JUNK = 24, 8  # per web folder
PRE_EXCLUDED = 4  # 2 junk + 2 real rows excluded by an earlier stage ("mark")


def blob_image(rng: np.random.Generator, quadrant: int, size: int = 16) -> np.ndarray:
    """Dim noise with a bright 5x5 blob at a random spot of ``quadrant`` (0 top-left, 3 bottom-right)."""
    half = size // 2
    im = rng.integers(0, 110, (size, size), dtype=np.uint8)
    r = (quadrant // 2) * half + rng.integers(0, half - 4)
    c = (quadrant % 2) * half + rng.integers(0, half - 4)
    im[r : r + 5, c : c + 5] = rng.integers(150, 256)
    return im


def junk_image(rng: np.random.Generator, size: int = 16) -> np.ndarray:
    """Full-range noise without a blob: an image that belongs to no task class."""
    return rng.integers(0, 256, (size, size), dtype=np.uint8)


def _save(im: np.ndarray, path: Path) -> None:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(im).save(path)


def train_folder(root: Path, per_class: int = 40, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    for i in range(per_class):
        _save(blob_image(rng, 0), root / "a" / f"{i:03d}.png")
        _save(blob_image(rng, 3), root / "b" / f"{i:03d}.png")
        _save(junk_image(rng), root / "other" / f"{i:03d}.png")
    return root


def web_folder(root: Path, seed: int = 7) -> Path:
    """Images scraped under the labels a and b: real ones plus ``junk_*`` noise in both, and one broken file."""
    rng = np.random.default_rng(seed)
    for cls, quadrant in (("a", 0), ("b", 3)):
        for i in range(N_REAL):
            _save(blob_image(rng, quadrant), root / cls / f"real_{i:03d}.png")
        for i in range(N_JUNK):
            _save(junk_image(rng), root / cls / f"junk_{i:03d}.png")
    (root / "a" / "zz_broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    return root


def split_and_normalize(ws: Workspace) -> None:
    from curate.stages.normalize import NormalizeConfig
    from curate.stages.normalize.pixels import run_normalize
    from curate.stages.split import SplitConfig
    from curate.stages.split.assign import run_split

    run_stage(ws, "split", {"seed": 0}, lambda parent, _pid: run_split(parent, SplitConfig()))
    run_stage(ws, "normalize", {}, lambda parent, _pid: run_normalize(ws, parent, NormalizeConfig()))


def is_junk(sources: list[str]) -> np.ndarray:
    return np.array([Path(s).name.startswith("junk_") for s in sources])


@pytest.fixture(scope="module", autouse=True)
def one_thread():  # noqa: ANN201
    """Tiny tensors: one intra-op thread is as fast, and on a busy machine far faster."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Workspace, Path]:
    """The relevance model: a small CNN trained for a few CPU seconds on a, b and other."""
    from curate.learn.train import TrainConfig, train

    base = tmp_path_factory.mktemp("filter-train")
    ws = Workspace(base / "ws")
    ingest(ws, train_folder(base / "src"))
    split_and_normalize(ws)
    out = base / "run"
    res = train(ws, TrainConfig(epochs=4, batch_size=32, lr=3e-3, patience=0, seed=0, out=str(out)))
    assert res["metrics"]["val"]["accuracy"] >= 0.9, res["metrics"]
    return ws, out


@pytest.fixture(scope="module")
def web_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A web workspace: ingest (one broken file), split, then an earlier stage that excluded 2 junk + 2 real rows."""
    base = tmp_path_factory.mktemp("filter-web")
    ws = Workspace(base / "ws")
    ingest(ws, web_folder(base / "src"))
    split_and_normalize(ws)

    def mark(parent: pa.Table, _pid: str | None) -> StageResult:
        ok = parent.filter(pc.equal(parent.column("status"), "ok"))
        junk = is_junk(ok.column("source").to_pylist())
        ids = ok.column("sample_id").to_numpy(zero_copy_only=False)
        chosen = set(ids[junk][:2]) | set(ids[~junk][:2])
        mask = pc.is_in(parent.column("sample_id"), pa.array(sorted(chosen)))
        return StageResult(exclude(parent, mask, stage="mark", reason="test"), {})

    run_stage(ws, "mark", {}, mark)
    return ws.root


@pytest.fixture
def web(web_template: Path, tmp_path: Path) -> Workspace:
    """A private copy of the web workspace (tests commit versions to it)."""
    shutil.copytree(web_template, tmp_path / "web")
    return Workspace(tmp_path / "web")


def invoke(*args: object):  # noqa: ANN201
    return CliRunner().invoke(app, ["filter", *[str(a) for a in args]])


# ------------------------------------------------------------------------------------------- ground truth


def test_filter_excludes_junk_and_keeps_relevant_images(web: Workspace, trained, in_empty_tmp) -> None:
    _ws, run = trained
    parent_id = web.head()
    before = web.samples(parent_id)
    r = invoke("--model", run, "--classes", "a,b", "--min-prob", "0.5", "--workspace", web.root, "--json")
    assert r.exit_code == 0, r.output
    res = json.loads(r.stdout)
    assert res["stage"] == "filter" and res["parent"] == parent_id and not res["cached"]
    assert web.head() == res["version"]
    t = web.samples(res["version"])
    assert t.num_rows == before.num_rows  # nothing dropped
    assert t.column("sample_id").to_pylist() == before.column("sample_id").to_pylist()

    was_ok = np.array([s == "ok" for s in before.column("status").to_pylist()])
    junk = is_junk(t.column("source").to_pylist())
    by_filter = np.array([b == "filter" for b in t.column("excluded_by").to_pylist()])
    assert set(pc.unique(t.filter(pa.array(by_filter)).column("reason")).to_pylist()) <= {REASON}
    caught = by_filter[was_ok & junk].mean()
    kept = 1 - by_filter[was_ok & ~junk].mean()
    precision = junk[by_filter].mean()
    assert caught >= 0.9 and kept >= 0.9 and precision >= 0.9, (caught, kept, precision)

    # rows excluded earlier (ingest: the broken file; mark: 2 junk + 2 real) are untouched and not scored
    for name in ("status", "excluded_by", "reason"):
        assert t.column(name).filter(pa.array(~was_ok)).to_pylist() == before.column(name).filter(pa.array(~was_ok)).to_pylist()
    assert (~was_ok).sum() == PRE_EXCLUDED + 1
    for col in ("filter_score", "filter_predicted", "filter_confidence", "is_filtered"):
        assert t.column(col).filter(pa.array(~was_ok)).null_count == (~was_ok).sum()
        assert t.column(col).filter(pa.array(was_ok)).null_count == 0

    # the score is the probability mass on a and b, filtered below min_prob, excluded exactly then
    probs = pq.read_table(web.state_path(res["version"], "filter_probs.parquet"))
    assert probs.column("sample_id").to_pylist() == t.column("sample_id").filter(pa.array(was_ok)).to_pylist()
    p = np.stack([probs.column(f"p_{c}").to_numpy() for c in CLASSES], 1)
    score = t.column("filter_score").filter(pa.array(was_ok)).to_numpy()
    np.testing.assert_allclose(score, np.clip(p[:, 0] + p[:, 1], 0, 1), atol=1e-6)
    assert t.column("filter_predicted").filter(pa.array(was_ok)).to_pylist() == [CLASSES[k] for k in p.argmax(1)]
    np.testing.assert_allclose(t.column("filter_confidence").filter(pa.array(was_ok)).to_numpy(), p.max(1), atol=1e-6)
    filtered = np.array(t.column("is_filtered").filter(pa.array(was_ok)).to_pylist())
    assert (filtered == (score < 0.5)).all() and (filtered == by_filter[was_ok]).all()

    st = res["stats"]
    assert st["score"] == MODE_CLASSES and st["classes"] == ["a", "b"] and st["classes_from"] == "--classes"
    assert st["scored"] == was_ok.sum() and st["filtered"] == st["excluded"] == by_filter.sum()
    assert sum(st["filtered_per_split"].values()) == st["filtered"] == sum(st["filtered_per_predicted"].values())
    assert st["filtered_per_predicted"].get("other", 0) >= 0.9 * st["filtered"]
    assert st["summary"]["excluded_by_reason"][f"filter:{REASON}"] == st["filtered"]
    info = web.info(res["version"])
    assert len(info["config"]["checkpoint_sha256"]) == 64 and info["config"]["model_classes"] == CLASSES

    # same parent, model and settings: cached, HEAD stays; a human run prints the summary
    r2 = invoke("--model", run, "--classes", "b,a", "--workspace", web.root, "--version", parent_id)
    assert r2.exit_code == 0, r2.output
    assert "nothing recomputed" in r2.stdout and web.head() == res["version"] and len(web.version_ids()) == 5


def test_flag_only_marks_and_the_result_is_deterministic(web: Workspace, trained) -> None:
    _ws, run = trained
    parent = web.samples()
    cfg = FilterConfig(model=str(run), classes=("a", "b"), action="flag", batch_size=5)
    loaded = load_model(cfg)
    flagged = run_filter(web, parent, web.head(), cfg, run=loaded).table
    assert flagged.column("status").to_pylist() == parent.column("status").to_pylist()
    assert flagged.column("reason").to_pylist() == parent.column("reason").to_pylist()
    assert pc.sum(flagged.column("is_filtered")).as_py() >= 0.9 * (2 * N_JUNK - 2)
    # the same settings again: bit for bit the same; the exclude action and another batch size: the same decisions
    again = run_filter(web, parent, web.head(), cfg, run=loaded).table
    assert again.equals(flagged)
    excluded = run_filter(web, parent, web.head(), replace(cfg, action="exclude", batch_size=256), run=loaded).table
    for col in ("filter_predicted", "is_filtered"):
        assert flagged.column(col).to_pylist() == excluded.column(col).to_pylist(), col
    for col in ("filter_score", "filter_confidence"):  # batched convolutions may round differently
        a, b = (np.array(t.column(col).to_pylist(), dtype=float) for t in (flagged, excluded))
        np.testing.assert_allclose(a, b, atol=1e-6)
    assert pc.sum(pc.equal(excluded.column("excluded_by"), "filter")).as_py() == pc.sum(flagged.column("is_filtered")).as_py()


def test_default_classes_come_from_the_labels_and_fall_back_to_max_probability(web: Workspace, trained) -> None:
    train_ws, run = trained
    cfg = FilterConfig(model=str(run))
    loaded = load_model(cfg)
    # the web data is labeled a and b: the model's "other" class is not a task class
    target = resolve_target(cfg, loaded.classes, web.samples())
    assert (target.classes, target.mode, target.source) == (("a", "b"), MODE_CLASSES, "labels")
    # the training data carries every model class as a label: a sum would be 1.0, so max probability it is
    res = run_filter(train_ws, train_ws.samples(), train_ws.head(), replace(cfg, action="flag"), run=loaded)
    assert res.stats["score"] == MODE_MAX and res.stats["classes_from"] == "labels"
    t = res.table
    assert t.column("filter_score").to_pylist() == t.column("filter_confidence").to_pylist()
    assert pc.min(t.column("filter_score")).as_py() >= 1 / 3 - 1e-6
    # no model class among the labels (unlabeled data): --classes is required
    unlabeled = web.samples().set_column(2, "label", pa.nulls(web.samples().num_rows, pa.string()))
    with pytest.raises(UsageError, match="is a label of this version"):
        resolve_target(cfg, loaded.classes, unlabeled)
    probs = np.array([[0.2, 0.3, 0.5], [0.7, 0.2, 0.1]])
    np.testing.assert_allclose(score_probs(probs, CLASSES, target), [0.5, 0.9])


def test_splits_and_version_choose_what_is_scored(web: Workspace, trained, in_empty_tmp) -> None:
    _ws, run = trained
    r = invoke("-m", run, "--classes", "a,b", "--splits", "train", "--action", "flag", "-w", web.root)
    assert r.exit_code == 0, r.output
    assert "flagged; score = p(a) + p(b)" in r.stdout and "filtered per split: train" in r.stdout, r.stdout
    assert "filtered per predicted class: other" in r.stdout and f"version {web.head()} (HEAD)" in r.stdout
    t = web.samples(web.head())
    scored = pc.is_valid(t.column("filter_score"))
    wanted = pc.and_(pc.equal(t.column("status"), "ok"), pc.equal(pc.fill_null(t.column("split"), ""), "train"))
    assert scored.to_pylist() == pc.fill_null(wanted, False).to_pylist() and pc.sum(scored).as_py() > 0
    # --version 1 (the ingest, no splits yet): the new version is a child of version 1 and becomes HEAD
    r = invoke("-m", run, "--classes", "a", "--min-prob", "0.3", "--version", "1", "--splits", "none", "-w", web.root, "--json")
    assert r.exit_code == 0, r.output
    res = json.loads(r.stdout)
    assert res["parent"] == "000001-ingest" and web.head() == res["version"] and web.info(res["version"])["parent"] == "000001-ingest"
    assert res["stats"]["classes"] == ["a"] and res["stats"]["scored"] == web.samples("1").num_rows - 1


def test_retrained_model_is_not_a_cached_no_op(web: Workspace, trained, tmp_path: Path, in_empty_tmp) -> None:
    _ws, run = trained
    copy = tmp_path / "run2"
    shutil.copytree(run, copy)
    args = ("-m", copy, "--classes", "a,b", "--action", "flag", "-w", web.root, "--json")
    first = json.loads(invoke(*args).stdout)
    web_parent = first["parent"]
    ckpt = torch.load(copy / "model_best.pt", weights_only=True)
    ckpt["model"] = {k: v + 0.01 if v.is_floating_point() else v for k, v in ckpt["model"].items()}
    torch.save(ckpt, copy / "model_best.pt")  # "retrained": same path, other weights
    r = invoke(*args, "--version", web_parent)
    assert r.exit_code == 0, r.output
    second = json.loads(r.stdout)
    assert not second["cached"] and second["version"] != first["version"]
    assert second["stats"]["checkpoint_sha256"] != first["stats"]["checkpoint_sha256"]


def test_settings_from_curate_toml_and_flags(web: Workspace, trained, in_empty_tmp) -> None:
    _ws, run = trained
    (in_empty_tmp / "curate.toml").write_text(f'[filter]\nmodel = "{run}"\nclasses = ["a", "b"]\nmin_prob = 0.999\naction = "flag"\n')
    r = invoke("--min-prob", "0.4", "-w", web.root, "--json")
    assert r.exit_code == 0, r.output
    st = json.loads(r.stdout)["stats"]
    assert (st["min_prob"], st["action"], st["classes"], st["excluded"]) == (0.4, "flag", ["a", "b"], 0)
    (in_empty_tmp / "curate.toml").write_text("[filter]\nmin_porb = 0.5\n")
    r = invoke("-w", web.root)
    assert r.exit_code == 2 and "min_porb" in assert_one_error_line(r.stderr)


# ------------------------------------------------------------------------------------------- errors


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (("--classes", "a,zebra,yak"), "'zebra', 'yak'; its classes: a, b, other"),
        (("--classes", "a,b,other"), "every class of the model"),
        (("--min-prob", "1.5"), "--min-prob"),
        (("--action", "drop"), "--action"),
        (("--splits", "train,holdout"), "holdout"),
        (("--device", "tpu"), "--device"),
    ],
)
def test_bad_usage_exits_2_with_one_line(web: Workspace, trained, in_empty_tmp, args: tuple[str, ...], needle: str) -> None:
    _ws, run = trained
    head = web.head()
    r = invoke("--model", run, *args, "--workspace", web.root)
    assert r.exit_code == 2, r.output
    assert needle in assert_one_error_line(r.stderr)
    assert web.head() == head and len(web.version_ids()) == 4


def test_missing_or_invalid_model_exits_1_with_one_line(web: Workspace, tmp_path: Path, in_empty_tmp) -> None:
    r = invoke("--model", tmp_path / "nowhere", "-w", web.root)
    assert r.exit_code == 1 and "no such run folder" in assert_one_error_line(r.stderr)
    (tmp_path / "empty").mkdir()
    r = invoke("--model", tmp_path / "empty", "-w", web.root)
    assert r.exit_code == 1 and "no checkpoint there" in assert_one_error_line(r.stderr)
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    r = invoke("--model", tmp_path / "junk.pt", "-w", web.root)
    assert r.exit_code == 1 and "not a loadable curate checkpoint" in assert_one_error_line(r.stderr)
    r = invoke("-w", web.root)
    assert r.exit_code == 2 and "--model is required" in assert_one_error_line(r.stderr)
    assert len(web.version_ids()) == 4


def test_an_undecodable_image_does_not_sink_its_batch(trained) -> None:
    from tests.conftest import png_bytes

    _ws, run = trained
    scorer = Scorer(load_model(FilterConfig(model=str(run))), batch_size=8)
    batch = pa.table({"sample_id": ["x", "bad", "y"], "data": [png_bytes(1, mode="L"), b"garbage", png_bytes(2)]})
    out = scorer(batch)
    probs = np.asarray(out.column("probs").to_pylist(), np.float64)
    assert out.column("error").to_pylist()[0] is None and out.column("error").to_pylist()[1]
    assert np.isnan(probs[1]).all() and np.allclose(probs[[0, 2]].sum(1), 1, atol=1e-5)


def test_empty_workspace_is_a_user_error(tmp_path: Path, trained) -> None:
    _ws, run = trained
    with pytest.raises(CurateError, match="no versions yet"):
        run_filter(Workspace(tmp_path / "none"), None, None, FilterConfig(model=str(run)))


def test_missing_blob_packs_are_a_user_error(web: Workspace, trained, in_empty_tmp) -> None:
    _ws, run = trained
    for pack in (web.root / "blobs").glob("pack-*.parquet"):
        pack.unlink()
    r = invoke("-m", run, "--classes", "a,b", "-w", web.root)
    assert r.exit_code == 1 and "blob pack" in assert_one_error_line(r.stderr)
    assert len(web.version_ids()) == 4
