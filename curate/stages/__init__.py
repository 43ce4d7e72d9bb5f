"""One module per stage. A stage has a frozen ``Config`` and returns a ``StageResult``; it never commits."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa


@dataclass
class StageResult:
    """What a stage hands to ``curate.pipeline`` to commit.

    Attributes:
        table: the full new sample table (every row of the parent plus new ones; nothing dropped).
        stats: counts in/out, excluded by reason, seconds; merged with a summary of ``table`` at commit.
        state: files for the version's ``state/`` folder, name -> bytes.
    """

    table: pa.Table
    stats: dict[str, Any] = field(default_factory=dict)
    state: dict[str, bytes] = field(default_factory=dict)
