"""``curate predict``, hand-written: it reads no version (train and evaluate are generated from their stages).

Torch is imported inside the command only.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from curate.cli.common import DebugOpt, JsonOpt, handle_errors, say


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
    app.command(rich_help_panel="Learning")(handle_errors(predict))
