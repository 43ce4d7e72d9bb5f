"""``curate export-model``: a trained run as a TorchScript or ONNX file (torch and the exporters load inside)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from curate.cli.common import DEFAULT_WS, DebugOpt, JsonOpt, WorkspaceOpt, handle_errors, human_bytes, say


def export_model(
    run: Annotated[str, typer.Argument(help="Run folder of `curate train` (or a model_*.pt, or a run name under WORKSPACE/models).")],
    fmt: Annotated[str, typer.Option("--format", "-f", help="onnx (needs the [onnx] extra) | torchscript.")] = "onnx",
    out: Annotated[Path | None, typer.Option("--out", "-o", help="File to write (default RUN/export/model_best.onnx or .pt).")] = None,
    which: Annotated[str, typer.Option(help="Checkpoint: best | last.")] = "best",
    workspace: WorkspaceOpt = DEFAULT_WS,
    json_out: JsonOpt = False,
    debug: DebugOpt = False,
) -> None:
    """Export a trained run so it loads without curate (torch.jit.load, onnxruntime), with a dynamic batch axis.

    Input: float32 (N, C, H, W) = (pixel / 255 - mean) / std at the run's size. Outputs: probs (N, K) and
    embedding (N, D). The file carries curate.json (classes, channels, size, normalization, outputs, arch, dataset
    version) as a TorchScript extra file or an ONNX metadata_props entry. Every export is checked against the
    checkpoint (largest probability difference printed) before it is kept.

    Examples:

        curate export-model models/fm --format onnx
        curate export-model models/fm --format torchscript --out fm.pt
    """
    from curate.errors import UsageError
    from curate.models.export import export_run
    from curate.ui import emit_json

    if which not in ("best", "last"):
        raise UsageError(f"--which {which!r}: choose best or last")
    res = export_run(run, fmt, out, workspace=workspace, which=which)
    if json_out:
        emit_json(res)
        return
    say(f"exported {res['checkpoint']} as {fmt} -> {res['out']} ({human_bytes(res['bytes'])})")
    meta = res["metadata"]
    shape = f"{meta['channels']}x{meta['size'][0]}x{meta['size'][1]}"
    say(f"  {len(res['classes'])} classes, input {shape}, largest probability difference to the checkpoint {res['max_abs_diff']:.1e}")


def register(app: typer.Typer) -> None:
    app.command("export-model", rich_help_panel="Learning")(handle_errors(export_model))
