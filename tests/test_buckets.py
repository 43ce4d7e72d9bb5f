"""Sources and exports on a bucket, against a real S3 API: moto's server mode on 127.0.0.1, started per test.

Credentials and the endpoint reach curate only through the standard AWS variables (set with monkeypatch): curate
has no settings of its own for them. Ground truth is the bytes we upload: classes, counts, sha256 of every image,
the reason of every bad one, and a local export of the same version, byte for byte.
"""

from __future__ import annotations

import io
import json
import logging
import tarfile
import urllib.request
from pathlib import Path

import pytest
from helpers import add_bad_files, assert_one_error_line, folder_truth, sha256_bytes, tree_digest
from typer.testing import CliRunner

from curate.cli import app
from curate.workspace import Workspace

pytest.importorskip("s3fs", reason="the [s3] extra is not installed")
pytest.importorskip("moto.server", reason="the [s3] extra is not installed")

BUCKET = "bkt"


def invoke(*args: object):  # noqa: ANN201
    return CliRunner().invoke(app, [str(a) for a in args])


def ok_json(*args: object) -> dict:
    res = invoke(*args, "--json")
    assert res.exit_code == 0, (res.stdout, res.stderr)
    return json.loads(res.stdout)


def fail_line(*args: object, code: int = 1) -> str:
    res = invoke(*args)
    assert res.exit_code == code, (res.exit_code, res.stdout, res.stderr)
    return assert_one_error_line(res.stderr)


@pytest.fixture
def s3(monkeypatch, in_empty_tmp):  # noqa: ANN001, ANN201 - yields an s3fs.S3FileSystem on the moto server
    """A moto S3 server on 127.0.0.1 with bucket ``bkt``; the AWS variables point at it with fake credentials."""
    import s3fs
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # one log line per request otherwise
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    # moto keeps its buckets per process, not per server: start each test from an empty store.
    urllib.request.urlopen(urllib.request.Request(f"http://{host}:{port}/moto-api/reset", method="POST"), timeout=10).close()
    empty = in_empty_tmp / "empty-aws-file"
    empty.write_text("")
    for key in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN", "HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://{host}:{port}")
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(empty))  # never the developer's own ~/.aws
    monkeypatch.setenv("AWS_CONFIG_FILE", str(empty))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")  # no credential lookup at 169.254.169.254
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    s3fs.S3FileSystem.clear_instance_cache()  # an instance holds the credentials it was made with
    fs = s3fs.S3FileSystem()
    fs.mkdir(BUCKET)
    try:
        yield fs
    finally:
        s3fs.S3FileSystem.clear_instance_cache()
        server.stop()


def upload_tree(fs, root: Path, prefix: str) -> None:  # noqa: ANN001
    for p in sorted(root.rglob("*")):
        if p.is_file():
            fs.pipe(f"{prefix}/{p.relative_to(root).as_posix()}", p.read_bytes())


@pytest.fixture
def bucket_folder(s3, image_folder) -> tuple[dict, dict[str, str]]:  # noqa: ANN001
    """``s3://bkt/imgs/``: cat 3, dog 2 (distinct PNGs), a truncated PNG, a text file and a hidden file.

    Returns (folder_truth of the local copy, ``url -> reason`` of the bad files).
    """
    root = image_folder({"cat": 3, "dog": 2}, name="imgs")
    bad = add_bad_files(root)
    (root / "cat" / ".DS_Store").write_bytes(b"junk")
    upload_tree(s3, root, f"{BUCKET}/imgs")
    truth = {sha: v for sha, v in folder_truth(root).items() if v["path"] not in bad}
    reasons = {f"s3://{BUCKET}/imgs/{Path(p).relative_to(root).as_posix()}": r for p, r in bad.items()}
    return truth, reasons


def assert_matches_truth(ws: Workspace, truth: dict, reasons: dict[str, str], url_of: dict[str, str]) -> None:
    """Included rows are exactly ``truth`` (sha256 -> label, stored bytes); excluded rows carry ``reasons``."""
    rows = ws.samples().to_pylist()
    ok = {r["sample_id"]: r for r in rows if r["status"] == "ok"}
    assert {sid: r["label"] for sid, r in ok.items()} == {sha: v["label"] for sha, v in truth.items()}
    assert {sid: r["source"] for sid, r in ok.items()} == url_of
    got = ws.blobs.get_many(list(ok), [ok[s]["pack"] for s in ok])
    assert {sid: sha256_bytes(got[sid]) for sid in ok} == {sid: sid for sid in ok}
    assert {r["source"]: r["reason"] for r in rows if r["status"] != "ok"} == reasons


# --------------------------------------------------------------------------------------------- sources


def test_ingest_folder_prefix_in_worker_processes(s3, bucket_folder, tmp_path):
    truth, reasons = bucket_folder
    res = ok_json("ingest", f"s3://{BUCKET}/imgs/", "-w", tmp_path / "ws", "-j", 2)
    assert res["stats"]["inputs"] == 5 + 2
    assert res["stats"]["notes"] == {"skipped_hidden": 1}
    url_of = {sha: f"s3://{BUCKET}/imgs/{Path(v['path']).relative_to(tmp_path / 'imgs').as_posix()}" for sha, v in truth.items()}
    assert_matches_truth(Workspace(tmp_path / "ws"), truth, reasons, url_of)
    # The same prefix without the slash is the same source: nothing new, no row recorded twice.
    again = ok_json("ingest", f"s3://{BUCKET}/imgs", "-w", tmp_path / "ws")
    assert again["stats"]["new_samples"] == 0


def test_ingest_manifest_on_bucket(s3, image_folder, tmp_path):
    root = image_folder({"cat": 2, "dog": 1}, name="imgs")
    upload_tree(s3, root / "cat", f"{BUCKET}/m/imgs/cat")  # next to the manifest
    s3.mkdir("other")
    upload_tree(s3, root / "dog", "other/dog")  # another bucket, named by a full URL
    lines = [
        "path,label",
        "imgs/cat/cat_000.png,cat",
        "./imgs/cat/../cat/cat_001.png,cat",
        "s3://other/dog/dog_000.png,dog",
        "imgs/cat/nope.png,cat",  # listed, not there
        "/etc/hostname,cat",  # a bucket's manifest must not read local files
        "file:///etc/hostname,cat",
        "../../../escape.png,cat",
    ]
    s3.pipe(f"{BUCKET}/m/list.csv", ("\n".join(lines) + "\n").encode())
    res = ok_json("ingest", f"s3://{BUCKET}/m/list.csv", "-w", tmp_path / "ws", "--max-error-fraction", 1)
    assert res["stats"]["inputs"] == 7
    truth = folder_truth(root)
    url_of = {}
    for sha, v in truth.items():
        rel = Path(v["path"]).relative_to(root).as_posix()
        url_of[sha] = f"s3://{BUCKET}/m/imgs/{rel}" if rel.startswith("cat") else f"s3://other/{rel}"
    reasons = {
        f"s3://{BUCKET}/m/imgs/cat/nope.png": "missing",
        "/etc/hostname": "outside_source",
        "file:///etc/hostname": "outside_source",
        "../../../escape.png": "outside_source",
    }
    assert_matches_truth(Workspace(tmp_path / "ws"), truth, reasons, url_of)


def test_ingest_tar_gz_on_bucket(s3, image_folder, tmp_path):
    root = image_folder({"cat": 2, "dog": 3}, name="sample")
    bad = add_bad_files(root)
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tf:
        tf.add(root, arcname="sample")  # the usual wrapper folder: labels are the folders under it
    s3.pipe(f"{BUCKET}/arch/x.tar.gz", buf.getvalue())
    ok_json("ingest", f"s3://{BUCKET}/arch/x.tar.gz", "-w", tmp_path / "ws")
    truth = {sha: v for sha, v in folder_truth(root).items() if v["path"] not in bad}
    member = {sha: f"s3://{BUCKET}/arch/x.tar.gz::sample/{Path(v['path']).relative_to(root).as_posix()}" for sha, v in truth.items()}
    reasons = {f"s3://{BUCKET}/arch/x.tar.gz::sample/{Path(p).relative_to(root).as_posix()}": r for p, r in bad.items()}
    assert_matches_truth(Workspace(tmp_path / "ws"), truth, reasons, member)


def test_archive_is_streamed_in_ranged_reads(s3, tmp_path, monkeypatch):
    """A 3 MB archive read with a 256 KB read-ahead: many small ranged GETs, never one for the whole object."""
    import numpy as np
    import s3fs

    import curate.remote

    blob = np.random.default_rng(0).integers(0, 256, 3 << 20, dtype=np.uint8).tobytes()  # incompressible
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tf:
        info = tarfile.TarInfo("cat/noise.png")
        info.size = len(blob)
        tf.addfile(info, io.BytesIO(blob))
    s3.pipe(f"{BUCKET}/big.tar.gz", buf.getvalue())
    monkeypatch.setattr(curate.remote.open_input, "__defaults__", (256 << 10,))
    ranges: list[int] = []
    fetch = s3fs.core.S3File._fetch_range

    def spy(self, start, end):  # noqa: ANN001, ANN202
        ranges.append(end - start)
        return fetch(self, start, end)

    monkeypatch.setattr(s3fs.core.S3File, "_fetch_range", spy)
    res = ok_json("ingest", f"s3://{BUCKET}/big.tar.gz", "-w", tmp_path / "ws", "--max-error-fraction", 1)
    assert res["stats"]["new_excluded_by_reason"] == {"not_an_image": 1}
    # Two passes over > 3 MB in reads of about one block (read-ahead adds what tarfile asked for): never the whole.
    assert len(ranges) >= 2 * 11 and max(ranges) <= 2 * (256 << 10) < len(buf.getvalue()) // 4


def test_key_deleted_after_listing_is_a_missing_row(s3, bucket_folder, tmp_path, monkeypatch):
    from curate.sources.remote import RemoteFolderSource

    truth, reasons = bucket_folder
    gone = f"{BUCKET}/imgs/dog/dog_001.png"
    listed = RemoteFolderSource.items

    def items_then_delete(self):  # noqa: ANN001, ANN202 - the key vanishes between listing and reading
        s3.rm_file(gone)
        yield from listed(self)

    monkeypatch.setattr(RemoteFolderSource, "items", items_then_delete)
    ok_json("ingest", f"s3://{BUCKET}/imgs/", "-w", tmp_path / "ws", "-j", 1)
    rows = {r["source"]: r for r in Workspace(tmp_path / "ws").samples().to_pylist()}
    assert rows[f"s3://{gone}"]["reason"] == "missing"
    assert sum(r["status"] == "ok" for r in rows.values()) == len(truth) - 1
    assert {s: r["reason"] for s, r in rows.items() if r["status"] != "ok"} == {**reasons, f"s3://{gone}": "missing"}


# --------------------------------------------------------------------------------------------- export


def test_export_to_bucket_is_byte_identical_to_local(s3, image_folder, ingest, tmp_path, monkeypatch):
    import s3fs

    ws = Workspace(tmp_path / "ws")
    ingest(ws, image_folder({"cat": 5, "dog": 4}))
    local = ok_json("export", "-w", ws.root, "--out", tmp_path / "local", "--min-shards", 2)
    writes: list[tuple[str, str]] = []
    put, rm_file = s3fs.S3FileSystem._put_file, s3fs.S3FileSystem._rm_file  # the sync methods call these

    async def spy_put(self, lpath, rpath, *a, **kw):  # noqa: ANN001, ANN002, ANN003, ANN202
        writes.append(("put", rpath.rsplit("/exp/v1/", 1)[1]))
        return await put(self, lpath, rpath, *a, **kw)

    async def spy_rm(self, path, *a, **kw):  # noqa: ANN001, ANN002, ANN003, ANN202
        writes.append(("rm", path.rsplit("/exp/v1/", 1)[1]))
        return await rm_file(self, path, *a, **kw)

    monkeypatch.setattr(s3fs.S3FileSystem, "_put_file", spy_put)
    monkeypatch.setattr(s3fs.S3FileSystem, "_rm_file", spy_rm)
    s3fs.S3FileSystem.clear_instance_cache()  # an instance binds its sync methods when it is made
    remote = ok_json("export", "-w", ws.root, "--out", f"s3://{BUCKET}/exp/v1", "--min-shards", 2)
    assert writes[-2:] == [("put", "index.json"), ("put", "dataset.json")] and len(writes) == 6  # the card last
    assert remote["out"] == f"s3://{BUCKET}/exp/v1"
    assert remote["shards"] == local["shards"] == 4 and remote["bytes"] == local["bytes"]
    want = tree_digest(tmp_path / "local")
    assert set(want) >= {"dataset.json", "index.json", "parquet/all-000000.parquet", "webdataset/all-000001.tar"}

    def bucket_digest() -> dict[str, str]:
        s3.invalidate_cache()
        return {k.split("/exp/v1/", 1)[1]: sha256_bytes(s3.cat_file(k)) for k in s3.find(f"{BUCKET}/exp/v1")}

    assert bucket_digest() == want
    assert not list((ws.root).glob(".tmp-export-*"))  # staging is cleaned up
    # Re-export with other settings over the old one: one shard per format now, the old ones are gone.
    writes.clear()
    ok_json("export", "-w", ws.root, "--out", f"s3://{BUCKET}/exp/v1", "--min-shards", 1)
    assert writes[0] == ("rm", "dataset.json") and writes[-1] == ("put", "dataset.json")  # old card first, new card last
    ok_json("export", "-w", ws.root, "--out", tmp_path / "local1", "--min-shards", 1)
    assert bucket_digest() == tree_digest(tmp_path / "local1")
    # A prefix holding other objects is never overwritten.
    s3.pipe(f"{BUCKET}/mine/notes.txt", b"keep me")
    line = fail_line("export", "-w", ws.root, "--out", f"s3://{BUCKET}/mine")
    assert f"s3://{BUCKET}/mine" in line and "not a curate export" in line
    assert s3.cat_file(f"{BUCKET}/mine/notes.txt") == b"keep me"


def test_pipeline_from_bucket_to_bucket_reruns_cached_until_a_key_changes(s3, bucket_folder, tmp_path):
    pipe = tmp_path / "p.toml"
    pipe.write_text(
        f'[pipeline]\nname = "b"\nworkspace = "ws"\n\n[[step]]\nstage = "ingest"\nsource = "s3://{BUCKET}/imgs/"\n\n'
        f'[[step]]\nstage = "export"\nformats = ["parquet"]\nout = "s3://{BUCKET}/exp"\n'
    )
    first = ok_json("run", pipe, "--workers", 1)
    assert [s["status"] for s in first["steps"]] == ["run", "run"]
    again = ok_json("run", pipe, "--workers", 1)
    assert [s["status"] for s in again["steps"]] == ["cached", "cached"]
    s3.pipe(f"{BUCKET}/imgs/fox/new.png", s3.cat_file(f"{BUCKET}/imgs/cat/cat_000.png") + b"\0")  # new bytes: a new key
    third = ok_json("run", pipe, "--workers", 1)
    assert [s["status"] for s in third["steps"]] == ["run", "run"]
    card = json.loads(s3.cat_file(f"{BUCKET}/exp/dataset.json"))
    assert card["version"] == third["steps"][1]["version"] and "fox" in card["classes"]


# --------------------------------------------------------------------------------------------- bad input


def test_missing_bucket_is_one_line(s3, image_folder, ingest, tmp_path):
    line = fail_line("ingest", "s3://no-such-bucket/imgs/", "-w", tmp_path / "ws")
    assert "s3://no-such-bucket/imgs/" in line and "bucket does not exist" in line
    line = fail_line("ingest", "s3://no-such-bucket/list.csv", "-w", tmp_path / "ws")
    assert "s3://no-such-bucket/list.csv" in line
    ws = Workspace(tmp_path / "ws2")
    ingest(ws, image_folder({"cat": 2}))
    line = fail_line("export", "-w", ws.root, "--out", "s3://no-such-bucket/exp")
    assert "s3://no-such-bucket/exp" in line and "bucket does not exist" in line


def test_no_credentials_is_one_line(s3, image_folder, ingest, tmp_path, monkeypatch):
    import s3fs

    ws = Workspace(tmp_path / "ws")
    ingest(ws, image_folder({"cat": 2}))
    s3.pipe(f"{BUCKET}/imgs/cat/a.png", b"x")
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    s3fs.S3FileSystem.clear_instance_cache()
    res = invoke("ingest", f"s3://{BUCKET}/imgs/", "-w", ws.root)
    assert res.exit_code == 1, res.stderr
    line = assert_one_error_line(res.stderr)
    assert f"s3://{BUCKET}/imgs/" in line and "credentials" in line
    assert "AWS_ACCESS_KEY_ID" in res.stderr  # the hint says what to set
    line = fail_line("export", "-w", ws.root, "--out", f"s3://{BUCKET}/exp")
    assert f"s3://{BUCKET}/exp" in line and "credentials" in line


def test_workspace_on_a_bucket_without_conditional_writes_is_refused(s3, tmp_path):
    """s3:// workspaces are tests/test_bucket_workspace.py; other protocols are refused without a local folder."""
    for ws in ("gs://b/ws", "az://b/ws"):
        line = fail_line("log", "-w", ws, code=2)
        assert ws in line and "not supported" in line
    assert not (tmp_path / "gs:").exists()
