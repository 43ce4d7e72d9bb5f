"""Workspace: immutable versions, HEAD, resolve, log/show/diff/checkout/samples/gc, the writer lock, and
crash safety (a real ``curate ingest`` process killed with SIGKILL or interrupted with SIGINT mid-work)."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from helpers import (
    add_bad_files,
    assert_one_error_line,
    clean_env,
    curate_exe,
    descendants,
    folder_truth,
    gone,
    manifest_with_splits,
    run_curate,
    tree_digest,
    write_big_folder,
)
from typer.testing import CliRunner

from curate.cli import app
from curate.errors import CurateError, WorkspaceBusy
from curate.schema import exclude
from curate.workspace import Workspace, config_sha256

V1, V2, V3 = "000001-ingest", "000002-ingest", "000003-ingest"


def cli(*args: str) -> object:
    return CliRunner().invoke(app, [str(a) for a in args])


def cli_json(*args: str) -> dict:
    res = CliRunner().invoke(app, [*map(str, args), "--json"])
    assert res.exit_code == 0, (res.stdout, res.stderr)
    return json.loads(res.stdout)


@pytest.fixture
def two_versions(tmp_path, image_folder, workspace, ingest, monkeypatch):
    """v1: cat 5 + dog 3 + 2 bad files (10 rows, 8 ok); v2: v1 plus 2 new birds (12 rows, 10 ok)."""
    monkeypatch.chdir(tmp_path)
    a = image_folder({"cat": 5, "dog": 3}, name="a", seed0=0)
    bad = add_bad_files(a)
    b = image_folder({"bird": 2}, name="b", seed0=100)
    r1 = ingest(workspace, a, max_error_fraction=1.0)
    r2 = ingest(workspace, b)
    assert (r1["version"], r2["version"]) == (V1, V2)
    return {"ws": workspace, "a": a, "b": b, "bad": bad, "truth_a": folder_truth(a), "truth_b": folder_truth(b)}


# ----------------------------------------------------------------------------------------------- layout


def test_commit_writes_an_immutable_version_folder(two_versions):
    ws: Workspace = two_versions["ws"]
    root = ws.root
    assert sorted(p.name for p in (root / "versions").iterdir()) == [V1, V2]
    for vid in (V1, V2):
        files = sorted(str(p.relative_to(root / "versions" / vid)) for p in (root / "versions" / vid).rglob("*") if p.is_file())
        assert files == ["samples/part-00000.parquet", "stats.json", "version.json"]
    assert (root / "HEAD").read_text() == V2 + "\n"
    assert ws.head() == V2
    assert ws.version_ids() == [V1, V2]

    info1, info2 = ws.info(V1), ws.info(V2)
    assert info1["id"] == V1 and info1["parent"] is None and info1["stage"] == "ingest"
    assert info2["id"] == V2 and info2["parent"] == V1
    assert (info1["rows"], info1["included"], info1["excluded"]) == (10, 8, 2)
    assert (info2["rows"], info2["included"], info2["excluded"]) == (12, 10, 2)
    assert info1["config_sha256"] == config_sha256(info1["config"])
    assert info1["config"]["source"] == str(two_versions["a"])

    stats = json.loads((root / "versions" / V1 / "stats.json").read_text())
    assert stats["inputs"] == 10 and stats["new_samples"] == 10
    assert stats["new_excluded_by_reason"] == {"not_an_image": 1, "truncated": 1}
    assert stats["summary"]["per_class"] == {"cat": 5, "dog": 3}

    # The table holds what was given: every file, ids = sha256 of the bytes, the excluded ones with a reason.
    t = ws.samples(V1).to_pylist()
    ok = {r["sample_id"]: r for r in t if r["status"] == "ok"}
    assert ok.keys() == two_versions["truth_a"].keys() - {r["sample_id"] for r in t if r["status"] != "ok"}
    assert {sid: r["label"] for sid, r in ok.items()} == {sid: v["label"] for sid, v in two_versions["truth_a"].items() if sid in ok}
    excluded = {r["source"]: (r["excluded_by"], r["reason"]) for r in t if r["status"] == "excluded"}
    assert excluded == {path: ("ingest", reason) for path, reason in two_versions["bad"].items()}
    # The original bytes are in the blob packs.
    got = ws.blobs.get_many(list(ok), [ok[s]["pack"] for s in ok])
    assert got == {sid: two_versions["truth_a"][sid]["bytes"] for sid in ok}


def test_new_version_leaves_older_ones_untouched(tmp_path, image_folder, workspace, ingest):
    ingest(workspace, image_folder({"cat": 3}, name="a"))
    before = tree_digest(workspace.root / "versions" / V1)
    ingest(workspace, image_folder({"dog": 4}, name="b", seed0=50))
    assert tree_digest(workspace.root / "versions" / V1) == before
    assert workspace.samples(V1).num_rows == 3
    assert workspace.samples(V2).num_rows == 7


def test_failed_commit_leaves_no_version_and_head_unchanged(two_versions, monkeypatch):
    """version.json is written last: a failure before it leaves nothing behind and HEAD where it was."""
    import curate.workspace as wsmod

    ws: Workspace = two_versions["ws"]
    real = wsmod._fsync_write

    def failing(path, data):  # noqa: ANN001, ANN202
        if Path(path).name == "version.json":
            assert (Path(path).parent / "stats.json").exists() and (Path(path).parent / "samples").exists()
            raise OSError("disk full (simulated)")
        return real(path, data)

    monkeypatch.setattr(wsmod, "_fsync_write", failing)
    with ws.writer(), pytest.raises(OSError, match="disk full"):
        ws.commit(stage="review", parent=V2, table=ws.samples(V2), config={}, stats={})
    assert sorted(p.name for p in ws.versions_dir.iterdir()) == [V1, V2]
    assert ws.head() == V2


def test_folder_without_version_json_is_not_a_version(two_versions):
    ws: Workspace = two_versions["ws"]
    (ws.versions_dir / "000003-ingest" / "samples").mkdir(parents=True)
    assert ws.version_ids() == [V1, V2]
    with pytest.raises(CurateError, match="unknown version"):
        ws.resolve("3")


# ----------------------------------------------------------------------------------------------- resolve


def test_resolve_references(two_versions):
    ws: Workspace = two_versions["ws"]
    cases = {
        None: V2,
        "HEAD": V2,
        "HEAD~0": V2,
        "HEAD~1": V1,
        "HEAD^": V1,
        "1": V1,
        "2": V2,
        "000001": V1,
        V1: V1,
        V2: V2,
    }
    for ref, want in cases.items():
        assert ws.resolve(ref) == want, ref
    for ref in ("3", "99", "000009-ingest", "nonsense", "HEAD~2", "HEAD^^"):
        with pytest.raises(CurateError):
            ws.resolve(ref)
    with pytest.raises(CurateError) as exc:
        ws.resolve("HEAD~x")
    assert exc.value.exit_code == 2


def test_resolve_on_empty_workspace(tmp_path):
    ws = Workspace(tmp_path / "empty")
    assert ws.head() is None and ws.version_ids() == []
    with pytest.raises(CurateError, match="no versions yet"):
        ws.resolve()
    with pytest.raises(CurateError, match="no versions yet"):
        ws.resolve("HEAD~1")


# ----------------------------------------------------------------------------------------------- log, show, diff


def test_log_lists_versions_newest_first(two_versions):
    ws: Workspace = two_versions["ws"]
    out = cli_json("log", "-w", ws.root)
    assert out["head"] == V2
    assert [v["id"] for v in out["versions"]] == [V2, V1]
    assert [v["parent"] for v in out["versions"]] == [V1, None]
    assert [(v["included"], v["excluded"]) for v in out["versions"]] == [(10, 2), (8, 2)]
    res = cli("log", "-w", ws.root)
    assert res.exit_code == 0
    assert V1 in res.stdout and V2 in res.stdout


def test_show_counts(two_versions):
    ws: Workspace = two_versions["ws"]
    out = cli_json("show", "-w", ws.root)
    assert out["version"]["id"] == V2
    s = out["summary"]
    assert (s["rows"], s["included"], s["excluded"]) == (12, 10, 2)
    assert s["status"] == {"excluded": 2, "ok": 10}
    assert s["per_class"] == {"bird": 2, "cat": 5, "dog": 3}
    assert s["per_split"] == {"(none)": 10}
    assert s["excluded_by_reason"] == {"ingest:not_an_image": 1, "ingest:truncated": 1}
    old = cli_json("show", "1", "-w", ws.root)
    assert old["version"]["id"] == V1
    assert old["summary"]["per_class"] == {"cat": 5, "dog": 3}
    assert cli_json("show", "HEAD~1", "-w", ws.root) == old
    res = cli("show", "-w", ws.root)
    assert res.exit_code == 0
    for text in ("bird", "cat", "dog", "ingest:truncated", "ingest:not_an_image"):
        assert text in res.stdout


def test_show_counts_per_split(tmp_path, workspace, ingest):
    src, _ = manifest_with_splits(tmp_path / "m", {"train": {"cat": 3, "dog": 2}, "val": {"cat": 1}, "test": {"dog": 2}})
    ingest(workspace, src, assign_split=True)
    s = cli_json("show", "-w", workspace.root)["summary"]
    assert s["per_split"] == {"test": 2, "train": 5, "val": 1}
    assert s["per_split_class"] == {"test": {"dog": 2}, "train": {"cat": 3, "dog": 2}, "val": {"cat": 1}}


def test_diff_counts_changes(two_versions):
    ws: Workspace = two_versions["ws"]
    d = cli_json("diff", "1", "2", "-w", ws.root)
    assert (d["from"], d["to"]) == (V1, V2)
    assert (d["added"], d["removed"], d["newly_excluded"], d["newly_included"]) == (2, 0, {}, 0)
    assert (d["label_changed"], d["split_changed"], d["columns_added"], d["columns_removed"]) == (0, 0, [], [])

    # A hand-made stage: exclude one row, relabel another, move a third into train, add a column.
    t = ws.samples(V2)
    ok_ids = sorted(r["sample_id"] for r in t.to_pylist() if r["status"] == "ok")
    x, y, z = ok_ids[:3]
    ids = t.column("sample_id").to_pylist()
    t = exclude(t, [s == x for s in ids], stage="review", reason="blurry")
    labels = ["relabeled" if s == y else lab for s, lab in zip(ids, t.column("label").to_pylist(), strict=True)]
    t = t.set_column(t.schema.get_field_index("label"), "label", pa.array(labels, pa.string()))
    t = t.set_column(t.schema.get_field_index("split"), "split", pa.array(["train" if s == z else None for s in ids], pa.string()))
    t = t.append_column("blur_score", pa.array([0.5] * len(ids)))
    with ws.writer():
        v3 = ws.commit(stage="review", parent=V2, table=t, config={"k": 1}, stats={})
    assert v3 == "000003-review"
    d = cli_json("diff", "2", "HEAD", "-w", ws.root)
    assert (d["from"], d["to"]) == (V2, v3)
    assert (d["added"], d["removed"], d["newly_excluded"], d["newly_included"]) == (0, 0, {"blurry": 1}, 0)
    assert (d["label_changed"], d["split_changed"], d["columns_added"], d["columns_removed"]) == (1, 1, ["blur_score"], [])
    back = cli_json("diff", "HEAD", "1", "-w", ws.root)
    assert (back["added"], back["removed"], back["newly_included"], back["columns_removed"]) == (0, 2, 1, ["blur_score"])
    res = cli("diff", "1", "-w", ws.root)
    assert res.exit_code == 0 and "+2 rows" in res.stdout


# ----------------------------------------------------------------------------------------------- checkout


def test_checkout_moves_head_and_next_ingest_builds_on_it(two_versions, image_folder, ingest):
    ws: Workspace = two_versions["ws"]
    out = cli_json("checkout", "1", "-w", ws.root)
    assert out == {"head": V1, "previous": V2}
    assert ws.head() == V1 and ws.version_ids() == [V1, V2]  # nothing deleted
    assert cli_json("show", "-w", ws.root)["version"]["id"] == V1

    c = image_folder({"fish": 3}, name="c", seed0=300)
    res = ingest(ws, c)
    assert res["version"] == V3 and res["parent"] == V1
    assert ws.head() == V3 and ws.info(V3)["parent"] == V1
    ids3 = set(ws.samples(V3).column("sample_id").to_pylist())
    ids1 = set(ws.samples(V1).column("sample_id").to_pylist())
    assert ids3 == ids1 | set(folder_truth(c))
    assert not ids3 & set(two_versions["truth_b"])  # v2's birds are not in the new branch
    assert ws.lineage(V3) == [V1, V3]
    res = cli("checkout", "HEAD~1", "-w", ws.root)
    assert res.exit_code == 0 and ws.head() == V1


# ----------------------------------------------------------------------------------------------- samples


@pytest.mark.parametrize("suffix", ["parquet", "csv", "jsonl"])
def test_samples_export_whole_table(two_versions, tmp_path, suffix):
    ws: Workspace = two_versions["ws"]
    out = tmp_path / f"table.{suffix}"
    res = cli_json("samples", "--out", out, "-w", ws.root)
    assert res["version"] == V2 and res["rows"] == 12
    if suffix == "parquet":
        df = pd.read_parquet(out)
    elif suffix == "csv":
        df = pd.read_csv(out, dtype=str, keep_default_na=False)
    else:
        df = pd.read_json(out, lines=True, dtype=False)
    table = ws.samples(V2)
    assert len(df) == 12
    assert sorted(df["sample_id"]) == sorted(table.column("sample_id").to_pylist())
    assert df["status"].value_counts().to_dict() == {"ok": 10, "excluded": 2}
    assert df[df["status"] == "ok"]["label"].value_counts().to_dict() == {"cat": 5, "dog": 3, "bird": 2}
    assert sorted(df[df["status"] == "excluded"]["reason"]) == ["not_an_image", "truncated"]
    assert set(table.column_names) <= set(df.columns)

    old = tmp_path / f"v1.{suffix}"
    assert cli_json("samples", "-o", old, "-v", "1", "-w", ws.root)["rows"] == 10


# ----------------------------------------------------------------------------------------------- gc


def test_gc_removes_only_garbage(two_versions, image_folder, ingest):
    ws: Workspace = two_versions["ws"]
    cli_json("checkout", "1", "-w", ws.root)  # v2's packs stay referenced: v2 still exists
    referenced = set()
    for vid in ws.version_ids():
        referenced |= {p for p in ws.samples(vid).column("pack").to_pylist() if p}
    assert len(referenced) == 2
    blobs = ws.root / "blobs"
    (ws.versions_dir / ".tmp-deadbeef" / "samples").mkdir(parents=True)
    (ws.versions_dir / ".tmp-deadbeef" / "samples" / "part-00000.parquet").write_bytes(b"x" * 100)
    (ws.versions_dir / "000007-ingest").mkdir()  # no version.json: an unfinished commit
    (ws.versions_dir / "000007-ingest" / "stats.json").write_text("{}")
    (blobs / ".tmp-pack-abc-00000.parquet").write_bytes(b"y" * 10)
    pq.write_table(pa.table({"sample_id": ["0" * 64], "data": [b"z"]}), blobs / "pack-orphan-00000.parquet")
    (ws.root / "exports" / ".tmp-export-1234").mkdir(parents=True)  # an export killed mid-write
    (ws.root / "exports" / ".tmp-export-1234" / "all-000000.tar").write_bytes(b"t" * 50)
    assert cli_json("export", "-v", "1", "-w", ws.root)["version"] == V1  # a finished export: kept
    all_before = tree_digest(ws.root)

    dry = cli_json("gc", "--dry-run", "-w", ws.root)
    assert dry["dry_run"] is True
    assert dry["removed_dirs"] == [".tmp-deadbeef", "000007-ingest", "exports/.tmp-export-1234"]
    assert dry["removed_packs"] == [".tmp-pack-abc-00000.parquet", "pack-orphan-00000.parquet"]
    assert dry["freed_bytes"] >= 100 + 2 + 10 + 50
    assert tree_digest(ws.root) == all_before  # --dry-run removes nothing

    done = cli_json("gc", "-w", ws.root)
    assert (done["removed_dirs"], done["removed_packs"]) == (dry["removed_dirs"], dry["removed_packs"])
    assert done["freed_bytes"] == dry["freed_bytes"]
    assert sorted(p.name for p in ws.versions_dir.iterdir()) == [V1, V2]
    assert {p.name.removesuffix(".parquet") for p in blobs.iterdir()} == referenced
    assert sorted(p.name for p in (ws.root / "exports").iterdir()) == [V1]
    assert ws.head() == V1
    for vid in (V1, V2):  # every version still reads, bytes included
        t = ws.samples(vid).filter(pc.equal(ws.samples(vid).column("status"), "ok"))
        got = ws.blobs.get_many(t.column("sample_id").to_pylist(), t.column("pack").to_pylist())
        assert len(got) == t.num_rows
    assert cli_json("gc", "-w", ws.root)["removed_packs"] == []
    # And the workspace keeps working.
    assert ingest(ws, image_folder({"fish": 1}, name="c", seed0=900))["version"] == V3


# ----------------------------------------------------------------------------------------------- lock


def test_second_writer_in_process_is_refused_at_once(two_versions):
    root = two_versions["ws"].root
    a, b = Workspace(root), Workspace(root)
    with a.writer():
        t0 = time.perf_counter()
        with pytest.raises(WorkspaceBusy, match="workspace busy") as exc, b.writer():
            pass
        assert time.perf_counter() - t0 < 1.0
        assert f"pid {os.getpid()}" in str(exc.value)
        res = cli("ingest", two_versions["b"], "-w", root)
        assert res.exit_code == 1, res.output
        assert "workspace busy" in assert_one_error_line(res.stderr)
        assert cli("checkout", "1", "-w", root).exit_code == 1
        assert cli("gc", "-w", root).exit_code == 1
    with b.writer():  # released
        pass
    assert Workspace(root).head() == V2 and Workspace(root).version_ids() == [V1, V2]


_HOLDER = """
import sys
from curate.workspace import Workspace
with Workspace(sys.argv[1]).writer():
    print("locked", flush=True)
    sys.stdin.read()
"""


def test_second_writer_process_is_refused_at_once(two_versions, tmp_path):
    ws: Workspace = two_versions["ws"]
    holder = subprocess.Popen(
        [sys.executable, "-c", _HOLDER, str(ws.root)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=clean_env()
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(WorkspaceBusy, match=f"workspace busy: .* locked by pid {holder.pid}"), ws.writer():
            pass
        t0 = time.perf_counter()
        res = run_curate(["ingest", str(two_versions["b"]), "-w", str(ws.root)], cwd=tmp_path, timeout=60)
        assert time.perf_counter() - t0 < 30  # it did not wait for the holder (which never lets go by itself)
        assert res.returncode == 1, res.stderr
        line = assert_one_error_line(res.stderr)
        assert "workspace busy" in line and f"pid {holder.pid}" in line
        assert ws.head() == V2 and ws.version_ids() == [V1, V2]
    finally:
        holder.kill()  # kill -9: the kernel drops the flock with the process
        holder.wait(10)
    with ws.writer():
        pass
    res = run_curate(["checkout", "1", "-w", str(ws.root)], cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    assert ws.head() == V1


# ----------------------------------------------------------------------------------------------- crash safety


@pytest.fixture(scope="module")
def big_folder(tmp_path_factory):
    import inspect

    from curate.blobs import PackWriter

    # Enough big images that ingest's pack buffer is flushed to disk midway (a visible sign of work).
    pack_bytes = inspect.signature(PackWriter).parameters["target_bytes"].default
    # twice the pack size: the first pack is flushed halfway, so seconds of work remain when the signal lands
    return write_big_folder(tmp_path_factory.mktemp("big") / "images", big=2 * (pack_bytes // 196_947))


def _start_ingest_and_wait_for_pack(cmd: list[str], ws: Workspace, cwd: Path) -> tuple[subprocess.Popen, set[str]]:
    """Start a real ingest process; return once it has written a complete new pack into blobs/ (mid-work:
    the big folder keeps it busy for several seconds after that)."""
    blobs = ws.root / "blobs"
    before = set(os.listdir(blobs))
    # A shell that starts the test suite in the background (`make test &`, nohup) hands its children SIGINT
    # ignored, and Python keeps it ignored: give the child the default disposition so Ctrl-C reaches it.
    proc = subprocess.Popen(
        cmd, cwd=cwd, env=clean_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )  # fmt: skip
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        new = {n for n in set(os.listdir(blobs)) - before if n.startswith("pack-")}
        if new:
            return proc, new
        time.sleep(0.005)
    out, err = proc.communicate(timeout=60)
    raise AssertionError(f"ingest finished (rc={proc.returncode}) before it was seen mid-work:\n{out}\n{err}")


def _baseline(tmp_path: Path, image_folder, ingest) -> tuple[Workspace, dict]:  # noqa: ANN001
    ws = Workspace(tmp_path / "ws")
    ingest(ws, image_folder({"cat": 4, "dog": 2}, name="small"))
    state = {
        "head": ws.head(),
        "versions": ws.version_ids(),
        "v1": tree_digest(ws.versions_dir / V1),
        "rows": ws.samples(V1).to_pylist(),
        "blobs": set(os.listdir(ws.root / "blobs")),
    }
    return ws, state


def _assert_untouched(ws: Workspace, state: dict) -> None:
    assert (ws.root / "HEAD").read_text() == V1 + "\n"
    assert ws.head() == state["head"] == V1
    assert ws.version_ids() == state["versions"] == [V1]
    assert tree_digest(ws.versions_dir / V1) == state["v1"]
    assert ws.samples().to_pylist() == state["rows"]
    cli_res = cli_json("show", "-w", ws.root)
    assert cli_res["summary"]["per_class"] == {"cat": 4, "dog": 2}


def test_sigkill_mid_ingest_keeps_previous_version(tmp_path, big_folder, image_folder, ingest):
    ws, state = _baseline(tmp_path, image_folder, ingest)
    cmd = [sys.executable, "-m", "curate.cli", "ingest", str(big_folder), "-w", str(ws.root), "--workers", "1"]
    proc, new_packs = _start_ingest_and_wait_for_pack(cmd, ws, tmp_path)
    assert proc.poll() is None, "the ingest must still be running when it is killed"
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=30)
    assert proc.returncode == -signal.SIGKILL

    _assert_untouched(ws, state)
    leftovers = set(os.listdir(ws.root / "blobs")) - state["blobs"]
    assert new_packs <= leftovers, "the killed run left its first pack behind (nothing references it)"
    res = run_curate(["gc", "--json", "-w", str(ws.root)], cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    assert json.loads(res.stdout)["removed_packs"] == sorted(leftovers)
    assert set(os.listdir(ws.root / "blobs")) == state["blobs"]
    assert not [p for p in ws.versions_dir.iterdir() if p.name.startswith(".tmp-")]
    _assert_untouched(ws, state)

    # A fresh run afterwards works (the lock died with the killed process).
    res = ingest(ws, image_folder({"fish": 2}, name="more", seed0=700))
    assert res["version"] == V2 and res["parent"] == V1
    assert ws.head() == V2 and ws.samples(V2).num_rows == 6 + 2


@pytest.mark.skipif(not Path("/proc/self/task").exists(), reason="needs Linux /proc to find the workers")
def test_sigkill_with_workers_leaves_no_lock_holder(tmp_path, big_folder, image_folder, ingest):
    """kill -9 of an ingest with 2 worker processes: the workers die with it, and the next writer works at once
    (forked workers used to inherit the lock and keep it, under PID 1, forever)."""
    ws, state = _baseline(tmp_path, image_folder, ingest)
    cmd = [sys.executable, "-m", "curate.cli", "ingest", str(big_folder), "-w", str(ws.root), "--workers", "2"]
    proc, _ = _start_ingest_and_wait_for_pack(cmd, ws, tmp_path)
    workers = descendants(proc.pid)
    try:
        _kill_then_next_writer_works(proc, workers, ws, state, image_folder, tmp_path)
    finally:  # a regression must not leave orphans behind the test suite
        for w in workers:
            with contextlib.suppress(ProcessLookupError):
                os.kill(w, signal.SIGKILL)


def _kill_then_next_writer_works(proc, workers, ws, state, image_folder, tmp_path) -> None:  # noqa: ANN001
    assert proc.poll() is None and len(workers) >= 2, workers
    proc.send_signal(signal.SIGKILL)
    proc.wait(30)
    proc.stdout.close()  # not communicate(): workers that outlived it would hold the pipes open
    proc.stderr.close()
    _assert_untouched(ws, state)
    more = image_folder({"fish": 2}, name="more", seed0=700)
    res = run_curate(["ingest", str(more), "-w", str(ws.root), "--json"], cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    assert json.loads(res.stdout)["version"] == V2 and ws.head() == V2 and ws.samples(V2).num_rows == 6 + 2
    assert ws.samples(V1).to_pylist() == state["rows"]
    deadline = time.monotonic() + 60  # an event, not a speed: the kernel kills them when their parent dies
    while time.monotonic() < deadline and not all(gone(w) for w in workers):
        time.sleep(0.05)
    assert all(gone(w) for w in workers), "orphan workers outlived the killed ingest"


_ORPHANED_HOLDER = """
import subprocess, sys
from curate.workspace import Workspace
ws = Workspace(sys.argv[1])
with ws.writer():
    fd = ws._lock_fh.fileno()
    # a process that inherited the lock and outlives us (what forked workers of a killed curate used to be)
    keeper = subprocess.Popen(["sleep", "600"], pass_fds=(fd,))
    print(keeper.pid, flush=True)
    sys.stdin.read()
"""


def test_lock_of_a_dead_holder_is_taken_over_with_a_notice(two_versions, tmp_path):
    ws: Workspace = two_versions["ws"]
    holder = subprocess.Popen(
        [sys.executable, "-c", _ORPHANED_HOLDER, str(ws.root)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
        env=clean_env(),
    )  # fmt: skip
    keeper = int(holder.stdout.readline())
    try:
        holder.kill()
        holder.wait(30)
        assert (ws.root / ".lock").read_text() == f"pid {holder.pid}"  # a dead pid, in a file still locked
        res = run_curate(["checkout", "1", "-w", str(ws.root)], cwd=tmp_path)
        assert res.returncode == 0, res.stderr
        notice = [ln for ln in res.stderr.splitlines() if "lock" in ln]
        assert len(notice) == 1 and f"pid {holder.pid}" in notice[0] and "no longer running" in notice[0], res.stderr
        assert ws.head() == V1 and ws.version_ids() == [V1, V2]
        # the lock is really ours now: a live holder still refuses a second writer
        with ws.writer(), pytest.raises(WorkspaceBusy, match=f"pid {os.getpid()}"), Workspace(ws.root).writer():
            pass
    finally:
        os.kill(keeper, signal.SIGKILL)
    res = run_curate(["checkout", "2", "-w", str(ws.root)], cwd=tmp_path)
    assert res.returncode == 0 and "lock" not in res.stderr, res.stderr
    assert ws.head() == V2


def test_sigint_mid_ingest_commits_nothing(tmp_path, big_folder, image_folder, ingest):
    ws, state = _baseline(tmp_path, image_folder, ingest)
    cmd = [curate_exe(), "ingest", str(big_folder), "-w", str(ws.root), "--workers", "1"]
    proc, new_packs = _start_ingest_and_wait_for_pack(cmd, ws, tmp_path)
    assert proc.poll() is None, "the ingest must still be running when it is interrupted"
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, (out, err)
    assert "nothing was committed" in err
    assert "Traceback" not in err
    _assert_untouched(ws, state)
    # The interrupted run deleted the pack it had written: nothing is left for gc.
    assert new_packs and not new_packs & set(os.listdir(ws.root / "blobs"))
    assert set(os.listdir(ws.root / "blobs")) == state["blobs"]
    res = run_curate(["gc", "--json", "-w", str(ws.root)], cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    assert json.loads(res.stdout)["removed_packs"] == []
    res = ingest(ws, image_folder({"fish": 2}, name="more", seed0=700))
    assert res["version"] == V2 and res["parent"] == V1 and ws.samples(V2).num_rows == 6 + 2


def test_reingest_after_checkout_never_overwrites_packs_of_other_versions(tmp_path, image_folder, workspace, ingest):
    """Blob packs are immutable: the same source ingested again on the same parent (after a checkout) must not
    replace the packs an existing version references, even when the files changed in between."""
    import shutil

    ws = workspace
    ingest(ws, image_folder({"cat": 2}, name="a"))
    b = image_folder({"dog": 3}, name="b", seed0=10)
    ingest(ws, b)
    truth_v2 = folder_truth(b)
    packs_before = tree_digest(ws.root / "blobs")
    with ws.writer():
        ws.set_head(V1)
    shutil.rmtree(b)
    image_folder({"dog": 3}, name="b", seed0=20)  # same path, same settings, other images
    assert ingest(ws, b)["version"] == V3
    for name, digest in packs_before.items():
        assert tree_digest(ws.root / "blobs")[name] == digest, f"{name} was rewritten"
    t = ws.samples(V2)
    new = t.filter(pc.is_in(t.column("sample_id"), pa.array(list(truth_v2))))
    got = ws.blobs.get_many(new.column("sample_id").to_pylist(), new.column("pack").to_pylist())
    assert got == {sid: v["bytes"] for sid, v in truth_v2.items()}
