"""curate split: stratified per class, duplicate/user groups whole, stable when data is added later."""

from __future__ import annotations

from collections import Counter

import pyarrow as pa
import pyarrow.compute as pc
import pytest

from curate.errors import UsageError
from curate.schema import conform
from curate.stages.split import SplitConfig, parse_ratios
from curate.stages.split.assign import assign_splits, leakage, run_split


def _table(n_per_class: dict[str, int], *, start: int = 0, **extra: list) -> pa.Table:
    labels = [c for c, n in sorted(n_per_class.items()) for _ in range(n)]
    ids = [f"{i + start:064x}" for i in range(len(labels))]
    cols = {"sample_id": ids, "label": labels, "status": ["ok"] * len(ids), **extra}
    return conform(pa.table(cols))


def _counts(table: pa.Table) -> Counter:
    ok = table.filter(pc.equal(table.column("status"), "ok"))
    return Counter(zip(ok.column("label").to_pylist(), ok.column("split").to_pylist(), strict=True))


@pytest.mark.parametrize("n", [10, 37, 101, 1000])
def test_ratios_hold_per_class_within_one_sample(n: int) -> None:
    table = _table({"a": n, "b": n // 3 + 1, "c": 7})
    out = run_split(table, SplitConfig()).table
    counts = _counts(out)
    for label, total in Counter(out.column("label").to_pylist()).items():
        for split, frac in (("train", 0.7), ("val", 0.2), ("test", 0.1)):
            assert abs(counts[(label, split)] - total * frac) <= 1, (label, split, counts)
        assert sum(counts[(label, s)] for s in ("train", "val", "test")) == total


def test_duplicate_and_user_groups_never_straddle() -> None:
    n = 300
    dup = [f"g{i // 5}" if i < 100 else None for i in range(n)]  # 20 duplicate groups of 5
    patient = [f"p{i // 10}" if 100 <= i < 200 else None for i in range(n)]  # 10 patients of 10
    # Chain: sample 99 (dup group g19) shares patient p-x with 100..109, so g19 and p10 must merge transitively.
    patient[99] = "p10"
    table = _table({"a": 150, "b": 150}, dup_group=dup, patient=patient)
    out = run_split(table, SplitConfig(group_col="patient")).table
    splits = out.column("split").to_pylist()
    for key_col in ("dup_group", "patient"):
        members: dict[str, set] = {}
        for v, s in zip(out.column(key_col).to_pylist(), splits, strict=True):
            if v is not None:
                members.setdefault(v, set()).add(s)
        assert all(len(s) == 1 for s in members.values()), key_col
    assert splits[99] == splits[100] == splits[109]
    assert leakage(out, "patient")["groups_crossing"] == 0


def test_adding_data_later_moves_nothing_and_keeps_ratios() -> None:
    first = run_split(_table({"a": 200, "b": 100}), SplitConfig(seed=3)).table
    more = _table({"a": 100, "b": 50}, start=10_000)
    combined = pa.concat_tables([first, more])
    again = run_split(combined, SplitConfig(seed=3)).table
    before = dict(zip(first.column("sample_id").to_pylist(), first.column("split").to_pylist(), strict=True))
    after = dict(zip(again.column("sample_id").to_pylist(), again.column("split").to_pylist(), strict=True))
    assert all(after[k] == v for k, v in before.items())
    counts = _counts(again)
    assert abs(counts[("a", "train")] - 210) <= 1 and abs(counts[("a", "test")] - 30) <= 1
    assert abs(counts[("b", "val")] - 30) <= 1


def test_deterministic_by_seed_and_seed_matters() -> None:
    t = _table({"a": 100, "b": 100})
    s1 = assign_splits(t, SplitConfig(seed=1))[0]
    assert s1 == assign_splits(t, SplitConfig(seed=1))[0]
    assert s1 != assign_splits(t, SplitConfig(seed=2))[0]


def test_keep_existing_keeps_official_test_and_carves_val_from_train() -> None:
    origin = ["train"] * 800 + ["test"] * 200
    t = _table({"a": 500, "b": 500}, origin_split=origin[:500] + origin[500:])
    out = run_split(t, SplitConfig(ratios=(("train", 0.9), ("val", 0.1)), keep_existing=True)).table
    by_origin = Counter(zip(out.column("origin_split").to_pylist(), out.column("split").to_pylist(), strict=True))
    assert by_origin[("test", "test")] == 200
    assert by_origin[("test", "train")] == by_origin[("test", "val")] == 0
    assert by_origin[("train", "val")] == 80 and by_origin[("train", "train")] == 720


def test_excluded_rows_do_not_count_towards_ratios() -> None:
    n = 100
    status = ["excluded" if i % 4 == 0 else "ok" for i in range(n)]
    t = _table({"a": n}, status=status, reason=["x" if s == "excluded" else None for s in status])
    out = run_split(t, SplitConfig()).table
    counts = _counts(out)
    assert (counts[("a", "train")], counts[("a", "val")], counts[("a", "test")]) in {(52, 15, 8), (53, 15, 7), (52, 16, 7)}
    assert out.column("split").null_count == 0


def test_parse_ratios() -> None:
    assert parse_ratios("70:20:10") == (("train", 0.7), ("val", 0.2), ("test", 0.1))
    assert parse_ratios("80:20") == (("train", 0.8), ("val", 0.2))
    assert dict(parse_ratios("train=8,holdout=2")) == {"train": 0.8, "holdout": 0.2}
    for bad in ("70", "a:b", "70:-10:40", "1:2:3:4"):
        with pytest.raises(UsageError):
            parse_ratios(bad)


def test_cli_split_then_check_reports_zero_leaks(tmp_path, image_folder) -> None:
    from typer.testing import CliRunner

    from curate.cli import app

    src = image_folder(counts={"cat": 20, "dog": 10})
    ws = str(tmp_path / "ws")
    runner = CliRunner()
    assert runner.invoke(app, ["ingest", str(src), "-w", ws, "--workers", "1"]).exit_code == 0
    res = runner.invoke(app, ["split", "-w", ws, "--json"])
    assert res.exit_code == 0, res.output
    import json

    payload = json.loads(res.stdout)
    assert payload["stats"]["summary"]["per_split"] == {"test": 3, "train": 21, "val": 6}
    check = runner.invoke(app, ["split", "--check", "-w", ws, "--json"])
    assert check.exit_code == 0 and json.loads(check.stdout)["groups_crossing"] == 0
    # Same parent, same settings: the stage is not run again.
    again = runner.invoke(app, ["split", "-w", ws, "--json"])
    assert json.loads(again.stdout)["cached"] is True
    assert json.loads(again.stdout)["version"] == payload["version"]
    assert runner.invoke(app, ["split", "-w", ws, "--ratios", "1:2:3:4"]).exit_code == 2


def test_manifest_group_column_is_kept_and_groups_stay_whole(tmp_path, workspace) -> None:
    from curate.pipeline import run_stage
    from tests.conftest import ingest, make_png

    lines = ["path,label,patient"]
    for i in range(60):
        make_png(tmp_path / "img" / f"{i}.png", seed=i)
        lines.append(f"img/{i}.png,{'a' if i % 2 else 'b'},p{i // 6}")
    (tmp_path / "m.csv").write_text("\n".join(lines) + "\n")
    ingest(workspace, tmp_path / "m.csv")
    assert workspace.samples().column("patient").to_pylist().count("p0") == 6
    run_stage(workspace, "split", {"g": "patient"}, lambda parent, _pid: run_split(parent, SplitConfig(group_col="patient")))
    t = workspace.samples().to_pandas()
    assert (t.groupby("patient").split.nunique() == 1).all()
    assert set(t.split) <= {"train", "val", "test"} and t.split.notna().all()
