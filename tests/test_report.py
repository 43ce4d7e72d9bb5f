"""curate report: a self-contained page whose sections show what the workspace knows, with known ground truth.

The workspace: 20 distinct smooth scenes (``tests.test_dedupe.scene``) in three classes, one of them named
``<script>alert(1)</script>``, plus planted duplicates (two same-pixel re-encodes, one 1 px shift) and a text file
posing as a PNG; ingest -> dedupe -> split -> normalize run for real, then a hand-made clean version (two label
issues, one outlier), a pseudolabel version with its rounds file and a fake training run folder.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pytest
from typer.testing import CliRunner

from tests.conftest import ingest, png_bytes
from tests.test_dedupe import encode, planted, scene

HOSTILE = "<script>alert(1)</script>"
LABELS = {"cat": range(0, 8), "dog": range(8, 16), HOSTILE: range(16, 20)}
DUPS = ((0, "reencode"), (8, "reencode"), (3, "shift1"))  # (scene seed, transform): exact, exact, near
ISSUES = {"s01.png": (0.05, "dog"), "s09.png": (0.2, "cat")}  # given label issues: quality, suggested
OUTLIER = "s17.png"
PSEUDO = "s05.png"


def _commit(ws: Any, stage: str, add: dict[str, Any], state: dict[str, bytes] | None = None, stats: dict | None = None) -> str:
    """Commit HEAD + columns computed by ``add[name](row_dict)`` as a version of ``stage`` (a stand-in for a stage)."""
    from curate.pipeline import run_stage
    from curate.stages import StageResult

    def body(parent: pa.Table, _pid: str | None) -> StageResult:
        rows = parent.to_pylist()
        t = parent
        for name, (fn, typ) in add.items():
            col = pa.array([fn(r) for r in rows], typ)
            t = t.set_column(t.schema.get_field_index(name), name, col) if name in t.column_names else t.append_column(name, col)
        return StageResult(table=t, stats=stats or {}, state=state or {})

    return run_stage(ws, stage, {"fake": stage}, body)["version"]


def build(root: Path) -> dict[str, Any]:
    """The workspace described in the module doc; returns it with its ground truth."""
    from curate.pipeline import run_stage
    from curate.stages.dedupe import DedupeConfig
    from curate.stages.dedupe.find import run_dedupe
    from curate.stages.normalize import NormalizeConfig
    from curate.stages.normalize.pixels import run_normalize
    from curate.stages.split import SplitConfig
    from curate.stages.split.assign import run_split
    from curate.workspace import Workspace

    img = root / "src" / "img"
    img.mkdir(parents=True)
    lines = ["path,label"]
    for label, seeds in LABELS.items():
        for s in seeds:
            (img / f"s{s:02d}.png").write_bytes(encode(scene(s)))
            lines.append(f"img/s{s:02d}.png,{label}")
    for s, how in DUPS:
        (img / f"dup{s:02d}_{how}.png").write_bytes(planted(scene(s), how))
        lines.append(f"img/dup{s:02d}_{how}.png,{next(k for k, v in LABELS.items() if s in v)}")
    (img / "broken.png").write_bytes(b"this is not an image\n")
    lines.append("img/broken.png,cat")
    (root / "src" / "list.csv").write_text("\n".join(lines) + "\n")

    ws = Workspace(root / "ws")
    ingest(ws, root / "src" / "list.csv", max_error_fraction=0.5)
    cfg = DedupeConfig()
    run_stage(ws, "dedupe", dataclasses.asdict(cfg), lambda p, pid: run_dedupe(ws, p, pid, cfg))
    run_stage(ws, "split", {"seed": 0}, lambda p, _pid: run_split(p, SplitConfig()))
    run_stage(ws, "normalize", {"channels": 0}, lambda p, _pid: run_normalize(ws, p, NormalizeConfig()))

    def name(r: dict[str, Any]) -> str:
        return Path(r["source"]).name

    _commit(
        ws,
        "clean",
        {
            "is_label_issue": (lambda r: name(r) in ISSUES, pa.bool_()),
            "label_quality": (lambda r: ISSUES.get(name(r), (0.9,))[0], pa.float64()),
            "suggested_label": (lambda r: ISSUES[name(r)][1] if name(r) in ISSUES else r["label"], pa.string()),
            "is_outlier": (lambda r: name(r) == OUTLIER, pa.bool_()),
            "ood_score": (lambda r: 0.93 if name(r) == OUTLIER else 0.1, pa.float64()),
        },
        stats={"label_issues": {"flagged": 2}, "outliers": {"flagged": 1}},
    )
    rounds = {
        "rounds": [
            {"round": 1, "accepted": {"cat": 3, "dog": 2}, "accepted_total": 5, "revoked": 0, "mean_confidence": 0.91,
             "val_accuracy": 0.8, "pseudo_accuracy": None},
            {"round": 2, "accepted": {"cat": 4, "dog": 4}, "accepted_total": 8, "revoked": 1, "mean_confidence": 0.88,
             "val_accuracy": 0.85, "pseudo_accuracy": 0.9, "selection_change": 0.25, "vs_round": 1, "delta_accuracy": 0.05,
             "delta_low": 0.0, "delta_high": 0.1, "kept": False},
            {"round": 3, "accepted": {"dog": 1, "cat": "n/a"}, "val_accuracy": "high", "kept": "yes"},  # malformed: blanks
        ],
        "chosen_round": 1,
        "stopped": "round 2 significantly worse than round 1 on val (1 in a row)",
    }  # fmt: skip
    vid = _commit(
        ws,
        "pseudolabel",
        {"label_source": (lambda r: "pseudo:1" if name(r) == PSEUDO else r["label_source"], pa.string())},
        state={"pseudolabel.json": json.dumps(rounds).encode()},
    )
    table = ws.samples(vid)
    ids = {name(r): r["sample_id"] for r in table.select(["sample_id", "source"]).to_pylist()}
    run = root / "models" / "fake-run"
    run.mkdir(parents=True)
    metrics = {
        "config": {"arch": "small-cnn", "epochs": 3},
        "dataset_version": vid,
        "stopped": "epochs",
        "best": {"epoch": 3},
        "params": 1234,
        "classes": sorted(LABELS),
        "history": [
            {"epoch": e, "train_loss": 1.0 / e, "train_acc": 0.3 * e, "val_loss": 1.1 / e, "val_acc": 0.25 * e} for e in (1, 2, 3)
        ],
        "splits": {
            "test": {
                "n": 4, "accuracy": 0.75, "macro_f1": 0.7, "roc_auc_ovr_macro": 0.8, "topk_error": {},
                "per_class": {c: {"precision": 0.5, "recall": 0.5, "f1": 0.5, "support": 1} for c in sorted(LABELS)},
                "confusion": [[1, 0, 0], [0, 1, 1], [0, 0, 1]],
                "worst": [{"sample_id": ids["s02.png"], "true": "cat", "predicted": "dog", "confidence": 0.97, "p_true": 0.02}],
            }
        },
    }  # fmt: skip
    (run / "metrics.json").write_text(json.dumps(metrics))
    return {"ws": ws, "root": root, "vid": vid, "ids": ids, "run": run, "table": table}


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    return build(tmp_path_factory.mktemp("report"))


@pytest.fixture(scope="module")
def page(built: dict[str, Any]) -> dict[str, Any]:
    from curate.report import write_report

    out = built["root"] / "out" / "report.html"
    res = write_report(built["ws"], out, run=built["run"], max_gallery=48, seed=0)
    return {"res": res, "html": out.read_text(encoding="utf-8"), "path": out}


def section_html(html: str, sid: str) -> str:
    m = re.search(rf'<section id="{sid}">(.*?)</section>', html, re.S)
    assert m, f"section {sid} missing"
    return m.group(1)


def test_every_section_renders_and_the_file_is_self_contained(page: dict[str, Any]) -> None:
    html, res = page["html"], page["res"]
    expected = ["overview", "lineage", "classes", "excluded", "duplicates", "label-issues", "outliers", "normalization"]
    assert res["sections"] == [*expected, "pseudolabel", "training"], res["omitted"]
    assert res["bytes"] == page["path"].stat().st_size
    assert res["images_failed"] == 1  # the text file posing as a PNG
    assert "http://" not in html and "https://" not in html
    for attr in re.findall(r'(?:src|href)="([^"]*)"', html):
        assert attr.startswith(("data:", "#")), attr
    assert "<script" not in html.lower()


def test_hostile_label_is_escaped(page: dict[str, Any]) -> None:
    html = page["html"]
    assert HOSTILE not in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html


def test_known_counts_and_classes(built: dict[str, Any], page: dict[str, Any]) -> None:
    html = page["html"]
    excl = section_html(html, "excluded")
    assert '<td>dedupe</td><td>duplicate</td><td class="n">3</td>' in excl
    assert '<td>ingest</td><td>not_an_image</td><td class="n">1</td>' in excl
    lineage = section_html(html, "lineage")
    for stage in ("ingest", "dedupe", "split", "normalize", "clean", "pseudolabel"):
        assert f"<td>{stage}</td>" in lineage
    assert "dedupe:duplicate 3" in lineage
    classes = section_html(html, "classes")
    for label in ("cat", "dog", "&lt;script&gt;alert(1)&lt;/script&gt;"):
        assert f"<td>{label}</td>" in classes
    norm = section_html(html, "normalization")
    assert 'alt="pixel histogram"' in norm and "exact, over every pixel" in norm


def test_duplicate_groups_show_the_planted_pairs(built: dict[str, Any], page: dict[str, Any]) -> None:
    groups = section_html(page["html"], "duplicates").split('<div class="grp">')[1:]
    assert len(groups) == len(DUPS)
    ids = built["ids"]
    for s, how in DUPS:
        original, copy = ids[f"s{s:02d}.png"], ids[f"dup{s:02d}_{how}.png"]
        hits = [g for g in groups if f'title="{original}"' in g and f'title="{copy}"' in g]
        assert len(hits) == 1, (s, how)
        assert hits[0].index(original) < hits[0].index(copy)  # the kept one first
        assert ("exact" if how == "reencode" else "near") in hits[0]


def test_label_issues_worst_first_outliers_pseudo_and_run(built: dict[str, Any], page: dict[str, Any]) -> None:
    html, ids = page["html"], built["ids"]
    issues = section_html(html, "label-issues")
    assert issues.index(ids["s01.png"]) < issues.index(ids["s09.png"])
    assert "given: cat" in issues and "suggested: dog" in issues
    assert ids[OUTLIER] in section_html(html, "outliers")
    pseudo = section_html(html, "pseudolabel")
    assert "pseudo-label accuracy" in pseudo and ids[PSEUDO] in pseudo and 'alt="pseudo-label rounds"' in pseudo
    assert '<td class="n">3</td><td class="n">1</td><td class="n">0</td>' in pseudo  # round 3: 1 accepted, 0 revoked
    # each round's paired comparison on val and its verdict; which round was committed and why the loop stopped
    assert "+0.050 vs round 1 [+0.000, +0.100]" in pseudo and "no (significantly worse)" in pseudo and "25.0%" in pseudo
    assert "round 1 committed; stopped: round 2 significantly worse than round 1" in pseudo
    run = section_html(html, "training")
    assert ids["s02.png"] in run and "predicted: dog" in run
    assert 'alt="training curves"' in run and 'alt="confusion matrix test"' in run


def test_same_seed_same_bytes_and_the_run_is_found_without_run(built: dict[str, Any], page: dict[str, Any], tmp_path: Path) -> None:
    from curate.report import write_report

    res = write_report(built["ws"], tmp_path / "again.html", models=built["root"] / "models")
    assert res["run"] == str(built["run"])
    assert (tmp_path / "again.html").read_text(encoding="utf-8") == page["html"]
    older = write_report(built["ws"], tmp_path / "v2.html", version="2", models=built["root"] / "models")
    assert older["version"].startswith("000002") and "training" in older["omitted"] and "normalization" in older["omitted"]


def test_cli_json_human_and_errors(built: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from curate.cli import app

    monkeypatch.chdir(built["root"])  # models/fake-run is picked up from ./models
    runner = CliRunner()
    w = ["-w", str(built["ws"].root)]
    res = runner.invoke(app, ["report", *w, "-o", str(tmp_path / "r.html"), "--json", "--max-gallery", "4"])
    assert res.exit_code == 0, res.output
    data = json.loads(res.stdout)
    assert data["run"] == "models/fake-run" and "training" in data["sections"]
    human = runner.invoke(app, ["report", *w, "-o", str(tmp_path / "h.html")])
    assert human.exit_code == 0 and "sections:" in human.stdout and "h.html" in human.stdout
    (tmp_path / "file").write_text("x")
    for args, needle in (
        (["--version", "99"], "unknown version '99'"),
        (["--run", str(tmp_path / "nope")], str(tmp_path / "nope")),
        (["-o", str(tmp_path / "file" / "r.html")], "cannot write report"),
    ):
        bad = runner.invoke(app, ["report", *w, *args] + ([] if "-o" in args else ["-o", str(tmp_path / "x.html")]))
        assert bad.exit_code == 1, (args, bad.output)
        assert needle in bad.output and "Traceback" not in bad.output
    empty = runner.invoke(app, ["report", "-w", str(tmp_path / "empty"), "-o", str(tmp_path / "e.html")])
    assert empty.exit_code == 1 and "no versions" in empty.output


def test_large_workspace_report_stays_small(tmp_path: Path) -> None:
    """3,000 rows, 2,000 excluded over 5 reasons, 500 duplicate groups, 600 label issues: galleries stay capped."""
    from curate.report import write_report
    from curate.workspace import Workspace

    ws = Workspace(tmp_path / "ws")
    n = 3000
    with ws.writer():
        pw = ws.pack_writer("big")
        ids, packs = [], []
        for i in range(n):
            data = png_bytes(i, (24, 24))
            sid = hashlib.sha256(data).hexdigest()
            ids.append(sid)
            packs.append(pw.add(sid, data))
        pw.close()
        reasons = ["duplicate", "corrupt", "balance", "label_issue", "too_large"]
        table = pa.table(
            {
                "sample_id": ids,
                "source": [f"big/{i:05d}.png" for i in range(n)],
                "label": [f"class{i % 7}" for i in range(n)],
                "split": [("train", "val", "test")[i % 3] for i in range(n)],
                "status": ["excluded" if i < 2000 else "ok" for i in range(n)],
                "excluded_by": ["stage" if i < 2000 else None for i in range(n)],
                "reason": [reasons[i % 5] if i < 2000 else None for i in range(n)],
                "pack": packs,
                "dup_group": [ids[i - i % 2] if i < 1000 else None for i in range(n)],
                "dup_kind": ["near" if i < 1000 else None for i in range(n)],
                "dup_score": [0.95 if i < 1000 else None for i in range(n)],
                "is_label_issue": [1000 <= i < 1600 for i in range(n)],
                "label_quality": [i / n for i in range(n)],
                "suggested_label": ["class0"] * n,
            }
        )
        ws.commit(stage="ingest", parent=None, table=table, config={}, stats={})
    res = write_report(ws, tmp_path / "big.html", max_gallery=10, models=tmp_path / "none")
    html = (tmp_path / "big.html").read_text(encoding="utf-8")
    galleries = re.findall(r'<div class="gal">((?:<figure.*?</figure>)*)', html, re.S)
    assert len(galleries) == 5 + 5 + 1  # one per exclusion reason, five duplicate groups of two, the label issues
    assert max(g.count("<figure") for g in galleries) == 10
    assert html.count("<figure") <= 10 * 5 + 10 + 10  # 5 reason galleries, duplicate groups, label issues
    assert res["bytes"] < 1_500_000, res["bytes"]
    assert pc.sum(pc.equal(ws.samples().column("status"), "excluded")).as_py() == 2000
    assert "2,000 of 3,000 rows are excluded" in html


def _chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


def test_renders_in_headless_chromium_without_console_errors(page: dict[str, Any], tmp_path: Path) -> None:
    exe = _chromium()
    if exe is None:
        pytest.skip("chromium is not installed (make test installs it where apt-get is available)")
    shot = tmp_path / "shot.png"
    cmd = [
        exe, "--headless=new", "--no-sandbox", "--disable-gpu", "--no-first-run", "--enable-logging=stderr", "--v=0",
        "--log-level=0", f"--user-data-dir={tmp_path / 'profile'}", f"--screenshot={shot}", "--window-size=1200,2000",
        page["path"].resolve().as_uri(),
    ]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=False)
    console = [ln for ln in proc.stderr.splitlines() if "CONSOLE" in ln or "Uncaught" in ln]
    assert not console, console
    assert shot.exists(), proc.stderr[-2000:]
    import numpy as np
    from PIL import Image

    arr = np.asarray(Image.open(shot).convert("RGB"), dtype=np.float64)
    assert arr.shape[:2] == (2000, 1200)
    assert arr.std() > 20, arr.std()
    assert len(np.unique(arr.reshape(-1, 3), axis=0)) > 50


@pytest.mark.slow
def test_run_without_metrics_is_scored_from_its_checkpoint(built: dict[str, Any], tmp_path: Path) -> None:
    """A run killed before its final scoring has no metrics.json: the report predicts val/test with model_*.pt."""
    from curate.learn.train import TrainConfig, train
    from curate.report import write_report

    run = tmp_path / "run"
    train(built["ws"], TrainConfig(version=built["vid"], epochs=1, batch_size=8, device="cpu", out=str(run)))
    (run / "metrics.json").unlink()
    res = write_report(built["ws"], tmp_path / "r.html", run=run, max_gallery=5)
    html = section_html((tmp_path / "r.html").read_text(encoding="utf-8"), "training")
    assert res["run"] == str(run) and "scored here with the checkpoint" in html
    assert "<td>val</td>" in html and 'alt="confusion matrix val"' in html and 'alt="training curves"' in html
    assert html.count("<figure") <= 5
