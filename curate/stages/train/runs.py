"""A pipeline's training runs: where they go, and the proof that one is already finished (or resumable).

A run of a pipeline goes to ``<workspace>/models/<version>-<arch>-<hash of the settings>`` unless ``out`` is set, so
a workspace holds its own runs. Its ``metrics.json`` (written last) names the dataset version and the settings: the
same ones make the run finished; checkpoints without final metrics make it resumable; other ones are an error.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from curate.errors import CurateError
from curate.workspace import config_sha256

if TYPE_CHECKING:
    from curate.stages.train import TrainConfig
    from curate.workspace import Workspace


def settings(config: dict[str, Any]) -> dict[str, Any]:
    """The training settings that decide the model: no dataset version, no runtime knobs (device, workers ...)."""
    from curate.stages.train import RUNTIME

    return json.loads(json.dumps({k: v for k, v in config.items() if k not in RUNTIME and k != "version"}))


def _other(run_dir: Path) -> CurateError:
    return CurateError(f"{run_dir} holds a training run of other data or settings", hint="set train.out to another folder")


def finished_run(run_dir: Path, cfg: TrainConfig, vid: str) -> dict[str, Any] | None:
    """``curate train``'s result rebuilt from ``metrics.json`` when the folder holds this run finished, else None.

    Raises:
        CurateError: the folder holds a run of another version or other settings.
    """
    meta = run_dir / "metrics.json"
    if not meta.exists():
        return None
    m = json.loads(meta.read_text())
    if m.get("dataset_version") != vid or settings(m.get("config", {})) != settings(dataclasses.asdict(cfg)):
        raise _other(run_dir)
    keys = ("accuracy", "macro_f1", "roc_auc_ovr_macro", "topk_error")
    return {"run": str(run_dir), "version": vid, "arch": m["config"]["arch"], "device": m.get("device"), "amp": m.get("amp"),
            "epochs_run": len(m.get("history", [])), "stopped": m.get("stopped"), "best_epoch": (m.get("best") or {}).get("epoch"),
            "train_seconds": m.get("train_seconds"), "cached": True,
            "metrics": {s: {k: v.get(k) for k in keys} for s, v in m.get("splits", {}).items()},
            "errors": m.get("errors"), "diagnosis": _diagnosis(m.get("errors"))}  # fmt: skip


def _diagnosis(errors: dict[str, Any] | None) -> dict[str, Any] | None:
    from curate.learn.gaps import diagnose

    return diagnose(errors) if errors else None


def reuse_or_resume(ws: Workspace, cfg: TrainConfig) -> tuple[TrainConfig, dict[str, Any] | None]:
    """Pipeline mode: the settings to train with (version resolved, run folder chosen, ``resume`` when the folder
    holds an unfinished run of the same settings) and the finished run's result when there is one."""
    vid = ws.resolve(cfg.version)
    cfg = dataclasses.replace(cfg, version=vid)
    if cfg.out is None:
        sha = config_sha256(settings(dataclasses.asdict(cfg)))[:8]
        cfg = dataclasses.replace(cfg, out=str(ws.models_dir() / f"{vid}-{cfg.arch}-{sha}"))
    run_dir = Path(cfg.out)  # type: ignore[arg-type]
    done = finished_run(run_dir, cfg, vid)
    if done is not None:
        return cfg, done
    last = run_dir / "meta_last.json"
    if last.exists():
        saved = json.loads(last.read_text())
        if saved.get("dataset_version") != vid or settings(saved.get("config", {})) != settings(dataclasses.asdict(cfg)):
            raise _other(run_dir)
        cfg = dataclasses.replace(cfg, resume=True)
    return cfg, None
