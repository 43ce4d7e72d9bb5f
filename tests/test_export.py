"""Export: shards per split (Parquet + WebDataset, one folder per format), index.json, dataset.json, shard sizes,
at least --min-shards per split, byte-for-byte reproducibility, and loading the shards with webdataset,
pandas/pyarrow and the obvious globs only (no curate on the read side)."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from helpers import add_bad_files, assert_one_error_line, folder_truth, manifest_with_splits, sha256_bytes, sha256_file, tree_digest
from typer.testing import CliRunner

from curate.cli import app
from curate.errors import CurateError
from curate.schema import exclude
from curate.stages.export import ExportConfig, parse_shard_size
from curate.stages.export.write import export_version
from curate.workspace import Workspace

V1 = "000001-ingest"
CLASSES = ["bird", "cat", "dog"]
COUNTS = {"bird": 3, "cat": 6, "dog": 4}
IMAGE_BYTES = 852  # every 16x16 random RGB PNG of conftest is exactly this long (checked below)


def cli_json(*args: object) -> dict:
    res = CliRunner().invoke(app, [*map(str, args), "--json"])
    assert res.exit_code == 0, (res.stdout, res.stderr)
    return json.loads(res.stdout)


@pytest.fixture(autouse=True)
def _in_tmp(in_empty_tmp):
    """Every test here runs from an empty folder with no curate settings in the environment."""


@pytest.fixture
def ws13(tmp_path, image_folder, ingest) -> dict:
    """One version, no splits: 13 good images (bird 3, cat 6, dog 4) and 2 bad files (excluded at ingest)."""
    root = image_folder(COUNTS, name="images")
    truth = folder_truth(root)  # the good images only (bad files are added after)
    add_bad_files(root)
    ws = Workspace(tmp_path / "ws")
    ingest(ws, root, max_error_fraction=1.0)
    assert ws.info(V1)["included"] == 13 and ws.info(V1)["excluded"] == 2
    excluded_ids = {r["sample_id"] for r in ws.samples(V1).to_pylist() if r["status"] != "ok"}
    return {"ws": ws, "truth": truth, "excluded": excluded_ids}


def _shards(out: Path, suffix: str) -> list[Path]:
    return sorted((out / ("parquet" if suffix == ".parquet" else "webdataset")).glob(f"*{suffix}"))


def _index(out: Path) -> pd.DataFrame:
    return pd.DataFrame(json.loads((out / "index.json").read_text()))


ONE = ExportConfig(min_shards=1)  # the shard counts of the size limits alone


def _read_parquet_shards(out: Path) -> pd.DataFrame:
    return pd.concat([pd.read_parquet(p) for p in _shards(out, ".parquet")], ignore_index=True)


def _read_wds(urls: list[Path], decode: str | None = None) -> list[dict]:
    import webdataset as wds

    ds = wds.WebDataset([str(u) for u in urls], shardshuffle=False, empty_check=False)
    if decode:
        ds = ds.decode(decode)
    return list(ds)


# ----------------------------------------------------------------------------------------------- layout


def test_export_without_splits_writes_one_all_split(ws13):
    ws = ws13["ws"]
    res = export_version(ws, V1, ONE)
    out = ws.root / "exports" / V1
    assert res["out"] == str(out) and res["version"] == V1
    assert res["splits"] == {"all": 13} and res["shards"] == 2
    names = sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file())
    assert names == ["dataset.json", "index.json", "parquet/all-000000.parquet", "webdataset/all-000000.tar"]
    assert not [p for p in out.parent.iterdir() if p.name.startswith(".")]  # no temporary folders left
    assert res["bytes"] == sum(p.stat().st_size for p in _shards(out, ".parquet") + _shards(out, ".tar"))


def test_index_lists_every_shard_with_true_sizes_and_checksums(ws13):
    ws = ws13["ws"]
    out = Path(export_version(ws, V1, ExportConfig(shard_rows=5, min_shards=1))["out"])
    index = _index(out)
    assert list(index.columns) == ["file", "split", "format", "rows", "bytes", "sha256"]
    on_disk = {str(p.relative_to(out)) for p in _shards(out, ".parquet") + _shards(out, ".tar")}
    assert set(index["file"]) == on_disk and len(index) == 6
    for row in index.itertuples():
        path = out / row.file
        assert row.bytes == path.stat().st_size, row.file
        assert row.sha256 == sha256_file(path), row.file
        assert row.split == "all"
        assert row.format == ("parquet" if row.file.endswith(".parquet") else "webdataset")
    for fmt in ("parquet", "webdataset"):
        sub = index[index["format"] == fmt]
        assert list(sub["rows"]) == [5, 5, 3]
        assert list(sub["file"]) == [f"{fmt}/all-{k:06d}.{'parquet' if fmt == 'parquet' else 'tar'}" for k in range(3)]
    # The rows column is the truth: each Parquet shard has that many rows.
    for row in index[index["format"] == "parquet"].itertuples():
        assert pq.read_metadata(out / row.file).num_rows == row.rows


def test_dataset_card(ws13, image_folder, ingest):
    ws = ws13["ws"]
    card = json.loads(Path(export_version(ws, V1, ExportConfig())["out"], "dataset.json").read_text())
    assert card["version"] == V1
    assert card["classes"] == CLASSES
    assert card["splits"] == {"all": 13}
    assert card["counts"] == {"all": COUNTS}
    assert card["lineage"] == [{"id": V1, "stage": "ingest", "config_sha256": ws.info(V1)["config_sha256"]}]
    assert card["formats"] == ["parquet", "webdataset"]
    assert card["normalization"] is None
    # Lineage follows the parents.
    ingest(ws, image_folder({"fish": 2}, name="more", seed0=400))
    card2 = json.loads(Path(export_version(ws, "000002-ingest", ExportConfig())["out"], "dataset.json").read_text())
    assert [v["id"] for v in card2["lineage"]] == [V1, "000002-ingest"]
    assert card2["classes"] == ["bird", "cat", "dog", "fish"]
    assert card2["counts"]["all"] == {**COUNTS, "fish": 2}


# ----------------------------------------------------------------------------------------------- reading back


def test_parquet_shards_load_with_pandas_and_pyarrow(ws13):
    ws, truth = ws13["ws"], ws13["truth"]
    out = Path(export_version(ws, V1, ExportConfig(shard_rows=4))["out"])
    card = json.loads((out / "dataset.json").read_text())
    df = _read_parquet_shards(out)
    assert len(df) == 13
    assert list(df["sample_id"]) == sorted(truth)  # ordered by sample_id, all of them, once
    for row in df.itertuples():
        assert set(row.image) == {"bytes", "path"} and row.image["path"] is None
        assert sha256_bytes(row.image["bytes"]) == row.sample_id
        assert row.image["bytes"] == truth[row.sample_id]["bytes"]
        assert row.label_name == truth[row.sample_id]["label"]
        assert card["classes"][row.label] == row.label_name
    assert df["label_name"].value_counts().to_dict() == COUNTS
    assert not set(df["sample_id"]) & ws13["excluded"]
    # pyarrow: the image column is a struct {bytes: binary, path: string}; HF metadata names the classes.
    table = pq.read_table(_shards(out, ".parquet")[0])
    assert table.schema.field("image").type == pa.struct([("bytes", pa.binary()), ("path", pa.string())])
    assert table.schema.field("label").type == pa.int64()
    hf = json.loads(table.schema.metadata[b"huggingface"])["info"]["features"]
    assert hf["image"] == {"_type": "Image"}
    assert hf["label"] == {"names": CLASSES, "_type": "ClassLabel"}
    # Internal bookkeeping columns stay inside the workspace.
    assert not {"status", "reason", "excluded_by", "pack", "error"} & set(table.column_names)
    assert {"width", "height", "format", "source"} <= set(table.column_names)


def test_webdataset_shards_load_with_webdataset(ws13):
    ws, truth = ws13["ws"], ws13["truth"]
    out = Path(export_version(ws, V1, ExportConfig(shard_rows=4))["out"])
    card = json.loads((out / "dataset.json").read_text())
    tars = _shards(out, ".tar")
    assert len(tars) == 4
    raw = _read_wds(tars)
    assert [s["__key__"] for s in raw] == sorted(truth)
    for s in raw:
        assert {"__key__", "__url__", "cls", "json", "png"} <= set(s)
        sid = s["__key__"]
        assert s["png"] == truth[sid]["bytes"]
        assert sha256_bytes(s["png"]) == sid
        meta = json.loads(s["json"])
        assert meta["sample_id"] == sid and meta["label_name"] == truth[sid]["label"]
        assert (meta["width"], meta["height"], meta["format"]) == (16, 16, "PNG")
        assert card["classes"][int(s["cls"])] == truth[sid]["label"] == card["classes"][meta["label"]]
    decoded = _read_wds(tars, "pil")
    assert len(decoded) == 13
    for s in decoded:
        assert s["png"].size == (16, 16)
        assert isinstance(s["cls"], int) and card["classes"][s["cls"]] == truth[s["__key__"]]["label"]
        assert s["json"]["sample_id"] == s["__key__"]


def test_tar_members_are_plain_and_ordered(ws13):
    import tarfile

    out = Path(export_version(ws13["ws"], V1, ExportConfig(formats=("webdataset",), min_shards=1))["out"])
    with tarfile.open(out / "webdataset" / "all-000000.tar") as tf:
        members = tf.getmembers()
    names = [m.name for m in members]
    assert len(names) == 3 * 13
    ids = sorted(ws13["truth"])
    assert names == [f"{sid}.{ext}" for sid in ids for ext in ("cls", "json", "png")]
    assert {(m.mtime, m.uid, m.gid, m.uname, m.gname, m.mode) for m in members} == {(1_700_000_000, 0, 0, "", "", 0o644)}
    assert all(m.pax_headers == {} for m in members)


def test_excluded_rows_are_not_exported(ws13):
    ws = ws13["ws"]
    t = ws.samples(V1)
    ids = t.column("sample_id").to_pylist()
    drop = set(sorted(ws13["truth"])[:2])
    t = exclude(t, [s in drop for s in ids], stage="review", reason="blurry")
    with ws.writer():
        vid = ws.commit(stage="review", parent=V1, table=t, config={}, stats={})
    res = export_version(ws, vid, ExportConfig())
    out = Path(res["out"])
    expected = sorted(set(ws13["truth"]) - drop)
    assert res["splits"] == {"all": 11}
    assert list(_read_parquet_shards(out)["sample_id"]) == expected
    assert [s["__key__"] for s in _read_wds(_shards(out, ".tar"))] == expected
    card = json.loads((out / "dataset.json").read_text())
    want = dict(COUNTS)
    for sid in drop:
        want[ws13["truth"][sid]["label"]] -= 1
    assert card["counts"]["all"] == {k: v for k, v in want.items() if v}


def test_classes_are_those_of_exported_rows(tmp_path, image_folder, ingest):
    """Labels the user rejected (``--classes``) are not classes of the exported dataset."""
    ws = Workspace(tmp_path / "ws")
    root = image_folder({"cat": 3, "dog": 2, "horse": 1}, name="images")
    ingest(ws, root, classes=("cat", "dog"), max_error_fraction=1.0)
    assert ws.info(V1)["excluded"] == 1
    out = Path(export_version(ws, V1, ExportConfig())["out"])
    card = json.loads((out / "dataset.json").read_text())
    assert card["classes"] == ["cat", "dog"]
    df = _read_parquet_shards(out)
    assert sorted(df["label"]) == [0, 0, 0, 1, 1]


# ----------------------------------------------------------------------------------------------- splits


def test_export_with_train_val_test_splits(tmp_path, ingest):
    plan = {"train": {"cat": 4, "dog": 3}, "val": {"cat": 1, "dog": 1}, "test": {"cat": 2, "dog": 1}}
    src, truth = manifest_with_splits(tmp_path / "m", plan)
    ws = Workspace(tmp_path / "ws")
    ingest(ws, src, assign_split=True)
    res = cli_json("export", "--shard-size", "3", "--min-shards", "1", "-w", ws.root)
    out = Path(res["out"])
    assert res["splits"] == {"train": 7, "val": 2, "test": 3}
    names = sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file())
    shards = (("test", 1), ("train", 3), ("val", 1))
    expected = [
        f"{d}/{s}-{k:06d}.{ext}" for s, n in shards for k in range(n) for d, ext in (("parquet", "parquet"), ("webdataset", "tar"))
    ]
    assert names == sorted([*expected, "dataset.json", "index.json"])
    index = _index(out)
    pidx = index[index["format"] == "parquet"]
    assert list(pidx["split"]) == ["train", "train", "train", "val", "test"]
    assert list(pidx["rows"]) == [3, 3, 1, 2, 3]
    card = json.loads((out / "dataset.json").read_text())
    assert card["classes"] == ["cat", "dog"]
    assert card["splits"] == {"train": 7, "val": 2, "test": 3}
    assert card["counts"] == plan
    for split in plan:
        df = pd.concat([pd.read_parquet(out / f) for f in pidx[pidx["split"] == split]["file"]], ignore_index=True)
        want = sorted(sid for sid, v in truth.items() if v["split"] == split)
        assert list(df["sample_id"]) == want
        assert set(df["split"]) == {split}
        assert all(row.image["bytes"] == truth[row.sample_id]["bytes"] for row in df.itertuples())
        assert all(card["classes"][row.label] == truth[row.sample_id]["label"] for row in df.itertuples())
        tars = [out / f.replace("parquet", "webdataset", 1).replace(".parquet", ".tar") for f in pidx[pidx["split"] == split]["file"]]
        assert [s["__key__"] for s in _read_wds(tars)] == want


# ----------------------------------------------------------------------------------------------- shard sizes


def test_parse_shard_size():
    assert parse_shard_size("5000") == (5000, None)
    assert parse_shard_size("1KB") == (None, 1000)
    assert parse_shard_size("1KiB") == (None, 1024)
    assert parse_shard_size("256MB") == (None, 256_000_000)
    assert parse_shard_size("1.5GiB") == (None, 1_610_612_736)
    for bad in ("0", "-5", "abc", "12XB", "", "5 rows"):
        with pytest.raises(CurateError):
            parse_shard_size(bad)


@pytest.mark.parametrize(
    ("size", "per_format", "rows"),
    [
        ("5", 3, [5, 5, 3]),
        ("13", 1, [13]),
        ("1KB", 13, [1] * 13),  # 852 + 852 > 1000: one image per shard
        ("1KiB", 13, [1] * 13),
        ("2KB", 7, [2] * 6 + [1]),  # 2 * 852 <= 2000 < 3 * 852
        ("1MB", 1, [13]),
    ],
)
def test_shard_size_gives_expected_shards(ws13, tmp_path, size, per_format, rows):
    ws = ws13["ws"]
    assert {r["nbytes"] for r in ws.samples(V1).to_pylist() if r["status"] == "ok"} == {IMAGE_BYTES}
    res = cli_json("export", "--shard-size", size, "--min-shards", "1", "--out", tmp_path / "out", "-w", ws.root)
    assert res["shards"] == 2 * per_format
    index = _index(tmp_path / "out")
    for fmt in ("parquet", "webdataset"):
        assert list(index[index["format"] == fmt]["rows"]) == rows
    assert len(_shards(tmp_path / "out", ".tar")) == per_format
    assert len(_read_parquet_shards(tmp_path / "out")) == 13


# ----------------------------------------------------------------------------------------------- reproducibility


def test_export_is_byte_for_byte_reproducible(ws13, tmp_path, ingest):
    ws = ws13["ws"]
    first = tree_digest(export_version(ws, V1, ExportConfig(shard_rows=4))["out"])
    again = tree_digest(export_version(ws, V1, ExportConfig(shard_rows=4))["out"])  # replaces the default folder
    assert first == again and len(first) == 2 * 4 + 2  # 4 shards per format, index.json, dataset.json
    a = cli_json("export", "--shard-size", "4", "--out", tmp_path / "a", "-w", ws.root)
    b = cli_json("export", "--shard-size", "4", "--out", tmp_path / "b", "-w", ws.root)
    assert a["shards"] == b["shards"] == 8
    assert tree_digest(tmp_path / "a") == tree_digest(tmp_path / "b") == first
    # The same images ingested into another workspace (other pack names, other time) export identically.
    other = Workspace(tmp_path / "ws2")
    root = Path(ws.info(V1)["config"]["source"])
    ingest(other, root, max_error_fraction=1.0)
    assert tree_digest(export_version(other, V1, ExportConfig(shard_rows=4))["out"]) == first


# ----------------------------------------------------------------------------------------------- formats and errors


@pytest.mark.parametrize(
    ("fmt", "suffixes"), [("parquet", {".parquet"}), ("webdataset", {".tar"}), ("webdataset,parquet", {".parquet", ".tar"})]
)
def test_format_option(ws13, tmp_path, fmt, suffixes):
    res = cli_json("export", "--format", fmt, "--min-shards", "1", "--out", tmp_path / "o", "-w", ws13["ws"].root)
    shards = {p.suffix for p in (tmp_path / "o").rglob("*") if p.is_file() and p.name not in ("index.json", "dataset.json")}
    assert shards == suffixes and res["shards"] == len(suffixes)
    assert set(_index(tmp_path / "o")["format"]) == {"parquet" if s == ".parquet" else "webdataset" for s in suffixes}


def test_export_refuses_to_overwrite_a_foreign_folder(ws13, tmp_path):
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "thesis.txt").write_text("precious")
    with pytest.raises(CurateError, match="not a curate export"):
        export_version(ws13["ws"], V1, ExportConfig(out=str(foreign)))
    assert sorted(p.name for p in foreign.iterdir()) == ["thesis.txt"]
    res = CliRunner().invoke(app, ["export", "--out", str(foreign), "-w", str(ws13["ws"].root)])
    assert res.exit_code == 1
    assert "not a curate export" in assert_one_error_line(res.stderr)


def test_export_out_must_be_a_folder(ws13, tmp_path):
    (tmp_path / "afile").write_text("x")
    res = CliRunner().invoke(app, ["export", "--out", str(tmp_path / "afile"), "-w", str(ws13["ws"].root)])
    assert res.exit_code == 1
    assert "is not a folder" in assert_one_error_line(res.stderr)
    assert (tmp_path / "afile").read_text() == "x"


def test_export_of_a_version_without_included_rows_fails(ws13):
    ws = ws13["ws"]
    t = ws.samples(V1)
    t = exclude(t, [True] * t.num_rows, stage="review", reason="all_bad")
    with ws.writer():
        vid = ws.commit(stage="review", parent=V1, table=t, config={}, stats={})
    with pytest.raises(CurateError, match="no included samples"):
        export_version(ws, vid, ExportConfig())
    assert not (ws.root / "exports" / vid).exists()
    res = CliRunner().invoke(app, ["export", "-w", str(ws.root)])
    assert res.exit_code == 1
    assert "no included samples" in assert_one_error_line(res.stderr)


# ----------------------------------------------------------------------------------------------- what readers glob


def _gray_split_ws(tmp_path: Path, n: int) -> Workspace:
    """A workspace whose HEAD has ``n`` grayscale train rows and normalization over them (1 channel)."""
    from curate.pipeline import run_stage
    from curate.stages.normalize import NormalizeConfig
    from curate.stages.normalize.pixels import run_normalize
    from curate.stages.split import SplitConfig
    from curate.stages.split.assign import run_split
    from tests.conftest import ingest, make_png

    for i in range(n):
        make_png(tmp_path / "gray" / ("a" if i % 2 else "b") / f"{i}.png", seed=1000 + i, mode="L")
    ws = Workspace(tmp_path / "ws")
    ingest(ws, tmp_path / "gray")
    run_stage(ws, "split", {"seed": 0}, lambda parent, _pid: run_split(parent, SplitConfig(ratios=(("train", 1.0),))))
    run_stage(ws, "normalize", {}, lambda parent, _pid: run_normalize(ws, parent, NormalizeConfig()))
    return ws


def test_the_obvious_globs_read_exactly_the_shards(ws13):
    """DuckDB/pandas/HF glob ``*.parquet`` of the Parquet folder, WebDataset the tars: only shard rows, each once."""
    import glob

    import pyarrow.dataset as ds

    out = Path(cli_json("export", "-w", ws13["ws"].root)["out"])
    for pattern in ("parquet/*.parquet", "parquet/**/*.parquet", "*.parquet", "**/*.parquet"):
        files = sorted(glob.glob(str(out / pattern), recursive=True))
        rows = sum(pq.read_metadata(f).num_rows for f in files)
        assert rows in (0, 13), (pattern, files)  # a glob finds the shards or nothing, never the index
    assert ds.dataset(out / "parquet", format="parquet").count_rows() == 13
    assert sorted(ds.dataset(out / "parquet", format="parquet").to_table().column("sample_id").to_pylist()) == sorted(ws13["truth"])
    # Only shards in each format folder (load_dataset("parquet", data_dir=...) must see no .tar or index).
    assert {p.suffix for p in (out / "parquet").iterdir()} == {".parquet"}
    assert {p.suffix for p in (out / "webdataset").iterdir()} == {".tar"}
    assert sum(1 for _ in _read_wds(sorted((out / "webdataset").glob("all-*.tar")))) == 13


def test_min_shards_per_split_and_channels_in_the_card(tmp_path):
    """100 rows of a split make at least 4 shards (a DataLoader with 2 workers needs 2); gray data says 1 channel and
    how to decode it so WebDataset gives what the normalization was computed over."""
    ws = _gray_split_ws(tmp_path, 100)
    res = cli_json("export", "-w", ws.root)
    out = Path(res["out"])
    tars = sorted((out / "webdataset").glob("train-*.tar"))
    assert len(tars) >= 2 and len(tars) == 4 and res["splits"] == {"train": 100}
    assert [pq.read_metadata(p).num_rows for p in sorted((out / "parquet").glob("train-*.parquet"))] == [25] * 4
    card = json.loads((out / "dataset.json").read_text())
    assert card["normalization"]["channels"] == 1
    assert card["image"]["channels"] == 1 and card["image"]["mode"] == "L"
    decoded = _read_wds(tars, card["image"]["webdataset_decode"])
    assert len(decoded) == 100 and {s["png"].mode for s in decoded} == {"L"}
    few = cli_json("export", "--min-shards", "2", "--shard-size", "10000", "--out", tmp_path / "two", "-w", ws.root)
    assert few["shards"] == 2 * 2


def test_webdataset_over_two_loader_workers(tmp_path):
    """The README's reader: wds.WebDataset(...) in a DataLoader with num_workers=2 reads every row once."""
    import torch
    import webdataset as wds

    ws = _gray_split_ws(tmp_path, 40)
    out = Path(cli_json("export", "-w", ws.root)["out"])
    card = json.loads((out / "dataset.json").read_text())
    urls = [str(p) for p in sorted((out / "webdataset").glob("train-*.tar"))]
    data = wds.WebDataset(urls, shardshuffle=False, empty_check=False).decode(card["image"]["webdataset_decode_numpy"])
    keys = [k for batch in torch.utils.data.DataLoader(data.to_tuple("__key__"), num_workers=2, batch_size=None) for k in batch]
    assert len(keys) == len(set(keys)) == 40
