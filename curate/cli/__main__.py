"""``python -m curate.cli``: the same entry point as the ``curate`` console script."""

from curate.cli import main

main()
