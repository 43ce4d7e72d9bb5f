"""Shared fixtures: small generated images with known content, ImageFolder trees with known class counts,
fresh workspaces, and a helper that runs ingest the way the CLI does.

Plain helpers (``make_png``, ``make_jpeg``, ``png_bytes``, ``write_image_folder``, ``ingest``) can be imported
from ``tests.conftest`` or reached through the fixtures of the same name (``make_png``, ``image_folder``,
``workspace``, ``ingest``).
"""

from __future__ import annotations

import io
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

# One intra-op thread for torch (and BLAS) in the whole suite and the CLI subprocesses it starts, set before anything
# imports torch: the tests train tiny nets, where a second thread gains nothing, and on a busy machine (a CPU hog on
# both cores) OpenMP's barrier waits made test_clean's k-fold fixture take over 300 s instead of 45 s.
for _var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

#: Set for every test (``hub_offline``): no test may reach the Hugging Face Hub; a model is built from a config.
HUB_OFFLINE = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE")


@pytest.fixture(autouse=True)
def hub_offline(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every test runs with the Hub switched off (``HUB_OFFLINE`` = 1), in this process and the CLI subprocesses it
    starts: a Hub name must then fail as "offline", never download. huggingface_hub reads these once, when it is
    first imported: no test module imports it (or transformers) at collection, so that is inside a test, guarded."""
    for var in HUB_OFFLINE:
        monkeypatch.setenv(var, "1")


# --------------------------------------------------------------------------------------------- images


def image_array(seed: int, size: tuple[int, int] = (16, 16), mode: str = "RGB") -> np.ndarray:
    """A deterministic uint8 array for ``seed``: different seeds give different bytes, the same seed the same.

    ``size`` is (width, height) like PIL; the array is (height, width[, 3]).
    """
    w, h = size
    rng = np.random.default_rng(seed)
    shape = (h, w) if mode == "L" else (h, w, 3)
    return rng.integers(0, 256, size=shape, dtype=np.uint8)


def png_bytes(seed: int = 0, size: tuple[int, int] = (16, 16), mode: str = "RGB") -> bytes:
    """PNG bytes of ``image_array(seed, size, mode)`` (lossless: decoding gives the array back)."""
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(image_array(seed, size, mode), mode=mode).save(buf, format="PNG")
    return buf.getvalue()


def jpeg_bytes(seed: int = 0, size: tuple[int, int] = (16, 16), *, exif_orientation: int | None = None, quality: int = 90) -> bytes:
    """JPEG bytes of a seeded RGB array, optionally with an EXIF orientation tag."""
    from PIL import Image

    im = Image.fromarray(image_array(seed, size, "RGB"), mode="RGB")
    buf = io.BytesIO()
    kwargs: dict[str, Any] = {"format": "JPEG", "quality": quality}
    if exif_orientation is not None:
        exif = Image.Exif()
        exif[0x0112] = exif_orientation
        kwargs["exif"] = exif.tobytes()
    im.save(buf, **kwargs)
    return buf.getvalue()


def make_png(path: str | Path, seed: int = 0, size: tuple[int, int] = (16, 16), mode: str = "RGB") -> Path:
    """Write a PNG with known content (see ``image_array``) to ``path`` (parents created); returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(png_bytes(seed, size, mode))
    return path


def make_jpeg(path: str | Path, seed: int = 0, size: tuple[int, int] = (16, 16), *, exif_orientation: int | None = None) -> Path:
    """Write a JPEG of a seeded array to ``path`` (parents created); returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(jpeg_bytes(seed, size, exif_orientation=exif_orientation))
    return path


def write_image_folder(root: str | Path, counts: dict[str, int], *, size: tuple[int, int] = (16, 16), seed0: int = 0) -> Path:
    """An ImageFolder tree ``root/<class>/<class>_<i>.png`` with exactly ``counts[class]`` distinct PNGs.

    Every image gets its own seed (``seed0`` + running index over classes in sorted order), so no two files
    share bytes and the class counts after ingest must equal ``counts``.
    """
    root = Path(root)
    seed = seed0
    for cls in sorted(counts):
        for i in range(counts[cls]):
            make_png(root / cls / f"{cls}_{i:03d}.png", seed=seed, size=size)
            seed += 1
    root.mkdir(parents=True, exist_ok=True)
    return root


def write_idx(path: str | Path, array: np.ndarray) -> Path:
    """Write ``array`` (uint8, any shape) as an MNIST idx file; gzipped when ``path`` ends in ``.gz``."""
    import gzip
    import struct

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    array = np.ascontiguousarray(array, dtype=np.uint8)
    raw = bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape) + array.tobytes()
    path.write_bytes(gzip.compress(raw, mtime=0) if path.name.endswith(".gz") else raw)
    return path


def write_mnist_like(
    folder: str | Path, prefix: str, labels: list[int], *, size: int = 8, gz: bool = True, seed: int = 0
) -> np.ndarray:
    """``<prefix>-images-idx3-ubyte[.gz]`` + ``<prefix>-labels-idx1-ubyte[.gz]`` with distinct random images.

    Returns the (N, size, size) uint8 image array that was written.
    """
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, size=(len(labels), size, size), dtype=np.uint8)
    ext = ".gz" if gz else ""
    write_idx(Path(folder) / f"{prefix}-images-idx3-ubyte{ext}", images)
    write_idx(Path(folder) / f"{prefix}-labels-idx1-ubyte{ext}", np.array(labels, dtype=np.uint8))
    return images


# --------------------------------------------------------------------------------------------- ingest


def ingest(ws: Any, source: str | Path, *, workers: int = 1, **cfg_kwargs: Any) -> dict[str, Any]:
    """Run ingest against ``ws`` exactly as ``curate ingest`` does; returns the runner's result dict."""
    from curate.pipeline import execute
    from curate.stage import Context
    from curate.stages.ingest import STAGE, IngestConfig

    for key in ("classes", "class_names"):
        if key in cfg_kwargs and cfg_kwargs[key] is not None:
            cfg_kwargs[key] = tuple(cfg_kwargs[key])
    return execute(STAGE, Context(ws, workers=workers), IngestConfig(source=str(source), **cfg_kwargs))


def crawl(ws: Any, cfg: Any) -> dict[str, Any]:
    """Run a crawl against ``ws`` exactly as ``curate crawl`` does (on HEAD); returns the runner's result dict."""
    from curate.pipeline import execute
    from curate.stage import Context
    from curate.stages.crawl import STAGE

    return execute(STAGE, Context(ws), cfg)


# --------------------------------------------------------------------------------------------- fixtures


@pytest.fixture(name="make_png")
def make_png_fixture() -> Callable[..., Path]:
    """``make_png(path, seed=0, size=(16, 16), mode="RGB") -> Path``."""
    return make_png


@pytest.fixture(name="make_jpeg")
def make_jpeg_fixture() -> Callable[..., Path]:
    """``make_jpeg(path, seed=0, size=(16, 16), exif_orientation=None) -> Path``."""
    return make_jpeg


@pytest.fixture(name="png_bytes")
def png_bytes_fixture() -> Callable[..., bytes]:
    """``png_bytes(seed=0, size=(16, 16), mode="RGB") -> bytes``."""
    return png_bytes


@pytest.fixture(name="jpeg_bytes")
def jpeg_bytes_fixture() -> Callable[..., bytes]:
    """``jpeg_bytes(seed=0, size=(16, 16), exif_orientation=None, quality=90) -> bytes``."""
    return jpeg_bytes


@pytest.fixture(name="image_array")
def image_array_fixture() -> Callable[..., np.ndarray]:
    """``image_array(seed, size=(16, 16), mode="RGB") -> np.ndarray`` (the pixels ``make_png`` writes)."""
    return image_array


@pytest.fixture(name="write_idx")
def write_idx_fixture() -> Callable[..., Path]:
    """``write_idx(path, uint8 array) -> Path`` (gzipped when the name ends in .gz)."""
    return write_idx


@pytest.fixture(name="write_mnist_like")
def write_mnist_like_fixture() -> Callable[..., np.ndarray]:
    """``write_mnist_like(folder, "train", labels, size=8, gz=True, seed=0) -> images``."""
    return write_mnist_like


@pytest.fixture
def image_folder(tmp_path: Path) -> Callable[..., Path]:
    """Factory: ``image_folder(counts={"cat": 5, "dog": 3}, name="images", size=(16, 16), seed0=0) -> root``.

    For backwards-compatible calls ``image_folder(tmp_path, counts=...)`` the first positional argument may be
    a base folder (the tree is written under ``<base>/<name>``).
    """

    def factory(
        base: str | Path | None = None,
        counts: dict[str, int] | None = None,
        *,
        name: str = "images",
        size: tuple[int, int] = (16, 16),
        seed0: int = 0,
    ) -> Path:
        if isinstance(base, dict):  # image_folder({"cat": 2})
            base, counts = None, base
        root = Path(base if base is not None else tmp_path) / name
        return write_image_folder(root, counts if counts is not None else {"cat": 5, "dog": 3}, size=size, seed0=seed0)

    return factory


@pytest.fixture
def workspace(tmp_path: Path):  # noqa: ANN201 - returns curate.workspace.Workspace
    """A fresh, empty ``Workspace`` at ``tmp_path / "ws"``."""
    from curate.workspace import Workspace

    return Workspace(tmp_path / "ws")


@pytest.fixture(name="ingest")
def ingest_fixture() -> Callable[..., dict[str, Any]]:
    """``ingest(ws, source, workers=1, **IngestConfig kwargs) -> run_stage result``."""
    return ingest


@pytest.fixture
def in_empty_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Run from an empty ``tmp_path`` with no ``CURATE_WORKSPACE``/``CURATE_CONFIG``: no stray ./curate.toml or ./data."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("CURATE_WORKSPACE", raising=False)
    monkeypatch.delenv("CURATE_CONFIG", raising=False)
    return tmp_path


@pytest.fixture
def fresh_executor(monkeypatch: pytest.MonkeyPatch) -> Any:
    """No executor selected by the environment or an earlier ``configure``: ``local`` until the test says otherwise."""
    from curate import executors

    monkeypatch.delenv(executors.ENV_EXECUTOR, raising=False)
    monkeypatch.delenv(executors.ENV_ADDRESS, raising=False)
    executors.reset()
    yield
    executors.reset()
