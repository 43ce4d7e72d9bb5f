"""A real two-node Ray cluster on this machine: the work is spread over both nodes, the output is the local one.

The fixture starts a head (``ray start --head``, 1 CPU, resource ``head``) and a second node (``ray start
--address``, 1 CPU, resource ``worker2``) on 127.0.0.1 with their own temp dir; the test runs a pipeline through
the CLI with ``--executor ray --address 127.0.0.1:PORT`` and once with the local executor, and compares the
committed sample tables and the export's shards byte for byte. The Ray run is a driver process of its own
(``drive``): joining the cluster from a pytest process that had already run and shut down a local Ray (the
suite's other Ray tests) hung on the first task.

Which node ran the per-sample work is recorded without touching curate: the remote-side functions the executor
hands to Ray Data (``run_inline``, ``run_slices``) are wrapped, here, in a function shipped to the workers by value
that notes ``ray.get_runtime_context().get_node_id()`` and the rows of each call in a file before calling the real
one. The cluster is stopped by signalling the process groups the fixture started (never ``ray stop``, which would
also stop every other Ray on the machine).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest
from typer.testing import CliRunner

from curate import executors
from tests.helpers import tree_digest

ray = pytest.importorskip("ray")
pytestmark = [pytest.mark.slow, pytest.mark.filterwarnings("ignore::DeprecationWarning")]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _stop_group(pgid: int, grace: float = 30.0) -> None:
    """SIGTERM the process group a ``ray start`` made (gcs, raylet, its workers), SIGKILL what is left."""
    try:
        os.killpg(pgid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline:
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.5)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, signal.SIGKILL)


@pytest.fixture(scope="module")
def cluster() -> Iterator[str]:
    """A head and a second node on 127.0.0.1; yields the address ``127.0.0.1:PORT``."""
    exe = str(Path(sys.executable).with_name("ray"))
    port = _free_port()
    address = f"127.0.0.1:{port}"
    # Short: Ray's unix sockets live under it (108 bytes at most); its own so nothing else's session is touched.
    temp = tempfile.mkdtemp(prefix="cr-", dir="/tmp")
    # Token authentication (on by default for `ray start` since 2.59) is orthogonal to what is tested here and
    # would need a token in ~/.ray; the README says what a user with a token cluster sets.
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CURATE_", "RAY_"))}
    env.update(RAY_AUTH_MODE="disabled", RAY_USAGE_STATS_ENABLED="0")
    common = ["--num-cpus=1", f"--temp-dir={temp}", "--object-store-memory=100000000", "--disable-usage-stats"]
    groups: list[int] = []

    def start(args: list[str]) -> None:
        # A new session: the daemons `ray start` leaves behind stay in this process group, stopped by its id.
        proc = subprocess.Popen(
            [exe, "start", *args, *common],
            env=env,
            start_new_session=True,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        groups.append(proc.pid)
        out, _ = proc.communicate(timeout=180)
        assert proc.returncode == 0, out

    try:
        start(["--head", "--node-ip-address=127.0.0.1", f"--port={port}", "--include-dashboard=false", '--resources={"head": 1}'])
        start([f"--address={address}", "--node-ip-address=127.0.0.1", '--resources={"worker2": 1}'])
        yield address
    finally:
        for pgid in reversed(groups):
            _stop_group(pgid)
        shutil.rmtree(temp, ignore_errors=True)


# ------------------------------------------------------------------------------------------------ tracing
def traced(real: Callable[..., pa.Table], marks: str) -> Callable[..., pa.Table]:
    """``real`` (a remote-side function of the executor), noting on which node each call ran and its rows."""

    def wrapper(block: pa.Table, fn: Any, cfg: Any) -> pa.Table:
        import ray as _ray

        node = _ray.get_runtime_context().get_node_id()
        Path(marks, f"{node}.{uuid.uuid4().hex}").write_text(f"{real.__name__} {block.num_rows}")
        return real(block, fn, cfg)

    return wrapper


def nodes_by_resource() -> dict[str, str]:
    """``{"head": node_id, "worker2": node_id}`` from the live nodes' custom resources."""
    out = {}
    for node in ray.nodes():
        for name in ("head", "worker2"):
            if node["Alive"] and name in node["Resources"]:
                out[name] = node["NodeID"]
    return out


def wait_for_nodes(n: int, timeout: float = 120.0) -> dict[str, str]:
    deadline = time.monotonic() + timeout
    while len(found := nodes_by_resource()) < n and time.monotonic() < deadline:
        time.sleep(0.5)
    return found


# ---------------------------------------------------------------------------------------------- pipeline
def pipeline(ws: Path, src: Path, root_opts: list[str]) -> None:
    from curate.cli import app

    runner = CliRunner()
    steps = [
        ["ingest", str(src), "--max-error-fraction", "0.5", "--workers", "1"],
        ["split", "--seed", "3"],
        ["normalize", "--workers", "1"],
        ["augment", "--policy", "light", "--copies", "2", "--workers", "1"],
        ["export", "--format", "parquet,webdataset", "--shard-size", "20"],
    ]
    for step in steps:
        res = runner.invoke(app, [*root_opts, *step, "-w", str(ws), "--json"], catch_exceptions=False)
        assert res.exit_code == 0, res.output
        json.loads(res.stdout)


def version_bytes(ws: Path) -> dict[str, str]:
    """sha256 of every committed sample-table part and state file (``stats.json``/``version.json`` hold times)."""
    digest = tree_digest(ws / "versions")
    return {k: v for k, v in digest.items() if "/samples/" in k or "/state/" in k}


def drive(address: str, ws: str, src: str, marks: str) -> None:
    """The Ray run, in its own process (``python -c``): a driver that never ran another Ray in this process (a
    second ``ray.init`` in a pytest process that ran a local Ray before hung on its first task). Joins as the CLI
    does (which ships curate to the workers), waits for both nodes, traces the remote-side functions, runs the
    pipeline through the CLI app and writes the node ids by resource to ``marks/nodes.json``."""
    import ray.cloudpickle

    import curate.executors.ray as ray_executor

    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # the tracer runs on the workers
    ray_executor.start(executors.Setting("ray", address))
    nodes = wait_for_nodes(2)
    Path(marks, "nodes.json").write_text(json.dumps(nodes))
    for name in ("run_inline", "run_slices"):
        setattr(ray_executor, name, traced(getattr(ray_executor, name), marks))
    pipeline(Path(ws), Path(src), ["--executor", "ray", "--address", address])
    ray.shutdown()


@pytest.mark.usefixtures("fresh_executor")
def test_two_nodes_share_the_work_and_match_local(cluster: str, tmp_path: Path) -> None:
    from tests.test_executor_ray import write_set

    src = write_set(tmp_path / "images")
    pipeline(tmp_path / "ws-local", src, [])
    marks = tmp_path / "marks"
    marks.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CURATE_", "RAY_"))}
    env.update(RAY_AUTH_MODE="disabled", PYTHONPATH=os.pathsep.join([str(Path.cwd()), env.get("PYTHONPATH", "")]))
    code = "import sys; from tests.test_ray_cluster import drive; drive(*sys.argv[1:])"
    args = [cluster, str(tmp_path / "ws-ray"), str(src), str(marks)]
    res = subprocess.run([sys.executable, "-c", code, *args], env=env, capture_output=True, text=True, timeout=900)
    assert res.returncode == 0, res.stderr[-3000:]

    nodes = json.loads((marks / "nodes.json").read_text())
    assert set(nodes) == {"head", "worker2"}, nodes
    rows: dict[str, int] = {}
    kinds: set[str] = set()
    for mark in marks.iterdir():
        if mark.name == "nodes.json":
            continue
        kind, n = mark.read_text().split()
        kinds.add(kind)
        node = mark.name.split(".")[0]
        rows[node] = rows.get(node, 0) + int(n)
    assert kinds == {"run_inline", "run_slices"}  # ingest's windows and the pack readers both went to Ray
    assert set(rows) == set(nodes.values()), (rows, nodes)  # every call ran on one of the two nodes ...
    assert all(n > 0 for n in rows.values())  # ... and each node did some of the per-sample work

    local, remote = tmp_path / "ws-local", tmp_path / "ws-ray"
    assert sorted(p.name for p in (local / "versions").iterdir()) == sorted(p.name for p in (remote / "versions").iterdir())
    a, b = version_bytes(local), version_bytes(remote)
    assert a and a == b, sorted(k for k in a if a[k] != b.get(k))
    for export in (local / "exports").iterdir():
        x, y = tree_digest(export), tree_digest(remote / "exports" / export.name)
        shards = {k: v for k, v in x.items() if k.endswith((".parquet", ".tar"))}
        assert shards and x == y, sorted(k for k in x if x[k] != y.get(k))
