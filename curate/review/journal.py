"""The review desk's journal: every decision on a version, appended the moment it is made.

One JSONL file per reviewed version (``Workspace.review_journal(vid)``). Each line is the *whole* state of one sample
after a decision, so the current state is simply the last line per ``sample_id`` (no replay of toggles)::

    {"sample_id": "ab12...", "decision": "label", "label": "cat", "tags": ["blurry"], "time": "2025-...Z"}

- ``decision``: ``keep`` (the row stays as it is), ``accept`` (take the suggested label, which the desk writes into
  ``label``), ``label`` (a label the reviewer chose), ``exclude``, or null (only tags, or a decision taken back).
- ``tags``: the error-analysis causes of the sample (``curate.review.tags``), lower-case, in the order given.

Each append is one ``write`` of a whole line followed by ``fsync``: a crash or a closed tab loses at most the
decision being written, and a torn last line (a crash in the middle of a write) is skipped when reading.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import threading
from pathlib import Path
from typing import Any

from curate.errors import CurateError

DECISIONS = ("keep", "accept", "label", "exclude")
_LOCK = threading.Lock()  # the desk serves requests from several threads; one append at a time keeps lines whole


def normalize_entry(entry: dict[str, Any]) -> dict[str, Any]:
    """Check and tidy one decision: known ``decision``, a label where one is needed, tags trimmed and lower-cased.

    Raises:
        CurateError: an unknown decision, ``accept``/``label`` without a label, or a sample_id that is not a string.
    """
    sid, decision = entry.get("sample_id"), entry.get("decision")
    if not isinstance(sid, str) or not sid:
        raise CurateError("review decision without a sample_id")
    if decision is not None and decision not in DECISIONS:
        raise CurateError(f"unknown review decision {decision!r}; use one of {', '.join(DECISIONS)}")
    label = entry.get("label")
    if decision in ("accept", "label") and not (isinstance(label, str) and label.strip()):
        raise CurateError(f"review decision {decision!r} on {sid} needs a label")
    tags = entry.get("tags") or []
    if not isinstance(tags, list) or not all(isinstance(t, str) for t in tags):
        raise CurateError(f"review tags of {sid} must be a list of strings")
    clean_tags = list(dict.fromkeys(t.strip().lower() for t in tags if t.strip()))
    return {
        "sample_id": sid,
        "decision": decision,
        "label": label.strip() if decision in ("accept", "label") else None,
        "tags": clean_tags,
    }


def append(path: Path, entry: dict[str, Any]) -> dict[str, Any]:
    """Append one decision (checked by ``normalize_entry``) to the journal at ``path``; returns the line written.

    Raises:
        CurateError: a bad decision, or the journal cannot be written (the path and the cause).
    """
    line = {**normalize_entry(entry), "time": dt.datetime.now(dt.UTC).isoformat(timespec="milliseconds")}
    data = (json.dumps(line, ensure_ascii=False, sort_keys=True) + "\n").encode("utf-8")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with _LOCK:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
            try:
                os.write(fd, data)
                os.fsync(fd)
            finally:
                os.close(fd)
    except OSError as exc:
        raise CurateError(f"review journal {path}: cannot write: {exc.strerror or exc}") from exc
    return line


def read(path: Path) -> dict[str, dict[str, Any]]:
    """The current decision per sample_id (the last line for each), in the order samples were first decided.

    Samples whose last line has no decision and no tags are left out (a decision taken back). A line that is not a
    JSON object (a torn last line after a crash) is skipped.

    Raises:
        CurateError: the journal exists but cannot be read.
    """
    if not path.exists():
        return {}
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError as exc:
        raise CurateError(f"review journal {path}: cannot read: {exc.strerror or exc}") from exc
    state: dict[str, dict[str, Any]] = {}
    for raw in text.splitlines():
        try:
            entry = normalize_entry(json.loads(raw))
        except (ValueError, CurateError, AttributeError):
            continue
        state[entry["sample_id"]] = entry
    return {sid: e for sid, e in state.items() if e["decision"] is not None or e["tags"]}


def digest(state: dict[str, dict[str, Any]]) -> str:
    """sha256 of the decisions (sorted by sample_id, times left out): the cache key of a review commit."""
    rows = [{k: v for k, v in state[sid].items() if k != "time"} for sid in sorted(state)]
    return hashlib.sha256(json.dumps(rows, sort_keys=True).encode()).hexdigest()
