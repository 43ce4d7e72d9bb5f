"""Ingest end to end: every format, bad files, duplicates, later additions, failure commits nothing, determinism.

Every test builds its input with known ground truth (class counts, sha256 of each file, the reason each bad
file must get) and runs ingest the way ``curate ingest`` does (``run_stage(..., cacheable=False)``).
"""

from __future__ import annotations

import hashlib
import io
import json
import struct
import tarfile
import zipfile
import zlib
from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from curate.errors import CurateError, TooManyErrors
from curate.schema import placeholder_id
from curate.workspace import Workspace


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def rows_by_source(ws: Workspace) -> dict[str, dict]:
    return {r["source"]: r for r in ws.samples().to_pylist()}


def name_of(source: str) -> str:
    return source.rsplit("/", 1)[-1]


def state(ws: Workspace) -> dict:
    """Everything ingest may touch in a workspace: HEAD, version folders (incl. temp ones), blob files."""
    return {
        "head": ws.head(),
        "versions": sorted(p.name for p in ws.versions_dir.iterdir()) if ws.versions_dir.exists() else [],
        "blobs": sorted(p.name for p in ws.blobs.root.iterdir()) if ws.blobs.root.exists() else [],
    }


def comparable(table: pa.Table) -> list[dict]:
    return sorted(table.to_pylist(), key=lambda r: r["sample_id"])


def assert_same_samples(a: Workspace, b: Workspace) -> None:
    """Identical sample tables and identical stored bytes; pack names may differ only by a consistent renaming.

    (``Workspace.pack_writer`` adds a random suffix so that a rerun can never overwrite a pack an existing version
    references; everything else must be byte-for-byte the same.)
    """
    ta, tb = a.samples(), b.samples()
    assert ta.schema == tb.schema
    assert ta.drop_columns(["pack"]).to_pylist() == tb.drop_columns(["pack"]).to_pylist()
    pairs = set(zip(ta.column("pack").to_pylist(), tb.column("pack").to_pylist(), strict=True))
    assert len({p for p, _ in pairs}) == len(pairs) == len({q for _, q in pairs})  # a bijection of pack names
    ids = ta.column("sample_id").to_pylist()
    assert a.blobs.get_many(ids, ta.column("pack").to_pylist()) == b.blobs.get_many(ids, tb.column("pack").to_pylist())


# --------------------------------------------------------------------------------------------- ImageFolder


def test_imagefolder_known_counts_and_facts(image_folder, workspace, ingest):
    root = image_folder(counts={"cat": 5, "dog": 3, "bird": 2}, size=(12, 9))
    res = ingest(workspace, root)
    assert res["version"] == "000001-ingest" and res["parent"] is None and not res["cached"]
    assert workspace.head() == "000001-ingest"
    table = workspace.samples()
    assert table.num_rows == 10
    assert res["stats"]["summary"]["per_class"] == {"bird": 2, "cat": 5, "dog": 3}
    assert res["stats"]["inputs"] == 10 and res["stats"]["new_samples"] == 10
    assert res["stats"]["new_excluded_by_reason"] == {}
    files = {str(p): p.read_bytes() for p in root.rglob("*.png")}
    for r in table.to_pylist():
        data = files[r["source"]]
        assert r["sample_id"] == sha(data)
        assert r["label"] == Path(r["source"]).parent.name
        assert (r["status"], r["excluded_by"], r["reason"], r["label_source"]) == ("ok", None, None, "given")
        assert (r["width"], r["height"], r["mode"], r["format"], r["nbytes"]) == (12, 9, "RGB", "PNG", len(data))
        assert r["split"] is None and r["origin_split"] is None and r["pack"] is not None
    # the original bytes are in the packs, byte for byte
    stored = workspace.blobs.get_many(table.column("sample_id").to_pylist(), table.column("pack").to_pylist())
    assert stored == {sha(d): d for d in files.values()}
    stats = workspace.stats("000001-ingest")
    assert stats["summary"]["included"] == 10 and stats["bytes_stored"] == sum(len(d) for d in files.values())


def test_nested_folders_label_is_first_folder(tmp_path, make_png, workspace, ingest):
    make_png(tmp_path / "in" / "cat" / "a" / "b" / "deep.png", 1)
    make_png(tmp_path / "in" / "cat" / "top.png", 2)
    make_png(tmp_path / "in" / "dog" / "x" / "y.png", 3)
    ingest(workspace, tmp_path / "in", format="folder")
    got = {name_of(s): r["label"] for s, r in rows_by_source(workspace).items()}
    assert got == {"deep.png": "cat", "top.png": "cat", "y.png": "dog"}


def test_flat_folder_unlabeled(tmp_path, make_png, workspace, ingest):
    for i in range(6):
        make_png(tmp_path / "flat" / f"{i}.png", i)
    res = ingest(workspace, tmp_path / "flat", unlabeled=True)
    table = workspace.samples()
    assert table.num_rows == 6
    assert table.column("label").null_count == 6 and table.column("label_source").null_count == 6
    assert res["stats"]["summary"]["per_class"] == {"(unlabeled)": 6}


def test_empty_folder_is_an_error(tmp_path, workspace, ingest):
    (tmp_path / "empty").mkdir()
    with pytest.raises(CurateError, match="no files found"):
        ingest(workspace, tmp_path / "empty")
    assert workspace.head() is None


# --------------------------------------------------------------------------------------------- every format


def _dataset(tmp_path: Path) -> tuple[Path, dict[str, str]]:
    """images/<class>/<file>.png with cat 3, dog 2; returns the folder and sha256 -> label."""
    from conftest import write_image_folder

    root = write_image_folder(tmp_path / "data" / "images", {"cat": 3, "dog": 2})
    truth = {sha(p.read_bytes()): p.parent.name for p in root.rglob("*.png")}
    return root, truth


def _write_format(fmt: str, root: Path) -> Path:
    files = sorted(root.rglob("*.png"))
    base = root.parent
    recs = [{"file": str(p.relative_to(base)), "class": p.parent.name} for p in files]
    if fmt == "folder":
        return root
    if fmt == "csv":
        out = base / "list.csv"
        out.write_text("file,class\n" + "".join(f"{r['file']},{r['class']}\n" for r in recs))
    elif fmt == "parquet":
        out = base / "list.parquet"
        pq.write_table(pa.Table.from_pylist(recs), out)
    elif fmt == "jsonl":
        out = base / "list.jsonl"
        out.write_text("".join(json.dumps(r) + "\n" for r in recs))
    elif fmt == "tar":
        out = base / "set.tar.gz"
        with tarfile.open(out, "w:gz") as tf:
            for p in files:
                tf.add(p, arcname=f"set/{p.relative_to(root)}")
    else:
        out = base / "set.zip"
        with zipfile.ZipFile(out, "w") as zf:
            for p in files:
                zf.write(p, arcname=f"set/{p.relative_to(root)}")
    return out


@pytest.mark.parametrize("fmt", ["folder", "csv", "parquet", "jsonl", "tar", "zip"])
@pytest.mark.parametrize("explicit", [False, True])
def test_every_format_gives_the_same_samples(tmp_path, fmt, explicit, ingest):
    root, truth = _dataset(tmp_path)
    src = _write_format(fmt, root)
    ws = Workspace(tmp_path / "ws")
    res = ingest(ws, src, format=fmt if explicit else "auto")
    table = ws.samples()
    assert dict(zip(table.column("sample_id").to_pylist(), table.column("label").to_pylist(), strict=True)) == truth
    assert res["stats"]["summary"]["per_class"] == {"cat": 3, "dog": 2}
    assert set(table.column("status").to_pylist()) == {"ok"}


def test_manifest_missing_file_is_excluded_missing(tmp_path, image_folder, workspace, ingest):
    root = image_folder(counts={"cat": 3})
    man = root.parent / "list.csv"
    man.write_text("path,label\n" + "".join(f"images/cat/cat_{i:03d}.png,cat\n" for i in range(3)) + "images/cat/gone.png,cat\n")
    res = ingest(workspace, man, max_error_fraction=0.5)
    rows = rows_by_source(workspace)
    gone = rows[str(root / "cat" / "gone.png")]
    assert (gone["status"], gone["excluded_by"], gone["reason"], gone["label"]) == ("excluded", "ingest", "missing", "cat")
    assert gone["sample_id"] == placeholder_id(str(root / "cat" / "gone.png"))
    assert gone["pack"] is None and gone["nbytes"] is None
    assert res["stats"]["new_excluded_by_reason"] == {"missing": 1}
    assert res["stats"]["summary"]["excluded_by_reason"] == {"ingest:missing": 1}
    assert res["stats"]["summary"]["per_class"] == {"cat": 3}


def test_manifest_bad_column_fails_before_committing(tmp_path, image_folder, workspace, ingest):
    root = image_folder(counts={"cat": 1})
    man = root.parent / "list.csv"
    man.write_text("file,klass\nimages/cat/cat_000.png,cat\n")
    with pytest.raises(CurateError) as exc:
        ingest(workspace, man, label_col="label")
    assert str(man) in str(exc.value) and "file, klass" in str(exc.value)
    assert workspace.head() is None and not workspace.version_ids()


def test_manifest_broken_late_line_commits_nothing(tmp_path, image_folder, workspace, ingest, monkeypatch):
    from curate.blobs import PackWriter

    monkeypatch.setattr(Workspace, "pack_writer", lambda self, token: PackWriter(self.blobs.root, token, target_bytes=500))
    root = image_folder(counts={"cat": 12})
    man = root.parent / "list.jsonl"
    lines = [json.dumps({"path": f"images/cat/cat_{i:03d}.png", "label": "cat"}) for i in range(12)]
    lines.insert(10, '{"path": "images/cat/cat_000.png", "label": }')
    man.write_text("\n".join(lines) + "\n")
    with pytest.raises(CurateError) as exc:
        ingest(workspace, man, batch_size=2)
    assert str(exc.value).startswith(f"{man}:11: broken JSON line")
    assert state(workspace) == {"head": None, "versions": [], "blobs": []}


def test_manifest_same_file_twice_records_second_label(tmp_path, image_folder, workspace, ingest):
    root = image_folder(counts={"cat": 2})
    man = root.parent / "list.jsonl"
    lines = [("images/cat/cat_000.png", "cat"), ("images/cat/cat_001.png", "cat"), ("./images/cat/cat_000.png", "tiger")]
    man.write_text("".join(json.dumps({"path": p, "label": lab}) + "\n" for p, lab in lines))
    res = ingest(workspace, man)
    assert res["stats"]["new_samples"] == 2 and res["stats"]["duplicate_bytes"] == 1
    row = rows_by_source(workspace)[str(root / "cat" / "cat_000.png")]
    # the same file under a second label is a conflict that must not be lost
    assert row["extra_sources"] == [str(root / "cat" / "cat_000.png")] and row["extra_labels"] == ["tiger"]
    assert row["label"] == "cat"
    ingest(workspace, man)  # again: nothing doubled
    row = rows_by_source(workspace)[str(root / "cat" / "cat_000.png")]
    assert row["extra_sources"] == [str(root / "cat" / "cat_000.png")] and row["extra_labels"] == ["tiger"]
    assert workspace.samples().num_rows == 2


def test_manifest_split_column_and_assign_split(tmp_path, image_folder, workspace, ingest):
    root = image_folder(counts={"cat": 2})
    man = root.parent / "list.csv"
    man.write_text("path,label,split\nimages/cat/cat_000.png,cat,train\nimages/cat/cat_001.png,cat,test\n")
    ingest(workspace, man, assign_split=True)
    rows = {name_of(s): (r["origin_split"], r["split"]) for s, r in rows_by_source(workspace).items()}
    assert rows == {"cat_000.png": ("train", "train"), "cat_001.png": ("test", "test")}


def test_manifest_unsupported_url_is_excluded_without_network(tmp_path, image_folder, workspace, ingest):
    root = image_folder(counts={"cat": 1})
    man = root.parent / "list.csv"
    man.write_text("path,label\nimages/cat/cat_000.png,cat\nftp://example.invalid/x.png,cat\n")
    ingest(workspace, man, max_error_fraction=1)
    row = rows_by_source(workspace)["ftp://example.invalid/x.png"]
    assert (row["status"], row["reason"]) == ("excluded", "unsupported_url")


# --------------------------------------------------------------------------------------------- idx


def test_idx_labels_origin_split_and_class_names(tmp_path, workspace, ingest, write_mnist_like):
    train = write_mnist_like(tmp_path / "mn", "train", [0, 1, 1, 2, 2, 2], size=6)
    test = write_mnist_like(tmp_path / "mn", "t10k", [0, 2], size=6, seed=1)
    res = ingest(workspace, tmp_path / "mn", format="idx", class_names=("zero", "one", "two"))
    table = workspace.samples()
    assert table.num_rows == 8
    assert res["stats"]["summary"]["per_class"] == {"one": 2, "two": 4, "zero": 2}
    assert Counter(table.column("origin_split").to_pylist()) == {"train": 6, "test": 2}
    assert table.column("split").null_count == 8  # not assigned unless asked
    rows = rows_by_source(workspace)
    # each row is a lossless grayscale PNG of exactly the array in the file
    for prefix, arr in (("train", train), ("t10k", test)):
        for i in range(arr.shape[0]):
            r = rows[f"{tmp_path / 'mn' / prefix}-images-idx3-ubyte.gz#{i}"]
            assert (r["width"], r["height"], r["mode"], r["format"]) == (6, 6, "L", "PNG")
            data = workspace.blobs.get_many([r["sample_id"]], [r["pack"]])[r["sample_id"]]
            assert np.array_equal(np.asarray(Image.open(io.BytesIO(data))), arr[i])


def test_idx_assign_split_and_split_name(tmp_path, ingest, write_mnist_like):
    write_mnist_like(tmp_path / "mn", "train", [3, 4, 5])
    write_mnist_like(tmp_path / "mn", "t10k", [3, 4], seed=1)
    ws = Workspace(tmp_path / "a")
    res = ingest(ws, tmp_path / "mn", assign_split=True)
    assert res["stats"]["summary"]["per_split"] == {"test": 2, "train": 3}
    assert res["stats"]["summary"]["per_split_class"] == {"test": {"3": 1, "4": 1}, "train": {"3": 1, "4": 1, "5": 1}}
    ws2 = Workspace(tmp_path / "b")
    ingest(ws2, tmp_path / "mn" / "t10k-images-idx3-ubyte.gz", split_name="val", assign_split=True)
    t = ws2.samples()
    assert t.num_rows == 2 and set(t.column("split").to_pylist()) == {"val"} and set(t.column("origin_split").to_pylist()) == {"val"}


@pytest.mark.slow
def test_real_mnist_t10k(tmp_path, ingest):
    folder = Path("/work/shared/datasets/mnist")
    src = folder / "t10k-images-idx3-ubyte.gz"
    if not src.exists():
        pytest.skip("no MNIST copy at /work/shared/datasets/mnist")
    ws = Workspace(tmp_path / "ws")
    res = ingest(ws, src, workers=2, assign_split=True)
    st = res["stats"]
    assert st["inputs"] == 10_000
    summary = st["summary"]
    assert sum(summary["per_class"].values()) + summary["excluded"] == 10_000
    assert summary["excluded"] == 0
    assert sorted(summary["per_class"]) == [str(d) for d in range(10)]
    assert all(850 <= n <= 1200 for n in summary["per_class"].values()), summary["per_class"]
    assert summary["per_split"] == {"test": 10_000}


# --------------------------------------------------------------------------------------------- archives


def _tar_add(tf: tarfile.TarFile, name: str, data: bytes = b"", **attrs) -> None:
    ti = tarfile.TarInfo(name)
    ti.size = len(data)
    for k, v in attrs.items():
        setattr(ti, k, v)
    tf.addfile(ti, io.BytesIO(data) if data else None)


def test_tar_unsafe_members_become_excluded_rows_and_nothing_is_written(tmp_path, png_bytes, workspace, ingest):
    path = tmp_path / "in" / "evil.tar"
    path.parent.mkdir()
    with tarfile.open(path, "w") as tf:
        for i in range(4):
            _tar_add(tf, f"wrap/cat/{i}.png", png_bytes(i))
        _tar_add(tf, "wrap/dog/0.png", png_bytes(10))
        _tar_add(tf, "wrap/../escape.png", png_bytes(20))
        _tar_add(tf, "/tmp/abs-escape.png", png_bytes(21))
        _tar_add(tf, "wrap/cat/sym.png", type=tarfile.SYMTYPE, linkname="../../../../etc/passwd")
        _tar_add(tf, "wrap/cat/hard.png", type=tarfile.LNKTYPE, linkname="/etc/passwd")
    res = ingest(workspace, path, max_error_fraction=1)
    rows = {s.split("::", 1)[1]: r for s, r in rows_by_source(workspace).items()}
    assert res["stats"]["summary"]["per_class"] == {"cat": 4, "dog": 1}
    bad = {k for k, r in rows.items() if r["status"] == "excluded"}
    assert bad == {"wrap/../escape.png", "/tmp/abs-escape.png", "wrap/cat/sym.png", "wrap/cat/hard.png"}
    assert {rows[k]["reason"] for k in bad} == {"unsafe_member"} and {rows[k]["excluded_by"] for k in bad} == {"ingest"}
    assert res["stats"]["new_excluded_by_reason"] == {"unsafe_member": 4}
    assert not (tmp_path / "escape.png").exists() and not Path("/tmp/abs-escape.png").exists()
    assert sorted(p.name for p in (tmp_path / "in").iterdir()) == ["evil.tar"]
    # the unsafe members' bytes were never stored
    stored = workspace.blobs.get_many(*zip(*[(r["sample_id"], r["pack"]) for r in rows.values() if r["pack"]], strict=True))
    assert sha(png_bytes(20)) not in stored and sha(png_bytes(21)) not in stored and len(stored) == 5


def test_zip_oversize_and_bomb_members(tmp_path, png_bytes, workspace, ingest):
    path = tmp_path / "a.zip"
    big = png_bytes(99, (64, 64))
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        for i in range(3):
            zf.writestr(f"set/cat/{i}.png", png_bytes(i))
        zf.writestr("set/cat/big.png", big)
        zf.writestr("set/dog/bomb.png", b"\x00" * (4 << 20))
    raw = bytearray(path.read_bytes())  # make the bomb's headers claim 100 bytes
    for sig, off in ((b"PK\x03\x04", 22), (b"PK\x01\x02", 24)):
        pos = -1
        while (pos := raw.find(sig, pos + 1)) != -1:
            name_len = struct.unpack("<H", raw[pos + (26 if off == 22 else 28) : pos + (28 if off == 22 else 30)])[0]
            start = pos + (30 if off == 22 else 46)
            if raw[start : start + name_len] == b"set/dog/bomb.png":
                raw[pos + off : pos + off + 4] = struct.pack("<I", 100)
    path.write_bytes(bytes(raw))
    res = ingest(workspace, path, max_bytes=len(big) - 1, max_error_fraction=1)
    rows = {s.split("::", 1)[1]: r for s, r in rows_by_source(workspace).items()}
    assert rows["set/cat/big.png"]["reason"] == "too_large"
    assert rows["set/dog/bomb.png"]["status"] == "excluded"
    assert rows["set/dog/bomb.png"]["reason"] in ("corrupt", "too_large")
    assert res["stats"]["summary"]["per_class"] == {"cat": 3}


# --------------------------------------------------------------------------------------------- bad files


def _bomb_png() -> bytes:
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    ihdr = struct.pack(">IIBBBBB", 100_000, 100_000, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00" * 1024)) + chunk(b"IEND", b"")


BAD_FILES = {
    "corrupt.png": "corrupt",
    "half.png": "truncated",
    "half.jpg": "truncated",
    "empty.png": "empty",
    "notes.txt": "not_an_image",
    "fake.jpg": "not_an_image",
    "bytes.png": "too_large",
    "pixels.png": "too_large",
    "bomb.png": "too_large",
}


def _write_bad_files(folder: Path, png_bytes, jpeg_bytes) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    p = png_bytes(500, (64, 64))
    j = jpeg_bytes(501, (64, 64))
    corrupt = bytearray(p)
    corrupt[100:120] = b"\xff" * 20
    (folder / "corrupt.png").write_bytes(bytes(corrupt))
    (folder / "half.png").write_bytes(p[: len(p) // 2])
    (folder / "half.jpg").write_bytes(j[: len(j) // 2])
    (folder / "empty.png").write_bytes(b"")
    (folder / "notes.txt").write_text("these are not pixels\n")
    (folder / "fake.jpg").write_text("<html>404 not found</html>")
    (folder / "bytes.png").write_bytes(png_bytes(502, (200, 200)))  # ~120 KB > max_bytes below
    buf = io.BytesIO()
    Image.new("L", (5000, 5000)).save(buf, "PNG")  # 25 MP in ~25 KB
    (folder / "pixels.png").write_bytes(buf.getvalue())
    (folder / "bomb.png").write_bytes(_bomb_png())


def test_bad_files_are_excluded_with_the_right_reason(tmp_path, image_folder, png_bytes, jpeg_bytes, workspace, ingest):
    root = image_folder(counts={"cat": 6, "dog": 4})
    _write_bad_files(root / "cat", png_bytes, jpeg_bytes)
    res = ingest(workspace, root, max_bytes=100_000, max_pixels=1_000_000, max_error_fraction=0.5)
    rows = rows_by_source(workspace)
    assert len(rows) == 10 + len(BAD_FILES)
    for name, reason in BAD_FILES.items():
        r = rows[str(root / "cat" / name)]
        assert (r["status"], r["excluded_by"], r["reason"]) == ("excluded", "ingest", reason), name
        assert r["error"] and r["pack"] is None and r["label"] == "cat" and r["width"] is None
    want = dict(sorted(Counter(BAD_FILES.values()).items()))
    assert res["stats"]["new_excluded_by_reason"] == want
    summary = res["stats"]["summary"]
    assert summary["excluded_by_reason"] == {f"ingest:{k}": v for k, v in want.items()}
    assert (summary["included"], summary["excluded"]) == (10, len(BAD_FILES))
    assert summary["per_class"] == {"cat": 6, "dog": 4}
    assert workspace.stats(res["version"])["new_excluded_by_reason"] == want
    # no bytes of a bad file were stored
    packs = [pq.read_table(workspace.blobs.path(p)) for p in workspace.blobs.packs()]
    assert sum(t.num_rows for t in packs) == 10


def test_bad_files_with_two_workers(tmp_path, image_folder, png_bytes, jpeg_bytes, ingest):
    root = image_folder(counts={"cat": 6, "dog": 4})
    _write_bad_files(root / "cat", png_bytes, jpeg_bytes)
    kw = {"max_bytes": 100_000, "max_pixels": 1_000_000, "max_error_fraction": 0.5, "batch_size": 3}
    a, b = Workspace(tmp_path / "w1"), Workspace(tmp_path / "w2")
    ingest(a, root, workers=1, **kw)
    ingest(b, root, workers=2, **kw)
    assert a.samples().num_rows == 10 + len(BAD_FILES)
    assert_same_samples(a, b)


def test_too_many_errors_commits_nothing(tmp_path, image_folder, png_bytes, jpeg_bytes, workspace, ingest, monkeypatch):
    from curate.blobs import PackWriter

    first = image_folder(counts={"cat": 3}, name="first")
    ingest(workspace, first)
    before = state(workspace)
    assert before["head"] == "000001-ingest"
    # small packs so that good bytes are flushed to disk before the failure is known
    monkeypatch.setattr(Workspace, "pack_writer", lambda self, token: PackWriter(self.blobs.root, token, target_bytes=500))
    second = image_folder(counts={"dog": 20}, name="second", seed0=100)
    _write_bad_files(second / "dog", png_bytes, jpeg_bytes)  # 9 bad of 29 > 5 %, given explicitly
    with pytest.raises(TooManyErrors) as exc:
        ingest(workspace, second, max_bytes=100_000, max_pixels=1_000_000, batch_size=4, max_error_fraction=0.05)
    msg = str(exc.value)
    assert "9 of 29 inputs failed" in msg and "nothing was committed" in msg and "too_large=3" in msg
    assert exc.value.hint and "--max-error-fraction" in exc.value.hint
    assert state(workspace) == before  # HEAD, version folders and blob files exactly as they were
    assert workspace.samples().num_rows == 3


def test_too_many_errors_in_an_empty_workspace(tmp_path, workspace, ingest):
    (tmp_path / "junk").mkdir()
    for i in range(3):
        (tmp_path / "junk" / f"{i}.png").write_text("nope")
    with pytest.raises(TooManyErrors):
        ingest(workspace, tmp_path / "junk")
    assert workspace.head() is None and workspace.version_ids() == []
    assert not list(workspace.blobs.root.glob("*")) if workspace.blobs.root.exists() else True


@pytest.mark.parametrize("fraction", [None, 0.05])
def test_error_fraction_boundary(tmp_path, image_folder, workspace, ingest, fraction):
    """Exactly the fraction (default 0.5) passes, one more failure fails; an explicit value still works."""
    kw = {} if fraction is None else {"max_error_fraction": fraction}
    bad = 10 if fraction is None else 1  # of 20
    root = image_folder(counts={"cat": 20 - bad})
    for i in range(bad):
        (root / "cat" / f"bad{i}.png").write_text(f"x{i}")
    res = ingest(workspace, root, **kw)
    assert res["stats"]["new_excluded_by_reason"] == {"not_an_image": bad}
    root2 = image_folder(counts={"cat": 20 - bad - 1}, name="more", seed0=200)
    for i in range(bad + 1):
        (root2 / "cat" / f"bad{i}.png").write_text(f"y{i}")
    with pytest.raises(TooManyErrors, match=f"{bad + 1} of 20"):
        ingest(workspace, root2, **kw)
    assert workspace.head() == res["version"]


@pytest.mark.parametrize(("good", "bad"), [(36, 3), (174, 26)])
def test_a_few_bad_files_do_not_block_the_default_ingest(tmp_path, image_folder, workspace, ingest, good, bad):
    """3 broken files among 39 (7.7 %) or 26 among 200 (13 %): a real folder, not a flood; the bad ones stay as rows."""
    root = image_folder(counts={"cat": good - good // 2, "dog": good // 2}, size=(8, 8))
    for i in range(bad):
        (root / ("cat", "dog")[i % 2] / f"broken{i}.jpg").write_bytes(b"\xff\xd8\xff" + bytes([i]) * 40)
    res = ingest(workspace, root)
    summary = res["stats"]["summary"]
    assert (summary["included"], summary["excluded"]) == (good, bad)
    rows = workspace.samples().to_pylist()
    assert sum(r["status"] == "excluded" for r in rows) == bad
    assert all(r["reason"] in ("corrupt", "truncated", "not_an_image") for r in rows if r["status"] == "excluded")


def test_a_flood_of_non_images_is_refused_with_one_line(tmp_path, image_folder):
    """The wrong folder (100 text files next to 3 images) is refused with one line naming it and the counts."""
    from helpers import assert_one_error_line, run_curate

    root = image_folder(counts={"cat": 3})
    for i in range(100):
        (root / "cat" / f"notes{i:03d}.txt").write_text(f"meeting notes {i}\n")
    res = run_curate(["ingest", str(root), "-w", str(tmp_path / "ws"), "-j", "1"], cwd=tmp_path)
    assert res.returncode == 1, res.stderr
    line = assert_one_error_line(res.stderr)
    assert str(root) in line and "100 of 103 inputs failed (not_an_image=100)" in line and "nothing was committed" in line
    assert Workspace(tmp_path / "ws").head() is None


# --------------------------------------------------------------------------------------------- special files, links


def test_fifo_and_socket_in_a_folder_are_rows_not_a_hang(tmp_path, image_folder):
    """A named pipe blocks open() until a writer comes: ingest must finish (the timeout turns a hang into a
    failure) and give the pipe and the socket a row each with reason not_a_file."""
    import os
    import socket

    from helpers import run_curate

    root = image_folder(counts={"cat": 3, "dog": 2})
    os.mkfifo(root / "cat" / "pipe.png")
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(str(root / "dog" / "sock.png"))
    try:
        res = run_curate(["ingest", str(root), "-w", str(tmp_path / "ws"), "-j", "2", "--json"], cwd=tmp_path, timeout=120)
    finally:
        sock.close()
    assert res.returncode == 0, res.stderr
    rows = rows_by_source(Workspace(tmp_path / "ws"))
    assert len(rows) == 7 and sum(r["status"] == "ok" for r in rows.values()) == 5
    for name, kind in (("cat/pipe.png", "a named pipe"), ("dog/sock.png", "a socket")):
        r = rows[str(root / name)]
        assert (r["status"], r["reason"], r["error"], r["label"]) == ("excluded", "not_a_file", f"is {kind}", name[:3])


def test_a_named_pipe_as_the_source_is_one_line_not_a_hang(tmp_path):
    """``curate ingest list.csv`` where list.csv is a named pipe blocked on the first read of the columns; ingest,
    predict's and crawl's readers now refuse it by its type (a separate process: a regression fails on the timeout)."""
    import os

    from helpers import assert_one_error_line, run_curate

    os.mkfifo(tmp_path / "list.csv")
    for args in (["ingest", "list.csv", "-w", "ws"], ["crawl", "list.csv", "-w", "ws"]):
        res = run_curate(args, cwd=tmp_path, timeout=60)
        assert res.returncode == 1, res.stderr
        assert "list.csv: is a named pipe, not a file" in assert_one_error_line(res.stderr)


def test_a_file_name_that_is_not_utf8_is_a_row_with_its_reason(tmp_path, image_folder):
    """POSIX names are bytes; Arrow strings are UTF-8. The fingerprint and the item table crashed with an internal
    UnicodeEncodeError; now the file is a row with reason bad_name and a readable spelling of its name, and the rest
    of the folder is ingested (twice: the fingerprint of the second run hashes the same raw name)."""
    import os

    root = image_folder(counts={"cat": 3, "dog": 2})
    os.rename(root / "dog" / "dog_000.png", os.path.join(os.fsencode(root / "dog"), b"caf\xe9.png"))
    from typer.testing import CliRunner

    from curate.cli import app

    for _ in range(2):
        res = CliRunner().invoke(app, ["ingest", str(root), "-w", str(tmp_path / "ws"), "-j", "1", "--json"])
        assert res.exit_code == 0, res.output
    rows = rows_by_source(Workspace(tmp_path / "ws"))
    bad = rows[str(root / "dog") + "/caf\\xe9.png"]
    assert (bad["status"], bad["reason"], bad["label"]) == ("excluded", "bad_name", "dog")
    assert sum(r["status"] == "ok" for r in rows.values()) == 4


def test_read_path_refuses_devices_and_directories(tmp_path):
    from curate.sources.readfile import read_path as _read_path

    assert _read_path("/dev/zero", 1000) == (None, "not_a_file", "is a character device")
    assert _read_path(str(tmp_path), 1000) == (None, "not_an_image", "is a directory")
    assert _read_path(str(tmp_path / "nope"), 1000) == (None, "missing", "no such file")
    (tmp_path / "f").write_bytes(b"abc")
    assert _read_path(str(tmp_path / "f"), 1000) == (b"abc", None, None)
    assert _read_path(str(tmp_path / "f"), 2)[1] == "too_large"


def test_links_outside_the_folder_need_follow_links(tmp_path, make_png, workspace, ingest):
    """A link inside the folder is read; one that leaves it is a row (outside_source) unless --follow-links."""
    import os

    outside = make_png(tmp_path / "elsewhere" / "secret.png", 1)
    inside = make_png(tmp_path / "in" / "cat" / "a.png", 2)
    make_png(tmp_path / "in" / "dog" / "b.png", 3)
    os.symlink(outside, tmp_path / "in" / "cat" / "out.png")
    os.symlink("../cat/a.png", tmp_path / "in" / "dog" / "same.png")  # relative, stays inside
    os.symlink("/dev/zero", tmp_path / "in" / "dog" / "zero.png")
    os.symlink(tmp_path / "elsewhere", tmp_path / "in" / "linked")  # a folder link: not descended, noted
    res = ingest(workspace, tmp_path / "in", format="folder")
    rows = rows_by_source(workspace)
    for name, target in (("cat/out.png", outside), ("dog/zero.png", "/dev/zero")):
        r = rows[str(tmp_path / "in" / name)]
        assert (r["status"], r["reason"]) == ("excluded", "outside_source") and str(target) in r["error"]
    a = rows[str(inside)]
    assert a["status"] == "ok" and a["extra_sources"] == [str(tmp_path / "in" / "dog" / "same.png")]
    assert a["extra_labels"] == ["dog"]
    assert res["stats"]["notes"] == {"skipped_linked_folders": 1}
    # --follow-links reads them: the image is ingested, /dev/zero is refused as a device, not read forever
    ws2 = Workspace(tmp_path / "ws2")
    ingest(ws2, tmp_path / "in", format="folder", follow_links=True)
    rows = rows_by_source(ws2)
    assert rows[str(tmp_path / "in" / "cat" / "out.png")]["sample_id"] == sha(outside.read_bytes())
    assert rows[str(tmp_path / "in" / "dog" / "zero.png")]["reason"] == "not_a_file"


def test_cli_follow_links_option(tmp_path, make_png):
    import os

    from typer.testing import CliRunner

    from curate.cli import app

    make_png(tmp_path / "in" / "cat" / "a.png", 1)
    os.symlink(make_png(tmp_path / "elsewhere" / "b.png", 2), tmp_path / "in" / "cat" / "b.png")
    for flag, want in (([], {"ingest:outside_source": 1}), (["--follow-links"], {})):
        ws = tmp_path / f"ws{len(flag)}"
        res = CliRunner().invoke(app, ["ingest", str(tmp_path / "in"), "-w", str(ws), "-j", "1", "--json", *flag])
        assert res.exit_code == 0, res.output
        assert json.loads(res.stdout)["stats"]["summary"]["excluded_by_reason"] == want


# --------------------------------------------------------------------------------------------- classes, EXIF


def test_classes_excludes_other_labels(image_folder, workspace, ingest):
    root = image_folder(counts={"cat": 5, "dog": 3, "bird": 2})
    res = ingest(workspace, root, classes=("cat", "dog"))
    rows = workspace.samples().to_pylist()
    birds = [r for r in rows if r["label"] == "bird"]
    assert len(birds) == 2
    assert {(r["status"], r["excluded_by"], r["reason"]) for r in birds} == {("excluded", "ingest", "unknown_label")}
    assert res["stats"]["summary"]["per_class"] == {"cat": 5, "dog": 3}
    assert res["stats"]["summary"]["excluded_by_reason"] == {"ingest:unknown_label": 2}


def test_exif_orientation_6(tmp_path, make_jpeg, workspace, ingest):
    make_jpeg(tmp_path / "in" / "cat" / "rot.jpg", 1, (40, 20), exif_orientation=6)
    make_jpeg(tmp_path / "in" / "cat" / "plain.jpg", 2, (40, 20))
    ingest(workspace, tmp_path / "in")
    rows = {name_of(s): r for s, r in rows_by_source(workspace).items()}
    assert (rows["rot.jpg"]["width"], rows["rot.jpg"]["height"], rows["rot.jpg"]["exif_orientation"]) == (20, 40, 6)
    assert (rows["plain.jpg"]["width"], rows["plain.jpg"]["height"], rows["plain.jpg"]["exif_orientation"]) == (40, 20, 1)
    assert rows["rot.jpg"]["format"] == "JPEG"


# --------------------------------------------------------------------------------------------- adding data, duplicates


def test_ingest_more_later_adds_a_child_version(image_folder, workspace, ingest):
    a = image_folder(counts={"cat": 3}, name="a")
    b = image_folder(counts={"dog": 2}, name="b", seed0=50)
    v1 = ingest(workspace, a)["version"]
    t1 = workspace.samples(v1)
    res = ingest(workspace, b)
    assert res["parent"] == v1 and res["version"] == "000002-ingest"
    assert workspace.info(res["version"])["parent"] == v1 and workspace.lineage(res["version"]) == [v1, res["version"]]
    t2 = workspace.samples()
    assert t2.num_rows == 5
    assert res["stats"]["summary"]["per_class"] == {"cat": 3, "dog": 2}
    assert t2.slice(0, 3).select(t1.column_names).to_pylist() == t1.to_pylist()  # old rows untouched, first
    assert workspace.samples(v1).num_rows == 3  # the old version is immutable


def test_same_bytes_twice_is_one_sample_with_extra_sources(tmp_path, make_png, workspace, ingest):
    make_png(tmp_path / "a" / "cat" / "x.png", 7)
    make_png(tmp_path / "a" / "cat" / "y.png", 8)
    make_png(tmp_path / "a" / "cat" / "x_copy.png", 7)  # same bytes in the same run
    ingest(workspace, tmp_path / "a")
    t = workspace.samples()
    assert t.num_rows == 2
    row = rows_by_source(workspace)[str(tmp_path / "a" / "cat" / "x.png")]
    assert row["extra_sources"] == [str(tmp_path / "a" / "cat" / "x_copy.png")] and row["extra_labels"] == ["cat"]
    # a later source with the same bytes under another label
    make_png(tmp_path / "b" / "tiger" / "z.png", 7)
    make_png(tmp_path / "b" / "tiger" / "new.png", 9)
    res = ingest(workspace, tmp_path / "b")
    assert res["stats"]["new_samples"] == 1 and res["stats"]["duplicate_bytes"] == 1
    assert workspace.samples().num_rows == 3
    row = rows_by_source(workspace)[str(tmp_path / "a" / "cat" / "x.png")]
    assert row["sample_id"] == sha((tmp_path / "a" / "cat" / "x.png").read_bytes())
    assert row["label"] == "cat"
    assert row["extra_sources"] == [str(tmp_path / "a" / "cat" / "x_copy.png"), str(tmp_path / "b" / "tiger" / "z.png")]
    assert row["extra_labels"] == ["cat", "tiger"]


def test_reingesting_the_same_folder_adds_nothing(tmp_path, image_folder, make_png, workspace, ingest):
    root = image_folder(counts={"cat": 3, "dog": 2})
    make_png(root / "dog" / "dup_of_cat.png", 0)  # same bytes as cat_000 (seed 0)
    (root / "dog" / "junk.png").write_text("not an image")
    ingest(workspace, root, max_error_fraction=0.5)
    t1 = workspace.samples()
    assert t1.num_rows == 6  # 5 distinct images + 1 excluded junk
    res = ingest(workspace, root, max_error_fraction=0.5)
    assert res["stats"]["new_samples"] == 0 and res["stats"]["duplicate_bytes"] == 7 and res["stats"]["bytes_stored"] == 0
    assert res["stats"]["packs_written"] == 0
    t2 = workspace.samples()
    assert comparable(t2) == comparable(t1)  # no new rows, extra_sources not doubled
    row = rows_by_source(workspace)[str(root / "cat" / "cat_000.png")]
    assert row["extra_sources"] == [str(root / "dog" / "dup_of_cat.png")] and row["extra_labels"] == ["dog"]
    ingest(workspace, root, max_error_fraction=0.5)
    assert comparable(workspace.samples()) == comparable(t1)


# --------------------------------------------------------------------------------------------- determinism


def test_workers_1_and_2_give_identical_tables(tmp_path, image_folder, make_png, ingest):
    root = image_folder(counts={"a": 12, "b": 9, "c": 5})
    make_png(root / "c" / "dup.png", 0)
    (root / "b" / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    w1, w2 = Workspace(tmp_path / "w1"), Workspace(tmp_path / "w2")
    ingest(w1, root, workers=1, batch_size=4)
    ingest(w2, root, workers=2, batch_size=4)
    assert w1.samples().num_rows == 27
    assert_same_samples(w1, w2)


def test_two_fresh_workspaces_give_identical_tables_and_packs(tmp_path, image_folder, ingest):
    root = image_folder(counts={"cat": 7, "dog": 4})
    w1, w2 = Workspace(tmp_path / "w1"), Workspace(tmp_path / "w2")
    ingest(w1, root)
    ingest(w2, root)
    assert w1.samples().num_rows == 11
    assert_same_samples(w1, w2)
    # the packs hold the same rows in the same order
    for p1, p2 in zip(w1.blobs.packs(), w2.blobs.packs(), strict=True):
        assert pq.read_table(w1.blobs.path(p1)).equals(pq.read_table(w2.blobs.path(p2)))


# --------------------------------------------------------------------------------------------- the CLI


def test_cli_ingest_classes_and_json(tmp_path, image_folder):
    from typer.testing import CliRunner

    from curate.cli import app

    root = image_folder(counts={"cat": 5, "dog": 3, "bird": 2})
    ws = tmp_path / "ws"
    res = CliRunner().invoke(app, ["ingest", str(root), "-w", str(ws), "--classes", "cat,dog", "-j", "1", "--json"])
    assert res.exit_code == 0, res.output
    out = json.loads(res.stdout)
    assert out["stats"]["summary"]["per_class"] == {"cat": 5, "dog": 3}
    assert out["stats"]["summary"]["excluded_by_reason"] == {"ingest:unknown_label": 2}
    assert Workspace(ws).info(out["version"])["config"]["classes"] == ["cat", "dog"]


def test_cli_ingest_errors_are_one_line_and_commit_nothing(tmp_path, image_folder):
    from typer.testing import CliRunner

    from curate.cli import app

    root = image_folder(counts={"cat": 1})
    (root / "cat" / "bad.png").write_text("x")
    (root / "cat" / "bad2.png").write_text("y")
    ws = tmp_path / "ws"
    runner = CliRunner()
    res = runner.invoke(app, ["ingest", str(root), "-w", str(ws), "-j", "1"])
    assert res.exit_code == 1
    assert "2 of 3 inputs failed" in res.output and "Traceback" not in res.output
    assert Workspace(ws).head() is None
    man = tmp_path / "m.jsonl"
    man.write_text('[{"path": "a.png"}]\n')
    res = runner.invoke(app, ["ingest", str(man), "-w", str(ws), "-j", "1"])
    assert res.exit_code == 1 and f"{man}:1:" in res.output and "Extra data" not in res.output
    res = runner.invoke(app, ["ingest", str(root), "-w", str(ws), "--format", "rar"])
    assert res.exit_code == 2


def test_same_folder_spelled_differently_is_the_same_place(tmp_path, image_folder, workspace, ingest, monkeypatch):
    root = image_folder(counts={"cat": 2, "dog": 1})
    monkeypatch.chdir(root.parent)
    ingest(workspace, "images")
    t1 = workspace.samples()
    assert all(Path(s).is_absolute() for s in t1.column("source").to_pylist())  # a relative path means nothing later
    monkeypatch.chdir(root / "cat")
    ingest(workspace, "../../images/")
    ingest(workspace, str(root))
    assert comparable(workspace.samples()) == comparable(t1)


def test_pack_writer_add_many_writes_the_packs_add_writes(tmp_path, monkeypatch):
    """Ingest's batched pack writes give the same pack names, rows, row groups and bytes as one ``add`` per blob."""

    import pyarrow as pa
    import pyarrow.parquet as pq

    from curate import blobs
    from curate.blobs import PackWriter

    monkeypatch.setattr(blobs, "ROW_GROUP_ROWS", 4)
    monkeypatch.setattr(blobs, "ROW_GROUP_BYTES", 300)  # blob 17 alone is a row group and a pack flush
    rng = np.random.default_rng(0)
    data = [rng.bytes(int(n)) for n in rng.integers(1, 90, size=40)]
    data[17] = rng.bytes(400)
    ids = [hashlib.sha256(d).hexdigest() for d in data]
    one = PackWriter(tmp_path / "one", "t", target_bytes=500)
    names_one = [one.add(i, d) for i, d in zip(ids, data, strict=True)]
    one.close()
    many = PackWriter(tmp_path / "many", "t", target_bytes=500)
    chunked = pa.chunked_array([pa.array(data[5:23], pa.binary()), pa.array(data[23:], pa.binary())])
    names_many = [many.add(i, d) for i, d in zip(ids[:5], data[:5], strict=True)]  # add and add_many mixed
    names_many += many.add_many(ids[5:], chunked)
    many.close()
    assert names_many == names_one and len(set(names_one)) > 3 and one.written == many.written
    for name in one.written:
        a, b = pq.ParquetFile(tmp_path / "one" / f"{name}.parquet"), pq.ParquetFile(tmp_path / "many" / f"{name}.parquet")
        assert a.read().equals(b.read())
        assert [a.metadata.row_group(g).num_rows for g in range(a.num_row_groups)] == [
            b.metadata.row_group(g).num_rows for g in range(b.num_row_groups)
        ]
