"""The command line: help with examples, --json everywhere, exit codes (0 ok, 1 user/data error with one line,
2 bad usage), CURATE_WORKSPACE, a light ``--help``, and real runs of the console script."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from helpers import HEAVY_MODULES, add_bad_files, assert_one_error_line, clean_env, folder_truth, run_curate
from typer.testing import CliRunner

from curate.cli import app
from curate.workspace import Workspace

COMMANDS = ["ingest", "export", "log", "show", "diff", "checkout", "samples", "gc"]
V1, V2 = "000001-ingest", "000002-ingest"


def invoke(*args: object, env: dict[str, str] | None = None):  # noqa: ANN201
    return CliRunner().invoke(app, [str(a) for a in args], env=env)


def invoke_json(*args: object, env: dict[str, str] | None = None) -> dict:
    res = invoke(*args, "--json", env=env)
    assert res.exit_code == 0, (res.stdout, res.stderr)
    assert res.stderr == ""
    return json.loads(res.stdout)


@pytest.fixture(autouse=True)
def _in_tmp(in_empty_tmp):
    """Every test here runs from an empty folder with no curate settings in the environment."""


@pytest.fixture
def folders(image_folder) -> dict[str, Path]:
    a = image_folder({"cat": 3, "dog": 2}, name="a")
    b = image_folder({"bird": 2}, name="b", seed0=100)
    return {"a": a, "b": b}


@pytest.fixture
def ws2(tmp_path, folders, ingest) -> Path:
    """A workspace with two versions: cat 3 + dog 2, then + bird 2."""
    ws = Workspace(tmp_path / "ws")
    ingest(ws, folders["a"])
    ingest(ws, folders["b"])
    return ws.root


# ----------------------------------------------------------------------------------------------- help


def test_root_help_lists_every_command():
    for flag in ("-h", "--help"):
        res = invoke(flag)
        assert res.exit_code == 0
        for cmd in COMMANDS:
            assert cmd in res.stdout
    assert invoke().exit_code in (0, 2)  # no arguments: the help, never a traceback
    assert "Usage" in invoke().output


@pytest.mark.parametrize("cmd", COMMANDS)
@pytest.mark.parametrize("flag", ["-h", "--help"])
def test_command_help_has_examples(cmd, flag):
    res = invoke(cmd, flag)
    assert res.exit_code == 0, res.output
    assert "Usage" in res.stdout
    assert "Example" in res.stdout
    assert "--json" in res.stdout and "--workspace" in res.stdout


def test_version_flag():
    from curate import __version__

    res = invoke("--version")
    assert res.exit_code == 0 and res.stdout.strip() == f"curate {__version__}"


def test_python_dash_m_runs_the_same_app():
    res = subprocess.run([sys.executable, "-m", "curate", "log", "--help"], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    assert "Usage: curate log" in res.stdout


def test_help_does_not_import_heavy_libraries(tmp_path):
    code = (
        "import sys\n"
        "from curate.cli import app\n"
        "for args in (['--help'], ['ingest', '--help'], ['export', '--help'], ['show', '--help'], ['log', '-w', 'nowhere']):\n"
        "    try:\n"
        "        app(args, prog_name='curate')\n"
        "    except SystemExit:\n"
        "        pass\n"
        f"heavy = [m for m in {HEAVY_MODULES!r} if m in sys.modules]\n"
        "assert not heavy, heavy\n"
        "print('light')\n"
    )
    res = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=clean_env(), capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip().endswith("light")


# ----------------------------------------------------------------------------------------------- --json


def test_every_command_prints_json(tmp_path, folders):
    ws = tmp_path / "ws"
    r = invoke_json("ingest", folders["a"], "-w", ws)
    assert (r["version"], r["parent"], r["stage"], r["cached"]) == (V1, None, "ingest", False)
    assert (r["stats"]["inputs"], r["stats"]["new_samples"]) == (5, 5)
    assert r["stats"]["summary"]["per_class"] == {"cat": 3, "dog": 2}
    r = invoke_json("ingest", folders["b"], "-w", ws)
    assert (r["version"], r["parent"]) == (V2, V1)

    r = invoke_json("log", "-w", ws)
    assert r["head"] == V2 and [v["id"] for v in r["versions"]] == [V2, V1]
    r = invoke_json("show", "-w", ws)
    assert r["version"]["id"] == V2 and r["summary"]["per_class"] == {"bird": 2, "cat": 3, "dog": 2}
    r = invoke_json("diff", "1", "HEAD", "-w", ws)
    assert (r["from"], r["to"], r["added"], r["removed"]) == (V1, V2, 2, 0)
    r = invoke_json("samples", "--out", tmp_path / "t.parquet", "-w", ws)
    assert r["rows"] == 7 and len(pd.read_parquet(tmp_path / "t.parquet")) == 7
    r = invoke_json("export", "--out", tmp_path / "shards", "-w", ws)
    assert (r["version"], r["splits"], r["shards"], r["formats"]) == (V2, {"all": 7}, 8, ["parquet", "webdataset"])  # 4 per split
    r = invoke_json("gc", "--dry-run", "-w", ws)
    assert r == {"dry_run": True, "removed_dirs": [], "removed_packs": [], "freed_bytes": 0}
    r = invoke_json("gc", "-w", ws)
    assert r["dry_run"] is False and r["removed_packs"] == []
    r = invoke_json("checkout", "1", "-w", ws)
    assert r == {"head": V1, "previous": V2}


def test_human_output_without_json(ws2, tmp_path):
    res = invoke("show", "-w", ws2)
    assert res.exit_code == 0 and V2 in res.stdout and "bird" in res.stdout
    with pytest.raises(json.JSONDecodeError):
        json.loads(res.stdout)
    res = invoke("export", "-w", ws2)
    assert res.exit_code == 0 and f"export {V2}" in res.stdout


# ----------------------------------------------------------------------------------------------- exit codes


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["ingest", "{tmp}/missing"], "no such file or directory"),
        (["show", "99"], "unknown version '99'"),
        (["show", "HEAD~5"], "goes back past the first version"),
        (["export", "-v", "99"], "unknown version '99'"),
        (["checkout", "7"], "unknown version '7'"),
        (["diff", "1", "99"], "unknown version '99'"),
        (["samples", "-o", "{tmp}/x.parquet", "-v", "99"], "unknown version '99'"),
        (["log", "-w", "{tmp}/empty"], "not a curate workspace"),
        (["show", "-w", "{tmp}/empty"], "not a curate workspace"),
    ],
)
def test_user_errors_exit_1_with_one_line(ws2, tmp_path, args, needle):
    args = [a.replace("{tmp}", str(tmp_path)) for a in args]
    if "-w" not in args:
        args += ["-w", str(ws2)]
    before = (Workspace(ws2).head(), Workspace(ws2).version_ids())
    res = invoke(*args)
    assert res.exit_code == 1, res.output
    assert needle in assert_one_error_line(res.stderr)
    assert res.stdout == ""
    assert (Workspace(ws2).head(), Workspace(ws2).version_ids()) == before
    res = invoke(*args, "--json")  # --json changes nothing about errors: still one line on stderr, exit 1
    assert res.exit_code == 1 and res.stdout == ""
    assert needle in assert_one_error_line(res.stderr)


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["export", "--shard-size", "abc"], "--shard-size 'abc'"),
        (["export", "--shard-size", "0"], "--shard-size '0'"),
        (["export", "--shard-size", "12XB"], "--shard-size '12XB'"),
        (["ingest", "{tmp}/a", "--max-bytes", "lots"], "--max-bytes 'lots'"),
        (["export", "--format", "zip"], "--format 'zip'"),
    ],
)
def test_bad_option_values_exit_2_with_one_line(ws2, tmp_path, args, needle):
    """A value curate cannot parse is bad usage (exit 2), like Typer's own type errors."""
    args = [a.replace("{tmp}", str(tmp_path)) for a in args] + ["-w", str(ws2)]
    before = (Workspace(ws2).head(), Workspace(ws2).version_ids())
    res = invoke(*args)
    assert res.exit_code == 2, res.output
    assert needle in assert_one_error_line(res.stderr)
    assert (Workspace(ws2).head(), Workspace(ws2).version_ids()) == before


def test_too_many_bad_files_exit_1_and_commit_nothing(tmp_path, image_folder):
    root = image_folder({"cat": 3}, name="imgs")
    add_bad_files(root)  # 2 of 5 inputs fail: above the 20% asked for
    res = invoke("ingest", root, "-w", tmp_path / "ws", "--max-error-fraction", "0.2")
    assert res.exit_code == 1
    assert "nothing was committed" in assert_one_error_line(res.stderr)
    assert Workspace(tmp_path / "ws").version_ids() == []
    assert not list((tmp_path / "ws" / "blobs").glob("pack-*"))
    res = invoke("ingest", root, "-w", tmp_path / "ws", "--max-error-fraction", "1", "--json")
    assert res.exit_code == 0
    assert json.loads(res.stdout)["stats"]["summary"]["status"] == {"excluded": 2, "ok": 3}


def test_busy_workspace_exit_1(ws2, folders):
    with Workspace(ws2).writer():
        for args in (["ingest", folders["b"]], ["export"], ["checkout", "1"], ["gc"]):
            res = invoke(*args, "-w", ws2)
            assert res.exit_code == 1, (args, res.output)
            assert "workspace busy" in assert_one_error_line(res.stderr)
        # Readers are not writers: they still work while a writer holds the lock.
        assert invoke_json("show", "-w", ws2)["version"]["id"] == V2
    assert invoke("checkout", "1", "-w", ws2).exit_code == 0


@pytest.mark.parametrize(
    "args",
    [
        ["log", "--bogus"],
        ["show", "--nope"],
        ["ingest", "{tmp}/a", "--format", "bogus"],
        ["export", "--format", "bogus"],
        ["export", "--format", ""],
        ["ingest", "{tmp}/a", "--workers", "abc"],
        ["checkout"],
        ["diff"],
        ["samples"],
        ["samples", "-o", "{tmp}/x.txt"],
        ["show", "HEAD~x"],
        ["frobnicate"],
    ],
)
def test_bad_usage_exits_2(ws2, tmp_path, args):
    args = [a.replace("{tmp}", str(tmp_path)) for a in args]
    res = invoke(*args, "-w", ws2)
    assert res.exit_code == 2, res.output
    assert "Traceback" not in res.output
    assert res.stderr.strip()
    assert Workspace(ws2).version_ids() == [V1, V2]


def test_internal_errors_are_one_line_unless_debug(ws2, monkeypatch):
    import curate.summary

    def boom(table):  # noqa: ANN001, ANN202
        raise ValueError("kaboom")

    monkeypatch.setattr(curate.summary, "summarize", boom)
    res = invoke("show", "-w", ws2)
    assert res.exit_code == 1
    assert "internal error: ValueError: kaboom" in assert_one_error_line(res.stderr)
    res = invoke("show", "-w", ws2, "--debug")
    assert isinstance(res.exception, ValueError)


# ----------------------------------------------------------------------------------------------- CURATE_WORKSPACE


def test_curate_workspace_env_var(tmp_path, folders):
    env = {"CURATE_WORKSPACE": str(tmp_path / "envws")}
    r = invoke_json("ingest", folders["a"], env=env)
    assert r["version"] == V1
    assert Workspace(tmp_path / "envws").head() == V1
    assert not (tmp_path / "data").exists()  # the default ./data was not used
    assert invoke_json("log", env=env)["head"] == V1
    assert invoke_json("show", env=env)["summary"]["per_class"] == {"cat": 3, "dog": 2}
    # An explicit --workspace wins over the environment.
    r = invoke_json("ingest", folders["b"], "-w", tmp_path / "other", env=env)
    assert r["version"] == V1
    assert Workspace(tmp_path / "envws").version_ids() == [V1]
    assert Workspace(tmp_path / "other").samples().num_rows == 2


# ----------------------------------------------------------------------------------------------- real processes


def test_console_script_end_to_end(tmp_path, folders):
    ws = tmp_path / "ws"
    res = run_curate(["ingest", str(folders["a"]), "-w", str(ws), "--json"], cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    out = json.loads(res.stdout)
    assert out["version"] == V1 and out["stats"]["new_samples"] == 5
    truth = folder_truth(folders["a"])
    assert set(Workspace(ws).samples().column("sample_id").to_pylist()) == set(truth)

    res = run_curate(["show", "--json"], cwd=tmp_path, env=clean_env(CURATE_WORKSPACE=str(ws)))
    assert res.returncode == 0, res.stderr
    assert json.loads(res.stdout)["summary"]["per_class"] == {"cat": 3, "dog": 2}

    res = run_curate(["export", "-w", str(ws)], cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    assert f"export {V1}" in res.stdout
    assert (ws / "exports" / V1 / "dataset.json").exists()

    res = run_curate(["show", "42", "-w", str(ws)], cwd=tmp_path)
    assert res.returncode == 1
    assert "unknown version '42'" in assert_one_error_line(res.stderr)

    res = run_curate(["ingest", str(tmp_path / "nope"), "-w", str(ws)], cwd=tmp_path)
    assert res.returncode == 1
    assert "no such file or directory" in assert_one_error_line(res.stderr)
