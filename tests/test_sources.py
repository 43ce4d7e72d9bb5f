"""Input sources: format detection, folders, manifests, idx files and archives (enumeration only, no workspace)."""

from __future__ import annotations

import io
import json
import stat
import struct
import tarfile
import zipfile
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from curate.errors import CurateError, UsageError
from curate.sources import ITEM_SCHEMA, SourceOptions, detect_format, open_source
from curate.sources.idx import find_idx_pairs, read_idx


def items(src: str | Path, fmt: str = "auto", **opts) -> list[dict]:
    return list(open_source(str(src), fmt, SourceOptions(**opts)).items())


def by_member(rows: list[dict]) -> dict[str, dict]:
    return {r["source"].split("::", 1)[1]: r for r in rows}


# --------------------------------------------------------------------------------------------- detection


@pytest.mark.parametrize(
    ("name", "fmt"),
    [
        ("list.csv", "csv"),
        ("list.TSV", "csv"),
        ("m.parquet", "parquet"),
        ("m.pq", "parquet"),
        ("m.jsonl", "jsonl"),
        ("m.ndjson", "jsonl"),
        ("m.json", "jsonl"),
        ("a.tar", "tar"),
        ("a.tar.gz", "tar"),
        ("a.tgz", "tar"),
        ("a.tar.xz", "tar"),
        ("a.zip", "zip"),
        ("train-images-idx3-ubyte.gz", "idx"),
        ("t10k-images-idx3-ubyte", "idx"),
    ],
)
def test_detect_format_from_name(tmp_path, name, fmt):
    path = tmp_path / name
    path.write_bytes(b"x")
    assert detect_format(path) == fmt


def test_detect_format_folders(tmp_path, image_folder, write_mnist_like):
    assert detect_format(image_folder(counts={"a": 1})) == "folder"
    write_mnist_like(tmp_path / "mn", "train", [0, 1])
    assert detect_format(tmp_path / "mn") == "idx"


def test_unknown_extension_and_format_and_missing_path(tmp_path):
    (tmp_path / "x.weird").write_bytes(b"x")
    with pytest.raises(UsageError, match="cannot tell the source format") as exc:
        detect_format(tmp_path / "x.weird")
    assert str(tmp_path / "x.weird") in str(exc.value) and "--format" in exc.value.hint
    with pytest.raises(UsageError, match="unknown --format 'xml'"):
        open_source(str(tmp_path), "xml", SourceOptions())
    with pytest.raises(CurateError, match="no such file or directory") as exc:
        open_source(str(tmp_path / "nope"), "auto", SourceOptions())
    assert str(tmp_path / "nope") in str(exc.value)
    with pytest.raises(UsageError, match="needs a directory"):
        open_source(str(tmp_path / "x.weird"), "folder", SourceOptions())


# --------------------------------------------------------------------------------------------- folders


def test_folder_labels_from_first_folder_nested_allowed(tmp_path, make_png):
    root = tmp_path / "imgs"
    make_png(root / "cat" / "a.png", 1)
    make_png(root / "cat" / "indoor" / "deep" / "b.png", 2)
    make_png(root / "dog" / "c.png", 3)
    rows = items(root)
    got = {Path(r["path"]).relative_to(root).as_posix(): r["label"] for r in rows}
    assert got == {"cat/a.png": "cat", "cat/indoor/deep/b.png": "cat", "dog/c.png": "dog"}
    assert all(r["source"] == r["path"] for r in rows)


def test_folder_walk_is_sorted_and_counts_match(image_folder):
    root = image_folder(counts={"cat": 5, "dog": 3, "bird": 2})
    src = open_source(str(root), "folder", SourceOptions())
    rows = list(src.items())
    assert src.total == 10
    assert [r["path"] for r in rows] == sorted(r["path"] for r in rows)
    labels = [r["label"] for r in rows]
    assert {c: labels.count(c) for c in set(labels)} == {"cat": 5, "dog": 3, "bird": 2}


def test_folder_unlabeled_flat(tmp_path, make_png):
    for i in range(4):
        make_png(tmp_path / "flat" / f"{i}.png", i)
    make_png(tmp_path / "flat" / "sub" / "x.png", 9)
    rows = items(tmp_path / "flat", unlabeled=True)
    assert len(rows) == 5
    assert all(r["label"] is None for r in rows)


def test_folder_hidden_files_skipped_and_counted(tmp_path, make_png):
    root = tmp_path / "imgs"
    make_png(root / "cat" / "a.png", 1)
    (root / "cat" / ".DS_Store").write_bytes(b"junk")
    make_png(root / ".thumbs" / "t.png", 2)
    make_png(root / "__MACOSX" / "cat" / "._a.png", 3)
    opts = SourceOptions()
    rows = list(open_source(str(root), "auto", opts).items())
    assert [Path(r["path"]).name for r in rows] == ["a.png"]
    assert opts.notes["skipped_hidden"] == 3


def test_folder_root_files_unlabeled_and_noted(tmp_path, make_png):
    root = tmp_path / "imgs"
    make_png(root / "cat" / "a.png", 1)
    make_png(root / "stray.png", 2)
    opts = SourceOptions()
    rows = list(open_source(str(root), "folder", opts).items())
    assert {Path(r["path"]).name: r["label"] for r in rows} == {"a.png": "cat", "stray.png": None}
    assert opts.notes["unlabeled_root_files"] == 1


def test_split_name_recorded_on_folder_rows(image_folder):
    rows = items(image_folder(counts={"a": 2}), split_name="val")
    assert [r["origin_split"] for r in rows] == ["val", "val"]


def test_batches_follow_item_schema(image_folder):
    src = open_source(str(image_folder(counts={"a": 5})), "folder", SourceOptions())
    batches = list(src.batches(2))
    assert [b.num_rows for b in batches] == [2, 2, 1]
    assert all(b.schema.equals(ITEM_SCHEMA) for b in batches)


# --------------------------------------------------------------------------------------------- manifests


@pytest.fixture
def two_images(tmp_path, make_png):
    make_png(tmp_path / "m" / "img" / "a.png", 1)
    make_png(tmp_path / "m" / "img" / "b.png", 2)
    return tmp_path / "m"


def test_csv_paths_relative_to_the_manifest_not_the_cwd(two_images, tmp_path, monkeypatch):
    (two_images / "list.csv").write_text("path,label\nimg/a.png,cat\nimg/b.png,dog\n")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    rows = items(two_images / "list.csv")
    assert [(r["path"], r["label"]) for r in rows] == [(str(two_images / "img/a.png"), "cat"), (str(two_images / "img/b.png"), "dog")]
    assert all(Path(r["path"]).exists() for r in rows)


def test_csv_absolute_paths_kept(two_images):
    (two_images / "abs.csv").write_text(f"file,class\n{two_images / 'img/a.png'}, cat \n")
    assert [(r["path"], r["label"]) for r in items(two_images / "abs.csv")] == [(str(two_images / "img/a.png"), "cat")]


@pytest.mark.parametrize(
    ("path_name", "label_name"),
    [
        ("path", "label"),
        ("filepath", "class"),
        ("file_path", "category"),
        ("Filename", "Target"),
        ("image", "class_name"),
        ("image_path", None),
    ],
)
def test_csv_autodetects_column_names(two_images, path_name, label_name):
    header = f"notes,{path_name}" + (f",{label_name}" if label_name else "")
    body = "hello,img/a.png" + (",x" if label_name else "")
    (two_images / "m.csv").write_text(f"{header}\n{body}\n")
    if label_name is None:  # another column but none named like a label: a misnamed label column, ask
        with pytest.raises(CurateError, match="no label column found .*notes, image_path") as info:
            items(two_images / "m.csv", ask_label=True)  # what ingest asks; predict and crawl take it as unlabeled
        assert "--unlabeled" in info.value.hint
    rows = items(two_images / "m.csv", unlabeled=label_name is None, ask_label=True)
    assert rows[0]["path"] == str(two_images / "img/a.png")
    assert rows[0]["label"] == ("x" if label_name else None)


def test_a_manifest_of_paths_only_is_unlabeled(two_images):
    (two_images / "m.csv").write_text("path\nimg/a.png\n")
    assert items(two_images / "m.csv", ask_label=True)[0]["label"] is None
    (two_images / "m.csv").write_text("path,caption\nimg/a.png,a photo\n")
    assert items(two_images / "m.csv")[0]["label"] is None  # predict's and crawl's reading: no label asked


def test_explicit_columns_win(two_images):
    (two_images / "m.csv").write_text("label,pic,species\nWRONG,img/a.png,owl\n")
    rows = items(two_images / "m.csv", path_col="pic", label_col="species")
    assert (rows[0]["path"], rows[0]["label"]) == (str(two_images / "img/a.png"), "owl")
    rows = items(two_images / "m.csv", path_col="pic", unlabeled=True)
    assert rows[0]["label"] is None


@pytest.mark.parametrize("kw", [{"path_col": "file"}, {"path_col": "pic", "label_col": "klass"}])
def test_wrong_column_name_names_the_file_and_lists_columns(two_images, kw):
    man = two_images / "m.csv"
    man.write_text("pic,species\nimg/a.png,owl\n")
    with pytest.raises(CurateError) as exc:
        open_source(str(man), "auto", SourceOptions(**kw))
    msg = str(exc.value)
    assert str(man) in msg
    assert "pic, species" in msg
    assert repr(kw.get("label_col") or kw["path_col"]) in msg


def test_no_path_column_found_lists_columns(two_images):
    man = two_images / "m.csv"
    man.write_text("pic,species\nimg/a.png,owl\n")
    with pytest.raises(CurateError, match=r"no path column found \(columns: pic, species") as exc:
        open_source(str(man), "auto", SourceOptions())
    assert str(man) in str(exc.value)
    assert exc.value.hint and "--path-col" in exc.value.hint


def test_wrong_columns_in_parquet_and_jsonl(two_images):
    pq.write_table(pa.table({"pic": ["img/a.png"]}), two_images / "m.parquet")
    (two_images / "m.jsonl").write_text('{"pic": "img/a.png", "n": 1}\n')
    for name, cols in (("m.parquet", "pic"), ("m.jsonl", "pic, n")):
        with pytest.raises(CurateError) as exc:
            open_source(str(two_images / name), "auto", SourceOptions(path_col="path"))
        assert str(two_images / name) in str(exc.value)
        assert f"(columns: {cols})" in str(exc.value)


def test_csv_labels_stay_text(two_images):
    (two_images / "m.csv").write_text("path,label\nimg/a.png,01\nimg/b.png,7\n")
    assert [r["label"] for r in items(two_images / "m.csv")] == ["01", "7"]


def test_tsv(two_images):
    (two_images / "m.tsv").write_text("path\tlabel\nimg/a.png\tcat\n")
    assert [r["label"] for r in items(two_images / "m.tsv")] == ["cat"]


def test_csv_with_bom(two_images):
    (two_images / "m.csv").write_bytes("\ufeffpath,label\nimg/a.png,cat\n".encode())
    assert [r["label"] for r in items(two_images / "m.csv")] == ["cat"]


def test_parquet_manifest_with_int_and_float_labels(two_images):
    pq.write_table(pa.table({"path": ["img/a.png", "img/b.png"], "label": [3, 4]}), two_images / "i.parquet")
    pq.write_table(pa.table({"path": ["img/a.png", "img/b.png"], "label": [3.0, None]}), two_images / "f.parquet")
    assert [r["label"] for r in items(two_images / "i.parquet")] == ["3", "4"]
    assert [r["label"] for r in items(two_images / "f.parquet")] == ["3", None]
    src = open_source(str(two_images / "i.parquet"), "auto", SourceOptions())
    assert src.total == 2


def test_jsonl_manifest_and_split_column(two_images):
    lines = [{"path": "img/a.png", "label": "cat", "split": "train"}, {"path": "img/b.png", "label": "dog", "split": "test"}]
    (two_images / "m.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines) + "\n\n")  # trailing blanks are fine
    rows = items(two_images / "m.jsonl")
    assert [(r["label"], r["origin_split"]) for r in rows] == [("cat", "train"), ("dog", "test")]


def test_jsonl_with_bom(two_images):
    (two_images / "m.jsonl").write_bytes('\ufeff{"path": "img/a.png", "label": "cat"}\n'.encode())
    assert [r["label"] for r in items(two_images / "m.jsonl")] == ["cat"]


@pytest.mark.parametrize(
    "text",
    [
        json.dumps([{"path": "img/a.png"}, {"path": "img/b.png"}]),
        json.dumps([{"path": "img/a.png"}, {"path": "img/b.png"}], indent=2),
    ],
)
def test_jsonl_that_is_a_json_array(two_images, text):
    man = two_images / "m.jsonl"
    man.write_text(text)
    with pytest.raises(CurateError) as exc:
        items(man)
    msg = str(exc.value)
    assert msg.startswith(f"{man}:1:")
    assert "JSON array" in msg and "Extra data" not in msg
    assert "jq" in exc.value.hint


@pytest.mark.parametrize("lead", ["\n", "\n\n  \n"])
def test_jsonl_blank_lines_then_an_array_says_array(two_images, lead):
    man = two_images / "m.jsonl"
    man.write_text(lead + json.dumps([{"path": "img/a.png"}]) + "\n")
    with pytest.raises(CurateError) as exc:
        items(man)
    assert str(exc.value).startswith(f"{man}:{lead.count(chr(10)) + 1}: the file is a JSON array"), exc.value
    assert "blank line" not in str(exc.value) and "jq" in exc.value.hint


def test_jsonl_blank_line_in_the_middle(two_images):
    man = two_images / "m.jsonl"
    man.write_text('{"path": "img/a.png"}\n{"path": "img/b.png"}\n\n{"path": "img/a.png"}\n')
    with pytest.raises(CurateError, match=r":3: blank line") as exc:
        items(man)
    assert str(man) in str(exc.value)


@pytest.mark.parametrize(
    ("bad", "lineno"),
    [('{"path": "img/b.png"', 2), ("{'path': 'img/b.png'}", 2), ('{"path": "img/b.png"} {"path": "x"}', 2), ('"img/b.png"', 2)],
)
def test_jsonl_broken_line_names_the_line(two_images, bad, lineno):
    man = two_images / "m.jsonl"
    man.write_text('{"path": "img/a.png"}\n' + bad + '\n{"path": "img/a.png"}\n')
    with pytest.raises(CurateError) as exc:
        items(man)
    assert str(exc.value).startswith(f"{man}:{lineno}:")


def test_jsonl_error_found_when_columns_are_read(two_images):
    # the first object decides the columns; a broken first line already fails in open_source
    man = two_images / "m.jsonl"
    man.write_text("not json\n")
    with pytest.raises(CurateError, match=":1: broken JSON line"):
        open_source(str(man), "auto", SourceOptions())


def test_empty_manifest(two_images):
    (two_images / "m.jsonl").write_text("")
    with pytest.raises(CurateError, match="empty"):
        open_source(str(two_images / "m.jsonl"), "auto", SourceOptions())


def test_manifest_empty_path_cell_is_missing(two_images):
    (two_images / "m.csv").write_text("path,label\nimg/a.png,cat\n,dog\n")
    rows = items(two_images / "m.csv")
    assert rows[1]["pre_reason"] == "missing"
    assert rows[1]["source"] == f"{two_images / 'm.csv'}:line 3"
    assert rows[1]["label"] == "dog"


@pytest.mark.parametrize(
    ("label", "shown"), [(["bag", "dark"], '["bag", "dark"]'), ({"x": 0}, '{"x": 0}'), ([], "[]")]
)
def test_jsonl_list_or_object_label_is_refused(two_images, label, shown):
    """Multi-label / structured labels must not become a class named "['bag', 'dark']"."""
    man = two_images / "m.jsonl"
    man.write_text(json.dumps({"path": "img/a.png", "label": "cat"}) + "\n" + json.dumps({"path": "img/b.png", "label": label}) + "\n")
    with pytest.raises(CurateError) as exc:
        items(man)
    msg = str(exc.value)
    assert msg.startswith(f"{man}:2: 'label' is a") and shown in msg and "\n" not in msg


def test_parquet_list_and_struct_labels_are_refused_naming_the_row(two_images):
    lists = pa.table({"path": ["img/a.png", "img/b.png"], "label": [["cat"], ["bag", "dark"]]})
    structs = pa.table({"path": ["img/a.png"], "label": [{"x": 0}]})
    pq.write_table(lists, two_images / "l.parquet")
    pq.write_table(structs, two_images / "s.parquet")
    with pytest.raises(CurateError, match=r"l\.parquet: row 1: 'label' is a list \(\[\"cat\"\]\)"):
        items(two_images / "l.parquet")
    with pytest.raises(CurateError, match=r"s\.parquet: row 1: 'label' is an object \(\{\"x\": 0\}\)"):
        items(two_images / "s.parquet")
    # other columns may hold lists: they are kept as text columns
    pq.write_table(pa.table({"path": ["img/a.png"], "label": ["cat"], "tags": [["a", "b"]]}), two_images / "t.parquet")
    assert [r["label"] for r in items(two_images / "t.parquet")] == ["cat"]


def test_cli_multi_label_manifest_is_one_line_and_commits_nothing(two_images, tmp_path):
    from helpers import assert_one_error_line, run_curate

    from curate.workspace import Workspace

    man = two_images / "m.jsonl"
    man.write_text(json.dumps({"path": "img/a.png", "label": ["bag", "dark"]}) + "\n")
    res = run_curate(["ingest", str(man), "-w", str(tmp_path / "ws"), "-j", "1"], cwd=tmp_path)
    assert res.returncode == 1
    line = assert_one_error_line(res.stderr)
    assert f"{man}:1:" in line and '["bag", "dark"]' in line
    assert Workspace(tmp_path / "ws").head() is None


def test_manifest_urls_are_urls(two_images):
    (two_images / "m.csv").write_text("url,label\nhttps://example.com/a.png,cat\nftp://h/b.png,dog\n")
    rows = items(two_images / "m.csv")
    assert [(r.get("url"), r.get("path")) for r in rows] == [("https://example.com/a.png", None), ("ftp://h/b.png", None)]


# --------------------------------------------------------------------------------------------- idx


def test_read_idx_roundtrip_plain_and_gz(tmp_path, write_idx):
    arr = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    for name in ("x-idx3-ubyte", "x-idx3-ubyte.gz"):
        got = read_idx(write_idx(tmp_path / name, arr))
        assert got.dtype == np.uint8 and np.array_equal(got, arr)


def test_read_idx_errors(tmp_path, write_idx):
    path = write_idx(tmp_path / "x-idx3-ubyte", np.zeros((4, 3, 3), np.uint8))
    path.write_bytes(path.read_bytes()[:-5])
    with pytest.raises(CurateError, match="truncated idx file"):
        read_idx(path)
    (tmp_path / "y-idx3-ubyte").write_bytes(b"\x12\x34\x08\x01" + b"\x00" * 8)
    with pytest.raises(CurateError, match="bad magic"):
        read_idx(tmp_path / "y-idx3-ubyte")


@pytest.mark.parametrize(
    ("images", "labels"),
    [
        ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
        ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
        ("train-images.idx3-ubyte", "train-labels.idx1-ubyte"),  # Kaggle spelling
        ("train-images-idx3-ubyte", "train-labels-idx1-ubyte.gz"),
    ],
)
def test_find_idx_pairs_names(tmp_path, write_idx, images, labels):
    write_idx(tmp_path / images, np.zeros((1, 2, 2), np.uint8))
    write_idx(tmp_path / labels, np.zeros(1, np.uint8))
    assert find_idx_pairs(tmp_path) == [(tmp_path / images, tmp_path / labels)]


def test_idx_items_labels_origin_and_class_names(tmp_path, write_mnist_like):
    imgs = write_mnist_like(tmp_path, "train", [0, 2, 1], size=5)
    write_mnist_like(tmp_path, "t10k", [1], size=5, seed=1)
    src = open_source(str(tmp_path), "auto", SourceOptions(class_names=("zero", "one", "two")))
    assert src.total == 4
    rows = list(src.items())
    assert [(r["label"], r["origin_split"]) for r in rows] == [("one", "test"), ("zero", "train"), ("two", "train"), ("one", "train")]
    assert rows[1]["encode"] == "L:5x5" and rows[1]["data"] == imgs[0].tobytes()
    assert rows[1]["source"] == f"{tmp_path / 'train-images-idx3-ubyte.gz'}#0"


def test_idx_single_file_split_name_and_unlabeled(tmp_path, write_mnist_like):
    write_mnist_like(tmp_path, "train", [3, 4])
    write_mnist_like(tmp_path, "t10k", [5])
    rows = items(tmp_path / "train-images-idx3-ubyte.gz", split_name="val")
    assert [(r["label"], r["origin_split"]) for r in rows] == [("3", "val"), ("4", "val")]
    assert [r["label"] for r in items(tmp_path / "train-images-idx3-ubyte.gz", unlabeled=True)] == [None, None]


def test_idx_label_errors(tmp_path, write_idx, write_mnist_like):
    write_mnist_like(tmp_path / "a", "train", [0, 5])
    with pytest.raises(CurateError, match="label id 5 but only 3 --class-names"):
        items(tmp_path / "a", class_names=("a", "b", "c"))
    write_idx(tmp_path / "b" / "train-images-idx3-ubyte", np.zeros((3, 2, 2), np.uint8))
    write_idx(tmp_path / "b" / "train-labels-idx1-ubyte", np.zeros(2, np.uint8))
    with pytest.raises(CurateError, match="2 labels for 3 images"):
        items(tmp_path / "b")


# --------------------------------------------------------------------------------------------- archives


def _tar_add(tf: tarfile.TarFile, name: str, data: bytes = b"", **attrs) -> None:
    ti = tarfile.TarInfo(name)
    ti.size = len(data)
    ti.mtime = 0
    for k, v in attrs.items():
        setattr(ti, k, v)
    tf.addfile(ti, io.BytesIO(data) if data else None)


@pytest.mark.parametrize("mode", ["w", "w:gz"])
def test_tar_wrapper_folder_stripped(tmp_path, png_bytes, mode):
    path = tmp_path / ("a.tar" if mode == "w" else "a.tar.gz")
    with tarfile.open(path, mode) as tf:
        _tar_add(tf, "sample/cat/a.png", png_bytes(1))
        _tar_add(tf, "sample/cat/more/b.png", png_bytes(2))
        _tar_add(tf, "sample/dog/c.png", png_bytes(3))
        _tar_add(tf, "sample/._junk", b"x")
    rows = by_member(items(path))
    assert {k: v["label"] for k, v in rows.items()} == {
        "sample/cat/a.png": "cat",
        "sample/cat/more/b.png": "cat",
        "sample/dog/c.png": "dog",
    }
    assert rows["sample/cat/a.png"]["data"] == png_bytes(1)


def test_tar_without_wrapper(tmp_path, png_bytes):
    path = tmp_path / "a.tar"
    with tarfile.open(path, "w") as tf:
        _tar_add(tf, "cat/a.png", png_bytes(1))
        _tar_add(tf, "dog/b.png", png_bytes(2))
    assert {k: v["label"] for k, v in by_member(items(path)).items()} == {"cat/a.png": "cat", "dog/b.png": "dog"}


def test_tar_unsafe_members_are_rows_not_files(tmp_path, png_bytes):
    path = tmp_path / "evil.tar"
    with tarfile.open(path, "w") as tf:
        _tar_add(tf, "wrap/cat/ok.png", png_bytes(1))
        _tar_add(tf, "wrap/../escape.png", png_bytes(2))
        _tar_add(tf, "../../escape2.png", png_bytes(3))
        _tar_add(tf, "/abs/escape3.png", png_bytes(4))
        _tar_add(tf, "wrap/cat/sym.png", type=tarfile.SYMTYPE, linkname="/etc/passwd")
        _tar_add(tf, "wrap/cat/hard.png", type=tarfile.LNKTYPE, linkname="wrap/cat/ok.png")
        _tar_add(tf, "wrap/cat/dev", type=tarfile.CHRTYPE)
        _tar_add(tf, "wrap/cat/fifo", type=tarfile.FIFOTYPE)
    before = sorted(p.name for p in tmp_path.rglob("*"))
    rows = by_member(items(path))
    assert sorted(p.name for p in tmp_path.rglob("*")) == before  # nothing extracted anywhere
    assert rows["wrap/cat/ok.png"]["pre_reason"] is None and rows["wrap/cat/ok.png"]["label"] == "cat"
    unsafe = {k for k, v in rows.items() if v["pre_reason"] == "unsafe_member"}
    assert unsafe == set(rows) - {"wrap/cat/ok.png"}
    assert all(rows[k]["data"] is None and rows[k]["label"] is None for k in unsafe)
    assert "'..'" in rows["wrap/../escape.png"]["pre_error"]
    assert rows["/abs/escape3.png"]["pre_error"] == "absolute path"
    assert "/etc/passwd" in rows["wrap/cat/sym.png"]["pre_error"]
    assert rows["wrap/cat/fifo"]["pre_error"] == "not a regular file"


def test_tar_oversize_member(tmp_path, png_bytes):
    path = tmp_path / "a.tar"
    big, small = png_bytes(1, (64, 64)), png_bytes(2)
    with tarfile.open(path, "w") as tf:
        _tar_add(tf, "cat/big.png", big)
        _tar_add(tf, "cat/small.png", small)
    rows = by_member(items(path, max_bytes=len(small)))
    assert rows["cat/big.png"]["pre_reason"] == "too_large" and rows["cat/big.png"]["data"] is None
    assert rows["cat/small.png"]["pre_reason"] is None


def test_zip_wrapper_stripped_despite_macos_junk(tmp_path, png_bytes):
    path = tmp_path / "mac.zip"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("sample/cat/a.png", png_bytes(1))
        zf.writestr("sample/dog/b.png", png_bytes(2))
        zf.writestr("sample/.DS_Store", b"x")
        zf.writestr("__MACOSX/sample/cat/._a.png", b"x")
    rows = by_member(items(path))
    assert {k: v["label"] for k, v in rows.items()} == {"sample/cat/a.png": "cat", "sample/dog/b.png": "dog"}


def test_zip_unsafe_members(tmp_path, png_bytes):
    path = tmp_path / "evil.zip"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("cat/ok.png", png_bytes(1))
        zf.writestr("../escape.png", png_bytes(2))
        zf.writestr("cat/../../escape2.png", png_bytes(3))
        zf.writestr("/abs.png", png_bytes(4))
        zf.writestr("..\\win.png", png_bytes(5))
        zf.writestr("C:/drive.png", png_bytes(6))
        link = zipfile.ZipInfo("cat/link.png")
        link.external_attr = (stat.S_IFLNK | 0o777) << 16
        zf.writestr(link, "/etc/passwd")
    rows = by_member(items(path))
    assert rows.pop("cat/ok.png")["pre_reason"] is None
    assert {k: v["pre_reason"] for k, v in rows.items()} == dict.fromkeys(
        ["../escape.png", "cat/../../escape2.png", "/abs.png", "..\\win.png", "C:/drive.png", "cat/link.png"], "unsafe_member"
    )
    assert rows["cat/link.png"]["pre_error"] == "symbolic link"


def test_zip_oversize_member_by_header(tmp_path, png_bytes):
    path = tmp_path / "a.zip"
    big = png_bytes(1, (64, 64))
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("cat/big.png", big)
    rows = items(path, max_bytes=len(big) - 1)
    assert rows[0]["pre_reason"] == "too_large" and rows[0]["data"] is None


def _zip_bomb(path: Path, real_mb: int, claimed: int) -> None:
    """A zip whose one member inflates to ``real_mb`` MB of zeros while both headers claim ``claimed`` bytes."""
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED, compresslevel=1) as zf, zf.open("wrap/cat/bomb.png", "w") as fh:
        chunk = b"\x00" * (1 << 20)
        for _ in range(real_mb):
            fh.write(chunk)
    raw = bytearray(path.read_bytes())
    local = raw.find(b"PK\x03\x04")
    central = raw.find(b"PK\x01\x02")
    assert struct.unpack("<I", raw[local + 22 : local + 26])[0] == real_mb << 20
    raw[local + 22 : local + 26] = struct.pack("<I", claimed)
    raw[central + 24 : central + 28] = struct.pack("<I", claimed)
    path.write_bytes(bytes(raw))


def test_zip_bomb_with_lying_header_is_read_bounded(tmp_path):
    import tracemalloc

    path = tmp_path / "bomb.zip"
    _zip_bomb(path, real_mb=128, claimed=1000)
    assert path.stat().st_size < 2 << 20
    tracemalloc.start()
    try:
        rows = items(path)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 16 << 20, f"peak {peak} bytes"
    assert len(rows) == 1
    assert rows[0]["pre_reason"] in ("corrupt", "too_large")
    assert rows[0]["data"] is None


def test_not_an_archive(tmp_path):
    (tmp_path / "a.zip").write_bytes(b"this is not a zip")
    (tmp_path / "a.tar.gz").write_bytes(b"this is not a tar")
    for name in ("a.zip", "a.tar.gz"):
        with pytest.raises(CurateError, match="not a readable") as exc:
            open_source(str(tmp_path / name), "auto", SourceOptions())
        assert str(tmp_path / name) in str(exc.value)
