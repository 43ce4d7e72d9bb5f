"""``curate clean --model``: label issues from a k-fold linear head on a backend's frozen embeddings, outliers from
kNN distance in embedding space, embeddings cached per (sample_id, model digest), one-line errors for bad models.

The data is ``tests/test_clean.make_dataset``: four classes of 16x16 quadrant-blob images (60 each), 12 filed under
a wrong class (known), 6 stripe junk images and one black image. Two models look at it:

- an ``embeddings:`` Parquet written from the ground truth (each image: its *true* class centre plus noise in 16-D;
  junk and black: random directions), so the stage's decisions can be checked exactly;
- a TorchScript file built here (4x4 average pooling: 16 quadrant brightnesses), a real model on real pixels, for
  the pixel path and the cache.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from helpers import assert_one_error_line
from typer.testing import CliRunner

from curate.cli import app
from curate.errors import CurateError
from curate.pipeline import run_stage
from curate.stages.clean import CleanConfig, config_dict
from curate.stages.clean.checks import run_clean
from curate.workspace import Workspace
from tests.conftest import ingest
from tests.test_clean import JUNK, make_dataset

DIM = 16


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """Images, the truth, an ingested workspace (HEAD = ingest) and the ground-truth embeddings file."""
    root = tmp_path_factory.mktemp("clean_model")
    truth = make_dataset(root / "images")
    ws = Workspace(root / "ws")
    ingest(ws, root / "images")
    rng = np.random.default_rng(3)
    centres = rng.normal(0, 1, (4, DIM)) * 3
    odd = set(truth["junk"]) | set(truth["dark"])
    ids, vectors = [], []
    for path in sorted((root / "images").rglob("*.png")):
        ids.append(hashlib.sha256(path.read_bytes()).hexdigest())
        if path.name in odd:
            vectors.append(rng.normal(0, 3, DIM))
        else:
            true = truth["flipped"].get(path.name, path.parent.name)
            vectors.append(centres[int(true[1])] + rng.normal(0, 0.5, DIM))
    emb = root / "emb.parquet"
    pq.write_table(pa.table({"sample_id": ids, "embedding": [v.astype(np.float32).tolist() for v in vectors]}), emb)
    return {"root": root, "ws": ws, "truth": truth, "emb": emb, "ids": ids, "base": ws.head()}


@pytest.fixture(scope="module")
def pooled(data: dict) -> Path:
    """A TorchScript model: grayscale 16x16 in, the 16 means of its 4x4 cells out (with curate.json metadata)."""
    import torch

    class Pool(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.nn.functional.avg_pool2d(x, 4).flatten(1)

    return _script(Pool(), data["root"] / "pool.pt")


def _script(module: object, path: Path) -> Path:
    """Save ``module`` as TorchScript that declares 1-channel 16x16 input in [0, 1] and one embedding output."""
    import warnings

    import torch

    meta = {"channels": 1, "size": [16, 16], "normalization": {"mean": [0.0], "std": [1.0]}, "outputs": ["embedding"]}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # torch.jit is deprecated in favour of torch.export
        torch.jit.save(torch.jit.script(module), str(path), _extra_files={"curate.json": json.dumps(meta)})
    return path


def _clean(ws: Workspace, base: str, **kw: object) -> dict:
    """One clean run from ``base`` (HEAD moved there first), through the same path as the CLI."""
    with ws.writer():
        ws.set_head(base)
    cfg = CleanConfig(**{"folds": 4, **kw})
    return run_stage(ws, "clean", config_dict(cfg, ws.root), lambda parent, pid: run_clean(ws, parent, pid, cfg))


def _names(table: pa.Table, column: str) -> set[str]:
    return {Path(s).name for s in table.filter(pc.fill_null(table.column(column), False)).column("source").to_pylist()}


def _cli(ws: Workspace, *args: object, env: dict[str, str] | None = None):  # noqa: ANN202 - click's Result
    return CliRunner().invoke(app, ["clean", *map(str, args), "--workspace", str(ws.root)], env=env)


def _flags_flips(ws: Workspace, truth: dict, *args: object) -> tuple[dict, pa.Table, set[str]]:
    """``clean ARGS --json`` from the fixture's base; asserts at least 11 of the 12 flips found and no false alarm
    among the normal images (junk may be flagged too). Returns the JSON result, its table and the flips found."""
    r = _cli(ws, *args, "--json")
    assert r.exit_code == 0, r.output
    res = json.loads(r.stdout)
    t = ws.samples(res["version"])
    flipped, odd = set(truth["flipped"]), set(truth["junk"]) | set(truth["dark"])
    found = _names(t, "is_label_issue")
    assert len(found & flipped) >= 11 and not found - flipped - odd, sorted(found ^ flipped)
    return res, t, found & flipped


def _suggestions(t: pa.Table) -> dict[str, str]:
    """file name -> suggested label."""
    return dict(zip([Path(s).name for s in t["source"].to_pylist()], t["suggested_label"].to_pylist(), strict=True))


def test_linear_head_finds_planted_flips_and_knn_ranks_junk_first(data: dict) -> None:
    """Through the CLI with an ``embeddings:`` file: at least 11 of the 12 flips found and no false alarm among the
    normal images (junk, filed under arbitrary classes, may be flagged too), suggested back to their true class;
    the 7 planted odd images are exactly the 7 highest outlier scores and the ones flagged."""
    ws, truth = data["ws"], data["truth"]
    with ws.writer():
        ws.set_head(data["base"])
    res, t, _ = _flags_flips(ws, truth, "--find-mislabels", "--find-outliers", "--model", f"embeddings:{data['emb']}", "--folds", 4)
    flipped, odd = set(truth["flipped"]), set(truth["junk"]) | set(truth["dark"])
    sug = _suggestions(t)
    assert all(sug[n] == truth["flipped"][n] for n in flipped)
    names = [Path(s).name for s in t["source"].to_pylist()]
    score = np.array(t["ood_score"].to_pylist(), float)
    assert {names[i] for i in np.argsort(-score)[: len(odd)]} == odd
    assert _names(t, "is_outlier") == odd and len(odd) == JUNK + 1
    st = res["stats"]
    assert (
        st["model"]["spec"] == f"embeddings:{data['emb']}"
        and st["model"]["digest"] == hashlib.sha256(data["emb"].read_bytes()).hexdigest()
    )
    assert st["embeddings"]["from_file"] == t.num_rows and st["oof"] == "computed" and st["outliers"]["unlabeled_not_checked"] == 0
    doc = json.loads(ws.state_path(res["version"], "clean_model.json").read_text())
    assert doc["digest"] == st["model"]["digest"] and doc["preprocessing"] is None
    assert json.loads(ws.path(res["version"]).joinpath("version.json").read_text())["config"]["model_digest"] == doc["digest"]


def test_pixel_model_embeds_once_and_the_cache_serves_reruns(data: dict, pooled: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A TorchScript model on the images' pixels: the first run embeds every row (counted at the model) and finds
    most flips, a rerun with other settings from the same parent embeds none, the preprocessing is recorded, and
    the planted odd images get the highest kNN outlier scores."""
    from curate.models.torchnets import TorchScriptBackend

    ws, truth = data["ws"], data["truth"]
    seen: list[int] = []
    forward = TorchScriptBackend._forward
    monkeypatch.setattr(TorchScriptBackend, "_forward", lambda self, x, what: seen.append(len(x)) or forward(self, x, what))
    spec = f"torchscript:{pooled}"
    first = _clean(ws, data["base"], find_mislabels=True, model=spec)
    n = ws.samples(first["version"]).num_rows
    assert sum(seen) == n and first["stats"]["embeddings"] == {**first["stats"]["embeddings"], "computed": n, "cached": 0}
    cache = [p.name for p in ws.path(first["version"]).joinpath("state").glob("embeddings-*.parquet")]
    assert cache == [f"embeddings-{first['stats']['model']['digest'][:16]}.parquet"]
    flipped, found = set(truth["flipped"]), _names(ws.samples(first["version"]), "is_label_issue")
    assert len(found & flipped) >= 0.75 * len(flipped) and len(found & flipped) >= 0.6 * len(found), sorted(found ^ flipped)
    seen.clear()
    again = _clean(ws, data["base"], find_mislabels=True, find_outliers=True, action="exclude", model=spec)
    assert again["version"] != first["version"] and not again["cached"]
    assert seen == [] and again["stats"]["embeddings"]["computed"] == 0 and again["stats"]["embeddings"]["cached"] == n
    assert not list(ws.path(again["version"]).joinpath("state").glob("embeddings-*.parquet"))
    pre = again["stats"]["model"]["preprocessing"]
    assert pre["size"] == [16, 16] and pre["channels"] == 1 and pre["mean"] == [0.0] and pre["source"] == "metadata"
    t = ws.samples(again["version"])
    excluded = t.filter(pc.equal(t.column("status"), "excluded"))
    assert excluded.num_rows > 0 and set(excluded.column("excluded_by").to_pylist()) == {"clean"}
    # 16 cell brightnesses are enough to set the stripes and the black image apart: they score highest
    names, score = [Path(s).name for s in t["source"].to_pylist()], np.array(t["ood_score"].to_pylist(), float)
    assert {names[i] for i in np.argsort(-score)[: JUNK + 1]} == set(truth["junk"]) | set(truth["dark"])


def _fixed_batch_onnx(path: Path) -> Path:
    """An ONNX graph whose input is ``[1, 1, 16, 16]``: its batch axis fixed, as a careless export leaves it."""
    onnx = pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, 16, 16])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, None)
    graph = helper.make_graph([helper.make_node("Flatten", ["x"], ["y"])], "g", [x], [y])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    return path


def test_bad_models_fail_in_one_line_and_commit_nothing(data: dict, tmp_path: Path) -> None:
    """A model whose channels do not fit, an embeddings file missing rows, an ONNX file without a batch axis, a Hub
    name while offline (conftest's guard sets HF_HUB_OFFLINE), a bad spec: exit 1 (2 for the spec), one line naming
    the model or file, no version written and HEAD unchanged."""
    import torch

    ws = data["ws"]
    with ws.writer():
        ws.set_head(data["base"])
    before = ws.version_ids()
    rgb = _script(torch.nn.Conv2d(3, 4, 3), tmp_path / "rgb.pt")  # takes 3 channels, its metadata says 1
    r = _cli(ws, "--find-mislabels", "--model", f"torchscript:{rgb}")
    assert r.exit_code == 1 and assert_one_error_line(r.stderr).startswith(
        f"error: torchscript:{rgb}: the model rejects 1x16x16 input"
    )
    short = tmp_path / "short.parquet"
    pq.write_table(pq.read_table(data["emb"]).slice(5), short)
    r = _cli(ws, "--find-outliers", "--model", f"embeddings:{short}")
    msg = assert_one_error_line(r.stderr)
    assert r.exit_code == 1 and f"embeddings:{short}: 5 of {len(data['ids'])} sample_ids have no embedding" in msg, msg
    fixed = _fixed_batch_onnx(tmp_path / "fixed.onnx")
    r = _cli(ws, "--find-mislabels", "--model", f"onnx:{fixed}")
    msg = assert_one_error_line(r.stderr)
    assert r.exit_code == 1 and msg.startswith(f"error: onnx:{fixed}: input 'x' has shape [1, 1, 16, 16]: no batch axis"), msg
    pytest.importorskip("huggingface_hub")
    r = _cli(ws, "--find-outliers", "--model", "hf:some-org/some-model", env={"HF_HOME": str(tmp_path / "hf-home")})
    msg = assert_one_error_line(r.stderr)
    assert r.exit_code == 1 and msg.startswith("error: hf:some-org/some-model: not a local folder"), msg
    assert "the Hugging Face Hub is offline (HF_HUB_OFFLINE) with no cached copy" in msg, msg
    r = _cli(ws, "--find-mislabels", "--model", "dinov2")
    assert r.exit_code == 2 and "expected KIND:WHAT" in assert_one_error_line(r.stderr)
    r = _cli(ws, "--find-mislabels", "--model", f"embeddings:{data['emb']}", "--pred-probs", data["emb"])
    assert r.exit_code == 2 and "pass one" in assert_one_error_line(r.stderr)
    assert ws.version_ids() == before and ws.head() == data["base"]


def test_model_from_curate_toml(data: dict, tmp_path: Path) -> None:
    """``[clean] model = ...`` in curate.toml is the same setting (through the one coercer); a non-string fails."""
    ws = data["ws"]
    with ws.writer():
        ws.set_head(data["base"])
    cfg = tmp_path / "curate.toml"
    cfg.write_text(f'[clean]\nfind_outliers = true\nmodel = "embeddings:{data["emb"]}"\n')
    r = _cli(ws, "--json", env={"CURATE_CONFIG": str(cfg)})
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["stats"]["model"]["kind"] == "embeddings"
    cfg.write_text("[clean]\nfind_outliers = true\nmodel = [1]\n")
    r = _cli(ws, env={"CURATE_CONFIG": str(cfg)})
    assert r.exit_code == 2 and "model = [1] must be" in assert_one_error_line(r.stderr)


def _classifier(path: Path, classes: list[str], scale: float = 40.0) -> Path:
    """A TorchScript *classifier* for the quadrant blobs: logits = ``scale`` x the four 8x8 quadrant means, in the
    order q0 q1 q2 q3 (what a model trained on other, correctly labeled blob images would have learnt)."""
    import warnings

    import torch

    class Quadrants(torch.nn.Module):
        def __init__(self, scale: float, k: int) -> None:
            super().__init__()
            self.scale, self.k = scale, k

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return (torch.nn.functional.avg_pool2d(x, 8).flatten(1) * self.scale)[:, : self.k]

    meta = {"channels": 1, "size": [16, 16], "normalization": {"mean": [0.0], "std": [1.0]}, "classes": classes,
            "outputs": ["logits"]}  # fmt: skip
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.jit.save(torch.jit.script(Quadrants(scale, len(classes))), str(path), _extra_files={"curate.json": json.dumps(meta)})
    return path


def test_model_head_judges_with_the_models_own_classifier(data: dict, tmp_path: Path) -> None:
    """``--head model``: the classifier's own probabilities go to cleanlab (no head fitted, nothing embedded): at
    least 11 of the 12 flips found with no false alarm among the normal images, suggested back to their true class,
    and the summary names the head."""
    ws, truth = data["ws"], data["truth"]
    with ws.writer():
        ws.set_head(data["base"])
    model = _classifier(tmp_path / "quadrants.pt", ["q0", "q1", "q2", "q3"])
    res, t, hits = _flags_flips(ws, truth, "--find-mislabels", "--model", f"torchscript:{model}", "--head", "model")
    sug = _suggestions(t)
    assert all(sug[n] == truth["flipped"][n] for n in hits)
    st = res["stats"]
    assert st["head"] == "model" and st["in_sample"] == 0 and "embeddings" not in st and st["oof"] == "computed"
    assert json.loads(ws.state_path(res["version"], "clean_model.json").read_text())["head"] == "model"
    plain = _cli(ws, "--find-mislabels", "--model", f"torchscript:{model}", "--head", "model", "--seed", 1)  # not cached
    assert plain.exit_code == 0 and "its own head" in plain.stdout, plain.output


def test_model_head_refuses_models_it_cannot_trust(data: dict, tmp_path: Path) -> None:
    """No head, a head without one of the version's classes, ``--head model`` without ``--model``: exit 2, one
    line each, no version written."""
    ws = data["ws"]
    with ws.writer():
        ws.set_head(data["base"])
    before = ws.version_ids()
    r = _cli(ws, "--find-mislabels", "--model", f"embeddings:{data['emb']}", "--head", "model")
    assert r.exit_code == 2 and "has no classifier head" in assert_one_error_line(r.stderr)
    three = _classifier(tmp_path / "three.pt", ["q0", "q1", "q2"])
    r = _cli(ws, "--find-mislabels", "--model", f"torchscript:{three}", "--head", "model")
    assert r.exit_code == 2 and "its head has no class 'q3'" in assert_one_error_line(r.stderr)
    r = _cli(ws, "--find-mislabels", "--head", "model")
    assert r.exit_code == 2 and "give it with --model" in assert_one_error_line(r.stderr)
    assert ws.version_ids() == before and ws.head() == data["base"]


def test_a_curate_run_does_not_judge_the_rows_it_trained_on(tmp_path: Path) -> None:
    """A ``curate:`` run trained on this workspace's train split judges only the other rows (the train rows get
    no verdict and are counted ``in_sample``); asked to judge only rows it trained on, it is refused (exit 1)."""
    from curate.learn.train import TrainConfig, train
    from curate.pipeline import run_stage
    from curate.stages.clean.modelhead import head_probs
    from curate.stages.normalize import NormalizeConfig
    from curate.stages.normalize.pixels import run_normalize
    from curate.stages.split import SplitConfig
    from curate.stages.split.assign import run_split

    make_dataset(tmp_path / "images")
    ws = Workspace(tmp_path / "ws")
    ingest(ws, tmp_path / "images")
    base = ws.head()
    run_stage(ws, "split", {"seed": 0}, lambda parent, _pid: run_split(parent, SplitConfig()))
    norm = run_stage(ws, "normalize", {}, lambda parent, _pid: run_normalize(ws, parent, NormalizeConfig()))["version"]
    run = tmp_path / "own"
    train(ws, TrainConfig(arch="linear", epochs=1, batch_size=32, patience=0, out=str(run)))
    t = ws.samples(norm)
    trained = {s for s, sp, st in zip(t["sample_id"].to_pylist(), t["split"].to_pylist(), t["status"].to_pylist(), strict=True)
               if sp == "train" and st == "ok"}  # fmt: skip
    with ws.writer():
        ws.set_head(base)
    r = _cli(ws, "--find-mislabels", "--model", f"curate:{run}", "--head", "model", "--json")
    assert r.exit_code == 0, r.output
    res = json.loads(r.stdout)
    out = ws.samples(res["version"])
    judged = {s for s, q in zip(out["sample_id"].to_pylist(), out["label_quality"].to_pylist(), strict=True) if q is not None}
    assert res["stats"]["in_sample"] == len(trained) > 0 and not judged & trained
    assert judged == set(out["sample_id"].to_pylist()) - trained
    from curate.models import load_backend

    rows = t.filter(pc.is_in(t["sample_id"], pa.array(sorted(trained)))).select(["sample_id", "pack"])
    with pytest.raises(CurateError) as err:
        head_probs(ws, rows, ["q0", "q1", "q2", "q3"], load_backend(f"curate:{run}"), batch_size=32,
                   progress=lambda *a: contextlib.nullcontext(lambda n=1: None))  # fmt: skip
    assert err.value.exit_code == 1 and "was trained on all" in str(err.value)


def test_second_pass_of_the_linear_head(data: dict) -> None:
    """``--model ... --passes 2``: the head is fitted again without the rows the first one acts on (counted in
    ``pass2.left_out``, at least the flips it found), every labeled row is still judged, and the flips are found."""
    ws, truth = data["ws"], data["truth"]
    res = _clean(ws, data["base"], find_mislabels=True, model=f"embeddings:{data['emb']}", passes=2, action="exclude")
    t = ws.samples(res["version"])
    flipped = set(truth["flipped"])
    assert res["stats"]["pass2"]["left_out"] >= 11 and t["label_quality"].null_count == 0
    assert len(_names(t, "is_label_issue") & flipped) >= 11
