"""Model backends behind one small interface, chosen with one spec string.

| spec | what |
| --- | --- |
| ``curate:RUN`` | a run folder (or checkpoint) of ``curate train``; RUN may be a name under ``<workspace>/models`` |
| ``torchscript:FILE`` | a TorchScript file with ``curate.json`` metadata (``curate export-model --format torchscript``) |
| ``onnx:FILE`` | an ONNX model run by onnxruntime (the ``[onnx]`` extra) |
| ``hf:NAME_OR_PATH`` | a transformers image model: a local ``save_pretrained`` folder, or a Hub name when online |
| ``embeddings:FILE`` | a Parquet file of precomputed vectors: ``sample_id`` + a list column |

Every backend has ``embed(images) -> float32 (N, D)``, ``predict_proba(images) -> float32 (N, K)`` where it has
a head (``classes`` is not None), ``preprocessing`` (size, channels, mean/std from the model's own metadata),
``digest`` (sha256 of the model's files: the cache key) and ``describe()`` (what a version's state records).
``images`` are PIL images or encoded bytes. Work runs ``batch_size`` images at a time on CUDA, then MPS, then
the CPU; on CUDA the torch backends (``curate:``, ``torchscript:``, ``hf:``) copy each batch from pinned memory
without blocking (``base.to_device``) and embed under autocast (bf16, else fp16) while probabilities stay float32
(``base.embed_autocast``); no progress bar is drawn here (pass ``progress``).
torch, onnxruntime and transformers are imported only when a backend of theirs is loaded.
"""

from __future__ import annotations

from pathlib import Path

from curate.errors import CurateError
from curate.models.base import Backend, Preprocessing, path_digest

KINDS = ("curate", "torchscript", "onnx", "hf", "embeddings")

__all__ = ["KINDS", "Backend", "Preprocessing", "load_backend", "model_path", "parse_spec", "path_digest"]


def parse_spec(spec: str) -> tuple[str, str]:
    """``"onnx:model.onnx"`` -> ``("onnx", "model.onnx")``.

    Raises:
        CurateError (exit 2): no ``KIND:`` prefix, an unknown kind, or nothing after the colon.
    """
    kind, sep, rest = spec.partition(":")
    if not sep or kind not in KINDS or not rest.strip():
        raise CurateError(
            f"model {spec!r}: expected KIND:WHAT with KIND one of {', '.join(KINDS)}",
            hint="for example curate:models/fm, onnx:model.onnx, hf:facebook/dinov2-small, embeddings:emb.parquet",
            exit_code=2,
        )
    return kind, rest.strip()


def model_path(spec: str, workspace: str | Path | None = None) -> Path | None:
    """The local file or folder a spec names (what its digest is taken over), or None: a Hub name, or nothing there
    yet (``load_backend`` then says what is wrong)."""
    kind, what = parse_spec(spec)
    if kind == "curate":
        from curate.models.torchnets import resolve_run

        try:
            return resolve_run(what, Path(workspace) if workspace is not None else None)
        except CurateError:
            return None
    path = Path(what).expanduser()
    return path if path.exists() else None


def load_backend(
    spec: str,
    *,
    workspace: str | Path | None = None,
    device: str = "auto",
    batch_size: int = 64,
    expect_dim: int | None = None,
) -> Backend:
    """Load the model a spec names.

    Args:
        spec: ``KIND:WHAT`` (see the module doc).
        workspace: where ``curate:RUN`` looks for ``models/RUN`` when RUN is not a path.
        device: ``auto`` (cuda, then mps, then cpu), ``cpu``, ``cuda`` or ``mps``; onnxruntime picks its provider.
        batch_size: images per forward pass.
        expect_dim: for ``embeddings:``, the vector length the caller needs (None: any).

    Raises:
        CurateError: a bad spec, a missing or foreign file, metadata that describes no usable input, a missing
            optional dependency, a Hub name while offline: one line naming the model and the cause.
    """
    kind, what = parse_spec(spec)
    if batch_size < 1:
        raise CurateError(f"batch size {batch_size} must be at least 1", exit_code=2)
    if kind == "embeddings":
        from curate.models.embeddings import load_embeddings

        return load_embeddings(Path(what).expanduser(), expect_dim)
    if kind == "onnx":
        from curate.models.onnxrt import load_onnx

        return load_onnx(Path(what).expanduser(), batch_size)
    from curate.learn.runtime import pick_device

    dev = str(pick_device(device))
    if kind == "curate":
        from curate.models.torchnets import load_curate

        return load_curate(what, Path(workspace) if workspace is not None else None, batch_size, dev)
    if kind == "torchscript":
        from curate.models.torchnets import load_torchscript

        return load_torchscript(Path(what).expanduser(), batch_size, dev)
    from curate.models.hf import load_hf

    return load_hf(what, batch_size, dev)
