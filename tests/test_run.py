"""``curate run``: pipeline files, settings resolution, validation before work, caching, resume, the journal."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

from curate.cli import app
from curate.errors import CurateError, UsageError
from curate.pipeline.plan import load_plan
from curate.workspace import Workspace

REPO = Path(__file__).resolve().parent.parent
CHAIN = ["ingest", "dedupe", "split", "normalize", "export"]


@pytest.fixture(autouse=True)
def _in_tmp(in_empty_tmp):
    """Every test runs from an empty folder with no curate settings in the environment."""


@pytest.fixture
def src(image_folder) -> Path:
    return image_folder({"cat": 12, "dog": 10, "fox": 8}, name="imgs")


def invoke(*args: object):  # noqa: ANN201
    return CliRunner().invoke(app, [str(a) for a in args])


def write_pipeline(path: Path, src: Path, *, extra: str = "", split: str = "seed = 1\n") -> Path:
    """ingest -> dedupe -> split -> normalize -> export (parquet), plus ``extra`` steps."""
    path.write_text(
        f'[pipeline]\nname = "t"\nworkspace = "ws"\n\n'
        f'[[step]]\nstage = "ingest"\nsource = "{src}"\n\n'
        f'[[step]]\nstage = "dedupe"\n\n'
        f'[[step]]\nstage = "split"\n{split}\n'
        f'[[step]]\nstage = "normalize"\n\n'
        f'[[step]]\nstage = "export"\nformats = ["parquet"]\n' + extra
    )
    return path


def run_json(*args: object) -> dict:
    res = invoke("run", *args, "--workers", 1, "--json")
    assert res.exit_code == 0, (res.stdout, res.stderr)
    return json.loads(res.stdout)


def statuses(journal: dict) -> list[str]:
    return [s["status"] for s in journal["steps"]]


def test_pipeline_equals_the_cli_commands_and_a_rerun_is_all_cached(tmp_path, src):
    pipe = write_pipeline(tmp_path / "p.toml", src)
    first = run_json(pipe)
    assert first["status"] == "ok" and statuses(first) == ["run"] * 5
    assert [s["label"] for s in first["steps"]] == CHAIN
    ws = Workspace("ws")
    assert first["head"] == ws.head() == "000004-normalize"

    for args in (["ingest", src], ["dedupe"], ["split", "--seed", "1"], ["normalize"], ["export", "--format", "parquet"]):
        res = invoke(*args, "-w", "cli", "-j", 1) if args[0] in ("ingest", "dedupe", "normalize") else invoke(*args, "-w", "cli")
        assert res.exit_code == 0, res.output
    cli = Workspace("cli")
    assert cli.version_ids() == ws.version_ids()
    a = ws.samples().to_pandas().sort_values("sample_id").reset_index(drop=True)
    b = cli.samples().to_pandas().sort_values("sample_id").reset_index(drop=True)
    pd.testing.assert_frame_equal(a, b)
    for vid in ws.version_ids():
        assert ws.info(vid)["config_sha256"] == cli.info(vid)["config_sha256"]
    idx = json.loads((ws.root / "exports" / ws.head() / "index.json").read_text())
    assert [r["sha256"] for r in idx] == [
        r["sha256"] for r in json.loads((cli.root / "exports" / cli.head() / "index.json").read_text())
    ]

    versions = ws.version_ids()
    again = run_json(pipe)
    assert statuses(again) == ["cached"] * 5
    assert ws.version_ids() == versions and ws.head() == first["head"]
    journal = json.loads((ws.root / "runs" / "t.json").read_text())
    assert journal["status"] == "ok" and statuses(journal) == ["cached"] * 5


def test_set_overrides_the_file_and_reaches_the_version_config(tmp_path, src):
    pipe = write_pipeline(tmp_path / "p.toml", src)
    out = run_json(pipe, "--set", "split.seed=7", "--set", 'split.ratios="80:20"', "--set", "dedupe.threshold=0.95")
    ws = Workspace("ws")
    by_stage = {ws.info(v)["stage"]: ws.info(v)["config"] for v in ws.version_ids()}
    assert by_stage["split"]["seed"] == 7 and [r[0] for r in by_stage["split"]["ratios"]] == ["train", "val"]
    assert by_stage["dedupe"]["threshold"] == 0.95
    assert set(ws.stats(out["head"])["summary"]["per_split"]) == {"train", "val"}


@pytest.mark.parametrize(
    ("step", "sets", "needle"),
    [
        ('[[step]]\nstage = "export"\nshard_rowz = 5\n', [], "step 6 (export#2): unknown setting 'shard_rowz'"),
        ('[[step]]\nstage = "exprot"\n', [], "step 6: unknown stage 'exprot'"),
        ('[[step]]\nstage = "train"\nepochs = "many"\n', [], "step 6 (train): epochs = 'many' must be int"),
        ('[[step]]\nstage = "train"\n', ["train.epochs=0"], "step 6 (train): --epochs and --batch-size must be at least 1"),
        ("", ["split.seeds=3"], "step 3 (split): unknown setting 'seeds'"),
        ("", ["clean.folds=3"], "--set clean.folds: "),
        ("", ["dedupe.action=drop"], "step 2 (dedupe): --action must be one of"),
    ],
)
def test_bad_settings_fail_with_exit_2_before_any_version(tmp_path, src, step, sets, needle):
    pipe = write_pipeline(tmp_path / "p.toml", src, extra="\n" + step)
    args = [x for s in sets for x in ("--set", s)]
    res = invoke("run", pipe, *args)
    assert res.exit_code == 2, res.output
    assert needle in res.stderr and "Traceback" not in res.stderr
    if "step" in needle:
        assert str(pipe) in res.stderr
    assert Workspace("ws").version_ids() == []


def test_failed_step_then_rerun_resumes_at_it(tmp_path, src, monkeypatch):
    import curate.stages.split.assign as split_mod

    pipe = write_pipeline(tmp_path / "p.toml", src)
    real = split_mod.run_split

    def broken(table, cfg):  # noqa: ANN001, ANN202
        raise CurateError("split exploded", hint="fix it")

    monkeypatch.setattr(split_mod, "run_split", broken)
    res = invoke("run", pipe, "--workers", 1)
    assert res.exit_code == 1 and "split exploded" in res.stderr
    ws = Workspace("ws")
    assert [v.split("-")[1] for v in ws.version_ids()] == ["ingest", "dedupe"]
    journal = json.loads((ws.root / "runs" / "t.json").read_text())
    assert journal["status"] == "failed" and statuses(journal) == ["run", "run", "failed", "pending", "pending"]
    assert journal["steps"][2]["error"] == "split exploded"

    monkeypatch.setattr(split_mod, "run_split", real)
    out = run_json(pipe)
    assert statuses(out) == ["cached", "cached", "run", "run", "run"]
    assert [v.split("-")[1] for v in ws.version_ids()] == ["ingest", "dedupe", "split", "normalize"]


def test_changed_inputs_redo_ingest_from_scratch_and_a_lost_export_is_redone(tmp_path, src, make_png):
    pipe = write_pipeline(tmp_path / "p.toml", src)
    first = run_json(pipe)
    ws = Workspace("ws")
    shard = next((ws.root / "exports" / first["head"] / "parquet").glob("train-*.parquet"))
    shard.unlink()
    assert statuses(run_json(pipe)) == ["cached"] * 4 + ["run"]
    assert shard.exists()

    make_png(src / "cat" / "new.png", seed=999)
    out = run_json(pipe)
    assert statuses(out)[0] == "run"
    ingest_v = out["steps"][0]["version"]
    assert ws.info(ingest_v)["parent"] is None  # a fresh chain: new data does not pile onto processed data
    assert ws.stats(ingest_v)["summary"]["rows"] == ws.stats(first["steps"][0]["version"])["summary"]["rows"] + 1


def test_a_pipeline_without_a_source_step_needs_a_version(tmp_path, src):
    pipe = tmp_path / "p.toml"
    pipe.write_text('[pipeline]\nname = "x"\n\n[[step]]\nstage = "dedupe"\n')
    res = invoke("run", pipe, "-w", "empty")
    assert res.exit_code == 1 and "needs a dataset version" in res.stderr


def test_rerun_after_more_stages_on_head_starts_from_the_previous_base(tmp_path, src):
    """A pipeline of stages only (no ingest) applied to an existing workspace: its rerun is cached."""
    assert invoke("ingest", src, "-w", "ws", "-j", 1).exit_code == 0
    pipe = tmp_path / "p.toml"
    pipe.write_text('[pipeline]\nname = "cur"\nworkspace = "ws"\n\n[[step]]\nstage = "dedupe"\n\n[[step]]\nstage = "split"\n')
    assert statuses(run_json(pipe)) == ["run", "run"]
    assert statuses(run_json(pipe)) == ["cached", "cached"]
    assert [v.split("-")[1] for v in Workspace("ws").version_ids()] == ["ingest", "dedupe", "split"]


def test_executor_option(tmp_path, src, monkeypatch):
    import curate.executors

    pipe = write_pipeline(tmp_path / "p.toml", src)
    seen = []
    monkeypatch.setattr(curate.executors, "configure", lambda name, **kw: seen.append((name, kw)), raising=False)
    out = run_json(pipe, "--executor", "local")
    assert seen == [("local", {"address": None, "workers": 1})] and out["executor"] == "local"
    monkeypatch.delattr(curate.executors, "configure")
    res = invoke("run", pipe, "--executor", "ray")
    assert res.exit_code == 2 and "--executor ray" in res.stderr


def test_dry_run_lists_resolved_settings_and_runs_nothing(tmp_path, src):
    pipe = write_pipeline(tmp_path / "p.toml", src)
    res = invoke("run", pipe, "--dry-run", "--json", "--set", "pipeline.seed=5", "-j", 3, "--set", "normalize.workers=1")
    assert res.exit_code == 0, res.output
    plan = json.loads(res.stdout)
    assert [s["label"] for s in plan["steps"]] == CHAIN
    assert plan["steps"][2]["config"]["seed"] == 1  # the step's own seed beats [pipeline] seed
    assert plan["steps"][1]["options"] == {"workers": 3} and plan["steps"][3]["options"] == {"workers": 1}
    assert not Path("ws").exists()


def test_a_stage_twice_is_addressed_by_number(tmp_path, src):
    pipe = write_pipeline(tmp_path / "p.toml", src, extra='\n[[step]]\nstage = "export"\nformats = ["webdataset"]\nout = "shards"\n')
    plan = load_plan(pipe, ["export#2.shard_rows=7", "export.memory_bytes=1000000"])
    first, second = (ps.config for ps in plan.steps[4:])
    assert (first.shard_rows, second.shard_rows) == (10_000, 7)
    assert first.memory_bytes == second.memory_bytes == 1_000_000
    with pytest.raises(UsageError, match="has no export#3 step"):
        load_plan(pipe, ["export#3.shard_rows=7"])


@pytest.mark.parametrize("path", sorted((REPO / "pipelines").glob("*.toml")), ids=lambda p: p.name)
def test_every_shipped_pipeline_validates(path):
    try:
        plan = load_plan(path)
    except UsageError as exc:
        assert "source is required" in exc.message, exc.message  # the data path comes with --set
        plan = load_plan(path, ["ingest.source=/data/fashion-mnist"])
    assert plan.steps and plan.steps[0].stage in ("ingest", "crawl")
    assert path.read_text().startswith("#"), "a shipped pipeline documents itself in a header comment"


def test_train_is_skipped_when_finished_and_resumed_when_not(tmp_path, src):
    train = '\n[[step]]\nstage = "train"\nepochs = 2\nbatch_size = 8\npatience = 0\n\n[[step]]\nstage = "evaluate"\nsplit = "val"\n'
    pipe = write_pipeline(tmp_path / "p.toml", src, extra=train)
    first = run_json(pipe)
    run = Path(first["steps"][5]["result"]["run"])
    assert run.parent == Workspace("ws").root / "models" and (run / "metrics.json").exists()
    assert (run / "eval_val.json").exists() and first["steps"][6]["summary"].startswith("val acc")
    assert statuses(run_json(pipe))[5] == "cached"
    (run / "metrics.json").unlink()  # checkpoints without final metrics: an interrupted run
    res = invoke("run", pipe, "--workers", 1)
    assert res.exit_code == 0, res.output
    assert "resumed" in res.stdout and (run / "metrics.json").exists()


def test_report_step_writes_the_report_and_is_cached_on_rerun(tmp_path, src):
    pytest.importorskip("curate.report")
    pipe = write_pipeline(tmp_path / "p.toml", src, extra='\n[[step]]\nstage = "report"\nmax_gallery = 4\n')
    first = run_json(pipe)
    report = Workspace("ws").root / "report.html"
    assert first["steps"][5]["status"] == "run" and report.exists()
    assert statuses(run_json(pipe))[5] == "cached"


def test_run_help_has_examples_and_is_listed():
    res = invoke("run", "--help")
    assert res.exit_code == 0 and "Example" in res.stdout and "--set" in res.stdout and "--json" in res.stdout
    assert "run" in invoke("--help").stdout
