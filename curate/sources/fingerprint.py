"""Source reuse in pipelines: the fingerprint of a source's inputs, and the existing version it may stand for.

The runner (``curate.pipeline.execute``) never reuses a source version on its own, since the same settings may now
read other files. In a pipeline (``ctx.reuse``) a source step is skipped when a version of the same stage and
settings exists, made from the pipeline's position or in HEAD's lineage, AND its recorded input fingerprint
(``Stage.fingerprint``) still matches: for ingest a hash of every input file's (relative path, size, mtime), for
crawl the crawl id (the URL list's content and the crawl's identity settings). When the inputs changed, the stage
runs again from where that version was made, so the pipeline's result stays a function of its inputs instead of
piling new data onto processed data.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from curate.stage import HEAD
from curate.workspace import config_sha256

if TYPE_CHECKING:
    from curate.workspace import Workspace

FINGERPRINT = "input_fingerprint"  # the ingest stats key


def input_fingerprint(source: str) -> str:
    """sha256 over the sorted (relative path, size, mtime_ns) of every file below ``source`` (or of the file itself).

    Stat calls only (no reading), so it costs a small fraction of the ingest it may save. A manifest is fingerprinted
    by its own file: the images it lists elsewhere are not visited. On a bucket: (key, size, ETag) from one listing.
    """
    from curate.remote import is_remote, listing, local_path

    if is_remote(source):
        return _digest(listing(source))
    path = Path(os.path.abspath(Path(local_path(source)).expanduser()))
    entries: list[tuple[str, int, int]] = []
    if path.is_dir():
        entries = _tree_entries(str(path))
    elif path.exists():
        st = path.stat()
        entries.append((path.name, st.st_size, st.st_mtime_ns))
    return _digest(entries)


def _tree_entries(root: str) -> list[tuple[str, int, int]]:
    """(path relative to ``root``, size, mtime_ns) of every file below ``root``, as ``os.walk`` lists them.

    Files are the entries that are not folders (links followed, links to folders not descended, unreadable
    folders skipped); the size and mtime are those of the link's target, and a dangling link is left out (ingest
    reports it; it changes nothing here). ``scandir`` and cutting the root prefix instead of ``os.walk`` and
    ``os.path.relpath``: the fingerprint is taken on every ingest, and at 70,000 files that cost ~0.6 s.
    """
    cut = len(os.path.join(root, ""))
    entries: list[tuple[str, int, int]] = []
    stack = [root]
    while stack:
        try:
            it = os.scandir(stack.pop())
        except OSError:
            continue
        with it:
            for entry in it:
                try:
                    is_dir = entry.is_dir()
                except OSError:
                    is_dir = False
                if is_dir:
                    if not entry.is_symlink():
                        stack.append(entry.path)
                    continue
                try:
                    st = entry.stat()
                except OSError:
                    continue
                entries.append((entry.path[cut:], st.st_size, st.st_mtime_ns))
    return entries


def _digest(entries: list[tuple[str, int, Any]]) -> str:
    digest = hashlib.sha256()
    entries = sorted(entries)
    for start in range(0, len(entries), 4096):  # the same bytes as one update per entry, in fewer calls
        # surrogateescape: a file name that is not UTF-8 (bytes a POSIX folder may hold) hashes as its raw bytes
        text = "".join(f"{rel}\0{size}\0{mtime}\n" for rel, size, mtime in entries[start : start + 4096])
        digest.update(text.encode(errors="surrogateescape"))
    return digest.hexdigest()


def find_reusable(
    ws: Workspace, stage: str, config: dict[str, Any], base: str | None, key: str, fingerprint: str
) -> tuple[str | None, str | None]:
    """Where a source step stands: ``(version to reuse or None, parent to build on otherwise)``.

    Candidates, newest first: a version of ``stage`` with these settings made from ``base``, else one in HEAD's
    lineage. A candidate whose ``stats[key]`` differs from ``fingerprint`` is redone from its own parent.
    """
    sha = config_sha256(config)
    parent = ws.head() if base == HEAD else base
    hit = ws.find_cached(parent=parent, stage=stage, config_sha=sha)
    head = ws.head()
    if hit is None and head is not None:
        hit = next((v for v in reversed(ws.lineage(head)) if _same(ws.info(v), stage, sha)), None)
    if hit is None:
        return None, parent
    if ws.stats(hit).get(key) == fingerprint:
        return hit, parent
    return None, ws.info(hit).get("parent")


def _same(info: dict[str, Any], stage: str, sha: str) -> bool:
    return info["stage"] == stage and info["config_sha256"] == sha


def reuse_version(ws: Workspace, vid: str) -> dict[str, Any]:
    """Point HEAD at an existing version and describe it like the runner describes a cached one."""
    with ws.writer():
        ws.set_head(vid)
    info = ws.info(vid)
    return {"version": vid, "parent": info.get("parent"), "stage": info["stage"], "cached": True, "stats": ws.stats(vid)}
