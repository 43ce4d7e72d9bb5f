"""``curate filter --model KIND:WHAT``: any model backend as the classifier filter, against known ground truth.

- A backend with a head (TorchScript and ONNX exports of ``tests/test_filter``'s trained run, and ``curate:RUN``)
  scores the web workspace exactly as the run folder does: same probabilities to 1e-4, same rows filtered; the
  model's digest is in the cache key.
- A backend without a head (an ``embeddings:`` file with planted structure, a TorchScript pooling model) gets a
  linear head fitted on the version's labeled train rows: the junk is filtered, the real images are kept, and the
  fit rows are scored out of sample (equal to ``oof_linear`` recomputed here), the rest by a model on all of them.
- Bad models and files: one line naming the model or file, exit 1/2, nothing committed.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from helpers import assert_one_error_line

from curate.models.export import export_run
from curate.workspace import Workspace
from tests.conftest import ingest
from tests.test_clean_model import _script
from tests.test_filter import (  # noqa: F401 - fixtures: trained, web_template, web, one_thread (autouse)
    blob_image,
    invoke,
    junk_image,
    one_thread,
    trained,
    web,
    web_template,
)

DIM = 8
N_REAL, N_JUNK, N_OTHER = 30, 3, 40  # per task folder (a, b); junk labeled "other"


def _probs(ws: Workspace, version: str, classes: list[str]) -> tuple[list[str], np.ndarray]:
    t = pq.read_table(ws.state_path(version, "filter_probs.parquet"))
    return t.column("sample_id").to_pylist(), np.stack([t.column(f"p_{c}").to_numpy() for c in classes], 1)


def _filtered(ws: Workspace, version: str) -> set[str]:
    t = ws.samples(version)
    return set(t.column("sample_id").filter(pc.fill_null(t.column("is_filtered"), False)).to_pylist())


@pytest.fixture(scope="module")
def exports(trained, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:  # noqa: F811 - the imported fixture
    _ws, run = trained
    out = tmp_path_factory.mktemp("filter-exports")
    names = (("torchscript", "pt"), ("onnx", "onnx"))
    return {fmt: Path(export_run(str(run), fmt, out / f"model.{ext}")["out"]) for fmt, ext in names}


def test_backends_with_a_head_score_like_the_run_folder(web: Workspace, trained, exports: dict[str, Path]) -> None:  # noqa: F811
    """The run folder, ``curate:RUN``, and its TorchScript and ONNX exports: the same probabilities (1e-4), the
    same rows filtered; each export's digest is in the version's config, a rerun of one is a cache hit, another
    model file is not."""
    _ws, run = trained
    base = web.head()
    results = {}
    for name, model in (("run", run), ("curate", f"curate:{run}"), *((f, f"{f}:{p}") for f, p in exports.items())):
        r = invoke("--model", model, "--classes", "a,b", "--version", base, "--workspace", web.root, "--json")
        assert r.exit_code == 0, r.output
        results[name] = json.loads(r.stdout)
    ids, ref = _probs(web, results["run"]["version"], ["a", "b", "other"])
    assert len(ids) > 40 and _filtered(web, results["run"]["version"])
    for name in ("curate", "torchscript", "onnx"):
        got_ids, got = _probs(web, results[name]["version"], ["a", "b", "other"])
        assert got_ids == ids
        np.testing.assert_allclose(got, ref, atol=1e-4, err_msg=name)
        assert _filtered(web, results[name]["version"]) == _filtered(web, results["run"]["version"]), name
    for fmt, path in exports.items():
        st = results[fmt]["stats"]
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        assert st["backend"]["digest"] == digest and st["backend"]["head"] == "model" and st["model_classes"] == ["a", "b", "other"]
        cfg = json.loads(web.path(results[fmt]["version"]).joinpath("version.json").read_text())["config"]
        assert cfg["model_digest"] == digest and cfg["head"] == "model"
    again = json.loads(invoke("--model", f"onnx:{exports['onnx']}", "--classes", "a,b", "--version", base,
                              "--workspace", web.root, "--json").stdout)  # fmt: skip
    assert again["cached"] and again["version"] == results["onnx"]["version"]
    assert results["torchscript"]["version"] != results["onnx"]["version"]


def _task_folder(root: Path) -> dict[str, str]:
    """a/ and b/ hold real blob images plus ``junk_*`` noise filed under them; other/ holds labeled junk.
    Returns ``{sample_id: true kind}`` with kind a, b or junk."""
    from PIL import Image

    rng = np.random.default_rng(5)
    kinds = {}
    for cls, quadrant in (("a", 0), ("b", 3)):
        for i in range(N_REAL + N_JUNK):
            junk = i >= N_REAL
            im = junk_image(rng) if junk else blob_image(rng, quadrant)
            path = root / cls / (f"junk_{i:03d}.png" if junk else f"real_{i:03d}.png")
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(im).save(path)
            kinds[hashlib.sha256(path.read_bytes()).hexdigest()] = "junk" if junk else cls
    for i in range(N_OTHER):
        path = root / "other" / f"{i:03d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(junk_image(rng)).save(path)
        kinds[hashlib.sha256(path.read_bytes()).hexdigest()] = "junk"
    return kinds


@pytest.fixture(scope="module")
def task(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """A split workspace of the task folder and an ``embeddings:`` file placing every image at its true kind's
    centre (plus noise): junk filed under a or b sits with the junk, whatever its label says."""
    from curate.pipeline import run_stage
    from curate.stages.split import SplitConfig
    from curate.stages.split.assign import run_split

    root = tmp_path_factory.mktemp("filter-task")
    kinds = _task_folder(root / "src")
    ws = Workspace(root / "ws")
    ingest(ws, root / "src")
    run_stage(ws, "split", {"seed": 0}, lambda parent, _pid: run_split(parent, SplitConfig()))
    rng = np.random.default_rng(9)
    centres = {k: rng.normal(0, 1, DIM) * 3 for k in ("a", "b", "junk")}
    ids = sorted(kinds)
    vectors = [(centres[kinds[s]] + rng.normal(0, 0.7, DIM)).astype(np.float32).tolist() for s in ids]
    emb = root / "emb.parquet"
    pq.write_table(pa.table({"sample_id": ids, "embedding": vectors}), emb)
    return {"root": root, "ws": ws, "kinds": kinds, "emb": emb, "base": ws.head()}


def _copy(task: dict, tmp_path: Path) -> Workspace:
    shutil.copytree(task["ws"].root, tmp_path / "ws")
    return Workspace(tmp_path / "ws")


def test_embeddings_without_a_head_get_a_linear_head_scored_out_of_sample(task: dict, tmp_path: Path) -> None:
    """``embeddings:FILE`` and ``--classes a,b``: every junk row filtered (also junk labeled a or b), every real row
    kept; the labeled train rows' probabilities are exactly the k-fold out-of-sample ones (``oof_linear`` on the
    same rows in sample_id order), the other rows' those of one model fitted on all of them."""
    from curate.models.heads import fit_predict, oof_linear

    ws, kinds = _copy(task, tmp_path), task["kinds"]
    r = invoke("--model", f"embeddings:{task['emb']}", "--classes", "a,b", "--folds", 4, "--workspace", ws.root, "--json")
    assert r.exit_code == 0, r.output
    res = json.loads(r.stdout)
    filtered = _filtered(ws, res["version"])
    assert filtered == {s for s, k in kinds.items() if k == "junk"}
    st = res["stats"]
    assert st["backend"]["head"] == "linear" and st["model_classes"] == ["a", "b", "other"] and st["embeddings"]["from_file"] > 0
    t = ws.samples(task["base"])
    train = np.array([(s in (None, "train")) for s in t.column("split").to_pylist()])
    fit_ids = sorted(np.array(t.column("sample_id").to_pylist())[train].tolist())
    assert st["head_fit"] == {**st["head_fit"], "rows": len(fit_ids), "folds": 4, "scored_out_of_sample": len(fit_ids)}
    # the ground truth of the head: recomputed from the file
    table = pq.read_table(task["emb"])
    vec = dict(zip(table.column("sample_id").to_pylist(), np.array(table.column("embedding").to_pylist(), np.float64), strict=True))
    label = dict(zip(t.column("sample_id").to_pylist(), t.column("label").to_pylist(), strict=True))
    y = np.array([["a", "b", "other"].index(label[s]) for s in fit_ids])
    x = np.stack([vec[s] for s in fit_ids])
    oof = oof_linear(x, y, 3, folds=4, seed=0).probs
    ids, got = _probs(ws, res["version"], ["a", "b", "other"])
    at = {s: i for i, s in enumerate(ids)}
    np.testing.assert_allclose(got[[at[s] for s in fit_ids]], oof, atol=1e-5)
    rest = [s for s in ids if s not in set(fit_ids)]
    assert rest, "the split leaves val/test rows to score with the full fit"
    full = fit_predict(x, y, np.stack([vec[s] for s in rest]), 3)[2]
    np.testing.assert_allclose(got[[at[s] for s in rest]], full, atol=1e-5)
    # junk filed under a or b among the fit rows is filtered too: its neighbours, not its label, decide
    junk_in_train = [s for s in fit_ids if kinds[s] == "junk" and label[s] != "other"]
    assert junk_in_train and set(junk_in_train) <= filtered


def test_pixel_model_without_a_head_is_embedded_once(task: dict, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A TorchScript pooling model (16 cell brightnesses, no classes): the blob images are told from the junk by a
    linear head on them; a rerun with another threshold embeds nothing (the cache per sample and digest)."""
    import torch

    from curate.models.torchnets import TorchScriptBackend

    class Pool(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.nn.functional.avg_pool2d(x, 4).flatten(1)

    ws, kinds = _copy(task, tmp_path), task["kinds"]
    spec = f"torchscript:{_script(Pool(), tmp_path / 'pool.pt')}"
    seen: list[int] = []
    forward = TorchScriptBackend._forward
    monkeypatch.setattr(TorchScriptBackend, "_forward", lambda self, x, what: seen.append(len(x)) or forward(self, x, what))
    r = invoke("--model", spec, "--classes", "a,b", "--folds", 4, "--workspace", ws.root, "--json")
    assert r.exit_code == 0, r.output
    first = json.loads(r.stdout)
    junk = {s for s, k in kinds.items() if k == "junk"}
    filtered = _filtered(ws, first["version"])
    assert len(filtered & junk) >= 0.9 * len(junk) and len(filtered - junk) <= 2, (len(filtered & junk), len(filtered - junk))
    assert sum(seen) == first["stats"]["embeddings"]["computed"] == len(kinds)
    seen.clear()
    r = invoke("--model", spec, "--classes", "a,b", "--folds", 4, "--min-prob", 0.3, "--version", task["base"],
               "--workspace", ws.root, "--json")  # fmt: skip
    again = json.loads(r.stdout)
    assert not again["cached"] and seen == [] and again["stats"]["embeddings"]["cached"] == len(kinds)


def test_bad_models_and_files_fail_in_one_line_and_commit_nothing(task: dict, tmp_path: Path) -> None:
    """Not a model, channels that do not fit, an embeddings file missing sample_ids or with ragged vectors, an
    unknown kind: exit 1 (2 for the spec), one line naming the model or file and the cause, no version, HEAD kept."""
    import warnings

    import torch

    ws = _copy(task, tmp_path)
    before, head = ws.version_ids(), ws.head()
    text = tmp_path / "notes.pt"
    text.write_text("not a model\n")
    rgb = _script(torch.nn.Conv2d(3, 4, 3), tmp_path / "rgb.pt")  # takes 3 channels, its metadata says 1
    short = tmp_path / "short.parquet"
    pq.write_table(pq.read_table(task["emb"]).slice(5), short)
    wide = tmp_path / "wide.pt"  # 16 outputs, metadata naming 3 classes
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        meta = {"channels": 1, "size": [16, 16], "normalization": {"mean": [0.0], "std": [1.0]}, "classes": ["a", "b", "other"]}
        torch.jit.save(torch.jit.script(torch.nn.Flatten()), str(wide), _extra_files={"curate.json": json.dumps(meta)})
    ragged = tmp_path / "ragged.parquet"
    t = pq.read_table(task["emb"])
    vecs = t.column("embedding").to_pylist()
    vecs[0] = vecs[0][:-1]
    pq.write_table(pa.table({"sample_id": t.column("sample_id"), "embedding": vecs}), ragged)
    cases = [
        (f"torchscript:{text}", 1, f"torchscript:{text}: "),
        (f"onnx:{text}", 1, f"onnx:{text}: "),
        (f"torchscript:{rgb}", 1, f"torchscript:{rgb}: the model rejects 1x16x16 input"),
        (f"torchscript:{wide}", 1, f"torchscript:{wide}: the model gives 256 probabilities per image, its metadata names 3"),
        (f"embeddings:{short}", 1, f"embeddings:{short}: 5 of "),
        (f"embeddings:{ragged}", 1, f"embeddings:{ragged}: the embedding vectors must all have one length"),
        ("dinov2:small", 2, "expected KIND:WHAT"),
    ]
    for spec, code, start in cases:
        r = invoke("--model", spec, "--classes", "a,b", "--folds", 4, "--workspace", ws.root)
        msg = assert_one_error_line(r.stderr)
        assert r.exit_code == code and start in msg, (spec, r.exit_code, msg)
    assert ws.version_ids() == before and ws.head() == head


def test_hf_classifier_scores_with_its_own_head(task: dict, tmp_path: Path) -> None:
    """A transformers classifier whose labels are a, b, other (random weights, built here): the rows of --splits
    train get exactly its ``predict_proba`` of their original bytes, row by row; no linear head is fitted."""
    transformers = pytest.importorskip("transformers")
    import torch

    from curate.models import load_backend

    cfg = transformers.ViTConfig(image_size=16, patch_size=8, num_channels=1, hidden_size=16, num_hidden_layers=1,
                                 num_attention_heads=2, intermediate_size=32, id2label={0: "a", 1: "b", 2: "other"},
                                 label2id={"a": 0, "b": 1, "other": 2})  # fmt: skip
    torch.manual_seed(0)
    transformers.ViTForImageClassification(cfg).save_pretrained(tmp_path / "clf")
    ws = _copy(task, tmp_path)
    r = invoke("--model", f"hf:{tmp_path / 'clf'}", "--classes", "a,b", "--splits", "train", "--workspace", ws.root, "--json")
    assert r.exit_code == 0, r.output
    res = json.loads(r.stdout)
    assert res["stats"]["backend"]["head"] == "model" and "head_fit" not in res["stats"]
    t = ws.samples(task["base"])
    source = dict(zip(t.column("sample_id").to_pylist(), t.column("source").to_pylist(), strict=True))
    split = dict(zip(t.column("sample_id").to_pylist(), t.column("split").to_pylist(), strict=True))
    ids, got = _probs(ws, res["version"], ["a", "b", "other"])
    assert ids and all(split[s] == "train" for s in ids) and len(ids) == sum(v == "train" for v in split.values())
    want = load_backend(f"hf:{tmp_path / 'clf'}").predict_proba([Path(source[s]).read_bytes() for s in ids])
    np.testing.assert_allclose(got, want, atol=1e-5)
    score = ws.samples(res["version"]).column("filter_score").to_pylist()
    by_id = dict(zip(t.column("sample_id").to_pylist(), score, strict=True))
    np.testing.assert_allclose([by_id[s] for s in ids], want[:, 0] + want[:, 1], atol=1e-5)
