"""Model inference as executor actors (``curate.models.actors``): ``clean --model``'s embedding, ``filter``'s
scoring and a backend's own head (``clean --head model``, ``filter --model KIND:FILE`` with classes: ``Prober``) go
through ``curate.executors.map_batches_actor`` and give what the model gave when the driver ran it.

The "driver path" is the code before actors, rebuilt here: the same blob-pack batches fed straight to
``Backend.embed`` / ``Scorer``. On the local executor the actor is built in this process and reuses the model the
stage loaded (one load); on a local Ray (2 CPUs) each actor loads its own, and the committed state files (the
embedding cache, ``filter_probs.parquet``) and sample tables are byte-identical to the local executor's.
The models are the fixtures of ``test_clean_model`` (a TorchScript 4x4 pooling, a TorchScript quadrant classifier)
and ``test_filter`` (a small CNN trained for a few CPU seconds, and its TorchScript export).
"""

from __future__ import annotations

import contextlib
import pickle
from collections.abc import Iterator
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from curate import executors
from curate.models.actors import ModelHandle, column_vectors, vectors_column
from curate.stages.filter import FilterConfig
from curate.stages.filter.classify import run_filter, selected_mask
from curate.stages.filter.scoring import Scorer, load_model, rebatch
from curate.workspace import Workspace
from tests.conftest import ingest
from tests.test_clean_model import _classifier, _clean, data, pooled  # noqa: F401 - fixtures
from tests.test_filter import one_thread, trained, web, web_template  # noqa: F401 - fixtures
from tests.test_filter_model import exports  # noqa: F401 - fixture

pytestmark = pytest.mark.usefixtures("fresh_executor")
LOADS: list[int] = []


def count_load(value: int) -> dict[str, int]:
    LOADS.append(value)
    return {"model": value}


@pytest.fixture
def actor_calls(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Names of the classes handed to ``map_batches_actor`` (the stages call it through the package)."""
    calls: list[str] = []
    real = executors.map_batches_actor

    def spy(cls: Any, batches: Any, cfg: Any, **kw: Any) -> Any:
        calls.append(cls.__name__)
        return real(cls, batches, cfg, **kw)

    monkeypatch.setattr(executors, "map_batches_actor", spy)
    return calls


def test_handle_loads_once_and_never_ships_the_model() -> None:
    LOADS.clear()
    fresh = ModelHandle(partial(count_load, 7))
    assert fresh.get() == {"model": 7} and fresh.get() is fresh.get() and LOADS == [7]
    loaded = ModelHandle(partial(count_load, 8), loaded={"model": "already here"})
    assert loaded.get() == {"model": "already here"} and LOADS == [7]  # the driver's model is reused in-process
    shipped = pickle.loads(pickle.dumps(loaded))
    assert shipped._loaded is None  # what an actor receives: the loader only
    assert shipped.get() == {"model": 8} and LOADS == [7, 8]


def test_vector_columns_round_trip() -> None:
    x = np.arange(12, dtype=np.float32).reshape(4, 3) / 7
    col = vectors_column(x)
    assert col.type == pa.list_(pa.float32(), 3)
    np.testing.assert_array_equal(column_vectors(pa.chunked_array([col.slice(0, 1), col.slice(1)])), x)


# -------------------------------------------------------------------------------------------- embedding
def driver_embeddings(ws: Workspace, ids: list[str], spec: str) -> np.ndarray:
    """The pre-actor path: the blob-pack batches of ``embed_samples`` fed to ``Backend.embed`` here."""
    from curate.models import load_backend
    from curate.models.cache import BATCH_ROWS

    backend = load_backend(spec, workspace=ws.root, batch_size=128)
    rows = ws.samples().select(["sample_id", "pack"])
    rows = rows.filter(pc.is_in(rows.column("sample_id"), pa.array(ids)))
    got: dict[str, np.ndarray] = {}
    for batch in ws.blobs.iter_packs(rows, batch_rows=BATCH_ROWS):
        got.update(zip(batch.column("sample_id").to_pylist(), backend.embed(batch.column("data").to_pylist()), strict=True))
    return np.stack([got[s] for s in ids])


def cached_embeddings(ws: Workspace, vid: str) -> tuple[list[str], np.ndarray, bytes]:
    (path,) = ws.path(vid).joinpath("state").glob("embeddings-*.parquet")
    t = pq.read_table(path)
    return t.column("sample_id").to_pylist(), column_vectors(t.column("embedding")), path.read_bytes()


def test_clean_model_embeds_through_actors_as_the_driver_did(data: dict, pooled: Path, actor_calls: list[str]) -> None:  # noqa: F811
    ws, spec = data["ws"], f"torchscript:{pooled}"
    res = _clean(ws, data["base"], find_mislabels=True, model=spec)
    assert actor_calls == ["Embedder"]
    ids, vectors, _ = cached_embeddings(ws, res["version"])
    assert len(ids) == ws.samples(res["version"]).num_rows and vectors.shape[1] == 16  # every row is labeled and ok
    np.testing.assert_array_equal(vectors, driver_embeddings(ws, ids, spec))


# -------------------------------------------------------------------------------------------- filter
def driver_probs(ws: Workspace, cfg: FilterConfig) -> np.ndarray:
    """The pre-actor path: ``Scorer`` on the same rebatched blob-pack batches, in this process."""
    table = ws.samples()
    rows = table.filter(selected_mask(table, tuple(cfg.splits))).select(["sample_id", "pack"])
    scorer = Scorer(load_model(cfg), cfg.batch_size)
    outs = [scorer(b) for b in rebatch(ws.blobs.iter_packs(rows, batch_rows=cfg.batch_size), cfg.batch_size)]
    out = pa.concat_tables(outs)
    assert out.column("sample_id").to_pylist() == rows.column("sample_id").to_pylist()
    return column_vectors(out.column("probs"))


def filter_probs(res: Any, classes: list[str]) -> np.ndarray:
    t = pq.read_table(pa.BufferReader(res.state["filter_probs.parquet"]))
    return np.stack([t.column(f"p_{c}").to_numpy() for c in classes], 1)


def test_filter_scores_through_actors_as_the_driver_did(
    web: Workspace,  # noqa: F811
    trained: tuple[Workspace, Path],  # noqa: F811
    actor_calls: list[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import curate.stages.filter.classify as classify

    loads: list[str] = []
    real_load = classify.load_model
    monkeypatch.setattr(classify, "load_model", lambda cfg, *a, **k: loads.append(cfg.model) or real_load(cfg, *a, **k))
    cfg = FilterConfig(model=str(trained[1]), classes=("a", "b"), action="flag", batch_size=16)
    res = run_filter(web, web.samples(), web.head(), cfg)
    assert actor_calls == ["HandleScorer"] and loads == [str(trained[1])]  # one load: the actor reused the stage's
    classes = res.stats["model_classes"]
    np.testing.assert_array_equal(filter_probs(res, classes), driver_probs(web, cfg))


# -------------------------------------------------------------------------------------------- a model's own head
@contextlib.contextmanager
def _no_bar(label: str, total: int) -> Iterator[Any]:
    yield lambda n: None


def driver_head_probs(ws: Workspace, rows: pa.Table, spec: str, batch_size: int) -> np.ndarray:
    """The pre-actor path of ``predict_samples``: the same rebatched blob-pack batches, decoded and fed to
    ``Backend.predict_proba`` here, rows in the order asked for."""
    from curate.images import decode_rgb_or_l
    from curate.models import load_backend

    backend = load_backend(spec, workspace=ws.root, batch_size=batch_size)
    got: dict[str, np.ndarray] = {}
    for batch in rebatch(ws.blobs.iter_packs(rows.select(["sample_id", "pack"]), batch_rows=batch_size), batch_size):
        images = [decode_rgb_or_l(b) for b in batch.column("data").to_pylist()]
        got.update(zip(batch.column("sample_id").to_pylist(), backend.predict_proba(images), strict=True))
    return np.stack([got[s] for s in rows.column("sample_id").to_pylist()])


def test_model_heads_predict_through_actors_as_the_driver_did(
    data: dict,  # noqa: F811
    web: Workspace,  # noqa: F811
    exports: dict[str, Path],  # noqa: F811
    actor_calls: list[str],
    tmp_path: Path,
) -> None:
    from curate.models import load_backend
    from curate.models.proba import predict_samples

    ws, spec = data["ws"], f"torchscript:{_classifier(tmp_path / 'quadrants.pt', ['q0', 'q1', 'q2', 'q3'])}"
    res = _clean(ws, data["base"], find_mislabels=True, model=spec, head="model")
    assert res["stats"]["head"] == "model" and actor_calls == ["Prober"]
    rows = ws.samples(data["base"]).select(["sample_id", "pack"]).slice(0, 50)
    probs, errors = predict_samples(ws, rows, load_backend(spec, batch_size=16), batch_size=16, progress=_no_bar, label="t")
    assert errors == {} and actor_calls == ["Prober"] * 2
    np.testing.assert_array_equal(probs, driver_head_probs(ws, rows, spec, 16))
    # filter with an exported run: its own head, through the same actors
    cfg = FilterConfig(model=f"torchscript:{exports['torchscript']}", classes=("a", "b"), action="flag", batch_size=16)
    res = run_filter(web, web.samples(), web.head(), cfg)
    assert actor_calls == ["Prober"] * 3 and res.stats["backend"]["head"] == "model"
    table = web.samples()
    rows = table.filter(selected_mask(table, tuple(cfg.splits))).select(["sample_id", "pack"])
    np.testing.assert_array_equal(filter_probs(res, res.stats["model_classes"]), driver_head_probs(web, rows, cfg.model, 16))


# -------------------------------------------------------------------------------------------- on Ray
@pytest.fixture(scope="module")
def local_ray() -> Iterator[None]:
    """A local Ray with 2 CPUs for the Ray comparisons (started only when one of them runs)."""
    import logging

    ray = pytest.importorskip("ray")
    if ray.is_initialized():
        ray.shutdown()
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level=logging.ERROR)
    yield
    ray.shutdown()


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_models_on_ray_actors_give_the_local_bytes(
    data: dict,  # noqa: F811
    pooled: Path,  # noqa: F811
    web: Workspace,  # noqa: F811
    trained: tuple[Workspace, Path],  # noqa: F811
    local_ray: None,
    actor_calls: list[str],
    tmp_path: Path,
) -> None:
    import ray

    spec = f"torchscript:{pooled}"
    cfg = FilterConfig(model=str(trained[1]), classes=("a", "b"), action="flag", batch_size=16)
    results: dict[str, Any] = {}
    for name in ("local", "ray"):
        ws = Workspace(tmp_path / name)  # fresh: no embedding cache, no earlier clean to reuse
        ingest(ws, data["root"] / "images")
        executors.configure(name)
        clean = _clean(ws, ws.head(), find_mislabels=True, find_outliers=True, model=spec)
        assert clean["stats"]["embeddings"]["computed"] > 0
        emb = cached_embeddings(ws, clean["version"])[2]
        results[name] = (ws.samples(clean["version"]), emb, run_filter(web, web.samples(), web.head(), cfg))
    assert actor_calls == ["Embedder", "HandleScorer"] * 2
    assert ray.cluster_resources().get("CPU") == 2  # the Ray run used the cluster started here
    (clean_l, emb_l, filt_l), (clean_r, emb_r, filt_r) = results["local"], results["ray"]
    assert emb_l == emb_r  # the embedding cache: same vectors, same bytes
    assert clean_l.equals(clean_r)
    assert filt_l.state["filter_probs.parquet"] == filt_r.state["filter_probs.parquet"]
    assert filt_l.table.equals(filt_r.table)


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_model_heads_on_ray_actors_give_the_local_bytes(
    data: dict,  # noqa: F811
    web: Workspace,  # noqa: F811
    exports: dict[str, Path],  # noqa: F811
    local_ray: None,
    actor_calls: list[str],
    tmp_path: Path,
) -> None:
    """``clean --head model`` and ``filter`` with an export's own head: ``Prober`` actors on a local Ray (one model
    load each) commit the local executor's sample tables and ``filter_probs.parquet`` byte for byte."""
    spec = f"torchscript:{_classifier(tmp_path / 'quadrants.pt', ['q0', 'q1', 'q2', 'q3'])}"
    cfg = FilterConfig(model=f"torchscript:{exports['torchscript']}", classes=("a", "b"), action="flag", batch_size=16)
    results: dict[str, Any] = {}
    for name in ("local", "ray"):
        ws = Workspace(tmp_path / name)
        ingest(ws, data["root"] / "images")
        executors.configure(name)
        clean = _clean(ws, ws.head(), find_mislabels=True, model=spec, head="model")
        assert clean["stats"]["head"] == "model"
        results[name] = (ws.samples(clean["version"]), run_filter(web, web.samples(), web.head(), cfg))
    assert actor_calls == ["Prober", "Prober"] * 2
    (clean_l, filt_l), (clean_r, filt_r) = results["local"], results["ray"]
    assert clean_l.equals(clean_r)
    assert filt_l.state["filter_probs.parquet"] == filt_r.state["filter_probs.parquet"]
    assert filt_l.table.equals(filt_r.table)
