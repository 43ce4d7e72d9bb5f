"""curate dedupe --model: embedding pairs as an extra near-duplicate signal beside the pixel signatures.

Ground truth: smooth random scenes (``tests.test_dedupe.scene``), some copied rotated by 90 degrees (the pixel
signatures do not see a quarter turn as a copy: a fact checked below) and one JPEG copy (a pixel near duplicate).
The model is a TorchScript net the test builds: the sum of an image's four quarter turns, flattened and
mean-centred, so a quarter-turned copy has the same embedding (up to resampling) while different scenes do not.
The tests pass ``--semantic-threshold`` themselves: the default belongs to the calibration, not to this model.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.test_dedupe import encode, scene

torch = pytest.importorskip("torch")
ROTATED = (0, 3, 5)  # scenes that get a quarter-turned copy
JPEG = 7  # the scene that gets a JPEG copy


def _cli(*args: object):  # noqa: ANN202 - click's Result
    from typer.testing import CliRunner

    from curate.cli import app

    return CliRunner().invoke(app, [str(a) for a in args])


def _torchscript(path: Path, module: Any, meta: dict[str, Any]) -> Path:
    torch.jit.save(torch.jit.script(module), str(path), _extra_files={"curate.json": json.dumps(meta)})
    return path


class QuarterTurns(torch.nn.Module):
    """Embedding = the sum of the four quarter turns of the image, flattened and mean-centred: rotation invariant."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = x + torch.rot90(x, 1, [2, 3]) + torch.rot90(x, 2, [2, 3]) + torch.rot90(x, 3, [2, 3])
        v = s.flatten(1)
        return v - v.mean(1, keepdim=True)


META = {"size": [20, 20], "channels": 1, "normalization": {"mean": [0.5], "std": [0.25]}, "outputs": ["embedding"]}


@pytest.fixture
def planted(tmp_path: Path) -> dict[str, Any]:
    """A workspace with scenes 0-11 (``a_XX.png``), quarter-turned copies of ``ROTATED`` and a JPEG copy of ``JPEG``
    (``z_...``: ingested after their originals, so ``--keep first`` keeps the original); and the model file."""
    root = tmp_path / "imgs" / "cls"
    root.mkdir(parents=True)
    for s in range(12):
        (root / f"a_{s:02d}.png").write_bytes(encode(scene(s)))
    for s in ROTATED:
        (root / f"z_{s:02d}_rot.png").write_bytes(encode(np.ascontiguousarray(np.rot90(scene(s)))))
    (root / f"z_{JPEG:02d}_jpeg.jpg").write_bytes(encode(scene(JPEG), "JPEG", quality=90))
    ws = tmp_path / "ws"
    r = _cli("ingest", tmp_path / "imgs", "-w", ws)
    assert r.exit_code == 0, r.output
    model = _torchscript(tmp_path / "turns.pt", QuarterTurns(), META)
    return {"ws": ws, "model": model, "root": root, "tmp": tmp_path}


def _dedupe(ws: Path, *args: object) -> dict[str, Any]:
    r = _cli("dedupe", "-w", ws, "--json", *args)
    assert r.exit_code == 0, r.output
    return json.loads(r.stdout)


def _rows(ws: Path) -> dict[str, dict[str, Any]]:
    from curate.workspace import Workspace

    return {Path(r["source"]).name: r for r in Workspace(ws).samples().to_pylist()}


def test_quarter_turned_copies_are_semantic_duplicates_only_with_the_model(planted: dict[str, Any]) -> None:
    ws = planted["ws"]
    base = _dedupe(ws, "--action", "flag")
    rows = _rows(ws)
    assert base["stats"]["duplicates"] == 1 and rows[f"z_{JPEG:02d}_jpeg.jpg"]["dup_kind"] == "near"  # pixels miss the turns
    assert all(rows[f"z_{s:02d}_rot.png"]["dup_group"] is None for s in ROTATED)

    res = _dedupe(ws, "--model", f"torchscript:{planted['model']}", "--semantic-threshold", "0.95")
    rows = _rows(ws)
    st = res["stats"]
    for s in ROTATED:
        copy, orig = rows[f"z_{s:02d}_rot.png"], rows[f"a_{s:02d}.png"]
        assert copy["is_duplicate"] and copy["dup_of"] == orig["sample_id"] and copy["dup_kind"] == "semantic"
        assert copy["status"] == "excluded" and copy["reason"] == "semantic_duplicate"
        assert copy["dup_score"] > 0.99 and orig["status"] == "ok"
    jpeg = rows[f"z_{JPEG:02d}_jpeg.jpg"]
    assert jpeg["dup_kind"] == "near" and jpeg["reason"] == "duplicate"  # the pixel signal is unchanged
    assert st["duplicates"] == 4 and st["semantic_duplicates"] == 3 and st["near_duplicates"] == 1
    # 4 embedding pairs: the 3 turns and the JPEG copy (a pixel duplicate is close in embedding space too)
    assert st["semantic"]["pairs"] == 4 and st["semantic"]["embeddings"]["computed"] == 16
    assert st["semantic"]["model"]["digest"] and st["summary"]["excluded_by_reason"] == {
        "dedupe:duplicate": 1, "dedupe:semantic_duplicate": 3}  # fmt: skip
    for s in set(range(12)) - set(ROTATED) - {JPEG}:  # never planted: no group
        assert rows[f"a_{s:02d}.png"]["dup_group"] is None


def test_embeddings_are_cached_per_model_and_the_threshold_decides(planted: dict[str, Any]) -> None:
    import pyarrow.parquet as pq

    from curate.workspace import Workspace

    ws, spec = planted["ws"], f"torchscript:{planted['model']}"
    parent = Workspace(ws).head()
    first = _dedupe(ws, "--model", spec, "--action", "flag")
    state = [p for p in Workspace(ws).path(first["version"]).rglob("embeddings-*.parquet")]
    assert len(state) == 1 and pq.read_table(state[0]).num_rows == 16
    # a sibling run with another threshold embeds nothing; a cosine above every pair's finds nothing semantic
    assert _cli("checkout", parent, "-w", ws).exit_code == 0
    again = _dedupe(ws, "--model", spec, "--action", "flag", "--semantic-threshold", "1.0")
    emb = again["stats"]["semantic"]["embeddings"]
    assert emb["computed"] == 0 and emb["cached"] == 16 and again["stats"]["semantic"]["pairs"] == 0
    assert _cli("checkout", parent, "-w", ws).exit_code == 0
    looser = _dedupe(ws, "--model", spec, "--action", "flag", "--semantic-threshold", "0.2")
    assert looser["stats"]["semantic"]["pairs"] > 3  # unrelated scenes pass a loose bar: the threshold is what decides


def test_precomputed_embeddings_file_pairs_its_planted_vectors(planted: dict[str, Any]) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    from curate.workspace import Workspace

    ws = planted["ws"]
    t = Workspace(ws).samples()
    ids, names = t.column("sample_id").to_pylist(), [Path(s).name for s in t.column("source").to_pylist()]
    rng = np.random.default_rng(0)
    vec = {n: rng.standard_normal(8) for n in names}
    vec["a_11.png"] = vec["a_10.png"] + 0.01 * rng.standard_normal(8)  # planted: 10 and 11 are "the same"
    path = planted["tmp"] / "emb.parquet"
    pq.write_table(pa.table({"sample_id": ids, "vector": [vec[n].tolist() for n in names]}), path)
    res = _dedupe(ws, "--model", f"embeddings:{path}", "--action", "flag", "--semantic-threshold", "0.95")
    rows = _rows(ws)
    assert rows["a_11.png"]["dup_of"] == rows["a_10.png"]["sample_id"] and rows["a_11.png"]["dup_kind"] == "semantic"
    assert res["stats"]["semantic"]["pairs"] == 1 and res["stats"]["semantic"]["embeddings"]["from_file"] == 16


def test_bad_models_are_one_line_errors(planted: dict[str, Any]) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    from curate.workspace import Workspace

    ws, tmp = planted["ws"], planted["tmp"]
    linear = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16 * 16, 4))  # wants 16x16, metadata says 20x20
    wrong_size = _torchscript(tmp / "wrong.pt", linear, META)
    ids = Workspace(ws).samples().column("sample_id").to_pylist()
    short = tmp / "short.parquet"
    pq.write_table(pa.table({"sample_id": ids[:5], "embedding": [[1.0, 0.0]] * 5}), short)
    cases = [
        (["--model", f"onnx:{tmp / 'missing.onnx'}"], 1, "missing.onnx"),
        (["--model", "nonsense"], 2, "KIND:WHAT"),
        (["--model", f"torchscript:{wrong_size}"], 1, "rejects 1x20x20 input"),
        (["--model", f"embeddings:{short}"], 1, "11 of 16 sample_ids have no embedding"),
        (["--model", f"torchscript:{planted['model']}", "--exact-only"], 2, "--exact-only"),
        (["--model", f"torchscript:{planted['model']}", "--semantic-threshold", "0"], 2, "--semantic-threshold"),
    ]
    head = Workspace(ws).head()
    for args, code, needle in cases:
        r = _cli("dedupe", "-w", ws, *args)
        assert r.exit_code == code, (args, r.output)
        lines = [ln for ln in r.output.splitlines() if ln.strip()]
        assert "Traceback" not in r.output and needle in lines[0], (args, r.output)
    assert Workspace(ws).head() == head  # nothing committed


def test_against_another_workspace_embeds_its_rows_from_its_own_blobs(planted: dict[str, Any]) -> None:
    tmp = planted["tmp"]
    new = tmp / "new" / "cls"
    new.mkdir(parents=True)
    for s in ROTATED:  # three quarter turns of reference scenes (the reference has one turn), plus two new scenes
        (new / f"n_{s:02d}_rot.png").write_bytes(encode(np.ascontiguousarray(np.rot90(scene(s), 3))))
    for s in (40, 41):
        (new / f"n_{s:02d}.png").write_bytes(encode(scene(s)))
    ws2 = tmp / "ws2"
    assert _cli("ingest", tmp / "new", "-w", ws2).exit_code == 0
    spec = f"torchscript:{planted['model']}"
    res = _dedupe(ws2, "--against", planted["ws"], "--model", spec, "--semantic-threshold", "0.95")
    rows, ref = _rows(ws2), _rows(planted["ws"])
    for s in ROTATED:
        copy = rows[f"n_{s:02d}_rot.png"]
        assert copy["dup_of"] == ref[f"a_{s:02d}.png"]["sample_id"] and copy["reason"] == "semantic_duplicate"
    assert rows["n_40.png"]["status"] == rows["n_41.png"]["status"] == "ok"
    emb = res["stats"]["semantic"]["embeddings"]
    assert emb["computed"] == 5 + 16 and res["stats"]["duplicates"] == 3  # this table's 5 rows + the reference's 16
    again = _dedupe(ws2, "--against", planted["ws"], "--model", spec, "--semantic-threshold", "0.95", "--action", "flag")
    assert again["stats"]["semantic"]["embeddings"]["computed"] == 0  # both sides now cached in this workspace
