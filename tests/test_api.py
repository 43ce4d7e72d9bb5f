"""The Python API (``curate.Workspace``): the README example runs as written, against ground truth.

The folder has known class counts and planted duplicates (the same pixels in different bytes, so ingest keeps both
and dedupe must find them); split ratios are checked on in-memory tables with exact counts per class.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest
from test_dedupe import encode, planted, scene

import curate
from curate.errors import UsageError

#: scenes per class, and which scenes get a planted re-encoded copy in the same class folder
COUNTS = {"cat": 6, "dog": 4}
PLANTED = {"cat": [0, 3], "dog": [7]}


def planted_folder(root: Path) -> Path:
    """``cat/``: scenes 0-5, ``dog/``: scenes 6-9; plus a re-encoded copy of each ``PLANTED`` scene."""
    seed = 0
    for cls, n in COUNTS.items():
        (root / cls).mkdir(parents=True)
        for _ in range(n):
            (root / cls / f"s{seed:02d}.png").write_bytes(encode(scene(seed)))
            seed += 1
    for cls, seeds in PLANTED.items():
        for s in seeds:
            (root / cls / f"s{s:02d}_copy.png").write_bytes(planted(scene(s), "reencode"))
    return root


def readme_example() -> str:
    """The first python block of the README's "Python API" section."""
    text = (Path(__file__).parents[1] / "README.md").read_text()
    section = text.split("\n## Python API\n", 1)[1].split("\n## ", 1)[0]
    return re.search(r"```python\n(.*?)```", section, re.S)[1]  # type: ignore[index]


def by_name(df: Any) -> dict[str, dict[str, Any]]:
    return {Path(r["source"]).name: r for r in df.to_dict("records")}


def test_readme_example_runs_and_matches_the_planted_truth(in_empty_tmp: Path, capsys: pytest.CaptureFixture[str]) -> None:
    planted_folder(in_empty_tmp / "images")
    scope: dict[str, Any] = {}
    exec(compile(readme_example(), "README.md", "exec"), scope)  # noqa: S102 - the documented example, as written
    ws, df, halves = scope["ws"], scope["df"], scope["halves"]
    n_planted = sum(map(len, PLANTED.values()))
    assert [v["stage"] for v in ws.versions()] == ["ingest", "dedupe", "split"]
    assert ws.head == ws.versions()[-1]["id"] and ws.versions()[-1]["parent"] == ws.versions()[-2]["id"]
    everything = by_name(ws.samples())
    assert len(everything) == sum(COUNTS.values()) + n_planted
    for cls, seeds in PLANTED.items():
        for s in seeds:
            copy, original = everything[f"s{s:02d}_copy.png"], everything[f"s{s:02d}.png"]
            assert (copy["status"], copy["excluded_by"], copy["reason"]) == ("excluded", "dedupe", "duplicate")
            assert copy["dup_of"] == original["sample_id"] and original["status"] == "ok" and copy["label"] == cls
    assert sorted(df["label"].value_counts().items()) == sorted(COUNTS.items())  # the included rows
    assert set(df["status"]) == {"ok"} and set(df["split"]) <= {"train", "val", "test"}
    assert ws.show()["summary"]["excluded_by_reason"] == {"dedupe:duplicate": n_planted}
    assert len(halves) == len(df) and set(halves["split"]) <= {"train", "val", "test"}  # splits already set: stable
    assert "cat" in capsys.readouterr().out


def frame(per_class: int = 100) -> Any:
    """An in-memory sample table with no split yet: ``per_class`` rows of ``a`` and of ``b``."""
    import pandas as pd

    n = 2 * per_class
    return pd.DataFrame({"sample_id": [f"{i:064x}" for i in range(n)], "label": ["a", "b"] * per_class,
                         "status": ["ok"] * n, "split": [None] * n})  # fmt: skip


def test_apply_split_gives_the_ratios_on_a_frame_or_table_and_commits_nothing(tmp_path: Path) -> None:
    ws = curate.Workspace(tmp_path / "ws")
    df = frame()
    out = ws.apply("split", df)  # defaults 70:20:10
    assert {k: v for k, v in out.groupby(["label", "split"]).size().items()} == {
        (c, s): n for c in "ab" for s, n in (("train", 70), ("val", 20), ("test", 10))
    }
    again = ws.apply("split", pa.Table.from_pandas(df), ratios="80:20", seed=3)
    assert again["split"].value_counts().to_dict() == {"train": 160, "val": 40}
    assert list(again["sample_id"]) == list(df["sample_id"]) and "split" in df and df["split"].isna().all()
    assert ws.versions() == [] and ws.head is None


def test_settings_resolve_defaults_toml_keywords_and_unknown_ones_raise(in_empty_tmp: Path) -> None:
    ws = curate.Workspace(in_empty_tmp / "ws")
    (in_empty_tmp / "curate.toml").write_text('[split]\nratios = "50:50"\n')
    assert ws.apply("split", frame(10))["split"].value_counts().to_dict() == {"train": 10, "val": 10}  # the file
    assert ws.apply("split", frame(10), ratios="90:10")["split"].value_counts().to_dict() == {"train": 18, "val": 2}
    with pytest.raises(UsageError, match="unknown setting 'ratio'.*ratios"):
        ws.apply("split", frame(10), ratio="90:10")
    with pytest.raises(UsageError, match="unknown setting 'treshold'"):
        ws.run("dedupe", treshold=0.9)
    with pytest.raises(UsageError, match="seed = 'x' must be int"):
        ws.apply("split", frame(10), seed="x")
    with pytest.raises(UsageError, match="unknown stage 'splt'"):
        ws.run("splt")
    with pytest.raises(UsageError, match="in-memory"):
        ws.apply("ingest", frame(10))
    with pytest.raises(UsageError, match="source is required"):
        ws.run("ingest")


def test_samples_columns_included_and_run_cached(tmp_path: Path) -> None:
    ws = curate.Workspace(tmp_path / "ws")
    first = ws.ingest(planted_folder(tmp_path / "images"), workers=1)
    assert first["stats"]["summary"]["per_class"] == {"cat": 8, "dog": 5}
    res = ws.run("dedupe", workers=1)
    assert res["stats"]["duplicates"] == 3 and ws.run("dedupe", workers=1)["cached"]
    sub = ws.samples(columns=["sample_id", "label"], included=True)
    assert list(sub.columns) == ["sample_id", "label"] and sub["label"].value_counts().to_dict() == COUNTS
    assert len(ws.samples(first["version"])) == 13 and "dup_group" not in ws.samples(first["version"])
    assert ws.show(first["version"])["version"]["stage"] == "ingest"


def test_import_curate_stays_light() -> None:
    code = "import sys, curate; assert curate.Workspace; print(sorted({'pandas', 'pyarrow', 'torch'} & set(sys.modules)))"
    before = subprocess.run([sys.executable, "-c", "import sys, curate; print(sorted({'pandas', 'pyarrow'} & set(sys.modules)))"],
                            capture_output=True, text=True, check=True)  # fmt: skip
    assert before.stdout.strip() == "[]"
    after = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert "torch" not in after.stdout
