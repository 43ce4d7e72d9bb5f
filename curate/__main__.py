"""``python -m curate``: the same Typer app as the ``curate`` entry point."""

from curate.cli import app

app(prog_name="curate")
