"""Bias, variance, data mismatch: the train_dev split (right share per class, duplicate groups whole, stable), the
trainer never sees it but scores it, and the gap diagnosis names the right gap on known error numbers."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pytest

from curate.errors import UsageError
from curate.learn.gaps import diagnose
from curate.schema import conform
from curate.stages.split import SplitConfig, parse_train_dev
from curate.stages.split.assign import leakage, run_split


def _table(n_per_class: dict[str, int], *, start: int = 0, **extra: list) -> pa.Table:
    labels = [c for c, n in sorted(n_per_class.items()) for _ in range(n)]
    ids = [f"{i + start:064x}" for i in range(len(labels))]
    return conform(pa.table({"sample_id": ids, "label": labels, "status": ["ok"] * len(ids), **extra}))


def _per(table: pa.Table) -> Counter:
    return Counter(zip(table.column("label").to_pylist(), table.column("split").to_pylist(), strict=True))


def test_train_dev_takes_its_share_of_each_class_from_train_only() -> None:
    t = _table({"a": 400, "b": 200, "c": 57})
    plain = run_split(t, SplitConfig()).table
    carved = run_split(t, SplitConfig(train_dev=0.17)).table
    before, after = _per(plain), _per(carved)
    for cls in ("a", "b", "c"):
        train_rows = before[(cls, "train")]
        assert after[(cls, "train_dev")] == int(train_rows * 0.17 + 0.5), (cls, after)  # rounded, not floored
        assert after[(cls, "train")] + after[(cls, "train_dev")] == train_rows
        assert after[(cls, "val")] == before[(cls, "val")] and after[(cls, "test")] == before[(cls, "test")]
    moved = pc.equal(carved.column("split"), "train_dev")
    assert set(pc.filter(plain.column("split"), moved).to_pylist()) == {"train"}  # only train rows moved


def test_a_count_is_shared_over_classes_in_proportion() -> None:
    t = _table({"a": 600, "b": 300, "c": 100})
    out = run_split(t, SplitConfig(train_dev=50)).table
    per = _per(out)
    assert sum(per[(c, "train_dev")] for c in "abc") == 50
    assert (per[("a", "train_dev")], per[("b", "train_dev")], per[("c", "train_dev")]) == (30, 15, 5)


def test_train_dev_never_splits_a_duplicate_group_and_is_stable() -> None:
    n = 400
    dup = [f"g{i // 4}" if i < 160 else None for i in range(n)]  # 40 duplicate groups of 4
    t = _table({"a": 200, "b": 200}, dup_group=dup)
    out = run_split(t, SplitConfig(train_dev=0.2, seed=5)).table
    members: dict[str, set] = {}
    for g, s in zip(out.column("dup_group").to_pylist(), out.column("split").to_pylist(), strict=True):
        if g is not None:
            members.setdefault(g, set()).add(s)
    assert all(len(s) == 1 for s in members.values())
    assert any(s == {"train_dev"} for s in members.values())  # groups do get carved, whole
    assert leakage(out)["groups_crossing"] == 0
    per = _per(out)
    for cls in "ab":  # groups of 4 may over/undershoot by < half a group
        pool = per[(cls, "train")] + per[(cls, "train_dev")]
        assert abs(per[(cls, "train_dev")] - 0.2 * pool) <= 2
    more = pa.concat_tables([out, _table({"a": 100, "b": 100}, start=10_000, dup_group=pa.nulls(200, pa.string()))])
    again = run_split(more, SplitConfig(train_dev=0.2, seed=5)).table
    old = dict(zip(out.column("sample_id").to_pylist(), out.column("split").to_pylist(), strict=True))
    new = dict(zip(again.column("sample_id").to_pylist(), again.column("split").to_pylist(), strict=True))
    assert all(new[k] == "train_dev" for k, v in old.items() if v == "train_dev")  # nothing leaves train_dev


@pytest.mark.parametrize("bad", ["abc", "0", "-0.1", "1.5", "nan"])
def test_bad_train_dev_values_are_usage_errors(bad: str) -> None:
    with pytest.raises(UsageError, match="--train-dev"):
        parse_train_dev(bad)
    assert parse_train_dev("0.05") == 0.05 and parse_train_dev("500") == 500


def test_a_count_larger_than_train_is_refused() -> None:
    with pytest.raises(UsageError, match="only"):
        run_split(_table({"a": 10}), SplitConfig(train_dev=100))


@pytest.mark.parametrize(
    ("errors", "human", "largest"),
    [
        ({"train": 0.15, "train_dev": 0.16, "val": 0.17, "test": 0.17}, 0.01, "avoidable bias"),
        ({"train": 0.02, "train_dev": 0.10, "val": 0.11, "test": 0.12}, 0.01, "variance"),
        ({"train": 0.02, "train_dev": 0.03, "val": 0.12, "test": 0.12}, 0.01, "data mismatch"),
        ({"train": 0.05, "train_dev": 0.08, "val": 0.09}, 0.04, "variance"),  # measured against 0 it would be bias
    ],
)
def test_diagnosis_names_the_largest_gap(errors: dict, human: float, largest: str) -> None:
    d = diagnose(errors, human)
    assert d["largest"] == largest
    gaps = {g["name"]: g["value"] for g in d["gaps"]}
    assert gaps["avoidable bias"] == pytest.approx(errors["train"] - human)
    assert gaps["variance"] == pytest.approx(errors["train_dev"] - errors["train"])
    assert gaps["data mismatch"] == pytest.approx(errors["val"] - errors["train_dev"])
    assert d["advice"] and not d["notes"]


def test_diagnosis_without_human_or_train_dev_says_so() -> None:
    assert diagnose({"train": 0.05, "train_dev": 0.08, "val": 0.09})["largest"] == "avoidable bias"
    d = diagnose({"train": 0.01, "val": 0.2})
    assert d["largest"] == "variance" and len(d["notes"]) == 2
    assert next(g for g in d["gaps"] if g["name"] == "data mismatch")["value"] is None
    assert diagnose({"train": 0.1, "train_dev": 0.1, "val": 0.1}, 0.1)["largest"] is None


# ------------------------------------------------------------------------------------ with a real (tiny) run
@pytest.fixture(scope="module")
def ws(tmp_path_factory: pytest.TempPathFactory):  # noqa: ANN201 - Workspace
    import torch

    from curate.pipeline import run_stage
    from curate.stages.normalize import NormalizeConfig
    from curate.stages.normalize.pixels import run_normalize
    from curate.workspace import Workspace
    from tests.conftest import ingest
    from tests.test_train import planted_folder

    torch.set_num_threads(1)
    base = tmp_path_factory.mktemp("bv")
    ws = Workspace(base / "ws")
    ingest(ws, planted_folder(base / "src", per_class=30))
    cfg = SplitConfig(train_dev=0.2)
    run_stage(ws, "split", {"train_dev": 0.2}, lambda parent, _pid: run_split(parent, cfg))
    run_stage(ws, "normalize", {}, lambda parent, _pid: run_normalize(ws, parent, NormalizeConfig()))
    return ws


def test_export_has_train_dev_and_the_train_loader_never_yields_its_rows(ws) -> None:
    from curate.learn.data import workspace_data

    data = workspace_data(ws, None, batch_size=16)
    vid = ws.resolve(None)
    t = ws.samples(vid, columns=["sample_id", "split", "status"])
    truth = set(pc.filter(t.column("sample_id"), pc.equal(t.column("split"), "train_dev")).to_pylist())
    assert data.rows["train_dev"] == len(truth) == 4 * round(0.2 * 21)  # 21 train rows per class after 70:20:10
    seen = {i for _x, _y, ids in data.loaders["train"] for i in ids}
    dev = {i for _x, _y, ids in data.loaders["train_dev"] for i in ids}
    assert dev == truth and seen and not (seen & truth)
    card = json.loads((ws.root / "exports" / vid / "dataset.json").read_text())
    assert set(card["splits"]) == {"train", "train_dev", "val", "test"}


def test_train_scores_train_dev_each_epoch_and_stores_every_error(ws, tmp_path: Path) -> None:
    from curate.learn.train import TrainConfig, train

    res = train(ws, TrainConfig(epochs=2, batch_size=16, patience=0, out=str(tmp_path / "run")))
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert set(metrics["errors"]) == {"train", "train_dev", "val", "test"}
    for split, err in metrics["errors"].items():
        assert err == pytest.approx(1 - metrics["splits"][split]["accuracy"])
        assert metrics["splits"][split]["n"] == res["metrics"][split].get("n", metrics["splits"][split]["n"])
    assert metrics["splits"]["train"]["n"] == 4 * 21 - 4 * 4  # every train row, in order (not a dropped last batch)
    assert all("train_dev_acc" in row and "train_dev_loss" in row for row in metrics["history"])
    assert res["errors"] == metrics["errors"] and res["diagnosis"]["largest"] in (None, "avoidable bias", "variance", "data mismatch")
