"""Helpers for the workspace, export and CLI tests: ground truth from folders, file digests, running the CLI.

Generic image fixtures (``image_folder``, ``workspace``, ``ingest``) live in ``conftest.py``; this module holds
what those tests need beyond them.
"""

from __future__ import annotations

import hashlib
import io
import os
import struct
import subprocess
import sys
import zlib
from pathlib import Path
from typing import Any

import numpy as np

#: Heavy libraries that ``curate --help`` must not import.
HEAVY_MODULES = ("torch", "cleanlab", "albumentations")


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: str | Path) -> str:
    return sha256_bytes(Path(path).read_bytes())


def tree_digest(root: str | Path) -> dict[str, str]:
    """``relative path -> sha256`` of every file below ``root`` (hidden files included)."""
    root = Path(root)
    return {str(p.relative_to(root)): sha256_file(p) for p in sorted(root.rglob("*")) if p.is_file()}


def folder_truth(root: str | Path) -> dict[str, dict[str, Any]]:
    """Ground truth of an ImageFolder tree: ``sha256 -> {"label", "bytes", "path"}`` for every file.

    The label is the first folder under ``root`` (None for files directly in it). Files with identical bytes
    collapse into one entry (the first path in sorted order), like ingest does.
    """
    root = Path(root)
    out: dict[str, dict[str, Any]] = {}
    for p in sorted(root.rglob("*")):
        if not p.is_file() or any(part.startswith(".") for part in p.relative_to(root).parts):
            continue
        data = p.read_bytes()
        parts = p.relative_to(root).parts
        out.setdefault(sha256_bytes(data), {"label": parts[0] if len(parts) > 1 else None, "bytes": data, "path": str(p)})
    return out


def add_bad_files(root: str | Path) -> dict[str, str]:
    """Add one truncated PNG (under ``cat/``) and one text file (under ``dog/``); returns ``path -> reason``."""
    from PIL import Image

    root = Path(root)
    buf = io.BytesIO()
    Image.fromarray(np.full((16, 16, 3), 7, np.uint8)).save(buf, format="PNG")
    data = buf.getvalue()
    broken = root / "cat" / "zz_broken.png"
    text = root / "dog" / "zz_notes.png"
    broken.parent.mkdir(parents=True, exist_ok=True)
    text.parent.mkdir(parents=True, exist_ok=True)
    broken.write_bytes(data[: len(data) // 2])
    text.write_bytes(b"this is not an image\n")
    return {str(broken): "truncated", str(text): "not_an_image"}


def write_big_folder(root: str | Path, *, big: int = 350, small: int = 3500) -> Path:
    """A folder that takes a few seconds to ingest with one worker, and writes a blob pack midway.

    ``a/`` holds ``big`` distinct uncompressed 256x256 RGB PNGs (196,947 bytes each, so the 64 MiB pack buffer
    of ingest is flushed to disk after 341 of them); ``b/`` holds ``small`` copies of one small PNG, which
    keep the ingest busy (read, hash, decode each) for a second or more after that first pack appeared.
    """
    root = Path(root)
    rng = np.random.default_rng(1234)
    (root / "a").mkdir(parents=True)
    (root / "b").mkdir(parents=True)
    for i in range(big):
        (root / "a" / f"{i:04d}.png").write_bytes(stored_png(rng.bytes(256 * 256 * 3), 256, 256))
    data = stored_png(rng.bytes(16 * 16 * 3), 16, 16)
    for i in range(small):
        (root / "b" / f"{i:05d}.png").write_bytes(data)
    return root


def stored_png(rgb: bytes, width: int, height: int) -> bytes:
    """A valid RGB PNG holding ``rgb`` uncompressed (zlib level 0): cheap to write, as large as the pixels."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    stride = width * 3
    rows = b"".join(b"\x00" + rgb[y * stride : (y + 1) * stride] for y in range(height))
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows, 0)) + chunk(b"IEND", b"")


def curate_exe() -> str:
    """The ``curate`` console script of the interpreter running the tests."""
    exe = Path(sys.executable).parent / "curate"
    return str(exe) if exe.exists() else "curate"


def clean_env(**extra: str) -> dict[str, str]:
    """The current environment without curate settings, plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CURATE_")}
    env.update(extra)
    return env


def run_curate(
    args: list[str], *, cwd: str | Path, env: dict[str, str] | None = None, timeout: float = 120
) -> subprocess.CompletedProcess:
    """Run the real console script (a separate process) and capture its output as text."""
    return subprocess.run(
        [curate_exe(), *args], cwd=cwd, env=env or clean_env(), capture_output=True, text=True, timeout=timeout, check=False
    )


def assert_one_error_line(stderr: str) -> str:
    """A user error prints exactly one ``error:`` line (plus at most one ``hint:`` line) and no traceback."""
    lines = [ln for ln in stderr.splitlines() if ln.strip()]
    assert "Traceback" not in stderr, stderr
    assert lines, "nothing on stderr"
    assert lines[0].startswith("error: "), stderr
    assert len(lines) <= 2, stderr
    if len(lines) == 2:
        assert lines[1].startswith("hint: "), stderr
    return lines[0]


def write_png(path: str | Path, seed: int, size: tuple[int, int] = (16, 16)) -> bytes:
    """Write a random RGB PNG (its own seed stream, distinct from conftest's images); returns the bytes."""
    from PIL import Image

    w, h = size
    arr = np.random.default_rng([seed, 77]).integers(0, 256, (h, w, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(buf.getvalue())
    return buf.getvalue()


def manifest_with_splits(root: str | Path, plan: dict[str, dict[str, int]]) -> tuple[Path, dict[str, dict[str, Any]]]:
    """A CSV manifest ``root/list.csv`` (path, label, split) over new PNGs, ``plan[split][label]`` of each.

    Returns the manifest path and the ground truth ``sha256 -> {"label", "split", "bytes"}``.
    """
    root = Path(root)
    rows, truth, seed = ["path,label,split"], {}, 0
    for split, counts in plan.items():
        for label, n in counts.items():
            for _ in range(n):
                data = write_png(root / "img" / f"{seed:04d}.png", seed)
                rows.append(f"img/{seed:04d}.png,{label},{split}")
                truth[sha256_bytes(data)] = {"label": label, "split": split, "bytes": data}
                seed += 1
    (root / "list.csv").write_text("\n".join(rows) + "\n")
    return root / "list.csv", truth


def proc_children(pid: int) -> list[int]:
    try:
        return [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


def descendants(pid: int) -> list[int]:
    """Children, grandchildren...: a fork server's workers are its children, not the command's."""
    found, stack = [], proc_children(pid)
    while stack:
        p = stack.pop()
        found.append(p)
        stack.extend(proc_children(p))
    return found


def gone(pid: int) -> bool:
    """No such process, or a zombie (dead; an init that does not reap leaves it in /proc)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True
