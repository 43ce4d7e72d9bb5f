"""curate.models: one interface over curate runs, TorchScript, ONNX, transformers models and precomputed embeddings,
and ``curate export-model``.

Ground truth: a small-cnn trained for two epochs on the planted quadrant task of test_train (so its probabilities
are far from uniform and a wrong normalization shows), scored by ``curate predict``; exported files are loaded by
a Python that cannot import curate; a tiny ViT with random weights is built from a config and saved to disk
(nothing is downloaded) and compared with transformers' own forward pass on hand-made pixels.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

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
