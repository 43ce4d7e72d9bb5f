"""Scoring images with a trained curate run: the pure pieces of the classifier filter.

Shared by ``curate filter`` (exclude what the model does not believe belongs to the task) and ``curate
pseudolabel`` (keep only predictions that pass the filter): loading a run, resolving the task classes against
the model's classes, the ``Scorer`` callable that turns ``sample_id``/``data`` batches into probabilities, and
the score itself (``score_probs``). See ``curate.stages.filter`` for the score's semantics.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from curate.errors import CurateError, UsageError
from curate.models.actors import ModelHandle
from curate.models.proba import rebatch  # noqa: F401 - re-exported: the filter's batching of blob packs
from curate.schema import OK

if TYPE_CHECKING:
    from curate.stages.filter import FilterConfig

MODE_CLASSES = "classes"  # score = sum of the task classes' probabilities
MODE_MAX = "max_prob"  # score = the highest probability (every model class belongs to the task)


@dataclass(frozen=True)
class Target:
    """What ``filter_score`` measures.

    Attributes:
        classes: the task classes whose probabilities are summed (every model class in ``max_prob`` mode).
        mode: ``classes`` (sum over ``classes``) or ``max_prob`` (highest probability).
        source: where the classes came from: ``--classes`` or ``labels`` (the version's labels).
    """

    classes: tuple[str, ...]
    mode: str
    source: str

    def describe(self) -> str:
        """Human description, e.g. ``p(a) + p(b)`` or ``max probability``."""
        if self.mode == MODE_MAX:
            return "max probability (every model class is a label of this version)"
        return " + ".join(f"p({c})" for c in self.classes)


def load_model(cfg: FilterConfig, workspace: Path | None = None) -> Any:
    """Load the run of ``cfg.model`` (``curate.learn.predict.load_run``) on ``cfg.device``; ``curate:RUN`` is the
    same run (a path, or a name under the ``workspace``'s models folder: ``curate.models.torchnets.resolve_run``).

    Raises:
        CurateError: no such run folder or checkpoint, or a file that is not a curate checkpoint (one line).
    """
    from curate.learn.predict import load_run

    path = Path(str(cfg.model))
    if str(cfg.model).startswith("curate:") and not path.exists():
        from curate.models.torchnets import resolve_run

        path = resolve_run(str(cfg.model).removeprefix("curate:"), workspace)
    if not path.exists():
        raise CurateError(f"--model {path}: no such run folder or checkpoint", hint="give a run folder written by `curate train`")
    try:
        return load_run(path, cfg.which, cfg.device)
    except CurateError as exc:
        # torch's unpickling errors span several lines; the CLI promises one
        first = exc.message.splitlines()[0] if exc.message else str(path)
        if first != exc.message:
            first = (first[:200] + "...)") if len(first) > 200 else first + ")"
            raise CurateError(first, hint=exc.hint or "give a run folder written by `curate train`", exit_code=exc.exit_code) from exc
        raise
    except (KeyError, TypeError, ValueError, RuntimeError) as exc:  # a checkpoint of another shape or net
        raise CurateError(f"--model {path}: not a usable curate checkpoint ({type(exc).__name__}: {exc})") from exc


def resolve_target(cfg: FilterConfig, model_classes: list[str], table: pa.Table) -> Target:
    """The task classes of ``cfg`` checked against the model, or the default from the version's labels.

    Raises:
        UsageError: ``--classes`` names classes the model does not have (they are named, with the model's
            classes), or names every model class (the score would be 1.0 for every row); no ``--classes`` and
            no model class occurs as a label of the version's included rows.
    """
    known = list(model_classes)
    if cfg.classes is not None:
        wanted = list(dict.fromkeys(cfg.classes))  # keep the user's order, drop repeats
        unknown = [c for c in wanted if c not in known]
        if unknown:
            raise UsageError(f"--classes: the model has no class {', '.join(map(repr, unknown))}; its classes: {', '.join(known)}")
        if set(wanted) == set(known):
            raise UsageError(
                f"--classes names every class of the model ({', '.join(known)}): every score would be 1.0",
                hint="name only the classes that belong to the task, or omit --classes to score by max probability",
            )
        return Target(tuple(c for c in known if c in wanted), MODE_CLASSES, "--classes")
    ok = table.filter(pc.equal(table.column("status"), OK))
    labels = {v for v in pc.unique(ok.column("label")).to_pylist() if v is not None} if ok.num_rows else set()
    present = tuple(c for c in known if c in labels)
    if not present:
        raise UsageError(
            f"no class of the model ({', '.join(known)}) is a label of this version's included rows",
            hint="name the classes that belong to the task with --classes",
        )
    if len(present) == len(known):
        return Target(tuple(known), MODE_MAX, "labels")
    return Target(present, MODE_CLASSES, "labels")


def score_probs(probs: np.ndarray, model_classes: list[str], target: Target) -> np.ndarray:
    """``(N, K)`` probabilities in ``model_classes`` order -> float64 ``(N,)`` filter scores (see module doc).

    Reusable wherever the classifier filter is applied (``pseudolabel`` keeps only predictions that pass it).
    """
    p = np.asarray(probs, np.float64)
    if p.shape[0] == 0:
        return np.zeros(0, np.float64)
    if target.mode == MODE_MAX:
        return p.max(1)
    idx = [model_classes.index(c) for c in target.classes]
    # probabilities are float32 softmax outputs: clip the float rounding of a sum just above 1
    return np.clip(p[:, idx].sum(1), 0.0, 1.0)


class Scorer:
    """Per-sample work with a model loaded once: ``sample_id``/``data`` batches -> probabilities.

    A callable class (the executor pattern for stages that hold a model, ARCHITECTURE.md section 5): the
    model is loaded once per worker and each call scores one batch. Images that cannot be decoded get
    null probabilities (``error`` column) instead of failing their whole batch.

    Args:
        run: a ``curate.learn.predict.LoadedRun``.
        batch_size: images per forward pass.
    """

    def __init__(self, run: Any, batch_size: int = 256) -> None:
        self.run = run
        self.batch_size = batch_size

    def __call__(self, batch: pa.Table) -> pa.Table:
        """``sample_id``/``data`` rows -> ``sample_id``, ``probs`` (K float32, model class order; NaN when the
        image cannot be decoded) and ``error`` (null, or why it failed), same order."""
        from curate.learn.predict import predict_bytes

        blobs = batch.column("data").to_pylist()
        k = len(self.run.classes)
        errors: list[str | None] = [None] * len(blobs)
        try:
            probs = predict_bytes(self.run, blobs, self.batch_size)
        except CurateError:
            # one bad image must not sink the batch: score one by one and record the failures
            probs = np.full((len(blobs), k), np.nan, np.float32)
            for i, data in enumerate(blobs):
                try:
                    probs[i] = predict_bytes(self.run, [data], 1)[0]
                except CurateError as exc:
                    errors[i] = str(exc)[:200]
        flat = pa.array(np.ascontiguousarray(probs, np.float32).ravel(), pa.float32())
        return pa.table(
            {
                "sample_id": batch.column("sample_id"),
                "probs": pa.FixedSizeListArray.from_arrays(flat, k),
                "error": pa.array(errors, pa.string()),
            }
        )


@dataclass(frozen=True)
class ScoreJob:
    """What a ``HandleScorer`` is built from: the model (``load_model`` behind a ``ModelHandle``) and the batch size."""

    model: ModelHandle
    batch_size: int


class HandleScorer(Scorer):
    """``Scorer`` as executor actor work: the model comes from ``job.model`` (the driver's run in this process,
    loaded once per actor on Ray; ``curate.models.actors``)."""

    def __init__(self, job: ScoreJob) -> None:
        super().__init__(job.model.get(), job.batch_size)
