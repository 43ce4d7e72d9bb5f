"""curate normalize: exact per-channel mean/std over included train rows only, into state and exports."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from curate.errors import CurateError
from curate.pipeline import run_stage
from curate.stages.normalize import NormalizeConfig
from curate.stages.normalize.pixels import run_normalize
from curate.stages.split import SplitConfig
from curate.stages.split.assign import run_split
from tests.conftest import ingest, make_jpeg, make_png


def _split_and_normalize(ws, cfg: NormalizeConfig = NormalizeConfig(), workers: int = 1) -> dict:
    run_stage(ws, "split", {"seed": 0}, lambda parent, _pid: run_split(parent, SplitConfig()))
    return run_stage(ws, "normalize", {"channels": cfg.channels}, lambda parent, _pid: run_normalize(ws, parent, cfg, workers=workers))


def _reference(ws, split: str, channels: int) -> tuple[np.ndarray, np.ndarray]:
    from PIL import Image

    t = ws.samples().to_pandas()
    rows = t[(t.status == "ok") & (t.split == split)]
    pix = []
    for src in rows.source:
        im = Image.open(src).convert("L" if channels == 1 else "RGB")
        pix.append(np.asarray(im, np.float64).reshape(-1, channels) / 255.0)
    allpix = np.concatenate(pix)
    return allpix.mean(axis=0), allpix.std(axis=0)


def test_mean_std_equal_numpy_reference_on_train_rows_mixed_sizes_and_modes(tmp_path: Path, workspace) -> None:
    src = tmp_path / "src"
    for i in range(30):
        cls = "a" if i % 2 else "b"
        if i % 3 == 0:
            make_png(src / cls / f"{i}.png", seed=i, size=(12 + i, 9), mode="L")  # gray among colour -> replicated
        elif i % 3 == 1:
            make_jpeg(src / cls / f"{i}.jpg", seed=i, size=(20, 7 + i))
        else:
            make_png(src / cls / f"{i}.png", seed=i, size=(16, 16))
    (src / "a" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nbroken")
    ingest(workspace, src, max_error_fraction=0.5)
    res = _split_and_normalize(workspace, workers=2)
    state = json.loads(workspace.state_path(res["version"], "normalization.json").read_text())
    mean, std = _reference(workspace, "train", 3)
    assert state["channels"] == 3
    np.testing.assert_allclose(state["mean"], mean, atol=1e-6, rtol=0)
    np.testing.assert_allclose(state["std"], std, atol=1e-6, rtol=0)
    # val/test never contribute: the reference over all included rows differs.
    t = workspace.samples().to_pandas()
    assert state["images"] == int(((t.status == "ok") & (t.split == "train")).sum())
    assert np.asarray(state["histogram"]).sum() == state["pixels_per_channel"] * 3


def test_grayscale_set_gives_one_channel_and_val_images_do_not_matter(tmp_path: Path, workspace) -> None:
    src = tmp_path / "src"
    for i in range(20):
        make_png(src / ("a" if i % 2 else "b") / f"{i}.png", seed=i, size=(8, 8), mode="L")
    ingest(workspace, src)
    res = _split_and_normalize(workspace)
    state = json.loads(workspace.state_path(res["version"], "normalization.json").read_text())
    mean, std = _reference(workspace, "train", 1)
    assert state["channels"] == 1
    np.testing.assert_allclose(state["mean"], mean, atol=1e-6, rtol=0)
    np.testing.assert_allclose(state["std"], std, atol=1e-6, rtol=0)
    all_mean = _reference(workspace, "val", 1)[0]
    assert not np.allclose(all_mean, mean, atol=1e-6)


def test_normalization_lands_in_export_dataset_json(tmp_path: Path, workspace) -> None:
    from curate.stages.export import ExportConfig
    from curate.stages.export.write import export_version

    src = tmp_path / "src"
    for i in range(12):
        make_png(src / ("a" if i % 2 else "b") / f"{i}.png", seed=i, size=(8, 8), mode="L")
    ingest(workspace, src)
    res = _split_and_normalize(workspace)
    with workspace.writer():
        out = export_version(workspace, res["version"], ExportConfig(formats=("parquet",)))
    card = json.loads((Path(out["out"]) / "dataset.json").read_text())
    state = json.loads(workspace.state_path(res["version"], "normalization.json").read_text())
    assert card["normalization"]["mean"] == state["mean"] and card["normalization"]["std"] == state["std"]


def test_without_split_fails_clearly(tmp_path: Path, workspace) -> None:
    src = tmp_path / "src"
    make_png(src / "a" / "x.png", seed=1)
    ingest(workspace, src)
    with pytest.raises(CurateError, match="no included 'train' rows"):
        run_stage(workspace, "normalize", {}, lambda parent, _pid: run_normalize(workspace, parent, NormalizeConfig()))
