"""Error analysis in the report: tagged rows counted per cause and per class (CSV or ``review_tags``), and the
bias / variance / data-mismatch table of a run, both read back from the HTML with a parser."""

from __future__ import annotations

import json
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest
from typer.testing import CliRunner

from curate.errors import CurateError
from curate.review.tags import cause_counts, read_tags_csv, split_causes
from tests.conftest import ingest, write_image_folder


class Tables(HTMLParser):
    """Every ``<table>`` of every ``<section id=...>``: ``{section: [[(cells, highlighted), ...], ...]}``."""

    def __init__(self) -> None:
        super().__init__()
        self.out: dict[str, list[list[tuple[list[str], bool]]]] = {}
        self.section: str | None = None
        self.row: list[str] | None = None
        self.mark = False
        self.cell: list[str] | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if tag == "section":
            self.section = a.get("id")
        elif tag == "table" and self.section:
            self.out.setdefault(self.section, []).append([])
        elif tag == "tr":
            self.row, self.mark = [], a.get("class") == "top"
        elif tag in ("td", "th"):
            self.cell = []

    def handle_endtag(self, tag: str) -> None:
        if tag in ("td", "th") and self.row is not None and self.cell is not None:
            self.row.append("".join(self.cell).strip())
            self.cell = None
        elif tag == "tr" and self.row is not None and self.section:
            self.out[self.section][-1].append((self.row, self.mark))
            self.row = None

    def handle_data(self, data: str) -> None:
        if self.cell is not None:
            self.cell.append(data)


def tables(html: str) -> dict[str, list[list[tuple[list[str], bool]]]]:
    p = Tables()
    p.feed(html)
    return p.out


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    from curate.workspace import Workspace

    root = tmp_path_factory.mktemp("causes")
    src = write_image_folder(root / "src", {"cat": 5, "dog": 4, "fox": 3}, size=(8, 8))
    ws = Workspace(root / "ws")
    ingest(ws, src)
    t = ws.samples(ws.resolve(None), columns=["sample_id", "source", "label"])
    rows = t.to_pylist()
    by_label: dict[str, list[dict]] = {}
    for r in rows:
        by_label.setdefault(r["label"], []).append(r)
    return {"root": root, "ws": ws, "table": t, "by_label": by_label}


def _write_tags(path: Path, lines: list[tuple[str, str]], key: str = "sample_id") -> Path:
    path.write_text(f"{key},cause\n" + "".join(f'{k},"{c}"\n' for k, c in lines))
    return path


def _planted(built: dict[str, Any], tmp_path: Path) -> Path:
    """cat: 3 blurry (one also mislabeled), dog: 1 blurry + 2 mislabeled, fox: 1 occluded, tagged by source for the fox.

    Known counts: blurry 4 (cat 3, dog 1), mislabeled 3 (cat 1, dog 2), occluded 1 (fox 1); 7 tagged rows.
    """
    cat, dog, fox = (built["by_label"][k] for k in ("cat", "dog", "fox"))
    lines = [
        (cat[0]["sample_id"], "Blurry"),
        (cat[1]["sample_id"], "blurry; mislabeled"),
        (cat[2]["sample_id"], "blurry"),
        (cat[2]["sample_id"], " blurry ;"),  # a repeat adds nothing
        (dog[0]["sample_id"], "blurry"),
        (dog[1]["sample_id"], "mislabeled"),
        (dog[2]["sample_id"], "mislabeled"),
    ]
    path = _write_tags(tmp_path / "tags.csv", lines)
    with path.open("a") as f:
        f.write(f"{fox[0]['source']},occluded\n")  # a source in the sample_id column: not accepted below
    return path


def test_cause_counts_per_cause_and_class(built: dict[str, Any], tmp_path: Path) -> None:
    path = _write_tags(tmp_path / "t.csv", [])
    cat, dog, fox = (built["by_label"][k] for k in ("cat", "dog", "fox"))
    src = _write_tags(tmp_path / "by_source.csv", [(fox[0]["source"], "occluded"), (dog[0]["source"], "blurry")], key="source")
    assert read_tags_csv(src, built["table"]) == {fox[0]["sample_id"]: ["occluded"], dog[0]["sample_id"]: ["blurry"]}
    tags = {cat[0]["sample_id"]: ["blurry"], cat[1]["sample_id"]: ["blurry", "mislabeled"], dog[1]["sample_id"]: ["mislabeled"],
            dog[2]["sample_id"]: ["mislabeled"], fox[0]["sample_id"]: ["occluded"]}  # fmt: skip
    labels = {r["sample_id"]: r["label"] for r in built["table"].to_pylist()}
    c = cause_counts(tags, labels)
    assert c["tagged"] == 5 and c["top"] == "mislabeled"
    assert [(r["cause"], r["rows"], r["per_class"]) for r in c["causes"]] == [
        ("mislabeled", 3, {"cat": 1, "dog": 2}),
        ("blurry", 2, {"cat": 2}),
        ("occluded", 1, {"fox": 1}),
    ]
    assert c["causes"][0]["share"] == pytest.approx(0.6) and split_causes("A;;b ; a") == ["a", "b"]
    assert read_tags_csv(path, built["table"]) == {}


def test_unknown_ids_and_bad_files_are_one_line_errors(built: dict[str, Any], tmp_path: Path) -> None:
    good = built["by_label"]["cat"][0]["sample_id"]
    bad = _write_tags(tmp_path / "bad.csv", [(good, "blurry"), ("f" * 64, "blurry"), ("e" * 64, "x")])
    with pytest.raises(CurateError) as err:
        read_tags_csv(bad, built["table"])
    msg = str(err.value)
    assert str(bad) in msg and "f" * 64 in msg and "e" * 64 not in msg and "\n" not in msg
    (tmp_path / "cols.csv").write_text("id,why\nx,y\n")
    with pytest.raises(CurateError, match="cause column"):
        read_tags_csv(tmp_path / "cols.csv", built["table"])
    with pytest.raises(CurateError, match="line 3 has no cause"):
        read_tags_csv(_write_tags(tmp_path / "empty.csv", [(good, "a"), (good, " ; ")]), built["table"])
    from curate.cli import app

    res = CliRunner().invoke(app, ["report", "-w", str(built["ws"].root), "--tags", str(bad), "-o", str(tmp_path / "r.html")])
    assert res.exit_code == 1 and str(bad) in res.output and "f" * 64 in res.output and "Traceback" not in res.output
    assert not (tmp_path / "r.html").exists()


def _fake_run(root: Path, vid: str, errors: dict[str, float]) -> Path:
    run = root / "runs" / "-".join(f"{v}" for v in errors.values())
    run.mkdir(parents=True, exist_ok=True)
    splits = {s: {"n": 10, "accuracy": 1 - e} for s, e in errors.items()}
    (run / "metrics.json").write_text(json.dumps({"dataset_version": vid, "errors": errors, "splits": splits, "history": []}))
    return run


def test_report_html_has_the_cause_table_with_the_top_cause_highlighted(built: dict[str, Any], tmp_path: Path) -> None:
    from curate.report import write_report

    path = _planted(built, tmp_path)
    with pytest.raises(CurateError, match="unknown sample_id"):  # the fox line names a source in the sample_id column
        write_report(built["ws"], tmp_path / "x.html", tags=path)
    path.write_text("\n".join(path.read_text().splitlines()[:-1]) + "\n")
    fox = built["by_label"]["fox"][0]
    by_source = _write_tags(tmp_path / "src.csv", [(fox["source"], "occluded")], key="source")
    res = write_report(built["ws"], tmp_path / "r.html", tags=path)
    assert res["causes"]["tagged"] == 6 and "causes" in res["sections"]
    table = tables((tmp_path / "r.html").read_text())["causes"][0]
    head, *rows = table
    assert head[0][:4] == ["cause", "rows", "share of tagged", "cat"]
    got = {r[0][0]: (r[0][1], dict(zip(head[0][3:], r[0][3:], strict=True)), r[1]) for r in rows}
    assert got["blurry"] == ("4", {"cat": "3", "dog": "1"}, True)  # top cause, highlighted
    assert got["mislabeled"] == ("3", {"cat": "1", "dog": "2"}, False)
    assert got["all tagged rows"][0] == "6" and sum(r[1] for r in rows) == 1
    # tags stored in the version (review_tags) are counted with the CSV's
    from curate.pipeline import run_stage
    from curate.stages import StageResult

    def body(parent: pa.Table, _pid: str | None) -> StageResult:
        tags = [["occluded"] if sid == fox["sample_id"] else None for sid in parent.column("sample_id").to_pylist()]
        return StageResult(table=parent.append_column("review_tags", pa.array(tags, pa.list_(pa.string()))), stats={})

    run_stage(built["ws"], "review", {"tags": 1}, body)
    res2 = write_report(built["ws"], tmp_path / "r2.html", tags=by_source)
    assert res2["causes"]["tagged"] == 1 and res2["causes"]["causes"][0]["rows"] == 1  # column and CSV: same row


@pytest.mark.parametrize(
    ("errors", "human", "marked"),
    [
        ({"train": 0.20, "train_dev": 0.21, "val": 0.22, "test": 0.22}, 0.01, "train"),
        ({"train": 0.02, "train_dev": 0.15, "val": 0.16, "test": 0.16}, None, "train-dev"),
        ({"train": 0.02, "train_dev": 0.03, "val": 0.15, "test": 0.15}, 0.01, "dev (val)"),
    ],
)
def test_report_html_has_the_bias_variance_table(built: dict[str, Any], tmp_path: Path, errors: dict, human: Any, marked: str) -> None:
    from curate.report import write_report

    vid = built["ws"].resolve(None)
    res = write_report(built["ws"], tmp_path / "bv.html", run=_fake_run(tmp_path, vid, errors), human_error=human)
    table = tables((tmp_path / "bv.html").read_text())["bias-variance"][0]
    head, *rows = table
    assert head[0][:3] == ["level", "error", "gap"]
    levels = [r[0][0] for r in rows]
    assert levels == (["human-level"] if human is not None else []) + ["train", "train-dev", "dev (val)", "test"]
    assert [r[0][0] for r in rows if r[1]] == [marked]
    assert rows[levels.index("train")][0][1] == f"{100 * errors['train']:.2f}%"
    assert res["diagnosis"]["largest"] in rows[levels.index(marked)][0][2]


def test_bad_human_error_and_train_dev_options_are_usage_errors(built: dict[str, Any], tmp_path: Path) -> None:
    from curate.cli import app

    w = ["-w", str(built["ws"].root)]
    res = CliRunner().invoke(app, ["report", *w, "--human-error", "1.5", "-o", str(tmp_path / "r.html")])
    assert res.exit_code == 2 and "--human-error" in res.output and "Traceback" not in res.output
    res = CliRunner().invoke(app, ["split", *w, "--train-dev", "lots"])
    assert res.exit_code == 2 and "--train-dev" in res.output and "Traceback" not in res.output
