"""What ``curate clean`` acts on (``policy``, issue 18), against planted truth.

The rows: 400 tiny images in four classes. Their out-of-sample probabilities are planted (``--pred-probs``) with
the shape measured on Fashion-MNIST with 20% label noise (bench/value_policies.py, BENCHMARKS.md): models trained
on noisy labels are unsure, so a clean row gives its class 0.5-0.85; a *hard* clean row (20%: the shirts that look
like t-shirts) gives its right label only 0.15-0.3 and a look-alike class 0.6-0.7; a flipped row (8%) gives its
wrong label 0.005-0.03 and its true class 0.6-0.9; junk (3%, random labels) is spread over all classes. The
label and the outlier checks read these probabilities; the k-fold CNN still trains (outliers ask for it) but its
probabilities are not used.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from curate.pipeline import run_stage
from curate.stages.clean import CleanConfig, config_dict
from curate.stages.clean.checks import run_clean
from curate.stages.clean.policy import decide
from curate.workspace import Workspace
from tests.conftest import ingest

N, K = 400, 4
FAST = {"folds": 2, "epochs": 1, "find_mislabels": True, "find_outliers": True}


def _probs(rng: np.random.Generator, main: int, p_main: float, other: int | None = None, p_other: float = 0.0) -> list[float]:
    p = np.full(K, 0.0)
    p[main] = p_main
    if other is not None:
        p[other] = p_other
    rest = [k for k in range(K) if p[k] == 0]
    p[rest] = (1 - p.sum()) * rng.dirichlet(np.ones(len(rest)))
    return p.tolist()


def make_dataset(root: Path, *, sure: bool = False) -> tuple[dict[str, dict[str, str]], list[tuple[str, list[float]]]]:
    """Images ``root/images/q<label>/<name>.png`` and per name the planted probabilities; the truth by kind.

    ``sure``: the shape of MNIST with look-alike flips instead (BENCHMARKS.md, held-out sets): models sure of the
    clean rows (0.85-0.95, no hard rows), and flips that keep some probability on their given label (0.08-0.1)."""
    if sure:
        return _make_sure(root)
    rng = np.random.default_rng(5)
    truth: dict[str, dict[str, str]] = {"flipped": {}, "junk": {}, "hard": {}, "clean": {}}
    probs: list[tuple[str, list[float]]] = []
    kinds = rng.choice(["clean", "hard", "flipped", "junk"], N, p=[0.69, 0.2, 0.08, 0.03])
    for i, kind in enumerate(kinds.tolist()):
        true = i % K
        other = (true + 1 + int(rng.integers(0, K - 1))) % K
        label = other if kind in ("flipped", "junk") else true
        if kind == "clean":
            p = _probs(rng, true, rng.uniform(0.5, 0.85))
        elif kind == "hard":  # the right label, but the models lean to a look-alike
            p = _probs(rng, other, rng.uniform(0.6, 0.7), true, rng.uniform(0.15, 0.3))
        elif kind == "flipped":
            p = _probs(rng, true, rng.uniform(0.6, 0.9), label, rng.uniform(0.005, 0.03))
        else:
            p = (0.25 + rng.uniform(-0.03, 0.03, K)).tolist()
            p = (np.array(p) / sum(p)).tolist()
        _add(root, rng, truth, probs, f"{kind}{i:04d}.png", kind, true, label, p)
    return truth, probs


def _add(root: Path, rng: np.random.Generator, truth: dict, probs: list, name: str, kind: str, true: int, label: int, p: list) -> None:
    """One planted row: its image under its given label's folder, its truth and its probabilities."""
    from PIL import Image

    truth[kind][name] = f"q{true}" if kind != "junk" else ""
    (root / "images" / f"q{label}").mkdir(parents=True, exist_ok=True)
    Image.fromarray(rng.integers(0, 256, (8, 8), dtype=np.uint8)).save(root / "images" / f"q{label}" / name)
    probs.append((name, p))


def _make_sure(root: Path) -> tuple[dict[str, dict[str, str]], list[tuple[str, list[float]]]]:
    rng = np.random.default_rng(6)
    truth: dict[str, dict[str, str]] = {"flipped": {}, "junk": {}, "hard": {}, "clean": {}}
    probs: list[tuple[str, list[float]]] = []
    for i, kind in enumerate(rng.choice(["clean", "flipped", "junk"], N, p=[0.87, 0.1, 0.03]).tolist()):
        true = i % K
        label = (true + 1 + int(rng.integers(0, K - 1))) % K if kind != "clean" else true
        if kind == "clean":
            p = _probs(rng, true, rng.uniform(0.85, 0.95))
        elif kind == "flipped":  # the true class as sure as a clean row, the given label kept at 0.08-0.1
            p = _probs(rng, true, rng.uniform(0.82, 0.9), label, rng.uniform(0.08, 0.1))
        else:
            p = (0.25 + rng.uniform(-0.03, 0.03, K)).tolist()
            p = (np.array(p) / sum(p)).tolist()
        _add(root, rng, truth, probs, f"{kind}{i:04d}.png", kind, true, label, p)
    return truth, probs


def _flagged(root: Path, *, sure: bool) -> tuple[Workspace, dict[str, dict[str, str]], str]:
    truth, probs = make_dataset(root, sure=sure)
    ws = Workspace(root / "ws")
    ingest(ws, root / "images")
    t = ws.samples()
    by_name = dict(probs)
    ids = t["sample_id"].to_pylist()
    names = [Path(s).name for s in t["source"].to_pylist()]
    pq.write_table(pa.table({"sample_id": ids, "probs": [by_name[n] for n in names]}), root / "probs.parquet")
    path = str(root / "probs.parquet")
    _clean(ws, path)
    return ws, truth, path


@pytest.fixture(scope="module")
def sure_flagged(tmp_path_factory: pytest.TempPathFactory) -> tuple[Workspace, dict[str, dict[str, str]], str]:
    """As ``flagged``, on the ``sure`` shape (``make_dataset``)."""
    return _flagged(tmp_path_factory.mktemp("sure"), sure=True)


@pytest.fixture(scope="module")
def flagged(tmp_path_factory: pytest.TempPathFactory) -> tuple[Workspace, dict[str, dict[str, str]], str]:
    """A workspace after ingest + ``clean --find-mislabels --find-outliers --pred-probs`` (flag only)."""
    return _flagged(tmp_path_factory.mktemp("policy"), sure=False)


def _clean(ws: Workspace, pred_probs: str, **kw: object) -> dict:
    cfg = CleanConfig(**{**FAST, "pred_probs": pred_probs, **kw})
    return run_stage(ws, "clean", config_dict(cfg), lambda parent, pid: run_clean(ws, parent, pid, cfg))


def _outcome(ws: Workspace, truth: dict[str, dict[str, str]]) -> dict[str, float]:
    """Shares of the planted rows: junk excluded, flips fixed (relabeled right) or excluded, clean rows lost
    (excluded or relabeled wrong; hard rows included)."""
    t = ws.samples()
    rows = {
        Path(s).name: (st, lab)
        for s, st, lab in zip(t["source"].to_pylist(), t["status"].to_pylist(), t["label"].to_pylist(), strict=True)
    }
    clean = {**truth["clean"], **truth["hard"]}
    return {
        "junk_excluded": float(np.mean([rows[n][0] == "excluded" for n in truth["junk"]])),
        "flips_handled": float(np.mean([rows[n][0] == "excluded" or rows[n][1] == q for n, q in truth["flipped"].items()])),
        "flips_fixed": float(np.mean([rows[n][0] == "ok" and rows[n][1] == q for n, q in truth["flipped"].items()])),
        "clean_lost": float(np.mean([rows[n][0] == "excluded" or rows[n][1] != q for n, q in clean.items()])),
    }


def _back(ws: Workspace, vid: str) -> None:
    with ws.writer():
        ws.set_head(vid)


def test_confident_policy_drops_junk_fixes_flips_and_keeps_hard_clean_rows(flagged) -> None:  # noqa: ANN001
    ws, truth, probs = flagged
    start = ws.head()
    res = _clean(ws, probs, action="relabel", policy="confident")
    got = _outcome(ws, truth)
    assert got["junk_excluded"] == 1.0, got
    assert got["flips_fixed"] >= 0.9, got
    assert got["clean_lost"] <= 0.01, got
    assert res["stats"]["label_issues"]["relabeled"] >= 0.9 * len(truth["flipped"])
    t = ws.samples()
    assert set(pc.filter(t["reason"], pc.equal(t["status"], "excluded")).to_pylist()) == {"outlier"}
    _back(ws, start)


def test_old_policy_throws_away_hard_clean_rows(flagged) -> None:  # noqa: ANN001
    """The behaviour before issue 18, still reachable with policy="all": every flagged row excluded."""
    ws, truth, probs = flagged
    start = ws.head()
    _clean(ws, probs, action="exclude", policy="all")
    got = _outcome(ws, truth)
    assert got["junk_excluded"] == 1.0 and got["flips_handled"] >= 0.9, got
    assert got["clean_lost"] > 0.05, got  # the hard rows: what the confident policy keeps
    _back(ws, start)


def test_confident_exclude_drops_junk_and_ruled_out_labels_only(flagged) -> None:  # noqa: ANN001
    ws, truth, probs = flagged
    start = ws.head()
    _clean(ws, probs, action="exclude", policy="confident")
    got = _outcome(ws, truth)
    assert got["junk_excluded"] == 1.0 and got["flips_handled"] >= 0.9 and got["clean_lost"] <= 0.01, got
    t = ws.samples()
    assert pc.sum(pc.equal(t["label_source"], "relabel:clean")).as_py() == 0  # exclude never changes a label
    _back(ws, start)


def test_estimate_policy_acts_on_the_estimated_count_where_confident_is_too_timid(sure_flagged) -> None:  # noqa: ANN001
    """Look-alike flips keep 0.1-0.25 on their given label while the models are sure of clean rows: ``confident``
    (p(given) < 0.1 x the class's mean confidence) leaves them; ``estimate`` (the default) ranks them worst and
    acts on as many rows as cleanlab estimates are wrong."""
    ws, truth, probs = sure_flagged
    start = ws.head()
    _clean(ws, probs, action="exclude", policy="confident")
    timid = _outcome(ws, truth)
    _back(ws, start)
    _clean(ws, probs, action="exclude")
    got = _outcome(ws, truth)
    assert CleanConfig().policy == "estimate"  # the call above used the default
    assert timid["flips_handled"] <= 0.2 and timid["junk_excluded"] == 1.0, timid
    assert got["flips_handled"] >= 0.75 and got["junk_excluded"] == 1.0 and got["clean_lost"] <= 0.01, got
    _back(ws, start)
    _clean(ws, probs, action="relabel")
    fixed = _outcome(ws, truth)
    assert fixed["flips_handled"] >= 0.75 and fixed["clean_lost"] <= 0.01, fixed
    _back(ws, start)


def test_decide_rules() -> None:
    # rows: sure flip, ruled-out label without a sure suggestion, hard row (issue, given label plausible), junk, clean
    found = {
        "is_label_issue": np.array([1, 1, 1, 0, 0], bool),
        "label_quality": np.array([0.01, 0.02, 0.25, 0.3, 0.8]),
        "given_threshold": np.full(5, 0.6),
        "suggested_confidence": np.array([0.8, 0.4, 0.65, 0.3, 0.8]),
        "suggested_threshold": np.full(5, 0.6),
        "estimate_rank": np.array([0.0, 0.5, 1.5, 0.8, 2.0]),  # rank / estimated count: the first two, and junk
    }
    ood = np.array([0.1, 0.7, 0.5, 0.95, 0.1])
    kw = {"relabel_threshold": 0.9, "outlier_threshold": 0.75, "junk_threshold": 0.85}
    d = decide(found, ood, action="relabel", policy="confident", **kw)
    assert d.relabel.tolist() == [1, 0, 0, 0, 0] and d.exclude_label.tolist() == [0, 1, 0, 0, 0]
    assert d.exclude_outlier.tolist() == [0, 0, 0, 1, 0]
    d = decide(found, ood, action="exclude", policy="confident", **kw)
    assert d.exclude_label.tolist() == [1, 1, 0, 0, 0] and d.exclude_outlier.tolist() == [0, 0, 0, 1, 0] and not d.relabel.any()
    d = decide(found, ood, action="exclude", policy="all", **kw)
    assert d.exclude_label.tolist() == [1, 1, 1, 0, 0] and d.exclude_outlier.tolist() == [0, 0, 0, 1, 0]
    d = decide(found, ood, action="exclude", policy="estimate", **kw)  # junk goes as an outlier, not a label issue
    assert d.exclude_label.tolist() == [1, 1, 0, 0, 0] and d.exclude_outlier.tolist() == [0, 0, 0, 1, 0]
    d = decide(found, ood, action="relabel", policy="estimate", **kw)
    assert d.relabel.tolist() == [1, 0, 0, 0, 0] and d.exclude_label.tolist() == [0, 1, 0, 0, 0]
    d = decide(found, ood, action="flag", policy="confident", **kw)
    assert not (d.relabel.any() or d.exclude_label.any() or d.exclude_outlier.any())
    d = decide(None, ood, action="exclude", policy="confident", **kw)  # outliers only: junk still goes
    assert d.exclude_outlier.tolist() == [0, 0, 0, 1, 0] and not d.exclude_label.any()
