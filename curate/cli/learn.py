"""``curate train``, ``curate evaluate`` and ``curate predict`` (torch is imported inside the commands only)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from curate.cli.common import DEFAULT_WS, DebugOpt, JsonOpt, VersionOpt, WorkspaceOpt, handle_errors, say


def _fmt_metrics(split: str, m: dict) -> str:
    top = ", ".join(f"top-{k} err {v:.4f}" for k, v in m.get("topk_error", {}).items() if k != "1")
    auc = f", AUC {m['roc_auc_ovr_macro']:.4f}" if m.get("roc_auc_ovr_macro") is not None else ""
    return f"  {split}: accuracy {m['accuracy']:.4f}, macro-F1 {m['macro_f1']:.4f}{auc}{', ' + top if top else ''}"


def train(
    version: VersionOpt = None,
    arch: Annotated[str | None, typer.Option(help="small-cnn | resnet-mini | resnet-mini-wide | linear (default small-cnn)")] = None,
    epochs: Annotated[int | None, typer.Option(help="Epochs; the onecycle/cosine schedule spans all of them (default 10).")] = None,
    batch_size: Annotated[int | None, typer.Option(help="Samples per step (default 128).")] = None,
    lr: Annotated[float | None, typer.Option(help="Learning rate, the peak for onecycle (default 3e-3).")] = None,
    optimizer: Annotated[str | None, typer.Option(help="adamw | sgd (default adamw)")] = None,
    weight_decay: Annotated[float | None, typer.Option(help="Not on biases/BatchNorm; default 0.05 adamw, 5e-4 sgd.")] = None,
    schedule: Annotated[str | None, typer.Option(help="onecycle | cosine | step | constant (default onecycle)")] = None,
    label_smoothing: Annotated[float | None, typer.Option(help="Label smoothing of the training loss, 0 = off (default 0).")] = None,
    augment: Annotated[
        str | None,
        typer.Option(help="Train-only augmentation: none (default) | flip | shift | flip-shift | standard | light | medium | heavy."),
    ] = None,
    patience: Annotated[
        int | None, typer.Option(help="Early stopping: epochs without a better val accuracy, 0 = off (default 5).")
    ] = None,
    device: Annotated[str | None, typer.Option(help="auto (cuda, then mps, then cpu) | cpu | cuda | mps (default auto)")] = None,
    amp: Annotated[
        bool | None, typer.Option("--amp/--no-amp", help="Mixed precision on CUDA and on CPUs with native bf16 (default on).")
    ] = None,
    workers: Annotated[int | None, typer.Option("--workers", "-j", help="DataLoader worker processes (default 0).")] = None,
    loader: Annotated[
        str | None, typer.Option(help="auto (default) | memory (decode shards once) | stream (decode on the fly).")
    ] = None,
    shard_format: Annotated[
        str | None, typer.Option("--format", help="Shards to read: parquet | webdataset (default parquet).")
    ] = None,
    image_size: Annotated[int | None, typer.Option(help="Resize to this square side (default: the data's size).")] = None,
    max_minutes: Annotated[float | None, typer.Option(help="Wall-clock budget: no epoch starts that would end after it.")] = None,
    out: Annotated[Path | None, typer.Option("--out", "-o", help="Run folder (default models/VERSION-ARCH).")] = None,
    resume: Annotated[bool | None, typer.Option("--resume", help="Continue the run in --out from its last checkpoint.")] = None,
    seed: Annotated[
        int | None, typer.Option(help="Seed of init, batch order and augmentation; CPU runs are deterministic (default 0).")
    ] = None,
    sanity: Annotated[bool, typer.Option("--sanity", help="Only overfit one small batch; fail if the loss does not fall.")] = False,
    workspace: WorkspaceOpt = DEFAULT_WS,
    json_out: JsonOpt = False,
    debug: DebugOpt = False,
) -> None:
    """Train a classifier on a version's export shards (exported first if needed) and score it on val/test.

    Uses the version's train-only normalization; writes model_last.pt / model_best.pt with meta_*.json
    (config, classes, normalization, dataset version, metrics) each epoch, then metrics.json, curves.png and
    confusion_SPLIT.png into the run folder. Ctrl-C or a kill loses at most the current epoch: --resume.

    Examples:

        curate train --sanity
        curate train --arch small-cnn --epochs 12 --augment flip --label-smoothing 0.1
        curate train --out models/fm --resume
    """
    from curate.config import command_config
    from curate.learn.train import TrainConfig
    from curate.steps import StepContext
    from curate.steps.outputs import train_step
    from curate.ui import emit_json
    from curate.workspace import Workspace

    cli = {"version": version, "arch": arch, "epochs": epochs, "batch_size": batch_size, "lr": lr, "optimizer": optimizer,
           "weight_decay": weight_decay, "schedule": schedule, "label_smoothing": label_smoothing, "augment": augment,
           "patience": patience, "seed": seed, "device": device, "amp": amp, "workers": workers, "loader": loader,
           "format": shard_format, "image_size": image_size, "max_minutes": max_minutes, "out": str(out) if out else None,
           "resume": resume}  # fmt: skip
    cfg = command_config(TrainConfig, "train", workspace, cli)
    ws = Workspace(workspace)
    log = (lambda s: None) if json_out else say
    try:
        res = train_step(ws, cfg, StepContext(progress=not json_out, log=log), sanity=sanity)
    except KeyboardInterrupt:
        from curate.ui import err_console

        err_console.print("interrupted: model_last.pt holds the last finished epoch; continue with --resume (same --out)")
        raise typer.Exit(130) from None
    if json_out:
        emit_json(res)
        return
    if sanity:
        say("sanity check passed: the loss fell below a quarter of its start on one batch")
        return
    say(
        f"trained {res['arch']} on {res['version']} ({res['device']}): {res['epochs_run']} epochs in {res['train_seconds']:.0f}s, "
        f"stopped by {res['stopped']}; best epoch {res['best_epoch']} -> {res['run']}"
    )
    for split, m in res["metrics"].items():
        say(_fmt_metrics(split, m))
    if res.get("diagnosis"):
        from curate.learn.gaps import summary_line

        say(f"  {summary_line(res['diagnosis'])}")


def evaluate(
    run: Annotated[Path, typer.Argument(help="Run folder written by `curate train` (or a model_*.pt file).")],
    version: VersionOpt = None,
    split: Annotated[
        str | None,
        typer.Option("--split", help="Split to score: train | train_dev | val | test, or all (every split + the bias/variance "
                     "diagnosis) (default test)."),
    ] = None,
    src: Annotated[
        str | None, typer.Option("--src", help="Score a labeled folder or manifest outside the workspace instead of a split.")
    ] = None,
    which: Annotated[str | None, typer.Option(help="Checkpoint: best (default) | last.")] = None,
    human_error: Annotated[
        float | None, typer.Option("--human-error", help="With --split all: the human-level error bias is measured against.")
    ] = None,
    workspace: WorkspaceOpt = DEFAULT_WS,
    json_out: JsonOpt = False,
    debug: DebugOpt = False,
) -> None:
    """Score a trained run on a split of a dataset version (default: the version it was trained on), or on a
    labeled source that is not in the workspace (--src: a held-out folder SRC/<class>/... or a labeled manifest).

    Writes eval_SPLIT.json (accuracy, macro-F1, per-class precision/recall/F1, confusion matrix, ROC AUC,
    top-k error, the worst-classified samples) and eval_confusion_SPLIT.png into the run folder; with --src,
    the same files plus predictions.parquet into RUN/eval-NAME/ (NAME: the source's folder or file name).

    Examples:

        curate evaluate models/000004-normalize-small-cnn --split test
        curate evaluate models/fm --src held-out/
        curate evaluate models/fm --split all --human-error 0.02   # train / train_dev / val / test errors, largest gap
    """
    from curate.config import command_config
    from curate.steps import StepContext
    from curate.steps.outputs import EvaluateConfig, check_evaluate, evaluate_step
    from curate.ui import emit_json
    from curate.workspace import Workspace

    cli = {"run": str(run), "split": split, "which": which, "version": version, "src": src, "human_error": human_error}
    cfg = command_config(EvaluateConfig, "evaluate", workspace, cli)
    check_evaluate(cfg)
    res = evaluate_step(Workspace(workspace), cfg, StepContext(progress=not json_out))
    if json_out:
        emit_json(res)
        return
    if res["split"] == "all":
        from curate.learn.gaps import summary_line

        say(f"evaluate {run} on every split of {res['version']} -> {res['path']}")
        for name, m in res["metrics"].items():
            say(_fmt_metrics(name, m))
        say(f"  {summary_line(res['diagnosis'])}")
        return
    what = f"{cfg.src} ({res['n']:,} labeled images)" if cfg.src else f"{res['version']} {cfg.split} ({res['n']:,} images)"
    say(f"evaluate {run} on {what} -> {res['path']}")
    say(_fmt_metrics(res["split"], res))
    if cfg.src:
        sk = res["skipped"]
        unknown = sum(sk["unknown_labels"].values())
        say(
            f"  not scored: {sk['errors']:,} unreadable, {sk['unlabeled']:,} unlabeled, {unknown:,} with a label the run does not know"
        )
    for row in res["worst"][:5]:
        say(f"    worst: {row['sample_id'][:40]}  true {row['true']}  predicted {row['predicted']} ({row['confidence']:.3f})")


def predict(
    run: Annotated[Path, typer.Argument(help="Run folder written by `curate train`.")],
    src: Annotated[str, typer.Argument(help="Folder, manifest (.csv/.parquet/.jsonl), idx file/folder or archive.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Predictions table: .csv or .parquet.")] = Path("predictions.csv"),
    which: Annotated[str, typer.Option(help="Checkpoint: best | last.")] = "best",
    json_out: JsonOpt = False,
    debug: DebugOpt = False,
) -> None:
    """Predict every image of SRC: a table of source, predicted class, confidence and one p_CLASS column per class.

    A file that cannot be read or decoded keeps its row, with the reason in `error`. When SRC has labels
    (a class folder tree or a label column), accuracy and macro-F1 over the labeled rows are printed too.

    Example:  curate predict models/fm new_images/ --out preds.parquet
    """
    import pyarrow.csv as pacsv
    import pyarrow.parquet as pq

    from curate.learn.metrics import classification_metrics
    from curate.learn.predict import labeled_scores, load_run, predict_source
    from curate.ui import emit_json, progress

    loaded = load_run(run, which)
    table = predict_source(loaded, src, progress=lambda n: progress("predict", n, enabled=not json_out))
    out.parent.mkdir(parents=True, exist_ok=True)
    if out.suffix == ".parquet":
        pq.write_table(table, out)
    else:
        pacsv.write_csv(table, out)
    counts: dict[str, int] = {}
    for p in table.column("predicted").to_pylist():
        if p is not None:
            counts[p] = counts.get(p, 0) + 1
    res = {"run": str(run), "source": src, "out": str(out), "rows": table.num_rows, "predicted": counts,
           "errors": table.num_rows - table.column("error").null_count, "metrics": None}  # fmt: skip
    scores = labeled_scores(loaded, table)
    if scores is not None:
        m = classification_metrics(scores["y"], scores["probs"], loaded.classes)
        res["metrics"] = {
            "n": m["n"],
            "accuracy": m["accuracy"],
            "macro_f1": m["macro_f1"],
            "unknown_labels": scores["unknown_labels"],
        }
    if json_out:
        emit_json(res)
        return
    say(f"predict {src}: {res['rows']:,} images -> {out} ({res['errors']} undecodable)")
    say("  predicted: " + ", ".join(f"{k} {v:,}" for k, v in sorted(counts.items(), key=lambda kv: -kv[1])))
    if res["metrics"]:
        m = res["metrics"]
        say(f"  labeled rows: {m['n']:,}: accuracy {m['accuracy']:.4f}, macro-F1 {m['macro_f1']:.4f}")


def register(app: typer.Typer) -> None:
    app.command(rich_help_panel="Learning")(handle_errors(train))
    app.command(rich_help_panel="Learning")(handle_errors(evaluate))
    app.command(rich_help_panel="Learning")(handle_errors(predict))
