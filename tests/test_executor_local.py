"""The local executor's process pool: workers from a fork server on Linux when the driver is large (small processes,
not copies of it), the driver's environment at each pool start, fork kept for a small driver and for scripts that a
non-forked worker cannot import again safely, and workers that die with a killed driver (forked ones:
``test_workspace.py::test_sigkill_with_workers_leaves_no_lock_holder``)."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pyarrow as pa
import pytest
from helpers import descendants, gone

from curate.executors import local

linux = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="forkserver is the Linux start method")
ROOT = Path(__file__).resolve().parents[1]


def _who(batch: pa.Table, cfg: str) -> pa.Table:
    """Per row: the input, this worker's pid and parent pid, and the environment variable ``cfg``."""
    n = batch.num_rows
    return (
        batch.append_column("pid", pa.array([os.getpid()] * n))
        .append_column("ppid", pa.array([os.getppid()] * n))
        .append_column("env", pa.array([os.environ.get(cfg, "")] * n))
    )


def _run(name: str) -> pa.Table:
    batches = [pa.table({"i": list(range(k * 3, k * 3 + 3))}) for k in range(8)]
    return pa.concat_tables(local.map_batches(_who, batches, name, workers=2))


@pytest.fixture
def large(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every driver counts as large: the fork server whatever this test process holds."""
    monkeypatch.setattr(local, "FORK_MAX_RSS", 0)


@linux
@pytest.mark.usefixtures("large")
def test_workers_come_from_a_fork_server_in_order(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CURATE_TEST_POOL", "first")
    out = _run("CURATE_TEST_POOL")
    assert out["i"].to_pylist() == list(range(24))
    assert os.getpid() not in out["pid"].to_pylist()
    assert os.getpid() not in out["ppid"].to_pylist(), "the workers were forked from the driver"
    assert set(out["env"].to_pylist()) == {"first"}


@linux
@pytest.mark.usefixtures("large")
def test_an_environment_change_after_the_server_started_reaches_the_workers(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CURATE_TEST_POOL", "one")
    assert set(_run("CURATE_TEST_POOL")["env"].to_pylist()) == {"one"}
    monkeypatch.setenv("CURATE_TEST_POOL", "two")
    monkeypatch.setenv("CURATE_TEST_POOL_NEW", "three")
    assert set(_run("CURATE_TEST_POOL")["env"].to_pylist()) == {"two"}
    assert set(_run("CURATE_TEST_POOL_NEW")["env"].to_pylist()) == {"three"}


_BODY = """
import sys
import pyarrow as pa
from curate.executors import local

local.FORK_MAX_RSS = int(sys.argv[1]) if len(sys.argv) > 1 else 0

def twice(batch, cfg):
    return pa.table({"x": pa.compute.multiply(batch["x"], 2)})

def go():
    out = pa.concat_tables(local.map_batches(twice, [pa.table({"x": [i]}) for i in range(4)], None, workers=2))
    print(local._start_method(twice), out["x"].to_pylist())
"""


@linux
@pytest.mark.parametrize(
    ("tail", "method"),
    [
        ("go()", "fork"),  # unguarded: a forkserver worker would run go() again while importing the script
        ("if True:\n    go()", "fork"),
        ('if __name__ == "__main__":\n    go()', "forkserver"),
        ('if "__main__" == __name__:\n    x = 1\n    go()', "forkserver"),
        ('if __name__ == "__main__":\n    go()', "fork"),  # the real threshold: this small driver forks
    ],
    ids=["unguarded", "other-if", "guarded", "guarded-reversed", "small-driver"],
)
def test_the_start_method_follows_the_script(tmp_path: Path, tail: str, method: str, request: pytest.FixtureRequest) -> None:
    script = tmp_path / "script.py"
    script.write_text(textwrap.dedent(_BODY) + tail + "\n")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    limit = str(local.FORK_MAX_RSS) if request.node.callspec.id == "small-driver" else "0"
    res = subprocess.run([sys.executable, str(script), limit], capture_output=True, text=True, timeout=120, env=env)
    assert res.returncode == 0, res.stderr
    assert res.stdout.split("\n")[0] == f"{method} [0, 2, 4, 6]"


@linux
def test_a_function_of_a_script_without_a_file_keeps_fork(tmp_path: Path) -> None:
    """``python -c`` (or a notebook): the workers of a fork server would not find ``twice``."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    res = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(_BODY) + "go()\n"], capture_output=True, text=True, timeout=120, env=env, cwd=tmp_path
    )
    assert res.returncode == 0, res.stderr
    assert res.stdout.split("\n")[0] == "fork [0, 2, 4, 6]"


_SLOW = """
import sys, time
import pyarrow as pa
from curate.executors import local

def slow(batch, cfg):
    print("working", flush=True)
    time.sleep(60)
    return batch

if __name__ == "__main__":
    local.FORK_MAX_RSS = 0
    list(local.map_batches(slow, [pa.table({"x": [i]}) for i in range(4)], None, workers=2))
"""


@pytest.mark.skipif(not Path("/proc/self/task").exists(), reason="needs Linux /proc to find the workers")
def test_fork_server_workers_die_with_a_killed_driver(tmp_path: Path) -> None:
    """kill -9 of the driver: its fork server's workers, which hold the server's pipe open, still go."""
    script = tmp_path / "slow.py"
    script.write_text(textwrap.dedent(_SLOW))
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True, env=env)
    tree: list[int] = []
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "working"  # a worker runs: the server and the pool exist
        tree = descendants(proc.pid)
        assert len(tree) >= 3, tree  # the server, a worker, the resource tracker
        proc.kill()
        proc.wait(30)
        deadline = time.monotonic() + 30  # an event, not a speed: each worker waits on the driver's pipe
        while time.monotonic() < deadline and not all(gone(p) for p in tree):
            time.sleep(0.05)
        assert all(gone(p) for p in tree), "fork server workers outlived the killed driver"
    finally:  # a regression must not leave orphans behind the test suite
        proc.kill()
        for p in tree:
            with contextlib.suppress(ProcessLookupError):
                os.kill(p, signal.SIGKILL)
