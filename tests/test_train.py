"""curate train / evaluate / predict: learning a planted task, exact resume, metrics vs sklearn, NaN guard,
checkpoint round trip, the one-batch sanity check, streaming shards and k-fold out-of-sample probabilities.

One small workspace (4 classes of 16x16 grayscale images; the class is the quadrant holding a bright blob at a
random spot, under noise) is built once per module; every run is a few CPU seconds.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from curate.errors import CurateError
from curate.learn.train import NanLoss, TrainConfig, train
from tests.conftest import ingest

CLASSES = ["a", "b", "c", "d"]
FAST = TrainConfig(epochs=3, batch_size=32, lr=3e-3, patience=0, seed=0)


def planted_folder(root: Path, per_class: int = 45, size: int = 16, seed: int = 0) -> Path:
    """``root/<class>/<i>.png``: noise plus a bright 5x5 blob somewhere in the quadrant named by the class."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    half = size // 2
    for k, cls in enumerate(CLASSES):
        (root / cls).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            im = rng.integers(0, 110, (size, size), dtype=np.uint8)
            r = (k // 2) * half + rng.integers(0, half - 4)
            c = (k % 2) * half + rng.integers(0, half - 4)
            im[r : r + 5, c : c + 5] = rng.integers(150, 256)
            Image.fromarray(im).save(root / cls / f"{i:03d}.png")
    return root


def make_workspace(base: Path, **folder_kwargs):  # noqa: ANN201 - Workspace
    from curate.pipeline import run_stage
    from curate.stages.normalize import NormalizeConfig
    from curate.stages.normalize.pixels import run_normalize
    from curate.stages.split import SplitConfig
    from curate.stages.split.assign import run_split
    from curate.workspace import Workspace

    ws = Workspace(base / "ws")
    ingest(ws, planted_folder(base / "src", **folder_kwargs))
    run_stage(ws, "split", {"seed": 0}, lambda parent, _pid: run_split(parent, SplitConfig()))
    run_stage(ws, "normalize", {}, lambda parent, _pid: run_normalize(ws, parent, NormalizeConfig()))
    return ws


@pytest.fixture(scope="module", autouse=True)
def one_thread():  # noqa: ANN201
    """Tiny tensors: one intra-op thread is as fast, and on a busy machine far faster (no barrier waits)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def ws(tmp_path_factory: pytest.TempPathFactory):  # noqa: ANN201 - Workspace
    return make_workspace(tmp_path_factory.mktemp("train"))


@pytest.fixture(scope="module")
def trained(ws, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    """One finished run of FAST (4 epochs, with shift augmentation and label smoothing)."""
    out = tmp_path_factory.mktemp("runs") / "base"
    cfg = replace(FAST, epochs=4, augment="shift", label_smoothing=0.05, out=str(out))
    return out, train(ws, cfg)


def test_learns_planted_task_well_above_chance_and_writes_the_run(trained) -> None:
    out, res = trained
    assert res["metrics"]["val"]["accuracy"] >= 0.85 and res["metrics"]["test"]["accuracy"] >= 0.75  # chance is 0.25
    for name in (
        "model_last.pt",
        "model_best.pt",
        "meta_last.json",
        "meta_best.json",
        "metrics.json",
        "curves.png",
        "confusion_val.png",
        "confusion_test.png",
    ):
        assert (out / name).stat().st_size > 0, name
    meta = json.loads((out / "meta_last.json").read_text())
    assert meta["classes"] == CLASSES and meta["dataset_version"] == res["version"] and meta["epoch"] == 4
    assert meta["config"]["augment"] == "shift" and len(meta["history"]) == 4
    metrics = json.loads((out / "metrics.json").read_text())
    test = metrics["splits"]["test"]
    assert set(test) >= {"accuracy", "macro_f1", "per_class", "confusion", "roc_auc_ovr_macro", "topk_error", "worst"}
    assert np.asarray(test["confusion"]).sum() == test["n"]
    for row in test["worst"]:
        assert row["true"] != row["predicted"] and 0 < row["confidence"] <= 1 and len(row["sample_id"]) == 64


def test_checkpoint_round_trip_with_weights_only(ws, trained) -> None:
    from curate.learn.predict import load_run, predict_table
    from curate.learn.shards import open_export

    out, res = trained
    for name in ("model_last.pt", "model_best.pt"):
        ckpt = torch.load(out / name, map_location="cpu", weights_only=True)
        assert ckpt["format"] == 1 and all(isinstance(v, torch.Tensor) for v in ckpt["model"].values())
    run = load_run(out)
    card = open_export(ws, res["version"]).card
    assert run.meta["normalization"]["mean"] == card["normalization"]["mean"]
    assert run.meta["normalization"]["std"] == card["normalization"]["std"]
    # The loaded model reproduces the test accuracy written at the end of training, from the raw shard table.
    import pyarrow.parquet as pq

    table = pq.read_table(open_export(ws, res["version"]).files("test", "parquet"))
    pred = predict_table(run, table)
    truth = table.column("label").to_pylist()
    acc = np.mean([CLASSES.index(p) == y for p, y in zip(pred.column("predicted").to_pylist(), truth, strict=True)])
    assert acc == pytest.approx(res["metrics"]["test"]["accuracy"])
    probs = np.asarray(pred.column("probs").to_pylist())
    np.testing.assert_allclose(probs.sum(1), 1, atol=1e-5)


def _stop_after(epoch: int):  # noqa: ANN202
    def hook(row: dict) -> None:
        if row["epoch"] == epoch:
            raise KeyboardInterrupt  # what Ctrl-C or a kill between epochs looks like to the run folder

    return hook


def test_resume_after_interrupt_gives_the_same_losses_and_weights(ws, trained, tmp_path: Path) -> None:
    out, res = trained
    cfg = replace(FAST, epochs=4, augment="shift", label_smoothing=0.05, out=str(tmp_path / "r"))
    with pytest.raises(KeyboardInterrupt):
        train(ws, cfg, on_epoch_end=_stop_after(2))
    assert json.loads((tmp_path / "r" / "meta_last.json").read_text())["epoch"] == 2
    with pytest.raises(CurateError, match="already holds a training run"):
        train(ws, cfg)
    resumed = train(ws, replace(cfg, resume=True, epochs=99))  # saved settings win: epochs stays 4
    assert resumed["epochs_run"] == 4
    a = json.loads((out / "meta_last.json").read_text())["history"]
    b = json.loads((tmp_path / "r" / "meta_last.json").read_text())["history"]
    for ra, rb in zip(a, b, strict=True):
        assert {k: v for k, v in ra.items() if k != "seconds"} == {k: v for k, v in rb.items() if k != "seconds"}
    wa = torch.load(out / "model_last.pt", weights_only=True)["model"]
    wb = torch.load(tmp_path / "r" / "model_last.pt", weights_only=True)["model"]
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


def test_sigkill_mid_training_then_resume_matches(ws, tmp_path: Path) -> None:
    """A real ``kill -9`` of ``curate train`` in another process, then ``--resume``: same curve as uninterrupted."""
    args = ["--epochs", "5", "--batch-size", "32", "--patience", "0", "--arch", "small-cnn", "--workspace", str(ws.root)]
    ref = train(ws, replace(FAST, epochs=5, out=str(tmp_path / "ref")))
    run = tmp_path / "killed"
    exe = str(Path(sys.executable).with_name("curate"))
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}  # as in this process: bitwise equal results
    proc = subprocess.Popen([exe, "train", *args, "--out", str(run)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline and proc.poll() is None:
        meta = run / "meta_last.json"
        if meta.exists() and json.loads(meta.read_text())["epoch"] >= 1:
            break
        time.sleep(0.02)
    if proc.poll() is not None:
        pytest.skip("the run finished before it could be killed (machine too fast for this test)")
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    done = json.loads((run / "meta_last.json").read_text())["epoch"]
    assert done < 5
    subprocess.run(
        [exe, "train", "--resume", "--out", str(run), "--workspace", str(ws.root), "--json"],
        check=True,
        capture_output=True,
        env=env,
        timeout=120,
    )
    a = json.loads((tmp_path / "ref" / "meta_last.json").read_text())["history"]
    b = json.loads((run / "meta_last.json").read_text())["history"]
    assert [r["train_loss"] for r in a] == [r["train_loss"] for r in b]
    assert [r["val_loss"] for r in a] == [r["val_loss"] for r in b]
    assert ref["epochs_run"] == 5


def test_metrics_match_sklearn_on_fixed_predictions() -> None:
    from sklearn import metrics as skm

    from curate.learn.metrics import classification_metrics, roc_auc

    rng = np.random.default_rng(3)
    n, k = 400, 5
    y = rng.integers(0, k, n)
    logits = rng.normal(size=(n, k)) + 1.5 * np.eye(k)[y]
    probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    names = [f"c{i}" for i in range(k)]
    m = classification_metrics(y, probs, names)
    pred = probs.argmax(1)
    assert m["accuracy"] == pytest.approx(skm.accuracy_score(y, pred))
    assert m["macro_f1"] == pytest.approx(skm.f1_score(y, pred, average="macro"))
    p, r, f, s = skm.precision_recall_fscore_support(y, pred, labels=range(k), zero_division=0)
    for i, c in enumerate(names):
        pc = m["per_class"][c]
        assert (pc["precision"], pc["recall"], pc["f1"], pc["support"]) == pytest.approx((p[i], r[i], f[i], s[i]))
        assert pc["roc_auc"] == pytest.approx(skm.roc_auc_score(y == i, probs[:, i]))
    assert m["confusion"] == skm.confusion_matrix(y, pred, labels=range(k)).tolist()
    assert m["roc_auc_ovr_macro"] == pytest.approx(skm.roc_auc_score(y, probs, multi_class="ovr", average="macro"))
    for t in (3,):
        assert m["topk_error"][str(t)] == pytest.approx(1 - skm.top_k_accuracy_score(y, probs, k=t, labels=range(k)))
    # ties are averaged like sklearn; a class that never occurs scores 0 and has no AUC
    scores = np.array([0.1, 0.4, 0.4, 0.4, 0.8, 0.8])
    pos = np.array([0, 1, 0, 1, 1, 0], bool)
    assert roc_auc(scores, pos) == pytest.approx(skm.roc_auc_score(pos, scores))
    m2 = classification_metrics(np.array([0, 0, 1]), np.array([[0.9, 0.1, 0], [0.2, 0.8, 0], [0.3, 0.7, 0]]), ["x", "y", "z"])
    assert m2["per_class"]["z"]["f1"] == 0 and m2["per_class"]["z"]["roc_auc"] is None
    assert m2["macro_f1"] == pytest.approx(skm.f1_score([0, 0, 1], [0, 1, 1], labels=[0, 1, 2], average="macro", zero_division=0))


def test_nan_loss_stops_training_with_a_clear_error(ws, tmp_path: Path) -> None:
    from curate.learn.data import DecodedSplit, memory_data
    from curate.learn.train import fit

    images = np.random.default_rng(0).integers(0, 255, (64, 8, 8, 1), dtype=np.uint8)
    split = DecodedSplit(images, np.arange(64) % 2, [str(i) for i in range(64)])
    poisoned = memory_data({"train": split}, ["x", "y"], {"mean": [float("nan")], "std": [1.0], "channels": 1}, batch_size=16)
    with pytest.raises(NanLoss, match="loss became nan at epoch 1, step 1"):
        fit(replace(FAST, arch="linear"), poisoned)
    with pytest.raises(CurateError, match="loss became"):
        train(ws, replace(FAST, optimizer="sgd", lr=1e6, schedule="constant", out=str(tmp_path / "nan")))
    assert not (tmp_path / "nan" / "model_best.pt").exists()


def test_sanity_passes_on_learnable_data_and_fails_on_shuffled_labels_or_zero_lr(ws) -> None:
    from curate.learn.data import workspace_data
    from curate.learn.sanity import sanity_check

    res = train(ws, FAST, sanity=True)
    assert res["sanity"]["passed"] and res["sanity"]["loss_last"] < 0.25 * res["sanity"]["loss_first"]
    data = workspace_data(ws, None, batch_size=32)
    with pytest.raises(CurateError, match="sanity check FAILED"):
        sanity_check(FAST, data, shuffle_labels=True)
    with pytest.raises(CurateError, match="sanity check FAILED"):
        train(ws, replace(FAST, lr=0.0), sanity=True)


def test_stream_loader_reads_webdataset_shards_and_learns(ws, tmp_path: Path) -> None:
    from curate.learn.data import set_epoch, workspace_data

    mem = workspace_data(ws, None, batch_size=32)
    stream = workspace_data(ws, None, fmt="webdataset", loader="stream", batch_size=32, workers=2)
    assert stream.mode == "stream" and (stream.channels, stream.size) == (mem.channels, mem.size)
    for name in ("train", "val"):  # the same rows and pixels, whatever the format and loader
        set_epoch(stream.loaders[name], 1)
        got = dict(sorted((i, float(v.sum())) for x, _y, ids in stream.loaders[name] for i, v in zip(ids, x, strict=True)))
        want = dict(sorted((i, float(v.sum())) for x, _y, ids in mem.loaders[name] for i, v in zip(ids, x, strict=True)))
        if name == "train":  # the memory loader drops the ragged last batch of an epoch
            assert set(want) <= set(got) and len(got) == mem.rows["train"]
            got = {k: got[k] for k in want}
        assert list(got) == list(want) and list(got.values()) == pytest.approx(list(want.values()), rel=1e-5)
    res = train(ws, replace(FAST, loader="stream", format="webdataset", out=str(tmp_path / "s")))
    assert res["metrics"]["val"]["accuracy"] >= 0.6


def test_cli_train_evaluate_predict(ws, trained, tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from curate.cli import app

    out, _res = trained
    runner = CliRunner()
    r = runner.invoke(app, ["evaluate", str(out), "--split", "test", "--workspace", str(ws.root), "--json"])
    assert r.exit_code == 0, r.output
    ev = json.loads(r.stdout)
    assert ev["n"] > 0 and 0 <= ev["accuracy"] <= 1 and (out / "eval_test.json").exists()
    src = tmp_path / "new"
    planted_folder(src, per_class=3, seed=9)
    r = runner.invoke(app, ["predict", str(out), str(src), "--out", str(tmp_path / "p.csv"), "--json"])
    assert r.exit_code == 0, r.output
    import pandas as pd

    preds = pd.read_csv(tmp_path / "p.csv")
    assert len(preds) == 12 and np.allclose(preds[[f"p_{c}" for c in CLASSES]].sum(axis=1), 1, atol=1e-5)
    assert (preds.predicted == preds.label).mean() >= 0.5
    r = runner.invoke(app, ["train", "--arch", "nope", "--workspace", str(ws.root)])
    assert r.exit_code == 2 and "--arch" in r.output


def test_oof_probs_are_out_of_sample_and_above_chance(ws) -> None:
    from curate.learn.data import workspace_data
    from curate.learn.predict import oof_probs

    split = workspace_data(ws, None).loaders["train"].dataset.split
    probs = oof_probs(split.images, split.labels, CLASSES, replace(FAST, epochs=3), folds=3)
    assert probs.shape == (len(split), 4)
    np.testing.assert_allclose(probs.sum(1), 1, atol=1e-5)
    assert (probs.argmax(1) == split.labels).mean() >= 0.6


def test_mixed_sizes_are_resized_to_a_common_size(tmp_path: Path) -> None:
    from PIL import Image

    from curate.learn.data import workspace_data

    ws = make_workspace(tmp_path, per_class=6)
    for i, cls in enumerate(CLASSES):  # add images of other sizes and RGB
        Image.new("RGB", (20 + i, 24), (200, 10 * i, 0)).save(tmp_path / "src" / cls / "odd.png")
    ingest(ws, tmp_path / "src")
    from curate.pipeline import run_stage
    from curate.stages.normalize import NormalizeConfig
    from curate.stages.normalize.pixels import run_normalize
    from curate.stages.split import SplitConfig
    from curate.stages.split.assign import run_split

    run_stage(ws, "split", {"seed": 0, "again": 1}, lambda parent, _pid: run_split(parent, SplitConfig()))
    run_stage(ws, "normalize", {"again": 1}, lambda parent, _pid: run_normalize(ws, parent, NormalizeConfig()))
    data = workspace_data(ws, None, batch_size=8)
    assert data.channels == 3 and data.size == (16, 16)
    x, y, ids = next(iter(data.loaders["train"]))
    assert x.shape[1:] == (3, 16, 16) and len(ids) == len(y)


def test_cli_help_does_not_import_torch() -> None:
    code = "import sys, curate.cli; print(any(m in sys.modules for m in ('torch', 'albumentations', 'matplotlib')))"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip() == "False"


# ----------------------------------------------------------------------------------------------- outside data, damage


def _cli(*args: object):  # noqa: ANN202
    from typer.testing import CliRunner

    from curate.cli import app

    return CliRunner().invoke(app, [str(a) for a in args])


def test_predict_keeps_an_undecodable_file_as_a_row_and_scores_labels(trained, tmp_path: Path) -> None:
    """The bad file sorts first (error rows came first and fixed the table's schema: KeyError 'predicted')."""
    import pandas as pd

    out, _res = trained
    src = planted_folder(tmp_path / "held", per_class=5, seed=11)
    (src / "a" / "000-broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    r = _cli("predict", out, src, "--out", tmp_path / "p.csv", "--json")
    assert r.exit_code == 0, r.output
    res = json.loads(r.stdout)
    assert (res["rows"], res["errors"]) == (21, 1)
    preds = pd.read_csv(tmp_path / "p.csv")
    bad = preds[preds["source"].str.endswith("000-broken.png")]
    assert len(bad) == 1 and bad["predicted"].isna().all() and bad["error"].notna().all() and bad["label"].iloc[0] == "a"
    good = preds[preds["error"].isna()]
    assert len(good) == 20 and good["predicted"].notna().all()
    m = res["metrics"]
    assert m["n"] == 20 and m["accuracy"] == pytest.approx((good["predicted"] == good["label"]).mean())
    from sklearn.metrics import f1_score

    assert m["macro_f1"] == pytest.approx(f1_score(good["label"], good["predicted"], average="macro", labels=CLASSES))
    r = _cli("predict", out, src, "--out", tmp_path / "p.parquet")
    assert r.exit_code == 0 and "accuracy" in r.stdout and "macro-F1" in r.stdout


def test_predict_on_a_folder_with_a_pipe_an_empty_file_and_a_bad_name_finishes(trained, tmp_path: Path) -> None:
    """A named pipe blocked ``read_bytes`` forever (no writer ever comes); a name that is not UTF-8 and an empty
    file are rows with their reasons, as ingest records them. A separate process, so a regression fails on the
    timeout instead of hanging the suite."""
    import os

    import pandas as pd
    from helpers import run_curate

    out, _res = trained
    src = planted_folder(tmp_path / "odd", per_class=3, seed=13)
    os.mkfifo(src / "a" / "pipe.png")
    (src / "b" / "empty.png").write_bytes(b"")
    os.rename(src / "b" / "001.png", os.path.join(os.fsencode(src / "b"), b"\xff-name.png"))
    res = run_curate(["predict", str(out), str(src), "--out", str(tmp_path / "p.csv")], cwd=tmp_path, timeout=120)
    assert res.returncode == 0, res.stderr[-2000:]
    preds = pd.read_csv(tmp_path / "p.csv")
    errors = {Path(s).name: e.split(":")[0] for s, e in zip(preds["source"], preds["error"], strict=True) if isinstance(e, str)}
    assert errors == {"pipe.png": "not_a_file", "empty.png": "empty", "\\xff-name.png": "bad_name"}, errors
    assert preds["predicted"].notna().sum() == len(preds) - 3


def test_evaluate_a_labeled_source_outside_the_workspace(ws, trained, tmp_path: Path) -> None:
    import pandas as pd

    out, _res = trained
    src = planted_folder(tmp_path / "held-out", per_class=6, seed=12)
    r = _cli("evaluate", out, "--src", src, "-w", ws.root, "--json")
    assert r.exit_code == 0, r.output
    ev = json.loads(r.stdout)
    folder = out / "eval-held-out"
    assert ev["n"] == 24 and ev["path"] == str(folder / "eval_held-out.json")
    assert (folder / "eval_held-out.json").exists() and (folder / "eval_confusion_held-out.png").exists()
    saved = json.loads((folder / "eval_held-out.json").read_text())["splits"]["held-out"]
    assert saved["accuracy"] == ev["accuracy"] and set(saved["per_class"]) == set(CLASSES)
    preds = pd.read_parquet(folder / "predictions.parquet")
    assert ev["accuracy"] == pytest.approx((preds["predicted"] == preds["label"]).mean())
    # a manifest with labels works too, and scores the same images the same
    manifest = tmp_path / "list.csv"
    rows = [(str(p), p.parent.name) for p in sorted(src.rglob("*.png"))]
    manifest.write_text("path,label\n" + "".join(f"{p},{lab}\n" for p, lab in rows))
    r = _cli("evaluate", out, "--src", manifest, "-w", ws.root, "--json")
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["accuracy"] == ev["accuracy"] and (out / "eval-list" / "eval_list.json").exists()
    # the split path still works beside it, and --src with --version is bad usage
    assert _cli("evaluate", out, "--src", src, "--version", "1", "-w", ws.root).exit_code == 2


def _tampered(trained_dir: Path, dest: Path, how: str) -> Path:
    dest.mkdir(parents=True)
    ckpt = torch.load(trained_dir / "model_best.pt", weights_only=True)
    meta = json.loads(ckpt["meta_json"])
    if how == "no-meta":
        del ckpt["meta_json"]
    elif how == "wrong-shape":
        key = next(k for k, v in ckpt["model"].items() if v.ndim == 2)
        ckpt["model"][key] = torch.zeros(3, 3)
    elif how == "huge-size":
        ckpt["meta_json"] = json.dumps({**meta, "size": [10**6, 10**6]})
    elif how == "garbage":
        (dest / "model_best.pt").write_bytes(b"not a zip" * 100)
        return dest
    torch.save(ckpt, dest / "model_best.pt")
    return dest


@pytest.mark.parametrize("how", ["no-meta", "wrong-shape", "huge-size", "garbage"])
def test_a_tampered_checkpoint_is_one_line_naming_it(ws, trained, tmp_path: Path, how: str) -> None:
    from helpers import assert_one_error_line

    run = _tampered(trained[0], tmp_path / "run", how)
    src = planted_folder(tmp_path / "src", per_class=1, seed=13)
    for args in (["predict", run, src, "--out", tmp_path / "p.csv"], ["evaluate", run, "-w", ws.root]):
        r = _cli(*args)
        assert r.exit_code == 1, (how, r.output)
        line = assert_one_error_line(r.stderr)
        assert str(run / "model_best.pt") in line and "internal error" not in line, line
    assert not (tmp_path / "p.csv").exists()


def test_the_autocast_log_line_says_what_training_used(ws, tmp_path: Path) -> None:
    lines: list[str] = []
    for amp in (False, True):
        cfg = replace(FAST, epochs=1, schedule="constant", amp=amp, out=str(tmp_path / f"amp-{amp}"))
        res = train(ws, cfg, log=lines.append)
        said = [ln for ln in lines if "autocast" in ln][-1]
        assert said.endswith(f"autocast {res['amp']}"), said
        assert "None" not in said
    assert res["amp"] in ("off", "bfloat16", "float16")


@pytest.mark.parametrize("steps", [1, 2, 3, 4, 7])
def test_onecycle_schedule_runs_for_very_short_trainings(steps):
    """3 steps once crashed OneCycleLR with ZeroDivisionError (a warm-up phase of length 0)."""
    from curate.learn.runtime import make_schedule

    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
    sched = make_schedule(opt, "onecycle", 0.1, steps)
    for _ in range(steps):
        opt.step()
        sched.step()
    assert all(g["lr"] >= 0 for g in opt.param_groups)
