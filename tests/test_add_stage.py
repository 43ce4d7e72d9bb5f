"""How to add a stage (docs/architecture.md): one module with ``STAGE``, registered by ``CURATE_STAGES`` (or an entry
point), runs from its generated command, from a pipeline file and from the Python API, with no other file touched.

The toy stage ``shout`` adds a column (the label in capitals) and excludes the rows whose source path holds a word.
"""

from __future__ import annotations

import json
import os
import sys
import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from helpers import clean_env, run_curate

TOY = '''
"""A toy stage: shout every label; exclude the rows whose source holds a word."""

from __future__ import annotations

from dataclasses import dataclass

from curate.stage import Context, Stage, StageResult


@dataclass(frozen=True)
class Config:
    """Settings of ``curate shout``.

    Attributes:
        word: Exclude the rows whose source path holds this word (reason quiet).
        times: Exclamation marks after each shout.
    """

    word: str = "dog"
    times: int = 2


def run(ctx: Context, cfg: Config) -> StageResult:
    import pyarrow as pa

    from curate.schema import exclude

    table = ctx.need_table()
    shouts = [(label or "").upper() + "!" * cfg.times for label in table.column("label").to_pylist()]
    if "shout" in table.column_names:
        table = table.drop_columns(["shout"])
    table = table.append_column("shout", pa.array(shouts, pa.string()))
    quiet = [cfg.word in source for source in table.column("source").to_pylist()]
    table = exclude(table, pa.array(quiet), stage="shout", reason="quiet")
    return StageResult(table, stats={"shouted": len(shouts), "quiet": sum(quiet)})


STAGE = Stage("shout", Config, run, doc="Shout every label; exclude the rows whose source holds a word.",
              columns={"shout": "the label in capitals"}, summary=lambda res: f"{res['stats']['shouted']} shouted")
'''


@pytest.fixture
def toy(tmp_path: Path) -> Path:
    """The folder holding ``shout_toy.py``."""
    folder = tmp_path / "plugins"
    folder.mkdir()
    (folder / "shout_toy.py").write_text(TOY)
    return folder


def env_with(folder: Path, **extra: str) -> dict[str, str]:
    return clean_env(PYTHONPATH=os.pathsep.join(filter(None, [str(folder), os.environ.get("PYTHONPATH")])), **extra)


def rows(ws_path: Path) -> dict[str, dict]:
    from curate.workspace import Workspace

    return {Path(r["source"]).name: r for r in Workspace(ws_path).samples().to_pylist()}


def chain(ws_path: Path) -> list[str]:
    from curate.workspace import Workspace

    ws = Workspace(ws_path)
    return [ws.info(v)["stage"] for v in ws.lineage(ws.head())]


def check_shouted(ws_path: Path, word: str, times: int) -> None:
    for name, r in rows(ws_path).items():
        assert r["shout"] == r["label"].upper() + "!" * times
        quiet = word in r["source"]
        assert (r["status"], r["excluded_by"], r["reason"]) == (("excluded", "shout", "quiet") if quiet else ("ok", None, None)), name


def test_toy_stage_from_the_cli(tmp_path: Path, toy: Path, image_folder: Callable[..., Path]) -> None:
    images = image_folder({"cat": 3, "dog": 2})
    env = env_with(toy, CURATE_STAGES="shout_toy")
    help_text = run_curate(["shout", "--help"], cwd=tmp_path, env=env)
    assert help_text.returncode == 0, help_text.stderr
    flat = " ".join(help_text.stdout.replace("│", " ").split())
    assert "Shout every label" in flat and "Exclude the rows whose source path holds this word (reason quiet)." in flat
    assert "--word" in flat and "[default: dog]" in flat and "--times" in flat and "[default: 2]" in flat
    assert "shout" in run_curate(["--help"], cwd=tmp_path, env=env).stdout
    assert run_curate(["ingest", str(images), "-w", "ws", "-j", "1"], cwd=tmp_path, env=env).returncode == 0
    res = run_curate(["shout", "-w", "ws", "--times", "3"], cwd=tmp_path, env=env)
    assert res.returncode == 0, res.stderr
    assert res.stdout.startswith("shout -> 000002-shout: 5 shouted"), res.stdout
    check_shouted(tmp_path / "ws", "dog", 3)
    assert chain(tmp_path / "ws") == ["ingest", "shout"]
    (tmp_path / "ws" / "curate.toml").write_text('[shout]\nword = "cat"\n')  # defaults < curate.toml < flags
    assert run_curate(["checkout", "1", "-w", "ws"], cwd=tmp_path, env=env).returncode == 0
    again = run_curate(["shout", "-w", "ws", "--json"], cwd=tmp_path, env=env)
    assert again.returncode == 0, again.stderr
    out = json.loads(again.stdout)
    assert out["stage"] == "shout" and out["stats"]["quiet"] == 3 and not out["cached"]
    check_shouted(tmp_path / "ws", "cat", 2)
    assert chain(tmp_path / "ws") == ["ingest", "shout"] and out["version"] == "000003-shout"
    bad = run_curate(["shout", "-w", "ws", "--times", "x"], cwd=tmp_path, env=env)
    assert bad.returncode == 2 and "--times" in bad.stderr


def test_toy_stage_from_a_pipeline_file(tmp_path: Path, toy: Path, image_folder: Callable[..., Path]) -> None:
    images = image_folder({"cat": 3, "dog": 2})
    pipe = tmp_path / "toy.toml"
    pipe.write_text(
        textwrap.dedent(f"""
        [pipeline]
        name = "toy"
        workspace = "ws"

        [[step]]
        stage = "ingest"
        source = "{images}"
        workers = 1

        [[step]]
        stage = "shout"
        word = "cat"
        times = 1
        """)
    )
    env = env_with(toy, CURATE_STAGES="shout_toy")
    res = run_curate(["run", str(pipe), "--json"], cwd=tmp_path, env=env)
    assert res.returncode == 0, res.stderr
    journal = json.loads(res.stdout)
    assert [(s["stage"], s["status"]) for s in journal["steps"]] == [("ingest", "run"), ("shout", "run")]
    check_shouted(tmp_path / "ws", "cat", 1)
    assert chain(tmp_path / "ws") == ["ingest", "shout"]
    pipe.write_text(pipe.read_text().replace("times = 1", "tims = 1"))
    typo = run_curate(["run", str(pipe)], cwd=tmp_path, env=env)
    assert typo.returncode == 2 and "unknown setting 'tims'" in typo.stderr


@pytest.fixture
def registered(toy: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """``shout_toy`` in this process's registry, forgotten afterwards."""
    from curate import registry

    monkeypatch.syspath_prepend(str(toy))
    monkeypatch.setenv("CURATE_STAGES", "shout_toy")
    registry.reset()
    yield
    monkeypatch.undo()
    sys.modules.pop("shout_toy", None)
    registry.reset()


def test_toy_stage_from_the_python_api(tmp_path: Path, registered: None, image_folder: Callable[..., Path]) -> None:
    import curate
    from curate import registry

    assert registry.get("shout").columns == {"shout": "the label in capitals"}
    ws = curate.Workspace(tmp_path / "ws")
    ws.ingest(image_folder({"cat": 3, "dog": 2}), workers=1)
    assert ws.run("shout", word="cat")["stats"]["quiet"] == 3
    check_shouted(tmp_path / "ws", "cat", 2)
    preview = ws.apply("shout", ws.samples(ws.versions()[0]["id"]), word="dog", times=0)
    assert sorted(preview.loc[preview["status"] == "ok", "label"]) == ["cat", "cat", "cat"]


def test_toy_stage_through_an_entry_point(tmp_path: Path, toy: Path) -> None:
    dist = toy / "shout_toy-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: shout-toy\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text("[curate.stages]\nshout = shout_toy\n")
    res = run_curate(["shout", "--help"], cwd=tmp_path, env=env_with(toy))
    assert res.returncode == 0 and "Shout every label" in res.stdout, res.stderr
