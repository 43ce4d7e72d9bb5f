"""The workspace itself on a bucket (``-w s3://bkt/ws``) against moto's S3 server: the same versions as a local
workspace, and the commit protocol without rename or lock (``curate.bucketws``).

Ground truth: a local workspace running the same commands on the same images (rows and export bytes must be
equal), the order of commits we force (the racing writer), and the objects on the bucket after a failed upload.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from helpers import assert_one_error_line, sha256_bytes, tree_digest
from test_buckets import BUCKET, fail_line, invoke, ok_json, s3  # noqa: F401 - s3 is the moto fixture

from curate.workspace import Workspace

pytest.importorskip("s3fs", reason="the [s3] extra is not installed")

URL = f"s3://{BUCKET}/ws"


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The bucket workspace's local cache, per test (never the developer's ~/.cache)."""
    monkeypatch.setenv("CURATE_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path / "cache"


@pytest.fixture
def src(image_folder) -> Path:  # noqa: ANN001
    """cat 6, dog 5, fox 4 distinct 32x32 PNGs, plus dog/dup.png: cat_000 with one pixel changed (a near duplicate)."""
    from conftest import image_array
    from PIL import Image

    root = image_folder({"cat": 6, "dog": 5, "fox": 4}, size=(32, 32))
    arr = image_array(0, (32, 32))
    arr[0, 0, 0] ^= 1
    Image.fromarray(arr).save(root / "dog" / "dup.png")
    return root


def rows(ws: Workspace) -> list[dict]:
    return sorted(ws.samples().to_pylist(), key=lambda r: r["sample_id"])


def chain(ws: str, src: Path, out: str) -> list[str]:
    steps = [ok_json("ingest", src, "-w", ws), ok_json("dedupe", "-w", ws), ok_json("split", "-w", ws, "--ratios", "60:20:20")]
    ok_json("export", "-w", ws, "--out", out, "--min-shards", 2)
    return [s["version"] for s in steps]


def bucket_keys(fs, prefix: str) -> list[str]:  # noqa: ANN001
    fs.invalidate_cache()
    return sorted(k.split(f"{prefix}/", 1)[1] for k in fs.find(f"{BUCKET}/{prefix}"))


def test_chain_on_bucket_gives_the_rows_and_export_of_a_local_workspace(s3, cache, src, tmp_path):  # noqa: F811
    local = chain(str(tmp_path / "ws"), src, str(tmp_path / "exp"))
    remote = chain(URL, src, f"s3://{BUCKET}/exp")
    assert remote == local == ["000001-ingest", "000002-dedupe", "000003-split"]
    got = rows(Workspace(URL))
    assert got == rows(Workspace(tmp_path / "ws"))
    assert sum(r["status"] != "ok" for r in got) == 1  # the planted near duplicate
    assert {r["split"] for r in got if r["status"] == "ok"} == {"train", "val", "test"}
    s3.invalidate_cache()
    exported = {k.split("/exp/", 1)[1]: sha256_bytes(s3.cat_file(k)) for k in s3.find(f"{BUCKET}/exp")}
    assert exported == tree_digest(tmp_path / "exp")
    # What is on the bucket: HEAD, packs, one prefix per version, each with its version.json.
    keys = bucket_keys(s3, "ws")
    head = json.loads(s3.cat_file(f"{BUCKET}/ws/HEAD"))
    assert head["head"] == "000003-split" and sorted(head["versions"]) == local
    assert all(f"versions/{p}/version.json" in keys for p in head["versions"].values())
    assert any(k.startswith("blobs/pack-") for k in keys)
    # versions against the same URL, from a fresh cache (another machine): log, show, checkout, the default export.
    log = ok_json("log", "-w", URL)
    assert log["head"] == "000003-split" and [v["id"] for v in log["versions"]] == local[::-1]
    assert ok_json("checkout", "1", "-w", URL)["head"] == "000001-ingest"
    assert json.loads(s3.cat_file(f"{BUCKET}/ws/HEAD"))["head"] == "000001-ingest"
    out = ok_json("export", "-w", URL, "--version", "3")
    assert out["out"] == f"{URL}/exports/000003-split"
    assert "exports/000003-split/dataset.json" in bucket_keys(s3, "ws")


def test_two_writers_on_one_parent_one_wins_the_other_exits_1(s3, cache, src, monkeypatch):  # noqa: F811
    """Writer B (split) reads HEAD = ingest; writer A (dedupe) commits while B runs; B's commit must fail."""
    import curate.bucketws as bws

    ok_json("ingest", src, "-w", URL)
    publish = bws.BucketWorkspace._publish
    fired: list[dict] = []

    def racing_publish(self, tmp, vid, table, *, move_head):  # noqa: ANN001, ANN202
        if not fired:  # the other writer commits between B's read of HEAD and B's upload
            fired.append({})
            fired[0] = ok_json("dedupe", "-w", URL)
        return publish(self, tmp, vid, table, move_head=move_head)

    monkeypatch.setattr(bws.BucketWorkspace, "_publish", racing_publish)
    res = invoke("split", "-w", URL)
    assert res.exit_code == 1, (res.stdout, res.stderr)
    line = assert_one_error_line(res.stderr)
    assert line == f"error: {URL}: workspace moved on (HEAD is now 000002-dedupe): rerun"
    assert fired[0]["version"] == "000002-dedupe"
    head = json.loads(s3.cat_file(f"{BUCKET}/ws/HEAD"))
    assert head["head"] == "000002-dedupe" and sorted(head["versions"]) == ["000001-ingest", "000002-dedupe"]
    # The loser removed its prefix: only the two committed versions are on the bucket.
    prefixes = {k.split("/")[1] for k in bucket_keys(s3, "ws") if k.startswith("versions/")}
    assert prefixes == set(head["versions"].values())
    # Rerun: B now builds on the winner.
    monkeypatch.setattr(bws.BucketWorkspace, "_publish", publish)
    again = ok_json("split", "-w", URL)
    assert again["version"] == "000003-split" and again["parent"] == "000002-dedupe"


def test_first_commit_race_uses_if_none_match(s3, cache, src, monkeypatch):  # noqa: F811
    import curate.bucketws as bws

    publish = bws.BucketWorkspace._publish
    fired: list[str] = []

    def racing_publish(self, tmp, vid, table, *, move_head):  # noqa: ANN001, ANN202
        if not fired:
            fired.append("racing")
            ok_json("ingest", src / "cat", "-w", URL)
        return publish(self, tmp, vid, table, move_head=move_head)

    monkeypatch.setattr(bws.BucketWorkspace, "_publish", racing_publish)
    line = fail_line("ingest", src, "-w", URL)
    assert line == f"error: {URL}: workspace moved on (HEAD is now 000001-ingest): rerun"
    assert json.loads(s3.cat_file(f"{BUCKET}/ws/HEAD"))["versions"].keys() == {"000001-ingest"}


def test_upload_cut_before_version_json_leaves_head_and_gc_removes_the_orphan(s3, cache, src, monkeypatch):  # noqa: F811
    import s3fs

    ok_json("ingest", src, "-w", URL)
    put = s3fs.S3FileSystem._put_file

    async def failing_put(self, lpath, rpath, *a, **kw):  # noqa: ANN001, ANN002, ANN003, ANN202
        if rpath.endswith("/version.json"):
            raise ConnectionResetError("connection reset by peer")
        return await put(self, lpath, rpath, *a, **kw)

    monkeypatch.setattr(s3fs.S3FileSystem, "_put_file", failing_put)
    s3fs.S3FileSystem.clear_instance_cache()  # an instance binds its sync methods when it is made
    line = fail_line("dedupe", "-w", URL)
    assert URL in line and "version.json" in line and "cannot upload" in line
    head = json.loads(s3.cat_file(f"{BUCKET}/ws/HEAD"))
    assert head["head"] == "000001-ingest" and list(head["versions"]) == ["000001-ingest"]
    orphans = {k.split("/")[1] for k in bucket_keys(s3, "ws") if k.startswith("versions/")} - set(head["versions"].values())
    assert len(orphans) == 1 and orphans.pop().startswith("000002-dedupe-")
    monkeypatch.setattr(s3fs.S3FileSystem, "_put_file", put)
    s3fs.S3FileSystem.clear_instance_cache()
    # Readers never see the orphan; the next command works.
    assert [v["id"] for v in ok_json("log", "-w", URL)["versions"]] == ["000001-ingest"]
    assert ok_json("dedupe", "-w", URL)["version"] == "000002-dedupe"
    # gc: within the grace period nothing goes (it could be a writer's upload); after it, the orphan goes.
    assert ok_json("gc", "-w", URL)["removed_dirs"] == []
    gone = ok_json("gc", "-w", URL, "--grace", 0)
    assert len(gone["removed_dirs"]) == 1 and gone["removed_packs"] == []
    head = json.loads(s3.cat_file(f"{BUCKET}/ws/HEAD"))
    assert {k.split("/")[1] for k in bucket_keys(s3, "ws") if k.startswith("versions/")} == set(head["versions"].values())
    assert len(rows(Workspace(URL))) == 16


def test_bad_bucket_workspaces_are_one_line(s3, cache, src, monkeypatch):  # noqa: F811
    import s3fs

    line = fail_line("ingest", src, "-w", "s3://no-such-bucket/ws")
    assert "s3://no-such-bucket/ws" in line and "bucket does not exist" in line
    line = fail_line("log", "-w", "s3://no-such-bucket/ws")
    assert "s3://no-such-bucket/ws" in line
    line = fail_line("log", "-w", URL)
    assert URL in line and "no versions" in line
    line = fail_line("log", "-w", "gs://b/ws", code=2)
    assert "gs://b/ws" in line and "not supported" in line
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    s3fs.S3FileSystem.clear_instance_cache()
    res = invoke("ingest", src, "-w", URL)
    assert res.exit_code == 1, res.stderr
    line = assert_one_error_line(res.stderr)
    assert URL in line and "credentials" in line and "AWS_ACCESS_KEY_ID" in res.stderr


def test_a_store_that_ignores_conditional_writes_is_refused(s3, cache, src, monkeypatch):  # noqa: F811
    """An S3-compatible store that drops If-Match/If-None-Match would let two writers overwrite each other's HEAD."""
    import s3fs

    import curate.bucketws as bws

    call = s3fs.S3FileSystem._call_s3

    async def ignoring(self, method, *a, **kw):  # noqa: ANN001, ANN002, ANN003, ANN202
        kw.pop("IfMatch", None), kw.pop("IfNoneMatch", None)
        return await call(self, method, *a, **kw)

    from fsspec.asyn import sync_wrapper

    monkeypatch.setattr(s3fs.S3FileSystem, "_call_s3", ignoring)
    monkeypatch.setattr(s3fs.S3FileSystem, "call_s3", sync_wrapper(ignoring))  # the sync one wraps the original
    monkeypatch.setattr(bws, "_PROBED", set())
    s3fs.S3FileSystem.clear_instance_cache()
    line = fail_line("ingest", src, "-w", URL)
    assert URL in line and "ignores conditional writes" in line
    s3.invalidate_cache()
    assert not s3.exists(f"{BUCKET}/ws/HEAD") and not s3.exists(f"{BUCKET}/ws/.curate-probe")


def test_pipeline_file_with_a_bucket_workspace_reruns_cached(s3, cache, src, tmp_path):  # noqa: F811
    pipe = tmp_path / "p.toml"
    pipe.write_text(
        f'[pipeline]\nname = "b"\nworkspace = "{URL}"\n\n[[step]]\nstage = "ingest"\nsource = "{src}"\n\n'
        '[[step]]\nstage = "split"\n\n[[step]]\nstage = "export"\nformats = ["parquet"]\n'
    )
    first = ok_json("run", pipe, "--workers", 1)
    assert [s["status"] for s in first["steps"]] == ["run", "run", "run"] and first["workspace"] == URL
    again = ok_json("run", pipe, "--workers", 1)
    assert [s["status"] for s in again["steps"]] == ["cached", "cached", "cached"]
    card = json.loads(s3.cat_file(f"{BUCKET}/ws/exports/000002-split/dataset.json"))
    assert card["version"] == "000002-split"


def test_train_on_a_bucket_workspace_reads_a_local_export_and_keeps_the_run_in_the_cache(s3, cache, src):  # noqa: F811
    ok_json("ingest", src, "-w", URL)
    ok_json("split", "-w", URL, "--ratios", "60:20:20")
    ok_json("train", "-w", URL, "--epochs", 1, "--arch", "linear", "--device", "cpu", "--no-amp")
    runs = [p.parent.relative_to(cache).parts for p in cache.rglob("metrics.json")]
    assert len(runs) == 1 and runs[0][0] == "buckets" and runs[0][2:] == ("models", "000002-split-linear")
    exported = [p.parent.relative_to(cache).parts[2:] for p in cache.rglob("dataset.json")]
    assert exported == [("exports", "000002-split")]  # shards for training are local: not on the bucket
    assert not any(k.startswith(("models/", "exports/")) for k in bucket_keys(s3, "ws"))


def test_bucket_workspace_with_the_ray_executor_matches_local(s3, cache, src, tmp_path):  # noqa: F811
    """``--executor ray`` on a bucket workspace: the Ray workers read the packs from the cache folder (one machine
    here; README "Scaling out" says a cluster needs that folder shared) and commit the rows the local executor does."""
    pytest.importorskip("ray")
    from helpers import clean_env, run_curate

    ok_json("ingest", src, "-w", tmp_path / "ws")
    ok_json("dedupe", "-w", tmp_path / "ws")
    env = {k: v for k, v in clean_env(CURATE_CACHE_DIR=str(cache)).items() if not k.startswith("RAY_")}
    for step in (["ingest", str(src)], ["dedupe"]):
        res = run_curate(["--executor", "ray", *step, "-w", URL, "--json"], cwd=tmp_path, env=env, timeout=300)
        assert res.returncode == 0, res.stderr[-2000:]
    assert rows(Workspace(URL)) == rows(Workspace(tmp_path / "ws"))
    assert sum(r["status"] != "ok" for r in rows(Workspace(URL))) == 1  # the planted near duplicate
