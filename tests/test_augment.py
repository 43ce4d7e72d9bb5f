"""curate augment: new train samples with parent and recipe, byte-identical reproduction from the recipe alone,
determinism across worker counts, policies shared with the trainer, policy files, the preview grid, the CLI.

The workspace: a manifest with splits train a 6 / b 3, val a 2 / b 2, test a 1 / b 1 (16x16 RGB PNGs).
"""

from __future__ import annotations

import hashlib
import io
import json
from collections import Counter
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pytest
from helpers import assert_one_error_line, manifest_with_splits
from typer.testing import CliRunner

from curate.augmentation import AugmentConfig
from curate.augmentation.copies import run_augment
from curate.augmentation.policies import reproduce
from curate.cli import app
from curate.errors import CurateError, UsageError
from curate.pipeline import run_stage
from curate.workspace import Workspace
from tests.conftest import ingest

PLAN = {"train": {"a": 6, "b": 3}, "val": {"a": 2, "b": 2}, "test": {"a": 1, "b": 1}}


def make_ws(base: Path) -> Workspace:
    csv, _ = manifest_with_splits(base / "src", PLAN)
    ws = Workspace(base / "ws")
    ingest(ws, csv, assign_split=True)
    return ws


@pytest.fixture
def ws(tmp_path: Path) -> Workspace:
    return make_ws(tmp_path)


def _augment(ws: Workspace, workers: int = 1, **kwargs) -> pa.Table:  # noqa: ANN003
    cfg = AugmentConfig(**kwargs)
    run_stage(ws, "augment", {"k": repr(cfg)}, lambda parent, pid: run_augment(ws, parent, pid, cfg, workers=workers))
    return ws.samples()


def _new(t: pa.Table) -> list[dict]:
    return t.filter(pc.equal(pc.fill_null(t.column("label_source"), ""), "augment")).to_pylist()


def _bytes(ws: Workspace, t: pa.Table) -> dict[str, bytes]:
    return ws.blobs.get_many(t.column("sample_id").to_pylist(), t.column("pack").to_pylist())


def test_copies_are_new_train_samples_with_parent_and_recipe(ws: Workspace) -> None:
    from PIL import Image

    before = ws.samples()
    after = _augment(ws, policy="medium", copies=2)
    new = _new(after)
    train_parents = {r["sample_id"]: r for r in before.to_pylist() if r["split"] == "train"}
    assert len(new) == 2 * len(train_parents) == 18
    assert Counter(r["parent_id"] for r in new) == {p: 2 for p in train_parents}
    assert after.num_rows == before.num_rows + 18
    assert (
        after.filter(pc.is_in(after.column("sample_id"), before.column("sample_id"))).select(before.column_names).to_pylist()
        == before.to_pylist()
    )
    blobs = _bytes(ws, after)
    for r in new:
        assert r["split"] == "train" and r["status"] == "ok" and r["label"] == train_parents[r["parent_id"]]["label"]
        assert r["source"].startswith(f"augment:{r['parent_id']}:") and r["format"] == "PNG" and r["mode"] == "RGB"
        data = blobs[r["sample_id"]]
        assert hashlib.sha256(data).hexdigest() == r["sample_id"] and r["nbytes"] == len(data)
        im = Image.open(io.BytesIO(data))
        assert (im.format, im.size, im.mode) == ("PNG", (r["width"], r["height"]), "RGB")
        recipe = json.loads(r["recipe"])
        assert recipe["parent_id"] == r["parent_id"] and recipe["policy"] == "medium"
        assert recipe["transform"]["transform"]["transforms"]


def test_recipe_reproduces_the_bytes_with_plain_albumentations(ws: Workspace) -> None:
    import random

    import albumentations as A
    import numpy as np
    from PIL import Image

    after = _augment(ws, policy="heavy", copies=1, seed=7)
    blobs = _bytes(ws, after)
    for r in _new(after):
        recipe = json.loads(r["recipe"])
        parent = blobs[r["parent_id"]]
        assert reproduce(r["recipe"], parent) == blobs[r["sample_id"]]
        # The same steps written out with albumentations and Pillow only: the recipe is all one needs.
        t = A.from_dict(recipe["transform"])
        t.set_random_state(np.random.default_rng(recipe["seed"]), random.Random(recipe["seed"]))
        out = t(image=np.asarray(Image.open(io.BytesIO(parent)).convert(recipe["mode"])))["image"]
        buf = io.BytesIO()
        Image.fromarray(out).save(buf, **recipe["encode"])
        assert buf.getvalue() == blobs[r["sample_id"]]


def test_deterministic_whatever_the_number_of_workers_and_seed_matters(tmp_path: Path) -> None:
    def run(name: str, workers: int, seed: int) -> list[tuple]:
        ws = make_ws(tmp_path / name)
        t = _augment(ws, workers=workers, policy="light", copies=2, seed=seed, batch_size=2)
        return [(r["sample_id"], r["parent_id"], r["recipe"]) for r in _new(t)]

    one = run("one", 1, 0)
    assert one == run("two", 2, 0)
    assert {r[0] for r in one}.isdisjoint({r[0] for r in run("other", 1, 1)})


def test_to_balance_reaches_the_target_and_never_uses_val_test_or_copies(ws: Workspace) -> None:
    after = _augment(ws, policy="light", to_balance=True)
    counts = Counter(r["label"] for r in after.to_pylist() if r["split"] == "train" and r["status"] == "ok")
    assert counts == {"a": 6, "b": 6}
    again = _augment(ws, policy="light", copies=1, seed=3)
    train_originals = {r["sample_id"] for r in again.to_pylist() if r["split"] == "train" and r["label_source"] == "given"}
    assert {r["parent_id"] for r in _new(again)} == train_originals  # neither val/test rows nor earlier copies
    assert Counter(r["split"] for r in again.to_pylist()) == {"train": 9 + 3 + 9, "val": 4, "test": 2}
    target = _augment(ws, policy="light", to_balance=True, target="10")
    assert Counter(r["label"] for r in target.to_pylist() if r["split"] == "train") == {"a": 12, "b": 10}


def test_jpeg_parents_stay_jpeg_and_reproduce(tmp_path: Path, make_jpeg) -> None:  # noqa: ANN001
    for i in range(4):
        make_jpeg(tmp_path / "src" / "x" / f"{i}.jpg", seed=i, size=(20, 12), exif_orientation=6 if i == 0 else None)
    ws = Workspace(tmp_path / "ws")
    ingest(ws, tmp_path / "src", split_name="train", assign_split=True)
    after = _augment(ws, policy="medium", copies=1)
    blobs = _bytes(ws, after)
    for r in _new(after):
        assert r["format"] == "JPEG" and blobs[r["sample_id"]][:3] == b"\xff\xd8\xff"
        assert json.loads(r["recipe"])["encode"] == {"format": "JPEG", "quality": 95}
        assert reproduce(r["recipe"], blobs[r["parent_id"]]) == blobs[r["sample_id"]]
    rotated = next(r for r in after.to_pylist() if r["label_source"] == "given" and r["width"] == 12)  # EXIF 6: 20x12 shown as 12x20
    assert {(r["width"], r["height"]) for r in _new(after) if r["parent_id"] == rotated["sample_id"]} == {(12, 20)}


def test_policy_file_round_trips_and_gives_the_same_samples(ws: Workspace, tmp_path: Path) -> None:
    from curate.augmentation.policies import build_policy, load_policy_file, save_policy, to_json

    path = save_policy(build_policy("medium"), tmp_path / "medium.yaml")
    assert to_json(load_policy_file(path)) == to_json(build_policy("medium"))
    named = {r["sample_id"] for r in _new(_augment(ws, policy="medium", copies=1))}
    ws2 = make_ws(tmp_path / "again")
    from_file = _new(_augment(ws2, policy=str(path), copies=1))
    assert {r["sample_id"] for r in from_file} == named and json.loads(from_file[0]["recipe"])["policy"] == str(path)


def test_trainer_policies_are_the_shared_ones_and_old_names_still_work() -> None:
    import albumentations as A
    import cv2

    from curate.augmentation.policies import build_policy, to_json
    from curate.learn.data import AUGMENT_POLICIES, augmenter

    assert {"none", "flip", "shift", "flip-shift", "standard", "affine", "light", "medium", "heavy"} == set(AUGMENT_POLICIES)
    assert augmenter("none", (28, 28)) is None
    old_standard = A.Compose(
        [  # the trainer's `standard` before the policies moved: unchanged
            A.HorizontalFlip(),
            A.Affine(translate_percent=(-0.07, 0.07), scale=(0.9, 1.1), rotate=(-10, 10), border_mode=cv2.BORDER_CONSTANT, p=0.7),
            A.RandomBrightnessContrast(0.15, 0.15, p=0.5),
        ],
        seed=0,
    )
    assert to_json(augmenter("standard", (28, 28))) == to_json(old_standard)
    old_shift = A.Compose([A.PadIfNeeded(32, 32, border_mode=cv2.BORDER_CONSTANT, fill=0), A.RandomCrop(28, 28)], seed=0)
    assert to_json(augmenter("shift", (28, 28))) == to_json(old_shift)
    for name in ("light", "medium", "heavy"):
        assert to_json(augmenter(name, (28, 28))) == to_json(build_policy(name))
    with pytest.raises(CurateError) as err:
        augmenter("sideways", (28, 28))
    assert err.value.exit_code == 2


def test_a_policy_that_changes_nothing_fails_clearly_and_writes_nothing(ws: Workspace, tmp_path: Path) -> None:
    import albumentations as A

    from curate.augmentation.policies import save_policy

    path = save_policy(A.Compose([A.HorizontalFlip(p=0.0)]), tmp_path / "noop.json")
    packs, versions = ws.blobs.packs(), ws.version_ids()
    with pytest.raises(CurateError, match="identical to existing samples"):
        _augment(ws, policy=str(path), copies=1)
    assert ws.blobs.packs() == packs and ws.version_ids() == versions


def test_preview_writes_a_grid_and_commits_nothing(ws: Workspace, tmp_path: Path) -> None:
    from PIL import Image

    versions, packs = ws.version_ids(), ws.blobs.packs()
    res = CliRunner().invoke(
        app, ["augment", "-w", str(ws.root), "--preview", "3", "--copies", "5", "--out", str(tmp_path / "g.png"), "--json"]
    )
    assert res.exit_code == 0, res.output
    payload = json.loads(res.stdout)
    assert payload["rows"] == 3 and payload["columns"] == 5
    train = {r["sample_id"] for r in ws.samples().to_pylist() if r["split"] == "train"}
    assert set(payload["parents"]) <= train
    assert Image.open(tmp_path / "g.png").size == (6 * 96 + 5 * 2 + 4, 3 * 98)
    assert ws.version_ids() == versions and ws.blobs.packs() == packs


def test_cli_augment_json_and_bad_input(ws: Workspace, tmp_path: Path) -> None:
    runner = CliRunner()
    w = ["-w", str(ws.root)]
    res = runner.invoke(app, ["augment", *w, "--policy", "light", "--copies", "1", "--workers", "1", "--json"])
    assert res.exit_code == 0, res.output
    st = json.loads(res.stdout)["stats"]
    assert st["new_samples"] == 9 and st["new_per_class"] == {"a": 6, "b": 3} and st["policy"] == "light"
    human = runner.invoke(app, ["augment", *w, "--policy", "light", "--to-balance", "--workers", "1"])
    assert human.exit_code == 0 and "to 12 per class" in human.stdout, human.output
    for bad in (
        ["--policy", "nope"],
        ["--policy", str(tmp_path / "missing.yaml")],
        ["--copies", "2", "--to-balance"],
        ["--copies", "0"],
        ["--preview", "2"],
        ["--target", "max"],
        ["--to-balance", "--target", "lots"],
        ["--policy", "none"],
    ):
        res = runner.invoke(app, ["augment", *w, *bad])
        assert res.exit_code == 2, (bad, res.output)
        assert_one_error_line(res.stderr)
    (tmp_path / "broken.yaml").write_text("transform: {__class_fullname__: NoSuchTransform}\n")
    res = runner.invoke(app, ["augment", *w, "--policy", str(tmp_path / "broken.yaml")])
    assert res.exit_code == 2 and assert_one_error_line(res.stderr).startswith("error: policy file")


def test_a_version_without_train_rows_is_a_clear_error(tmp_path: Path, image_folder) -> None:  # noqa: ANN001
    ws = Workspace(tmp_path / "ws")
    ingest(ws, image_folder({"a": 3}))
    with pytest.raises(CurateError, match="no included train rows"):
        _augment(ws, copies=1)
    with pytest.raises(UsageError):
        _augment(ws, copies=1, to_balance=True)
