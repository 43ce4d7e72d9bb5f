"""The review desk (``curate review``): token and same-origin checks against the live server on 127.0.0.1, the
journal (persisted at once, read back after a restart, a torn line skipped), escaping, the queues, and the commit
producing the right rows from planted label issues with known ground truth."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest
from typer.testing import CliRunner

from curate.errors import CurateError
from tests.conftest import ingest, write_image_folder

EVIL = "<script>alert(1)</script>"


def plant(ws: Any) -> dict[str, Any]:
    """Ingest 6 cat + 6 dog + 1 oddly named class, then a clean-like version with known label issues and a duplicate
    group: cat_0 (quality 0.05) and cat_1 (0.2) are dogs, dog_0 (0.1) is a cat, the EVIL row (0.3) has no suggestion
    beyond cat; dog_5 is a duplicate of dog_4 with a conflicting label."""
    from curate.pipeline import run_stage
    from curate.stages import StageResult

    root = write_image_folder(ws.root.parent / "imgs", {"cat": 6, "dog": 6, "odd": 1})
    ingest(ws, root)
    t = ws.samples()
    src = t.column("source").to_pylist()
    name = {s: Path(s).stem for s in src}
    flips = {"cat_000": ("dog", 0.05), "dog_000": ("cat", 0.1), "cat_001": ("dog", 0.2), "odd_000": ("cat", 0.3)}
    labels = [EVIL if name[s].startswith("odd") else lab for s, lab in zip(src, t.column("label").to_pylist(), strict=True)]
    ids = dict(zip([name[s] for s in src], t.column("sample_id").to_pylist(), strict=True))

    def body(parent: pa.Table, _pid: str | None) -> StageResult:
        cols = {
            "label": pa.array(labels, pa.string()),
            "is_label_issue": pa.array([name[s] in flips for s in src]),
            "label_quality": pa.array([flips[name[s]][1] if name[s] in flips else 0.9 for s in src]),
            "suggested_label": pa.array([flips[name[s]][0] if name[s] in flips else None for s in src], pa.string()),
            "dup_group": pa.array([ids["dog_004"] if name[s] in ("dog_004", "dog_005") else None for s in src], pa.string()),
            "is_duplicate": pa.array([name[s] == "dog_005" for s in src]),
            "dup_score": pa.array([0.99 if name[s] == "dog_005" else None for s in src], pa.float32()),
        }
        out = parent.set_column(parent.schema.get_field_index("label"), "label", cols.pop("label"))
        for k, v in cols.items():
            out = out.append_column(k, v)
        lab = out.column("label").to_pylist()
        lab[[name[s] for s in src].index("dog_005")] = "cat"  # the duplicate's label conflicts with its group
        return StageResult(table=out.set_column(out.schema.get_field_index("label"), "label", pa.array(lab)), stats={})

    res = run_stage(ws, "clean", {"planted": 1}, body)
    return {"vid": res["version"], "ids": ids}


@pytest.fixture
def planted(workspace: Any) -> dict[str, Any]:
    return {"ws": workspace, **plant(workspace)}


@pytest.fixture
def desk(planted: dict[str, Any]) -> Any:
    from curate.review.desk import Desk, parse_causes

    d = Desk(planted["ws"], causes=parse_causes("glare")).start()
    yield d
    d.close()


def call(desk: Any, path: str, body: Any = None, *, token: bool = True, headers: dict[str, str] | None = None) -> tuple[int, Any]:
    """GET (body None) or POST JSON to the live desk; returns (status, parsed JSON or text)."""
    base = f"http://127.0.0.1:{desk.port}"
    hdrs = dict(headers or {})
    if body is None:
        sep = "&" if "?" in path else "?"
        url = base + path + (f"{sep}token={desk.token}" if token else "")
        req = urllib.request.Request(url, headers=hdrs)
    else:
        hdrs.setdefault("Content-Type", "application/json")
        if token:
            hdrs.setdefault("X-Curate-Token", desk.token)
        req = urllib.request.Request(base + path, data=json.dumps(body).encode(), headers=hdrs, method="POST")
    try:
        with urllib.request.urlopen(req, timeout=60) as r:  # noqa: S310 - our own loopback server
            code, data, ctype = r.status, r.read(), r.headers.get("Content-Type", "")
    except urllib.error.HTTPError as e:
        code, data, ctype = e.code, e.read(), e.headers.get("Content-Type", "")
    return code, json.loads(data) if "json" in ctype else data


def test_every_request_without_the_token_is_forbidden(desk: Any, planted: dict[str, Any]) -> None:
    sid = planted["ids"]["cat_000"]
    assert desk.server.server_address[0] == "127.0.0.1"
    for path in ("/", f"/image/{sid}", "/api/state", "/nothing"):
        assert call(desk, path, token=False)[0] == 403, path
    assert call(desk, "/?token=wrong", token=False)[0] == 403
    # a page on another host name that resolves to 127.0.0.1 (DNS rebinding) sends its own Host
    assert call(desk, "/", headers={"Host": f"evil.example:{desk.port}"})[0] == 403
    code, page = call(desk, "/")
    assert code == 200 and b"curate review" in page
    code, img = call(desk, f"/image/{sid}")
    assert code == 200 and img[:8] == b"\x89PNG\r\n\x1a\n"
    assert call(desk, f"/image/{planted['ids']['cat_003']}")[0] == 404  # not in the queue: not served


def test_cross_site_and_tokenless_posts_are_refused(desk: Any, planted: dict[str, Any]) -> None:
    body = {"sample_id": planted["ids"]["cat_000"], "decision": "exclude"}
    origin = f"http://127.0.0.1:{desk.port}"
    assert call(desk, "/api/decide", body, headers={"Origin": "http://evil.example"})[0] == 403
    assert call(desk, "/api/decide", body, headers={"Sec-Fetch-Site": "cross-site"})[0] == 403
    assert call(desk, "/api/decide", body, headers={"Referer": "http://evil.example/x"})[0] == 403
    assert call(desk, "/api/decide", body, token=False)[0] == 403
    assert call(desk, "/api/decide", body, headers={"Content-Type": "text/plain"})[0] == 403  # a form-like body
    assert call(desk, "/api/commit", {}, headers={"Origin": "http://evil.example"})[0] == 403
    assert not desk.journal.exists()  # nothing refused reached the journal
    code, saved = call(desk, "/api/decide", body, headers={"Origin": origin, "Sec-Fetch-Site": "same-origin"})
    assert code == 200 and saved["decision"] == "exclude"
    assert len(desk.journal.read_text().splitlines()) == 1


def test_decisions_are_journaled_at_once_and_shown_after_a_restart(desk: Any, planted: dict[str, Any]) -> None:
    from curate.review.desk import Desk

    ids, ws = planted["ids"], planted["ws"]
    assert call(desk, "/api/decide", {"sample_id": ids["cat_000"], "decision": "accept"})[1]["label"] == "dog"
    call(desk, "/api/decide", {"sample_id": ids["dog_000"], "decision": "exclude", "tags": ["Blurry", "glare"]})
    code, err = call(desk, "/api/decide", {"sample_id": ids["cat_001"], "decision": "label", "label": "zebra"})
    assert code == 400 and "unknown label 'zebra'" in err["error"]
    assert desk.journal == ws.root / "review" / f"{planted['vid']}.jsonl"
    lines = [json.loads(x) for x in desk.journal.read_text().splitlines()]  # on disk before the response came
    assert [(x["decision"], x["label"], x["tags"]) for x in lines] == [("accept", "dog", []), ("exclude", None, ["blurry", "glare"])]
    desk.close()
    with desk.journal.open("a") as fh:
        fh.write('{"sample_id": "torn')  # a crash in the middle of a write
    again = Desk(ws).start()
    try:
        assert set(call(again, "/api/state")[1]) == {ids["cat_000"], ids["dog_000"]}
        page = call(again, "/")[1].decode()
        assert f'data-sid="{ids["dog_000"]}" data-suggested="cat" data-decision="exclude"' in page
        assert f'data-sid="{ids["cat_000"]}" data-suggested="dog" data-decision="accept" data-label="dog"' in page
    finally:
        again.close()


def test_labels_and_paths_from_data_are_escaped(desk: Any) -> None:
    page = call(desk, "/")[1].decode()
    assert EVIL not in page
    assert "given: <b>&lt;script&gt;alert(1)&lt;/script&gt;</b>" in page
    assert page.count("<script") == 1  # the desk's own script, with its nonce
    csp = urllib.request.urlopen(desk.url, timeout=60).headers["Content-Security-Policy"]  # noqa: S310
    assert "script-src 'nonce-" in csp and "default-src 'none'" in csp


def test_queues_worst_first(planted: dict[str, Any]) -> None:
    from curate.review.queues import select

    ids, t = planted["ids"], planted["ws"].samples()
    got = select(t, "label_issues")
    assert [(r["sample_id"], r["suggested_label"]) for r in got] == [
        (ids["cat_000"], "dog"), (ids["dog_000"], "cat"), (ids["cat_001"], "dog"), (ids["odd_000"], "cat")
    ]  # fmt: skip
    dup = select(t, "duplicates")
    assert [r["sample_id"] for r in dup] == [ids["dog_005"]]
    assert dup[0]["group"][0]["sample_id"] == ids["dog_004"] and dup[0]["suggested_label"] == "dog"
    with pytest.raises(CurateError, match="no is_outlier column"):
        select(t, "outliers")
    with pytest.raises(CurateError, match="unknown review queue"):
        select(t, "worst")


def test_commit_writes_relabels_exclusions_and_tags(desk: Any, planted: dict[str, Any]) -> None:
    from curate.review.tags import cause_counts, tags_from_table

    ids, ws = planted["ids"], planted["ws"]
    for body in (
        {"sample_id": ids["cat_000"], "decision": "accept"},
        {"sample_id": ids["dog_000"], "decision": "exclude", "tags": ["blurry"]},
        {"sample_id": ids["cat_001"], "decision": "label", "label": "dog", "tags": ["mislabeled"]},
        {"sample_id": ids["odd_000"], "decision": "exclude"},
        {"sample_id": ids["odd_000"], "decision": "keep", "tags": ["occluded"]},  # changed mind: the last line counts
    ):
        assert call(desk, "/api/decide", body)[0] == 200
    code, res = call(desk, "/api/commit", {})
    assert code == 200 and not res["cached"] and res["parent"] == planted["vid"] and res["version"].endswith("-review")
    assert ws.head() == res["version"]
    t = ws.samples(res["version"])
    rows = {r["sample_id"]: r for r in t.to_pylist()}
    assert t.num_rows == ws.samples(planted["vid"]).num_rows  # nothing dropped
    assert (rows[ids["cat_000"]]["label"], rows[ids["cat_000"]]["label_source"], rows[ids["cat_000"]]["given_label"]) == (
        "dog", "review", "cat")  # fmt: skip
    assert (rows[ids["cat_001"]]["label"], rows[ids["cat_001"]]["review_tags"]) == ("dog", ["mislabeled"])
    d0 = rows[ids["dog_000"]]
    assert (d0["status"], d0["excluded_by"], d0["reason"], d0["label"]) == ("excluded", "review", "review:blurry", "dog")
    odd = rows[ids["odd_000"]]
    assert (odd["status"], odd["review_decision"], odd["review_tags"], odd["label"]) == ("ok", "keep", ["occluded"], EVIL)
    untouched = [r for sid, r in rows.items() if sid not in {ids[k] for k in ("cat_000", "cat_001", "dog_000", "odd_000")}]
    assert all(r["status"] == "ok" and r["review_decision"] is None and r["review_tags"] is None for r in untouched)
    assert cause_counts(tags_from_table(t), {})["tagged"] == 3  # what the report's cause table reads
    # the same decisions again: the version they made, not a new one; through the CLI
    from curate.cli import app

    out = CliRunner().invoke(app, ["review", planted["vid"], "--commit", "--json", "-w", str(ws.root)])
    assert out.exit_code == 0, out.output
    assert json.loads(out.stdout)["version"] == res["version"] and json.loads(out.stdout)["cached"]


def test_commit_without_decisions_is_one_line_error(planted: dict[str, Any]) -> None:
    from curate.cli import app

    out = CliRunner().invoke(app, ["review", "--commit", "-w", str(planted["ws"].root)])
    assert out.exit_code == 1
    assert "no review decisions for version" in out.output and "Traceback" not in out.output
    out = CliRunner().invoke(app, ["review", "--queue", "bogus", "-w", str(planted["ws"].root)])
    assert out.exit_code == 2 and "unknown review queue 'bogus'" in out.output


def test_errors_queue_reads_a_runs_worst_mistakes(planted: dict[str, Any], tmp_path: Path) -> None:
    from curate.review.queues import select

    ids, t = planted["ids"], planted["ws"].samples()
    run = tmp_path / "run"
    run.mkdir()
    worst = [
        {"sample_id": ids["dog_002"], "true": "dog", "predicted": "cat", "confidence": 0.9, "p_true": 0.05},
        {"sample_id": "f" * 64, "true": "cat", "predicted": "dog", "confidence": 0.8, "p_true": 0.01},  # not in this version
        {"sample_id": ids["cat_004"], "true": "cat", "predicted": "dog", "confidence": 0.7, "p_true": 0.2},
    ]
    (run / "metrics.json").write_text(json.dumps({"dataset_version": planted["vid"], "splits": {"val": {"worst": worst}}}))
    got = select(t, f"errors:{run}", vid=planted["vid"])
    assert [(r["sample_id"], r["suggested_label"], r["score"]) for r in got] == [
        (ids["dog_002"], "cat", 0.05),
        (ids["cat_004"], "dog", 0.2),
    ]
    with pytest.raises(CurateError, match="does not exist"):
        select(t, f"errors:{tmp_path / 'nope'}")
