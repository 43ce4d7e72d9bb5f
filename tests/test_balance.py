"""curate balance: the imbalance report, and each strategy on a train split with known class counts.

The workspace: a manifest with splits train a 30 / b 12 / c 6, val a 5 / b 3 / c 2, test a 4 / b 2 / c 2, after which
an earlier stage ("mark") excluded 3 train rows of a and 1 of c. So the included train counts are a 27, b 12, c 5
(max 27, median 12, min 5), and the excluded rows must never be counted or touched.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from helpers import assert_one_error_line, manifest_with_splits
from typer.testing import CliRunner

from curate.augmentation import parse_target
from curate.cli import app
from curate.errors import UsageError
from curate.pipeline import run_stage
from curate.schema import exclude
from curate.stages import StageResult
from curate.stages.balance import BalanceConfig
from curate.stages.balance.strategies import imbalance_report, run_balance
from curate.workspace import Workspace
from tests.conftest import ingest

PLAN = {"train": {"a": 30, "b": 12, "c": 6}, "val": {"a": 5, "b": 3, "c": 2}, "test": {"a": 4, "b": 2, "c": 2}}
TRAIN = {"a": 27, "b": 12, "c": 5}


def _mark(ws: Workspace, name: str, fn) -> None:  # noqa: ANN001 - fn(table) -> table
    run_stage(ws, name, {"n": name}, lambda parent, _pid: StageResult(table=fn(parent)))


@pytest.fixture
def ws(tmp_path: Path) -> Workspace:
    csv, _ = manifest_with_splits(tmp_path / "src", PLAN)
    w = Workspace(tmp_path / "ws")
    ingest(w, csv, assign_split=True)
    t = w.samples()
    rows = list(zip(t.column("label").to_pylist(), t.column("split").to_pylist(), strict=True))
    seen: Counter = Counter()
    mask = []
    for label, split in rows:
        seen[(label, split)] += 1
        nth = seen[(label, split)]
        mask.append(split == "train" and ((label == "a" and nth <= 3) or (label == "c" and nth == 1)))
    _mark(w, "mark", lambda parent: exclude(parent, mask, stage="mark", reason="test"))
    return w


def _balance(ws: Workspace, **kwargs) -> pa.Table:  # noqa: ANN003
    cfg = BalanceConfig(**kwargs)
    run_stage(ws, "balance", {"k": json.dumps(kwargs, sort_keys=True)}, lambda parent, pid: run_balance(ws, parent, pid, cfg))
    return ws.samples()


def _train_counts(t: pa.Table) -> dict[str, int]:
    rep = t.column("repeat").to_pylist() if "repeat" in t.column_names else [1] * t.num_rows
    out: Counter = Counter()
    for label, split, status, r in zip(*(t.column(c).to_pylist() for c in ("label", "split", "status")), rep, strict=True):
        if split == "train" and status == "ok":
            out[label] += r
    return dict(out)


def _rows_of(t: pa.Table, splits: tuple[str, ...]) -> list[dict]:
    keep = t.filter(pc.is_in(t.column("split"), pa.array(list(splits))))
    cols = [c for c in keep.column_names if c not in ("repeat", "sample_weight")]
    return sorted(keep.select(cols).to_pylist(), key=lambda r: r["sample_id"])


def _assert_untouched(before: pa.Table, after: pa.Table) -> None:
    """Val/test rows identical, previously excluded rows identical, every row still there."""
    assert set(before.column("sample_id").to_pylist()) <= set(after.column("sample_id").to_pylist())
    after_same = after.filter(pc.is_in(after.column("sample_id"), before.column("sample_id"))).select(before.column_names)
    assert _rows_of(after_same, ("val", "test")) == _rows_of(before, ("val", "test"))
    old_excl = before.filter(pc.equal(before.column("status"), "excluded")).to_pylist()
    new = {r["sample_id"]: r for r in after_same.to_pylist()}
    assert old_excl and all(new[r["sample_id"]] == r for r in old_excl)


def test_report_counts_ratio_and_effective_number(ws: Workspace) -> None:
    rep = imbalance_report(ws.samples(), beta=0.999)
    assert list(rep) == ["train", "val", "test"]
    assert rep["train"]["counts"] == TRAIN and rep["train"]["total"] == 44
    assert rep["train"]["ratio"] == round(27 / 5, 3) and rep["val"]["ratio"] == 2.5
    for label, n in TRAIN.items():  # effective number = 1 + beta + ... + beta^(n-1)
        assert rep["train"]["effective"][label] == pytest.approx(sum(0.999**i for i in range(n)), abs=0.05)
    assert rep["test"]["counts"] == {"a": 4, "b": 2, "c": 2}


@pytest.mark.parametrize(
    ("target", "expected"),
    [(None, {"a": 5, "b": 5, "c": 5}), ("10", {"a": 10, "b": 10, "c": 5}), ("median", {"a": 12, "b": 12, "c": 5})],
)
def test_undersample_meets_the_target_exactly_and_keeps_every_row(ws: Workspace, target: str | None, expected: dict) -> None:
    before = ws.samples()
    after = _balance(ws, strategy="undersample", target=target)
    assert _train_counts(after) == expected
    assert after.num_rows == before.num_rows
    _assert_untouched(before, after)
    newly = after.filter(pc.equal(pc.fill_null(after.column("excluded_by"), ""), "balance")).to_pylist()
    assert len(newly) == sum(TRAIN.values()) - sum(expected.values())
    assert all(r["reason"] == "balance" and r["split"] == "train" and r["status"] == "excluded" for r in newly)


def test_undersample_drops_lowest_label_quality_first(ws: Workspace) -> None:
    t = ws.samples()
    ids = t.column("sample_id").to_pylist()
    quality = [int(hashlib.sha256(s.encode()).hexdigest()[:6], 16) / 2**24 for s in ids]
    quality[5] = None  # an included train row of a (rows 0-2 were excluded by "mark"): unknown quality is dropped last
    _mark(ws, "clean", lambda parent: parent.append_column("label_quality", pa.array(quality, pa.float64())))
    after = _balance(ws, strategy="undersample", drop="lowest-quality")
    ok_train_a = [
        (q, s)
        for q, s, lab, sp, st in zip(quality, ids, *(t.column(c).to_pylist() for c in ("label", "split", "status")), strict=True)
        if lab == "a" and sp == "train" and st == "ok"
    ]
    expected_dropped = {s for q, s in sorted((q, s) for q, s in ok_train_a if q is not None)[:22]}
    dropped = {r["sample_id"] for r in after.to_pylist() if r["excluded_by"] == "balance" and r["label"] == "a"}
    assert dropped == expected_dropped
    assert ws.stats(ws.head())["drop_rule"] == "lowest-quality"


def test_undersample_drops_flagged_duplicates_first(ws: Workspace) -> None:
    t = ws.samples()
    ok_a = [i for i, r in enumerate(t.to_pylist()) if r["label"] == "a" and r["split"] == "train" and r["status"] == "ok"]
    flagged = set(ok_a[:5])
    dup = [i in flagged for i in range(t.num_rows)]
    _mark(ws, "dedupe", lambda parent: parent.append_column("is_duplicate", pa.array(dup)))
    after = _balance(ws, strategy="undersample", target="20", drop="duplicates-first")
    dropped = {i for i, r in enumerate(after.to_pylist()) if r["excluded_by"] == "balance"}
    assert len(dropped) == 7 and flagged <= dropped


def test_oversample_meets_the_target_and_export_writes_rows_repeat_times(ws: Workspace) -> None:
    from curate.learn.data import workspace_data
    from curate.stages.export import ExportConfig
    from curate.stages.export.write import export_version

    before = ws.samples()
    after = _balance(ws, strategy="oversample")
    assert _train_counts(after) == {"a": 27, "b": 27, "c": 27}
    rep = dict(zip(after.column("sample_id").to_pylist(), after.column("repeat").to_pylist(), strict=True))
    assert all(rep[r["sample_id"]] == 1 for r in after.to_pylist() if r["split"] != "train" or r["status"] != "ok")
    train_rows = [r for r in after.to_pylist() if r["split"] == "train" and r["status"] == "ok"]
    c_reps = sorted(rep[r["sample_id"]] for r in train_rows if r["label"] == "c")
    assert c_reps == [5, 5, 5, 6, 6]  # 27 = 5 rows x 5 + 2 extra: spread evenly
    _assert_untouched(before, after)
    with ws.writer():
        res = export_version(ws, ws.head(), ExportConfig())
    out = Path(res["out"])
    train = pq.read_table(sorted((out / "parquet").glob("train-*.parquet"))).to_pylist()
    assert Counter(r["label_name"] for r in train) == {"a": 27, "b": 27, "c": 27}
    keys = [r["sample_id"] for r in train]
    assert len(set(keys)) == len(keys) == 81
    base = Counter(k.split("_r")[0] for k in keys)
    assert all(base[sid] == rep[sid] for sid in base)
    images: dict[str, set] = {}
    for r in train:
        images.setdefault(r["sample_id"].split("_r")[0], set()).add(r["image"]["bytes"])
    assert all(len(v) == 1 for v in images.values())  # every copy holds its row's own bytes
    val = pq.read_table(sorted((out / "parquet").glob("val-*.parquet"))).num_rows
    assert val == 10 and json.loads((out / "dataset.json").read_text())["counts"]["train"] == {"a": 27, "b": 27, "c": 27}
    import tarfile

    members = []
    for p in sorted((out / "webdataset").glob("train-*.tar")):
        with tarfile.open(p) as tf:
            members += tf.getnames()
    assert sum(m.endswith(".cls") for m in members) == 81
    data = workspace_data(ws, None, batch_size=16)  # the trainer's reader sees every repeated row
    assert data.rows["train"] == 81
    assert Counter(data.loaders["train"].dataset.split.labels.tolist()) == {0: 27, 1: 27, 2: 27}


def test_augment_strategy_adds_recorded_samples_to_the_target(ws: Workspace) -> None:
    from curate.augmentation.policies import reproduce

    before = ws.samples()
    after = _balance(ws, strategy="augment", policy="light")
    assert _train_counts(after) == {"a": 27, "b": 27, "c": 27}
    _assert_untouched(before, after)
    new = after.filter(pc.equal(pc.fill_null(after.column("label_source"), ""), "augment")).to_pylist()
    assert Counter(r["label"] for r in new) == {"b": 15, "c": 22}
    parents = {r["sample_id"]: r for r in before.to_pylist()}
    rows = new + list(parents.values())
    blobs = ws.blobs.get_many([r["sample_id"] for r in rows], [r["pack"] for r in rows])
    for r in new:
        p = parents[r["parent_id"]]
        assert p["split"] == "train" and p["status"] == "ok" and p["label"] == r["label"] and r["split"] == "train"
        assert hashlib.sha256(blobs[r["sample_id"]]).hexdigest() == r["sample_id"]
        assert reproduce(r["recipe"], blobs[r["parent_id"]]) == blobs[r["sample_id"]]


def test_weights_equalise_class_mass_and_the_sampler_draws_balanced_batches(ws: Workspace, tmp_path: Path) -> None:
    from curate.learn.data import workspace_data
    from curate.learn.train import TrainConfig, train

    plain = workspace_data(ws, None, batch_size=8, seed=0)
    after = _balance(ws, strategy="weights")
    w = dict(zip(after.column("sample_id").to_pylist(), after.column("sample_weight").to_pylist(), strict=True))
    rows = after.to_pylist()
    assert all(w[r["sample_id"]] is None for r in rows if r["split"] != "train" or r["status"] != "ok")
    train_rows = [r for r in rows if r["split"] == "train" and r["status"] == "ok"]
    assert all(w[r["sample_id"]] == pytest.approx(44 / (3 * TRAIN[r["label"]])) for r in train_rows)
    assert imbalance_report(after)["train"]["weighted"] == pytest.approx({"a": 44 / 3, "b": 44 / 3, "c": 44 / 3}, abs=1e-3)

    def draws(data, epochs: int = 30) -> Counter:  # noqa: ANN001
        from curate.learn.data import set_epoch

        seen: Counter = Counter()
        for epoch in range(epochs):
            set_epoch(data.loaders["train"], epoch)
            for _x, y, _ids in data.loaders["train"]:
                seen.update(y.tolist())
        return seen

    weighted = workspace_data(ws, None, batch_size=8, seed=0)
    assert weighted.sampler == "weighted" and plain.sampler == "shuffle"
    got, base = draws(weighted), draws(plain)
    assert base[0] / sum(base.values()) == pytest.approx(27 / 44, abs=0.03)  # without weights: a is 61% of the draws
    for k in range(3):
        assert got[k] / sum(got.values()) == pytest.approx(1 / 3, abs=0.06)
    sampler = weighted.loaders["train"].sampler
    sampler.set_epoch(3)
    first = list(sampler)
    sampler.set_epoch(4)
    list(sampler)
    sampler.set_epoch(3)
    assert list(sampler) == first  # the order depends on seed and epoch only (resume sees the same batches)
    res = train(ws, TrainConfig(epochs=1, batch_size=8, patience=0, out=str(tmp_path / "run")))
    assert json.loads((Path(res["run"]) / "meta_last.json").read_text())["sampler"] == "weighted"


def test_undersample_refuses_an_oversampled_train_split(ws: Workspace) -> None:
    _balance(ws, strategy="oversample")
    with pytest.raises(UsageError, match="oversampled"):
        _balance(ws, strategy="undersample")


def test_parse_target() -> None:
    assert parse_target("MAX") == "max" and parse_target("median") == "median"
    assert parse_target("40") == 40 and parse_target(None) is None
    for bad in ("0", "-3", "1.5", "most", ""):
        with pytest.raises(UsageError):
            parse_target(bad)


def test_cli_balance_report_strategy_json_and_bad_input(ws: Workspace) -> None:
    runner = CliRunner()
    w = ["-w", str(ws.root)]
    versions = ws.version_ids()
    res = runner.invoke(app, ["balance", *w, "--json"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["report"]["train"]["counts"] == TRAIN and ws.version_ids() == versions
    human = runner.invoke(app, ["balance", *w])
    assert human.exit_code == 0 and "max/min 5.40" in human.stdout
    res = runner.invoke(app, ["balance", *w, "--strategy", "oversample", "--target", "median", "--json"])
    assert res.exit_code == 0, res.output
    payload = json.loads(res.stdout)
    assert payload["stats"]["target_count"] == 12 and payload["stats"]["after"]["train"]["counts"] == {"a": 27, "b": 12, "c": 12}
    again = runner.invoke(app, ["balance", *w, "--strategy", "oversample", "--target", "median", "--json"])
    assert json.loads(again.stdout)["cached"] is True
    for bad in (
        ["--strategy", "oversample", "--target", "abc"],
        ["--strategy", "undersample", "--target", "0"],
        ["--strategy", "shuffle"],
        ["--strategy", "undersample", "--drop", "worst"],
        ["--strategy", "augment", "--policy", "nope"],
    ):
        res = runner.invoke(app, ["balance", *w, *bad])
        assert res.exit_code == 2, (bad, res.output)
        assert_one_error_line(res.stderr)
