"""What the user sees when data or the machine is hostile: rich markup and emoji codes in labels, paths and
messages print literally; a workspace that is a file, read-only or on a full disk gets one line naming the path
and the cause (exit 1, nothing committed); ``curate.toml`` is read by every command with settings and an unknown
key or section fails before any work starts."""

from __future__ import annotations

import errno
import json
import os
from pathlib import Path

import pytest
from helpers import assert_one_error_line
from typer.testing import CliRunner

from curate.cli import app
from curate.workspace import Workspace

MARKUP_CLASS = "p[red]x"  # rich would print "px" in red
CLOSING = "a[/]b"  # rich raises MarkupError: closing tag '[/]' has nothing to close


def invoke(*args: object):  # noqa: ANN201
    return CliRunner().invoke(app, [str(a) for a in args])


@pytest.fixture(autouse=True)
def _in_tmp(in_empty_tmp):
    """Every test here runs from an empty folder with no curate settings in the environment."""


@pytest.fixture
def markup_ws(tmp_path: Path, make_png) -> Path:
    """A workspace ingested from ``src[red]/``: class folders ``p[red]x`` and ``plain``, a file ``]y.png`` inside a
    folder ``x[`` (its source path holds ``x[/]y.png``), and a manifest whose label is ``a[/]b``."""
    src = tmp_path / "src[red]"
    make_png(src / MARKUP_CLASS / "one.png", seed=1)
    make_png(src / MARKUP_CLASS / "x[" / "]y.png", seed=2)
    make_png(src / "plain" / "two.png", seed=3)
    ws = tmp_path / "ws"
    res = invoke("ingest", src, "-w", ws)
    assert res.exit_code == 0, res.output
    assert f"ingest {src}:" in res.stdout  # the source path, brackets and all
    (tmp_path / "m").mkdir()
    make_png(tmp_path / "m" / "three.png", seed=4)
    (tmp_path / "m" / "list.csv").write_text(f"path,label\nthree.png,{CLOSING}\n")
    res = invoke("ingest", tmp_path / "m" / "list.csv", "-w", ws)
    assert res.exit_code == 0, res.output
    return ws


def test_labels_and_paths_with_markup_print_literally(markup_ws: Path, tmp_path: Path) -> None:
    show = invoke("show", "-w", markup_ws)
    assert show.exit_code == 0, show.output
    assert MARKUP_CLASS in show.stdout and CLOSING in show.stdout and "plain" in show.stdout
    table = json.loads(invoke("show", "-w", markup_ws, "--json").stdout)["summary"]["per_class"]
    assert table == {MARKUP_CLASS: 2, CLOSING: 1, "plain": 1}
    sources = [r["source"] for r in Workspace(markup_ws).samples().to_pylist()]
    assert any(s.endswith("x[/]y.png") for s in sources)
    out = tmp_path / "o[bold]" / "s.csv"
    out.parent.mkdir()
    samples = invoke("samples", "-o", out, "-w", markup_ws)
    assert samples.exit_code == 0, samples.output
    assert f"-> {out}" in samples.stdout
    log = invoke("log", "-w", markup_ws)
    assert log.exit_code == 0 and "000002-ingest" in log.stdout


def test_an_error_message_with_markup_is_one_literal_line(markup_ws: Path, tmp_path: Path) -> None:
    res = invoke("show", CLOSING, "-w", markup_ws)  # "unknown version 'a[/]b'"
    assert res.exit_code == 1
    assert CLOSING in assert_one_error_line(res.stderr)
    missing = tmp_path / "no[/]such" / "p[red]x"
    res = invoke("ingest", missing, "-w", markup_ws)
    assert res.exit_code == 1
    assert str(missing) in assert_one_error_line(res.stderr)


def test_the_error_handler_prints_a_curate_error_with_markup_literally() -> None:
    import typer

    from curate.cli.common import handle_errors
    from curate.errors import CurateError

    def boom(debug: bool = False) -> None:
        raise CurateError(f"label {CLOSING} and {MARKUP_CLASS}", hint="see [/] here")

    sub = typer.Typer()
    sub.command()(handle_errors(boom))
    res = CliRunner().invoke(sub, [])
    assert res.exit_code == 1
    assert assert_one_error_line(res.stderr) == f"error: label {CLOSING} and {MARKUP_CLASS}"
    assert "hint: see [/] here" in res.stderr


def test_emoji_codes_stay_text_in_help_and_output(markup_ws: Path) -> None:
    """``--ratios a:b:c``: rich would turn ``:b:`` into the B-button emoji, in messages and in typer's help."""
    import typer

    import curate.cli  # noqa: F401 - installs the plain emoji codes for typer's help
    from curate.cli.common import say

    bbutton = "\U0001f171"
    res = invoke("split", "--ratios", "a:b:c", "-w", markup_ws)
    assert res.exit_code in (1, 2) and "a:b:c" in assert_one_error_line(res.stderr) and bbutton not in res.stderr
    sub = typer.Typer(rich_markup_mode="markdown")

    @sub.command()
    def ratios(r: str = typer.Option("", help="write a:b:c")) -> None:
        """Split train:b:test."""
        say(f"ratios {r}")

    helped = CliRunner().invoke(sub, ["--help"])
    assert "train:b:test" in helped.stdout and "a:b:c" in helped.stdout and bbutton not in helped.stdout
    got = CliRunner().invoke(sub, ["--r", "x:b:y"])
    assert "ratios x:b:y" in got.stdout and bbutton not in got.stdout


# ----------------------------------------------------------------------------------------------- system errors


@pytest.fixture
def src(tmp_path: Path, make_png) -> Path:
    for i in range(3):
        make_png(tmp_path / "src" / ("cat" if i % 2 else "dog") / f"{i}.png", seed=i)
    return tmp_path / "src"


def _no_version(ws: Path) -> None:
    assert not (ws / "versions").exists() or not [p for p in (ws / "versions").iterdir() if not p.name.startswith(".")]
    assert not (ws / "HEAD").exists()


def test_a_workspace_path_that_is_a_file(tmp_path: Path, src: Path) -> None:
    afile = tmp_path / "afile"
    afile.write_text("mine")
    for args in (["ingest", src], ["show"], ["export"], ["log"]):
        res = invoke(*args, "-w", afile)
        assert res.exit_code == 1, (args, res.output)
        line = assert_one_error_line(res.stderr)
        assert str(afile) in line and "is a file" in line and "internal error" not in line
    res = invoke("ingest", src, "-w", afile / "sub")  # a file in the way of a parent folder
    assert res.exit_code == 1
    line = assert_one_error_line(res.stderr)
    assert str(afile) in line and "internal error" not in line
    assert afile.read_text() == "mine"


@pytest.mark.parametrize(
    ("err", "cause"),
    [
        (OSError(errno.ENOSPC, os.strerror(errno.ENOSPC)), os.strerror(errno.ENOSPC)),
        (PermissionError(errno.EACCES, os.strerror(errno.EACCES), "WS/versions/.tmp/stats.json"), os.strerror(errno.EACCES)),
        (OSError(errno.EROFS, os.strerror(errno.EROFS)), os.strerror(errno.EROFS)),
    ],
    ids=["disk-full", "read-only", "read-only-fs"],
)
def test_disk_full_or_read_only_workspace_is_one_line_and_commits_nothing(tmp_path, src, monkeypatch, err, cause) -> None:
    import curate.workspace

    ws = tmp_path / "ws"
    if err.filename:
        err.filename = err.filename.replace("WS", str(ws))

    def refuse(path: Path, data: bytes) -> None:
        raise err

    monkeypatch.setattr(curate.workspace, "_fsync_write", refuse)
    res = invoke("ingest", src, "-w", ws)
    assert res.exit_code == 1, res.output
    line = assert_one_error_line(res.stderr)
    assert "internal error" not in line and cause in line
    assert str(ws) in line  # the file named by the error, else the workspace
    _no_version(ws)


def test_disk_full_during_export_is_one_line_and_leaves_no_partial_export(tmp_path, src, monkeypatch) -> None:
    import pyarrow.parquet

    ws = tmp_path / "ws"
    assert invoke("ingest", src, "-w", ws).exit_code == 0

    def full(*_a: object, **_k: object) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(pyarrow.parquet, "write_table", full)
    res = invoke("export", "-w", ws)
    assert res.exit_code == 1
    line = assert_one_error_line(res.stderr)
    assert os.strerror(errno.ENOSPC) in line and str(ws) in line and "internal error" not in line
    assert not (ws / "exports").exists() or not list((ws / "exports").iterdir())


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0, reason="root writes through chmod 0o555")
def test_a_chmod_read_only_workspace(tmp_path: Path, src: Path) -> None:
    ws = tmp_path / "ws"
    assert invoke("ingest", src, "-w", ws).exit_code == 0
    head = (ws / "HEAD").read_text()
    for p in [ws, *ws.rglob("*")]:
        if p.is_dir():
            p.chmod(0o555)
    try:
        res = invoke("split", "-w", ws)
        assert res.exit_code == 1
        line = assert_one_error_line(res.stderr)
        assert "internal error" not in line and str(ws) in line
        assert (ws / "HEAD").read_text() == head
    finally:
        for p in [ws, *ws.rglob("*")]:
            if p.is_dir():
                p.chmod(0o755)


# ----------------------------------------------------------------------------------------------- curate.toml


@pytest.fixture
def exported_ws(tmp_path: Path, src: Path) -> Path:
    ws = tmp_path / "ws"
    assert invoke("ingest", src, "-w", ws).exit_code == 0
    return ws


def test_export_reads_curate_toml(exported_ws: Path, tmp_path: Path) -> None:
    Path("curate.toml").write_text('[export]\nshard_size = "1"\nformat = "parquet"\nmin_shards = 1\n')
    res = json.loads(invoke("export", "-w", exported_ws, "--json").stdout)
    assert res["formats"] == ["parquet"] and res["shards"] == 3  # one row per shard, as the file says
    res = json.loads(invoke("export", "-w", exported_ws, "--shard-size", "2", "--out", tmp_path / "o", "--json").stdout)
    assert res["shards"] == 2  # the command line beats the file


@pytest.mark.parametrize(
    ("toml", "cmd", "needle"),
    [
        ('[export]\nformatt = "parquet"\n', ["export"], "formatt"),
        ("[train]\nepochz = 3\n", ["train"], "epochz"),
        ('[train]\nepochs = "3"\n', ["train"], "epochs = '3'"),
        ("[exprot]\nshard_size = 5\n", ["export"], "exprot"),
        ("[normalize]\nchanels = 1\n", ["normalize"], "chanels"),
        ("[report]\nmax_galery = 3\n", ["report"], "max_galery"),
        ('[evaluate]\nwhich = "best"\nsplitt = "val"\n', ["evaluate", "models/x"], "splitt"),
    ],
)
def test_unknown_or_mistyped_settings_fail_before_any_work(exported_ws, toml, cmd, needle) -> None:
    Path("curate.toml").write_text(toml)
    before = sorted(p.name for p in exported_ws.iterdir())
    res = invoke(*cmd, "-w", exported_ws)
    assert res.exit_code == 2, res.output
    line = assert_one_error_line(res.stderr)
    assert needle in line and "curate.toml" in line
    assert sorted(p.name for p in exported_ws.iterdir()) == before  # nothing exported, trained or written


def test_train_reads_curate_toml(exported_ws: Path) -> None:
    """``[train] arch`` reaches the trainer: an impossible value from the file fails like the flag would."""
    Path("curate.toml").write_text('[train]\narch = "no-such-net"\n')
    res = invoke("train", "-w", exported_ws)
    assert res.exit_code == 2
    assert "--arch 'no-such-net'" in assert_one_error_line(res.stderr)


def test_one_coercer_for_files_pipelines_and_the_command_line() -> None:
    import curate.pipeline.plan as plan
    from curate.config import coerce
    from curate.errors import UsageError

    assert not hasattr(plan, "_type_ok") and not hasattr(plan, "_coerce")
    assert coerce("a, b", tuple[str, ...], "k", "o") == ("a", "b")
    assert coerce(3, float, "k", "o") == 3.0 and isinstance(coerce(3, float, "k", "o"), float)
    assert coerce(100, str | None, "k", "o") == "100"
    assert coerce(None, int | None, "k", "o") is None
    for value, hint in (("3", int), (1, bool), (True, int), ("x", float), (None, int)):
        with pytest.raises(UsageError, match="must be"):
            coerce(value, hint, "k", "o")
