"""The ``curate`` command line: thin Typer commands that parse options and call the library.

Heavy libraries (torch, cleanlab, albumentations) are imported inside the code paths that use them so that
``curate --help`` stays instant.
"""

from __future__ import annotations

import typer

from curate import __version__

app = typer.Typer(
    name="curate",
    help=(
        "Turn messy image collections into clean, balanced, leak-free, versioned training shards.\n\n"
        "Every stage reads the current dataset version (HEAD) of a workspace and commits a new one; nothing "
        "is deleted: excluded samples stay in the table with the stage and reason.\n\n"
        "Quick start:  curate ingest data/sample/images && curate show && curate export"
    ),
    no_args_is_help=True,
    context_settings={"help_option_names": ["-h", "--help"]},
    rich_markup_mode="markdown",
    pretty_exceptions_enable=False,
)


def _plain_emoji_codes() -> None:
    """Keep ``:name:`` in help text as written: typer's markdown help replaces emoji codes, so the ``a:b:c`` of
    ``--ratios`` showed a B-button emoji. (curate's own consoles are ``emoji=False``: ``curate.ui``.)"""
    from typer import rich_utils

    class PlainEmoji(rich_utils.Emoji):
        @classmethod
        def replace(cls, text: str) -> str:
            return text

    rich_utils.Emoji = PlainEmoji  # type: ignore[misc]


_plain_emoji_codes()


def _version_callback(value: bool) -> None:
    if value:
        typer.echo(f"curate {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(False, "--version", callback=_version_callback, is_eager=True, help="Show the version."),
    executor: str | None = typer.Option(
        None, "--executor", help="Where per-sample work runs: local (default) or ray. Env: CURATE_EXECUTOR.", show_default=False
    ),
    address: str | None = typer.Option(
        None,
        "--address",
        help="Ray cluster to join: HOST:PORT, ray://HOST:10001 or auto (implies --executor ray). Env: CURATE_RAY_ADDRESS.",
        show_default=False,
    ),
) -> None:
    """curate: curated image datasets and the classifier trained on them."""
    if executor is not None or address is not None:
        from curate.cli.common import fail
        from curate.errors import CurateError
        from curate.executors import configure

        try:
            configure(executor or "ray", address=address)
        except CurateError as exc:
            fail(exc.message, exc.hint, exc.exit_code)


# The stages' commands are generated from the registry (``curate.cli.stagecmd``), in its order; the hand-written
# commands (versions, review desk, predict, export-model, pipelines) follow. This order is ``curate --help``'s.
from curate import registry  # noqa: E402
from curate.cli import learn, models, review, run, stagecmd, versions  # noqa: E402

for _stage in registry.declared():
    stagecmd.register(app, _stage)
for _module in (review, versions, learn, models, run):
    _module.register(app)


def main() -> None:
    """Console-script entry point."""
    app()


if __name__ == "__main__":  # pragma: no cover
    main()
