"""curate.models: one interface over curate runs, TorchScript, ONNX, transformers models and precomputed embeddings,
and ``curate export-model``.

Ground truth: a small-cnn trained for two epochs on the planted quadrant task of test_train (so its probabilities
are far from uniform and a wrong normalization shows), scored by ``curate predict``; exported files are loaded by
a Python that cannot import curate; a tiny ViT with random weights is built from a config and saved to disk
(nothing is downloaded) and compared with transformers' own forward pass on hand-made pixels.
"""

from __future__ import annotations

import hashlib
import io
import json
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from curate.errors import CurateError
from curate.models import load_backend, parse_spec
from tests.test_train import FAST, one_thread, planted_folder  # noqa: F401 - one_thread: the autouse fixture, here too


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """A trained run inside its workspace's models/ folder, held-out PNGs and `curate predict`'s table of them."""
    import pandas as pd

    from curate.learn.train import train
    from tests.test_train import make_workspace

    base = tmp_path_factory.mktemp("models")
    ws = make_workspace(base)
    out = ws.root / "models" / "tiny"
    train(ws, replace(FAST, epochs=2, out=str(out)))
    held = planted_folder(base / "held", per_class=4, seed=11)
    files = sorted(held.rglob("*.png"))
    r = _cli("predict", out, held, "--out", base / "pred.csv")
    assert r.exit_code == 0, r.output
    pred = pd.read_csv(base / "pred.csv").set_index("source")
    classes = ["a", "b", "c", "d"]
    probs = np.stack([pred.loc[str(f), [f"p_{c}" for c in classes]].to_numpy(np.float64) for f in files])
    return {"ws": ws, "dir": out, "files": files, "bytes": [f.read_bytes() for f in files], "probs": probs, "base": base}


def _cli(*args: object):  # noqa: ANN202 - click's Result
    from typer.testing import CliRunner

    from curate.cli import app

    return CliRunner().invoke(app, [str(a) for a in args])


def test_spec_strings_are_parsed_and_bad_ones_are_usage_errors() -> None:
    assert parse_spec("onnx:/a/b.onnx") == ("onnx", "/a/b.onnx")
    assert parse_spec("hf:facebook/dinov2-small") == ("hf", "facebook/dinov2-small")
    for bad in ("model.onnx", "tflite:m.tflite", "onnx:", "hf:  "):
        with pytest.raises(CurateError) as err:
            parse_spec(bad)
        assert err.value.exit_code == 2 and "KIND:WHAT" in str(err.value)


def test_curate_backend_scores_exactly_like_curate_predict(run) -> None:
    from PIL import Image

    by_path = load_backend(f"curate:{run['dir']}")
    by_name = load_backend("curate:tiny", workspace=run["ws"].root)
    assert by_path.classes == by_name.classes == ["a", "b", "c", "d"]
    probs = by_path.predict_proba(run["bytes"])
    assert probs.dtype == np.float32 and probs.shape == (16, 4)
    np.testing.assert_allclose(probs, run["probs"], atol=1e-6)
    assert run["probs"].max(1).mean() > 0.5  # a trained head: a wrong normalization would move these
    pil = [Image.open(f) for f in run["files"]]
    np.testing.assert_allclose(by_name.predict_proba(pil), probs, atol=1e-6)
    emb = by_path.embed(run["bytes"])
    assert emb.shape == (16, 256) and emb.dtype == np.float32 and np.abs(emb).sum() > 0
    info = by_path.describe()
    assert info["digest"] == hashlib.sha256((run["dir"] / "model_best.pt").read_bytes()).hexdigest()
    pre = info["preprocessing"]
    assert (pre["size"], pre["channels"], pre["source"]) == ([16, 16], 1, "checkpoint")
    meta = json.loads((run["dir"] / "meta_best.json").read_text())
    assert pre["mean"] == meta["normalization"]["mean"] and pre["std"] == meta["normalization"]["std"]
    calls: list[int] = []
    small = load_backend(f"curate:{run['dir']}", batch_size=5)
    np.testing.assert_allclose(small.predict_proba(run["bytes"], progress=calls.append), probs, atol=1e-6)
    assert calls == [5, 5, 5, 1]


@pytest.fixture(scope="module")
def exported(run) -> dict[str, Path]:
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    files = {}
    for fmt in ("onnx", "torchscript"):
        r = _cli("export-model", "tiny", "--format", fmt, "-w", run["ws"].root, "--json")
        assert r.exit_code == 0, r.output
        res = json.loads(r.stdout)
        assert res["max_abs_diff"] < 1e-5 and res["classes"] == ["a", "b", "c", "d"]
        files[fmt] = Path(res["out"])
    assert files["onnx"] == run["dir"] / "export" / "model_best.onnx"
    return files


STANDALONE = r"""
import json, sys
sys.modules["curate"] = None  # this interpreter must not reach curate, installed or not
import numpy as np
from PIL import Image
fmt, path, out, *images = sys.argv[1:]
if fmt == "onnx":
    import onnxruntime as ort
    sess = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    meta = json.loads(sess.get_modelmeta().custom_metadata_map["curate.json"])
    run = lambda x: sess.run(["probs", "embedding"], {sess.get_inputs()[0].name: x})
else:
    import torch
    extra = {"curate.json": ""}
    mod = torch.jit.load(path, _extra_files=extra)
    meta = json.loads(extra["curate.json"])
    run = lambda x: [t.detach().numpy() for t in mod(torch.from_numpy(x))]
mode = "L" if meta["channels"] == 1 else "RGB"
size = meta["size"]
pix = np.stack([np.asarray(Image.open(f).convert(mode).resize(size[::-1]), np.float32).reshape(*size, -1) for f in images])
result = {}
for name, (mean, std) in {"right": (meta["normalization"]["mean"], meta["normalization"]["std"]), "plain": ([0.0], [1.0])}.items():
    x = ((pix / 255.0 - np.array(mean, np.float32)) / np.array(std, np.float32)).transpose(0, 3, 1, 2).astype(np.float32)
    probs, emb = run(x)
    result[name] = probs.tolist()
json.dump({"meta": meta, **result, "emb_shape": list(emb.shape)}, open(out, "w"))
"""


def test_exports_load_without_curate_and_match_curate_predict(run, exported, tmp_path: Path) -> None:
    script = tmp_path / "standalone.py"
    script.write_text(STANDALONE)
    for fmt, path in exported.items():
        out = tmp_path / f"{fmt}.json"
        files = [str(f) for f in run["files"]]
        proc = subprocess.run([sys.executable, str(script), fmt, str(path), str(out), *files], cwd=tmp_path, capture_output=True,
                              text=True, timeout=120, env={"PATH": "/usr/bin:/bin"})  # fmt: skip
        assert proc.returncode == 0, proc.stderr[-2000:]
        got = json.loads(out.read_text())
        assert got["meta"]["classes"] == ["a", "b", "c", "d"] and got["meta"]["size"] == [16, 16] and got["meta"]["channels"] == 1
        assert got["meta"]["outputs"] == ["probs", "embedding"] and got["emb_shape"] == [16, 256]
        np.testing.assert_allclose(np.array(got["right"]), run["probs"], atol=1e-4, err_msg=fmt)
        # the test can fail: ignoring the file's normalization gives other probabilities
        assert np.abs(np.array(got["plain"]) - run["probs"]).max() > 1e-3


def test_torchscript_and_onnx_backends_agree_with_the_run(run, exported) -> None:
    ref = load_backend(f"curate:{run['dir']}")
    ref_emb = ref.embed(run["bytes"])
    for fmt, path in exported.items():
        backend = load_backend(f"{fmt}:{path}", batch_size=7)  # 7: batches of another size than the export's example
        assert backend.classes == ["a", "b", "c", "d"] and backend.kind == fmt
        np.testing.assert_allclose(backend.predict_proba(run["bytes"]), run["probs"], atol=1e-4, err_msg=fmt)
        np.testing.assert_allclose(backend.embed(run["bytes"]), ref_emb, atol=1e-4, rtol=1e-4, err_msg=fmt)
        pre = backend.describe()["preprocessing"]
        assert pre["mean"] == ref.preprocessing.as_dict()["mean"] and pre["source"] == "metadata"
        assert backend.digest == hashlib.sha256(path.read_bytes()).hexdigest()


def _png(seed: int, size: tuple[int, int], mode: str = "RGB") -> bytes:
    from PIL import Image

    arr = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).convert(mode).save(buf, format="PNG")
    return buf.getvalue()


@pytest.fixture(scope="module")
def tiny_vit(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 2-layer ViT with random weights (seeded), saved like a Hub folder, with a preprocessor config."""
    transformers = pytest.importorskip("transformers")
    folder = tmp_path_factory.mktemp("vit")
    cfg = transformers.ViTConfig(image_size=32, patch_size=8, num_channels=3, hidden_size=32, num_hidden_layers=2,
                                 num_attention_heads=2, intermediate_size=64)  # fmt: skip
    torch.manual_seed(0)
    transformers.ViTModel(cfg).eval().save_pretrained(folder)
    proc = {"image_mean": [0.2, 0.4, 0.6], "image_std": [0.5, 0.25, 0.125], "size": {"height": 32, "width": 32}, "resample": 2,
            "do_resize": True, "do_normalize": True}  # fmt: skip
    (folder / "preprocessor_config.json").write_text(json.dumps(proc))
    return folder


def test_hf_folder_embeds_like_transformers_own_forward(tiny_vit: Path) -> None:
    import transformers
    from PIL import Image

    backend = load_backend(f"hf:{tiny_vit}", batch_size=3)
    pre = backend.describe()["preprocessing"]
    assert (pre["size"], pre["channels"], pre["mean"], pre["std"]) == ([32, 32], 3, [0.2, 0.4, 0.6], [0.5, 0.25, 0.125])
    assert pre["source"] == "config" and backend.classes is None
    images = [_png(1, (32, 32)), _png(2, (48, 40)), _png(3, (32, 32), "L"), Image.open(io.BytesIO(_png(4, (20, 20))))]
    emb = backend.embed(images)
    assert emb.shape == (4, 32) and emb.dtype == np.float32
    np.testing.assert_array_equal(emb, backend.embed(images))  # deterministic
    assert np.linalg.matrix_rank(emb) == 4  # every image its own vector
    # ground truth: transformers' forward on pixels normalized by hand from the preprocessor config
    model = transformers.ViTModel.from_pretrained(tiny_vit).eval()
    rgb = [Image.open(io.BytesIO(b)) if isinstance(b, bytes) else b for b in images]
    pix = np.stack([np.asarray(im.convert("RGB").resize((32, 32), Image.BILINEAR), np.float32) / 255 for im in rgb])
    x = (pix - np.array([0.2, 0.4, 0.6], np.float32)) / np.array([0.5, 0.25, 0.125], np.float32)
    with torch.no_grad():
        want = model(pixel_values=torch.from_numpy(x.transpose(0, 3, 1, 2).copy())).last_hidden_state[:, 0].numpy()
    np.testing.assert_allclose(emb, want, atol=1e-4)
    with pytest.raises(CurateError, match="no classification head"):
        backend.predict_proba(images)
    before = backend.digest
    (tiny_vit / "preprocessor_config.json").write_text((tiny_vit / "preprocessor_config.json").read_text() + " ")
    assert load_backend(f"hf:{tiny_vit}").digest != before  # the digest covers every file of the folder


def test_hf_classifier_gets_predict_proba_with_its_labels(tmp_path: Path) -> None:
    transformers = pytest.importorskip("transformers")
    cfg = transformers.ViTConfig(image_size=16, patch_size=8, num_channels=1, hidden_size=16, num_hidden_layers=1,
                                 num_attention_heads=2, intermediate_size=32, id2label={0: "cat", 1: "dog", 2: "fox"},
                                 label2id={"cat": 0, "dog": 1, "fox": 2})  # fmt: skip
    torch.manual_seed(0)
    transformers.ViTForImageClassification(cfg).save_pretrained(tmp_path / "clf")
    backend = load_backend(f"hf:{tmp_path / 'clf'}")
    pre = backend.preprocessing
    assert backend.classes == ["cat", "dog", "fox"] and pre.source == "default" and (pre.channels, pre.size) == (1, (16, 16))
    images = [_png(s, (16, 16)) for s in range(5)]
    probs = backend.predict_proba(images)
    assert probs.shape == (5, 3) and np.allclose(probs.sum(1), 1, atol=1e-5)
    assert backend.embed(images).shape == (5, 16)


def _tiny_hf(kind: str, folder: Path) -> Path:
    """A tiny ``kind`` model (random weights, seeded) saved with a preprocessor config that resizes the shortest edge
    to 36 and center-crops 32x32, the way Hub folders of DINOv2 and CLIP do."""
    import transformers

    torch.manual_seed(0)
    vit = dict(image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64)
    if kind == "dinov2":
        model, processor = transformers.Dinov2Model(transformers.Dinov2Config(**vit)), "BitImageProcessor"
    elif kind == "clip_vision":
        model, processor = transformers.CLIPVisionModel(transformers.CLIPVisionConfig(**vit)), "CLIPImageProcessor"
    else:
        text = dict(vocab_size=50, hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32)
        cfg = transformers.CLIPConfig(text_config=text, vision_config=vit, projection_dim=8)
        model, processor = transformers.CLIPModel(cfg), "CLIPImageProcessor"
    model.eval().save_pretrained(folder)
    proc = {"image_processor_type": processor, "do_resize": True, "size": {"shortest_edge": 36}, "resample": 3,
            "do_center_crop": True, "crop_size": {"height": 32, "width": 32}, "do_rescale": True, "rescale_factor": 1 / 255,
            "do_normalize": True, "image_mean": [0.2, 0.4, 0.6], "image_std": [0.5, 0.25, 0.125], "do_convert_rgb": True}  # fmt: skip
    (folder / "preprocessor_config.json").write_text(json.dumps(proc))
    return folder


@pytest.mark.parametrize("kind", ["dinov2", "clip_vision", "clip"])
def test_hf_pretrained_kinds_embed_like_transformers_with_its_image_processor(kind: str, tmp_path: Path) -> None:
    """DINOv2 (the layer-normed CLS token), a CLIP vision model (its pooled output: the CLS token after
    ``post_layernorm``) and a whole CLIP model (its vision tower's pooled output, before the projection) against
    transformers' own forward on ``AutoImageProcessor``'s pixels: odd sizes (39x22: the long side truncated when the
    shortest edge is resized), a grey image, bytes and PIL images."""
    transformers = pytest.importorskip("transformers")
    from PIL import Image

    folder = _tiny_hf(kind, tmp_path / kind)
    backend = load_backend(f"hf:{folder}", batch_size=2)
    assert backend.preprocessing.resize == "bicubic-crop" and backend.preprocessing.resize_edge == 36
    assert backend.describe()["pooling"] == {"dinov2": "cls", "clip_vision": "pooler", "clip": "vision_pooler"}[kind]
    images = [_png(1, (39, 22)), _png(2, (32, 48)), _png(3, (36, 36), "L"), _png(4, (50, 41))]
    emb = backend.embed(images)
    assert emb.shape == (4, 32) and np.linalg.matrix_rank(emb) == 4  # 32: the vision width, not CLIP's projection (8)
    pil = [Image.open(io.BytesIO(b)).convert("RGB") for b in images]
    pixels = transformers.AutoImageProcessor.from_pretrained(folder)(images=pil, return_tensors="pt")["pixel_values"]
    model = transformers.AutoModel.from_pretrained(folder).eval()
    with torch.no_grad():
        out = (model.vision_model if kind == "clip" else model)(pixel_values=pixels)
    if kind == "dinov2":
        np.testing.assert_allclose(out.last_hidden_state[:, 0].numpy(), out.pooler_output.numpy(), atol=1e-6)
    np.testing.assert_allclose(emb, out.pooler_output.numpy(), atol=1e-4)
    np.testing.assert_allclose(backend.embed([Image.open(io.BytesIO(b)) for b in images]), emb, atol=1e-6)
    if kind != "dinov2":  # a new pooling is a new cache key: vectors cached under the folder's digest are not reused
        from curate.models import path_digest

        assert backend.digest != path_digest(folder)


def _write_embeddings(path: Path, ids: list[str], vectors: list[list[float]], column: str = "embedding") -> Path:
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"sample_id": ids, column: pa.array(vectors, pa.list_(pa.float32()))}), path)
    return path


def test_embeddings_file_is_found_by_the_sha256_of_the_image_bytes(tmp_path: Path) -> None:
    images = [_png(s, (8, 8)) for s in range(3)]
    ids = [hashlib.sha256(b).hexdigest() for b in images]
    vectors = [[float(i), 10.0 + i, -1.0] for i in range(3)]
    path = _write_embeddings(tmp_path / "emb.parquet", ids[::-1], vectors[::-1], column="vector")  # rows in another order
    backend = load_backend(f"embeddings:{path}")
    assert backend.kind == "embeddings" and backend.preprocessing is None and backend.classes is None
    np.testing.assert_array_equal(backend.embed([images[2], images[0]]), np.array([vectors[2], vectors[0]], np.float32))
    np.testing.assert_array_equal(backend.embed_ids(ids), np.array(vectors, np.float32))
    assert backend.embed([]).shape == (0, 3)
    assert backend.describe()["digest"] == hashlib.sha256(path.read_bytes()).hexdigest()
    with pytest.raises(CurateError, match=r"1 of 2 sample_ids have no embedding \(first: [0-9a-f]{64}\)"):
        backend.embed([images[0], _png(99, (8, 8))])
    with pytest.raises(CurateError, match="found by the sha256 of its bytes"):
        from PIL import Image

        backend.embed([Image.open(io.BytesIO(images[0]))])
    with pytest.raises(CurateError, match="dimension 3, 4 expected"):
        load_backend(f"embeddings:{path}", expect_dim=4)


def _error(spec: str, **kwargs: object) -> str:
    """The CurateError of loading ``spec``: one line that names the model."""
    with pytest.raises(CurateError) as err:
        load_backend(spec, **kwargs)
    msg = str(err.value)
    assert "\n" not in msg and spec.split(":", 1)[1] in msg, msg
    return msg


def test_bad_models_are_one_line_errors_naming_the_file_and_the_cause(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    junk = tmp_path / "junk.bin"
    junk.write_bytes(b"this is not a model\n" * 20)
    assert "not a TorchScript file" in _error(f"torchscript:{junk}")
    assert "no such file" in _error(f"torchscript:{tmp_path / 'missing.pt'}")
    assert "no run folder or checkpoint" in _error("curate:no-such-run", workspace=tmp_path)
    assert "not a loadable curate checkpoint" in _error(f"curate:{junk}")
    assert "not a readable Parquet file" in _error(f"embeddings:{junk}")
    assert "not a transformers model folder (no config.json)" in _error(f"hf:{tmp_path}")
    ragged = _write_embeddings(tmp_path / "ragged.parquet", ["a", "b"], [[1.0, 2.0], [1.0, 2.0, 3.0]])
    assert "one length" in _error(f"embeddings:{ragged}") and "2, 3" in _error(f"embeddings:{ragged}")
    _write_embeddings(tmp_path / "noid.parquet", ["a"], [[1.0]])
    import pyarrow.parquet as pq

    pq.write_table(pq.read_table(tmp_path / "noid.parquet").rename_columns(["id", "embedding"]), tmp_path / "noid.parquet")
    assert "no sample_id column" in _error(f"embeddings:{tmp_path / 'noid.parquet'}")
    # a Hub name while offline (conftest's guard; nothing cached): one line, no network attempt
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))
    pytest.importorskip("huggingface_hub")
    assert "offline" in _error("hf:some-org/some-model")


def test_bad_onnx_files(tmp_path: Path) -> None:
    onnx = pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    from onnx import TensorProto, helper

    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"\x00garbage" * 50)
    assert "not an ONNX model onnxruntime can load" in _error(f"onnx:{junk}")

    def flatten_model(path: Path, shape: list, meta: dict | None = None) -> Path:
        x, y = (
            helper.make_tensor_value_info("x", TensorProto.FLOAT, shape),
            helper.make_tensor_value_info("y", TensorProto.FLOAT, None),
        )
        graph = helper.make_graph([helper.make_node("Flatten", ["x"], ["y"])], "g", [x], [y])
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
        if meta is not None:
            helper.set_model_props(model, {"curate.json": json.dumps(meta)})
        onnx.save(model, path)
        return path

    fixed = flatten_model(tmp_path / "fixed.onnx", [1, 3, 8, 8])
    assert "no batch axis (its first axis is fixed to 1)" in _error(f"onnx:{fixed}")
    assert "takes (batch, C, H, W)" in _error(f"onnx:{flatten_model(tmp_path / 'rank2.onnx', ['n', 64])}")
    meta = {"channels": 1, "size": [8, 8], "normalization": {"mean": [0.5], "std": [0.5]}}
    misfit = flatten_model(tmp_path / "misfit.onnx", ["n", 3, 8, 8], meta)
    assert "its metadata says 1x8x8 input but the graph takes 3x8x8 (channels 3, not 1)" in _error(f"onnx:{misfit}")
    # a foreign file without metadata: C, H, W from the graph, plain pixel / 255 scaling; the embedding is its output
    plain = load_backend(f"onnx:{flatten_model(tmp_path / 'plain.onnx', ['n', 3, 8, 8])}")
    assert plain.preprocessing.source == "default" and plain.classes is None
    img = _png(5, (8, 8))
    from PIL import Image

    want = np.asarray(Image.open(io.BytesIO(img)).convert("RGB"), np.float32).transpose(2, 0, 1).reshape(1, -1) / 255
    np.testing.assert_allclose(plain.embed([img]), want, atol=1e-6)


def test_a_torchscript_file_whose_metadata_does_not_fit_its_net(run, exported, tmp_path: Path) -> None:
    import warnings

    extra = {"curate.json": ""}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        module = torch.jit.load(str(exported["torchscript"]), _extra_files=extra)
        meta = json.loads(extra["curate.json"])
        rgb = {**meta, "channels": 3, "normalization": {"mean": [0.5] * 3, "std": [0.5] * 3}}
        torch.jit.save(module, str(tmp_path / "rgb.pt"), _extra_files={"curate.json": json.dumps(rgb)})
        torch.jit.save(module, str(tmp_path / "bare.pt"))
    backend = load_backend(f"torchscript:{tmp_path / 'rgb.pt'}")
    with pytest.raises(CurateError) as err:
        backend.predict_proba(run["bytes"][:2])
    msg = str(err.value)
    assert msg.startswith(f"torchscript:{tmp_path / 'rgb.pt'}: the model rejects 3x16x16 input (Given groups=1") and "\n" not in msg
    assert "expected input[2, 3, 16, 16] to have 1 channels" in msg  # torch's cause, not the TorchScript page header
    assert "has no curate.json in its extra files" in _error(f"torchscript:{tmp_path / 'bare.pt'}")


def test_export_model_cli_errors(run, tmp_path: Path) -> None:
    from tests.helpers import assert_one_error_line

    r = _cli("export-model", "tiny", "--format", "tflite", "-w", run["ws"].root)
    assert r.exit_code == 2 and "--format 'tflite'" in assert_one_error_line(r.stderr)
    r = _cli("export-model", "nope", "--format", "torchscript", "-w", run["ws"].root)
    assert r.exit_code == 1 and "curate:nope: no run folder or checkpoint" in assert_one_error_line(r.stderr)
    r = _cli("export-model", run["dir"], "--format", "torchscript", "--out", tmp_path / "m.pt")
    assert r.exit_code == 0 and "exported" in r.stdout and (tmp_path / "m.pt").stat().st_size > 0
    assert not list(tmp_path.glob(".*.tmp"))


def test_linear_head_on_embeddings_finds_planted_label_errors_and_outliers() -> None:
    """3 Gaussian classes in 32-D, 8 flipped labels, 2 points far from every class: the out-of-sample linear head
    gives each flipped row a low probability for its given label (cleanlab flags 7 of 8, nothing else), and the far
    points get the largest OOD z."""
    from curate.models.heads import oof_linear
    from curate.stages.clean.labelissues import label_issues

    rng = np.random.default_rng(0)
    centers = rng.normal(0, 1, (3, 32)) * 2.0
    truth = np.repeat(np.arange(3), 50)
    x = centers[truth] + rng.normal(0, 1, (150, 32))
    flipped = rng.choice(150, 8, replace=False)
    given = truth.copy()
    given[flipped] = (truth[flipped] + rng.integers(1, 3, 8)) % 3
    far = np.setdiff1d(np.arange(150), flipped)[:2]
    x[far] += 25.0
    res = oof_linear(x, given, 4, folds=5, seed=0, ood=True)  # 4: an empty class gets zeros
    assert res.probs.shape == (150, 4) and np.allclose(res.probs.sum(1), 1, atol=1e-5) and np.all(res.probs[:, 3] == 0)
    assert np.bincount(res.fold).tolist() == [30] * 5
    assert (res.probs[flipped, given[flipped]] < 0.5).all() and (res.probs[flipped].argmax(1) == truth[flipped]).all()
    assert set(np.flatnonzero(res.probs.argmax(1) != given)) == set(flipped.tolist())  # exactly the flipped rows disagree
    found = set(np.flatnonzero(label_issues(given, res.probs[:, :3])["is_label_issue"]).tolist())
    assert found <= set(flipped.tolist()) and len(found) >= 7  # cleanlab on these probabilities: no false alarm
    assert set(np.argsort(res.ood_z)[-2:]) == set(far.tolist()) and res.ood_z[far].min() > 4
    np.testing.assert_array_equal(oof_linear(x, given, 4, folds=5, seed=0).probs, res.probs)  # deterministic
    with pytest.raises(CurateError, match="fewer than --folds 5"):
        oof_linear(x[[0, 1, 2, 50, 51, 52]], np.array([0, 0, 0, 1, 1, 1]), 3)


def test_embedding_runs_under_autocast_on_cuda_only_and_probabilities_never() -> None:
    """The CUDA branch cannot run here (no GPU in CI): this pins which passes get AMP, not its numbers."""
    import contextlib
    import warnings

    from curate.models.base import embed_autocast

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "CUDA is not available ... Disabling autocast" on a CPU-only build
        amp = embed_autocast("cuda", "embedding")
    assert isinstance(amp, torch.autocast) and amp.fast_dtype in (torch.bfloat16, torch.float16)
    for device, what in (("cuda", "probs"), ("cpu", "embedding"), ("mps", "embedding")):
        assert isinstance(embed_autocast(device, what), contextlib.nullcontext), (device, what)


def test_batches_are_pinned_and_sent_asynchronously_on_cuda_only(monkeypatch: pytest.MonkeyPatch) -> None:
    """``to_device``'s CUDA branch, reached here with ``cuda=True`` on the CPU (the pinning counted, not done: a
    CPU-only torch cannot pin); on the CPU the tensor is the numpy batch itself."""
    from curate.models.base import to_device

    pinned, moves = [], []
    real_to = torch.Tensor.to
    monkeypatch.setattr(torch.Tensor, "pin_memory", lambda self: pinned.append(self.shape) or self)
    monkeypatch.setattr(torch.Tensor, "to", lambda self, *a, **k: moves.append((a, k)) or real_to(self, *a, **k))
    x = np.arange(24, dtype=np.float32).reshape(2, 3, 2, 2)
    t = to_device(x, "cpu")
    assert pinned == [] and moves == [] and t.data_ptr() == x.ctypes.data  # no pinning, no copy
    t = to_device(x, "cpu", cuda=True)
    assert pinned == [(2, 3, 2, 2)] and moves == [(("cpu",), {"non_blocking": True})]
    np.testing.assert_array_equal(t.numpy(), x)


def test_torch_backends_send_batches_through_to_device_and_embed_under_autocast(
    run, exported, tiny_vit: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """curate:, torchscript: and hf: all move batches with ``to_device`` and run ``embed_autocast`` with what they
    compute: ``embedding`` gets AMP on CUDA, ``probs`` stays float32 (the no-op on every device)."""
    import contextlib

    import curate.models.hf as hf
    import curate.models.torchnets as torchnets
    from curate.models import base

    calls: list[tuple[str, str]] = []
    moved: list[str] = []
    for mod in (torchnets, hf):
        monkeypatch.setattr(mod, "embed_autocast", lambda device, what: calls.append((device, what)) or contextlib.nullcontext())
        monkeypatch.setattr(mod, "to_device", lambda x, device: moved.append(device) or base.to_device(x, device))
    for spec in (f"curate:{run['dir']}", f"torchscript:{exported['torchscript']}"):
        calls.clear()
        backend = load_backend(spec, device="cpu", batch_size=64)
        backend.embed(run["bytes"][:3]), backend.predict_proba(run["bytes"][:3])
        assert calls == [("cpu", "embedding"), ("cpu", "probs")], spec
    calls.clear()
    load_backend(f"hf:{tiny_vit}", device="cpu").embed([_png(1, (32, 32))])
    assert calls == [("cpu", "embedding")] and moved == ["cpu"] * 5
