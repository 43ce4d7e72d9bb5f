"""The Ray executor gives what the local executor gives: the same pipeline on both, byte for byte.

A local Ray with 2 CPUs starts once for the module. The identity test runs ingest -> dedupe -> split -> normalize
-> augment -> export on a small set with planted exact and near duplicates and a corrupt file, through the CLI,
once with the local executor and once with ``--executor ray``, and compares the sample tables and the shards.
Unit tests cover order, windows, empty batches, the blob-pack path, actors and errors.
"""

from __future__ import annotations

import io
import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest
from typer.testing import CliRunner

from curate import executors
from curate.errors import CurateError, UsageError
from tests.helpers import assert_one_error_line, clean_env, run_curate, tree_digest

ray = pytest.importorskip("ray")
pytestmark = [
    pytest.mark.filterwarnings("ignore::DeprecationWarning"),  # Ray Data's own context properties
    pytest.mark.usefixtures("fresh_executor"),
]


@pytest.fixture(scope="module", autouse=True)
def local_ray() -> Iterator[None]:
    """One local Ray (2 CPUs) for the whole module; the executor's own ``ray.init`` then joins it."""
    import logging

    import ray.cloudpickle

    # The workers cannot import this test module by name: ship its functions and classes by value.
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level=logging.ERROR)
    yield
    ray.shutdown()


# ----------------------------------------------------------------------------------------------- unit tests
def double(batch: pa.Table, cfg: int) -> pa.Table:
    """Per-row: x -> x * cfg, plus the batch size (to prove each call saw exactly the original batch)."""
    x = batch.column("x")
    return pa.table({"x": pc.multiply(x, cfg), "n": pa.array([batch.num_rows] * batch.num_rows, pa.int64())})


def fail_on_13(batch: pa.Table, cfg: Any) -> pa.Table:
    if 13 in batch.column("x").to_pylist():
        raise CurateError("sample 13 is broken", hint="fix sample 13")
    return batch


def run_both(fn: Any, batches: list[pa.Table], cfg: Any, **kw: Any) -> tuple[list[pa.Table], list[pa.Table]]:
    executors.configure("local")
    local = list(executors.map_batches(fn, iter(batches), cfg, **kw))
    executors.configure("ray")
    remote = list(executors.map_batches(fn, iter(batches), cfg, **kw))
    return local, remote


@pytest.mark.parametrize("per_task", [1, 3])
def test_order_windows_and_empty_batches(monkeypatch: pytest.MonkeyPatch, per_task: int) -> None:
    import curate.executors.ray as ray_executor

    monkeypatch.setattr(ray_executor, "WINDOW_BATCHES", 7)  # 11 batches: two windows
    monkeypatch.setattr(ray_executor, "_per_task", lambda n, ray: per_task)  # several batches in one task's block
    rng = np.random.default_rng(0)
    sizes = [5, 0, 17, 1, 8, 0, 30, 2, 9, 4, 11]
    start = np.cumsum([0, *sizes])
    batches = [pa.table({"x": pa.array(np.arange(a, a + n), pa.int64())}) for a, n in zip(start, sizes, strict=False)]
    rng.shuffle(batches)
    local, remote = run_both(double, batches, 3)
    assert len(remote) == len(local) == len(batches)
    for a, b in zip(local, remote, strict=True):
        assert a.equals(b) and a.column("x").num_chunks == b.column("x").num_chunks


def test_env_selects_ray(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(executors.ENV_EXECUTOR, "ray")
    assert executors.current().name == "ray"
    out = list(executors.map_batches(double, [pa.table({"x": [1, 2]})], 2))
    assert out[0].column("x").to_pylist() == [2, 4]


def test_error_surfaces_as_the_original() -> None:
    batches = [pa.table({"x": list(range(i * 5, i * 5 + 5))}) for i in range(6)]
    executors.configure("ray")
    got: list[pa.Table] = []
    with pytest.raises(CurateError) as info:
        for out in executors.map_batches(fail_on_13, iter(batches), None):
            got.append(out)
    assert type(info.value) is CurateError
    assert str(info.value) == "sample 13 is broken" and info.value.hint == "fix sample 13"
    assert len(got) == 2  # the batches before the failing one, as the local executor yields them


def test_bad_settings() -> None:
    with pytest.raises(UsageError):
        executors.configure("dask")
    with pytest.raises(UsageError):
        executors.configure("local", address="auto")


def test_cli_bad_executor_is_one_line(tmp_path: Path) -> None:
    res = run_curate(["--executor", "spark", "log", "-w", str(tmp_path / "ws")], cwd=tmp_path, env=clean_env())
    assert res.returncode == 2
    assert "spark" in assert_one_error_line(res.stderr)


def test_help_does_not_import_ray(tmp_path: Path) -> None:
    import subprocess

    code = "import sys; from curate.cli import app; assert 'ray' not in sys.modules and 'curate.executors.ray' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=tmp_path, env=clean_env(PYTHONPATH=str(Path.cwd())))


class Scale:
    """A stand-in for a model: built once per actor, called per batch."""

    def __init__(self, cfg: int) -> None:
        if cfg < 0:
            raise CurateError("no such model", hint="train one first")
        self.factor = cfg

    def __call__(self, batch: pa.Table) -> pa.Table:
        return double(batch, self.factor)


def test_actor_helper() -> None:
    batches = [pa.table({"x": pa.array(np.arange(i, i + 7), pa.int64())}) for i in range(9)]
    executors.configure("local")
    local = list(executors.map_batches_actor(Scale, iter(batches), 5, workers=2))
    executors.configure("ray")
    remote = list(executors.map_batches_actor(Scale, iter(batches), 5, workers=2))
    assert [t.to_pydict() for t in local] == [t.to_pydict() for t in remote]
    with pytest.raises(CurateError, match="no such model"):
        list(executors.map_batches_actor(Scale, iter(batches), -1, workers=2))


def test_pack_batches_are_read_on_the_workers(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``iter_packs`` batches (a subset, across row groups, with a carried column) match the local ones exactly."""
    import curate.blobs as blobs
    from curate.blobs import BlobStore, PackWriter

    monkeypatch.setattr(blobs, "ROW_GROUP_ROWS", 64)
    writer = PackWriter(tmp_path / "blobs", "t", target_bytes=20_000)
    ids, packs = [], []
    for i in range(900):
        data = f"image-{i}".encode() * (1 + i % 7)
        sid = f"{i:064d}"
        ids.append(sid)
        packs.append(writer.add(sid, data))
    writer.close()
    table = pa.table({"sample_id": ids, "pack": packs, "k": pa.array([[i, i + 1] for i in range(900)], pa.list_(pa.int64()))})
    table = table.filter(pa.array([i % 3 != 0 for i in range(900)]))  # a subset: some rows of each batch only

    def batches() -> Any:
        return BlobStore(tmp_path / "blobs").iter_packs(table, batch_rows=100, carry=["k"])

    executors.configure("local")
    local = list(executors.map_batches(echo_lengths, batches(), None))
    executors.configure("ray")
    remote = list(executors.map_batches(echo_lengths, batches(), None))
    assert len(local) == len(remote) > 3
    for a, b in zip(local, remote, strict=True):
        assert a.equals(b)
    assert sum(t.num_rows for t in remote) == table.num_rows


class EchoLengths:
    """``echo_lengths`` as actor work (the shape of a model actor)."""

    def __init__(self, cfg: Any) -> None:
        self.cfg = cfg

    def __call__(self, batch: pa.Table) -> pa.Table:
        return echo_lengths(batch, self.cfg)


def test_actors_read_pack_batches_themselves(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``map_batches_actor`` over ``iter_packs``: on Ray the actors read the packs (the driver never iterates the
    batches), and the tables are the local ones."""
    import curate.blobs as blobs
    from curate.blobs import BlobStore, PackBatches, PackWriter

    monkeypatch.setattr(blobs, "ROW_GROUP_ROWS", 32)
    writer = PackWriter(tmp_path / "blobs", "t", target_bytes=5_000)
    rows = [(f"{i:064d}", writer.add(f"{i:064d}", f"px-{i}".encode() * (1 + i % 5))) for i in range(300)]
    writer.close()
    table = pa.table({"sample_id": [r[0] for r in rows], "pack": [r[1] for r in rows], "k": list(range(300))})
    table = table.filter(pa.array([i % 4 != 1 for i in range(300)]))

    def batches() -> Any:
        return BlobStore(tmp_path / "blobs").iter_packs(table, batch_rows=40, carry=["k"])

    executors.configure("local")
    local = list(executors.map_batches_actor(EchoLengths, batches(), None))
    executors.configure("ray")
    monkeypatch.setattr(PackBatches, "__iter__", lambda self: pytest.fail("the driver read the pack batches"))
    remote = list(executors.map_batches_actor(EchoLengths, batches(), None, workers=2))
    assert len(local) == len(remote) > 3
    for a, b in zip(local, remote, strict=True):
        assert a.equals(b)


def echo_lengths(batch: pa.Table, cfg: Any) -> pa.Table:
    return pa.table({"sample_id": batch.column("sample_id"), "len": pc.binary_length(batch.column("data")), "k": batch.column("k")})


# ------------------------------------------------------------------------------------------- identity test
def scene(seed: int, size: int = 24) -> np.ndarray:
    """A smooth RGB scene (blobs and a rectangle): a shifted or re-encoded copy is a near duplicate."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    img = np.full((size, size, 3), rng.uniform(20, 60, 3), np.float32)
    for _ in range(4):
        cy, cx, s = rng.uniform(0, size), rng.uniform(0, size), rng.uniform(2, 7)
        img += rng.uniform(-80, 120, 3) * np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * s * s))[..., None]
    y0, x0 = rng.integers(0, size - 8, 2)
    img[y0 : y0 + 6, x0 : x0 + 6] += rng.uniform(-70, 70, 3)
    return np.clip(img, 0, 255).astype(np.uint8)


def write_set(root: Path) -> Path:
    """3 classes x 14 scenes, plus 3 exact copies, 3 near copies (JPEG, 1-px shift) and one corrupt file."""
    from PIL import Image

    def save(arr: np.ndarray, path: Path, fmt: str = "PNG") -> bytes:
        buf = io.BytesIO()
        Image.fromarray(arr).save(buf, format=fmt, **({"quality": 92} if fmt == "JPEG" else {}))
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(buf.getvalue())
        return buf.getvalue()

    for c, cls in enumerate(("ant", "bee", "cow")):
        for i in range(14):
            save(scene(100 * c + i), root / cls / f"{i:02d}.png")
    for i in range(3):
        (root / "cow" / f"copy-{i}.png").write_bytes((root / "ant" / f"{i:02d}.png").read_bytes())
        save(scene(100 + i), root / "bee" / f"near-{i}.jpg", "JPEG")
        save(np.roll(scene(200 + i), 1, axis=1), root / "cow" / f"shift-{i}.png")
    (root / "ant" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    return root


def pipeline(ws: Path, src: Path, root_opts: list[str]) -> dict[str, Any]:
    from curate.cli import app

    runner = CliRunner()
    w = ["-w", str(ws)]
    steps = [
        ["ingest", str(src), "--max-error-fraction", "0.5", "--workers", "1"],
        ["dedupe", "--workers", "1"],
        ["split", "--seed", "3"],
        ["normalize", "--workers", "1"],
        ["augment", "--policy", "light", "--copies", "2", "--workers", "1"],
        ["export", "--format", "parquet,webdataset", "--shard-size", "20"],
    ]
    stats = {}
    for step in steps:
        res = runner.invoke(app, [*root_opts, *step, *w, "--json"], catch_exceptions=False)
        assert res.exit_code == 0, res.output
        stats[step[0]] = json.loads(res.stdout)
    return stats


def spy(fn: Any, name: str, used: list[str]) -> Any:
    def wrapper(*args: Any) -> Any:
        used.append(name)
        return fn(*args)

    return wrapper


def test_same_pipeline_same_bytes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import curate.executors.ray as ray_executor
    from curate.workspace import Workspace

    src = write_set(tmp_path / "images")
    pipeline(tmp_path / "ws-local", src, [])
    executors.reset()
    used: list[str] = []
    for name in ("_over_packs", "_over_windows"):
        monkeypatch.setattr(ray_executor, name, spy(getattr(ray_executor, name), name, used))
    ray_stats = pipeline(tmp_path / "ws-ray", src, ["--executor", "ray"])
    # ingest's items go in windows; dedupe, normalize and augment (once per round) read the packs on the workers
    assert used[0] == "_over_windows" and len(used) >= 4 and set(used[1:]) == {"_over_packs"}, used

    local_ws, ray_ws = Workspace(tmp_path / "ws-local"), Workspace(tmp_path / "ws-ray")
    assert local_ws.version_ids() == ray_ws.version_ids()
    for vid in local_ws.version_ids():
        a = local_ws.samples(vid).sort_by("sample_id")
        b = ray_ws.samples(vid).sort_by("sample_id")
        assert a.equals(b), f"sample tables differ at {vid}"
        state = local_ws.root / "versions" / vid / "state"
        if state.exists():
            assert tree_digest(state) == tree_digest(ray_ws.root / "versions" / vid / "state"), vid
    dedupe = ray_stats["dedupe"]["stats"]
    assert dedupe["signatures_computed"] > 0
    head = local_ws.samples(local_ws.head())
    assert pc.sum(pc.equal(head.column("status"), "excluded")).as_py() >= 4  # corrupt + planted copies
    exports = [p.relative_to(tmp_path / "ws-local") for p in (tmp_path / "ws-local" / "exports").iterdir()]
    for rel in exports:
        a, b = tree_digest(tmp_path / "ws-local" / rel), tree_digest(tmp_path / "ws-ray" / rel)
        shards = {k: v for k, v in a.items() if k.endswith((".parquet", ".tar"))}
        assert shards and shards == {k: b[k] for k in shards}, "export shards differ"
        assert a == b, sorted(k for k in a if a[k] != b.get(k))


def test_local_ray_workers_run_at_the_drivers_priority(tmp_path: Path) -> None:
    """A local Ray started by curate runs its workers at curate's own niceness, as the local pool does (Ray's
    default, 15, gives the stage's CPU away to every other job on the machine), and turns usage reports off."""
    import subprocess

    code = (
        "import os; from curate.executors import Setting; import curate.executors.ray as r; "
        "ray = r.start(Setting('ray', None, 1)); "
        "print(os.nice(0), ray.get(ray.remote(lambda: os.nice(0)).remote()), os.environ['RAY_USAGE_STATS_ENABLED'])"
    )
    env = {k: v for k, v in clean_env(PYTHONPATH=str(Path.cwd())).items() if not k.startswith("RAY_")}
    cmd = ["nice", "-n", "3", sys.executable, "-c", code]
    res = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    driver, worker, stats = res.stdout.split()[-3:]
    assert int(driver) >= 3 and worker == driver and stats == "0"
