"""Review: the human in the loop, from flagged rows to a committed version.

- ``file``: the review file of ``curate clean --review-out`` (self-contained HTML or CSV) and its thumbnails.
- ``queues``: what the desk shows, worst first (label issues, outliers, duplicates, low quality, a run's errors).
- ``page``: the desk's HTML page (escaped data, a nonce'd script); ``desk``: its 127.0.0.1 server (``curate review``).
- ``journal``: every decision appended at once to ``<workspace>/review/<version>.jsonl``.
- ``decisions``: the journal applied to the version's rows and committed through ``curate.pipeline``.
- ``tags``: cause tags (``review_tags``, a tags CSV) and their counts, read by the report.

The command is ``curate.cli.review``; ``write_review`` and ``thumbnail_uri`` (clean's review file, the report's
gallery) are importable from here without loading the rest.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from curate.review.file import thumbnail_uri, write_review

__all__ = ["thumbnail_uri", "write_review"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from curate.review import file

        return getattr(file, name)
    raise AttributeError(f"module 'curate.review' has no attribute {name!r}")
